"""Real-data benchmark of the gmr_nuclei_segmentation bundle: GMRUNet vs BasicUNet vs BasicUNet + rotation aug.

All three models are trained by the same bundle (``configs/train.json``) with the same budget (epochs, steps per
epoch, crops, optimizer, schedule, seed) on a fixed split of a prepared nuclei dataset (default: CPM-15 from
``../shared/data/cpm15_nuclei_he``), then evaluated by ``configs/evaluate.json`` on the test split: Dice, IoU and
pixel ROC-AUC at 0 degrees, over ``360 / angle_step`` rotation angles (mean, std across angles = consistency,
min, worst angle) and under horizontal/vertical flips, on whole tiles (sliding window).

Steps and outputs (everything under ``--out``; nothing is written into the repository):

1. ``prepared/``: ``python -m monai_gmr.data.prepare_nuclei`` on ``--data`` (images, binary masks, instance masks,
   ``datalist.json`` with a seeded train/validation/test split, ``--split-seed``);
2. ``<model>/``: each model's bundle run (``train.log``, ``models/``, ``logs/``, ``train_summary.json``,
   ``eval/robustness.{json,csv}``, ``eval/robustness_polar.png``, ``eval/metrics.json``, ``evaluate.log``);
3. ``benchmark.md`` / ``benchmark.json``: the comparison table, ``robustness_comparison.png``.

Usage::

    # CPU smoke test (minutes): tiny budget, few angles
    python scripts/benchmark_nuclei.py --out /tmp/bench --epochs 1 --max-steps 2 --crop 64 --angle-step 90
    # the real run (GPU)
    python scripts/benchmark_nuclei.py --out /data/bench_cpm15 --epochs 300 --crop 256 --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "MODELS", "DEFAULT_MODELS", "parse_overrides"]

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "gmr_nuclei_segmentation"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cpm15_nuclei_he"
logger = logging.getLogger("monai_gmr.benchmark_nuclei")


def _gmrunet(features: list[int]) -> dict[str, Any]:
    net = {"_target_": "monai_gmr.nets.GMRUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": "@num_classes",
           "features": features, "kernel_sizes": [9, 9, 5, 5]}  # fmt: skip
    return {"network_def": net, "augment_rotation": False}


#: model name -> bundle overrides (same training budget for all).
MODELS: dict[str, dict[str, Any]] = {
    "gmrunet": _gmrunet([16, 32, 64, 128]),
    # opt-in: twice the default widths (4x parameters, still 2.5x fewer than BasicUNet)
    "gmrunet_wide": _gmrunet([32, 64, 128, 256]),
    "basicunet": {
        "network_def": {
            "_target_": "monai.networks.nets.BasicUNet",
            "spatial_dims": 2,
            "in_channels": 3,
            "out_channels": "@num_classes",
        },
        "augment_rotation": False,
    },
    "basicunet_rotaug": {
        "network_def": {
            "_target_": "monai.networks.nets.BasicUNet",
            "spatial_dims": 2,
            "in_channels": 3,
            "out_channels": "@num_classes",
        },
        "augment_rotation": True,
    },
}
#: what runs without --models (issue 5's three-way comparison).
DEFAULT_MODELS = ("gmrunet", "basicunet", "basicunet_rotaug")


def _positive_int(value: str) -> int:
    """argparse type of counts that must be >= 1 (argparse names the option in its error)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="raw dataset (CPM-15 layout: images/, masks_txt/ or labels/)")
    p.add_argument("--prepared", default=None, help="already prepared dataset_dir (skips preparation)")
    p.add_argument("--out", required=True, help="output folder (outside the repository)")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODELS),
                   help=f"default: {' '.join(DEFAULT_MODELS)}")
    p.add_argument("--epochs", type=_positive_int, default=300)
    p.add_argument("--max-steps", type=_positive_int, default=None,
                   help="total training iterations, a multiple of --epochs (sets epoch_length = max_steps / epochs)")
    p.add_argument("--val-interval", type=_positive_int, default=10)
    p.add_argument("--crop", type=_positive_int, default=256, help="training crop (multiple of 8)")
    p.add_argument("--crops-per-image", type=_positive_int, default=8)
    p.add_argument("--batch-size", type=_positive_int, default=2, help="images per batch (x crops-per-image crops)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--roi", type=_positive_int, default=256, help="sliding-window size for whole-tile validation/evaluation")
    p.add_argument("--angle-step", type=_positive_int, default=10, help="evaluation angles 0, step, ... < 360")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation/test split")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available; the bundle "
                   "runs see GPU N only, through CUDA_VISIBLE_DEVICES)")
    p.add_argument("--timeout", type=_positive_int, default=None, help="seconds per bundle step")
    p.add_argument("--instance-metrics", action="store_true", help="also AJI and PQ at every angle (CPU, slower)")
    p.add_argument("--skip-trained", action="store_true",
                   help="reuse a model already trained in --out (models/model.pt + train_summary.json): evaluate only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_",
                   help="extra bundle override for every model in this run, VALUE parsed as JSON when it parses "
                        "(else a string); repeatable, applied after the model's own overrides, e.g. "
                        "--set network_def#kernel_sizes=[5,5,5,5] --set network_def#norm=batch")
    args = p.parse_args(argv)
    if args.num_workers < 0:
        p.error(f"argument --num-workers: must be >= 0, got {args.num_workers}")
    if args.max_steps is not None and args.max_steps % args.epochs:
        p.error(f"argument --max-steps: must be a multiple of --epochs ({args.epochs}) so that it is the total number "
                f"of iterations, got {args.max_steps}")
    try:
        args.extra = parse_overrides(args.set_)
    except ValueError as e:
        p.error(str(e))
    return args


