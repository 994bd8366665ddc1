"""Network-level rotation-equivariance report: GMRUNet vs MONAI BasicUNet of similar width.

For every angle in 0..90 degrees (5-degree steps by default) it measures the relative error
``||f(rotate(x)) - rotate(f(x))|| / ||rotate(f(x))||`` on the central disk (radius ``radius_frac`` of the image,
intersected with the interpolation-validity mask; bicubic rotations) for both networks, at random initialisation
and after a short training on synthetic H&E-like nuclei tiles (:func:`monai_gmr.data.render_nuclei_tile`; a
synthetic blob task generated here if that module is unavailable). Training uses ``--size`` tiles; evaluation
uses ``--eval-size`` tiles (the nets are fully convolutional), so the image border is further from the disk.

Four kinds of evaluation input, all reported:

* ``tile``: the rendered tile as is. Rotating it by a non-right angle cuts off its corners and fills new corners
  with zeros; with instance norm (both nets' default) the per-image statistics of every layer then change, which
  shifts the whole output -- an error of the *input*, not of the layers.
* ``crop``: a tile cut from the centre of a larger rendered field, against the same cut from the rotated field (a
  slide placed at another angle, tiled at the same place): no zero corners, but the tissue near the tile's
  corners differs between the two views, and both nets' receptive fields reach it.
* ``disk``: the tile multiplied by a soft disk mask (radius ``S/2 - 1``, cosine taper of ``--taper`` pixels), so
  the input content is the same at every angle.
* ``canvas``: the same disk centred on a zero canvas of side ``--canvas`` (default twice ``--eval-size``; the
  central disk keeps its radius in pixels, :func:`monai_gmr.evaluation.on_canvas`). The square border of the
  input is not rotation-invariant either (zero padding there, bias/norm/activation outputs around the content);
  on the bare disk a receptive field as large as GMRUNet's (288 pixels) carries the border's effect into the
  central disk, on the canvas mostly the network's own equivariance error remains.

Two outputs, measured from the same forward passes: ``logits`` and ``probs`` (softmax over classes).

Outputs (all written atomically): ``equivariance_report.csv`` (model, stage, input, output, angle, rel_err),
``equivariance_layers.csv`` (the error of every leaf module's output on the ``disk`` and ``canvas`` inputs at
``--layer-angle``, :func:`monai_gmr.evaluation.layerwise_equivariance_error`: where the error arises),
``equivariance_report.json`` (settings, training losses, parameters, errors, GMRUNet/BasicUNet ratios at 45
degrees) and ``equivariance_report.png`` (error vs angle).

Example (CPU, 2 threads, about 5 minutes; docs/networks.md quotes this run)::

    python scripts/equivariance_report.py --out docs/results --threads 2
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet

from monai_gmr.evaluation.equivariance import layerwise_equivariance_error, masked_rel_err, on_canvas
from monai_gmr.functional.rotation import central_disk_mask, rotate, validity_mask
from monai_gmr.nets import GMRUNet
from monai_gmr.utils import atomic_path, atomic_write_json, atomic_write_text, output_dir_error, seed_everything

__all__ = ["angle_grid", "build_models", "synthetic_batch", "disk_taper", "field_size", "measure", "train", "run_report", "main"]

INPUTS = ("tile", "crop", "disk", "canvas")
OUTPUTS = ("logits", "probs")

logger = logging.getLogger("monai_gmr.equivariance_report")


def build_models(
    features: tuple[int, int, int, int],
    kernel_sizes: tuple[int, int, int, int],
    norm: str = "instance",
    sampling: str = "center",
) -> dict[str, torch.nn.Module]:
    """GMRUNet (3 levels, widths ``features``) and BasicUNet with the same widths per level (plus MONAI's 4th
    down-sampling level at the deepest width): ``BasicUNet(features=(f0, f1, f2, f3, f3, f0))``.

    ``norm``: ``"instance"`` (both nets' default, affine instance norm) or ``"batch"`` (evaluated in eval mode,
    i.e. with running statistics: a per-channel affine map, no per-image statistics). ``sampling``: the GMR layers'
    kernel sampling (``"center"`` or ``"area"``, see :class:`monai_gmr.nn.GMRConv`).
    """
    f0, f1, f2, f3 = features
    n = ("instance", {"affine": True}) if norm == "instance" else ("batch", {})
    return {
        "GMRUNet": GMRUNet(2, 3, 2, features=features, kernel_sizes=kernel_sizes, norm=n, sampling=sampling),
        "BasicUNet": BasicUNet(2, 3, 2, features=(f0, f1, f2, f3, f3, f0), norm=n),
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


def disk_taper(size: int, taper: float = 4.0) -> torch.Tensor:
    """``(size, size)`` weights: 1 inside radius ``size / 2 - 1 - taper``, a cosine ramp to 0 at ``size / 2 - 1``."""
    c = (size - 1) / 2.0
    yy, xx = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    r = (yy**2 + xx**2).sqrt()
    w = ((size / 2.0 - 1.0 - r) / max(taper, 1e-6)).clamp(0.0, 1.0)
    return 0.5 - 0.5 * torch.cos(np.pi * w)


def field_size(size: int, margin: int = 4) -> int:
    """Side of a field whose rotation by any angle still covers its central ``size`` square with ``margin`` pixels
    to spare (so no rotated-in zero and no interpolation border reaches the crop); ``field - size`` is even."""
    return size + 2 * math.ceil(size * (math.sqrt(2.0) - 1.0) / 2.0 + margin)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size x size`` window of ``(..., H, W)`` (``H - size`` and ``W - size`` even)."""
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top : top + size, left : left + size]


