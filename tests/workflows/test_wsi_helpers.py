"""Tests of monai_gmr.workflows.wsi: datasets, slide inference (geometry, modes, backends, TTA, slide lists),
map quality, masks, heatmaps and inferer helpers, on tiny synthetic slides (1024 x 1024, 3 levels)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import shared_path

#: one intra-op thread (tests/conftest.py): the networks here are tiny (an oracle, gmr_resnet18_tiny) and
#: overhead-bound; with 2 threads on 2 shared cores the CMU-1 slide inference took 4.6-10.5 s instead of 2.7-3.0 s
pytestmark = pytest.mark.usefixtures("one_thread")

PATCH = 32
SYNTH = {"n_slides": 3, "size": 1024, "seed": 0, "patches_per_slide": 16, "patch_size": PATCH}


@pytest.fixture(scope="module")
def wsi_data(tmp_path_factory) -> dict:
    from monai_gmr.data import make_synthetic_wsi, write_pyramidal_tiff

    root = tmp_path_factory.mktemp("wsi")
    info = make_synthetic_wsi(root / "data", **SYNTH)
    # a one-level slide (no level 2) and a corrupt "slide"
    rgb = np.full((256, 256, 3), 230, np.uint8)
    rgb[64:192, 64:192] = (150, 60, 160)
    write_pyramidal_tiff(root / "single_level.tiff", rgb, n_levels=1, tile_size=128)
    (root / "corrupt.svs").write_bytes(b"II*\x00 definitely not a slide" * 10)
    small = make_synthetic_wsi(root / "small", n_slides=1, size=256, n_levels=4, seed=3, patches_per_slide=8,
                               patch_size=16)  # fmt: skip
    info["small"] = (str(Path(small["root"]) / small["slides"][0]["image"]),
                     str(Path(small["root"]) / small["slides"][0]["tumor_mask"]))  # fmt: skip
    info["single"] = str(root / "single_level.tiff")
    info["corrupt"] = str(root / "corrupt.svs")
    info["slide_paths"] = [str(Path(info["root"]) / m["image"]) for m in info["slides"]]
    info["tumor_masks"] = [str(Path(info["root"]) / m["tumor_mask"]) for m in info["slides"]]
    return info


class DarkNucleiNet(torch.nn.Module):
    """An 'oracle' classifier: tumour logit grows with the fraction of dark (hematoxylin) pixels.

    On the synthetic slides tumour patches are >= 16% dark, normal ones <= 1% (checked on the generator), so a
    probability map built with the right geometry matches the ground-truth tumour mask closely.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = (x[:, 0] < 115.0 / 255.0).float().mean((1, 2))
        return torch.stack([torch.zeros_like(dark), 40.0 * (dark - 0.08)], 1)


def _tiny_gmr() -> torch.nn.Module:
    from monai_gmr.nets import get_network

    return get_network("gmr_resnet18_tiny", num_classes=2).eval()


# ---------------------------------------------------------------------------------------------------------- helpers
def test_context_size():
    from monai_gmr.workflows.wsi import context_size

    for p in (1, 16, 32, 96, 97):
        s = context_size(p)
        assert s >= p * np.sqrt(2) - 1e-9 and (s - p) % 2 == 0
        assert s - 2 < p * np.sqrt(2)  # the smallest such size (s - p stays even)
    assert context_size(96) == 136 and context_size(32) == 46
    with pytest.raises(ValueError, match="patch_size"):
        context_size(0)


def test_center_crop_inferer():
    from monai_gmr.workflows.wsi import CenterCropInferer

    seen = {}

    def net(x):
        seen["shape"] = tuple(x.shape)
        return x.mean((2, 3))

    x = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    out = CenterCropInferer(4)(x, net)
    assert seen["shape"] == (2, 3, 4, 4)
    torch.testing.assert_close(out, x[:, :, 3:7, 4:8].mean((2, 3)))
    CenterCropInferer([6, 8])(x, net)
    assert seen["shape"] == (2, 3, 6, 8)
    with pytest.raises(ValueError, match="roi_size"):
        CenterCropInferer(11)(x, net)


def test_classification_outputs():
    from monai_gmr.workflows.wsi import classification_outputs

    items = [{"pred": torch.tensor([0.2, 0.8]), "label": torch.tensor([0.0, 1.0])},
             {"pred": torch.tensor([0.9, 0.1]), "label": torch.tensor([1.0, 0.0])}]  # fmt: skip
    p, y = classification_outputs(items)
    assert p.shape == (2, 2) and y.tolist() == [1, 0]
    p, y = classification_outputs({"pred": torch.rand(3, 4), "label": torch.tensor([3, 0, 2])})
    assert p.shape == (3, 4) and y.tolist() == [3, 0, 2]


def test_map_quality_exact_values():
    from monai_gmr.workflows.wsi import map_quality

    prob = np.array([[0.9, 0.8, 0.1, 0.2], [0.7, 0.4, 0.3, 0.0]], np.float32)
    gt = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    m = map_quality(prob, gt)
    assert m["pixel_auc"] == pytest.approx(1.0) and m["dice"] == pytest.approx(1.0)
    assert m["n_pixels"] == 8 and m["tumour_fraction"] == pytest.approx(3 / 8)
    gt2 = np.array([[1, 0, 0, 0], [0, 1, 0, 0]])  # positives 0.9, 0.4 vs negatives 0.8 0.1 0.2 0.7 0.3 0.0
    m2 = map_quality(prob, gt2, threshold=0.5)
    # positives 0.9, 0.4; negatives 0.8 0.1 0.2 0.7 0.3 0.0: 0.9 beats all 6, 0.4 beats 4 -> (6 + 4) / 12
    assert m2["pixel_auc"] == pytest.approx(10 / 12)
    # Dice: predicted {0.9, 0.8, 0.7}, truth {0.9, 0.4}: 2 * 1 / (3 + 2)
    assert m2["dice"] == pytest.approx(0.4)
    # a low-resolution mask is resized (nearest) to the map; invalid pixels are ignored
    big = np.repeat(np.repeat(prob, 2, 0), 2, 1)
    m3 = map_quality(big, gt, valid=np.ones(big.shape, bool))
    assert m3["n_pixels"] == 32 and m3["dice"] == pytest.approx(1.0)
    valid = np.zeros(prob.shape, bool)
    valid[:, 2:] = True  # only negatives left: AUC undefined, empty prediction and truth: Dice 1
    m4 = map_quality(prob, gt, valid=valid)
    assert m4["pixel_auc"] is None and m4["dice"] == 1.0 and m4["n_pixels"] == 4
    with pytest.raises(ValueError, match="valid mask shape"):
        map_quality(prob, gt, valid=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="2D"):
        map_quality(prob[None], gt)


def test_map_quality_resizes_a_finer_mask_by_its_pixel_centres():
    """A mask 3x finer than the map is resized by pixel centres: map pixel ``i`` takes mask pixel ``3 i + 1``, the
    middle of its 3 x 3 block (a corner-aligned index, ``3 i``, shifted the mask by one mask pixel)."""
    from monai_gmr.workflows.wsi import map_quality

    prob = np.full((4, 5), 0.9, np.float32)
    centres = np.zeros((12, 15), np.uint8)
    centres[1::3, 1::3] = 1  # tumour only at the middle pixel of every 3 x 3 block
    m = map_quality(prob, centres)
    assert m["tumour_fraction"] == 1.0 and m["dice"] == 1.0 and m["n_pixels"] == 20
    corners = np.zeros((12, 15), np.uint8)
    corners[::3, ::3] = 1
    assert map_quality(prob, corners)["tumour_fraction"] == 0.0


def test_map_quality_auc_matches_sklearn_style_count():
    from monai_gmr.workflows.wsi import map_quality

    rng = np.random.default_rng(1)
    prob = rng.random((20, 30)).astype(np.float32)
    gt = rng.random((20, 30)) < 0.3
    pos, neg = prob[gt], prob[~gt]
    want = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert map_quality(prob, gt)["pixel_auc"] == pytest.approx(float(want), abs=1e-6)


