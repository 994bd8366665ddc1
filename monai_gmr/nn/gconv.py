"""Group-equivariant convolutions (G-CNN, Cohen & Welling 2016) for the planar groups p4 and p4m.

These are the G-CNN baselines of the toolbox; they live beside GMR convolution so that the same MONAI pipeline can
compare them. Written by hand because no well-kept library in this environment provides p4/p4m layers for PyTorch
(``e2cnn``/``escnn`` are not dependencies and use a different, steerable-basis formulation).

Group element convention
------------------------
``H`` is the point group (rotations about a pixel, optionally with reflections) and ``G = Z^2 x| H``.

* ``p4``: ``|H| = 4``; ``p4m``: ``|H| = 8``.
* Element index ``i`` corresponds to ``monai_gmr.functional.D4Element(k=i % 4, flip=i >= 4)``, i.e. to
  ``monai_gmr.functional.d4_elements()[i]``: ``T_i(x) = rot90(flip_W(x) if flip else x, k)`` on the trailing
  ``(H, W)`` dims (``torch.rot90(..., dims=(-2, -1))``). ``p4`` uses indices ``0..3`` (the rotations).
* The product is composition of these image actions: ``T_{a.b} = T_a o T_b``. In closed form
  ``(k1, f1).(k2, f2) = (k1 + (-1)^f1 * k2 mod 4, f1 xor f2)``; :func:`cayley_table` computes it by composing
  the actions on a probe, so it can never disagree with ``D4Element``.

Feature maps on ``G`` are tensors ``F`` shaped ``(B, C, |H|, H, W)``; axis 2 is the *orientation axis*. The
group acts on them by

    ``(L_g F)[:, :, h] = T_g(F[:, :, g^-1 . h])``

(rotate/reflect every plane, and permute the orientation axis by ``h -> g^-1 . h``;
:func:`orientation_permutation` returns that index map and :func:`transform_group_features` applies ``L_g``).
With ``T_g`` acting on planar images ``(B, C, H, W)``, the layers satisfy exactly (stride 1, "same"/symmetric
zero padding, odd square kernels):

* lifting: ``GroupLiftingConv(T_g x) = L_g GroupLiftingConv(x)``
* group conv: ``GroupConv(L_g F) = L_g GroupConv(F)``
* group pooling: ``GroupPool(L_g F) = T_g GroupPool(F)``
* pointwise ops, norms that share statistics across the orientation axis, and spatial pooling/upsampling with
  sizes divisible by the factor commute with ``L_g``.

Filters are transformed by index permutation: the filter bank of output orientation ``h`` is
``T_h psi`` (lifting) or ``(L_h psi)[h'] = T_h(psi[h^-1 . h'])`` (group conv), gathered with one precomputed
index tensor, and the layer runs ONE planar ``F.conv2d`` on ``(B, C*|H|, H, W)`` with the enlarged bank.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import ADN

from monai_gmr.functional import D4Element, d4_elements
from monai_gmr.functional.basis import _is_int
from monai_gmr.nn.blocks import _check_dropout
from monai_gmr.utils import as_bool

__all__ = [
    "GROUPS",
    "POOL_MODES",
    "SPATIAL_POOL_MODES",
    "UPSAMPLE_MODES",
    "group_order",
    "group_elements_of",
    "cayley_table",
    "inverse_table",
    "element_index",
    "orientation_permutation",
    "transform_group_features",
    "lifting_filter_bank",
    "group_filter_bank",
    "group_lifting_conv2d",
    "group_conv2d",
    "GroupLiftingConv",
    "GroupConv",
    "GroupPool",
    "GroupBatchNorm",
    "GroupInstanceNorm",
    "GroupSpatialPool",
    "GroupUpsample",
    "GroupConvolution",
    "count_parameters",
]

GROUPS = ("p4", "p4m")
_ORDERS = {"p4": 4, "p4m": 8}
POOL_MODES = ("max", "mean")
SPATIAL_POOL_MODES = ("avg", "max")
UPSAMPLE_MODES = ("nearest", "bilinear")


# ---------------------------------------------------------------------------------------------------- group tables
def _check_group(group: str) -> str:
    if not isinstance(group, str) or group.lower() not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got group={group!r}.")
    return group.lower()


def group_order(group: str) -> int:
    """``|H|``: 4 for ``"p4"``, 8 for ``"p4m"``."""
    return _ORDERS[_check_group(group)]


def group_elements_of(group: str) -> list[D4Element]:
    """The elements of ``H`` in index order (``d4_elements()[:|H|]``; see the module docstring)."""
    return d4_elements()[: group_order(group)]


@functools.lru_cache(maxsize=None)
def _tables(group: str) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    elems = group_elements_of(group)
    # an asymmetric 3x3 probe: the 8 images T_g(probe) are pairwise distinct, so the action is faithful
    probe = torch.arange(9.0).reshape(3, 3)
    images = [e(probe) for e in elems]

    def index_of(img: torch.Tensor) -> int:
        for j, ref in enumerate(images):
            if torch.equal(img, ref):
                return j
        raise RuntimeError(f"{group} is not closed under composition")  # impossible for p4 / p4m

    table = tuple(tuple(index_of(a(b(probe))) for b in elems) for a in elems)
    inv = tuple(row.index(0) for row in table)
    return table, inv


def cayley_table(group: str) -> torch.Tensor:
    """Multiplication table ``M[a, b] = index(a . b)`` with ``T_{a.b} = T_a o T_b``; shape ``(|H|, |H|)``, int64."""
    return torch.tensor(_tables(_check_group(group))[0], dtype=torch.long)


def inverse_table(group: str) -> torch.Tensor:
    """``inv[a] = index(a^-1)``; shape ``(|H|,)``, int64."""
    return torch.tensor(_tables(_check_group(group))[1], dtype=torch.long)


def element_index(g: D4Element, group: str) -> int:
    """Index of ``g`` in :func:`group_elements_of`; ``ValueError`` if ``g`` is not in the group (a flip in p4)."""
    group = _check_group(group)
    if not isinstance(g, D4Element):
        raise ValueError(f"g must be a monai_gmr.functional.D4Element, got g={g!r}.")
    k, flip = g.k % 4, bool(g.flip)
    if flip and group == "p4":
        raise ValueError(f"g={g.name} is a reflection, which is not an element of group='p4'.")
    return k + 4 * int(flip)


def orientation_permutation(g: D4Element, group: str) -> torch.Tensor:
    """Index map ``perm`` with ``(L_g F)[:, :, h] = T_g(F[:, :, perm[h]])``, i.e. ``perm[h] = index(g^-1 . h)``."""
    table, inv = _tables(_check_group(group))
    gi = inv[element_index(g, group)]
    return torch.tensor([table[gi][h] for h in range(len(inv))], dtype=torch.long)


def transform_group_features(x: torch.Tensor, g: D4Element, group: str) -> torch.Tensor:
    """Apply the group action ``L_g`` to feature maps ``x`` shaped ``(..., |H|, H, W)``.

    Returns:
        ``T_g(x[..., perm, :, :])`` with ``perm = orientation_permutation(g, group)``; shape ``(..., |H|, W', H')``.
    """
    n = group_order(group)
    if x.ndim < 3 or x.shape[-3] != n:
        raise ValueError(f"x must be shaped (..., {n}, H, W) for group={group!r}, got x.shape={tuple(x.shape)}.")
    perm = orientation_permutation(g, group).to(x.device)
    return g(x.index_select(x.ndim - 3, perm))


# ---------------------------------------------------------------------------------------------------- filter banks
# The gather indices are built once per (group, k) as tuples of Python ints: building them with torch ops while
# ``torch.jit.trace`` runs would record those ops in the graph on a cold cache and not on the trace checker's rerun
# ("Graphs differed across invocations"). The layers hold the index as a non-persistent buffer (it follows
# ``.to(device)``, is a module attribute for the tracer and TorchScript, and is not in the state dict); the functional
# forms keep a per-device tensor cache, bypassed while tracing so that every trace records the same constant.
@functools.lru_cache(maxsize=None)
def _lifting_index_values(group: str, k: int) -> tuple[int, ...]:
    base = torch.arange(k * k).reshape(k, k)
    return tuple(torch.stack([e(base) for e in group_elements_of(group)]).reshape(-1).tolist())  # (n*k*k,)


@functools.lru_cache(maxsize=None)
def _group_index_values(group: str, k: int) -> tuple[int, ...]:
    n = group_order(group)
    table, inv = _tables(group)
    base = torch.arange(n * k * k).reshape(n, k, k)
    rows = []
    for h, e in enumerate(group_elements_of(group)):
        src = torch.tensor([table[inv[h]][hp] for hp in range(n)])  # h^-1 . h'
        rows.append(e(base[src]))
    return tuple(torch.stack(rows).reshape(-1).tolist())  # (n*n*k*k,): [h, h', y, x]


def _new_index(group: str, k: int, lifting: bool, device: torch.device | None = None) -> torch.Tensor:
    values = _lifting_index_values(group, k) if lifting else _group_index_values(group, k)
    return torch.tensor(values, dtype=torch.long, device=device)


@functools.lru_cache(maxsize=None)
def _cached_index(group: str, k: int, lifting: bool, device: torch.device) -> torch.Tensor:
    # a normal tensor even when the cache is filled under torch.inference_mode(): the bank's index_select saves the
    # index for backward, and an inference tensor there failed every later training call ("Inference tensors cannot
    # be saved for backward")
    with torch.inference_mode(False):
        return _new_index(group, k, lifting, device)


def _bank_index(group: str, k: int, lifting: bool, device: torch.device) -> torch.Tensor:
    """Gather index of the filter bank on ``device``: cached (no host-to-device copy per call), fresh when tracing."""
    if torch.jit.is_tracing():
        return _new_index(group, k, lifting, device)
    return _cached_index(group, k, lifting, device)


# TorchScript-compatible cores shared by the functional forms and the layers (``index`` from ``_bank_index`` or the
# layers' ``bank_index`` buffer; ``n = |H|``).
def _lifting_bank(weight: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    o, c, k = weight.shape[0], weight.shape[1], weight.shape[-1]
    bank = weight.reshape(o, c, k * k).index_select(2, index).reshape(o, c, n, k, k)
    return bank.transpose(1, 2).reshape(o * n, c, k, k)


def _group_bank(weight: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    o, c, k = weight.shape[0], weight.shape[1], weight.shape[-1]
    bank = weight.reshape(o, c, n * k * k).index_select(2, index).reshape(o, c, n, n, k, k)
    return bank.transpose(1, 2).reshape(o * n, c * n, k, k)


def _check_lifting_input(x: torch.Tensor, in_channels: int) -> None:
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"input must be shaped (B, in_channels={in_channels}, H, W), got input.shape={list(x.shape)}."
        )


def _check_group_conv_input(x: torch.Tensor, in_channels: int, n: int, group: str) -> None:
    if x.dim() != 5 or x.shape[1] != in_channels or x.shape[2] != n:
        raise ValueError(
            f"input must be shaped (B, in_channels={in_channels}, |H|={n}, H, W) for group='{group}', got "
            f"input.shape={list(x.shape)}."
        )


def _conv_bank(
    x: torch.Tensor,
    bank: torch.Tensor,
    bias: torch.Tensor | None,
    n: int,
    out_channels: int,
    stride: int,
    padding: int,
    dilation: int,
) -> torch.Tensor:
    """Planar convolution with an enlarged filter bank, output regrouped as ``(B, out_channels, n, H, W)``."""
    b: torch.Tensor | None = None
    if bias is not None:
        b = bias.repeat_interleave(n)
    y = F.conv2d(x, bank, b, stride=stride, padding=padding, dilation=dilation)
    return y.reshape(y.shape[0], out_channels, n, y.shape[-2], y.shape[-1])


def lifting_filter_bank(weight: torch.Tensor, group: str) -> torch.Tensor:
    """Enlarged planar filter bank of a lifting layer.

    Args:
        weight: ``(C_out, C_in, k, k)``.
        group: ``"p4"`` or ``"p4m"``.

    Returns:
        ``(C_out * |H|, C_in, k, k)``; row ``o * |H| + h`` is ``T_h(weight[o])``.
    """
    n = group_order(group)
    if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must have square kernels, got weight.shape={tuple(weight.shape)}.")
    return _lifting_bank(weight, _bank_index(_check_group(group), weight.shape[-1], True, weight.device), n)


def group_filter_bank(weight: torch.Tensor, group: str) -> torch.Tensor:
    """Enlarged planar filter bank of a group convolution.

    Args:
        weight: ``(C_out, C_in, |H|, k, k)``.
        group: ``"p4"`` or ``"p4m"``.

    Returns:
        ``(C_out * |H|, C_in * |H|, k, k)``; entry ``[o * |H| + h, c * |H| + h']`` is ``T_h(weight[o, c, h^-1 . h'])``.
    """
    n = group_order(group)
    if weight.ndim != 5 or weight.shape[2] != n or weight.shape[3] != weight.shape[4]:
        raise ValueError(f"weight must be shaped (C_out, C_in, {n}, k, k), got weight.shape={tuple(weight.shape)}.")
    return _group_bank(weight, _bank_index(_check_group(group), weight.shape[-1], False, weight.device), n)


def group_lifting_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    group: str,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
) -> torch.Tensor:
    """Lifting convolution ``Z^2 -> G``: ``(B, C_in, H, W) -> (B, C_out, |H|, H', W')``; bias ``(C_out,)``.

    Raises:
        ValueError: ``x`` not shaped ``(B, C_in, H, W)`` with ``C_in = weight.shape[1]``; an even kernel size
            (``weight.shape[-1]``), not exactly equivariant (the modules refuse it too).
    """
    n = group_order(group)
    _check_lifting_input(x, weight.shape[1])
    if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must have square kernels, got weight.shape={tuple(weight.shape)}.")
    _check_odd_kernel(weight)
    index = _bank_index(_check_group(group), weight.shape[-1], True, weight.device)
    return _conv_bank(x, _lifting_bank(weight, index, n), bias, n, weight.shape[0], stride, padding, dilation)


def group_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    group: str,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
) -> torch.Tensor:
    """Group convolution ``G -> G``: ``(B, C_in, |H|, H, W) -> (B, C_out, |H|, H', W')``; bias ``(C_out,)``.

    Raises:
        ValueError: ``x`` not shaped ``(B, C_in, |H|, H, W)`` with ``C_in = weight.shape[1]`` (a planar
            ``(B, C_in * |H|, H, W)`` or another orientation count would otherwise be mixed up silently).
            An even kernel size (``weight.shape[-1]``), not exactly equivariant (the modules refuse it too).
    """
    group = _check_group(group)
    n = group_order(group)
    _check_group_conv_input(x, weight.shape[1], n, group)
    if weight.ndim != 5 or weight.shape[2] != n or weight.shape[3] != weight.shape[4]:
        raise ValueError(f"weight must be shaped (C_out, C_in, {n}, k, k), got weight.shape={tuple(weight.shape)}.")
    _check_odd_kernel(weight)
    index = _bank_index(group, weight.shape[-1], False, weight.device)
    bank = _group_bank(weight, index, n)
    return _conv_bank(x.flatten(1, 2), bank, bias, n, weight.shape[0], stride, padding, dilation)


# ---------------------------------------------------------------------------------------------------- validation
def _check_group_norm(norm) -> None:
    """Refuse ``norm="layer"`` (or ``("layer", kwargs)``) for group feature maps: MONAI's ``LayerNorm`` needs a
    ``normalized_shape`` over trailing dims, whose elementwise affine is not shared across orientations (or fails)."""
    if isinstance(norm, (str, tuple, list)) and str(norm if isinstance(norm, str) else norm[0]).lower() == "layer":
        raise ValueError(f"norm='layer' is not supported on group feature maps, got norm={norm!r}.")


def _check_odd_kernel(weight: torch.Tensor) -> None:
    """The functional convs refuse even kernels as the modules do: an even filter has no centre pixel, so its
    rotations are not centred on the same point and the convolution is not exactly equivariant."""
    k = weight.shape[-1]
    if k % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd (a centred filter) for an exactly equivariant convolution, got kernel_size={k} "
            f"(weight.shape={tuple(weight.shape)})."
        )


def _positive_int(value, name: str, minimum: int = 1) -> int:
    # NumPy integers pass (as in GMRConv / GMRUNet) and are stored as Python ints (TorchScript attributes)
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {name}={value!r}.")
    return int(value)


def _square(value, name: str) -> int:
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{name} must be an int or 2 equal ints (square, so rotations map it to itself), "
                             f"got {name}={tuple(value)}.")
        value = value[0]
    if not _is_int(value):
        raise ValueError(f"{name} must be an int, got {name}={value!r}.")
    return int(value)


def _kernel_size(kernel_size) -> int:
    k = _square(kernel_size, "kernel_size")
    if k < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int (a centred filter), got kernel_size={k}.")
    return k


# ---------------------------------------------------------------------------------------------------- conv modules
class _GroupConvBase(nn.Module):
    lifting: bool = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        group: str = "p4m",
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str | None = None,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.group = _check_group(group)
        self.group_order = group_order(self.group)
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = _kernel_size(kernel_size)
        self.stride = _positive_int(_square(stride, "stride"), "stride")
        self.dilation = _positive_int(_square(dilation, "dilation"), "dilation")
        if isinstance(padding, str) and padding == "same" and self.stride > 1:
            # as torch.nn.Conv2d and GMRConv: a strided convolution cannot keep the size (it gave a half-size output)
            raise ValueError(
                f"padding='same' is not supported for strided convolutions (stride={self.stride}), as in "
                "torch.nn.Conv2d; pass an int padding (or padding=None for the symmetric pad "
                "dilation * (kernel_size - 1) // 2)."
            )
        if padding is None or padding == "same":
            padding = self.dilation * (self.kernel_size - 1) // 2
        self.padding = _positive_int(_square(padding, "padding"), "padding", minimum=0)
        orientations = () if self.lifting else (self.group_order,)
        shape = (self.out_channels, self.in_channels) + orientations + (self.kernel_size,) * 2
        self.weight = nn.Parameter(torch.empty(shape))
        # text from a command line (`--network_def#bias false`: Python Fire passes "false", which is truthy)
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if as_bool(bias, "bias") else None
        # the filter-bank gather index: a buffer, so it follows .to(device) and a trace or TorchScript reads it as a
        # module attribute (see "filter banks" above); not persistent, so state dicts are those of the parameters
        self.register_buffer(
            "bank_index", _new_index(self.group, self.kernel_size, self.lifting), persistent=False
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal for ReLU: ``std = sqrt(2 / fan_in)`` with ``fan_in = C_in * [|H|] * k * k``; zero bias.

        ``fan_in`` counts every input value a single output sums over (for a group conv: all orientations), so the
        second moment of the pre-activations is preserved through a ReLU stack, as for planar Kaiming init.
        """
        nn.init.kaiming_normal_(self.weight, mode="fan_in", nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _apply(self, fn, recurse: bool = True):
        before = self.bank_index
        out = super()._apply(fn, recurse)
        # to_empty (from meta, or of a materialised layer): the index (not in the state dict) holds uninitialised
        # memory; it is computed from the hyper-parameters only, so any new tensor is rebuilt (a no-op .to() keeps it)
        if self.bank_index is not before:
            self._rebuild_bank_index(self.bank_index.device)
        return out

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        # meta construction then load_state_dict(..., assign=True): the parameters are loaded, the index is on meta
        if self.bank_index.is_meta and not self.weight.is_meta:
            self._rebuild_bank_index(self.weight.device)

    def _rebuild_bank_index(self, device: torch.device) -> None:
        if device.type != "meta":
            with torch.inference_mode(False):
                self._buffers["bank_index"] = _new_index(self.group, self.kernel_size, self.lifting, device)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, group={self.group!r}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        return s + f", bias={self.bias is not None}"


class GroupLiftingConv(_GroupConvBase):
    """Lifting convolution ``Z^2 -> G`` (Cohen & Welling's P4ConvZ2 / P4MConvZ2).

    ``y[:, o, h] = x (star) T_h(psi[o]) + b[o]`` (cross-correlation, ``T_h`` as in the module docstring).
    Exactly equivariant at stride 1 with symmetric padding: ``f(T_g x) = L_g f(x)`` for every ``g`` in ``H``,
    where ``(L_g F)[:, :, h] = T_g(F[:, :, g^-1 . h])``.

    Args:
        in_channels: planar input channels ``C_in``.
        out_channels: output channels ``C_out`` (each carries ``|H|`` orientations).
        kernel_size: odd square kernel width ``k``.
        group: ``"p4"`` (``|H| = 4``) or ``"p4m"`` (``|H| = 8``).
        stride: stride (strides other than 1 break exact equivariance).
        padding: symmetric zero padding; ``None`` or ``"same"`` means "same" (``dilation * (k - 1) // 2``;
            ``"same"`` with a stride > 1 raises ``ValueError``, as in ``torch.nn.Conv2d``).
        dilation: kernel dilation.
        bias: learnable bias, one per output channel (shared by all orientations).

    Shapes:
        input ``(B, C_in, H, W)``; output ``(B, C_out, |H|, H', W')``; ``weight``: ``(C_out, C_in, k, k)``.
    """

    lifting = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_lifting_input(x, self.in_channels)
        n = self.group_order
        bank = _lifting_bank(self.weight, self.bank_index, n)
        return _conv_bank(x, bank, self.bias, n, self.out_channels, self.stride, self.padding, self.dilation)


class GroupConv(_GroupConvBase):
    """Group convolution ``G -> G`` (Cohen & Welling's P4ConvP4 / P4MConvP4M).

    ``y[:, o, h] = sum_{c, h'} x[:, c, h'] (star) T_h(psi[o, c, h^-1 . h']) + b[o]``. Exactly equivariant at stride
    1 with symmetric padding: ``f(L_g F) = L_g f(F)`` for every ``g`` in ``H``. With ``kernel_size=1`` it is a
    pointwise mixing of channels and orientations (a group-equivariant "1x1 conv").

    Args:
        in_channels: input channels ``C_in`` (each carrying ``|H|`` orientations).
        out_channels: output channels ``C_out``.
        kernel_size: odd square kernel width ``k``.
        group: ``"p4"`` (``|H| = 4``) or ``"p4m"`` (``|H| = 8``).
        stride: stride (strides other than 1 break exact equivariance).
        padding: symmetric zero padding; ``None`` or ``"same"`` means "same" (``"same"`` with a stride > 1 raises
            ``ValueError``, as in ``torch.nn.Conv2d``).
        dilation: kernel dilation.
        bias: learnable bias, one per output channel (shared by all orientations).

    Shapes:
        input ``(B, C_in, |H|, H, W)``; output ``(B, C_out, |H|, H', W')``; ``weight``: ``(C_out, C_in, |H|, k, k)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_group_conv_input(x, self.in_channels, self.group_order, self.group)
        n = self.group_order
        bank = _group_bank(self.weight, self.bank_index, n)
        return _conv_bank(x.flatten(1, 2), bank, self.bias, n, self.out_channels, self.stride, self.padding, self.dilation)


# ---------------------------------------------------------------------------------------------------- pooling / norms
def _check_group_input(x: torch.Tensor, name: str) -> None:
    if x.dim() != 5:
        raise ValueError(f"{name} expects input shaped (B, C, |H|, H, W), got input.shape={list(x.shape)}.")


class GroupPool(nn.Module):
    """Group ("coset") pooling over the orientation axis: ``(B, C, |H|, H, W) -> (B, C, H, W)``.

    Maps ``L_g F`` to ``T_g`` of the pooled map, i.e. the output is D4-equivariant in the plain planar sense
    (bit-exact for ``"max"``; up to summation-order rounding for ``"mean"``).

    Args:
        mode: ``"max"`` or ``"mean"``.
    """

    def __init__(self, mode: str = "max") -> None:
        super().__init__()
        if mode not in POOL_MODES:
            raise ValueError(f"mode must be one of {POOL_MODES}, got mode={mode!r}.")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_group_input(x, "GroupPool")
        return x.amax(dim=2) if self.mode == "max" else x.mean(dim=2)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class GroupBatchNorm(nn.BatchNorm3d):
    """Batch norm with statistics and affine parameters shared across the orientation axis.

    ``(B, C, |H|, H, W)`` is normalised per channel ``C`` over ``(B, |H|, H, W)`` (``nn.BatchNorm3d`` treats
    ``|H|`` as an extra spatial dim), which commutes with ``L_g``. Arguments as ``torch.nn.BatchNorm3d``
    (``num_features = C``).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        _check_group_input(input, "GroupBatchNorm")


class GroupInstanceNorm(nn.InstanceNorm3d):
    """Instance norm with statistics shared across the orientation axis.

    ``(B, C, |H|, H, W)`` is normalised per ``(b, c)`` over ``(|H|, H, W)``. Arguments as
    ``torch.nn.InstanceNorm3d`` (``num_features = C``; ``affine=False`` by default as in PyTorch).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        _check_group_input(input, "GroupInstanceNorm")


class GroupSpatialPool(nn.Module):
    """Spatial pooling of group feature maps over ``(H, W)`` only (kernel = stride = ``kernel_size``).

    Exactly commutes with ``L_g`` when ``H`` and ``W`` are divisible by ``kernel_size`` (up to summation order for
    ``"avg"``); otherwise the floor drops border rows/columns asymmetrically.

    Args:
        kernel_size: pooling window and stride.
        mode: ``"avg"`` (default, the equivariant down-sampling of the GMR recipe) or ``"max"``.

    Shapes:
        ``(B, C, |H|, H, W) -> (B, C, |H|, H // s, W // s)``.
    """

    def __init__(self, kernel_size: int = 2, mode: str = "avg") -> None:
        super().__init__()
        self.kernel_size = _positive_int(kernel_size, "kernel_size")
        if mode not in SPATIAL_POOL_MODES:
            raise ValueError(f"mode must be one of {SPATIAL_POOL_MODES}, got mode={mode!r}.")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_group_input(x, "GroupSpatialPool")
        if self.mode == "avg":
            y = F.avg_pool2d(x.flatten(1, 2), self.kernel_size)
        else:
            y = F.max_pool2d(x.flatten(1, 2), self.kernel_size)
        return y.reshape(x.shape[0], x.shape[1], x.shape[2], y.shape[-2], y.shape[-1])

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, mode={self.mode!r}"


class GroupUpsample(nn.Module):
    """Non-learned up-sampling of group feature maps over ``(H, W)`` only.

    ``"nearest"`` and ``"bilinear"`` (``align_corners=False``) with an integer factor are symmetric under flips
    and 90-degree rotations, so this commutes with ``L_g`` (up to summation order for ``"bilinear"``).

    Args:
        scale_factor: integer up-sampling factor.
        mode: ``"nearest"`` or ``"bilinear"``.

    Shapes:
        ``(B, C, |H|, H, W) -> (B, C, |H|, s * H, s * W)``.
    """

    def __init__(self, scale_factor: int = 2, mode: str = "bilinear") -> None:
        super().__init__()
        self.scale_factor = _positive_int(scale_factor, "scale_factor")
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"mode must be one of {UPSAMPLE_MODES}, got mode={mode!r}.")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_group_input(x, "GroupUpsample")
        scale = float(self.scale_factor)
        if self.mode == "bilinear":
            y = F.interpolate(x.flatten(1, 2), scale_factor=scale, mode="bilinear", align_corners=False)
        else:
            y = F.interpolate(x.flatten(1, 2), scale_factor=scale, mode="nearest")
        return y.reshape(x.shape[0], x.shape[1], x.shape[2], y.shape[-2], y.shape[-1])

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"


class GroupConvolution(nn.Sequential):
    """Group convolution (or lifting convolution) followed by MONAI's ``ADN`` on group feature maps.

    The G-CNN counterpart of :class:`monai.networks.blocks.Convolution` / ``GMRConvolution``. The norm is built by
    MONAI's factory with ``norm_dim=3`` so that ``(B, C, |H|, H, W)`` is normalised with statistics shared across
    the orientation axis (``"batch"`` -> BatchNorm3d, ``"instance"`` -> InstanceNorm3d, ``"group"`` -> GroupNorm);
    activations are pointwise and dropout is element-wise (``dropout_dim=1``). Submodules: ``conv``, ``adn``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd square kernel width.
        group: ``"p4"`` or ``"p4m"``.
        lifting: if ``True`` the conv is a :class:`GroupLiftingConv` (planar input), else a :class:`GroupConv`.
        strides: conv stride (1 keeps exact equivariance).
        adn_ordering: order of A/D/N, MONAI's default ``"NDA"``.
        act: activation name or ``(name, kwargs)``; ``None`` for none.
        norm: norm name or ``(name, kwargs)``; ``None`` for none. ``"layer"`` is not supported.
        dropout: dropout probability or ``(name, kwargs)``.
        bias: conv bias.
        conv_only: if ``True``, no ADN block is added.
        padding: symmetric padding, ``None`` for "same".

    Shapes:
        ``(B, C_in, [|H|,] H, W) -> (B, C_out, |H|, H', W')``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        group: str = "p4m",
        lifting: bool = False,
        strides: int = 1,
        adn_ordering: str = "NDA",
        act: tuple | str | None = "PRELU",
        norm: tuple | str | None = "INSTANCE",
        dropout: tuple | str | float | None = None,
        bias: bool = True,
        conv_only: bool = False,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        # switches given as text ("false" from a command line) are read as what they say, as in GMRConvolution
        lifting, conv_only = as_bool(lifting, "lifting"), as_bool(conv_only, "conv_only")
        dropout = _check_dropout(dropout)  # "0.2" from a command line is 0.2 (MONAI refused it as an option name)
        cls = GroupLiftingConv if lifting else GroupConv
        self.add_module(
            "conv", cls(in_channels, out_channels, kernel_size, group, stride=strides, padding=padding, bias=bias)
        )
        if conv_only:
            return
        if act is None and norm is None and dropout is None:
            return
        _check_group_norm(norm)
        self.add_module(
            "adn",
            ADN(
                ordering=adn_ordering,
                in_channels=out_channels,
                act=act,
                norm=norm,
                norm_dim=3,
                dropout=dropout,
                dropout_dim=1,
            ),
        )


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
