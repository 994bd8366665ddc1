"""Convert existing (MONAI) networks to GMR convolutions: :func:`convert_to_gmr` and :class:`ConversionSummary`.

Rules (every replacement keeps the module's output shape for every input size the original accepted; one
exception: a strided conv with ``padding_mode="reflect"``/``"circular"`` pads the smaller pooled map in its
replacement, so inputs whose pooled map is not larger than that padding (``"circular"``: not smaller) raise a
``ValueError`` naming the module and the smallest input size, where the original conv still worked, e.g. 5x5 inputs
for ``Conv2d(k=5, stride=3, padding=2, padding_mode="reflect")``, which needs 7x7; and a stride-1 conv with an even
kernel, an even dilation ``dil`` and ``"reflect"``/``"circular"`` padding: its ``k + 1`` GMR kernel pads ``dil / 2``
more per side, so the smallest accepted input grows by as much, e.g. ``Conv2d(k=2, dilation=2, padding=1,
padding_mode="reflect")`` ran on 2x2 inputs, its replacement needs 3x3, and PyTorch's padding error is raised):

* ``nn.Conv2d/3d`` with a cubic kernel ``k > 1`` and stride 1 -> :class:`~monai_gmr.nn.GMRConv` with the same
  channels, groups, dilation, bias and ``padding_mode``; the padding is chosen so the output size is unchanged.
  Every replacement keeps the dtype, device, train/eval mode and frozen state (``requires_grad``) of the layer.
* strided ``nn.Conv2d/3d`` (stride ``s``) -> :class:`PooledConv`: average pooling with kernel = stride = ``s``
  (``ceil_mode``/padding chosen to reproduce the conv's output size; ``ceil(H / s)`` for the usual
  ``padding = (k - 1) // 2``) then a stride-1 GMR conv (1x1 convs: a stride-1 ``nn.Conv`` with the same weights).
* ``nn.ConvTranspose2d/3d`` (stride ``s``) -> :class:`UpsampledConv`: non-learned up-sampling by ``s``
  (``upsample_mode``) then a stride-1 GMR conv whose padding reproduces the transposed conv's output size
  (``(H - 1) s - 2 p + d (k - 1) + output_padding + 1``; e.g. ``2H`` for MONAI's ``k=3, p=1, output_padding=1`` and
  ``k=2, p=0`` up-convs).
* even kernel sizes ``k`` map to ``k + 1`` (GMR kernels have a centre pixel); sizes may also be remapped with
  ``kernel_size`` (an int for every ``k > 1`` conv, or a callable ``old -> new``).
* 1x1 convs with stride 1, norms, activations, dropout, pooling and linear layers stay; so do 1D convs
  (``nn.Conv1d``/``nn.ConvTranspose1d``; a warning names them, ``summary.unknown`` lists them), and so do convs inside
  ``torch.jit.script``-ed modules, which cannot be modified (a warning names the scripted module). Max/avg pools whose
  window grid is off-centre at sizes divisible by the stride (e.g. the 3x3/stride-2/pad-1 max pool of ResNet/DenseNet
  stems) stay unless ``replace_pooling=True`` (then: the same pool type with kernel = stride, the same output size
  and the same ``return_indices``). Pools that already commute at such sizes (every stride-1 pool with symmetric
  padding, e.g. a 3x3/stride-1/pad-1 max pool) are never replaced, nor are average pools with a
  ``divisor_override`` (a kernel=stride window would sum another number of pixels); with ``replace_pooling=True``
  they are listed in ``kept``.
* convs that cannot be mapped exactly (anisotropic kernels/dilations, paddings whose output size no symmetric
  padding reproduces) are left as they are and reported.

After converting, every leaf module is audited and the :class:`ConversionSummary` lists what remains
orientation-dependent (``non_equivariant``), what is equivariant only for some input sizes (``conditions``) and
leaf types the audit does not know (``unknown``). Operations written inside ``forward`` methods (padding,
cropping, functional interpolation) are invisible to the audit: measure (tests/conversion, docs/networks.md). An
``nn.Linear`` not preceded by global pooling (it reads a flattened spatial map, e.g. ``SegResNetVAE``'s
``vae_fc*``) is reported as orientation-dependent; a classification head after global pooling is not.

The replacement modules were written here rather than taken from MONAI because MONAI has no "pool then conv" /
"resize then conv" blocks that take an existing conv's geometry.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.modules.utils import _triple

from monai.networks.layers.simplelayers import ChannelPad

from monai_gmr.functional.basis import _is_int
from monai_gmr.nn.blocks import check_gmr_kwargs
from monai_gmr.nn.conv import GMRConv
from monai_gmr.nets.unet import UPSAMPLE_MODES, interp_mode

__all__ = [
    "convert_to_gmr",
    "ConversionSummary",
    "PooledConv",
    "UpsampledConv",
    "AvgPool3dAnySize",
    "audit_equivariance",
    "WEIGHT_MODES",
]

logger = logging.getLogger(__name__)

WEIGHT_MODES = ("init", "project")

_CONV = (nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose2d, nn.ConvTranspose3d)
_POOLS = (nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE = (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
_PADS = (
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad2d, nn.ReflectionPad1d, nn.ReflectionPad2d,
    nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d,
    nn.CircularPad2d, nn.CircularPad3d,
)  # fmt: skip
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class AvgPool3dAnySize(nn.AvgPool3d):
    """``nn.AvgPool3d`` that also pools inputs smaller than its window, as ``nn.AvgPool2d`` and ``nn.MaxPool3d`` do.

    PyTorch's ``avg_pool3d`` rejects them ("input image ... smaller than kernel size") although its ceil-mode/padded
    windows are well defined there; the strided ``Conv3d`` it replaces accepts them (e.g. a 1-voxel bottleneck of a
    3D ResNet on 16^3 patches). Such inputs are pooled in two exact steps (a box average separates): the (H, W)
    planes with ``avg_pool2d``, then the depth axis. Every other input goes through ``nn.AvgPool3d`` unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # an int or a 3-tuple each, as in nn.AvgPool3d (convert_to_gmr sets 3-tuples)
        k, s, p = _triple(self.kernel_size), _triple(self.stride), _triple(self.padding)
        d, h, w = x.shape[-3], x.shape[-2], x.shape[-1]
        if d >= k[0] and h >= k[1] and w >= k[2]:
            return F.avg_pool3d(x, k, s, p, self.ceil_mode, self.count_include_pad, self.divisor_override)
        # with divisor_override the window sum is divided by it: sum the (H, W) windows, then divide once
        # (``is not None``: TorchScript cannot read an Optional[int] as a bool, and scripting the net failed here)
        div = self.divisor_override
        y = F.avg_pool2d(x.reshape(-1, d, h, w), (k[1], k[2]), (s[1], s[2]), (p[1], p[2]), self.ceil_mode,
                         self.count_include_pad, 1 if div is not None else None)  # fmt: skip
        h2, w2 = y.shape[-2], y.shape[-1]
        y = F.avg_pool2d(y.reshape(-1, 1, d, h2 * w2), (k[0], 1), (s[0], 1), (p[0], 0), self.ceil_mode,
                         self.count_include_pad, div)  # fmt: skip
        return y.reshape(list(x.shape[:-3]) + [y.shape[-2], h2, w2])


