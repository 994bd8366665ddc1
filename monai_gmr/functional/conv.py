"""GMR kernel synthesis and convolution dispatch.

Two implementations compute the same function:

- ``impl="dense"``: synthesise the full ``k^d`` kernel ``K = sum_i w[..., i] G_i`` (a tiny einsum over
  ``C_out * C_in/groups * n * k^d`` numbers) and call ``F.conv2d/conv3d`` (cuDNN / oneDNN).
- ``impl="rings"``: the paper's decomposition: a depthwise convolution of every input channel with the ``n``
  rings, then a grouped 1x1 (1x1x1) convolution mixing ``C_in/groups * n`` ring responses into each output.

``impl="auto"`` picks per device from :data:`AUTO_TABLE`, filled from ``scripts/bench_conv.py`` runs recorded in
``docs/benchmarks.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "IMPLS",
    "PADDING_MODES",
    "AUTO_TABLE",
    "synthesize_kernel",
    "same_padding",
    "select_impl",
    "gmr_conv",
    "conv_nd",
]

IMPLS = ("auto", "dense", "rings", "triton")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

# Measured choice of implementation per device type (see docs/benchmarks.md, scripts/bench_conv.py).
# On every configuration measured so far the dense path (kernel synthesis + cuDNN/oneDNN convolution) was
# faster than the two-step ring decomposition, on CPU and on CUDA, so "auto" resolves to "dense".
AUTO_TABLE: dict[str, str] = {"cpu": "dense", "cuda": "dense"}


def synthesize_kernel(weight: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Dense kernel ``K[o, c, p] = sum_i weight[o, c, i] * basis[i, p]``.

    Args:
        weight: ring weights, shape ``(C_out, C_in / groups, n)``.
        basis: ring basis, shape ``(n,) + (k,) * d``.

    Returns:
        kernel of shape ``(C_out, C_in / groups) + (k,) * d``.
    """
    n = basis.shape[0]
    if weight.shape[-1] != n:
        raise ValueError(f"weight has {weight.shape[-1]} rings but basis has {n}.")
    spatial = basis.shape[1:]
    kernel = torch.matmul(weight.reshape(-1, n), basis.reshape(n, -1).to(weight.dtype))
    return kernel.reshape(weight.shape[0], weight.shape[1], *spatial)


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Symmetric padding that keeps the size at stride 1 for an odd kernel: ``dilation * (k - 1) // 2``."""
    return dilation * (kernel_size - 1) // 2


def conv_nd(spatial_dims: int):
    """``F.conv2d`` or ``F.conv3d``."""
    return F.conv2d if spatial_dims == 2 else F.conv3d


def select_impl(impl: str, device: torch.device, spatial_dims: int, kernel_size: int) -> str:
    """Resolve ``impl="auto"`` using the measured :data:`AUTO_TABLE`; other values pass through."""
    if impl != "auto":
        return impl
    return AUTO_TABLE.get(device.type, "dense")


def _match(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """Cast a parameter-derived tensor to the input dtype (autocast casts by itself)."""
    if t is None or t.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
        return t
    return t.to(x.dtype)


def _pad(x: torch.Tensor, padding: Sequence[int], padding_mode: str) -> torch.Tensor:
    pads: list[int] = []
    for p in reversed(padding):
        pads += [p, p]
    mode = "constant" if padding_mode == "zeros" else padding_mode
    return F.pad(x, pads, mode=mode)


def gmr_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    basis: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int | Sequence[int] = 0,
    dilation: int = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    impl: str = "dense",
    kernel: torch.Tensor | None = None,
) -> torch.Tensor:
    """GMR convolution of ``x``.

    Args:
        x: input, shape ``(B, C_in) + spatial`` with 2 or 3 spatial dims.
        weight: ring weights, shape ``(C_out, C_in / groups, n)``.
        basis: ring basis, shape ``(n,) + (k,) * d`` (may be ``None`` when ``kernel`` is given).
        bias: optional bias, shape ``(C_out,)``.
        stride, dilation, groups: as in ``torch.nn.functional.conv2d``.
        padding: int or one int per spatial dim (symmetric).
        padding_mode: ``"zeros" | "reflect" | "replicate" | "circular"``.
        impl: ``"dense"`` or ``"rings"`` (``"auto"`` resolves through :func:`select_impl`).
        kernel: optional precomputed dense kernel (``impl="dense"`` only), e.g. an eval-mode cache.

    Returns:
        output of shape ``(B, C_out) + spatial_out``.
    """
    d = x.ndim - 2
    if d not in (2, 3):
        raise ValueError(f"input must have 2 or 3 spatial dims, got input shape {tuple(x.shape)}.")
    if basis is None and (kernel is None or impl not in ("dense", "triton")):
        raise ValueError("gmr_conv needs basis unless a dense kernel is given with impl='dense'.")
    if impl == "auto":
        impl = select_impl(impl, x.device, d, (kernel if kernel is not None else basis).shape[-1])
    pad = [padding] * d if isinstance(padding, int) else list(padding)
    if padding_mode != "zeros" and any(pad):
        x = _pad(x, pad, padding_mode)
        pad = [0] * d
    conv = conv_nd(d)
    if impl in ("dense", "triton"):
        # "triton" falls back to dense until a fused kernel is registered (see functional/triton_conv.py).
        if kernel is None:
            kernel = synthesize_kernel(weight, basis)
        return conv(x, _match(kernel, x), _match(bias, x), stride, pad, dilation, groups)
    if impl == "rings":
        c_in = x.shape[1]
        # depthwise: channel c * n + i of `rings` is x_c convolved with ring G_i
        ring_w = basis.to(weight.dtype).unsqueeze(1).repeat(c_in, 1, *([1] * d))  # (C_in * n, 1) + (k,) * d
        rings = conv(x, _match(ring_w, x), None, stride, pad, dilation, c_in)
        # grouped 1x1 mixing; weight[o, c, i] multiplies channel c * n + i of o's group
        mix = weight.reshape(weight.shape[0], -1, *([1] * d))  # (C_out, C_in/g * n) + (1,) * d
        return conv(rings, _match(mix, rings), _match(bias, rings), 1, 0, 1, groups)
    raise ValueError(f"impl must be one of {IMPLS}, got impl={impl!r}.")
