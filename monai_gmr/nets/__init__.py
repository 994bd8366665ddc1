"""monai_gmr.nets: GMR networks (U-Net, ResNets) and the network registry."""

from __future__ import annotations

from .registry import get_network, list_networks, register_network
from .resnet import GMRResNet, GMRResNetBlock, GMRResNetBottleneck, gmr_resnet18, gmr_resnet34, gmr_resnet50
from .unet import GMRUNet

__all__ = [
    "GMRUNet",
    "GMRResNet",
    "GMRResNetBlock",
    "GMRResNetBottleneck",
    "gmr_resnet18",
    "gmr_resnet34",
    "gmr_resnet50",
    "get_network",
    "list_networks",
    "register_network",
]
