"""Synthetic whole-slide images: pyramidal tiled TIFFs with tumour/normal tissue, ground-truth masks and patches.

Each slide (``make_synthetic_wsi``) is an H&E-like image (Beer-Lambert stain model, :mod:`monai_gmr.data.render`):

- a bright, nearly white background (glass) with one or a few tissue pieces (smooth random blobs);
- **normal** tissue: eosin-pink stroma with sparse, small, round-to-oval nuclei;
- **tumour** regions: dense, large, irregular, hyperchromatic nuclei (orientation-free morphology: every nucleus
  has a uniformly random orientation, so the class does not depend on how the slide lies on the scanner);
- label-independent stromal fibres along a dominant direction (a nuisance orientation cue, same in both classes).

Files written in ``out_dir``::

    slides/<name>.tiff               pyramidal tiled TIFF (generic-tiff for OpenSlide): levels with downsample
                                     1, 2, 4, ... (>= 3 levels), JPEG (default) or deflate tiles, resolution tags
                                     in pixels/cm so OpenSlide reports openslide.mpp-x/-y
    masks/<name>_tumor.npy|.png      ground-truth tumour mask at the lowest pyramid level (npy: 0/1 uint8,
                                     png: 0/255 for viewing); the level and downsample are in slides.json
    masks/<name>_tissue.npy|.png     tissue mask at the same level
    patches.csv                      slide,x,y,level,size,label,split (x, y: the datalist location, below)
    datalist.json                    MONAI datalist for PatchWSIDataset (training/validation/test)
    slides.json                      per-slide metadata (levels, sizes, mpp, mask level/downsample, counts)

Patch locations are level-0 patch centres, at every patch level: datalist items are ``{"image":
"slides/<name>.tiff", "location": [y, x], "size": [s, s], "level": L, "label": 0|1}`` where ``location`` is
``(row, col) = (y, x)`` in level-0 pixels and the patch of ``size`` at level ``L`` (downsample ``d = 2**L``) has its
level-0 top-left corner at ``location - (s * d) // 2`` (:func:`monai_gmr.data.wsi.level0_top_left`). This is what the
WSI bundle reads (:func:`monai_gmr.workflows.wsi.to_top_left`, then ``PatchWSIDataset(center_location=False)``)
and what its datalist check validates. At level 0 (the default) it is also MONAI 1.6.1 ``PatchWSIDataset``'s
default ``center_location=True`` (top-left = ``location - size // 2``); MONAI does not scale that offset by the
downsample, so for ``L > 0`` read the items through ``to_top_left`` instead. ``"size"`` / ``"level"`` are the
per-item keys ``PatchWSIDataset`` reads when its dataset-wide ``patch_size`` / ``patch_level`` are ``None``
(MONAI's docstring example says ``patch_size``/``patch_level``, the code reads ``WSIPatchKeys.SIZE = "size"`` and
``WSIPatchKeys.LEVEL = "level"``). ``x``/``y`` in the CSV are the same numbers.

Everything is deterministic in ``seed`` (slide ``i`` uses ``SeedSequence([seed, i])``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import numbers
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_gmr.data.datalist import (
    DATALIST_NAME,
    _as_int,
    move_into_place,
    read_csv_rows,
    split_counts,
    split_items,
    write_datalist,
)
from monai_gmr.data.render import (
    EOSIN,
    HEMATOXYLIN,
    check_params,
    draw_nucleus,
    draw_spindle,
    nucleus_polar_params,
    oriented_noise,
    smooth_noise,
)
from monai_gmr.data.synthetic_nuclei import _seed_arg, save_png
from monai_gmr.data.wsi import level0_center, sample_patch_locations
from monai_gmr.utils import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    make_temp_dir,
    positive_float,
    positive_int,
    refuse_unknown_names,
    size_hw,
)

__all__ = [
    "write_pyramidal_tiff",
    "render_synthetic_slide",
    "make_synthetic_wsi",
    "ensure_wsi_dataset",
    "patch_csv_to_datalist",
]

logger = logging.getLogger(__name__)

PATCH_CSV = "patches.csv"
SLIDES_JSON = "slides.json"


# ----------------------------------------------------------------------------------------------------------------
# TIFF writing
# ----------------------------------------------------------------------------------------------------------------
def _downsample2(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[0] // 2, img.shape[1] // 2
    x = img[: 2 * h, : 2 * w].reshape(h, 2, w, 2, *img.shape[2:]).astype(np.float32).mean((1, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def write_pyramidal_tiff(
    path: str | os.PathLike,
    image: np.ndarray,
    mpp: float = 0.5,
    tile_size: int = 256,
    n_levels: int | None = None,
    min_level_size: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    description: str = "monai_gmr synthetic slide",
) -> list[tuple[int, int]]:
    """Write ``image`` as a tiled pyramidal TIFF that OpenSlide opens as ``generic-tiff``.

    Levels are 2x2 box-filter reductions (downsample ``2**l``) stored as consecutive IFDs (level 0 first, the
    others marked reduced-resolution), each tiled ``tile_size`` x ``tile_size`` and carrying XResolution /
    YResolution in pixels per centimetre (``1e4 / (mpp * downsample)``), so OpenSlide reports
    ``openslide.mpp-x/-y = mpp`` and MONAI's tifffile backend reads the right MPP per level. The file is written
    atomically.

    Args:
        path: output ``.tif``/``.tiff``.
        image: ``(H, W, 3)`` uint8 RGB.
        mpp: microns per pixel at level 0.
        tile_size: tile edge (multiple of 16).
        n_levels: number of levels (default: halve until the smaller side would drop below ``min_level_size``;
            at least 1).
        min_level_size: smallest side of the lowest level when ``n_levels`` is None.
        compression: ``"jpeg"`` (lossy, small) or ``"deflate"`` (lossless); any tifffile codec name works.
        quality: JPEG quality.
        description: ImageDescription (must not start with ``Aperio``, which would make OpenSlide pick the
            Aperio driver).

    Returns:
        ``(H, W)`` of every level.
    """
    import tifffile

    img = np.ascontiguousarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {img.dtype} {img.shape}.")
    if tile_size % 16:
        raise ValueError(f"tile_size must be a multiple of 16, got {tile_size}.")
    if description.lstrip().lower().startswith("aperio"):
        raise ValueError("description must not start with 'Aperio' (OpenSlide would use its Aperio driver).")
    if n_levels is None:
        n_levels = 1
        while min(img.shape[:2]) // (2**n_levels) >= min_level_size:
            n_levels += 1
    comp = {"deflate": "zlib"}.get(compression.lower(), compression.lower())
    comp_args = {"level": int(quality)} if comp == "jpeg" else None
    levels = [img]
    for _ in range(1, int(n_levels)):
        levels.append(_downsample2(levels[-1]))
    sizes = []
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=img.nbytes > 2**31) as tif:
            for i, arr in enumerate(levels):
                ds = img.shape[1] / arr.shape[1]
                res = 1e4 / (mpp * ds)
                tif.write(
                    arr,
                    tile=(tile_size, tile_size),
                    compression=comp,
                    compressionargs=comp_args,
                    photometric="rgb",
                    subfiletype=1 if i else 0,
                    resolution=(res, res),
                    resolutionunit="CENTIMETER",
                    metadata=None,
                    description=f"{description}; level={i}; mpp={mpp * ds:.6g}",
                    software="monai_gmr",
                )
                sizes.append((int(arr.shape[0]), int(arr.shape[1])))
    return sizes


# ----------------------------------------------------------------------------------------------------------------
# slide rendering
# ----------------------------------------------------------------------------------------------------------------
def _resize(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 field (PIL, fast)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32), mode="F")
    return np.asarray(im.resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float32)


def _nucleus_bank(
    rng: np.random.Generator, n: int, axes: tuple[float, float], aspect: tuple[float, float], irregularity: float,
    darkness: tuple[float, float], texture: float,
) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Pre-rendered nuclei (coverage, haematoxylin) stamps at random orientations."""
    bank = []
    for _ in range(n):
        a = rng.uniform(*axes)
        b = a / rng.uniform(*aspect)
        params = nucleus_polar_params(rng, a, b, irregularity)
        r = int(math.ceil(a * (1.0 + float(np.abs(params["amps"]).sum())) + 2))
        drawn = draw_nucleus(r, r, rng.uniform(0, 360), params, (2 * r + 1, 2 * r + 1))
        assert drawn is not None
        _, inside, soft, rel = drawn
        chrom = smooth_noise(soft.shape, 0.8, rng)
        hn = rng.uniform(*darkness)
        tex = hn * (1.0 + texture * chrom) + 0.25 * np.clip((rel - 0.72) / 0.28, 0.0, 1.0)
        bank.append((_blur(soft), _blur(tex)))
    return bank


