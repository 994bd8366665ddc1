#!/usr/bin/env python
"""Benchmark of the fused Triton GMR convolution (``impl="triton"``, issue 7) against cuDNN and the other impls.

Forward + backward with gradients for the input AND the weights (and forward-only inference), on the same inputs,
implementations interleaved round-robin, median of ``--repeats`` timed calls (CUDA events) after warm-up:

  - ``cudnn_k``:  ``torch.nn.Conv2d/3d`` with a plain dense k^d weight (cuDNN), same k — the reference;
  - ``gmr_dense``, ``gmr_rings``, ``gmr_triton``: ``GMRConv`` with that ``impl``;
  - ``cudnn_k3``: cuDNN dense k = 3 of the same shape (the issue's moonshot reference).

bf16 runs feed bf16 activations to layers with fp32 parameters under ``torch.autocast`` (as inside a network);
fp32 runs use TF32 tensor cores where PyTorch allows them (cuDNN and Triton alike, ``torch.backends.cudnn.allow_tf32``).

For every shape it writes the FLOP floor (tensor-core multiply-adds of dense and of the shell algorithm, plus the
shell algorithm's CUDA-core adds) and the byte floor (input, output, their gradients and the weights once), the
achieved time and the fraction of the floor, with the ceilings measured on the device at the start (bf16 / tf32
matrix product, device-to-device copy).

``--sweep`` first times the kernels alone for a few launch configurations at k = 9 (2D) / k = 7 (3D) and runs the
main table with the fastest. ``--workers N`` compiles every Triton kernel the run needs in N processes first
(Triton's on-disk cache is shared), which saves minutes of serial compilation.

Examples::

    python scripts/bench_triton.py --out /tmp/bench --sweep --workers 8
    python scripts/bench_triton.py --out /tmp/bench --shapes2d 32,128,64,64 --kernels 9 --dtypes bf16
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import logging
import math
import multiprocessing as mp
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monai_gmr.functional import triton_conv as tc  # noqa: E402
from monai_gmr.nn import GMRConv  # noqa: E402
from monai_gmr.utils import atomic_write_json, atomic_write_text  # noqa: E402

logger = logging.getLogger("bench_triton")

DT = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}

# launch configurations tried by --sweep (each checked for register spills with the sm_90 compiler, see
# docs/triton_notes.md); the first of each list is the module default (3D forward: the sweep times the unrolled
# kernel with these configurations, the module default is the loop kernel, timed as "fwd_loop_variant")
SWEEP = {
    (2, "bf16", "fwd"): [
        dict(BLOCK_D=1, BLOCK_H=8, BLOCK_W=8, BLOCK_CI=32, BLOCK_CO=128, num_warps=4, num_stages=1),
        dict(BLOCK_D=1, BLOCK_H=8, BLOCK_W=16, BLOCK_CI=32, BLOCK_CO=128, num_warps=8, num_stages=1),
        dict(BLOCK_D=1, BLOCK_H=8, BLOCK_W=16, BLOCK_CI=32, BLOCK_CO=128, num_warps=16, num_stages=1),
        dict(BLOCK_D=1, BLOCK_H=8, BLOCK_W=16, BLOCK_CI=16, BLOCK_CO=128, num_warps=8, num_stages=1),
        dict(BLOCK_D=1, BLOCK_H=4, BLOCK_W=32, BLOCK_CI=32, BLOCK_CO=128, num_warps=8, num_stages=1),
    ],
    (2, "fp32", "fwd"): [
        dict(BLOCK_D=1, BLOCK_H=8, BLOCK_W=16, BLOCK_CI=16, BLOCK_CO=128, num_warps=8, num_stages=1),
        dict(BLOCK_D=1, BLOCK_H=8, BLOCK_W=16, BLOCK_CI=16, BLOCK_CO=128, num_warps=16, num_stages=1),
        dict(BLOCK_D=1, BLOCK_H=8, BLOCK_W=8, BLOCK_CI=16, BLOCK_CO=128, num_warps=4, num_stages=1),
    ],
    (2, "bf16", "wgrad"): [
        dict(BLOCK_D=1, BLOCK_H=4, BLOCK_W=16, BLOCK_CI=128, BLOCK_CO=128, num_warps=8, num_stages=1, CHUNKS=0),
        dict(BLOCK_D=1, BLOCK_H=4, BLOCK_W=16, BLOCK_CI=64, BLOCK_CO=128, num_warps=4, num_stages=1, CHUNKS=0),
        dict(BLOCK_D=1, BLOCK_H=8, BLOCK_W=8, BLOCK_CI=64, BLOCK_CO=128, num_warps=8, num_stages=1, CHUNKS=0),
        dict(BLOCK_D=1, BLOCK_H=4, BLOCK_W=16, BLOCK_CI=128, BLOCK_CO=128, num_warps=8, num_stages=1, CHUNKS=80),
    ],
    (2, "fp32", "wgrad"): [
        dict(BLOCK_D=1, BLOCK_H=4, BLOCK_W=16, BLOCK_CI=128, BLOCK_CO=128, num_warps=8, num_stages=1, CHUNKS=0),
        dict(BLOCK_D=1, BLOCK_H=4, BLOCK_W=16, BLOCK_CI=64, BLOCK_CO=128, num_warps=8, num_stages=1, CHUNKS=0),
        dict(BLOCK_D=1, BLOCK_H=8, BLOCK_W=8, BLOCK_CI=64, BLOCK_CO=128, num_warps=8, num_stages=1, CHUNKS=0),
    ],
    (3, "bf16", "fwd"): [
        dict(BLOCK_D=2, BLOCK_H=4, BLOCK_W=8, BLOCK_CI=32, BLOCK_CO=32, num_warps=4, num_stages=1),
        dict(BLOCK_D=2, BLOCK_H=8, BLOCK_W=8, BLOCK_CI=32, BLOCK_CO=32, num_warps=8, num_stages=1),
        dict(BLOCK_D=4, BLOCK_H=8, BLOCK_W=8, BLOCK_CI=32, BLOCK_CO=32, num_warps=16, num_stages=1),
    ],
    (3, "fp32", "fwd"): [
        dict(BLOCK_D=2, BLOCK_H=4, BLOCK_W=8, BLOCK_CI=32, BLOCK_CO=32, num_warps=4, num_stages=1),
        dict(BLOCK_D=2, BLOCK_H=8, BLOCK_W=8, BLOCK_CI=32, BLOCK_CO=32, num_warps=8, num_stages=1),
    ],
    (3, "bf16", "wgrad"): [
        dict(BLOCK_D=2, BLOCK_H=8, BLOCK_W=8, BLOCK_CI=32, BLOCK_CO=32, num_warps=4, num_stages=1, CHUNKS=0),
        dict(BLOCK_D=1, BLOCK_H=8, BLOCK_W=8, BLOCK_CI=32, BLOCK_CO=32, num_warps=4, num_stages=1, CHUNKS=0),
        dict(BLOCK_D=2, BLOCK_H=8, BLOCK_W=8, BLOCK_CI=32, BLOCK_CO=32, num_warps=8, num_stages=1, CHUNKS=0),
    ],
    (3, "fp32", "wgrad"): [
        dict(BLOCK_D=2, BLOCK_H=8, BLOCK_W=8, BLOCK_CI=32, BLOCK_CO=32, num_warps=4, num_stages=1, CHUNKS=0),
        dict(BLOCK_D=2, BLOCK_H=8, BLOCK_W=8, BLOCK_CI=32, BLOCK_CO=32, num_warps=8, num_stages=1, CHUNKS=0),
        dict(BLOCK_D=1, BLOCK_H=8, BLOCK_W=8, BLOCK_CI=32, BLOCK_CO=32, num_warps=4, num_stages=1, CHUNKS=0),
    ],
}
SWEEP_K = {2: 9, 3: 7}


# ---------------------------------------------------------------------------------------------------- timing
def time_group(fns: dict, repeats: int, warmup: int) -> dict[str, float]:
    """Median ms of each callable; callables interleaved round-robin, CUDA events around each call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(repeats):
        evs = []
        for n, fn in fns.items():
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            evs.append((n, s, e))
        torch.cuda.synchronize()
        for n, s, e in evs:
            times[n].append(s.elapsed_time(e))
    return {n: statistics.median(v) for n, v in times.items()}


