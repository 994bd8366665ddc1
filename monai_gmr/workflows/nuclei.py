"""Nuclei-segmentation specifics of the ``gmr_nuclei_segmentation`` bundle.

- :func:`nuclei_datalist`: the MONAI datalist of one split, built from ``dataset_dir`` (synthetic data generated
  there by :func:`monai_gmr.data.ensure_nuclei_dataset` when it holds none), checked file by file;
- :class:`NucleiLabeld`: instance / binary masks -> class maps (background, nucleus[, boundary]);
  :func:`has_boundary_class`: which of the two layouts ``num_classes`` asks for (2 or 3; anything else an error);
- :func:`to_rgb`, :func:`merge_foreground`: small tensor helpers used by the configs.
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_gmr.utils import null_to_none, one_of, size_hw

from .common import IMAGE_EXTENSIONS, check_datalist, check_robustness_settings, list_images, run_on_rank0_first

__all__ = [
    "SPLITS",
    "nuclei_datalist",
    "inference_datalist",
    "NucleiLabeld",
    "has_boundary_class",
    "check_window_sizes",
    "check_instance_settings",
    "check_robustness_settings",
    "to_rgb",
    "merge_foreground",
    "nucleus_class_map",
    "nucleus_boundaries",
    "instance_ids",
    "label_instances",
    "OUTPUT_SUFFIXES",
    "remove_earlier_outputs",
    "report_outputs",
]

logger = logging.getLogger(__name__)

#: split names accepted by :func:`nuclei_datalist` (MONAI decathlon-style datalist keys).
SPLITS = ("training", "validation", "test")


def _ensure_dataset(dataset_dir: str | os.PathLike, generate: bool, **synthetic_kwargs: Any) -> str:
    from monai_gmr.data import ensure_nuclei_dataset

    path = str(ensure_nuclei_dataset(dataset_dir, generate=generate, **synthetic_kwargs))
    _warn_other_synthetic(path, synthetic_kwargs)
    return path


def _generator_record(datalist_file: str | os.PathLike) -> Mapping[str, Any] | None:
    """The ``generator`` settings a synthetic dataset's datalist records (``None``: prepared data, or unreadable)."""
    import json

    try:
        record = json.loads(Path(datalist_file).read_text()).get("generator")
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, Mapping) else None


def _synthetic_split_hint(datalist_file: str | os.PathLike) -> str:
    """A hint for an empty split of a *synthetic* dataset: too few ``n_images`` for its fractions (``""`` for
    prepared data). A tiny ``--synthetic "{'n_images': 2}"`` generated its tiles and then failed naming only the
    split."""
    record = _generator_record(datalist_file)
    if record is None or "n_images" not in record:
        return ""
    return (
        f" It holds synthetic data of n_images={record['n_images']} split with val_frac={record.get('val_frac')} and "
        f"test_frac={record.get('test_frac')}: generate more images (e.g. --synthetic#n_images 8) into an empty "
        "dataset_dir."
    )


def _warn_other_synthetic(datalist_file: str | os.PathLike, synthetic_kwargs: Mapping[str, Any]) -> None:
    """Warn when ``datalist_file`` holds synthetic data generated with other ``synthetic`` settings than the run's.

    Synthetic data are generated only into an empty ``dataset_dir``: a later ``--synthetic "{'n_images': 8,
    'size': 128}"`` with the same folder silently trained on the tiles generated before (e.g. the default 24 tiles
    of 256 x 256), the log saying only "using the dataset in ...".
    """
    record = _generator_record(datalist_file)
    if record is None:
        return  # prepared (not synthetic) data: the synthetic settings do not apply
    want = dict(synthetic_kwargs)
    if "size" in want:
        try:
            want["size"] = list(size_hw(want["size"], "size"))  # 64 -> [64, 64], as the record has it
        except (TypeError, ValueError):
            pass
    differ = {k: (record[k], v) for k, v in want.items() if k in record and record[k] != v}
    if differ:
        logger.warning(
            "dataset_dir %s holds synthetic data generated with other settings than synthetic=%s (%s): they are "
            "used as they are; point dataset_dir to an empty folder to generate the data asked for.",
            Path(datalist_file).parent, dict(synthetic_kwargs),
            ", ".join(f"{k}: {a!r} there, {b!r} asked for" for k, (a, b) in differ.items()),
        )  # fmt: skip


