"""Tests of the patch collections: PCam HDF5 and image folders / labels CSV (Kather, Kaggle PCam)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from monai_gmr.data.patches import (
    ImageFolderDataset,
    PCamH5Dataset,
    find_pcam_files,
    image_folder_datalist,
    load_rgb_tensor,
    write_pcam_h5,
)
from tests.conftest import shared_path


def _pcam(tmp_path, n=6, split="train"):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (n, 96, 96, 3), dtype=np.uint8)
    y = (np.arange(n) % 2).astype(np.uint8)
    with h5py.File(tmp_path / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
        f.create_dataset("x", data=x)
    with h5py.File(tmp_path / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
        f.create_dataset("y", data=y.reshape(-1, 1, 1, 1))
    return x, y


def test_pcam_h5_dataset(tmp_path):
    x, y = _pcam(tmp_path)
    (xp, yp), = find_pcam_files(tmp_path, split="train")
    ds = PCamH5Dataset(xp)  # the *_y.h5 sibling is found
    assert len(ds) == 6 and ds.y_path == yp
    item = ds[3]
    assert item["image"].shape == (3, 96, 96) and item["image"].dtype == torch.float32
    assert item["label"] == 1
    torch.testing.assert_close(item["image"], torch.from_numpy(x[3].transpose(2, 0, 1)).float() / 255)
    sub = PCamH5Dataset(xp, yp, indices=[0, 5], scale=False)
    assert len(sub) == 2 and sub[1]["label"] == 1 and float(sub[1]["image"].max()) > 1.0
    # item j of a subset is patch indices[j] (image and label), not patch j
    sub = PCamH5Dataset(xp, yp, indices=[3, 0, 4], scale=False)
    for j, i in enumerate([3, 0, 4]):
        assert sub[j]["label"] == int(y.reshape(-1)[i]) == i % 2
        assert torch.equal(sub[j]["image"], torch.from_numpy(x[i].transpose(2, 0, 1)).float())
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 96, 96) and batch["label"].tolist() == [0, 1, 0, 1]


def test_pcam_h5_with_monai_transforms_and_workers(tmp_path):
    from monai.data import DataLoader
    from monai.transforms import Compose, RandFlipd, ScaleIntensityd

    _pcam(tmp_path, n=4)
    (xp, _), = find_pcam_files(tmp_path)
    ds = PCamH5Dataset(xp, transform=Compose([ScaleIntensityd("image"), RandFlipd("image", prob=0.0)]))
    loader = DataLoader(ds, batch_size=2, num_workers=1)  # h5 handle reopened in the worker
    labels = [int(v) for b in loader for v in b["label"]]
    assert labels == [0, 1, 0, 1]


def test_pcam_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="_x.h5"):
        find_pcam_files(tmp_path)
    _pcam(tmp_path, n=4)
    (xp, yp), = find_pcam_files(tmp_path)
    with h5py.File(tmp_path / "bad_y.h5", "w") as f:
        f.create_dataset("y", data=np.zeros(3))
    with pytest.raises(ValueError, match="bad_y.h5"):
        PCamH5Dataset(xp, tmp_path / "bad_y.h5")
    with pytest.raises(ValueError, match="no dataset 'images'"):
        PCamH5Dataset(xp, x_key="images")
    (tmp_path / "junk_x.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="junk_x.h5"):
        PCamH5Dataset(tmp_path / "junk_x.h5")
    with pytest.raises(FileNotFoundError, match="nope_x.h5"):
        PCamH5Dataset(tmp_path / "nope_x.h5")


def test_write_pcam_h5_roundtrip(tmp_path):
    imgs = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    xp, yp = write_pcam_h5(tmp_path / "p", imgs, [1, 0, 1])
    ds = PCamH5Dataset(xp)
    assert [ds[i]["label"] for i in range(3)] == [1, 0, 1] and ds[0]["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        write_pcam_h5(tmp_path / "q", imgs.astype(float), [0, 0, 0])
    for bad in ([1, -1, 0], [0, 256, 1], [0, 0.5, 1]):  # were written as 255 / 0 / 0 without a word
        with pytest.raises(ValueError, match="labels must be integers in"):
            write_pcam_h5(tmp_path / "r", imgs, bad)
    assert not (tmp_path / "r_x.h5").exists()


def _folder(tmp_path):
    for c, colour in (("b_stroma", 200), ("a_tumor", 50)):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 10, 3), colour, np.uint8)).save(tmp_path / c / f"{c}_{i}.tif")
    return tmp_path


def test_image_folder_class_folders_and_csv(tmp_path):
    root = _folder(tmp_path)
    items, names = image_folder_datalist(root)
    assert names == ["a_tumor", "b_stroma"] and [i["label"] for i in items] == [0, 0, 1, 1]
    (root / "labels.csv").write_text("file,label\nb_stroma/b_stroma_0.tif,b_stroma\na_tumor/a_tumor_1,a_tumor\n")
    items2, names2 = image_folder_datalist(root, labels_csv="labels.csv")
    assert names2 == ["a_tumor", "b_stroma"] and [i["label"] for i in items2] == [1, 0]
    assert items2[1]["image"].endswith("a_tumor_1.tif")  # extension added
    (root / "bad.csv").write_text("file,label\nmissing.tif,0\n")
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        image_folder_datalist(root, labels_csv="bad.csv")
    ds = ImageFolderDataset(root)
    d = ds[0]
    assert d["image"].shape == (3, 8, 10) and d["label"] == 0 and float(d["image"].mean()) == pytest.approx(50 / 255)
    assert ds.class_names == ["a_tumor", "b_stroma"]


@pytest.mark.parametrize("labels_csv", ["auto", "labels.csv"])
def test_image_folder_relative_root_with_labels_csv(tmp_path, monkeypatch, labels_csv):
    """A relative ``root`` with a labels CSV (``"auto"`` or relative to root) and a relative ``image_dir``."""
    root = tmp_path / "rel" / "patches"
    root.mkdir(parents=True)
    _folder(root)
    (root / "labels.csv").write_text("file,label\nb_stroma/b_stroma_0.tif,1\na_tumor/a_tumor_1,0\n")
    monkeypatch.chdir(tmp_path)
    items, _ = image_folder_datalist("rel/patches", labels_csv=labels_csv)
    assert [i["label"] for i in items] == [1, 0] and all(Path(i["image"]).is_file() for i in items)
    (root / "labels.csv").write_text("file,label\nb_stroma_1.tif,1\n")
    items2, _ = image_folder_datalist("rel/patches", labels_csv=labels_csv, image_dir="b_stroma")  # relative to root
    assert [Path(i["image"]) for i in items2] == [root / "b_stroma" / "b_stroma_1.tif"]


def test_image_folder_items_feed_monai_loadimaged(tmp_path):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRanged

    items, _ = image_folder_datalist(_folder(tmp_path))
    t = Compose([LoadImaged("image", reader="PILReader"), EnsureChannelFirstd("image"), ScaleIntensityRanged("image", 0, 255, 0, 1)])
    out = t(items[-1])
    assert tuple(out["image"].shape)[0] == 3 and out["label"] == 1


def test_kather2016_class_folders_and_csv():
    root = shared_path("data", "kather2016_crc_texture_tiles")
    items, names = image_folder_datalist(root)
    assert len(items) == 24 and names[0] == "01_TUMOR" and len(names) == 8
    assert np.bincount([i["label"] for i in items]).tolist() == [3] * 8
    items_csv, names_csv = image_folder_datalist(root, labels_csv="labels.csv")
    assert names_csv == names
    assert sorted((i["image"], i["label"]) for i in items_csv) == sorted((i["image"], i["label"]) for i in items)
    img = load_rgb_tensor(items[0]["image"])
    assert img.shape == (3, 150, 150) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0


def test_pcam_kaggle_folder_with_ids():
    root = shared_path("data", "pcam_kaggle_hcd_patches")
    items, names = image_folder_datalist(root, labels_csv="mock_train_labels.csv")
    assert len(items) == 15 and names == [] and sum(i["label"] for i in items) == 5
    ds = ImageFolderDataset(items)
    d = ds[0]
    assert d["image"].shape == (3, 96, 96) and d["label"] == items[0]["label"]
    assert items[0]["image"].endswith("f38a6374c348f90b587e046aac6079959adf3835.tif") and items[0]["label"] == 0


def test_image_folder_csv_short_row_is_a_clear_error(tmp_path):
    """A row with fewer cells than the header (its label missing) raised AttributeError: 'NoneType' object has no
    attribute 'strip', naming neither the CSV nor the row."""
    root = _folder(tmp_path)
    (root / "labels.csv").write_text("file,label\nb_stroma/b_stroma_0.tif,1\na_tumor/a_tumor_1.tif\n")
    with pytest.raises(ValueError, match=r"labels\.csv.*row 3.*'label'"):
        image_folder_datalist(root, labels_csv="labels.csv")


def test_image_folder_csv_with_bom_and_spaced_header(tmp_path):
    """A CSV saved by Excel ("CSV UTF-8") starts with a byte-order mark and ``file, label`` has a space: the header
    names were read verbatim ('\\ufefffile', ' label') and no file/label column was found."""
    root = _folder(tmp_path)
    (root / "labels.csv").write_text("\ufefffile, label\nb_stroma/b_stroma_0.tif, 1\na_tumor/a_tumor_1.tif ,0\n", "utf-8")
    items, _ = image_folder_datalist(root, labels_csv="labels.csv")
    assert [(Path(i["image"]).name, i["label"]) for i in items] == [("b_stroma_0.tif", 1), ("a_tumor_1.tif", 0)]


def test_pcam_float_images_are_not_silently_scaled(tmp_path):
    """A ``*_x.h5`` of float images in [0, 1] was divided by 255 again: every patch was nearly black (max 0.004)."""
    with h5py.File(tmp_path / "f_x.h5", "w") as f:
        f.create_dataset("x", data=np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"f_x\.h5.*float32.*uint8.*scale=False"):
        PCamH5Dataset(tmp_path / "f_x.h5")
    ds = PCamH5Dataset(tmp_path / "f_x.h5", scale=False)  # the values as stored
    assert 0.5 < float(ds[0]["image"].max()) <= 1.0


def test_pcam_labels_must_be_integers(tmp_path):
    """A scalar ``y`` raised IndexError naming no file; fractional labels (0.5) were truncated to 0 without a word."""
    _pcam(tmp_path, n=4)
    (xp, _), = find_pcam_files(tmp_path)
    with h5py.File(tmp_path / "scalar_y.h5", "w") as f:
        f.create_dataset("y", data=np.uint8(1))
    with pytest.raises(ValueError, match=r"scalar_y\.h5"):
        PCamH5Dataset(xp, tmp_path / "scalar_y.h5")
    with h5py.File(tmp_path / "frac_y.h5", "w") as f:
        f.create_dataset("y", data=np.array([0.0, 1.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match=r"frac_y\.h5.*integer"):
        PCamH5Dataset(xp, tmp_path / "frac_y.h5")
    with h5py.File(tmp_path / "float_y.h5", "w") as f:  # integral floats are fine
        f.create_dataset("y", data=np.array([0.0, 1.0, 0.0, 1.0]))
    assert [PCamH5Dataset(xp, tmp_path / "float_y.h5")[i]["label"] for i in range(4)] == [0, 1, 0, 1]


def test_image_folder_csv_not_utf8_names_the_file(tmp_path):
    """A cp1252 labels CSV raised a bare UnicodeDecodeError naming no file."""
    root = _folder(tmp_path)
    (root / "labels.csv").write_bytes("file,label\nb_stroma/b_stroma_0.tif,stromé\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"labels\.csv.*UTF-8"):
        image_folder_datalist(root, labels_csv="labels.csv")


def test_image_folder_csv_image_listed_twice(tmp_path, caplog):
    """An image listed twice was kept twice: with two labels it trained on contradictory targets without a word, with
    one it could land in both the training and the test split."""
    root = _folder(tmp_path)
    (root / "l.csv").write_text(
        "file,label\na_tumor/a_tumor_0.tif,1\nb_stroma/b_stroma_0.tif,0\n./a_tumor/a_tumor_0.tif,0\n"
    )
    with pytest.raises(ValueError, match=r"l\.csv' row 4: image './a_tumor/a_tumor_0.tif' has label '0' but row 2"):
        image_folder_datalist(root, labels_csv="l.csv")
    (root / "l.csv").write_text("file,label\na_tumor/a_tumor_0.tif,1\nb_stroma/b_stroma_0.tif,0\na_tumor/a_tumor_0,1\n")
    with caplog.at_level("WARNING", logger="monai_gmr.data.patches"):
        items, _ = image_folder_datalist(root, labels_csv="l.csv")
    assert [(Path(i["image"]).name, i["label"]) for i in items] == [("a_tumor_0.tif", 1), ("b_stroma_0.tif", 0)]
    assert "row 4: image 'a_tumor/a_tumor_0' is listed again (row 2)" in caplog.text


def test_image_folder_csv_float_formatted_integer_labels(tmp_path):
    """Labels written as ``1.0`` (pandas, for an integer column that held a missing value) were class names, sorted as
    strings: with 11 classes ``"10.0"`` came before ``"2.0"``, so label 2.0 became class 3 and 10.0 class 2."""
    rows = []
    for k in range(11):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"i{k}.png")
        rows.append(f"i{k}.png,{float(k)}")
    (tmp_path / "l.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    items, names = image_folder_datalist(tmp_path, "l.csv")
    assert [i["label"] for i in items] == list(range(11)) and names == []
    (tmp_path / "l.csv").write_text("file,label\ni0.png,0.5\ni1.png,1\n")  # not integers: class names, as before
    assert [i["label"] for i in image_folder_datalist(tmp_path, "l.csv")[0]] == [0, 1]


def test_class_folder_without_images_is_refused(tmp_path):
    """The ``__MACOSX/`` folder an unzipped archive leaves (only hidden ``._*`` files) became class 0, shifting every
    real class by one (the num_classes error then advised one class too many)."""
    root = _folder(tmp_path)
    (root / "__MACOSX" / "a_tumor").mkdir(parents=True)
    (root / "__MACOSX" / "a_tumor" / "._a_tumor_0.tif").write_bytes(b"\x00")
    with pytest.raises(ValueError, match=r"sub-folder\(s\) \['__MACOSX'\] .* hold no image"):
        image_folder_datalist(root)
    items, names = image_folder_datalist(root, classes=["a_tumor", "b_stroma"])
    assert names == ["a_tumor", "b_stroma"] and [i["label"] for i in items] == [0, 0, 1, 1]


def test_find_pcam_files_keeps_only_the_split_asked_for(tmp_path):
    """``find_pcam_files(folder, split)`` lists only the files of that split: ignoring it, a "valid" dataset also
    held the training patches."""
    _pcam(tmp_path, n=2, split="train")
    _pcam(tmp_path, n=2, split="valid")
    assert [x.name for x, _ in find_pcam_files(tmp_path)] == [
        "camelyonpatch_level_2_split_train_x.h5", "camelyonpatch_level_2_split_valid_x.h5"]
    ((x, y),) = find_pcam_files(tmp_path, split="valid")
    assert x.name == "camelyonpatch_level_2_split_valid_x.h5" and y.name == "camelyonpatch_level_2_split_valid_y.h5"
    with pytest.raises(FileNotFoundError, match="for split 'test'"):
        find_pcam_files(tmp_path, split="test")


def test_pcam_labels_with_several_values_per_patch_and_indices_past_the_end_are_refused(tmp_path):
    """Labels are one value per patch (``(N,)`` or ``(N, 1, 1, 1)``): a ``(N, 2)`` array (e.g. one-hot) has the right
    first dimension but twice the values and was read as the first ``N`` of them (the labels of the first half of
    the patches, in pairs); an index equal to the number of patches is out of range (refused at construction, not
    as an h5py error in a worker)."""
    _pcam(tmp_path, n=4)
    ((xp, _),) = find_pcam_files(tmp_path)
    with h5py.File(tmp_path / "onehot_y.h5", "w") as f:
        f.create_dataset("y", data=np.eye(2, dtype=np.uint8)[[0, 1, 0, 1]])
    with pytest.raises(ValueError, match=r"onehot_y\.h5' have shape \(4, 2\)"):
        PCamH5Dataset(xp, tmp_path / "onehot_y.h5")
    assert len(PCamH5Dataset(xp, indices=[3, 0])) == 2
    for bad in ([4], [0, -1]):
        with pytest.raises(ValueError, match="indices out of range for 4 patches"):
            PCamH5Dataset(xp, indices=bad)


def test_pcam_dataset_pickles_after_it_was_read(tmp_path):
    """A dataset read in the main process (its h5py handle open) is pickled without the handle and reopens it: spawn
    workers (macOS, Windows) pickle it, and h5py objects cannot be pickled."""
    import pickle

    x, _ = _pcam(tmp_path, n=3)
    ((xp, _),) = find_pcam_files(tmp_path)
    ds = PCamH5Dataset(xp, scale=False)
    first = ds[1]
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[1]["image"], first["image"]) and copy[1]["label"] == first["label"] == 1
    assert ds[2]["label"] == 0  # the original still reads
    ds.close()
    copy.close()


def test_write_pcam_h5_is_atomic(tmp_path, monkeypatch):
    """``write_pcam_h5`` writes each file through a temporary file: a failure while writing leaves an earlier file
    as it was (not an empty HDF5 file without its dataset) and nothing else in the folder."""
    imgs = np.zeros((2, 8, 8, 3), np.uint8)
    xp, yp = write_pcam_h5(tmp_path / "p", imgs, [0, 1])
    before = {p.name: p.read_bytes() for p in (xp, yp)}

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", broken)
    with pytest.raises(OSError, match="disk full"):
        write_pcam_h5(tmp_path / "p", imgs + 1, [1, 0])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_csv_integer_labels_must_index_the_given_classes(tmp_path):
    """With ``classes``, an integer label must be ``0 .. len(classes) - 1``: label 2 of two classes is refused naming
    the row (it was kept, and crashed the loss later as a target out of range)."""
    root = _folder(tmp_path)
    (root / "ok.csv").write_text("file,label\na_tumor/a_tumor_0.tif,1\nb_stroma/b_stroma_0.tif,0\n")
    items, names = image_folder_datalist(root, labels_csv="ok.csv", classes=["x", "y"])
    assert names == ["x", "y"] and [i["label"] for i in items] == [1, 0]
    (root / "bad.csv").write_text("file,label\na_tumor/a_tumor_0.tif,0\nb_stroma/b_stroma_0.tif,2\n")
    with pytest.raises(ValueError, match=r"row 3: label 2 outside classes \['x', 'y'\]"):
        image_folder_datalist(root, labels_csv="bad.csv", classes=["x", "y"])


def test_image_folder_dataset_scale_false_keeps_0_255(tmp_path):
    """``ImageFolderDataset(scale=False)`` gives the stored 0..255 values as floats (like ``PCamH5Dataset``)."""
    root = _folder(tmp_path)
    raw = ImageFolderDataset(root, scale=False)[0]["image"]
    assert raw.dtype == torch.float32 and float(raw.max()) == 50.0
    assert torch.equal(ImageFolderDataset(root)[0]["image"], raw / 255.0)


def test_find_pcam_files_without_a_label_file(tmp_path):
    """An ``*_x.h5`` without its ``*_y.h5`` (a PCam test split shipped without labels) is listed with ``None``, not
    with the path of a file that does not exist."""
    _pcam(tmp_path, n=2)
    (tmp_path / "camelyonpatch_level_2_split_train_y.h5").unlink()
    assert find_pcam_files(tmp_path) == [(tmp_path / "camelyonpatch_level_2_split_train_x.h5", None)]
