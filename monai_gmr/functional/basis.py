"""Ring basis of GMR convolution.

A GMR kernel of odd size ``k`` in ``d`` spatial dimensions is a weighted sum of ``n`` radial functions
("rings") evaluated at the *true* Euclidean distance ``|p|`` of every kernel offset ``p`` from the kernel
centre::

    G_i(p) = exp(-(|p| - mu_i)^2 / (2 sigma_i^2)),   mu_i = i * k / (2 (n - 1)),  i = 0..n-1

Offsets outside the inscribed circle/sphere (``|p| > k // 2 + 0.5``) are zero. ``smoothing="none"`` replaces the
Gaussians by a hard assignment of every offset to its nearest ring centre (the naive radially symmetric "Symm"
baseline of the paper).

Two samplings of the continuous kernel (``sampling``):

- ``"center"`` (the paper's): ``G_i`` evaluated at each pixel centre, ring centres ``mu_i`` evenly spaced from 0 to
  ``k / 2``, the radius of the inscribed circle.
- ``"area"``: ``G_i`` (times the support indicator) averaged over each pixel's area, by the midpoint rule on
  ``AREA_SUBSAMPLES`` sub-samples per axis, with ring centres evenly spaced from 0 to ``k // 2`` (the last pixel centre
  on an axis), so that no ring is centred on the support's edge where half of it would be cut off. The pixel-area
  average is what a band-limited resampling of the continuous kernel sees, and it smooths the cut at the support's
  edge; the kernel is then much closer to rotation-invariant at arbitrary angles (docs/benchmarks.md, "arbitrary
  angles"). It is still exactly symmetric under the 8 (2D) / 48 (3D) grid symmetries, but it is no longer a
  function of ``|p|`` alone: offsets of equal length in different orbits (``(5, 0)`` and ``(3, 4)``) may differ.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

__all__ = [
    "SMOOTHING_MODES",
    "SAMPLING_MODES",
    "AREA_SUBSAMPLES",
    "LOG_SIGMA_MIN",
    "default_num_rings",
    "check_sampling",
    "ring_extent",
    "ring_centers",
    "initial_sigma",
    "log_sigma_bounds",
    "offset_distances",
    "support_mask",
    "ring_basis",
    "ring_basis_values",
    "is_radial_basis",
    "check_kernel_size",
]

SMOOTHING_MODES = ("gaussian", "none")
SAMPLING_MODES = ("center", "area")
#: sub-samples per axis and pixel of ``sampling="area"`` (16 per pixel in 2D, 64 per voxel in 3D); measured in
#: docs/benchmarks.md: 4 brings the arbitrary-angle error of every kernel size 5..21 under the 0.01 bound
AREA_SUBSAMPLES = 4
LOG_SIGMA_MIN = math.log(1e-2)


def _is_int(value: object) -> bool:
    """An integer (Python or NumPy); bools and floats are not (``int()`` would silently truncate a float)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _ints(values: Sequence) -> bool:
    """Every value is an integer (see :func:`_is_int`)."""
    return all(_is_int(v) for v in values)


def check_kernel_size(kernel_size: int | tuple[int, ...] | list[int], spatial_dims: int) -> int:
    """Validate a GMR kernel size and return it as one odd positive int.

    Raises:
        ValueError: if ``kernel_size`` is even, non-positive, or a non-cubic tuple.
    """
    if isinstance(kernel_size, (tuple, list)):
        if len(kernel_size) != spatial_dims or not _ints(kernel_size) or len(set(kernel_size)) != 1:
            raise ValueError(
                f"kernel_size must be an int or a tuple of {spatial_dims} equal ints (GMR kernels are isotropic), "
                f"got kernel_size={tuple(kernel_size)}."
            )
        kernel_size = int(kernel_size[0])
    if not _is_int(kernel_size):
        raise ValueError(f"kernel_size must be an odd positive int, got kernel_size={kernel_size!r}.")
    kernel_size = int(kernel_size)  # a NumPy integer becomes a Python int
    if kernel_size <= 0 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int, got kernel_size={kernel_size}.")
    return kernel_size


