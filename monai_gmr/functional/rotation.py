"""Batched, device-agnostic rotations and reflections of images, probabilities and labels (2D and 3D).

Conventions (shared by the TTA inferer, the robustness evaluator and the equivariance checks):

* Spatial dims are the trailing ``spatial_dims`` dims of a tensor ``(..., *spatial)``; any leading dims
  (batch, channel, views) are carried along, so ``(H, W)``, ``(C, H, W)`` and ``(N, C, H, W)`` all work.
* A positive angle (degrees) rotates **counter-clockwise in (H, W) index space**, i.e. ``rotate(x, 90)`` equals
  ``torch.rot90(x, 1, dims=(-2, -1))`` exactly, about the image centre ``((size - 1) / 2)``.
* Multiples of 90 degrees and flips are exact index operations (``torch.rot90`` / ``torch.flip``): bit-exact, no
  interpolation. For a non-square image an odd multiple of 90 swaps the two rotated dims, like ``torch.rot90``.
  Other angles resample on the input grid (same output shape) with ``affine_grid``/``grid_sample``
  (``align_corners=True``); ``bicubic`` exists in 2D only (``grid_sample`` limitation), use ``bilinear``
  (= trilinear on 3D volumes) or ``nearest`` in 3D.
* 3D: ``axes=(a, b)`` (spatial axis indices, 0 = D, 1 = H, 2 = W) picks the rotation plane, the rotation equals
  ``torch.rot90(x, 1, dims=(a, b))`` at 90 degrees; the default plane is ``(1, 2)`` (H, W), i.e. about the depth
  axis, so axial slices turn like 2D images when the depth axis comes first (PyTorch's ``(N, C, D, H, W)``).
  MONAI's ``LoadImage`` gives NIfTI volumes as ``(C, H, W, D)``, the slice axis last: there ``axes=(0, 1)`` turns
  the axial slices (the default ``(1, 2)`` mixes the slice axis in), and flip ``"d"`` mirrors axis 0. Euler
  angles ``angle=(a0, a1, a2)`` (with ``axes=None``) apply rotations in the planes ``(1, 2)``, ``(2, 0)``,
  ``(0, 1)`` in that order, composed into one resampling.
* The inverse of ``rotate(x, angle)`` is ``rotate_inverse(y, angle)`` (``rotate(y, -angle)`` for one plane).
* ``validity_mask`` marks output pixels whose interpolation stencil lies entirely inside the input, so corners
  filled by padding never count; ``roundtrip_mask`` does the same for rotate-then-rotate-back (TTA weights).
* Memory (non-right angles): the sampling grid / nearest gather index comes from float64 coordinates (built in
  one shot: 55-70 bytes of peak memory per voxel measured on CPU). When the temporaries (estimated conservatively
  by ``_grid_bytes_per_voxel``) exceed ``_CHUNK_BUDGET_BYTES`` (256 MiB) the output is resampled in chunks of flat
  output voxels, each with only its own rows of the grid, so peak extra memory stays near the budget plus the
  output (a 512x512x300 float32 volume at 30 degrees on CPU: 4.2 GB -> 0.5 GB bilinear, 5.4 GB -> 0.55 GB
  nearest); results are bit-for-bit those of the single-shot path. Grids / indices of at most 32 MiB are cached
  (see ``_cached``), larger ones are never held whole. ``validity_mask`` is chunked too.

Written with ``torch.nn.functional.affine_grid``/``grid_sample`` rather than MONAI's ``Rotate`` transform because
the latter works on single unbatched images, rotates about a different centre convention and has no validity
mask or exact path for right angles; these functions are pure batched tensor math usable inside a forward pass.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "INTERP_MODES",
    "as_angle_list",
    "as_flip_list",
    "PADDING_MODES_ROT",
    "Geometry",
    "central_disk_mask",
    "clear_rotation_cache",
    "flip",
    "flip_axis",
    "is_right_angle",
    "make_geometries",
    "rotate",
    "rotate_inverse",
    "rotation_matrix",
    "roundtrip_mask",
    "validity_mask",
    "warn_if_anisotropic",
]

logger = logging.getLogger(__name__)

INTERP_MODES = ("nearest", "bilinear", "bicubic")
PADDING_MODES_ROT = ("zeros", "border", "reflection")
_EULER_PLANES = ((1, 2), (2, 0), (0, 1))
# how far (in pixels) outside [0, size - 1] a source coordinate may lie before its stencil reads padding
_MARGIN = {"nearest": 0.5, "bilinear": 0.0, "bicubic": -1.0}
_TOL = 1e-3  # pixel tolerance for float round-off in the validity test

AngleLike = float | int | Sequence[float]


def _check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got spatial_dims={spatial_dims}.")


def _spatial_dims_hint(ndim: int, spatial_dims: int) -> str:
    """What to pass when a tensor of ``ndim`` dims does not match ``spatial_dims`` (for the shape errors of the
    evaluation and TTA functions, whose ``spatial_dims`` defaults to 2: a volume needs ``spatial_dims=3``)."""
    if ndim == 5 and spatial_dims == 2:
        return "; a volume (N, C, D, H, W) needs spatial_dims=3"
    if ndim == 4 and spatial_dims == 3:
        return "; an image (N, C, H, W) needs spatial_dims=2"
    return ""


def _check_mode(mode: str, spatial_dims: int) -> str:
    if mode == "trilinear":
        mode = "bilinear"
    if mode not in INTERP_MODES:
        raise ValueError(f"mode must be one of {INTERP_MODES} (or 'trilinear'), got mode={mode!r}.")
    if mode == "bicubic" and spatial_dims == 3:
        raise ValueError("mode='bicubic' is 2D only (grid_sample limitation); use 'bilinear' or 'nearest' in 3D.")
    return mode


def _is_degrees(a: object) -> bool:
    """A finite real number (Python or NumPy); not a bool."""
    return isinstance(a, numbers.Real) and not isinstance(a, (bool, np.bool_)) and math.isfinite(float(a))


def _axes_ints(axes: object, spatial_dims: int) -> tuple[int, ...]:
    """``axes`` (a rotation plane) as a tuple of ints: a sequence (or 1D array / tensor) of integers, Python or NumPy.

    A single int (a rotation *axis*, e.g. ``axes=2`` for the slice axis of a MONAI ``(H, W, D)`` volume) stopped in
    "'int' object is not iterable", text ``"ab"`` in ``int()``, both without naming ``axes``; text ``"01"``, floats
    (``(0.5, 1)`` was ``(0, 1)``) and bools (``(True, 2)`` was ``(1, 2)``) were read silently.

    Raises:
        ValueError: naming ``axes`` (for a single int in 3D: the plane that rotates about that axis).
    """
    if isinstance(axes, (torch.Tensor, np.ndarray)):
        axes = axes.tolist()
    if isinstance(axes, numbers.Integral) and not isinstance(axes, (bool, np.bool_)):
        hint = ""
        if spatial_dims == 3 and -3 <= int(axes) <= 2:
            c = int(axes) % 3
            hint = f"; to rotate about spatial axis {c} pass axes={tuple(i for i in range(3) if i != c)}"
        raise ValueError(
            f"axes is a rotation plane, two spatial axes (e.g. axes=(0, 1)), got the single axis axes={axes!r}{hint}."
        )
    if isinstance(axes, (str, bytes)) or not isinstance(axes, Iterable):
        raise ValueError(f"axes must be a rotation plane of two int spatial axes, e.g. (0, 1), got axes={axes!r}.")
    values = tuple(axes)
    if not all(isinstance(a, numbers.Integral) and not isinstance(a, (bool, np.bool_)) for a in values):
        raise ValueError(f"axes must be a rotation plane of two int spatial axes, e.g. (0, 1), got axes={axes!r}.")
    return tuple(int(a) for a in values)


def _planes(angle: AngleLike, spatial_dims: int, axes: Sequence[int] | None) -> list[tuple[tuple[int, int], float]]:
    """Normalise ``angle``/``axes`` into a list of (plane, degrees) applied in order."""
    _check_spatial_dims(spatial_dims)
    if axes is not None:
        axes = _axes_ints(axes, spatial_dims)
    if isinstance(angle, (torch.Tensor, np.ndarray, np.generic)):  # NumPy scalars (np.arange angles) and arrays too
        angle = angle.tolist()
    if isinstance(angle, (list, tuple)):
        if spatial_dims != 3 or axes is not None or len(angle) != 3:
            raise ValueError(
                "angle may be a sequence only as 3 Euler angles in 3D with axes=None, "
                f"got angle={angle!r}, spatial_dims={spatial_dims}, axes={axes!r}."
            )
        if not all(_is_degrees(a) for a in angle):
            raise ValueError(f"Euler angles must be 3 finite numbers of degrees, got angle={angle!r}.")
        return [(p, float(a)) for p, a in zip(_EULER_PLANES, angle)]
    if not _is_degrees(angle):
        raise ValueError(f"angle must be a finite number of degrees, got angle={angle!r}.")
    if spatial_dims == 2:
        # negative indices count from the end, as in 3D and torch.rot90: (-2, -1) is (0, 1), (-1, -2) is (1, 0)
        plane = (0, 1) if axes is None else tuple(int(a) % 2 if -2 <= int(a) <= 1 else -1 for a in axes)
        if plane not in ((0, 1), (1, 0)):
            raise ValueError(f"axes must be None, (0, 1) or (1, 0) (or negative indices) in 2D, got axes={axes!r}.")
        return [(plane, float(angle))]  # type: ignore[list-item]
    if axes is None:
        return [((1, 2), float(angle))]
    plane3 = tuple(int(a) % 3 if -3 <= int(a) <= 2 else -1 for a in axes)  # (3, 1) is out of range, not (0, 1)
    if len(plane3) != 2 or plane3[0] == plane3[1] or -1 in plane3:
        raise ValueError(f"axes must be two distinct spatial axes in 0..2 (or -3..-1), got axes={axes!r}.")
    return [(plane3, float(angle))]  # type: ignore[list-item]


def _quarter_turns(deg: float) -> int | None:
    if not math.isfinite(deg):  # not a right angle (round() raised on NaN / inf in is_right_angle)
        return None
    q = deg / 90.0
    k = round(q)
    return k % 4 if abs(q - k) < 1e-9 else None


def is_right_angle(angle: AngleLike) -> bool:
    """True when every angle is a multiple of 90 degrees (the exact index-op path applies)."""
    if isinstance(angle, (torch.Tensor, np.ndarray, np.generic)):
        angle = angle.tolist()
    if isinstance(angle, (list, tuple)):
        return all(_quarter_turns(float(a)) is not None for a in angle)
    return _quarter_turns(float(angle)) is not None


def rotation_matrix(angle: AngleLike, spatial_dims: int = 2, axes: Sequence[int] | None = None) -> torch.Tensor:
    """Float64 matrix ``M`` mapping centred output index offsets to centred source offsets: ``y(o) = x(M o)``.

    Args:
        angle: degrees (or 3 Euler angles in 3D), see module docstring.
        spatial_dims: 2 or 3.
        axes: rotation plane in 3D.

    Returns:
        ``(spatial_dims, spatial_dims)`` float64 tensor (orthogonal).
    """
    m = torch.eye(spatial_dims, dtype=torch.float64)
    for (a, b), deg in _planes(angle, spatial_dims, axes):
        k = _quarter_turns(deg)
        if k is not None:  # exact trig for right angles
            c, s = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[k]
        else:
            r = math.radians(deg)
            c, s = math.cos(r), math.sin(r)
        p = torch.eye(spatial_dims, dtype=torch.float64)
        p[a, a], p[a, b], p[b, a], p[b, b] = c, s, -s, c
        m = m @ p  # applying R1 then R2: y(o) = x(M1 M2 o)
    return m


_CACHE: OrderedDict[tuple, tuple[torch.Tensor, ...]] = OrderedDict()
_CACHE_BUDGET_BYTES = 256 * 2**20  # per process; sampling grids/gather indices of recent (shape, angle, device)
# Bound on the temporaries of one resampling (sampling grid, float64 source coordinates, gather indices): an input
# whose single-shot temporaries would exceed it is resampled in chunks of output voxels (see _chunk_ranges)
_CHUNK_BUDGET_BYTES = 256 * 2**20
_CHUNK_MIN_VOXELS = 4096  # smallest chunk (a budget lowered in tests still keeps BLAS on its large-matrix path)


def clear_rotation_cache() -> None:
    """Drop the cached sampling grids / gather indices (they are rebuilt on demand)."""
    _CACHE.clear()


def _cached(key: tuple, build: Callable[[], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Tiny LRU keyed by (kind, shape, matrix, device, ...) with a byte budget: evaluating 38 views per batch
    reuses the same 38 grids for every batch instead of rebuilding them. An entry larger than an eighth of the
    budget (32 MiB: a 3D float32 grid of about 2.8M voxels) is returned but not kept; the resampling functions do
    not even build such grids whole (they go chunk by chunk, see :func:`_chunk_ranges`)."""
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    # normal tensors even when first built under torch.inference_mode(): an inference tensor in the cache (a grid
    # built while evaluating) made every later rotation of a tensor that needs gradients fail ("Inference tensors
    # cannot be saved for backward")
    with torch.inference_mode(False):
        val = build()
    size = sum(t.numel() * t.element_size() for t in val)
    if size <= _CACHE_BUDGET_BYTES // 8:
        _CACHE[key] = val
        total = sum(sum(t.numel() * t.element_size() for t in v) for v in _CACHE.values())
        while total > _CACHE_BUDGET_BYTES and len(_CACHE) > 1:
            _, old = _CACHE.popitem(last=False)
            total -= sum(t.numel() * t.element_size() for t in old)
    return val


