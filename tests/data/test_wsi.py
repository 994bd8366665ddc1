"""Tests of monai_gmr.data.wsi: tissue masks, patch sampling, inference grids, errors that name the slide."""

from __future__ import annotations

import numpy as np
import pytest

from monai_gmr.data import make_synthetic_wsi
from monai_gmr.data.wsi import (
    SlideNotFoundError,
    WSIError,
    get_wsi_reader,
    list_slides,
    read_region,
    sample_patch_locations,
    slide_info,
    slide_patch_grid,
    tissue_mask,
    validate_patch_items,
)
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    out = tmp_path_factory.mktemp("wsi1")
    res = make_synthetic_wsi(out, n_slides=1, size=1024, seed=2, patches_per_slide=8, patch_size=64)
    return out / "slides" / "slide_000.tiff", res


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_tissue_mask_matches_ground_truth(slide, backend):
    path, res = slide
    mask, level, ds = tissue_mask(path, level=-1, backend=backend)
    assert level == 2 and ds == pytest.approx(4.0) and mask.shape == (256, 256) and mask.dtype == bool
    gt = np.load(path.parent.parent / res["slides"][0]["tissue_mask"]).astype(bool)
    iou = (mask & gt).sum() / (mask | gt).sum()
    assert iou > 0.9, iou


def test_tissue_mask_ignores_near_black_background(tmp_path):
    """Dark noise has HSV saturation near 1 ((max - min) / max): it is not tissue (min_brightness)."""
    from monai_gmr.data import write_pyramidal_tiff

    rng = np.random.default_rng(0)
    dark = np.clip(rng.normal(5, 3, (512, 768, 3)), 0, 255).astype(np.uint8)
    write_pyramidal_tiff(tmp_path / "dark.tiff", dark, compression="deflate", n_levels=2, tile_size=256)
    assert not tissue_mask(tmp_path / "dark.tiff")[0].any()
    # pink tissue on the same dark noise is still found, the background around it is not
    dark[128:384, 256:512] = (230, 140, 190)
    _check_level1_mask(tmp_path / "on_dark.tiff", dark, (slice(64, 192), slice(128, 256)))
    assert tissue_mask(tmp_path / "dark.tiff", min_brightness=0.0)[0].mean() > 0.1  # the old behaviour


def test_tissue_mask_min_area_keeps_a_component_of_exactly_min_area(tmp_path):
    """``min_area`` drops components *smaller* than that fraction of the mask: a 4 x 4 tissue square of a 64 x 64
    mask (16 / 4096) survives ``min_area=16 / 4096`` and goes at ``17 / 4096``; a tiny ``min_area`` (below one
    pixel) keeps single-pixel tissue (a strict ``>`` test dropped every component at the threshold, and every
    single pixel when ``min_area * mask.size <= 1``)."""
    from monai_gmr.data import write_pyramidal_tiff

    img = np.full((64, 64, 3), 240, np.uint8)
    img[8:40, 8:40] = (200, 90, 160)  # a large component
    img[50:54, 50:54] = (200, 90, 160)  # 16 pixels
    img[56, 8] = (200, 90, 160)  # one pixel
    write_pyramidal_tiff(tmp_path / "a.tiff", img, compression="deflate", n_levels=1, tile_size=32)
    kw = {"level": 0, "max_size": None}
    assert tissue_mask(tmp_path / "a.tiff", min_area=0.0, **kw)[0].sum() == 32 * 32 + 16 + 1
    assert tissue_mask(tmp_path / "a.tiff", min_area=1e-6, **kw)[0].sum() == 32 * 32 + 16 + 1
    assert tissue_mask(tmp_path / "a.tiff", min_area=16 / 4096, **kw)[0].sum() == 32 * 32 + 16
    assert tissue_mask(tmp_path / "a.tiff", min_area=17 / 4096, **kw)[0].sum() == 32 * 32


def _check_level1_mask(path, img: np.ndarray, tissue: tuple[slice, slice]) -> None:
    """Write ``img`` as a 2-level pyramid and check that its tissue mask (level 1, downsample 2) is ``tissue``."""
    from monai_gmr.data import write_pyramidal_tiff

    write_pyramidal_tiff(path, img, compression="deflate", n_levels=2, tile_size=256)
    mask, _, ds = tissue_mask(path)
    want = np.zeros(mask.shape, bool)
    want[tissue] = True
    assert ds == pytest.approx(2.0) and np.array_equal(mask, want)


def test_tissue_mask_keeps_deeply_stained_tissue(tmp_path):
    """``min_brightness`` tests a pixel's *brightest* channel: deeply stained tissue with one channel near 0 (e.g.
    (170, 10, 150)) is bright enough and is tissue; only pixels dark in every channel are background."""
    img = np.full((512, 512, 3), 240, np.uint8)
    img[128:384, 128:384] = (170, 10, 150)
    _check_level1_mask(tmp_path / "deep.tiff", img, (slice(64, 192), slice(64, 192)))


def test_tissue_mask_by_mpp_and_size_cap(slide):
    path, _ = slide
    mask, level, ds = tissue_mask(path, mpp=1.0)
    assert level == 1 and mask.shape == (512, 512) and ds == pytest.approx(2.0)
    mask2, level2, ds2 = tissue_mask(path, level=0, max_size=300)
    assert level2 == 0 and ds2 == pytest.approx(4.0) and mask2.shape == (256, 256)


