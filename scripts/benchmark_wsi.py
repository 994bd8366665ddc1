"""Benchmark of the gmr_wsi_patch_classification bundle: slide-inference throughput and rotation robustness.

Two parts, everything written under ``--out`` (nothing into the repository):

(a) **Slide inference throughput** (patches/s, reading included): ``monai_gmr.workflows.wsi.infer_slide`` (MONAI
    ``WSIReader`` + ``SlidingPatchWSIDataset`` over tissue, batched inference, map assembly) on the same synthetic
    slide and the same patches with ``monai_gmr.nets.gmr_resnet18`` (bundle default, kernels 9/9/5/5) and MONAI's
    ``monai.networks.nets.resnet18(spatial_dims=2, n_input_channels=3, num_classes=2)``, both untrained (speed
    does not depend on the weights). One warm-up run per network, then ``--repeats`` timed runs interleaved
    (GMR, MONAI, GMR, ...); the median is reported. The model-only throughput (the same patches already in device
    memory, no reading) is reported beside it. Target of issue 6: GMR >= 0.5x MONAI (reading included).
(b) **Rotation robustness after the default short training**: the bundle's ``configs/train.json`` (bundle
    defaults: AdamW, lr 1e-3, cosine schedule, batch 32, no geometric augmentation, seed 0) trains the GMR
    ResNet-18 and a plain MONAI ResNet-18 on the same synthetic slides, then ``configs/evaluate.json`` measures
    patch accuracy and ROC-AUC on the test split at 36 angles (0, 10, ..., 350 degrees; rotated context patches
    centre-cropped, so no padded corners) and under horizontal/vertical flips. Targets of issue 6 for GMR: AUC >=
    0.95 at every angle and std across angles <= 0.01.

Outputs: ``data/`` (synthetic slides, bundle generator), ``<model>/`` (bundle outputs and logs: ``train.log``,
``evaluate.log``, ``train_summary.json``, ``eval/robustness.{json,csv,_polar.png}``, ``eval/metrics.json`` with the
slide-level map quality of the test slide), ``benchmark.json`` and ``benchmark.md``.

Usage::

    # GPU (the full benchmark: bundle default data and training, 36 angles; a few minutes)
    python scripts/benchmark_wsi.py --device cuda --out /tmp/bench_wsi
    # CPU smoke check (a few minutes on 2 cores): smaller slides/patches/widths, 4 epochs
    python scripts/benchmark_wsi.py --device cpu --quick --out /tmp/bench_wsi_quick
    # evaluate again (e.g. after an evaluation change) without retraining the models that finished
    python scripts/benchmark_wsi.py --device cuda --out /tmp/bench_wsi --skip-throughput --reuse-training
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "networks", "PROFILES"]

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "gmr_wsi_patch_classification"
logger = logging.getLogger("monai_gmr.benchmark_wsi")

#: settings per profile. ``full`` = the bundle defaults (synthetic data, patch size, training budget); ``quick`` =
#: a CPU smoke check with smaller slides, patches and network widths (both models get the same widths).
PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "synthetic": {"n_slides": 6, "size": 4096, "seed": 0, "patches_per_slide": 256, "patch_size": 96},
        "patch_size": 96,
        "widths": None,  # the networks' own widths (GMR: monai_gmr default, MONAI: 64/128/256/512)
        "epochs": 30,
        "batch_size": 32,
        "tp_slide_size": 4096,
        "tp_overlap": 0.5,
        "tp_batch": 128,
        "repeats": 3,
    },
    "quick": {
        "synthetic": {"n_slides": 4, "size": 2048, "seed": 0, "patches_per_slide": 96, "patch_size": 48},
        "patch_size": 48,
        "widths": [8, 16, 32, 64],
        "epochs": 4,
        "batch_size": 16,
        "tp_slide_size": 1024,
        "tp_overlap": 0.0,
        "tp_batch": 32,
        "repeats": 1,
    },
}


def networks(widths: list[int] | None) -> dict[str, dict[str, Any]]:
    """Bundle ``network_def`` of the two models (``widths``: stage widths for both, ``None``: their defaults)."""
    gmr: dict[str, Any] = {"_target_": "monai_gmr.nets.gmr_resnet18", "spatial_dims": 2, "in_channels": 3,
                           "num_classes": "@num_classes", "kernel_sizes": [9, 9, 5, 5]}  # fmt: skip
    if widths is None:
        plain: dict[str, Any] = {"_target_": "monai.networks.nets.resnet18", "spatial_dims": 2, "n_input_channels": 3,
                                 "num_classes": "@num_classes"}  # fmt: skip
    else:
        gmr["block_inplanes"] = list(widths)
        # monai.networks.nets.resnet18 fixes the widths; ResNet with the same block/layers takes them
        plain = {"_target_": "monai.networks.nets.ResNet", "block": "basic", "layers": [2, 2, 2, 2],
                 "block_inplanes": list(widths), "spatial_dims": 2, "n_input_channels": 3,
                 "num_classes": "@num_classes"}  # fmt: skip
    return {"gmr_resnet18": gmr, "resnet18": plain}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (outside the repository)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available; the bundle "
                   "runs see GPU N only, through CUDA_VISIBLE_DEVICES)")
    p.add_argument("--quick", action="store_true", help="CPU smoke profile (small slides, patches and widths)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the profile's)")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: 8 on cuda, 0 on cpu)")
    p.add_argument("--repeats", type=int, default=None, help="timed throughput runs per network")
    p.add_argument("--seed", type=int, default=0, help="training seed (the data seed is the profile's)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--timeout", type=int, default=None, help="seconds per bundle step")
    p.add_argument("--reuse-training", action="store_true",
                   help="skip training a model whose <out>/<model>/train_summary.json reports the requested epochs "
                        "completed (its models/model.pt is evaluated again; train s is the summary's wall time); "
                        "a model recorded as trained with another --seed is refused")
    args = p.parse_args(argv)
    for flag, v, low in (("--epochs", args.epochs, 1), ("--repeats", args.repeats, 1), ("--timeout", args.timeout, 1),
                         ("--num-workers", args.num_workers, 0)):  # fmt: skip
        if v is not None and v < low:  # 0 epochs / repeats silently became the profile's default
            p.error(f"{flag} must be >= {low}, got {v}")
    return args


def throughput_synthetic(prof: dict[str, Any]) -> dict[str, Any]:
    """Settings of the one synthetic slide that part (a) reads (``<out>/throughput_slide``)."""
    return {"n_slides": 1, "size": int(prof["tp_slide_size"]), "seed": 123, "patches_per_slide": 8, "patch_size": 96}


def check_existing_slides(data_dir: Path, synthetic: dict[str, Any]) -> None:
    """Refuse synthetic slides in ``data_dir`` generated with other settings than ``synthetic`` (e.g. by a run of
    the other profile into the same ``--out``): ``ensure_wsi_dataset`` uses an existing dataset as it is, so the run
    would train on / time those slides while reporting this profile's settings."""
    meta_path = data_dir / "slides.json"
    if not meta_path.is_file():
        return
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return
    size = synthetic["size"]
    want = {"n_slides": synthetic["n_slides"], "size": [size, size] if isinstance(size, int) else list(size),
            "seed": synthetic["seed"]}  # fmt: skip
    have = {k: meta.get(k) for k in want}
    if have != want:
        raise SystemExit(f"{data_dir} holds synthetic slides generated with {have}, not this run's {want} (another "
                         f"profile, --quick or not, into the same --out?); choose another --out or delete {data_dir}")


