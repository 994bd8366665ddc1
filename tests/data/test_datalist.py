"""Tests of monai_gmr.data.datalist: split sizes, seeded splits, relative-path datalists."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monai_gmr.data.datalist import move_into_place, read_datalist, split_counts, split_items, write_datalist


@pytest.mark.parametrize(
    "n, val, test, expected",
    [(10, 0.2, 0.2, (6, 2, 2)), (6, 0.2, 0.2, (4, 1, 1)), (3, 0.2, 0.2, (1, 1, 1)), (2, 0.2, 0.2, (1, 0, 1)),
     (1, 0.2, 0.2, (1, 0, 0)), (24, 0.2, 0.2, (14, 5, 5)), (5, 0.0, 0.0, (5, 0, 0))],
)  # fmt: skip
def test_split_counts(n, val, test, expected):
    assert split_counts(n, val, test) == expected


@pytest.mark.parametrize("n, val, test, expected", [(3, 0.6, 0.1, (1, 2, 0)), (3, 0.1, 0.6, (1, 0, 2))])
def test_split_counts_bumps_an_empty_split_only_from_the_training_items(n, val, test, expected):
    """A non-zero fraction that rounds to 0 items gets one only if training still keeps >= 1 item *after* that bump;
    it never takes the item from the other split (3 items, val 0.6 / test 0.1: 2 validation, 0 test, 1 training; a
    bump checked against ``n - n_val > 0`` gave test one item and took it back from validation: (1, 1, 1))."""
    assert split_counts(n, val, test) == expected


@pytest.mark.parametrize("n, val, test, expected", [(2, 0.4, 0.4, (1, 1, 0)), (4, 0.45, 0.45, (1, 2, 1))])
def test_split_counts_keeps_a_training_item_when_the_rounded_fractions_take_every_item(n, val, test, expected):
    """Fractions that round to all ``n`` items (2 items at 0.4 / 0.4: one each) give one back to training; a loop
    stopping only at ``n_val + n_test > n`` left no training item at all."""
    assert split_counts(n, val, test) == expected


def test_split_counts_rejects_bad_fractions():
    with pytest.raises(ValueError, match="val_frac"):
        split_counts(10, 1.2, 0.1)
    with pytest.raises(ValueError, match="val_frac \\+ test_frac"):
        split_counts(10, 0.6, 0.5)


def test_split_items_seeded_and_stratified():
    items = [{"image": f"{i}.png", "label": i % 2} for i in range(20)]
    a = split_items(items, 0.2, 0.2, seed=3)
    b = split_items(items, 0.2, 0.2, seed=3)
    c = split_items(items, 0.2, 0.2, seed=4)
    assert a == b and a != c
    assert sorted(i["image"] for s in a.values() for i in s) == sorted(i["image"] for i in items)
    s = split_items(items, 0.2, 0.2, seed=0, stratify_key="label")
    for split in ("validation", "test"):
        assert sorted(i["label"] for i in s[split]) == [0, 0, 1, 1]


def test_write_and_read_datalist_relative_paths(tmp_path):
    (tmp_path / "images").mkdir()
    img = tmp_path / "images" / "a.png"
    img.write_bytes(b"x")
    outside = "/elsewhere/b.png"
    p = write_datalist(tmp_path / "datalist.json", {"training": [{"image": str(img), "label": outside, "n": 1}]},
                       extra_key="v")  # fmt: skip
    raw = json.loads(p.read_text())
    assert raw["training"] == [{"image": "images/a.png", "label": outside, "n": 1}]
    assert raw["extra_key"] == "v"
    items = read_datalist(p, "training")
    assert items[0]["image"] == str(tmp_path / "images" / "a.png") and items[0]["label"] == outside
    with pytest.raises(KeyError, match="validation"):
        read_datalist(p, "validation")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_datalist(tmp_path / "nope.json")



def test_read_datalist_leaves_empty_strings(tmp_path):
    """An empty field ("", e.g. a patient id left blank) named the datalist's folder and became its path."""
    p = tmp_path / "datalist.json"
    p.write_text(json.dumps({"training": [{"image": "", "note": " ", "dir": "."}]}))
    item = read_datalist(p, "training")[0]
    assert item["image"] == "" and item["note"] == " " and item["dir"] == str(tmp_path / ".")