def _edge_tissue_slide(path, hw=(1010, 703), edge=(2, 3)):
    """A one-level slide of glass whose only tissue is a strip of ``edge`` pixels along the bottom and right edges:
    with ``max_size=256`` (factor 4: 1010 = 252 * 4 + 2, 703 = 175 * 4 + 3) exactly the last, partial blocks."""
    from monai_gmr.data import write_pyramidal_tiff

    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(236, 2, (*hw, 3)), 0, 255).astype(np.uint8)
    img[-edge[0]:, :] = (200, 90, 160)
    img[:, -edge[1]:] = (200, 90, 160)
    write_pyramidal_tiff(path, img, compression="deflate", n_levels=1, tile_size=256)
    return path


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_tissue_mask_covers_the_last_partial_block(tmp_path, backend):
    """Tissue that lies only in the last, partial row/column of blocks (the level's size is not a multiple of the
    block-averaging factor) is in the mask: the mask has ceil(H / factor) x ceil(W / factor) pixels."""
    path = _edge_tissue_slide(tmp_path / "edge.tiff")
    mask, level, ds = tissue_mask(path, level=0, max_size=256, backend=backend)
    assert level == 0 and ds == pytest.approx(4.0)
    assert mask.shape == (253, 176)  # ceil(1010 / 4), ceil(703 / 4)
    assert mask[-1, :].all() and mask[:, -1].all()  # the partial blocks hold the tissue
    assert not mask[:-1, :-1].any()  # the glass is not tissue


def test_block_mean_averages_partial_blocks_over_their_pixels():
    from monai_gmr.data.wsi import block_mean

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 10, 7), dtype=np.uint8)
    out = block_mean(img, 4)
    assert out.shape == (3, 3, 2) and out.dtype == np.uint8
    for i in range(3):
        for j in range(2):
            want = img[:, 4 * i: 4 * i + 4, 4 * j: 4 * j + 4].reshape(3, -1).mean(1).astype(np.uint8)
            np.testing.assert_array_equal(out[:, i, j], want)
    assert block_mean(img, 1) is img


def test_patches_over_an_edge_tissue_mask_stay_inside_the_slide(tmp_path):
    """The mask's last row/column reaches past the slide (partial blocks): the patch grid and sampled locations
    (with ``bounds``) still lie inside the slide."""
    path = _edge_tissue_slide(tmp_path / "edge.tiff")
    h0, w0 = 1010, 703
    mask, _, ds = tissue_mask(path, level=0, max_size=256)
    assert mask.shape[0] * ds > h0 and mask.shape[1] * ds > w0
    # 10-pixel patches: the last grid row (1000..1010) covers the tissue strip, a third of its mask rows
    grid = slide_patch_grid(path, patch_size=10, mask=mask, mask_downsample=ds, min_tissue=0.3, center=False)
    locs = np.array([i["location"] for i in grid["items"]])
    assert len(locs) > 0 and (locs >= 0).all()
    assert (locs[:, 0] + 10 <= h0).all() and (locs[:, 1] + 10 <= w0).all()
    assert (locs[:, 0] == 1000).all()  # only the bottom row of patches, over the partial blocks
    top_left = sample_patch_locations(mask, ds, 50, 8, min_fraction=0.3, seed=0, center=False, replace=True,
                                      bounds=(h0, w0))  # fmt: skip
    assert len(top_left) == 50 and (top_left >= 0).all()
    assert (top_left[:, 0] + 8 <= h0).all() and (top_left[:, 1] + 8 <= w0).all()


def test_slide_info_and_list(slide):
    path, _ = slide
    info = slide_info(path)
    assert info["level_count"] == 3 and info["sizes"][2] == (256, 256) and info["mpp"][1] == pytest.approx((1.0, 1.0))
    assert list_slides(path.parent) == [str(path)]
    with pytest.raises(FileNotFoundError, match="nope"):
        list_slides(path.parent / "nope")


def test_errors_name_the_slide(slide, tmp_path):
    path, _ = slide
    missing = tmp_path / "missing.tiff"
    with pytest.raises(SlideNotFoundError, match="missing.tiff") as e:
        tissue_mask(missing)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, WSIError) and e.value.slide == str(missing)
    corrupt = tmp_path / "corrupt.tiff"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 100)
    for backend in ("openslide", "tifffile"):
        with pytest.raises(WSIError, match="corrupt.tiff"):
            tissue_mask(corrupt, backend=backend)
    with pytest.raises(WSIError, match=r"slide_000.tiff.*level 7 does not exist"):
        tissue_mask(path, level=7)
    with pytest.raises(WSIError, match=r"slide_000.tiff.*outside the slide"):
        read_region(path, (1000, 1000), (64, 64))
    with pytest.raises(WSIError, match="outside the slide"):
        read_region(path, (-1, 10), (8, 8))
    with pytest.raises(WSIError, match="level 3 does not exist"):
        read_region(path, (0, 0), (8, 8), level=3)
    with pytest.raises(WSIError, match="no level at mpp"):
        tissue_mask(path, mpp=50.0)


