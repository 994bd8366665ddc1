"""Slide-level orientation consistency: is a slide's probability map the same when the glass is scanned rotated or
flipped?

:func:`slide_map_consistency` writes the 8 D4 copies of a slide (:func:`monai_gmr.data.transform_slide`), runs
:func:`monai_gmr.workflows.wsi.infer_slide` on each, maps every probability map and tissue mask back to the
original orientation (:func:`monai_gmr.data.transform_array` with the inverse element) and compares it with the map
of the identity copy.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_gmr.utils import atomic_write_json, atomic_write_text, missing_dirs, remove_empty_dirs

__all__ = ["compare_maps", "slide_map_consistency", "consistency_rows", "CONSISTENCY_FIELDS"]

logger = logging.getLogger(__name__)

#: per-element fields of :func:`slide_map_consistency` (also the CSV columns).
CONSISTENCY_FIELDS = (
    "element",
    "n_patches",
    "n_cells",
    "mean_abs_diff",
    "max_abs_diff",
    "dice",
    "agreement",
    "tissue_iou",
    "coverage_iou",
    "shape_match",
    "grid_offset",
    "seconds",
)

#: infer_slide arguments slide_map_consistency sets itself.
_RESERVED = ("slide", "network", "output_dir", "name", "label_mask")


def _check_threshold(threshold: Any) -> float:
    """A probability threshold in [0, 1] (NaN thresholded every cell negative, a Dice of 1.0 for any maps; text
    stopped in a NumPy ufunc error naming no argument)."""
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.integer, np.floating)) or (
        not 0.0 <= float(threshold) <= 1.0  # also NaN
    ):
        raise ValueError(f"threshold must be a probability in [0, 1], got threshold={threshold!r}.")
    return float(threshold)


def compare_maps(
    prob: np.ndarray,
    tissue: np.ndarray,
    ref_prob: np.ndarray,
    ref_tissue: np.ndarray,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Differences between a probability map and a reference map of the same slide (same orientation).

    Args:
        prob: ``(H, W)`` probabilities.
        tissue: ``(H, W)`` bool tissue mask of ``prob``.
        ref_prob: ``(H', W')`` reference probabilities.
        ref_tissue: ``(H', W')`` bool tissue mask of the reference.
        threshold: probability threshold of the binary maps, in [0, 1].

    Returns:
        ``{"n_cells", "mean_abs_diff", "max_abs_diff", "dice", "agreement", "tissue_iou", "coverage_iou",
        "shape_match"}``: over the ``n_cells`` map cells that are tissue in both maps, the mean and max absolute
        probability difference, the Dice of the maps thresholded at ``threshold`` (``1.0`` when neither has a
        positive cell) and the fraction of cells where the thresholded maps agree; ``tissue_iou``: IoU of the two
        tissue masks (``1.0`` when both are empty). A NaN probability is a cell without a value (no patch scored
        it): it is not compared (nor counted in ``n_cells``); ``coverage_iou`` is the IoU of the tissue cells *with*
        a value in each map (``tissue_iou`` when neither has a NaN), so a patch grid that leaves other tissue
        unscored in one orientation shows there rather than as probability differences. Maps of different shapes
        (``shape_match`` false) are compared on their common top-left part. Values are ``None`` when no cell is
        tissue (with a value) in both.
    """
    threshold = _check_threshold(threshold)
    prob, ref_prob = np.asarray(prob, np.float64), np.asarray(ref_prob, np.float64)
    tissue, ref_tissue = np.asarray(tissue, bool), np.asarray(ref_tissue, bool)
    if prob.ndim != 2 or ref_prob.ndim != 2 or tissue.shape != prob.shape or ref_tissue.shape != ref_prob.shape:
        raise ValueError(
            f"prob/tissue and ref_prob/ref_tissue must be 2D pairs of one shape, got {prob.shape}/{tissue.shape} and "
            f"{ref_prob.shape}/{ref_tissue.shape}."
        )
    shape_match = prob.shape == ref_prob.shape
    h, w = min(prob.shape[0], ref_prob.shape[0]), min(prob.shape[1], ref_prob.shape[1])
    prob, ref_prob, tissue, ref_tissue = prob[:h, :w], ref_prob[:h, :w], tissue[:h, :w], ref_tissue[:h, :w]
    def _iou(a: np.ndarray, b: np.ndarray) -> float:
        union = int((a | b).sum())
        return float((a & b).sum() / union) if union else 1.0

    iou = _iou(tissue, ref_tissue)
    coverage_iou = _iou(tissue & ~np.isnan(prob), ref_tissue & ~np.isnan(ref_prob))
    # a NaN cell (no value, e.g. a map that marks unscored cells NaN) is not compared: it made mean/max NaN while the
    # Dice and agreement counted it as a negative
    both = tissue & ref_tissue & ~np.isnan(prob) & ~np.isnan(ref_prob)
    n = int(both.sum())
    out: dict[str, Any] = {"n_cells": n, "mean_abs_diff": None, "max_abs_diff": None, "dice": None,
                           "agreement": None, "tissue_iou": iou, "coverage_iou": coverage_iou,
                           "shape_match": bool(shape_match)}  # fmt: skip
    if n:
        d = np.abs(prob[both] - ref_prob[both])
        a, b = prob[both] >= threshold, ref_prob[both] >= threshold
        denom = int(a.sum() + b.sum())
        out.update(
            mean_abs_diff=float(d.mean()),
            max_abs_diff=float(d.max()),
            dice=float(2.0 * (a & b).sum() / denom) if denom else 1.0,
            agreement=float((a == b).mean()),
        )
    return out