# ---------------------------------------------------------------------------------------------------------- (a)
def _build(network_def: dict[str, Any], num_classes: int = 2):
    from monai.bundle import ConfigParser

    cfg = ConfigParser({"num_classes": num_classes, "net": network_def})
    return cfg.get_parsed_content("net")


def _model_only(net, patches, device, amp: bool, batch: int) -> float:
    """patches/s of the network alone on patches already on the device."""
    import torch

    x = patches.to(device)
    n = x.shape[0]
    with torch.no_grad(), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
        for i in range(0, min(n, 2 * batch), batch):  # warm-up
            net(x[i : i + batch])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for i in range(0, n, batch):
            net(x[i : i + batch])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t)


def throughput(out: Path, prof: dict[str, Any], device_name: str, num_workers: int, repeats: int) -> dict[str, Any]:
    """Part (a): slide inference patches/s (reading included) and model-only patches/s of both networks."""
    import numpy as np
    import torch

    from monai_gmr.data import ensure_wsi_dataset
    from monai_gmr.workflows.wsi import infer_slide

    device = torch.device(device_name)
    amp = device.type == "cuda"
    if amp:
        torch.backends.cudnn.benchmark = True
    data = out / "throughput_slide"
    size = int(prof["tp_slide_size"])
    ensure_wsi_dataset(data, **throughput_synthetic(prof))
    slide = str(sorted((data / "slides").glob("*.tiff"))[0])
    nets = {k: _build(v).to(device).eval() for k, v in networks(None).items()}  # full-size networks
    kw = dict(patch_size=96, overlap=float(prof["tp_overlap"]), batch_size=int(prof["tp_batch"]),
              num_workers=num_workers, device=device, amp=amp)  # fmt: skip
    runs: dict[str, list[float]] = {k: [] for k in nets}
    n_patches = {}
    for k, net in nets.items():  # warm-up (cudnn autotuning, reader caches)
        n_patches[k] = infer_slide(slide, net, None, **kw).n_patches
    for _ in range(repeats):
        for k, net in nets.items():
            r = infer_slide(slide, net, None, **kw)
            runs[k].append(r.patches_per_s)
    # model-only: the same slide's patches read once (first n_model of them)
    from monai.data import SlidingPatchWSIDataset

    ds = SlidingPatchWSIDataset(data=[{"image": slide}], patch_size=96, patch_level=0, overlap=float(prof["tp_overlap"]),
                                reader="openslide")  # fmt: skip
    n_model = min(len(ds), 2048 if device.type == "cuda" else 64)
    idx = np.linspace(0, len(ds) - 1, n_model).astype(int)
    patches = torch.stack([torch.as_tensor(np.asarray(ds[int(i)]["image"]), dtype=torch.float32) / 255.0 for i in idx])
    model_only = {k: _model_only(net, patches, device, amp, int(prof["tp_batch"])) for k, net in nets.items()}
    res: dict[str, Any] = {
        "slide": str(slide),
        "slide_size": size,
        "patch_size": 96,
        "overlap": float(prof["tp_overlap"]),
        "batch_size": int(prof["tp_batch"]),
        "num_workers": num_workers,
        "amp": amp,
        "n_patches": n_patches,
        "repeats": repeats,
        "params": {k: int(sum(p.numel() for p in n.parameters())) for k, n in nets.items()},
        "patches_per_s": {k: round(statistics.median(v), 1) for k, v in runs.items()},
        "patches_per_s_runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "model_only_patches_per_s": {k: round(v, 1) for k, v in model_only.items()},
        "n_model_only_patches": int(n_model),
    }
    res["ratio_gmr_vs_monai"] = round(res["patches_per_s"]["gmr_resnet18"] / res["patches_per_s"]["resnet18"], 3)
    res["model_only_ratio"] = round(model_only["gmr_resnet18"] / model_only["resnet18"], 3)
    logger.info("throughput: %s", res)
    return res


