"""Synthetic H&E-like nuclei tiles with instance masks, designed so that orientation matters.

What a tile contains, and why:

- **stroma**: eosin-pink, with isotropic texture plus collagen-like streaks along a dominant direction;
- **fibres / fibroblast streaks** (label = background): thin, dark (haematoxylin-rich), tapered, slightly curved
  spindles that all run near one dominant direction ``fiber_angle +- fiber_angle_jitter``;
- **nuclei** (label = instances 1..N): dark purple, elongated (aspect 1.2-2.5) and irregular (random boundary
  harmonics), *thicker* than the fibres, with chromatin texture and a darker rim, at uniformly random orientations;
  some are placed touching (sharing a border) with a neighbour.

Nuclei and fibres differ in rotation-invariant ways (width, texture, blunt vs tapered ends), so a rotation-
equivariant model can separate them at any angle, but at the training orientation the dominant direction is also a
shortcut ("a dark streak running near ``fiber_angle`` is background"). A plain CNN trained without rotation
augmentation picks up that shortcut and, on rotated inputs, labels fibres that now run in other directions as
nuclei, losing Dice.

Files written by :func:`make_synthetic_nuclei`::

    out_dir/images/nuclei_000.png   RGB uint8 H&E-like tile
    out_dir/labels/nuclei_000.png   uint16 instance ids (0 = background)      <- the datalist "label"
    out_dir/masks/nuclei_000.png    uint8 binary foreground (0/1)             <- the datalist "mask"
    out_dir/datalist.json           MONAI datalist (seeded training/validation/test split, relative paths)

Everything is deterministic in ``seed``: image ``i`` is drawn from ``numpy.random.SeedSequence([seed, i])``,
so it does not depend on ``n_images``; the same seed gives byte-identical files.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_gmr.data.datalist import DATALIST_NAME, move_into_place, split_counts, split_items, write_datalist
from monai_gmr.data.render import (
    EOSIN,
    HEMATOXYLIN,
    check_params,
    draw_nucleus,
    draw_spindle,
    nucleus_polar_params,
    oriented_noise,
    smooth_noise,
    stains_to_rgb,
)
from monai_gmr.utils import _number, atomic_path, make_temp_dir, positive_int, refuse_unknown_names, size_hw

__all__ = ["render_nuclei_tile", "make_synthetic_nuclei", "ensure_nuclei_dataset", "save_png"]

logger = logging.getLogger(__name__)

_DATA_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".nii", ".nii.gz", ".json", ".csv", ".xml", ".txt")


def save_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` (``(H, W)`` uint8/uint16 or ``(H, W, 3)`` uint8) as a PNG atomically, deterministic bytes."""
    from PIL import Image

    array = np.ascontiguousarray(array)
    if array.ndim == 2 and array.dtype == np.uint16:
        img = Image.fromarray(array)  # PIL picks mode "I;16"
    elif array.dtype == np.uint8 and array.ndim in (2, 3):
        img = Image.fromarray(array)
    else:
        raise ValueError(f"save_png: unsupported array {array.dtype} {array.shape} for {str(path)!r}.")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", optimize=False, compress_level=6)
    return Path(path)


