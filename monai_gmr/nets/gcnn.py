"""G-CNN baseline networks (p4 / p4m group convolutions) with the constructor shape of the GMR networks.

* :class:`GCNNUNet` — the layout of the GMR nuclei U-Net (3 down levels, average pooling, non-learned
  up-sampling + conv, skip connections) with group convolutions; group pooling at the end, then a 1x1 conv head.
* :class:`GCNNResNet` / :func:`gcnn_resnet18` / :func:`gcnn_resnet34` — MONAI's ResNet with every conv replaced by
  a group conv, every strided op by average pooling + stride-1 conv, group pooling + global average pooling +
  linear head.

Widths: a p4m group conv has ``|H| = 8`` times the weights of a planar conv per channel pair, so by default every
width of the planar/GMR counterpart is divided by ``sqrt(|H|)`` (:func:`group_widths`), which matches the
parameter count of the planar 3x3 network of the original widths; docs/gcnn.md lists the measured counts.

Both nets are exactly equivariant (U-Net: ``f(T_g x) = T_g f(x)``) / invariant (ResNet logits) under the 8 D4
elements (p4m) or the 4 rotations (p4) when every spatial size is divisible by the total down-sampling factor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from monai_gmr.functional.basis import _is_int
from monai_gmr.utils import as_bool
from monai_gmr.nn.blocks import _check_dropout
from monai_gmr.nn.gconv import (
    POOL_MODES,
    SPATIAL_POOL_MODES,
    UPSAMPLE_MODES,
    GroupConv,
    GroupConvolution,
    GroupLiftingConv,
    GroupPool,
    GroupSpatialPool,
    GroupUpsample,
    _check_group_norm,
    count_parameters,
    group_order,
)

from .resnet import _act_layer, _norm_layer
from .unet import _positive_int

__all__ = [
    "GCNNUNet",
    "GCNNResNet",
    "GCNNResNetBlock",
    "gcnn_resnet18",
    "gcnn_resnet34",
    "group_widths",
    "count_parameters",
    "UNET_BASE_FEATURES",
    "RESNET_BASE_PLANES",
]

UNET_BASE_FEATURES = (16, 32, 64, 128)
RESNET_BASE_PLANES = (64, 128, 256, 512)


def _check_spatial_dims(spatial_dims: int) -> None:
    if not _is_int(spatial_dims) or spatial_dims != 2:  # 2.0 passed and was stored as self.spatial_dims
        raise ValueError(
            f"G-CNN baselines are 2D only (p4 / p4m): spatial_dims must be 2, got spatial_dims={spatial_dims!r}."
        )


def group_widths(features: Sequence[int], group: str = "p4m") -> tuple[int, ...]:
    """Budget-matched widths: ``round(f / sqrt(|H|))`` (at least 1) for each planar width ``f``.

    A group conv between ``C`` and ``C'`` channels has ``|H| * C * C' * k^2`` weights, so dividing both widths by
    ``sqrt(|H|)`` keeps the count of a planar conv between ``f`` and ``f'`` channels.

    Example:
        ``group_widths((16, 32, 64, 128), "p4m") == (6, 11, 23, 45)``; ``"p4"`` gives ``(8, 16, 32, 64)``.
    """
    s = math.sqrt(group_order(group))
    return tuple(max(1, int(round(f / s))) for f in features)


def _check_choice(value, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {name}={value!r}.")


def _per_level(value: int | Sequence[int], levels: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        if len(value) != levels:
            raise ValueError(
                f"{name} must be an int or have one entry per level ({levels}), got {name}={tuple(value)}."
            )
        return tuple(value)
    return (value,) * levels


# ---------------------------------------------------------------------------------------------------- U-Net
class GCNNUNet(nn.Module):
    """p4 / p4m G-CNN U-Net: the GMR U-Net layout with group convolutions (a G-CNN baseline).

    Layout (``L = len(features) - 1`` down levels, 3 by default):
    lifting conv + group conv at level 0; per down level a 2x2 spatial pool then two group convs; per up level
    non-learned up-sampling, a group conv to the skip's width, concatenation with the skip (along channels), two
    group convs; then group pooling over the orientation axis and a planar 1x1 conv head. Every conv block is
    conv -> norm -> dropout -> act (MONAI ``ADN`` with statistics shared across orientations).

    Exactly equivariant, ``f(T_g x) = T_g f(x)`` for every ``g`` of the group, when ``H`` and ``W`` are divisible by
    ``2 ** L`` (other sizes raise ``ValueError``); after training too, in eval mode (train-mode batch norm uses the
    batch statistics, which are invariant as well).

    Args:
        spatial_dims: must be 2.
        in_channels: input channels.
        out_channels: output channels.
        features: widths per level (each carries ``|H|`` orientations). ``None`` (default) gives
            ``group_widths((16, 32, 64, 128), group)``: ``(6, 11, 23, 45)`` for p4m, ``(8, 16, 32, 64)`` for p4.
        kernel_size: odd kernel width, an int or one per level.
        group: ``"p4m"`` (rotations + reflections, |H| = 8) or ``"p4"`` (rotations, |H| = 4).
        act: activation name or ``(name, kwargs)``.
        norm: norm name or ``(name, kwargs)`` (``"instance"``, ``"batch"``, ``"group"``; shared across orientations).
        dropout: dropout probability (element-wise).
        upsample: ``"bilinear"`` or ``"nearest"``.
        pooling: ``"avg"`` or ``"max"`` 2x2 down-sampling.
        group_pool: ``"max"`` or ``"mean"`` pooling over the orientation axis before the head.
        bias: conv bias.

    Shapes:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] | None = None,
        kernel_size: int | Sequence[int] = 3,
        group: str = "p4m",
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        dropout: float | tuple = 0.0,
        upsample: str = "bilinear",
        pooling: str = "avg",
        group_pool: str = "max",
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        group_order(group)  # validates group
        if features is None:
            features = group_widths(UNET_BASE_FEATURES, group)
        if isinstance(features, (str, bytes)) or not isinstance(features, Sequence):
            raise ValueError(f"features must be a sequence of >= 2 positive ints, got features={features!r}.")
        features = tuple(features)
        if len(features) < 2 or any(not _is_int(f) or f < 1 for f in features):
            raise ValueError(f"features must hold >= 2 positive ints, got features={features!r}.")
        features = tuple(int(f) for f in features)  # NumPy ints (as GMRUNet takes them) stored as Python ints
        ks = _per_level(kernel_size, len(features), "kernel_size")
        ks = tuple(int(k) if _is_int(k) else k for k in ks)  # checked by the group convs
        if not _is_int(out_channels) or out_channels < 1:
            raise ValueError(f"out_channels must be a positive int, got out_channels={out_channels!r}.")
        out_channels = int(out_channels)
        in_channels = int(in_channels) if _is_int(in_channels) else in_channels  # checked by the lifting conv
        _check_choice(upsample, UPSAMPLE_MODES, "upsample")
        _check_choice(pooling, SPATIAL_POOL_MODES, "pooling")
        _check_choice(group_pool, POOL_MODES, "group_pool")
        bias = as_bool(bias, "bias")  # `--network_def#bias false` passes the (truthy) text "false"
        dropout = _check_dropout(dropout)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        self.kernel_size = ks
        self.group = group
        self.levels = len(features) - 1
        self.multiple = 2**self.levels  # an int attribute: in TorchScript ``int ** int`` is a float

        def block(c_in: int, c_out: int, k: int, lifting: bool = False) -> GroupConvolution:
            return GroupConvolution(
                c_in, c_out, k, group, lifting=lifting, act=act, norm=norm, dropout=dropout, bias=bias
            )

        self.encoders = nn.ModuleList()
        self.encoders.append(nn.Sequential(block(in_channels, features[0], ks[0], lifting=True),
                                           block(features[0], features[0], ks[0])))
        for i in range(1, len(features)):
            self.encoders.append(
                nn.Sequential(
                    GroupSpatialPool(2, pooling),
                    block(features[i - 1], features[i], ks[i]),
                    block(features[i], features[i], ks[i]),
                )
            )
        self.up_convs = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(len(features) - 1, 0, -1):
            self.up_convs.append(
                nn.Sequential(GroupUpsample(2, upsample), block(features[i], features[i - 1], ks[i - 1]))
            )
            self.decoders.append(
                nn.Sequential(block(2 * features[i - 1], features[i - 1], ks[i - 1]),
                              block(features[i - 1], features[i - 1], ks[i - 1]))
            )
        self.group_pool = GroupPool(group_pool)
        self.head = nn.Conv2d(features[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must be shaped (B, in_channels={self.in_channels}, H, W), got x.shape={list(x.shape)}."
            )
        div = self.multiple
        if x.shape[-1] % div != 0 or x.shape[-2] % div != 0:
            raise ValueError(
                f"spatial size must be divisible by 2**levels={div} (exact equivariance and skip shapes), "
                f"got x.shape={list(x.shape)}; pad the input (e.g. monai.transforms.DivisiblePad(k={div}))."
            )
        skips: list[torch.Tensor] = []
        h = x
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
        h = skips.pop()
        for up, dec in zip(self.up_convs, self.decoders):
            h = dec(torch.cat([skips.pop(), up(h)], dim=1))
        return self.head(self.group_pool(h))


# ---------------------------------------------------------------------------------------------------- ResNet
class GCNNResNetBlock(nn.Module):
    """Basic residual block on group feature maps: [pool] -> gconv -> norm -> act -> gconv -> norm, + shortcut, act.

    A stride ``s > 1`` is an ``s x s`` average pool before the first (stride-1) conv; the shortcut is
    pool -> 1x1 group conv -> norm when the stride or width changes.

    Shapes:
        ``(B, in_planes, |H|, H, W) -> (B, planes, |H|, H / s, W / s)``.
    """

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        group: str = "p4m",
        stride: int = 1,
        kernel_size: int = 3,
        act: str | tuple | None = ("relu", {"inplace": True}),
        norm: str | tuple | None = "batch",
    ) -> None:
        super().__init__()
        stride = _positive_int(stride, "stride")  # 0 or -1 ran as stride 1 without a word
        self.pool = GroupSpatialPool(stride, "avg") if stride > 1 else nn.Identity()
        self.conv1 = GroupConv(in_planes, planes, kernel_size, group, bias=False)
        self.bn1 = _norm_layer(norm, 3, planes)
        self.act = _act_layer(act)
        self.conv2 = GroupConv(planes, planes, kernel_size, group, bias=False)
        self.bn2 = _norm_layer(norm, 3, planes)
        self.downsample: nn.Module | None = None
        if stride > 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                GroupSpatialPool(stride, "avg") if stride > 1 else nn.Identity(),
                GroupConv(in_planes, planes, 1, group, bias=True),
                _norm_layer(norm, 3, planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(self.pool(x))))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


