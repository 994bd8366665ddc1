"""Prepare a nuclei-segmentation dataset for the ``gmr_nuclei_segmentation`` bundle.

Reads raw image/annotation pairs in one of three layouts and writes a dataset folder::

    output/images/<name>.png     RGB uint8 (alpha dropped, grey repeated)
    output/labels/<name>.png     uint16 instance ids, 0 = background, 1..N consecutive   (datalist "instance")
    output/masks/<name>.png      uint8 binary foreground 0/1                             (datalist "mask")
    output/boundary/<name>.png   uint8 0 background / 1 nucleus interior / 2 nucleus inner boundary (--boundary)
    output/datalist.json         MONAI datalist, seeded training/validation/test split, paths relative

The datalist's ``"label"`` is the instance mask by default (``--label binary|boundary`` picks another one; the
``gmr_nuclei_segmentation`` bundle reads ``"instance"`` whatever ``"label"`` names).

Input formats (``--format``, default ``auto``):

- ``folders``: an image folder and an instance-mask folder paired by file name. A mask matches an image when its
  stem equals the image stem, optionally followed by ``_label``, ``_labels``, ``_mask``, ``_masks``,
  ``_instance``, ``_inst`` or ``_seg``. Masks may be 8/16/32-bit instance ids, binary masks (one foreground value,
  e.g. 0/1, 0/255 or 0/65535; turned into instances by connected components), colour-coded RGB instance masks (one colour per nucleus) or ``.npy``.
  Only the files directly in the folders are paired; images in sub-folders are left out, with a warning.
- ``monuseg_xml``: images and Aperio ImageScope XML annotations (MoNuSeg): every
  ``Annotations/Annotation/Regions/Region`` polygon (``Vertices/Vertex`` ``X``, ``Y`` in pixels) becomes one
  instance (later regions are drawn over earlier ones).
- ``cpm_txt``: CPM-15 style ASCII masks: the first line is ``width height``, then one integer per pixel in
  row-major order (x fastest), ``0`` background and ``1..N`` instance ids.

``auto`` picks ``monuseg_xml`` when the mask folder (or, without one, the input folder or a sub-folder) holds an
``.xml`` file with an ``<Annotation`` element, else ``cpm_txt`` when it holds a ``.txt`` file starting with two
positive integers, else ``folders``.

Images without annotation named like another image plus ``_poly`` or ``_overlay`` (CPM-15's ``imageXX_poly.png``,
the annotation drawn on ``imageXX.png``) are renderings and are skipped.

Sub-folders are found by common names (images: ``images``, ``Images``, ``Tissue Images``, ...; masks: ``labels``,
``masks``, ``Annotations``, ``masks_txt``, ...) or given with ``--images`` / ``--masks``; with neither, images and
masks are looked for directly in ``--input``. A ``pairs.csv`` in the input folder (unless ``--images`` or
``--masks`` is given) or ``--pairs FILE`` overrides name pairing: its ``image`` column and one mask column (``label_png``, ``label``, ``mask``, ``instance``,
``mask_txt``, ``annotation`` or ``xml``, chosen by ``--format``) hold paths relative to the CSV. This is how the
CPM-15 copy in ``../shared/data/cpm15_nuclei_he`` fixes its swapped ``image04``/``image05`` masks.

Every pair is checked (readable image, readable mask, same size: errors name the file) while the dataset is being
written to a temporary folder next to ``--output``; only a complete dataset is moved into place, so a failed
run leaves ``--output`` untouched.

Usage::

    python -m monai_gmr.data.prepare_nuclei --input ../shared/data/cpm15_nuclei_he --output data/cpm15 --seed 0
    python -m monai_gmr.data.prepare_nuclei --input MoNuSeg --output data/monuseg --format monuseg_xml --boundary
"""

from __future__ import annotations

import argparse
import logging
import numbers
import os
import shutil
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monai_gmr.data.datalist import (
    DATALIST_NAME,
    move_into_place,
    read_csv_rows,
    split_counts,
    split_items,
    write_datalist,
)
from monai_gmr.data.synthetic_nuclei import save_png
from monai_gmr.utils import as_bool, make_temp_dir, missing_dirs, null_to_none, remove_empty_dirs

