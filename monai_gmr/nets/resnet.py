"""GMR ResNets: MONAI's ResNet with GMR convolutions and the GMR recipe for down-sampling (2D and 3D).

Recipe (the GMR paper's): a GMR stem; every strided convolution replaced by average pooling (kernel = stride) then
a stride-1 GMR convolution; shortcuts pool -> 1x1 conv -> norm; MONAI's 3x3/stride-2/pad-1 stem max pool replaced
by a 2x2 pool (a 3x3/stride-2 window grid is off-centre on even sizes and does not commute with flips); global
average pooling; a linear head.

Exactness: the logits are invariant to the 8 symmetries of the square (2D) / the 48 symmetries of the cube (3D)
when every spatial size is divisible by ``downsample_factor`` (``conv1_t_stride * 2 * 8 = 16`` with the defaults,
``conv1_t_stride * 8`` with ``no_max_pool=True``): each pooling with kernel = stride = ``s`` then sees sizes
divisible by ``s``, so its block partition is mapped onto itself by every group element. Other sizes of at least
``downsample_factor`` run (pooling floors, dropping the last row/column at odd sizes) but are then only approximately
invariant; pad to a multiple (e.g. ``monai.transforms.DivisiblePad(k=net.downsample_factor)``) to keep exactness.
Smaller sizes raise ``ValueError`` (the last pooling would have less than one window; MONAI's ResNet, whose strided
convolutions pad, runs there). Batch norm keeps invariance in
both modes (train-mode statistics are over all positions; eval-mode running statistics are constants).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.networks.nets.resnet import ResNetBlock as MonaiResNetBlock
from monai.networks.nets.resnet import ResNetBottleneck as MonaiResNetBottleneck

from monai_gmr.functional.basis import _is_int
from monai_gmr.nn.blocks import check_gmr_kwargs
from monai_gmr.nn.conv import GMRConv
from monai_gmr.utils import as_bool

from .unet import POOL_MODES, _check_spatial_dims, _positive_int, make_pool

__all__ = [
    "GMRResNet",
    "GMRResNetBlock",
    "GMRResNetBottleneck",
    "gmr_resnet18",
    "gmr_resnet34",
    "gmr_resnet50",
    "RESNET_INPLANES",
]

RESNET_INPLANES = (64, 128, 256, 512)


def _isotropic(value, name: str, spatial_dims: int | None = None):
    """``value`` unchanged, or the one value of a tuple/list that repeats it (MONAI's per-dim form: one entry per
    spatial dim when ``spatial_dims`` is given; ``(7, 7)`` for a 3D net was taken as 7 without a word)."""
    if isinstance(value, (tuple, list)):
        if spatial_dims is not None and len(value) != spatial_dims:
            raise ValueError(
                f"{name} must be an int or one value per spatial dim ({spatial_dims}), got {name}={tuple(value)!r}."
            )
        if len(value) == 0 or len(set(value)) != 1:
            raise ValueError(f"{name} must be an int or a tuple repeating one value (GMR is isotropic), got {name}={tuple(value)!r}.")
        return value[0]
    return value


def _norm_layer(norm, spatial_dims: int, channels: int) -> nn.Module:
    """MONAI norm layer ``norm`` (name or ``(name, kwargs)``), or ``nn.Identity`` for ``norm=None`` (as in
    :class:`~monai_gmr.nets.GMRUNet`; MONAI's factory failed on ``None`` with "cannot unpack non-iterable NoneType")."""
    return nn.Identity() if norm is None else get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=channels)


def _act_layer(act) -> nn.Module:
    """MONAI activation ``act`` (name or ``(name, kwargs)``), or ``nn.Identity`` for ``act=None``."""
    return nn.Identity() if act is None else get_act_layer(name=act)


def _shortcut(spatial_dims: int, in_planes: int, out_planes: int, stride: int, norm, bias: bool) -> nn.Sequential:
    """pool (kernel = stride) -> 1x1 conv -> norm (the shortcut of the recipe)."""
    layers: list[nn.Module] = []
    if stride > 1:
        layers.append(make_pool(spatial_dims, stride, "avg"))
    layers += [
        Conv[Conv.CONV, spatial_dims](in_planes, out_planes, kernel_size=1, bias=bias),
        _norm_layer(norm, spatial_dims, out_planes),
    ]
    return nn.Sequential(*layers)


