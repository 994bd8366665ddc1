"""Ring basis of GMR convolution.

A GMR kernel of odd size ``k`` in ``d`` spatial dimensions is a weighted sum of ``n`` radial functions
("rings") evaluated at the *true* Euclidean distance ``|p|`` of every kernel offset ``p`` from the kernel
centre::

    G_i(p) = exp(-(|p| - mu_i)^2 / (2 sigma_i^2)),   mu_i = i * k / (2 (n - 1)),  i = 0..n-1

Offsets outside the inscribed circle/sphere (``|p| > k // 2 + 0.5``) are zero. ``smoothing="none"`` replaces the
Gaussians by a hard assignment of every offset to its nearest ring centre (the naive radially symmetric "Symm"
baseline of the paper).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

__all__ = [
    "SMOOTHING_MODES",
    "LOG_SIGMA_MIN",
    "default_num_rings",
    "ring_centers",
    "initial_sigma",
    "log_sigma_bounds",
    "offset_distances",
    "support_mask",
    "ring_basis",
    "check_kernel_size",
]

SMOOTHING_MODES = ("gaussian", "none")
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


def default_num_rings(kernel_size: int) -> int:
    """The paper's default number of rings, ``n = (k + 1) / 2``."""
    return (kernel_size + 1) // 2


def ring_centers(kernel_size: int, num_rings: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Ring centres ``mu_i = i * k / (2 (n - 1))`` evenly spaced from 0 to the kernel radius ``k / 2``.

    Returns:
        tensor of shape ``(num_rings,)``.
    """
    if num_rings == 1:
        return torch.zeros(1, dtype=dtype)
    return torch.arange(num_rings, dtype=dtype) * (kernel_size / (2.0 * (num_rings - 1)))


def initial_sigma(kernel_size: int, num_rings: int) -> float:
    """sigma at initialisation: full width at half maximum equal to the ring spacing (``sigma = Δd / 2.355``)."""
    if num_rings == 1:
        return 1.0
    spacing = kernel_size / (2.0 * (num_rings - 1))
    return spacing / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def log_sigma_bounds(num_rings: int) -> tuple[float, float]:
    """Clip range of ``log sigma``: sigma in ``[1e-2, 2 n]``."""
    return LOG_SIGMA_MIN, math.log(2.0 * max(num_rings, 1))


def offset_distances(kernel_size: int, spatial_dims: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Euclidean distance ``|p|`` of every kernel offset from the centre.

    Returns:
        tensor of shape ``(k,) * spatial_dims``.
    """
    r = kernel_size // 2
    coords = torch.arange(-r, r + 1, dtype=dtype)
    grids = torch.meshgrid(*([coords] * spatial_dims), indexing="ij")
    return torch.sqrt(sum(g * g for g in grids))


def support_mask(kernel_size: int, spatial_dims: int, circular: bool = True, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """1 inside the inscribed circle/sphere (``|p| <= k // 2 + 0.5``), 0 outside; all ones if not ``circular``."""
    dist = offset_distances(kernel_size, spatial_dims, dtype)
    if not circular:
        return torch.ones_like(dist)
    return (dist <= kernel_size // 2 + 0.5).to(dtype)


def ring_basis(
    distances: torch.Tensor,
    centers: torch.Tensor,
    log_sigma: torch.Tensor | None,
    mask: torch.Tensor,
    smoothing: str = "gaussian",
    log_sigma_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Evaluate the ring basis ``G_i(p)`` on the kernel grid.

    Args:
        distances: ``|p|`` per offset, shape ``(k,) * d``.
        centers: ring centres ``mu``, shape ``(n,)``.
        log_sigma: ``log sigma`` per ring, shape ``(n,)`` (ignored for ``smoothing="none"``).
        mask: support mask, same shape as ``distances``.
        smoothing: ``"gaussian"`` (GMR) or ``"none"`` (nearest-ring hard assignment).
        log_sigma_range: optional ``(lo, hi)`` clip range for ``log_sigma``.

    Returns:
        basis of shape ``(n,) + (k,) * d``.
    """
    n = centers.shape[0]
    view = (n,) + (1,) * distances.ndim
    diff = distances.unsqueeze(0) - centers.reshape(view)
    if smoothing == "gaussian":
        if log_sigma is None:
            raise ValueError("smoothing='gaussian' needs log_sigma.")
        ls = log_sigma if log_sigma_range is None else log_sigma.clamp(*log_sigma_range)
        inv_two_var = 0.5 * torch.exp(-2.0 * ls).reshape(view)
        basis = torch.exp(-(diff * diff) * inv_two_var)
    elif smoothing == "none":
        nearest = diff.abs().argmin(dim=0)
        basis = (nearest.unsqueeze(0) == torch.arange(n, device=distances.device).reshape(view)).to(distances.dtype)
    else:
        raise ValueError(f"smoothing must be one of {SMOOTHING_MODES}, got smoothing={smoothing!r}.")
    return basis * mask.unsqueeze(0)
