"""GMR kernel synthesis and convolution dispatch.

Two implementations compute the same function:

- ``impl="dense"``: synthesise the full ``k^d`` kernel ``K = sum_i w[..., i] G_i`` (a tiny einsum over
  ``C_out * C_in/groups * n * k^d`` numbers) and call ``F.conv2d/conv3d`` (cuDNN / oneDNN).
- ``impl="rings"``: the paper's decomposition: a depthwise convolution of every input channel with the ``n``
  rings, then a grouped 1x1 (1x1x1) convolution mixing ``C_in/groups * n`` ring responses into each output.

``impl="auto"`` picks per device, dims, width, kernel size and training/inference from :data:`AUTO_TABLE`, filled
from ``scripts/bench_conv.py`` runs recorded in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .basis import _is_int, is_radial_basis
from .triton_conv import _compute_dtype, gmr_conv_triton, resolve_triton

__all__ = [
    "IMPLS",
    "PADDING_MODES",
    "AUTO_TABLE",
    "synthesize_kernel",
    "same_padding",
    "select_impl",
    "gmr_conv",
    "conv_nd",
    "TRITON_STRICT_ENV",
]

logger = logging.getLogger(__name__)

IMPLS = ("auto", "dense", "rings", "triton")
# (device type, spatial dims, kernel size, compute dtype: the autocast dtype under autocast) where the Triton kernels
# raised once: not tried again
_TRITON_FAILED: set[tuple[str, int, int, str]] = set()
#: set to "1" to re-raise a Triton compile/launch failure instead of falling back to the dense/rings path (GPU tests
#: and benchmarks: a silent fallback would be counted as Triton)
TRITON_STRICT_ENV = "MONAI_GMR_TRITON_STRICT"
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

# Measured choice of implementation: (device type, spatial_dims) -> rules, first match wins; no match -> "dense".
# A rule is (min_in_channels, kernel sizes or None for any, grad: True (training) / False (inference) / None (both),
# impl); min_in_channels is compared with C_in / groups (grouped and depthwise layers: rings 1.06-28x slower than
# dense on CPU, commit eb9caa0). Source: scripts/bench_conv.py runs recorded in docs/benchmarks.md section 1.
# - CPU (oneDNN), fp32, 1 thread, two 2-core AMD EPYC VMs; per measured cell the choice with the smaller worst-case
#   slowdown over both. Commit 0e81fa8 (AVX-512 VM, 2026-12-06): the ring decomposition was faster than dense only
#   for C_in = 128 at k >= 5 in 2D (0.67-0.89x, forward and forward + backward; 1.17-1.30x at k = 3) and at k = 3 in
#   3D (0.45-0.56x, C_in 16 and 32); everywhere else it was slower, up to 4.7x (C_in = 16, 128x128, k = 11) in 2D and
#   4.3-5x (C_in = 16, 24^3, k = 9) in 3D. Commit 35ea11e (another VM, where the dense convolutions took 2-12x longer)
#   had measured rings faster also for C_in = 128 at k = 3 (0.64-0.73x), for C_in = 32 at k >= 9 in inference
#   (0.68x) and for 3D k = 9 (0.69x). So: rings for C_in >= 128 at every k in 2D (worst 1.30x, against 1.56x for
#   dense at k = 3), for k = 3 in 3D; dense elsewhere (worst 1.47x there, against 3.1-4.5x for rings here). The
#   earlier rules sent a GMRUNet's k = 9 inference layers to rings, 3-4x slower than dense on the newer VM.
# - CUDA: dense (cuDNN), except the fused Triton kernels (issue 7) where they measured faster than both cuDNN dense
#   and GMR dense, forward + backward AND forward-only, bf16 (autocast) AND fp32 (TF32):
#   `python scripts/bench_triton.py --out $OUT --sweep --workers 8 --repeats 10`, 2026-11-22, NVIDIA H100 80GB
#   HBM3 (torch 2.11, triton 3.6); docs/benchmarks_triton.md. 2D, C = 128, (32, 128, 64, 64): k = 7, 9, 11 (k = 9
#   bf16 fwd+bwd 2.46 ms vs cuDNN 3.21 / GMR dense 2.82); not k = 3 (2-3x slower) nor k = 5 (fp32 6% slower than
#   GMR dense; bf16 1.6x faster). 3D, C = 32, (2, 32, 48^3): k = 5, 7 (k = 7 bf16 1.36 ms vs cuDNN 3.28); not k = 3.
#   Narrower layers were not measured: the rules start at the measured width.
AUTO_TABLE: dict[tuple[str, int], list[tuple[int, tuple[int, ...] | None, bool | None, str]]] = {
    ("cpu", 2): [(128, None, None, "rings")],
    # measured at C_in = 16, 32 (groups 1); on a third (Intel) VM rings won at (1, 16, 24^3) and (1, 32, 16^3) but
    # lost 2.8x at (2, 32, 24^3) (eb9caa0, docs/benchmarks.md section 1): shape-dependent there
    ("cpu", 3): [(16, (3,), None, "rings")],
    ("cuda", 2): [(128, (7, 9, 11), None, "triton")],
    ("cuda", 3): [(32, (5, 7), None, "triton")],
}


def _check_rings(weight: torch.Tensor, basis: torch.Tensor) -> None:
    """The ring axis of ``weight`` (last) matches the basis (first); shared by the dense and Triton paths."""
    if weight.shape[-1] != basis.shape[0]:
        raise ValueError(f"weight has {weight.shape[-1]} rings but basis has {basis.shape[0]}.")


def _check_shapes(
    x: torch.Tensor,
    weight: torch.Tensor,
    basis: torch.Tensor | None,
    kernel: torch.Tensor | None,
    bias: torch.Tensor | None,
    padding: int | Sequence[int],
    groups: int,
) -> None:
    """Argument shapes of :func:`gmr_conv`, checked for every impl before dispatch.

    The rings path reshapes ``weight`` to ``(C_out, C_in/groups * n)`` without reading its ring axis: a weight with
    another ring count (or channel count) whose product matched ``C_in * n / groups`` was silently mixed with the
    wrong ring responses. Dense / rings errors otherwise came from deep inside ``F.conv2d`` / ``Tensor.repeat``.

    Args:
        x: input, shape ``(B, C_in) + spatial`` with ``d`` spatial dims (checked by the caller).
        weight: ring weights, shape ``(C_out, C_in / groups, n)``.
        basis: ring basis, shape ``(n,) + (k,) * d``, or ``None``.
        kernel: dense kernel, shape ``(C_out, C_in / groups) + (k,) * d``, or ``None``.
        bias: ``None`` or shape ``(C_out,)``.
        padding: a non-negative int or ``d`` of them.
        groups: channel groups.
    """
    d = x.ndim - 2
    if weight.ndim != 3:
        raise ValueError(f"weight must have shape (C_out, C_in / groups, n), got weight shape {tuple(weight.shape)}.")
    if basis is not None:
        if basis.ndim != d + 1:
            raise ValueError(
                f"basis must have shape (n,) + (k,) * {d} for an input with {d} spatial dims, got basis shape "
                f"{tuple(basis.shape)}."
            )
        _check_rings(weight, basis)
    if kernel is not None and kernel.ndim != d + 2:
        raise ValueError(
            f"kernel must have shape (C_out, C_in / groups) + (k,) * {d} for an input with {d} spatial dims, got "
            f"kernel shape {tuple(kernel.shape)}."
        )
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"groups must be a positive int, got groups={groups!r}.")
    if weight.shape[1] * groups != x.shape[1] or weight.shape[0] % groups:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} with groups={groups} takes {weight.shape[1] * groups} input channels "
            f"(and C_out={weight.shape[0]} divisible by groups), but the input has {x.shape[1]} input channels."
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got bias shape {tuple(bias.shape)}.")
    pads = [padding] if _is_int(padding) else list(padding)
    if (not _is_int(padding) and len(pads) != d) or not all(_is_int(p) and p >= 0 for p in pads):
        raise ValueError(
            f"padding must be a non-negative int or {d} non-negative ints for an input with {d} spatial dims, got "
            f"padding={padding!r}."
        )


def synthesize_kernel(weight: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Dense kernel ``K[o, c, p] = sum_i weight[o, c, i] * basis[i, p]``.

    Args:
        weight: ring weights, shape ``(C_out, C_in / groups, n)``.
        basis: ring basis, shape ``(n,) + (k,) * d``.

    Returns:
        kernel of shape ``(C_out, C_in / groups) + (k,) * d``.
    """
    _check_rings(weight, basis)
    n = basis.shape[0]
    spatial = basis.shape[1:]
    kernel = torch.matmul(weight.reshape(-1, n), basis.reshape(n, -1).to(weight.dtype))
    return kernel.reshape(weight.shape[0], weight.shape[1], *spatial)


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Symmetric padding that keeps the size at stride 1 for an odd kernel: ``dilation * (k - 1) // 2``."""
    return dilation * (kernel_size - 1) // 2