def _check_rings_args(kernel_size: int, num_rings: int | None = None) -> None:
    """``kernel_size`` an odd positive int and ``num_rings`` (if given) a positive int, for the public basis helpers
    (an even ``k`` gave a ``(k + 1)``-wide grid, ``num_rings=0`` an empty / negative-sigma basis)."""
    if not _is_int(kernel_size) or kernel_size <= 0 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int, got kernel_size={kernel_size!r}.")
    if num_rings is not None and (not _is_int(num_rings) or num_rings < 1):
        raise ValueError(f"num_rings must be a positive int, got num_rings={num_rings!r}.")


def default_num_rings(kernel_size: int) -> int:
    """The paper's default number of rings, ``n = (k + 1) / 2``."""
    return (kernel_size + 1) // 2


def check_sampling(sampling: str) -> None:
    """Raise ``ValueError`` naming ``sampling`` unless it is one of :data:`SAMPLING_MODES`."""
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got sampling={sampling!r}.")


def ring_extent(kernel_size: int, sampling: str = "center") -> float:
    """Centre of the outermost ring: ``k / 2`` for ``sampling="center"``, ``k // 2`` for ``sampling="area"``."""
    check_sampling(sampling)
    return kernel_size / 2.0 if sampling == "center" else float(kernel_size // 2)


def ring_centers(
    kernel_size: int, num_rings: int, dtype: torch.dtype = torch.float64, *, sampling: str = "center"
) -> torch.Tensor:
    """Ring centres ``mu_i = i * R / (n - 1)`` evenly spaced from 0 to ``R`` (:func:`ring_extent`: ``k / 2``, or
    ``k // 2`` for ``sampling="area"``).

    Returns:
        tensor of shape ``(num_rings,)``.
    """
    _check_rings_args(kernel_size, num_rings)
    extent = ring_extent(kernel_size, sampling)
    if num_rings == 1:
        return torch.zeros(1, dtype=dtype)
    return torch.arange(num_rings, dtype=dtype) * (extent / (num_rings - 1))


def initial_sigma(kernel_size: int, num_rings: int, *, sampling: str = "center") -> float:
    """sigma at initialisation: full width at half maximum equal to the ring spacing (``sigma = Δd / 2.355``)."""
    _check_rings_args(kernel_size, num_rings)
    extent = ring_extent(kernel_size, sampling)
    if num_rings == 1:
        return 1.0
    spacing = extent / (num_rings - 1)
    return spacing / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def log_sigma_bounds(num_rings: int) -> tuple[float, float]:
    """Clip range of ``log sigma``: sigma in ``[1e-2, 2 n]``."""
    return LOG_SIGMA_MIN, math.log(2.0 * max(num_rings, 1))


def offset_distances(
    kernel_size: int, spatial_dims: int, dtype: torch.dtype = torch.float64, subsamples: int = 1
) -> torch.Tensor:
    """Euclidean distance ``|p|`` of every kernel offset from the centre.

    Args:
        kernel_size: odd kernel size ``k``.
        spatial_dims: 2 or 3.
        dtype: output dtype (computed in float64).
        subsamples: 1 for the pixel centres; ``s > 1`` for the distances of the ``s ** d`` midpoint-rule sub-samples
            of every pixel (offsets ``(j + 0.5) / s - 0.5``, ``j = 0..s-1`` per axis), sorted along the last axis so
            that pixels related by a grid symmetry hold identical rows (the area average is then exactly symmetric).

    Returns:
        tensor of shape ``(k,) * spatial_dims`` (``subsamples=1``) or ``(k,) * spatial_dims + (s ** d,)``.
    """
    _check_rings_args(kernel_size)
    if not _is_int(subsamples) or subsamples < 1:
        raise ValueError(f"subsamples must be a positive int, got subsamples={subsamples!r}.")
    r = kernel_size // 2
    coords = torch.arange(-r, r + 1, dtype=torch.float64)
    if subsamples == 1:
        grids = torch.meshgrid(*([coords] * spatial_dims), indexing="ij")
        return torch.sqrt(sum(g * g for g in grids)).to(dtype)
    sub = (torch.arange(subsamples, dtype=torch.float64) + 0.5) / subsamples - 0.5  # exact binary fractions for s=4
    fine = (coords[:, None] + sub[None, :]).reshape(-1)  # (k * s,), pixel-major
    grids = torch.meshgrid(*([fine] * spatial_dims), indexing="ij")
    dist = torch.sqrt(sum(g * g for g in grids))  # (k s,) * d
    # (k, s, k, s[, k, s]) -> (k, k[, k], s, s[, s]) -> (k,)*d + (s^d,)
    dist = dist.reshape(sum(((kernel_size, subsamples) for _ in range(spatial_dims)), ()))
    dist = dist.permute(*range(0, 2 * spatial_dims, 2), *range(1, 2 * spatial_dims, 2))
    dist = dist.reshape((kernel_size,) * spatial_dims + (subsamples**spatial_dims,))
    return dist.sort(dim=-1).values.to(dtype)


def support_mask(
    kernel_size: int, spatial_dims: int, circular: bool = True, dtype: torch.dtype = torch.float64, subsamples: int = 1
) -> torch.Tensor:
    """1 inside the inscribed circle/sphere (``|p| <= k // 2 + 0.5``), 0 outside; all ones if not ``circular``.

    With ``subsamples > 1`` the mask is per sub-sample, shape as :func:`offset_distances` with the same ``subsamples``.
    """
    dist = offset_distances(kernel_size, spatial_dims, torch.float64, subsamples)
    if not circular:
        return torch.ones_like(dist, dtype=dtype)
    return (dist <= kernel_size // 2 + 0.5).to(dtype)


def ring_basis(
    distances: torch.Tensor,
    centers: torch.Tensor,
    log_sigma: torch.Tensor | None,
    mask: torch.Tensor,
    smoothing: str = "gaussian",
    log_sigma_range: tuple[float, float] | None = None,
    area: bool = False,
) -> torch.Tensor:
    """Evaluate the ring basis ``G_i(p)`` on the kernel grid.

    Args:
        distances: ``|p|`` per offset, shape ``(k,) * d``; with ``area=True`` per sub-sample, ``(k,) * d + (S,)``
            (:func:`offset_distances` with ``subsamples > 1``).
        centers: ring centres ``mu``, shape ``(n,)``.
        log_sigma: ``log sigma`` per ring, shape ``(n,)`` (ignored for ``smoothing="none"``).
        mask: support mask, same shape as ``distances``.
        smoothing: ``"gaussian"`` (GMR) or ``"none"`` (nearest-ring hard assignment).
        log_sigma_range: optional ``(lo, hi)`` clip range for ``log_sigma``.
        area: average the masked basis over the last axis of ``distances`` (the sub-samples of each pixel).

    Returns:
        basis of shape ``(n,) + (k,) * d``.
    """
    if area and distances.ndim not in (3, 4):  # (k, k, S) or (k, k, k, S)
        raise ValueError(
            f"area=True needs per-sub-sample distances of shape (k,) * d + (S,) with d = 2 or 3 "
            f"(offset_distances(..., subsamples=s)), got distances shape {tuple(distances.shape)}."
        )
    if distances.shape != mask.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal distances shape {tuple(distances.shape)}.")
    if smoothing not in SMOOTHING_MODES:
        raise ValueError(f"smoothing must be one of {SMOOTHING_MODES}, got smoothing={smoothing!r}.")
    gaussian = smoothing == "gaussian"
    if gaussian and log_sigma is None:
        raise ValueError("smoothing='gaussian' needs log_sigma.")
    if centers.ndim != 1:
        raise ValueError(f"centers must have shape (n,), got centers shape {tuple(centers.shape)}.")
    if gaussian and log_sigma.numel() != centers.numel():
        raise ValueError(
            f"log_sigma must have one value per ring, shape ({centers.numel()},), got log_sigma shape "
            f"{tuple(log_sigma.shape)}."
        )
    lo, hi = log_sigma_range if log_sigma_range is not None else (-math.inf, math.inf)
    # hard assignment ignores sigma: any tensor stands in for a missing one
    ls = log_sigma if log_sigma is not None else centers
    return ring_basis_values(distances, centers, ls, mask, gaussian, lo, hi, area)


def ring_basis_values(
    distances: torch.Tensor,
    centers: torch.Tensor,
    log_sigma: torch.Tensor,
    mask: torch.Tensor,
    gaussian: bool,
    log_sigma_min: float,
    log_sigma_max: float,
    area: bool,
) -> torch.Tensor:
    """The arithmetic of :func:`ring_basis` without its argument checks; TorchScript-compatible (``torch.jit.script``
    compiles it inside a scripted :class:`~monai_gmr.nn.GMRConv`, so eager and scripted layers share one formula).

    Args:
        distances: as in :func:`ring_basis`, shape ``(k,) * d`` or ``(k,) * d + (S,)``.
        centers: ring centres, shape ``(n,)``.
        log_sigma: ``log sigma`` per ring, shape ``(n,)`` (unused when ``gaussian`` is False).
        mask: support mask, same shape as ``distances``.
        gaussian: Gaussian rings (``smoothing="gaussian"``) or nearest-ring assignment (``smoothing="none"``).
        log_sigma_min, log_sigma_max: clip range of ``log_sigma`` (``-inf``/``inf`` for none).
        area: average over the last axis of ``distances``.

    Returns:
        basis of shape ``(n,) + (k,) * d``.
    """
    n = centers.shape[0]
    view = [n] + [1] * distances.dim()
    diff = distances.unsqueeze(0) - centers.reshape(view)
    if gaussian:
        ls = log_sigma.clamp(log_sigma_min, log_sigma_max)
        inv_two_var = 0.5 * torch.exp(-2.0 * ls).reshape(view)
        basis = torch.exp(-(diff * diff) * inv_two_var)
    else:
        nearest = diff.abs().argmin(dim=0)
        basis = (nearest.unsqueeze(0) == torch.arange(n, device=distances.device).reshape(view)).to(distances.dtype)
    basis = basis * mask.unsqueeze(0)
    return basis.mean(dim=-1) if area else basis


def is_radial_basis(basis: torch.Tensor, rtol: float = 1e-6) -> bool:
    """Whether ``basis`` depends on the offset ``p`` only through ``|p|``: every ring takes one value on each shell of
    offsets with equal integer ``|p|^2`` (what the Triton kernels of :mod:`.triton_conv` need).

    ``sampling="center"`` bases are radial; ``sampling="area"`` bases are not once a shell holds offsets of several
    grid-symmetry orbits (``(5, 0)`` and ``(3, 4)`` from ``k = 11`` in 2D, ``(3, 0, 0)`` and ``(2, 2, 1)`` from
    ``k = 7`` in 3D); below that they are. Compares the basis with its average over each shell, within ``rtol`` of
    its largest magnitude. One host-device synchronisation.

    Args:
        basis: ring basis, shape ``(n,) + (k,) * d`` with ``d`` = 2 or 3 and odd ``k``.
        rtol: tolerance relative to ``max |basis|``.

    Returns:
        True if the basis is constant on every shell.
    """
    d = basis.ndim - 1
    k = basis.shape[-1]
    if d not in (2, 3) or any(s != k for s in basis.shape[1:]) or k % 2 == 0:
        raise ValueError(
            f"basis must have shape (n,) + (k,) * d with odd k and d = 2 or 3, got basis shape {tuple(basis.shape)}."
        )
    coords = torch.arange(-(k // 2), k // 2 + 1, device=basis.device)
    grids = torch.meshgrid(*([coords] * d), indexing="ij")
    shell = sum(g * g for g in grids).reshape(-1)  # integer |p|^2 per offset
    _, inverse, counts = torch.unique(shell, return_inverse=True, return_counts=True)
    flat = basis.reshape(basis.shape[0], -1).double()
    sums = torch.zeros(flat.shape[0], counts.numel(), dtype=flat.dtype, device=flat.device)
    sums.index_add_(1, inverse, flat)
    mean = (sums / counts.to(flat.dtype))[:, inverse]
    scale = flat.abs().max()
    return bool(((flat - mean).abs() <= rtol * scale).all())