def test_load_mask_formats_and_errors(tmp_path):
    import tifffile

    from monai_gmr.workflows.wsi import load_mask

    m = np.zeros((6, 8), np.uint8)
    m[2:4, 3:6] = 1
    np.save(tmp_path / "m.npy", m)
    Image.fromarray(m * 255).save(tmp_path / "m.png")
    Image.fromarray(np.stack([m * 255] * 3, -1)).save(tmp_path / "rgb.png")
    # opaque alpha bands are not tumour (RGBA counted everything, LA was reduced over the rows)
    Image.fromarray(np.stack([m * 255] * 3 + [np.full_like(m, 255)], -1)).save(tmp_path / "rgba.png")
    Image.fromarray(np.stack([m * 255, np.full_like(m, 255)], -1), mode="LA").save(tmp_path / "la.png")
    tifffile.imwrite(tmp_path / "m.tif", m)
    for f in ("m.npy", "m.png", "rgb.png", "rgba.png", "la.png", "m.tif"):
        np.testing.assert_array_equal(load_mask(tmp_path / f) > 0, m > 0)
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        load_mask(tmp_path / "nothere.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        load_mask(tmp_path / "bad.png")


def test_map_quality_refuses_a_mask_of_another_aspect_and_scores_nothing_as_none():
    from monai_gmr.workflows.wsi import map_quality

    prob = np.zeros((40, 60), np.float32)
    prob[10:20, 10:30] = 1.0
    gt = prob > 0.5
    assert map_quality(prob, gt)["dice"] == 1.0
    assert map_quality(prob, np.kron(gt, np.ones((2, 2))))["dice"] == 1.0  # another resolution is fine
    with pytest.raises(ValueError, match="aspect"):
        map_quality(prob, gt.T)
    # a thin map cut to whole blocks: 47 x 2100 mask rows/cols -> an 11 x 525 map (one pixel of rounding) is fine
    thin = np.zeros((11, 525), np.float32)
    assert map_quality(thin, np.zeros((47, 2100)))["n_pixels"] == 11 * 525
    empty = map_quality(prob, gt, valid=np.zeros(prob.shape, bool))
    assert empty["n_pixels"] == 0 and empty["dice"] is None and empty["pixel_auc"] is None


def test_save_heatmap(tmp_path):
    from monai_gmr.workflows.wsi import save_heatmap

    thumb = np.full((40, 60, 3), 200, np.uint8)
    prob = np.zeros((40, 60), np.float32)
    prob[:, 30:] = 1.0
    covered = np.zeros((40, 60), bool)
    covered[10:30] = True
    p = save_heatmap(tmp_path / "h.png", thumb, prob, covered)
    img = np.array(Image.open(p))
    assert img.shape == (40, 60, 3)
    np.testing.assert_array_equal(img[0, 0], [200, 200, 200])  # not covered: the thumbnail
    assert not np.array_equal(img[20, 10], img[20, 50])  # covered: colour-mapped probability
    small = np.array(Image.open(save_heatmap(tmp_path / "s.png", thumb, prob, max_size=30)))
    assert small.shape == (20, 30, 3)
    with pytest.raises(ValueError, match="must match"):
        save_heatmap(tmp_path / "x.png", thumb, prob[:10])


def test_to_top_left_levels(wsi_data):
    from monai_gmr.workflows.wsi import to_top_left

    s = wsi_data["slide_paths"][0]
    items = [{"image": s, "location": [500, 300], "label": 0}]
    assert to_top_left(items, 32, 0)[0]["location"] == [484, 284]
    assert to_top_left(items, 32, 1)[0]["location"] == [468, 268]  # level-1 patch = 64 level-0 pixels
    assert to_top_left(items, [16, 32], 2)[0]["location"] == [468, 236]


def test_level_1_patches_checked_and_read_around_the_level_0_centre(tmp_path):
    """At patch_level 1 the datalist check validates, and patch_dataset reads, the patch centred on the level-0
    location (top-left = location - size * downsample // 2), the box the generator labels."""
    from monai_gmr.data import WSIError, make_synthetic_wsi, read_region
    from monai_gmr.workflows.wsi import check_patch_datalist, patch_dataset

    res = make_synthetic_wsi(tmp_path / "l1", n_slides=1, size=1024, seed=1, patches_per_slide=12, patch_size=PATCH,
                             patch_level=1)  # fmt: skip
    ds = patch_dataset("wsi", "training", dataset_dir=tmp_path / "l1", generate=False, patch_size=PATCH, patch_level=1)
    assert len(ds) == len(res["training"])
    for k in range(3):
        it = res["training"][k]
        top = [v - PATCH for v in it["location"]]  # level-1 patch of 32 = 64 level-0 pixels around the centre
        np.testing.assert_array_equal(np.asarray(ds[k]["image"]), read_region(it["image"], top, (PATCH, PATCH), 1))
    slide = res["training"][0]["image"]
    # the box read, not MONAI's location - size // 2: inside the 1024 slide only for the first, outside for the second
    near_bottom = {"image": slide, "location": [990, 500], "label": 0}  # read 958..1022 (MONAI: 974..1038)
    near_top = {"image": slide, "location": [20, 500], "label": 0}  # read -12..52 (MONAI: 4..68)
    assert len(check_patch_datalist([near_bottom], patch_size=PATCH, patch_level=1)) == 1
    with pytest.raises(WSIError, match="outside the slide"):
        check_patch_datalist([near_top], patch_size=PATCH, patch_level=1)
    assert check_patch_datalist([near_top], patch_size=PATCH, patch_level=0)  # level 0: 4..36, inside
    # a CSV of level-1 top-left corners becomes the same level-0 centres (the slide's downsample, 2)
    from monai_gmr.data import patch_csv_to_datalist

    (tmp_path / "tl.csv").write_text(f"slide,x,y,level,label\n{slide},100,200,1,0\n")
    dl = patch_csv_to_datalist(tmp_path / "tl.csv", patch_size=PATCH, center=False, val_frac=0.0, test_frac=0.0)
    assert json.loads(dl.read_text())["training"][0]["location"] == [200 + PATCH, 100 + PATCH]


def test_items_of_another_level_than_patch_level_are_named_in_a_warning(tmp_path, caplog):
    """The dataset-wide ``patch_level`` (the bundle's default 0) wins over each item's ``"level"``: level-1 patches
    of a patches.csv / datalist were read at level 0 (another magnification) without a word."""
    from monai_gmr.data import make_synthetic_wsi
    from monai_gmr.workflows.wsi import patch_dataset

    make_synthetic_wsi(tmp_path / "l1", n_slides=1, size=512, seed=1, patches_per_slide=6, patch_size=PATCH,
                       patch_level=1)  # fmt: skip
    for level, warned in ((1, False), (0, True)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="monai_gmr.workflows.wsi"):
            ds = patch_dataset("wsi", "training", dataset_dir=tmp_path / "l1", generate=False, patch_size=PATCH,
                               patch_level=level)  # fmt: skip
        msgs = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert bool(msgs) is warned, msgs
        if warned:
            assert f"{len(ds)} of {len(ds)} list a level other than patch_level=0 (e.g. level 1" in msgs[0]


# ---------------------------------------------------------------------------------------------------------- datasets
def test_patches_csv_split_follows_the_settings_and_the_csv(wsi_data, tmp_path):
    """A user's patches.csv (no split column) becomes datalist.json in dataset_dir on the first run; later runs
    used that file as it was: --val_frac / --test_frac never reached the CSV split, and an edited CSV was
    ignored. Now the datalist built from the CSV follows both; a datalist the user wrote is left alone."""
    from monai_gmr.workflows.wsi import wsi_patch_datalist

    slide = wsi_data["slide_paths"][0]
    rows = [f"{slide},{200 + 20 * i},{300 + 10 * i},{i % 2}" for i in range(20)]
    csv_file = tmp_path / "patches.csv"
    csv_file.write_text("slide,x,y,label\n" + "\n".join(rows) + "\n")

    def n(split, **kw):
        return len(wsi_patch_datalist(tmp_path, split, generate=False, check=False, patch_size=PATCH, **kw))

    assert (n("training"), n("validation"), n("test")) == (12, 4, 4)  # defaults 0.2 / 0.2
    assert n("validation", val_frac=0.5, test_frac=0.25) == 10
    csv_file.write_text("slide,x,y,label\n" + "\n".join(rows[:10]) + "\n")  # the user drops half the rows
    assert n("validation", val_frac=0.5, test_frac=0.25) + n("test", val_frac=0.5, test_frac=0.25) < 10
    own = {"training": [{"image": slide, "location": [300, 200], "label": 1}], "validation": [], "test": []}
    (tmp_path / "datalist.json").write_text(json.dumps(own))
    assert n("training", val_frac=0.5) == 1 and json.loads((tmp_path / "datalist.json").read_text()) == own


def test_patch_dataset_wsi_reads_labelled_patches(wsi_data):
    from monai_gmr.workflows.wsi import patch_dataset

    ds = patch_dataset("wsi", "training", dataset_dir=wsi_data["root"], generate=False, patch_size=PATCH,
                       num_classes=2)  # fmt: skip
    assert len(ds) == len(wsi_data["training"])
    d = ds[0]
    assert tuple(d["image"].shape) == (3, PATCH, PATCH) and int(d["label"]) in (0, 1)
    # the datalist centre convention: the bundle's patch equals read_region(center=True)
    from monai_gmr.data import read_region

    it = wsi_data["training"][0]
    want = read_region(it["image"], it["location"], (PATCH, PATCH), 0, center=True)
    np.testing.assert_array_equal(np.asarray(d["image"]), want)
    # larger read (rotation context) keeps the same centre
    big = patch_dataset("wsi", "training", dataset_dir=wsi_data["root"], generate=False, patch_size=PATCH,
                        read_size=46)  # fmt: skip
    tops = [list(d["location"]) for d in big.data]
    k = tops.index([int(v) - 23 for v in it["location"]])  # context 46 = patch 32 + 2 * 7 around the same centre
    b = np.asarray(big[k]["image"])
    assert b.shape == (3, 46, 46)
    np.testing.assert_array_equal(b[:, 7:39, 7:39], want)


def test_patch_dataset_errors(wsi_data, tmp_path):
    from monai_gmr.workflows.wsi import patch_dataset

    with pytest.raises(ValueError, match="data_source"):
        patch_dataset("zarr", "training")
    with pytest.raises(ValueError, match="split"):
        patch_dataset("wsi", "train", dataset_dir=wsi_data["root"])
    with pytest.raises(ValueError, match="pcam_dir"):
        patch_dataset("pcam", "training")
    with pytest.raises(ValueError, match="image_dir"):
        patch_dataset("image_folder", "training")
    with pytest.raises(ValueError, match="num_classes"):
        patch_dataset("wsi", "training", dataset_dir=wsi_data["root"], generate=False, patch_size=PATCH, num_classes=1)
    with pytest.raises(FileNotFoundError, match="generation is disabled"):
        patch_dataset("wsi", "training", dataset_dir=tmp_path / "none", generate=False)


def _write_datalist(tmp_path: Path, items: list[dict]) -> Path:
    d = tmp_path / "dl"
    d.mkdir(parents=True, exist_ok=True)
    (d / "datalist.json").write_text(json.dumps({"training": items, "validation": items}))
    return d


def test_training_datalist_errors_name_the_slide(wsi_data, tmp_path):
    from monai_gmr.data import SlideNotFoundError, WSIError
    from monai_gmr.workflows.wsi import patch_dataset

    good = wsi_data["training"][0]
    s = good["image"]
    cases = {
        "outside": ([{**good, "location": [1020, 500]}], WSIError, "outside the slide", s),
        "missing": ([{**good, "image": str(tmp_path / "gone.svs")}], SlideNotFoundError, "does not exist", "gone.svs"),
        "corrupt": ([{**good, "image": wsi_data["corrupt"]}], WSIError, "cannot read slide", "corrupt.svs"),
    }
    for name, (items, exc, text, slide) in cases.items():
        d = _write_datalist(tmp_path / name, items)
        with pytest.raises(exc) as info:
            patch_dataset("wsi", "training", dataset_dir=d, generate=False, patch_size=PATCH)
        assert text in str(info.value) and slide in str(info.value), (name, str(info.value))
    d = _write_datalist(tmp_path / "level", [good])
    with pytest.raises(WSIError, match=r"level 5 does not exist") as info:
        patch_dataset("wsi", "training", dataset_dir=d, generate=False, patch_size=PATCH, patch_level=5)
    assert s in str(info.value)
    d = _write_datalist(tmp_path / "label", [{**good, "label": 3}])
    with pytest.raises(ValueError, match=r"label 3 is not a class index in \[0, 2\)"):
        patch_dataset("wsi", "training", dataset_dir=d, generate=False, patch_size=PATCH, num_classes=2)


def test_pcam_and_image_folder_datasets(tmp_path):
    from monai_gmr.data import write_pcam_h5
    from monai_gmr.workflows.wsi import patch_dataset

    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        n = 6 if split == "train" else 4
        write_pcam_h5(tmp_path / "pcam" / f"camelyonpatch_level_2_split_{split}", rng.integers(0, 255, (n, 24, 24, 3),
                      dtype=np.uint8), np.arange(n) % 2)  # fmt: skip
    ds = patch_dataset("pcam", "validation", pcam_dir=tmp_path / "pcam", patch_size=24)
    assert len(ds) == 4 and tuple(ds[1]["image"].shape) == (3, 24, 24) and int(ds[1]["label"]) == 1
    assert float(ds[0]["image"].max()) > 1.0  # [0, 255] before the bundle's transforms
    # one file split into the three sets
    write_pcam_h5(tmp_path / "one" / "all", rng.integers(0, 255, (20, 16, 16, 3), dtype=np.uint8), np.arange(20) % 2)
    sizes = [len(patch_dataset("pcam", s, pcam_dir=tmp_path / "one", patch_size=16)) for s in ("training", "validation", "test")]
    assert sum(sizes) == 20 and min(sizes) >= 4
    # a single file named *train*: split into disjoint parts for every split (not used whole for training)
    imgs = np.arange(15, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)  # patch i is all i
    write_pcam_h5(tmp_path / "train_only" / "camelyonpatch_level_2_split_train", imgs, np.arange(15) % 2)
    ids = {s: sorted(int(d["image"][0, 0, 0]) for d in patch_dataset("pcam", s, pcam_dir=tmp_path / "train_only", patch_size=8))
           for s in ("training", "validation", "test")}  # fmt: skip
    assert all(ids.values()) and len(ids["training"]) < 15
    assert sorted(ids["training"] + ids["validation"] + ids["test"]) == list(range(15))  # disjoint, union = file
    # class folders, multi-class
    for c in ("a_tum", "b_str", "c_lym"):
        (tmp_path / "folders" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "folders" / c / f"{i}.png")
    tr = patch_dataset("image_folder", "training", image_dir=tmp_path / "folders", num_classes=3, patch_size=20)
    labels = sorted(int(tr[i]["label"]) for i in range(len(tr)))
    assert set(labels) == {0, 1, 2} and tuple(tr[0]["image"].shape) == (3, 20, 20)
    # the message says what to pass (Kather's 8 class folders with the default --num_classes 2)
    with pytest.raises(ValueError, match="num_classes=2: pass --num_classes 3"):
        patch_dataset("image_folder", "training", image_dir=tmp_path / "folders", num_classes=2)


# ---------------------------------------------------------------------------------------------------------- inference
def test_infer_slide_map_geometry_matches_ground_truth(wsi_data, tmp_path):
    """With an oracle classifier the probability map reproduces the ground-truth tumour mask: this checks that
    every patch lands in its own cell of the map (a transposed/shifted map would score far lower)."""
    from monai_gmr.workflows.wsi import infer_slide, load_mask

    s, gt = wsi_data["slide_paths"][0], wsi_data["tumor_masks"][0]
    res = infer_slide({"image": s, "label_mask": gt}, DarkNucleiNet(), tmp_path, patch_size=PATCH, batch_size=64)
    assert res.map_level == 2 and res.map_downsample == 4.0
    assert res.prob.shape == (256, 256) == res.tissue.shape == res.covered.shape
    assert res.probs.shape == (2, 256, 256)
    assert res.covered.mean() > 0.3 and res.n_patches > 300 and res.patches_per_s > 0
    assert res.metrics["pixel_auc"] > 0.95 and res.metrics["dice"] > 0.8, res.metrics
    # transposing the map breaks the match: the metric is sensitive to geometry
    from monai_gmr.workflows.wsi import map_quality

    bad = map_quality(res.prob.T, load_mask(gt), valid=res.covered.T & res.tissue.T)
    assert bad["dice"] < res.metrics["dice"] - 0.2
    prob = np.load(res.files["prob"])
    np.testing.assert_array_equal(prob, res.prob)
    assert np.array(Image.open(res.files["heatmap"])).shape == (256, 256, 3)
    assert np.array(Image.open(res.files["tissue"])).shape == (256, 256)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_infer_slide_reads_the_label_mask_before_inference(wsi_data, tmp_path, monkeypatch):
    """A wrong ground-truth mask path failed only after the slide's whole inference (its work thrown away): the mask
    is now read first, and the network never runs."""
    from monai_gmr.workflows.wsi import infer_slide

    calls = []
    net = DarkNucleiNet()
    net.register_forward_hook(lambda *a: calls.append(1))
    small, _ = wsi_data["small"]
    with pytest.raises(FileNotFoundError, match="no_such_mask.png"):
        infer_slide(small, net, None, mode="masked", patch_size=16, patch_level=1,
                    label_mask=str(tmp_path / "no_such_mask.png"))  # fmt: skip
    assert not calls


def test_an_output_dir_that_is_a_file_is_refused_before_inference(wsi_data, tmp_path):
    """output_dir naming a file: every slide was inferred and then failed at its first write (infer_slides reported
    each as failed); now refused before the network runs."""
    from monai_gmr.workflows.wsi import infer_slide, infer_slides

    calls = []
    net = DarkNucleiNet()
    net.register_forward_hook(lambda *a: calls.append(1))
    small, _ = wsi_data["small"]
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "maps"):
        with pytest.raises(ValueError, match="output_dir .*afile"):
            infer_slide(small, net, out, mode="masked", patch_size=16, patch_level=1)
        with pytest.raises(ValueError, match="output_dir .*afile"):
            infer_slides([small], net, out, mode="masked", patch_size=16, patch_level=1)
    assert not calls and (tmp_path / "afile").read_text() == ""