def conv_nd(spatial_dims: int):
    """``F.conv2d`` or ``F.conv3d``."""
    return F.conv2d if spatial_dims == 2 else F.conv3d


def select_impl(
    impl: str,
    device: torch.device,
    spatial_dims: int,
    kernel_size: int,
    in_channels: int | None = None,
    needs_grad: bool | None = None,
    allow_triton: bool = True,
    groups: int = 1,
) -> str:
    """Resolve ``impl="auto"`` from the measured :data:`AUTO_TABLE`; other values pass through.

    Args:
        impl: requested implementation.
        device: device of the input.
        spatial_dims: 2 or 3.
        kernel_size: odd kernel width.
        in_channels: input channels (rules may depend on the width); ``None`` matches only width-free rules.
        needs_grad: whether a backward pass will follow; ``None`` matches only rules valid for both.
        allow_triton: when False, rules choosing ``"triton"`` are skipped (the fallback of an unsupported call).
            While ``torch.jit.trace`` runs, ``needs_grad`` is ignored (only rules valid for both match): the trace
            checker reruns the function under ``torch.no_grad()``, so a choice that followed the grad mode recorded
            a different graph there ("Graphs differed across invocations", e.g. a GMRUNet traced on CPU).
        groups: channel groups; the width the rules compare is ``in_channels // groups``, the input channels each
            output channel sees (the ring decomposition convolves every input channel with all ``n`` rings, so its
            cost does not shrink with the groups as the dense convolution's does: depthwise layers were sent to
            rings at ``C_in >= 128`` and ran 3.6-28x slower than dense on CPU, docs/benchmarks.md section 1).
    """
    if impl != "auto":
        return impl
    if torch.jit.is_tracing():
        needs_grad = None
    if kernel_size == 1:
        return "dense"
    width = None if in_channels is None else int(in_channels) // max(int(groups), 1)
    for min_c, sizes, grad, choice in AUTO_TABLE.get((device.type, spatial_dims), []):
        if min_c and (width is None or width < min_c):
            continue
        if sizes is not None and kernel_size not in sizes:
            continue
        if grad is not None and needs_grad is not grad:
            continue
        if choice == "triton" and not allow_triton:
            continue
        return choice
    return "dense"


