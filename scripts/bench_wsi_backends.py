"""Slide inference time per WSI reader backend (openslide vs tifffile) on one slide, through the WSI bundle.

Runs ``configs/inference.json`` of ``bundles/gmr_wsi_patch_classification`` (tissue detection, sliding patches over
tissue, batched inference, map assembly) on ``--slide`` with each backend, interleaved (openslide, tifffile,
openslide, ...) after one warm-up run each, with a small untrained GMR ResNet-18 (reading dominates; the weights do
not change the time) on the CPU. Reports the median wall time and patches/s per backend and the largest difference
between the two probability maps (the backends must read the same pixels). Everything is written under ``--out``
(outside the repository; ``bench_wsi_backends.json`` atomically).

Usage::

    python scripts/bench_wsi_backends.py --slide ../shared/data/wsi_cmu1_small_region/cmu_small_region.svs \\
        --out /tmp/bench_wsi_backends
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "gmr_wsi_patch_classification" / "configs"
SMALL_NET = {
    "_target_": "monai_gmr.nets.gmr_resnet18", "spatial_dims": 2, "in_channels": 3, "num_classes": "@num_classes",
    "block_inplanes": [4, 8, 8, 16], "kernel_sizes": [5, 5, 3, 3],
}  # fmt: skip
BACKENDS = ("openslide", "tifffile")

logger = logging.getLogger("bench_wsi_backends")


def run_once(slide: str, backend: str, out: Path, map_max_size: int) -> dict:
    """One slide inference through the bundle config; the slide's summary entry plus ``wall_s``."""
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(str(CONFIGS / "inference.json"))
    p.read_meta(str(CONFIGS / "metadata.json"))
    p.update({"output_dir": str(out / backend), "network_def": SMALL_NET, "input_slides": [slide], "num_workers": 0,
              "batch_size": 32, "device": "$torch.device('cpu')", "amp": False, "wsi_backend": backend,
              "map_max_size": map_max_size})  # fmt: skip
    t0 = time.perf_counter()
    summary = p.get_parsed_content("slide_inference").run()
    wall = time.perf_counter() - t0
    if summary["n_ok"] != 1:
        raise RuntimeError(f"slide inference with backend {backend!r} failed: {summary}")
    return {**summary["slides"][0], "wall_s": wall}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slide", required=True, help="slide file (e.g. an Aperio .svs or a pyramidal TIFF)")
    ap.add_argument("--out", required=True, help="output folder (outside the repository)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per backend (after one warm-up each)")
    ap.add_argument("--map-max-size", type=int, default=1024, help="map_max_size of the bundle")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.map_max_size < 1:
        ap.error(f"--map-max-size must be >= 1, got {args.map_max_size}")
    if not Path(args.slide).is_file():
        ap.error(f"--slide {args.slide}: no such file")
    out = Path(args.out).resolve()
    if ROOT in out.parents or out == ROOT:
        ap.error(f"--out {out} is inside the repository; choose a folder outside {ROOT}")
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from monai_gmr.utils import atomic_write_json

    torch.manual_seed(0)
    runs: dict[str, list[dict]] = {b: [] for b in BACKENDS}
    for i in range(args.repeats + 1):
        for b in BACKENDS:
            r = run_once(args.slide, b, out, args.map_max_size)
            if i:  # the first round warms up
                runs[b].append(r)
    maps = {b: np.load(runs[b][-1]["files"]["prob"]) for b in BACKENDS}
    result = {
        "slide": args.slide,
        "n_patches": runs[BACKENDS[0]][-1]["n_patches"],
        "median_wall_s": {b: statistics.median(r["wall_s"] for r in runs[b]) for b in BACKENDS},
        "median_patches_per_s": {b: statistics.median(r["patches_per_s"] for r in runs[b]) for b in BACKENDS},
        "max_abs_prob_difference": float(np.abs(maps["openslide"] - maps["tifffile"]).max()),
        "repeats": args.repeats,
    }
    atomic_write_json(out / "bench_wsi_backends.json", result)
    logger.info("%s", json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
