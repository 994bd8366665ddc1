"""Speed and memory of GMR networks against their MONAI counterparts (issue 3, item 6).

Suites (``--quick`` shrinks the sizes for a CPU smoke check):

* ``unet``: :class:`monai_gmr.nets.GMRUNet` (paper defaults: widths 16/32/64/128, kernels 9/9/5/5) vs MONAI
  ``BasicUNet(features=(16, 32, 64, 128, 128, 16))`` (the same widths per level plus MONAI's 4th level at the
  deepest width, as in scripts/equivariance_report.py), 256 x 256, batch 16, 3 -> 2 channels.
* ``resnet``: :func:`monai_gmr.nets.gmr_resnet18` (kernels 9/9/5/5) vs ``monai.networks.nets.resnet18``,
  224 x 224, batch 32, 3 channels, 2 classes.

For each suite and precision (``fp32``; ``bf16`` = ``torch.autocast`` with bfloat16) it measures

* training throughput: images/s of full steps (zero_grad, forward, cross-entropy, backward, Adam step);
* inference throughput: images/s of ``eval()`` forwards under ``torch.inference_mode()``;
* peak memory (CUDA only): ``torch.cuda.max_memory_allocated`` during one step, minus what the other models
  resident on the device hold, i.e. the footprint of the model as if it were alone (parameters + optimizer state
  + activations/workspaces; the same accounting for every model).

GMR models run with ``impl="auto"`` and ``impl="dense"`` (``--impls``); inference also times the GMR net exported
with :func:`monai_gmr.export_dense` (plain convolutions, what a deployed TorchScript model runs).

``--compile [BACKEND]`` (default backend ``inductor``) adds a ``torch.compile``d copy of the baseline and of each GMR
model (same initial weights), timed side by side with the eager ones (compilation happens in the warm-up steps, which
are then at least 2); ``compile_ratios`` (and a table in the .md) give compiled / eager throughput per model.
``--size`` / ``--batch`` override the suite's image size and batch.

Method: every model gets ``--warmup`` untimed steps first; then ``--repeats`` rounds, each round timing
``--iters`` consecutive steps of every model in turn (interleaved, so drifts in clocks/load hit all models alike);
the median over rounds is reported, with the min/max. ``torch.backends.cudnn.benchmark`` is on for all models.
Ratios are GMR / MONAI baseline (throughput: higher is better; memory: lower is better). Issue 3 targets:
GMRUNet >= 0.5x BasicUNet training throughput and <= 1.5x its peak memory.

Outputs (written atomically after every suite/precision, so an interrupted run keeps what it measured):
``bench_nets_<device>.json`` and ``bench_nets_<device>.md`` in ``--out``.

Examples::

    python scripts/bench_nets.py --device cuda --out docs/results          # GPU, about 2-3 minutes
    python scripts/bench_nets.py --device cpu --quick --out /tmp/bench     # CPU smoke check, small sizes
    python scripts/bench_nets.py --device cpu --suites unet --impls auto --compile --size 64 --batch 4 --out /tmp/b
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import statistics
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SUITES", "build_suite", "bench_suite", "main"]

logger = logging.getLogger("monai_gmr.bench_nets")

# suite -> (full size, full batch, quick size, quick batch)
SUITES = {"unet": (256, 16, 32, 2), "resnet": (224, 32, 32, 2)}
BASICUNET_FEATURES = (16, 32, 64, 128, 128, 16)


def build_suite(suite: str, impls: list[str]) -> dict[str, tuple[nn.Module, str, str]]:
    """``{label: (model, kind, impl)}``: the MONAI baseline first (kind ``"baseline"``), then one GMR model per impl."""
    from monai.networks.nets import BasicUNet, resnet18

    from monai_gmr.nets import GMRUNet, gmr_resnet18

    models: dict[str, tuple[nn.Module, str, str]] = {}
    if suite == "unet":
        models["BasicUNet"] = (BasicUNet(2, 3, 2, features=BASICUNET_FEATURES), "baseline", "-")
        for impl in impls:
            models[f"GMRUNet[{impl}]"] = (GMRUNet(2, 3, 2, impl=impl), "gmr", impl)
    elif suite == "resnet":
        models["MONAI resnet18"] = (resnet18(spatial_dims=2, n_input_channels=3, num_classes=2), "baseline", "-")
        for impl in impls:
            models[f"gmr_resnet18[{impl}]"] = (gmr_resnet18(2, 3, 2, impl=impl), "gmr", impl)
    else:
        raise ValueError(f"suite must be one of {tuple(SUITES)}, got suite={suite!r}.")
    return models


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _resolved_impls(model: nn.Module, device: torch.device, needs_grad: bool) -> dict[str, int]:
    """How many GMR convs resolve to each implementation (``impl="auto"`` follows the measured table)."""
    from monai_gmr.functional import select_impl
    from monai_gmr.nn import GMRConv

    counts: Counter = Counter()
    for m in model.modules():
        if isinstance(m, GMRConv):
            try:
                impl = select_impl(m.impl, device, m.spatial_dims, m.kernel_size, m.in_channels, needs_grad,
                                   groups=m.groups)
                counts[impl] += 1
            except Exception:  # noqa: BLE001 - informative only; the signature may evolve
                counts[m.impl] += 1
    return dict(counts)


class _Runner:
    """One model's training or inference step on fixed synthetic data."""

    def __init__(self, model: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor, device: torch.device, precision: str):
        self.model, self.mode, self.x, self.y, self.device, self.precision = model, mode, x, y, device, precision
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4) if mode == "train" else None
        model.train(mode == "train")

    def step(self) -> None:
        if self.mode == "train":
            self.opt.zero_grad(set_to_none=True)
            with _autocast(self.device, self.precision):
                out = self.model(self.x)
            F.cross_entropy(out.float(), self.y).backward()
            self.opt.step()
        else:
            with torch.inference_mode(), _autocast(self.device, self.precision):
                self.model(self.x)

    def persistent_bytes(self) -> int:
        """Parameters + buffers + optimizer state of this model (what it holds between steps)."""
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        if self.opt is not None:
            for state in self.opt.state.values():
                tensors += [v for v in state.values() if torch.is_tensor(v)]
        return sum(t.numel() * t.element_size() for t in tensors if t.device.type == self.device.type)