__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "NucleiPair",
    "read_rgb_image",
    "read_instance_mask",
    "mask_array_instances",
    "binary_mask_instances",
    "read_cpm_txt_mask",
    "rasterize_aperio_xml",
    "relabel_sequential",
    "instance_boundaries",
    "find_nuclei_pairs",
    "prepare_nuclei_dataset",
    "prepare_nuclei",
    "main",
]

logger = logging.getLogger("monai_gmr.data.prepare_nuclei")  # not "__main__" under `python -m`

FORMATS = ("auto", "folders", "monuseg_xml", "cpm_txt")
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_MASK_EXTENSIONS = {
    "folders": (".png", ".tif", ".tiff", ".bmp", ".npy"),
    "monuseg_xml": (".xml",),
    "cpm_txt": (".txt",),
}
_MASK_SUFFIXES = ("_label", "_labels", "_mask", "_masks", "_instance", "_instances", "_inst", "_seg", "-label", "-mask")
_TEXT_NOT_MASKS = ("readme", "source", "license", "licence", "notes")  # .txt files that are not CPM masks
_RENDERING_SUFFIXES = ("_poly", "_overlay")  # imageXX_poly.png beside imageXX.png: annotation drawn on the image
_IMAGE_DIRS = ("images", "Images", "Tissue Images", "Tissue_Images", "tissue_images", "imgs", "img", "image")
_MASK_DIRS = {
    "folders": ("labels", "Labels", "instances", "masks", "Masks", "label", "mask", "annotations_png"),
    "monuseg_xml": ("annotations", "Annotations", "xml", "XML", "labels"),
    "cpm_txt": ("masks_txt", "masks", "labels_txt", "txt", "labels"),
}
_PAIR_COLUMNS = {
    "folders": ("label_png", "label", "instance", "mask"),
    "monuseg_xml": ("annotation", "xml", "label", "mask"),
    "cpm_txt": ("mask_txt", "label_txt", "mask", "label"),
}


@dataclass(frozen=True)
class NucleiPair:
    """One raw image and its annotation file.

    Attributes:
        name: output file stem.
        image: image path.
        mask: annotation path (instance image, ``.npy``, Aperio ``.xml`` or CPM ``.txt``).
    """

    name: str
    image: Path
    mask: Path


# ----------------------------------------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------------------------------------
def read_rgb_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB (PIL, with tifffile as fallback for TIFFs PIL cannot decode).

    Alpha is dropped, grey is repeated to 3 channels, 16-bit, 32-bit and float images are scaled to 8 bits by their
    own maximum, or by 1 when that is smaller (float images in [0, 1]); per image: the contrast of each image is
    kept, absolute intensities are not comparable across images; negative values become 0.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be decoded as an image (the message names the file).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist.")
    try:
        with Image.open(path) as im:
            arr = _colour_png16(im, path)
            if arr is not None:  # scaled by the maximum of its colour channels, as 16-bit grey is
                arr = arr[..., :3]  # alpha dropped
                arr = np.rint(arr / max(float(arr.max()), 1.0) * 255).astype(np.uint8)
            else:
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # convert("RGB") would clip "F" in [0, 1] to black
                    arr = np.clip(np.asarray(im).astype(np.float64), 0, None)
                    arr = np.rint(arr / max(float(arr.max()), 1.0) * 255).astype(np.uint8)
                else:
                    arr = np.asarray(im.convert("RGB"))
    except Exception as e_pil:  # noqa: BLE001 - report any decoder failure with the file name
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise ValueError(f"cannot read image {str(path)!r}: {e_pil}") from e_pil
        try:
            import tifffile

            arr = tifffile.imread(path)
        except Exception as e_tif:  # noqa: BLE001
            raise ValueError(f"cannot read image {str(path)!r}: {e_pil}; tifffile: {e_tif}") from e_tif
        if arr.dtype != np.uint8:
            arr = np.clip(arr.astype(np.float64), 0, None)
            arr = np.rint(arr / max(float(arr.max()), 1.0) * 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"cannot read image {str(path)!r}: expected an RGB(A) or grey image, got shape {arr.shape}.")
    return np.ascontiguousarray(arr[..., :3])


def is_colour_png16(im: Any) -> bool:
    """Whether the opened PIL image ``im`` is a 16-bit RGB(A) PNG (header only): PIL keeps only the high byte of
    each such sample, and so does MONAI's PNG reader, which uses PIL."""
    return im.format == "PNG" and bool(im.tile) and str(im.tile[0][3]).endswith(";16B") and im.mode in ("RGB", "RGBA")


