"""Benchmark: rotation_robustness (N angles + flips) vs the same number of plain forward passes.

Times ``monai_gmr.evaluation.rotation_robustness`` of a small segmentation network over synthetic tensors or real
CPM15 nuclei tiles (``../shared/data/cpm15_nuclei_he``, centre-cropped to ``--size``) against ``n_views`` plain
forward passes over the same on-device batches (the lower bound: what the views cost without rotating, masking and
scoring). Prints a JSON summary; ``--out`` also writes it (atomically).

Examples::

    python scripts/bench_robustness.py --device cpu --n_images 4 --size 128 --width 8       # small CPU run
    python scripts/bench_robustness.py --device cuda --data cpm15 --size 448 --width 32     # GPU, real tiles
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path

import torch

import monai_gmr
from monai_gmr.evaluation import binarize_label, rotation_robustness
from monai_gmr.evaluation.metrics import INSTANCE_METRICS, SEG_METRICS
from monai_gmr.utils import atomic_write_json, json_dumps, seed_everything

CPM15 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cpm15_nuclei_he"


def build_net(kind: str, width: int) -> torch.nn.Module:
    """Small 2-class segmentation net: ``gmr`` (stride-1 GMR conv stack, exactly D4-equivariant), ``plain``
    (same with nn.Conv2d), or ``gmrunet`` (``monai_gmr.nets.GMRUNet`` with its default widths; ``width`` unused)."""
    if kind == "gmrunet":
        from monai_gmr.nets import GMRUNet  # type: ignore[attr-defined]

        return GMRUNet(spatial_dims=2, in_channels=3, out_channels=2)
    conv = (lambda i, o: monai_gmr.GMRConv(2, i, o, 5)) if kind == "gmr" else (lambda i, o: torch.nn.Conv2d(i, o, 5, padding=2))
    return torch.nn.Sequential(
        conv(3, width), torch.nn.InstanceNorm2d(width), torch.nn.ReLU(),
        conv(width, width), torch.nn.InstanceNorm2d(width), torch.nn.ReLU(),
        conv(width, width), torch.nn.InstanceNorm2d(width), torch.nn.ReLU(),
        conv(width, 2),
    )  # fmt: skip


def load_data(source: str, n_images: int, size: int, batch_size: int, cpm15_dir: Path = CPM15) -> tuple[list[dict], str]:
    if source == "cpm15":
        if not (cpm15_dir / "images").is_dir() or not (cpm15_dir / "labels").is_dir():
            raise SystemExit(f"--data cpm15: {cpm15_dir} has no images/ and labels/ folders (set --cpm15-dir)")
        import numpy as np
        from PIL import Image

        imgs, labs = [], []
        for p in sorted((cpm15_dir / "images").glob("*.png"))[:n_images]:
            im = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
            lab = np.asarray(Image.open(cpm15_dir / "labels" / f"{p.stem}_label.png")).astype(np.int64)
            h, w = lab.shape
            s = min(size, h, w)
            t, l = (h - s) // 2, (w - s) // 2
            imgs.append(torch.from_numpy(im[t : t + s, l : l + s]).permute(2, 0, 1))
            labs.append(torch.from_numpy(lab[t : t + s, l : l + s])[None])
        s = min(min(i.shape[-1] for i in imgs), min(i.shape[-2] for i in imgs))
        imgs = [i[:, :s, :s] for i in imgs]
        labs = [binarize_label(lb[:, :s, :s]) for lb in labs]
        desc = f"cpm15 ({len(imgs)} tiles, centre {s}x{s})"
    else:
        g = torch.Generator().manual_seed(0)
        cells = -(-size // 8)  # 8-pixel blocks, cropped to size
        labs = [(torch.rand(1, cells, cells, generator=g) > 0.6).long().repeat_interleave(8, 1).repeat_interleave(8, 2)
                [:, :size, :size] for _ in range(n_images)]  # fmt: skip
        imgs = [lb.float().repeat(3, 1, 1) + 0.3 * torch.randn(3, size, size, generator=g) for lb in labs]
        desc = f"synthetic ({n_images} images {size}x{size})"
    batches = [
        {"image": torch.stack(imgs[i : i + batch_size]), "label": torch.stack(labs[i : i + batch_size])}
        for i in range(0, len(imgs), batch_size)
    ]
    return batches, desc


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the JSON summary (printed, and written to ``--out`` when given)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", choices=("synthetic", "cpm15"), default="synthetic")
    ap.add_argument("--net", choices=("gmr", "plain", "gmrunet"), default="gmr")
    ap.add_argument("--n_images", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=2)
    ap.add_argument("--width", type=int, default=8, help="channels of the gmr / plain stacks (gmrunet: its defaults)")
    ap.add_argument("--angle_step", type=float, default=10.0)
    ap.add_argument("--flips", default="h,v")
    ap.add_argument("--metrics", default="dice,iou,auc")
    ap.add_argument("--amp", action="store_true", help="autocast on CUDA (ignored elsewhere, as in rotation_robustness)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave)")
    ap.add_argument("--cpm15-dir", type=Path, default=CPM15, help="CPM-15 folder with images/ and labels/ (--data cpm15)")
    ap.add_argument("--out", default=None, help="also write the JSON summary here")
    args = ap.parse_args(argv)
    for name in ("n_images", "size", "batch_size", "width"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.angle_step <= 360:
        ap.error(f"--angle_step must be in (0, 360], got {args.angle_step}")
    bad_flips = [f for f in args.flips.split(",") if f and f not in ("h", "v")]
    bad_metrics = [m for m in args.metrics.split(",") if m and m not in SEG_METRICS + INSTANCE_METRICS]
    if bad_flips or bad_metrics or not args.metrics.strip(","):
        ap.error(f"--flips must be a subset of h,v and --metrics a non-empty subset of "
                 f"{','.join(SEG_METRICS + INSTANCE_METRICS)}, got {args.flips!r} and {args.metrics!r}")  # fmt: skip
    try:
        dev = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available here")
    if args.threads < 0:
        ap.error(f"--threads must be >= 0, got {args.threads}")
    logging.basicConfig(level=logging.WARNING)
    seed_everything(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    net = build_net(args.net, args.width).to(device).eval()
    batches, desc = load_data(args.data, args.n_images, args.size, args.batch_size, args.cpm15_dir)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]  # both timings start from device data
    angles = [a * args.angle_step for a in range(int(round(360 / args.angle_step)))]
    flips = [f for f in args.flips.split(",") if f]
    metrics = [m for m in args.metrics.split(",") if m]
    n_views = len(angles) + len(flips)

    amp = args.amp and device.type == "cuda"  # as rotation_robustness: autocast on CUDA only
    with torch.no_grad():  # warm-up (allocator, cudnn autotune, first grid), at the precision that is timed
        rotation_robustness(net, batches[:1], angles=angles[:2], flips=flips[:1], metrics=metrics, device=device, amp=amp)
        _sync(device)
        t0 = time.perf_counter()
        for b in batches:
            for _ in range(n_views):
                with torch.autocast(device.type, enabled=amp):
                    net(b["image"])
        _sync(device)
        t_plain = time.perf_counter() - t0
    _sync(device)
    t0 = time.perf_counter()
    res = rotation_robustness(net, batches, angles=angles, flips=flips, metrics=metrics, device=device, amp=args.amp)
    _sync(device)
    t_rob = time.perf_counter() - t0
    n_img = sum(b["image"].shape[0] for b in batches)
    summary = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "data": desc,
        "net": args.net,
        "width": args.width,
        "params": sum(p.numel() for p in net.parameters()),
        "views": n_views,
        "angles": len(angles),
        "flips": flips,
        "metrics": metrics,
        "images": n_img,
        "batch_size": args.batch_size,
        "robustness_s": round(t_rob, 3),
        "plain_forward_s": round(t_plain, 3),
        "overhead_ratio": round(t_rob / t_plain, 3),
        "robustness_ms_per_image_view": round(1000 * t_rob / (n_img * n_views), 3),
        "plain_ms_per_image_view": round(1000 * t_plain / (n_img * n_views), 3),
        "dice_mean": res.summary()["dice"]["mean"] if "dice" in metrics else None,
        "dice_std": res.summary()["dice"]["std"] if "dice" in metrics else None,
        "torch": torch.__version__,
    }
    print(json_dumps(summary))  # strict JSON, as the file
    if args.out:
        atomic_write_json(args.out, summary)
    return summary


if __name__ == "__main__":
    main()
