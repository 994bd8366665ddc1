"""``make demo``: the main job of monai_gmr end to end on built-in synthetic data, in a few minutes on a CPU.

1. generate a synthetic H&E-like nuclei dataset (``monai_gmr.data.ensure_nuclei_dataset``);
2. train the GMR U-Net with the ``gmr_nuclei_segmentation`` bundle (``configs/train.json``, short schedule);
3. evaluate it with ``configs/evaluate.json``: Dice/IoU/AUC at 0 degrees, over rotation angles and under flips
   (the rotation-robustness report: JSON, CSV and a polar PNG);
4. optionally (``--baseline``) the same for a plain MONAI BasicUNet trained with the same budget, overlaid on the
   polar plot;
5. print the summary table and the report paths.

Usage::

    python scripts/demo.py --out demo_output            # ~3-5 minutes on 2 CPU cores
    python scripts/demo.py --out demo_output --baseline --epochs 20 --n-images 48 --size 256

A rerun into the same ``--out`` reuses its synthetic data when ``--n-images``, ``--size`` and ``--seed`` match
(else it stops with an error) and trains the models again.

Everything runs through ``monai.bundle.run`` in this process, exactly like
``python -m monai.bundle run --config_file bundles/gmr_nuclei_segmentation/configs/train.json ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "BUNDLE"]

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "gmr_nuclei_segmentation"
logger = logging.getLogger("monai_gmr.demo")

BASELINE_NET = {
    "_target_": "monai.networks.nets.BasicUNet",
    "spatial_dims": 2,
    "in_channels": 3,
    "out_channels": "@num_classes",
    "features": [16, 16, 32, 64, 128, 16],
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_output", help="output folder (data, checkpoints, reports)")
    p.add_argument("--n-images", type=int, default=16, help="synthetic images to generate")
    p.add_argument("--size", type=int, default=128, help="synthetic image size (pixels, multiple of 8)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs")
    p.add_argument("--crop", type=int, default=64, help="training crop size (multiple of 8)")
    p.add_argument("--crops-per-image", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--angle-step", type=int, default=10, help="robustness angles: 0, step, ..., < 360")
    p.add_argument("--baseline", action="store_true", help="also train/evaluate a plain BasicUNet (about 2x time)")
    p.add_argument("--features", type=int, nargs=4, default=[16, 32, 64, 128], help="GMRUNet widths per level")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    for name in ("n_images", "epochs", "crops_per_image", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.lr < math.inf:  # else refused by the bundle only after the data were generated (NaN: never)
        p.error(f"--lr must be finite and > 0, got {args.lr}")
    if not 1 <= args.angle_step <= 360:
        p.error(f"--angle-step must be in 1..360, got {args.angle_step}")
    if min(args.features) < 1 or (args.threads is not None and args.threads < 1):
        p.error(f"--features and --threads must be >= 1, got {args.features} and {args.threads}")
    from monai_gmr.utils import output_dir_error

    if output_dir_error(args.out):
        p.error(output_dir_error(args.out))
    return args


def _check_existing_data(data_dir: Path, synthetic: dict[str, Any]) -> None:
    """Refuse to reuse ``data_dir`` when its synthetic data were generated with other settings.

    :func:`monai_gmr.data.ensure_nuclei_dataset` uses an existing dataset as it is, so a rerun into the same
    ``--out`` with another ``--n-images`` / ``--size`` / ``--seed`` would train on the old data while the summary
    reported the new settings.
    """
    from monai_gmr.data import DATALIST_NAME

    datalist = data_dir / DATALIST_NAME
    if not datalist.is_file():
        return
    gen = json.loads(datalist.read_text()).get("generator")
    if not gen:  # not recorded: nothing to compare
        return
    have = {"n_images": gen.get("n_images"), "size": gen.get("size"), "seed": gen.get("seed")}
    want = {**synthetic, "size": [synthetic["size"]] * 2}
    if have != want:
        raise SystemExit(
            f"{data_dir} holds synthetic data generated with {have}, not the requested {want} (--n-images, --size, "
            f"--seed); choose another --out or delete {data_dir}"
        )


def _bundle_run(configs: list[str], **override: Any) -> None:
    from monai.bundle import run

    files = [str(BUNDLE / "configs" / c) for c in configs]
    run(config_file=files if len(files) > 1 else files[0], **override)


def _row(name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    rob = metrics.get("robustness", {})
    s = rob.get("summary", {})
    flips = rob.get("per_flip", {})

    def g(m: str, k: str) -> float | None:
        return (s.get(m) or {}).get(k)

    return {
        "model": name,
        "dice_0": g("dice", "at_0"),
        "dice_mean": g("dice", "mean"),
        "dice_std": g("dice", "std"),
        "dice_min": g("dice", "min"),
        "worst_angle": g("dice", "worst_angle"),
        "iou_mean": g("iou", "mean"),
        "auc_mean": g("auc", "mean"),
        "dice_flip_h": (flips.get("h") or {}).get("dice"),
        "dice_flip_v": (flips.get("v") or {}).get("dice"),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    head = "| " + " | ".join(cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"{v:.4f}" if isinstance(v, float) and c != "worst_angle" else ("n/a" if v is None else f"{v:g}" if isinstance(v, float) else str(v)))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns ``{"rows": [...], "reports": {...}, "seconds": ...}``."""
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    for v, name, low in ((args.size, "--size", 16), (args.crop, "--crop", 8)):
        if v < low or v % 8:
            raise SystemExit(f"{name} must be a multiple of 8 (GMRUNet is exactly equivariant on sizes divisible by 8) "
                             f"and >= {low}, got {v}")
    out = Path(args.out).resolve()
    data_dir = out / "data"
    t0 = time.perf_counter()

    from monai_gmr.data import ensure_nuclei_dataset

    synthetic = {"n_images": args.n_images, "size": args.size, "seed": args.seed}
    logger.info("step 1/3: synthetic H&E-like nuclei data in %s", data_dir)
    _check_existing_data(data_dir, synthetic)
    ensure_nuclei_dataset(str(data_dir), generate=True, **synthetic)

    models: dict[str, dict[str, Any]] = {
        "GMRUNet": {
            "network_def": {
                "_target_": "monai_gmr.nets.GMRUNet",
                "spatial_dims": 2,
                "in_channels": 3,
                "out_channels": "@num_classes",
                "features": list(args.features),
                "kernel_sizes": [9, 9, 5, 5],
            }
        }
    }
    if args.baseline:
        models["BasicUNet"] = {"network_def": BASELINE_NET}
    common = {
        "dataset_dir": str(data_dir),
        "synthetic": synthetic,
        "seed": args.seed,
        "num_workers": 0,
        "roi_size": [args.size, args.size],
    }
    train = {
        "epochs": args.epochs,
        "val_interval": max(1, args.epochs // 2),
        "crop_size": args.crop,
        "crops_per_image": args.crops_per_image,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "log_interval": 0,
    }
    evaluate = {"robustness_angles": list(range(0, 360, args.angle_step))}
    rows, reports, timings = [], {}, {}
    for i, (name, over) in enumerate(models.items()):
        run_dir = out / name.lower()
        logger.info("step 2/3 (%s): training, output in %s", name, run_dir)
        t = time.perf_counter()
        _bundle_run(["train.json"], output_dir=str(run_dir), **common, **train, **over)
        timings[f"{name}_train_s"] = round(time.perf_counter() - t, 1)
        logger.info("step 3/3 (%s): rotation-robustness evaluation", name)
        t = time.perf_counter()
        _bundle_run(["train.json", "evaluate.json"], output_dir=str(run_dir), **common, **evaluate, **over)
        timings[f"{name}_evaluate_s"] = round(time.perf_counter() - t, 1)
        metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
        rows.append(_row(name, metrics))
        reports[name] = metrics.get("report", {})

    if len(models) > 1:
        from monai_gmr.evaluation import load_result, plot_polar

        results = [load_result(reports[n]["json"]) for n in models]
        reports["comparison_png"] = str(plot_polar(results, out / "robustness_comparison.png", title="GMRUNet vs BasicUNet"))
    seconds = round(time.perf_counter() - t0, 1)
    summary = {"rows": rows, "reports": reports, "timings_s": timings, "seconds": seconds, "settings": vars(args)}
    from monai_gmr.utils import atomic_write_json

    atomic_write_json(out / "demo_summary.json", summary)

    print("\nRotation robustness on synthetic nuclei (test split; Dice over", len(evaluate["robustness_angles"]), "angles):")
    print(_table(rows))
    for name in models:
        print(f"\n{name} report: {reports[name].get('json')}\n  csv: {reports[name].get('csv')}\n  polar plot: {reports[name].get('png')}")
    if "comparison_png" in reports:
        print(f"\ncomparison plot: {reports['comparison_png']}")
    print(f"\nsummary: {out / 'demo_summary.json'}  (total {seconds:.0f} s)")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
