#!/usr/bin/env python
"""Instance post-processing on real nuclei masks: accuracy and rotation/flip consistency of each method.

For every instance mask in ``--labels`` (e.g. the CPM-15 ``labels/*.png``), its foreground (touching nuclei merged,
as a 2-class model predicts them) is split into instances by

- ``connected_components``: :func:`monai_gmr.workflows.common.instance_from_semantic` (the bundles' default),
- ``watershed``: the same function with ``method="watershed"`` (orientation-free markers and flooding),
- ``skimage_watershed``: scikit-image ``peak_local_max`` + ``watershed`` on the distance transform, the
  implementation this package used before (kept here as the reference),

and scored with the AJI against the mask's own instances. Consistency: for each of the 7 non-identity D4 elements
``g``, whether the instances of ``g(foreground)`` are ``g`` of the instances (same partition), and how many pixels
disagree. Time: wall seconds per tile for one call (single thread).

Example::

    python scripts/instance_consistency.py --labels ../shared/data/cpm15_nuclei_he/labels \
        --out docs/results/instance_consistency_cpm15
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monai_gmr.evaluation.metrics import aggregated_jaccard_index  # noqa: E402
from monai_gmr.utils import atomic_write_json, atomic_write_text, output_dir_error, run_environment  # noqa: E402
from monai_gmr.workflows.common import instance_from_semantic  # noqa: E402

__all__ = ["skimage_watershed", "partition_mismatch", "D4_OPS", "evaluate_masks", "main"]

logger = logging.getLogger("instance_consistency")

#: the 7 non-identity elements of D4 on (H, W) arrays, by name
D4_OPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "flip_h": lambda a: a[::-1],
    "flip_w": lambda a: a[:, ::-1],
    "transpose": lambda a: a.T,
    "anti_transpose": lambda a: np.rot90(a, 2).T,
}


def skimage_watershed(fg: np.ndarray, min_distance: int = 3) -> np.ndarray:
    """The earlier implementation: scikit-image ``peak_local_max`` seeds (one per blob at least) + ``watershed``."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    dist = ndimage.distance_transform_edt(fg)
    blobs, n_blobs = ndimage.label(fg)
    coords = peak_local_max(dist, min_distance=min_distance, labels=blobs, exclude_border=False)
    markers = np.zeros(fg.shape, dtype=np.int32)
    markers[tuple(coords.T)] = np.arange(1, len(coords) + 1)
    unseeded = np.setdiff1d(np.arange(1, n_blobs + 1), np.unique(blobs[tuple(coords.T)]))
    for j, b in enumerate(unseeded, start=len(coords) + 1):
        markers[tuple(np.argwhere(blobs == b)[0])] = j
    return watershed(-dist, markers, mask=fg).astype(np.int64)


def partition_mismatch(a: np.ndarray, b: np.ndarray) -> int:
    """Pixels of ``b`` outside the best-matching instance of ``a`` (0: the same partition, ids aside)."""
    a, b = np.asarray(a, np.int64).ravel(), np.asarray(b, np.int64).ravel()
    if not np.array_equal(a > 0, b > 0):
        return int(((a > 0) != (b > 0)).sum())
    pairs, counts = np.unique(np.stack([a, b]), axis=1, return_counts=True)
    best = {}
    for (ia, ib), c in zip(pairs.T.tolist(), counts.tolist()):
        best[ib] = max(best.get(ib, 0), c) if ib else 0
    size_b = np.bincount(b)
    used = {}
    for (ia, ib), c in zip(pairs.T.tolist(), counts.tolist()):  # each instance of a may match one of b only
        if ib and c == best[ib]:
            used.setdefault(ia, []).append(ib)
    lost = sum(int(size_b[ib]) - best[ib] for ib in best if ib)
    lost += sum(sum(int(size_b[ib]) for ib in ibs[1:]) for ibs in used.values())
    return int(lost)


def _methods(min_distance: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    return {
        "connected_components": lambda fg: instance_from_semantic(fg.astype(np.int64)),
        "watershed": lambda fg: instance_from_semantic(fg.astype(np.int64), "watershed", min_distance=min_distance),
        "skimage_watershed": lambda fg: skimage_watershed(fg, min_distance),
    }


def evaluate_masks(paths: list[Path], min_distance: int = 3) -> list[dict]:
    """One row per (mask, method): AJI, instance counts, D4 consistency, seconds."""
    from PIL import Image

    rows = []
    for path in paths:
        gt = np.asarray(Image.open(path)).astype(np.int64)
        if gt.ndim != 2:
            raise ValueError(f"instance mask {str(path)!r} must be 2D, got shape {gt.shape}.")
        fg = gt > 0
        for name, fn in _methods(min_distance).items():
            t0 = time.perf_counter()
            inst = fn(fg)
            seconds = time.perf_counter() - t0
            mism = {g: partition_mismatch(op(inst), fn(np.ascontiguousarray(op(fg)))) for g, op in D4_OPS.items()}
            rows.append({
                "mask": path.name, "method": name, "gt_nuclei": int(len(np.unique(gt)) - 1),
                "instances": int(len(np.unique(inst)) - 1),
                "aji": aggregated_jaccard_index(torch.as_tensor(inst), torch.as_tensor(gt)),
                "consistent_elements": sum(v == 0 for v in mism.values()), "mismatched_pixels": sum(mism.values()),
                "seconds": seconds,
            })  # fmt: skip
            logger.info("%s %s: AJI %.4f, %d/7 consistent", path.name, name, rows[-1]["aji"],
                        rows[-1]["consistent_elements"])  # fmt: skip
    return rows


def _table(rows: list[dict]) -> str:
    out = ["| method | AJI mean | instances (GT) | tiles consistent under all 7 | D4 elements consistent | "
           "mismatched pixels | s / tile |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == m]
        out.append(
            f"| {m} | {np.mean([r['aji'] for r in rs]):.4f} | {sum(r['instances'] for r in rs)} "
            f"({sum(r['gt_nuclei'] for r in rs)}) | {sum(r['consistent_elements'] == 7 for r in rs)}/{len(rs)} | "
            f"{sum(r['consistent_elements'] for r in rs)}/{7 * len(rs)} | {sum(r['mismatched_pixels'] for r in rs)} "
            f"| {np.mean([r['seconds'] for r in rs]):.3f} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--labels", required=True, help="folder of 2D instance-mask images (PNG/TIFF)")
    p.add_argument("--pattern", default="*.png", help="file pattern inside --labels")
    p.add_argument("--min-distance", type=int, default=3, help="watershed min_distance (the bundles' default 3)")
    p.add_argument("--out", required=True, help="output stem: writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    folder, out = Path(args.labels), Path(args.out)
    if error := output_dir_error(out.parent, "--out"):
        p.error(error)
    paths = sorted(folder.glob(args.pattern))
    if not paths:
        p.error(f"--labels {str(folder)!r} holds no file matching {args.pattern!r}.")
    if args.min_distance < 1:
        p.error(f"--min-distance must be >= 1, got {args.min_distance}.")
    rows = evaluate_masks(paths, args.min_distance)
    table = _table(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), {"command": " ".join(sys.argv), "labels": str(folder),
                                                 "min_distance": args.min_distance, "rows": rows,
                                                 "environment": run_environment()})  # fmt: skip
    atomic_write_text(out.with_suffix(".md"), table)
    logger.info("\n%s", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