def _blur(a: np.ndarray, sigma: float = 0.6) -> np.ndarray:
    """Optical blur of a stamp (blurring stamps instead of the whole slide keeps generation fast)."""
    from scipy import ndimage

    return np.ascontiguousarray(ndimage.gaussian_filter(a.astype(np.float32), sigma, mode="constant"))


def _dihedral(a: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations/reflections of a 2D array (contiguous copies)."""
    out = []
    for flip in (False, True):
        b = a[:, ::-1] if flip else a
        out.extend(np.ascontiguousarray(np.rot90(b, k)) for k in range(4))
    return out


def _fiber_bank(
    rng: np.random.Generator, n: int, angle: float, jitter: float, length: tuple[float, float],
    width: tuple[float, float],
) -> list[np.ndarray]:  # fmt: skip
    bank = []
    for _ in range(n):
        ln = rng.uniform(*length)
        r = int(math.ceil(ln / 2 + 6))
        drawn = draw_spindle(r, r, angle + rng.uniform(-jitter, jitter), ln, rng.uniform(*width),
                             rng.uniform(-0.004, 0.004), (2 * r + 1, 2 * r + 1))  # fmt: skip
        assert drawn is not None
        bank.append(_blur(drawn[1]))
    return bank


def _stamp(target_h, target_e, cov, tex, cy, cx, e_inside):
    """Composite one stamp centred at (cy, cx): h <- h (1 - c) + c tex, e <- e (1 - c) + c e_inside."""
    sh, sw = cov.shape
    y0, x0 = cy - sh // 2, cx - sw // 2
    ys, xs = max(0, -y0), max(0, -x0)
    ye, xe = min(sh, target_h.shape[0] - y0), min(sw, target_h.shape[1] - x0)
    if ys >= ye or xs >= xe:
        return
    c = cov[ys:ye, xs:xe]
    sl = (slice(y0 + ys, y0 + ye), slice(x0 + xs, x0 + xe))
    h = target_h[sl]
    h += c * (tex[ys:ye, xs:xe] - h)
    e = target_e[sl]
    e += c * (e_inside - e)


def _positions(rng: np.random.Generator, region: np.ndarray, density: float) -> np.ndarray:
    """Poisson-distributed points (``density`` per pixel) inside the full-resolution bool ``region``."""
    n_exp = density * float(region.sum())
    n = int(rng.poisson(n_exp))
    if n == 0:
        return np.zeros((0, 2), np.int64)
    hgt, wid = region.shape
    # oversample uniformly over the canvas, keep points inside the region
    frac = max(float(region.mean()), 1e-6)
    m = int(n / frac * 1.2) + 16
    ys = rng.integers(0, hgt, size=m)
    xs = rng.integers(0, wid, size=m)
    keep = region[ys, xs]
    pts = np.stack([ys[keep], xs[keep]], 1)[:n]
    return pts


def render_synthetic_slide(
    size: int | Sequence[int] = 4096,
    rng: np.random.Generator | int | None = 0,
    mask_downsample: int = 16,
    tissue_fraction: float = 0.55,
    tumor_fraction: tuple[float, float] = (0.3, 0.45),
    tumor_density: float = 1.0 / 260.0,
    normal_density: float = 1.0 / 1400.0,
    tumor_axes: tuple[float, float] = (6.0, 10.0),
    normal_axes: tuple[float, float] = (3.5, 5.0),
    fiber_density: float = 1.0 / 9000.0,
    fiber_angle: float = 0.0,
    fiber_angle_jitter: float = 15.0,
    n_stamps: int = 48,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Render one synthetic slide in memory.

    Args:
        size: level-0 ``S`` or ``(H, W)``; must be divisible by ``mask_downsample``.
        rng: numpy ``Generator`` or integer seed.
        mask_downsample: downsample of the returned masks (the layout grid).
        tissue_fraction: approximate fraction of the slide covered by tissue.
        tumor_fraction: range of the tumour fraction of the tissue.
        tumor_density: tumour nuclei per pixel.
        normal_density: normal nuclei per pixel.
        tumor_axes: major semi-axis range of tumour nuclei (pixels at level 0).
        normal_axes: major semi-axis range of normal nuclei.
        fiber_density: stromal fibres per tissue pixel (label independent, dominant direction).
        fiber_angle: dominant fibre direction (degrees).
        fiber_angle_jitter: fibre direction spread (degrees).
        n_stamps: pre-rendered nuclei per class (each placed with a random 90-degree rotation/flip).

    Returns:
        ``(rgb, tumor_mask, tissue_mask, info)``: ``(H, W, 3)`` uint8, two ``(H / ds, W / ds)`` bool masks at
        ``mask_downsample`` (a mask pixel is set when at least half of its level-0 block is set), and counts.
    """

    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    hgt, wid = size_hw(size)
    ds = positive_int(mask_downsample, "mask_downsample")  # 2.5 was read as 2, silently
    n_stamps = positive_int(n_stamps, "n_stamps")
    check_params(
        nonnegative={"tumor_density": tumor_density, "normal_density": normal_density, "fiber_density": fiber_density,
                     "fiber_angle_jitter": fiber_angle_jitter},
        ranges={"tumor_fraction": tumor_fraction, "tumor_axes": tumor_axes, "normal_axes": normal_axes},
        finite={"fiber_angle": fiber_angle},
    )  # fmt: skip
    check_params(fractions={"tissue_fraction": tissue_fraction, "tumor_fraction[1]": tumor_fraction[1]})
    if hgt % ds or wid % ds:
        raise ValueError(f"size {(hgt, wid)} must be divisible by mask_downsample={ds}.")
    if min(hgt, wid) < 8 * ds:
        raise ValueError(f"size {(hgt, wid)} is too small for mask_downsample={ds} (need >= {8 * ds}).")
    mh, mw = hgt // ds, wid // ds

    # --- layout on the mask grid: tissue blobs inside an elliptical envelope, tumour blobs inside tissue -------
    yy = (np.arange(mh, dtype=np.float32)[:, None] + 0.5) / mh - 0.5
    xx = (np.arange(mw, dtype=np.float32)[None, :] + 0.5) / mw - 0.5
    envelope = -2.2 * (yy**2 + xx**2) / 0.25
    tissue_field = smooth_noise((mh, mw), max(mh, mw) / 10.0, rng) * 0.8 + envelope
    thr_t = float(np.quantile(tissue_field, 1.0 - tissue_fraction))
    tissue_field = tissue_field - thr_t
    tissue_lo = tissue_field > 0
    tumor_field = smooth_noise((mh, mw), max(mh, mw) / 12.0, rng)
    frac_t = float(rng.uniform(*tumor_fraction))
    thr_u = float(np.quantile(tumor_field[tissue_lo], 1.0 - frac_t)) if tissue_lo.any() else 0.0
    tumor_field = tumor_field - thr_u

    # --- full-resolution fields ----------------------------------------------------------------------------------
    tissue_full = _resize(tissue_field, (hgt, wid))
    tumor_full = _resize(tumor_field, (hgt, wid))
    tissue = tissue_full > 0
    tumor = tissue & (tumor_full > 0)
    normal = tissue & ~tumor
    edge = np.clip(tissue_full / 0.08, 0.0, 1.0)  # soft tissue border

    e_map = 0.36 + 0.08 * _resize(smooth_noise((mh, mw), 2.0, rng), (hgt, wid))
    e_map += 0.06 * _resize(oriented_noise((hgt // 2, wid // 2), 6.0, 0.7, fiber_angle, rng), (hgt, wid))
    # fine grain at half resolution, bilinearly upsampled (smooth like the optical blur, much cheaper)
    e_map += 0.05 * _resize(rng.standard_normal((hgt // 2, wid // 2), dtype=np.float32), (hgt, wid))
    h_map = np.full((hgt, wid), 0.06, np.float32)
    h_map[tumor] += 0.06  # denser, more basophilic tumour background
    e_map *= edge
    h_map *= edge
    e_map += 0.015
    h_map += 0.01

    # --- fibres (both classes, dominant direction), then nuclei --------------------------------------------------
    fibers = _fiber_bank(rng, max(4, n_stamps // 2), fiber_angle, fiber_angle_jitter, (30.0, 80.0), (1.8, 3.2))
    pts_f = _positions(rng, tissue, fiber_density)
    dark_f = rng.uniform(0.6, 0.95, size=len(pts_f))
    for (cy, cx), k, d in zip(pts_f.tolist(), rng.integers(0, len(fibers), size=len(pts_f)).tolist(), dark_f.tolist()):
        cov = fibers[k]
        _stamp(h_map, e_map, cov, np.full_like(cov, d), cy, cx, 0.5)
    banks = {
        "tumor": _nucleus_bank(rng, n_stamps, tumor_axes, (1.0, 1.6), 0.20, (1.1, 1.5), 0.30),
        "normal": _nucleus_bank(rng, n_stamps, normal_axes, (1.0, 1.4), 0.05, (0.8, 1.05), 0.15),
    }
    counts = {}
    for cls, region, density in (("normal", normal, normal_density), ("tumor", tumor, tumor_density)):
        # every stamp in its 8 rotations/reflections: more shapes, all orientations
        variants = [v for cov, tex in banks[cls] for v in zip(_dihedral(cov), _dihedral(tex))]
        pts = _positions(rng, region, density)
        ks = rng.integers(0, len(variants), size=len(pts))
        for (cy, cx), k in zip(pts.tolist(), ks.tolist()):
            cov, tex = variants[k]
            _stamp(h_map, e_map, cov, tex, cy, cx, 0.1)
        counts[f"n_{cls}_nuclei"] = int(len(pts))
    counts["n_fibers"] = int(len(pts_f))

    # --- colour (the optical blur is in the stamps and the upsampled textures) ----------------------------------
    np.clip(h_map, 0.0, None, out=h_map)
    np.clip(e_map, 0.0, None, out=e_map)
    i0 = np.float32(rng.uniform(238.0, 248.0))
    rgb = np.empty((hgt, wid, 3), np.uint8)
    for c in range(3):
        od = h_map * np.float32(HEMATOXYLIN[c]) + e_map * np.float32(EOSIN[c])
        np.negative(od, out=od)
        np.exp(od, out=od)
        od *= i0
        rgb[..., c] = np.clip(np.rint(od), 0, 255).astype(np.uint8)

    def block(m: np.ndarray) -> np.ndarray:
        return m.reshape(mh, ds, mw, ds).mean((1, 3)) >= 0.5

    tumor_m, tissue_m = block(tumor), block(tissue)
    info = {**counts, "tumor_fraction_of_tissue": float(tumor_m.sum() / max(tissue_m.sum(), 1)),
            "tissue_fraction": float(tissue_m.mean())}  # fmt: skip
    return rgb, tumor_m, tissue_m, info


# ----------------------------------------------------------------------------------------------------------------
# dataset
# ----------------------------------------------------------------------------------------------------------------
def make_synthetic_wsi(
    out_dir: str | os.PathLike,
    n_slides: int = 2,
    size: int | Sequence[int] = 4096,
    seed: int = 0,
    mpp: float = 0.5,
    tile_size: int = 256,
    n_levels: int | None = None,
    compression: str = "jpeg",
    quality: int = 90,
    patch_size: int = 96,
    patch_level: int = 0,
    patches_per_slide: int = 128,
    tumor_patch_fraction: float = 0.5,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    split_seed: int | None = None,
    prefix: str = "slide",
    **render_kwargs: Any,
) -> dict[str, Any]:
    """Write a synthetic whole-slide dataset to ``out_dir`` (see the module docstring for the files).

    Args:
        out_dir: output folder; it must not hold slides or a datalist already.
        n_slides: number of slides.
        size: level-0 ``S`` or ``(H, W)`` (default 4096 x 4096).
        seed: generation seed.
        mpp: microns per pixel at level 0 (written to the TIFF resolution tags).
        tile_size: TIFF tile size.
        n_levels: pyramid levels (default: down to a smallest side >= 256, at least 3).
        compression: ``"jpeg"`` or ``"deflate"``.
        quality: JPEG quality.
        patch_size: patch edge at ``patch_level`` (written into every datalist item as ``"size"``).
        patch_level: level of the patches (``"level"`` in the items).
        patches_per_slide: patches sampled per slide.
        tumor_patch_fraction: fraction of tumour patches (label 1); the rest are normal (label 0). A tumour patch
            lies entirely in the tumour mask, a normal patch entirely in tissue and at least one mask pixel away
            from tumour.
        val_frac: validation fraction; with >= 3 slides the split is by slide, otherwise by patch (stratified).
        test_frac: test fraction.
        split_seed: split seed (default ``seed``).
        prefix: slide name prefix.
        render_kwargs: forwarded to :func:`render_synthetic_slide`.

    Raises:
        FileExistsError: ``out_dir`` already holds slides or a datalist (a new dataset would mix with them).
        ValueError: a count or size that is not a positive int (``n_slides``, ``patch_size``, ``patches_per_slide``,
            ``tile_size``, ``n_levels``), a ``patch_level`` that is not a non-negative int of the pyramid, a patch
            larger than the slide, ``seed``/``split_seed`` not a non-negative int, ``mpp`` not positive, bad
            fractions or render settings (the message names the argument); raised before anything is written.

    Returns:
        dict with ``datalist_path``, ``patch_csv``, ``slides_json``, ``root``, ``slides`` (per-slide metadata) and
        the three splits (lists of PatchWSIDataset items with absolute slide paths).
    """
    hw = size_hw(size)
    # fractions / bools were truncated silently (n_slides=2.5 wrote 2 slides, patch_level=1.5 sampled with a
    # downsample of 2**1.5), patch_size 0 or negative wrote items of that size, None / a negative seed failed inside
    # NumPy, mpp=0 in a ZeroDivisionError, patches_per_slide=0 after every slide was written
    n_slides = positive_int(n_slides, "n_slides")
    seed = _seed_arg(seed, "seed")
    split_seed = _seed_arg(split_seed, "split_seed", allow_none=True)
    patch_size = positive_int(patch_size, "patch_size")
    patches_per_slide = positive_int(patches_per_slide, "patches_per_slide")
    tile_size = positive_int(tile_size, "tile_size")
    if tile_size % 16:
        raise ValueError(f"tile_size must be a multiple of 16, got tile_size={tile_size}.")
    mpp = positive_float(mpp, "mpp")
    if n_levels is not None:
        n_levels = positive_int(n_levels, "n_levels")
    if isinstance(patch_level, bool) or not isinstance(patch_level, numbers.Integral) or patch_level < 0:
        raise ValueError(f"patch_level must be a non-negative int, got patch_level={patch_level!r}.")
    patch_level = int(patch_level)
    split_counts(n_slides if n_slides >= 3 else patches_per_slide, val_frac, test_frac)  # fractions, before writing
    _check_synthetic_names(render_kwargs)
    if n_levels is None:
        n_levels = 1
        while min(hw) // (2**n_levels) >= 256:
            n_levels += 1
        n_levels = max(n_levels, 3)
    if n_levels < 1 or min(hw) // 2 ** (n_levels - 1) < 16:
        raise ValueError(f"n_levels={n_levels} is not possible for size {hw}.")
    mask_level = int(n_levels) - 1
    mask_ds = 2**mask_level
    if hw[0] % mask_ds or hw[1] % mask_ds:
        raise ValueError(f"size {hw} must be divisible by 2**(n_levels-1) = {mask_ds}.")
    if not 0.0 <= tumor_patch_fraction <= 1.0:
        raise ValueError(f"tumor_patch_fraction must be in [0, 1], got {tumor_patch_fraction}.")
    if not 0 <= patch_level < n_levels:
        raise ValueError(f"patch_level {patch_level} does not exist (n_levels={n_levels}).")
    if patch_size * 2**patch_level > min(hw):
        raise ValueError(
            f"patch_size={patch_size} at patch_level={patch_level} covers {patch_size * 2**patch_level} level-0 pixels, "
            f"more than the slide size {hw}: no patch fits."
        )
    out = Path(out_dir)
    if out.is_dir() and _holds_slides(out):
        # fewer slides written over an earlier dataset would leave its slides where inference looks for slides
        raise FileExistsError(
            f"out_dir {str(out)!r} already holds slides or a datalist; write the synthetic slides to a new or empty "
            "folder."
        )
    (out / "slides").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    slides_meta, items = [], []
    patch_ds = 2**patch_level
    for i in range(int(n_slides)):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), i]))
        rgb, tumor_m, tissue_m, info = render_synthetic_slide(hw, rng, mask_downsample=mask_ds, **render_kwargs)
        name = f"{prefix}_{i:03d}"
        slide_path = out / "slides" / f"{name}.tiff"
        sizes = write_pyramidal_tiff(slide_path, rgb, mpp=mpp, tile_size=tile_size, n_levels=n_levels,
                                     compression=compression, quality=quality)  # fmt: skip
        del rgb
        paths = {}
        for kind, m in (("tumor", tumor_m), ("tissue", tissue_m)):
            npy = out / "masks" / f"{name}_{kind}.npy"
            buf = io.BytesIO()
            np.save(buf, m.astype(np.uint8), allow_pickle=False)
            with atomic_path(npy) as tmp:
                tmp.write_bytes(buf.getvalue())
            save_png(out / "masks" / f"{name}_{kind}.png", (m * 255).astype(np.uint8))
            paths[kind] = npy
        n_tum = int(round(patches_per_slide * tumor_patch_fraction))
        n_nor = int(patches_per_slide) - n_tum
        prng = np.random.default_rng(np.random.SeedSequence([int(seed), i, 1]))
        from scipy import ndimage

        tum_locs = sample_patch_locations(tumor_m, mask_ds, n_tum, patch_size, patch_ds, 1.0, seed=prng, center=False)
        nor_locs = sample_patch_locations(tissue_m & ~tumor_m, mask_ds, n_nor, patch_size, patch_ds, 0.9,
                                          exclude=ndimage.binary_dilation(tumor_m), seed=prng, center=False)  # fmt: skip
        for label, locs in ((1, tum_locs), (0, nor_locs)):
            for top_left in locs:
                loc = level0_center(top_left, (patch_size, patch_size), patch_ds)  # the sampled footprint
                items.append({"image": str(slide_path.resolve()), "location": loc,
                              "size": [int(patch_size), int(patch_size)], "level": int(patch_level),
                              "label": int(label), "slide": name})  # fmt: skip
        slides_meta.append({
            "name": name, "image": f"slides/{name}.tiff", "tumor_mask": f"masks/{name}_tumor.npy",
            "tissue_mask": f"masks/{name}_tissue.npy", "mask_level": mask_level, "mask_downsample": mask_ds,
            "level_sizes": [list(s) for s in sizes], "mpp": mpp, "n_tumor_patches": int(len(tum_locs)),
            "n_normal_patches": int(len(nor_locs)), **info,
        })  # fmt: skip
        logger.info(
            "slide %s: %dx%d, %d levels, tumour %.0f%% of tissue, %d/%d tumour/normal patches", name, hw[1], hw[0],
            len(sizes), 100 * info["tumor_fraction_of_tissue"], len(tum_locs), len(nor_locs),
        )  # fmt: skip
    sseed = seed if split_seed is None else split_seed
    if n_slides >= 3:
        names = [{"slide": m["name"]} for m in slides_meta]
        by_slide = split_items(names, val_frac, test_frac, sseed)
        where = {d["slide"]: k for k, v in by_slide.items() for d in v}
        splits = {k: [it for it in items if where[it["slide"]] == k] for k in ("training", "validation", "test")}
        split_by = "slide"
    else:
        splits = split_items(items, val_frac, test_frac, sseed, stratify_key="label")
        split_by = "patch"
    rows = ["slide,x,y,level,size,label,split"]
    for k, v in splits.items():
        for it in v:
            rows.append(f"slides/{it['slide']}.tiff,{it['location'][1]},{it['location'][0]},{it['level']},"
                        f"{it['size'][0]},{it['label']},{k}")  # fmt: skip
    csv_path = atomic_write_text(out / PATCH_CSV, "\n".join(rows) + "\n")
    meta = {"generator": "monai_gmr.data.make_synthetic_wsi", "n_slides": int(n_slides), "size": list(hw),
            "seed": int(seed), "mpp": mpp, "n_levels": int(n_levels), "compression": compression,
            "patch_size": int(patch_size), "patch_level": int(patch_level), "split_by": split_by,
            "location": "[y, x] level-0 patch centre at every level (level-0 top-left = location - size * 2**level // 2)",
            "render": {k: v for k, v in render_kwargs.items()}, "slides": slides_meta}  # fmt: skip
    slides_json = atomic_write_json(out / SLIDES_JSON, meta)
    dl_path = write_datalist(
        out / DATALIST_NAME,
        splits,
        path_keys=("image",),
        name="synthetic_wsi",
        description="Synthetic pyramidal H&E-like slides (monai_gmr.data.make_synthetic_wsi); items for MONAI "
        "PatchWSIDataset: location = [y, x] level-0 patch centre (level-0 top-left = location - size * "
        "downsample // 2: center_location=True at level 0; at level > 0 read via monai_gmr.workflows.wsi."
        "to_top_left and center_location=False), size/level per item, label 1 = tumour, 0 = normal.",
        labels={"0": "normal", "1": "tumor"},
        center_location=True,
        split_by=split_by,
        slides=[{"image": m["image"], "tumor_mask": m["tumor_mask"], "tissue_mask": m["tissue_mask"],
                 "mask_level": mask_level, "mask_downsample": mask_ds} for m in slides_meta],  # fmt: skip
    )
    abs_splits = {k: [dict(it) for it in v] for k, v in splits.items()}
    return {"datalist_path": str(dl_path), "patch_csv": str(csv_path), "slides_json": str(slides_json),
            "root": str(out), "slides": slides_meta, **abs_splits}  # fmt: skip


def _level_downsample(slide: Path, level: int, cache: dict[str, list[float]], backend: str = "openslide") -> float:
    """Downsample of ``level`` of ``slide`` (1 for level 0 without opening it; the slide is opened once)."""
    if level == 0:
        return 1.0
    from monai_gmr.data.wsi import slide_info

    if str(slide) not in cache:
        cache[str(slide)] = slide_info(slide, backend)["downsamples"]
    dss = cache[str(slide)]
    if not -len(dss) <= level < len(dss):
        raise ValueError(f"slide {str(slide)!r} has no level {level} ({len(dss)} levels)")
    return dss[level]


def patch_csv_to_datalist(
    csv_path: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    patch_size: int | None = None,
    level: int | None = None,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    seed: int = 0,
    center: bool = True,
    backend: str = "openslide",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Turn a patch CSV (``slide,x,y,label`` and optional ``level``, ``size``, ``split``) into a datalist JSON.

    ``x``/``y`` are level-0 pixels: with ``center`` the level-0 patch centres (the datalist convention, see the
    module docstring), else level-0 top-left corners, which are converted (for ``level > 0`` with the slide's
    downsample, so the slide is opened); ``slide`` paths are relative to the CSV. Rows with a ``split`` column keep it, the others are split
    with :func:`monai_gmr.data.datalist.split_items` (stratified by label, patch by patch: a warning names the
    slides that then have patches in training and in validation/test). ``backend``: the ``WSIReader``
    backend that opens slides for their downsamples. ``extra``: more top-level entries of the JSON.

    ``label`` is an integer class index (``1`` or, as pandas writes it, ``1.0``). A row repeating the slide,
    location, size and level of an earlier row is dropped (logged); with another label it is an error.

    Raises:
        FileNotFoundError: the CSV does not exist. ValueError: missing columns, bad values, an unreadable slide or a
        patch listed with two labels (row named).
    """
    csv_path = Path(csv_path).absolute()  # slide paths relative to it must not stay relative to the working folder
    if not csv_path.is_file():
        raise FileNotFoundError(f"patch CSV {str(csv_path)!r} does not exist.")
    out_path = Path(out_path) if out_path is not None else csv_path.parent / DATALIST_NAME
    rows = read_csv_rows(csv_path, "patch CSV")
    need = {"slide", "x", "y", "label"}
    if not rows:  # header only: it was "needs columns [...], has []" whatever the header held
        raise ValueError(f"patch CSV {str(csv_path)!r} has no rows (a header and one row per patch are expected).")
    if not need <= set(rows[0]):
        raise ValueError(f"patch CSV {str(csv_path)!r} needs columns {sorted(need)}, has {list(rows[0])}.")
    fixed: dict[str, list] = {"training": [], "validation": [], "test": []}
    free = []
    downsamples: dict[str, list[float]] = {}
    seen: dict[tuple, tuple[int, int]] = {}  # (slide, location, size, level) -> (row, label) of its first row
    for n, r in enumerate(rows, start=2):
        try:
            sz = int(patch_size) if patch_size is not None else int(float(r.get("size") or 0))
            lvl = int(level) if level is not None else int(float(r.get("level") or 0))
            if sz <= 0:
                raise ValueError("no patch size (column 'size' or patch_size)")
            x, y = int(float(r["x"])), int(float(r["y"]))
            if not (r["slide"] or "").strip():
                raise ValueError("no slide path (column 'slide')")
            slide = Path(r["slide"].strip())
            slide = slide if slide.is_absolute() else (csv_path.parent / slide)
            if not center:  # top-left corners -> level-0 centres
                y, x = level0_center((y, x), (sz, sz), _level_downsample(slide, lvl, downsamples, backend))
            try:
                label = _as_int(r["label"])  # "1" or, as pandas writes it, "1.0"
            except (ValueError, TypeError):
                raise ValueError(f"label {r['label']!r} (column 'label') is not an integer class index") from None
            item = {"image": str(slide), "location": [y, x], "size": [sz, sz], "level": lvl, "label": label}
        except (ValueError, TypeError) as e:  # WSIError (an unreadable slide) is a ValueError
            raise ValueError(f"patch CSV {str(csv_path)!r} row {n}: {e}") from e
        first = seen.setdefault((os.path.normpath(slide), y, x, sz, lvl), (n, item["label"]))
        if first[1] != item["label"]:  # one patch, two classes: contradictory training targets
            raise ValueError(
                f"patch CSV {str(csv_path)!r} row {n}: the patch of row {first[0]} (same slide, x, y, size and level) "
                f"again, with label {item['label']} instead of {first[1]}; a patch must be listed with one label."
            )
        if first[0] != n:  # listed again: kept once (a repeated patch could land in training and test)
            logger.warning("patch CSV %s row %d: the patch of row %d again; kept once", csv_path, n, first[0])
            continue
        split = (r.get("split") or "").strip()
        if split:
            if split not in fixed:
                raise ValueError(f"patch CSV {str(csv_path)!r} row {n}: unknown split {split!r}.")
            fixed[split].append(item)
        else:
            free.append(item)
    if free:
        parts = split_items(free, val_frac, test_frac, seed, stratify_key="label")
        for k, v in parts.items():
            fixed[k].extend(v)
        # a patch-level split puts patches of one slide (even overlapping ones) on both sides: say so
        held = {i["image"] for k in ("validation", "test") for i in parts[k]}
        shared = sorted({i["image"] for i in parts["training"]} & held)
        if shared:
            logger.warning(
                "patch CSV %s: rows without a 'split' are split patch by patch, so %d slide(s) have patches both in "
                "training and in validation/test (e.g. %s); their validation/test metrics then score slides seen in "
                "training. Give the rows a 'split' column (one split per slide) to split by slide.",
                csv_path, len(shared), shared[0],
            )  # fmt: skip
    return write_datalist(out_path, fixed, path_keys=("image",), center_location=True,
                          description=f"patches from {csv_path.name}", **dict(extra or {}))  # fmt: skip


def _holds_slides(folder: Path) -> bool:
    from monai_gmr.data.wsi import SLIDE_EXTENSIONS

    for p in folder.rglob("*"):
        if any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        if p.is_file() and p.name.lower().endswith((*SLIDE_EXTENSIONS, ".csv", ".json", ".h5")):
            return True
    return False


def _check_location_convention(root: Path) -> None:
    """Refuse a synthetic dataset with ``patch_level > 0`` written by an earlier generator (before the WSI bundle's
    0.1.2): its locations follow MONAI's ``location - size // 2`` while patches are read around the level-0 centre,
    so about 1 in 6 labels disagree with the tissue read. Level-0 datasets are the same under both conventions."""
    meta_path = root / SLIDES_JSON
    if not meta_path.is_file():
        return
    meta = json.loads(meta_path.read_text())
    if int(meta.get("patch_level", 0)) > 0 and "location - size // 2" in str(meta.get("location", "")):
        raise ValueError(
            f"dataset_dir {str(root)!r} holds synthetic slides generated with patch_level={meta['patch_level']} under "
            "the old location convention (location - size // 2): its labels do not match the patches read. Delete "
            "the folder to regenerate it."
        )


def _check_synthetic_names(kwargs: Mapping[str, Any]) -> None:
    """Refuse keyword names that neither :func:`make_synthetic_wsi` nor :func:`render_synthetic_slide` take: a
    bundle's ``--synthetic "{'n_slide': 4}"`` or ``--synthetic#n_slidez 4``.

    Raises:
        ValueError: an unknown name; the message lists the known ones and the closest matches.
    """
    import inspect

    mine = [k for k in inspect.signature(make_synthetic_wsi).parameters if k not in ("out_dir", "render_kwargs")]
    known = [k for k in inspect.signature(render_synthetic_slide).parameters if k not in ("size", "rng", "mask_downsample")]
    # a TypeError from render_synthetic_slide named no setting; with existing data a misspelt name was ignored
    refuse_unknown_names(kwargs, [*mine, *known], "synthetic slide setting")


def ensure_wsi_dataset(
    dataset_dir: str | os.PathLike,
    generate: bool = True,
    n_slides: int = 2,
    size: int | Sequence[int] = 4096,
    seed: int = 0,
    datalist_name: str = DATALIST_NAME,
    **kwargs: Any,
) -> Path:
    """Path of the patch datalist in ``dataset_dir``; generate synthetic slides there when it holds no slides.

    - ``dataset_dir/datalist_name`` exists: returned as is;
    - no datalist but a ``patches.csv``: a datalist is built from it (:func:`patch_csv_to_datalist`);
    - missing / no slide or data file: with ``generate``, :func:`make_synthetic_wsi` writes a dataset (in a
      temporary sibling folder moved into place when complete), logging ``"dataset_dir X holds no slides:
      generating N synthetic slides"``;
    - otherwise a ``FileNotFoundError`` names ``dataset_dir`` and says what is missing.

    Args:
        dataset_dir: dataset folder.
        generate: allow generating synthetic slides.
        n_slides: number of synthetic slides.
        size: synthetic slide size.
        seed: synthetic data seed.
        datalist_name: datalist file name.
        kwargs: forwarded to :func:`make_synthetic_wsi`.

    Raises:
        ValueError: a keyword name that :func:`make_synthetic_wsi` does not take (checked also when the data
            exist, so that a misspelt ``synthetic`` setting is not ignored).
    """
    root = Path(dataset_dir)
    datalist = root / datalist_name
    # before the existing data are returned: a misspelt name (--synthetic#n_slidez 4) was then silently ignored
    _check_synthetic_names(kwargs)
    if datalist.is_file():
        _check_location_convention(root)
        logger.info("using the slide dataset in %s (%s)", root, datalist_name)
        return datalist
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"dataset_dir {str(root)!r} is not a folder.")
    if (root / PATCH_CSV).is_file():
        logger.info("building %s from %s", datalist, root / PATCH_CSV)
        return patch_csv_to_datalist(root / PATCH_CSV, datalist)
    if root.is_dir() and _holds_slides(root):
        raise FileNotFoundError(
            f"dataset_dir {str(root)!r} holds files but neither {datalist_name} nor {PATCH_CSV} (slide,x,y,label); "
            "write one of them, or point dataset_dir to an empty folder to generate synthetic slides."
        )
    if not generate:
        state = "does not exist" if not root.exists() else "holds no slides"
        raise FileNotFoundError(
            f"dataset_dir {str(root)!r} {state} (no {datalist_name}) and synthetic slide generation is disabled."
        )
    # %s: the values are checked by make_synthetic_wsi (text from a command line broke %d)
    logger.info("dataset_dir %s holds no slides: generating %s synthetic slides (size %s, seed %s)", root, n_slides,
                size, seed)  # fmt: skip
    tmp = make_temp_dir(root)  # becomes the dataset folder: mode 0o777 - umask, not mkdtemp's 0o700
    try:
        make_synthetic_wsi(tmp, n_slides=n_slides, size=size, seed=seed, **kwargs)
        if datalist_name != DATALIST_NAME:  # the generator writes datalist.json
            os.replace(tmp / DATALIST_NAME, tmp / datalist_name)
        move_into_place(tmp, root, datalist_name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return datalist