def measure_ceilings() -> dict:
    """bf16 and tf32 matrix-product rates and device-to-device copy bandwidth, measured once."""
    out = {}
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = time_group({"mm": lambda: a @ b}, 10, 3)["mm"]
    out["bf16_tflops"] = 2 * n**3 / ms / 1e9
    a32, b32 = a.float(), b.float()
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    ms = time_group({"mm": lambda: a32 @ b32}, 10, 3)["mm"]
    torch.backends.cuda.matmul.allow_tf32 = prev
    out["tf32_tflops"] = 2 * n**3 / ms / 1e9
    a = b = a32 = b32 = None  # free before the 1 GiB copy buffers (not `del`: the timed lambdas close over them)
    src = torch.empty(2**28, device="cuda", dtype=torch.float32)  # 1 GiB
    src.normal_()
    dst = torch.empty_like(src)
    ms = time_group({"copy": lambda: dst.copy_(src)}, 10, 3)["copy"]
    out["copy_tb_s"] = 2 * src.numel() * 4 / ms / 1e9
    src = dst = None
    torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------------- variants
def _cudnn(d: int, c: int, k: int):
    return (torch.nn.Conv2d if d == 2 else torch.nn.Conv3d)(c, c, k, padding=k // 2, bias=True)


def build_variants(d: int, c: int, k: int, names: list[str]) -> dict[str, torch.nn.Module]:
    mods = {}
    for name in names:
        if name == "cudnn_k":
            mods[name] = _cudnn(d, c, k)
        elif name == "cudnn_k3":
            mods[name] = _cudnn(d, c, 3)
        else:
            mods[name] = GMRConv(d, c, c, k, impl=name.split("_", 1)[1])
    return {n: m.cuda() for n, m in mods.items()}


def make_fns(mods: dict, x: torch.Tensor, g: torch.Tensor, dtype: torch.dtype, train: bool) -> dict:
    fns = {}
    auto = dtype != torch.float32
    for name, m in mods.items():
        params = [p for p in m.parameters() if p.requires_grad]

        def fn(m=m, params=params):
            if train:
                with torch.autocast("cuda", dtype=dtype, enabled=auto):
                    y = m(x)
                torch.autograd.grad(y, [x] + params, g)
            else:
                with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=auto):
                    m(x)

        fns[name] = fn
    return fns