class GMRResNetBlock(nn.Module):
    """Basic block: [avg pool] -> GMR conv -> norm -> act -> GMR conv -> norm, + shortcut, act.

    Args:
        in_planes: input channels.
        planes: output channels (``planes * expansion``, ``expansion = 1``).
        spatial_dims: 2 or 3.
        stride: down-sampling factor, implemented as ``stride x stride`` average pooling before the first conv.
        kernel_size: odd GMR kernel width.
        act: activation name or ``(name, kwargs)``; ``None`` for none.
        norm: norm name or ``(name, kwargs)``; ``None`` for none.
        bias_downsample: bias of the shortcut's 1x1 conv (MONAI's ``bias_downsample``).
        gmr_kwargs: extra :class:`~monai_gmr.nn.GMRConv` arguments.

    Shapes:
        ``(B, in_planes, *spatial) -> (B, planes, *spatial / stride)``.
    """

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        spatial_dims: int = 2,
        stride: int = 1,
        kernel_size: int = 3,
        act: str | tuple | None = ("relu", {"inplace": True}),
        norm: str | tuple | None = "batch",
        bias_downsample: bool = True,
        **gmr_kwargs,
    ) -> None:
        super().__init__()
        stride = _positive_int(stride, "stride")  # 0 or -1 ran as stride 1 without a word
        self.pool = make_pool(spatial_dims, stride, "avg") if stride > 1 else nn.Identity()
        self.conv1 = GMRConv(spatial_dims, in_planes, planes, kernel_size, bias=False, **gmr_kwargs)
        self.bn1 = _norm_layer(norm, spatial_dims, planes)
        self.act = _act_layer(act)
        self.conv2 = GMRConv(spatial_dims, planes, planes, kernel_size, bias=False, **gmr_kwargs)
        self.bn2 = _norm_layer(norm, spatial_dims, planes)
        self.downsample: nn.Module | None = None
        if stride > 1 or in_planes != planes * self.expansion:
            self.downsample = _shortcut(spatial_dims, in_planes, planes * self.expansion, stride, norm, bias_downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(self.pool(x))))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


