"""Pure tensor math of monai_gmr: ring basis, kernel synthesis, conv dispatch, group actions, rotations."""

from .basis import (
    SMOOTHING_MODES,
    check_kernel_size,
    default_num_rings,
    initial_sigma,
    log_sigma_bounds,
    offset_distances,
    ring_basis,
    ring_centers,
    support_mask,
)
from .conv import AUTO_TABLE, IMPLS, PADDING_MODES, conv_nd, gmr_conv, same_padding, select_impl, synthesize_kernel
from .groups import CubeElement, D4Element, cube_elements, d4_elements, group_elements

__all__ = [
    "SMOOTHING_MODES",
    "check_kernel_size",
    "default_num_rings",
    "initial_sigma",
    "log_sigma_bounds",
    "offset_distances",
    "ring_basis",
    "ring_centers",
    "support_mask",
    "AUTO_TABLE",
    "IMPLS",
    "PADDING_MODES",
    "conv_nd",
    "gmr_conv",
    "same_padding",
    "select_impl",
    "synthesize_kernel",
    "CubeElement",
    "D4Element",
    "cube_elements",
    "d4_elements",
    "group_elements",
]