def crop_view(field: torch.Tensor, size: int, mode: str) -> Callable[[float], torch.Tensor]:
    """``angle -> central crop of the rotated field`` (the ``crop`` input); refuses a field too small to fill it."""

    def view(a: float) -> torch.Tensor:
        valid = center_crop(validity_mask(field.shape[-2:], a, 2, mode, device=field.device), size)
        if not bool(valid.all()):
            raise ValueError(f"field of {tuple(field.shape[-2:])} does not cover a {size}-pixel crop at {a} degrees.")
        return center_crop(rotate(field, a, 2, mode), size)

    return view


@torch.no_grad()
def measure(
    net: torch.nn.Module,
    x: torch.Tensor,
    angles: list[float],
    radius_frac: float,
    mode: str,
    view: Callable[[float], torch.Tensor] | None = None,
) -> dict[str, dict[float, float]]:
    """``{"logits": {angle: err}, "probs": {angle: err}}`` from one forward pass per angle (``net`` in eval mode).

    Same definition as :func:`monai_gmr.evaluation.equivariance.equivariance_error` (central disk intersected with
    the validity mask of the rotation), computed here for two outputs at once. ``view(angle)`` gives the rotated
    input (default ``rotate(x, angle)``; the ``crop`` input cuts it from a rotated larger field instead).
    """
    y0 = net(x)
    disk = central_disk_mask(y0.shape[-2:], radius_frac, device=y0.device)
    out: dict[str, dict[float, float]] = {k: {} for k in OUTPUTS}
    for a in angles:
        y = net(rotate(x, a, 2, mode) if view is None else view(a))
        mask = disk & validity_mask(y0.shape[-2:], a, 2, mode, device=y0.device)
        out["logits"][a] = masked_rel_err(y, rotate(y0, a, 2, mode), mask)
        out["probs"][a] = masked_rel_err(torch.softmax(y, 1), rotate(torch.softmax(y0, 1), a, 2, mode), mask)
    return out


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