def test_list_valued_paths_are_relative_too(tmp_path):
    """A key holding several files (MONAI datalists allow lists, e.g. multi-modal images) kept its absolute paths, so
    the dataset folder could not be moved, and read_datalist did not resolve relative lists."""
    from monai.data import load_decathlon_datalist

    (tmp_path / "images").mkdir()
    files = [tmp_path / "images" / n for n in ("a.png", "b.png")]
    for f in files:
        f.write_bytes(b"x")
    item = {"image": [str(f) for f in files], "label": str(files[0])}
    p = write_datalist(tmp_path / "datalist.json", {"training": [item]})
    assert json.loads(p.read_text())["training"][0]["image"] == ["images/a.png", "images/b.png"]
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("images", "datalist.json"):
        (tmp_path / name).rename(moved / name)
    want = [str(moved / "images" / n) for n in ("a.png", "b.png")]
    assert read_datalist(moved / "datalist.json", "training")[0]["image"] == want
    assert load_decathlon_datalist(str(moved / "datalist.json"))[0]["image"] == want


def test_move_into_place(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "x.png").write_text("new")
    (src / "datalist.json").write_text("{}")
    dst = tmp_path / "dst"
    (dst / "images").mkdir(parents=True)
    (dst / "images" / "old.png").write_text("old")
    (dst / "keep.txt").write_text("k")
    move_into_place(src, dst)
    assert (dst / "images" / "x.png").read_text() == "new" and not (dst / "images" / "old.png").exists()
    assert (dst / "datalist.json").read_text() == "{}" and (dst / "keep.txt").read_text() == "k"
    assert not any(src.iterdir())  # everything moved
    # a missing destination is replaced in one rename
    src2 = tmp_path / "src2"
    (src2 / "a").mkdir(parents=True)
    move_into_place(src2, tmp_path / "new")
    assert (tmp_path / "new" / "a").is_dir() and not src2.exists()


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_prepared_and_generated_dataset_folders_get_the_umask_permissions(tmp_path, mask):
    """Dataset folders moved into place from a temporary folder have mkdir's mode (0o777 minus the umask)."""
    import os

    from PIL import Image

    from monai_gmr.data import ensure_nuclei_dataset, ensure_wsi_dataset
    from monai_gmr.data.prepare_nuclei import prepare_nuclei_dataset

    (tmp_path / "raw" / "images").mkdir(parents=True)
    (tmp_path / "raw" / "labels").mkdir()
    lab = np.zeros((16, 16), np.uint8)
    lab[4:9, 4:9] = 1
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 100 + i, np.uint8)).save(tmp_path / "raw" / "images" / f"t{i}.png")
        Image.fromarray(lab).save(tmp_path / "raw" / "labels" / f"t{i}.png")
    old = os.umask(mask)
    try:
        prepare_nuclei_dataset(tmp_path / "raw", tmp_path / "prepared")
        ensure_nuclei_dataset(tmp_path / "nuclei", n_images=2, size=64)
        ensure_wsi_dataset(tmp_path / "wsi", n_slides=1, size=512, patches_per_slide=4, patch_size=32)
    finally:
        os.umask(old)
    modes = {name: oct(os.stat(tmp_path / name).st_mode & 0o777) for name in ("prepared", "nuclei", "wsi")}
    assert modes == dict.fromkeys(modes, oct(0o777 & ~mask))


def test_stratified_split_does_not_depend_on_which_class_comes_first():
    """Strata are split in a fixed (sorted) order from one seeded generator: listing the class-1 items before the
    class-0 ones (each class in the same order) gives the same members in every split, and within a split the input
    order is kept."""
    zeros = [{"image": f"a{i}.png", "label": 0} for i in range(10)]
    ones = [{"image": f"b{i}.png", "label": 1} for i in range(10)]
    s1 = split_items(zeros + ones, 0.2, 0.2, seed=5, stratify_key="label")
    s2 = split_items(ones + zeros, 0.2, 0.2, seed=5, stratify_key="label")
    for split in ("training", "validation", "test"):
        assert sorted(i["image"] for i in s1[split]) == sorted(i["image"] for i in s2[split]), split
        order = [i["image"] for i in s1[split]]
        assert order == [i["image"] for i in zeros + ones if i["image"] in order]
