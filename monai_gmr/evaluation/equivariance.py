"""Equivariance errors of any function/network under rotations (arbitrary angles) and exact group elements.

For a map ``fn`` with spatial outputs the error at geometry ``g`` is the relative L2 error
``||fn(g x) - g fn(x)|| / ||g fn(x)||``; for outputs without spatial dims (class logits ``(N, C)``) it is the
invariance error ``||fn(g x) - fn(x)|| / ||fn(x)||``. Arbitrary angles are measured on the central region that the
rotation maps onto itself (:func:`~monai_gmr.functional.rotation.central_disk_mask`) intersected with the validity
mask, so neither the image corners (padding) nor the resampling of the border enters: in 2D the central disk; in 3D,
for a rotation in one plane ``axes`` (a single angle), the cylinder of that disk in the plane times the whole extent
of the rotation axis (a thin volume keeps all its slices); for 3D Euler angles the central ball. The exact group
elements (D4 in 2D, the 48 cube symmetries in 3D) are measured on the whole tensor.

The square (cubic) border of the input is itself not rotation-invariant: zero padding at the border, and bias,
norm and activation outputs that are non-zero beyond the input's content, make every layer's features near the
border differ from the interior, and a network whose receptive field reaches the border from the central disk
carries that into the measured error (a default GMRUNet's receptive field spans 288 pixels). ``canvas`` centres
the input on a larger zero canvas, which moves that border away from the disk; the disk keeps its radius in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from monai_gmr.functional.basis import _is_int
from monai_gmr.functional.groups import group_elements
from monai_gmr.functional.rotation import _disk_axes, _is_degrees, _is_euler, _norm_angle, _planes, _region_name
from monai_gmr.functional.rotation import _spatial_dims_hint, as_angle_list, central_disk_mask, rotate, validity_mask

__all__ = [
    "equivariance_error",
    "spline_equivariance_error",
    "group_equivariance_error",
    "layerwise_equivariance_error",
    "masked_rel_err",
    "on_canvas",
]


def masked_rel_err(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """``||(a - b) * mask|| / ||b * mask||`` in float64 (``mask`` broadcasts over the trailing dims); NaN when ``mask``
    selects nothing or ``a`` is empty (no pixel compared is not a zero error). A zero reference ``b`` gives ``0.0`` when ``a`` is zero
    too (the outputs are equal), NaN when ``a`` holds NaN and ``inf`` otherwise (not a huge finite number).

    Raises:
        ValueError: ``a`` and ``b`` of different shapes (they were broadcast against each other: ``(N, 1)`` against
            ``(N, 2)`` read as an error of the first class only, an output whose spatial size does not follow a
            right angle stopped in a torch size mismatch), or a ``mask`` that does not broadcast to their shape.
    """
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"the compared outputs differ in shape: {tuple(a.shape)} vs the reference {tuple(b.shape)} (fn must "
            "return outputs of the same shape for the transformed input, its spatial dims transformed with it)."
        )
    if mask is not None:
        try:
            fits = torch.broadcast_shapes(tuple(mask.shape), tuple(a.shape)) == tuple(a.shape)
        except RuntimeError:
            fits = False
        if not fits:  # stopped in torch's "The size of tensor a (8) must match the size of tensor b (4)"
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the compared outputs' shape {tuple(a.shape)}."
            )
    if a.numel() == 0:  # no value compared (an empty batch or channel dim): not a zero error
        return float("nan")
    a = a.detach().double()
    b = b.detach().double()
    if mask is not None:
        if not bool(mask.any()):
            return float("nan")
        m = mask.to(device=a.device, dtype=torch.float64)
        a, b = a * m, b * m
    num, den = float((a - b).norm()), float(b.norm())
    if den == 0.0:  # dividing by clamp_min(1e-300) read as an error of ~1e300, finite and written as such in reports
        return 0.0 if num == 0.0 else (math.nan if math.isnan(num) else math.inf)  # a NaN output is not inf
    return num / den


def _require_region(mask: torch.Tensor, radius_frac: float, axes: Sequence[int] | None = None) -> None:
    """Refuse an empty compared region (the error used to read 0.0).

    Args:
        mask: the compared region ``(*spatial)`` (central disk/ball/cylinder and validity mask).
        radius_frac: the fraction the region's radius was made with.
        axes: the 3D rotation plane of a cylinder (:func:`~monai_gmr.functional.rotation.central_disk_mask`);
            ``None``: a disk (2D) or ball (3D), whose radius ``radius_frac * min(size)`` a thin volume (e.g. 2 slices
            under Euler angles) or a tiny input leaves no pixel in.
    """
    if not bool(mask.any()):
        shape = tuple(int(s) for s in mask.shape)
        sizes = shape if axes is None else tuple(shape[int(a) % len(shape)] for a in axes)
        raise ValueError(
            f"the compared region is empty: the {_region_name(len(shape), axes)} = {radius_frac} * {min(sizes)} = "
            f"{radius_frac * min(sizes):g} pixels holds no pixel of the spatial shape {shape} (within the validity "
            f"mask); use a larger input, a larger radius_frac or a canvas."
        )


def _canvas_frac(radius_frac: float, sizes: Sequence[int], sides: Sequence[int], axes: Sequence[int] | None) -> float:
    """``radius_frac`` of ``sizes`` rescaled to the canvas ``sides`` so the region keeps its radius in pixels; the
    radius is taken from the plane ``axes`` (a cylinder) or from every dim (``None``: a disk or ball)."""
    if tuple(sizes) == tuple(sides):
        return radius_frac  # exactly: no canvas
    dims = range(len(sizes)) if axes is None else [int(a) % len(sizes) for a in axes]
    return radius_frac * min(sizes[i] for i in dims) / min(sides[i] for i in dims)


def on_canvas(
    x: torch.Tensor,
    canvas: int | Sequence[int] | None,
    spatial_dims: int = 2,
    radius_frac: float = 0.35,
    axes: Sequence[int] | None = None,
) -> tuple[torch.Tensor, float]:
    """Centre ``x`` on a zero canvas and rescale a central-disk fraction so the disk keeps its size in pixels.

    Args:
        x: ``(N, C, *spatial)``.
        canvas: canvas size, an int for every spatial dim or one int per dim; each at least the input's size and
            differing from it by an even number (the input stays centred on the grid, so right angles and flips
            still map it onto itself). ``None``: ``x`` unchanged.
        spatial_dims: 2 or 3.
        radius_frac: disk radius as a fraction of the smallest spatial size of ``x`` (with ``axes``: of the smallest
            of the two sizes of the 3D rotation plane, the radius of the cylinder of
            :func:`~monai_gmr.functional.rotation.central_disk_mask`).
        axes: 3D rotation plane of a cylinder; ``None``: a disk (2D) or ball (3D).

    Returns:
        ``(x on the canvas, radius as a fraction of the canvas's smallest size (of the plane's with axes))``.

    Raises:
        ValueError: a ``canvas`` of the wrong length, smaller than the input, or differing by an odd number; a
            ``radius_frac`` that is not a number in (0, 0.5].
    """
    # checked against the input: on a canvas the rescaled fraction passed central_disk_mask's check for a disk reaching
    # past the input (0.6 of a 16-pixel input is 0.24 of a 40-pixel canvas), and text stopped in a TypeError
    if not _is_degrees(radius_frac) or not 0 < radius_frac <= 0.5:  # a finite real number, not a bool
        raise ValueError(f"radius_frac must be a number in (0, 0.5], got radius_frac={radius_frac!r}.")
    if canvas is None:
        return x, radius_frac
    sizes = tuple(int(s) for s in x.shape[-spatial_dims:])
    sides = tuple(canvas) if isinstance(canvas, (tuple, list, np.ndarray)) else (canvas,) * spatial_dims
    if len(sides) != spatial_dims or not all(_is_int(c) for c in sides):  # Python or NumPy ints, not bools
        raise ValueError(f"canvas must be an int or {spatial_dims} ints, got canvas={canvas!r}.")
    sides = tuple(int(c) for c in sides)
    if any(c < s or (c - s) % 2 for c, s in zip(sides, sizes)):
        raise ValueError(
            f"canvas must be at least the input's spatial size {sizes} and differ from it by an even number in every "
            f"dim (so the input stays centred), got canvas={canvas!r}."
        )
    pads: list[int] = []
    for c, s in zip(reversed(sides), reversed(sizes)):
        pads += [(c - s) // 2, (c - s) // 2]
    return F.pad(x, pads), _canvas_frac(radius_frac, sizes, sides, axes)


def _first(out):
    """The tensor to measure: the output itself, or the first of a tuple/list (deep supervision)."""
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"fn must return a tensor (or a tuple/list whose first entry is one), got {type(out).__name__}; wrap fn "
            "to pick the output to measure, e.g. lambda x: net(x)['seg']."
        )
    return out.as_tensor() if hasattr(out, "as_tensor") else out


def _check_x(x: torch.Tensor, spatial_dims: int) -> None:
    if not (_is_int(spatial_dims) and spatial_dims in (2, 3)):  # 2.0 stopped in a slice ("indices must be integers")
        raise ValueError(f"spatial_dims must be 2 or 3, got spatial_dims={spatial_dims!r}.")
    if not isinstance(x, torch.Tensor):  # a NumPy array was reported as fn's output ("fn must return a tensor")
        raise TypeError(f"x must be a torch.Tensor (N, C, *spatial), got {type(x).__name__}.")
    if x.ndim != spatial_dims + 2:
        raise ValueError(
            f"x must be (N, C, *spatial) with spatial_dims={spatial_dims}, got x.shape={tuple(x.shape)}"
            f"{_spatial_dims_hint(x.ndim, spatial_dims)}."
        )
    if x.numel() == 0:  # no pixel to compare: the errors read 0.0 (exactly equivariant)
        raise ValueError(f"x is empty (x.shape={tuple(x.shape)}): there is nothing to compare.")


@torch.no_grad()
def equivariance_error(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    angles: Sequence[float] = (15, 30, 45),
    radius_frac: float = 0.35,
    mode: str | None = None,
    spatial_dims: int = 2,
    axes: Sequence[int] | None = None,
    canvas: int | Sequence[int] | None = None,
) -> dict[float | tuple[float, ...], float]:
    """Relative rotation-equivariance error of ``fn`` at each angle.

    Args:
        fn: callable ``(N, C, *spatial) -> (N, C', *spatial')`` (or ``(N, C')`` for invariant heads). Put
            modules in ``eval()`` mode first.
        x: input batch ``(N, C, *spatial)``.
        angles: degrees (counter-clockwise, :func:`~monai_gmr.functional.rotation.rotate` convention); in 3D
            with ``axes=None`` an entry may also be 3 Euler angles ``(a0, a1, a2)``.
        radius_frac: radius of the compared region as a fraction of the smallest output spatial size: of the
            central disk (2D), of the cylinder of a single 3D angle (fraction of the smaller of the two sizes of the
            plane ``axes``; the cylinder spans the whole rotation axis), of the ball of 3D Euler angles.
        mode: interpolation of inputs and outputs; default ``"bicubic"`` in 2D, ``"bilinear"`` in 3D.
        spatial_dims: 2 or 3.
        axes: 3D rotation plane (default ``(1, 2)``).
        canvas: measure with ``x`` centred on a zero canvas of this size (:func:`on_canvas`; the disk, cylinder or
            ball keeps its radius in pixels of ``x``), so that a large receptive field reaches less of (or none of)
            the border from it. ``None``: ``x`` as is.

    Returns:
        ``{angle: rel_err}`` (float keys; a tuple of 3 floats for Euler angles).

    Raises:
        ValueError: bad arguments (also ``angles`` as text or with entries that are not finite numbers), outputs
            whose shapes do not follow the rotation, or a compared region (within the validity mask) that holds no
            pixel.
    """
    _check_x(x, spatial_dims)
    angles = as_angle_list(angles)  # refuses text and entries that are not finite degrees, naming angles
    if not angles:
        raise ValueError(f"angles must be a non-empty sequence of degrees, got angles={angles!r}.")
    sizes = tuple(int(s) for s in x.shape[-spatial_dims:])
    x, _ = on_canvas(x, canvas, spatial_dims, radius_frac)
    sides = tuple(int(s) for s in x.shape[-spatial_dims:])
    mode = mode or ("bicubic" if spatial_dims == 2 else "bilinear")
    y0 = _first(fn(x))
    spatial_out = y0.ndim == x.ndim
    errors: dict[float | tuple[float, ...], float] = {}
    for a in angles:
        key = _norm_angle(a)  # a float, or a tuple for Euler angles (a 0-d tensor of a 1D tensor is one angle)
        y = _first(fn(rotate(x, a, spatial_dims, mode, axes)))
        if not spatial_out:
            errors[key] = masked_rel_err(y, y0)
            continue
        ref = rotate(y0, a, spatial_dims, mode, axes)
        if y.shape != ref.shape:
            raise ValueError(f"fn output shapes differ under rotation: {tuple(y.shape)} vs {tuple(ref.shape)}.")
        # the disk lives in the rotated frame: a right angle swaps the sizes of a non-square output; a single 3D
        # angle scores the cylinder about its rotation axis, Euler angles the ball
        plane = _disk_axes(a, spatial_dims, axes)
        frac = _canvas_frac(radius_frac, sizes, sides, plane)
        disk = central_disk_mask(ref.shape[-spatial_dims:], frac, device=y0.device, axes=plane)
        mask = disk & validity_mask(y0.shape[-spatial_dims:], a, spatial_dims, mode, axes, device=y0.device)
        _require_region(mask, frac, plane)
        errors[key] = masked_rel_err(y, ref, mask)
    return errors


@torch.no_grad()
def spline_equivariance_error(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    angles: Sequence[float] = (15, 30, 45),
    radius_frac: float = 0.35,
    spatial_dims: int = 2,
    axes: Sequence[int] = (1, 2),
    order: int = 3,
) -> dict[float, float]:
    """Relative rotation-equivariance error of ``fn`` with spline rotations (``scipy.ndimage.rotate``).

    :func:`equivariance_error` rotates with PyTorch's bicubic/trilinear resampling, whose own interpolation error on
    a smooth field (about 1% at sigma = 3 px) hides that of a single layer. A prefiltered cubic B-spline is far more
    accurate, so this variant measures the layer's own error (e.g. of a GMR kernel sampled on a grid). Inputs and
    outputs are rotated in float64 on the CPU, with ``reshape=False`` and zeros outside; the error is taken on the
    central region of the output that the rotation maps onto itself
    (:func:`~monai_gmr.functional.rotation.central_disk_mask`): the disk in 2D, in 3D the cylinder of the disk in the
    plane ``axes`` times the whole rotation axis.

    Args:
        fn: callable ``(N, C, *spatial) -> (N, C', *spatial)`` (modules in ``eval()`` mode).
        x: input ``(N, C, *spatial)``.
        angles: degrees.
        radius_frac: radius of the disk as a fraction of the smallest output spatial size (3D: of the smaller of
            the output's two sizes in the plane ``axes``).
        spatial_dims: 2 or 3.
        axes: 3D rotation plane (spatial axes 0 = D, 1 = H, 2 = W, or -3..-1, as in
            :func:`~monai_gmr.functional.rotation.rotate`); ignored in 2D.
        order: spline order of ``scipy.ndimage.rotate``, 0..5 (3: cubic).

    Returns:
        ``{angle: rel_err}``.

    Raises:
        ValueError: bad arguments, or a compared region that holds no pixel.
    """
    from scipy import ndimage  # a dependency of monai_gmr; here only, to keep the module import light

    _check_x(x, spatial_dims)
    angles = as_angle_list(angles)
    if any(_is_euler(a) for a in angles):
        raise ValueError(f"angles must be single angles in degrees (one rotation plane), got angles={angles!r}.")
    if not angles:
        raise ValueError(f"angles must be a non-empty sequence of degrees, got angles={angles!r}.")
    angles = [a.item() if isinstance(a, torch.Tensor) else a for a in angles]  # the entries of a 1D tensor
    if not all(_is_degrees(a) for a in angles):  # NaN/inf would give a meaningless error, not an exception
        raise ValueError(f"angles must be finite numbers of degrees, got angles={angles!r}.")
    angles = [float(a) for a in angles]
    if not (_is_int(order) and 0 <= order <= 5):
        raise ValueError(f"order must be a spline order in 0..5, got order={order!r}.")
    # the 3D plane as rotate() reads it: (3, 1) is out of range, not (0, 1)
    plane = (0, 1) if spatial_dims == 2 else _planes(0.0, 3, axes)[0][0]

    def rot(t: torch.Tensor, angle: float) -> torch.Tensor:
        arr = t.detach().double().cpu().numpy()
        out = [[ndimage.rotate(c, angle, axes=plane, reshape=False, order=order) for c in n] for n in arr]
        return torch.from_numpy(np.asarray(out)).to(device=t.device, dtype=t.dtype)

    y0 = _first(fn(x))
    if y0.ndim != x.ndim:
        raise ValueError(f"fn must return spatial outputs (N, C, *spatial), got shape {tuple(y0.shape)}.")
    disk_axes = None if spatial_dims == 2 else plane  # 3D: the cylinder about the rotation axis
    disk = central_disk_mask(y0.shape[2:], radius_frac, device=y0.device, axes=disk_axes)
    _require_region(disk, radius_frac, disk_axes)
    return {a: masked_rel_err(_first(fn(rot(x, a))), rot(y0, a), disk) for a in angles}


@torch.no_grad()  # like the other error functions: no autograd graph is kept for the 8 / 48 evaluations
def group_equivariance_error(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, spatial_dims: int = 2
) -> dict[str, float]:
    """Relative equivariance (or invariance) error of ``fn`` for every exact symmetry of the pixel grid.

    Args:
        fn: as in :func:`equivariance_error`.
        x: ``(N, C, *spatial)``; use square/cubic inputs so that every element maps the grid onto itself.
        spatial_dims: 2 (D4, 8 elements ``rot0 ... rot270_flip``) or 3 (cube group, 48 elements).

    Returns:
        ``{element.name: rel_err}``; the identity is included (0.0 unless ``fn`` is non-deterministic).
    """
    _check_x(x, spatial_dims)
    y0 = _first(fn(x))
    spatial_out = y0.ndim == x.ndim
    out: dict[str, float] = {}
    for g in group_elements(spatial_dims):
        y = _first(fn(g(x)))
        out[g.name] = masked_rel_err(y, g(y0) if spatial_out else y0)
    return out


@torch.no_grad()
def layerwise_equivariance_error(
    net: torch.nn.Module,
    x: torch.Tensor,
    angle: float = 45.0,
    modules: Sequence[str] | None = None,
    radius_frac: float = 0.35,
    mode: str | None = None,
    spatial_dims: int = 2,
    axes: Sequence[int] | None = None,
    canvas: int | Sequence[int] | None = None,
) -> dict[str, tuple[tuple[int, ...], float]]:
    """Where a network loses equivariance: the rotation error of every selected module's output.

    Runs ``net(x)`` and ``net(rotate(x, angle))`` once each, records the outputs of ``modules`` with forward hooks
    (cloned, so later in-place activations do not change them), and measures
    ``||m(rotate x) - rotate(m(x))|| / ||rotate(m(x))||`` on the central disk of each module's own grid (intersected
    with the validity mask; in 3D the cylinder about the rotation axis for a single angle, the ball for Euler
    angles, as in :func:`equivariance_error`). Rotations of a coarser grid are about its centre, which is the centre
    of the image for 2x pooling of even sizes, so errors at every level of a U-Net are comparable.

    Args:
        net: module in ``eval()`` mode.
        x: ``(N, C, *spatial)``.
        angle: degrees; multiples of 90 measure the exact D4 elements (errors at float precision for GMR nets). In 3D
            also 3 Euler angles (with ``axes=None``).
        modules: names from ``net.named_modules()`` (a single name may be given as a string); default: every leaf
            module (no children); a ``net`` without children (a bare ``GMRConv``) is reported under ``""``, its
            name in ``named_modules()``.
        radius_frac, mode, spatial_dims, axes, canvas: as in :func:`equivariance_error`.

    Returns:
        ``{name: (spatial shape, rel_err)}`` in execution order, for the modules whose output is a tensor with
        ``x.ndim`` dims (others, e.g. a flattening head, are left out); shapes are those on the canvas. A module
        called several times per forward (e.g. an activation shared by two places of a block, as in MONAI's and
        GMR's ResNet blocks) is reported once per call, as ``name#0``, ``name#1``, ... (the calls of the two
        forwards paired in order). A module whose grid is too coarse for the disk to hold a pixel (e.g. 2x2 at the bottom of a U-Net fed 16x16) gets
        NaN (it read 0.0).

    Raises:
        ValueError: a name in ``modules`` that ``net`` does not have, a bad ``x`` or ``canvas``, a module whose output
            for the rotated input does not have the shape of its rotated output (the message names it).
    """
    _check_x(x, spatial_dims)
    plane = _disk_axes(angle, spatial_dims, axes)
    x, radius_frac = on_canvas(x, canvas, spatial_dims, radius_frac, axes=plane)
    mode = mode or ("bicubic" if spatial_dims == 2 else "bilinear")
    named = dict(net.named_modules())
    if isinstance(modules, str):  # one name (a command line's --modules enc1) was read letter by letter
        modules = [modules]
    if modules is None:
        # a leaf net (a bare GMRConv) is its own only leaf: reported under "", its name in named_modules() (was {})
        modules = [n for n, m in named.items() if (n or len(named) == 1) and next(m.children(), None) is None]
    missing = [n for n in modules if n not in named]
    if missing:
        raise ValueError(f"modules: {missing} are not modules of {type(net).__name__} (see net.named_modules()).")
    records: dict[str, list[tuple[int, torch.Tensor]]] = {}
    calls = [0]  # recorded outputs so far: the execution order of each call

    def hook(name: str):
        def f(_mod, _inp, out):
            if isinstance(out, (tuple, list)) and out:
                out = out[0]
            if isinstance(out, torch.Tensor) and out.ndim == x.ndim:  # other outputs are left out, as documented
                out = _first(out)
                records.setdefault(name, []).append((calls[0], out.detach().clone()))
                calls[0] += 1

        return f

    handles = [named[n].register_forward_hook(hook(n)) for n in modules]
    try:
        net(x)
        net(rotate(x, angle, spatial_dims, mode, axes))
    finally:
        for h in handles:
            h.remove()
    # a module called k times per forward (a shared activation) has 2k outputs: call i of net(x) pairs with call i
    # of the rotated forward (it was left out without a word, and {} was returned when it was asked for by name)
    pairs: list[tuple[int, str, torch.Tensor, torch.Tensor]] = []
    for name, outs in records.items():
        if len(outs) % 2:  # not called as often in both forwards (control flow that depends on the values)
            continue
        k = len(outs) // 2
        for i in range(k):
            pairs.append((outs[i][0], name if k == 1 else f"{name}#{i}", outs[i][1], outs[k + i][1]))
    out: dict[str, tuple[tuple[int, ...], float]] = {}
    for _, name, y0, y1 in sorted(pairs, key=lambda p: p[0]):  # in execution order
        shape = tuple(y0.shape[-spatial_dims:])
        ref = rotate(y0, angle, spatial_dims, mode, axes)
        if y1.shape != ref.shape:  # stopped in torch's "The size of tensor a (12) must match ..." naming no module
            raise ValueError(
                f"module {name!r}: its output for the rotated input has shape {tuple(y1.shape)}, the rotated output "
                f"{tuple(ref.shape)}; leave it out of modules."
            )
        # the disk lives in the rotated frame: a right angle swaps the sizes of a non-square output
        mask = central_disk_mask(ref.shape[-spatial_dims:], radius_frac, device=y0.device, axes=plane) & validity_mask(
            shape, angle, spatial_dims, mode, axes, device=y0.device
        )
        out[name] = (shape, masked_rel_err(y1, ref, mask))
    return out