def angle_grid(max_angle: float, step: float) -> list[float]:
    """Angles ``0, step, 2 step, ... <= max_angle`` in degrees, rounded to 6 decimals (``np.arange`` gave
    ``89.10000000000001`` for ``step=0.1``, which then appeared in the CSV and missed the 45-degree lookup)."""
    return [round(float(a), 6) for a in np.arange(0.0, max_angle + 1e-9, step)]


def run_report(args: argparse.Namespace) -> dict:
    """Measure, write CSV/JSON/PNG into ``args.out`` and return the JSON summary."""
    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    angles = angle_grid(args.max_angle, args.step)
    models = build_models(tuple(args.features), tuple(args.kernel_sizes), args.norm, args.sampling)
    x_train, y_train, source = synthetic_batch(args.n_train, args.size, args.seed)
    x_tile, _, _ = synthetic_batch(args.n_eval, args.eval_size, args.seed + 1000)
    x_field, _, _ = synthetic_batch(args.n_eval, field_size(args.eval_size), args.seed + 2000)
    x_disk = x_tile * disk_taper(args.eval_size, args.taper)
    canvas = args.canvas or 2 * args.eval_size
    x_canvas, canvas_radius = on_canvas(x_disk, canvas, 2, args.radius_frac)
    # input name -> (input, radius fraction of the central disk, rotated view or None for rotate(input))
    inputs = {
        "tile": (x_tile, args.radius_frac, None),
        "crop": (center_crop(x_field, args.eval_size), args.radius_frac, crop_view(x_field, args.eval_size, args.mode)),
        "disk": (x_disk, args.radius_frac, None),
        "canvas": (x_canvas, canvas_radius, None),
    }
    rows: list[dict] = []
    # results[model][stage][input][output][angle]
    results: dict[str, dict[str, dict[str, dict[str, dict[float, float]]]]] = {}
    train_info: dict[str, dict] = {}
    layer_rows: list[dict] = []
    for name, net in models.items():
        results[name] = {}
        for stage in ("init", "trained"):
            if stage == "trained":
                t0 = time.perf_counter()
                losses = train(net, x_train, y_train, args.train_steps, args.batch, args.lr, args.seed)
                train_info[name] = {"first_loss": losses[0], "last_loss": losses[-1], "seconds": round(time.perf_counter() - t0, 1)}
                logger.info("%s: trained %d steps, loss %.3f -> %.3f", name, args.train_steps, losses[0], losses[-1])
            net.eval()
            results[name][stage] = {}
            for inp, (x, radius, view) in inputs.items():
                errs = measure(net, x, angles, radius, args.mode, view)
                results[name][stage][inp] = errs
                for output, d in errs.items():
                    rows += [{"model": name, "stage": stage, "input": inp, "output": output, "angle": a, "rel_err": e} for a, e in d.items()]
                logger.info("%s (%s, %s input): error at 45 deg: logits %.3e, probs %.3e", name, stage, inp,
                            errs["logits"].get(45.0, float("nan")), errs["probs"].get(45.0, float("nan")))  # fmt: skip
            # where the error arises: every leaf module's output at the layer angle, disk input bare and on the canvas
            for inp in ("disk", "canvas"):
                x, radius, _ = inputs[inp]
                for module, (shape, e) in layerwise_equivariance_error(net, x, args.layer_angle, radius_frac=radius, mode=args.mode).items():
                    layer_rows.append({"model": name, "stage": stage, "input": inp, "module": module, "type": type(net.get_submodule(module.rsplit("#", 1)[0])).__name__,
                                       "shape": "x".join(map(str, shape)), "angle": args.layer_angle, "rel_err": e})  # fmt: skip
    ratios = {
        f"{stage}/{inp}/{output}": results["GMRUNet"][stage][inp][output][45.0] / max(results["BasicUNet"][stage][inp][output][45.0], 1e-300)
        for stage in ("init", "trained")
        for inp in INPUTS
        for output in OUTPUTS
        if 45.0 in results["GMRUNet"][stage][inp][output]
    }
    out = Path(args.out)
    for name, table in (("equivariance_report.csv", rows), ("equivariance_layers.csv", layer_rows)):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
        atomic_write_text(out / name, buf.getvalue())
    summary = {
        "settings": {**vars(args), "canvas": canvas, "field": field_size(args.eval_size)},
        "data": source,
        "parameters": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
        "training": train_info,
        "errors": {
            n: {st: {i: {o: {str(a): e for a, e in d.items()} for o, d in od.items()} for i, od in sd.items()} for st, sd in v.items()}
            for n, v in results.items()
        },
        "ratio_gmr_over_basicunet_at_45": ratios,
        "target_ratio_at_45": 0.2,
        "target_met": {k: v <= 0.2 for k, v in ratios.items()},
    }
    atomic_write_json(out / "equivariance_report.json", summary)
    _plot(results, out / "equivariance_report.png")
    return summary


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(INPUTS), 2, figsize=(11, 4 * len(INPUTS)), sharey=True)
    for row, inp in enumerate(INPUTS):
        for col, stage in enumerate(("init", "trained")):
            ax = axes[row, col]
            for name, color in (("GMRUNet", "tab:blue"), ("BasicUNet", "tab:orange")):
                for output, style in (("logits", "o-"), ("probs", "s--")):
                    errs = results[name][stage][inp][output]
                    angles = [a for a in errs if a != 0.0]
                    ax.semilogy(angles, [max(errs[a], 1e-9) for a in angles], style, color=color, markersize=3,
                                label=f"{name} {output}")  # fmt: skip
            ax.set_title(f"{'random init' if stage == 'init' else 'after training'}, {inp} input")
            ax.set_xlabel("rotation angle (degrees)")
            ax.set_xticks(range(0, 91, 15))
            ax.grid(True, which="both", alpha=0.3)
        axes[row, 0].set_ylabel("relative equivariance error (central disk)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="equivariance_report", help="output folder")
    p.add_argument("--size", type=int, default=64, help="training tile size (multiple of 16 for BasicUNet)")
    p.add_argument("--eval-size", type=int, default=128, help="evaluation tile size (multiple of 16)")
    p.add_argument("--taper", type=float, default=4.0, help="width (pixels) of the soft edge of the disk input")
    p.add_argument("--canvas", type=int, default=None,
                   help="side of the zero canvas of the 'canvas' input (default: twice --eval-size)")  # fmt: skip
    p.add_argument("--features", type=int, nargs=4, default=[16, 32, 64, 128], help="widths per level")
    p.add_argument("--kernel-sizes", type=int, nargs=4, default=[9, 9, 5, 5], help="GMR kernel widths per level")
    p.add_argument("--norm", default="instance", choices=["instance", "batch"], help="norm of both nets")
    p.add_argument("--sampling", default="center", choices=["center", "area"],
                   help="GMR kernel sampling of GMRUNet (monai_gmr.nn.GMRConv)")
    p.add_argument("--max-angle", type=float, default=90.0)
    p.add_argument("--step", type=float, default=5.0)
    p.add_argument("--radius-frac", type=float, default=0.35)
    p.add_argument("--layer-angle", type=float, default=45.0, help="angle of the per-layer errors (equivariance_layers.csv)")
    p.add_argument("--mode", default="bicubic", choices=["nearest", "bilinear", "bicubic"],
                   help="interpolation of the rotations")  # fmt: skip
    p.add_argument("--n-train", type=int, default=16, help="synthetic training tiles")
    p.add_argument("--n-eval", type=int, default=4, help="synthetic evaluation tiles")
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    for flag, v in (("--n-train", args.n_train), ("--n-eval", args.n_eval), ("--train-steps", args.train_steps),
                    ("--batch", args.batch), ("--threads", args.threads), ("--features", min(args.features))):  # fmt: skip
        if v < 1:
            p.error(f"{flag} must be >= 1, got {v}")
    if any(k < 1 or k % 2 == 0 for k in args.kernel_sizes):
        p.error(f"--kernel-sizes must be odd and positive (GMR kernels are centred), got {args.kernel_sizes}")
    if not (0 < args.step < math.inf and 0 <= args.max_angle < math.inf):  # NaN fails every comparison
        p.error(f"--step must be finite and > 0 and --max-angle finite and >= 0, got {args.step} and {args.max_angle}")
    if not math.isfinite(args.layer_angle):  # else refused by the per-layer errors, after the whole measurement
        p.error(f"--layer-angle must be a finite number of degrees, got {args.layer_angle}")
    if not (0 <= args.taper < math.inf and 0 < args.lr < math.inf):  # NaN taper: NaN disk inputs, NaN errors
        p.error(f"--taper must be finite and >= 0 and --lr finite and > 0, got {args.taper} and {args.lr}")
    if not 0 < args.radius_frac <= 0.5:
        p.error(f"--radius-frac must be in (0, 0.5], got {args.radius_frac}")
    if output_dir_error(args.out):  # found now, not after minutes of training when the first report is written
        p.error(output_dir_error(args.out))
    for flag, v in (("--size", args.size), ("--eval-size", args.eval_size), ("--canvas", args.canvas or 16)):
        if v < 16 or v % 16:
            raise SystemExit(f"{flag} must be a positive multiple of 16 (BasicUNet has 4 down-sampling levels), got {v}")
    # BasicUNet's deepest features are 1 pixel on a 16-pixel image: instance norm cannot normalise them (the run
    # stopped with a traceback from torch), nor can batch norm in training on a batch of one
    small = [("--size", args.size)] if args.norm == "batch" and args.batch == 1 else []
    small += [("--size", args.size), ("--eval-size", args.eval_size)] if args.norm == "instance" else []
    for flag, v in small:
        if v < 32:
            raise SystemExit(f"{flag} must be at least 32 with --norm {args.norm}{' and --batch 1' if args.norm == 'batch' else ''} "
                             f"(BasicUNet's deepest features are 1 pixel at {v}, which the norm cannot normalise), got {v}")
    if args.canvas is not None and args.canvas < args.eval_size:
        raise SystemExit(f"--canvas must be at least --eval-size={args.eval_size}, got {args.canvas}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if 45.0 not in angle_grid(args.max_angle, args.step):
        # the GMRUNet / BasicUNet ratios and target_met are measured at 45 degrees only: they would come out empty
        logger.warning(
            "the angle grid (--step %g, --max-angle %g) does not contain 45 degrees: the GMRUNet / BasicUNet ratios "
            "at 45 degrees and target_met will be empty; use a --step dividing 45 and --max-angle >= 45.",
            args.step, args.max_angle,
        )  # fmt: skip
    summary = run_report(args)
    print(f"data: {summary['data']}; parameters: {summary['parameters']}")
    for name, stages in summary["errors"].items():
        for stage, inps in stages.items():
            for inp, outs in inps.items():
                for output, errs in outs.items():
                    print(f"{name:10s} {stage:8s} {inp:6s} {output:7s} err@15={errs.get('15.0', float('nan')):.3e} "
                          f"err@45={errs.get('45.0', float('nan')):.3e} err@90={errs.get('90.0', float('nan')):.3e}")
    print("GMRUNet / BasicUNet error at 45 deg (target <= 0.2):")
    for k, v in summary["ratio_gmr_over_basicunet_at_45"].items():
        print(f"  {k:22s} {v:.3f} {'met' if v <= 0.2 else 'NOT met'}")
    if not summary["ratio_gmr_over_basicunet_at_45"]:
        print("  not measured: 45 degrees is not in the angle grid (--step / --max-angle)")
    print(f"wrote {Path(args.out) / 'equivariance_report.csv'}, .json, .png")
    return summary


if __name__ == "__main__":
    main()