def nuclei_datalist(
    dataset_dir: str | os.PathLike,
    split: str = "training",
    generate: bool = True,
    keys: Sequence[str] = ("image", "label"),
    check: bool = True,
    fallback_split: str | None = None,
    return_split: bool = False,
    **synthetic_kwargs: Any,
) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], str]:
    """Datalist entries of one split of the nuclei dataset in ``dataset_dir``.

    ``dataset_dir`` is either prepared data (a ``datalist.json`` written by ``python -m
    monai_gmr.data.prepare_nuclei``) or empty/missing, in which case the synthetic H&E-like dataset is generated
    there when ``generate`` is ``True`` (logged by :func:`monai_gmr.data.ensure_nuclei_dataset`). In a distributed
    run rank 0 prepares the data first. Paths are made absolute.

    Args:
        dataset_dir: dataset folder.
        split: datalist key (``"training"``, ``"validation"`` or ``"test"``).
        generate: generate synthetic data when ``dataset_dir`` holds none (``False``: clear error instead).
        keys: keys every item must have; with ``check`` every file of the split is read once and image/label
            spatial sizes compared (errors name the file) before anything else runs.
        check: run :func:`monai_gmr.workflows.common.check_datalist` on the split.
        fallback_split: split to use when ``split`` is absent or empty (e.g. evaluate on ``"validation"`` when a
            dataset has no ``"test"`` split); ``None`` raises instead.
        return_split: also return the name of the split the items come from (``fallback_split`` when it was
            used), e.g. for an evaluation report.
        synthetic_kwargs: forwarded to ``ensure_nuclei_dataset`` (e.g. ``n_images``, ``size``, ``seed``).

    Returns:
        list of dicts with absolute file paths; with ``return_split``, ``(items, split_used)``.
    """
    items, used = _nuclei_items(dataset_dir, split, generate, keys, check, fallback_split, **synthetic_kwargs)
    return (items, used) if return_split else items


