"""Fused Triton GMR convolution (``impl="triton"``): forward and backward, 2D and 3D.

A GMR kernel is radially symmetric: it takes one value per *shell* of kernel offsets with equal squared length
``|p|^2``. So, per output pixel ``p``::

    out[b, o, p] = bias[o] + sum_s sum_c S_s[b, c, p] * W[s, c, o]
    S_s[b, c, p] = sum_{q in shell s} x[b, c, p + q]                     (zero outside the image: "same" padding)
    W[s, c, o]   = sum_i w[o, c, i] * G_i(q_s)                           (q_s: any offset of shell s)

9x9 (circular support) has 69 offsets in 13 shells, so the tensor-core work is 13 instead of 81 (dense) channel
mixings per pixel; the shell sums are cheap CUDA-core adds. ``W`` is computed in PyTorch from the ring weights and
the basis tensor (a tiny, differentiable product), so autograd carries the gradient of ``W`` back to the ring
weights *and* ``log sigma`` for free; it equals what :func:`synthesize_kernel` produces offset by offset.

Kernels (never materialising a ``k^d``- or ``n``-times intermediate in global memory):

- forward (``_gmr_fwd``): one program per (batch, spatial tile of ``BLOCK_D*BLOCK_H*BLOCK_W`` pixels, block of
  ``BLOCK_CO`` output channels). It loops over shells and blocks of ``BLOCK_CI`` input channels, sums the
  shell in fp32 registers from masked (zero-padded) loads, two mirrored offsets ``+q, -q`` per step, casts the sum
  to the compute dtype and accumulates ``W[s]^T @ S_s`` with ``tl.dot`` (tensor cores) in fp32.
- input gradient: shells are symmetric under ``q -> -q``, so ``grad_x`` is the same forward kernel applied to
  ``grad_out`` with ``W[s]`` transposed (a strided view, no copy).
- weight gradient (``_gmr_wgrad``): ``grad_W[s] = sum_{b, p} S_s[:, p] grad_out[:, p]^T``; one program per
  (channel block pair, pixel chunk, shell) reduces its chunk with ``tl.dot`` into an fp32 partial; the partials
  are summed in PyTorch (deterministic, no atomics).
- bias: added in the forward epilogue; its gradient is a PyTorch sum of ``grad_out``.

Precision: shell sums and accumulation are fp32. float32 inputs use TF32 tensor cores when cuDNN convolutions may
(``torch.backends.cudnn.conv.fp32_precision``, or the legacy ``torch.backends.cudnn.allow_tf32``: PyTorch's default,
the same rule cuDNN follows for the dense impl),
with the operands rounded to nearest TF32 in registers (Triton's TF32 path otherwise truncates); exact fp32 FMA
dots (``input_precision="ieee"``) otherwise. bf16/fp16 (explicit, or under ``torch.autocast``) feed the tensor
cores with the shell sums rounded once to the compute dtype in the forward and input-gradient kernels; the weight
gradient uses TF32 dots of the fp32 shell sums with the (exactly widened) ``grad_out`` for every input dtype,
accumulated and returned in fp32 (bf16 operands failed the 1e-2 bound on the log-sigma gradient).

Variants (:data:`VARIANT`): "unrolled" kernels are generated per (k, dims, support) with every offset a constant;
"loop" kernels read the offsets from a table; "auto" (default) picks per kind from the H100 measurements.

Measured (H100, docs/benchmarks_triton.md): at (32, 128, 64, 64) k = 9, forward + backward 1.3x faster than cuDNN
dense k = 9 (bf16 and fp32); 3D (2, 32, 48^3) k = 7 2.4x (bf16) / 4.2x (fp32); slower than cuDNN at k = 3.

Support: 2D and 3D, odd k, stride 1, "same" zero padding (``padding == (k - 1) // 2``), dilation 1, groups 1, float32 /
float16 / bfloat16 on CUDA. The basis must be radially symmetric (as :func:`ring_basis` makes it with
``sampling="center"``; ``gmr_conv`` checks an unknown basis with :func:`.basis.is_radial_basis`); only one offset
per shell is read. Anything else falls back (see :func:`triton_unsupported_reason` and
``monai_gmr.functional.conv.gmr_conv``). On CPU tensors the kernels run only under Triton's interpreter (set the
environment variable ``TRITON_INTERPRET=1``; slow, for tests), in float32 / float16: bfloat16 falls back there (the
interpreter's ``tl.dot`` returns garbage for bfloat16 operands). Triton is imported lazily: this module imports
without it.

Memory layout: the shifted loads of the shell sums vectorise only along the channel dimension, so by default
(``LAYOUT = "channels_last"``) the input and ``grad_out`` are converted to channels-last once per call (a no-op
when the model already runs channels-last); outputs keep the input's memory format. See docs/triton_notes.md.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD

__all__ = [
    "SUPPORTED_DTYPES",
    "LAYOUT",
    "VARIANT",
    "ShellTable",
    "shell_table",
    "shell_weights",
    "triton_available",
    "triton_unsupported_reason",
    "gmr_conv_triton",
    "triton_forward",
    "triton_weight_grad",
    "config_override",
    "resolve_triton",
]

logger = logging.getLogger(__name__)

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# "channels_last": convert input / grad_out to channels-last for the kernels (vectorised shifted loads);
# "native": run on the tensors' own strides. Chosen from the device measurements in docs/triton_notes.md.
LAYOUT = "channels_last"

# Debug switch for tests: allocate every kernel output with NaN instead of torch.empty, so that an element the
# kernels fail to write shows up as NaN in the results.
_POISON = False

# Per-kernel launch-configuration overrides ("fwd" / "wgrad" -> dict), used by scripts/bench_triton.py to sweep.
_CONFIG_OVERRIDE: dict[str, dict] = {}

_OFF_BIAS = 128  # offsets are packed as 3 x 8 bits: ((dz + 128) << 16) | ((dy + 128) << 8) | (dx + 128)


class config_override:
    """Context manager overriding launch configurations, e.g. ``config_override(fwd=dict(BLOCK_CI=64))``."""

    def __init__(self, **kw: dict) -> None:
        self.kw = kw
        self.saved: dict[str, dict] = {}

    def __enter__(self) -> "config_override":
        self.saved = dict(_CONFIG_OVERRIDE)
        _CONFIG_OVERRIDE.update(self.kw)
        return self

    def __exit__(self, *exc) -> None:
        _CONFIG_OVERRIDE.clear()
        _CONFIG_OVERRIDE.update(self.saved)


# ---------------------------------------------------------------------------------------------------- availability
@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether ``triton`` can be imported (imported lazily, once)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # autocast casts float32 / float16 / bfloat16 tensors only: a float64 convolution stays float64 under autocast
    if torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def triton_unsupported_reason(
    x: torch.Tensor,
    kernel_size: int,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    out_channels: int | None = None,
    tensors: Sequence[torch.Tensor | None] = (),
) -> str | None:
    """Why ``impl="triton"`` cannot run this convolution, or ``None`` when it can.

    Supported: CUDA tensors (CPU tensors only under ``TRITON_INTERPRET=1``, and not in bfloat16: the interpreter's
    ``tl.dot`` is wrong for bfloat16 operands), 2 or 3 spatial dims, float32 / float16 / bfloat16 (after autocast),
    odd kernel size, stride 1, dilation 1, groups 1, "same" zero padding, and
    fewer than ``2**31`` elements in one input sample and (given ``out_channels``) one output sample: the kernels
    index within a sample in int32. The kernels' autograd function has a reverse-mode backward only: inside a
    ``torch.func`` transform (``vmap``, ``grad``, ...) or with forward-mode AD tangents on ``x`` or ``tensors`` (the
    caller's weight, basis, bias) the call falls back; they raised in the kernels' function before, which
    ``gmr_conv`` took for a kernel failure and turned the kernels off for the rest of the process.
    """
    d = x.ndim - 2
    if d not in (2, 3):
        return f"input has {d} spatial dims"
    dt = _compute_dtype(x)
    if dt not in SUPPORTED_DTYPES:
        return f"dtype {dt}"
    if torch._C._are_functorch_transforms_active():
        return "a torch.func transform (vmap, grad, ...) is active; the kernels support reverse-mode autograd only"
    if any(t is not None and fwAD.unpack_dual(t).tangent is not None for t in (x, *tensors)):
        return "forward-mode AD (a dual tensor); the kernels support reverse-mode autograd only"

    def _all(v, val):
        return all(int(e) == val for e in (v if isinstance(v, (tuple, list)) else [v] * d))

    # call arguments first (they do not depend on the installation), then installation and device
    if kernel_size % 2 == 0:  # the shell table centres the offsets on a pixel: an even k has no centre
        return f"kernel_size={kernel_size} is even"
    if not _all(stride, 1):
        return f"stride={stride}"
    if not _all(dilation, 1):
        return f"dilation={dilation}"
    if groups != 1:
        return f"groups={groups}"
    if not _all(padding, (kernel_size - 1) // 2):
        return f"padding={padding} is not 'same' for kernel_size={kernel_size}"
    if padding_mode != "zeros" and kernel_size > 1:
        return f"padding_mode={padding_mode!r}"
    if not triton_available():
        return "triton is not installed"
    if x.device.type == "cpu":
        if not _interpret_requested():
            return "CPU tensor (the Triton kernels run on CUDA; on CPU only under TRITON_INTERPRET=1)"
        if dt == torch.bfloat16:  # the interpreter's tl.dot on bf16 operands returned ~1e10 for unit-size inputs
            return "bfloat16 in Triton's CPU interpreter (its tl.dot gives wrong values for bfloat16 operands)"
    elif x.device.type != "cuda":
        return f"device {x.device.type!r}"
    if kernel_size > 2 * (_OFF_BIAS - 1) + 1:
        return f"kernel_size={kernel_size} is too large"
    if x.numel() and x[0].numel() >= 2**31:
        return "one sample has >= 2**31 elements"
    if x.numel() and out_channels is not None and out_channels * math.prod(x.shape[2:]) >= 2**31:
        return "one output sample has >= 2**31 elements"
    return None


# ---------------------------------------------------------------------------------------------------- shell table
@dataclass(frozen=True)
class ShellTable:
    """Kernel offsets grouped into shells of equal ``|q|^2``.

    Attributes:
        kernel_size, spatial_dims, circular: the geometry.
        sq_radius: ``|q|^2`` of every shell, ascending (``sq_radius[0] == 0``: the centre).
        codes: for shells ``s >= 1``, one offset of every mirrored pair ``(+q, -q)``, packed as
            ``((dz + 128) << 16) | ((dy + 128) << 8) | (dx + 128)`` (``dz = 0`` in 2D).
        starts: ``starts[s]:starts[s + 1]`` indexes the pairs of shell ``s`` in ``codes`` (shell 0 has none).
        rep_index: flat index into the ``(k,) * d`` kernel grid of one offset of every shell.
        num_offsets: offsets in the support.
    """

    kernel_size: int
    spatial_dims: int
    circular: bool
    sq_radius: tuple[int, ...]
    codes: tuple[int, ...]
    starts: tuple[int, ...]
    rep_index: tuple[int, ...]
    num_offsets: int

    @property
    def num_shells(self) -> int:
        return len(self.sq_radius)


@functools.lru_cache(maxsize=None)
def shell_table(kernel_size: int, spatial_dims: int, circular: bool = True) -> ShellTable:
    """Group the offsets of a ``k^d`` kernel into shells of equal squared length.

    ``circular=True`` keeps the offsets of :func:`support_mask` (``|q| <= k // 2 + 0.5``, i.e. ``|q|^2 <= r^2 + r``
    for integer ``|q|^2``); ``circular=False`` keeps the whole cube.
    """
    k, d = int(kernel_size), int(spatial_dims)
    r = k // 2
    rng = range(-r, r + 1)
    offs = [(0,) * (3 - d) + q for q in _product(rng, d)]
    if circular:
        offs = [q for q in offs if sum(c * c for c in q) <= r * r + r]
    by_sq: dict[int, list[tuple[int, int, int]]] = {}
    for q in offs:
        by_sq.setdefault(sum(c * c for c in q), []).append(q)
    sq = tuple(sorted(by_sq))
    codes: list[int] = []
    starts = [0, 0]
    rep: list[int] = []
    for s2 in sq:
        shell = by_sq[s2]
        q0 = shell[0] if s2 == 0 else max(shell)
        flat = 0
        for c in q0[3 - d :]:
            flat = flat * k + (c + r)
        rep.append(flat)
        if s2 == 0:
            continue
        half = [q for q in shell if q > (0, 0, 0)]  # lexicographically positive: one of each (+q, -q) pair
        if 2 * len(half) != len(shell):
            raise AssertionError(f"shell |q|^2={s2} is not symmetric under q -> -q")
        for dz, dy, dx in half:
            codes.append(((dz + _OFF_BIAS) << 16) | ((dy + _OFF_BIAS) << 8) | (dx + _OFF_BIAS))
        starts.append(len(codes))
    return ShellTable(k, d, bool(circular), sq, tuple(codes), tuple(starts[: len(sq) + 1]), tuple(rep), len(offs))


def _product(rng: range, d: int) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for _ in range(d):
        out = [q + (c,) for q in out for c in rng]
    return out


_TABLE_TENSORS: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _table_tensors(table: ShellTable, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes int32, starts int32, rep_index int64) on ``device``, cached."""
    key = (table.kernel_size, table.spatial_dims, table.circular, str(device))
    hit = _TABLE_TENSORS.get(key)
    if hit is None:
        # normal tensors even when first built under torch.inference_mode(): shell_weights' index_select saves
        # ``rep`` for backward, and an inference tensor there made every later training call fail (and fall back)
        with torch.inference_mode(False):
            codes = torch.tensor(list(table.codes) or [0], dtype=torch.int32, device=device)
            starts = torch.tensor(table.starts, dtype=torch.int32, device=device)
            rep = torch.tensor(table.rep_index, dtype=torch.int64, device=device)
        hit = _TABLE_TENSORS[key] = (codes, starts, rep)
    return hit


def shell_weights(weight: torch.Tensor, basis: torch.Tensor, table: ShellTable) -> torch.Tensor:
    """Shell weights ``W[s, c, o] = sum_i weight[o, c, i] * basis[i, q_s]`` in float32 (differentiable).

    Args:
        weight: ring weights ``(C_out, C_in, n)``.
        basis: ring basis ``(n,) + (k,) * d`` (radially symmetric).
        table: the kernel's :class:`ShellTable`.

    Returns:
        ``(num_shells, C_in, C_out)`` float32.
    """
    n = basis.shape[0]
    rep = _table_tensors(table, basis.device)[2]
    with torch.autocast(device_type=weight.device.type, enabled=False):
        g = basis.reshape(n, -1).float().index_select(1, rep)  # (n, S)
        w = torch.matmul(weight.float().reshape(-1, n), g)  # (C_out * C_in, S)
        return w.reshape(weight.shape[0], weight.shape[1], -1).permute(2, 1, 0).contiguous()


# ---------------------------------------------------------------------------------------------------- kernels
_KERNELS: dict[tuple, object] = {}

# "unrolled": kernels generated per (k, spatial dims, support) with every offset a compile-time constant (no table
# loads, all loads of a shell in flight at once); "loop": one kernel for every k, reading the offsets from a table;
# "auto": unrolled, except the 3D forward / input-gradient kernel, where the loop kernel was faster on the H100
# (kernel alone, (2, 32, 48^3), k = 7: 0.265 vs 0.342 ms bf16, 0.422 vs 0.573 ms fp32; docs/triton_notes.md).
# Tables with more than UNROLL_MAX_OFFSETS offsets always use "loop".
VARIANT = "auto"
UNROLL_MAX_OFFSETS = 400


def _with_interpret_env(interpret: bool, build):
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"  # read by triton.jit at decoration time
    try:
        return build()
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


def _kernels(interpret: bool, table: ShellTable | None = None, kind: str = "fwd"):
    """The jitted kernels ``{"fwd", "wgrad"}``, compiled or for Triton's CPU interpreter, built once each.

    With ``table``, the variant :data:`VARIANT` picks for ``kind`` (kernels specialised to the table when
    "unrolled"); else the table-driven ones.
    """
    variant = VARIANT
    if variant == "auto":
        variant = "loop" if (kind == "fwd" and table is not None and table.spatial_dims == 3) else "unrolled"
    unrolled = table is not None and variant == "unrolled" and table.num_offsets <= UNROLL_MAX_OFFSETS
    key = (interpret, table if unrolled else None)
    ns = _KERNELS.get(key)
    if ns is None:
        build = (lambda: _define_unrolled_kernels(table)) if unrolled else _define_kernels
        ns = _KERNELS[key] = _with_interpret_env(interpret, build)
    return ns


def _import_triton():
    global triton, tl  # module globals, so that the jitted functions resolve them
    import triton
    import triton.language as tl

    return triton, tl


_FWD_ARGS = """
    x_ptr, w_ptr, b_ptr, o_ptr, code_ptr, start_ptr,
    C_in, C_out, D, H, W, n_shells, n_td, n_th, n_tw,
    sxb, sxc, sxd, sxh, sxw,
    sws, swi, swo,
    sob, soc, sod, soh, sow,
    HAS_BIAS: tl.constexpr, IS_3D: tl.constexpr, ROUND_TF32: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
"""

_WGRAD_ARGS = """
    x_ptr, g_ptr, part_ptr, code_ptr, start_ptr,
    C_in, C_out, D, H, W, n_td, n_th, n_tw, total_tiles, tiles_per_chunk, n_ci_blk,
    sxb, sxc, sxd, sxh, sxw,
    sgb, sgc, sgd, sgh, sgw,
    spk, sps, spi, spo,
    IS_3D: tl.constexpr, ROUND_TF32: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
"""

# integer arguments whose value-based specialisation (== 1, divisible by 16) buys nothing: not specialising them
# keeps the number of compiled variants down. Channel counts and spatial sizes MUST stay specialised: the masks
# `ci < C_in`, `co < C_out`, `w < W` are only known to be constant over a vector when the compiler knows their
# divisibility, and without that every load and store is split into 2-byte accesses (seen on the H100: 8x slower).
_NO_SPEC_FWD = ["n_shells", "n_td", "n_th", "n_tw"]
_NO_SPEC_WGRAD = ["n_td", "n_th", "n_tw", "total_tiles", "tiles_per_chunk", "n_ci_blk"]

_RND = "(({v}).to(tl.int32, bitcast=True) + 0x1000 & -8192).to(tl.float32, bitcast=True)"


def _shell_offsets(table: ShellTable) -> list[list[tuple[int, int, int]]]:
    """All offsets (dz, dy, dx) of every shell, both signs (shell 0: the centre)."""
    out: list[list[tuple[int, int, int]]] = [[(0, 0, 0)]]
    for s in range(1, table.num_shells):
        shell = []
        for code in table.codes[table.starts[s] : table.starts[s + 1]]:
            q = ((code >> 16) - _OFF_BIAS, ((code >> 8) & 255) - _OFF_BIAS, (code & 255) - _OFF_BIAS)
            shell += [q, (-q[0], -q[1], -q[2])]
        out.append(shell)
    return out


def _tag(v: int) -> str:
    return f"p{v}" if v >= 0 else f"m{-v}"


def _mask_lines_for(shell: list[tuple[int, int, int]], is3d: bool, indent: str) -> list[str]:
    """Validity of the shifted pixel coordinates for the shifts one shell uses."""
    lines = []
    seen: set[str] = set()
    for q in shell:
        for axis, v, coord, size in (("d", q[0], "pd", "D"), ("h", q[1], "ph", "H"), ("w", q[2], "pw", "W")):
            if axis == "d" and not is3d:
                continue
            name = f"m{axis}_{_tag(v)}"
            if name not in seen:
                seen.add(name)
                lines.append(f"{indent}{name} = ({coord} + ({v}) >= 0) & ({coord} + ({v}) < {size})")
    return lines


def _loop_shell_lines(table: ShellTable, s: int, is3d: bool, indent: str) -> list[str]:
    """``S = sum_q x[p + q]`` over a large shell as a run-time loop over its mirrored pairs (bounded registers)."""
    i2 = indent + " " * 4
    lines = [
        f"{indent}S = tl.full((BLOCK_CI, BLOCK_P), 0.0, tl.float32)",
        f"{indent}for j in range({table.starts[s]}, {table.starts[s + 1]}):",
        f"{i2}code = tl.load(code_ptr + j)",
        f"{i2}dx = (code & 255) - 128",
        f"{i2}dy = ((code >> 8) & 255) - 128",
        f"{i2}m1 = (ph + dy >= 0) & (ph + dy < H) & (pw + dx >= 0) & (pw + dx < W)",
        f"{i2}m2 = (ph - dy >= 0) & (ph - dy < H) & (pw - dx >= 0) & (pw - dx < W)",
        f"{i2}o1 = pix + dy * sxh + dx * sxw",
        f"{i2}o2 = pix - dy * sxh - dx * sxw",
    ]
    if is3d:
        lines += [
            f"{i2}dz = ((code >> 16) & 255) - 128",
            f"{i2}m1 = m1 & (pd + dz >= 0) & (pd + dz < D)",
            f"{i2}m2 = m2 & (pd - dz >= 0) & (pd - dz < D)",
            f"{i2}o1 += dz * sxd",
            f"{i2}o2 -= dz * sxd",
        ]
    lines += [
        f"{i2}v1 = tl.load(x_c + o1[None, :], mask=cm & m1[None, :], other=0.0)",
        f"{i2}v2 = tl.load(x_c + o2[None, :], mask=cm & m2[None, :], other=0.0)",
        f"{i2}S += v1.to(tl.float32) + v2.to(tl.float32)",
    ]
    return lines


# Shells with more offsets than this are summed by a run-time loop inside the unrolled kernels: unrolling them
# puts every load in flight at once and spills registers (seen in the sm_90 resource report for 3D k = 7).
UNROLL_MAX_SHELL = 8


def _shell_sum_lines(shell: list[tuple[int, int, int]], is3d: bool, indent: str, target: str = "S") -> list[str]:
    """``target = sum_q x[p + q]`` over a shell, in fp32, every offset a constant."""
    lines = []
    for i, (dz, dy, dx) in enumerate(shell):
        m = f"mh_{_tag(dy)} & mw_{_tag(dx)}" + (f" & md_{_tag(dz)}" if is3d else "")
        off = f"pix + ({dy}) * sxh + ({dx}) * sxw" + (f" + ({dz}) * sxd" if is3d else "")
        op = "=" if i == 0 else "+="
        lines.append(
            f"{indent}{target} {op} tl.load(x_c + ({off})[None, :], mask=cm & ({m})[None, :], other=0.0).to(tl.float32)"
        )
    return lines


def _gen_fwd_source(table: ShellTable, name: str) -> str:
    is3d = table.spatial_dims == 3
    shells = _shell_offsets(table)
    i1, i2, i3 = " " * 4, " " * 8, " " * 12
    L = [f"@triton.jit(do_not_specialize={_NO_SPEC_FWD!r})", f"def {name}({_FWD_ARGS}):"]
    L += [
        f"{i1}BLOCK_P: tl.constexpr = BLOCK_D * BLOCK_H * BLOCK_W",
        f"{i1}pid = tl.program_id(0)",
        f"{i1}pid_co = tl.program_id(1)",
        f"{i1}n_tiles = n_td * n_th * n_tw",
        f"{i1}b = pid // n_tiles",
        f"{i1}t = pid % n_tiles",
        f"{i1}tw = t % n_tw",
        f"{i1}th = (t // n_tw) % n_th",
        f"{i1}td = t // (n_tw * n_th)",
        f"{i1}pp = tl.arange(0, BLOCK_P)",
        f"{i1}pw = tw * BLOCK_W + pp % BLOCK_W",
        f"{i1}ph = th * BLOCK_H + (pp // BLOCK_W) % BLOCK_H",
        f"{i1}pd = td * BLOCK_D + pp // (BLOCK_W * BLOCK_H)",
        f"{i1}p_ok = (pw < W) & (ph < H) & (pd < D)",
        f"{i1}pix = pd * sxd + ph * sxh + pw * sxw",
        f"{i1}co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)",
        f"{i1}co_ok = co < C_out",
        f"{i1}x_b = x_ptr + b.to(tl.int64) * sxb",
    ]
    L.append(f"{i1}acc = tl.full((BLOCK_CO, BLOCK_P), 0.0, tl.float32)")
    # shells outer, channel blocks inner: only one shell's masks and offsets are live at a time
    for s, shell in enumerate(shells):
        L.append(f"{i1}# shell {s}: |q|^2 = {table.sq_radius[s]}, {len(shell)} offsets")
        if len(shell) <= UNROLL_MAX_SHELL:
            L += _mask_lines_for(shell, is3d, i1)
        L += [
            f"{i1}for ci0 in range(0, C_in, BLOCK_CI):",
            f"{i2}ci = ci0 + tl.arange(0, BLOCK_CI)",
            f"{i2}ci_ok = ci < C_in",
            f"{i2}cm = ci_ok[:, None]",
            f"{i2}x_c = x_b + ci[:, None] * sxc",
        ]
        if s == 0:
            L.append(f"{i2}S = tl.load(x_c + pix[None, :], mask=cm & p_ok[None, :], other=0.0)")
        elif len(shell) > UNROLL_MAX_SHELL:
            L += _loop_shell_lines(table, s, is3d, i2)
        else:
            L += _shell_sum_lines(shell, is3d, i2)
        L += [
            f"{i2}if ROUND_TF32:",
            f"{i3}S = {_RND.format(v='S')}",
            f"{i2}wt = tl.load(w_ptr + {s} * sws + co[:, None] * swo + ci[None, :] * swi,"
            f" mask=co_ok[:, None] & ci_ok[None, :], other=0.0)",
            f"{i2}acc = tl.dot(wt, S.to(wt.dtype), acc, input_precision=DOT_PREC)",
        ]
    L += [
        f"{i1}if HAS_BIAS:",
        f"{i2}acc += tl.load(b_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[:, None]",
        f"{i1}o = o_ptr + b.to(tl.int64) * sob + co[:, None] * soc + (pd * sod + ph * soh + pw * sow)[None, :]",
        f"{i1}tl.store(o, acc.to(o_ptr.dtype.element_ty), mask=co_ok[:, None] & p_ok[None, :])",
    ]
    return "\n".join(L) + "\n"


def _gen_wgrad_source(table: ShellTable, name: str) -> str:
    is3d = table.spatial_dims == 3
    shells = _shell_offsets(table)
    i1, i2, i3, i4 = " " * 4, " " * 8, " " * 12, " " * 16
    L = [f"@triton.jit(do_not_specialize={_NO_SPEC_WGRAD!r})", f"def {name}({_WGRAD_ARGS}):"]
    L += [
        f"{i1}BLOCK_P: tl.constexpr = BLOCK_D * BLOCK_H * BLOCK_W",
        f"{i1}pid0 = tl.program_id(0)",
        f"{i1}chunk = tl.program_id(1)",
        f"{i1}s = tl.program_id(2)",
        f"{i1}pid_ci = pid0 % n_ci_blk",
        f"{i1}pid_co = pid0 // n_ci_blk",
        f"{i1}ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)",
        f"{i1}ci_ok = ci < C_in",
        f"{i1}cm = ci_ok[:, None]",
        f"{i1}co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)",
        f"{i1}co_ok = co < C_out",
        f"{i1}pp = tl.arange(0, BLOCK_P)",
        f"{i1}n_tiles = n_td * n_th * n_tw",
        f"{i1}acc = tl.full((BLOCK_CI, BLOCK_CO), 0.0, tl.float32)",
        f"{i1}t_lo = chunk * tiles_per_chunk",
        f"{i1}t_hi = tl.minimum(t_lo + tiles_per_chunk, total_tiles)",
        f"{i1}for tt in range(t_lo, t_hi):",
        f"{i2}b = tt // n_tiles",
        f"{i2}t = tt % n_tiles",
        f"{i2}tw = t % n_tw",
        f"{i2}th = (t // n_tw) % n_th",
        f"{i2}td = t // (n_tw * n_th)",
        f"{i2}pw = tw * BLOCK_W + pp % BLOCK_W",
        f"{i2}ph = th * BLOCK_H + (pp // BLOCK_W) % BLOCK_H",
        f"{i2}pd = td * BLOCK_D + pp // (BLOCK_W * BLOCK_H)",
        f"{i2}p_ok = (pw < W) & (ph < H) & (pd < D)",
        f"{i2}pix = pd * sxd + ph * sxh + pw * sxw",
        f"{i2}x_c = x_ptr + b.to(tl.int64) * sxb + ci[:, None] * sxc",
    ]
    L.append(f"{i2}S = tl.full((BLOCK_CI, BLOCK_P), 0.0, tl.float32)")
    for s, shell in enumerate(shells):
        L.append(f"{i2}{'if' if s == 0 else 'elif'} s == {s}:  # |q|^2 = {table.sq_radius[s]}")
        if s == 0:
            L.append(f"{i3}S = tl.load(x_c + pix[None, :], mask=cm & p_ok[None, :], other=0.0).to(tl.float32)")
        elif len(shell) > UNROLL_MAX_SHELL:
            L += _loop_shell_lines(table, s, is3d, i3)
        else:
            L += _mask_lines_for(shell, is3d, i3)
            L += _shell_sum_lines(shell, is3d, i3)
    L += [
        f"{i2}gp = g_ptr + b.to(tl.int64) * sgb + co[None, :] * sgc + (pd * sgd + ph * sgh + pw * sgw)[:, None]",
        f"{i2}gt = tl.load(gp, mask=p_ok[:, None] & co_ok[None, :], other=0.0)",
        f"{i2}if ROUND_TF32:",
        f"{i3}gt = gt.to(tl.float32)",
        f"{i3}S = {_RND.format(v='S')}",
        f"{i3}gt = {_RND.format(v='gt')}",
        f"{i2}acc = tl.dot(S.to(gt.dtype), gt, acc, input_precision=DOT_PREC)",
        f"{i1}pp_out = part_ptr + chunk.to(tl.int64) * spk + s * sps + ci[:, None] * spi + co[None, :] * spo",
        f"{i1}tl.store(pp_out, acc, mask=ci_ok[:, None] & co_ok[None, :])",
    ]
    del i4
    return "\n".join(L) + "\n"


def _jit_source(src: str, name: str):
    """``triton.jit`` a generated kernel. Its source is registered in ``linecache`` (Triton and its interpreter read
    kernel sources through ``inspect``); nothing is written to disk."""
    import hashlib
    import linecache

    triton, tl = _import_triton()
    filename = f"<monai_gmr.triton_conv:{name}:{hashlib.sha1(src.encode()).hexdigest()[:12]}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    namespace = {"triton": triton, "tl": tl, "__name__": __name__}
    exec(compile(src, filename, "exec"), namespace)  # noqa: S102 - our own generated kernel source
    return namespace[name]


def _define_unrolled_kernels(table: ShellTable):
    tag = f"k{table.kernel_size}_d{table.spatial_dims}_{'c' if table.circular else 'f'}"
    return {
        "fwd": _jit_source(_gen_fwd_source(table, f"_gmr_fwd_{tag}"), f"_gmr_fwd_{tag}"),
        "wgrad": _jit_source(_gen_wgrad_source(table, f"_gmr_wgrad_{tag}"), f"_gmr_wgrad_{tag}"),
    }


def _define_kernels():  # noqa: C901 - the kernels are long by nature
    global triton, tl  # module globals (set by _import_triton), resolved by the jitted functions
    _import_triton()

    @triton.jit(do_not_specialize=_NO_SPEC_FWD)
    def _gmr_fwd(
        x_ptr, w_ptr, b_ptr, o_ptr, code_ptr, start_ptr,
        C_in, C_out, D, H, W, n_shells, n_td, n_th, n_tw,
        sxb, sxc, sxd, sxh, sxw,
        sws, swi, swo,
        sob, soc, sod, soh, sow,
        HAS_BIAS: tl.constexpr, IS_3D: tl.constexpr, ROUND_TF32: tl.constexpr, DOT_PREC: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
        BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
    ):  # fmt: skip
        BLOCK_P: tl.constexpr = BLOCK_D * BLOCK_H * BLOCK_W
        pid = tl.program_id(0)
        pid_co = tl.program_id(1)
        n_tiles = n_td * n_th * n_tw
        b = pid // n_tiles
        t = pid % n_tiles
        tw = t % n_tw
        th = (t // n_tw) % n_th
        td = t // (n_tw * n_th)
        pp = tl.arange(0, BLOCK_P)
        pw = tw * BLOCK_W + pp % BLOCK_W
        ph = th * BLOCK_H + (pp // BLOCK_W) % BLOCK_H
        pd = td * BLOCK_D + pp // (BLOCK_W * BLOCK_H)
        p_ok = (pw < W) & (ph < H) & (pd < D)
        pix = pd * sxd + ph * sxh + pw * sxw
        co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
        co_ok = co < C_out
        x_b = x_ptr + b.to(tl.int64) * sxb
        acc = tl.full((BLOCK_CO, BLOCK_P), 0.0, tl.float32)
        for ci0 in range(0, C_in, BLOCK_CI):
            ci = ci0 + tl.arange(0, BLOCK_CI)
            ci_ok = ci < C_in
            x_c = x_b + ci[:, None] * sxc
            w_c = w_ptr + co[:, None] * swo + ci[None, :] * swi
            w_ok = co_ok[:, None] & ci_ok[None, :]
            # shell 0: the centre
            v = tl.load(x_c + pix[None, :], mask=ci_ok[:, None] & p_ok[None, :], other=0.0)
            wt = tl.load(w_c, mask=w_ok, other=0.0)
            if ROUND_TF32:
                v = (v.to(tl.int32, bitcast=True) + 0x1000 & -8192).to(tl.float32, bitcast=True)
            acc = tl.dot(wt, v, acc, input_precision=DOT_PREC)
            for s in range(1, n_shells):
                j0 = tl.load(start_ptr + s)
                j1 = tl.load(start_ptr + s + 1)
                S = tl.full((BLOCK_CI, BLOCK_P), 0.0, tl.float32)
                for j in range(j0, j1):
                    code = tl.load(code_ptr + j)
                    dx = (code & 255) - 128
                    dy = ((code >> 8) & 255) - 128
                    h1 = ph + dy
                    w1 = pw + dx
                    h2 = ph - dy
                    w2 = pw - dx
                    m1 = (h1 >= 0) & (h1 < H) & (w1 >= 0) & (w1 < W)
                    m2 = (h2 >= 0) & (h2 < H) & (w2 >= 0) & (w2 < W)
                    o1 = h1 * sxh + w1 * sxw
                    o2 = h2 * sxh + w2 * sxw
                    if IS_3D:
                        dz = ((code >> 16) & 255) - 128
                        d1 = pd + dz
                        d2 = pd - dz
                        m1 = m1 & (d1 >= 0) & (d1 < D)
                        m2 = m2 & (d2 >= 0) & (d2 < D)
                        o1 += d1 * sxd
                        o2 += d2 * sxd
                    v1 = tl.load(x_c + o1[None, :], mask=ci_ok[:, None] & m1[None, :], other=0.0)
                    v2 = tl.load(x_c + o2[None, :], mask=ci_ok[:, None] & m2[None, :], other=0.0)
                    S += v1.to(tl.float32) + v2.to(tl.float32)
                if ROUND_TF32:
                    S = (S.to(tl.int32, bitcast=True) + 0x1000 & -8192).to(tl.float32, bitcast=True)
                wt = tl.load(w_c + s * sws, mask=w_ok, other=0.0)
                acc = tl.dot(wt, S.to(wt.dtype), acc, input_precision=DOT_PREC)
        if HAS_BIAS:
            acc += tl.load(b_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[:, None]
        o = o_ptr + b.to(tl.int64) * sob + co[:, None] * soc + (pd * sod + ph * soh + pw * sow)[None, :]
        tl.store(o, acc.to(o_ptr.dtype.element_ty), mask=co_ok[:, None] & p_ok[None, :])

    @triton.jit(do_not_specialize=_NO_SPEC_WGRAD)
    def _gmr_wgrad(
        x_ptr, g_ptr, part_ptr, code_ptr, start_ptr,
        C_in, C_out, D, H, W, n_td, n_th, n_tw, total_tiles, tiles_per_chunk, n_ci_blk,
        sxb, sxc, sxd, sxh, sxw,
        sgb, sgc, sgd, sgh, sgw,
        spk, sps, spi, spo,
        IS_3D: tl.constexpr, ROUND_TF32: tl.constexpr, DOT_PREC: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
        BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr,
    ):  # fmt: skip
        BLOCK_P: tl.constexpr = BLOCK_D * BLOCK_H * BLOCK_W
        pid0 = tl.program_id(0)
        chunk = tl.program_id(1)
        s = tl.program_id(2)
        pid_ci = pid0 % n_ci_blk
        pid_co = pid0 // n_ci_blk
        ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
        ci_ok = ci < C_in
        co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
        co_ok = co < C_out
        # shell 0 (the centre) is read as the pair (0, 0) + (0, 0) and halved (exact)
        j0 = tl.load(start_ptr + s)
        j1 = tl.load(start_ptr + s + 1)
        n_pairs = tl.maximum(j1 - j0, 1)
        is_centre = j1 == j0
        scale = tl.where(is_centre, 0.5, 1.0)
        pp = tl.arange(0, BLOCK_P)
        n_tiles = n_td * n_th * n_tw
        acc = tl.full((BLOCK_CI, BLOCK_CO), 0.0, tl.float32)
        t_lo = chunk * tiles_per_chunk
        t_hi = tl.minimum(t_lo + tiles_per_chunk, total_tiles)
        for tt in range(t_lo, t_hi):
            b = tt // n_tiles
            t = tt % n_tiles
            tw = t % n_tw
            th = (t // n_tw) % n_th
            td = t // (n_tw * n_th)
            pw = tw * BLOCK_W + pp % BLOCK_W
            ph = th * BLOCK_H + (pp // BLOCK_W) % BLOCK_H
            pd = td * BLOCK_D + pp // (BLOCK_W * BLOCK_H)
            p_ok = (pw < W) & (ph < H) & (pd < D)
            x_c = x_ptr + b.to(tl.int64) * sxb + ci[:, None] * sxc
            S = tl.full((BLOCK_CI, BLOCK_P), 0.0, tl.float32)
            for jj in range(0, n_pairs):
                code = tl.load(code_ptr + j0 + jj, mask=j0 + jj < j1, other=0x808080)
                dx = (code & 255) - 128
                dy = ((code >> 8) & 255) - 128
                h1 = ph + dy
                w1 = pw + dx
                h2 = ph - dy
                w2 = pw - dx
                m1 = (h1 >= 0) & (h1 < H) & (w1 >= 0) & (w1 < W)
                m2 = (h2 >= 0) & (h2 < H) & (w2 >= 0) & (w2 < W)
                o1 = h1 * sxh + w1 * sxw
                o2 = h2 * sxh + w2 * sxw
                if IS_3D:
                    dz = ((code >> 16) & 255) - 128
                    d1 = pd + dz
                    d2 = pd - dz
                    m1 = m1 & (d1 >= 0) & (d1 < D)
                    m2 = m2 & (d2 >= 0) & (d2 < D)
                    o1 += d1 * sxd
                    o2 += d2 * sxd
                v1 = tl.load(x_c + o1[None, :], mask=ci_ok[:, None] & m1[None, :], other=0.0)
                v2 = tl.load(x_c + o2[None, :], mask=ci_ok[:, None] & m2[None, :], other=0.0)
                S += v1.to(tl.float32) + v2.to(tl.float32)
            S = S * scale
            gp = g_ptr + b.to(tl.int64) * sgb + co[None, :] * sgc + (pd * sgd + ph * sgh + pw * sgw)[:, None]
            gt = tl.load(gp, mask=p_ok[:, None] & co_ok[None, :], other=0.0)
            if ROUND_TF32:
                gt = gt.to(tl.float32)
                S = (S.to(tl.int32, bitcast=True) + 0x1000 & -8192).to(tl.float32, bitcast=True)
                gt = (gt.to(tl.int32, bitcast=True) + 0x1000 & -8192).to(tl.float32, bitcast=True)
            acc = tl.dot(S.to(gt.dtype), gt, acc, input_precision=DOT_PREC)
        pp_out = part_ptr + chunk.to(tl.int64) * spk + s * sps + ci[:, None] * spi + co[None, :] * spo
        tl.store(pp_out, acc, mask=ci_ok[:, None] & co_ok[None, :])

    return {"fwd": _gmr_fwd, "wgrad": _gmr_wgrad}


# ---------------------------------------------------------------------------------------------------- launches
def _np2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def _plain(t: torch.Tensor | None) -> torch.Tensor | None:
    """A tensor subclass (MONAI's ``MetaTensor``) as a plain tensor for a kernel launch (same storage; Triton's
    interpreter copies kernel arguments with ``new_empty``, whose signature ``MetaTensor`` changes)."""
    return t.as_subclass(torch.Tensor) if t is not None and type(t) is not torch.Tensor else t


def _is_interp(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


def _default_config(kind: str, d: int, dtype: torch.dtype, c_in: int, c_out: int, interp: bool) -> dict:
    """Launch configuration (tiles, warps, weight-gradient chunks).

    The fastest of the configurations swept on the H100 at (32, 128, 64, 64) k = 9 and (2, 32, 48^3) k = 7 (kernel
    alone, scripts/bench_triton.py --sweep, 2026-11-22; docs/triton_notes.md), each free of register spills in the
    sm_90 compiler's report; tiny tiles in the interpreter.
    """
    if interp:
        cfg = dict(BLOCK_D=2 if d == 3 else 1, BLOCK_H=4, BLOCK_W=4 if d == 3 else 8, BLOCK_CI=16, BLOCK_CO=16)
        cfg.update(num_warps=4, num_stages=1, CHUNKS=3)
        return cfg
    low = dtype != torch.float32
    if kind == "fwd":
        if d == 2:
            # bf16: 8x8 tile, 4 warps (0.418 ms; 8x16 with 8 / 16 warps 0.444 / 0.524); fp32: 8x16, CI 16, 8 warps
            tile = dict(BLOCK_D=1, BLOCK_H=8, BLOCK_W=8, num_warps=4) if low else dict(BLOCK_D=1, BLOCK_H=8, BLOCK_W=16, num_warps=8)
            cfg = dict(tile, BLOCK_CO=min(128, max(16, _np2(c_out))))
            cfg.update(BLOCK_CI=min(32 if low else 16, max(16, _np2(c_in))), num_stages=1)
        else:
            cfg = dict(BLOCK_D=2, BLOCK_H=4, BLOCK_W=8, BLOCK_CO=min(64, max(16, _np2(c_out))), num_warps=4)
            cfg.update(BLOCK_CI=min(32, max(16, _np2(c_in))), num_stages=1)
    else:
        cap = 128 if d == 2 else 32
        cfg = dict(BLOCK_D=1, BLOCK_H=4, BLOCK_W=16) if d == 2 else dict(BLOCK_D=2, BLOCK_H=8, BLOCK_W=8)
        cfg.update(BLOCK_CI=min(cap, max(16, _np2(c_in))), BLOCK_CO=min(cap, max(16, _np2(c_out))))
        cfg.update(num_warps=8 if cfg["BLOCK_CI"] * cfg["BLOCK_CO"] >= 8192 else 4, num_stages=1, CHUNKS=0)
        # programs per SM for the weight-gradient reduction: bf16 2D 2 per SM 1.10 ms vs 8 per SM 1.42 ms
        cfg["PROGRAMS_PER_SM"] = 2 if (low and d == 2) else 8
    return cfg


def _config(kind: str, d: int, dtype: torch.dtype, c_in: int, c_out: int, interp: bool) -> dict:
    cfg = _default_config(kind, d, dtype, c_in, c_out, interp)
    if not interp:
        cfg.update(_CONFIG_OVERRIDE.get(kind, {}))
    return cfg


def _cudnn_conv_allows_tf32() -> bool:
    """Whether cuDNN convolutions may use TF32 (the rule of the dense impl), from PyTorch's per-operator
    ``fp32_precision`` flags where they exist (``torch.backends.cudnn.conv``, then ``torch.backends.cudnn``, then
    ``torch.backends``; ``"none"`` defers to the next). ``torch.backends.cudnn.allow_tf32`` raises once the conv and
    RNN flags differ (e.g. after ``torch.backends.cudnn.conv.fp32_precision = "ieee"``)."""
    cudnn = torch.backends.cudnn
    levels = (getattr(cudnn, "conv", None), cudnn, torch.backends)
    if not all(hasattr(m, "fp32_precision") for m in levels):  # older PyTorch: the legacy flag only
        return bool(cudnn.allow_tf32)
    for m in levels:
        if m.fp32_precision != "none":
            return m.fp32_precision == "tf32"
    return False


def _dot_mode(dtype: torch.dtype, interp: bool) -> tuple[bool, str]:
    """(round operands to TF32, tl.dot input_precision) for a compute dtype."""
    if dtype == torch.float32 and not interp and _cudnn_conv_allows_tf32():
        return True, "tf32"
    return False, "ieee"


def _round_tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 rounded to the nearest TF32 value (10 mantissa bits), as the kernels round their operands."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & -8192).view(torch.float32)


def _spatial(t: torch.Tensor) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(D, H, W) sizes and (d, h, w) strides of a 4D/5D tensor (D = 1, stride 0 in 2D)."""
    if t.ndim == 4:
        return (1, t.shape[2], t.shape[3]), (0, t.stride(2), t.stride(3))
    return (t.shape[2], t.shape[3], t.shape[4]), (t.stride(2), t.stride(3), t.stride(4))


def _alloc(shape, dtype, device, channels_last: bool) -> torch.Tensor:
    if channels_last:
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    else:
        fmt = torch.contiguous_format
    if _POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device).contiguous(memory_format=fmt)
    return torch.empty(shape, dtype=dtype, device=device, memory_format=fmt)


def _is_cl(t: torch.Tensor) -> bool:
    fmt = torch.channels_last if t.ndim == 4 else torch.channels_last_3d
    return t.is_contiguous(memory_format=fmt) and not t.is_contiguous()


def _to_layout(t: torch.Tensor) -> torch.Tensor:
    """The tensor in the layout the kernels read it in (see :data:`LAYOUT`)."""
    if LAYOUT == "channels_last":
        fmt = torch.channels_last if t.ndim == 4 else torch.channels_last_3d
        return t.contiguous(memory_format=fmt)
    if t.is_contiguous() or _is_cl(t):
        return t
    return t.contiguous()


def triton_forward(
    x: torch.Tensor,
    w_shell: torch.Tensor,
    table: ShellTable,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    out_channels_last: bool | None = None,
) -> torch.Tensor:
    """Launch the forward kernel: ``out[b, o, p] = bias[o] + sum_s sum_c S_s[b, c, p] * w_shell[s, c, o]``.

    Args:
        x: input ``(B, C_in) + spatial`` (any strides), dtype float32/float16/bfloat16.
        w_shell: ``(num_shells, C_in, C_out)`` in ``x.dtype`` (any strides: a transposed view gives the input
            gradient).
        table: the kernel's shell table.
        bias: optional ``(C_out,)``.
        out: optional preallocated output ``(B, C_out) + spatial`` (any strides), e.g. poisoned by a test.
        out_channels_last: memory format of a newly allocated output (default: that of ``x``).

    Returns:
        ``(B, C_out) + spatial`` in ``x.dtype``.
    """
    x, w_shell, out = _plain(x), _plain(w_shell), _plain(out)
    interp = _is_interp(x)
    k = _kernels(interp, table, "fwd")["fwd"]
    d = x.ndim - 2
    bsz, c_in = x.shape[:2]
    c_out = w_shell.shape[2]
    if out is None:
        cl = _is_cl(x) if out_channels_last is None else out_channels_last
        out = _alloc((bsz, c_out) + tuple(x.shape[2:]), x.dtype, x.device, cl)
    codes, starts, _ = _table_tensors(table, x.device)
    cfg = _config("fwd", d, x.dtype, c_in, c_out, interp)
    (D, H, W), (sxd, sxh, sxw) = _spatial(x)
    _, (sod, soh, sow) = _spatial(out)
    n_td, n_th, n_tw = (math.ceil(D / cfg["BLOCK_D"]), math.ceil(H / cfg["BLOCK_H"]), math.ceil(W / cfg["BLOCK_W"]))
    grid = (bsz * n_td * n_th * n_tw, math.ceil(c_out / cfg["BLOCK_CO"]))
    rnd, prec = _dot_mode(x.dtype, interp)
    if bsz == 0 or out.numel() == 0:
        return out
    k[grid](
        x, w_shell, bias if bias is not None else w_shell, out, codes, starts,
        c_in, c_out, D, H, W, table.num_shells, n_td, n_th, n_tw,
        x.stride(0), x.stride(1), sxd, sxh, sxw,
        w_shell.stride(0), w_shell.stride(1), w_shell.stride(2),
        out.stride(0), out.stride(1), sod, soh, sow,
        HAS_BIAS=bias is not None, IS_3D=d == 3, ROUND_TF32=rnd, DOT_PREC=prec,
        BLOCK_D=cfg["BLOCK_D"], BLOCK_H=cfg["BLOCK_H"], BLOCK_W=cfg["BLOCK_W"],
        BLOCK_CI=cfg["BLOCK_CI"], BLOCK_CO=cfg["BLOCK_CO"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return out


@functools.lru_cache(maxsize=8)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def triton_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, table: ShellTable) -> torch.Tensor:
    """Launch the weight-gradient kernel: ``grad_W[s, c, o] = sum_{b, p} S_s[b, c, p] * grad_out[b, o, p]``.

    Args:
        x: input ``(B, C_in) + spatial`` (any strides).
        grad_out: ``(B, C_out) + spatial`` in ``x.dtype`` (any strides).
        table: the kernel's shell table.

    Returns:
        ``(num_shells, C_in, C_out)`` float32.
    """
    x, grad_out = _plain(x), _plain(grad_out)
    interp = _is_interp(x)
    k = _kernels(interp, table, "wgrad")["wgrad"]
    d = x.ndim - 2
    bsz, c_in = x.shape[:2]
    c_out = grad_out.shape[1]
    S = table.num_shells
    cfg = _config("wgrad", d, x.dtype, c_in, c_out, interp)
    (D, H, W), (sxd, sxh, sxw) = _spatial(x)
    _, (sgd, sgh, sgw) = _spatial(grad_out)
    n_td, n_th, n_tw = (math.ceil(D / cfg["BLOCK_D"]), math.ceil(H / cfg["BLOCK_H"]), math.ceil(W / cfg["BLOCK_W"]))
    total = bsz * n_td * n_th * n_tw
    n_ci, n_co = math.ceil(c_in / cfg["BLOCK_CI"]), math.ceil(c_out / cfg["BLOCK_CO"])
    chunks = cfg.get("CHUNKS", 0)
    if not chunks:  # a few programs per SM (see _default_config)
        target = cfg.get("PROGRAMS_PER_SM", 8) * (_num_sms(x.device.index or 0) if x.device.type == "cuda" else 8)
        chunks = math.ceil(target / (n_ci * n_co * S))
    chunks = max(1, min(chunks, total))
    per = math.ceil(total / chunks)
    chunks = math.ceil(total / per)
    part = _alloc((chunks, S, c_in, c_out), torch.float32, x.device, False)
    if total == 0:
        return torch.zeros((S, c_in, c_out), dtype=torch.float32, device=x.device)
    codes, starts, _ = _table_tensors(table, x.device)
    rnd, prec = _dot_mode(x.dtype, interp)
    if x.dtype != torch.float32 and not interp:
        # bf16/fp16: the weight gradient sums over every pixel and feeds the log-sigma gradient, which cancels
        # strongly; a TF32 dot of the fp32 shell sums with the (exactly widened) grad_out keeps it accurate
        # (bf16 operands gave 1.02e-2 relative error on the log-sigma gradient on the H100)
        rnd, prec = True, "tf32"
    k[(n_ci * n_co, chunks, S)](
        x, grad_out, part, codes, starts,
        c_in, c_out, D, H, W, n_td, n_th, n_tw, total, per, n_ci,
        x.stride(0), x.stride(1), sxd, sxh, sxw,
        grad_out.stride(0), grad_out.stride(1), sgd, sgh, sgw,
        part.stride(0), part.stride(1), part.stride(2), part.stride(3),
        IS_3D=d == 3, ROUND_TF32=rnd, DOT_PREC=prec,
        BLOCK_D=cfg["BLOCK_D"], BLOCK_H=cfg["BLOCK_H"], BLOCK_W=cfg["BLOCK_W"],
        BLOCK_CI=cfg["BLOCK_CI"], BLOCK_CO=cfg["BLOCK_CO"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return part.sum(0) if chunks > 1 else part[0]


# ---------------------------------------------------------------------------------------------------- autograd
class _GMRTritonFunction(torch.autograd.Function):
    """``y = shell_conv(x, W) + bias`` with Triton forward, input-gradient and weight-gradient kernels."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_shell: torch.Tensor, bias: torch.Tensor | None, table: ShellTable):
        out_cl = _is_cl(x)
        xk = _to_layout(x)
        wk = w_shell.to(x.dtype)
        if _dot_mode(x.dtype, _is_interp(x))[0]:
            wk = _round_tf32(wk)
        out = triton_forward(xk, wk, table, bias, out_channels_last=out_cl)
        ctx.save_for_backward(xk, wk)
        ctx.table = table
        ctx.out_cl = out_cl
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # the kernels' gradients carry no graph: refuse a double backward
    def backward(ctx, grad_out: torch.Tensor):
        xk, wk = ctx.saved_tensors
        table = ctx.table
        g = grad_out.to(xk.dtype)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x or need_w:
            g = _to_layout(g)
        if need_x:
            grad_x = triton_forward(g, wk.transpose(1, 2), table, None, out_channels_last=ctx.out_cl)
        if need_w:
            grad_w = triton_weight_grad(xk, g, table)
        if need_b and ctx.has_bias:
            dims = [0] + list(range(2, grad_out.ndim))
            grad_b = grad_out.sum(dims, dtype=torch.float32).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None


# ---------------------------------------------------------------------------------------------------- entry point
def gmr_conv_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    basis: torch.Tensor,
    bias: torch.Tensor | None = None,
    circular: bool | None = None,
) -> torch.Tensor:
    """GMR convolution with the fused Triton kernels (stride 1, "same" zero padding, dilation 1, groups 1).

    Callers check :func:`triton_unsupported_reason` first (``monai_gmr.functional.gmr_conv`` does, and falls
    back); this function assumes a supported configuration.

    Args:
        x: input ``(B, C_in) + spatial``, 2 or 3 spatial dims, on CUDA (or CPU under ``TRITON_INTERPRET=1``).
        weight: ring weights ``(C_out, C_in, n)``.
        basis: radially symmetric ring basis ``(n,) + (k,) * d``.
        bias: optional ``(C_out,)``.
        circular: ``True`` when the basis is zero outside the inscribed circle/sphere (GMRConv's default): the
            corner shells are then skipped. ``None``/``False``: every offset of the ``k^d`` cube is used (correct
            for any radial basis, a little more work).

    Returns:
        ``(B, C_out) + spatial`` in the compute dtype (the autocast dtype under autocast, else ``x.dtype``); of
        ``x``'s tensor subclass where it has one (a ``MetaTensor`` keeps its metadata, as with the dense impl).
    """
    if torch.overrides.has_torch_function((x,)):
        # tensor subclasses (MONAI's MetaTensor) wrap the result as they wrap F.conv2d's, i.e. the dense impl's
        return torch.overrides.handle_torch_function(gmr_conv_triton, (x,), x, weight, basis, bias, circular=circular)
    d = x.ndim - 2
    k = basis.shape[-1]
    table = shell_table(k, d, bool(circular))
    w_shell = shell_weights(weight, basis, table)
    dt = _compute_dtype(x)
    if x.dtype != dt:
        x = x.to(dt)
    if bias is not None and bias.dtype not in SUPPORTED_DTYPES:
        bias = bias.float()
    return _GMRTritonFunction.apply(x, w_shell, bias, table)


_WARNED: set[str] = set()


def resolve_triton(
    requested: str,
    x: torch.Tensor,
    kernel_size: int,
    stride: int | Sequence[int],
    padding: int | Sequence[int],
    dilation: int | Sequence[int],
    groups: int,
    padding_mode: str,
    needs_grad: bool | None,
    has_basis: bool = True,
    radial: bool = True,
    out_channels: int | None = None,
    tensors: Sequence[torch.Tensor | None] = (),
) -> str:
    """``"triton"`` if the fused kernels can run this call, else the best other implementation.

    The fallback is what ``impl="auto"`` picks with the Triton rules disabled. An *explicit* ``impl="triton"`` that
    falls back logs one warning per distinct reason (silently under ``impl="auto"``).
    """
    from .conv import select_impl  # local: conv imports this module

    if not has_basis:
        reason = "no basis was given"
    elif not radial:
        reason = "the basis is not a function of |p| alone (sampling='area')"
    else:
        reason = triton_unsupported_reason(
            x, kernel_size, stride, padding, dilation, groups, padding_mode, out_channels=out_channels, tensors=tensors
        )
    if reason is None:
        return "triton"
    fallback = select_impl(
        "auto", x.device, x.ndim - 2, kernel_size, x.shape[1], needs_grad, allow_triton=False, groups=groups
    )
    if requested == "triton" and reason not in _WARNED:
        _WARNED.add(reason)
        logger.warning("impl='triton' is not available for this call (%s); falling back to impl=%r.", reason, fallback)
    return fallback