def test_a_fractional_level_is_refused_not_truncated(slide):
    """``level=1.5`` (e.g. ``--mask_level 1.5``) was read by ``int()`` as level 1 without a word; whole numbers in
    any form (``1.0`` as pandas writes it, NumPy integers, text) still name their level."""
    path, _ = slide
    for bad in (1.5, "1.5", float("nan"), True):
        with pytest.raises(ValueError, match=r"integer level index.*level="):
            tissue_mask(path, level=bad)
    ref, lvl, ds = tissue_mask(path, level=1)
    assert lvl == 1
    for same in (1.0, np.int64(1), "1", -2):  # the synthetic slide has 3 levels: -2 is level 1
        mask, lvl_same, ds_same = tissue_mask(path, level=same)
        assert np.array_equal(mask, ref) and (lvl_same, ds_same) == (1, ds)


def test_read_region_centre_and_levels(slide):
    import openslide

    path, _ = slide
    ref = openslide.OpenSlide(str(path))
    a = read_region(path, (300, 200), (32, 48))  # top-left (y, x)
    assert a.shape == (3, 32, 48)
    assert np.array_equal(a.transpose(1, 2, 0), np.asarray(ref.read_region((200, 300), 0, (48, 32)).convert("RGB")))
    b = read_region(path, (316, 224), (32, 48), center=True)
    assert np.array_equal(a, b)
    # MONAI center_location convention: top-left = location - size // 2 (size at the level, not scaled)
    c = read_region(path, (512, 512), (16, 16), level=1, center=True)
    assert np.array_equal(c.transpose(1, 2, 0), np.asarray(ref.read_region((504, 504), 1, (16, 16)).convert("RGB")))


def test_patch_size_must_be_an_int_or_two_values():
    mask = np.ones((20, 20), bool)
    with pytest.raises(ValueError, match="patch_size must be an int or"):  # was silently (8, 8)
        sample_patch_locations(mask, 4.0, 3, patch_size=(8, 8, 1))
    assert sample_patch_locations(mask, 4.0, 3, patch_size=(8, 4), seed=0).shape == (3, 2)


