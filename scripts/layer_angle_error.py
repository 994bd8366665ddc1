#!/usr/bin/env python
"""Arbitrary-angle rotation error of single GMR layers: the paper's ``sampling="center"`` against ``"area"``.

For every kernel size, sampling and seed: one random single-channel ``GMRConv`` (float64, no bias, the layer's own
initialisation) on a smooth random field (Gaussian-filtered white noise, ``--field-sigma`` px), relative error
``||f(rotate(x)) - rotate(f(x))|| / ||rotate(f(x))||`` on the central disk (radius ``0.35 * size``) at each angle,
through :func:`monai_gmr.evaluation.spline_equivariance_error` (cubic-spline rotations, which add far less
interpolation error than PyTorch's bicubic resampling; 3D: in the H-W plane, scored on the cylinder of that disk
along the whole D axis). The worst angle counts for each seed; the table gives the median, 90th percentile and maximum over seeds, and
how many seeds exceed ``--bound``. Both samplings see the same fields and the same random ring weights (the weights
are drawn from the same generator state; their scale differs with the basis, which a relative error ignores).

Examples::

    python scripts/layer_angle_error.py --out docs/results/layer_angle_error
    python scripts/layer_angle_error.py --spatial-dims 3 --size 40 --kernel-sizes 5 7 9 --seeds 10 --out /tmp/lae3
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monai_gmr.evaluation import spline_equivariance_error  # noqa: E402
from monai_gmr.functional import SAMPLING_MODES  # noqa: E402
from monai_gmr.nn import GMRConv  # noqa: E402
from monai_gmr.utils import atomic_write_json, atomic_write_text, output_dir_error, run_environment  # noqa: E402

__all__ = ["smooth_field", "worst_errors", "summarise", "main"]

logger = logging.getLogger("layer_angle_error")


def smooth_field(size: int, spatial_dims: int, sigma: float, seed: int) -> torch.Tensor:
    """Gaussian-filtered white noise ``(1, 1, *([size] * spatial_dims))`` in float64, unit standard deviation."""
    from scipy import ndimage  # scipy ships with MONAI's dependencies (scikit-image) and is used by the tests

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((size,) * spatial_dims), sigma)
    field = field / field.std()
    return torch.from_numpy(field)[None, None]


def worst_errors(
    kernel_size: int, sampling: str, seeds: int, angles: list[float], size: int, spatial_dims: int, field_sigma: float
) -> list[float]:
    """Worst-angle relative error of one random layer per seed."""
    out = []
    for seed in range(seeds):
        x = smooth_field(size, spatial_dims, field_sigma, seed)
        torch.manual_seed(seed)
        layer = GMRConv(spatial_dims, 1, 1, kernel_size, bias=False, sampling=sampling).double().eval()
        with torch.no_grad():
            errs = spline_equivariance_error(layer, x, angles=angles, spatial_dims=spatial_dims)
        out.append(max(errs.values()))
    return out


def summarise(errors: list[float], bound: float) -> dict[str, float | int]:
    e = np.asarray(errors)
    return {"median": float(np.median(e)), "p90": float(np.quantile(e, 0.9)), "max": float(e.max()),
            "over_bound": int((e > bound).sum()), "seeds": int(e.size)}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (layer_angle_error.csv/.json/.md)")
    p.add_argument("--spatial-dims", type=int, default=2, choices=[2, 3])
    p.add_argument("--kernel-sizes", type=int, nargs="+", default=[3, 5, 7, 9, 11, 15, 21])
    p.add_argument("--samplings", nargs="+", default=list(SAMPLING_MODES), choices=list(SAMPLING_MODES))
    p.add_argument("--seeds", type=int, default=20, help="random layers (and fields) per kernel size")
    p.add_argument("--angles", type=float, nargs="+", default=[15.0, 30.0, 45.0])
    p.add_argument("--size", type=int, default=96, help="field side (pixels)")
    p.add_argument("--field-sigma", type=float, default=3.0, help="smoothing of the random field (pixels)")
    p.add_argument("--bound", type=float, default=0.01, help="error bound whose exceedances are counted")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    for k in args.kernel_sizes:
        if k < 1 or k % 2 == 0:
            p.error(f"--kernel-sizes must be odd positive ints, got {k}")
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.size < 2 * max(args.kernel_sizes):
        p.error(f"--size must be at least twice the largest kernel size, got {args.size}")
    if not (0 < args.field_sigma < math.inf and 0 < args.bound < math.inf):  # NaN fails every comparison
        p.error(f"--field-sigma and --bound must be finite and > 0, got {args.field_sigma} and {args.bound}")
    if not all(math.isfinite(a) for a in args.angles):
        p.error(f"--angles must be finite degrees, got {args.angles}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if output_dir_error(args.out):  # found now, not after every layer was measured
        p.error(output_dir_error(args.out))
    return args


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for k in args.kernel_sizes:
        for sampling in args.samplings:
            errors = worst_errors(k, sampling, args.seeds, args.angles, args.size, args.spatial_dims, args.field_sigma)
            row = {"kernel_size": k, "sampling": sampling, **summarise(errors, args.bound), "errors": errors}
            rows.append(row)
            logger.info("k=%d %s: median %.4f, p90 %.4f, max %.4f, %d of %d seeds > %g", k, sampling, row["median"],
                        row["p90"], row["max"], row["over_bound"], row["seeds"], args.bound)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    fields = ["kernel_size", "sampling", "median", "p90", "max", "over_bound", "seeds"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "layer_angle_error.csv", buf.getvalue())
    md = [f"| k | sampling | median | p90 | max | seeds > {args.bound:g} |", "|---|---|---:|---:|---:|---:|"]
    md += [f"| {r['kernel_size']} | {r['sampling']} | {r['median']:.4f} | {r['p90']:.4f} | {r['max']:.4f} | "
           f"{r['over_bound']} of {r['seeds']} |" for r in rows]  # fmt: skip
    atomic_write_text(out / "layer_angle_error.md", "\n".join(md) + "\n")
    result = {"settings": vars(args), "environment": run_environment("cpu"), "rows": rows}
    atomic_write_json(out / "layer_angle_error.json", result)
    logger.info("wrote %s\n%s", out, "\n".join(md))
    return result


if __name__ == "__main__":
    main()