def _mkey(m: torch.Tensor) -> tuple[float, ...]:
    return tuple(float(v) for v in m.flatten().tolist())


def _theta(spatial_shape: Sequence[int], m: torch.Tensor) -> torch.Tensor:
    """``affine_grid``'s ``(1, d, d + 1)`` float64 ``theta`` of matrix ``m`` (normalised coordinates, no shift)."""
    d = len(spatial_shape)
    half = torch.tensor([max((s - 1) / 2.0, 0.5) for s in spatial_shape], dtype=torch.float64)
    mn = (m * half[None, :]) / half[:, None]  # D^-1 M D in normalised coordinates
    theta = torch.zeros(1, d, d + 1, dtype=torch.float64)
    theta[0, :, :d] = mn.flip(0).flip(1)  # grid order is (x=W, y=H[, z=D]) = reversed spatial dims
    return theta


def _source_grid(spatial_shape: Sequence[int], m: torch.Tensor, device, dtype) -> torch.Tensor:
    """``affine_grid`` (align_corners=True) of the source coordinates of matrix ``m``: ``(1, *spatial, d)``."""
    theta = _theta(spatial_shape, m)
    # float64 (then cast): autocast (AMP) lowers float32 affine_grid to float16/bfloat16, which cost precision and
    # put a half-precision grid in the float32 cache entry (grid_sample then failed, inside autocast and after it)
    grid = F.affine_grid(theta.to(device=device), [1, 1, *spatial_shape], align_corners=True)
    return grid.to(dtype)