def test_infer_slide_says_how_many_patches_before_the_network_runs(wsi_data, caplog, monkeypatch):
    """Slide inference said nothing between "slide 1/1" and its final timing: the masked layout on the one-level
    CMU-1 region (one patch per tissue pixel, 2.26 million) ran for hours without a word. The patch count is now
    logged before the first batch, and a masked layout over more than MASKED_PATCHES_WARN patches is warned about."""
    import logging

    import monai_gmr.workflows.wsi as wsi_mod

    small, _ = wsi_data["small"]
    counted = []
    net = DarkNucleiNet()
    net.register_forward_hook(lambda *a: counted.append(any("patches to classify" in r.getMessage()
                                                            for r in caplog.records)))  # fmt: skip
    monkeypatch.setattr(wsi_mod, "MASKED_PATCHES_WARN", 10, raising=False)
    with caplog.at_level(logging.INFO, logger="monai_gmr.workflows.wsi"):
        res = wsi_mod.infer_slide(small, net, None, mode="masked", patch_size=16, patch_level=1, batch_size=512)
    assert counted and counted[0]  # logged before the network's first call
    msgs = [r.getMessage() for r in caplog.records]
    assert any(f"{res.n_patches} patches to classify (16x16 at level 1, masked; tissue mask at level 3, 32x32)" in m
               for m in msgs), msgs  # fmt: skip
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "one patch per tissue pixel" in r.getMessage()]
    assert len(warned) == 1 and "mask_level 3 (32x32)" in warned[0].getMessage()
    assert "no coarser level" in warned[0].getMessage()  # level 3 is the small slide's last
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monai_gmr.workflows.wsi"):
        wsi_mod.infer_slide(small, DarkNucleiNet(), None, patch_size=16, patch_level=1)  # sliding: no warning
    assert any("patches to classify" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_infer_slide_masked_mode_tifffile_and_level(wsi_data):
    from monai_gmr.workflows.wsi import infer_slide

    # masked mode: one patch per tissue pixel of the lowest level (32 x 32 here); patch level 1 (32 level-0 pixels)
    small, small_gt = wsi_data["small"]
    res = infer_slide(small, DarkNucleiNet(), None, mode="masked", patch_size=16, patch_level=1, label_mask=small_gt,
                      batch_size=512, grid="centered")  # fmt: skip
    # the masked layout has no sliding grid: the settings do not claim one (they recorded "centered")
    assert res.settings["grid"] is None and res.settings["grid_offset"] is None
    assert res.map_level == 3 and res.prob.shape == (32, 32) and res.covered.sum() == res.n_patches
    assert res.n_patches > 300 and (res.covered <= res.tissue).all()
    assert res.metrics["pixel_auc"] > 0.85 and res.metrics["dice"] > 0.7, res.metrics
    s = wsi_data["slide_paths"][1]
    # tifffile backend: same slide, same map up to JPEG decoding differences
    a = infer_slide(s, DarkNucleiNet(), None, patch_size=PATCH, mask_level=1, map_max_size=256)
    # (2 workers: each must reopen the slide; a shared tifffile handle corrupts reads)
    b = infer_slide(s, DarkNucleiNet(), None, patch_size=PATCH, mask_level=1, map_max_size=256, backend="tifffile",
                    num_workers=2, batch_size=16)  # fmt: skip
    assert a.prob.shape == b.prob.shape == (256, 256) and a.map_downsample == 4.0  # level 1 (512) block-averaged x2
    np.testing.assert_array_equal(a.covered, b.covered)
    assert np.abs(a.prob - b.prob).mean() < 0.02


def test_masked_mode_uses_the_package_tissue_mask(tmp_path):
    """Masked mode lays a patch on every pixel of tissue_mask (near-black background is not tissue), not on
    MONAI's plain Otsu mask, which took the black background for tissue and missed the tissue itself."""
    from monai_gmr.data import WSIError, tissue_mask, write_pyramidal_tiff
    from monai_gmr.workflows.wsi import infer_slide

    rng = np.random.default_rng(0)
    dark = np.clip(rng.normal(5, 3, (256, 384, 3)), 0, 255).astype(np.uint8)
    dark[64:192, 128:256] = (230, 140, 190)
    write_pyramidal_tiff(tmp_path / "on_dark.tiff", dark, compression="deflate", n_levels=2, tile_size=128)
    tissue = tissue_mask(tmp_path / "on_dark.tiff", level=1, max_size=None)[0]
    res = infer_slide(tmp_path / "on_dark.tiff", DarkNucleiNet(), None, mode="masked", patch_size=8, mask_level=1,
                      batch_size=1024)  # fmt: skip
    assert tissue.sum() == 64 * 64 and res.n_patches == tissue.sum()
    assert (res.covered == tissue).all()
    blank = np.clip(rng.normal(5, 3, (256, 256, 3)), 0, 255).astype(np.uint8)
    write_pyramidal_tiff(tmp_path / "blank.tiff", blank, compression="deflate", n_levels=2, tile_size=128)
    with pytest.raises(WSIError, match="blank.tiff"):
        infer_slide(tmp_path / "blank.tiff", DarkNucleiNet(), None, mode="masked", patch_size=8, mask_level=1)


def test_masked_mode_centres_each_patch_on_its_mask_pixel(tmp_path, monkeypatch):
    """Masked mode lays one patch centred on the *centre* of every tissue pixel of the mask level (MONAI's
    ``MaskedPatchWSIDataset`` formula ``(pixel + 0.5) * ratio - size // 2``): with a mask downsample of 2 and 8-pixel
    patches, mask pixel ``(r, c)`` gets the level-0 centre ``(2 r + 1, 2 c + 1)`` (its corner, ``2 r``, shifted every
    patch by half a mask pixel)."""
    import monai.data

    from monai_gmr.data import tissue_mask, write_pyramidal_tiff
    from monai_gmr.workflows.wsi import infer_slide

    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(236, 2, (64, 96, 3)), 0, 255).astype(np.uint8)
    img[16:48, 32:72] = (200, 90, 160)
    write_pyramidal_tiff(tmp_path / "m.tiff", img, compression="deflate", n_levels=2, tile_size=32)
    seen = []

    class Recorder(monai.data.PatchWSIDataset):
        def __init__(self, data, *args, **kwargs):
            seen.extend(tuple(int(v) for v in d["location"]) for d in data)
            super().__init__(data, *args, **kwargs)

    monkeypatch.setattr(monai.data, "PatchWSIDataset", Recorder)
    res = infer_slide(tmp_path / "m.tiff", DarkNucleiNet(), None, mode="masked", patch_size=8, mask_level=1,
                      batch_size=1024)  # fmt: skip
    tissue = tissue_mask(tmp_path / "m.tiff", level=1, max_size=None)[0]
    # the tissue lies well inside the slide: every tissue pixel gets its patch
    assert res.map_downsample == 2.0 and res.n_patches == len(seen) == int(tissue.sum()) > 0
    assert {(y + 4, x + 4) for y, x in seen} == {(2 * int(r) + 1, 2 * int(c) + 1) for r, c in np.argwhere(tissue)}


def test_sliding_inference_classifies_tissue_at_the_slide_edge(tmp_path):
    """A slide whose size is not a multiple of the tissue mask's block-averaging factor, with tissue only along its
    bottom edge (the last, partial block row): the patches over it are classified and fill the bottom of the map (the
    partial blocks were dropped from the mask: no tissue patch, an error), and no patch leaves the slide."""
    from monai_gmr.data import write_pyramidal_tiff
    from monai_gmr.workflows.wsi import infer_slide

    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(236, 2, (1010, 703, 3)), 0, 255).astype(np.uint8)
    img[-2:, :] = (200, 90, 160)  # 1010 = 252 * 4 + 2: only the partial last block row holds tissue
    write_pyramidal_tiff(tmp_path / "edge.tiff", img, compression="deflate", n_levels=1, tile_size=256)
    res = infer_slide(tmp_path / "edge.tiff", DarkNucleiNet(), tmp_path / "maps", patch_size=10, map_max_size=256,
                      min_tissue=0.25, batch_size=256)  # fmt: skip
    assert res.map_downsample == 4.0 and res.prob.shape == res.tissue.shape == (253, 176)
    assert res.tissue[-1].all() and not res.tissue[:-1].any()
    assert res.n_patches == 70  # the bottom row of patches: level-0 rows 1000-1010, i.e. map rows 250-252.5
    # each patch fills the map cells its footprint covers: rows 250, 251 and the tissue row 252 itself (rounding the
    # cell around the patch centre filled rows 250-251 only, next to the tissue); columns 0-174 (70 patches of 10
    # pixels = 700 of 703 columns: the 3 last level-0 columns, map column 175, are under no patch)
    expected = np.zeros_like(res.covered)
    expected[250:253, :175] = True
    np.testing.assert_array_equal(res.covered, expected)
    assert res.covered[-1][res.tissue[-1]].sum() == 175
    np.testing.assert_array_equal(res.prob[-1], res.prob[-3])  # the tissue row holds its own patches' values
    assert np.array(Image.open(res.files["heatmap"])).shape[:2] == (253, 176)  # the thumbnail has the map's grid


def test_footprint_cells_edge_and_interior_patches():
    """The map cells a patch fills: those whose centres its footprint holds, clipped to the map (the partial last
    row/column has its centre in the middle of its part inside the slide). A patch over the partial last row/column
    fills that row/column; interior patches aligned with the map grid fill exactly the cells the previous
    centre-rounding rule gave them (interior maps are unchanged)."""
    from monai_gmr.workflows.wsi import footprint_cells

    # 10-pixel patches on a map of 4 level-0 pixels per cell, slide 1010 x 703 -> map (253, 176)
    size0 = (1010, 703)
    edge = footprint_cells(np.array([[1000, 690], [1000, 0]]), (10, 10), 4.0, (253, 176), size0)
    # rows 250-252 (252 = partial last row, [1008, 1010) inside the slide); columns 690-700 hold the centres of
    # cells 172-174 (cell 175, [700, 703), belongs to the next patch)
    np.testing.assert_array_equal(edge[0], [[250, 172], [253, 175]])
    np.testing.assert_array_equal(edge[1], [[250, 0], [253, 3]])  # cell 2 ([8, 12)) has its centre on the edge, 10
    # ... so the next patch along the row fills cell 2 too (a tie, symmetric under flips: the slide flipped
    # horizontally gives the mirrored cells); a footprint leaving the map is clipped to it
    np.testing.assert_array_equal(footprint_cells(np.array([[1000, 10]]), (10, 10), 4.0, (253, 176), size0)[0],
                                  [[250, 2], [253, 5]])  # fmt: skip
    np.testing.assert_array_equal(footprint_cells(np.array([[1008, 700]]), (10, 10), 4.0, (253, 176), size0)[0],
                                  [[252, 175], [253, 176]])  # fmt: skip
    # interior, grid-aligned (32-pixel patches, 4 pixels per cell): identical to the old centre-rounding cells
    rng = np.random.default_rng(0)
    locs = rng.integers(0, 30, (50, 2)) * 32
    foot, mr = np.array([32.0, 32.0]), 4.0
    centres = (locs + foot / 2.0) / mr
    old = np.stack([np.round(centres - foot / mr / 2.0), np.round(centres + foot / mr / 2.0)], 1).astype(int)
    np.testing.assert_array_equal(footprint_cells(locs, foot, mr, (256, 256)), old)
    # non-square footprint at a non-square grid position: rows [6, 14) = cells [1.5, 3.5] hold the centres 1.5, 2.5
    # and 3.5 (cells 1-3, the outer two ties); columns [2, 5) = cells [0.5, 1.25] hold the centre 0.5 (cell 0)
    np.testing.assert_array_equal(footprint_cells(np.array([[6, 2]]), (8, 3), 4.0, (10, 10))[0], [[1, 0], [4, 1]])
    # smaller than a cell and holding no centre: the cell of its own centre
    np.testing.assert_array_equal(footprint_cells(np.array([[5, 5]]), (2, 2), 4.0, (10, 10))[0], [[1, 1], [2, 2]])
    # ... also when it straddles two cells: [7, 9) = cells [1.75, 2.25], its centre 2.0 is in cell 2 (not cell 1,
    # where it starts)
    np.testing.assert_array_equal(footprint_cells(np.array([[7, 7]]), (2, 2), 4.0, (10, 10))[0], [[2, 2], [3, 3]])
    # the partial last row [1008, 1010) has its centre at 1009 (cell 252.25), not at the whole cell's 252.5: a
    # footprint ending at 1009.2 (cell 252.3) holds it
    np.testing.assert_array_equal(footprint_cells(np.array([[1000, 0]]), (9.2, 8), 4.0, (253, 176), size0)[0],
                                  [[250, 0], [253, 2]])  # fmt: skip


