"""Modules and MONAI-style blocks of monai_gmr."""

from .blocks import GMRConvolution
from .conv import SIGMA_MODES, GMRConv, GMRConv2d, GMRConv3d
from .factories import GMR_FACTORY_NAME, gmr_conv_factory, register_monai_factories

__all__ = [
    "GMRConv",
    "GMRConv2d",
    "GMRConv3d",
    "GMRConvolution",
    "SIGMA_MODES",
    "GMR_FACTORY_NAME",
    "gmr_conv_factory",
    "register_monai_factories",
]