def test_sample_patch_locations_respects_masks():
    mask = np.zeros((40, 40), bool)
    mask[5:25, 5:30] = True
    excl = np.zeros_like(mask)
    excl[5:12, 5:30] = True
    locs = sample_patch_locations(mask, 8.0, 50, patch_size=32, exclude=excl, seed=0)
    assert locs.shape == (50, 2) and locs.dtype == np.int64
    for y, x in locs:  # every 32x32 footprint lies in mask and away from excl (level 0, 8 px per mask pixel)
        ys, xs = slice((y - 16) // 8, (y + 15) // 8 + 1), slice((x - 16) // 8, (x + 15) // 8 + 1)
        assert mask[ys, xs].all() and not excl[ys, xs].any()
    assert np.array_equal(locs, sample_patch_locations(mask, 8.0, 50, patch_size=32, exclude=excl, seed=0))
    tl = sample_patch_locations(mask, 8.0, 5, patch_size=32, seed=1, center=False)
    ce = sample_patch_locations(mask, 8.0, 5, patch_size=32, seed=1)
    assert np.array_equal(tl + 16, ce)
    assert len(sample_patch_locations(mask, 8.0, 10, patch_size=1000, seed=0)) == 0  # nothing fits
    few = sample_patch_locations(np.pad(np.ones((1, 1), bool), 5), 1.0, 10, seed=0)
    assert len(few) == 1
    with pytest.raises(ValueError, match="2D"):
        sample_patch_locations(np.zeros(5, bool), 1.0, 1)


def test_sample_patch_locations_top_left_of_non_square_patches():
    """``center=False`` gives the top-left corner ``centre - (h/2, w/2)``: rows by the patch height, columns by its
    width (a (16, 48) patch; halves swapped, the corners were off by 16 pixels in both axes)."""
    mask = np.zeros((40, 40), bool)
    mask[4:36, 4:36] = True
    for seed in range(3):
        ce = sample_patch_locations(mask, 4.0, 20, patch_size=(16, 48), seed=seed)
        tl = sample_patch_locations(mask, 4.0, 20, patch_size=(16, 48), seed=seed, center=False)
        assert len(ce) == 20 and np.array_equal(tl, ce - np.array([8, 24]))


def test_sample_patch_locations_follow_their_seed():
    """The same integer seed gives the same locations, another seed other ones (a seed ignored gave every slide and
    every run the same draw), and a ``Generator`` is drawn from as given."""
    mask = np.zeros((40, 40), bool)
    mask[4:36, 4:36] = True
    a = sample_patch_locations(mask, 4.0, 20, patch_size=16, seed=0)
    assert np.array_equal(a, sample_patch_locations(mask, 4.0, 20, patch_size=16, seed=0))
    assert not np.array_equal(a, sample_patch_locations(mask, 4.0, 20, patch_size=16, seed=1))
    g = sample_patch_locations(mask, 4.0, 20, patch_size=16, seed=np.random.default_rng(1))
    assert np.array_equal(g, sample_patch_locations(mask, 4.0, 20, patch_size=16, seed=1))


def test_slide_patch_grid_over_tissue(slide):
    path, res = slide
    grid = slide_patch_grid(path, patch_size=64, level=1, min_tissue=0.5, extra={"label": 0})
    rows, cols = grid["grid_shape"]
    assert (rows, cols) == (8, 8) and grid["stride"] == (128, 128) and grid["downsample"] == pytest.approx(2.0)
    items = grid["items"]
    assert 0 < len(items) < 64
    gt = np.load(path.parent.parent / res["slides"][0]["tissue_mask"]).astype(bool)  # downsample 4
    for it in items:
        assert it["size"] == [64, 64] and it["level"] == 1 and it["label"] == 0
        r, c = it["grid"]
        assert it["location"] == [r * 128 + 32, c * 128 + 32]  # top-left + size // 2 (MONAI convention)
        assert gt[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32].mean() > 0.3
    full = slide_patch_grid(path, patch_size=64, level=1, min_tissue=0.0, center=False)
    assert len(full["items"]) == 64 and full["items"][1]["location"] == [0, 128]
    for bad in ({"patch_size": (64, 64, 3)}, {"stride": (32, 32, 1)}):  # were silently cut to two values
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be an int or"):
            slide_patch_grid(path, level=1, min_tissue=0.0, **{"patch_size": 64, **bad})
    good, errors = validate_patch_items(items)
    assert len(good) == len(items) and errors == []


def test_grid_items_read_the_same_pixels_in_patch_wsi_dataset(slide):
    """Level-1 grid items through MONAI PatchWSIDataset (center_location=True) == read_region(center=True) ==
    the grid cell's top-left at level 1."""
    import openslide
    from monai.data import PatchWSIDataset

    path, _ = slide
    items = slide_patch_grid(path, patch_size=64, level=1, min_tissue=0.5)["items"][:3]
    ds = PatchWSIDataset(items, reader="openslide", include_label=False)
    ref = openslide.OpenSlide(str(path))
    for it, d in zip(items, ds):
        mine = read_region(path, it["location"], it["size"], level=1, center=True)
        r, c = it["grid"]
        cell = np.asarray(ref.read_region((c * 128, r * 128), 1, (64, 64)).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(np.asarray(d["image"]).astype(np.uint8), mine) and np.array_equal(mine, cell)


def test_openslide_patches_are_writable_and_equal_to_monai(slide):
    """MONAI's openslide reader hands PatchWSIDataset a read-only view of PIL's buffer, and torch warned "The given
    NumPy array is not writable" on the first patch of every slide inference. The package's openslide reader
    (``get_wsi_reader`` / ``wsi_reader_for``) returns writable, contiguous patches with the same pixels."""
    from monai.data import PatchWSIDataset, WSIReader

    from monai_gmr.data.wsi import OpenSlideSlideReader, wsi_reader_for

    path, _ = slide
    assert wsi_reader_for("openslide") is OpenSlideSlideReader
    reader = get_wsi_reader("openslide")
    assert reader.backend == "openslide"
    plain = WSIReader(backend="openslide")
    for level, loc in ((0, (300, 420)), (1, (64, 256))):
        ours, _ = reader.get_data(reader.read(str(path)), location=loc, size=(48, 40), level=level)
        ref, _ = plain.get_data(plain.read(str(path)), location=loc, size=(48, 40), level=level)
        assert not ref.flags.writeable  # what MONAI returns (the reason for the subclass)
        assert ours.flags.writeable and ours.flags.c_contiguous and ours.shape == (3, 48, 40)
        assert np.array_equal(ours, ref)
    # what PatchWSIDataset wraps in a MetaTensor (torch warns only once per process, so the array is checked)
    item = {"image": str(path), "location": [300, 420], "label": 0}
    for r in (wsi_reader_for("openslide"), reader):
        arr, _ = PatchWSIDataset([item], patch_size=32, reader=r, include_label=False)._get_data(item)
        assert arr.flags.writeable and arr.shape == (3, 32, 32)
    arr, _ = PatchWSIDataset([item], patch_size=32, reader="openslide", include_label=False)._get_data(item)
    assert not arr.flags.writeable  # MONAI's own reader, by name


def test_validate_patch_items_skips_bad_entries(slide, tmp_path):
    path, _ = slide
    items = [
        {"image": str(path), "location": [500, 500], "size": [64, 64], "level": 0},
        {"image": str(path), "location": [1020, 500], "size": [64, 64], "level": 0},  # outside
        {"image": str(path), "location": [500, 500], "size": [64, 64], "level": 9},  # no such level
        {"image": str(tmp_path / "gone.tiff"), "location": [5, 5], "size": [4, 4]},  # missing slide
    ]
    good, errors = validate_patch_items(items, skip_bad=True)
    assert good == items[:1] and len(errors) == 3
    assert "outside" in errors[0] and "level 9" in errors[1] and "gone.tiff" in errors[2]
    with pytest.raises(WSIError, match="outside"):
        validate_patch_items(items)


def test_real_slide_cmu_small_region():
    svs = shared_path("data", "wsi_cmu1_small_region", "cmu_small_region.svs")
    info = slide_info(svs)
    assert info["level_count"] == 1 and info["sizes"][0] == (2967, 2220) and info["mpp"][0] == pytest.approx((0.499, 0.499))
    mask, level, ds = tissue_mask(svs, level=-1, max_size=1024)
    assert level == 0 and ds == pytest.approx(3.0) and mask.shape == (989, 740)
    assert 0.2 < mask.mean() < 0.6  # a strip of tissue on glass
    assert not mask[:50, :50].any()  # the top-left corner is glass
    grid = slide_patch_grid(svs, patch_size=224, mask=mask, mask_downsample=ds, min_tissue=0.5)
    assert grid["grid_shape"] == (13, 9) and 20 < len(grid["items"]) < 13 * 9
    patch = read_region(svs, grid["items"][0]["location"], (224, 224), center=True)
    assert patch.shape == (3, 224, 224) and patch.mean() < 230  # tissue, not glass


def _svs_like(path) -> np.ndarray:
    """An Aperio-style TIFF: tiled base level, a thumbnail page, a tiled half-size level, a label page (the page
    order of an SVS); returns the base image."""
    import tifffile

    base = np.random.default_rng(0).integers(0, 255, (256, 320, 3), dtype=np.uint8)
    desc = "Aperio Image Library test\n256x320 [0,0 256x320] (64x64) JPEG/RGB Q=70|AppMag = 20|MPP = 0.5"
    with tifffile.TiffWriter(path) as t:
        t.write(base, tile=(64, 64), photometric="rgb", description=desc, metadata=None)
        t.write(base[::8, ::8], photometric="rgb", description=desc + " -> 32x40", metadata=None)  # thumbnail
        t.write(base[::2, ::2], tile=(64, 64), photometric="rgb", description=desc + " -> 128x160", metadata=None)
        label = "Aperio Image Library test\nlabel"
        t.write(base[:20, :30], photometric="rgb", subfiletype=1, description=label, metadata=None)
    return base


def test_tifffile_backend_sees_the_pyramid_of_an_svs(tmp_path):
    """MONAI's tifffile reader counted and sized levels by TIFF page: in an SVS level 1 was the thumbnail (32x40,
    downsample 8) while its pixels came from the real level 1, and the lowest "level" (the label) did not exist."""
    path = tmp_path / "a.svs"
    base = _svs_like(path)
    info = slide_info(path, "tifffile")
    assert info["level_count"] == 2 and info["sizes"] == [(256, 320), (128, 160)] and info["downsamples"] == [1.0, 2.0]
    patch = read_region(path, (64, 96), (32, 32), level=1, backend="tifffile")
    assert np.array_equal(patch, base[::2, ::2][32:64, 48:80].transpose(2, 0, 1))
    mask, level, ds = tissue_mask(path, level=-1, backend="tifffile")
    assert level == 1 and ds == 2.0 and mask.shape == (128, 160)
    # no resolution tags: the MPP comes from the Aperio description, as with openslide (patch_mpp works)
    assert info["mpp"] == [(0.5, 0.5), (1.0, 1.0)]


def test_real_svs_with_the_tifffile_backend():
    """CMU-1-Small-Region.svs: one pyramid level plus thumbnail, label and macro pages; tissue detection reads the
    lowest level, which MONAI's tifffile reader called level 3 and then could not read."""
    svs = shared_path("data", "wsi_cmu1_small_region", "cmu_small_region.svs")
    info = slide_info(svs, "tifffile")
    assert info["level_count"] == 1 and info["sizes"] == [(2967, 2220)] and info["mpp"] == [(0.499, 0.499)]
    mask, level, ds = tissue_mask(svs, level=-1, max_size=1024, backend="tifffile")
    ref, _, _ = tissue_mask(svs, level=-1, max_size=1024, backend="openslide")
    assert level == 0 and mask.shape == (989, 740) and (mask == ref).mean() > 0.999


def _regions_match_the_whole_level_read(path, n: int = 12) -> int:
    """Random regions at every level (and one past the bottom-right edge) read from the overlapping tiles equal
    MONAI's whole-level read; returns how many were compared."""
    from monai.data.wsi_reader import TiffFileWSIReader

    reader = get_wsi_reader("tifffile")
    wsi = reader.read(str(path))
    rng, count = np.random.default_rng(0), 0
    for level in range(reader.get_level_count(wsi)):
        (h, w), ds = reader.get_size(wsi, level), reader.get_downsample_ratio(wsi, level)
        for i in range(n + 1):
            size = (int(rng.integers(1, 200)), int(rng.integers(1, 200)))
            y, x = (h - 5, w - 7) if i == n else (int(rng.integers(0, h)), int(rng.integers(0, w)))
            loc = (int(round(y * ds)), int(round(x * ds)))
            ours, _ = reader.get_data(wsi, location=loc, size=size, level=level)
            whole = TiffFileWSIReader._get_patch(reader, wsi, loc, size, level, np.uint8, "RGB")
            assert ours.shape == whole.shape and np.array_equal(np.asarray(ours), whole), (level, loc, size)
            count += 1
    return count


@pytest.mark.parametrize("compression", ["jpeg", "deflate"])
def test_tifffile_backend_reads_only_the_tiles_of_a_patch(tmp_path, monkeypatch, compression):
    """MONAI's tifffile reader decoded the whole level for every patch (48 s vs 13 s for openslide on the real SVS;
    a 40x level does not fit in memory). Patches now come from the overlapping tiles, equal to the whole-level
    read, including regions cut at the slide's edge; the whole level is never decoded for a patch."""
    import tifffile

    res = make_synthetic_wsi(tmp_path / "d", n_slides=1, size=1024, seed=1, patches_per_slide=4, patch_size=32,
                             compression=compression, tile_size=128)  # fmt: skip
    path = tmp_path / "d" / res["slides"][0]["image"]  # relative to the dataset root
    assert _regions_match_the_whole_level_read(path) == 3 * 13
    _svs_like(tmp_path / "a.svs")  # 64 x 64 tiles, level 1 after a thumbnail page
    assert _regions_match_the_whole_level_read(tmp_path / "a.svs") == 2 * 13

    def no_whole_level(*args, **kwargs):
        raise AssertionError("the whole level was decoded for a patch")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_whole_level)
    patch = read_region(path, (300, 500), (96, 96), backend="tifffile")
    assert patch.shape == (3, 96, 96)


@pytest.mark.parametrize("compression,rows", [("zlib", 7), (None, 7), (None, None)])
def test_tifffile_backend_reads_only_the_strips_of_a_patch_of_a_flat_tiff(tmp_path, monkeypatch, compression, rows):
    """A flat, untiled TIFF (the kind openslide refuses and the messages send to ``--wsi_backend tifffile``) was
    decoded whole for every patch and for every strip of the tissue mask: slide inference was quadratic in the
    slide's area (31x slower than the tiled copy at 3000 x 4000) and a large flat slide had to fit in memory for
    every read. Patches now come from the strips they overlap, equal to the whole-level read (edges included)."""
    import tifffile

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (203, 157, 3), dtype=np.uint8)
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, img, photometric="rgb", compression=compression, rowsperstrip=rows)
    with tifffile.TiffFile(path) as tif:
        assert not tif.pages[0].is_tiled
    assert _regions_match_the_whole_level_read(path, n=20) == 21

    def no_whole_level(*args, **kwargs):
        raise AssertionError("the whole level was decoded for a patch")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_whole_level)
    np.testing.assert_array_equal(read_region(path, (190, 20), (13, 100), backend="tifffile"),
                                  np.moveaxis(img[190:203, 20:120], -1, 0))  # fmt: skip
    mask, _, _ = tissue_mask(path, level=0, backend="tifffile", max_size=None)  # factor 1: one whole-level read
    assert mask.shape == (203, 157)