def test_footprint_smaller_than_a_cell_fills_the_cell_holding_its_centre():
    """A footprint holding no cell centre gets the cell that holds its own centre: a 2 x 2 patch at (5, 5) on a map
    of 8-pixel cells (centre (6, 6), in cell 0, past its middle) fills cell (0, 0), not a rounded (1, 1)."""
    from monai_gmr.workflows.wsi import footprint_cells

    cells = footprint_cells(np.array([[5, 5], [5, 21], [13, 2]]), (2, 2), 8.0, (4, 4))
    assert cells.tolist() == [[[0, 0], [1, 1]], [[0, 2], [1, 3]], [[1, 0], [2, 1]]]


def test_footprint_cells_are_flip_symmetric():
    """Flipping the slide flips the cells of the flipped footprints, also for footprints half across a cell (ties) and
    off the grid (a slide of 1012 rows = 253 whole map cells of 4 pixels). With a half-open rule a tie cell went to
    the patch on one side, and to the patch on the other side on the flipped slide."""
    from monai_gmr.workflows.wsi import footprint_cells

    rng = np.random.default_rng(3)
    size0, ds, shape = np.array([1012.0, 1012.0]), 4.0, (253, 253)
    foot = np.array([24.0, 24.0])
    locs = np.concatenate([rng.integers(0, 988, (200, 2)), np.array([[2, 6], [988, 988], [10, 0]])]).astype(float)
    assert (locs % 4 == 2).any()  # footprints half across a cell: ties
    cells = footprint_cells(locs, foot, ds, shape, size0)
    flipped = footprint_cells(size0 - foot - locs, foot, ds, shape, size0)  # the footprints of the flipped slide
    np.testing.assert_array_equal(cells, np.asarray(shape) - flipped[:, ::-1])  # [r0, r1) <-> [h - r1, h - r0)


def test_footprint_cells_tile_without_sharing_at_non_integer_downsample():
    """A real slide's level downsample is rarely an integer (e.g. 32.0011 for a 4.000345 level, 8x blocks): patches
    that tile the slide must still fill disjoint cells that together cover the tiled rows. The floor/ceiling rule
    let each patch reach one more row and column by a sliver, so neighbours shared about one cell in eight."""
    from monai_gmr.workflows.wsi import footprint_cells

    ds, size = 32.0011, 256
    n = 40  # 40 patches of 256 level-0 pixels: 10240 pixels = 319.99 cells
    locs = np.stack([np.arange(n) * size, np.zeros(n)], 1)
    h = int(np.ceil(n * size / ds))
    cells = footprint_cells(locs, (size, size), ds, (h, 8), (n * size, size))
    rows = [set(range(c[0, 0], c[1, 0])) for c in cells]
    assert all(len(r) in (7, 8, 9) for r in rows), [len(r) for r in rows]
    assert sum(len(r) for r in rows) == h and set().union(*rows) == set(range(h))  # a partition of the rows


def test_sliding_inference_interior_map_unchanged(tmp_path):
    """A slide whose patch grid is aligned with the map (8-pixel patches, 4 pixels per map cell): every patch fills
    exactly its own 2 x 2 cells, holding its own probability, as before the edge fix."""
    from monai_gmr.data import write_pyramidal_tiff
    from monai_gmr.workflows.wsi import infer_slide

    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(236, 2, (64, 64, 3)), 0, 255).astype(np.uint8)
    img[16:48, 16:48] = (200, 90, 160)  # tissue: level-0 rows/cols 16-47 = map cells 4-11
    img[24:32, 32:40] = (60, 40, 120)  # one dark (tumour) patch: rows 24-31, cols 32-39 = map cells (6-7, 8-9)
    write_pyramidal_tiff(tmp_path / "grid.tiff", img, compression="deflate", n_levels=1, tile_size=64)
    res = infer_slide(tmp_path / "grid.tiff", DarkNucleiNet(), None, patch_size=8, map_max_size=16, min_tissue=0.5,
                      batch_size=64)  # fmt: skip
    assert res.map_downsample == 4.0 and res.prob.shape == (16, 16)
    expected = np.zeros((16, 16), bool)
    expected[4:12, 4:12] = True
    np.testing.assert_array_equal(res.covered, expected)
    assert res.n_patches == 16
    tumour = res.prob > 0.5
    expected_tumour = np.zeros((16, 16), bool)
    expected_tumour[6:8, 8:10] = True
    np.testing.assert_array_equal(tumour, expected_tumour)


@pytest.mark.parametrize("mode", ["sliding", "masked"])
@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_patch_larger_than_the_slide_is_refused_naming_the_slide(tmp_path, mode, backend):
    """A slide with a side shorter than the patch footprint (100 x 300 pixels, 128-pixel patches): MONAI's
    SlidingPatchWSIDataset clips the patch size to the slide and still lists patches, which were then read past the
    slide's bottom edge (openslide pads black, tifffile returns 100 x 128 patches) and filled the map; masked mode
    said no patch had enough tissue. Both now refuse it, naming the slide, the patch footprint and the slide size."""
    from monai_gmr.data import WSIError, write_pyramidal_tiff
    from monai_gmr.workflows.wsi import infer_slide

    rgb = np.full((100, 300, 3), 230, np.uint8)
    rgb[10:90, 20:280] = (150, 60, 160)
    write_pyramidal_tiff(tmp_path / "narrow.tiff", rgb, n_levels=1, tile_size=128)
    with pytest.raises(WSIError, match=r"narrow\.tiff.*footprint.*\(128, 128\).*\(100, 300\)"):
        infer_slide(tmp_path / "narrow.tiff", DarkNucleiNet(), None, patch_size=128, mode=mode, backend=backend)
    res = infer_slide(tmp_path / "narrow.tiff", DarkNucleiNet(), None, patch_size=100, mode=mode, backend=backend)
    assert res.n_patches >= 1  # a patch of the slide's height still fits


def test_infer_slides_output_names_are_unique(tmp_path):
    """Slides of the same name in different folders get a numbered name; that name must not be the one of another
    slide of the list (a_2.tiff, a.tiff, b/a.tiff: b/a.tiff was named a_2 and overwrote a_2.tiff's map files and its
    entry in the results)."""
    import shutil

    from monai_gmr.data import write_pyramidal_tiff
    from monai_gmr.workflows.wsi import infer_slides

    rgb = np.full((64, 64, 3), 230, np.uint8)
    rgb[8:56, 8:56] = (150, 60, 160)
    write_pyramidal_tiff(tmp_path / "a.tiff", rgb, n_levels=1, tile_size=64)
    for d in ("b", "c"):
        (tmp_path / d).mkdir()
        shutil.copy(tmp_path / "a.tiff", tmp_path / d / "a.tiff")
    shutil.copy(tmp_path / "a.tiff", tmp_path / "a_2.tiff")
    slides = [str(tmp_path / p) for p in ("a_2.tiff", "a.tiff", "b/a.tiff", "c/a.tiff")]
    out = infer_slides(slides, DarkNucleiNet(), tmp_path / "maps", patch_size=16)
    names = [e["name"] for e in out["slides"]]
    assert len(set(names)) == 4 and names[:2] == ["a_2", "a"], names
    assert len(out["results"]) == 4 and [out["results"][n].slide for n in names] == slides
    assert len(list((tmp_path / "maps").glob("*_prob.npy"))) == 4


def test_infer_slide_rotation_tta_is_exact_for_gmr(wsi_data):
    from monai_gmr.inferers import RotationTTAInferer
    from monai_gmr.workflows.wsi import infer_slide

    net = _tiny_gmr()
    s = wsi_data["small"][0]
    plain = infer_slide(s, net, None, patch_size=PATCH, batch_size=128)
    tta = infer_slide(s, net, None, patch_size=PATCH, batch_size=128,
                      inferer=RotationTTAInferer(angles=[0, 90, 180, 270], flips=["h"], task="classification"))  # fmt: skip
    assert tta.settings["inferer"] == "RotationTTAInferer"
    np.testing.assert_allclose(tta.prob, plain.prob, atol=1e-4)  # invariant network: TTA changes nothing
    # a network that is not invariant (top rows vs bottom rows): the TTA map is the mean of the four rotated
    # views' probabilities, which differs from the plain map, so TTA cannot be skipped unnoticed

    def updown(x: torch.Tensor) -> torch.Tensor:
        d = 20.0 * (x[:, 0, :8].mean((1, 2)) - x[:, 0, -8:].mean((1, 2)))
        return torch.stack([torch.zeros_like(d), d], 1)

    plain = infer_slide(s, updown, None, patch_size=PATCH, batch_size=128)
    tta = infer_slide(s, updown, None, patch_size=PATCH, batch_size=128,
                      inferer=RotationTTAInferer(angles=[0, 90, 180, 270], task="classification"))  # fmt: skip
    assert np.abs(tta.prob - plain.prob)[plain.covered].max() > 0.1
    one = infer_slide(s, updown, None, patch_size=PATCH, batch_size=128,
                      inferer=lambda x, net: torch.log(torch.stack([torch.softmax(net(torch.rot90(x, k, (2, 3))), 1)
                                                                    for k in range(4)]).mean(0)))  # fmt: skip
    np.testing.assert_allclose(tta.prob, one.prob, atol=1e-5)


def test_missing_patch_level_and_bad_backend_are_named(wsi_data, tmp_path):
    """--patch_level 9 said only "slide ... has 3 level(s) (0..2); level 9 does not exist" (training datalist check
    and slide inference), and a backend typo failed in MONAI's WSIReader ("The supported backends are cucim,
    openslide, and tifffile but 'opneslide' was given"), naming neither setting."""
    from monai_gmr.data import WSIError
    from monai_gmr.data.wsi import get_wsi_reader
    from monai_gmr.workflows.wsi import check_wsi_backend, infer_slide, patch_dataset

    good = wsi_data["training"][0]
    d = _write_datalist(tmp_path / "level", [good])
    with pytest.raises(WSIError, match=r"patch_level 9 does not exist"):
        patch_dataset("wsi", "training", dataset_dir=d, generate=False, patch_size=PATCH, patch_level=9)
    with pytest.raises(WSIError, match=r"patch_level 9 does not exist"):
        infer_slide(wsi_data["slide_paths"][0], DarkNucleiNet(), patch_level=9)
    with pytest.raises(WSIError, match=r"mask_level 2 does not exist"):
        infer_slide(wsi_data["single"], DarkNucleiNet(), mask_level=2)
    with pytest.raises(ValueError, match=r"wsi_backend must be one of"):
        check_wsi_backend("opneslide")
    with pytest.raises(ValueError, match=r"backend must be one of"):
        get_wsi_reader("opneslide")
    empty = tmp_path / "not_generated"
    with pytest.raises(ValueError, match=r"backend must be one of"):
        patch_dataset("wsi", "training", dataset_dir=empty, generate=True, synthetic=SYNTH, patch_size=PATCH,
                      backend="opneslide")  # fmt: skip
    assert not empty.exists()  # refused before the slides were generated
    assert check_wsi_backend("TiffFile") == "TiffFile" and check_wsi_backend(None) is None

def test_infer_slide_errors_name_the_slide(wsi_data, tmp_path):
    from monai_gmr.data import SlideNotFoundError, WSIError
    from monai_gmr.workflows.wsi import infer_slide

    s = wsi_data["slide_paths"][0]
    with pytest.raises(SlideNotFoundError, match="gone.svs"):
        infer_slide(tmp_path / "gone.svs", DarkNucleiNet())
    with pytest.raises(WSIError, match="corrupt.svs"):
        infer_slide(wsi_data["corrupt"], DarkNucleiNet())
    with pytest.raises(WSIError, match="level 4 does not exist") as info:
        infer_slide(s, DarkNucleiNet(), patch_level=4)
    assert s in str(info.value)
    with pytest.raises(WSIError, match="single_level.tiff.*level 2 does not exist"):
        infer_slide(wsi_data["single"], DarkNucleiNet(), mask_level=2)
    with pytest.raises(ValueError, match="mode"):
        infer_slide(s, DarkNucleiNet(), mode="tiles")


def test_infer_slides_reports_and_skips_bad_slides(wsi_data, tmp_path):
    from monai_gmr.workflows.wsi import infer_slides

    s0, s1 = wsi_data["slide_paths"][:2]
    missing = str(tmp_path / "missing_slide.svs")
    slides = [s0, missing, wsi_data["corrupt"], wsi_data["single"], {"image": s1, "label_mask": wsi_data["tumor_masks"][1]}]
    out = infer_slides(slides, DarkNucleiNet(), tmp_path / "maps", patch_size=PATCH, mask_level=2)
    assert out["n_slides"] == 5 and out["n_ok"] == 2 and out["n_failed"] == 3
    status = {e["name"]: e for e in out["slides"]}
    assert status["slide_000"]["status"] == status["slide_001"]["status"] == "ok"
    assert "missing_slide.svs" in status["missing_slide"]["error"] and "does not exist" in status["missing_slide"]["error"]
    assert "corrupt.svs" in status["corrupt"]["error"] and "cannot read" in status["corrupt"]["error"]
    assert "single_level.tiff" in status["single_level"]["error"] and "level 2" in status["single_level"]["error"]
    assert out["map_quality"]["n_slides"] == 1 and out["map_quality"]["mean_pixel_auc"] > 0.95
    summary = json.loads((tmp_path / "maps" / "inference_summary.json").read_text())
    assert summary["n_ok"] == 2 and summary["patches_per_s"] > 0
    files = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert files == sorted(["inference_summary.json"] + [f"slide_00{i}_{k}" for i in (0, 1)
                                                         for k in ("prob.npy", "heatmap.png", "tissue.png")])  # fmt: skip
    assert set(out["results"]) == {"slide_000", "slide_001"}
    with pytest.raises(RuntimeError, match="1 of 2 slide"):
        infer_slides([s0, missing], DarkNucleiNet(), None, strict=True, patch_size=PATCH)
    with pytest.raises(RuntimeError, match="corrupt.svs"):
        infer_slides([wsi_data["corrupt"]], DarkNucleiNet(), None)


