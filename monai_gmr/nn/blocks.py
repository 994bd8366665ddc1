"""MONAI-style blocks built on GMR convolution."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import ADN

from monai_gmr.functional.basis import _is_int
from monai_gmr.utils import as_bool

from .conv import GMRConv, _single

__all__ = ["GMRConvolution", "GMR_CONV_KWARGS", "check_gmr_kwargs"]

#: the :class:`GMRConv` arguments that networks and ``convert_to_gmr`` forward through ``**gmr_kwargs`` (the others
#: -- channels, kernel size, stride, padding, dilation, groups, bias -- are set by the network itself).
GMR_CONV_KWARGS = ("padding_mode", "num_rings", "smoothing", "sigma", "circular", "impl", "sampling")


def check_gmr_kwargs(gmr_kwargs: dict, extra: Sequence[str] = ()) -> None:
    """Validate extra :class:`GMRConv` keyword arguments before anything is built from them.

    Args:
        gmr_kwargs: keyword arguments forwarded to every :class:`GMRConv` (keys from :data:`GMR_CONV_KWARGS`).
        extra: further keys the caller accepts and forwards itself (e.g. ``dilation`` or ``GMRConvolution``'s
            ``adn_ordering`` in a network); only the :data:`GMR_CONV_KWARGS` values are checked by a trial GMRConv.

    Raises:
        ValueError: a key outside :data:`GMR_CONV_KWARGS` and ``extra`` (e.g. a misspelling, or a geometry argument
            such as ``strides``/``padding`` that the network sets itself), or a value :class:`GMRConv` rejects.
            The trial layer is 1x1 for ``num_rings=1`` and 3x3 otherwise: whether ``num_rings`` suits each layer's
            kernel size (1 only for ``kernel_size=1``, >= 2 otherwise) is checked when that layer is built.
    """
    allowed = (*GMR_CONV_KWARGS, *extra)
    unexpected = sorted(k for k in gmr_kwargs if k not in allowed)
    if unexpected:
        raise ValueError(
            f"unexpected keyword argument(s) {', '.join(unexpected)}: extra keywords are passed to every GMRConv, "
            f"which takes only {', '.join(allowed)} here."
        )
    # num_rings=1 is valid only for kernel_size=1 (and >= 2 only for k > 1): a k=3 trial refused num_rings=1 for a
    # network whose GMR layers are all 1x1; each layer checks num_rings against its own kernel size when built
    num_rings = gmr_kwargs.get("num_rings")
    trial_k = 1 if _is_int(num_rings) and num_rings == 1 else 3
    try:
        with torch.random.fork_rng(devices=[]):  # the trial layer's initialisation must not move the global RNG
            GMRConv(2, 1, 1, trial_k, **{k: v for k, v in gmr_kwargs.items() if k in GMR_CONV_KWARGS})
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid GMRConv keyword argument: {e}") from e


class GMRConvolution(nn.Sequential):
    """GMR convolution followed by MONAI's ``ADN`` (activation / dropout / normalisation) block.

    The counterpart of :class:`monai.networks.blocks.Convolution` with the same argument names in the same order
    (``strides`` before ``kernel_size``, ``is_transposed`` between ``conv_only`` and ``padding``), for
    stride-1-by-default equivariant layers. Submodules are named ``conv`` and ``adn`` like MONAI's block.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        strides: convolution stride (1 keeps exact equivariance).
        kernel_size: odd GMR kernel width.
        act: activation name or ``(name, kwargs)``; ``None`` for none.
        norm: norm name or ``(name, kwargs)``; ``None`` for none.
        dropout: dropout probability or ``(name, kwargs)``.
        dropout_dim: dropout dimension, as in MONAI.
        dilation: kernel dilation.
        groups: channel groups.
        bias: conv bias.
        conv_only: if ``True``, no ADN block is added.
        is_transposed: must be ``False`` (accepted so that MONAI ``Convolution`` arguments carry over): there is no
            GMR transposed convolution, whose learned stride breaks equivariance; up-sample without learning
            (:func:`monai_gmr.nets.unet.make_upsample`) then use a stride-1 block, as ``convert_to_gmr`` does.
        padding: padding; ``None`` means "same".
        output_padding: must be ``None`` (a transposed-convolution argument, see ``is_transposed``).
        adn_ordering: order of A/D/N, e.g. ``"NDA"`` (MONAI's default).
        gmr_kwargs: extra arguments for :class:`GMRConv` (``num_rings``, ``smoothing``, ``impl``, ...).

    Shapes:
        ``(B, C_in, *spatial) -> (B, C_out, *spatial_out)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        strides: int | Sequence[int] = 1,
        kernel_size: int | Sequence[int] = 3,
        adn_ordering: str = "NDA",
        act: tuple | str | None = "PRELU",
        norm: tuple | str | None = "INSTANCE",
        dropout: tuple | str | float | None = None,
        dropout_dim: int | None = 1,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        conv_only: bool = False,
        is_transposed: bool = False,
        padding: int | Sequence[int] | None = None,
        output_padding: int | Sequence[int] | None = None,
        **gmr_kwargs,
    ) -> None:
        super().__init__()
        bias, conv_only = as_bool(bias, "bias"), as_bool(conv_only, "conv_only")
        is_transposed = as_bool(is_transposed, "is_transposed")
        if is_transposed or output_padding is not None:
            raise ValueError(
                f"GMRConvolution has no transposed form (got is_transposed={is_transposed!r}, output_padding="
                f"{output_padding!r}): up-sample without learning (monai_gmr.nets.unet.make_upsample) and follow with a "
                "stride-1 GMRConvolution, as convert_to_gmr does for transposed convolutions."
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.is_transposed = is_transposed  # always False; MONAI's Convolution has this attribute
        if spatial_dims in (2, 3):  # named as this block's argument (GMRConv would name its own `stride`)
            strides = _single(strides, "strides", spatial_dims)
            if strides < 1:
                raise ValueError(f"strides must be >= 1, got strides={strides}.")
            if strides > 1 and isinstance(padding, str) and padding == "same":  # GMRConv's error named `stride`
                raise ValueError(
                    f"padding='same' is not supported for strided convolutions (strides={strides}), as in "
                    "torch.nn.Conv2d; pass an int padding (or padding=None for the symmetric pad "
                    "dilation * (kernel_size - 1) // 2)."
                )
        dropout = _check_dropout(dropout)
        conv = GMRConv(
            spatial_dims,
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=strides,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            **gmr_kwargs,
        )
        self.add_module("conv", conv)
        if conv_only:
            return
        if act is None and norm is None and dropout is None:
            return
        self.add_module(
            "adn",
            ADN(
                ordering=adn_ordering,
                in_channels=out_channels,
                act=act,
                norm=norm,
                norm_dim=spatial_dims,
                dropout=dropout,
                dropout_dim=dropout_dim,
            ),
        )


def _check_dropout(dropout):
    """A dropout probability must be in [0, 1] and not a bool (``dropout=True`` reached ``nn.Dropout`` as ``p=1``,
    zeroing every activation in training); MONAI's ``(name, kwargs)`` form and ``None`` pass unchecked.

    Returns:
        ``dropout``, with a number given as text (``--network_def#dropout 0.2`` from a command line passes
        ``"0.2"``, which MONAI refused as "Unsupported option '0.2'") read as a float.
    """
    if isinstance(dropout, str):
        try:
            dropout = float(dropout)
        except ValueError:
            pass  # a MONAI dropout name ("dropout", "alphadropout"): MONAI checks it
    if isinstance(dropout, bool) or (isinstance(dropout, numbers.Real) and not 0 <= dropout <= 1):
        raise ValueError(
            f"dropout must be a probability in [0, 1] (or MONAI's (name, kwargs) form, or None), got dropout={dropout!r}."
        )
    return dropout
