"""Tests of the synthetic whole-slide generator: OpenSlide / MONAI WSIReader compatibility, masks, patches."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from monai_gmr.data import (
    ensure_wsi_dataset,
    make_synthetic_wsi,
    patch_csv_to_datalist,
    render_synthetic_slide,
    write_pyramidal_tiff,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny, overhead-bound tensors

SMALL = {"n_slides": 2, "size": 1024, "seed": 0, "patches_per_slide": 16, "patch_size": 64}


@pytest.fixture(scope="module")
def wsi_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("wsi")
    return out, make_synthetic_wsi(out, **SMALL)


def test_pyramid_levels_are_rounded_2x2_means(tmp_path):
    """Each pyramid level is the 2 x 2 mean of the level above, *rounded* (values 0, 1, 1, 1 -> 1, not 0):
    truncating made every level darker than the one above, by up to 3/4 of a grey level per level."""
    import tifffile

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 96, 3)).astype(np.uint8)
    write_pyramidal_tiff(tmp_path / "r.tif", img, n_levels=3, tile_size=32, compression="deflate")
    with tifffile.TiffFile(tmp_path / "r.tif") as tf:
        levels = [lv.asarray() for lv in tf.series[0].levels]
    assert [lv.shape for lv in levels] == [(64, 96, 3), (32, 48, 3), (16, 24, 3)]
    for hi, lo in zip(levels, levels[1:]):
        mean = hi.reshape(lo.shape[0], 2, lo.shape[1], 2, 3).astype(np.float64).mean((1, 3))
        assert np.array_equal(lo, np.rint(mean).astype(np.uint8))


def test_openslide_opens_generic_tiff_with_levels_and_mpp(wsi_set):
    import openslide

    out, res = wsi_set
    slide = openslide.OpenSlide(str(out / "slides" / "slide_000.tiff"))
    assert slide.properties["openslide.vendor"] == "generic-tiff"
    assert slide.level_count == 3  # 1024, 512, 256 (>= 3 levels)
    assert slide.level_dimensions == ((1024, 1024), (512, 512), (256, 256))
    assert slide.level_downsamples == (1.0, 2.0, 4.0)
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.5)
    slide.close()
    assert res["slides"][0]["level_sizes"] == [[1024, 1024], [512, 512], [256, 256]]


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_monai_wsireader_backends(wsi_set, backend):
    from monai.data import WSIReader

    out, _ = wsi_set
    reader = WSIReader(backend=backend)
    wsi = reader.read(str(out / "slides" / "slide_001.tiff"))
    assert reader.get_level_count(wsi) == 3
    assert [tuple(reader.get_size(wsi, i)) for i in range(3)] == [(1024, 1024), (512, 512), (256, 256)]
    for i, ds in enumerate((1.0, 2.0, 4.0)):
        assert reader.get_downsample_ratio(wsi, i) == pytest.approx(ds)
        assert reader.get_mpp(wsi, i) == pytest.approx((0.5 * ds, 0.5 * ds))
    patch, meta = reader.get_data(wsi, location=(256, 512), size=(32, 48), level=1)
    assert patch.shape == (3, 32, 48) and patch.dtype == np.uint8


def test_backends_agree_and_tissue_on_bright_background(wsi_set):
    from monai.data import WSIReader

    out, res = wsi_set
    path = str(out / "slides" / "slide_000.tiff")
    imgs = []
    for backend in ("openslide", "tifffile"):
        r = WSIReader(backend=backend)
        imgs.append(np.asarray(r.get_data(r.read(path), level=2)[0]).astype(int))
    assert np.abs(imgs[0] - imgs[1]).max() <= 2  # same decoded pixels (JPEG decoders may differ by rounding)
    low = imgs[0]  # (3, 256, 256) at downsample 4 = the mask level
    tissue = np.load(out / "masks" / "slide_000_tissue.npy").astype(bool)
    tumor = np.load(out / "masks" / "slide_000_tumor.npy").astype(bool)
    meta = res["slides"][0]
    assert tissue.shape == tumor.shape == (256, 256) and meta["mask_level"] == 2 and meta["mask_downsample"] == 4
    assert (tumor <= tissue).all() and 0.2 < tissue.mean() < 0.9 and tumor.sum() > 0.15 * tissue.sum()
    lum = low.mean(0)
    assert lum[~tissue].mean() > 225  # bright glass
    assert lum[tumor].mean() < lum[tissue & ~tumor].mean() - 15  # dense dark nuclei in tumour


def test_patches_csv_datalist_and_labels(wsi_set):
    out, res = wsi_set
    rows = list(csv.DictReader(open(out / "patches.csv")))
    assert len(rows) == 32 and {r["label"] for r in rows} == {"0", "1"}
    assert sum(r["label"] == "1" for r in rows) == 16  # seeded 50/50 balance
    assert set(rows[0]) == {"slide", "x", "y", "level", "size", "label", "split"}
    dl = json.loads((out / "datalist.json").read_text())
    items = dl["training"] + dl["validation"] + dl["test"]
    assert len(items) == 32 and dl["center_location"] is True
    masks = {m["image"]: np.load(out / m["tumor_mask"]).astype(bool) for m in dl["slides"]}
    tissue = {m["image"]: np.load(out / m["tissue_mask"]).astype(bool) for m in dl["slides"]}
    for it in items:
        assert it["image"].startswith("slides/") and it["size"] == [64, 64] and it["level"] == 0
        y, x = it["location"]
        ds = 4
        # the whole 64x64 footprint around the centre is tumour (label 1) or tumour-free tissue (label 0)
        ys, xs = slice((y - 32) // ds, (y + 32 - 1) // ds + 1), slice((x - 32) // ds, (x + 32 - 1) // ds + 1)
        if it["label"] == 1:
            assert masks[it["image"]][ys, xs].all()
        else:
            assert not masks[it["image"]][ys, xs].any() and tissue[it["image"]][ys, xs].mean() >= 0.8
    # CSV (x, y) = datalist location [y, x]
    csv_locs = sorted((int(r["y"]), int(r["x"])) for r in rows)
    assert csv_locs == sorted(tuple(i["location"]) for i in items)


# MONAI's own openslide reader hands PatchWSIDataset a read-only array (the package's reader returns writable copies)
@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_patch_wsi_dataset_reads_centred_patches(wsi_set):
    """MONAI 1.6.1 PatchWSIDataset: location = [y, x] level-0 centre with center_location=True (its default)."""
    import openslide
    from monai.data import PatchWSIDataset, load_decathlon_datalist

    out, _ = wsi_set
    items = load_decathlon_datalist(str(out / "datalist.json"), False, "training", base_dir=str(out))
    ds = PatchWSIDataset(items[:3], reader="openslide")  # size/level come from the items
    slide = openslide.OpenSlide(items[0]["image"])
    for it, d in zip(items[:3], ds):
        assert d["image"].shape == (3, 64, 64) and float(d["label"]) == it["label"]
        y, x = it["location"]
        ref = np.asarray(openslide.OpenSlide(it["image"]).read_region((x - 32, y - 32), 0, (64, 64)).convert("RGB"))
        assert np.array_equal(np.asarray(d["image"]).transpose(1, 2, 0).astype(np.uint8), ref)
    slide.close()


def test_deterministic_bytes_and_seed(tmp_path):
    kw = {"n_slides": 1, "size": 512, "patches_per_slide": 8, "patch_size": 32}
    a = make_synthetic_wsi(tmp_path / "a", seed=3, **kw)
    make_synthetic_wsi(tmp_path / "b", seed=3, **kw)
    make_synthetic_wsi(tmp_path / "c", seed=4, **kw)
    files = [p.relative_to(tmp_path / "a") for p in sorted((tmp_path / "a").rglob("*")) if p.is_file()]
    assert len(files) >= 8
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a/slides/slide_000.tiff").read_bytes() != (tmp_path / "c/slides/slide_000.tiff").read_bytes()
    assert Path(a["datalist_path"]).is_file() and a["slides"][0]["mask_level"] == 2  # 512, 256, 128


def test_deflate_is_lossless(tmp_path):
    import openslide

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (512, 384, 3), dtype=np.uint8)
    sizes = write_pyramidal_tiff(tmp_path / "d.tiff", img, mpp=0.25, compression="deflate", n_levels=3, tile_size=128)
    assert sizes == [(512, 384), (256, 192), (128, 96)]
    s = openslide.OpenSlide(str(tmp_path / "d.tiff"))
    assert s.properties["openslide.vendor"] == "generic-tiff" and float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    got = np.asarray(s.read_region((0, 0), 0, (384, 512)).convert("RGB"))
    assert np.array_equal(got, img)
    with pytest.raises(ValueError, match="Aperio"):
        write_pyramidal_tiff(tmp_path / "e.tiff", img, description="Aperio fake")


def test_patches_at_level_1_are_labelled_by_the_footprint_the_bundle_reads(tmp_path):
    """location = level-0 patch centre at every level: the bundle reads the level-1 patch (32 px = 64 level-0 px)
    from ``to_top_left`` (location - 64 // 2), and every label holds for that footprint."""
    from monai_gmr.workflows.wsi import to_top_left

    res = make_synthetic_wsi(tmp_path, n_slides=1, size=1024, seed=0, patches_per_slide=200, patch_size=32,
                             patch_level=1)  # fmt: skip
    tumor = np.load(tmp_path / res["slides"][0]["tumor_mask"]).astype(bool)  # downsample 4
    items = res["training"] + res["validation"] + res["test"]
    assert len(items) == 200 and all(it["level"] == 1 and it["size"] == [32, 32] for it in items)
    tops = to_top_left(items, 32, 1)
    bad = []
    for it, top in zip(items, tops):
        ty, tx = top["location"]
        assert [ty + 32, tx + 32] == it["location"]  # the level-0 centre of the 64 x 64 level-0 footprint
        box = tumor[ty // 4 : (ty + 63) // 4 + 1, tx // 4 : (tx + 63) // 4 + 1]
        if not (box.all() if it["label"] == 1 else not box.any()):
            bad.append(it["location"])
    assert not bad, f"{len(bad)} of {len(items)} labels disagree with the tumour mask under the read patch"


def test_level_1_datasets_of_the_old_location_convention_are_refused(tmp_path):
    """A synthetic level-1 dataset written under the old convention (location - size // 2) has wrong labels for the
    patches read: it is refused with a message saying to regenerate; level-0 and current datasets are used."""
    import json

    from monai_gmr.data import ensure_wsi_dataset

    for level in (0, 1):
        root = tmp_path / f"l{level}"
        make_synthetic_wsi(root, n_slides=1, size=512, seed=0, patches_per_slide=6, patch_size=32, patch_level=level)
        assert ensure_wsi_dataset(root).is_file()
        meta = json.loads((root / "slides.json").read_text())
        meta["location"] = "[y, x] level-0, PatchWSIDataset center_location=True convention (top-left = location - size // 2)"
        (root / "slides.json").write_text(json.dumps(meta))
        if level == 0:
            assert ensure_wsi_dataset(root).is_file()
        else:
            with pytest.raises(ValueError, match="regenerate"):
                ensure_wsi_dataset(root)


def test_slide_split_with_three_slides(tmp_path):
    res = make_synthetic_wsi(tmp_path, n_slides=3, size=512, seed=1, patches_per_slide=6, patch_size=32)
    by_split = {k: {i["slide"] for i in res[k]} for k in ("training", "validation", "test")}
    assert all(len(v) == 1 for v in by_split.values())  # one slide each, no slide in two splits
    assert set().union(*by_split.values()) == {"slide_000", "slide_001", "slide_002"}


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="divisible"):
        make_synthetic_wsi(tmp_path, n_slides=1, size=1002)
    with pytest.raises(ValueError, match="n_slides"):
        make_synthetic_wsi(tmp_path, n_slides=0)
    with pytest.raises(ValueError, match="patch_level"):
        make_synthetic_wsi(tmp_path, n_slides=1, size=512, patch_level=5)
    with pytest.raises(ValueError, match="size must be an int or"):  # was silently (512, 512)
        make_synthetic_wsi(tmp_path, n_slides=1, size=(512, 512, 3))
    # numpy's errors named no argument ("Quantiles must be in the range [0, 1]", "high - low < 0", "high <= 0")
    for kwargs, name in (({"tissue_fraction": 1.5}, "tissue_fraction"), ({"tumor_fraction": (0.5, 0.2)}, "tumor_fraction"),
                         ({"tumor_density": -1.0}, "tumor_density"), ({"normal_axes": (5.0, 3.0)}, "normal_axes"),
                         ({"n_stamps": 0}, "n_stamps")):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            render_synthetic_slide(256, 0, **kwargs)


def test_ensure_wsi_dataset(tmp_path, caplog):
    root = tmp_path / "slides_dir"
    with pytest.raises(FileNotFoundError, match=str(root)):
        ensure_wsi_dataset(root, generate=False)
    assert not root.exists()
    kw = {"n_slides": 1, "size": 512, "patches_per_slide": 4, "patch_size": 32}
    with caplog.at_level(logging.INFO, logger="monai_gmr.data.synthetic_wsi"):
        p = ensure_wsi_dataset(root, seed=0, **kw)
    assert f"dataset_dir {root} holds no slides: generating 1 synthetic slides" in caplog.text
    assert p == root / "datalist.json" and (root / "slides" / "slide_000.tiff").is_file()
    assert ensure_wsi_dataset(root, generate=False) == p
    # a dataset with only a patch CSV gets a datalist built from it
    p.unlink()
    p2 = ensure_wsi_dataset(root, generate=False)
    dl = json.loads(p2.read_text())
    assert sum(len(dl[k]) for k in ("training", "validation", "test")) == 4
    # slides but neither datalist nor CSV: clear error, nothing generated
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.svs").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="patches.csv"):
        ensure_wsi_dataset(other)


def test_relative_dataset_dir_with_only_a_patch_csv(tmp_path, monkeypatch):
    """``ensure_wsi_dataset("rel")`` on slides/ + patches.csv: slide paths relative to the datalist, not doubled."""
    from monai_gmr.data import read_datalist

    kw = {"n_slides": 1, "size": 512, "patches_per_slide": 4, "patch_size": 32}
    make_synthetic_wsi(tmp_path / "rel" / "ds", seed=0, **kw)
    (tmp_path / "rel" / "ds" / "datalist.json").unlink()
    monkeypatch.chdir(tmp_path)
    p = ensure_wsi_dataset(Path("rel") / "ds", generate=False)
    dl = json.loads((tmp_path / "rel" / "ds" / "datalist.json").read_text())
    assert {it["image"] for k in ("training", "validation", "test") for it in dl[k]} == {"slides/slide_000.tiff"}
    monkeypatch.chdir("/")
    items = read_datalist(tmp_path / p, "training")
    assert items and all(Path(it["image"]).is_file() for it in items)


def test_patch_csv_to_datalist(tmp_path):
    (tmp_path / "s.tiff").write_bytes(b"")
    (tmp_path / "p.csv").write_text("slide,x,y,label\ns.tiff,100,50,1\ns.tiff,10,20,0\ns.tiff,30,40,0\n")
    p = patch_csv_to_datalist(tmp_path / "p.csv", patch_size=16, level=0, val_frac=0.0, test_frac=0.0)
    dl = json.loads(p.read_text())
    assert dl["training"][0] == {"image": "s.tiff", "location": [50, 100], "size": [16, 16], "level": 0, "label": 1}
    p2 = patch_csv_to_datalist(tmp_path / "p.csv", tmp_path / "tl.json", patch_size=16, center=False, val_frac=0.0, test_frac=0.0)
    assert json.loads(p2.read_text())["training"][0]["location"] == [58, 108]  # top-left -> centre
    (tmp_path / "bad.csv").write_text("slide,x,label\ns.tiff,1,0\n")
    with pytest.raises(ValueError, match="bad.csv"):
        patch_csv_to_datalist(tmp_path / "bad.csv")
    (tmp_path / "nosize.csv").write_text("slide,x,y,label\ns.tiff,1,2,0\n")
    with pytest.raises(ValueError, match="row 2"):
        patch_csv_to_datalist(tmp_path / "nosize.csv")


def test_patch_csv_rows_without_a_split_are_split_stratified_by_label(tmp_path):
    """Rows without a ``split`` are split per label (5 tumour and 15 normal patches at 0.2 / 0.2: one tumour and three
    normal patches in validation and in test, for every seed); a split of all rows together left a label's share
    in validation/test to chance (or out of it)."""
    (tmp_path / "s.tiff").write_bytes(b"")
    rows = "".join(f"s.tiff,{10 * i},{7 * i},{int(i < 5)}\n" for i in range(20))
    (tmp_path / "p.csv").write_text("slide,x,y,label\n" + rows)
    for seed in range(6):
        p = patch_csv_to_datalist(tmp_path / "p.csv", tmp_path / f"d{seed}.json", patch_size=16, seed=seed)
        dl = json.loads(p.read_text())
        for split in ("validation", "test"):
            assert sorted(i["label"] for i in dl[split]) == [0, 0, 0, 1], (seed, split)
        assert sorted(i["label"] for i in dl["training"]) == [0] * 9 + [1] * 3


def test_refuses_an_out_dir_that_holds_slides(tmp_path):
    """Fewer slides written over an earlier dataset left the old slides where slide inference looks: now refused,
    before anything is written."""
    kw = dict(n_slides=1, size=256, n_levels=3, patches_per_slide=4, patch_size=16)
    make_synthetic_wsi(tmp_path / "a", seed=0, **kw)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "a").rglob("*"))
    with pytest.raises(FileExistsError, match="already holds slides"):
        make_synthetic_wsi(tmp_path / "a", seed=1, **kw)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "a").rglob("*")) == before