def _peak_alone_mb(runner: _Runner) -> float | None:
    """Peak CUDA memory of one step of ``runner`` as if its model were alone on the device (see module doc)."""
    if runner.device.type != "cuda":
        return None
    if runner.opt is not None:  # the previous step's gradients are freed by the step itself and then rebuilt:
        runner.opt.zero_grad(set_to_none=True)  # counting them in `base` would leave them out of the peak
    _sync(runner.device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(runner.device)
    torch.cuda.reset_peak_memory_stats(runner.device)
    runner.step()
    _sync(runner.device)
    peak = torch.cuda.max_memory_allocated(runner.device)
    return (peak - base + runner.persistent_bytes()) / 2**20


def bench_suite(suite: str, precision: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Rows ``{suite, precision, mode, model, kind, impl, params, images_per_s, ..., peak_mb}`` for one suite."""
    from monai_gmr import export_dense

    size, batch, q_size, q_batch = SUITES[suite]
    if args.quick:
        size, batch = q_size, q_batch
    size, batch = args.size or size, args.batch or batch
    backend = args.compile
    torch.manual_seed(0)
    models = build_suite(suite, args.impls)
    for m, _, _ in models.values():
        m.to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch, size, size) if suite == "unet" else (batch,), device=device)
    rows: list[dict] = []
    for mode in ("train", "infer"):
        entries: dict[str, tuple[nn.Module, str, str]] = dict(models)
        if mode == "infer":  # the deployed form of the GMR net: plain convolutions (same function)
            gmr_label = next(k for k, v in models.items() if v[1] == "gmr")
            entries[gmr_label.split("[")[0] + "[export_dense]"] = (export_dense(models[gmr_label][0]).to(device), "gmr", "export_dense")
        if backend:  # compiled copies (same initial weights), timed beside the eager models
            for label, (m, kind, impl) in models.items():
                compiled = torch.compile(copy.deepcopy(m), backend=backend)
                entries[f"{label}+compile"] = (compiled, f"{kind}_compiled", impl)
        runners = {k: _Runner(m, mode, x, y, device, precision) for k, (m, _, _) in entries.items()}

        def failed(label: str, exc: Exception, active: dict) -> None:
            """Record ``label`` as failed and drop it from ``active`` (one failing model must not lose the others)."""
            logger.error("%s %s %s %s failed: %r", suite, precision, mode, label, exc)
            rows.append({"suite": suite, "precision": precision, "mode": mode, "model": label, "kind": "failed",
                         "impl": entries[label][2], "size": size, "batch": batch, "error": repr(exc)[:500]})  # fmt: skip
            del active[label]
            if device.type == "cuda":
                torch.cuda.empty_cache()

        for label, r in list(runners.items()):  # warm-up (cudnn autotuning, kernel caches, allocator)
            t0 = time.perf_counter()
            try:
                for _ in range(args.warmup):
                    r.step()
                _sync(device)
            except Exception as exc:  # noqa: BLE001
                failed(label, exc, runners)
                continue
            logger.info("%s %s %s %s: warm-up %.2fs", suite, precision, mode, label, time.perf_counter() - t0)
        rates: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(args.repeats):
            for label, r in list(runners.items()):
                try:  # with --warmup 0 a model's first step is a timed one: its failure ended the whole run
                    _sync(device)
                    t0 = time.perf_counter()
                    for _ in range(args.iters):
                        r.step()
                    _sync(device)
                except Exception as exc:  # noqa: BLE001
                    failed(label, exc, runners)
                    continue
                rates[label].append(args.iters * batch / (time.perf_counter() - t0))
        for label, r in runners.items():
            model, kind, impl = entries[label]
            rows.append({
                "suite": suite, "precision": precision, "mode": mode, "model": label, "kind": kind, "impl": impl,
                "size": size, "batch": batch, "params": sum(p.numel() for p in model.parameters()),
                "images_per_s": statistics.median(rates[label]), "images_per_s_min": min(rates[label]),
                "images_per_s_max": max(rates[label]), "peak_mb": _peak_alone_mb(r),
                "resolved_impls": _resolved_impls(model, device, mode == "train") if kind == "gmr" else {},
            })  # fmt: skip
            logger.info("%s %s %s %-26s %9.1f img/s  peak %s MB", suite, precision, mode, label, rows[-1]["images_per_s"],
                        "-" if rows[-1]["peak_mb"] is None else f"{rows[-1]['peak_mb']:.0f}")  # fmt: skip
        del runners
    del models
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _ratios(rows: list[dict]) -> list[dict]:
    """GMR / baseline ratios of throughput and peak memory per (suite, precision, mode)."""
    out = []
    for r in rows:
        if r["kind"] != "gmr":
            continue
        base = next((b for b in rows if b["kind"] == "baseline" and all(b[k] == r[k] for k in ("suite", "precision", "mode"))), None)
        if base is None:
            continue
        out.append({
            "suite": r["suite"], "precision": r["precision"], "mode": r["mode"], "model": r["model"], "baseline": base["model"],
            "throughput_ratio": r["images_per_s"] / base["images_per_s"],
            "memory_ratio": (r["peak_mb"] / base["peak_mb"]) if r["peak_mb"] and base["peak_mb"] else None,
        })  # fmt: skip
    return out


def _compile_ratios(rows: list[dict]) -> list[dict]:
    """Compiled / eager throughput of the same model per (suite, precision, mode)."""
    out = []
    for r in rows:
        if not r["kind"].endswith("_compiled"):
            continue
        eager = r["model"][: -len("+compile")]
        base = next((b for b in rows if b["model"] == eager and all(b[k] == r[k] for k in ("suite", "precision", "mode"))), None)
        if base is None or base["kind"] == "failed":
            continue
        out.append({"suite": r["suite"], "precision": r["precision"], "mode": r["mode"], "model": eager,
                    "compiled_over_eager": r["images_per_s"] / base["images_per_s"]})  # fmt: skip
    return out


def _markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"# Network speed and memory ({result['device']})",
        "",
        f"Command: `{result['command']}`  ",
        f"torch {result['torch']}, {result['platform']}; warm-up {s['warmup']} steps, median of {s['repeats']} "
        f"interleaved rounds of {s['iters']} steps{' (--quick sizes)' if s['quick'] else ''}. Peak memory: "
        "`torch.cuda.max_memory_allocated` of one step, as if the model were alone on the device.",
        "",
        "| suite | precision | mode | model | params | images/s (min-max) | peak MB | x baseline throughput | x baseline memory |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    ratios = {(q["suite"], q["precision"], q["mode"], q["model"]): q for q in result["ratios"]}
    for r in result["rows"]:
        if r["kind"] == "failed":
            lines.append(f"| {r['suite']} {r['size']}x{r['size']} b{r['batch']} | {r['precision']} | {r['mode']} | "
                         f"{r['model']} | | FAILED: {r['error'][:120]} | | | |")  # fmt: skip
            continue
        q = ratios.get((r["suite"], r["precision"], r["mode"], r["model"]))
        tr = f"{q['throughput_ratio']:.2f}" if q else "1 (baseline)" if r["kind"] == "baseline" else ""
        mr = f"{q['memory_ratio']:.2f}" if q and q["memory_ratio"] is not None else ("1 (baseline)" if r["kind"] == "baseline" and r["peak_mb"] else "-")
        peak = "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(
            f"| {r['suite']} {r['size']}x{r['size']} b{r['batch']} | {r['precision']} | {r['mode']} | {r['model']} | "
            f"{r['params']:,} | {r['images_per_s']:.1f} ({r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f}) | {peak} | {tr} | {mr} |"
        )
    targets = [q for q in result["ratios"] if q["suite"] == "unet" and q["mode"] == "train"]
    if targets:
        lines += ["", "Issue 3 targets (GMRUNet training vs BasicUNet: throughput >= 0.5x, peak memory <= 1.5x):", ""]
        for q in targets:
            mem = "n/a" if q["memory_ratio"] is None else f"{q['memory_ratio']:.2f}x ({'met' if q['memory_ratio'] <= 1.5 else 'NOT met'})"
            lines.append(f"- {q['precision']} {q['model']}: throughput {q['throughput_ratio']:.2f}x "
                         f"({'met' if q['throughput_ratio'] >= 0.5 else 'NOT met'}), memory {mem}")  # fmt: skip
    if result.get("compile_ratios"):
        lines += ["", f"torch.compile (backend {s.get('compile')}) / eager throughput of the same model:", "",
                  "| suite | precision | mode | model | compiled / eager |", "|---|---|---|---|---:|"]
        lines += [f"| {q['suite']} | {q['precision']} | {q['mode']} | {q['model']} | {q['compiled_over_eager']:.2f} |"
                  for q in result["compile_ratios"]]  # fmt: skip
    impls = {(r["model"], r["mode"]): r["resolved_impls"] for r in result["rows"] if r.get("resolved_impls") and r["precision"] == "fp32"}
    if impls:
        lines += ["", "GMR convolutions per resolved implementation (fp32): " + "; ".join(f"{m} {mode}: {d}" for (m, mode), d in impls.items())]
    if result.get("skipped"):
        lines += ["", f"Skipped (time budget --budget-s {s['budget_s']}): {', '.join(result['skipped'])}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    from monai_gmr.functional import IMPLS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:N or cpu")
    p.add_argument("--out", required=True, help="output folder for bench_nets_<device>.json/.md")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke check: "
                   + ", ".join(f"{k} {v[2]} x {v[2]}, batch {v[3]}" for k, v in SUITES.items()))
    p.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    p.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16"],
                   help="default: fp32 and bf16 on CUDA, fp32 on CPU (bf16 autocast convolutions are very slow there)")
    p.add_argument("--impls", nargs="+", default=["auto", "dense"], choices=list(IMPLS), help="GMR implementations to time")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per model (default 3, quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5, quick 2)")
    p.add_argument("--iters", type=int, default=None, help="steps per round (default 10, quick 1)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="also time torch.compile'd copies of the models (backend default: inductor)")
    p.add_argument("--size", type=int, default=None, help="image size (overrides the suite's / --quick's)")
    p.add_argument("--batch", type=int, default=None, help="batch size (overrides the suite's / --quick's)")
    p.add_argument("--budget-s", type=float, default=170.0,
                   help="start no new suite/precision after this many seconds (0: no limit); skipped ones are listed")
    args = p.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    args.iters = args.iters if args.iters is not None else (1 if args.quick else 10)
    if args.compile and args.warmup < 2:  # the first steps compile (train: forward and backward graphs)
        args.warmup = 2
    for name in ("size", "batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.repeats < 1 or args.iters < 1 or args.warmup < 0:
        p.error(f"--repeats and --iters must be >= 1 and --warmup >= 0, got {args.repeats}, {args.iters}, {args.warmup}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if not args.budget_s >= 0:  # a negative budget skipped every suite (NaN: none)
        p.error(f"--budget-s must be >= 0 (0: no limit), got {args.budget_s}")
    from monai_gmr.utils import output_dir_error

    if output_dir_error(args.out):  # found now, not after the first suite was timed
        p.error(output_dir_error(args.out))
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.precisions is None:
        args.precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SystemExit(f"--device {args.device}: only {torch.cuda.device_count()} GPU(s) visible here")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    import monai_gmr  # noqa: F401 - registers the GMR factories
    from monai_gmr.utils import atomic_write_json, atomic_write_text

    out = Path(args.out)
    tag = device.type
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "platform": platform.platform(),
        "command": "python scripts/bench_nets.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "settings": {k: v for k, v in vars(args).items()},
        "rows": [],
        "ratios": [],
        "skipped": [],
    }
    t_start = time.perf_counter()
    for suite in args.suites:
        for precision in args.precisions:
            if args.budget_s and time.perf_counter() - t_start > args.budget_s:
                result["skipped"].append(f"{suite}/{precision}")
                logger.warning("time budget %.0fs spent: skipping %s %s", args.budget_s, suite, precision)
                continue
            result["rows"] += bench_suite(suite, precision, args, device)
            result["ratios"] = _ratios(result["rows"])
            result["compile_ratios"] = _compile_ratios(result["rows"])
            result["seconds"] = round(time.perf_counter() - t_start, 1)
            atomic_write_json(out / f"bench_nets_{tag}.json", result)
            atomic_write_text(out / f"bench_nets_{tag}.md", _markdown(result))
    if result["skipped"]:  # written again so the files list what the budget cut
        atomic_write_json(out / f"bench_nets_{tag}.json", result)
        atomic_write_text(out / f"bench_nets_{tag}.md", _markdown(result))
    print(_markdown(result))
    print(f"wrote {out / f'bench_nets_{tag}.json'} and .md in {result['seconds']:.0f}s")
    return result


if __name__ == "__main__":
    main()
