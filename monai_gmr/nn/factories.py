"""The one place where monai_gmr writes into MONAI's global layer factories.

``import monai_gmr`` calls :func:`register_monai_factories`, after which ``Conv["GMR", 2]`` is
:class:`~monai_gmr.nn.GMRConv2d` and ``Conv["GMR", 3]`` is :class:`~monai_gmr.nn.GMRConv3d`. MONAI's own ``CONV``
entry is never touched. Registration is idempotent.
"""

from __future__ import annotations

from monai.networks.layers.factories import Conv

from .conv import GMRConv2d, GMRConv3d

__all__ = ["GMR_FACTORY_NAME", "register_monai_factories", "gmr_conv_factory"]

GMR_FACTORY_NAME = "GMR"


def gmr_conv_factory(dim: int) -> type[GMRConv2d] | type[GMRConv3d]:
    """GMR convolution class for ``dim`` spatial dims (2 or 3)."""
    types = {2: GMRConv2d, 3: GMRConv3d}
    if dim not in types:
        raise ValueError(f"GMR convolution supports spatial_dims 2 and 3, got {dim}.")
    return types[dim]


def register_monai_factories() -> None:
    """Register ``Conv["GMR", dim]`` in MONAI's ``Conv`` layer factory (idempotent).

    A repeated call keeps one entry but points it at this module's factory: after ``monai_gmr`` is imported afresh
    (its modules dropped from ``sys.modules``, MONAI kept), ``Conv["GMR", 2]`` builds the current ``GMRConv2d``, not
    the class of the first import (which ``isinstance(layer, monai_gmr.GMRConv)`` and ``export_dense`` would not
    recognise).
    """
    desc = "GMR (Gaussian Mixture Ring) convolution, monai_gmr"
    if GMR_FACTORY_NAME in Conv.names:
        Conv.add(GMR_FACTORY_NAME, desc, gmr_conv_factory)  # rebinds the entry; the factory's docstring lists it once
        return
    Conv.add_factory_callable(GMR_FACTORY_NAME, gmr_conv_factory, desc)