TRAINING_RECORD = "benchmark_train.json"
# bundle overrides that do not change what is trained (where it is written, how it is loaded)
_NOT_TRAINING = ("output_dir", "num_workers")


def training_record(overrides: dict[str, Any]) -> dict[str, Any]:
    """The bundle overrides a model was trained with, as written to ``<run>/benchmark_train.json``."""
    return json.loads(json.dumps({k: v for k, v in overrides.items() if k not in _NOT_TRAINING}))


def check_training_record(run_dir: Path, record: dict[str, Any]) -> bool:
    """``--skip-trained``: the reused model must have been trained with this run's settings (seed, budget, ``--set``,
    data), else its results would be reported under the wrong settings. ``False`` (with a warning) for a model
    trained before records were written; ``SystemExit`` naming the differences on a mismatch."""
    path = run_dir / TRAINING_RECORD
    if not path.is_file():
        logger.warning("%s has no %s: cannot check that it was trained with this run's settings", run_dir, TRAINING_RECORD)
        return False
    saved = json.loads(path.read_text())
    diff = {k: (saved.get(k), record.get(k)) for k in sorted(set(saved) | set(record)) if saved.get(k) != record.get(k)}
    if diff:
        lines = "; ".join(f"{k}: trained {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise SystemExit(f"--skip-trained: {run_dir} was trained with other settings ({lines}); drop --skip-trained "
                         "or use another --out")
    return True


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a#b=[1, 2]", "c=batch"]`` -> ``{"a#b": [1, 2], "c": "batch"}`` (ValueError naming a malformed item)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _run(cmd: list[str], log: Path, env: dict[str, str], timeout: int | None) -> float:
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=str(log.parent))
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}), log {log}:\n{' '.join(cmd)}\n...{tail}")
    return time.perf_counter() - t


def prepare(data: str, out_dir: Path, split_seed: int, env: dict[str, str], timeout: int | None) -> Path:
    """Prepare ``data`` into ``out_dir`` with the preparation CLI (idempotent); returns the dataset_dir."""
    if (out_dir / "datalist.json").is_file():
        try:
            prep = json.loads((out_dir / "datalist.json").read_text()).get("preparation") or {}
        except (OSError, ValueError, AttributeError):
            prep = {}
        have, want = (prep.get("input"), prep.get("seed")), (str(Path(data).resolve()), split_seed)
        if prep and have != want:  # (the split and the data the report names must be the ones trained on)
            raise SystemExit(f"{out_dir} was prepared from {have[0]} with split seed {have[1]}, not --data {want[0]} "
                             f"--split-seed {split_seed}; use another --out, or --prepared {out_dir} to reuse it")
        logger.info("using the prepared dataset in %s", out_dir)
        return out_dir
    cmd = [sys.executable, "-m", "monai_gmr.data.prepare_nuclei", "--input", str(data), "--output", str(out_dir),
           "--seed", str(split_seed), "--val_frac", "0.2", "--test_frac", "0.2", "--label", "instance"]  # fmt: skip
    logger.info("preparing %s -> %s", data, out_dir)
    _run(cmd, out_dir.parent / "prepare.log", env, timeout)
    return out_dir


