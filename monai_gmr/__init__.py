"""monai_gmr: rotation- and reflection-equivariant GMR convolution as a MONAI plugin.

Importing the package registers ``Conv["GMR", 2]`` / ``Conv["GMR", 3]`` in MONAI's layer factory.
"""

from __future__ import annotations

from .conversion import ConversionSummary, convert_to_gmr, export_dense
from .nn import GMRConv, GMRConv2d, GMRConv3d, GMRConvolution, register_monai_factories

__version__ = "0.1.0"

register_monai_factories()

__all__ = [
    "GMRConv",
    "GMRConv2d",
    "GMRConv3d",
    "GMRConvolution",
    "ConversionSummary",
    "convert_to_gmr",
    "export_dense",
    "register_monai_factories",
    "__version__",
]
