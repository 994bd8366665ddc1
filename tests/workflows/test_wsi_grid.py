"""Tests of the centred sliding grid of slide inference (``infer_slide(grid=...)``, :func:`sliding_grid_offset`): the
patches of a rotated/flipped slide are the rotated/flipped patches of the original only with ``grid="centered"``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_gmr.data import transform_array, transform_box, transform_slide, write_pyramidal_tiff
from monai_gmr.functional import d4_elements
from monai_gmr.workflows.wsi import GRIDS, SlideInference, infer_slide, sliding_grid_offset

P = 16
H, W = 200, 136  # 200 = 12 * 16 + 8, 136 = 8 * 16 + 8: not multiples of the stride, even remainders


class MeanNet(torch.nn.Module):
    """Exactly D4-invariant: the tumour logit is the mean red intensity of the patch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros(x.shape[0]), 30.0 * (x[:, 0].mean((1, 2)) - 0.7)], 1)


def _image(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(236, 2, (h, w, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for cy, cx, r in ((50, 40, 30), (130, 90, 35), (170, 30, 20)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (200, 90, 160)
    img[60:75, 30:60] = (60, 40, 120)
    img[120:140, 70:85] = (60, 40, 120)
    return img


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    src = root / "s.tif"
    write_pyramidal_tiff(src, _image(), mpp=0.5, tile_size=64, n_levels=1, compression="deflate")
    out = {g.name: transform_slide(src, root / f"s_{g.name}.tif", g)["path"] for g in d4_elements()}
    return src, out


def _locations(path, grid: str) -> set[tuple[int, int]]:
    from monai.data import SlidingPatchWSIDataset

    from monai_gmr.data import slide_info

    size0 = slide_info(path)["sizes"][0]
    ds = SlidingPatchWSIDataset(data=[{"image": str(path)}], patch_size=P, patch_level=0, reader="openslide",
                                offset=sliding_grid_offset(size0, (P, P), 0.0, grid))  # fmt: skip
    return {tuple(int(v) for v in d["location"]) for d in ds.data}  # level-0 top-left corners


def test_sliding_grid_offset():
    assert sliding_grid_offset((H, W), (P, P), 0.0, "top_left") == (0, 0)
    assert sliding_grid_offset((H, W), (P, P), 0.0, "centered") == (4, 4)
    assert sliding_grid_offset((201, 128), (P, P), 0.0, "centered") == (4, 0)  # odd remainder 9 -> 4; multiple -> 0
    assert sliding_grid_offset((204, 10), (P, P), 0.5, "centered") == (2, 0)  # step 8: remainder 4; no patch fits
    assert sliding_grid_offset((200, 200), (32, 32), 0.0, "centered") == (4, 4)  # a level-1 footprint
    with pytest.raises(ValueError, match="grid"):
        sliding_grid_offset((H, W), (P, P), 0.0, "middle")
    assert GRIDS == ("top_left", "centered")


@pytest.mark.parametrize("g", d4_elements()[1:], ids=lambda g: g.name)
def test_centered_grid_follows_the_slide(slides, g):
    src, copies = slides
    orig = {tuple(transform_box(loc, (P, P), (H, W), g)) for loc in _locations(src, "centered")}
    assert _locations(copies[g.name], "centered") == orig  # exactly the transformed patches
    # MONAI's top-left grid does not follow the slide (the remainder moves to the other side), except under the
    # transpose (rot90_flip: pixel (i, j) -> (j, i)), the one non-trivial element that keeps the top-left corner
    moved = {tuple(transform_box(loc, (P, P), (H, W), g)) for loc in _locations(src, "top_left")}
    assert (_locations(copies[g.name], "top_left") == moved) == (g.name == "rot90_flip")


def test_infer_slide_centered_maps_are_transformed_maps(slides):
    src, copies = slides
    kw = {"patch_size": P, "batch_size": 256, "map_max_size": 256}
    ref = infer_slide(src, MeanNet(), None, grid="centered", **kw)
    top = infer_slide(src, MeanNet(), None, **kw)
    assert ref.settings["grid"] == "centered" and ref.settings["grid_offset"] == [4, 4]
    assert top.settings["grid"] == "top_left" and top.settings["grid_offset"] == [0, 0]
    assert ref.map_downsample == 1.0 and ref.n_patches > 10
    differs = 0
    for g in d4_elements()[1:]:
        res = infer_slide(copies[g.name], MeanNet(), None, grid="centered", **kw)
        assert res.n_patches == ref.n_patches
        np.testing.assert_array_equal(transform_array(res.covered, g, inverse=True), ref.covered)
        np.testing.assert_array_equal(transform_array(res.tissue, g, inverse=True), ref.tissue)
        np.testing.assert_allclose(transform_array(res.prob, g, inverse=True), ref.prob, atol=1e-5)
        t = infer_slide(copies[g.name], MeanNet(), None, grid="top_left", **kw)
        differs += not np.array_equal(transform_array(t.covered, g, inverse=True), top.covered)
    assert differs == 6  # the top-left grid moves against the tissue under every element but the transpose


def test_grid_on_a_multiple_of_the_stride_changes_nothing(tmp_path):
    write_pyramidal_tiff(tmp_path / "m.tif", _image(192, 128), tile_size=64, n_levels=1, compression="deflate")
    kw = {"patch_size": P, "batch_size": 256}
    a = infer_slide(tmp_path / "m.tif", MeanNet(), None, grid="centered", **kw)
    b = infer_slide(tmp_path / "m.tif", MeanNet(), None, grid="top_left", **kw)
    assert a.settings["grid_offset"] == [0, 0]
    np.testing.assert_array_equal(a.prob, b.prob)


def test_integer_overlap_is_a_fraction(tmp_path):
    """overlap=0 (an int, e.g. ``--overlap 0`` on the bundle command line) passes the [0, 1) check and is a fraction
    for the grid offset; MONAI reads an int overlap as pixels and failed listing the patches (numpy float step)."""
    write_pyramidal_tiff(tmp_path / "o.tif", _image(), tile_size=64, n_levels=1, compression="deflate")
    kw = {"patch_size": P, "batch_size": 256, "grid": "centered"}
    a = infer_slide(tmp_path / "o.tif", MeanNet(), None, overlap=0, **kw)
    b = infer_slide(tmp_path / "o.tif", MeanNet(), None, overlap=0.0, **kw)
    assert a.n_patches == b.n_patches and a.settings["grid_offset"] == [4, 4]
    np.testing.assert_array_equal(a.prob, b.prob)


def test_bad_grid_is_refused(slides):
    src, _ = slides
    with pytest.raises(ValueError, match="grid"):
        infer_slide(src, MeanNet(), None, patch_size=P, grid="center")
    with pytest.raises(ValueError, match="grid"):
        SlideInference(MeanNet(), None, slides=[str(src)], grid="middle")


def test_slide_inference_turns_outputs_into_class_probabilities():
    """``_as_probs``: one logit -> ``[1 - sigmoid, sigmoid]``, several -> softmax, ``(N, C, 1, 1)`` flattened; spatial
    outputs refused."""
    import torch

    from monai_gmr.workflows.wsi import _as_probs

    one = torch.tensor([[0.0], [2.0], [-1.0]])
    p = torch.sigmoid(one)
    assert torch.allclose(_as_probs(one), torch.cat([1 - p, p], 1))
    two = torch.tensor([[0.3, -0.2], [1.0, 2.0]])
    assert torch.allclose(_as_probs(two), two.softmax(1))
    assert torch.allclose(_as_probs(two[:, :, None, None]), two.softmax(1))
    with pytest.raises(ValueError, match="classification outputs"):
        _as_probs(torch.zeros(2, 2, 3, 3))


class ConstNet(torch.nn.Module):
    """The same logits ``(0, 1)`` for every patch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[0.0, 1.0]]).expand(x.shape[0], 2)


def test_overlapping_patches_average_in_the_map(tmp_path):
    """A map cell covered by several patches (``overlap=0.5``: up to 4) holds their mean, not their sum: with a
    constant classifier every covered cell is that classifier's probability."""
    write_pyramidal_tiff(tmp_path / "v.tif", _image(), tile_size=64, n_levels=1, compression="deflate")
    res = infer_slide(tmp_path / "v.tif", ConstNet(), None, patch_size=P, batch_size=256, overlap=0.5,
                      map_max_size=256, min_tissue=0.0)  # fmt: skip
    p = float(torch.softmax(torch.tensor([0.0, 1.0]), 0)[1])
    assert res.covered.all() and res.n_patches == 24 * 16  # half-overlapping patches, step 8
    np.testing.assert_allclose(res.prob, p, rtol=1e-6)
    np.testing.assert_allclose(res.probs.sum(0), 1.0, rtol=1e-6)


def test_min_tissue_is_inclusive(tmp_path):
    """``min_tissue`` keeps the patches whose footprint is *at least* that tissue fraction: ``1.0`` keeps the patches
    that are all tissue (a strict ``>`` kept none and failed the slide), ``0.0`` every patch of the grid."""
    write_pyramidal_tiff(tmp_path / "t.tif", _image(), tile_size=64, n_levels=1, compression="deflate")
    kw = {"patch_size": P, "batch_size": 256, "map_max_size": 256}
    every = infer_slide(tmp_path / "t.tif", MeanNet(), None, min_tissue=0.0, **kw)
    assert every.map_downsample == 1.0 and every.n_patches == (H // P) * (W // P)
    # patches aligned with the map grid (downsample 1): a patch's tissue fraction is the mean of its mask block
    blocks = every.tissue[: H // P * P, : W // P * P].reshape(H // P, P, W // P, P).mean((1, 3))
    assert 0 < (blocks == 1.0).sum() < (blocks > 0).sum()
    full = infer_slide(tmp_path / "t.tif", MeanNet(), None, min_tissue=1.0, **kw)
    assert full.n_patches == int((blocks == 1.0).sum())
    half = float(np.sort(blocks[(blocks > 0) & (blocks < 1)])[0])  # a fraction some patch has exactly
    part = infer_slide(tmp_path / "t.tif", MeanNet(), None, min_tissue=half, **kw)
    assert part.n_patches == int((blocks >= half).sum())


def test_min_tissue_of_non_square_patches(tmp_path):
    """A (16, 32) patch's tissue fraction is its tissue cells over its 16 x 32 cells (an area of rows x rows
    doubled the fraction, keeping half-tissue patches at min_tissue=1)."""
    write_pyramidal_tiff(tmp_path / "t.tif", _image(), tile_size=64, n_levels=1, compression="deflate")
    kw = {"patch_size": (P, 2 * P), "batch_size": 256, "map_max_size": 256}
    every = infer_slide(tmp_path / "t.tif", MeanNet(), None, min_tissue=0.0, **kw)
    rows, cols = H // P, W // (2 * P)
    assert every.map_downsample == 1.0 and every.n_patches == rows * cols
    blocks = every.tissue[: rows * P, : cols * 2 * P].reshape(rows, P, cols, 2 * P).mean((1, 3))
    assert 0 < (blocks == 1.0).sum() < (blocks >= 0.5).sum()
    for t in (1.0, 0.5):
        assert infer_slide(tmp_path / "t.tif", MeanNet(), None, min_tissue=t, **kw).n_patches == int((blocks >= t).sum())


def test_map_holds_the_probability_of_tumour_class(tmp_path):
    """``tumour_class`` picks the map's class: ``prob`` is ``probs[tumour_class]`` (class 0 here, 1 - the class-1
    map), not always class 1."""
    write_pyramidal_tiff(tmp_path / "c.tif", _image(), tile_size=64, n_levels=1, compression="deflate")
    kw = {"patch_size": P, "batch_size": 256, "map_max_size": 256}
    one = infer_slide(tmp_path / "c.tif", MeanNet(), None, **kw)
    zero = infer_slide(tmp_path / "c.tif", MeanNet(), None, tumour_class=0, **kw)
    assert zero.covered.any() and np.array_equal(zero.covered, one.covered)
    np.testing.assert_allclose(zero.prob, zero.probs[0])
    np.testing.assert_allclose(zero.prob[zero.covered], 1.0 - one.prob[one.covered], atol=1e-6)
    assert not np.allclose(zero.prob[zero.covered], one.prob[one.covered])


def test_a_large_single_level_slide_is_never_read_whole(tmp_path, monkeypatch):
    """infer_slide read the whole mask level for its thumbnail (and tissue_mask again for the mask): a large
    single-level slide had to fit in memory twice. Above ``_STRIP_PIXELS`` both are read strip by strip now, with
    the same map, tissue mask and heatmap."""
    import monai_gmr.data.wsi as wsi_mod

    path = tmp_path / "flat.tif"
    write_pyramidal_tiff(path, _image(), tile_size=64, n_levels=1, compression="deflate")
    kw = {"patch_size": P, "batch_size": 256, "grid": "centered", "map_max_size": 50}
    ref = infer_slide(path, MeanNet(), tmp_path / "a", **kw)
    whole_reads = []
    orig = wsi_mod.OpenSlideWSIReader.get_data

    def get_data(self, wsi, location=(0, 0), size=None, level=None, **k):
        if size is None:
            whole_reads.append(level)
        return orig(self, wsi, location=location, size=size, level=level, **k)

    monkeypatch.setattr(wsi_mod.OpenSlideWSIReader, "get_data", get_data)
    monkeypatch.setattr(wsi_mod, "_STRIP_PIXELS", 4000)
    res = infer_slide(path, MeanNet(), tmp_path / "b", **kw)
    assert whole_reads == []
    assert ref.prob.shape == (50, 34) and ref.n_patches == res.n_patches > 0
    np.testing.assert_array_equal(res.prob, ref.prob)
    np.testing.assert_array_equal(res.tissue, ref.tissue)
    from PIL import Image

    heat = [np.asarray(Image.open(r.files["heatmap"])) for r in (ref, res)]
    np.testing.assert_array_equal(heat[0], heat[1])


def test_slide_inference_restores_every_submodule_mode(tmp_path):
    """A bare ``network.train()`` after the slide switched every submodule to training: a batch norm frozen in eval
    mode by a fine-tuning run came back training (its running statistics then moved)."""
    write_pyramidal_tiff(tmp_path / "m.tif", _image(64, 64), tile_size=64, n_levels=1, compression="deflate")
    net = torch.nn.Sequential(MeanNet(), torch.nn.BatchNorm1d(2))
    net.train()
    net[1].eval()  # frozen batch norm
    infer_slide(tmp_path / "m.tif", net, None, patch_size=P, batch_size=256)
    assert net.training and net[0].training and not net[1].training


def test_only_rank_0_writes_the_map_files_and_the_summary_reports_the_tissue_mask(tmp_path, monkeypatch):
    """Only the process of rank 0 writes a slide's map files (every process holds the gathered map); the result's
    ``tissue_fraction`` is that of the tissue mask, not of the pixels the kept patches cover (which leave out the
    tissue of patches under min_tissue and take in the background of the kept ones)."""
    from monai_gmr.workflows import wsi

    write_pyramidal_tiff(tmp_path / "r.tif", _image(), tile_size=64, n_levels=1, compression="deflate")
    kw = {"patch_size": P, "batch_size": 256, "map_max_size": 256, "min_tissue": 0.5}
    res = infer_slide(tmp_path / "r.tif", MeanNet(), tmp_path / "out0", **kw)
    assert sorted(res.files) == ["heatmap", "prob", "tissue"] and len(list((tmp_path / "out0").iterdir())) == 3
    d = res.to_dict()
    assert d["tissue_fraction"] == pytest.approx(float(res.tissue.mean()))
    assert not np.isclose(res.tissue.mean(), res.covered.mean())  # the two differ on this slide
    monkeypatch.setattr(wsi, "_dist_rank_world", lambda: (1, 1))  # the process of another rank (its own shard)
    other = infer_slide(tmp_path / "r.tif", MeanNet(), tmp_path / "out1", **kw)
    assert other.files == {} and not (tmp_path / "out1").exists()
    np.testing.assert_array_equal(other.prob, res.prob)


def test_map_quality_scores_the_covered_tissue_pixels_only(tmp_path):
    """The map is scored on the pixels that are both covered by a kept patch and tissue: the background inside a
    kept patch's footprint (here up to half of it, min_tissue=0.5) is no tumour and no normal tissue either."""
    from monai_gmr.workflows.wsi import map_quality

    img = _image()
    write_pyramidal_tiff(tmp_path / "q.tif", img, tile_size=64, n_levels=1, compression="deflate")
    gt = (img[..., 0] < 100).astype(np.uint8)  # the two dark blocks
    res = infer_slide(tmp_path / "q.tif", MeanNet(), None, patch_size=P, batch_size=256, map_max_size=256,
                      min_tissue=0.5, label_mask=gt)  # fmt: skip
    valid = res.covered & res.tissue
    assert 0 < valid.sum() < res.covered.sum()
    assert res.metrics["n_pixels"] == int(valid.sum())
    assert res.metrics == map_quality(res.prob, gt, valid=valid)


@pytest.mark.parametrize("size, patch, overlap", [(100, 18, 0.25), (150, 20, 0.3), (97, 10.5, 0.5), (64, 16, 0.0)])
def test_centered_offset_leaves_equal_margins_on_monais_grid(size, patch, overlap):
    """``sliding_grid_offset`` computes MONAI's step (``round(p * (1 - overlap))``, as ``iter_patch_position``) and
    patch count: the grid MONAI lays from the centred offset leaves equal margins (even remainder) or one more
    level-0 pixel at the end (odd). A truncated step (13 instead of 13.5 -> 14) put the grid off-centre."""
    from monai.data.utils import iter_patch_position

    oy, ox = sliding_grid_offset((size, size), (patch, patch), overlap, "centered")
    assert oy == ox
    starts = sorted({p[0] for p in iter_patch_position((size, size), (patch, patch), (oy, ox), float(overlap))})
    end_margin = size - (starts[-1] + round(patch))
    assert starts[0] == oy and end_margin - oy in (0, 1), (starts, end_margin)
    # and no further patch would fit at either end (the grid is MONAI's, cut to the same number of patches)
    step = round(patch * (1.0 - overlap))
    assert oy < step and end_margin < step