def test_tifffile_reads_a_patch_inside_the_slide_whole_at_a_rounded_down_level(tmp_path):
    """A level whose size was rounded down (1003 -> 250 columns at downsample 4, as scanners and tifffile pyramids
    do) ends 3 level-0 pixels before the slide: a patch inside the slide at level 0 (903 + 25 * 4 = 1003) was read
    one level pixel short (25 x 24, cut at the level's edge), so its batch failed to collate ("stack expects each
    tensor to be equal size") in slide inference with --overlap and in training. The window is moved back inside
    the level; a region that leaves the slide is still cut."""
    from monai_gmr.data import write_pyramidal_tiff

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1000, 1003, 3), dtype=np.uint8)
    path = tmp_path / "s.tif"
    assert write_pyramidal_tiff(path, img, n_levels=3, compression="deflate", tile_size=64)[2] == (250, 250)
    reader = get_wsi_reader("tifffile")
    wsi = reader.read(str(path))
    level2 = reader.get_data(wsi, level=2)[0]
    # (level-0 location, size at level 2, level-2 top-left read): round(903 / 4) = 226, 226 + 25 > 250 -> 225
    for loc, (h, w), (y, x) in [((0, 903), (25, 25), (0, 225)), ((903, 0), (24, 25), (226, 0))]:
        patch = read_region(path, loc, (h, w), level=2, backend="tifffile")
        assert patch.shape == (3, h, w), (loc, patch.shape)
        np.testing.assert_array_equal(patch, level2[:, y : y + h, x : x + w])
    past, _ = reader.get_data(wsi, location=(0, 920), size=(25, 25), level=2)  # leaves the slide: cut, as MONAI
    assert past.shape == (3, 25, 20)