def _seed_arg(value: Any, name: str = "seed", allow_none: bool = False) -> int | None:
    """A generation/split seed as a non-negative ``int`` (NumPy integers and text holding one, as a command line
    passes ``--synthetic#seed 3``, are accepted); ``None`` only with ``allow_none``.

    Raises:
        ValueError: anything else (``None``, a bool, a fraction, a negative number, which ``SeedSequence``
            refused with "expected non-negative integer"); the message names ``name``.
    """
    if allow_none and value is None:
        return None
    parsed = _number(value, int, numbers.Integral)
    if parsed is None or parsed < 0:
        raise ValueError(
            f"{name} must be a non-negative int (the data are deterministic in it), got {name}={value!r}."
        )
    return parsed


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def _jitter_vec(vec: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    v = np.clip(vec + rng.normal(0.0, scale, size=3), 0.01, None)
    return v / np.linalg.norm(v)


def render_nuclei_tile(
    size: int | Sequence[int] = 256,
    rng: np.random.Generator | int | None = 0,
    nuclei_density: float = 6e-4,
    nucleus_axes: tuple[float, float] = (6.0, 12.0),
    nucleus_aspect: tuple[float, float] = (1.2, 2.5),
    min_minor_axis: float = 3.5,
    irregularity: float = 0.10,
    touching_frac: float = 0.35,
    fiber_density: float = 2.5e-4,
    fiber_angle: float = 0.0,
    fiber_angle_jitter: float = 15.0,
    fiber_length: tuple[float, float] = (24.0, 72.0),
    fiber_width: tuple[float, float] = (1.8, 3.6),
    stroma_streaks: float = 0.10,
    white_space: float = 0.10,
    stain_jitter: float = 0.03,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Render one H&E-like tile in memory.

    Args:
        size: ``S`` or ``(H, W)`` in pixels (the pixel scale is fixed, so a bigger tile shows more tissue).
        rng: a numpy ``Generator`` or an integer seed.
        nuclei_density: expected nuclei per pixel (``6e-4`` gives ~40 nuclei on 256 x 256; at least 1).
        nucleus_axes: range of the major semi-axis (pixels).
        nucleus_aspect: range of major/minor axis ratio.
        min_minor_axis: lower bound of the minor semi-axis (pixels); keeps nuclei thicker than fibres.
        irregularity: amplitude of the boundary harmonics.
        touching_frac: fraction of nuclei placed touching an earlier one.
        fiber_density: expected fibres per pixel (``2.5e-4`` gives ~16 fibres on 256 x 256; 0 disables them).
        fiber_angle: dominant fibre direction (degrees, counter-clockwise on screen from the x axis).
        fiber_angle_jitter: fibre directions are uniform in ``fiber_angle +- fiber_angle_jitter``.
        fiber_length: range of fibre lengths (pixels).
        fiber_width: range of maximal fibre widths (pixels).
        stroma_streaks: amplitude of the oriented collagen texture of the stroma (along ``fiber_angle``).
        white_space: approximate fraction of the tile that is empty (white) space.
        stain_jitter: per-tile random perturbation of the stain vectors (colour variation between tiles).

    Returns:
        ``(rgb, instances, info)``: ``(H, W, 3)`` uint8 image, ``(H, W)`` uint16 instance ids (0 background,
        1..N nuclei) and a dict with ``n_nuclei``, ``n_fibers``, ``n_touching``, ``fiber_angles`` and
        ``nucleus_angles`` (degrees).
    """
    from scipy import ndimage

    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    hgt, wid = size_hw(size)
    if hgt < 16 or wid < 16:
        raise ValueError(f"size must be >= 16 pixels, got {(hgt, wid)}.")
    check_params(
        nonnegative={"nuclei_density": nuclei_density, "min_minor_axis": min_minor_axis, "irregularity": irregularity,
                     "fiber_density": fiber_density, "fiber_angle_jitter": fiber_angle_jitter,
                     "stroma_streaks": stroma_streaks, "stain_jitter": stain_jitter},
        fractions={"touching_frac": touching_frac, "white_space": white_space},
        ranges={"nucleus_axes": nucleus_axes, "nucleus_aspect": nucleus_aspect, "fiber_length": fiber_length,
                "fiber_width": fiber_width},
        finite={"fiber_angle": fiber_angle},
    )  # fmt: skip
    if nucleus_axes[0] <= 0:
        raise ValueError(f"nucleus_axes must be an increasing positive range, got {nucleus_axes}.")
    shape = (hgt, wid)
    area = hgt * wid

    # --- stroma: eosin with isotropic texture and streaks along the dominant direction -------------------------
    e_map = 0.38 + 0.07 * smooth_noise(shape, 10.0, rng) + 0.03 * smooth_noise(shape, 1.0, rng)
    if stroma_streaks > 0:
        e_map += stroma_streaks * oriented_noise(shape, 12.0, 1.0, fiber_angle, rng)
    h_map = 0.07 + 0.02 * smooth_noise(shape, 6.0, rng)
    if white_space > 0:
        field = smooth_noise(shape, max(hgt, wid) / 8.0, rng)
        thr = float(np.quantile(field, 1.0 - white_space))
        keep = 1.0 - 0.85 * np.clip((field - thr) / 0.3, 0.0, 1.0)
        e_map *= keep
        h_map *= keep
    e_map = np.clip(e_map, 0.0, None).astype(np.float32)
    h_map = np.clip(h_map, 0.0, None).astype(np.float32)

    # --- fibres (background, dominant direction) ---------------------------------------------------------------
    n_fibers = int(rng.poisson(fiber_density * area)) if fiber_density > 0 else 0
    fiber_angles = []
    for _ in range(n_fibers):
        ang = fiber_angle + rng.uniform(-fiber_angle_jitter, fiber_angle_jitter)
        length = rng.uniform(*fiber_length)
        width = rng.uniform(*fiber_width)
        drawn = draw_spindle(
            rng.uniform(0, hgt), rng.uniform(0, wid), ang, length, width, rng.uniform(-0.006, 0.006), shape
        )
        darkness = rng.uniform(0.7, 1.1)
        if drawn is None:
            continue
        sl, cov = drawn
        h_map[sl] += cov * (darkness - h_map[sl]).clip(0, None)
        e_map[sl] += 0.15 * cov
        fiber_angles.append(float(ang))

    # --- nuclei (instances, random orientation, some touching) -------------------------------------------------
    labels = np.zeros(shape, np.int32)
    chromatin = smooth_noise(shape, 0.8, rng)
    n_target = max(1, int(rng.poisson(nuclei_density * area)))
    placed: list[dict[str, Any]] = []
    areas: dict[int, int] = {}
    n_touching = 0
    attempts = 0
    while len(placed) < n_target and attempts < 30 * n_target:
        attempts += 1
        a = rng.uniform(*nucleus_axes)
        b = max(a / rng.uniform(*nucleus_aspect), min_minor_axis)
        theta = rng.uniform(0.0, 180.0)
        params = nucleus_polar_params(rng, a, b, irregularity)
        touching = bool(placed) and rng.random() < touching_frac
        if touching:
            nb = placed[int(rng.integers(len(placed)))]
            phi = rng.uniform(0, 2 * math.pi)
            dist = 0.5 * (nb["a"] + nb["b"]) + 0.5 * (a + b) - 1.0
            cy, cx = nb["cy"] - dist * math.sin(phi), nb["cx"] + dist * math.cos(phi)
        else:
            cy, cx = rng.uniform(0, hgt), rng.uniform(0, wid)
        drawn = draw_nucleus(cy, cx, theta, params, shape)
        if drawn is None:
            continue
        sl, inside, soft, rel = drawn
        n_in = int(inside.sum())
        if n_in < 12:
            continue
        under = labels[sl][inside]
        ids, counts = np.unique(under[under > 0], return_counts=True)
        if counts.sum() > 0.3 * n_in or any(c > 0.25 * areas[int(i)] for i, c in zip(ids, counts)):
            continue
        if not touching and ids.size:
            continue  # free nuclei do not overlap; only the touching ones share a border
        new_id = len(placed) + 1
        labels[sl][inside] = new_id
        areas[new_id] = n_in
        for i, c in zip(ids, counts):
            areas[int(i)] -= int(c)
        hn = rng.uniform(0.9, 1.35)
        tex = hn * (1.0 + 0.22 * chromatin[sl]) + 0.30 * np.clip((rel - 0.72) / 0.28, 0.0, 1.0)
        h_map[sl] = h_map[sl] * (1.0 - soft) + soft * tex
        e_map[sl] = e_map[sl] * (1.0 - soft) + soft * 0.10
        placed.append({"cy": cy, "cx": cx, "a": a, "b": b, "theta": theta})
        n_touching += int(touching and ids.size > 0)

    # nuclei drawn over a touching neighbour may have split it: keep ids consecutive and every id present
    present = np.unique(labels[labels > 0])
    remap = np.zeros(int(labels.max()) + 1, np.int32)
    remap[present] = np.arange(1, present.size + 1)
    instances = remap[labels].astype(np.uint16)
    nucleus_angles = [placed[int(i) - 1]["theta"] for i in present]

    # --- optics: slight blur, stain-space noise, Beer-Lambert colour with per-tile stain variation -------------
    h_map = ndimage.gaussian_filter(h_map, 0.6) + 0.02 * rng.standard_normal(shape).astype(np.float32)
    e_map = ndimage.gaussian_filter(e_map, 0.6) + 0.02 * rng.standard_normal(shape).astype(np.float32)
    h_vec = _jitter_vec(HEMATOXYLIN, rng, stain_jitter)
    e_vec = _jitter_vec(EOSIN, rng, stain_jitter)
    rgb = stains_to_rgb(np.clip(h_map, 0, None), np.clip(e_map, 0, None), float(rng.uniform(236.0, 250.0)), h_vec, e_vec)
    info = {
        "n_nuclei": int(present.size),
        "n_fibers": len(fiber_angles),
        "n_touching": n_touching,
        "fiber_angles": fiber_angles,
        "nucleus_angles": nucleus_angles,
    }
    return rgb, instances, info


#: the settings of :func:`make_synthetic_nuclei` itself (its other keyword arguments go to :func:`render_nuclei_tile`)
_OWN_SETTINGS = ("n_images", "size", "seed", "val_frac", "test_frac", "split_seed", "prefix")


def _check_synthetic_names(kwargs: Mapping[str, Any]) -> None:
    """Refuse keyword names that neither :func:`make_synthetic_nuclei` nor :func:`render_nuclei_tile` take: a
    bundle's ``--synthetic "{'n_image': 8}"`` or ``--synthetic#n_imagez 8``.

    Raises:
        ValueError: an unknown name; the message lists the known ones and the closest matches.
    """
    import inspect

    known = [k for k in inspect.signature(render_nuclei_tile).parameters if k not in ("size", "rng")]
    # a TypeError from render_nuclei_tile named no setting; with existing data a misspelt name was silently ignored
    refuse_unknown_names(kwargs, [*_OWN_SETTINGS, *known], "synthetic nuclei setting")


def make_synthetic_nuclei(
    out_dir: str | os.PathLike,
    n_images: int = 8,
    size: int | Sequence[int] = 256,
    seed: int = 0,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    split_seed: int | None = None,
    prefix: str = "nuclei",
    **render_kwargs: Any,
) -> dict[str, Any]:
    """Write a synthetic H&E-like nuclei dataset (images, instance masks, binary masks, datalist) to ``out_dir``.

    Every file is written atomically and ``datalist.json`` last, so a dataset with a datalist is complete.

    Args:
        out_dir: output folder (created); it must not hold data files already.
        n_images: number of tiles (a positive int).
        size: tile size ``S`` or ``(H, W)``, at least 16 pixels.
        seed: generation seed, a non-negative int; image ``i`` uses ``SeedSequence([seed, i])``.
        val_frac: validation fraction of the datalist split.
        test_frac: test fraction.
        split_seed: seed of the split (defaults to ``seed``).
        prefix: file-name prefix.
        render_kwargs: forwarded to :func:`render_nuclei_tile` (e.g. ``fiber_angle``, ``fiber_angle_jitter``,
            ``nuclei_density``, ``fiber_density``).

    Raises:
        FileExistsError: ``out_dir`` already holds data files (a new dataset would mix with them).
        ValueError: ``n_images`` not a positive int, ``seed``/``split_seed`` not a non-negative int, a bad ``size``,
            fraction or render setting (the message names it); raised before anything is written.

    Returns:
        dict with ``datalist_path`` (str), ``root`` (str), the three splits (``training``, ``validation``,
        ``test``: lists of ``{"image", "label", "mask"}`` with absolute paths) and ``info`` (per-image counts).
    """
    # a fraction (2.5 tiles) or a bool was truncated silently, None / a negative seed failed inside NumPy
    n_images = positive_int(n_images, "n_images")
    seed = _seed_arg(seed, "seed")
    split_seed = _seed_arg(split_seed, "split_seed", allow_none=True)
    _check_synthetic_names(render_kwargs)
    hw = size_hw(size)
    split_counts(n_images, val_frac, test_frac)  # bad fractions: refused now, not after every tile is written
    out = Path(out_dir)
    if out.is_dir() and _holds_data(out):
        # a smaller dataset written over a larger one would leave the old tiles beside the new datalist
        raise FileExistsError(
            f"out_dir {str(out)!r} already holds data files; write the synthetic dataset to a new or empty folder."
        )
    out.mkdir(parents=True, exist_ok=True)
    items, infos = [], []
    for i in range(int(n_images)):
        rgb, inst, info = render_nuclei_tile(size, _rng(seed, i), **render_kwargs)
        name = f"{prefix}_{i:03d}.png"
        img_p = save_png(out / "images" / name, rgb)
        lab_p = save_png(out / "labels" / name, inst)
        msk_p = save_png(out / "masks" / name, (inst > 0).astype(np.uint8))
        items.append({"image": str(img_p.resolve()), "label": str(lab_p.resolve()), "mask": str(msk_p.resolve())})
        infos.append({"image": name, **{k: info[k] for k in ("n_nuclei", "n_fibers", "n_touching")}})
    splits = split_items(items, val_frac, test_frac, seed if split_seed is None else split_seed)
    params = {"n_images": int(n_images), "size": list(hw), "seed": int(seed), "val_frac": val_frac,
              "test_frac": test_frac, "split_seed": seed if split_seed is None else split_seed, **render_kwargs}  # fmt: skip
    dl_path = write_datalist(
        out / DATALIST_NAME,
        splits,
        path_keys=("image", "label", "mask"),
        name="synthetic_nuclei",
        description="Synthetic H&E-like nuclei tiles (monai_gmr.data.make_synthetic_nuclei): label = uint16 "
        "instance ids, mask = binary foreground; stromal fibres along a dominant direction are background.",
        labels={"0": "background", "1": "nucleus"},
        generator=params,
        images=infos,
    )
    logger.info("wrote %d synthetic nuclei tiles (%s) to %s", n_images, "x".join(map(str, hw)), out)
    return {"datalist_path": str(dl_path), "root": str(out), **splits, "info": infos}


def _holds_data(folder: Path) -> bool:
    """Whether ``folder`` holds anything that looks like data (hidden files and temp folders do not count)."""
    for p in folder.rglob("*"):
        if any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        if p.is_file() and p.name.lower().endswith(_DATA_EXTENSIONS):
            return True
    return False


def ensure_nuclei_dataset(
    dataset_dir: str | os.PathLike,
    generate: bool = True,
    n_images: int = 8,
    size: int | Sequence[int] = 256,
    seed: int = 0,
    datalist_name: str = DATALIST_NAME,
    **kwargs: Any,
) -> Path:
    """Path of the datalist in ``dataset_dir``; generate the synthetic dataset there when it holds no data.

    - ``dataset_dir/datalist_name`` exists: it is returned (the data are used as they are);
    - ``dataset_dir`` is missing or holds no data file: with ``generate`` a synthetic dataset
      (:func:`make_synthetic_nuclei`) is written there, logging ``"dataset_dir X holds no data: generating N
      synthetic images"``; the generation happens in a temporary sibling folder that is moved into place when
      complete, so an interrupted run leaves nothing half-written;
    - otherwise an error explains what is missing.

    Args:
        dataset_dir: dataset folder.
        generate: allow generating synthetic data.
        n_images: number of synthetic tiles.
        size: synthetic tile size.
        seed: synthetic data seed.
        datalist_name: name of the datalist file.
        kwargs: forwarded to :func:`make_synthetic_nuclei`.

    Returns:
        path of the datalist JSON.

    Raises:
        FileNotFoundError: ``dataset_dir`` is missing/empty and ``generate`` is False, or it holds data files
            but no datalist (the message says how to prepare one).
        ValueError: a keyword name that :func:`make_synthetic_nuclei` does not take (checked also when the data
            exist, so that a misspelt ``synthetic`` setting is not ignored).
    """
    # before the existing data are returned: a misspelt name (--synthetic#n_imagez 8) was then silently ignored
    _check_synthetic_names(kwargs)
    root = Path(dataset_dir)
    datalist = root / datalist_name
    if datalist.is_file():
        logger.info("using the dataset in %s (%s)", root, datalist_name)
        return datalist
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"dataset_dir {str(root)!r} is not a folder.")
    if root.is_dir() and _holds_data(root):
        raise FileNotFoundError(
            f"dataset_dir {str(root)!r} holds files but no {datalist_name}; prepare it with `python -m "
            f"monai_gmr.data.prepare_nuclei --input <raw data> --output {root}` or point dataset_dir to an empty "
            "folder to generate synthetic data."
        )
    if not generate:
        state = "does not exist" if not root.exists() else "holds no data"
        raise FileNotFoundError(
            f"dataset_dir {str(root)!r} {state} (no {datalist_name}) and synthetic data generation is disabled; "
            "prepare a dataset with `python -m monai_gmr.data.prepare_nuclei` or enable generation."
        )
    logger.info(
        "dataset_dir %s holds no data: generating %s synthetic images (size %s, seed %s)", root, n_images, size, seed
    )  # %s: the values are checked by make_synthetic_nuclei (text from a command line broke %d)
    tmp = make_temp_dir(root)  # becomes the dataset folder: mode 0o777 - umask, not mkdtemp's 0o700
    try:
        make_synthetic_nuclei(tmp, n_images=n_images, size=size, seed=seed, **kwargs)
        if datalist_name != DATALIST_NAME:  # the generator writes datalist.json
            os.replace(tmp / DATALIST_NAME, tmp / datalist_name)
        move_into_place(tmp, root, datalist_name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return datalist