def _scored(res: Any) -> np.ndarray:
    """A ``SlideResult``'s probability map with NaN in the cells no patch covered (``res.covered``)."""
    return np.where(np.asarray(res.covered, bool), np.asarray(res.prob, np.float64), np.nan)


def _worst(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def pick(key: str, fn: Callable) -> Any:
        vals = [(r[key], r["element"]) for r in rows if r.get(key) is not None]
        if not vals:
            return None, None
        v = fn(vals, key=lambda t: t[0])
        return v[0], v[1]

    out: dict[str, Any] = {}
    for key, fn in (("mean_abs_diff", max), ("max_abs_diff", max), ("dice", min), ("agreement", min),
                    ("tissue_iou", min), ("coverage_iou", min)):  # fmt: skip
        v, e = pick(key, fn)
        out[key] = v
        out[f"{key}_element"] = e
    out["all_shapes_match"] = all(bool(r.get("shape_match", True)) for r in rows)
    return out


def consistency_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-element rows of a :func:`slide_map_consistency` result, ``CONSISTENCY_FIELDS`` only (CSV/table)."""
    return [{k: r.get(k) for k in CONSISTENCY_FIELDS} for r in result["elements"]]


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=list(CONSISTENCY_FIELDS), lineterminator="\n")
    wr.writeheader()
    for r in rows:
        wr.writerow({k: ("" if r.get(k) is None else (" ".join(map(str, r[k])) if isinstance(r.get(k), list) else r[k]))
                     for k in CONSISTENCY_FIELDS})  # fmt: skip
    return buf.getvalue()


def slide_map_consistency(
    slide: str | os.PathLike,
    network: torch.nn.Module | Callable,
    work_dir: str | os.PathLike,
    infer_kwargs: Mapping[str, Any] | None = None,
    *,
    elements: Sequence[Any] | None = None,
    threshold: float = 0.5,
    max_pixels: int | None = None,
    compression: str = "deflate",
    output_json: str | os.PathLike | None = None,
    output_csv: str | os.PathLike | None = None,
    keep_slides: bool = False,
) -> dict[str, Any]:
    """Probability maps of one slide scanned in the 8 orientations of the square, compared in the original frame.

    For every D4 element ``g`` (:func:`monai_gmr.functional.d4_elements`: rotations by 0/90/180/270 degrees, each
    with and without a flip): :func:`monai_gmr.data.transform_slide` writes ``g(slide)`` losslessly into
    ``work_dir``; :func:`monai_gmr.workflows.wsi.infer_slide` builds its ``(H, W)`` probability map and tissue mask;
    both are mapped back with ``g^-1`` (:func:`monai_gmr.data.transform_array`) and compared by :func:`compare_maps`
    with the maps of the identity copy (written the same way, so every copy has the same pyramid construction and
    codec). Cells no patch scored (outside ``SlideResult.covered``) are left out of the probability comparison and
    measured by ``coverage_iou`` instead. A network whose slide maps do not depend on the orientation gives 0
    differences, Dice/agreement and tissue/coverage IoU 1; with ``infer_kwargs={"grid": "centered"}`` a D4-invariant patch classifier comes close to that (see
    :func:`~monai_gmr.workflows.wsi.infer_slide`, ``grid``, for the exceptions: an odd grid remainder, partial blocks
    of the map grid), while the default ``"top_left"`` grid moves against the tissue.

    Args:
        slide: slide path (read with ``infer_kwargs["backend"]``, default ``openslide``).
        network: patch classifier ``(N, 3, h, w) -> (N, C)`` logits, as for ``infer_slide``.
        work_dir: folder for the transformed copies (created, and removed again if it was created and is left
            empty). Without ``keep_slides`` the copies go to a temporary sub-folder that is deleted afterwards;
            with it they are ``<stem>_<element>.tif`` in ``work_dir``, replacing copies of an earlier run.
        infer_kwargs: keyword arguments of ``infer_slide`` (``patch_size``, ``grid``, ``overlap``, ``batch_size``,
            ``device``, ...); ``slide``, ``network``, ``output_dir``, ``name`` and ``label_mask`` are set here.
        elements: D4 elements to test (:func:`monai_gmr.data.wsi.as_d4_element` inputs; default all 8). The identity
            is always run as the reference.
        threshold: probability threshold of the Dice/agreement, in [0, 1].
        max_pixels: ``transform_slide``'s level-0 limit (``None``: its default).
        compression: codec of the copies (lossless ``deflate`` by default).
        output_json: write the result here (strict JSON, atomically).
        output_csv: write the per-element table here (atomically).
        keep_slides: keep the transformed copies in ``work_dir``.

    Returns:
        ``{"slide", "settings", "reference": {"n_patches", "map_shape", "tissue_fraction"}, "elements": [per element:
        {"element", "k", "flip", "n_patches", "n_cells", "mean_abs_diff", "max_abs_diff", "dice", "agreement",
        "tissue_iou", "coverage_iou", "shape_match", "grid_offset", "seconds"}], "worst": {"mean_abs_diff",
        "max_abs_diff", "dice", "agreement", "tissue_iou", "coverage_iou" over the non-identity elements, each with its "<key>_element", "all_shapes_match"}}``.

    Raises:
        SlideNotFoundError / WSIError: missing or unreadable slide, too large a level 0 (name the slide).
        ValueError: a bad element (names ``elements``), a reserved key in ``infer_kwargs`` (names it), a
            ``threshold`` outside [0, 1].
    """
    from monai_gmr.data.wsi import (
        TRANSFORM_MAX_PIXELS,
        SlideNotFoundError,
        as_d4_element,
        transform_array,
        transform_slide,
    )
    from monai_gmr.functional.groups import D4Element, d4_elements
    from monai_gmr.workflows.wsi import infer_slide

    threshold = _check_threshold(threshold)  # before any copy is written and scored
    kwargs = dict(infer_kwargs or {})
    bad = [k for k in _RESERVED if k in kwargs]
    if bad:
        raise ValueError(f"infer_kwargs must not set {bad}: slide_map_consistency sets them.")
    src = Path(slide)
    if not src.is_file():
        raise SlideNotFoundError(f"slide {str(src)!r} does not exist.", src)
    els = d4_elements() if elements is None else [as_d4_element(e, "elements") for e in elements]
    if not els:
        raise ValueError("elements is empty: nothing to compare.")
    identity = D4Element(0, False)
    backend = kwargs.get("backend", "openslide")
    created = missing_dirs(work_dir)  # removed again at the end when left empty
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    stem = src.name.split(".")[0] or "slide"
    # copies that are deleted afterwards go to a fresh folder of their own, so that no file of the user's in
    # work_dir (e.g. kept copies of an earlier run) is overwritten and then deleted
    work = Path(work_dir) if keep_slides else Path(tempfile.mkdtemp(prefix=f"{stem}_d4_", dir=work_dir))

    def run(g: D4Element) -> tuple[Any, float]:
        dst = work / f"{stem}_{g.name}.tif"
        t = time.perf_counter()
        transform_slide(src, dst, g, backend=backend, compression=compression,
                        max_pixels=TRANSFORM_MAX_PIXELS if max_pixels is None else max_pixels)  # fmt: skip
        res = infer_slide(str(dst), network, None, name=f"{stem}_{g.name}", **kwargs)
        return res, time.perf_counter() - t

    rows: list[dict[str, Any]] = []
    try:
        ref, ref_s = run(identity)
        for g in els:
            if g == identity:
                res, secs = ref, ref_s
            else:
                res, secs = run(g)
            # cells no patch scored are NaN (infer_slide's maps hold 0 there): they are not probability differences
            prob = transform_array(_scored(res), g, inverse=True)
            tissue = transform_array(res.tissue, g, inverse=True)
            row = {"element": g.name, "k": int(g.k % 4), "flip": bool(g.flip), "n_patches": int(res.n_patches),
                   **compare_maps(prob, tissue, _scored(ref), ref.tissue, threshold=threshold),
                   "grid_offset": res.settings.get("grid_offset"), "seconds": round(secs, 3)}  # fmt: skip
            logger.info("slide %s %s: %s", src.name, g.name, row)
            rows.append(row)
    finally:
        if not keep_slides:
            shutil.rmtree(work, ignore_errors=True)  # the temporary folder made above, nothing else
        remove_empty_dirs(created)
    settings = {k: (v if isinstance(v, (str, int, float, bool, type(None), list, tuple)) else type(v).__name__)
                for k, v in kwargs.items()}  # fmt: skip
    result: dict[str, Any] = {
        "slide": str(src),
        "settings": {**settings, "threshold": float(threshold), "compression": compression,
                     "network": type(network).__name__},  # fmt: skip
        "reference": {"n_patches": int(ref.n_patches), "map_shape": list(ref.prob.shape),
                      "map_downsample": float(ref.map_downsample),
                      "tissue_fraction": float(ref.tissue.mean()) if ref.tissue.size else 0.0},  # fmt: skip
        "elements": rows,
        "worst": _worst([r for r in rows if r["element"] != identity.name] or rows),
    }
    if output_json is not None:
        atomic_write_json(output_json, result)
    if output_csv is not None:
        atomic_write_text(output_csv, _csv_text(rows))
    return result