def test_real_svs_tile_reads_match_the_whole_level():
    svs = shared_path("data", "wsi_cmu1_small_region", "cmu_small_region.svs")
    assert _regions_match_the_whole_level_read(svs, n=20) == 21


def test_level_patches_are_checked_and_placed_by_their_level0_extent(slide):
    """A patch of ``size`` at a level of downsample ``ds`` covers ``size * ds`` level-0 pixels: it must fit the slide
    with that extent, and the datalist's level-0 centre <-> top-left conversion uses it."""
    from monai_gmr.data.wsi import level0_center, level0_top_left

    path, _ = slide
    assert read_region(path, (1024 - 128, 1024 - 128), (64, 64), level=1).shape == (3, 64, 64)  # fits exactly
    for backend in ("openslide", "tifffile"):
        with pytest.raises(WSIError, match="outside the slide"):
            read_region(path, (900, 100), (64, 64), level=1, backend=backend)  # 900 + 128 > 1024
        with pytest.raises(WSIError, match="outside the slide"):
            read_region(path, (100, 800), (64, 64), level=2, backend=backend)  # 800 + 256 > 1024
    assert level0_top_left((500, 300), (64, 48), 4.0) == [500 - 128, 300 - 96]
    assert level0_center((372, 204), (64, 48), 4.0) == [500, 300]
    assert level0_top_left((500, 300), (63, 63), 2.0) == [500 - 63, 300 - 63]
    assert level0_center(level0_top_left((10, 11), (5, 7), 1.0), (5, 7), 1.0) == [10, 11]