# ---------------------------------------------------------------------------------------------------------- (b)
def _run(cmd: list[str], log: Path, env: dict[str, str], timeout: int | None) -> float:
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=str(log.parent))
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}), log {log}:\n{' '.join(cmd)}\n...{tail}")
    return time.perf_counter() - t


def _bundle_cmd(configs: list[str], overrides: dict[str, Any]) -> list[str]:
    files = [str(BUNDLE / "configs" / c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "[" + ",".join(f"'{f}'" for f in files) + "]"]
    for k, v in overrides.items():
        cmd += [f"--{k}", v if isinstance(v, str) else repr(v)]
    return cmd


def _robustness_row(name: str, run_dir: Path, train_s: float, eval_s: float) -> dict[str, Any]:
    import numpy as np

    rep = json.loads((run_dir / "eval" / "robustness.json").read_text())
    m = json.loads((run_dir / "eval" / "metrics.json").read_text())
    t = json.loads((run_dir / "train_summary.json").read_text())
    # patches evaluated at every angle: test patches whose rotation context leaves the slide are skipped (warned)
    row: dict[str, Any] = {"model": name, "n_test_patches": rep.get("n_images", m.get("n_patches")),
                           "n_test_patches_listed": m.get("n_patches"), "n_angles": len(rep["angles"])}  # fmt: skip
    for metric in ("auc", "accuracy"):
        vals = np.asarray([np.nan if v is None else v for v in rep["per_angle"][metric]], dtype=float)
        row[f"{metric}_0"] = float(vals[0])
        row[f"{metric}_mean"] = float(np.nanmean(vals))
        row[f"{metric}_std"] = float(np.nanstd(vals))  # population std across angles
        row[f"{metric}_min"] = float(np.nanmin(vals))
        row[f"{metric}_worst_angle"] = int(rep["angles"][int(np.nanargmin(vals))])
        for f, fv in rep["per_flip"].items():
            row[f"{metric}_flip_{f}"] = fv.get(metric)
    row["auc_per_angle"] = rep["per_angle"]["auc"]
    slides = m.get("slides") or {}
    mq = slides.get("map_quality") or {}
    row["map_pixel_auc"] = mq.get("mean_pixel_auc")
    row["map_dice"] = mq.get("mean_dice")
    row["slide_patches_per_s"] = slides.get("patches_per_s")
    row["best_val_auc"] = t.get("best_metric")
    row["iterations"] = t.get("iterations_completed")
    row["train_s"] = round(train_s, 1)
    row["eval_s"] = round(eval_s, 1)
    return row


TRAINING_RECORD = "benchmark_train.json"


def training_started(run_dir: Path) -> None:
    """Before a training into ``run_dir``: an earlier model's record must not outlive it (a stopped training)."""
    (run_dir / TRAINING_RECORD).unlink(missing_ok=True)


def training_finished(run_dir: Path, seed: int, epochs: int) -> None:
    """After a training: record its seed beside the model, for :func:`_completed_training`."""
    from monai_gmr.utils import atomic_write_json

    atomic_write_json(run_dir / TRAINING_RECORD, {"seed": int(seed), "epochs": int(epochs)})


def _completed_training(run_dir: Path, epochs: int, seed: int | None = None) -> float | None:
    """Wall time of a finished training in ``run_dir`` (``train_summary.json`` with ``epochs`` completed), else None.

    With ``seed``: ``SystemExit`` when the model's training record names another seed (it would be reported under
    this run's seed); a model trained before records were written is reused with a warning."""
    path = run_dir / "train_summary.json"
    if not path.is_file() or not (run_dir / "models" / "model.pt").is_file():
        return None
    try:
        t = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if int(t.get("epochs_completed", -1)) != int(epochs):
        return None
    if seed is not None:
        try:
            trained = json.loads((run_dir / TRAINING_RECORD).read_text()).get("seed")
        except (OSError, ValueError, AttributeError):
            logger.warning("%s has no readable %s: cannot check its training seed", run_dir, TRAINING_RECORD)
        else:
            if trained != int(seed):
                raise SystemExit(f"--reuse-training: {run_dir} was trained with seed {trained}, not --seed {seed}; "
                                 "drop --reuse-training or use another --out")
    return float(t.get("wall_time_s", math.nan))


def train_and_evaluate(out: Path, prof: dict[str, Any], args: argparse.Namespace, env: dict[str, str],
                       num_workers: int) -> list[dict[str, Any]]:  # fmt: skip
    """Part (b): bundle training of both models on the same slides, then the 36-angle + flip evaluation."""
    from monai_gmr.data import ensure_wsi_dataset

    data = out / "data"
    ensure_wsi_dataset(data, generate=True, **prof["synthetic"])  # generated once, read by both models
    epochs = int(args.epochs or prof["epochs"])
    common = {
        "dataset_dir": str(data),
        "generate_synthetic": False,
        "synthetic": prof["synthetic"],
        "patch_size": int(prof["patch_size"]),
        "seed": int(args.seed),
        "num_workers": num_workers,
    }
    train = {"epochs": epochs, "batch_size": int(prof["batch_size"]), "augment_rotation": False, "log_interval": 50}
    evaluate = {"robustness_angles": list(range(0, 360, 10)), "robustness_flips": ["h", "v"]}
    rows = []
    for name, net in networks(prof["widths"]).items():
        run_dir = out / name
        over = {**common, "output_dir": str(run_dir), "network_def": net}
        done = _completed_training(run_dir, epochs, args.seed) if args.reuse_training else None
        if done is not None:
            logger.info("reusing the completed training of %s (%s)", name, run_dir / "train_summary.json")
            t_train = done
        else:
            logger.info("training %s (log: %s)", name, run_dir / "train.log")
            training_started(run_dir)
            t_train = _run(_bundle_cmd(["train.json"], {**over, **train}), run_dir / "train.log", env, args.timeout)
            training_finished(run_dir, args.seed, epochs)
        logger.info("evaluating %s (log: %s)", name, run_dir / "evaluate.log")
        t_eval = _run(_bundle_cmd(["train.json", "evaluate.json"], {**over, **evaluate}), run_dir / "evaluate.log", env,
                      args.timeout)  # fmt: skip
        rows.append(_robustness_row(name, run_dir, t_train, t_eval))
        logger.info("%s: %s", name, {k: v for k, v in rows[-1].items() if k != "auc_per_angle"})
    return rows


# ---------------------------------------------------------------------------------------------------------- report
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# gmr_wsi_patch_classification benchmark", ""]
    s = report["settings"]
    lines.append(f"profile: {s['profile']}; device: {report['environment']['device']} "
                 f"({report['environment'].get('gpu') or platform.processor() or 'cpu'}); seed {s['seed']}")  # fmt: skip
    lines.append(f"environment: {json.dumps(report['environment'])}")
    lines.append("")
    tp = report.get("throughput")
    if tp:
        lines += [
            "## (a) slide inference throughput (patches/s, reading included; median of "
            f"{tp['repeats']} run(s))",
            "",
            f"slide {tp['slide_size']}x{tp['slide_size']} (synthetic, JPEG tiles), patches 96x96 at level 0, "
            f"overlap {tp['overlap']}, batch {tp['batch_size']}, {tp['num_workers']} workers, AMP {tp['amp']}",
            "",
            "| network | params | patches | patches/s (with reading) | model-only patches/s |",
            "|---|---|---|---|---|",
        ]
        for k in ("gmr_resnet18", "resnet18"):
            lines.append(f"| {k} | {tp['params'][k]:,} | {tp['n_patches'][k]} | {tp['patches_per_s'][k]:.1f} | "
                         f"{tp['model_only_patches_per_s'][k]:.1f} |")  # fmt: skip
        lines += ["", f"GMR / MONAI: {tp['ratio_gmr_vs_monai']:.3f}x with reading (target >= 0.5x), "
                      f"{tp['model_only_ratio']:.3f}x model only", ""]  # fmt: skip
    rows = report.get("robustness")
    if rows:
        lines += [
            "## (b) patch classification under rotation (test split, after the default short training, no augmentation)",
            "",
            f"training: {s['epochs']} epochs, batch {s['batch_size']}, patch {s['patch_size']}, synthetic "
            f"{json.dumps(s['synthetic'])}; angles 0..350 step 10 (36), flips h/v; std = population std across angles",
            "",
            "| model | AUC 0° | AUC mean | AUC std | AUC min (angle) | AUC flip h/v | acc 0° | acc mean | acc std | "
            "acc min | map pixel AUC | map Dice | train s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['model']} | {_fmt(r['auc_0'])} | {_fmt(r['auc_mean'])} | {_fmt(r['auc_std'])} | "
                f"{_fmt(r['auc_min'])} ({r['auc_worst_angle']}°) | {_fmt(r.get('auc_flip_h'))}/{_fmt(r.get('auc_flip_v'))} | "
                f"{_fmt(r['accuracy_0'])} | {_fmt(r['accuracy_mean'])} | {_fmt(r['accuracy_std'])} | "
                f"{_fmt(r['accuracy_min'])} | {_fmt(r['map_pixel_auc'])} | {_fmt(r['map_dice'])} | {r['train_s']} |"
            )
        t = report.get("targets") or {}
        if t:
            lines += ["", f"GMR targets: AUC >= 0.95 at every angle: {t['auc_min_ok']} (min {_fmt(t['auc_min'])}); "
                          f"std <= 0.01: {t['auc_std_ok']} (std {_fmt(t['auc_std'])})"]  # fmt: skip
    lines += ["", f"total: {report['seconds']} s"]
    return "\n".join(lines) + "\n"


def _environment(device) -> dict[str, Any]:
    from monai_gmr.utils import run_environment

    return run_environment(device, repo=ROOT)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the report dict (also written to ``benchmark.json`` / ``benchmark.md``)."""
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    out = Path(args.out).resolve()
    if ROOT in out.parents or out == ROOT:
        raise SystemExit(f"--out {out} is inside the repository; choose a folder outside {ROOT}")
    prof = dict(PROFILES["quick" if args.quick else "full"])
    if not args.skip_throughput:  # before anything runs: slides of another run's settings are not reused silently
        check_existing_slides(out / "throughput_slide", throughput_synthetic(prof))
    if not args.skip_training:
        check_existing_slides(out / "data", prof["synthetic"])
    out.mkdir(parents=True, exist_ok=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    num_workers = args.num_workers if args.num_workers is not None else (8 if device.startswith("cuda") else 0)
    repeats = int(args.repeats or prof["repeats"])
    from monai_gmr.utils import subprocess_env

    try:  # the bundle picks cuda:0 when it sees a GPU: the device (cuda:N included) goes by CUDA_VISIBLE_DEVICES
        env = subprocess_env(device, pythonpath=ROOT)
    except ValueError as e:
        raise SystemExit(f"--device: {e}") from e

    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "settings": {"profile": "quick" if args.quick else "full", "seed": args.seed, "epochs": args.epochs or prof["epochs"],
                     "batch_size": prof["batch_size"], "patch_size": prof["patch_size"], "synthetic": prof["synthetic"],
                     "widths": prof["widths"], "num_workers": num_workers},  # fmt: skip
        "environment": _environment(device),
    }
    from monai_gmr.utils import atomic_write_json, atomic_write_text

    if not args.skip_throughput:
        report["throughput"] = throughput(out, prof, device, num_workers, repeats)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(out / "benchmark.json", report)  # incremental: part (a) survives a later failure
        atomic_write_text(out / "benchmark.md", _markdown(report))  # (not an earlier run's table beside it)
    if not args.skip_training:
        rows = train_and_evaluate(out, prof, args, env, num_workers)
        report["robustness"] = rows
        gmr = next(r for r in rows if r["model"] == "gmr_resnet18")
        report["targets"] = {"auc_min": gmr["auc_min"], "auc_min_ok": bool(gmr["auc_min"] >= 0.95),
                             "auc_std": gmr["auc_std"], "auc_std_ok": bool(gmr["auc_std"] <= 0.01)}  # fmt: skip
    report["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / "benchmark.json", report)
    md = _markdown(report)
    atomic_write_text(out / "benchmark.md", md)
    print(md)
    print(f"written: {out / 'benchmark.md'}, {out / 'benchmark.json'}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
