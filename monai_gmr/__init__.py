"""monai_gmr: rotation- and reflection-equivariant GMR convolution as a MONAI plugin.

Importing the package registers ``Conv["GMR", 2]`` / ``Conv["GMR", 3]`` in MONAI's layer factory.
"""

from __future__ import annotations

from .conversion import ConversionSummary, convert_to_gmr, export_dense
from .nn import GMRConv, GMRConv2d, GMRConv3d, GMRConvolution, register_monai_factories

__version__ = "0.1.0"

register_monai_factories()

#: subpackages that ``import monai_gmr`` does not load (they pull in scipy, ignite, WSI readers, ...): the first
#: ``monai_gmr.<name>`` attribute access imports them, so ``monai_gmr.evaluation.equivariance_error(...)`` works
#: after a plain ``import monai_gmr`` as the docs write it
_LAZY_SUBMODULES = ("data", "evaluation", "inferers", "utils", "workflows")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))

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