def _bundle_cmd(configs: list[str], overrides: dict[str, Any]) -> list[str]:
    files = [str(BUNDLE / "configs" / c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "[" + ",".join(f"'{f}'" for f in files) + "]"]
    for k, v in overrides.items():
        cmd += [f"--{k}", v if isinstance(v, str) else repr(v)]
    return cmd


def _param_count(ckpt: Path) -> int | None:
    import torch

    if not ckpt.is_file():
        return None
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)
    sd = sd.get("model", sd) if isinstance(sd, dict) else sd
    return int(sum(v.numel() for k, v in sd.items() if hasattr(v, "numel") and "running_" not in k and "num_batches" not in k))


def _row(name: str, run_dir: Path) -> dict[str, Any]:
    m = json.loads((run_dir / "eval" / "metrics.json").read_text())
    t = json.loads((run_dir / "train_summary.json").read_text())
    s = m["robustness"]["summary"]
    flips = m["robustness"].get("per_flip", {})
    row: dict[str, Any] = {"model": name, "params": _param_count(run_dir / "models" / "model.pt")}
    for metric in ("dice", "iou", "auc", "aji", "pq"):
        if metric not in s:
            continue
        ms = s.get(metric) or {}
        row[f"{metric}_0"] = ms.get("at_0")
        row[f"{metric}_mean"] = ms.get("mean")
        row[f"{metric}_std"] = ms.get("std")
        row[f"{metric}_min"] = ms.get("min")
    row["dice_worst_angle"] = (s.get("dice") or {}).get("worst_angle")
    for f, vals in flips.items():
        row[f"dice_flip_{f}"] = vals.get("dice")
    row["best_val_dice"] = t.get("best_metric")
    row["train_s"] = t.get("wall_time_s")
    row["iterations"] = t.get("iterations_completed")
    return row