class GMRResNetBottleneck(nn.Module):
    """Bottleneck block: 1x1 conv -> norm -> act -> [avg pool] -> GMR conv -> norm -> act -> 1x1 conv -> norm,
    + shortcut, act (``expansion = 4``; the stride sits at the GMR conv, like MONAI's ``ResNetBottleneck``).

    Arguments as in :class:`GMRResNetBlock`.

    Shapes:
        ``(B, in_planes, *spatial) -> (B, 4 * planes, *spatial / stride)``.
    """

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        spatial_dims: int = 2,
        stride: int = 1,
        kernel_size: int = 3,
        act: str | tuple | None = ("relu", {"inplace": True}),
        norm: str | tuple | None = "batch",
        bias_downsample: bool = True,
        **gmr_kwargs,
    ) -> None:
        super().__init__()
        stride = _positive_int(stride, "stride")  # 0 or -1 ran as stride 1 without a word
        conv1x1 = Conv[Conv.CONV, spatial_dims]
        self.conv1 = conv1x1(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = _norm_layer(norm, spatial_dims, planes)
        self.pool = make_pool(spatial_dims, stride, "avg") if stride > 1 else nn.Identity()
        self.conv2 = GMRConv(spatial_dims, planes, planes, kernel_size, bias=False, **gmr_kwargs)
        self.bn2 = _norm_layer(norm, spatial_dims, planes)
        self.conv3 = conv1x1(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = _norm_layer(norm, spatial_dims, planes * self.expansion)
        self.act = _act_layer(act)
        self.downsample: nn.Module | None = None
        if stride > 1 or in_planes != planes * self.expansion:
            self.downsample = _shortcut(spatial_dims, in_planes, planes * self.expansion, stride, norm, bias_downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(self.pool(out))))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


_BLOCKS = {"basic": GMRResNetBlock, "bottleneck": GMRResNetBottleneck}


class GMRResNet(nn.Module):
    """ResNet of GMR convolutions with logits exactly invariant to D4 (2D) / the cube group (3D).

    Follows MONAI's :class:`~monai.networks.nets.ResNet` (argument names, 4 stages with strides 1, 2, 2, 2, widths
    ``block_inplanes``) with the GMR recipe described in the module docstring.

    Args:
        block: ``"basic"`` (ResNet-18/34), ``"bottleneck"`` (ResNet-50+) or a block class taking
            :class:`GMRResNetBlock`'s arguments; MONAI's ``ResNetBlock`` / ``ResNetBottleneck`` classes mean
            :class:`GMRResNetBlock` / :class:`GMRResNetBottleneck`.
        layers: blocks per stage (4 ints), e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        block_inplanes: widths of the 4 stages (before ``widen_factor``).
        spatial_dims: 2 or 3.
        in_channels: input channels (3 when neither it nor ``n_input_channels`` is given).
        num_classes: number of logits (``out_channels`` is accepted as an alias; 2 when neither is given); unused
            when ``feed_forward=False``.
        kernel_sizes: odd GMR kernel width per stage (4 ints, or one int for all).
        conv1_t_size: odd kernel width of the GMR stem; ``None`` uses ``kernel_sizes[0]``. A tuple (MONAI style)
            must repeat one value (the stem is isotropic).
        conv1_t_stride: stem down-sampling factor (average pooling before the stride-1 stem conv, like every
            other stride of the recipe); a tuple must repeat one value.
        no_max_pool: drop the stem's 2x2 pool (MONAI's ``no_max_pool``).
        stem_pooling: ``"avg"`` or ``"max"`` for the stem's 2x2 pool (both exact on even sizes).
        widen_factor: multiplier of ``block_inplanes``.
        feed_forward: ``False`` drops the linear head; ``forward`` then returns the pooled features.
        bias_downsample: bias of the shortcuts' 1x1 convs.
        act: activation name or ``(name, kwargs)``; ``None`` for none.
        norm: norm name or ``(name, kwargs)``; ``None`` for none.
        out_channels: alias of ``num_classes`` (so configs written for ``out_channels`` work, as for
            :class:`~monai_gmr.nets.GCNNResNet`).
        n_input_channels: alias of ``in_channels`` (MONAI ``ResNet``'s name).
        shortcut_type: ``"B"`` only (MONAI's default; ``"A"``, a strided subsampling, raises ``ValueError``).
        gmr_kwargs: extra :class:`~monai_gmr.nn.GMRConv` arguments (``num_rings``, ``smoothing``, ``sigma``,
            ``circular``, ``impl``, ``sampling``, ``padding_mode``, ``dilation``); any other keyword raises ``ValueError``.

    Attributes:
        downsample_factor: total down-sampling; exact invariance needs every spatial size divisible by it.
        num_features: width of the pooled features (``block_inplanes[3] * widen_factor * expansion``).

    Shapes:
        ``forward``: ``(B, in_channels, *spatial) -> (B, num_classes)`` (``(B, num_features)`` when
        ``feed_forward=False``); ``forward_features``: ``(B, in_channels, *spatial) -> (B, num_features)``.
    """

    def __init__(
        self,
        block: str | type[nn.Module] = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        block_inplanes: Sequence[int] = RESNET_INPLANES,
        spatial_dims: int = 2,
        in_channels: int | None = None,
        num_classes: int | None = None,
        kernel_sizes: int | Sequence[int] = (9, 9, 5, 5),
        conv1_t_size: int | Sequence[int] | None = None,
        conv1_t_stride: int | Sequence[int] = 1,
        no_max_pool: bool = False,
        stem_pooling: str = "avg",
        widen_factor: float = 1.0,
        feed_forward: bool = True,
        bias_downsample: bool = True,
        act: str | tuple | None = ("relu", {"inplace": True}),
        norm: str | tuple | None = "batch",
        out_channels: int | None = None,
        n_input_channels: int | None = None,
        shortcut_type: str = "B",
        **gmr_kwargs,
    ) -> None:
        super().__init__()
        in_channels_given = in_channels is not None
        in_channels = 3 if in_channels is None else in_channels
        _check_spatial_dims(spatial_dims)
        if num_classes is not None and out_channels is not None and num_classes != out_channels:
            raise ValueError(
                "num_classes and its alias out_channels disagree: "
                f"num_classes={num_classes}, out_channels={out_channels}."
            )
        num_classes = num_classes if num_classes is not None else out_channels if out_channels is not None else 2
        if n_input_channels is not None:  # MONAI ResNet's name of in_channels
            if in_channels_given and n_input_channels != in_channels:
                raise ValueError(
                    "in_channels and its alias n_input_channels disagree: "
                    f"in_channels={in_channels}, n_input_channels={n_input_channels}."
                )
            in_channels = n_input_channels
        if shortcut_type != "B":  # MONAI's "A" (stride-2 subsampling, zero-padded channels) is not equivariant
            raise ValueError(
                f"shortcut_type must be 'B' (pool -> 1x1 conv -> norm, the only GMRResNet shortcut), got "
                f"shortcut_type={shortcut_type!r}; MONAI's 'A' subsamples with a stride and is not supported."
            )
        check_gmr_kwargs(gmr_kwargs, extra=("dilation",))
        # text from a command line (`--network_def#feed_forward false`: Python Fire passes "false", which is truthy)
        no_max_pool, feed_forward = as_bool(no_max_pool, "no_max_pool"), as_bool(feed_forward, "feed_forward")
        bias_downsample = as_bool(bias_downsample, "bias_downsample")
        if isinstance(block, str):
            if block not in _BLOCKS:
                raise ValueError(f"block must be one of {tuple(_BLOCKS)} or a block class, got block={block!r}.")
            block = _BLOCKS[block]
        # MONAI's own block classes (a config ported from monai.networks.nets.ResNet) mean their GMR counterparts, as
        # "basic"/"bottleneck" do; built as they were, they raised "takes from 3 to 8 positional arguments"
        block = {MonaiResNetBlock: GMRResNetBlock, MonaiResNetBottleneck: GMRResNetBottleneck}.get(block, block)
        layers = tuple(layers)
        block_inplanes = tuple(block_inplanes)
        # NumPy integers too (sizes from a sweep table), as for in_channels / num_classes below
        if len(layers) != 4 or any(not _is_int(n) or n < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive ints, got layers={layers!r}.")
        if len(block_inplanes) != 4 or any(not _is_int(n) or n < 1 for n in block_inplanes):
            raise ValueError(f"block_inplanes must be 4 positive ints, got block_inplanes={block_inplanes!r}.")
        layers, block_inplanes = tuple(int(n) for n in layers), tuple(int(n) for n in block_inplanes)
        if isinstance(kernel_sizes, (tuple, list)):
            ks = tuple(kernel_sizes)
            if len(ks) != 4:
                raise ValueError(
                    f"kernel_sizes must be an int or 4 ints (one per stage), got kernel_sizes={ks}; the entries are "
                    f"isotropic widths per stage, not per axis (GMR kernels have no (3, 3, 1) form)."
                )
        else:
            ks = (kernel_sizes,) * 4
        if any(isinstance(k, (tuple, list)) for k in ks):
            raise ValueError(
                f"kernel_sizes must hold one odd int per stage (GMR kernels are isotropic: 3, not (3, 3, 3)), got "
                f"kernel_sizes={ks}."
            )
        if any(not _is_int(k) or k < 1 or k % 2 == 0 for k in ks):
            raise ValueError(f"kernel_sizes must hold odd positive ints, got kernel_sizes={ks}.")
        ks = tuple(int(k) for k in ks)
        # MONAI's ResNet takes per-dim tuples here; a GMR stem is isotropic, so an all-equal tuple is its int
        conv1_t_size = _isotropic(conv1_t_size, "conv1_t_size", spatial_dims)
        conv1_t_stride = _isotropic(conv1_t_stride, "conv1_t_stride", spatial_dims)
        stem_k = ks[0] if conv1_t_size is None else conv1_t_size
        if not _is_int(stem_k) or stem_k < 1 or stem_k % 2 == 0:
            raise ValueError(f"conv1_t_size must be an odd positive int, got conv1_t_size={conv1_t_size!r}.")
        if not _is_int(conv1_t_stride) or conv1_t_stride < 1:
            raise ValueError(f"conv1_t_stride must be a positive int, got conv1_t_stride={conv1_t_stride!r}.")
        stem_k, conv1_t_stride = int(stem_k), int(conv1_t_stride)
        if stem_pooling not in POOL_MODES:
            raise ValueError(f"stem_pooling must be one of {POOL_MODES}, got stem_pooling={stem_pooling!r}.")
        # NumPy integers too (e.g. num_classes=labels.max() + 1), as GMRConv, GMRUNet and nn.Linear take them
        if not _is_int(in_channels) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got in_channels={in_channels!r}.")
        if feed_forward and (not _is_int(num_classes) or num_classes < 1):
            raise ValueError(f"num_classes (or its alias out_channels) must be a positive int, got num_classes={num_classes!r}.")

        if isinstance(widen_factor, bool) or not isinstance(widen_factor, (int, float)):
            raise ValueError(f"widen_factor must be a positive number, got widen_factor={widen_factor!r}.")
        planes = [int(p * widen_factor) for p in block_inplanes]
        if min(planes) < 1:  # GMRConv would name out_channels, which here is the alias of num_classes
            raise ValueError(
                f"widen_factor={widen_factor!r} leaves a stage without channels: block_inplanes={block_inplanes} "
                f"gives widths {tuple(planes)}; each must be >= 1."
            )
        self.spatial_dims = spatial_dims
        in_channels = int(in_channels)
        num_classes = int(num_classes) if _is_int(num_classes) else num_classes
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.kernel_sizes = ks
        self.downsample_factor = conv1_t_stride * (1 if no_max_pool else 2) * 8
        self.num_features = planes[3] * block.expansion  # type: ignore[attr-defined]

        stem: list[nn.Module] = []
        if conv1_t_stride > 1:
            stem.append(make_pool(spatial_dims, conv1_t_stride, "avg"))
        stem += [
            GMRConv(spatial_dims, in_channels, planes[0], stem_k, bias=False, **gmr_kwargs),
            _norm_layer(norm, spatial_dims, planes[0]),
            _act_layer(act),
        ]
        if not no_max_pool:
            stem.append(make_pool(spatial_dims, 2, stem_pooling))
        self.stem = nn.Sequential(*stem)
        in_planes = planes[0]
        stages = []
        for i, (n_blocks, p) in enumerate(zip(layers, planes)):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, p, spatial_dims, stride, ks[i], act, norm, bias_downsample, **gmr_kwargs))
                in_planes = p * block.expansion  # type: ignore[attr-defined]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.fc = nn.Linear(in_planes, num_classes) if feed_forward else None
        for m in self.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d, nn.InstanceNorm3d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features ``(B, num_features)`` of ``x`` ``(B, in_channels, *spatial)`` (invariant)."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"input must be shaped (B, in_channels={self.in_channels}, *spatial) with {self.spatial_dims} spatial "
                f"dims, got input shape {list(x.shape)}."
            )
        if min(x.shape[2:]) < self.downsample_factor:  # the pools floor: the last one would get an empty window
            raise ValueError(
                f"GMRResNet needs every spatial size >= downsample_factor={self.downsample_factor} (and divisible by it "
                f"for exact invariance), got input shape {list(x.shape)}; pad the input, e.g. "
                f"monai.transforms.DivisiblePad(k={self.downsample_factor})."
            )
        h = self.stem(x)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return torch.flatten(self.avgpool(h), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` (pooled features ``(B, num_features)`` when ``feed_forward=False``)."""
        h = self.forward_features(x)
        if self.fc is not None:
            h = self.fc(h)
        return h


def gmr_resnet18(spatial_dims: int = 2, in_channels: int | None = None, num_classes: int | None = None, kernel_sizes: int | Sequence[int] = (9, 9, 5, 5), **kwargs) -> GMRResNet:
    """GMR ResNet-18 (basic blocks, ``layers=(2, 2, 2, 2)``); other arguments as in :class:`GMRResNet`."""
    return GMRResNet("basic", (2, 2, 2, 2), spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes,
                     kernel_sizes=kernel_sizes, **kwargs)  # fmt: skip


def gmr_resnet34(spatial_dims: int = 2, in_channels: int | None = None, num_classes: int | None = None, kernel_sizes: int | Sequence[int] = (9, 9, 5, 5), **kwargs) -> GMRResNet:
    """GMR ResNet-34 (basic blocks, ``layers=(3, 4, 6, 3)``); other arguments as in :class:`GMRResNet`."""
    return GMRResNet("basic", (3, 4, 6, 3), spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes,
                     kernel_sizes=kernel_sizes, **kwargs)  # fmt: skip


def gmr_resnet50(spatial_dims: int = 2, in_channels: int | None = None, num_classes: int | None = None, kernel_sizes: int | Sequence[int] = (9, 9, 5, 5), **kwargs) -> GMRResNet:
    """GMR ResNet-50 (bottleneck blocks, ``layers=(3, 4, 6, 3)``); other arguments as in :class:`GMRResNet`."""
    return GMRResNet("bottleneck", (3, 4, 6, 3), spatial_dims=spatial_dims, in_channels=in_channels,
                     num_classes=num_classes, kernel_sizes=kernel_sizes, **kwargs)  # fmt: skip