def test_slide_patch_grid_keeps_cells_by_their_exact_tissue_fraction(slide):
    """Non-square patches over a given mask: a cell is kept when the tissue fraction of its own footprint (h x w
    level-0 pixels) is at least ``min_tissue`` (a cell at exactly ``min_tissue`` included); checked by brute force."""
    path, _ = slide
    rng = np.random.default_rng(0)
    mask = rng.random((64, 64)) < 0.5  # downsample 16: one mask pixel per 16 x 16 level-0 pixels
    mask[:2, :4] = [[True, True, False, False], [True, True, False, False]]  # cell (0, 0): exactly one half
    ph, pw = 32, 64
    grid = slide_patch_grid(path, patch_size=(ph, pw), mask=mask, mask_downsample=16.0, min_tissue=0.5, center=False)
    assert grid["grid_shape"] == (32, 16)
    kept = {tuple(i["grid"]) for i in grid["items"]}
    want = {(r, c) for r in range(32) for c in range(16) if mask[2 * r : 2 * r + 2, 4 * c : 4 * c + 4].mean() >= 0.5}
    assert (0, 0) in want and kept == want
    for it in grid["items"]:
        assert it["location"] == [it["grid"][0] * ph, it["grid"][1] * pw] and it["size"] == [ph, pw]