def _colour_png16(im: Any, path: Path) -> np.ndarray | None:
    """The pixels of a 16-bit colour PNG at full depth, decoded with ``imagecodecs``; ``None`` for any other file.
    PIL keeps only the high byte of each such sample: 12-bit camera data (0..4095) came out nearly black (0..15),
    and 16-bit ids of a mask stored as RGB merged."""
    if not is_colour_png16(im):
        return None
    import imagecodecs

    return np.asarray(imagecodecs.png_decode(path.read_bytes()))


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Map the non-zero ids of ``labels`` to ``1..N`` (order preserved); returns an int32 array."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    out = np.zeros(labels.shape, np.int32)
    if ids.size:
        out = (np.searchsorted(ids, labels) + 1).astype(np.int32)
        out[labels == 0] = 0
    return out


def read_instance_mask(path: str | os.PathLike) -> np.ndarray:
    """Read an instance mask image (or ``.npy``) as ``(H, W)`` int32 ids (0 background).

    - integer single-channel images: ids as stored, except that masks with a single non-zero value (0/1, 0/255,
      0/65535) are binary and become instances by 8-connected components;
    - RGB(A) images: every distinct non-black colour is one instance (colour-coded instance masks); fully
      transparent pixels (alpha 0) are background.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable file or unsupported shape (the message names the file).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask {str(path)!r} does not exist.")
    pages = 1
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            try:
                with Image.open(path) as im:
                    pages = getattr(im, "n_frames", 1)  # PIL reads page 0 only: one nucleus of a stack of masks
                    arr = _colour_png16(im, path)
                    if arr is None:
                        im.load()
                        arr = np.asarray(im)
            except Exception:
                if path.suffix.lower() not in (".tif", ".tiff"):
                    raise
                import tifffile

                arr = tifffile.imread(path)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read mask {str(path)!r}: {e}") from e
    if pages > 1:
        raise ValueError(
            f"mask {str(path)!r} has {pages} pages (e.g. one per nucleus): a mask is one 2D image of instance ids "
            "(0 background); merge the pages into one first."
        )
    return mask_array_instances(arr, path, grey_alpha=path.suffix.lower() == ".png")


def mask_array_instances(arr: np.ndarray, path: str | os.PathLike = "mask", grey_alpha: bool = True) -> np.ndarray:
    """The instance ids ``(H, W)`` int32 (0 background) of a decoded mask array, channels last: how
    :func:`read_instance_mask` reads every mask, and how the nuclei bundle reads the labels of a datalist
    (``monai_gmr.workflows.nuclei.label_instances``), so that both take the same nuclei from one file.

    ``(H, W)`` / ``(H, W, 1)`` ids as stored (a single foreground value: 8-connected components); ``(H, W, 2)`` grey +
    alpha (with ``grey_alpha``; alpha 0 is background); ``(H, W, 3|4)`` colour-coded: every distinct non-black
    colour is one nucleus, fully transparent pixels are background (grey stored as RGB: the grey ids).

    Raises:
        ValueError: an unsupported shape, non-integer or negative values (the message names ``path``).
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 2 and grey_alpha:  # 16-bit grey + alpha PNG
        arr = np.where(arr[..., 1] == 0, 0, arr[..., 0])
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.int64)
        if arr.shape[-1] == 4:
            rgb[arr[..., 3] == 0] = 0  # fully transparent pixels are background, whatever their colour
        if np.all(rgb == rgb[..., :1]):  # grey stored as RGB
            arr = rgb[..., 0]
        else:
            code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            return relabel_sequential(code)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"cannot read mask {str(path)!r}: expected a 2D instance mask, got shape {arr.shape}.")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"mask {str(path)!r} has non-integer values (dtype {arr.dtype}).")
        arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError(f"mask {str(path)!r} has negative values (min {arr.min()}).")
    lab = binary_mask_instances(arr)
    return lab if lab is not None else relabel_sequential(arr)


