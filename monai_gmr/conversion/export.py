"""Export GMR layers as plain ``nn.Conv2d`` / ``nn.Conv3d`` for deployment (TorchScript, MONAI ckpt_export; ONNX untested)."""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn

from monai_gmr.nn.conv import GMRConv

__all__ = ["export_dense", "gmr_to_dense_conv"]

logger = logging.getLogger(__name__)


def gmr_to_dense_conv(module: GMRConv) -> nn.Conv2d | nn.Conv3d:
    """An ``nn.Conv2d/3d`` computing the same function as ``module`` with its current parameters."""
    conv_cls = nn.Conv2d if module.spatial_dims == 2 else nn.Conv3d
    with torch.no_grad():
        kernel = module.dense_kernel().detach().clone()
    conv = conv_cls(
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=module.groups,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
        device=kernel.device,
        dtype=kernel.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(kernel)
        if module.bias is not None:
            conv.bias.copy_(module.bias.detach())
    conv.weight.requires_grad_(module.weight.requires_grad)  # a frozen layer stays frozen
    if module.bias is not None:
        conv.bias.requires_grad_(module.bias.requires_grad)
    conv.train(module.training)
    return conv


def _tie_shared_parameters(layers: list[GMRConv], dense: dict[int, nn.Module]) -> None:
    """Let the dense convs of distinct GMR layers that share their ``weight`` Parameter share theirs too.

    Tied when the layers also share ``log_sigma`` (or neither learns it) and synthesise the same kernel (checked), the
    bias where it was shared; layers sharing only ``weight`` (kernels that differ, or could drift apart in training)
    are exported untied, with a warning.

    Args:
        layers: the replaced GMR layers (distinct modules).
        dense: ``id(GMRConv)`` -> its dense conv.
    """
    groups: dict[int, list[GMRConv]] = {}
    for gmr in layers:
        w = gmr._parameters.get("weight")  # a parametrized weight is a fresh tensor per access: never tied here
        if w is not None:
            groups.setdefault(id(w), []).append(gmr)
    for group in groups.values():
        first, conv0 = group[0], dense[id(group[0])]
        for gmr in group[1:]:
            conv = dense[id(gmr)]
            learned = isinstance(gmr.log_sigma, nn.Parameter) or isinstance(first.log_sigma, nn.Parameter)
            if (learned and gmr.log_sigma is not first.log_sigma) or conv.weight.shape != conv0.weight.shape or not (
                torch.equal(conv.weight, conv0.weight)
            ):
                logger.warning(
                    "export_dense: GMR layers sharing one weight Parameter synthesise different kernels (or do not "
                    "share log_sigma); their dense convs are exported untied."
                )
                continue
            conv.weight = conv0.weight
            if gmr.bias is not None and gmr.bias is first.bias:
                conv.bias = conv0.bias


def export_dense(module: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every :class:`GMRConv` in ``module`` (or ``module`` itself) by an equivalent dense convolution.

    Args:
        module: a GMR layer or any network containing GMR layers.
        inplace: modify ``module`` instead of a deep copy.

    Returns:
        the module tree with plain ``nn.Conv2d/3d`` layers (outputs equal to the original up to float rounding). A
        GMR layer shared under several names becomes one shared dense conv; distinct GMR layers that share their
        ``weight`` and ``log_sigma`` Parameters (tied weights) get dense convs sharing one ``weight`` (and the bias
        where it was shared).
    """
    if isinstance(module, GMRConv):
        return gmr_to_dense_conv(module)
    root = module if inplace else copy.deepcopy(module)
    # id(GMRConv) -> its dense conv: a GMR layer reached through several parents, or registered twice under one
    # (weight tying), becomes one shared dense conv; _modules, because named_children() skips such a second name
    dense: dict[int, nn.Module] = {}
    replaced: list[GMRConv] = []
    for parent in list(root.modules()):
        for child_name, sub in list(parent._modules.items()):
            if isinstance(sub, GMRConv):
                if id(sub) not in dense:
                    dense[id(sub)] = gmr_to_dense_conv(sub)
                    replaced.append(sub)
                setattr(parent, child_name, dense[id(sub)])
    _tie_shared_parameters(replaced, dense)
    logger.info("export_dense: replaced %d GMR convolution(s) with dense convolutions", len(dense))
    return root