def test_ensure_wsi_dataset_with_another_datalist_name(tmp_path):
    """``datalist_name="patches.json"``: the generator wrote datalist.json and the returned path did not exist."""
    root = tmp_path / "slides_dir"
    kw = {"n_slides": 1, "size": 512, "patches_per_slide": 4, "patch_size": 32}
    p = ensure_wsi_dataset(root, seed=0, datalist_name="patches.json", **kw)
    assert p == root / "patches.json" and p.is_file() and not (root / "datalist.json").exists()
    assert sum(len(json.loads(p.read_text())[k]) for k in ("training", "validation", "test")) == 4
    assert ensure_wsi_dataset(root, generate=False, datalist_name="patches.json") == p


def test_patch_csv_with_bom_and_spaces(tmp_path):
    """A patch CSV saved by Excel starts with a byte-order mark ("needs columns [...], has ['\\ufeffslide', ...]") and
    ``slide, x, y, label`` with spaces kept ' x' and a slide path starting with a space."""
    (tmp_path / "s.tiff").write_bytes(b"")
    (tmp_path / "p.csv").write_text("\ufeffslide, x, y, label\ns.tiff, 100, 50, 1\n", "utf-8")
    p = patch_csv_to_datalist(tmp_path / "p.csv", patch_size=16, level=0, val_frac=0.0, test_frac=0.0)
    assert json.loads(p.read_text())["training"] == [
        {"image": "s.tiff", "location": [50, 100], "size": [16, 16], "level": 0, "label": 1}
    ]
    (tmp_path / "empty.csv").write_text("slide,x,y,label\n,100,50,1\n")  # was an item whose image is the CSV folder
    with pytest.raises(ValueError, match=r"empty\.csv.*row 2.*slide"):
        patch_csv_to_datalist(tmp_path / "empty.csv", patch_size=16)


