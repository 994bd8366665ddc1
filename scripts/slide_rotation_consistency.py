"""Slide-level orientation consistency of trained patch classifiers: the probability map of a slide scanned in the
8 orientations of the square (rotations by 0/90/180/270 degrees, with and without a flip), mapped back and compared.

The two networks of ``scripts/benchmark_wsi.py`` (``monai_gmr.nets.gmr_resnet18`` and MONAI's ResNet-18, same stage
widths) are trained by the WSI bundle's ``configs/train.json`` on the same synthetic slides (benchmark_wsi's
profile: ``--quick`` = small slides, 48-pixel patches, widths 8/16/32/64, 4 epochs), then
:func:`monai_gmr.evaluation.slide_map_consistency` runs ``infer_slide`` on the 8 lossless D4 copies of one synthetic
test slide (and, with ``--real-slide``, of a real slide; the models never saw real tissue, so there only the
consistency is meaningful, not the map) with ``grid="top_left"`` (MONAI's layout) and ``grid="centered"``.

Outputs under ``--out`` (outside the repository): ``data/``, ``<model>/`` (bundle training), ``consistency/``
(per-run JSON/CSV), ``slide_rotation_consistency.{json,md}``; ``--results PREFIX`` also writes
``PREFIX.json``/``PREFIX.md`` (e.g. ``docs/results/slide_rotation_consistency``).

Usage::

    python scripts/slide_rotation_consistency.py --quick --device cpu --out /tmp/slide_rot \\
        --real-slide ../shared/data/wsi_cmu1_small_region/cmu_small_region.svs \\
        --results docs/results/slide_rotation_consistency
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "markdown"]

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("monai_gmr.slide_rotation_consistency")
GRIDS = ("top_left", "centered")


def _benchmark_wsi():
    """scripts/benchmark_wsi.py as a module (its profiles, network definitions and bundle runner)."""
    spec = importlib.util.spec_from_file_location("benchmark_wsi", ROOT / "scripts" / "benchmark_wsi.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (outside the repository)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--quick", action="store_true", help="benchmark_wsi's CPU profile (small slides, patches, widths)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the profile's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse-training", action="store_true", help="reuse finished trainings in --out")
    p.add_argument("--real-slide", default=None, help="also measure this slide (level 0 read whole)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--results", default=None, help="also write PREFIX.json and PREFIX.md (e.g. in docs/results)")
    p.add_argument("--timeout", type=int, default=None, help="seconds per bundle training")
    args = p.parse_args(argv)
    for flag, v in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--timeout", args.timeout)):
        if v is not None and v < 1:
            p.error(f"{flag} must be >= 1, got {v}")
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device must be cpu or cuda, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():  # else both networks train first, then .to() fails
        p.error(f"--device {args.device}: CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        p.error(f"--device {args.device}: only {torch.cuda.device_count()} GPU(s) visible here")
    if args.real_slide is not None and not Path(args.real_slide).is_file():
        p.error(f"--real-slide {args.real_slide!r} does not exist")
    sys.path.insert(0, str(ROOT))
    from monai_gmr.utils import output_dir_error

    if output_dir_error(args.out):
        p.error(output_dir_error(args.out))
    if args.results and output_dir_error(Path(args.results).absolute().parent, "the folder of --results"):
        p.error(output_dir_error(Path(args.results).absolute().parent, "the folder of --results"))
    return args


def symmetric_size(size0: list[int], patch0: int, step0: int, block0: int) -> list[int]:
    """The largest level-0 ``(H', W') <= size0`` on which both the centred patch grid and the map grid are
    symmetric: the uncovered remainder of the grid is even on every side (the centred grid is then exactly the
    transformed grid) and every side is a multiple of ``block0`` (level-0 pixels per map cell, so the map has no
    partial block)."""
    out = []
    for s in (int(v) for v in size0):
        for c in range(s, 0, -1):
            n = len(range(0, c - patch0 + 1, step0))
            if c % block0 == 0 and (n == 0 or (c - patch0 - (n - 1) * step0) % 2 == 0):
                out.append(c)
                break
        else:
            raise ValueError(f"no symmetric size <= {s} for patch {patch0}, step {step0}, block {block0}.")
    return out


def _write_symmetric_crop(src: str, dst: Path, patch0: int, map_max_size: int) -> dict[str, Any]:
    """Crop a one-level slide at its bottom/right to :func:`symmetric_size` and write it losslessly."""
    import math

    import numpy as np

    from monai_gmr.data import slide_info, write_pyramidal_tiff
    from monai_gmr.data.wsi import open_slide

    info = slide_info(src)
    if info["level_count"] != 1:
        raise ValueError(f"the symmetric crop handles one-level slides only; {src!r} has {info['level_count']}.")
    h0, w0 = info["sizes"][0]
    block = int(math.ceil(max(h0, w0) / map_max_size)) if max(h0, w0) > map_max_size else 1
    hh, ww = symmetric_size([h0, w0], patch0, patch0, block)
    reader, wsi = open_slide(src)
    img, _ = reader.get_data(wsi, location=(0, 0), size=(hh, ww), level=0)
    rgb = np.ascontiguousarray(np.moveaxis(np.asarray(img)[:3], 0, -1))
    mpp = float(np.mean(info["mpp"][0])) if info["mpp"] else 0.5
    write_pyramidal_tiff(dst, rgb, mpp=mpp, n_levels=1, compression="deflate", description="symmetric crop")
    return {"size0": [hh, ww], "block": block}


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "0" if v == 0 else (f"{v:.2e}" if abs(v) < 1e-3 else f"{v:.4f}")
    return str(v)


def markdown(report: dict[str, Any]) -> str:
    """The report's tables as Markdown."""
    s = report["settings"]
    lines = ["# Slide-map consistency under rotation/flip of the slide (8 D4 orientations)", "",
             f"command: `{report['command']}`", "",
             f"commit: {report['environment'].get('commit')}; machine: {report['environment'].get('cpu_count')}-core "
             f"{report['environment'].get('cpu')} ({report['environment'].get('device')}), torch "
             f"{report['environment'].get('torch')}, MONAI {report['environment'].get('monai')}", "",
             f"training: benchmark_wsi profile `{s['profile']}` ({s['epochs']} epochs, patch {s['patch_size']}, widths "
             f"{s['widths']}); inference: patch {s['patch_size']} at level 0, no overlap, min_tissue 0.25, "
             "map_max_size 2048; copies written losslessly (deflate). Differences over the map cells that are tissue and "
             "scored by a patch in both maps (coverage IoU: IoU of the scored tissue cells); Dice/agreement of the "
             "maps thresholded at 0.5; worst = over the 7 non-identity elements.", ""]
    lines += ["| slide | model | grid | patches | mean abs diff (worst) | max abs diff (worst, element) | Dice min | "
              "agreement min | tissue IoU min | coverage IoU min |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        w = r["worst"]
        lines.append(f"| {r['slide_kind']} | {r['model']} | {r['grid']} | {r['reference']['n_patches']} | "
                     f"{_fmt(w['mean_abs_diff'])} | {_fmt(w['max_abs_diff'])} ({w['max_abs_diff_element']}) | "
                     f"{_fmt(w['dice'])} | {_fmt(w['agreement'])} | {_fmt(w['tissue_iou'])} | {_fmt(w.get('coverage_iou'))} |")  # fmt: skip
    names = [e["element"] for e in report["runs"][0]["elements"]] if report["runs"] else []
    lines += ["", "max abs probability difference per element:", "",
              "| slide | model | grid | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for r in report["runs"]:
        lines.append(f"| {r['slide_kind']} | {r['model']} | {r['grid']} | "
                     + " | ".join(_fmt(e["max_abs_diff"]) for e in r["elements"]) + " |")  # fmt: skip
    lines += ["", "grid offsets (level-0 (y, x) of the first patch, identity copy): "
              + "; ".join(f"{r['slide_kind']} {r['grid']}: {r['elements'][0]['grid_offset']}" for r in report["runs"]
                          if r["model"] == report["runs"][0]["model"]), ""]  # fmt: skip
    for k, v in report.get("slides", {}).items():
        lines.append(f"- {k} slide: `{v['path']}`, level-0 {v['size0']}, {v['levels']} level(s)")
    lines += ["", f"total: {report['seconds']} s", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train (or reuse) both networks, measure the consistency tables, write the report; returns it."""
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from monai_gmr.data import ensure_wsi_dataset, slide_info
    from monai_gmr.evaluation import slide_map_consistency
    from monai_gmr.utils import atomic_write_json, atomic_write_text, run_environment
    from monai_gmr.workflows.common import load_checkpoint
    from monai_gmr.workflows.wsi import inference_slides

    bw = _benchmark_wsi()
    out = Path(args.out).resolve()
    if ROOT in out.parents or out == ROOT:
        raise SystemExit(f"--out {out} is inside the repository; choose a folder outside {ROOT}")
    prof = dict(bw.PROFILES["quick" if args.quick else "full"])
    bw.check_existing_slides(out / "data", prof["synthetic"])  # another profile's slides are not reused silently
    out.mkdir(parents=True, exist_ok=True)
    epochs = int(args.epochs or prof["epochs"])
    from monai_gmr.utils import subprocess_env

    try:  # the bundle trainings use the device (cuda:N included) through CUDA_VISIBLE_DEVICES
        env = subprocess_env(args.device, pythonpath=ROOT)
    except ValueError as e:
        raise SystemExit(f"--device: {e}") from e
    t0 = time.perf_counter()
    data = out / "data"
    ensure_wsi_dataset(data, generate=True, **prof["synthetic"])
    common = {"dataset_dir": str(data), "generate_synthetic": False, "synthetic": prof["synthetic"],
              "patch_size": int(prof["patch_size"]), "seed": int(args.seed), "num_workers": 0}  # fmt: skip
    train = {"epochs": epochs, "batch_size": int(prof["batch_size"]), "augment_rotation": False, "log_interval": 50}
    device = torch.device(args.device)
    nets: dict[str, Any] = {}
    train_s: dict[str, float] = {}
    for name, net_def in bw.networks(prof["widths"]).items():
        run_dir = out / name
        done = bw._completed_training(run_dir, epochs, args.seed) if args.reuse_training else None
        if done is None:
            logger.info("training %s (log: %s)", name, run_dir / "train.log")
            over = {**common, "output_dir": str(run_dir), "network_def": net_def, **train}
            bw.training_started(run_dir)
            done = bw._run(bw._bundle_cmd(["train.json"], over), run_dir / "train.log", env, args.timeout)
            bw.training_finished(run_dir, args.seed, epochs)
        train_s[name] = round(float(done), 1)
        net = bw._build(net_def)
        load_checkpoint(net, run_dir / "models" / "model.pt")
        nets[name] = net.to(device).eval()
    slides = {"synthetic": str(inference_slides(None, data, "test", False, prof["synthetic"])[0]["image"])}
    crop: dict[str, Any] = {}
    if args.real_slide:
        slides["real"] = str(Path(args.real_slide).resolve())
        # the real slide cut at its bottom/right so that the centred grid and the map grid are symmetric: separates
        # what the network does from what odd remainders and partial map blocks do
        crop = _write_symmetric_crop(slides["real"], out / "real_symmetric_crop.tif", int(prof["patch_size"]), 2048)
        slides["real_crop"] = str(out / "real_symmetric_crop.tif")
    kw = {"patch_size": int(prof["patch_size"]), "batch_size": int(args.batch_size), "device": device,
          "min_tissue": 0.25, "overlap": 0.0, "map_max_size": 2048}  # fmt: skip
    runs = []
    for kind, path in slides.items():
        for name, net in nets.items():
            for grid in GRIDS:
                tag = f"{kind}_{name}_{grid}"
                logger.info("consistency: %s", tag)
                r = slide_map_consistency(path, net, out / "work", {**kw, "grid": grid},
                                          output_json=out / "consistency" / f"{tag}.json",
                                          output_csv=out / "consistency" / f"{tag}.csv")  # fmt: skip
                runs.append({"slide_kind": kind, "model": name, "grid": grid, **r})
                logger.info("%s worst: %s", tag, r["worst"])
    info = {}
    for kind, path in slides.items():
        if kind == "real_crop":
            info[kind] = {"path": f"real slide cut to its top-left {crop['size0']} (map block {crop['block']})",
                          "size0": crop["size0"], "levels": 1}  # fmt: skip
            continue
        si = slide_info(path)
        info[kind] = {"path": os.path.relpath(path, ROOT) if ROOT in Path(path).parents or ROOT.parent in Path(path).parents
                      else path, "size0": list(si["sizes"][0]), "levels": si["level_count"]}  # fmt: skip
    envd = run_environment(str(device), repo=ROOT)
    report = {
        "command": "python scripts/slide_rotation_consistency.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {"profile": "quick" if args.quick else "full", "epochs": epochs, "patch_size": prof["patch_size"],
                     "widths": prof["widths"], "synthetic": prof["synthetic"], "seed": args.seed,
                     "infer": {k: (str(v) if k == "device" else v) for k, v in kw.items()}},  # fmt: skip
        "environment": envd,
        "train_s": train_s,
        "slides": info,
        "runs": runs,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(out / "slide_rotation_consistency.json", report)
    md = markdown(report)
    atomic_write_text(out / "slide_rotation_consistency.md", md)
    if args.results:
        atomic_write_json(f"{args.results}.json", report)
        atomic_write_text(f"{args.results}.md", md)
    logger.info("written %s", out / "slide_rotation_consistency.md")
    print(md)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