def _match(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """Cast a parameter-derived tensor to the input dtype (autocast casts by itself, except a float64 input, which it
    leaves in float64: a float32 kernel beside it was cast to the autocast dtype and the convolution failed with
    "Input type (double) and bias type (c10::BFloat16) should be the same", where it runs in float64 without
    autocast and in the TorchScript forward)."""
    if t is None or t.dtype == x.dtype:
        return t
    if torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float64:
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
    circular: bool | None = None,
    radial: bool | None = None,
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
        impl: ``"dense"``, ``"rings"`` or ``"triton"`` (fused kernels, :mod:`.triton_conv`; unsupported calls fall
            back with a one-time warning); ``"auto"`` resolves through :func:`select_impl`.
        kernel: optional precomputed dense kernel (``impl="dense"`` only), e.g. an eval-mode cache.
        circular: ``True`` when ``basis`` is zero outside the inscribed circle/sphere, which lets the Triton kernels
            skip the corner offsets (see :func:`.triton_conv.gmr_conv_triton`); ignored by the other impls.
        radial: whether ``basis`` depends on ``|p|`` only, which the Triton kernels need (``False`` makes
            ``impl="triton"`` fall back). ``None`` (default): determined from ``basis`` by
            :func:`.basis.is_radial_basis` when, and only when, the Triton path is chosen (one host-device
            synchronisation; ``sampling="center"`` bases are radial, ``sampling="area"`` ones from ``k = 11`` in 2D /
            ``k = 7`` in 3D are not). Pass a bool to skip the check (:class:`~monai_gmr.nn.GMRConv` does).

    Returns:
        output of shape ``(B, C_out) + spatial_out``.
    """
    d = x.ndim - 2
    if d not in (2, 3):
        raise ValueError(f"input must have 2 or 3 spatial dims, got input shape {tuple(x.shape)}.")
    if not (x.is_floating_point() or x.is_complex()):
        # the kernel is cast to the input's dtype (_match): an integer input would truncate the kernel, often to 0
        raise ValueError(
            f"input must be a floating-point tensor, got input dtype {x.dtype}; convert it first (e.g. x.float())."
        )
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got padding_mode={padding_mode!r}.")
    if basis is None and (kernel is None or impl != "dense"):
        raise ValueError("gmr_conv needs basis unless a dense kernel is given with impl='dense'.")
    _check_shapes(x, weight, basis, kernel, bias, padding, groups)
    requested = impl
    k = (kernel if kernel is not None else basis).shape[-1]
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if impl == "auto":
        impl = select_impl(impl, x.device, d, k, x.shape[1], needs_grad, groups=groups)
    if impl == "triton":  # fused kernels (issue 7); unsupported calls fall back (see triton_conv.resolve_triton)
        if radial is None:  # a direct caller with an unknown basis: the shell kernels would silently be wrong on it
            # a basis is_radial_basis cannot read (even or non-cubic k) is not treated as radial: the call falls back
            # as it did before the check existed, instead of raising
            cubic = basis is not None and basis.ndim == d + 1 and all(s == k for s in basis.shape[1:]) and k % 2 == 1
            radial = basis is None or (cubic and is_radial_basis(basis))
        impl = resolve_triton(
            requested, x, k, stride, padding, dilation, groups, padding_mode, needs_grad, basis is not None, radial,
            out_channels=weight.shape[0], tensors=(weight, basis, bias),
        )
        if impl == "triton":
            # the kernels read weight, basis and bias without bounds: channel counts, rings and bias were checked by
            # _check_shapes above (groups is 1 here); the basis must also be cubic, (n,) + (k,) * d
            if any(s != k for s in basis.shape[1:]):
                raise ValueError(
                    f"basis must have shape (n,) + (k,) * {d} for an input with {d} spatial dims, got basis shape "
                    f"{tuple(basis.shape)}."
                )
            key = (x.device.type, d, k, str(_compute_dtype(x)))
            if key not in _TRITON_FAILED:
                try:
                    return gmr_conv_triton(x, weight, basis, bias, circular=circular)
                except torch.OutOfMemoryError:  # this batch does not fit: not a kernel failure, the dense path would
                    raise  # need as much memory, and the kernels must stay enabled for the calls that fit
                except Exception as e:  # compile / launch failure on this GPU: fall back, never crash a forward pass
                    if os.environ.get(TRITON_STRICT_ENV) == "1":  # tests and benchmarks: a fallback would pass as Triton
                        raise
                    _TRITON_FAILED.add(key)
                    logger.warning("impl='triton' failed for %s (%s: %s); using the dense/rings path from now on.",
                                   key, type(e).__name__, e)  # fmt: skip
            impl = select_impl("auto", x.device, d, k, x.shape[1], needs_grad, allow_triton=False, groups=groups)
    pad = [int(padding)] * d if _is_int(padding) else list(padding)  # NumPy ints too, as in F.conv2d
    if padding_mode != "zeros" and any(pad):
        x = _pad(x, pad, padding_mode)
        pad = [0] * d
    conv = conv_nd(d)
    if impl == "dense":
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
