"""Compare equivariant layers side by side: plain MONAI nets, plain + rotation augmentation, naive radial kernels
("Symm"), p4m G-CNNs and GMR, each trained with the same budget and scored under rotations (issue 8, part 3).

Tasks (``--tasks``, comma separated):

* ``nuclei``: segmentation of the synthetic H&E-like nuclei tiles (:func:`monai_gmr.data.ensure_nuclei_dataset`:
  stromal fibres along one direction are background, so orientation matters);
* ``cpm15``: segmentation of the real CPM-15 tiles (``--cpm15-dir``, default ``../shared/data/cpm15_nuclei_he``),
  prepared with :func:`monai_gmr.data.prepare_nuclei_dataset` into a temporary folder; skipped (and recorded as
  skipped) when the folder is absent. A folder that already holds a prepared ``datalist.json`` is used as it is;
* ``wsi``: tumour/normal patch classification on synthetic pyramidal slides (:func:`monai_gmr.data.ensure_wsi_dataset`),
  patches **read from the slides** by MONAI ``PatchWSIDataset`` (:func:`monai_gmr.workflows.wsi.patch_dataset`),
  once, into memory, at the rotation-context size (:func:`monai_gmr.workflows.wsi.context_size`).

Models (segmentation / classification):

==============  =============================================  ================================================
key             segmentation                                   classification
==============  =============================================  ================================================
``plain``       MONAI ``BasicUNet``                            MONAI ``resnet18`` (``ResNet`` basic [2,2,2,2]
                                                               with the profile's widths below 64..512)
``plain_aug``   the same + random rotation (any angle) and reflection (:class:`RandomRotateFlip`: the distribution of
                the nuclei bundle's RandRotated / RandFlipd / RandRotate90d recipe, batched by MONAI AffineTransform)
``symm``        ``GMRUNet(smoothing="none")``                  ``gmr_resnet18(smoothing="none")``
``gcnn``        ``GCNNUNet`` (p4m)                             ``gcnn_resnet18`` (p4m)
``gmr``         ``GMRUNet``                                    ``gmr_resnet18``
==============  =============================================  ================================================

Parameter budgets: the G-CNN widths are the plain widths divided by ``sqrt(8)`` (:func:`monai_gmr.nets.gcnn.group_widths`,
docs/gcnn.md); the GMR / Symm widths (kernels 9/9/5/5) are the integer base width whose parameter count is closest
to the plain net's. Every model gets the same budget: the same steps, batch, crops (the same sequence of crop
locations), AdamW (lr, weight decay), per-step cosine schedule, loss and seed.

Measured per model: parameters, peak training memory (CUDA only, ``torch.cuda.max_memory_allocated``), training
images/s (forward + backward + optimizer step, data preparation excluded, first steps excluded as warm-up),
inference images/s (eval mode, no grad), and :func:`monai_gmr.evaluation.rotation_robustness` on held-out data:
metric at 0 degrees, mean / std / min over 36 angles (0, 10, ..., 350) and horizontal / vertical flips
(segmentation: foreground Dice and IoU on the central disk of each held-out tile, the same tissue at every angle,
rotated corners filled by reflection, plus a second pass with zero-filled corners; classification: ROC-AUC and
accuracy on rotated context patches centre-cropped by :class:`monai_gmr.workflows.wsi.CenterCropInferer`, so no
padded pixel is classified).

Outputs in ``--out`` (written atomically): ``<prefix>.json`` (settings, environment, every row and every full
robustness result), ``<prefix>.md`` (one table per task), ``<prefix>_<task>_polar.png`` (all models overlaid) and,
for segmentation, ``<prefix>_<task>_polar_zero_padding.png``; ``<prefix>`` = ``compare_<profile>`` by default.
Results and findings: docs/comparison.md.

Usage::

    python scripts/compare_equivariant.py --device cpu --quick --out /tmp/cmp            # seconds (test)
    python scripts/compare_equivariant.py --device cpu --out docs/results                # CPU profile, minutes
    python scripts/compare_equivariant.py --device cuda --out /tmp/cmp_gpu \
        --cpm15-dir .gpu_data/cpm15_nuclei_he                                            # GPU profile
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["main", "MODELS", "TASKS", "PROFILES", "build_model", "match_width", "count_params", "train_model", "run_task"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CPM15 = ROOT.parent / "shared" / "data" / "cpm15_nuclei_he"
logger = logging.getLogger("monai_gmr.compare_equivariant")

TASKS = ("nuclei", "cpm15", "wsi")
MODELS = ("plain", "plain_aug", "symm", "gcnn", "gmr")
LABELS = {
    "plain": "plain MONAI",
    "plain_aug": "plain + rot/flip aug",
    "symm": "naive radial (Symm)",
    "gcnn": "p4m G-CNN",
    "gmr": "GMR",
}
SEG_METRICS = ("dice", "iou")
CLS_METRICS = ("auc", "accuracy")
ANGLES = tuple(range(0, 360, 10))
FLIPS = ("h", "v")
GMR_KERNELS = (9, 9, 5, 5)
DISK_RADIUS = 0.45  # segmentation scoring disk: radius 0.45 x tile size (64 % of the tile; inside it at every angle)

#: Synthetic-slide overrides (:func:`monai_gmr.data.render_synthetic_slide`): tumour and normal nuclei closer in
#: density and size than the generator's defaults (1/260 vs 1/1400 per pixel, semi-axes 6-10 vs 3.5-5 px), with
#: which every model reaches AUC 1.0 at every angle after a few dozen steps and the task separates nothing.
WSI_RENDER = {"tumor_density": 1 / 650, "normal_density": 1 / 800, "tumor_axes": (4.0, 6.0), "normal_axes": (3.5, 5.5)}

#: Settings per profile. ``seg_base``: BasicUNet widths (b, b, 2b, 4b, 8b, b); the G-CNN U-Net gets
#: group_widths((b, 2b, 4b, 8b)); GMR/Symm (g, 2g, 4g, 8g) with g matched. ``cls_widths``: the plain ResNet-18
#: stage widths ((64, 128, 256, 512) = MONAI ``resnet18``). Sizes are multiples of 16 (BasicUNet, ResNet invariance).
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {  # the test: seconds on CPU, tiny nets, real values
        "seg_base": 4, "crop": 32, "seg_batch": 4, "seg_steps": 3, "eval_size": 32, "max_eval_tiles": 2,
        "nuclei": {"n_images": 6, "size": 48, "seed": 0},
        "cpm15_max_images": 5,
        "cls_widths": (4, 8, 16, 32), "patch": 32, "cls_batch": 8, "cls_steps": 3, "max_eval_patches": 16,
        "wsi": {"n_slides": 2, "size": 512, "seed": 0, "patches_per_slide": 24, **WSI_RENDER},
        "infer_batch": 16, "infer_repeats": 1, "lr": 2e-3,
    },
    "cpu": {  # docs/comparison.md: ~10 minutes on 2 shared cores
        "seg_base": 8, "crop": 48, "seg_batch": 8, "seg_steps": 120, "eval_size": 96, "max_eval_tiles": 6,
        "nuclei": {"n_images": 24, "size": 96, "seed": 0},
        "cpm15_max_images": None,
        "cls_widths": (16, 32, 64, 128), "patch": 32, "cls_batch": 16, "cls_steps": 120, "max_eval_patches": 96,
        "wsi": {"n_slides": 4, "size": 2048, "seed": 0, "patches_per_slide": 96, **WSI_RENDER},
        "infer_batch": 8, "infer_repeats": 3, "lr": 2e-3,
    },
    "cuda": {  # one H100: all three tasks in a few minutes
        "seg_base": 16, "crop": 128, "seg_batch": 16, "seg_steps": 300, "eval_size": 256, "max_eval_tiles": 24,
        "nuclei": {"n_images": 40, "size": 256, "seed": 0},
        "cpm15_max_images": None,
        "cls_widths": (64, 128, 256, 512), "patch": 64, "cls_batch": 32, "cls_steps": 300, "max_eval_patches": 512,
        "wsi": {"n_slides": 6, "size": 3072, "seed": 0, "patches_per_slide": 160, **WSI_RENDER},
        "infer_batch": 16, "infer_repeats": 10, "lr": 1e-3,
    },
}  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------------------------
def count_params(net: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))


def match_width(build: Callable[[int], torch.nn.Module], target: int, start: int) -> tuple[int, int]:
    """Integer base width ``w`` whose ``count_params(build(w))`` is closest to ``target`` (parameter counts grow
    about quadratically with the width: one build at ``start`` gives the estimate, its neighbours are checked).

    Returns:
        ``(w, params)``.
    """
    p0 = count_params(build(start))
    guess = max(1, int(round(start * math.sqrt(target / max(p0, 1)))))
    best: tuple[int, int] | None = None
    for w in sorted({max(1, guess - 1), guess, guess + 1}):
        p = count_params(build(w))
        if best is None or abs(p - target) < abs(best[1] - target):
            best = (w, p)
    assert best is not None
    return best


@functools.lru_cache(maxsize=None)
def _seg_builders(base: int) -> dict[str, tuple[Callable[[], torch.nn.Module], str]]:
    from monai.networks.nets import BasicUNet

    from monai_gmr.nets.gcnn import GCNNUNet, group_widths
    from monai_gmr.nets.unet import GMRUNet

    def plain() -> torch.nn.Module:
        b = base
        return BasicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=(b, b, 2 * b, 4 * b, 8 * b, b))

    def gmr_w(g: int, smoothing: str = "gaussian") -> torch.nn.Module:
        return GMRUNet(2, 3, 2, features=(g, 2 * g, 4 * g, 8 * g), kernel_sizes=GMR_KERNELS, smoothing=smoothing)

    target = count_params(plain())
    g, _ = match_width(gmr_w, target, base)
    b, gw = base, group_widths((base, 2 * base, 4 * base, 8 * base), "p4m")
    gmr_desc = f"GMRUNet{(g, 2 * g, 4 * g, 8 * g)} k{GMR_KERNELS}"
    return {
        "plain": (plain, f"BasicUNet{(b, b, 2 * b, 4 * b, 8 * b, b)}"),
        "plain_aug": (plain, f"BasicUNet{(b, b, 2 * b, 4 * b, 8 * b, b)}"),
        "symm": (lambda: gmr_w(g, "none"), gmr_desc + " smoothing=none"),
        "gcnn": (lambda: GCNNUNet(2, 3, 2, features=gw), f"GCNNUNet{gw} p4m"),
        "gmr": (lambda: gmr_w(g), gmr_desc),
    }


@functools.lru_cache(maxsize=None)
def _cls_builders(widths: tuple[int, ...]) -> dict[str, tuple[Callable[[], torch.nn.Module], str]]:
    from monai.networks.nets import ResNet, resnet18

    from monai_gmr.nets.gcnn import gcnn_resnet18, group_widths
    from monai_gmr.nets.resnet import gmr_resnet18

    widths = tuple(int(w) for w in widths)

    def plain() -> torch.nn.Module:
        if widths == (64, 128, 256, 512):
            return resnet18(spatial_dims=2, n_input_channels=3, num_classes=2)
        # monai.networks.nets.resnet18 fixes the widths; ResNet with the same block and layers takes others
        return ResNet("basic", [2, 2, 2, 2], list(widths), spatial_dims=2, n_input_channels=3, num_classes=2)

    def gmr_w(c: int, smoothing: str = "gaussian") -> torch.nn.Module:
        return gmr_resnet18(2, 3, 2, kernel_sizes=GMR_KERNELS, block_inplanes=[c, 2 * c, 4 * c, 8 * c], smoothing=smoothing)

    target = count_params(plain())
    c, _ = match_width(gmr_w, target, widths[0])
    gw = group_widths(widths, "p4m")
    plain_desc = "resnet18" if widths == (64, 128, 256, 512) else f"ResNet(basic, [2, 2, 2, 2], {widths})"
    gmr_desc = f"gmr_resnet18{(c, 2 * c, 4 * c, 8 * c)} k{GMR_KERNELS}"
    return {
        "plain": (plain, plain_desc),
        "plain_aug": (plain, plain_desc),
        "symm": (lambda: gmr_w(c, "none"), gmr_desc + " smoothing=none"),
        "gcnn": (lambda: gcnn_resnet18(2, 3, 2, block_inplanes=list(gw)), f"gcnn_resnet18{gw} p4m"),
        "gmr": (lambda: gmr_w(c), gmr_desc),
    }


def build_model(task: str, name: str, profile: dict[str, Any], seed: int | None = None) -> tuple[torch.nn.Module, str]:
    """``(network, description)`` of model ``name`` (one of :data:`MODELS`) for ``task`` at the widths of ``profile``;
    with ``seed`` everything is seeded right before the network is built (its initial weights do not depend on which
    models were built before)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}.")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    builders = _cls_builders(tuple(profile["cls_widths"])) if task == "wsi" else _seg_builders(profile["seg_base"])
    build, desc = builders[name]
    if seed is not None:
        from monai_gmr.utils import seed_everything

        seed_everything(seed)
    return build(), desc