def test_sampled_footprints_that_straddle_mask_pixels_stay_inside():
    """A 40-pixel footprint at 8 level-0 pixels per mask pixel reaches 20 / 8 = 2.5 mask pixels from its centre:
    every sampled footprint (the whole [c - 20, c + 20) box) lies in ``mask``, and the samples spread over the
    eligible region instead of piling up in its first rows."""
    yy, xx = np.mgrid[:48, :48]
    mask = (yy - 24) ** 2 + (xx - 24) ** 2 <= 18**2  # a disk: a footprint too wide by a pixel would cross its edge
    locs = sample_patch_locations(mask, 8.0, 300, patch_size=40, seed=3, replace=True)
    assert len(locs) == 300
    for y, x in locs:
        assert mask[(y - 20) // 8 : (y + 19) // 8 + 1, (x - 20) // 8 : (x + 19) // 8 + 1].all(), (y, x)
    rows = locs[:, 0] // 8
    assert rows.min() <= 12 and rows.max() >= 36  # the disk's eligible rows are about 9..39


def test_blank_glass_gives_an_empty_tissue_mask(tmp_path):
    """A blank slide (near-white glass with faint noise): Otsu alone would split the noise in two, the saturation
    floor ``min_saturation`` leaves the mask empty."""
    from monai_gmr.data import write_pyramidal_tiff

    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(240, 1, (256, 384, 3)), 0, 255).astype(np.uint8)
    write_pyramidal_tiff(tmp_path / "blank.tiff", glass, compression="deflate", n_levels=1, tile_size=256)
    assert not tissue_mask(tmp_path / "blank.tiff", min_area=0.0)[0].any()
    assert tissue_mask(tmp_path / "blank.tiff", min_area=0.0, min_saturation=0.0)[0].any()  # Otsu noise without it


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_mpp_on_a_slide_without_resolution_metadata_says_so(tmp_path, backend):
    """A slide without MPP metadata and ``mpp`` requested failed with MONAI's "it only supports length conversion
    but `none` is given", which does not say that the slide lacks the metadata nor what to do instead."""
    import tifffile

    path = tmp_path / "no_mpp.tif"
    tifffile.imwrite(path, np.full((64, 96, 3), 200, np.uint8), photometric="rgb", tile=(32, 32))  # single level
    assert slide_info(path, backend)["mpp"] is None
    with pytest.raises(WSIError, match=r"no_mpp\.tif.*has no microns-per-pixel \(MPP\) metadata.*give a level"):
        tissue_mask(path, mpp=1.0, backend=backend)
    assert tissue_mask(path, level=-1, backend=backend)[1:] == (0, 1.0)  # the lowest level of a flat TIFF is level 0


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_16_bit_slide_is_refused(tmp_path, backend):
    """A 16-bit RGB TIFF slide was read as 8 bits without a word: openslide kept the high byte (12-bit data: a nearly
    black slide, no tissue found), MONAI's tifffile reader cast with wrap-around (2400 became 96)."""
    import tifffile

    rgb = np.full((64, 64, 3), 230 * 16, np.uint16)
    rgb[16:48, 16:48] = (150 * 16, 60 * 16, 160 * 16)  # 12-bit data
    tifffile.imwrite(tmp_path / "s16.tif", rgb, photometric="rgb", tile=(32, 32))
    for call in (lambda: read_region(tmp_path / "s16.tif", (20, 20), (4, 4), backend=backend),
                 lambda: tissue_mask(tmp_path / "s16.tif", backend=backend)):  # fmt: skip
        with pytest.raises(WSIError, match=r"s16\.tif' holds uint16 samples.*convert it to an 8-bit RGB slide"):
            call()
    tifffile.imwrite(tmp_path / "s8.tif", (rgb // 16).astype(np.uint8), photometric="rgb", tile=(32, 32))
    assert read_region(tmp_path / "s8.tif", (20, 20), (4, 4), backend=backend)[:, 0, 0].tolist() == [150, 60, 160]


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
@pytest.mark.parametrize("level", [0, 1])
def test_large_levels_are_read_in_strips_with_the_same_mask(tmp_path, monkeypatch, backend, level):
    """A level that must be block-averaged was read whole (a 50k x 50k single-level TIFF needs 10 GB): levels above
    ``_STRIP_PIXELS`` are now read in strips of whole blocks, each averaged before the next, giving the same mask,
    also when the size is not a multiple of the factor (partial last blocks)."""
    import monai_gmr.data.wsi as wsi_mod
    from monai_gmr.data import write_pyramidal_tiff

    rng = np.random.default_rng(3)
    img = np.full((302, 262, 3), 235, np.uint8)  # level 1: 151 x 131, downsample exactly 2
    img[40:250, 30:200] = (200, 90, 170)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "s.tiff"
    write_pyramidal_tiff(path, img, compression="deflate", n_levels=2, tile_size=64)
    whole = tissue_mask(path, level=level, backend=backend, max_size=40)
    calls = []
    real = wsi_mod._read_level_block_mean

    def spy(reader, wsi, lvl, ds, size, factor):
        orig = reader.get_data

        def get_data(*a, **k):
            calls.append(k.get("size"))
            return orig(*a, **k)

        reader.get_data = get_data
        try:
            return real(reader, wsi, lvl, ds, size, factor)
        finally:
            reader.get_data = orig

    monkeypatch.setattr(wsi_mod, "_STRIP_PIXELS", 3000)
    monkeypatch.setattr(wsi_mod, "_read_level_block_mean", spy)
    strips = tissue_mask(path, level=level, backend=backend, max_size=40)
    assert len(calls) > 3 and all(c is not None and c[0] < 302 // (level + 1) for c in calls), calls
    assert strips[1:] == whole[1:] and np.array_equal(strips[0], whole[0]) and 0.2 < whole[0].mean() < 0.8


def test_a_folder_given_as_a_slide_is_named_a_folder(tmp_path):
    """A folder in a list of slides (e.g. --input_slides "['/data/set1', '/data/set2']") failed as "slide
    '/data/set1' does not exist" although it does; the error now says it is a folder."""
    from monai_gmr.data.wsi import open_slide

    folder = tmp_path / "set1.svs"  # even with a slide's extension
    folder.mkdir()
    with pytest.raises(WSIError, match=r"set1.svs' is a folder, not a slide file") as e:
        open_slide(folder)
    assert e.value.slide == str(folder) and not isinstance(e.value, FileNotFoundError)


def test_greyscale_slide_tissue_mask_says_why_it_is_empty(tmp_path, caplog):
    """A greyscale slide read through OpenSlide (equal RGB channels) has no saturation, so its tissue mask is empty
    and slide inference failed with 'no patch ... has >= 25% tissue; lower min_tissue or patch_size' without a hint;
    a warning now names the slide and the cause. A coloured slide gives no such warning."""
    import tifffile

    grey = np.full((256, 256), 235, np.uint8)
    grey[64:192, 64:192] = 120
    tifffile.imwrite(tmp_path / "grey.tif", grey, tile=(128, 128), photometric="minisblack")
    with caplog.at_level("WARNING", logger="monai_gmr.data.wsi"):
        mask, _, _ = tissue_mask(tmp_path / "grey.tif", backend="openslide")
    assert not mask.any()
    msgs = [r.getMessage() for r in caplog.records if "greyscale" in r.getMessage()]
    assert len(msgs) == 1 and "grey.tif" in msgs[0]
    rgb = np.stack([grey, grey, grey], -1)
    rgb[64:192, 64:192] = (150, 60, 160)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, tile=(128, 128), photometric="rgb")
    caplog.clear()
    with caplog.at_level("WARNING", logger="monai_gmr.data.wsi"):
        assert tissue_mask(tmp_path / "rgb.tif", backend="openslide")[0].any()
    assert not [r for r in caplog.records if "greyscale" in r.getMessage()]


def test_a_flat_tiff_refused_by_openslide_names_the_tifffile_backend(tmp_path):
    """A flat (untiled) RGB TIFF, e.g. a region exported from a viewer, failed with openslide's bare "Unsupported or
    missing image file"; tifffile reads it, and the error now says so (--wsi_backend tifffile)."""
    import tifffile

    from monai_gmr.data.wsi import WSIError, open_slide

    pytest.importorskip("openslide")
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8))
    with pytest.raises(WSIError, match=r"flat\.tif.*openslide.*use --wsi_backend tifffile"):
        open_slide(path, "openslide")
    reader, wsi = open_slide(path, "tifffile")
    assert tuple(reader.get_size(wsi, 0)) == (64, 48)
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    with pytest.raises(WSIError) as e:  # not a TIFF tifffile reads either: no hint
        open_slide(tmp_path / "broken.tif", "openslide")
    assert "wsi_backend" not in str(e.value)
