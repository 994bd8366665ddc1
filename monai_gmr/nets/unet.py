"""GMR U-Net: the equivariant nuclei-segmentation U-Net of the GMR paper, for 2D images and 3D volumes.

Layout (``L = len(features) - 1`` down-sampling levels, 3 by default)::

    level 0:  GMR conv block x2                                   (kernel_sizes[0])
    level i:  2x pool -> GMR conv block x2                         (kernel_sizes[i])
    up i:     2x non-learned interpolation -> GMR conv block       (kernel_sizes[i - 1], width features[i - 1])
              -> concat with the skip of level i - 1 -> GMR conv block x2
    head:     1x1 convolution

A "GMR conv block" is :class:`monai_gmr.nn.GMRConvolution`: a stride-1 GMR convolution followed by MONAI's ``ADN``
(norm -> dropout -> activation). Every layer commutes exactly with the 8 symmetries of the square (2D) / the 48
symmetries of the cube (3D) when each spatial size is divisible by ``2 ** L``:

* GMR convolutions are radially symmetric with symmetric "same" padding;
* 2x average (or max) pooling with kernel = stride = 2 maps the block partition of an even-sized grid onto itself
  under every flip/rotation/axis permutation;
* nearest / (bi/tri)linear / bicubic up-sampling by an integer factor uses source coordinates that are symmetric
  about the grid centre for ``align_corners=False`` (used here) as well as ``True``, and is separable, so it commutes
  with flips and axis permutations (tested for every mode in tests/nets/test_unet.py);
* norms (instance/batch/group) and activations are per channel / per pixel; concatenation and 1x1 convs are
  pointwise.

Divisibility rule: every spatial size must be divisible by ``2 ** L`` (8 with the defaults). Other sizes raise
``ValueError`` unless ``pad_to_multiple=True``, in which case the input is padded to the next multiple (the pad
split as evenly as possible between both sides) and the output cropped back. The padded net is still exactly
equivariant when every size's total padding ``(-size) % 2 ** L`` is even (the pad is then symmetric), e.g. 30 or
60 with ``L = 3``, and only approximately otherwise (an odd total shifts the image by half a pixel against the grid).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Pool

from monai_gmr.functional.basis import _is_int
from monai_gmr.functional.padding import PAD_MODES, reflect_pad_pairs
from monai_gmr.nn.blocks import GMRConvolution, _check_dropout, check_gmr_kwargs
from monai_gmr.utils import as_bool

__all__ = ["GMRUNet", "UPSAMPLE_MODES", "POOL_MODES", "PAD_MODES", "interp_mode", "make_upsample", "make_pool"]

UPSAMPLE_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "bicubic")
POOL_MODES = ("avg", "max")


def interp_mode(mode: str, spatial_dims: int) -> str:
    """Map a user-facing up-sampling mode to ``F.interpolate``'s name for ``spatial_dims`` dims.

    ``"linear"``, ``"bilinear"`` and ``"trilinear"`` all mean (multi-)linear interpolation (``"bilinear"`` in 2D,
    ``"trilinear"`` in 3D); ``"bicubic"`` is 2D only.

    Raises:
        ValueError: unknown ``mode`` or ``"bicubic"`` with ``spatial_dims=3``.
    """
    if mode in ("deconv", "deconvgroup", "pixelshuffle", "nontrainable"):  # MONAI UpSample / BasicUNet mode names
        raise ValueError(
            f"upsample must be one of {UPSAMPLE_MODES}, got MONAI's upsample={mode!r}: GMR nets up-sample only without "
            "learning (a transposed conv or pixel shuffle is learned and orientation-dependent); MONAI's "
            "'nontrainable' is upsample='bilinear' here (align_corners=False), or pick another interpolation mode."
        )
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got upsample={mode!r}.")
    if mode in ("linear", "bilinear", "trilinear"):
        return "bilinear" if spatial_dims == 2 else "trilinear"
    if mode == "bicubic" and spatial_dims != 2:
        raise ValueError(f"upsample='bicubic' is 2D only, got spatial_dims={spatial_dims}; use 'trilinear' or 'nearest'.")
    return mode


def make_upsample(spatial_dims: int, scale: int | Sequence[int], mode: str = "bilinear") -> nn.Upsample:
    """Non-learned up-sampling by an integer factor (``align_corners=False`` for interpolating modes).

    Commutes with flips and axis permutations of the grid for every mode (tested), unlike a stride-2 transposed
    convolution, whose learned kernel is not symmetric.
    """
    m = interp_mode(mode, spatial_dims)
    scale_f = tuple(float(s) for s in scale) if isinstance(scale, (tuple, list)) else float(scale)
    align = False if m in ("bilinear", "trilinear", "bicubic") else None
    return nn.Upsample(scale_factor=scale_f, mode=m, align_corners=align)


def make_pool(spatial_dims: int, size: int | Sequence[int], mode: str = "avg", ceil_mode: bool = False, padding: int | Sequence[int] = 0) -> nn.Module:
    """``kernel = stride = size`` average or max pooling (MONAI ``Pool`` factory)."""
    if mode not in POOL_MODES:
        raise ValueError(f"pooling must be one of {POOL_MODES}, got pooling={mode!r}.")
    pool_type = Pool[Pool.AVG if mode == "avg" else Pool.MAX, spatial_dims]
    return pool_type(kernel_size=size, stride=size, padding=padding, ceil_mode=ceil_mode)


#: monai.networks.nets.UNet arguments with no GMRUNet namesake, and what to pass instead.
_MONAI_UNET_KEYS = {
    "channels": "features (one width per level)",
    "strides": "none (each level down-samples by fixed 2x pooling, see pooling)",
    "kernel_size": "kernel_sizes (one odd width per level)",
    "up_kernel_size": "kernel_sizes (the up-path blocks use their level's width)",
    "num_res_units": "none (plain two-block levels, no residual units)",
}


def _check_spatial_dims(spatial_dims: int) -> None:
    if not _is_int(spatial_dims) or spatial_dims not in (2, 3):  # 2.0 passed `in (2, 3)`, then broke deep inside
        raise ValueError(f"spatial_dims must be 2 or 3, got spatial_dims={spatial_dims!r}.")


def _positive_int(value, name: str) -> int:
    """``value`` as an int (NumPy integers too, as ``GMRConv`` and ``nn.Conv2d`` accept them; not bools/floats)."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {name}={value!r}.")
    return int(value)


