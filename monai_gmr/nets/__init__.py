"""monai_gmr.nets: GMR networks (U-Net, ResNets), the p4/p4m G-CNN baselines and the network registry."""

from __future__ import annotations

from .gcnn import GCNNResNet, GCNNUNet, gcnn_resnet18, gcnn_resnet34, group_widths
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
    "GCNNUNet",
    "GCNNResNet",
    "gcnn_resnet18",
    "gcnn_resnet34",
    "group_widths",
    "get_network",
    "list_networks",
    "register_network",
]