class GCNNResNet(nn.Module):
    """p4 / p4m G-CNN ResNet (basic blocks), following MONAI's ``ResNet`` with the GMR recipe for strides.

    Stem: [``conv1_t_stride`` average pool] -> lifting conv ``conv1_t_size`` -> norm -> act -> 2x2 pool (replaces
    MONAI's 3x3/stride-2 max pool, skipped with ``no_max_pool``); four stages of :class:`GCNNResNetBlock` with
    strides 1, 2, 2, 2 (average pooling + stride-1 group conv); group pooling over orientations; global average
    pooling; linear head. Logits are exactly invariant to the group when ``H`` and ``W`` are divisible by the total
    down-sampling factor (16 with the defaults); other sizes run but are not exactly invariant.

    Args:
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        block_inplanes: widths per stage (each carrying ``|H|`` orientations). ``None`` gives
            ``group_widths((64, 128, 256, 512), group)``: ``(23, 45, 91, 181)`` for p4m, ``(32, 64, 128, 256)`` for p4.
        spatial_dims: must be 2.
        in_channels: input channels (3 when neither it nor ``n_input_channels`` is given).
        num_classes: number of logits (``out_channels`` is accepted as an alias; give one of them); unused when
            ``feed_forward=False``.
        group: ``"p4m"`` or ``"p4"``.
        conv1_t_size: odd kernel width of the lifting stem.
        conv1_t_stride: stem down-sampling factor (an average pool before the stride-1 lifting conv).
        no_max_pool: drop the stem's 2x2 pool.
        kernel_size: odd kernel width of the block convs.
        pooling: ``"avg"`` or ``"max"`` for the stem's 2x2 pool.
        group_pool: ``"max"`` or ``"mean"`` pooling over orientations before global average pooling.
        feed_forward: if ``False``, there is no linear head and ``forward`` returns the pooled features
            ``(B, block_inplanes[-1])``.
        act: activation name or ``(name, kwargs)``; ``None`` for none.
        norm: norm name or ``(name, kwargs)``, built by MONAI's factory for 3 dims so that statistics are shared
            across orientations; ``None`` for none. ``"layer"`` is not supported.
        out_channels: alias of ``num_classes`` (so configs written for ``out_channels`` work).
        n_input_channels: alias of ``in_channels`` (MONAI ``ResNet``'s name, which ``GMRResNet`` takes too).

    Shapes:
        ``(B, in_channels, H, W) -> (B, num_classes)``.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        block_inplanes: Sequence[int] | None = None,
        spatial_dims: int = 2,
        in_channels: int | None = None,
        num_classes: int | None = None,
        group: str = "p4m",
        conv1_t_size: int = 7,
        conv1_t_stride: int = 1,
        no_max_pool: bool = False,
        kernel_size: int = 3,
        pooling: str = "avg",
        group_pool: str = "max",
        feed_forward: bool = True,
        act: str | tuple | None = ("relu", {"inplace": True}),
        norm: str | tuple | None = "batch",
        out_channels: int | None = None,
        n_input_channels: int | None = None,
    ) -> None:
        super().__init__()
        in_channels_given = in_channels is not None
        in_channels = 3 if in_channels is None else in_channels
        _check_spatial_dims(spatial_dims)
        group_order(group)
        if n_input_channels is not None:  # MONAI ResNet's name of in_channels, as GMRResNet takes it
            if in_channels_given and n_input_channels != in_channels:
                raise ValueError(
                    "in_channels and its alias n_input_channels disagree: "
                    f"in_channels={in_channels}, n_input_channels={n_input_channels}."
                )
            in_channels = n_input_channels
        if num_classes is not None and out_channels is not None and num_classes != out_channels:
            raise ValueError(
                "num_classes and its alias out_channels disagree: "
                f"num_classes={num_classes}, out_channels={out_channels}."
            )
        num_classes = num_classes if num_classes is not None else out_channels
        # text from a command line (`--network_def#feed_forward false` passes "false", which is truthy)
        no_max_pool, feed_forward = as_bool(no_max_pool, "no_max_pool"), as_bool(feed_forward, "feed_forward")
        if feed_forward and (not _is_int(num_classes) or num_classes < 1):
            raise ValueError(
                f"num_classes (or its alias out_channels) must be a positive int, got num_classes={num_classes!r}."
            )
        if block_inplanes is None:
            block_inplanes = group_widths(RESNET_BASE_PLANES, group)
        layers, block_inplanes = tuple(layers), tuple(block_inplanes)
        if len(layers) != 4 or len(block_inplanes) != 4:
            raise ValueError(f"layers and block_inplanes must have 4 entries, got layers={layers}, "
                             f"block_inplanes={block_inplanes}.")
        # checked here: the layers would name their own arguments (out_channels, kernel_size), which are not these
        if any(not _is_int(n) or n < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive ints, got layers={layers!r}.")
        if any(not _is_int(n) or n < 1 for n in block_inplanes):
            raise ValueError(f"block_inplanes must be 4 positive ints, got block_inplanes={block_inplanes!r}.")
        layers, block_inplanes = tuple(int(n) for n in layers), tuple(int(n) for n in block_inplanes)
        stem_k = conv1_t_size
        if isinstance(stem_k, (tuple, list)) and len(set(stem_k)) == 1:  # (k, k) is accepted by the lifting conv
            stem_k = stem_k[0]
        if not _is_int(stem_k) or stem_k < 1 or stem_k % 2 == 0:
            raise ValueError(f"conv1_t_size must be an odd positive int, got conv1_t_size={conv1_t_size!r}.")
        _check_choice(pooling, SPATIAL_POOL_MODES, "pooling")
        _check_choice(group_pool, POOL_MODES, "group_pool")
        _check_group_norm(norm)  # as GroupConvolution (the U-Net's blocks) does
        if not _is_int(conv1_t_stride) or conv1_t_stride < 1:
            raise ValueError(f"conv1_t_stride must be a positive int, got conv1_t_stride={conv1_t_stride!r}.")
        conv1_t_stride = int(conv1_t_stride)
        if feed_forward:
            num_classes = int(num_classes)
        in_channels = int(in_channels) if _is_int(in_channels) else in_channels  # checked by the lifting conv
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.group = group
        self.block_inplanes = block_inplanes
        self.downsample_factor = conv1_t_stride * (1 if no_max_pool else 2) * 8

        stem: list[nn.Module] = []
        if conv1_t_stride > 1:
            stem.append(nn.AvgPool2d(conv1_t_stride))
        stem += [
            GroupLiftingConv(in_channels, block_inplanes[0], conv1_t_size, group, bias=False),
            _norm_layer(norm, 3, block_inplanes[0]),
            _act_layer(act),
        ]
        if not no_max_pool:
            stem.append(GroupSpatialPool(2, pooling))
        self.stem = nn.Sequential(*stem)
        in_planes = block_inplanes[0]
        stages = []
        for i, (n_blocks, planes) in enumerate(zip(layers, block_inplanes)):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(GCNNResNetBlock(in_planes, planes, group, stride, kernel_size, act, norm))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.group_pool = GroupPool(group_pool)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(block_inplanes[3], num_classes) if feed_forward else None
        for m in self.modules():
            if isinstance(m, (nn.BatchNorm3d, nn.GroupNorm)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must be shaped (B, in_channels={self.in_channels}, H, W), got x.shape={list(x.shape)}."
            )
        if min(x.shape[-2], x.shape[-1]) < self.downsample_factor:  # each 2x2 pooling needs >= 2 pixels
            raise ValueError(
                f"spatial size must be at least downsample_factor={self.downsample_factor} in both dims, got "
                f"x.shape={list(x.shape)}; pad the input (e.g. monai.transforms.SpatialPad)."
            )
        h = self.stem(x)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        h = self.avgpool(self.group_pool(h)).flatten(1)
        return self.fc(h) if self.fc is not None else h


def gcnn_resnet18(
    spatial_dims: int = 2, in_channels: int | None = None, num_classes: int | None = None, group: str = "p4m", **kwargs
) -> GCNNResNet:
    """G-CNN ResNet-18 (``layers=(2, 2, 2, 2)``); see :class:`GCNNResNet` for the other arguments."""
    return GCNNResNet((2, 2, 2, 2), spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes,
                      group=group, **kwargs)


def gcnn_resnet34(
    spatial_dims: int = 2, in_channels: int | None = None, num_classes: int | None = None, group: str = "p4m", **kwargs
) -> GCNNResNet:
    """G-CNN ResNet-34 (``layers=(3, 4, 6, 3)``); see :class:`GCNNResNet` for the other arguments."""
    return GCNNResNet((3, 4, 6, 3), spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes,
                      group=group, **kwargs)