class FailOnceOnRank1Net(torch.nn.Module):
    """DarkNucleiNet that raises on its first batch in process 1 of a process group (e.g. a corrupt tile read in that
    process's shard of the first slide only)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if torch.distributed.get_rank() == 1 and self.calls == 1:
            raise RuntimeError("unreadable tile in process 1")
        return DarkNucleiNet()(x)


class ThreeClassNet(torch.nn.Module):
    """Three logits per patch (a multi-class network)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        return torch.stack([m, 2 * m, 3 * m], 1)


def _two_process_infer_slides(rank: int, port: int, out_dir: str, jobs: list) -> None:
    """Worker of the two-process slide inference tests (spawned, gloo): runs each job ``(name, slides, net,
    patch_size, mask_level)`` in turn, with a fresh ``net()``, and writes ``rank<rank>_<name>.json``."""
    import os

    torch.set_num_threads(1)  # two processes on 2 shared cores (the module's one_thread does not reach them)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    from monai_gmr.workflows.wsi import infer_slides

    for name, slides, net, patch_size, mask_level in jobs:
        try:
            out = infer_slides(slides, net(), None, summary_file=None, patch_size=patch_size, mask_level=mask_level,
                               batch_size=8)  # fmt: skip
            res = {"slides": [{k: e.get(k) for k in ("status", "error", "n_patches")} for e in out["slides"]],
                   "sums": {k: float(r.prob.sum()) for k, r in out["results"].items()},
                   "shapes": {k: list(r.probs.shape) for k, r in out["results"].items()}}  # fmt: skip
        except Exception as e:  # noqa: BLE001 - reported to the test
            res = {"raised": f"{type(e).__name__}: {e}"}
        Path(out_dir, f"rank{rank}_{name}.json").write_text(json.dumps(res))
    torch.distributed.destroy_process_group()