def _kernel_sizes(kernel_sizes: int | Sequence[int], levels: int) -> tuple[int, ...]:
    """One odd kernel width per level (``levels = len(features)``)."""
    if isinstance(kernel_sizes, (tuple, list)):
        ks = tuple(kernel_sizes)
        if len(ks) != levels:
            raise ValueError(
                f"kernel_sizes must be an int or have one entry per level (len(features)={levels}), "
                f"got kernel_sizes={ks}; the entries are isotropic widths per level, not per axis (GMR kernels have "
                f"no (3, 3, 1) form). The default kernel_sizes (and those of the *_tiny registry entries) have 4 "
                f"entries, one per default level: pass kernel_sizes together with features of another length."
            )
    else:
        ks = (kernel_sizes,) * levels
    if any(isinstance(k, (tuple, list)) for k in ks):
        raise ValueError(
            f"kernel_sizes must hold one odd int per level (GMR kernels are isotropic: 3, not (3, 3, 3)), got "
            f"kernel_sizes={ks}."
        )
    for k in ks:
        if not _is_int(k) or k < 1 or k % 2 == 0:
            raise ValueError(f"kernel_sizes must hold odd positive ints (GMR kernels are centred), got kernel_sizes={ks}.")
    return tuple(int(k) for k in ks)