def test_patch_csv_not_utf8_names_the_file(tmp_path):
    """A cp1252 patch CSV raised a bare UnicodeDecodeError naming no file."""
    (tmp_path / "p.csv").write_bytes("slide,x,y,label\nsé.tiff,1,2,0\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"p\.csv.*UTF-8"):
        patch_csv_to_datalist(tmp_path / "p.csv", patch_size=16)


def test_unknown_synthetic_slide_setting_is_named_before_anything_is_written(tmp_path):
    """A typo in the WSI bundle's ``--synthetic "{'n_slide': 4}"`` reached render_synthetic_slide as a keyword and
    stopped with its TypeError; now the setting is named (with the known ones) before any file is written."""
    from monai_gmr.data import make_synthetic_wsi

    with pytest.raises(ValueError, match="unknown synthetic slide setting\\(s\\) n_slide; known: n_slides"):
        make_synthetic_wsi(tmp_path / "slides", n_slide=4, size=512)
    assert list(tmp_path.iterdir()) == []


def test_patch_csv_patch_listed_twice(tmp_path, caplog):
    """A patch listed twice was kept twice: with two labels the datalist held contradictory targets without a word,
    with one label the stratified split could put it in both training and test."""
    (tmp_path / "s.tiff").write_bytes(b"")
    (tmp_path / "p.csv").write_text("slide,x,y,label\ns.tiff,100,50,1\ns.tiff,10,20,0\n./s.tiff,100,50,0\n")
    with pytest.raises(ValueError, match=r"p\.csv' row 4: the patch of row 2 .*label 0 instead of 1"):
        patch_csv_to_datalist(tmp_path / "p.csv", patch_size=16)
    (tmp_path / "p.csv").write_text("slide,x,y,label\ns.tiff,100,50,1\ns.tiff,10,20,0\n./s.tiff,100.0,50,1\n")
    with caplog.at_level("WARNING", logger="monai_gmr.data.synthetic_wsi"):
        p = patch_csv_to_datalist(tmp_path / "p.csv", patch_size=16, val_frac=0.0, test_frac=0.0)
    assert [(it["location"], it["label"]) for it in json.loads(p.read_text())["training"]] == [([50, 100], 1), ([20, 10], 0)]
    assert "row 4: the patch of row 2 again; kept once" in caplog.text


def test_patch_csv_float_formatted_labels(tmp_path):
    """``label`` written as ``1.0`` (pandas) stopped with "invalid literal for int() with base 10: '1.0'" while ``x``
    and ``y`` accepted it; a class name did too, without naming the column."""
    (tmp_path / "s.tiff").write_bytes(b"")
    (tmp_path / "p.csv").write_text("slide,x,y,label\ns.tiff,100.0,50,1.0\ns.tiff,10,20,0.0\n")
    p = patch_csv_to_datalist(tmp_path / "p.csv", patch_size=16, val_frac=0.0, test_frac=0.0)
    assert [it["label"] for it in json.loads(p.read_text())["training"]] == [1, 0]
    for bad in ("0.5", "tumor"):
        (tmp_path / "p.csv").write_text(f"slide,x,y,label\ns.tiff,100,50,{bad}\n")
        with pytest.raises(ValueError, match=rf"row 2: label '{bad}' \(column 'label'\) is not an integer class index"):
            patch_csv_to_datalist(tmp_path / "p.csv", patch_size=16)


def test_patch_csv_with_a_header_only(tmp_path):
    """A patch CSV holding its header only was refused with "needs columns [...], has []", though it has them."""
    (tmp_path / "p.csv").write_text("slide,x,y,label\n")
    with pytest.raises(ValueError, match=r"p\.csv' has no rows"):
        patch_csv_to_datalist(tmp_path / "p.csv", patch_size=16)


@pytest.mark.parametrize("kwargs, name", [
    ({"n_slides": 2.5}, "n_slides"),  # wrote 2 slides, silently
    ({"n_slides": True}, "n_slides"),
    ({"seed": None}, "seed"),  # int()'s TypeError
    ({"seed": -1}, "seed"),  # NumPy's "expected non-negative integer"
    ({"split_seed": -2}, "split_seed"),  # NumPy's error after every slide was written
    ({"patch_size": 0}, "patch_size"),  # items of size 0, silently
    ({"patch_size": -4}, "patch_size"),
    ({"patch_size": 300}, "patch_size"),  # no patch fits: "cannot split an empty list" after the slides
    ({"patches_per_slide": 0}, "patches_per_slide"),  # "cannot split an empty list" after the slides
    ({"patch_level": 1.5}, "patch_level"),  # sampled with a downsample of 2**1.5, items said level 1
    ({"n_levels": 2.5}, "n_levels"),
    ({"mpp": 0}, "mpp"),  # ZeroDivisionError in the TIFF writer
    ({"tile_size": 100}, "tile_size"),  # refused by the TIFF writer only after the first slide was rendered
    ({"val_frac": 1.5}, "val_frac"),  # refused only after every slide was written
])  # fmt: skip
def test_bad_sizes_counts_and_seeds_are_refused_by_name_before_anything_is_written(tmp_path, kwargs, name):
    kw = {"n_slides": 1, "size": 256, "patches_per_slide": 4, "patch_size": 16, **kwargs}
    with pytest.raises(ValueError, match=f"^{name}"):
        make_synthetic_wsi(tmp_path / "o", **kw)
    assert not (tmp_path / "o").exists() or not any(p.is_file() for p in (tmp_path / "o").rglob("*"))


def test_ensure_wsi_dataset_logs_text_settings(tmp_path, caplog):
    """``--synthetic#seed 3`` passes text: the "generating" line used %d and logging printed a "--- Logging error
    ---" traceback instead of the message."""
    with caplog.at_level(logging.INFO, logger="monai_gmr.data.synthetic_wsi"):
        ensure_wsi_dataset(tmp_path / "ds", n_slides="1", size=256, seed="3", patches_per_slide=4, patch_size=16)
    assert any("generating 1 synthetic slides" in m and "seed 3" in m for m in caplog.messages)


@pytest.mark.parametrize("kwargs, name", [
    ({"fiber_angle": float("nan")}, "fiber_angle"),  # an all-black slide, silently
    ({"mask_downsample": 2.5}, "mask_downsample"),  # read as 2, silently
    ({"n_stamps": 2.5}, "n_stamps"),  # "'float' object cannot be interpreted as an integer"
    ({"tumor_fraction": 0.3}, "tumor_fraction"),  # "'float' object is not subscriptable"
])  # fmt: skip
def test_render_slide_values_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must"):
        render_synthetic_slide(256, 0, **{"mask_downsample": 4, **kwargs})


def _gradient_energy(rgb: np.ndarray, tissue: np.ndarray, ds: int) -> tuple[float, float]:
    """``(Jyy / Jxx, Jxy / sqrt(Jxx Jyy))`` of the darkness structure tensor over the tissue."""
    g = 255.0 - rgb.astype(np.float64).mean(-1)
    gy, gx = np.gradient(g)
    m = np.repeat(np.repeat(tissue, ds, 0), ds, 1)
    jxx, jyy, jxy = (gx * gx)[m].sum(), (gy * gy)[m].sum(), (gx * gy)[m].sum()
    return jyy / jxx, jxy / math.sqrt(jxx * jyy)


def test_slide_fibres_run_along_fiber_angle_and_nuclei_have_no_orientation():
    """The documented orientation cue: fibres run along ``fiber_angle`` (counter-clockwise on screen from the x axis,
    as in the tile generator), and the nuclei carry no dominant direction (a test that fails if either changes)."""
    kw = {"mask_downsample": 8, "tumor_density": 0.0, "normal_density": 0.0, "fiber_density": 1 / 800,
          "fiber_angle_jitter": 5.0}  # fmt: skip
    energy = {}
    for a in (0.0, 90.0, 45.0, -45.0):
        rgb, _, tissue, info = render_synthetic_slide(512, 0, fiber_angle=a, **kw)
        assert info["n_fibers"] > 50
        energy[a] = _gradient_energy(rgb, tissue, 8)
    assert energy[0.0][0] > 5 and energy[90.0][0] < 0.2  # horizontal streaks: vertical gradients, and vice versa
    # 45 degrees counter-clockwise on screen (rows grow downwards): gradients along (x, y_down) = (1, 1)
    assert energy[45.0][1] > 0.5 and energy[-45.0][1] < -0.5
    rgb, _, tissue, _ = render_synthetic_slide(512, 0, mask_downsample=8, fiber_density=0.0, tumor_density=1 / 200)
    ratio, corr = _gradient_energy(rgb, tissue, 8)
    assert 0.8 < ratio < 1.25 and abs(corr) < 0.1


def test_a_crash_half_way_leaves_no_datalist(tmp_path, monkeypatch):
    """patches.csv, slides.json and the datalist are written after every slide: an error while writing the second
    slide leaves none of them (nothing naming a missing slide)."""
    import monai_gmr.data.synthetic_wsi as sw

    real, calls = sw.write_pyramidal_tiff, []

    def failing(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(sw, "write_pyramidal_tiff", failing)
    with pytest.raises(OSError, match="disk full"):
        make_synthetic_wsi(tmp_path / "o", n_slides=2, size=256, patches_per_slide=4, patch_size=16)
    assert not any((tmp_path / "o" / n).exists() for n in ("datalist.json", "patches.csv", "slides.json"))


def test_mask_files_have_the_documented_dtype_values_and_level(tmp_path):
    """masks/<name>_{tumor,tissue}.npy: 0/1 uint8 at the lowest pyramid level; the .png twins: 0/255 for viewing;
    datalist slide paths relative to its folder, the returned items absolute."""
    from PIL import Image

    r = make_synthetic_wsi(tmp_path, n_slides=1, size=256, n_levels=3, patches_per_slide=4, patch_size=16, seed=1)
    meta = r["slides"][0]
    assert meta["mask_level"] == 2 and meta["mask_downsample"] == 4
    for kind in ("tumor", "tissue"):
        m = np.load(tmp_path / "masks" / f"slide_000_{kind}.npy")
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1} and m.shape == tuple(meta["level_sizes"][2])
        png = np.asarray(Image.open(tmp_path / "masks" / f"slide_000_{kind}.png"))
        assert png.dtype == np.uint8 and np.array_equal(png, m * 255)
    dl = json.loads((tmp_path / "datalist.json").read_text())
    items = dl["training"] + dl["validation"] + dl["test"]
    assert items and all(it["image"] == "slides/slide_000.tiff" for it in items)
    assert all(Path(it["image"]).is_absolute() for k in ("training", "validation", "test") for it in r[k])


def test_patch_csv_split_patch_by_patch_warns_about_slides_on_both_sides(tmp_path, caplog):
    """Rows without a 'split' are split patch by patch: patches of one slide landed in training and test without a
    word (test metrics on slides seen in training). The slides concerned are now named in a warning; a per-slide
    split column gives none."""
    rows = ["slide,x,y,label"] + [f"s{s}.tif,{100 + 10 * i},{200 + 10 * i},{i % 2}"
                                  for s in range(3) for i in range(10)]  # fmt: skip
    (tmp_path / "p.csv").write_text("\n".join(rows) + "\n")
    with caplog.at_level("WARNING", logger="monai_gmr.data.synthetic_wsi"):
        patch_csv_to_datalist(tmp_path / "p.csv", patch_size=16)
    msgs = [r.getMessage() for r in caplog.records if "patch by patch" in r.getMessage()]
    assert len(msgs) == 1 and "3 slide(s) have patches both in training and in validation/test" in msgs[0]
    split = {0: "training", 1: "validation", 2: "test"}
    rows = ["slide,x,y,label,split"] + [f"s{s}.tif,{100 + 10 * i},{200 + 10 * i},{i % 2},{split[s]}"
                                        for s in range(3) for i in range(10)]  # fmt: skip
    (tmp_path / "q.csv").write_text("\n".join(rows) + "\n")
    caplog.clear()
    with caplog.at_level("WARNING", logger="monai_gmr.data.synthetic_wsi"):
        patch_csv_to_datalist(tmp_path / "q.csv", tmp_path / "q.json", patch_size=16)
    assert not [r for r in caplog.records if "patch by patch" in r.getMessage()]


def test_unknown_synthetic_slide_setting_is_refused_also_when_the_data_exist(tmp_path):
    """``--synthetic#n_slidez 4`` (a misspelt key) with a dataset_dir that holds a datalist was silently ignored
    (the datalist was returned before the names were looked at); it is now refused naming the closest key."""
    from monai_gmr.data import ensure_wsi_dataset

    root = tmp_path / "data"
    root.mkdir()
    (root / "datalist.json").write_text('{"training": []}')
    with pytest.raises(ValueError, match="n_slidez.*did you mean 'n_slides'"):
        ensure_wsi_dataset(root, n_slidez=4, size=512)


def test_tumour_patch_count_is_rounded_and_normal_patches_keep_a_mask_pixel_from_tumour(tmp_path):
    """``tumor_patch_fraction`` of ``patches_per_slide`` is rounded (0.6 of 6 is 4 tumour patches, truncated it was 3),
    and a normal patch lies at least one mask pixel away from tumour (its footprint on the mask grid touches no
    tumour pixel nor a neighbour of one; without the dilation 3 of 32 normal patches touched the tumour's rim)."""
    from scipy import ndimage

    r = make_synthetic_wsi(tmp_path / "a", n_slides=1, size=256, patches_per_slide=6, patch_size=16, seed=0,
                           tumor_patch_fraction=0.6, compression="deflate")  # fmt: skip
    assert (r["slides"][0]["n_tumor_patches"], r["slides"][0]["n_normal_patches"]) == (4, 2)
    r = make_synthetic_wsi(tmp_path / "b", n_slides=1, size=512, n_levels=3, patches_per_slide=64, patch_size=16,
                           seed=0, compression="deflate")  # fmt: skip
    meta = r["slides"][0]
    ds = meta["mask_downsample"]
    near = ndimage.binary_dilation(np.load(tmp_path / "b" / meta["tumor_mask"]).astype(bool))
    normal = [it for k in ("training", "validation", "test") for it in r[k] if it["label"] == 0]
    assert len(normal) == meta["n_normal_patches"] == 32
    for it in normal:
        (y, x), s = it["location"], it["size"][0]
        top, left = y - s // 2, x - s // 2  # level 0 = patch level here
        assert not near[top // ds : (top + s - 1) // ds + 1, left // ds : (left + s - 1) // ds + 1].any(), it


def test_a_patch_larger_than_the_slide_at_its_level_is_refused_before_anything_is_written(tmp_path):
    """The patch's level-0 footprint (``patch_size * 2**patch_level``) must fit the slide: 96 px at level 2 covers 384
    level-0 px, more than a 256 px slide, and is refused naming both settings (``patch_size`` alone fits)."""
    with pytest.raises(ValueError, match=r"patch_size=96 at patch_level=2 covers 384 level-0 pixels"):
        make_synthetic_wsi(tmp_path / "o", n_slides=1, size=256, patch_size=96, patch_level=2, patches_per_slide=4)
    assert not (tmp_path / "o").exists()


def test_patch_csv_the_same_place_at_two_levels_is_two_patches(tmp_path):
    """A repeated patch is one with the same slide, location, size *and level*: the same centre read at levels 0 and
    1 is two different patches (the level-1 one covers four times the tissue) and may carry different labels."""
    (tmp_path / "s.tiff").write_bytes(b"")
    (tmp_path / "p.csv").write_text("slide,x,y,level,size,label\ns.tiff,100,50,0,16,0\ns.tiff,100,50,1,16,1\n")
    dl = json.loads(patch_csv_to_datalist(tmp_path / "p.csv", val_frac=0.0, test_frac=0.0).read_text())
    assert [(it["level"], it["label"]) for it in dl["training"]] == [(0, 0), (1, 1)]


def test_slides_of_one_dataset_differ(tmp_path):
    """Slide ``i`` is drawn from ``SeedSequence([seed, i])``: the slides of one dataset are different slides (with the
    index left out of the seed every slide was the same image with the same masks)."""
    r = make_synthetic_wsi(tmp_path, n_slides=2, size=256, patches_per_slide=4, patch_size=16, seed=0,
                           compression="deflate")  # fmt: skip
    a, b = (tmp_path / "slides" / f"slide_00{i}.tiff" for i in range(2))
    assert a.read_bytes() != b.read_bytes()
    masks = [np.load(tmp_path / m["tissue_mask"]) for m in r["slides"]]
    assert not np.array_equal(*masks)


def test_slide_split_fractions_go_to_their_own_split(tmp_path):
    """Split by slide (3 slides) at ``val_frac=0``, ``test_frac=0.4``: two training slides and one test slide, no
    validation slide (swapped, the test set was empty)."""
    r = make_synthetic_wsi(tmp_path, n_slides=3, size=256, patches_per_slide=4, patch_size=16, seed=0,
                           val_frac=0.0, test_frac=0.4, compression="deflate")  # fmt: skip
    slides = {k: sorted({it["slide"] for it in r[k]}) for k in ("training", "validation", "test")}
    assert [len(v) for v in slides.values()] == [2, 0, 1]


def test_patch_csv_unknown_split_is_refused_naming_the_row(tmp_path):
    """A ``split`` other than training / validation / test is refused naming the CSV row (it was a bare KeyError)."""
    (tmp_path / "s.tiff").write_bytes(b"")
    (tmp_path / "p.csv").write_text("slide,x,y,label,split\ns.tiff,10,20,0,training\ns.tiff,30,40,1,train\n")
    with pytest.raises(ValueError, match=r"p\.csv' row 3: unknown split 'train'"):
        patch_csv_to_datalist(tmp_path / "p.csv", patch_size=16)


def test_tumour_tissue_is_darker_than_normal_tissue_without_nuclei():
    """Besides its nuclei, tumour tissue has a denser, more basophilic background than normal tissue: with no nucleus
    and no fibre drawn, the tumour mask's pixels are clearly less red (the extra haematoxylin put on all tissue left
    the two classes the same colour)."""
    for seed in (0, 1):
        rgb, tumor, tissue, _ = render_synthetic_slide(256, seed, mask_downsample=8, tumor_density=0.0,
                                                       normal_density=0.0, fiber_density=0.0)  # fmt: skip
        red = rgb[..., 0].astype(np.float64)
        tum, nor = (np.kron(m, np.ones((8, 8), bool)) for m in (tumor, tissue & ~tumor))
        assert tum.sum() > 1000 and nor.sum() > 1000
        assert red[tum].mean() < red[nor].mean() - 4.0, seed
