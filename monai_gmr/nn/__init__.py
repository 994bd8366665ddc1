"""Modules and MONAI-style blocks of monai_gmr."""

from .blocks import GMRConvolution
from .conv import SIGMA_MODES, GMRConv, GMRConv2d, GMRConv3d
from .factories import GMR_FACTORY_NAME, gmr_conv_factory, register_monai_factories
from .gconv import (
    GROUPS,
    GroupBatchNorm,
    GroupConv,
    GroupConvolution,
    GroupInstanceNorm,
    GroupLiftingConv,
    GroupPool,
    GroupSpatialPool,
    GroupUpsample,
    cayley_table,
    count_parameters,
    group_conv2d,
    group_elements_of,
    group_lifting_conv2d,
    group_order,
    inverse_table,
    orientation_permutation,
    transform_group_features,
)

__all__ = [
    "GMRConv",
    "GMRConv2d",
    "GMRConv3d",
    "GMRConvolution",
    "SIGMA_MODES",
    "GMR_FACTORY_NAME",
    "gmr_conv_factory",
    "register_monai_factories",
    "GROUPS",
    "GroupBatchNorm",
    "GroupConv",
    "GroupConvolution",
    "GroupInstanceNorm",
    "GroupLiftingConv",
    "GroupPool",
    "GroupSpatialPool",
    "GroupUpsample",
    "cayley_table",
    "count_parameters",
    "group_conv2d",
    "group_elements_of",
    "group_lifting_conv2d",
    "group_order",
    "inverse_table",
    "orientation_permutation",
    "transform_group_features",
]
