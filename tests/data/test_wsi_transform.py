"""Tests of monai_gmr.data.wsi D4 transforms: transform_slide (lossless rotated/flipped copies of a slide),
transform_array and transform_box (maps and boxes under the same elements), bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_gmr.data import slide_info, transform_array, transform_box, transform_slide, write_pyramidal_tiff
from monai_gmr.data.wsi import SlideNotFoundError, WSIError, as_d4_element, open_slide
from monai_gmr.functional import d4_elements

H, W = 72, 40  # multiples of 4: the 3-level pyramid of a copy is the copy of the pyramid


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("d4")
    img = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    path = root / "tiny.tif"
    write_pyramidal_tiff(path, img, mpp=0.25, tile_size=16, n_levels=3, compression="deflate")
    return root, path, img


def _level(path, level: int, backend: str = "openslide") -> np.ndarray:
    reader, wsi = open_slide(path, backend)
    x, _ = reader.get_data(wsi, level=level)
    return np.moveaxis(np.asarray(x), 0, -1)  # (H, W, 3)


@pytest.mark.parametrize("g", d4_elements(), ids=lambda g: g.name)
def test_transform_slide_round_trip(tiny, g):
    root, path, img = tiny
    info = transform_slide(path, root / f"t_{g.name}.tif", g)
    back = transform_slide(root / f"t_{g.name}.tif", root / f"b_{g.name}.tif", g.inverse())
    # the copy holds exactly the transformed pixels (the same element as D4Element on a CHW tensor)
    expected = g(torch.from_numpy(img).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    for backend in ("openslide", "tifffile"):
        np.testing.assert_array_equal(_level(info["path"], 0, backend), expected)
        np.testing.assert_array_equal(_level(back["path"], 0, backend), img)  # inverse gives the original pixels
    swap = g.k % 2 == 1
    assert info["size0"] == ([W, H] if swap else [H, W]) and info["src_size0"] == [H, W]
    meta = slide_info(info["path"])  # OpenSlide (generic-tiff) opens it, MONAI's reader gives levels and MPP
    assert meta["level_count"] == 3 and meta["downsamples"] == [1.0, 2.0, 4.0]
    assert meta["mpp"][0] == pytest.approx((0.25, 0.25)) and meta["mpp"][2] == pytest.approx((1.0, 1.0))
    assert slide_info(info["path"], backend="tifffile")["sizes"] == meta["sizes"]
    # sides multiple of 4: the lower levels are the transformed lower levels of the source
    np.testing.assert_array_equal(_level(info["path"], 2), transform_array(_level(path, 2), g, channels_last=True))


def test_transform_slide_levels_follow_the_source(tiny, tmp_path):
    root, path, img = tiny
    one = tmp_path / "one.tif"
    write_pyramidal_tiff(one, img, mpp=0.5, tile_size=16, n_levels=1, compression="deflate")
    assert len(transform_slide(one, tmp_path / "o.tif", "rot90")["levels"]) == 1  # 1 level stays 1 level
    assert len(transform_slide(path, tmp_path / "p.tif", 0, n_levels=2)["levels"]) == 2
    assert transform_slide(path, tmp_path / "q.tif", 0, mpp=0.7)["mpp"] == pytest.approx(0.7)


def test_transform_array_and_box_match_the_element():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 9, 5)).astype(np.float32)
    m = rng.random((9, 5)) > 0.5
    idx = np.arange(9 * 5).reshape(9, 5)
    for i, g in enumerate(d4_elements()):
        np.testing.assert_array_equal(transform_array(a, g), g(torch.from_numpy(a)).numpy())
        for el in (g, g.name, i):  # element, name and index are the same element
            np.testing.assert_array_equal(transform_array(transform_array(a, el), el, inverse=True), a)
        tm = transform_array(m, g)
        assert tm.dtype == bool and tm.shape == ((5, 9) if g.k % 2 else (9, 5))
        np.testing.assert_array_equal(transform_array(tm, g, inverse=True), m)
        t = transform_array(idx, g)
        y, x = transform_box((2, 1), (4, 3), (9, 5), g)
        h, w = (3, 4) if g.k % 2 else (4, 3)
        assert sorted(t[y : y + h, x : x + w].ravel()) == sorted(idx[2:6, 1:4].ravel()), g.name
        assert transform_box((y, x), (h, w), t.shape, g, inverse=True) == [2, 1]
    # an orientation-dependent array really changes (the test can fail)
    assert not np.array_equal(transform_array(idx, "rot0_flip"), idx)


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "uint64", ">f4", ">u2"])
def test_transform_array_unsigned_and_byte_swapped(dtype):
    """uint16/32/64 arrays (label masks) and non-native byte orders: torch cannot flip the former
    (NotImplementedError "flip_cpu") nor wrap the latter (ValueError); they are permuted bit for bit."""
    a = (np.random.default_rng(2).integers(0, 60000, (2, 9, 5)) + 3000).astype(dtype)
    a[0, 0, 0] = np.iinfo(np.uint16).max if a.dtype.kind == "u" else -1.5  # a value above the signed range
    for g in d4_elements():
        t = transform_array(a, g)
        assert t.dtype == a.dtype.newbyteorder("=")
        np.testing.assert_array_equal(t, g(torch.from_numpy(a.astype(np.float64))).numpy())
        np.testing.assert_array_equal(transform_array(t, g, inverse=True), a)


def test_transform_bad_inputs(tiny, tmp_path):
    root, path, img = tiny
    with pytest.raises(SlideNotFoundError, match="missing.tif"):
        transform_slide(tmp_path / "missing.tif", tmp_path / "x.tif", 0)
    with pytest.raises(ValueError, match="element"):
        transform_slide(path, tmp_path / "x.tif", "rot45")
    for bad in (8, -1, "rot45", 1.0, True, None):
        with pytest.raises(ValueError, match="element"):
            as_d4_element(bad)
    with pytest.raises(WSIError, match=r"tiny\.tif.*max_pixels"):
        transform_slide(path, tmp_path / "x.tif", 1, max_pixels=H * W - 1)
    assert not (tmp_path / "x.tif").exists()
    with pytest.raises(ValueError, match="dst"):
        transform_slide(path, path, 1)
    with pytest.raises(ValueError, match="array"):
        transform_array(np.zeros(3), 1)