def binary_mask_instances(arr: np.ndarray) -> np.ndarray | None:
    """The 8-connected components ``(H, W)`` int32 of a binary mask (one foreground value, whatever it is: 0/1,
    0/255, 0/65535 of a 16-bit mask, which was one instance), or ``None`` for an instance-id map (several ids)."""
    from scipy import ndimage

    if np.unique(arr[arr != 0]).size > 1:
        return None
    lab, _ = ndimage.label(arr > 0, structure=np.ones((3, 3), bool))
    return lab.astype(np.int32)


def read_cpm_txt_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a CPM-15 style ASCII instance mask: first line ``width height``, then one integer per pixel,
    row-major (x fastest). Returns ``(height, width)`` int32.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: malformed header or wrong number of values (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask {str(path)!r} does not exist.")
    try:
        tokens = path.read_text().split()
        width, height = int(tokens[0]), int(tokens[1])
        values = np.array(tokens[2:], dtype=np.int64)
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read CPM ASCII mask {str(path)!r}: expected 'width height' then integers ({e}).") from e
    if width <= 0 or height <= 0:
        raise ValueError(f"CPM ASCII mask {str(path)!r}: invalid size {width}x{height}.")
    if values.size != width * height:
        raise ValueError(
            f"CPM ASCII mask {str(path)!r}: header says {width}x{height} = {width * height} pixels but "
            f"{values.size} values follow."
        )
    if values.size and values.min() < 0:
        raise ValueError(f"CPM ASCII mask {str(path)!r} has negative values.")
    return values.reshape(height, width).astype(np.int32)


def rasterize_aperio_xml(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise the polygons of an Aperio ImageScope XML (MoNuSeg) into ``(H, W)`` int32 instance ids.

    Each ``Annotations/Annotation/Regions/Region`` with >= 3 ``Vertices/Vertex`` (attributes ``X``, ``Y`` in
    pixels, x to the right, y down) becomes instance ``1, 2, ...`` in document order; later regions are drawn
    over earlier ones and regions that end up with no pixel are dropped (ids are made consecutive).
    Polygons are filled with PIL ``ImageDraw.polygon`` (pixels on the outline included).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not parseable XML, no ``Annotation`` element, or bad vertex coordinates.
    """
    from PIL import Image, ImageDraw

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation {str(path)!r} does not exist.")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"cannot parse Aperio XML {str(path)!r}: {e}") from e
    annotations = [root] if root.tag == "Annotation" else root.findall("Annotation")
    if not annotations:
        raise ValueError(f"Aperio XML {str(path)!r} has no Annotation element (root tag {root.tag!r}).")
    hgt, wid = int(shape[0]), int(shape[1])
    canvas = Image.new("I", (wid, hgt), 0)
    draw = ImageDraw.Draw(canvas)
    n = 0
    for ann in annotations:
        for region in ann.iter("Region"):
            try:
                pts = [(float(v.attrib["X"]), float(v.attrib["Y"])) for v in region.iter("Vertex")]
                if not np.isfinite(pts).all():
                    raise ValueError("non-finite coordinate")
            except (KeyError, ValueError) as e:
                raise ValueError(
                    f"Aperio XML {str(path)!r}: region {region.attrib.get('Id', '?')} has a bad vertex ({e})."
                ) from e
            if len(pts) < 3:
                continue
            n += 1
            draw.polygon(pts, fill=n, outline=n)
    return relabel_sequential(np.asarray(canvas, dtype=np.int32))


def instance_boundaries(instances: np.ndarray, width: int = 1) -> np.ndarray:
    """Inner boundary pixels of labelled objects (an object pixel with a differently labelled pixel, another
    object or background, within ``width`` pixels in a square neighbourhood). Same definition as the bundle's
    on-the-fly boundary class, so prepared and on-the-fly 3-class masks agree."""
    from scipy import ndimage

    size = 2 * int(width) + 1
    hi = ndimage.grey_dilation(instances, size=(size, size), mode="nearest")
    lo = ndimage.grey_erosion(instances, size=(size, size), mode="nearest")
    return (instances > 0) & (hi != lo)


# ----------------------------------------------------------------------------------------------------------------
# pairing
# ----------------------------------------------------------------------------------------------------------------
def _first_dir(root: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    exts = tuple(e.lower() for e in extensions)
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(exts)
    )


def _mask_key(stem: str) -> str:
    for suf in _MASK_SUFFIXES:
        if stem.lower().endswith(suf):
            return stem[: -len(suf)]
    return stem


def _head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _cpm_header(path: Path) -> bool:
    """Whether a text file starts like a CPM-15 mask (:func:`read_cpm_txt_mask`): two positive integers
    (``width height``) first; a CITATION.txt or a notes file beside the images does not."""
    first = _head(path, 64).split()[:2]
    return len(first) == 2 and all(v.isdigit() and int(v) > 0 for v in first)


def _detect_format(root: Path, masks_dir: Path | None) -> str:
    candidates = [masks_dir] if masks_dir is not None else [root, *(p for p in root.iterdir() if p.is_dir())]
    found = {fmt: False for fmt in ("monuseg_xml", "cpm_txt")}
    for folder in candidates:
        for p in folder.iterdir():
            if p.is_file():
                if p.suffix.lower() == ".xml" and _head(p, 4096).find(b"<Annotation") >= 0:
                    found["monuseg_xml"] = True
                elif p.suffix.lower() == ".txt" and not p.stem.lower().startswith(_TEXT_NOT_MASKS) and _cpm_header(p):
                    found["cpm_txt"] = True
    if found["monuseg_xml"]:
        return "monuseg_xml"
    if found["cpm_txt"]:
        return "cpm_txt"
    return "folders"


def _pairs_from_csv(csv_path: Path, fmt: str) -> list[NucleiPair]:
    rows = read_csv_rows(csv_path, "pairs file")
    if not rows:
        raise ValueError(f"pairs file {str(csv_path)!r} has no rows.")
    cols = rows[0].keys()
    if "image" not in cols:
        raise ValueError(f"pairs file {str(csv_path)!r} needs an 'image' column, has {list(cols)}.")
    order = _PAIR_COLUMNS[fmt] if fmt != "auto" else _PAIR_COLUMNS["folders"] + ("mask_txt", "annotation", "xml")
    col = next((c for c in order if c in cols), None)
    if col is None:
        raise ValueError(f"pairs file {str(csv_path)!r} has no mask column for format {fmt!r} (one of {list(order)}).")
    base = csv_path.parent
    out = []
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        if not (row["image"] or "").strip() or not (row[col] or "").strip():
            raise ValueError(
                f"pairs file {str(csv_path)!r} row {n}: needs an 'image' and a {col!r} path, got "
                f"{[v for k, v in row.items() if k is not None]}."
            )
        img, msk = Path(row["image"].strip()), Path(row[col].strip())
        img = img if img.is_absolute() else base / img
        msk = msk if msk.is_absolute() else base / msk
        out.append(NucleiPair(img.stem, img, msk))
    logger.info("pairs from %s (mask column %r): %d pairs", csv_path, col, len(out))
    return out


def find_nuclei_pairs(
    input_dir: str | os.PathLike,
    format: str = "auto",  # noqa: A002 - mirrors the CLI option
    images: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
    pairs: str | os.PathLike | None = "auto",
) -> tuple[list[NucleiPair], str]:
    """Find image/annotation pairs in ``input_dir``.

    Args:
        input_dir: raw dataset folder.
        format: ``auto``, ``folders``, ``monuseg_xml`` or ``cpm_txt``.
        images: image folder (absolute or relative to ``input_dir``); default: found by common names.
        masks: annotation folder; default: found by common names.
        pairs: ``"auto"`` (use ``input_dir/pairs.csv`` when present and neither ``images`` nor ``masks`` is
            given), ``None``/``"none"``/``"null"`` (pair by name), or a
            CSV path (columns ``image`` and a mask column, paths relative to the CSV).

    Returns:
        ``(pairs, format)`` with the resolved format (``auto`` replaced by the detected one).

    Raises:
        FileNotFoundError: missing folders.
        ValueError: unknown format, no pairs, images without annotation (all listed), duplicate names.
    """
    root = Path(input_dir)
    # the text "none" / "null" (any case) means None, as the defaults do, unless such a file or folder exists:
    # --pairs None failed as "pairs file 'None' does not exist", --images null as "image folder '<input>/null' ..."
    pairs = null_to_none(pairs, path_base=".")
    images, masks = null_to_none(images, path_base=root), null_to_none(masks, path_base=root)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    if not root.is_dir():
        raise FileNotFoundError(f"input {str(root)!r} is not a folder.")
    csv_path: Path | None = None
    if pairs not in (None, "auto"):
        csv_path = Path(pairs)
        if not csv_path.is_file():
            raise FileNotFoundError(f"pairs file {str(csv_path)!r} does not exist.")
    elif pairs == "auto" and images is None and masks is None and (root / "pairs.csv").is_file():
        csv_path = root / "pairs.csv"
    if csv_path is not None:
        found = _pairs_from_csv(csv_path, format)
        if format == "auto":
            ext = {p.mask.suffix.lower() for p in found}
            format = "monuseg_xml" if ext == {".xml"} else "cpm_txt" if ext == {".txt"} else "folders"
    else:
        img_dir = (root / images) if images else (_first_dir(root, _IMAGE_DIRS) or root)  # absolute wins in /
        msk_dir_given = (root / masks) if masks else None
        for d, what in ((img_dir, "image"), (msk_dir_given, "mask")):
            if d is not None and not d.is_dir():
                raise FileNotFoundError(f"{what} folder {str(d)!r} does not exist.")
        if format == "auto":
            format = _detect_format(root, msk_dir_given)
        msk_dir = msk_dir_given or _first_dir(root, _MASK_DIRS[format]) or root
        image_files = _files(img_dir, IMAGE_EXTENSIONS)
        mask_files = _files(msk_dir, _MASK_EXTENSIONS[format])
        nested = [p for sub in sorted(img_dir.iterdir()) if sub.is_dir() and not sub.name.startswith(".")
                  and sub not in (msk_dir, msk_dir_given) for p in _files(sub, IMAGE_EXTENSIONS)]  # fmt: skip
        if nested:  # e.g. images/train/*.png: only the folder's own files are paired, the others were left silently
            logger.warning(
                "%d image file(s) in sub-folders of %s are not used (e.g. %s): only files directly in the image folder "
                "are paired; give the sub-folder with --images (and --masks) or list the pairs in a pairs CSV.",
                len(nested), img_dir, nested[0],
            )
        if img_dir == msk_dir:  # one folder holds both: masks are the files with a mask suffix
            mask_files = [
                m for m in mask_files if _mask_key(m.stem) != m.stem or m.suffix.lower() in (".xml", ".txt", ".npy")
            ]
            mask_set = set(mask_files)
            image_files = [p for p in image_files if p not in mask_set]
        exact: dict[str, Path] = {}
        stripped: dict[str, Path] = {}
        for m in mask_files:
            for table, key in ((exact, m.stem), (stripped, _mask_key(m.stem))):
                if table is stripped and key == m.stem:
                    continue
                if key in table:
                    raise ValueError(f"two annotation files for {key!r}: {str(table[key])!r} and {str(m)!r}.")
                table[key] = m
        found, missing = [], []
        stems = {p.stem for p in image_files}
        for img in image_files:
            m = exact.get(img.stem, stripped.get(img.stem))
            if m is None and any(
                img.stem.lower().endswith(suf) and img.stem[: -len(suf)] in stems for suf in _RENDERING_SUFFIXES
            ):
                logger.info("skipping %s: a rendering of the annotation of another image", img)
            elif m is None:
                missing.append(str(img))
            else:
                found.append(NucleiPair(img.stem, img, m))
        if missing:
            raise ValueError(
                f"no {format} annotation in {str(msk_dir)!r} for {len(missing)} image(s): {missing[:5]}"
                + (" ..." if len(missing) > 5 else "")
            )
    if not found:
        raise ValueError(f"no image/annotation pairs found in {str(root)!r} (format {format!r}).")
    names = [p.name for p in found]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate image names in {str(root)!r}: {dup}.")
    return found, format


def _load_instances(pair: NucleiPair, shape: tuple[int, int]) -> np.ndarray:
    suffix = pair.mask.suffix.lower()
    if suffix == ".xml":
        return rasterize_aperio_xml(pair.mask, shape)
    if suffix == ".txt":
        inst = read_cpm_txt_mask(pair.mask)
    else:
        inst = read_instance_mask(pair.mask)
    if inst.shape != tuple(shape):
        raise ValueError(
            f"size mismatch: image {str(pair.image)!r} is {shape[1]}x{shape[0]} (WxH) but its mask "
            f"{str(pair.mask)!r} is {inst.shape[1]}x{inst.shape[0]}."
        )
    return relabel_sequential(inst)


# ----------------------------------------------------------------------------------------------------------------
# preparation
# ----------------------------------------------------------------------------------------------------------------
def prepare_nuclei_dataset(
    input: str | os.PathLike,  # noqa: A002 - mirrors the CLI option
    output: str | os.PathLike,
    format: str = "auto",  # noqa: A002
    boundary: bool = False,
    boundary_width: int = 1,
    label: str = "instance",
    seed: int = 0,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    images: str | os.PathLike | None = None,
    masks: str | os.PathLike | None = None,
    pairs: str | os.PathLike | None = "auto",
    overwrite: bool = False,
) -> Path:
    """Convert a raw nuclei dataset into ``output`` (see the module docstring) and return the datalist path.

    Args:
        input: raw dataset folder.
        output: output dataset folder (must not hold a dataset unless ``overwrite``).
        format: ``auto``, ``folders``, ``monuseg_xml`` or ``cpm_txt``.
        boundary: also write 3-class masks (0 background, 1 interior, 2 inner boundary) to ``boundary/``.
        boundary_width: boundary thickness in pixels.
        label: what the datalist's ``"label"`` points to: ``instance`` (uint16 ids), ``binary`` (0/1) or
            ``boundary`` (3-class; implies ``boundary=True``).
        seed: split seed.
        val_frac: validation fraction.
        test_frac: test fraction.
        images: image sub-folder override.
        masks: annotation sub-folder override.
        pairs: pairs CSV (``"auto"``: ``input/pairs.csv`` when present and neither ``images`` nor ``masks`` is
            given; ``None``: pair by name).
        overwrite: replace an existing dataset in ``output``.

    Returns:
        path of ``output/datalist.json``.

    Raises:
        FileNotFoundError / ValueError: bad input (messages name the file), or ``output`` holds input files in the
        folders it would replace (e.g. ``output`` is ``input``); ``FileExistsError`` when ``output``
        already holds a dataset and ``overwrite`` is False. On any error ``output`` is left as it was.
    """
    if label not in ("instance", "binary", "boundary"):
        raise ValueError(f"label must be 'instance', 'binary' or 'boundary', got {label!r}.")
    if boundary_width < 1:
        raise ValueError(f"boundary_width must be >= 1, got {boundary_width}.")
    boundary = bool(boundary) or label == "boundary"
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {str(out)!r} is not a folder.")
    if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")) and not overwrite:
        raise FileExistsError(f"output {str(out)!r} is not empty; pass overwrite=True (--overwrite) to replace it.")
    found, fmt = find_nuclei_pairs(input, format, images=images, masks=masks, pairs=pairs)
    split_counts(len(found), val_frac, test_frac)  # bad fractions: refused now, not after every image is converted
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:  # numpy's error named no setting
        raise ValueError(f"seed must be an integer >= 0 (the split seed), got seed={seed!r}.")
    # the folders this run replaces (move_into_place) or removes must not hold its sources: with --overwrite and
    # --output equal to --input, the raw images/ and masks/ were deleted and replaced by the prepared ones
    replaced = [(out / d).resolve() for d in ("images", "labels", "masks", "boundary")]
    for src in (s.resolve() for pair in found for s in (pair.image, pair.mask)):
        if any(src.is_relative_to(r) for r in replaced):
            raise ValueError(
                f"output {str(out)!r} holds the input file {str(src)!r}: preparing into it would replace its "
                "images/, labels/, masks/ and boundary/ folders; choose another --output."
            )
    # absolute (the datalist's paths are made relative to it, whatever the working folder), mode 0o777 - umask
    created = missing_dirs(out.parent)  # made for the temporary folder: removed again if the run fails
    tmp = make_temp_dir(out)
    done = False
    try:
        items, stats = [], []
        for pair in found:
            rgb = read_rgb_image(pair.image)
            inst = _load_instances(pair, rgb.shape[:2])
            if inst.max() > np.iinfo(np.uint16).max:
                raise ValueError(f"mask {str(pair.mask)!r} has {inst.max()} instances (> 65535, uint16 PNG limit).")
            name = f"{pair.name}.png"
            item = {
                "image": str(save_png(tmp / "images" / name, rgb)),
                "instance": str(save_png(tmp / "labels" / name, inst.astype(np.uint16))),
                "mask": str(save_png(tmp / "masks" / name, (inst > 0).astype(np.uint8))),
            }
            if boundary:
                three = (inst > 0).astype(np.uint8)
                three[instance_boundaries(inst, boundary_width)] = 2
                item["boundary"] = str(save_png(tmp / "boundary" / name, three))
            item["label"] = item[{"instance": "instance", "binary": "mask", "boundary": "boundary"}[label]]
            items.append({k: item[k] for k in ("image", "label", "instance", "mask", "boundary") if k in item})
            # absolute, like preparation["input"] (a path relative to this run's working folder means nothing later)
            stats.append({"name": pair.name, "source_image": str(pair.image.resolve()),
                          "source_mask": str(pair.mask.resolve()), "height": int(rgb.shape[0]),
                          "width": int(rgb.shape[1]), "n_nuclei": int(inst.max())})  # fmt: skip
            logger.info("%s: %dx%d, %d nuclei", pair.name, rgb.shape[1], rgb.shape[0], int(inst.max()))
        splits = split_items(items, val_frac, test_frac, seed)
        write_datalist(
            tmp / DATALIST_NAME,
            splits,
            path_keys=("image", "label", "instance", "mask", "boundary"),
            name=Path(input).name,
            description=f"nuclei dataset prepared by monai_gmr.data.prepare_nuclei from {str(input)!r} ({fmt})",
            labels={"0": "background", "1": "nucleus", **({"2": "nucleus boundary"} if label == "boundary" else {})},
            preparation={"input": str(Path(input).resolve()), "format": fmt, "seed": seed, "val_frac": val_frac,
                         "test_frac": test_frac, "boundary": boundary, "boundary_width": boundary_width,
                         "label": label},  # fmt: skip
            images=stats,
        )
        move_into_place(tmp, out, DATALIST_NAME)
        done = True
        if not boundary and (out / "boundary").is_dir():  # (overwrite) an earlier preparation's 3-class masks: the
            shutil.rmtree(out / "boundary")  # new datalist has none, and move_into_place replaces only what it brings
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            remove_empty_dirs(created)
    return out / DATALIST_NAME


#: alias (inside this module; at package level ``monai_gmr.data.prepare_nuclei`` is the module itself).
prepare_nuclei = prepare_nuclei_dataset


def _bool(v: str) -> bool:
    try:
        return as_bool(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m monai_gmr.data.prepare_nuclei",
        description="Prepare a nuclei segmentation dataset (images, instance/binary/boundary masks, MONAI datalist).",
    )
    p.add_argument("--input", required=True, help="raw dataset folder")
    p.add_argument("--output", required=True, help="output dataset folder (dataset_dir of the bundle)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="annotation format (default: auto-detect)")
    p.add_argument("--boundary", nargs="?", const=True, default=False, type=_bool,
                   help="also write 3-class masks (background / interior / boundary)")  # fmt: skip
    p.add_argument("--boundary_width", "--boundary-width", type=int, default=1)
    p.add_argument("--label", default="instance", choices=("instance", "binary", "boundary"),
                   help="mask the datalist's 'label' points to")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--val_frac", "--val-frac", type=float, default=0.2)
    p.add_argument("--test_frac", "--test-frac", type=float, default=0.2)
    p.add_argument("--images", default=None, help="image sub-folder (default: found by name)")
    p.add_argument("--masks", default=None, help="annotation sub-folder (default: found by name)")
    p.add_argument("--pairs", default="auto", help="pairs CSV, 'auto' (input/pairs.csv if present and neither --images nor --masks "
                   "is given) or 'none'")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints a one-line summary per split and returns 0 (errors exit with status 1)."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = prepare_nuclei_dataset(
            args.input, args.output, format=args.format, boundary=args.boundary, boundary_width=args.boundary_width,
            label=args.label, seed=args.seed, val_frac=args.val_frac, test_frac=args.test_frac, images=args.images,
            masks=args.masks, pairs=args.pairs, overwrite=args.overwrite,
        )  # fmt: skip
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    import json

    dl: dict[str, Any] = json.loads(path.read_text())
    counts = ", ".join(f"{k}: {len(dl.get(k, []))}" for k in ("training", "validation", "test"))
    print(f"wrote {path} ({counts}; format {dl['preparation']['format']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
