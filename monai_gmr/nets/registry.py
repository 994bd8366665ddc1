"""A small registry of monai_gmr networks: ``get_network(name, **kwargs)`` / ``list_networks()``.

Every entry is also reachable by its full dotted path in MONAI bundle configs, e.g.
``{"_target_": "monai_gmr.nets.GMRUNet", "spatial_dims": 2, ...}`` or
``{"_target_": "monai_gmr.nets.get_network", "name": "gmr_unet_tiny", "in_channels": 3}``.

Names (constructor defaults in brackets; every keyword can be overridden through ``get_network``):

* ``gmr_unet`` / ``gmr_unet_tiny`` -- :class:`~monai_gmr.nets.GMRUNet` (2D, 1 -> 2 channels by default);
* ``gmr_resnet18`` / ``gmr_resnet34`` / ``gmr_resnet50`` / ``gmr_resnet18_tiny`` -- :class:`~monai_gmr.nets.GMRResNet`;
* ``symm_unet`` / ``symm_unet_tiny`` / ``symm_resnet18`` / ``symm_resnet18_tiny`` -- the naive radially symmetric
  "Symm" baseline of the GMR paper: the same GMR networks with ``smoothing="none"`` (every kernel offset assigned
  to its nearest ring, no Gaussian smoothing);
* ``gcnn_unet`` / ``gcnn_unet_tiny`` / ``gcnn_resnet18`` / ``gcnn_resnet34`` / ``gcnn_resnet18_tiny`` -- the p4m
  G-CNN baselines (:class:`~monai_gmr.nets.GCNNUNet`, :class:`~monai_gmr.nets.GCNNResNet`; pass ``group="p4"`` for
  rotations only; 2D only).

Tiny variants (``*_tiny``) have widths of a few channels and small kernels, for tests and smoke runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

__all__ = [
    "get_network",
    "list_networks",
    "register_network",
    "TINY_UNET",
    "TINY_RESNET",
    "TINY_GCNN_UNET",
    "TINY_GCNN_RESNET",
    "SYMM",
]

#: arguments of ``gmr_unet_tiny`` (over the GMRUNet defaults).
TINY_UNET = {"features": (4, 8, 8, 16), "kernel_sizes": (5, 5, 3, 3)}
#: arguments of ``gmr_resnet18_tiny`` (over the gmr_resnet18 defaults).
TINY_RESNET = {"block_inplanes": (4, 8, 8, 16), "kernel_sizes": (5, 5, 3, 3)}
#: arguments of ``gcnn_unet_tiny`` (over the GCNNUNet defaults; each channel carries |H| = 8 orientations).
TINY_GCNN_UNET = {"features": (4, 4, 8, 8)}
#: arguments of ``gcnn_resnet18_tiny`` (over the gcnn_resnet18 defaults).
TINY_GCNN_RESNET = {"block_inplanes": (4, 4, 8, 8)}
#: the naive radial ("Symm") baseline: GMR kernels without Gaussian smoothing.
SYMM = {"smoothing": "none"}

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_network(name: str, factory: Callable[..., nn.Module], overwrite: bool = False) -> None:
    """Add ``factory`` (a class or function returning an ``nn.Module``) under ``name``.

    Raises:
        ValueError: ``name`` is not a non-empty str, is taken and ``overwrite`` is False, or ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name:
        # a non-str name broke list_networks() (sorted() of mixed types) and so every unknown-name error
        raise ValueError(f"name must be a non-empty str, got name={name!r}.")
    if not callable(factory):
        raise ValueError(f"factory must be callable, got factory={factory!r}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"network name={name!r} is already registered (pass overwrite=True to replace it).")
    _REGISTRY[name] = factory


def list_networks() -> list[str]:
    """Sorted names accepted by :func:`get_network`."""
    return sorted(_REGISTRY)


def get_network(name: str, dense: bool = False, **kwargs) -> nn.Module:
    """Build the registered network ``name`` with ``kwargs`` overriding its defaults.

    Args:
        name: one of :func:`list_networks` (e.g. ``"gmr_unet"``, ``"gmr_unet_tiny"``, ``"gmr_resnet18"``).
        dense: return the network with every GMR convolution exported to a plain ``nn.Conv2d/3d``
            (:func:`monai_gmr.export_dense`), e.g. for loading a dense checkpoint in ``monai.bundle ckpt_export``.
        kwargs: constructor arguments (``spatial_dims``, ``in_channels``, ``out_channels`` / ``num_classes``, ...).

    Raises:
        ValueError: unknown ``name``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown network name={name!r}; available: {', '.join(list_networks())}.")
    from monai_gmr.utils import as_bool

    dense = as_bool(dense, "dense")  # `--network_def#dense false` passes the (truthy) text "false"
    net = _REGISTRY[name](**kwargs)
    if dense:
        from monai_gmr.conversion.export import export_dense

        net = export_dense(net, inplace=True)
    return net


def _unet(**overrides) -> Callable[..., nn.Module]:
    def build(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
        from .unet import GMRUNet

        return GMRUNet(spatial_dims, in_channels, out_channels, **{**overrides, **kwargs})

    return build


def _resnet(fn_name: str, **overrides) -> Callable[..., nn.Module]:
    def build(**kwargs) -> nn.Module:
        from . import resnet

        return getattr(resnet, fn_name)(**{**overrides, **kwargs})

    return build


def _gcnn(fn_name: str, **overrides) -> Callable[..., nn.Module]:
    def build(**kwargs) -> nn.Module:
        from . import gcnn  # p4/p4m baselines (monai_gmr/nets/gcnn.py)

        return getattr(gcnn, fn_name)(**{**overrides, **kwargs})

    return build


register_network("gmr_unet", _unet())
register_network("gmr_unet_tiny", _unet(**TINY_UNET))
register_network("gmr_resnet18", _resnet("gmr_resnet18"))
register_network("gmr_resnet34", _resnet("gmr_resnet34"))
register_network("gmr_resnet50", _resnet("gmr_resnet50"))
register_network("gmr_resnet18_tiny", _resnet("gmr_resnet18", **TINY_RESNET))
register_network("symm_unet", _unet(**SYMM))
register_network("symm_unet_tiny", _unet(**TINY_UNET, **SYMM))
register_network("symm_resnet18", _resnet("gmr_resnet18", **SYMM))
register_network("symm_resnet18_tiny", _resnet("gmr_resnet18", **TINY_RESNET, **SYMM))
register_network("gcnn_unet", _gcnn("GCNNUNet"))
register_network("gcnn_unet_tiny", _gcnn("GCNNUNet", **TINY_GCNN_UNET))
register_network("gcnn_resnet18", _gcnn("gcnn_resnet18"))
register_network("gcnn_resnet34", _gcnn("gcnn_resnet34"))
register_network("gcnn_resnet18_tiny", _gcnn("gcnn_resnet18", **TINY_GCNN_RESNET))