# ---------------------------------------------------------------------------------------------------- floors
def floors(d: int, shape: tuple, k: int, esize: int, ceil: dict, dtype_name: str) -> dict:
    """FLOP and byte floors (fwd+bwd and fwd) of dense and of the shell algorithm."""
    b, c = shape[:2]
    npix = math.prod(shape[2:])
    t = tc.shell_table(k, d, True)
    tensor_rate = (ceil["bf16_tflops"] if dtype_name != "fp32" else ceil["tf32_tflops"]) * 1e12
    bw = ceil["copy_tb_s"] * 1e12
    # CUDA-core fp32 add rate: SMs x 128 lanes x clock (1.98 GHz nominal H100 SXM boost; an estimate, not measured)
    add_rate = torch.cuda.get_device_properties(0).multi_processor_count * 128 * 1.98e9 if torch.cuda.is_available() else 33.4e12
    act = b * c * npix * esize  # one activation tensor (C_in = C_out = c)
    out = {"num_shells": t.num_shells, "num_offsets": t.num_offsets}
    for mode, passes, tensors in (("train", 3, 4), ("fwd", 1, 2)):
        dense_flops = passes * 2 * b * npix * c * c * k**d
        shell_flops = passes * 2 * b * npix * c * c * t.num_shells
        adds = (3 if mode == "train" else 1) * b * npix * c * t.num_offsets  # CUDA-core shell-sum adds
        nbytes = tensors * act + (2 if mode == "train" else 1) * c * c * k**d * 4
        out[mode] = {
            "dense_flops": dense_flops,
            "shell_flops": shell_flops,
            "shell_adds": adds,
            "bytes": nbytes,
            "dense_floor_ms": max(dense_flops / tensor_rate, nbytes / bw) * 1e3,
            "shell_floor_ms": max(shell_flops / tensor_rate, nbytes / bw, adds / add_rate) * 1e3,
            "shell_tensor_floor_ms": shell_flops / tensor_rate * 1e3,
            "shell_add_floor_ms": adds / add_rate * 1e3,
            "byte_floor_ms": nbytes / bw * 1e3,
        }
    return out


