"""Tests of monai_gmr.evaluation.slide_map_consistency: maps of a slide in the 8 D4 orientations, compared in the
original frame (invariant vs orientation-dependent networks, centred vs top-left grid, files, bad inputs)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from monai_gmr.data import SlideNotFoundError, WSIError, write_pyramidal_tiff
from monai_gmr.evaluation import CONSISTENCY_FIELDS, compare_maps, slide_map_consistency
from tests.workflows.test_wsi_grid import MeanNet, _image

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny, overhead-bound tensors

KW = {"patch_size": 16, "batch_size": 256, "min_tissue": 0.25}


class TopLeftPixelNet(torch.nn.Module):
    """Orientation-dependent: the tumour logit is the red value of the patch's top-left pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros(x.shape[0]), 30.0 * (x[:, 0, 0, 0] - 0.6)], 1)


class OneNet(torch.nn.Module):
    """Invariant and constant: tumour probability ~1 for every patch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros(x.shape[0]), torch.full((x.shape[0],), 30.0)], 1)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("cons") / "s.tif"
    write_pyramidal_tiff(path, _image(), mpp=0.5, tile_size=64, n_levels=1, compression="deflate")  # 200 x 136
    return path


def _tiny_gmr() -> torch.nn.Module:
    from monai_gmr.nets import get_network

    torch.manual_seed(0)
    return get_network("gmr_resnet18_tiny", num_classes=2).eval()


@pytest.mark.parametrize("net", [MeanNet, _tiny_gmr], ids=["mean", "gmr_tiny"])
def test_invariant_network_centered_grid_is_consistent(slide, tmp_path, net):
    res = slide_map_consistency(slide, net(), tmp_path / "work", {**KW, "grid": "centered"},
                                output_json=tmp_path / "c.json", output_csv=tmp_path / "c.csv")  # fmt: skip
    rows = res["elements"]
    assert [r["element"] for r in rows] == ["rot0", "rot90", "rot180", "rot270", "rot0_flip", "rot90_flip",
                                            "rot180_flip", "rot270_flip"]  # fmt: skip
    for r in rows:
        assert r["n_cells"] > 1000 and r["n_patches"] == res["reference"]["n_patches"] > 10
        assert r["max_abs_diff"] <= 1e-5 and r["mean_abs_diff"] <= 1e-5, r
        assert r["dice"] == 1.0 and r["agreement"] == 1.0 and r["tissue_iou"] == 1.0 and r["shape_match"]
        assert r["grid_offset"] == [4, 4]
    assert res["worst"]["max_abs_diff"] <= 1e-5 and res["worst"]["all_shapes_match"]
    assert not (tmp_path / "work").exists()  # the copies are removed, and the folder made for them
    # files: strict JSON with the same numbers, CSV with one row per element
    assert json.loads((tmp_path / "c.json").read_text(), parse_constant=lambda c: pytest.fail(c))["worst"] == res["worst"]
    with open(tmp_path / "c.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and tuple(table[0]) == CONSISTENCY_FIELDS and table[1]["element"] == "rot90"


def test_orientation_dependent_network_or_top_left_grid_is_not_consistent(slide, tmp_path):
    dep = slide_map_consistency(slide, TopLeftPixelNet(), tmp_path / "w1", {**KW, "grid": "centered"})
    assert dep["worst"]["max_abs_diff"] > 0.5 and dep["worst"]["mean_abs_diff"] > 0.01
    assert dep["worst"]["dice"] < 1.0
    assert dep["elements"][0]["max_abs_diff"] == 0.0  # the identity against itself
    # an invariant network on MONAI's top-left grid: the grid moves against the tissue (not for the transpose)
    top = slide_map_consistency(slide, MeanNet(), tmp_path / "w2", {**KW, "grid": "top_left"},
                                elements=["rot90", "rot90_flip"], keep_slides=True)  # fmt: skip
    by = {r["element"]: r for r in top["elements"]}
    assert by["rot90"]["max_abs_diff"] > 0.1 and by["rot90_flip"]["max_abs_diff"] <= 1e-5
    assert top["worst"]["max_abs_diff_element"] == "rot90"
    assert sorted(p.name for p in (tmp_path / "w2").iterdir()) == ["s_rot0.tif", "s_rot90.tif", "s_rot90_flip.tif"]


def test_compare_maps():
    p = np.array([[0.2, 0.8], [0.6, 0.0]])
    t = np.array([[True, True], [True, False]])
    q = np.array([[0.2, 0.3], [0.7, 0.9]])
    r = compare_maps(p, t, q, np.ones((2, 2), bool))
    assert r["n_cells"] == 3 and r["max_abs_diff"] == pytest.approx(0.5) and r["mean_abs_diff"] == pytest.approx(0.2)
    assert r["dice"] == pytest.approx(2 * 1 / (2 + 1)) and r["agreement"] == pytest.approx(2 / 3)
    assert r["tissue_iou"] == pytest.approx(0.75) and r["coverage_iou"] == r["tissue_iou"] and r["shape_match"]
    empty = compare_maps(p, np.zeros((2, 2), bool), q, np.zeros((2, 2), bool))
    assert empty["n_cells"] == 0 and empty["mean_abs_diff"] is None and empty["tissue_iou"] == 1.0
    assert not compare_maps(p, t, np.zeros((3, 2)), np.ones((3, 2), bool))["shape_match"]
    # a cell exactly at the threshold is positive (as the WSI workflow's p >= threshold); no positive cell in
    # either map: Dice 1 (the maps agree), not 0
    at = compare_maps(np.full((2, 2), 0.5), np.ones((2, 2), bool), np.array([[0.5, 0.5], [0.5, 0.4]]), np.ones((2, 2), bool))
    assert at["dice"] == pytest.approx(2 * 3 / (4 + 3)) and at["agreement"] == pytest.approx(3 / 4)
    none = compare_maps(np.full((2, 2), 0.1), np.ones((2, 2), bool), np.full((2, 2), 0.3), np.ones((2, 2), bool))
    assert none["dice"] == 1.0 and none["agreement"] == 1.0
    with pytest.raises(ValueError, match="ref_prob"):
        compare_maps(p, t, q, np.ones((3, 3), bool))


def test_bad_inputs(slide, tmp_path):
    with pytest.raises(SlideNotFoundError, match="nope.tif"):
        slide_map_consistency(tmp_path / "nope.tif", MeanNet(), tmp_path / "w", KW)
    with pytest.raises(ValueError, match="elements"):
        slide_map_consistency(slide, MeanNet(), tmp_path / "w", KW, elements=["rot45"])
    with pytest.raises(ValueError, match="output_dir"):
        slide_map_consistency(slide, MeanNet(), tmp_path / "w", {**KW, "output_dir": str(tmp_path)})
    with pytest.raises(WSIError, match=r"s\.tif.*max_pixels"):
        slide_map_consistency(slide, MeanNet(), tmp_path / "w", KW, max_pixels=100)
    with pytest.raises(ValueError, match="grid"):
        slide_map_consistency(slide, MeanNet(), tmp_path / "w", {**KW, "grid": "middle"})


def test_work_dir_files_of_the_user_are_kept(slide, tmp_path):
    """Without ``keep_slides`` the copies went to ``work_dir/<stem>_<element>.tif``: a file of that name already there
    was overwritten and then deleted; a work_dir the function created stayed behind empty."""
    work = tmp_path / "mine"
    work.mkdir()
    (work / "s_rot90.tif").write_bytes(b"not a copy")
    slide_map_consistency(slide, MeanNet(), work, {**KW, "grid": "centered"}, elements=["rot90"])
    assert sorted(p.name for p in work.iterdir()) == ["s_rot90.tif"]
    assert (work / "s_rot90.tif").read_bytes() == b"not a copy"


def test_compare_maps_leaves_out_nan_cells_inside_tissue():
    """A NaN probability in tissue made mean/max |dp| NaN while Dice and agreement counted it as a negative cell."""
    p = np.random.default_rng(0).random((5, 6))
    tissue = np.ones((5, 6), bool)
    q = p.copy()
    q[1, 1] = np.nan
    r = compare_maps(q, tissue, p, tissue)
    assert r["n_cells"] == 29
    assert r["mean_abs_diff"] == 0.0 and r["max_abs_diff"] == 0.0 and r["dice"] == 1.0 and r["agreement"] == 1.0
    outside = p.copy()
    outside[0] = np.nan  # NaN outside tissue: never compared
    tissue[0] = False
    assert compare_maps(outside, tissue, p, tissue)["mean_abs_diff"] == 0.0


def test_cells_no_patch_scored_are_coverage_not_probability_differences(slide, tmp_path):
    """infer_slide's map holds 0 in tissue cells no patch covers (the grid's remainder): on MONAI's top-left grid
    those cells differ between orientations, and were counted as probability differences of up to 1 (an invariant
    network scoring 1 everywhere looked inconsistent). They are left out now and show in ``coverage_iou``."""
    top = slide_map_consistency(slide, OneNet(), tmp_path / "w", {**KW, "grid": "top_left"}, elements=["rot90"])
    rot = {r["element"]: r for r in top["elements"]}["rot90"]
    assert rot["max_abs_diff"] == 0.0 and rot["dice"] == 1.0 and rot["agreement"] == 1.0
    assert rot["coverage_iou"] < 1.0 and rot["tissue_iou"] == 1.0
    assert top["worst"]["coverage_iou"] == rot["coverage_iou"] and top["worst"]["coverage_iou_element"] == "rot90"


def test_compare_maps_coverage_iou_counts_scored_tissue_cells():
    p = np.full((2, 3), 0.5)
    q = p.copy()
    q[0, 0] = np.nan  # not scored in the second map
    t = np.ones((2, 3), bool)
    r = compare_maps(p, t, q, t)
    assert r["n_cells"] == 5 and r["tissue_iou"] == 1.0 and r["coverage_iou"] == pytest.approx(5 / 6)


def test_a_bad_threshold_is_refused_before_any_slide_is_scanned(slide, tmp_path):
    """threshold=NaN thresholded every cell negative, a Dice of 1.0 for any maps; text stopped in a NumPy ufunc error
    naming no argument, after the identity copy had been written and scored."""
    p = np.array([[0.1, 0.9], [0.8, 0.2]])
    t = np.ones((2, 2), bool)
    for bad in (float("nan"), float("inf"), -0.1, 1.5, "0.5", True, None):
        with pytest.raises(ValueError, match="threshold"):
            compare_maps(p, t, 1.0 - p, t, threshold=bad)
        with pytest.raises(ValueError, match="threshold"):
            slide_map_consistency(slide, MeanNet(), tmp_path / "w", KW, threshold=bad)
    assert not (tmp_path / "w").exists()  # refused before the work folder was made
    assert compare_maps(p, t, 1.0 - p, t, threshold=np.float32(0.5))["dice"] == 0.0