def _chunk_ranges(n_voxels: int, bytes_per_voxel: int) -> list[tuple[int, int]] | None:
    """Ranges ``[start, stop)`` of flat (C-order) output voxel indices whose resampling temporaries fit
    ``_CHUNK_BUDGET_BYTES`` (``bytes_per_voxel`` each), or ``None`` when the whole output fits (the single-shot path,
    which caches its grid). Chunks are of near-equal size, at least ``_CHUNK_MIN_VOXELS / 2`` voxels each."""
    if n_voxels * bytes_per_voxel <= _CHUNK_BUDGET_BYTES:
        return None
    size = max(_CHUNK_BUDGET_BYTES // bytes_per_voxel, _CHUNK_MIN_VOXELS)
    k = -(-n_voxels // size)
    if k <= 1:
        return None
    bounds = [n_voxels * i // k for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _grid_bytes_per_voxel(spatial_dims: int, n_lead: int) -> int:
    """Upper estimate of the temporaries per output voxel of one resampling step: int64 flat indices and their
    unravelled parts, float64 base grid / source coordinates (several ``spatial_dims``-vectors) and the chunk of
    output of the ``n_lead`` leading channels. Calibrated on CPU with ``ru_maxrss`` (measured 117-236 bytes per
    voxel of a chunk, 2D and 3D, 1-4 channels, every path incl. the masks)."""
    return 48 * (spatial_dims + 1) + 32 * max(n_lead, 1)


def _unravel(start: int, stop: int, spatial_shape: Sequence[int], device) -> list[torch.Tensor]:
    """int64 index along each spatial axis of the flat (C-order) voxel indices ``start..stop - 1``."""
    flat = torch.arange(start, stop, dtype=torch.long, device=device)
    out = []
    for s in reversed(spatial_shape[1:]):
        out.append(flat % s)
        flat = flat // s
    out.append(flat)
    return out[::-1]


def _source_grid_chunk(spatial_shape: Sequence[int], m: torch.Tensor, device, dtype, start: int, stop: int):
    """Rows ``start..stop - 1`` (flat output voxels) of :func:`_source_grid`, as ``(1, stop - start, d)``: the same
    float64 base grid (``linspace(-1, 1, size)``, 0 for a size of 1) times ``theta`` with the same ``bmm`` as ATen's
    ``affine_grid``, so every row equals the single-shot grid's (bit for bit, checked by the tests)."""
    d = len(spatial_shape)
    theta = _theta(spatial_shape, m).to(device=device)
    idx = _unravel(start, stop, spatial_shape, device)
    base = torch.empty(stop - start, d + 1, dtype=torch.float64, device=device)
    for k in range(d):  # grid order (x=W, y=H[, z=D]): column k is spatial axis d - 1 - k
        s = spatial_shape[d - 1 - k]
        if s > 1:
            lin = torch.linspace(-1, 1, s, dtype=torch.float64, device=device)
        else:  # ATen's linspace_from_neg_one: 0 for a size of 1
            lin = torch.zeros(1, dtype=torch.float64, device=device)
        base[:, k] = lin[idx[d - 1 - k]]
    base[:, d] = 1.0
    return base[None].bmm(theta.transpose(1, 2)).to(dtype)


def _as_plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def _right_angle_turns(planes, inverse: bool) -> list[tuple[tuple[int, int], int]] | None:
    """(plane, k) rot90 sequence when every plane angle is a right angle, else None."""
    turns = [(p, _quarter_turns(d)) for p, d in planes]
    if any(k is None for _, k in turns):
        return None
    if inverse:
        turns = [(p, (-k) % 4) for p, k in reversed(turns)]
    return turns  # type: ignore[return-value]


def _source_coords(
    spatial_shape: Sequence[int], m: torch.Tensor, device, chunk: tuple[int, int] | None = None
) -> torch.Tensor:
    """Float64 source index coordinates ``(*spatial, d)`` (spatial axis order) of every output pixel; with
    ``chunk=(start, stop)`` those of the flat output voxels ``start..stop - 1`` only, as ``(stop - start, d)``."""
    c = torch.tensor([(s - 1) / 2.0 for s in spatial_shape], dtype=torch.float64, device=device)
    if chunk is None:
        coords = torch.meshgrid(
            *[torch.arange(s, dtype=torch.float64, device=device) for s in spatial_shape], indexing="ij"
        )
    else:
        coords = [i.to(torch.float64) for i in _unravel(*chunk, spatial_shape, device)]  # exact integers
    off = torch.stack(coords, dim=-1) - c
    return off @ m.to(device).T + c


def _reflect(coord: torch.Tensor, size: int) -> torch.Tensor:
    """``grid_sample(padding_mode="reflection", align_corners=True)`` coordinate reflection about 0 and size - 1."""
    if size == 1:
        return torch.zeros_like(coord)
    period = 2.0 * (size - 1)
    c = torch.remainder(coord.abs(), period)
    return torch.where(c > size - 1, period - c, c)


def _nearest_index(
    spatial: tuple[int, ...], m: torch.Tensor, device, padding_mode: str, chunk: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat gather index and in-bounds mask of nearest-neighbour resampling (float64 coordinates); with
    ``chunk=(start, stop)`` those of the flat output voxels ``start..stop - 1`` (the mask then flat too)."""
    src = _source_coords(spatial, m, device, chunk)
    inside = torch.ones(src.shape[:-1], dtype=torch.bool, device=device)
    flat_idx = torch.zeros(src.shape[:-1], dtype=torch.long, device=device)
    for i, s in enumerate(spatial):
        ci = src[..., i]
        if padding_mode == "reflection":
            ci = _reflect(ci, s)
        idx = torch.round(ci).long()  # round half to even, like grid_sample's nearbyint
        inside &= (idx >= 0) & (idx <= s - 1)
        flat_idx = flat_idx * s + idx.clamp(0, s - 1)  # "border": clamped index
    return flat_idx.reshape(-1), inside


def _cacheable(nbytes: int) -> bool:
    """Whether :func:`_cached` keeps an entry of ``nbytes`` (at most an eighth of its budget)."""
    return nbytes <= _CACHE_BUDGET_BYTES // 8


def _nearest_index_chunked(
    spatial: tuple[int, ...], m: torch.Tensor, device, padding_mode: str, chunks: list[tuple[int, int]] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_nearest_index` of the whole output, built chunk by chunk when ``chunks`` is given (same values)."""
    if chunks is None:
        return _nearest_index(spatial, m, device, padding_mode)
    n = math.prod(spatial)
    flat_idx = torch.empty(n, dtype=torch.long, device=device)
    inside = torch.empty(n, dtype=torch.bool, device=device)
    for start, stop in chunks:
        flat_idx[start:stop], inside[start:stop] = _nearest_index(spatial, m, device, padding_mode, (start, stop))
    return flat_idx, inside.reshape(spatial)


def _resample_nearest(x: torch.Tensor, m: torch.Tensor, spatial_dims: int, padding_mode: str) -> torch.Tensor:
    """Nearest-neighbour resampling by integer gather: exact for every dtype (labels keep their ids) and the same
    pixel choice for images and labels whatever their dtype (the coordinates are float64 for both).

    The gather index (9 bytes per voxel) is cached when small enough (:func:`_cached`); its float64 construction is
    chunked (:func:`_chunk_ranges`) when it would exceed ``_CHUNK_BUDGET_BYTES``. An index too large to cache is
    never built whole: each chunk of output voxels is gathered with its own rows of it. Same values on every path.
    """
    lead = x.ndim - spatial_dims
    spatial = tuple(x.shape[lead:])
    flat = x.reshape(*x.shape[:lead], -1)
    n = flat.shape[-1]
    chunks = _chunk_ranges(n, _grid_bytes_per_voxel(spatial_dims, math.prod(x.shape[:lead])))
    if chunks is None or _cacheable(9 * n):
        flat_idx, inside = _cached(
            ("nearest", spatial, _mkey(m), x.device, padding_mode),
            lambda: _nearest_index_chunked(spatial, m, x.device, padding_mode, chunks),
        )
        out = flat[..., flat_idx].reshape(x.shape)
        if padding_mode == "zeros":
            out = out * inside if x.dtype != torch.bool else out & inside
        return out
    out = torch.empty_like(flat)
    for start, stop in chunks:
        idx, inside = _nearest_index(spatial, m, x.device, padding_mode, (start, stop))
        part = flat[..., idx]
        if padding_mode == "zeros":
            part = part * inside if x.dtype != torch.bool else part & inside
        out[..., start:stop] = part
    return out.reshape(x.shape)


def _cast_back(out: torch.Tensor, orig_dtype: torch.dtype) -> torch.Tensor:
    """Interpolated values (float32/float64) back to the input's dtype: bool thresholded at 0.5, integers rounded
    and saturated."""
    if orig_dtype == torch.bool:
        return out > 0.5
    if not orig_dtype.is_floating_point:
        # saturate: bicubic overshoots the input range at edges (a uint8 255|0 edge gives 301 and -28), which the
        # integer cast would wrap around (301 -> 45, -28 -> 228)
        info = torch.iinfo(orig_dtype)
        return out.round().clamp(info.min, info.max).to(orig_dtype)
    return out.to(orig_dtype)


def _grid_chunked(spatial: tuple[int, ...], m: torch.Tensor, device, dtype, chunks) -> torch.Tensor:
    """:func:`_source_grid`, built chunk by chunk with :func:`_source_grid_chunk` when ``chunks`` is given."""
    if chunks is None:
        return _source_grid(spatial, m, device, dtype)
    d = len(spatial)
    grid = torch.empty(1, math.prod(spatial), d, dtype=dtype, device=device)
    for start, stop in chunks:
        grid[:, start:stop] = _source_grid_chunk(spatial, m, device, dtype, start, stop)
    return grid.reshape(1, *spatial, d)


def _resample(x: torch.Tensor, m: torch.Tensor, spatial_dims: int, mode: str, padding_mode: str) -> torch.Tensor:
    """Resample ``x`` (``(..., *spatial)``) at the source coordinates of matrix ``m`` with ``grid_sample``.

    Memory: the sampling grid (``spatial_dims`` floats per voxel) is cached when small enough (:func:`_cached`); its
    float64 construction is chunked (:func:`_chunk_ranges`) when it would exceed ``_CHUNK_BUDGET_BYTES``. A grid
    too large to cache is never built whole: each chunk of output voxels is sampled with its own rows of the grid.
    Every path gives the same values (the same grid rows, the same ``grid_sample`` per output voxel).
    """
    if mode == "nearest":
        return _resample_nearest(x, m, spatial_dims, padding_mode)
    lead = x.ndim - spatial_dims
    spatial = tuple(x.shape[lead:])
    orig_dtype = x.dtype
    # half precision (fp16, bf16) resamples in float32: a bf16 sampling grid is off by up to a pixel at 128 px and
    # PyTorch's CPU grid_sample returns NaN/1e37 on bf16 images of ~200 px
    work_dtype = orig_dtype if orig_dtype in (torch.float32, torch.float64) else torch.float32
    flat = x.reshape(1, -1, *spatial).to(work_dtype)  # fold all leading dims into channels: one grid for all
    n = math.prod(spatial)
    chunks = _chunk_ranges(n, _grid_bytes_per_voxel(spatial_dims, flat.shape[1]))
    elem = torch.finfo(work_dtype).bits // 8
    if chunks is None or _cacheable(n * spatial_dims * elem):
        grid = _cached(
            ("grid", spatial, _mkey(m), x.device, work_dtype),
            lambda: (_grid_chunked(spatial, m, x.device, work_dtype, chunks),),
        )[0]
        out = F.grid_sample(flat, grid, mode=mode, padding_mode=padding_mode, align_corners=True).reshape(x.shape)
        return _cast_back(out, orig_dtype)
    out = torch.empty(flat.shape[1], n, dtype=orig_dtype, device=x.device)
    for start, stop in chunks:
        # the chunk's grid rows as a (1, [1,] 1, L, d) grid: grid_sample's output takes the grid's spatial shape
        grid = _source_grid_chunk(spatial, m, x.device, work_dtype, start, stop)
        grid = grid.reshape(1, *([1] * (spatial_dims - 1)), stop - start, spatial_dims)
        part = F.grid_sample(flat, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
        out[:, start:stop] = _cast_back(part.reshape(flat.shape[1], stop - start), orig_dtype)
    return out.reshape(x.shape)


def _rotate(x, angle, spatial_dims, mode, axes, padding_mode, exact, inverse) -> torch.Tensor:
    mode = _check_mode(mode, spatial_dims)
    if padding_mode not in PADDING_MODES_ROT:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES_ROT}, got padding_mode={padding_mode!r}.")
    if x.ndim < spatial_dims:
        raise ValueError(f"x must have at least spatial_dims={spatial_dims} dims, got x.shape={tuple(x.shape)}.")
    planes = _planes(angle, spatial_dims, axes)
    x = _as_plain(x)
    turns = _right_angle_turns(planes, inverse) if exact else None
    if turns is not None:
        lead = x.ndim - spatial_dims
        for (a, b), k in turns:
            if k:
                x = torch.rot90(x, k, dims=(lead + a, lead + b))
        return x
    m = rotation_matrix(angle, spatial_dims, axes)
    return _resample(x, m.T if inverse else m, spatial_dims, mode, padding_mode)


def rotate(
    x: torch.Tensor,
    angle: AngleLike,
    spatial_dims: int = 2,
    mode: str = "bilinear",
    axes: Sequence[int] | None = None,
    padding_mode: str = "zeros",
    exact: bool = True,
) -> torch.Tensor:
    """Rotate the trailing ``spatial_dims`` dims of ``x`` counter-clockwise by ``angle`` degrees about the centre.

    Args:
        x: ``(..., *spatial)`` tensor, any dtype. ``mode="nearest"`` is an integer gather (exact for labels of any
            dtype, and images and labels pick the same pixels); interpolating modes sample integer/bool tensors in
            float32 and round back, saturating at the dtype's range (bicubic overshoots a uint8 edge). All leading
            dims share one sampling grid. MetaTensors come back as plain tensors.
        angle: degrees; in 3D also ``(a0, a1, a2)`` Euler angles (with ``axes=None``).
        spatial_dims: 2 or 3.
        mode: ``"nearest"``, ``"bilinear"`` (trilinear on volumes; also accepted as ``"trilinear"``) or
            ``"bicubic"`` (2D only). Ignored on the exact right-angle path.
        axes: 3D rotation plane ``(a, b)`` of spatial axes (default ``(1, 2)``).
        padding_mode: ``grid_sample`` padding for pixels rotated in from outside (``"zeros"``, ``"border"``,
            ``"reflection"``); see :func:`validity_mask` to exclude them.
        exact: use ``torch.rot90`` for multiples of 90 degrees (bit-exact; odd multiples swap the plane's dims of
            a non-square image). ``False`` resamples every angle on the input grid (shape kept).

    Returns:
        Rotated tensor, same dtype and device as ``x``; shape ``x.shape`` except for the right-angle case above.
    """
    return _rotate(x, angle, spatial_dims, mode, axes, padding_mode, exact, inverse=False)


def rotate_inverse(
    y: torch.Tensor,
    angle: AngleLike,
    spatial_dims: int = 2,
    mode: str = "bilinear",
    axes: Sequence[int] | None = None,
    padding_mode: str = "zeros",
    exact: bool = True,
) -> torch.Tensor:
    """Undo :func:`rotate` with the same ``angle``/``axes`` (one resampling with the transposed matrix).

    Exact (bit-for-bit) for multiples of 90 degrees; for other angles it is a second resampling and only pixels
    in :func:`roundtrip_mask` are free of padding.
    """
    return _rotate(y, angle, spatial_dims, mode, axes, padding_mode, exact, inverse=True)


def _valid_from_matrix(spatial_shape, m: torch.Tensor, mode: str, device) -> torch.Tensor:
    """Validity of the source coordinates of matrix ``m`` (see :func:`validity_mask`); large shapes in chunks of
    output voxels (:func:`_chunk_ranges`), the same values with bounded temporaries."""
    n = math.prod(spatial_shape)
    chunks = _chunk_ranges(n, _grid_bytes_per_voxel(len(spatial_shape), 1))
    if chunks is None:
        return _valid_coords(_source_coords(spatial_shape, m, device), spatial_shape, mode)
    out = torch.empty(n, dtype=torch.bool, device=device)
    for start, stop in chunks:
        out[start:stop] = _valid_coords(_source_coords(spatial_shape, m, device, (start, stop)), spatial_shape, mode)
    return out.reshape(tuple(spatial_shape))


def _valid_coords(src: torch.Tensor, spatial_shape, mode: str) -> torch.Tensor:
    """``(..., d)`` source coordinates -> bool ``(...)``: the interpolation stencil of ``mode`` lies inside."""
    sizes = torch.tensor(spatial_shape, dtype=torch.float64, device=src.device)
    if mode == "nearest":  # exactly the test used by _resample_nearest
        idx = torch.round(src)
        return ((idx >= 0) & (idx <= sizes - 1)).all(dim=-1)
    margin = _MARGIN[mode]
    return ((src >= -margin - _TOL) & (src <= sizes - 1.0 + margin + _TOL)).all(dim=-1)


def validity_mask(
    spatial_shape: Sequence[int],
    angle: AngleLike,
    spatial_dims: int = 2,
    mode: str = "bilinear",
    axes: Sequence[int] | None = None,
    exact: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean mask of output pixels of ``rotate(x, angle, mode=mode)`` computed from input pixels only.

    A pixel is valid when the whole interpolation stencil of its source point lies inside the input:
    ``nearest`` -> the nearest input pixel exists (exact, same rounding as the resampling); ``bilinear`` -> source
    in ``[0, size - 1]``; ``bicubic`` -> source in ``[1, size - 2]`` (the 4x4 stencil). Tolerance 1e-3 pixel for
    the interpolating modes (a padded neighbour may then carry a weight of at most 1e-3).

    Args:
        spatial_shape: spatial shape of the *input* image (``spatial_dims`` ints).
        angle, spatial_dims, mode, axes, exact: as in :func:`rotate`.
        device: device of the returned mask.

    Returns:
        bool tensor of the output spatial shape (all True on the exact right-angle path).
    """
    mode = _check_mode(mode, spatial_dims)
    spatial_shape = _check_shape(spatial_shape, spatial_dims)
    planes = _planes(angle, spatial_dims, axes)
    turns = _right_angle_turns(planes, False) if exact else None
    if turns is not None:
        shape = list(spatial_shape)
        for (a, b), k in turns:
            if k % 2:
                shape[a], shape[b] = shape[b], shape[a]
        return torch.ones(shape, dtype=torch.bool, device=device)
    return _valid_from_matrix(spatial_shape, rotation_matrix(angle, spatial_dims, axes), mode, device)


def _shape_ints(spatial_shape) -> tuple[int, ...]:
    """``spatial_shape`` as a tuple of ints: integers only (Python, NumPy, 0-dim integer tensors), never truncated
    floats; a tensor of data (e.g. the image instead of its ``.shape[-2:]``) is named in the error."""
    if isinstance(spatial_shape, torch.Tensor) and spatial_shape.ndim != 1:
        raise ValueError(
            f"spatial_shape must be a sequence of ints (e.g. x.shape[-2:]), got a tensor of shape "
            f"{tuple(spatial_shape.shape)}."
        )
    values = spatial_shape.tolist() if isinstance(spatial_shape, (torch.Tensor, np.ndarray)) else spatial_shape
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"spatial_shape must be a sequence of ints, got spatial_shape={spatial_shape!r}.")
    # 0-dim integer tensors (a shape computed with torch ops) as their values
    values = tuple(v.item() if isinstance(v, torch.Tensor) and v.ndim == 0 and not v.is_floating_point() else v
                   for v in values)  # fmt: skip
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in values):
        raise ValueError(f"spatial_shape must be a sequence of ints, got spatial_shape={values!r}.")
    return tuple(int(v) for v in values)


def _check_shape(spatial_shape, spatial_dims) -> tuple[int, ...]:
    spatial_shape = _shape_ints(spatial_shape)
    if len(spatial_shape) != spatial_dims or min(spatial_shape) < 1:
        raise ValueError(f"spatial_shape must be {spatial_dims} positive ints, got spatial_shape={spatial_shape}.")
    return spatial_shape


def roundtrip_mask(
    spatial_shape: Sequence[int],
    angle: AngleLike,
    spatial_dims: int = 2,
    mode: str = "bilinear",
    axes: Sequence[int] | None = None,
    exact: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Mask of input pixels ``p`` where ``rotate_inverse(f(rotate(x, angle)), angle)`` reads only real pixels.

    ``p`` is valid when the back-rotation stencil at ``p`` lies inside the rotated frame and every rotated pixel
    in that stencil is itself valid (:func:`validity_mask`); ``f`` is assumed pointwise in space. Used as
    per-view weights by the TTA inferer.

    Returns:
        bool tensor of ``spatial_shape`` (all True for right angles).
    """
    mode = _check_mode(mode, spatial_dims)
    spatial_shape = _check_shape(spatial_shape, spatial_dims)
    fwd = validity_mask(spatial_shape, angle, spatial_dims, mode, axes, exact, device)
    if bool(fwd.all()):
        return torch.ones(spatial_shape, dtype=torch.bool, device=fwd.device)
    v = fwd.to(torch.float64)
    if mode == "bicubic":  # the 4x4 stencil lies inside the 2x2 bilinear stencil dilated by one pixel
        v = -F.max_pool2d(-v[None, None], 3, stride=1, padding=1)[0, 0]
    back_mode = "nearest" if mode == "nearest" else "bilinear"
    m_inv = rotation_matrix(angle, spatial_dims, axes).T
    back = _resample(v, m_inv, spatial_dims, back_mode, "zeros")
    # the back-rotation samples with ``mode`` itself: a bicubic stencil reaches one pixel further than bilinear
    inv_valid = _valid_from_matrix(tuple(fwd.shape), m_inv, mode, fwd.device)
    return (back >= 1.0 - 1e-6) & inv_valid


_FLIP_NAMES = {2: {"v": 0, "h": 1}, 3: {"d": 0, "v": 1, "h": 2}}


def flip_axis(axis: int | str, spatial_dims: int = 2) -> int:
    """Spatial axis index of a flip name: ``"h"`` (horizontal, mirrors W), ``"v"`` (vertical, mirrors H), ``"d"``
    (3D depth); ints are spatial axis indices (negative allowed)."""
    _check_spatial_dims(spatial_dims)
    if isinstance(axis, str):
        if axis not in _FLIP_NAMES[spatial_dims]:
            hint = "; 'd' mirrors the depth axis of a volume: pass spatial_dims=3" if axis == "d" else ""
            raise ValueError(
                f"flip axis must be one of {sorted(_FLIP_NAMES[spatial_dims])} or an int, got axis={axis!r}{hint}."
            )
        return _FLIP_NAMES[spatial_dims][axis]
    # an integer (Python or NumPy): a float was truncated (1.5 mirrored axis 1) and True read as axis 1
    if not isinstance(axis, numbers.Integral) or isinstance(axis, (bool, np.bool_)):
        raise ValueError(f"flip axis must be 'h', 'v', 'd' (3D) or an int spatial axis, got axis={axis!r}.")
    if not -spatial_dims <= int(axis) < spatial_dims:
        raise ValueError(f"flip axis must be in [-{spatial_dims}, {spatial_dims - 1}], got axis={axis!r}.")
    return int(axis) % spatial_dims


def flip(x: torch.Tensor, axis: int | str, spatial_dims: int = 2) -> torch.Tensor:
    """Mirror ``x`` along one spatial axis (exact; its own inverse). See :func:`flip_axis` for names."""
    a = flip_axis(axis, spatial_dims)
    x = _as_plain(x)
    return torch.flip(x, dims=(x.ndim - spatial_dims + a,))


def central_disk_mask(
    spatial_shape: Sequence[int],
    radius_frac: float = 0.35,
    device: torch.device | str | None = None,
    axes: Sequence[int] | None = None,
) -> torch.Tensor:
    """Bool disk (2D), ball (3D) or, with a 3D rotation plane ``axes``, cylinder about the centre ``(size - 1) / 2``.

    * 2D: the disk of radius ``radius_frac * min(size)`` (``axes``, if given, is checked and changes nothing: the
      plane is the whole image).
    * 3D, ``axes=None``: the ball of radius ``radius_frac * min(size)``, the region that every 3D rotation (Euler
      angles) maps onto itself.
    * 3D, ``axes=(a, b)``: the region that a rotation in the plane ``(a, b)`` (about the remaining axis ``c``) maps
      onto itself, a cylinder: the disk of radius ``radius_frac * min(size[a], size[b])`` in the plane, times the
      whole extent of axis ``c``. A thin volume (e.g. ``(64, 64, 8)`` rotated in the 64x64 plane) keeps every slice.

    With ``radius_frac <= 0.5 - 1/r_size`` (``r_size`` the smallest size the radius is taken from) the region stays
    inside the image under any such rotation, so it is the same set of image content at every angle (used for
    equivariance errors and fair cross-angle comparisons).

    Args:
        spatial_shape: spatial shape ``(H, W)`` or ``(D, H, W)`` (2 or 3 positive ints).
        radius_frac: radius as a fraction of the smallest size the radius is taken from, in ``(0, 0.5]``.
        device: device of the returned mask.
        axes: rotation plane ``(a, b)`` of spatial axes (negative indices allowed, as in :func:`rotate`); ``None``:
            the disk (2D) or ball (3D).

    Returns:
        bool tensor of ``spatial_shape``.
    """
    if not 0 < radius_frac <= 0.5:
        raise ValueError(f"radius_frac must be in (0, 0.5], got radius_frac={radius_frac}.")
    spatial_shape = _shape_ints(spatial_shape)
    in_plane = list(range(len(spatial_shape)))
    if axes is not None:
        if len(spatial_shape) not in (2, 3):
            raise ValueError(f"axes needs a 2D or 3D spatial_shape, got spatial_shape={spatial_shape}, axes={axes!r}.")
        in_plane = sorted(_planes(0.0, len(spatial_shape), axes)[0][0])  # validates axes as rotate() does
    r = radius_frac * min(spatial_shape[i] for i in in_plane)
    coords = torch.meshgrid(
        *[torch.arange(s, dtype=torch.float64, device=device) - (s - 1) / 2.0 for s in spatial_shape], indexing="ij"
    )
    return sum(coords[i] ** 2 for i in in_plane) <= r * r + 1e-9  # type: ignore[operator]


def _disk_axes(angle: AngleLike, spatial_dims: int, axes: Sequence[int] | None) -> tuple[int, int] | None:
    """The ``axes`` of :func:`central_disk_mask` that scores rotations by ``angle``: the rotation plane of a single 3D
    angle (default ``(1, 2)``, a cylinder), ``None`` for Euler angles (a ball) and in 2D (the disk)."""
    if spatial_dims != 3 or _is_euler(angle):
        return None
    return _planes(0.0, 3, axes)[0][0]  # type: ignore[return-value]


def _region_name(spatial_dims: int, axes: Sequence[int] | None) -> str:
    """Words for the region of :func:`central_disk_mask` (for error messages): disk, ball or cylinder."""
    if spatial_dims != 3:
        return "central disk of radius radius_frac * min(size)"
    if axes is None:
        return "central ball of radius radius_frac * min(size)"
    a, b = sorted(int(v) % 3 for v in axes)
    c = 3 - a - b
    return f"central cylinder (along axis {c}) of radius radius_frac * min(size[{a}], size[{b}])"


def _fmt_angle(a: float) -> str:
    return f"{a:g}".replace("-", "m")


@dataclass(frozen=True)
class Geometry:
    """A flip (optional, applied first) followed by a rotation; the unit shared by TTA, robustness and tests.

    Args:
        angle: degrees (or 3 Euler angles in 3D), see :func:`rotate`.
        flip: ``None``, ``"h"``, ``"v"``, ``"d"`` (3D) or a spatial axis index.
        spatial_dims: 2 or 3.
        axes: 3D rotation plane.
        padding_mode: padding for rotated-in pixels.
    """

    angle: float | tuple[float, float, float] = 0.0
    flip: str | int | None = None
    spatial_dims: int = 2
    axes: tuple[int, int] | None = None
    padding_mode: str = "zeros"

    def __post_init__(self):
        if self.axes is not None:
            object.__setattr__(self, "axes", _axes_ints(self.axes, self.spatial_dims))
        _planes(self.angle, self.spatial_dims, self.axes)  # validates
        # a float or a tuple of floats: keeps the dataclass hashable (used as cache key) and its repr plain
        object.__setattr__(self, "angle", _norm_angle(self.angle))
        if self.padding_mode not in PADDING_MODES_ROT:  # else only a non-right angle would notice, at call time
            raise ValueError(f"padding_mode must be one of {PADDING_MODES_ROT}, got padding_mode={self.padding_mode!r}.")
        if self.flip is not None:
            flip_axis(self.flip, self.spatial_dims)

    @property
    def name(self) -> str:
        """e.g. ``"rot30"``, ``"rot0_flip_h"`` -> ``"flip_h"``, ``"rot90_flip_v"``, ``"rot(10,0,20)"``."""
        if isinstance(self.angle, (tuple, list)):
            rot = "rot(" + ",".join(_fmt_angle(float(a)) for a in self.angle) + ")"
            is_id = all(float(a) == 0 for a in self.angle)
        else:
            rot = "rot" + _fmt_angle(float(self.angle))
            is_id = float(self.angle) == 0
        if self.axes is not None and self.spatial_dims == 3:
            rot += "_ax" + "".join(str(a) for a in self.axes)
        if self.flip is None:
            return rot
        return ("" if is_id else rot + "_") + f"flip_{self.flip}"

    @property
    def is_exact(self) -> bool:
        """True when :meth:`apply` is a pure index operation (right angles and flips)."""
        return is_right_angle(self.angle)

    def apply(self, x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Flip then rotate ``x`` (``(..., *spatial)``)."""
        if self.flip is not None:
            x = flip(x, self.flip, self.spatial_dims)
        return rotate(x, self.angle, self.spatial_dims, mode, self.axes, self.padding_mode)

    def invert(self, y: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Undo :meth:`apply` (rotate back, then flip)."""
        y = rotate_inverse(y, self.angle, self.spatial_dims, mode, self.axes, self.padding_mode)
        if self.flip is not None:
            y = flip(y, self.flip, self.spatial_dims)
        return y

    def valid_mask(self, spatial_shape: Sequence[int], mode: str = "bilinear", device=None) -> torch.Tensor:
        """Bool mask (output frame of :meth:`apply`) of pixels that came from inside the input."""
        return validity_mask(spatial_shape, self.angle, self.spatial_dims, mode, self.axes, device=device)

    def roundtrip_mask(self, spatial_shape: Sequence[int], mode: str = "bilinear", device=None) -> torch.Tensor:
        """Bool mask (input frame) of pixels where ``invert(f(apply(x)))`` reads real pixels only."""
        m = roundtrip_mask(spatial_shape, self.angle, self.spatial_dims, mode, self.axes, device=device)
        return m if self.flip is None else flip(m, self.flip, self.spatial_dims)


def as_angle_list(angles: AngleLike | Iterable[AngleLike]) -> list[AngleLike]:
    """``angles`` as a list: one number (``90``, as a CLI or a config gives a single angle) becomes ``[90]``; any
    other iterable (sequence, ``range``, 1D tensor / array) is listed as it is (in 3D an entry may be an Euler
    triple).

    The one check of angle lists for every caller (``make_geometries``, ``rotation_robustness``,
    ``RotationTTAInferer``, ``equivariance_error``): text was listed character by character (``"90"`` became the
    angles 9 and 0), ``None``/``"abc"`` entries stopped in ``float()`` without naming ``angles``, ``True`` was 1
    degree and NaN/inf rotated nothing meaningful.

    Raises:
        ValueError: ``angles`` given as text, or an entry that is not a finite number of degrees (nor an Euler triple
            of them); the message names ``angles``.
    """
    if isinstance(angles, (str, bytes)):
        raise ValueError(
            f"angles must be a number or a list of numbers in degrees (e.g. [0, 45, 90]; on the command line "
            f"--angles \"[0, 45, 90]\"), got the text angles={angles!r}."
        )
    single = isinstance(angles, numbers.Real) or (isinstance(angles, (torch.Tensor, np.ndarray)) and angles.ndim == 0)
    try:
        out: list[AngleLike] = [angles] if single else list(angles)
    except TypeError:  # e.g. None
        raise ValueError(f"angles must be a number or a list of numbers in degrees, got angles={angles!r}.") from None
    for a in out:
        vals = a.tolist() if isinstance(a, (torch.Tensor, np.ndarray)) else a
        vals = list(vals) if isinstance(vals, (list, tuple)) else [vals]
        if not vals or not all(_is_degrees(v) for v in vals):
            raise ValueError(
                f"angles must be finite numbers of degrees (3D: or Euler triples), got angles={out!r} with the entry "
                f"{a!r}."
            )
    return [float(angles)] if single else out


def as_flip_list(flips: object) -> list:
    """``flips`` as a list, for every caller (``make_geometries``: ``RotationTTAInferer``, ``rotation_robustness``):
    ``None`` is no flip, one flip name as text (``"h"``) is ``["h"]``; other text (``"false"``, ``"hv"`` from a
    config) was split into letters and stopped in ``flip_axis`` with ``axis='f'``, not naming ``flips``.

    Raises:
        ValueError: ``flips`` given as text other than one flip name (the message names ``flips``).
    """
    if isinstance(flips, (str, bytes)):
        if flips not in ("h", "v", "d"):
            raise ValueError(
                f"flips must be a list of flip names ('h', 'v', 'd' in 3D) or spatial axes, e.g. ['h'], got the text "
                f"flips={flips!r}."
            )
        return [flips]
    return list(flips or ())  # type: ignore[call-overload]


def make_geometries(
    angles: AngleLike | Iterable[AngleLike] = (0,),
    flips: Sequence[str | int] = (),
    spatial_dims: int = 2,
    axes: Sequence[int] | None = None,
    product: bool = False,
    padding_mode: str = "zeros",
) -> list[Geometry]:
    """List of geometries: every angle (no flip), then either each flip alone (``product=False``, the robustness
    layout: 36 angles + 2 flips = 38 views) or every flip combined with every angle (``product=True``, the TTA
    layout: angles (0, 90, 180, 270) x flips ("h",) = the 8 elements of D4)."""
    angles = as_angle_list(angles)
    flips = as_flip_list(flips)
    if not angles:
        raise ValueError(f"angles must be a non-empty sequence of degrees, got angles={angles!r}.")
    ax = _axes_ints(axes, spatial_dims) if axes is not None else None
    geoms = [Geometry(_norm_angle(a), None, spatial_dims, ax, padding_mode) for a in angles]  # type: ignore[arg-type]
    for f in flips:
        if product:
            geoms += [Geometry(_norm_angle(a), f, spatial_dims, ax, padding_mode) for a in angles]  # type: ignore[arg-type]
        else:
            geoms.append(Geometry(0.0, f, spatial_dims, ax, padding_mode))  # type: ignore[arg-type]
    # duplicates are views that move every pixel the same way, whatever their names: 0 and 360 degrees, or (with
    # product=True) rot180 + flip "h" and flip "v"; a TTA average would weight them twice
    seen: dict[tuple[float, ...], str] = {}
    for g in geoms:
        key = _view_key(g)
        if key in seen:
            raise ValueError(
                f"angles/flips produce duplicate views ({seen[key]} and {g.name} are the same transform); got "
                f"angles={angles!r}, flips={flips!r}."
            )
        seen[key] = g.name
    return geoms


def _view_key(g: Geometry) -> tuple[float, ...]:
    """The linear map of centred coordinates of ``g.apply`` (flip first, then rotate), rounded: equal keys = same view."""
    m = rotation_matrix(g.angle, g.spatial_dims, g.axes)
    if g.flip is not None:
        f = torch.eye(g.spatial_dims, dtype=torch.float64)
        a = flip_axis(g.flip, g.spatial_dims)
        f[a, a] = -1.0
        m = f @ m
    return tuple(round(v, 9) + 0.0 for v in m.flatten().tolist())


_WARNED_ANISOTROPIC: set[tuple] = set()


def warn_if_anisotropic(x: torch.Tensor, geometries: Iterable[Geometry]) -> None:
    """Log a warning (once per plane and spacings) when ``geometries`` rotate ``x`` in a plane whose two voxel spacings
    differ, read from the affine of a MONAI ``MetaTensor`` (plain tensors carry none: nothing to check).

    The rotations act on voxel indices: in such a plane (a MONAI ``(H, W, D)`` volume of 0.8 x 0.8 x 3 mm voxels
    rotated with the default ``axes=(1, 2)``, the W-D plane) they are no physical rotation, and right angles swap
    the spacings, so the views a TTA average or a robustness report is made of are distorted anatomy. Flips and half
    turns (180 degrees: ``(i, j) -> (-i, -j)``, a physical rotation whatever the spacings) do not distort and are not
    checked.

    Args:
        x: ``(N, C, *spatial)`` or ``(C, *spatial)`` batch; a ``MetaTensor`` (batched affine ``(N, 4, 4)``: the first
            image's is read) or a plain tensor.
        geometries: the views applied to ``x``.
    """
    affine = getattr(x, "affine", None)
    if not isinstance(affine, torch.Tensor) or affine.ndim not in (2, 3) or 0 in affine.shape:
        return
    a = (affine[0] if affine.ndim == 3 else affine).detach().double().cpu()
    for g in geometries:
        d = g.spatial_dims
        if a.shape[-1] - 1 < d:  # an affine without that many spatial axes
            continue
        spacing = torch.linalg.vector_norm(a[:-1, :d], dim=0).tolist()
        for (i, j), deg in _planes(g.angle, d, g.axes):
            si, sj = spacing[i], spacing[j]
            # 0 and 180 degrees keep every voxel's spacings: a half turn of an anisotropic plane is a physical rotation
            if _quarter_turns(deg) in (0, 2) or min(si, sj) <= 0 or max(si, sj) / min(si, sj) < 1.01:
                continue
            key = (d, tuple(sorted((i, j))), round(si, 4), round(sj, 4))
            if key in _WARNED_ANISOTROPIC:
                continue
            _WARNED_ANISOTROPIC.add(key)
            logger.warning(
                "rotating in the plane of spatial axes (%d, %d), whose voxel spacings differ (%g vs %g, from the "
                "MetaTensor's affine): the rotation moves voxel indices and is no physical rotation there (right angles "
                "swap the spacings). For MONAI (H, W, D) volumes rotate the axial slices with axes=(0, 1), or resample "
                "to isotropic voxels first (monai.transforms.Spacingd).",
                i, j, si, sj,
            )  # fmt: skip


def _is_euler(a: object) -> bool:
    """An entry of an angle list that is a sequence (a 3D Euler triple), not a single angle."""
    return isinstance(a, (tuple, list)) or (isinstance(a, (torch.Tensor, np.ndarray)) and a.ndim > 0)


def _norm_angle(a: AngleLike) -> float | tuple[float, ...]:
    if isinstance(a, (torch.Tensor, np.ndarray, np.generic)):
        a = a.tolist()
    if isinstance(a, (list, tuple)):
        return tuple(float(v) for v in a)
    return float(a)