def _run_two_processes(jobs: list, tmp_path: Path) -> dict[str, list[dict]]:
    """Run _two_process_infer_slides over ``jobs`` in 2 spawned gloo processes; per job name, the results of rank 0
    and rank 1."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_two_process_infer_slides, args=(r, port, str(tmp_path), jobs)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    alive = [p.is_alive() for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not any(alive), "a process hung"
    return {job[0]: [json.loads((tmp_path / f"rank{r}_{job[0]}.json").read_text()) for r in range(2)] for job in jobs}


@pytest.fixture(scope="module")
def two_process_runs(wsi_data, tmp_path_factory) -> dict[str, list[dict]]:
    """The two-process slide inferences of the tests below, run by one pair of spawned processes (starting the
    processes, each importing torch and the package, costs more than the inferences): per scenario, the results of
    rank 0 and rank 1. Each scenario gets a fresh network; the simple one runs first, so the failure scenario cannot
    leave anything behind for it."""
    from monai_gmr.data import write_pyramidal_tiff

    tmp = tmp_path_factory.mktemp("two_processes")
    rgb = np.full((64, 64, 3), 230, np.uint8)  # a slide with a single tissue patch
    rgb[8:56, 8:56] = (150, 60, 160)
    write_pyramidal_tiff(tmp / "one_patch.tiff", rgb, n_levels=1, tile_size=64)
    jobs = [
        ("one_patch", [str(tmp / "one_patch.tiff")], ThreeClassNet, 64, 0),
        ("fail_once", wsi_data["slide_paths"][:3], FailOnceOnRank1Net, PATCH, 2),
    ]  # fmt: skip
    return _run_two_processes(jobs, tmp)


def test_infer_slides_failure_in_one_process_fails_the_slide_in_all(wsi_data, two_process_runs):
    """Multi-process slide inference where the shard of process 1 fails on the first slide only: the failed process
    went on with the next slide while process 0 waited in the first slide's gather, so process 0 built the first
    slide's map from process 1's patches of the second slide (an IndexError, or with slides of one size a wrong map
    reported as ok), and the processes then disagreed slide by slide. Now every process fails that slide (naming the
    process and its error) and the next slides agree with a single-process run."""
    from monai_gmr.workflows.wsi import infer_slides

    slides = wsi_data["slide_paths"][:3]
    res = two_process_runs["fail_once"]
    assert res[0] == res[1] and "raised" not in res[0], res
    status = [e["status"] for e in res[0]["slides"]]
    assert status == ["error", "ok", "ok"], res[0]
    assert "process 1: RuntimeError: unreadable tile in process 1" in res[0]["slides"][0]["error"]
    assert Path(slides[0]).name in res[0]["slides"][0]["error"]
    single = infer_slides(slides[1:], DarkNucleiNet(), None, patch_size=PATCH, mask_level=2, batch_size=8)
    assert [e["n_patches"] for e in res[0]["slides"][1:]] == [e["n_patches"] for e in single["slides"]]
    for k, r in single["results"].items():
        assert res[0]["sums"][k] == pytest.approx(float(r.prob.sum()), rel=1e-5)


def test_multi_class_slide_with_fewer_patches_than_processes(two_process_runs):
    """Two processes and a slide with a single tissue patch (a three-class network): MONAI's DistributedSampler
    refused it ("the dataset length is less than the number of participating ranks": the slide failed); now
    process 0 takes the patch, process 1's empty shard (a (0, 2) placeholder) is left out of the gathered
    probabilities and the (3, H, W) map is built."""
    res = two_process_runs["one_patch"]
    assert res[0] == res[1] and "raised" not in res[0], res
    assert res[0]["slides"][0]["status"] == "ok" and res[0]["slides"][0]["n_patches"] == 1
    assert res[0]["shapes"]["one_patch"][0] == 3


def test_inference_slides_listing(wsi_data, tmp_path):
    from monai_gmr.workflows.wsi import inference_slides

    test = inference_slides(None, wsi_data["root"], "test", generate=False)
    names = {Path(t["image"]).name for t in test}
    assert names == {Path(i["image"]).name for i in wsi_data["test"]}
    assert all(Path(t["label_mask"]).is_file() for t in test)
    folder = inference_slides(str(Path(wsi_data["root"]) / "slides"))
    assert len(folder) == 3 and all("label_mask" not in f for f in folder)
    assert inference_slides(["a.svs", {"image": "b.tif"}]) == [{"image": "a.svs"}, {"image": "b.tif"}]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no slide file"):
        inference_slides(str(tmp_path / "empty"))



def test_inference_slides_folder_leaves_out_masks_beside_their_slides(tmp_path, caplog):
    """A Camelyon-style folder (tumor_001.tif + tumor_001_mask.tif) had its masks run through the network as slides;
    a ``_mask`` file without its slide stays a slide (nothing tells it apart)."""
    from monai_gmr.workflows.wsi import inference_slides

    for name in ("tumor_001.tif", "tumor_001_mask.tif", "normal_002.svs", "lonely_mask.tif"):
        (tmp_path / name).write_bytes(b"")  # only listed here, never opened
    with caplog.at_level("WARNING", logger="monai_gmr.workflows.wsi"):
        found = inference_slides(str(tmp_path))
    assert [Path(f["image"]).name for f in found] == ["lonely_mask.tif", "normal_002.svs", "tumor_001.tif"]
    (msg,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "1 file(s)" in msg and "tumor_001_mask.tif" in msg and "label_mask" in msg

def test_real_slide_cmu_inference(tmp_path):
    """CMU-1 small region (one level, 2220 x 2967): tissue mask and probability map at the (capped) map level."""
    from monai_gmr.workflows.wsi import infer_slide

    svs = shared_path("data", "wsi_cmu1_small_region", "cmu_small_region.svs")
    res = infer_slide(svs, _tiny_gmr(), tmp_path, patch_size=96, batch_size=32, map_max_size=512)
    # level 0 is 2967 x 2220 (H x W); block-averaged by ceil(2967 / 512) = 6 -> ceil(2967 / 6) x 2220 / 6 = 495 x 370
    # (the last block row holds the slide's last 3 rows)
    assert res.map_level == 0 and res.map_downsample == 6.0
    assert res.prob.shape == (495, 370) == res.tissue.shape
    assert 0.05 < res.tissue.mean() < 0.95 and res.n_patches > 50
    assert res.covered.sum() > 0 and ((res.prob >= 0) & (res.prob <= 1)).all()
    assert np.load(tmp_path / "cmu_small_region_prob.npy").shape == (495, 370)
    assert (tmp_path / "cmu_small_region_heatmap.png").stat().st_size > 0
    assert np.array(Image.open(tmp_path / "cmu_small_region_tissue.png")).shape == (495, 370)



def test_label_warning_names_the_fallback_split_actually_used(wsi_data, tmp_path, caplog):
    """Evaluation asks for the test split and falls back to validation when it is empty (logged); the warning
    about a class without samples must then name the validation patches, not the test split it did not read."""
    import logging

    from monai_gmr.workflows.wsi import patch_dataset

    slide = wsi_data["slide_paths"][0]
    own = {"training": [{"image": slide, "location": [300, 200], "label": 1}],
           "validation": [{"image": slide, "location": [300, 200], "label": 0},
                          {"image": slide, "location": [400, 300], "label": 1}],
           "test": []}  # fmt: skip
    (tmp_path / "datalist.json").write_text(json.dumps(own))
    with caplog.at_level(logging.WARNING, logger="monai_gmr"):
        ds = patch_dataset("wsi", "test", dataset_dir=str(tmp_path), generate=False, patch_size=PATCH, num_classes=3,
                           fallback_split="validation", check=False)  # fmt: skip
    assert len(ds) == 2
    msgs = [r.getMessage() for r in caplog.records]
    assert any("no 'test' patches; using 'validation'" in m for m in msgs), msgs  # the fallback is logged
    missing = [m for m in msgs if "no sample of class(es) [2]" in m]
    assert len(missing) == 1 and missing[0].startswith("validation patches of dataset_dir"), msgs
    assert not any(m.startswith("test patches") for m in msgs), msgs


def test_classification_outputs_one_hot_labels_are_argmaxed_per_sample():
    """One-hot labels become the class index of each *sample* (argmax over classes): with three samples of two
    classes, an argmax over the samples would give two wrong labels (the two-sample test above is symmetric)."""
    from monai_gmr.workflows.wsi import classification_outputs

    onehot = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    items = [{"pred": torch.tensor([0.3, 0.7]), "label": lab} for lab in onehot]
    p, y = classification_outputs(items)
    assert p.shape == (3, 2) and y.tolist() == [1, 1, 0]
    p, y = classification_outputs({"pred": torch.rand(3, 2), "label": onehot})  # a batch dict
    assert p.shape == (3, 2) and y.tolist() == [1, 1, 0]


def test_map_quality_threshold_is_inclusive():
    """A pixel whose probability equals ``threshold`` is positive in the Dice map (``p >= threshold``, the rule of
    ``monai_gmr.evaluation.compare_maps``); e.g. a constant 0.5 map of a sigmoid at logit 0."""
    from monai_gmr.workflows.wsi import map_quality

    prob = np.array([[0.5, 0.5, 0.2, 0.0]], np.float32)
    gt = np.array([[1, 1, 0, 0]])
    m = map_quality(prob, gt, threshold=0.5)
    assert m["dice"] == pytest.approx(1.0) and m["threshold"] == 0.5
    assert map_quality(prob, gt, threshold=0.5001)["dice"] == pytest.approx(0.0)


def test_one_based_labels_get_a_hint_instead_of_an_extra_empty_class(tmp_path):
    """Labels counted from 1 (Kather's folder numbers 01..08 written into a labels CSV) were refused with "pass
    --num_classes 9", which trains a ninth class 0 without any sample; the message now says that the labels start at
    1 and that class indices start at 0. Labels that are simply more than num_classes keep the old advice."""
    from PIL import Image

    from monai_gmr.workflows.wsi import check_class_labels, patch_dataset

    rows = ["path,label"]
    for i in range(8):
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(tmp_path / f"t{i}.png")
        rows.append(f"t{i}.png,{i % 2 + 1}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"labels \[1, 2\] but num_classes=2\. The labels start at 1 .*label - 1") as e:
        patch_dataset("image_folder", "training", image_dir=tmp_path, labels_csv="labels.csv", num_classes=2)
    assert "pass --num_classes 3" not in str(e.value) and "classes []" not in str(e.value)
    with pytest.raises(ValueError, match=r"not class indices in \[0, 2\).*The labels start at 1 \(1\.\.2\)"):
        check_class_labels([1, 2, 2, 1], 2, "training patches")
    with pytest.raises(ValueError) as e:  # 0-based labels beyond num_classes: no such hint
        check_class_labels([0, 1, 5], 2, "training patches")
    assert "start at 1" not in str(e.value)
    rows = ["path,label"] + [f"t{i}.png,{i % 3}" for i in range(8)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"num_classes=2: pass --num_classes 3\.$"):
        patch_dataset("image_folder", "training", image_dir=tmp_path, labels_csv="labels.csv", num_classes=2)


def test_check_class_labels(caplog):
    """``check_class_labels``: counts per class; a split with exactly ``min_classes`` classes passes (two classes
    for the validation split of training), fewer raise; labels outside ``[0, num_classes)`` or fractional raise; a
    class without samples is only a warning."""
    import logging

    from monai_gmr.workflows.wsi import check_class_labels

    assert check_class_labels([1, 0, 1, 1], 2, min_classes=2) == {0: 1, 1: 3}
    assert check_class_labels(np.array([0.0, 1.0]), None, min_classes=2) == {0: 1, 1: 1}
    with pytest.raises(ValueError, match="min_classes=2"):
        check_class_labels([1, 1, 1], 2, name="validation", min_classes=2)
    with pytest.raises(ValueError, match=r"num_classes=2"):
        check_class_labels([0, 2], 2)
    with pytest.raises(ValueError, match="integers"):
        check_class_labels([0, 0.5], 2)
    with caplog.at_level(logging.WARNING, logger="monai_gmr.workflows.wsi"):
        assert check_class_labels([0, 1], 3, name="val") == {0: 1, 1: 1}
    assert "no sample of class(es) [2]" in caplog.text


def test_string_labels_of_a_datalist_are_named(wsi_data):
    """``"label": "1"`` in a datalist JSON passed the datalist check and stopped in check_class_labels with numpy's
    "ufunc 'remainder' not supported for the input types" (no file, item or setting named); ``"tumor"`` with
    "could not convert string to float"."""
    from monai_gmr.workflows.wsi import check_class_labels, check_patch_datalist

    item = dict(wsi_data["training"][0])
    for bad in ("1", "tumor"):
        with pytest.raises(ValueError, match=rf"mylist item 0 .*label '{bad}' is not a class index .*not strings"):
            check_patch_datalist([{**item, "label": bad}], patch_size=PATCH, num_classes=2, name="mylist")
    with pytest.raises(ValueError, match=r"val: labels must be class indices \(integers\), got \['1', '0'\]"):
        check_class_labels(["1", "0"], None, name="val")
    assert check_patch_datalist([{**item, "label": 1}], patch_size=PATCH, num_classes=2)


def test_patch_dataset_without_labels_is_refused(wsi_data, tmp_path):
    """A PCam file without its ``*_y.h5`` and datalist items without ``"label"`` gave datasets whose items had no
    label: PatchWSIDataset raised a bare ``KeyError: 'label'`` on the first patch, PCam failed in the engine."""
    import h5py

    from monai_gmr.workflows.wsi import patch_dataset

    (tmp_path / "pcam").mkdir()
    with h5py.File(tmp_path / "pcam" / "camelyonpatch_level_2_split_train_x.h5", "w") as f:
        f["x"] = np.zeros((10, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"PCam file .*split_train_x\.h5' has no label file"):
        patch_dataset("pcam", "training", pcam_dir=tmp_path / "pcam")
    root = tmp_path / "wsi"
    root.mkdir()
    item = {"image": wsi_data["training"][0]["image"], "location": wsi_data["training"][0]["location"]}
    (root / "datalist.json").write_text(json.dumps({k: [item] for k in ("training", "validation", "test")}))
    with pytest.raises(ValueError, match=r"training patches of dataset_dir .*1 of 1 have no 'label'"):
        patch_dataset("wsi", "training", dataset_dir=root, generate=False, patch_size=PATCH)


@pytest.mark.parametrize("bad", [-1, 0, 2.5])
def test_map_max_size_must_be_positive(wsi_data, tmp_path, bad):
    """map_max_size=-1 gave a negative map downsample: a map with one scored cell of ~10^5, no error; 0 failed every
    slide with a ZeroDivisionError. Now refused by name before the slide is read (and by SlideInference at once)."""
    from monai_gmr.data.wsi import tissue_mask
    from monai_gmr.workflows.wsi import SlideInference, infer_slide, save_heatmap

    calls = []
    net = DarkNucleiNet()
    net.register_forward_hook(lambda *a: calls.append(1))
    small, _ = wsi_data["small"]
    with pytest.raises(ValueError, match="map_max_size"):
        infer_slide(small, net, None, patch_size=16, map_max_size=bad)
    with pytest.raises(ValueError, match="heatmap_max_size"):
        infer_slide(small, net, None, patch_size=16, heatmap_max_size=bad)
    with pytest.raises(ValueError, match="map_max_size"):
        SlideInference(net, None, slides=[small], map_max_size=bad)
    with pytest.raises(ValueError, match="max_size"):
        tissue_mask(small, max_size=bad)
    with pytest.raises(ValueError, match="max_size"):
        save_heatmap(tmp_path / "h.png", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), max_size=bad)
    assert not calls and not (tmp_path / "h.png").exists()
    mask, _, ds = tissue_mask(small, max_size="32")  # the text a command line may pass
    assert max(mask.shape) <= 32 and ds > 0


def test_fractional_centres_are_checked_where_they_are_read(wsi_data):
    """A datalist centre of 992.6 was checked as 992 (int() truncates: rows 960-1023, inside the 1024-row slide) but
    read by to_top_left as 993 (rows 961-1024, one past the edge: a 63-row tifffile patch or a black openslide row).
    The check now rounds as the read does."""
    from monai_gmr.data.wsi import WSIError
    from monai_gmr.workflows.wsi import check_patch_datalist, to_top_left

    slide = wsi_data["slide_paths"][0]
    edge = {"image": slide, "location": [992.6, 500.2], "label": 1}
    inside = {"image": slide, "location": [991.4, 500.2], "label": 1}
    assert to_top_left([edge], 64, 0)[0]["location"] == [961, 468]  # read: rows 961 .. 1024
    with pytest.raises(WSIError, match="outside the slide"):
        check_patch_datalist([edge], patch_size=64, patch_level=0, num_classes=2)
    assert check_patch_datalist([edge, inside], patch_size=64, patch_level=0, skip_outside=True) == [inside]


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_negative_patch_level_reads_the_coarsest_level(wsi_data, backend):
    """patch_level=-1 (the coarsest level, as the datalist check and to_top_left count it) reached MONAI's reader as
    -1: OpenSlide returned all-black patches (training on black squares, no error). Now each item is read at the
    level index the negative level names on its slide: the patches of patch_level=2 (the last of 3 levels)."""
    from monai_gmr.workflows.wsi import patch_dataset

    kw = dict(dataset_dir=wsi_data["root"], generate=False, patch_size=8, num_classes=2, backend=backend)
    neg = patch_dataset("wsi", "training", patch_level=-1, **kw)
    pos = patch_dataset("wsi", "training", patch_level=2, **kw)
    for i in (0, len(pos) - 1):
        a, b = np.asarray(neg[i]["image"]), np.asarray(pos[i]["image"])
        assert a.max() > 0  # tissue, not OpenSlide's black
        np.testing.assert_array_equal(a, b)


def test_items_of_another_size_than_patch_size_are_named_in_a_warning(wsi_data, caplog):
    """The dataset-wide ``patch_size`` (the bundle's default 96) wins over each item's ``"size"``, as the level does:
    patches listed (and labelled) as 32 x 32 were read as 24 x 24 crops without a word."""
    from monai_gmr.workflows.wsi import patch_dataset

    for size, warned in ((PATCH, False), (24, True)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="monai_gmr.workflows.wsi"):
            ds = patch_dataset("wsi", "training", dataset_dir=wsi_data["root"], generate=False, patch_size=size)
        msgs = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "size" in r.getMessage()]
        assert bool(msgs) is warned, msgs
        assert tuple(ds[0]["image"].shape) == (3, size, size)
        if warned:
            assert f"{len(ds)} of {len(ds)} list a size other than patch_size={size} (e.g. size [32, 32]" in msgs[0]


def test_slide_inference_names_a_bad_patch_size_or_overlap(wsi_data):
    """patch_size=0 failed as 'no patch of size [0, 0] has >= 25% tissue ... lower min_tissue or patch_size',
    patch_size=-16 inside NumPy broadcasting, an overlap whose step rounds to 0 pixels as MONAI's 'range() arg 3 must
    not be zero'; each is now an error naming the setting, before any patch is classified."""
    from monai_gmr.workflows.wsi import infer_slide

    calls = []
    net = DarkNucleiNet()
    net.register_forward_hook(lambda *a: calls.append(1))
    small, _ = wsi_data["small"]
    for ps in (0, -16, [16, 0]):
        with pytest.raises(ValueError, match=r"patch_size must be positive"):
            infer_slide(small, net, None, patch_size=ps)
    with pytest.raises(ValueError, match=r"overlap=0.99 leaves a grid step of 0 pixels"):
        infer_slide(small, net, None, patch_size=16, overlap=0.99)
    assert not calls


def test_load_mask_of_one_trailing_channel(tmp_path):
    """An (H, W, 1) mask (channel-last, as many tools save a single-channel image) was reduced over its rows into a
    (W, 1) array, which map_quality then refused as 'a transposed or wrongly cropped mask'; channel-first (1, H, W)
    was and is read right."""
    from monai_gmr.workflows.wsi import load_mask

    m = np.zeros((6, 8), np.uint8)
    m[2:4, 3:6] = 1
    np.save(tmp_path / "last.npy", m[..., None])
    np.save(tmp_path / "first.npy", m[None])
    for f in ("last.npy", "first.npy"):
        np.testing.assert_array_equal(load_mask(tmp_path / f), m)


def test_infer_slide_checks_the_label_mask_aspect_before_inference(wsi_data):
    """A label mask of another aspect ratio than the map (e.g. transposed) was refused by map_quality only after the
    slide's whole inference, and the slide's map was then not written either; it is now refused before the network
    runs."""
    from monai_gmr.workflows.wsi import infer_slide

    calls = []
    net = DarkNucleiNet()
    net.register_forward_hook(lambda *a: calls.append(1))
    small, _ = wsi_data["small"]  # 256 x 256: a square map
    with pytest.raises(ValueError, match=r"label_mask of shape \(10, 40\) does not have the map's aspect ratio"):
        infer_slide(small, net, None, patch_size=16, label_mask=np.zeros((10, 40), np.uint8))
    assert not calls
    res = infer_slide(small, net, None, patch_size=16, label_mask=np.zeros((64, 64), np.uint8))
    assert calls and res.metrics is not None


def test_a_tumour_class_the_network_lacks_stops_after_the_first_batch(wsi_data):
    """tumour_class=2 with a 2-class network was refused only after the whole slide had been classified (every slide
    of a list, each to the end); now after the first batch, with a message naming tumour_class."""
    from monai_gmr.workflows.wsi import infer_slide

    calls = []
    net = DarkNucleiNet()
    net.register_forward_hook(lambda *a: calls.append(1))
    small, _ = wsi_data["small"]
    with pytest.raises(ValueError, match=r"tumour_class must be in \[0, 2\).*tumour_class=2"):
        infer_slide(small, net, None, patch_size=16, batch_size=4, tumour_class=2, min_tissue=0.0)
    assert len(calls) == 1


def test_a_size_less_patches_csv_gets_the_patch_size_not_the_read_size(wsi_data, tmp_path, caplog):
    """A patches.csv without a size column got its datalist sizes from the first dataset built: the rotation context
    (read_size 46) when training with augment_rotation, so every later split was told its patches were 46 x 46;
    and a later --patch_size left the sizes as they were. Now the items get patch_size (the network's input), and a
    new patch_size builds the datalist again (same split); no size warning is due in either case."""
    from monai_gmr.data import read_datalist
    from monai_gmr.workflows.wsi import patch_dataset

    slide = wsi_data["slide_paths"][0]
    rows = [f"{slide},{200 + 20 * i},{300 + 10 * i},{i % 2}" for i in range(20)]
    (tmp_path / "patches.csv").write_text("slide,x,y,label\n" + "\n".join(rows) + "\n")

    def sizes():
        return {tuple(i["size"]) for i in read_datalist(tmp_path / "datalist.json", "training")}

    with caplog.at_level("WARNING", logger="monai_gmr.workflows.wsi"):
        patch_dataset("wsi", "training", dataset_dir=tmp_path, generate=False, patch_size=PATCH, read_size=46)
        assert sizes() == {(PATCH, PATCH)}
        split = read_datalist(tmp_path / "datalist.json", "validation")
        patch_dataset("wsi", "validation", dataset_dir=tmp_path, generate=False, patch_size=PATCH)
        patch_dataset("wsi", "validation", dataset_dir=tmp_path, generate=False, patch_size=24)
        assert sizes() == {(24, 24)}
        assert [i["location"] for i in read_datalist(tmp_path / "datalist.json", "validation")] == [
            i["location"] for i in split]  # fmt: skip
    assert not [r for r in caplog.records if "list a size other than" in r.getMessage()]


def test_slide_list_of_a_size_less_patches_csv_before_training(wsi_data, tmp_path):
    """Slide inference on a dataset_dir holding a patches.csv without a size column (and no datalist yet: training
    builds it) failed with "no patch size", though the slide list needs none; SlideInference passes its patch_size
    now, and the datalist it builds is the one training builds with the same settings."""
    from monai_gmr.data import read_datalist
    from monai_gmr.workflows.wsi import SlideInference, inference_slides

    slides = wsi_data["slide_paths"]
    rows = [f"{slides[i % 2]},{200 + 20 * i},{300 + 10 * i},{i % 2}" for i in range(20)]
    (tmp_path / "patches.csv").write_text("slide,x,y,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="no patch size"):
        inference_slides(None, tmp_path, "test", generate=False)
    step = SlideInference(DarkNucleiNet(), None, dataset_dir=tmp_path, split="test", generate=False, patch_size=PATCH)
    got = {i["image"] for i in step.slide_items()}
    assert got and got <= {str(Path(p).resolve()) for p in slides} | {str(p) for p in slides}
    assert {tuple(i["size"]) for i in read_datalist(tmp_path / "datalist.json", "training")} == {(PATCH, PATCH)}


def test_a_fractional_patch_level_is_refused(wsi_data):
    """--patch_level 1.5 trained on level-1 patches (int() truncation) without a word."""
    from monai_gmr.workflows.wsi import patch_dataset

    with pytest.raises(ValueError, match=r"patch_level: .*integer level index.*1\.5"):
        patch_dataset("wsi", "training", dataset_dir=wsi_data["root"], generate=False, patch_size=PATCH,
                      patch_level=1.5)


def test_empty_or_null_input_slides(wsi_data):
    """--input_slides "[]" (e.g. a glob that matched nothing) silently processed the test slides of dataset_dir (and
    would have generated synthetic slides for them); --input_slides null, the documented default, failed as "slide
    'null' does not exist". Now an empty list or text is an error naming input_slides, and "null" means None."""
    from monai_gmr.workflows.wsi import inference_slides

    root = wsi_data["root"]
    for empty in ([], (), ""):
        with pytest.raises(ValueError, match="input_slides is empty"):
            inference_slides(empty, root, "test", generate=False)
    want = inference_slides(None, root, "test", generate=False)
    assert inference_slides("null", root, "test", generate=False) == want
    assert inference_slides(" None ", root, "test", generate=False) == want


def test_null_text_of_patch_mpp_and_mask_level_means_none(wsi_data):
    """--mask_level null / --patch_mpp null (the configs' documented defaults, passed as the text 'null' by the
    command line) failed every slide with "invalid literal for int() with base 10: 'null'" / "could not convert string
    to float: 'null'", and training with the latter; the text now means None."""
    from monai_gmr.workflows.wsi import infer_slide, patch_dataset

    small, _ = wsi_data["small"]
    want = infer_slide(small, DarkNucleiNet(), None, patch_size=16)
    got = infer_slide(small, DarkNucleiNet(), None, patch_size=16, mask_level="null", patch_mpp="None")
    assert got.map_level == want.map_level and got.settings["patch_level"] == 0
    np.testing.assert_array_equal(got.prob, want.prob)
    ds = patch_dataset("wsi", "training", dataset_dir=wsi_data["root"], generate=False, patch_size=PATCH,
                       patch_mpp="null")  # fmt: skip
    assert len(ds) == len(wsi_data["training"])


def test_null_text_labels_csv_means_class_folders(tmp_path):
    """--labels_csv null (train.json's default, the text 'null' on a command line) was looked up as the file
    '<image_dir>/null' ("labels CSV ... does not exist"); it now means class sub-folders."""
    from monai_gmr.workflows.wsi import patch_dataset

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    ds = patch_dataset("image_folder", "training", image_dir=str(tmp_path), labels_csv="null", num_classes=2,
                       val_frac=0.2, test_frac=0.2)  # fmt: skip
    assert len(ds) == 6 and {int(d["label"]) for d in ds.items} == {0, 1}


def test_inference_split_must_be_a_split_name(wsi_data):
    """--input_split tset (a typo) processed the validation slides after a warning that the dataset 'has no 'tset'
    slides'; it is now an error naming split."""
    from monai_gmr.workflows.wsi import inference_slides

    with pytest.raises(ValueError, match=r"split must be one of .*got split='tset'"):
        inference_slides(None, wsi_data["root"], "tset", generate=False)


def test_a_failed_slide_leaves_no_map_of_an_earlier_run(wsi_data, tmp_path):
    """A slide that failed in a second run into the same output_dir (e.g. after a model or setting change) kept the
    first run's map, heatmap and tissue files beside the new maps, as if they were this run's result; they are now
    removed (the summary names the slide as failed, as before)."""
    from monai_gmr.workflows.wsi import infer_slides

    small, _ = wsi_data["small"]
    out = tmp_path / "maps"
    kw = dict(patch_size=32, mode="masked", patch_level=1)
    infer_slides([{"image": small, "name": "s"}, {"image": small, "name": "u"}], DarkNucleiNet(), out, **kw)
    assert {p.name for p in out.glob("s_*")} == {"s_prob.npy", "s_heatmap.png", "s_tissue.png"}
    res = infer_slides([{"image": wsi_data["corrupt"], "name": "s"}, {"image": small, "name": "t"}], DarkNucleiNet(),
                       out, **kw)  # fmt: skip
    assert res["n_failed"] == 1 and not list(out.glob("s_*")) and (out / "t_prob.npy").is_file()
    assert len(list(out.glob("u_*"))) == 3  # another slide's maps are left alone


@pytest.mark.parametrize("relative", [False, True])
def test_labels_csv_images_are_read_under_image_dir(tmp_path, monkeypatch, relative):
    """--image_dir DIR --labels_csv FILE with FILE outside DIR (Kaggle ids kept in another folder): the CSV's files were
    looked up under the CSV's own folder, so --image_dir was ignored: same-named images there were trained on without
    a word, or none were found ("image ... not found under <the CSV's folder>"). They are read under image_dir."""
    from monai_gmr.workflows.wsi import patch_dataset

    images, labels = tmp_path / "hcd" / "train", tmp_path / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    rows = ["id,label"]
    for i in range(10):
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(images / f"id{i}.tif")
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(labels / f"id{i}.tif")  # not the images the user named
        rows.append(f"id{i},{i % 2}")
    (labels / "train_labels.csv").write_text("\n".join(rows) + "\n")
    image_dir = str(images)
    if relative:
        monkeypatch.chdir(tmp_path)
        image_dir = "hcd/train"
    ds = patch_dataset("image_folder", "training", image_dir=image_dir, labels_csv=str(labels / "train_labels.csv"),
                       num_classes=2, val_frac=0.2, test_frac=0.2)  # fmt: skip
    assert len(ds) == 6
    assert all(Path(d["image"]).resolve().parent == images.resolve() for d in ds.items)
    # the Kaggle layout with the CSV beside the image folder is still found (ids in a sub-folder of image_dir)
    (labels / "train_labels.csv").replace(tmp_path / "hcd" / "train_labels.csv")
    ds = patch_dataset("image_folder", "training", image_dir=str(tmp_path / "hcd"), labels_csv="train_labels.csv",
                       num_classes=2, val_frac=0.2, test_frac=0.2)  # fmt: skip
    assert all(Path(d["image"]).resolve().parent == images.resolve() for d in ds.items)


@pytest.mark.parametrize("bad,match", [({"val_frac": 1.5}, r"val_frac must be a number in \[0, 1\)"),
                                       ({"test_frac": "x"}, r"test_frac must be a number in \[0, 1\)"),
                                       ({"val_frac": 0.5, "test_frac": 0.5}, "val_frac \\+ test_frac must be < 1"),
                                       ({"patch_mpp": "x"}, "patch_mpp must be a positive number"),
                                       ({"patch_size": "32x"}, "patch_size must be an int or \\(H, W\\)")],
                         ids=["val_frac-1.5", "test_frac-text", "fractions-sum", "patch_mpp-text", "patch_size-text"])  # fmt: skip
def test_patch_dataset_refuses_bad_split_and_patch_settings_by_name_before_reading_data(tmp_path, bad, match):
    """--val_frac 1.5 was accepted silently where the split comes from the datalist (the default synthetic slides),
    and --val_frac x, --patch_mpp x or --patch_size 32x failed with "could not convert string to float" / "invalid
    literal for int()", naming no setting. They are now refused first (here dataset_dir does not even exist)."""
    from monai_gmr.workflows.wsi import patch_dataset

    with pytest.raises(ValueError, match=match):
        patch_dataset("wsi", "training", dataset_dir=tmp_path / "missing", generate=False, **bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad,match", [({"min_tissue": 1.5}, r"min_tissue must be a number in \[0, 1\]"),
                                       ({"min_tissue": "x"}, r"min_tissue must be a number in \[0, 1\]"),
                                       ({"threshold": 2}, r"threshold must be a number in \[0, 1\]"),
                                       ({"threshold": "x"}, r"threshold must be a number in \[0, 1\]"),
                                       ({"tumour_class": "x"}, "tumour_class must be a non-negative integer"),
                                       ({"overlap": "x"}, r"overlap must be in \[0, 1\)"),
                                       ({"batch_size": 0}, "batch_size must be a positive integer")],
                         ids=["min_tissue-1.5", "min_tissue-text", "threshold-2", "threshold-text", "tumour_class-text",
                              "overlap-text", "batch_size-0"])  # fmt: skip
def test_slide_inference_refuses_bad_scoring_settings_by_name_before_any_slide(tmp_path, bad, match):
    """--min_tissue 1.5 failed on every slide ("no patch ... has >= 150% tissue"), --threshold 2 was accepted
    silently (a Dice of a map that is never positive), --threshold x failed after the network had run on the whole
    slide, and --min_tissue x / --tumour_class x / --overlap x failed inside each slide naming no setting."""
    from monai_gmr.workflows.wsi import SlideInference, infer_slide

    with pytest.raises(ValueError, match=match):
        SlideInference(torch.nn.Identity(), tmp_path / "pred", dataset_dir=tmp_path / "missing", **bad)
    with pytest.raises(ValueError, match=match):
        infer_slide(str(tmp_path / "missing.tiff"), torch.nn.Identity(), **bad)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ full-resolution masks
def _write_mask_pyramid(path, levels, style: str) -> None:
    """A tiled (zlib) pyramidal mask TIFF: level 0 with the others as SubIFDs (``style="subifds"``) or as
    reduced-resolution pages after it (``"pages"``, the layout of ``write_pyramidal_tiff``)."""
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        tif.write(levels[0], tile=(32, 32), compression="zlib", subifds=len(levels) - 1 if style == "subifds" else 0)
        for lvl in levels[1:]:
            tif.write(lvl, tile=(32, 32), compression="zlib", subfiletype=1)


def _corrupt_first_page(path) -> None:
    """Overwrite the compressed tiles of the file's first page (level 0) with junk: reading it fails."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages.first
        spans = list(zip(page.dataoffsets, page.databytecounts))
    with open(path, "r+b") as f:
        for off, n in spans:
            f.seek(off)
            f.write(b"\xff" * n)


@pytest.mark.parametrize("style", ["subifds", "pages"])
def test_load_mask_reads_the_smallest_pyramid_level_at_least_the_map_and_never_level_0(tmp_path, style):
    """A full-resolution pyramidal ground-truth mask (CAMELYON16: 100 000 x 200 000 pixels, 20 GB as uint8) was read
    at level 0 whole. With min_shape (the map's shape) the smallest level at least that large is read; for a mask of
    4 x 4 aligned blocks and power-of-two levels its nearest resize to the map is exactly that of level 0."""
    from monai_gmr.workflows.wsi import _resize_nearest, load_mask, mask_shape

    rng = np.random.default_rng(0)
    m0 = np.kron(rng.integers(0, 3, (32, 48)), np.ones((4, 4), np.int64)).astype(np.uint8)  # 128 x 192, label ids
    p = tmp_path / f"mask_{style}.tif"
    _write_mask_pyramid(p, [m0, m0[::2, ::2], m0[::4, ::4]], style)
    _corrupt_first_page(p)
    with pytest.raises(ValueError, match=f"cannot read mask .*mask_{style}.tif"):
        load_mask(p)  # level 0 is unreadable: any read of it fails
    assert mask_shape(p) == (128, 192)  # the header only
    for map_shape, level_shape in [((32, 48), (32, 48)), ((25, 37), (32, 48)), ((33, 48), (64, 96)),
                                   ((64, 96), (64, 96)), ((50, 75), (64, 96))]:  # fmt: skip
        got = load_mask(p, min_shape=map_shape)
        assert got.shape == level_shape, map_shape
        np.testing.assert_array_equal(_resize_nearest(got, map_shape), _resize_nearest(m0, map_shape))


@pytest.mark.parametrize("layout", ["strips", "tiles", "rgb_tiles"])
def test_load_mask_decodes_a_large_single_level_tiff_in_pieces(tmp_path, monkeypatch, layout):
    """A single-level mask TIFF over the read limit is not decoded whole: with min_shape only the strips / tiles
    holding the rows and columns of the nearest resize are decoded (the same values as the whole read, resized);
    without min_shape it is refused with a message naming the file, its size and what to give instead."""
    import tifffile

    from monai_gmr.workflows import wsi

    rng = np.random.default_rng(1)
    m = rng.integers(0, 4, (150, 250)).astype(np.uint8)  # no block structure: every pixel counts
    p = tmp_path / f"big_{layout}.tif"
    if layout == "strips":
        tifffile.imwrite(p, m, rowsperstrip=7, compression="zlib")
        ref = m
    elif layout == "tiles":
        tifffile.imwrite(p, m, tile=(32, 48), compression="zlib")
        ref = m
    else:
        rgb = np.stack([m, (m + 1) % 4 * (m > 1), np.zeros_like(m)], -1)
        tifffile.imwrite(p, rgb, tile=(32, 32), photometric="rgb")
        ref = rgb.max(-1)
    np.testing.assert_array_equal(wsi.load_mask(p), ref)  # under the limit: read whole, as before
    monkeypatch.setattr(wsi, "_MASK_READ_LIMIT_BYTES", 1000, raising=False)

    def whole(*a, **k):
        raise AssertionError("the mask page was decoded whole")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", whole)
    with pytest.raises(ValueError, match=rf"big_{layout}.tif' is 150 x 250 pixels .* pass min_shape .* pyramidal"):
        wsi.load_mask(p)
    for map_shape in [(30, 50), (37, 61), (150, 250), (200, 300)]:
        got = wsi.load_mask(p, min_shape=map_shape)
        np.testing.assert_array_equal(got, wsi._resize_nearest(ref, map_shape))


def test_load_mask_memory_maps_npy_with_min_shape(tmp_path):
    """A .npy mask given with min_shape is memory-mapped (the resize reads only the rows it picks), one-channel
    (H, W, 1) / (1, H, W) masks as views of the map; the values and the resize are those of the plain read."""
    from monai_gmr.workflows.wsi import _resize_nearest, load_mask

    m = (np.random.default_rng(2).random((90, 120)) < 0.3).astype(np.uint8)
    for name, arr in [("m.npy", m), ("last.npy", m[..., None]), ("first.npy", m[None])]:
        np.save(tmp_path / name, arr)
        got = load_mask(tmp_path / name, min_shape=(30, 40))
        assert isinstance(got, np.memmap) or isinstance(got.base, np.memmap), name
        np.testing.assert_array_equal(got, m)
        plain = load_mask(tmp_path / name)
        np.testing.assert_array_equal(_resize_nearest(got, (30, 40)), _resize_nearest(plain, (30, 40)))


def test_infer_slide_scores_a_full_resolution_pyramidal_mask_without_reading_level_0(wsi_data, tmp_path):
    """infer_slide read its label_mask whole at level 0 (a CAMELYON16 mask: 20 GB); now only the header at once and
    then the pyramid level near the map: the same metrics as the low-resolution mask, with level 0 unreadable."""
    from monai_gmr.workflows.wsi import infer_slide

    small, small_gt = wsi_data["small"]
    low = np.load(small_gt).astype(np.uint8)
    ref = infer_slide(small, DarkNucleiNet(), None, patch_size=16, label_mask=small_gt, batch_size=512)
    full = np.kron(low, np.ones((8, 8), np.uint8))  # 8x the low-resolution mask, aligned blocks
    p = tmp_path / "small_mask.tif"
    _write_mask_pyramid(p, [full, full[::2, ::2], full[::4, ::4], low], "subifds")
    _corrupt_first_page(p)
    res = infer_slide(small, DarkNucleiNet(), None, patch_size=16, label_mask=str(p), batch_size=512)
    assert ref.metrics["pixel_auc"] is not None and res.metrics == ref.metrics
    with pytest.raises(FileNotFoundError, match="nothere.tif"):  # a wrong path still fails before the slide is read
        infer_slide("no_such_slide.svs", DarkNucleiNet(), None, patch_size=16, label_mask=str(tmp_path / "nothere.tif"))


def test_patch_datalist_labels_must_be_whole_class_indices_below_num_classes(wsi_data):
    """check_patch_datalist refuses a label equal to num_classes (class indices run to num_classes - 1: a 1-based
    label of the last class) and a fractional label (1.5 was read as class 1), naming the item; 0 and
    num_classes - 1 pass."""
    from monai_gmr.workflows.wsi import check_patch_datalist

    item = dict(wsi_data["training"][0])
    for ok in (0, 1, 1.0):
        assert check_patch_datalist([{**item, "label": ok}], patch_size=PATCH, num_classes=2)
    for bad in (2, 1.5, -1):
        with pytest.raises(ValueError, match=rf"mylist item 0 .*label {bad!r} is not a class index in \[0, 2\)"):
            check_patch_datalist([{**item, "label": bad}], patch_size=PATCH, num_classes=2, name="mylist")


def test_classification_outputs_keep_the_labels_of_a_single_output_network():
    """A single-logit (sigmoid) network's batch has ``(N, 1)`` predictions and ``(N, 1)`` labels: the labels are
    class indices, not one-hot rows (an argmax over their one column made every label 0)."""
    from monai_gmr.workflows.wsi import classification_outputs

    p, y = classification_outputs({"pred": torch.tensor([[0.3], [2.0], [-1.0]]), "label": torch.tensor([[0], [1], [1]])})
    assert p.shape == (3, 1) and y.tolist() == [0, 1, 1]
    items = [{"pred": torch.tensor([0.5]), "label": torch.tensor([1])}, {"pred": torch.tensor([-0.5]), "label": torch.tensor([0])}]
    assert classification_outputs(items)[1].tolist() == [1, 0]


def test_one_based_hint_covers_labels_one_past_num_classes():
    """Labels 1..K+1 given with num_classes=K (one class short, and counted from 1) get the one-based hint too;
    labels further out (1..K+2) or not starting at 1 do not."""
    from monai_gmr.workflows.wsi import check_class_labels

    with pytest.raises(ValueError, match=r"The labels start at 1 \(1\.\.3\)"):
        check_class_labels([1, 2, 3, 1], 2, "training patches")
    for labels in ([1, 2, 4], [0, 3]):
        with pytest.raises(ValueError) as e:
            check_class_labels(labels, 2, "training patches")
        assert "start at 1" not in str(e.value)


def test_fallback_split_is_used_only_when_the_split_is_empty(tmp_path, caplog):
    """``fallback_split`` replaces the requested split only when that one has no patches: evaluation asked for the
    test split with fallback "validation" scored the validation patches although the test split had some."""
    from monai_gmr.workflows.wsi import wsi_patch_datalist

    own = {"training": [{"image": "a.tif", "location": [300, 200], "label": 1}],
           "validation": [{"image": "a.tif", "location": [1, 2], "label": 0}],
           "test": [{"image": "a.tif", "location": [5, 6], "label": 1}]}  # fmt: skip
    (tmp_path / "datalist.json").write_text(json.dumps(own))
    (tmp_path / "a.tif").write_bytes(b"")  # never opened (check=False)
    with caplog.at_level("WARNING", logger="monai_gmr"):
        items = wsi_patch_datalist(tmp_path, "test", generate=False, check=False, fallback_split="validation")
    assert [i["location"] for i in items] == [[5, 6]]
    assert not [r for r in caplog.records if "using 'validation'" in r.getMessage()]


def test_skip_outside_skips_only_patches_outside_their_slide(wsi_data):
    """``skip_outside`` drops patches that leave their slide; an unreadable slide or a missing level among the items
    still stops the check, naming the slide (they were dropped with the outside patches, and a datalist whose slide
    files were corrupt trained on the remaining slides without an error)."""
    from monai_gmr.data.wsi import WSIError
    from monai_gmr.workflows.wsi import check_patch_datalist

    good = dict(wsi_data["training"][0])
    outside = {**good, "location": [5000, 5000]}
    assert check_patch_datalist([good, outside], patch_size=PATCH, skip_outside=True) == [good]
    for bad, match in (({"image": wsi_data["corrupt"], "location": [10, 10], "label": 0}, "corrupt.svs"),
                       ({**good, "image": wsi_data["single"], "level": 2}, "single_level.tiff")):  # fmt: skip
        with pytest.raises(WSIError, match=match):
            check_patch_datalist([good, outside, bad], patch_size=PATCH, skip_outside=True)


def test_inference_slides_of_a_split_lists_each_slide_once(wsi_data):
    """The datalist holds one item per patch: the slides of a split are listed once each, in the order they first
    appear (listing one entry per patch ran every slide through the network once per patch)."""
    from monai_gmr.workflows.wsi import inference_slides

    for split in ("test", "validation"):
        got = [t["image"] for t in inference_slides(None, wsi_data["root"], split, generate=False)]
        want = list(dict.fromkeys(str(Path(wsi_data["root"]) / i["image"]) for i in wsi_data[split]))
        assert [Path(g).resolve() for g in got] == [Path(w).resolve() for w in want]
        assert len(wsi_data[split]) > len(want)  # several patches per slide in the datalist


def test_patch_collections_refuse_tiles_smaller_than_patch_size(tmp_path):
    """Image-folder / PCam tiles smaller than ``patch_size`` cannot be centre-cropped to it: a folder of 150-pixel
    Kather tiles with ``--patch_size 200`` trained on 150-pixel patches without a word, and a folder mixing tile sizes
    stopped on the first batch with torch's bare 'stack expects each tensor to be equal size'."""
    from monai_gmr.data import write_pcam_h5
    from monai_gmr.workflows.wsi import patch_dataset

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "tiles" / c).mkdir(parents=True)
        for i in range(5):
            size = 12 if (c, i) == ("b", 4) else 20  # one small tile
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(tmp_path / "tiles" / c / f"{i}.png")
    ds = patch_dataset("image_folder", "training", image_dir=tmp_path / "tiles", num_classes=2, patch_size=16,
                       val_frac=0.0, test_frac=0.0)  # fmt: skip
    assert tuple(ds[0]["image"].shape) == (3, 20, 20)  # tiles at least patch_size are read as before
    small = next(k for k, it in enumerate(ds.items) if Path(it["image"]).parts[-2:] == ("b", "4.png"))
    with pytest.raises(ValueError, match=r"4\.png.* 12 x 12 .*smaller than patch_size 16 x 16"):
        ds[small]
    write_pcam_h5(tmp_path / "pcam" / "all", rng.integers(0, 255, (12, 24, 24, 3), dtype=np.uint8), np.arange(12) % 2)
    assert len(patch_dataset("pcam", "training", pcam_dir=tmp_path / "pcam", patch_size=24)) > 0
    with pytest.raises(ValueError, match=r"all_x\.h5.* 24 x 24 .*smaller than patch_size 32 x 32"):
        patch_dataset("pcam", "training", pcam_dir=tmp_path / "pcam", patch_size=32)


@pytest.mark.parametrize("num_classes,tumour_class", [(2, 2), (8, 8), (1, 2)])
def test_slide_inference_refuses_a_tumour_class_beyond_num_classes_before_any_slide(tmp_path, num_classes,
                                                                                     tumour_class):
    """--tumour_class 2 with num_classes 2 was only found inside each slide, after its tissue detection (at its first
    batch): every slide of the list failed in turn and an inference_summary.json was left. SlideInference now refuses
    it by name when it is built (num_classes 1, a single logit, gives 2 probabilities: classes 0 and 1)."""
    from monai_gmr.workflows.wsi import SlideInference

    with pytest.raises(ValueError, match=rf"tumour_class must be in \[0, {max(num_classes, 2)}\).*num_classes"):
        SlideInference(torch.nn.Identity(), tmp_path / "pred", dataset_dir=tmp_path / "missing",
                       tumour_class=tumour_class, num_classes=num_classes)
    assert list(tmp_path.iterdir()) == []
    ok = SlideInference(torch.nn.Identity(), tmp_path / "pred", dataset_dir=tmp_path / "missing",
                        tumour_class=tumour_class - 1, num_classes=num_classes)
    assert "num_classes" not in ok.kwargs  # not forwarded to infer_slide


def test_infer_slides_logs_no_rate_when_every_slide_failed(tmp_path, caplog):
    """When every slide failed the last line said "0 ok, 1 failed; None patches/s overall"; now it says that no slide
    was processed instead of a rate."""
    from monai_gmr.workflows.wsi import infer_slides

    with caplog.at_level(logging.INFO, logger="monai_gmr"), pytest.raises(RuntimeError, match="1 of 1 slide"):
        infer_slides([str(tmp_path / "missing.tiff")], torch.nn.Identity(), None)
    lines = [r.getMessage() for r in caplog.records if "processed" in r.getMessage()]
    assert lines and all("None" not in m for m in lines), lines
    assert "0 ok, 1 failed" in lines[-1] and "no slide was processed" in lines[-1], lines
