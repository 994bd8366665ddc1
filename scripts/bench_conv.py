#!/usr/bin/env python
"""Side-by-side speed and memory benchmark of GMR convolution against dense convolution.

Compares, in one run and on the same inputs:
  - ``torch``: ``F.conv2d/conv3d`` with a dense k^d kernel (cuDNN / oneDNN), the reference;
  - ``gmr_dense``: ``GMRConv(impl="dense")`` (kernel synthesis + the same dense conv);
  - ``gmr_rings``: ``GMRConv(impl="rings")`` (the paper's depthwise-rings + 1x1 mixing decomposition);
  - ``official``: the reference package ``gmr-conv`` (``GMR_Conv2d``) when installed (2D only).
Forward, and forward + backward with gradients for the input AND the weights. Median of ``--repeats`` timed runs
after ``--warmup`` runs, implementations interleaved round-robin (CUDA events on GPU, ``perf_counter`` on CPU);
peak CUDA memory on GPU.

Examples::

    python scripts/bench_conv.py --device cuda --out docs/bench_conv_cuda.json
    python scripts/bench_conv.py --device cpu --shapes 2,32,64,64 --kernels 3,5,7,9,11 --repeats 20
    python scripts/bench_conv.py --device cpu --shapes 4,128,64,64 --groups 1,8,128 --impls torch,gmr_dense,gmr_rings
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monai_gmr import GMRConv  # noqa: E402
from monai_gmr.utils import atomic_write_json, atomic_write_text, output_dir_error  # noqa: E402

logger = logging.getLogger("bench_conv")

DEFAULT_SHAPES = ["2,128,64,64", "32,128,64,64", "2,32,48,48,48"]


def load_official():
    """``GMR_Conv2d`` from the installed ``gmr-conv`` package, or None.

    Its package ``__init__`` imports torchvision (absent here); the layer's own module file needs only torch,
    so it is loaded directly by path.
    """
    spec = importlib.util.find_spec("GMR_Conv")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "gmr_conv.py"
    mspec = importlib.util.spec_from_file_location("_official_gmr_conv", path)
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.GMR_Conv2d


def time_once(fn, device: torch.device) -> float:
    """Wall time of one call in ms (CUDA events on GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def build(name: str, d: int, c: int, k: int, device, official_cls, groups: int = 1):
    if name == "torch":
        conv = (torch.nn.Conv2d if d == 2 else torch.nn.Conv3d)(c, c, k, padding=k // 2, bias=True, groups=groups)
    elif name == "gmr_dense":
        conv = GMRConv(d, c, c, k, groups=groups, impl="dense")
    elif name == "gmr_rings":
        conv = GMRConv(d, c, c, k, groups=groups, impl="rings")
    elif name == "official":
        if official_cls is None or d != 2 or groups != 1:  # GMR_Conv2d has no groups argument
            return None
        conv = official_cls(c, c, k, padding=k // 2)
    else:
        raise ValueError(f"unknown implementation {name!r}; choose from {IMPLS}")
    return conv.to(device).train()


def make_step(conv, x, mode: str, dtype: str):
    """The measured callable: forward under no_grad, or forward + backward (input and weight gradients)."""
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=(dtype == "bf16"))

    def fwd():
        with torch.no_grad(), autocast:
            conv(x)

    def fwd_bwd():
        conv.zero_grad(set_to_none=True)
        x.grad = None
        with autocast:
            y = conv(x)
        y.backward(torch.ones_like(y))

    step = fwd if mode == "fwd" else fwd_bwd
    step.module, step.input = conv, x  # for measure's peak memory "as if alone"
    return step


def _release_grads(steps: dict) -> None:
    """Free every implementation's gradients and the input's (a forward + backward step allocates its own)."""
    for fn in steps.values():
        module, x = getattr(fn, "module", None), getattr(fn, "input", None)
        if module is not None:
            module.zero_grad(set_to_none=True)
        if x is not None:
            x.grad = None


def _own_resident_bytes(fn) -> int:
    """Bytes resident before a call of ``fn`` that it would hold alone too: its module's parameters and buffers and
    its input (0 for a callable without them)."""
    module, x = getattr(fn, "module", None), getattr(fn, "input", None)
    tensors = [*module.parameters(), *module.buffers()] if module is not None else []
    tensors += [x] if isinstance(x, torch.Tensor) else []
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(steps: dict, device: torch.device, warmup: int, repeats: int) -> dict[str, tuple[float, float | None]]:
    """Median time (ms) and peak memory (MiB, CUDA) per implementation.

    Implementations run round-robin (one call of each per repeat), so load changes on a shared machine affect
    all of them alike; peak memory is measured in a separate call per implementation, as if it were alone on the
    device: every implementation's gradients are freed first, and the peak is what the call allocates above the
    memory resident before it, plus its own parameters, buffers and input (``max_memory_allocated`` alone would
    also count the other implementations' weights, which all stay on the device, and depend on their order).
    """
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            times[name].append(time_once(fn, device))
    out = {}
    for name, fn in steps.items():
        peak = None
        if device.type == "cuda":
            _release_grads(steps)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated(device) - base + _own_resident_bytes(fn)) / 2**20
        out[name] = (statistics.median(times[name]), peak)
    return out


IMPLS = ("torch", "gmr_dense", "gmr_rings", "official")
DTYPES = ("fp32", "bf16")
MODES = ("fwd", "fwd_bwd")


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse values that would crash mid-run or be measured under a wrong label (``p.error`` names the option)."""
    for opt, value, allowed in (("--impls", args.impls, IMPLS), ("--dtypes", args.dtypes, DTYPES),
                                ("--modes", args.modes, MODES)):  # fmt: skip
        bad = [v for v in value.split(",") if v not in allowed] if value is not None else []
        if bad:
            p.error(f"{opt}: unknown value(s) {bad}; choose from {','.join(allowed)}")
    try:
        kernels = [int(k) for k in args.kernels.split(",")]
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    except ValueError as e:
        p.error(f"--kernels / --shapes must be comma-separated integers: {e}")
    if any(k < 1 or k % 2 == 0 for k in kernels):
        p.error(f"--kernels must be odd and positive, got {args.kernels}")
    bad_shapes = [s for s, t in zip(args.shapes, shapes) if len(t) not in (4, 5) or min(t) < 1]
    if bad_shapes:
        p.error(f"--shapes must be B,C,H,W or B,C,D,H,W with positive sizes, got {bad_shapes}")
    if args.repeats < 1 or args.warmup < 0:
        p.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    try:
        groups = [int(g) for g in args.groups.split(",")]
    except ValueError as e:
        p.error(f"--groups must be comma-separated integers: {e}")
    bad_groups = [(g, s) for g in groups for s, t in zip(args.shapes, shapes) if g < 1 or t[1] % g]
    if bad_groups:
        p.error(f"--groups must be positive and divide the channels of every shape, got {bad_groups[0][0]} for "
                f"shape {bad_groups[0][1]}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        p.error(f"--device {args.device}: only {torch.cuda.device_count()} GPU(s) visible here")
    if args.out is not None:  # found now, not when the first row is saved
        if Path(args.out).suffix.lower() == ".md":  # the .md table beside it would replace the JSON
            p.error(f"--out is the JSON file (the .md table is written beside it), got {args.out!r}")
        if Path(args.out).is_dir():
            p.error(f"--out {args.out!r} is a folder; give the JSON file's path (e.g. {Path(args.out) / 'bench_conv.json'})")
        problem = output_dir_error(Path(args.out).absolute().parent, "the folder of --out")
        if problem:
            p.error(problem)


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="B,C,H,W or B,C,D,H,W")
    p.add_argument("--kernels", default="3,5,7,9,11")
    p.add_argument("--impls", default="torch,gmr_dense,gmr_rings,official")
    p.add_argument("--dtypes", default=None, help="fp32,bf16 (default: fp32,bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--modes", default="fwd,fwd_bwd")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--groups", default="1", help="channel groups (comma-separated; C_in = C_out = groups: depthwise)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON output (a .md table is written beside it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _check_args(p, args)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtypes = (args.dtypes or ("fp32,bf16" if device.type == "cuda" else "fp32")).split(",")
    official_cls = load_official()
    rows: list[dict] = []
    meta = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        torch=torch.__version__, commit=git_commit(), warmup=args.warmup, repeats=args.repeats,
        official_available=official_cls is not None, command="python scripts/bench_conv.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )

    def save() -> None:  # after every row, so a long run that is stopped keeps what it measured
        if args.out:
            atomic_write_json(args.out, dict(meta=meta, rows=rows))
            atomic_write_text(Path(args.out).with_suffix(".md"), to_markdown(rows, meta))

    for shape_s in args.shapes:
        shape = tuple(int(s) for s in shape_s.split(","))
        d = len(shape) - 2
        x = torch.randn(*shape, device=device, requires_grad=True)
        for k, g in ((int(s), int(g)) for s in args.kernels.split(",") for g in args.groups.split(",")):
            for dtype in dtypes:
                for mode in args.modes.split(","):
                    steps = {}
                    for name in args.impls.split(","):
                        conv = build(name, d, shape[1], k, device, official_cls, groups=g)
                        if conv is not None:
                            steps[name] = make_step(conv, x, mode, dtype)
                    try:
                        results = measure(steps, device, args.warmup, args.repeats)
                    except RuntimeError as e:  # e.g. out of memory
                        logger.warning("k=%d groups=%d %s %s %s failed: %s", k, g, shape_s, dtype, mode, e)
                        continue
                    base = results["torch"][0] if "torch" in results else None
                    for name, (ms, peak) in results.items():
                        row = dict(shape=shape_s, k=k, groups=g, dtype=dtype, mode=mode, impl=name, ms=round(ms, 4),
                                   ratio_vs_torch=round(ms / base, 3) if base else None,
                                   peak_mib=round(peak, 1) if peak is not None else None)
                        rows.append(row)
                        logger.info("%-14s k=%-2d g=%-3d %-5s %-7s %-10s %9.3f ms  x%s", shape_s, k, g, dtype, mode, name,
                                    ms, row["ratio_vs_torch"])
                    save()
    print(to_markdown(rows, meta))
    save()
    return dict(meta=meta, rows=rows)


def to_markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Device: {meta['device']}; torch {meta['torch']}; commit {meta['commit']}; median of {meta['repeats']} runs "
             f"after {meta['warmup']} warm-up; time in ms (ratio to torch dense conv of the same k)", "",
             "| shape | k | dtype | mode | torch | gmr_dense | gmr_rings | official |", "|---|---|---|---|---|---|---|---|"]
    # shape label "B,C,H,W g=G" for grouped rows (rows of files written before --groups existed have no "groups")
    def label(r: dict) -> str:
        g = r.get("groups", 1)
        return r["shape"] if g == 1 else f"{r['shape']} g={g}"

    keys = sorted({(label(r), r["k"], r["dtype"], r["mode"]) for r in rows}, key=lambda t: (t[0], t[2], t[3], t[1]))
    for key in keys:
        cells = []
        for impl in ("torch", "gmr_dense", "gmr_rings", "official"):
            r = next((r for r in rows if (label(r), r["k"], r["dtype"], r["mode"]) == key and r["impl"] == impl), None)
            if r is None:
                cells.append("–")
            elif impl == "torch" or r["ratio_vs_torch"] is None:  # no torch row to compare with (--impls without torch)
                cells.append(f"{r['ms']:.3f}")
            else:
                cells.append(f"{r['ms']:.3f} (×{r['ratio_vs_torch']:.2f})")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