# ---------------------------------------------------------------------------------------------------- sweep
def _kernel_inputs(d, shape, k, dtype):
    t = tc.shell_table(k, d, True)
    fmt = torch.channels_last if d == 2 else torch.channels_last_3d
    x = torch.randn(*shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    g = torch.randn(*shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    w = torch.randn(t.num_shells, shape[1], shape[1], device="cuda", dtype=dtype) * 0.05
    return t, x, g, w


def sweep(d: int, shape: tuple, dtype_name: str, repeats: int) -> dict:
    """Time the forward and weight-gradient kernels alone for each configuration of :data:`SWEEP`."""
    dtype = DT[dtype_name]
    k = SWEEP_K[d]
    t, x, g, w = _kernel_inputs(d, shape, k, dtype)
    res, errors = {}, {}
    for kind in ("fwd", "wgrad"):
        fns = {}
        for i, cfg in enumerate(SWEEP[(d, dtype_name, kind)]):
            if kind == "fwd":
                fns[f"{kind}{i}"] = lambda cfg=cfg: _with_cfg("fwd", cfg, lambda: tc.triton_forward(x, w, t))
            else:
                fns[f"{kind}{i}"] = lambda cfg=cfg: _with_cfg("wgrad", cfg, lambda: tc.triton_weight_grad(x, g, t))
        if kind == "fwd":
            xn = x.contiguous()
            fns["fwd_native_layout"] = lambda: tc.triton_forward(xn, w, t)
            fns["fwd_loop_variant"] = lambda: _with_variant("loop", lambda: tc.triton_forward(x, w, t))
        for n in list(fns):  # drop configurations that fail to compile or run
            try:
                fns[n]()
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001
                errors[n] = repr(e)[:300]
                logger.warning("sweep %s failed: %s", n, errors[n])
                del fns[n]
        res[kind] = time_group(fns, repeats, 3)
    best = {}
    for kind in ("fwd", "wgrad"):
        cands = {n: v for n, v in res[kind].items() if n[len(kind) :].isdigit()}
        name = min(cands, key=cands.get)
        best[kind] = SWEEP[(d, dtype_name, kind)][int(name[len(kind) :])]
    return {"k": k, "shape": list(shape), "times_ms": res, "best": best, "errors": errors,
            "configs": {kind: SWEEP[(d, dtype_name, kind)] for kind in ("fwd", "wgrad")}}  # fmt: skip


def _with_cfg(kind, cfg, fn):
    with tc.config_override(**{kind: cfg}):
        return fn()


def _with_variant(variant, fn):
    old = tc.VARIANT
    tc.VARIANT = variant
    try:
        return fn()
    finally:
        tc.VARIANT = old


# ---------------------------------------------------------------------------------------------------- warm-up
def _warm_task(task: dict) -> str:
    """Compile (into Triton's shared on-disk cache) what one benchmark case needs, in a worker process."""
    try:
        torch.backends.cudnn.allow_tf32 = True
        d, shape, k, dtype_name = task["d"], tuple(task["shape"]), task["k"], task["dtype"]
        dtype = DT[dtype_name]
        if "sweep" in task:
            kind, i = task["sweep"]
            t, x, g, w = _kernel_inputs(d, shape, k, dtype)
            if kind == "native":
                tc.triton_forward(x.contiguous(), w, t)
            elif kind == "loop":
                _with_variant("loop", lambda: tc.triton_forward(x, w, t))
            elif kind == "fwd":
                _with_cfg("fwd", SWEEP[(d, dtype_name, kind)][i], lambda: tc.triton_forward(x, w, t))
            else:
                _with_cfg("wgrad", SWEEP[(d, dtype_name, kind)][i], lambda: tc.triton_weight_grad(x, g, t))
        else:
            with tc.config_override(**task.get("override", {})):
                mods = build_variants(d, shape[1], k, ["gmr_triton"])
                x = torch.randn(*shape, device="cuda", dtype=dtype if dtype_name != "fp32" else torch.float32)
                x.requires_grad_(True)
                g = torch.randn(*shape, device="cuda", dtype=x.dtype)
                for fn in make_fns(mods, x, g, dtype, True).values():
                    fn()
                for fn in make_fns(mods, x, g, dtype, False).values():
                    fn()
        torch.cuda.synchronize()
        return f"{task}"
    except Exception as e:  # noqa: BLE001 - report, the main process retries and records the failure
        return f"FAILED {task}: {e!r}"[:500]


def _sweep_tasks(d: int, shape: tuple, dtype_name: str) -> list[dict]:
    base = dict(d=d, shape=list(shape), k=SWEEP_K[d], dtype=dtype_name)
    tasks = [dict(base, sweep=(kind, i)) for kind in ("fwd", "wgrad") for i in range(len(SWEEP[(d, dtype_name, kind)]))]
    return tasks + [dict(base, sweep=("native", 0)), dict(base, sweep=("loop", 0))]


def warm(tasks: list[dict], workers: int) -> None:
    if workers <= 1 or not tasks:
        return
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        for done in ex.map(_warm_task, tasks):
            (logger.warning if done.startswith("FAILED") else logger.info)("compiled: %s", done)


# ---------------------------------------------------------------------------------------------------- inspect
def inspect_kernels(d: int, shape: tuple, k: int, dtype_name: str, arch: int = 90) -> list[dict]:
    """Compile the default forward / input-gradient / weight-gradient kernels for ``sm_<arch>`` WITHOUT a GPU and
    report registers, stack (spills) and the width of their global loads/stores (from the SASS).

    The specialisation the JIT would apply at run time (ints equal to 1 become constants, ints and pointers
    divisible by 16 get a divisibility hint, except ``do_not_specialize`` arguments) is reproduced from the real
    argument values, so this shows what the device will run (the missing-vectorisation bug of the first H100 run
    was found this way). Needs Triton's bundled ``cuobjdump`` / ``nvdisasm``.
    """
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    dtype = DT[dtype_name]
    t = tc.shell_table(k, d, True)
    fmt = torch.channels_last if d == 2 else torch.channels_last_3d
    x = torch.empty(*shape, dtype=dtype).contiguous(memory_format=fmt)
    c = shape[1]
    (D, H, W), (sxd, sxh, sxw) = tc._spatial(x)
    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    tyname = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    rows = []
    for kind, transposed in (("fwd", False), ("fwd", True), ("wgrad", False)):
        fn = tc._kernels(False, t, kind)[kind]
        cfg = tc._config(kind, d, dtype, c, c, False)
        rnd, prec = tc._dot_mode(dtype, False)
        if kind == "wgrad" and dtype != torch.float32:
            rnd, prec = True, "tf32"
        out = torch.empty(*shape, dtype=dtype)  # NCHW output / grad_input
        _, (sod, soh, sow) = tc._spatial(out)
        n_t = [math.ceil(v / cfg[b]) for v, b in ((D, "BLOCK_D"), (H, "BLOCK_H"), (W, "BLOCK_W"))]
        if kind == "fwd":
            ws = (c * c, 1, c) if transposed else (c * c, c, 1)
            vals = dict(C_in=c, C_out=c, D=D, H=H, W=W, n_shells=t.num_shells, n_td=n_t[0], n_th=n_t[1], n_tw=n_t[2],
                        sxb=x.stride(0), sxc=x.stride(1), sxd=sxd, sxh=sxh, sxw=sxw, sws=ws[0], swi=ws[1], swo=ws[2],
                        sob=out.stride(0), soc=out.stride(1), sod=sod, soh=soh, sow=sow)  # fmt: skip
            ptrs = dict(x_ptr=tyname, w_ptr=tyname, b_ptr="fp32", o_ptr=tyname, code_ptr="i32", start_ptr="i32")
            const = dict(HAS_BIAS=not transposed)
            nospec = tc._NO_SPEC_FWD
        else:
            vals = dict(C_in=c, C_out=c, D=D, H=H, W=W, n_td=n_t[0], n_th=n_t[1], n_tw=n_t[2], total_tiles=64,
                        tiles_per_chunk=13, n_ci_blk=1, sxb=x.stride(0), sxc=x.stride(1), sxd=sxd, sxh=sxh, sxw=sxw,
                        sgb=x.stride(0), sgc=x.stride(1), sgd=sxd, sgh=sxh, sgw=sxw, spk=t.num_shells * c * c,
                        sps=c * c, spi=c, spo=1)  # fmt: skip
            ptrs = dict(x_ptr=tyname, g_ptr=tyname, part_ptr="fp32", code_ptr="i32", start_ptr="i32")
            const = {}
            nospec = tc._NO_SPEC_WGRAD
        const.update(IS_3D=d == 3, ROUND_TF32=rnd, DOT_PREC=prec)
        const.update({n: cfg[n] for n in ("BLOCK_D", "BLOCK_H", "BLOCK_W", "BLOCK_CI", "BLOCK_CO")})
        sig, attrs = {}, {}
        for i, name in enumerate(fn.arg_names):
            if name in const:
                sig[name] = "constexpr"
            elif name in ptrs:
                sig[name] = "*" + ptrs[name]
                attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                v = vals[name]
                if name not in nospec and v == 1:
                    sig[name] = "constexpr"
                    const[name] = 1
                else:
                    sig[name] = "i32"
                    if name not in nospec and v % 16 == 0:
                        attrs[(i,)] = [["tt.divisibility", 16]]
        src = ASTSource(fn, sig, constexprs=const, attrs=attrs)
        comp = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            cubin = Path(tmp) / "k.cubin"
            cubin.write_bytes(comp.asm["cubin"])
            res = subprocess.run([str(bindir / "cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True,
                                 text=True).stdout  # fmt: skip
            sass = subprocess.run([str(bindir / "nvdisasm"), "-c", str(cubin)], capture_output=True, text=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+)", res)
        ops = re.findall(r"\b((?:LDG|STG)\.E(?:\.[A-Z0-9]+)*)", sass)
        counts: dict[str, int] = {}
        for op in ops:
            counts[op] = counts.get(op, 0) + 1
        mma = sorted(set(re.findall(r"\b(H?GMMA\.[0-9x]+\.[A-Z0-9.]+|HMMA\.[0-9]+\.[A-Z0-9.]+)", sass)))
        rows.append(dict(kernel=kind + ("(input grad)" if transposed else ""), config=cfg, regs=int(m.group(1)) if m else None,
                         stack=int(m.group(2)) if m else None, memory_ops=counts, mma=mma))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------------- main
def fmt_ms(v: float) -> str:
    return f"{v:.3f}"


def run_case(d, shape, k, dtype_name, names, repeats, warmup, ceil) -> dict:
    dtype = DT[dtype_name]
    mods = build_variants(d, shape[1], k, names)
    xdt = dtype if dtype_name != "fp32" else torch.float32
    x = torch.randn(*shape, device="cuda", dtype=xdt).requires_grad_(True)
    g = torch.randn(*shape, device="cuda", dtype=xdt)
    row = {"d": d, "shape": list(shape), "k": k, "dtype": dtype_name}
    for mode, train in (("train", True), ("fwd", False)):
        row[mode] = time_group(make_fns(mods, x, g, dtype, train), repeats, warmup)
    row["floors"] = floors(d, shape, k, torch.finfo(xdt).bits // 8, ceil, dtype_name)
    del mods, x, g
    torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict], meta: dict, sweeps: dict) -> str:
    L = []
    L.append(f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}; {meta['date']}.")
    L.append(f"Command: `{meta['command']}`")
    c = meta["ceilings"]
    L.append(
        f"Measured ceilings: bf16 matmul {c['bf16_tflops']:.0f} TFLOP/s, tf32 matmul {c['tf32_tflops']:.0f} TFLOP/s, "
        f"device copy {c['copy_tb_s']:.2f} TB/s (read + write)."
    )
    L.append("")
    for mode, title in (("train", "forward + backward (input and weight gradients)"), ("fwd", "forward only (no_grad)")):
        L.append(f"### {title}, median ms (ratio = time / cuDNN dense same k)")
        L.append("")
        L.append("| dims | shape | k | dtype | cuDNN k | GMR dense | GMR rings | GMR triton | cuDNN k=3 | triton vs cuDNN k | "
                 "triton vs GMR dense | triton vs cuDNN k=3 | shells/offsets | floor (shell alg.) ms | triton % of floor |")  # fmt: skip
        L.append("|" + "---|" * 15)
        for r in rows:
            t = r[mode]
            ref = t.get("cudnn_k")
            tri = t.get("gmr_triton")
            fl = r["floors"][mode]

            def cell(n):
                if n not in t:
                    return "-"
                return f"{t[n]:.3f}" + (f" ({t[n] / ref:.2f})" if ref else "")

            L.append(
                f"| {r['d']}D | {tuple(r['shape'])} | {r['k']} | {r['dtype']} | {cell('cudnn_k')} | {cell('gmr_dense')} | "
                f"{cell('gmr_rings')} | {cell('gmr_triton')} | {cell('cudnn_k3')} | "
                f"{(ref / tri if tri and ref else float('nan')):.2f}x faster | "
                f"{(t['gmr_dense'] / tri if tri and 'gmr_dense' in t else float('nan')):.2f}x faster | "
                f"{(tri / t['cudnn_k3'] if tri and 'cudnn_k3' in t else float('nan')):.2f}x the time | "
                f"{r['floors']['num_shells']}/{r['floors']['num_offsets']} | {fl['shell_floor_ms']:.3f} | "
                f"{(100 * fl['shell_floor_ms'] / tri if tri else float('nan')):.0f}% |"
            )
        L.append("")
    L.append("### Floors per shape (per call)")
    L.append("")
    L.append("| dims | shape | k | dtype | mode | dense MACs x2 (GFLOP) | shell-alg. tensor GFLOP | shell-alg. CUDA-core adds (G) | "
             "bytes (MB) | dense floor ms | shell tensor ms | shell adds ms | byte floor ms | cuDNN % of dense floor |")  # fmt: skip
    L.append("|" + "---|" * 14)
    for r in rows:
        for mode in ("train", "fwd"):
            fl = r["floors"][mode]
            ref = r[mode].get("cudnn_k")
            L.append(
                f"| {r['d']}D | {tuple(r['shape'])} | {r['k']} | {r['dtype']} | {mode} | {fl['dense_flops'] / 1e9:.1f} | "
                f"{fl['shell_flops'] / 1e9:.1f} | {fl['shell_adds'] / 1e9:.2f} | {fl['bytes'] / 1e6:.0f} | "
                f"{fl['dense_floor_ms']:.3f} | {fl['shell_tensor_floor_ms']:.3f} | {fl['shell_add_floor_ms']:.3f} | "
                f"{fl['byte_floor_ms']:.3f} | "
                f"{(100 * fl['dense_floor_ms'] / ref if ref else float('nan')):.0f}% |"
            )
    if sweeps:
        L.append("")
        L.append("### Kernel-only sweep (median ms; the fastest configuration was used above)")
        L.append("")
        for key, sw in sweeps.items():
            L.append(f"- {key} (k={sw['k']}, {tuple(sw['shape'])}): " + "; ".join(
                f"{n} {v:.3f}" for kind in ("fwd", "wgrad") for n, v in sw["times_ms"][kind].items()))  # fmt: skip
            L.append(f"  - best: fwd {sw['best']['fwd']}, wgrad {sw['best']['wgrad']}")
    for key in sorted(k for k in meta.get("unet", {})):
        u = meta["unet"][key]
        if "step_ms" in u:
            L.append("")
            L.append(f"GMRUNet training step {key} ({tuple(u['shape'])}, fwd + bwd + SGD step, median ms): "
                     + ", ".join(f"{n} {v:.2f} ms ({u['images_per_s'][n]:.0f} img/s)" for n, v in u["step_ms"].items()))  # fmt: skip
    return "\n".join(L) + "\n"


def run_unet(repeats: int, dtype_name: str) -> dict:
    """Training-step time (forward, backward, SGD step) of a GMRUNet with every GMRConv on dense vs triton."""
    from monai_gmr.nets.unet import GMRUNet

    dtype = DT[dtype_name]
    net = GMRUNet(2, 3, 2).cuda()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(16, 3, 256, 256, device="cuda")
    target = torch.randn(16, 2, 256, 256, device="cuda")
    convs = [m for m in net.modules() if isinstance(m, GMRConv)]

    def step_with(impl):
        def fn():
            for m in convs:
                m.impl = impl
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                loss = torch.nn.functional.mse_loss(net(x).float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return fn

    res = time_group({impl: step_with(impl) for impl in ("dense", "triton", "auto")}, repeats, 3)
    return {"shape": [16, 3, 256, 256], "dtype": dtype_name, "step_ms": res,
            "images_per_s": {k: 16 / v * 1e3 for k, v in res.items()}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder for bench_triton.json / .md")
    p.add_argument("--shapes2d", default="32,128,64,64")
    p.add_argument("--kernels", default="3,5,7,9,11")
    p.add_argument("--shapes3d", default="2,32,48,48,48", help="'' to skip 3D")
    p.add_argument("--kernels3d", default="3,5,7")
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--variants", default="cudnn_k,gmr_dense,gmr_rings,gmr_triton,cudnn_k3")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--workers", type=int, default=0, help="processes compiling the Triton kernels first")
    p.add_argument("--unet", action="store_true", help="also time GMRUNet training steps, dense vs triton")
    p.add_argument("--inspect", default="", help="no GPU needed: compile for sm_90 and report registers, spills and "
                   "load widths for 'dims,dtype,k,B,C,*spatial', e.g. '2,bf16,9,32,128,64,64'")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.inspect:
        f = args.inspect.split(",")
        try:
            d, k, shape = int(f[0]), int(f[2]), tuple(int(v) for v in f[3:])
        except (ValueError, IndexError):
            d, k, shape = 0, 0, ()
        if d not in (2, 3) or f[1] not in DT or k < 1 or k % 2 == 0 or len(shape) != d + 2 or min(shape) < 1:
            p.error(f"--inspect must be 'dims,dtype,k,B,C,*spatial' (dims 2 or 3, dtype one of {','.join(DT)}, odd k, "
                    f"dims spatial sizes), got {args.inspect!r}")
        for row in inspect_kernels(d, shape, k, f[1]):
            print(json.dumps(row))
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("bench_triton.py needs a CUDA device")
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    dtypes = [s for s in args.dtypes.split(",") if s]
    names = args.variants.split(",")
    cases = [(2, tuple(int(v) for v in args.shapes2d.split(",")), int(k)) for k in args.kernels.split(",") if k]
    if args.shapes3d:
        cases += [(3, tuple(int(v) for v in args.shapes3d.split(",")), int(k)) for k in args.kernels3d.split(",") if k]
    dims = sorted({d for d, _, _ in cases})
    import triton

    meta = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "host": platform.node(), "layout": tc.LAYOUT, "variant": tc.VARIANT,
    }  # fmt: skip
    result = {"meta": meta, "sweeps": {}, "rows": []}
    out_json, out_md = args.out / "bench_triton.json", args.out / "bench_triton.md"

    def save():
        atomic_write_json(out_json, result)
        atomic_write_text(out_md, markdown(result["rows"], meta, result["sweeps"]))

    shape_of = {d: next(s for dd, s, _ in cases if dd == d) for d in dims}
    if args.sweep:
        warm([t for d in dims for dt in dtypes for t in _sweep_tasks(d, shape_of[d], dt)], args.workers)
    meta["ceilings"] = measure_ceilings()
    logger.info("ceilings: %s", meta["ceilings"])
    overrides: dict[tuple[int, str], dict] = {}
    if args.sweep:
        for d in dims:
            for dt in dtypes:
                sw = sweep(d, shape_of[d], dt, args.repeats)
                result["sweeps"][f"{d}D {dt}"] = sw
                overrides[(d, dt)] = sw["best"]
                logger.info("sweep %dD %s: %s", d, dt, json.dumps(sw["times_ms"]))
                save()
    meta["overrides"] = {f"{d}D {dt}": v for (d, dt), v in overrides.items()}
    if "gmr_triton" in names:
        warm([dict(d=d, shape=list(s), k=k, dtype=dt, override=overrides.get((d, dt), {}))
              for d, s, k in cases for dt in dtypes], args.workers)  # fmt: skip
    for d, shape, k in cases:
        for dt in dtypes:
            try:
                with tc.config_override(**overrides.get((d, dt), {})):
                    row = run_case(d, shape, k, dt, names, args.repeats, args.warmup, meta["ceilings"])
            except Exception as e:  # noqa: BLE001 - keep the other rows
                logger.exception("case %dD %s k=%d %s failed", d, shape, k, dt)
                result.setdefault("errors", []).append(f"{d}D {shape} k={k} {dt}: {e!r}"[:500])
                save()
                continue
            result["rows"].append(row)
            tri, ref = row["train"].get("gmr_triton"), row["train"].get("cudnn_k")
            logger.info("%dD %s k=%d %s train %s | fwd %s", d, shape, k, dt,
                        {n: round(v, 3) for n, v in row["train"].items()},
                        {n: round(v, 3) for n, v in row["fwd"].items()})  # fmt: skip
            if tri and ref:
                logger.info("   triton fwd+bwd %.3f ms = %.2fx faster than cuDNN k=%d", tri, ref / tri, k)
            save()
    if args.unet:
        for dt in dtypes[:1]:
            try:
                with tc.config_override(**overrides.get((2, dt), {})):
                    result[f"unet_{dt}"] = run_unet(max(5, args.repeats // 2), dt)
            except Exception as e:  # noqa: BLE001
                logger.exception("GMRUNet %s failed", dt)
                result[f"unet_{dt}"] = {"error": repr(e)[:500]}
            meta.setdefault("unet", {})[dt] = result[f"unet_{dt}"]
            logger.info("GMRUNet %s: %s", dt, result[f"unet_{dt}"])
            save()
    save()
    print(out_md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