# --------------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------------
def _load_seg_items(items: Sequence[dict[str, Any]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Datalist items -> ``[(image (3, H, W) float in [0, 1], label (1, H, W) int64 0/1)]`` with MONAI readers and
    the nuclei bundle's deterministic transforms (LoadImaged, EnsureChannelFirstd, to_rgb, NucleiLabeld, scaling)."""
    from monai.transforms import Compose, EnsureChannelFirstd, Lambdad, LoadImaged, ScaleIntensityRanged

    from monai_gmr.workflows.nuclei import NucleiLabeld, to_rgb

    load = Compose([
        LoadImaged(keys=["image", "label"], image_only=True),
        EnsureChannelFirstd(keys=["image", "label"]),
        Lambdad(keys="image", func=to_rgb),
        NucleiLabeld(keys="label"),
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
    ])  # fmt: skip
    out = []
    for it in items:
        d = load({"image": it["image"], "label": it["label"]})
        img = torch.as_tensor(d["image"]).float().contiguous()
        lab = torch.as_tensor(d["label"]).long().contiguous()
        out.append((img.as_tensor() if hasattr(img, "as_tensor") else img, lab.as_tensor() if hasattr(lab, "as_tensor") else lab))
    return out


def _tiles(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], size: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping ``size`` tiles (a centred grid) of every image, taken round-robin over the images, at most
    ``limit``; stacked ``(N, 3, S, S)``, ``(N, 1, S, S)``."""
    per_image = []
    for img, lab in pairs:
        h, w = img.shape[-2:]
        ny, nx = h // size, w // size
        oy, ox = (h - ny * size) // 2, (w - nx * size) // 2
        per_image.append([(img[:, oy + i * size: oy + (i + 1) * size, ox + j * size: ox + (j + 1) * size],
                           lab[:, oy + i * size: oy + (i + 1) * size, ox + j * size: ox + (j + 1) * size])
                          for i in range(ny) for j in range(nx)])  # fmt: skip
    chosen = []
    k = 0
    while len(chosen) < limit and any(k < len(t) for t in per_image):
        chosen += [t[k] for t in per_image if k < len(t)]
        k += 1
    chosen = chosen[:limit]
    if not chosen:
        raise ValueError(f"no held-out image is at least eval_size={size} pixels on each side.")
    return torch.stack([c[0] for c in chosen]), torch.stack([c[1] for c in chosen])


def seg_data(task: str, profile: dict[str, Any], work: Path, cpm15_dir: Path) -> dict[str, Any] | str:
    """Training images and held-out tiles of a segmentation task, or a string saying why the task is skipped."""
    from monai_gmr.workflows.nuclei import load_split

    if task == "nuclei":
        from monai_gmr.data import ensure_nuclei_dataset

        datalist = ensure_nuclei_dataset(work / "synthetic_nuclei", **profile["nuclei"])
        source = f"synthetic nuclei (make_synthetic_nuclei {profile['nuclei']})"
    else:
        if not cpm15_dir.is_dir():
            return f"CPM-15 folder {cpm15_dir} is absent"
        if (cpm15_dir / "datalist.json").is_file():
            datalist = cpm15_dir / "datalist.json"
            source = f"prepared CPM-15 dataset {cpm15_dir}"
        else:
            from monai_gmr.data.prepare_nuclei import find_nuclei_pairs, prepare_nuclei_dataset

            pairs_arg: Any = "auto"
            n_max = profile.get("cpm15_max_images")
            if n_max:  # a subset (quick profile): a pairs CSV naming the first n_max images
                found, _ = find_nuclei_pairs(cpm15_dir)
                pairs_arg = work / "cpm15_pairs.csv"
                with open(pairs_arg, "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["image", "mask"])
                    for p in found[:n_max]:
                        w.writerow([str(p.image.resolve()), str(p.mask.resolve())])
            datalist = prepare_nuclei_dataset(cpm15_dir, work / "cpm15_prepared", label="instance", seed=0,
                                              pairs=pairs_arg)  # fmt: skip
            source = f"CPM-15 ({cpm15_dir}, prepare_nuclei_dataset, split seed 0" + (f", first {n_max} images)" if n_max else ")")
    base = str(Path(datalist).parent)

    def split(key: str) -> list[dict[str, Any]]:
        return load_split(datalist, key, base)

    train_items = split("training")
    held_items = split("validation") + split("test")
    if not train_items or not held_items:
        raise ValueError(f"datalist {datalist} needs training and validation/test items.")
    train = _load_seg_items(train_items)
    ctx = _context(profile["crop"])
    small = [tuple(i.shape[-2:]) for i, _ in train if min(i.shape[-2:]) < ctx]
    if small:
        raise ValueError(f"training images must be >= the crop context {ctx} pixels, got {small[:3]} ({task}).")
    ex, ey = _tiles(_load_seg_items(held_items), profile["eval_size"], profile["max_eval_tiles"])
    return {"train": train, "eval_images": ex, "eval_labels": ey, "source": source,
            "n_train_images": len(train), "n_heldout_images": len(held_items), "n_eval_tiles": int(ex.shape[0])}  # fmt: skip


def wsi_data(profile: dict[str, Any], work: Path, backend: str) -> dict[str, Any]:
    """Context patches (read once by MONAI ``PatchWSIDataset``) of the training and held-out splits."""
    from monai_gmr.workflows.wsi import patch_dataset

    patch = profile["patch"]
    ctx = _context(patch)
    synthetic = {**profile["wsi"], "patch_size": patch}
    dataset_dir = work / "synthetic_wsi"

    def read(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        ds = patch_dataset("wsi", split, None, dataset_dir=dataset_dir, generate=True, synthetic=synthetic,
                           backend=backend, patch_size=patch, read_size=ctx, num_classes=2)  # fmt: skip
        xs, ys = [], []
        for i in range(len(ds)):
            d = ds[i]
            x = d["image"]
            x = x.as_tensor() if hasattr(x, "as_tensor") else torch.from_numpy(np.array(x))  # a writable copy
            xs.append(x.float()[:3] / 255.0)
            ys.append(int(torch.as_tensor(d["label"]).reshape(-1)[0]))
        return torch.stack(xs), torch.tensor(ys, dtype=torch.long)

    tx, ty = read("training")
    hx = [read(s) for s in ("validation", "test")]
    ex, ey = torch.cat([h[0] for h in hx]), torch.cat([h[1] for h in hx])
    if ex.shape[0] > profile["max_eval_patches"]:  # a seeded, class-stratified subset
        g = torch.Generator().manual_seed(0)
        keep = []
        for c in (0, 1):
            idx = torch.nonzero(ey == c).flatten()
            keep.append(idx[torch.randperm(len(idx), generator=g)[: profile["max_eval_patches"] // 2]])
        sel = torch.cat(keep).sort().values
        ex, ey = ex[sel], ey[sel]
    return {"train_x": tx, "train_y": ty, "eval_images": ex, "eval_labels": ey, "context": ctx,
            "source": f"synthetic slides (make_synthetic_wsi {synthetic}), patches read by MONAI PatchWSIDataset "
                      f"({backend}) at context size {ctx}, centre-cropped to {patch}",
            "n_train_patches": int(tx.shape[0]), "n_eval_patches": int(ex.shape[0]),
            "eval_class_counts": [int((ey == c).sum()) for c in (0, 1)]}  # fmt: skip


def _context(size: int) -> int:
    from monai_gmr.workflows.wsi import context_size

    return context_size(size)


# --------------------------------------------------------------------------------------------------------------------
# training (a thin hand-written loop, see train_model)
# --------------------------------------------------------------------------------------------------------------------
class RandomRotateFlip:
    """Batched rotation/reflection augmentation on the device: per sample a uniform angle in [0, 360) and, with
    probability 1/2, a mirror, applied in one resampling by MONAI's ``AffineTransform`` (bilinear for images,
    nearest for labels, normalised coordinates, ``align_corners=True`` like :mod:`monai_gmr.functional.rotation`).

    Same distribution as the nuclei bundle's recipe (``RandRotated(range_x=pi, prob=1)`` -> ``RandFlipd`` x2 ->
    ``RandRotate90d``: any angle composed with a random reflection), but batched: MONAI's dictionary transforms
    run per sample (measured here ~7 ms a 72x72 sample on CPU, far more at the GPU profile's 182x182 contexts),
    which would dominate the training time of the augmented model.
    """

    def __init__(self, generator: torch.Generator) -> None:
        from monai.networks.layers import AffineTransform

        self.gen = generator
        self.warp = {m: AffineTransform(normalized=True, mode=m, padding_mode="zeros", align_corners=True)
                     for m in ("bilinear", "nearest")}  # fmt: skip

    def theta(self, n: int, device: torch.device) -> torch.Tensor:
        ang = torch.rand(n, generator=self.gen, dtype=torch.float64) * (2 * math.pi)
        mirror = torch.where(torch.rand(n, generator=self.gen) < 0.5, -1.0, 1.0).double()
        c, s = torch.cos(ang), torch.sin(ang)
        th = torch.zeros(n, 2, 3, dtype=torch.float64)
        th[:, 0, 0], th[:, 0, 1] = c * mirror, -s  # rotation @ diag(mirror, 1): mirror the first axis, then rotate
        th[:, 1, 0], th[:, 1, 1] = s * mirror, c
        return th.float().to(device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        th = self.theta(x.shape[0], x.device)
        xr = self.warp["bilinear"](x, th)
        yr = None if y is None else self.warp["nearest"](y.float(), th).round().long()
        return xr, yr


def _centre(x: torch.Tensor, size: int) -> torch.Tensor:
    m0, m1 = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., m0: m0 + size, m1: m1 + size]


class SegBatches:
    """Seeded random context crops (the same locations for every model: the location generator is separate from the
    augmentation's); the centre ``crop`` of each, or of its random rotation/reflection (:class:`RandomRotateFlip`).
    The context (:func:`monai_gmr.workflows.wsi.context_size`) is large enough that no padded corner reaches it."""

    def __init__(self, train: list[tuple[torch.Tensor, torch.Tensor]], crop: int, batch: int, seed: int, augment: bool,
                 device: torch.device | str = "cpu") -> None:  # fmt: skip
        self.train = [(i.to(device), lab.to(device, torch.uint8)) for i, lab in train]
        self.crop, self.batch = crop, batch
        self.ctx = _context(crop)
        self.gen = torch.Generator().manual_seed(seed)
        self.aug = RandomRotateFlip(torch.Generator().manual_seed(seed + 1)) if augment else None

    def __call__(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        c = self.ctx
        for _ in range(self.batch):
            i = int(torch.randint(len(self.train), (1,), generator=self.gen))
            img, lab = self.train[i]
            h, w = img.shape[-2:]
            y0 = int(torch.randint(h - c + 1, (1,), generator=self.gen))
            x0 = int(torch.randint(w - c + 1, (1,), generator=self.gen))
            xs.append(img[:, y0: y0 + c, x0: x0 + c])
            ys.append(lab[:, y0: y0 + c, x0: x0 + c])
        x, y = torch.stack(xs).to(device), torch.stack(ys).to(device).long()
        if self.aug is not None:
            x, y = self.aug(x, y)
        return _centre(x, self.crop).contiguous(), _centre(y, self.crop).contiguous()


class ClsBatches:
    """Seeded random patches (the same order for every model) from context patches: the centre ``patch``, or the
    centre of a random rotation/reflection of the context (:class:`RandomRotateFlip`)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, patch: int, batch: int, seed: int, augment: bool,
                 device: torch.device | str = "cpu") -> None:  # fmt: skip
        self.x, self.y, self.patch, self.batch = x.to(device), y.to(device), patch, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.aug = RandomRotateFlip(torch.Generator().manual_seed(seed + 1)) if augment else None

    def __call__(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.x), (self.batch,), generator=self.gen).to(self.x.device)
        xb = self.x[idx].to(device)
        if self.aug is not None:
            xb, _ = self.aug(xb)
        return _centre(xb, self.patch).contiguous(), self.y[idx].to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_model(net: torch.nn.Module, batches: Callable[[torch.device], tuple[torch.Tensor, torch.Tensor]],
                task_kind: str, steps: int, lr: float, device: torch.device) -> dict[str, Any]:  # fmt: skip
    """Train ``net`` for ``steps`` steps; returns timings, peak memory and the final loss.

    Peak memory (CUDA): ``torch.cuda.max_memory_allocated`` during training minus what was allocated before the
    network moved to the device (the resident training data): weights, gradients, optimizer state, activations.

    Hand-written on purpose (a dozen lines): the bundles' ``monai.bundle run`` workflows train one model per
    process from files, with validation, checkpointing and TensorBoard handlers, and time whole epochs including
    data loading. Here five models x three tasks share one process, see identical in-memory batches, and the
    timer must cover only forward + backward + optimizer step (synchronised on CUDA) with peak memory read
    around it. The pieces are MONAI's / the bundle's: ``DiceCELoss`` with the nuclei bundle's settings,
    AdamW (weight decay 1e-4), cosine annealing to 1 % of ``lr`` (per step here, per epoch in the bundle).
    """
    from monai.losses import DiceCELoss

    if task_kind == "segmentation":
        loss_fn: Callable = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True,
                                       smooth_nr=1e-5, smooth_dr=1e-5)  # fmt: skip
    else:
        loss_fn = torch.nn.CrossEntropyLoss()
    base = 0
    if device.type == "cuda":  # the training data already on the device are not counted
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.01)
    warmup = min(2, steps // 3)
    timed, n_images, losses, data_s = 0.0, 0, [], 0.0
    t_all = time.perf_counter()
    for step in range(steps):
        t_d = time.perf_counter()
        x, y = batches(device)
        _sync(device)
        t0 = time.perf_counter()
        data_s += t0 - t_d
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        sched.step()
        _sync(device)
        if step >= warmup:
            timed += time.perf_counter() - t0
            n_images += int(x.shape[0])
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"non-finite training loss at step {step}: {losses[-1]}")
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
    tail = losses[-max(1, min(10, len(losses) // 4)):]
    return {
        "steps": steps,
        "train_images_per_s": n_images / timed if timed > 0 else None,
        "train_seconds": time.perf_counter() - t_all,
        "data_seconds": data_s,
        "peak_train_mem_mib": peak,
        "first_loss": losses[0] if losses else None,
        "final_loss": sum(tail) / len(tail) if tail else None,
    }


@torch.no_grad()
def inference_speed(net: torch.nn.Module, x: torch.Tensor, repeats: int, device: torch.device) -> float:
    """Images/s of ``net(x)`` in eval mode without gradients (one warm-up call, then ``repeats`` timed calls)."""
    net.eval()
    x = x.to(device)
    net(x)
    _sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        net(x)
    _sync(device)
    return repeats * x.shape[0] / (time.perf_counter() - t)


# --------------------------------------------------------------------------------------------------------------------
# one task
# --------------------------------------------------------------------------------------------------------------------
def _summary_row(res: Any, metrics: Sequence[str]) -> dict[str, dict[str, float | None]]:
    s = res.summary()
    out = {}
    for m in metrics:
        out[m] = {k: s[m][k] for k in ("at_0", "mean", "std", "min", "worst_angle")}
        for f, vals in res.per_flip.items():
            v = vals.get(m)
            out[m][f"flip_{f}"] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    return out


def run_task(task: str, profile: dict[str, Any], models: Sequence[str], device: torch.device, work: Path,
             cpm15_dir: Path, seed: int, steps: int | None, backend: str, zero_padding: bool = True) -> dict[str, Any]:  # fmt: skip
    """Train and evaluate every model on ``task``; returns the task's record (``skipped`` set when it cannot run).

    ``zero_padding``: segmentation models are also scored with zero-filled rotated corners (Dice over the angles,
    no flips), beside the main evaluation with reflection-filled corners.
    """
    from monai_gmr.evaluation import rotation_robustness

    t0 = time.perf_counter()
    kind = "classification" if task == "wsi" else "segmentation"
    if kind == "segmentation":
        data = seg_data(task, profile, work, cpm15_dir)
        if isinstance(data, str):
            logger.warning("skipping task %s: %s", task, data)
            return {"task": task, "kind": kind, "skipped": data}
        n_steps = steps if steps is not None else profile["seg_steps"]
        batch, size = profile["seg_batch"], profile["crop"]
        metrics, inferer = SEG_METRICS, None
    else:
        data = wsi_data(profile, work, backend)
        n_steps = steps if steps is not None else profile["cls_steps"]
        batch, size = profile["cls_batch"], profile["patch"]
        metrics = CLS_METRICS
        from monai_gmr.workflows.wsi import CenterCropInferer

        inferer = CenterCropInferer(size)
    data_s = time.perf_counter() - t0
    ex, ey = data["eval_images"], data["eval_labels"]
    eb = profile["infer_batch"]
    eval_batches = [(ex[i: i + eb], ey[i: i + eb]) for i in range(0, ex.shape[0], eb)]
    if kind == "segmentation":
        infer_x = ex[:eb]
    else:
        m = (ex.shape[-1] - size) // 2
        infer_x = ex[:eb, :, m: m + size, m: m + size]
    rows, results, zero_results = {}, {}, {}
    for name in models:
        net, desc = build_model(task, name, profile, seed=seed)
        if kind == "segmentation":
            batches: Any = SegBatches(data["train"], size, batch, seed, augment=name == "plain_aug", device=device)
        else:
            batches = ClsBatches(data["train_x"], data["train_y"], size, batch, seed, augment=name == "plain_aug",
                                 device=device)  # fmt: skip
        logger.info("%s / %s: %s, %d parameters, %d steps x %d", task, name, desc, count_params(net), n_steps, batch)
        tr = train_model(net, batches, kind, n_steps, profile["lr"], device)
        ips = inference_speed(net, infer_x, profile["infer_repeats"], device)
        t_e = time.perf_counter()
        # Segmentation: scored on the central disk (the same tissue at every angle, so angles are comparable), the
        # rotated tile's corners filled by reflection; zero (black) corners change the image statistics that every
        # instance norm sees, measured separately below. Classification: rotated context patches centre-cropped,
        # no corner reaches the crop.
        seg_kw = {"region": "disk", "radius_frac": DISK_RADIUS} if kind == "segmentation" else {}
        res = rotation_robustness(net, eval_batches, angles=ANGLES, flips=FLIPS, metrics=metrics, task=kind,
                                  inferer=inferer, device=device, model_name=LABELS[name],
                                  padding_mode="reflection" if kind == "segmentation" else "zeros", **seg_kw)  # fmt: skip
        res_zero = None
        if kind == "segmentation" and zero_padding:
            res_zero = rotation_robustness(net, eval_batches, angles=ANGLES, flips=(), metrics=metrics, task=kind,
                                           device=device, model_name=LABELS[name], padding_mode="zeros", **seg_kw)  # fmt: skip
        row = {
            "model": name,
            "label": LABELS[name],
            "network": desc,
            "params": count_params(net),
            **tr,
            "infer_images_per_s": ips,
            "infer_image_size": list(infer_x.shape[-2:]),
            "train_image_size": [size, size],
            "eval_seconds": time.perf_counter() - t_e,
            "metrics": _summary_row(res, metrics),
        }
        if res_zero is not None:
            row["metrics_zero_padding"] = _summary_row(res_zero, metrics)
            zero_results[name] = res_zero
        rows[name] = row
        results[name] = res
        s0 = row["metrics"][metrics[0]]
        logger.info("%s / %s: train %.1fs (%s img/s), loss %.3f -> %.3f, eval %.1fs, %s at 0 = %s, mean %s, std %s, min %s",
                    task, name, tr["train_seconds"], _rate(tr["train_images_per_s"]), tr["first_loss"], tr["final_loss"],
                    row["eval_seconds"], metrics[0], _f(s0["at_0"]), _f(s0["mean"]), _f(s0["std"]), _f(s0["min"]))  # fmt: skip
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    info = {k: v for k, v in data.items() if not isinstance(v, (torch.Tensor, list)) or k == "eval_class_counts"}
    return {
        "task": task,
        "kind": kind,
        "data": info,
        "budget": {"steps": n_steps, "batch": batch, "train_size": size, "lr": profile["lr"], "optimizer": "AdamW(wd=1e-4)",
                   "schedule": "cosine to 1% per step", "seed": seed,
                   "eval_size": int(ex.shape[-1]) if kind == "segmentation" else size},  # fmt: skip
        "metrics": list(metrics),
        "rows": rows,
        "robustness": {k: r.to_dict() for k, r in results.items()},
        "robustness_zero_padding": {k: r.to_dict() for k, r in zero_results.items()},
        "_results": results,
        "_zero_results": zero_results,
        "data_seconds": data_s,
        "seconds": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------------------------------
def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{float(v):.{digits}f}"


def _rate(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def task_table(rec: dict[str, Any]) -> str:
    """Markdown table of one task."""
    metrics = rec["metrics"]
    head = ["model", "network", "params", "peak train MiB", "train img/s", "infer img/s"]
    for m in metrics:
        nm = {"dice": "Dice", "iou": "IoU", "auc": "AUC", "accuracy": "acc"}[m]
        head += [f"{nm} 0°", f"{nm} mean", f"{nm} std", f"{nm} min (worst °)", f"{nm} flip h", f"{nm} flip v"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, r in rec["rows"].items():
        peak = "n/a" if r["peak_train_mem_mib"] is None else f"{r['peak_train_mem_mib']:.0f}"
        cells = [r["label"], f"`{r['network']}`", f"{r['params']:,}", peak, _rate(r["train_images_per_s"]),
                 _rate(r["infer_images_per_s"])]  # fmt: skip
        for m in metrics:
            s = r["metrics"][m]
            wa = "" if s["worst_angle"] is None else f" ({s['worst_angle']:g})"
            cells += [_f(s["at_0"]), _f(s["mean"]), _f(s["std"]), _f(s["min"]) + wa, _f(s.get("flip_h")), _f(s.get("flip_v"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    env, st = report["environment"], report["settings"]
    out = [
        f"# Equivariant layers compared ({st['profile']} profile)",
        "",
        f"command: `{st['command']}`  ",
        f"date: {report['date']}; device: {env['device']} ({env.get('gpu') or env.get('cpu')}); torch {env['torch']}, "
        f"monai {env['monai']}, {env['torch_threads']} torch threads; total {report['seconds']:.0f} s",
        "",
        "Rotation robustness: 36 angles (0, 10, ..., 350 degrees) + flips; std = population std across angles; "
        "min = worst angle. Segmentation: Dice/IoU (foreground) on the central disk of each held-out tile (radius "
        f"{DISK_RADIUS} x size, the same tissue at every angle), corners of rotated tiles filled by reflection. "
        "Classification: ROC-AUC / accuracy on rotated context patches, centre-cropped (no padded pixel). "
        "Train img/s = forward + backward + step only (data preparation excluded); infer img/s at the evaluation "
        "size (segmentation) / patch size, eval mode, no grad. Peak train MiB (CUDA only): above the resident data.",
    ]
    for task, rec in report["tasks"].items():
        out += ["", f"## {task}", ""]
        if rec.get("skipped"):
            out.append(f"skipped: {rec['skipped']}")
            continue
        b, d = rec["budget"], rec["data"]
        out.append(f"data: {d['source']}  ")
        counts = {k: v for k, v in d.items() if k.startswith("n_") or k == "eval_class_counts"}
        out.append(f"counts: {json.dumps(counts)}  ")
        out.append(f"budget (every model): {b['steps']} steps x batch {b['batch']} at {b['train_size']}x{b['train_size']}, "
                   f"{b['optimizer']} lr {b['lr']}, {b['schedule']}, seed {b['seed']}; evaluation at "
                   f"{b['eval_size']}x{b['eval_size']}  ")  # fmt: skip
        zp = f" (zero-filled corners: `{rec['polar_zero_padding_png']}`)" if rec.get("polar_zero_padding_png") else ""
        out.append(f"polar plot: `{rec.get('polar_png', 'n/a')}`{zp}; task wall time {rec['seconds']:.0f} s")
        out += ["", task_table(rec)]
        if any("metrics_zero_padding" in r for r in rec["rows"].values()):
            m = rec["metrics"][0]
            out += ["", f"Same models, rotated tiles with **zero-filled** corners (`rotation_robustness`'s default "
                    f"padding; scored on the same central disk), {m}:", "",
                    f"| model | {m} 0° | {m} mean | {m} std | {m} min (worst °) |", "|---|---|---|---|---|"]  # fmt: skip
            for r in rec["rows"].values():
                z = r.get("metrics_zero_padding", {}).get(m)
                if z:
                    wa = "" if z["worst_angle"] is None else f" ({z['worst_angle']:g})"
                    out.append(f"| {r['label']} | {_f(z['at_0'])} | {_f(z['mean'])} | {_f(z['std'])} | {_f(z['min'])}{wa} |")
    return "\n".join(out) + "\n"


def _environment(device) -> dict[str, Any]:
    from monai_gmr.utils import run_environment

    return run_environment(str(device), repo=ROOT)


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------
def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu | cuda (| cuda:N)")
    p.add_argument("--out", required=True, help="output folder (JSON, Markdown, polar PNGs)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default: the profile's)")
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke profile (the test)")
    p.add_argument("--profile", default=None, choices=list(PROFILES), help="default: quick with --quick, else the device type")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpm15-dir", default=str(DEFAULT_CPM15), help="raw CPM-15 folder or a prepared dataset (datalist.json)")
    p.add_argument("--data-dir", default=None,
                   help="where generated/prepared data go, in a folder per profile (default: a temporary folder)")
    p.add_argument("--wsi-backend", default="openslide", choices=["openslide", "tifffile"],
                   help="MONAI WSIReader backend for the slides")  # fmt: skip
    p.add_argument("--prefix", default=None, help="output file stem (default: compare_<profile>)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-zero-padding", action="store_true",
                   help="skip the second segmentation evaluation with zero-filled rotated corners")
    return p.parse_args(argv)


def _csv_choice(value: str, allowed: Sequence[str], name: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ValueError(f"{name} must be a comma-separated subset of {','.join(allowed)}, got {name}={value!r}.")
    return list(dict.fromkeys(items))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns the report dict (also written to ``--out``)."""
    args = _parse(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tasks = _csv_choice(args.tasks, TASKS, "--tasks")
    models = _csv_choice(args.models, MODELS, "--models")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:  # torch's message lists every device type and names no option
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}.") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device!r}: CUDA is not available.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {args.device!r}: only {torch.cuda.device_count()} GPU(s) visible.")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}.")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}.")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}.")
    if not 0 <= args.seed < 2**32:  # numpy's seed range; else a bare numpy error after --out was created
        raise ValueError(f"--seed must be in [0, 2**32), got {args.seed}.")
    from monai_gmr.utils import output_dir_error

    for flag, folder in (("--out", args.out), ("--data-dir", args.data_dir)):
        if folder is not None and output_dir_error(folder, flag):  # else a FileExistsError traceback
            raise ValueError(output_dir_error(folder, flag))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    profile_name = args.profile or ("quick" if args.quick else device.type)
    profile = PROFILES[profile_name]
    prefix = args.prefix or f"compare_{profile_name}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from monai_gmr.evaluation import plot_polar
    from monai_gmr.utils import atomic_write_json, atomic_write_text, seed_everything

    seed_everything(args.seed)
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {"command": "python scripts/compare_equivariant.py " + " ".join(sys.argv[1:] if argv is None else argv),
                     "profile": profile_name, "profile_settings": profile, "tasks": tasks, "models": models,
                     "steps": args.steps, "seed": args.seed, "angles": list(ANGLES), "flips": list(FLIPS),
                     "gmr_kernel_sizes": list(GMR_KERNELS),
                     "segmentation_region": f"central disk, radius {DISK_RADIUS} x tile size",
                     "cpm15_dir": args.cpm15_dir, "wsi_backend": args.wsi_backend,
                     "cudnn_benchmark": device.type == "cuda"},  # fmt: skip
        "environment": _environment(device),
        "tasks": {},
    }
    plots = []  # (png, results, metrics, title): drawn once every task has finished, so a failed run writes none
    with tempfile.TemporaryDirectory(prefix="compare_equivariant_") as tmp:
        # one folder per profile: the generated/prepared datasets in it are reused as they are, whatever made them
        work = Path(args.data_dir) / profile_name if args.data_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for task in tasks:
            rec = run_task(task, profile, models, device, work, Path(args.cpm15_dir), args.seed, args.steps,
                           args.wsi_backend, zero_padding=not args.no_zero_padding)  # fmt: skip
            results = rec.pop("_results", None)
            if results:
                png = out / f"{prefix}_{task}_polar.png"
                plots.append((png, results, list(rec["metrics"]), f"{task}: metrics vs rotation angle"
                              + (" (reflection-filled corners, central disk)" if rec["kind"] == "segmentation" else "")))  # fmt: skip
                rec["polar_png"] = png.name
            zres = rec.pop("_zero_results", None)
            if zres:
                png = out / f"{prefix}_{task}_polar_zero_padding.png"
                plots.append((png, zres, list(rec["metrics"]),
                              f"{task}: metrics vs rotation angle (zero-filled corners, central disk)"))  # fmt: skip
                rec["polar_zero_padding_png"] = png.name
            report["tasks"][task] = rec
    for png, res, metrics, title in plots:
        plot_polar({LABELS[k]: r for k, r in res.items()}, png, metrics=metrics, title=title)
    report["seconds"] = time.perf_counter() - t0
    md = markdown(report)
    paths = {"json": atomic_write_json(out / f"{prefix}.json", report), "md": atomic_write_text(out / f"{prefix}.md", md)}
    report["paths"] = {k: str(v) for k, v in paths.items()}
    print(md)
    pngs = [str(out / r[k]) for r in report["tasks"].values() for k in ("polar_png", "polar_zero_padding_png") if r.get(k)]
    print("written: " + ", ".join([str(v) for v in paths.values()] + pngs))
    return report


if __name__ == "__main__":
    main()
