"""Network-level rotation-equivariance report: GMRUNet vs MONAI BasicUNet of similar width.

For every angle in 0..90 degrees (5-degree steps by default) it measures the relative error
``||f(rotate(x)) - rotate(f(x))|| / ||rotate(f(x))||`` of the network logits on the central disk (radius
``radius_frac`` of the image, intersected with the interpolation-validity mask) with
:func:`monai_gmr.evaluation.equivariance.equivariance_error` (bicubic rotations in 2D), for both networks at random
initialisation and after a short training on synthetic H&E-like nuclei tiles
(:func:`monai_gmr.data.render_nuclei_tile`; a synthetic blob task generated here if that module is unavailable).

Outputs (all written atomically): ``equivariance_report.csv`` (model, stage, angle, rel_err),
``equivariance_report.json`` (settings, errors, 45-degree ratios) and ``equivariance_report.png`` (error vs angle).

Example (CPU, about a minute)::

    python scripts/equivariance_report.py --out equivariance_out --size 64 --train-steps 30
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet

from monai_gmr.evaluation.equivariance import equivariance_error
from monai_gmr.nets import GMRUNet
from monai_gmr.utils import atomic_path, atomic_write_json, atomic_write_text, seed_everything

__all__ = ["build_models", "synthetic_batch", "train", "run_report", "main"]

logger = logging.getLogger("monai_gmr.equivariance_report")


def build_models(features: tuple[int, int, int, int], kernel_sizes: tuple[int, int, int, int]) -> dict[str, torch.nn.Module]:
    """GMRUNet (3 levels, widths ``features``) and BasicUNet with the same widths per level (plus MONAI's 4th
    down-sampling level at the deepest width): ``BasicUNet(features=(f0, f1, f2, f3, f3, f0))``."""
    f0, f1, f2, f3 = features
    return {
        "GMRUNet": GMRUNet(2, 3, 2, features=features, kernel_sizes=kernel_sizes),
        "BasicUNet": BasicUNet(2, 3, 2, features=(f0, f1, f2, f3, f3, f0)),
    }


def synthetic_batch(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` RGB tiles ``(n, 3, size, size)`` in [0, 1] and binary nuclei masks ``(n, size, size)``; data source name."""
    try:
        from monai_gmr.data import render_nuclei_tile
    except ImportError:  # the synthetic nuclei generator is not available: bright elliptical blobs on noise
        render_nuclei_tile = None
    images, labels = [], []
    if render_nuclei_tile is not None:
        for i in range(n):
            rgb, inst, _ = render_nuclei_tile(size, np.random.default_rng([seed, i]), nuclei_density=2.5e-3, fiber_density=1e-3)
            images.append(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0)
            labels.append(torch.from_numpy((inst > 0).astype(np.int64)))
        return torch.stack(images), torch.stack(labels), "monai_gmr.data.render_nuclei_tile"
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    for _ in range(n):
        mask = torch.zeros(size, size, dtype=torch.bool)
        for _ in range(max(2, size * size // 600)):
            cy, cx = torch.rand(2, generator=g) * size
            a, b = 2 + torch.rand(2, generator=g) * 6
            t = torch.rand(1, generator=g) * np.pi
            dy, dx = yy - cy, xx - cx
            u, v = dx * torch.cos(t) + dy * torch.sin(t), -dx * torch.sin(t) + dy * torch.cos(t)
            mask |= (u / a) ** 2 + (v / b) ** 2 <= 1
        img = 0.15 * torch.randn(3, size, size, generator=g) + mask.float() * torch.tensor([0.6, 0.2, 0.7]).view(3, 1, 1)
        images.append(img)
        labels.append(mask.long())
    return torch.stack(images), torch.stack(labels), "blobs generated in scripts/equivariance_report.py"


def train(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, lr: float, seed: int) -> list[float]:
    """Adam on cross-entropy over random mini-batches of ``(x, y)`` (no augmentation); returns the losses."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        opt.zero_grad()
        loss = F.cross_entropy(net(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def run_report(args: argparse.Namespace) -> dict:
    """Measure, write CSV/JSON/PNG into ``args.out`` and return the JSON summary."""
    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    angles = [float(a) for a in np.arange(0.0, args.max_angle + 1e-9, args.step)]
    models = build_models(tuple(args.features), tuple(args.kernel_sizes))
    x_train, y_train, source = synthetic_batch(args.n_train, args.size, args.seed)
    x_eval, _, _ = synthetic_batch(args.n_eval, args.size, args.seed + 1000)
    rows: list[dict] = []
    results: dict[str, dict[str, dict[float, float]]] = {}
    train_info: dict[str, dict] = {}
    for name, net in models.items():
        results[name] = {}
        for stage in ("init", "trained"):
            if stage == "trained":
                t0 = time.perf_counter()
                losses = train(net, x_train, y_train, args.train_steps, args.batch, args.lr, args.seed)
                train_info[name] = {"first_loss": losses[0], "last_loss": losses[-1], "seconds": time.perf_counter() - t0}
                logger.info("%s: trained %d steps, loss %.3f -> %.3f", name, args.train_steps, losses[0], losses[-1])
            net.eval()
            errs = equivariance_error(net, x_eval, angles, radius_frac=args.radius_frac, mode=args.mode)
            results[name][stage] = errs
            rows += [{"model": name, "stage": stage, "angle": a, "rel_err": e} for a, e in errs.items()]
            logger.info("%s (%s): error at 45 deg %.3e", name, stage, errs.get(45.0, float("nan")))
    ratios = {
        stage: results["GMRUNet"][stage][45.0] / max(results["BasicUNet"][stage][45.0], 1e-300)
        for stage in ("init", "trained")
        if 45.0 in results["GMRUNet"][stage]
    }
    out = Path(args.out)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["model", "stage", "angle", "rel_err"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "equivariance_report.csv", buf.getvalue())
    summary = {
        "settings": {k: v for k, v in vars(args).items()},
        "data": source,
        "parameters": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
        "training": train_info,
        "errors": {n: {s: {str(a): e for a, e in d.items()} for s, d in v.items()} for n, v in results.items()},
        "ratio_gmr_over_basicunet_at_45": ratios,
        "target_ratio_at_45": 0.2,
    }
    atomic_write_json(out / "equivariance_report.json", summary)
    _plot(results, out / "equivariance_report.png")
    return summary


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, stage in zip(axes, ("init", "trained")):
        for name, style in (("GMRUNet", "o-"), ("BasicUNet", "s--")):
            errs = results[name][stage]
            angles = [a for a in errs if a != 0.0]
            ax.semilogy(angles, [max(errs[a], 1e-9) for a in angles], style, label=name, markersize=4)
        ax.set_title(f"{'random init' if stage == 'init' else 'after training'}")
        ax.set_xlabel("rotation angle (degrees)")
        ax.set_xticks(range(0, 91, 15))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("relative equivariance error (central disk)")
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="equivariance_report", help="output folder")
    p.add_argument("--size", type=int, default=64, help="image size (multiple of 16 for BasicUNet)")
    p.add_argument("--features", type=int, nargs=4, default=[16, 32, 64, 128], help="widths per level")
    p.add_argument("--kernel-sizes", type=int, nargs=4, default=[9, 9, 5, 5], help="GMR kernel widths per level")
    p.add_argument("--max-angle", type=float, default=90.0)
    p.add_argument("--step", type=float, default=5.0)
    p.add_argument("--radius-frac", type=float, default=0.35)
    p.add_argument("--mode", default="bicubic", help="interpolation of the rotations")
    p.add_argument("--n-train", type=int, default=16, help="synthetic training tiles")
    p.add_argument("--n-eval", type=int, default=4, help="synthetic evaluation tiles")
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.size % 16:
        raise SystemExit(f"--size must be a multiple of 16 (BasicUNet has 4 down-sampling levels), got {args.size}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    summary = run_report(args)
    print(f"data: {summary['data']}")
    for name, stages in summary["errors"].items():
        for stage, errs in stages.items():
            print(f"{name:10s} {stage:8s} err@15={errs.get('15.0', float('nan')):.3e} err@45={errs.get('45.0', float('nan')):.3e} err@90={errs.get('90.0', float('nan')):.3e}")
    print("GMRUNet / BasicUNet error at 45 deg:", {k: round(v, 4) for k, v in summary["ratio_gmr_over_basicunet_at_45"].items()}, "(target <= 0.2)")
    print(f"wrote {Path(args.out) / 'equivariance_report.csv'}, .json, .png")
    return summary


if __name__ == "__main__":
    main()