def load_split(datalist_file: str | os.PathLike, split: str, base_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The items of ``split`` of a MONAI datalist JSON (``load_decathlon_datalist``, paths under ``base_dir``); ``[]``
    when the split is missing or empty (MONAI raises ValueError for a missing key and IndexError for an empty "test"
    list, whose item 0 it reads)."""
    from monai.data import load_decathlon_datalist

    try:
        return load_decathlon_datalist(str(datalist_file), is_segmentation=True, data_list_key=split, base_dir=base_dir)
    except (ValueError, IndexError):
        return []


def _nuclei_items(
    dataset_dir: str | os.PathLike,
    split: str,
    generate: bool,
    keys: Sequence[str],
    check: bool,
    fallback_split: str | None,
    **synthetic_kwargs: Any,
) -> tuple[list[dict[str, Any]], str]:
    """:func:`nuclei_datalist`'s items and the split they come from (``fallback_split`` when ``split`` was empty),
    so that later messages name the split actually used."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    datalist_file = run_on_rank0_first(_ensure_dataset, dataset_dir, generate, **synthetic_kwargs)
    base_dir = os.path.abspath(Path(datalist_file).parent)  # a relative dataset_dir gave relative item paths
    used = split
    items = load_split(datalist_file, split, base_dir)
    if not items and fallback_split is not None and fallback_split != split:
        logger.warning("datalist %s has no %r split; using %r instead.", datalist_file, split, fallback_split)
        used = fallback_split
        items = load_split(datalist_file, fallback_split, base_dir)
    if not items:
        raise ValueError(
            f"datalist {datalist_file!r} has no items in split {used!r} (dataset_dir={str(dataset_dir)!r})."
            + _synthetic_split_hint(datalist_file)
        )
    logger.info("%s split: %d items from %s", used, len(items), datalist_file)
    items = _instance_labels(items, datalist_file)
    if check:
        items = check_datalist(
            items, keys=keys, same_shape=True, name=f"{used} split of {datalist_file}", image_checks={"image": to_rgb}
        )
    return items, used


def _instance_labels(items: list[dict[str, Any]], datalist_file: str | os.PathLike) -> list[dict[str, Any]]:
    """Items whose ``"label"`` is their ``"instance"`` mask where a prepared datalist has both and they differ.

    The bundle derives every class from instance ids (:class:`NucleiLabeld`: nucleus, and the boundary class of
    ``num_classes=3`` between touching nuclei) and scores AJI/PQ against them. ``prepare_nuclei --label boundary``
    points ``"label"`` at the 3-class map, whose values were read as two "instances" (all interiors, all boundaries):
    the boundary class trained on was 2 pixels wide, AJI/PQ scored one interior and one boundary object per tile;
    ``--label binary`` gave a single ground-truth nucleus per tile. The 2-class targets are the same either way.
    """
    swapped = [it for it in items if it.get("instance") and it.get("label") and it["instance"] != it["label"]]
    if not swapped:
        return items
    logger.warning(
        "datalist %s: 'label' is not the instance mask (e.g. %s); the bundle reads the 'instance' masks (%s) "
        "instead: its classes (the boundary class too) and the AJI/PQ nuclei come from instance ids.",
        datalist_file, swapped[0]["label"], swapped[0]["instance"],
    )  # fmt: skip
    return [{**it, "label": it["instance"]} if it.get("instance") and it.get("label") else it for it in items]


def inference_datalist(
    input_dir: str | os.PathLike | None,
    dataset_dir: str | os.PathLike,
    split: str = "test",
    generate: bool = True,
    check: bool = True,
    **synthetic_kwargs: Any,
) -> list[dict[str, Any]]:
    """Images to segment: every image in ``input_dir`` when given, else the ``split`` images of ``dataset_dir``.

    ``input_dir`` given as the text ``"null"`` / ``"none"`` (what ``--input_dir null``, the documented default,
    passes) means ``None`` unless such a folder exists; an empty one (``--input_dir ""``, ``"[]"``) is an error.

    Returns:
        list of ``{"image": path}`` dicts (each file read once when ``check``; errors name the file).

    Raises:
        ValueError: two images would write the same output files (``<name>_seg.png``, ...: MONAI's writers name
            them by the file name without extension, e.g. ``a.png`` and ``a.tif``), before anything is written;
            an empty ``input_dir``.
    """
    input_dir = null_to_none(input_dir, path_base=".")  # "input folder 'null' does not exist"
    if input_dir is not None and (
        not str(input_dir).strip() if isinstance(input_dir, (str, os.PathLike)) else not input_dir
    ):
        raise ValueError(
            f"input_dir is empty ({input_dir!r}): give a folder of images, or null for the {split!r} images of "
            "dataset_dir."
        )
    if input_dir:
        items = [{"image": p} for p in list_images(input_dir)]
        name = f"input_dir {str(input_dir)!r}"
        _warn_nested_images(input_dir)
    else:
        found, used = _nuclei_items(dataset_dir, split, generate, ("image",), False, "validation", **synthetic_kwargs)
        items = [{"image": d["image"]} for d in found]
        name = f"{used} images of {str(dataset_dir)!r}"  # the split the images come from (the fallback, if used)
    _check_output_names(items, name)
    return check_datalist(items, keys=("image",), name=name, image_checks={"image": to_rgb}) if check else items


def _warn_nested_images(input_dir: str | os.PathLike) -> None:
    """Warn about image files in the sub-folders of ``input_dir``: only its own files are segmented, and a folder
    of per-slide sub-folders beside a few loose tiles was segmented in part without a word."""
    nested = []
    for sub in sorted(p for p in Path(input_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        exts = tuple(e.lower() for e in IMAGE_EXTENSIONS)
        nested += [p for p in sorted(sub.iterdir()) if p.is_file() and not p.name.startswith(".")
                   and p.name.lower().endswith(exts)]  # fmt: skip
    if nested:
        logger.warning(
            "%d image file(s) in sub-folders of input_dir %s are not segmented (e.g. %s): only the files directly in "
            "input_dir are; run inference on each sub-folder.", len(nested), input_dir, nested[0],
        )  # fmt: skip


def _output_name(path: str | os.PathLike) -> str:
    """The name MONAI's ``SaveImage`` (``separate_folder=False``, as in inference.json) gives the outputs of
    ``path``: the file name without its extension (``.nii.gz`` counts as one), by MONAI's own rule."""
    from monai.data.utils import create_file_basename

    return create_file_basename("", path, "", separate_folder=False, makedirs=False)


def _check_output_names(items: Sequence[Mapping[str, Any]], name: str) -> None:
    seen: dict[str, str] = {}
    for item in items:
        out = _output_name(item["image"])
        if out in seen:
            raise ValueError(
                f"{name}: {seen[out]!r} and {str(item['image'])!r} would both be written as {out}_seg.png, "
                f"{out}_instance.png and {out}_prob.tif; rename one of them."
            )
        seen[out] = str(item["image"])


#: the files inference.json writes per input image: ``<name>`` + each suffix (its SaveImaged postfixes and extensions)
OUTPUT_SUFFIXES = ("_seg.png", "_instance.png", "_prob.tif")


def remove_earlier_outputs(items: Sequence[Mapping[str, Any]], pred_dir: str | os.PathLike) -> list[str]:
    """Remove the files an earlier inference wrote in ``pred_dir`` for the images of ``items``, before this run
    writes any: inference writes image by image, so a run that failed (or was killed) at its k-th image left the
    earlier run's masks of the images after it, indistinguishable from this run's, beside the new ones.

    Files that are themselves input images of ``items`` are kept. Other files in ``pred_dir`` (outputs of images
    that this run does not segment) are kept.

    Args:
        items: the inference datalist (``{"image": path}`` dicts).
        pred_dir: the output folder (``pred_dir``).

    Returns:
        the removed paths (a warning says how many).
    """
    root = Path(pred_dir)
    if not root.is_dir():
        return []
    inputs = {Path(it["image"]).resolve() for it in items}
    removed = []
    for it in items:
        for suffix in OUTPUT_SUFFIXES:
            path = root / f"{_output_name(it['image'])}{suffix}"
            if path.is_file() and path.resolve() not in inputs:
                path.unlink()
                removed.append(str(path))
    if removed:
        logger.warning("removed %d output file(s) of an earlier run from %s (e.g. %s)", len(removed), root, removed[0])
    return removed


def report_outputs(items: Sequence[Mapping[str, Any]], pred_dir: str | os.PathLike) -> dict[str, int]:
    """Log what inference wrote: how many of the ``items``' images have each output file in ``pred_dir`` (the run
    otherwise ended on ignite's "Engine run finished" without saying where the masks went), and warn about images
    without all their files.

    Args:
        items: the inference datalist (``{"image": path}`` dicts).
        pred_dir: the output folder (``pred_dir``).

    Returns:
        ``{suffix: number of images with that output}`` for each of :data:`OUTPUT_SUFFIXES`.
    """
    root = Path(pred_dir)
    counts = {suffix: 0 for suffix in OUTPUT_SUFFIXES}
    incomplete = []
    for it in items:
        have = [(root / f"{_output_name(it['image'])}{suffix}").is_file() for suffix in OUTPUT_SUFFIXES]
        for suffix, ok in zip(OUTPUT_SUFFIXES, have):
            counts[suffix] += int(ok)
        if not all(have):
            incomplete.append(str(it["image"]))
    logger.info(
        "inference wrote %s for %d image(s) to %s", ", ".join(f"{n} *{s}" for s, n in counts.items()), len(items),
        root.resolve(),
    )
    if incomplete:
        logger.warning("%d image(s) lack some of their outputs in %s (e.g. %s)", len(incomplete), root, incomplete[0])
    return counts


#: PIL image modes whose pixel values are not grey/RGB(A) intensities, refused by :func:`to_rgb` (MONAI's
#: ``PILReader`` returns the raw values: palette indices, CMYK / YCbCr / LAB / HSV channels, 0/1 bits)
_NOT_INTENSITY_MODES = {
    "P": "a palette (indexed-colour) image, whose values are palette indices",
    "PA": "a palette (indexed-colour) image with alpha, whose values are palette indices",
    "CMYK": "a CMYK image",
    "YCbCr": "a YCbCr image",
    "LAB": "a LAB image",
    "HSV": "an HSV image",
    "1": "a 1-bit image",
}


def to_rgb(img: torch.Tensor) -> torch.Tensor:
    """Channel-first image -> 3 channels: RGBA drops alpha, grey is repeated, RGB is unchanged.

    The bundles read 8-bit intensities (0..255, then scaled to [0, 1] with clipping); a 16-bit image would be
    clipped to a nearly white tile and segmented silently wrong, so intensities above 255 are an error. So are
    negative intensities, and a float image in [0, 1] with fractional values (e.g. a float32 TIFF), which was
    divided by 255 once more into a nearly black tile and segmented silently wrong; float intensities with
    fractions on the 0..255 scale are read as they are.

    An image that PIL decodes in a mode whose values are not grey/RGB(A) intensities (MONAI's ``PILReader`` records
    the mode in the metadata) is an error too: a palette (indexed-colour) PNG was read as its palette indices, one
    channel repeated as grey, and a CMYK JPEG's 4 channels as RGBA (black dropped), both segmented silently wrong.

    Raises:
        ValueError: for another number of channels, intensities above 255, below 0 or fractional and none above 1,
            or a palette / CMYK / YCbCr / LAB / HSV / 1-bit image (the message names the file when the image is a
            MONAI ``MetaTensor`` from ``LoadImage``).
    """
    meta = getattr(img, "meta", None) or {}
    name = meta.get("filename_or_obj", "the input image")
    mode = meta.get("mode")
    if isinstance(mode, str) and mode in _NOT_INTENSITY_MODES:
        raise ValueError(
            f"image {str(name)!r} is {_NOT_INTENSITY_MODES[mode]} (PIL mode {mode!r}), not grey/RGB/RGBA intensities: "
            "convert it to 8-bit RGB first (python -m monai_gmr.data.prepare_nuclei converts such images; or PIL's "
            "Image.open(path).convert('RGB'))."
        )
    if img.numel() and float(img.max()) > 255:
        raise ValueError(
            f"image {str(name)!r} has intensities up to {float(img.max()):g}: the bundle reads 8-bit RGB (0..255); "
            "convert it to 8 bits first (python -m monai_gmr.data.prepare_nuclei writes 8-bit images)."
        )
    # a float image in [0, 1] (fractional values, none above 1) or with negative values is not on the 0..255 scale;
    # a float image with fractional values up to 255 (e.g. stain-normalised and saved as float) is
    if img.numel() and img.is_floating_point() and (
        float(img.min()) < 0 or (float(img.max()) <= 1.0 and bool((img != torch.round(img)).any()))
    ):
        raise ValueError(
            f"image {str(name)!r} has intensities in {float(img.min()):g}..{float(img.max()):g}, not on the 0..255 "
            "scale (e.g. a float image in [0, 1]): the bundle reads 8-bit RGB (0..255); convert it to 8 bits first "
            "(python -m monai_gmr.data.prepare_nuclei scales float images to 8 bits)."
        )
    c = img.shape[0]
    if c == 3:
        return img
    if c == 4:
        return img[:3]
    if c == 1:
        return img.repeat(3, *([1] * (img.ndim - 1)))
    raise ValueError(
        ("" if "filename_or_obj" not in meta else f"image {str(name)!r}: ")
        + f"expected a 1-, 3- or 4-channel image, got {c} channels (shape {tuple(img.shape)})"
        + (": a grey + alpha image? convert it to RGB first (python -m monai_gmr.data.prepare_nuclei converts it; or "
           "PIL's Image.open(path).convert('RGB'))." if c == 2 else ".")
    )


def check_window_sizes(network: Any, sw_padding: Any = None, **sizes: Any) -> None:
    """Refuse, by setting name, a crop or window size the network cannot take, before any data are read.

    A U-Net with ``2 ** levels`` down-sampling (``GMRUNet``, ``GCNNUNet``: their ``multiple`` attribute) needs every
    input size divisible by it unless built with ``pad_to_multiple=True``. ``--crop_size 30`` used to stop at the
    first training step and ``--roi_size "[60, 60]"`` only at the first validation (after ``val_interval`` epochs of
    training), both with an error about the input shape that named neither setting. Networks without a
    ``multiple`` attribute (e.g. MONAI's ``BasicUNet``) are not divisibility-checked here.

    A size of 0 or below is refused for every network: MONAI's crops and sliding windows read it as "the whole
    dimension", so ``--crop_size 0`` (or ``-8``) silently trained on whole tiles instead of random crops, and
    ``--roi_size "[0, 0]"`` ran whole tiles through the network. ``-1`` in ``roi_size`` keeps that documented
    MONAI meaning.

    ``sw_padding`` (when given) is the padding of tiles smaller than the window, one of
    :data:`monai_gmr.functional.PAD_MODES`; the bundles use ``"reflect"``: with MONAI's black (0) border, a
    network with instance norm read the border as part of the tile and found no nucleus on tiles smaller than
    ``roi_size`` (bundle README, "Tiles smaller than the window").

    Args:
        network: the bundle's network (a ``DistributedDataParallel`` wrapper is looked through).
        sw_padding: the ``sw_padding`` setting, checked by name when not ``None``.
        sizes: setting name -> size (an int or ``(H, W)``; ``-1`` in ``roi_size``, the whole dimension, is skipped).

    Raises:
        ValueError: a size not divisible by the network's ``multiple``, one that is 0 or negative (other than
            ``-1`` in ``roi_size``), not an integer (``32x``), or a list whose length is not the network's
            ``spatial_dims`` (when it has that attribute); the message names the setting.
    """
    if sw_padding is not None:
        from monai_gmr.functional import PAD_MODES

        one_of(sw_padding, "sw_padding", PAD_MODES)
    net = getattr(network, "module", network)
    dims = getattr(net, "spatial_dims", None)
    parsed = {name: _size_values(name, size, dims) for name, size in sizes.items()}
    for name, values in parsed.items():
        for v in values:
            if v <= 0 and not (v == -1 and name == "roi_size"):
                whole = " (or -1 for the whole dimension)" if name == "roi_size" else ""
                raise ValueError(f"{name}={sizes[name]!r}: sizes must be positive integers{whole}, got {v}.")
    multiple = getattr(net, "multiple", None)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 2 or getattr(net, "pad_to_multiple", False):
        return
    for name, values in parsed.items():
        bad = [v for v in values if v > 0 and v % multiple]
        if bad:
            fix = ", ".join(f"{v} -> {max(multiple, round(v / multiple) * multiple)}" for v in dict.fromkeys(bad))
            raise ValueError(
                f"{name}={sizes[name]!r}: {type(net).__name__} needs every size divisible by {multiple} (2**levels), "
                f"e.g. {fix}; or build it with pad_to_multiple=True (--network_def#pad_to_multiple true)."
            )


def _size_values(name: str, size: Any, spatial_dims: Any) -> list[int]:
    """The integers of a size setting (one value, or one per spatial dimension), refusing anything else by name.

    ``--roi_size "[64, 64, 64]"`` (three values for a 2D network) passed training and stopped only at the first
    validation, after ``val_interval`` epochs, in the sliding-window inferer; ``--crop_size 32x`` failed in a config
    expression with ``can't multiply sequence by non-int``, naming no setting.
    """
    if isinstance(size, (str, numbers.Number)):
        values = [size]
    elif isinstance(size, Sequence):
        values = list(size)
        if isinstance(spatial_dims, int) and not isinstance(spatial_dims, bool) and len(values) != spatial_dims:
            raise ValueError(
                f"{name}={size!r}: give one size or {spatial_dims} (one per spatial dimension of the network), got "
                f"{len(values)}."
            )
    else:
        values = [size]
    out = []
    for v in values:
        i = _as_int(v)
        if i is None and isinstance(v, numbers.Real) and not isinstance(v, bool) and float(v).is_integer():
            i = int(v)  # 64.0, as a YAML file or an expression may give it
        if i is None:
            raise ValueError(f"{name}={size!r}: sizes must be integers (one, or one per spatial dimension), got {v!r}.")
        out.append(i)
    return out


def _as_int(value: Any) -> int | None:
    """An integer size (also as text from a command line), else ``None``."""
    try:
        value = int(str(value).strip()) if isinstance(value, str) else value
    except ValueError:
        return None
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None


def check_instance_settings(instance_method: Any, min_nucleus_size: Any) -> None:
    """Refuse, by setting name, instance post-processing settings before anything runs.

    ``--instance_method watershd`` stopped inference only after the network had run on the first image (evaluation
    with ``--instance_metrics true``: after the validation run and the first rotated views), with "method must
    be ..." from :func:`monai_gmr.workflows.common.instance_from_semantic`, which named no bundle setting.

    Raises:
        ValueError: ``instance_method`` is not ``"connected_components"`` / ``"watershed"``, or
            ``min_nucleus_size`` is not an integer >= 0; the message names the setting.
    """
    if instance_method not in ("connected_components", "watershed"):
        raise ValueError(f"instance_method must be 'connected_components' or 'watershed', got {instance_method!r}.")
    if isinstance(min_nucleus_size, bool) or not isinstance(min_nucleus_size, numbers.Integral) or min_nucleus_size < 0:
        raise ValueError(f"min_nucleus_size must be an integer >= 0 (pixels), got {min_nucleus_size!r}.")


def has_boundary_class(num_classes: Any) -> bool:
    """The label layout of ``num_classes`` for training and evaluation: ``2`` -> background / nucleus (``False``),
    ``3`` -> background / nucleus interior / nucleus boundary (``True``; :class:`NucleiLabeld`).

    Raises:
        ValueError: any other value (the message names ``num_classes``): the labels have classes ``0..1`` or
            ``0..2`` only, so ``num_classes=1`` would meet labels outside ``[0, num_classes)`` in the first training
            step, and ``num_classes >= 4`` would train output channels that no label ever marks.
    """
    # an integer only: ``--num_classes 2.0`` passed (2.0 == 2) and failed in the network, whose message named its
    # ``out_channels``; text (``"2"``) was refused here already, as the network takes no text either
    k = int(num_classes) if isinstance(num_classes, numbers.Integral) and not isinstance(num_classes, bool) else None
    if k not in (2, 3):
        raise ValueError(
            f"num_classes must be 2 (background, nucleus) or 3 (background, nucleus, nucleus boundary), got "
            f"num_classes={num_classes!r}."
        )
    return k == 3


def merge_foreground(probs: torch.Tensor) -> torch.Tensor:
    """``(C, ...)`` class probabilities -> ``(2, ...)`` [background, any nucleus class] (C >= 2)."""
    if probs.shape[0] < 2:
        raise ValueError(f"need >= 2 channels (num_classes >= 2: background + nucleus), got shape {tuple(probs.shape)}.")
    if probs.shape[0] == 2:
        return probs
    return torch.cat([probs[:1], probs[1:].sum(0, keepdim=True)], 0)


def nucleus_class_map(probs: torch.Tensor) -> torch.Tensor:
    """``(C, ...)`` class probabilities -> ``(1, ...)`` class map whose foreground is exactly the one validation and
    evaluation score (:func:`merge_foreground` then argmax: nucleus where ``p[1:].sum() > p[0]``), each foreground
    pixel taking its most likely nucleus class (``1 + argmax p[1:]``, e.g. 2 = boundary with 3 classes).

    A plain argmax over all classes would call a pixel with probabilities (0.4, 0.3, 0.3) background although its
    nucleus probability is 0.6. For C = 2 the two agree.
    """
    if probs.shape[0] < 2:
        raise ValueError(f"need >= 2 channels (num_classes >= 2: background + nucleus), got shape {tuple(probs.shape)}.")
    fg = probs[1:].sum(0, keepdim=True) > probs[:1]
    cls = 1 + probs[1:].argmax(0, keepdim=True)
    return torch.where(fg, cls, torch.zeros_like(cls)).to(probs.dtype)


def instance_ids(label: torch.Tensor) -> torch.Tensor:
    """``(1, H, W)`` ground-truth nuclei as instance ids: a binary mask (one foreground value, e.g. 0/1 or 0/255)
    becomes its 8-connected components, as ``prepare_nuclei`` reads binary masks; an instance-id map is returned
    as it is.

    ``evaluate.json`` scores AJI/PQ (``--instance_metrics true``) against these ids: a binary label of a user's
    datalist was scored as one "nucleus" per tile (all its foreground pixels), without a word.
    """
    from monai_gmr.data.prepare_nuclei import binary_mask_instances

    if label.shape[0] != 1:  # a colour-coded RGB(A) or grey + alpha mask: its channels were returned as "ids"
        return label_instances(label)
    arr = label.detach().cpu().numpy()
    lab = binary_mask_instances(arr[0]) if arr.ndim == 3 and arr.shape[0] == 1 else None
    if lab is None:
        return label
    out = label.clone().to(torch.float32)  # a uint8 0/255 mask may have more than 255 nuclei; meta kept
    out[0] = torch.as_tensor(lab, dtype=torch.float32, device=out.device)
    return out


def label_instances(label: torch.Tensor) -> torch.Tensor:
    """A channel-first label of several channels as ``(1, *spatial)`` instance ids (float32, MONAI metadata kept),
    read as ``prepare_nuclei`` reads the same file (:func:`monai_gmr.data.prepare_nuclei.mask_array_instances`):
    a colour-coded RGB(A) instance mask gives one nucleus per distinct non-black colour (fully transparent pixels
    are background), a grey + alpha PNG its grey ids. A one-channel label is returned as it is.

    Before, :class:`NucleiLabeld` took any non-zero channel for nucleus, so an RGBA mask with an opaque black
    background (alpha 255 everywhere) trained and validated on tiles that were nucleus everywhere, and
    :func:`instance_ids` passed the channels on as instance ids (AJI/PQ against the red channel's values).

    Raises:
        ValueError: a label that is no such mask (e.g. a 2-channel TIFF), naming the file when the label is a MONAI
            ``MetaTensor`` from ``LoadImage``.
    """
    if label.shape[0] == 1:
        return label
    from monai_gmr.data.prepare_nuclei import mask_array_instances

    meta = getattr(label, "meta", None) or {}
    name = str(meta.get("filename_or_obj", "the label"))
    arr = np.moveaxis(label.detach().cpu().numpy(), 0, -1)
    ids = mask_array_instances(arr, name, grey_alpha="filename_or_obj" not in meta or name.lower().endswith(".png"))
    out = label[:1].clone().to(torch.float32)
    out[0] = torch.as_tensor(ids, dtype=torch.float32, device=out.device)
    return out


def nucleus_boundaries(instances: np.ndarray, width: int = 1) -> np.ndarray:
    """Inner boundary pixels of labelled objects: object pixels with a differently labelled pixel (another
    object or background) within ``width`` pixels (square neighbourhood).

    A few lines of ``scipy.ndimage`` grey dilation/erosion instead of ``skimage.segmentation.find_boundaries`` so
    the bundle does not need scikit-image.
    """
    from scipy import ndimage

    size = 2 * int(width) + 1
    lab = np.asarray(instances)
    hi = ndimage.grey_dilation(lab, size=(size,) * lab.ndim, mode="nearest")
    lo = ndimage.grey_erosion(lab, size=(size,) * lab.ndim, mode="nearest")
    return (lab > 0) & (hi != lo)


class NucleiLabeld(MapTransform):
    """Instance-id or binary nucleus masks -> class maps for training/evaluation.

    ``boundary=False``: ``0`` background, ``1`` nucleus. ``boundary=True``: ``0`` background, ``1`` nucleus
    interior, ``2`` nucleus boundary (inner boundary of ``boundary_width`` pixels). Boundaries between *touching*
    nuclei need instance ids (a binary mask only gives the outer contour). A label of several channels (a
    colour-coded RGB(A) instance mask) is read by :func:`label_instances` first.

    Args:
        keys: label key(s), channel-first ``(1, H, W)`` (or ``(3|4, H, W)`` colour-coded).
        boundary: add the boundary class.
        boundary_width: boundary thickness in pixels.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self, keys: KeysCollection, boundary: bool = False, boundary_width: int = 1, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if boundary_width < 1:
            raise ValueError(f"boundary_width must be >= 1, got {boundary_width}.")
        self.boundary = boundary
        self.boundary_width = boundary_width

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            # an RGB(A) mask image: its nuclei as prepare_nuclei reads them (any non-zero channel, alpha included,
            # was foreground: an RGBA mask with an opaque black background was nucleus everywhere)
            lab = label_instances(d[key])
            out = (lab > 0).to(torch.uint8)
            if self.boundary:
                arr = lab.detach().cpu().numpy()[0] if isinstance(lab, torch.Tensor) else np.asarray(lab)[0]
                edge = nucleus_boundaries(np.rint(arr).astype(np.int64), self.boundary_width)
                out[0][torch.as_tensor(edge, device=out.device)] = 2
            d[key] = out
        return d