class GMRUNet(nn.Module):
    """Rotation/reflection-equivariant U-Net built from GMR convolutions (the GMR paper's nuclei U-Net).

    See the module docstring for the layout and the exactness argument. With the defaults: 3 down-sampling levels,
    widths 16/32/64/128, GMR kernel widths 9/9/5/5 from top to bottom, 2x2 average pooling, bilinear up-sampling.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (logits).
        features: widths per level, top to bottom; ``len(features) - 1`` down-sampling levels (>= 1).
        kernel_sizes: odd GMR kernel width per level (an int for all levels).
        act: activation name or ``(name, kwargs)`` (MONAI ``Act`` factory).
        norm: norm name or ``(name, kwargs)`` (MONAI ``Norm`` factory); ``None`` for none.
        dropout: dropout probability (element-wise; 0 for none).
        bias: convolution bias.
        upsample: ``"bilinear"`` (= ``"linear"``/``"trilinear"``, multi-linear in 3D), ``"nearest"``,
            ``"nearest-exact"`` or ``"bicubic"`` (2D).
        pooling: ``"avg"`` or ``"max"`` down-sampling (kernel = stride = 2).
        pad_to_multiple: pad inputs whose sizes are not divisible by ``2 ** levels`` and crop the output back
            (otherwise such inputs raise ``ValueError``).
        pad_mode: ``"replicate"`` (the default since 2026-12-07), ``"reflect"`` or ``"constant"`` (zeros, the
            earlier default) padding for ``pad_to_multiple``. Instance norm (the default ``norm``) takes its
            statistics over the padded input, so even a few black pixels count: on crops of 100 and 153 pixels of
            CPM-15 tiles a trained GMRUNet scored Dice 0.754 / 0.766 with zeros, 0.800 / 0.797 with ``"replicate"``.
            ``"reflect"`` takes any pad (:func:`monai_gmr.functional.reflect_pad_pairs`, ``numpy.pad``'s
            repeated reflection), also wider than a size (a volume of 3 slices padded to 8).
        gmr_kwargs: extra :class:`monai_gmr.nn.GMRConv` arguments (``num_rings``, ``smoothing``, ``sigma``,
            ``circular``, ``impl``, ``sampling``, ``padding_mode``, ``dilation``, ``groups``) and the
            :class:`~monai_gmr.nn.GMRConvolution` block's ``adn_ordering``/``dropout_dim``; any other keyword raises
            ``ValueError``.

    Shapes:
        ``(B, in_channels, *spatial) -> (B, out_channels, *spatial)``.

    Example:
        >>> net = GMRUNet(2, 3, 2)                      # paper defaults
        >>> net(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 2, 64, 64])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (16, 32, 64, 128),
        kernel_sizes: int | Sequence[int] = (9, 9, 5, 5),
        act: str | tuple | None = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple | None = ("instance", {"affine": True}),
        dropout: float | tuple | None = 0.0,
        bias: bool = True,
        upsample: str = "bilinear",
        pooling: str = "avg",
        pad_to_multiple: bool = False,
        pad_mode: str = "replicate",
        **gmr_kwargs,
    ) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        spatial_dims = int(spatial_dims)
        in_channels = _positive_int(in_channels, "in_channels")
        out_channels = _positive_int(out_channels, "out_channels")
        if isinstance(features, (str, bytes)) or not isinstance(features, Sequence):
            raise ValueError(f"features must be a sequence of >= 2 positive ints, got features={features!r}.")
        features = tuple(features)
        if len(features) < 2 or any(not _is_int(f) or f < 1 for f in features):
            raise ValueError(f"features must hold >= 2 positive ints, got features={features!r}.")
        features = tuple(int(f) for f in features)
        dropout = _check_dropout(dropout)
        ks = _kernel_sizes(kernel_sizes, len(features))
        bias = as_bool(bias, "bias")
        interp_mode(upsample, spatial_dims)  # validates
        if pooling not in POOL_MODES:
            raise ValueError(f"pooling must be one of {POOL_MODES}, got pooling={pooling!r}.")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got pad_mode={pad_mode!r}.")
        ported = sorted(k for k in gmr_kwargs if k in _MONAI_UNET_KEYS)  # a config written for monai's UNet
        if ported:
            raise ValueError(
                f"GMRUNet does not take MONAI UNet's {', '.join(ported)}: "
                + "; ".join(f"{k} -> {_MONAI_UNET_KEYS[k]}" for k in ported)
                + "."
            )
        # conv_only/strides/padding would reach GMRConvolution and break the net; these extras keep it equivariant
        check_gmr_kwargs(gmr_kwargs, extra=("dilation", "groups", "adn_ordering", "dropout_dim"))
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        self.kernel_sizes = ks
        self.levels = len(features) - 1
        self.multiple = 2**self.levels
        self.pad_to_multiple = as_bool(pad_to_multiple, "pad_to_multiple")  # "false" from a command line is truthy
        self.pad_mode = pad_mode
        drop = dropout if dropout else None

        def block(c_in: int, c_out: int, k: int) -> GMRConvolution:
            return GMRConvolution(
                spatial_dims, c_in, c_out, kernel_size=k, act=act, norm=norm, dropout=drop, bias=bias, **gmr_kwargs
            )

        self.encoders = nn.ModuleList([nn.Sequential(block(in_channels, features[0], ks[0]), block(features[0], features[0], ks[0]))])
        for i in range(1, len(features)):
            self.encoders.append(
                nn.Sequential(
                    make_pool(spatial_dims, 2, pooling),
                    block(features[i - 1], features[i], ks[i]),
                    block(features[i], features[i], ks[i]),
                )
            )
        self.up_convs = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(len(features) - 1, 0, -1):
            self.up_convs.append(
                nn.Sequential(make_upsample(spatial_dims, 2, upsample), block(features[i], features[i - 1], ks[i - 1]))
            )
            self.decoders.append(
                nn.Sequential(
                    block(2 * features[i - 1], features[i - 1], ks[i - 1]),
                    block(features[i - 1], features[i - 1], ks[i - 1]),
                )
            )
        self.head = Conv[Conv.CONV, spatial_dims](features[0], out_channels, kernel_size=1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"input must be shaped (B, in_channels={self.in_channels}, *spatial) with {self.spatial_dims} spatial "
                f"dims, got input shape {list(x.shape)}."
            )

    def _pads(self, x: torch.Tensor) -> list[int]:
        """``F.pad`` amounts (last dim first) bringing every spatial size to a multiple of ``2 ** levels``."""
        pads: list[int] = []
        for d in range(x.ndim - 1, 1, -1):
            total = (-x.shape[d]) % self.multiple
            pads += [total // 2, total - total // 2]
        return pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: ``(B, in_channels, *spatial)``; every spatial size divisible by ``2 ** levels`` unless
                ``pad_to_multiple=True``.

        Returns:
            logits ``(B, out_channels, *spatial)``.
        """
        self._check_input(x)
        pads = self._pads(x)
        padded = False
        for p in pads:
            if p != 0:
                padded = True
        if padded:
            if not self.pad_to_multiple:
                raise ValueError(
                    f"GMRUNet needs every spatial size divisible by 2**levels={self.multiple} (exact equivariance, "
                    f"matching skip shapes), got input shape {list(x.shape)}; pad the input (e.g. "
                    f"monai.transforms.DivisiblePad(k={self.multiple})) or construct with pad_to_multiple=True."
                )
            if self.pad_mode == "reflect":
                # F.pad's reflection refuses a pad of the size or more (a thin volume of a few slices padded to a
                # multiple of 8): numpy.pad's repeated reflection, the same values where F.pad works
                x = reflect_pad_pairs(x, pads)
            else:
                x = F.pad(x, pads, mode=self.pad_mode)
        skips: list[torch.Tensor] = []
        h = x
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
        h = skips.pop()
        i = 0
        for up, dec in zip(self.up_convs, self.decoders):
            skip = skips[len(skips) - 1 - i]
            h = dec(torch.cat([skip, up(h)], dim=1))
            i += 1
        out = self.head(h)
        if padded:
            if self.spatial_dims == 2:
                out = out[..., pads[2] : out.shape[2] - pads[3], pads[0] : out.shape[3] - pads[1]]
            else:
                out = out[
                    ...,
                    pads[4] : out.shape[2] - pads[5],
                    pads[2] : out.shape[3] - pads[3],
                    pads[0] : out.shape[4] - pads[1],
                ]
        return out