class PooledConv(nn.Sequential):
    """Replacement of a strided convolution: pooling (kernel = stride) then a stride-1 convolution.

    Children: ``pool`` (average pooling in 3D is an :class:`AvgPool3dAnySize`) and ``conv`` (a :class:`~monai_gmr.nn.GMRConv`, or an ``nn.Conv`` for 1x1 kernels).

    Shapes:
        ``(B, C_in, *spatial) -> (B, C_out, *spatial_out)`` with the replaced conv's ``spatial_out``.
    """

    def __init__(self, pool: nn.Module, conv: nn.Module, name: str = "", min_size: tuple[int, ...] = ()) -> None:
        """Args:
            pool: the pooling (kernel = stride).
            conv: the stride-1 convolution run on the pooled map.
            name: name of the replaced conv in its model (named in the error below).
            min_size: smallest input size per spatial dim for which ``conv``'s ``"reflect"``/``"circular"`` padding
                fits the pooled map (``()``: every size, e.g. zero padding); smaller inputs raise a ``ValueError``.
        """
        super().__init__()
        self.add_module("pool", pool)
        self.add_module("conv", conv)
        self.source_name = name
        self.min_size = tuple(int(m) for m in min_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(x)
        if not torch.jit.is_scripting():
            self._check_size(x, y)
        return self.conv(y)

    @torch.jit.unused
    def _check_size(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Name the replaced conv and the smallest input size when the pooled map is too small for the padding."""
        min_size = getattr(self, "min_size", ())  # a PooledConv pickled before min_size existed: no check
        if not min_size:
            return
        d = len(min_size)
        size = list(x.shape[-d:])
        if any(h < m for h, m in zip(size, min_size)):
            mode = getattr(self.conv, "padding_mode", "zeros")
            raise ValueError(
                f"{getattr(self, 'source_name', '') or 'PooledConv'}: input spatial size {size} is too small for the "
                f"converted strided conv with padding_mode={mode!r}: its stride-1 GMR conv pads the pooled map "
                f"{list(y.shape[-d:])} by {self.conv.padding}, which needs an input size of at least {list(min_size)} "
                "(the original strided conv padded the larger input); use a larger input or "
                "convert_to_gmr(..., padding_mode='zeros'/'replicate')."
            )


def _min_pooled_input(e: tuple[int, ...], strides: tuple[int, ...], pad: int, mode: str) -> tuple[int, ...]:
    """Smallest input size per dim whose pooled map (a strided conv's output size ``(H + e - 1) // s + 1``) is large
    enough for a ``pad``-pixel ``mode`` padding (``reflect``: ``pad < size``; ``circular``: ``pad <= size``);
    ``()`` when every size fits (``zeros``/``replicate``, or no padding)."""
    if mode not in ("reflect", "circular") or pad == 0:
        return ()
    need = pad + 1 if mode == "reflect" else pad
    out = []
    for ei, si in zip(e, strides):
        h = 1
        while (h + ei - 1) // si + 1 < need:
            h += 1
        out.append(h)
    return tuple(out)


class UpsampledConv(nn.Sequential):
    """Replacement of a transposed convolution: non-learned up-sampling then a stride-1 convolution.

    Children: ``upsample`` (``nn.Upsample``) and ``conv`` (a :class:`~monai_gmr.nn.GMRConv`, or an ``nn.Conv`` for
    1x1 kernels).

    Shapes:
        ``(B, C_in, *spatial) -> (B, C_out, *spatial_out)`` with the replaced transposed conv's ``spatial_out``.
    """

    def __init__(self, upsample: nn.Module, conv: nn.Module) -> None:
        super().__init__()
        self.add_module("upsample", upsample)
        self.add_module("conv", conv)


@dataclass
class ConversionSummary:
    """What :func:`convert_to_gmr` changed and what remains orientation-dependent.

    Attributes:
        converted: module name -> ``"old -> new"`` description, for every replaced module.
        counts: kind -> number of modules (``conv``, ``strided_conv``, ``transposed_conv``, ``strided_pointwise``,
            ``transposed_pointwise``, ``even_kernel``, ``pool_replaced``, ``pool_kept``, ``pointwise_kept``,
            ``excluded``, ``unsupported``, ``already_gmr``).
        kept: module name -> why a conv (or, with ``replace_pooling``, a pool) was not replaced (excluded,
            unsupported geometry, a pool that already commutes).
        non_equivariant: module name -> why the module (after conversion) does not commute with the group at
            usual input sizes.
        conditions: module name -> input-size condition under which the module commutes (e.g. divisibility by a
            pooling stride).
        unknown: module name -> type of leaf modules whose symmetry the audit does not know.
    """

    converted: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    non_equivariant: dict[str, str] = field(default_factory=dict)
    conditions: dict[str, str] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)

    @property
    def fully_equivariant(self) -> bool:
        """No leaf module left orientation-dependent or unknown (``forward`` code is not audited)."""
        return not self.non_equivariant and not self.unknown

    def to_dict(self) -> dict:
        """Plain-``dict`` form (JSON-serialisable)."""
        return asdict(self)

    def format(self) -> str:
        """Multi-line human-readable report."""
        lines = ["GMR conversion: " + (", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "nothing")]
        for title, d in (
            ("converted", self.converted),
            ("kept", self.kept),
            ("non-equivariant", self.non_equivariant),
            ("size conditions", self.conditions),
            ("unknown", self.unknown),
        ):
            if d:
                lines.append(f"{title} ({len(d)}):")
                lines += [f"  {k}: {v}" for k, v in d.items()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


# ---------------------------------------------------------------------------------------------------- geometry
def _tuple(v, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _excess(conv: nn.Module, d: int) -> tuple[int, ...]:
    """Per dim ``e = 2 p - dil (k - 1)``: a stride-1 conv maps size ``H`` to ``H + e``."""
    k = _tuple(conv.kernel_size, d)
    dil = _tuple(conv.dilation, d)
    pad = conv.padding
    if isinstance(pad, str):
        if pad == "same":
            return (0,) * d
        pad = 0  # "valid"
    pad = _tuple(pad, d)
    return tuple(2 * p - di * (ki - 1) for p, di, ki in zip(pad, dil, k))


def _pool_out(h: int, s: int, q: int, ceil: bool) -> int:
    """Output size of ``avg_pool(kernel=s, stride=s, padding=q, ceil_mode=ceil)`` on size ``h`` (PyTorch's rule)."""
    num = h + 2 * q - s
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= h + q:
        out -= 1
    return out


def _down_pool_config(e: int, s: int) -> tuple[int, bool] | None:
    """Pool padding ``q`` and ``ceil_mode`` with output ``floor((H + e - 1) / s) + 1`` (a strided conv's size)."""
    candidates = []
    if e % 2 == 0:
        candidates.append((e // 2, True))
    if (e - 1 + s) % 2 == 0:
        candidates.append(((e - 1 + s) // 2, False))
    for q, ceil in candidates:
        if q < 0 or 2 * q > s:
            continue
        h_min = max(1, s - e)
        if all(_pool_out(h, s, q, ceil) == (h + e - 1) // s + 1 for h in range(h_min, h_min + 4 * s + 8)):
            return q, ceil
    return None


# ---------------------------------------------------------------------------------------------------- weights
def _fit_kernel(kernel: torch.Tensor, k_new: int) -> torch.Tensor:
    """Centre-crop or zero-pad the spatial dims of ``kernel`` ``(O, I, *k)`` to ``k_new``."""
    d = kernel.ndim - 2
    out = kernel
    for i in range(d):
        dim = 2 + i
        k = out.shape[dim]
        if k > k_new:
            start = (k - k_new) // 2
            out = out.narrow(dim, start, k_new)
        elif k < k_new:
            before = (k_new - k) // 2
            pads = [0, 0] * d
            pos = 2 * (d - 1 - i)
            pads[pos], pads[pos + 1] = before, k_new - k - before
            out = F.pad(out, pads)
    return out


def _project(gmr: GMRConv, kernel: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Least-squares ring weights of ``gmr`` approximating ``kernel`` ``(O, I/g, *k)`` (its projection onto the ring
    basis, exact only for kernels in its span), bias copied."""
    with torch.no_grad():
        basis = gmr.basis().detach().double().reshape(gmr.num_rings, -1)  # (n, P)
        target = _fit_kernel(kernel.detach().double(), gmr.kernel_size).reshape(kernel.shape[0] * kernel.shape[1], -1)
        w = target @ torch.linalg.pinv(basis)  # (O * I/g, n)
        gmr.weight.copy_(w.reshape(gmr.weight.shape).to(gmr.weight.dtype))
        if gmr.bias is not None and bias is not None:
            gmr.bias.copy_(bias.detach().to(gmr.bias.dtype))
    gmr._kernel_cache = None


def _transposed_as_conv_weight(conv: nn.Module) -> torch.Tensor:
    """Weight of the ordinary conv equivalent to a stride-1 transposed conv: ``(O, I/g, *k)`` flipped."""
    w = conv.weight.detach()
    g = conv.groups
    i, o_g = w.shape[0], w.shape[1]
    k = w.shape[2:]
    w = w.reshape(g, i // g, o_g, *k).transpose(1, 2).reshape(g * o_g, i // g, *k)
    return w.flip(tuple(range(2, w.ndim)))


#: the per-module hook dicts of ``nn.Module`` that a replacement module does not inherit
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


def _hook_kinds(module: nn.Module) -> list[str]:
    """The kinds of hooks registered on ``module`` itself (``"forward"``, ``"forward pre"``, ...), empty if none."""
    return [d[1:-6].replace("_", " ") for d in _HOOK_DICTS if getattr(module, d, None)]


# ---------------------------------------------------------------------------------------------------- converter
class _Converter:
    def __init__(
        self,
        kernel_size: int | Callable[[int], int] | None,
        exclude: Iterable,
        upsample_mode: str,
        pool_mode: str,
        weights: str,
        replace_pooling: bool,
        gmr_kwargs: dict,
    ) -> None:
        self.kernel_size = kernel_size
        exclude = [exclude] if isinstance(exclude, (str, type)) else list(exclude)
        self.exclude_names = [e for e in exclude if isinstance(e, str)]
        self.exclude_types = tuple(e for e in exclude if isinstance(e, type))
        bad = [e for e in exclude if not isinstance(e, (str, type))]
        if bad:
            raise ValueError(f"exclude must hold module names/patterns (str) or module types, got exclude entries {bad!r}.")
        self.upsample_mode = upsample_mode
        self.pool_mode = pool_mode
        self.weights = weights
        self.replace_pooling = replace_pooling
        self.gmr_kwargs = gmr_kwargs
        self.summary = ConversionSummary()
        self.counts: Counter = Counter()
        self.memo: dict[int, nn.Module | None] = {}  # id(module) -> replacement: shared modules stay shared
        # id(module) of every module excluded under one of its names (or inside an excluded module): a module shared
        # with an excluded name is kept under all its names (set by convert_to_gmr from the model it walks)
        self.excluded_ids: set[int] = set()
        # (parent, attribute, replacement): applied by apply() once every replacement was built, so that an error
        # half-way leaves an inplace model untouched
        self.pending: list[tuple[nn.Module, str, nn.Module]] = []
        # id(replaced conv) -> its replacement (every conv replaced, for tie_shared_parameters)
        self.replaced: dict[int, nn.Module] = {}
        # "name (hook kinds)" of each replaced module with hooks of its own: the replacement has none (warned of)
        self.hooked: list[str] = []

    # -- helpers
    @staticmethod
    def _name_matches(name: str, pat: str) -> bool:
        return name == pat or name.startswith(pat + ".") or fnmatch.fnmatchcase(name, pat)

    def _excluded(self, name: str, module: nn.Module) -> bool:
        if self.exclude_types and isinstance(module, self.exclude_types):
            return True
        return any(self._name_matches(name, pat) for pat in self.exclude_names)

    def unmatched_excludes(self, modules: dict[str, nn.Module]) -> list:
        """``exclude`` entries that match no module of ``modules`` (``named_modules`` of the model), e.g. misspelt."""
        names = [n for n in modules if n]
        return [p for p in self.exclude_names if not any(self._name_matches(n, p) for n in names)] + [
            t for t in self.exclude_types if not any(isinstance(m, t) for m in modules.values())
        ]

    def _new_k(self, k: int) -> tuple[int, bool]:
        """GMR kernel size for a conv of size ``k`` (odd), and whether an even requested size was bumped by one."""
        if self.kernel_size is None:
            new = k
        elif callable(self.kernel_size):
            new = self.kernel_size(k)
        else:
            new = self.kernel_size
        if not _is_int(new) or new < 1:
            raise ValueError(f"kernel_size must give a positive int for kernel size {k}, got {new!r}.")
        new = int(new)
        if new % 2 == 0:
            return new + 1, True
        return new, False

    def _count_even(self, name: str, even: bool, k_new: int) -> None:
        """Count an even kernel size mapped to ``k_new`` (called once the conv is replaced)."""
        if even:
            self.counts["even_kernel"] += 1
            logger.debug("convert_to_gmr: %s: even kernel size mapped to %d", name, k_new)

    def _keep(self, name: str, reason: str, kind: str) -> None:
        self.summary.kept[name] = reason
        self.counts[kind] += 1
        logger.debug("convert_to_gmr: kept %s (%s)", name, reason)

    def _gmr(self, conv: nn.Module, d: int, k: int, padding: int, dilation: int, in_c: int, out_c: int) -> GMRConv:
        kwargs = dict(self.gmr_kwargs)
        kwargs.setdefault("padding_mode", getattr(conv, "padding_mode", "zeros"))  # nn.Conv's modes = GMRConv's
        gmr = GMRConv(
            d, in_c, out_c, k, stride=1, padding=padding, dilation=dilation, groups=conv.groups,
            bias=conv.bias is not None, **kwargs,
        )  # fmt: skip
        # the source's dtype/device before any weights are projected into it (float64 weights stay float64-exact)
        return gmr.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def _finish(self, new: nn.Module, old: nn.Module) -> nn.Module:
        self.replaced[id(old)] = new
        w = old.weight
        new.to(device=w.device, dtype=w.dtype)
        new.train(old.training)
        # a frozen layer (e.g. a pretrained encoder, weights="project") stays frozen, per parameter: the bias follows
        # the old bias (bias-only fine-tuning), everything else (weight, log_sigma) the old weight
        b = old.bias
        for pname, p in new.named_parameters():
            src = b if pname.rsplit(".", 1)[-1] == "bias" and b is not None else w
            p.requires_grad_(src.requires_grad)
        return new

    # -- conversions
    def convert_conv(self, name: str, conv: nn.Module) -> nn.Module | None:
        d = conv.weight.ndim - 2
        ks = _tuple(conv.kernel_size, d)
        strides = _tuple(conv.stride, d)
        dils = _tuple(conv.dilation, d)
        e = _excess(conv, d)
        k, s_all = ks[0], strides
        if len(set(ks)) != 1:
            self._keep(name, f"anisotropic kernel {ks} (GMR kernels are isotropic)", "unsupported")
            return None
        if len(set(dils)) != 1:
            self._keep(name, f"anisotropic dilation {dils}", "unsupported")
            return None
        dil = dils[0]
        if k == 1 and all(s == 1 for s in s_all) and all(x == 0 for x in e):
            self.counts["pointwise_kept"] += 1
            return None
        strided = any(s > 1 for s in s_all)
        k_new, even = (1, False) if k == 1 else self._new_k(k)
        if not strided:
            # stride 1: GMR padding p' with H + 2p' - dil (k' - 1) = H + e
            if len(set(e)) != 1 or (e[0] + dil * (k_new - 1)) % 2 or e[0] + dil * (k_new - 1) < 0:
                self._keep(name, f"no symmetric padding reproduces the output size (kernel {k}->{k_new}, padding {conv.padding})", "unsupported")
                return None
            pad = (e[0] + dil * (k_new - 1)) // 2
            new = self._gmr(conv, d, k_new, pad, dil, conv.in_channels, conv.out_channels)
            if self.weights == "project":
                _project(new, conv.weight, conv.bias)
            self.counts["conv"] += 1
            desc = f"{type(conv).__name__}(k={k}) -> GMRConv(k={k_new})"
        else:
            cfg = [_down_pool_config(ei, si) for ei, si in zip(e, s_all)]
            if any(c is None for c in cfg) or len({c[1] for c in cfg}) != 1:  # type: ignore[index]
                self._keep(name, f"no pooling reproduces the output size of stride {s_all}, padding {conv.padding}", "unsupported")
                return None
            qs = tuple(c[0] for c in cfg)  # type: ignore[index]
            ceil = cfg[0][1]  # type: ignore[index]
            pool_cls = {("avg", 2): nn.AvgPool2d, ("avg", 3): AvgPool3dAnySize, ("max", 2): nn.MaxPool2d, ("max", 3): nn.MaxPool3d}[(self.pool_mode, d)]
            pool = pool_cls(kernel_size=s_all, stride=s_all, padding=qs, ceil_mode=ceil)
            if k == 1:
                conv1 = (nn.Conv2d if d == 2 else nn.Conv3d)(conv.in_channels, conv.out_channels, 1, groups=conv.groups, bias=conv.bias is not None,
                                                             device=conv.weight.device, dtype=conv.weight.dtype)  # fmt: skip
                with torch.no_grad():
                    conv1.weight.copy_(conv.weight)
                    if conv.bias is not None:
                        conv1.bias.copy_(conv.bias)
                inner: nn.Module = conv1
                self.counts["strided_pointwise"] += 1
                desc = f"{type(conv).__name__}(k=1, stride={s_all}) -> {type(pool).__name__}({s_all}) + 1x1 conv"
            else:
                inner = self._gmr(conv, d, k_new, dil * (k_new - 1) // 2, dil, conv.in_channels, conv.out_channels)
                if self.weights == "project":
                    _project(inner, conv.weight, conv.bias)
                self.counts["strided_conv"] += 1
                desc = f"{type(conv).__name__}(k={k}, stride={s_all}) -> {type(pool).__name__}({s_all}) + GMRConv(k={k_new})"
            pad_mode = getattr(inner, "padding_mode", "zeros")
            min_size = _min_pooled_input(e, s_all, getattr(inner, "padding", 0), pad_mode)
            new = PooledConv(pool, inner, name=name or type(conv).__name__, min_size=min_size)
        self._count_even(name, even, k_new)
        self.summary.converted[name] = desc
        return self._finish(new, conv)

    def convert_transposed(self, name: str, conv: nn.Module) -> nn.Module | None:
        d = conv.weight.ndim - 2
        ks = _tuple(conv.kernel_size, d)
        strides = _tuple(conv.stride, d)
        dils = _tuple(conv.dilation, d)
        pads = _tuple(conv.padding, d)
        ops = _tuple(conv.output_padding, d)
        if len(set(ks)) != 1:
            self._keep(name, f"anisotropic kernel {ks} (GMR kernels are isotropic)", "unsupported")
            return None
        if len(set(dils)) != 1:
            self._keep(name, f"anisotropic dilation {dils}", "unsupported")
            return None
        k, dil = ks[0], dils[0]
        if k == 1 and all(s == 1 for s in strides) and all(p == 0 for p in pads) and all(o == 0 for o in ops):
            self.counts["pointwise_kept"] += 1
            return None
        # out = (H - 1) s - 2p + dil (k - 1) + op + 1 = s H + c
        c = [dil * (k - 1) + o + 1 - s - 2 * p for s, p, o in zip(strides, pads, ops)]
        k_new, even = (1, False) if k == 1 else self._new_k(k)
        if len(set(c)) != 1 or (c[0] + dil * (k_new - 1)) % 2 or c[0] + dil * (k_new - 1) < 0:
            self._keep(name, f"no symmetric padding reproduces the output size (stride {strides}, padding {pads}, output_padding {ops})", "unsupported")
            return None
        pad = (c[0] + dil * (k_new - 1)) // 2
        weight = _transposed_as_conv_weight(conv)
        out_c = weight.shape[0]
        if k_new == 1:
            conv_cls = nn.Conv2d if d == 2 else nn.Conv3d
            inner: nn.Module = conv_cls(conv.in_channels, out_c, 1, padding=pad, groups=conv.groups, bias=conv.bias is not None,
                                        device=conv.weight.device, dtype=conv.weight.dtype)  # fmt: skip
            with torch.no_grad():
                inner.weight.copy_(_fit_kernel(weight, 1))
                if conv.bias is not None:
                    inner.bias.copy_(conv.bias)
            kind = "transposed_pointwise"
        else:
            inner = self._gmr(conv, d, k_new, pad, dil, conv.in_channels, out_c)
            if self.weights == "project":
                _project(inner, weight, conv.bias)
            kind = "transposed_conv"
        if all(s == 1 for s in strides):
            new: nn.Module = inner
            desc = f"{type(conv).__name__}(k={k}) -> GMRConv(k={k_new})"
        else:
            up = nn.Upsample(
                scale_factor=tuple(float(s) for s in strides),
                mode=interp_mode(self.upsample_mode, d),
                align_corners=False if self.upsample_mode not in ("nearest", "nearest-exact") else None,
            )
            new = UpsampledConv(up, inner)
            desc = f"{type(conv).__name__}(k={k}, stride={strides}) -> Upsample({up.mode}, x{strides[0] if len(set(strides)) == 1 else strides}) + {'GMRConv' if k_new > 1 else '1x1 conv'}(k={k_new})"
        self.counts[kind] += 1
        self._count_even(name, even, k_new)
        self.summary.converted[name] = desc
        return self._finish(new, conv)

    def convert_pool(self, name: str, pool: nn.Module) -> nn.Module | None:
        d = 2 if isinstance(pool, (nn.MaxPool2d, nn.AvgPool2d)) else 3
        ks, ss = _tuple(pool.kernel_size, d), _tuple(pool.stride if pool.stride is not None else pool.kernel_size, d)
        pads = _tuple(pool.padding, d)
        dils = _tuple(getattr(pool, "dilation", 1), d)
        if ks == ss and all(p == 0 for p in pads) and all(x == 1 for x in dils):
            return None
        if getattr(pool, "ceil_mode", False) or len(set(ks)) != 1:
            return None
        if getattr(pool, "divisor_override", None):
            # the window sum is divided by a fixed number: a kernel=stride window holds another number of pixels, so
            # the replacement would scale the output (a 3x3 sum pool, divisor 1, gave 1/9 of its value); kept, and the
            # non-equivariance listing still names its off-centre window grid
            self._keep(name, f"{type(pool).__name__}(k={ks[0]}, stride={ss}) has divisor_override={pool.divisor_override}: a kernel=stride pool would compute another sum", "pool_kept")
            return None
        e = [2 * p - di * (k - 1) for p, di, k in zip(pads, dils, ks)]
        if len(set(ss)) == 1 and len(set(e)) == 1 and (1 - e[0]) % ss[0] == 0:
            # the window grid is already mirror-symmetric at sizes divisible by the stride (always for stride 1
            # with symmetric padding): the pool commutes as it is; replacing it would change what it computes
            self._keep(name, f"{type(pool).__name__}(k={ks[0]}, stride={ss[0]}, padding={pads[0]}) already commutes at sizes divisible by its stride", "pool_kept")
            return None
        cfg = [_down_pool_config(ei, si) for ei, si in zip(e, ss)]
        if any(c is None for c in cfg) or len({c[1] for c in cfg}) != 1:  # type: ignore[index]
            return None
        qs = tuple(c[0] for c in cfg)  # type: ignore[index]
        if isinstance(pool, (nn.MaxPool2d, nn.MaxPool3d)):
            new = type(pool)(kernel_size=ss, stride=ss, padding=qs, ceil_mode=cfg[0][1], return_indices=pool.return_indices)  # type: ignore[index]
        else:
            new = type(pool)(kernel_size=ss, stride=ss, padding=qs, ceil_mode=cfg[0][1], count_include_pad=pool.count_include_pad)  # type: ignore[index]
        self.counts["pool_replaced"] += 1
        self.summary.converted[name] = f"{type(pool).__name__}(k={ks[0]}, stride={ss}, padding={pads}) -> {type(new).__name__}(k={ss}, stride={ss})"
        return new

    def walk(self, module: nn.Module, prefix: str, only: str | None = None) -> None:
        # _modules, not named_children(): that skips a module registered twice under one parent (a weight-tied
        # ``nn.Sequential(conv, act, conv)``), which would stay unconverted under its second name
        for child_name, child in [(n, c) for n, c in module._modules.items() if c is not None]:
            if only is not None and child_name != only:
                continue
            name = f"{prefix}.{child_name}" if prefix else child_name
            if id(child) in self.memo:  # reached again through another parent (e.g. DynUNet's skip_layers)
                new = self.memo[id(child)]
            else:
                new = self.visit(name, child)
                self.memo[id(child)] = new
            if new is not None:
                self.pending.append((module, child_name, new))
                if _hook_kinds(child):
                    self.hooked.append(f"{name!r} ({', '.join(_hook_kinds(child))})")

    def tie_shared_parameters(self, modules: dict[str, nn.Module]) -> None:
        """Tie the replacements of distinct convs that share one weight ``Parameter`` (weight tying without a shared
        module), as the originals were: one GMR ``weight`` (and learned ``log_sigma``, so the kernels stay equal), and
        the bias where the biases were shared too. Groups that cannot stay tied (a conv kept, transposed and plain
        convs mixed, other kernel sizes) are logged as a warning. Call after :meth:`walk`, before :meth:`apply`.

        Args:
            modules: ``named_modules(remove_duplicate=False)`` of the model being converted.
        """
        groups: dict[int, list[tuple[str, nn.Module]]] = {}
        seen: set[int] = set()
        for name, m in modules.items():
            # the registered Parameter only: a parametrized weight (weight_norm) is a fresh tensor on every access,
            # whose id a later temporary may reuse (distinct convs would look tied)
            w = m._parameters.get("weight") if isinstance(m, _CONV + _CONV_T) else None
            if w is not None and id(m) not in seen:  # one entry per module (shared modules stay one)
                seen.add(id(m))
                groups.setdefault(id(w), []).append((name or type(m).__name__, m))
        for convs in groups.values():
            news = [self.replaced.get(id(m)) for _, m in convs]
            if len(convs) < 2 or all(n is None for n in news):
                continue  # not shared, or every conv kept (the originals still share their weight)
            # the layer holding the weights: the GMRConv itself or the conv of a PooledConv / UpsampledConv
            layers = [n.conv if isinstance(n, (PooledConv, UpsampledConv)) else n for n in news]
            first = layers[0]
            tieable = all(
                layer is not None
                and type(layer) is type(first)
                and layer.weight.shape == first.weight.shape
                and getattr(layer, "kernel_size", None) == getattr(first, "kernel_size", None)
                for layer in layers
            ) and len({isinstance(m, _CONV_T) for _, m in convs}) == 1  # a conv's kernel is a transposed conv's transpose
            if not tieable:
                logger.warning(
                    "convert_to_gmr: %s share one weight Parameter but their replacements cannot share theirs (a conv "
                    "kept, or different replacement geometry); after conversion they are trained independently.",
                    ", ".join(n for n, _ in convs),
                )
                continue
            bias0 = convs[0][1].bias
            for (_, old), layer in zip(convs[1:], layers[1:]):
                layer.weight = first.weight
                if isinstance(getattr(first, "log_sigma", None), nn.Parameter) and isinstance(layer.log_sigma, nn.Parameter):
                    layer.log_sigma = first.log_sigma
                if bias0 is not None and old.bias is bias0:
                    layer.bias = first.bias
            logger.info("convert_to_gmr: %s keep sharing their weights", ", ".join(n for n, _ in convs))

    def apply(self) -> None:
        """Install the replacements collected by :meth:`walk`."""
        for parent, child_name, new in self.pending:
            setattr(parent, child_name, new)
        self.pending = []

    def excluded_path(self, name: str, modules: dict[str, nn.Module]) -> bool:
        """Whether :meth:`walk` skips the module ``name``: it or one of its ancestors is excluded."""
        parts = name.split(".")
        return any(self._excluded(".".join(parts[:i]), modules[".".join(parts[:i])]) for i in range(1, len(parts) + 1))

    def visit(self, name: str, module: nn.Module) -> nn.Module | None:
        """Replacement of ``module`` (or ``None``: keep it, after converting its children)."""
        # a dense k > 1 conv in a replacement block (export_dense of a converted net): converted like any stride-1
        # conv below (the block's pool / up-sampling already is the GMR recipe); it was left dense, "not converted"
        inner = module._modules.get("conv") if isinstance(module, (PooledConv, UpsampledConv)) else None
        dense_block = isinstance(inner, _CONV) and any(k > 1 for k in _tuple(inner.kernel_size, inner.weight.ndim - 2))
        if isinstance(module, (GMRConv, PooledConv, UpsampledConv)) and not dense_block:
            # the GMR convs inside too: those of PooledConv/UpsampledConv (a second conversion counted only a third)
            self.counts["already_gmr"] += sum(isinstance(m, GMRConv) for m in module.modules())
            return None
        excluded = self._excluded(name, module)
        if excluded or id(module) in self.excluded_ids:
            if isinstance(module, _CONV + _CONV_T) or any(isinstance(m, _CONV + _CONV_T) for m in module.modules()):
                self._keep(name, "excluded" if excluded else "excluded (shared with an excluded module)", "excluded")
            return None
        if dense_block:
            self.walk(module, name, only="conv")
            return None
        if isinstance(module, _CONV):
            return self.convert_conv(name, module)
        if isinstance(module, _CONV_T):
            return self.convert_transposed(name, module)
        if self.replace_pooling and isinstance(module, _POOLS):
            return self.convert_pool(name, module)
        self.walk(module, name)
        return None


# ---------------------------------------------------------------------------------------------------- audit
def _is_int_scale(scale) -> bool:
    if scale is None:
        return True
    vals = scale if isinstance(scale, (tuple, list)) else (scale,)
    return all(float(v).is_integer() for v in vals)


def _is_global_pool(m: nn.Module) -> bool:
    """An adaptive pool to size 1 along every spatial axis (``None`` keeps an axis, so it is not global)."""
    if not isinstance(m, _ADAPTIVE):
        return False
    out = m.output_size
    return all(o == 1 for o in (out if isinstance(out, (tuple, list)) else (out,)))


def _passes_position(m: nn.Module) -> bool:
    """Leaves that act per channel / per position (or only reshape) and so do not change what a following
    ``nn.Linear`` reads: norms, dropout, activations, ``Identity``, ``Flatten`` and other ``Linear`` layers."""
    return isinstance(m, _NORMS + _DROPOUT + (nn.Identity, nn.Flatten, nn.Linear)) or (
        type(m).__module__ == "torch.nn.modules.activation"
    )


def _linears_without_global_pooling(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` leaves of ``model`` that are not preceded by global pooling.

    A ``Linear`` after global pooling (MONAI ``ResNet``'s ``avgpool -> fc``, ``DenseNet121``'s ``class_layers``, a
    squeeze-and-excitation block) reads one value per channel: invariant. A ``Linear`` on a flattened spatial map
    (``SegResNetVAE``'s ``vae_fc1/2/3``, MONAI ``Regressor``) gives every pixel its own weights: orientation-dependent.
    The flattening happens in ``forward`` (e.g. ``x.view(-1, fc.in_features)``), which the audit does not see, and
    a forward hook would need an example input and the right mode (SegResNetVAE runs its VAE branch only in
    training), so the decision is structural: walk back from the ``Linear`` through the leaves in registration
    order (``model.named_modules()``, which for MONAI nets and ``nn.Sequential`` is the order ``forward`` runs them),
    skipping per-channel / per-position leaves (:func:`_passes_position`); the ``Linear`` is fine when the first
    other leaf is a global pooling, and reported otherwise (also when nothing precedes it). This errs towards
    reporting: per-token ``Linear`` layers of transformers are reported too (those nets are orientation-dependent
    anyway through their patch and position embeddings).
    """
    flagged = []
    leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
    for i, (name, m) in enumerate(leaves):
        if not isinstance(m, nn.Linear):
            continue
        before = next((p for _, p in reversed(leaves[:i]) if not _passes_position(p)), None)
        if before is None or not _is_global_pool(before):
            flagged.append(name or type(m).__name__)
    return flagged


def audit_equivariance(model: nn.Module, summary: ConversionSummary | None = None) -> ConversionSummary:
    """Classify every leaf module of ``model`` by how it interacts with the grid symmetries (D4 / cube group).

    Fills ``summary.non_equivariant``, ``summary.conditions`` and ``summary.unknown`` (a fresh summary when
    ``None``). Only leaf modules are inspected; code in ``forward`` methods is not, except that a ``downsample``
    attribute holding a plain callable (not a module; e.g. MONAI ``ResNet(shortcut_type="A")``'s strided
    ``functools.partial`` shortcut) is reported. An ``nn.Linear`` is reported unless global pooling precedes it
    (it then reads a flattened spatial map, e.g. ``SegResNetVAE``'s ``vae_fc*``; see
    :func:`_linears_without_global_pooling`).
    """
    summary = summary if summary is not None else ConversionSummary()
    spatial_linears = set(_linears_without_global_pooling(model))
    shuffles = [n for n, m in model.named_modules() if type(m).__name__ == "SubpixelUpsample"]
    for n in shuffles:  # MONAI's SubpixelUpsample calls a functional pixel shuffle inside forward
        summary.non_equivariant[n or "SubpixelUpsample"] = (
            "pixel shuffle maps channels to fixed sub-pixel positions (orientation-dependent); use a non-learned "
            "up-sampling mode instead (e.g. SegResNet(upsample_mode='nontrainable'))"
        )
    for name, m in model.named_modules():
        ds = m.__dict__.get("downsample")  # a plain attribute: a callable run inside forward, not a submodule
        if callable(ds) and not isinstance(ds, nn.Module):
            key = f"{name}.downsample" if name else "downsample"
            if isinstance(ds, functools.partial) and getattr(ds.func, "__name__", "") == "_downsample_basic_block":
                stride = _tuple(ds.keywords.get("stride", 1), 1)
                if any(s != 1 for s in stride):
                    summary.non_equivariant[key] = (
                        f"MONAI ResNet shortcut_type='A': the shortcut subsamples with stride {ds.keywords.get('stride')} "
                        "inside forward (an off-centre sub-grid, not convertible); use shortcut_type='B'"
                    )
            else:
                summary.unknown[key] = f"downsample is a non-module callable ({type(ds).__name__}) run inside forward"
        if any(True for _ in m.children()):
            continue
        if any(name == s or name.startswith(s + ".") for s in shuffles if s):
            continue  # reported with its SubpixelUpsample
        name = name or type(m).__name__
        if isinstance(m, GMRConv):
            if m.stride != 1:
                summary.non_equivariant[name] = f"GMRConv with stride {m.stride} samples an off-centre sub-grid"
        elif isinstance(m, _CONV + _CONV_T):
            ks = tuple(m.kernel_size)
            st = tuple(m.stride)
            if any(k > 1 for k in ks):
                summary.non_equivariant[name] = f"learned {'x'.join(map(str, ks))} {type(m).__name__} kernel (not converted)"
            elif any(s > 1 for s in st):
                summary.non_equivariant[name] = f"1x1 {type(m).__name__} with stride {st} samples an off-centre sub-grid"
        elif isinstance(m, _POOLS):
            d = 2 if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) else 3
            ks = _tuple(m.kernel_size, d)
            ss = _tuple(m.stride if m.stride is not None else m.kernel_size, d)
            ps = _tuple(m.padding, d)
            ds = _tuple(getattr(m, "dilation", 1), d)
            if len(set(ss)) != 1 or len(set(ks)) != 1:
                summary.non_equivariant[name] = f"anisotropic pooling kernel {ks} / stride {ss} (breaks axis permutations)"
                continue
            k, s, p, di = ks[0], ss[0], ps[0], ds[0]
            # windows start at j*s - p and span di*(k-1)+1 pixels; the window grid is mirror-symmetric exactly when
            # the last window ends at the far padded edge: (H + 2p - di(k-1) - 1) % s == 0, i.e. H % s == req
            req = (1 - (2 * p - di * (k - 1))) % s
            if s == 1:
                pass  # stride 1 with symmetric padding: a window centred on every pixel
            elif req == 0:
                summary.conditions[name] = f"{type(m).__name__}(kernel={k}, stride={s}) commutes when every input size is divisible by {s}"
            else:
                summary.non_equivariant[name] = (
                    f"{type(m).__name__}(kernel={k}, stride={s}, padding={p}): its window grid is mirror-symmetric only "
                    f"when every input size H has H % {s} == {req} (odd H for 3x3/stride-2/pad-1); "
                    f"replace_pooling=True swaps it for a kernel=stride pool"
                )
        elif isinstance(m, _ADAPTIVE):
            out = m.output_size
            outs = out if isinstance(out, (tuple, list)) else (out,)
            if len(set(outs)) > 1:  # e.g. (2, 2, 1) or (1, 1, None): one axis is treated unlike the others
                summary.non_equivariant[name] = f"{type(m).__name__}({out}): unequal output sizes break axis permutations"
            elif any(o not in (1, None) for o in outs):
                summary.conditions[name] = f"{type(m).__name__}({out}) commutes when every input size is divisible by {out}"
        elif isinstance(m, (nn.PixelShuffle, nn.PixelUnshuffle)):
            summary.non_equivariant[name] = f"{type(m).__name__} maps channels to fixed sub-pixel positions (orientation-dependent)"
        elif isinstance(m, _PADS):
            pads = tuple(m.padding) if isinstance(m.padding, (tuple, list)) else (m.padding,)
            if len(set(pads)) != 1:
                summary.non_equivariant[name] = f"{type(m).__name__}{pads}: unequal padding of the sides/axes shifts the grid"
        elif isinstance(m, nn.Upsample):
            if m.size is not None:
                sizes = tuple(m.size) if isinstance(m.size, (tuple, list)) else (m.size,)
                if len(set(sizes)) != 1:
                    summary.non_equivariant[name] = f"Upsample(size={m.size}): unequal output sizes break axis permutations"
                elif m.mode in ("nearest", "nearest-exact"):  # (multi)linear/bicubic resizing is mirror-symmetric
                    summary.conditions[name] = (
                        f"Upsample(size={m.size}, mode={m.mode!r}) commutes when the output size is an integer multiple "
                        "of every input size (otherwise the nearest source pixels are off-centre)"
                    )
            elif not _is_int_scale(m.scale_factor):
                summary.unknown[name] = f"Upsample with non-integer scale {m.scale_factor}"
            elif isinstance(m.scale_factor, (tuple, list)) and len(set(m.scale_factor)) > 1:
                summary.non_equivariant[name] = f"Upsample(scale_factor={m.scale_factor}): unequal scales break axis permutations"
        elif isinstance(m, nn.Linear):
            if name in spatial_linears:
                summary.non_equivariant[name] = (
                    f"{type(m).__name__}({m.in_features} -> {m.out_features}) with no global pooling before it: "
                    "weights per position of a flattened spatial map (orientation-dependent); a head after global "
                    "pooling would be invariant"
                )
        elif isinstance(m, _NORMS + _DROPOUT + (nn.Identity, nn.Flatten)):
            pass  # per channel / per position; a Flatten only reshapes (a Linear reading it is checked above)
        elif isinstance(m, ChannelPad) and (m.pad is None or not any(m.pad[:-4])):  # pad: spatial, channel, batch
            pass  # MONAI's residual channel matching (HighResNet): zero channels added, no spatial padding
        elif type(m).__module__ == "torch.nn.modules.activation":
            dim = getattr(m, "dim", None)
            if dim not in (None, 0, 1):
                summary.unknown[name] = f"{type(m).__name__}(dim={dim})"
        elif isinstance(m, torch.jit.ScriptModule):
            summary.unknown[name] = f"TorchScript {getattr(m, 'original_name', type(m).__name__)} (scripted: not converted)"
        else:
            summary.unknown[name] = type(m).__name__
    return summary


_CONV_NAMES = {c.__name__ for c in _CONV + _CONV_T}


def _would_convert(m: nn.Module) -> bool:
    """Whether a (scripted) conv has a geometry :func:`convert_to_gmr` replaces (not a 1x1 stride-1 unpadded conv)."""
    k, st = _tuple(getattr(m, "kernel_size", 1), 1), _tuple(getattr(m, "stride", 1), 1)
    pad, op = getattr(m, "padding", 0), _tuple(getattr(m, "output_padding", 0), 1)
    padded = not isinstance(pad, str) and any(p != 0 for p in _tuple(pad, 1))
    return any(v > 1 for v in k + st) or padded or any(o != 0 for o in op)


def _scripted_with_convs(modules: dict[str, nn.Module], conv: _Converter) -> list[str]:
    """Names of the outermost TorchScript modules in ``modules`` (``named_modules`` of the converted model) that hold
    a 2D/3D conv and are not excluded."""
    out = []
    for n, m in modules.items():
        if not isinstance(m, torch.jit.ScriptModule) or (n and conv.excluded_path(n, modules)):
            continue
        parts = n.split(".") if n else []
        if any(isinstance(modules[".".join(parts[:i])], torch.jit.ScriptModule) for i in range(len(parts))):
            continue  # inside a scripted module already listed
        if any(getattr(sm, "original_name", "") in _CONV_NAMES and _would_convert(sm) for sm in m.modules()):
            out.append(n or "the model itself")
    return out


def convert_to_gmr(
    model: nn.Module,
    kernel_size: int | Callable[[int], int] | None = None,
    exclude: str | type | Iterable[str | type] = (),
    inplace: bool = False,
    upsample_mode: str = "bilinear",
    pool_mode: str = "avg",
    weights: str = "init",
    replace_pooling: bool = False,
    return_summary: bool = False,
    **gmr_kwargs,
) -> nn.Module | tuple[nn.Module, ConversionSummary]:
    """Replace the convolutions of ``model`` by GMR convolutions (see the module docstring for the rules).

    Args:
        model: any ``nn.Module`` (tested: MONAI ``UNet``, ``BasicUNet``, ``DynUNet``, ``SegResNet``,
            ``SegResNetVAE`` (its VAE ``Linear`` layers are reported), ``DenseNet121``, ``ResNet``), or a single conv.
        kernel_size: ``None`` keeps each conv's size (even ``k`` -> ``k + 1``); an int sets every ``k > 1`` conv to
            that size; a callable maps old size -> new size. Even results become ``k + 1``. 1x1 convs stay 1x1.
        exclude: module names (exact, a prefix ``"a.b"`` that also covers its submodules, or an ``fnmatch`` pattern
            like ``"*.conv0"``) and/or module types to leave untouched; entries matching no module are logged as a
            warning. A module shared under several names (tied weights) and excluded under one is kept under all.
            Distinct convs that share one weight ``Parameter`` get replacements that share theirs (GMR ``weight`` and
            learned ``log_sigma``; the bias where it was shared); where that cannot hold (one of them kept, a plain
            and a transposed conv, different replacement geometry) a warning says they were untied.
        inplace: modify ``model`` itself instead of a deep copy. Either way a replaced module's own hooks (forward,
            forward-pre, backward) are not carried over to its replacement; a warning names those modules.
        upsample_mode: interpolation replacing transposed convs: ``"bilinear"`` (multi-linear in 3D),
            ``"nearest"``, ``"nearest-exact"``, ``"bicubic"`` (2D).
        pool_mode: pooling replacing strides: ``"avg"`` (default, the GMR recipe) or ``"max"``.
        weights: ``"init"`` (fresh GMR initialisation) or ``"project"`` (least-squares ring weights approximating
            each existing kernel at the GMR conv's initial ring widths (sigma is not fitted), bias copied; for
            pretrained nets; exact only for kernels a GMR conv of that size and sigma can synthesise (the export of an
            untrained or ``sigma="fixed"`` GMR conv, not of one whose sigma was trained), not for every radially
            symmetric kernel: a 3x3x3 kernel has 4 offset distances, the GMR conv 2 rings).
        replace_pooling: also replace pools whose window grid is off-centre (e.g. 3x3/stride-2/pad-1 max pools) by
            the same pool type with kernel = stride and the same output size (equivariant at even sizes;
            ``return_indices`` and ``count_include_pad`` kept). Pools that already commute (e.g. stride 1 with
            symmetric padding) and average pools with a ``divisor_override`` stay and are listed in ``summary.kept``.
        return_summary: return ``(model, summary)`` instead of ``model``.
        gmr_kwargs: extra :class:`~monai_gmr.nn.GMRConv` arguments (``num_rings``, ``smoothing``, ``sigma``,
            ``circular``, ``impl``, ``sampling``; ``padding_mode`` overrides the convs' own); other keys raise ``ValueError``.

    Returns:
        the converted model (a copy unless ``inplace``), with the :class:`ConversionSummary` attached as
        ``model.gmr_conversion_summary``; ``(model, summary)`` when ``return_summary``.

    Raises:
        ValueError: bad ``upsample_mode`` (also ``"bicubic"`` with a strided 3D transposed conv), ``pool_mode``,
            ``weights``, ``kernel_size``, ``exclude`` entries, or ``gmr_kwargs`` (a key :class:`GMRConv` does not
            take, or a value it rejects). The model is not modified when an error is raised (also with ``inplace``).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got model={type(model).__name__}.")
    if upsample_mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample_mode must be one of {', '.join(UPSAMPLE_MODES)}; got upsample_mode={upsample_mode!r}.")
    if pool_mode not in ("avg", "max"):
        raise ValueError(f"pool_mode must be 'avg' or 'max', got pool_mode={pool_mode!r}.")
    if weights not in WEIGHT_MODES:
        raise ValueError(f"weights must be one of {WEIGHT_MODES}, got weights={weights!r}.")
    if kernel_size is not None and not callable(kernel_size):
        if not _is_int(kernel_size) or kernel_size < 1:
            raise ValueError(f"kernel_size must be None, a positive int or a callable, got kernel_size={kernel_size!r}.")
    check_gmr_kwargs(gmr_kwargs)
    from monai_gmr.utils import as_bool

    # text from a command line (`--network_def#replace_pooling false` passes "false", which is truthy)
    inplace, replace_pooling = as_bool(inplace, "inplace"), as_bool(replace_pooling, "replace_pooling")
    return_summary = as_bool(return_summary, "return_summary")
    conv = _Converter(kernel_size, exclude, upsample_mode, pool_mode, weights, replace_pooling, gmr_kwargs)
    modules = dict(model.named_modules(remove_duplicate=False))
    unmatched = conv.unmatched_excludes(modules)
    if unmatched:  # a misspelt name would otherwise convert the very layer meant to stay, silently
        logger.warning(
            "convert_to_gmr: exclude entries %s match no module of the model (names as in model.named_modules(), "
            "e.g. %s); nothing is excluded for them.",
            ", ".join(repr(u if isinstance(u, str) else u.__name__) for u in unmatched),
            ", ".join(repr(n) for n in list(modules)[1:4]) or "none",
        )
    # only those the converter replaces (a lazy 1x1 stride-1 head stays as it is and needs no in_channels)
    lazy = {n or type(m).__name__: m for n, m in modules.items() if isinstance(m, _CONV + _CONV_T)
            and isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() and _would_convert(m)
            and not (n and conv.excluded_path(n, modules))}  # fmt: skip
    if lazy:  # their in_channels are unknown: the conversion stopped in "spatial_dims must be 2 or 3, got -1"
        raise ValueError(
            f"convert_to_gmr: the lazy convolutions {', '.join(repr(n) for n in lazy)} "
            f"({', '.join(sorted({type(m).__name__ for m in lazy.values()}))}) have no weights yet: run "
            "the model once on an example input (model(x)) so that their in_channels are known, then convert."
        )
    if upsample_mode == "bicubic":
        conv3d = [n or type(m).__name__ for n, m in modules.items() if isinstance(m, nn.ConvTranspose3d)
                  and any(s > 1 for s in m.stride) and not (n and conv.excluded_path(n, modules))]  # fmt: skip
        if conv3d:
            raise ValueError(
                f"upsample_mode='bicubic' is 2D only, but the model has strided 3D transposed convs ({', '.join(conv3d)}); "
                "use upsample_mode='bilinear' (trilinear in 3D) or 'nearest'."
            )
    root = model if inplace else copy.deepcopy(model)
    # a module reached under several names (weight sharing) stays one module: excluded under any name, it is kept
    # under all (converting it under the others would silently end the sharing)
    root_modules = dict(root.named_modules(remove_duplicate=False))
    conv.excluded_ids = {id(m) for n, m in root_modules.items() if n and conv.excluded_path(n, root_modules)}
    new_root = conv.visit("", root) if isinstance(root, _CONV + _CONV_T) else None
    if new_root is not None:
        if _hook_kinds(root):
            conv.hooked.append(f"{type(root).__name__} ({', '.join(_hook_kinds(root))})")
        root = new_root
    elif not isinstance(root, _CONV + _CONV_T):
        conv.walk(root, "")
        conv.tie_shared_parameters(root_modules)  # distinct convs sharing one weight Parameter stay tied
        conv.apply()  # only now, after every replacement was built: an error above leaves an inplace model as it was
    summary = conv.summary
    summary.counts = {k: int(v) for k, v in sorted(conv.counts.items()) if v}
    audit_equivariance(root, summary)
    after = dict(root.named_modules())
    conv1d = [n or type(m).__name__ for n, m in after.items() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))
              and not (n and conv.excluded_path(n, after))]  # fmt: skip
    if conv1d:  # else only listed in summary.unknown: a 1D model came back unchanged without a word
        logger.warning(
            "convert_to_gmr: 1D convolutions are not converted (GMR convolutions are 2D/3D) and stay as they are: %s "
            "(listed in summary.unknown).",
            ", ".join(conv1d),
        )
    scripted = _scripted_with_convs(after, conv)
    if scripted:  # their convs cannot be replaced (a ScriptModule's submodules are frozen): the model came back as it was
        logger.warning(
            "convert_to_gmr: convolutions inside TorchScript modules are not converted (a scripted module cannot be "
            "modified) and stay as they are: %s; convert the eager model before torch.jit.script (listed in "
            "summary.unknown).",
            ", ".join(repr(n) for n in scripted),
        )
    if conv.hooked:  # the replacements are new modules: the hooks were dropped silently (e.g. a feature extractor's)
        logger.warning(
            "convert_to_gmr: hooks registered on replaced modules are not carried over to their replacements (which "
            "have none): %s; register them again on the converted model.",
            ", ".join(conv.hooked),
        )
    root.gmr_conversion_summary = summary  # plain attribute (not a submodule/buffer); kept by deepcopy/pickle
    logger.info(
        "convert_to_gmr: %s; %d module(s) left orientation-dependent%s",
        ", ".join(f"{k}={v}" for k, v in summary.counts.items()) or "nothing converted",
        len(summary.non_equivariant),
        (": " + ", ".join(summary.non_equivariant)) if summary.non_equivariant else "",
    )
    for name, desc in summary.converted.items():
        logger.debug("convert_to_gmr: %s: %s", name, desc)
    return (root, summary) if return_summary else root