def _markdown(rows: list[dict[str, Any]]) -> str:
    cols = ["model", "params", "dice_0", "dice_mean", "dice_std", "dice_min", "dice_worst_angle", "dice_flip_h",
            "dice_flip_v", "iou_0", "iou_mean", "iou_std", "auc_0", "auc_mean", "auc_std", "aji_0", "aji_mean", "aji_std",
            "aji_min", "pq_0", "pq_mean", "pq_std", "pq_min", "best_val_dice", "train_s"]  # fmt: skip
    cols = [c for c in cols if any(c in r for r in rows)]

    def fmt(c: str, v: Any) -> str:
        if v is None:
            return "n/a"
        if c in ("params", "iterations"):
            return f"{int(v):,}"
        if c in ("dice_worst_angle", "train_s"):
            return f"{float(v):g}"
        return f"{float(v):.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(c, r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _environment(device) -> dict[str, Any]:
    from monai_gmr.utils import run_environment

    return run_environment(device, repo=ROOT)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns ``{"rows": [...], "environment": {...}, "settings": {...}}``."""
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    for v, name in ((args.crop, "--crop"), (args.roi, "--roi")):
        if v % 8:
            raise SystemExit(f"{name} must be a multiple of 8, got {v}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device} but torch.cuda.is_available() is False")
    out = Path(args.out).resolve()
    if ROOT in out.parents or out == ROOT:
        raise SystemExit(f"--out {out} is inside the repository; choose a folder outside {ROOT}")
    out.mkdir(parents=True, exist_ok=True)
    from monai_gmr.utils import subprocess_env

    try:  # the bundle runs use the device through CUDA_VISIBLE_DEVICES (cuda:N included)
        env = subprocess_env(device, pythonpath=ROOT)
    except ValueError as e:
        raise SystemExit(f"--device: {e}") from e

    # The bundle runs and the preparation CLI run with the log folder as working directory, so relative
    # --data / --prepared paths are resolved against the caller's directory here, before they are passed on.
    if args.prepared:
        dataset_dir = Path(args.prepared).resolve()
        if not (dataset_dir / "datalist.json").is_file():
            raise SystemExit(f"--prepared {dataset_dir} has no datalist.json; run without --prepared to prepare --data")
    else:
        data = Path(args.data).resolve()
        if not data.is_dir():
            raise SystemExit(f"--data {data} is not a folder")
        dataset_dir = prepare(str(data), out / "prepared", args.split_seed, env, args.timeout)
    epoch_length = None if args.max_steps is None else args.max_steps // args.epochs
    common = {
        "dataset_dir": str(dataset_dir),
        "generate_synthetic": False,
        "seed": args.seed,
        "roi_size": [args.roi, args.roi],
        "num_workers": args.num_workers,
    }
    train = {
        "epochs": args.epochs,
        "epoch_length": epoch_length,
        "val_interval": min(args.val_interval, args.epochs),
        "crop_size": args.crop,
        "crops_per_image": args.crops_per_image,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "log_interval": 20,
    }
    evaluate: dict[str, Any] = {"robustness_angles": list(range(0, 360, args.angle_step)), "robustness_flips": ["h", "v"]}
    if args.instance_metrics:
        evaluate["instance_metrics"] = True
    from monai_gmr.utils import atomic_write_json, atomic_write_text

    rows, unverified = [], []
    t0 = time.perf_counter()
    for name in args.models:
        run_dir = out / name
        over = {**common, "output_dir": str(run_dir), **MODELS[name], **args.extra}
        trained = (run_dir / "models" / "model.pt").is_file() and (run_dir / "train_summary.json").is_file()
        record = training_record({**over, **train})
        if args.skip_trained and trained:
            if not check_training_record(run_dir, record):
                unverified.append(name)
            logger.info("using the trained %s in %s", name, run_dir)
        else:
            logger.info("training %s (log: %s)", name, run_dir / "train.log")
            (run_dir / TRAINING_RECORD).unlink(missing_ok=True)  # an earlier model's record must not outlive it
            _run(_bundle_cmd(["train.json"], {**over, **train}), run_dir / "train.log", env, args.timeout)
            atomic_write_json(run_dir / TRAINING_RECORD, record)
        logger.info("evaluating %s (log: %s)", name, run_dir / "evaluate.log")
        _run(_bundle_cmd(["train.json", "evaluate.json"], {**over, **evaluate}), run_dir / "evaluate.log", env, args.timeout)
        rows.append(_row(name, run_dir))
        logger.info("%s: %s", name, {k: v for k, v in rows[-1].items() if k.startswith("dice")})

    from monai_gmr.evaluation import load_result, plot_polar

    results = []
    for name in args.models:
        r = load_result(out / name / "eval" / "robustness.json")
        r.model_name = name
        results.append(r)
    plot_polar(results, out / "robustness_comparison.png", title="rotation robustness (test split)")
    settings = {k: v for k, v in vars(args).items() if k != "set_"}
    settings["epoch_length"] = epoch_length
    if unverified:  # reused models trained before training records existed: their seed/budget are not checked
        settings["reused_without_training_record"] = unverified
    environment = _environment(device)
    report = {"rows": rows, "environment": environment, "settings": settings, "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "benchmark.json", report)
    md = [
        "# gmr_nuclei_segmentation benchmark",
        "",
        f"data: {args.prepared or args.data} (split seed {args.split_seed}); test split, whole tiles, sliding window {args.roi}",
        f"budget: {args.epochs} epochs, epoch_length {epoch_length or 'full'}, crop {args.crop}, "
        f"{args.crops_per_image} crops/image, batch {args.batch_size} images, lr {args.lr}, seed {args.seed}"
        + (f"; overrides {json.dumps(args.extra)}" if args.extra else ""),
        f"angles: {len(evaluate['robustness_angles'])} (step {args.angle_step} deg), flips h/v; std = population std across angles",
        f"environment: {json.dumps(environment)}",
        "",
        _markdown(rows),
        "",
    ]
    atomic_write_text(out / "benchmark.md", "\n".join(md))
    print("\n".join(md))
    print(f"written: {out / 'benchmark.md'}, {out / 'benchmark.json'}, {out / 'robustness_comparison.png'}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
