"""Tests of python -m monai_gmr.data.prepare_nuclei: folders, MoNuSeg XML, CPM ASCII masks, errors, CPM-15."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_gmr.data.prepare_nuclei import (
    find_nuclei_pairs,
    instance_boundaries,
    main,
    prepare_nuclei_dataset,
    rasterize_aperio_xml,
    read_cpm_txt_mask,
    read_instance_mask,
    read_rgb_image,
)
from tests.conftest import ROOT, shared_path


def _inst(h=20, w=24, i: int | None = None) -> np.ndarray:
    lab = np.zeros((h, w), np.uint16)
    lab[2:8, 2:9] = 7  # ids need not be consecutive in the input
    lab[2:8, 9:14] = 3  # touching instance
    lab[12:18, 15:22] = 12
    if i is not None:  # one more nucleus, placed per image: every image of a folder case has its own mask
        lab[14:17, 1 + 2 * i : 3 + 2 * i] = 20 + i
    return lab


def _write_folder_case(root: Path, n: int = 5, suffix: str = "_label") -> None:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / "images" / f"t{i}.png")
        Image.fromarray(_inst(i=i)).save(root / "labels" / f"t{i}{suffix}.png")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def test_folders_format(tmp_path):
    from monai_gmr.data.prepare_nuclei import relabel_sequential

    _write_folder_case(tmp_path / "raw")
    out = tmp_path / "out"
    dl_path = prepare_nuclei_dataset(tmp_path / "raw", out, boundary=True, seed=0)
    dl = json.loads(dl_path.read_text())
    assert dl["preparation"]["format"] == "folders"
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [3, 1, 1]
    items = dl["training"] + dl["validation"] + dl["test"]
    assert sorted(Path(it["image"]).name for it in items) == [f"t{i}.png" for i in range(5)]
    for it in items:  # every image keeps its own mask (the masks differ: a mis-pairing shows)
        i = int(Path(it["image"]).stem[1:])
        assert set(it) == {"image", "label", "instance", "mask", "boundary"} and it["label"] == it["instance"]
        assert all(Path(it[k]).name == f"t{i}.png" for k in ("label", "instance", "mask", "boundary"))
        raw = np.asarray(Image.open(tmp_path / "raw" / "images" / f"t{i}.png"))
        assert np.array_equal(np.asarray(Image.open(out / it["image"])), raw)
        inst = np.asarray(Image.open(out / it["instance"]))
        assert inst.dtype == np.uint16 and np.array_equal(inst, relabel_sequential(_inst(i=i)))  # relabelled 1..N
        assert sorted(np.unique(inst).tolist()) == [0, 1, 2, 3, 4]
        assert np.array_equal(np.asarray(Image.open(out / it["mask"])), (_inst(i=i) > 0).astype(np.uint8))
    three = np.asarray(Image.open(out / dl["training"][0]["boundary"]))
    assert set(np.unique(three).tolist()) == {0, 1, 2}
    assert three[5, 8] == 2 and three[5, 9] == 2  # the shared border of the touching nuclei
    assert three[5, 5] == 1 and three[0, 0] == 0
    assert np.asarray(Image.open(out / dl["training"][0]["image"])).shape == (20, 24, 3)
    # same seed -> same split; another seed -> another split (5 items: seeds 0 and 1 differ)
    again = json.loads(prepare_nuclei_dataset(tmp_path / "raw", tmp_path / "out2", seed=0).read_text())
    other = json.loads(prepare_nuclei_dataset(tmp_path / "raw", tmp_path / "out3", seed=1).read_text())
    split = {k: [i["image"] for i in dl[k]] for k in ("training", "validation", "test")}
    assert {k: [i["image"] for i in again[k]] for k in split} == split
    assert {k: [i["image"] for i in other[k]] for k in split} != split


def test_relative_output_and_pairs_paths(tmp_path, monkeypatch):
    """A relative ``--output`` (and pairs CSV) gives a datalist relative to the dataset, not to the temp folder."""
    from monai_gmr.data import read_datalist

    _write_folder_case(tmp_path / "raw", n=3)
    with open(tmp_path / "raw" / "pairs.csv", "w") as f:
        f.write("image,label\n" + "".join(f"images/t{i}.png,labels/t{i}_label.png\n" for i in range(3)))
    monkeypatch.chdir(tmp_path)
    assert main(["--input", "raw", "--output", "rel/out", "--seed", "0"]) == 0
    dl = json.loads((tmp_path / "rel/out/datalist.json").read_text())
    items = dl["training"] + dl["validation"] + dl["test"]
    assert len(items) == 3 and all(not Path(it[k]).is_absolute() for it in items for k in ("image", "label"))
    assert {it["image"] for it in items} == {f"images/t{i}.png" for i in range(3)}
    for it in read_datalist(tmp_path / "rel/out/datalist.json", "training"):  # loadable from another folder
        assert Path(it["image"]).is_file() and Path(it["label"]).is_file()
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == ["out"]  # no temp folder left behind
    # provenance: the source files are recorded absolute (they were relative to the working folder of the run)
    for st in dl["images"]:
        for k in ("source_image", "source_mask"):
            assert Path(st[k]).is_absolute() and Path(st[k]).is_file(), st


def test_binary_and_colour_masks_become_instances(tmp_path):
    binary = (_inst() > 0).astype(np.uint8) * 255
    p = tmp_path / "b.png"
    Image.fromarray(binary).save(p)
    lab = read_instance_mask(p)
    assert lab.max() == 2  # the two touching squares merge into one component, plus the separate one
    rgb = np.zeros((20, 24, 3), np.uint8)
    rgb[_inst() == 7] = (255, 0, 0)
    rgb[_inst() == 3] = (0, 255, 0)
    rgb[_inst() == 12] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert read_instance_mask(tmp_path / "c.png").max() == 3
    np.save(tmp_path / "n.npy", _inst().astype(np.int32))
    assert read_instance_mask(tmp_path / "n.npy").max() == 3


def test_binary_mask_components_are_8_connected(tmp_path):
    """A binary mask's nuclei are its 8-connected components (as documented and as ``instance_ids`` reads a binary
    label): two squares touching only at a corner are one nucleus, not two (4-connectivity)."""
    binary = np.zeros((12, 12), np.uint8)
    binary[1:5, 1:5] = binary[5:9, 5:9] = 255  # corners (4, 4) and (5, 5) touch diagonally
    binary[1:3, 9:11] = 255
    Image.fromarray(binary).save(tmp_path / "d.png")
    lab = read_instance_mask(tmp_path / "d.png")
    assert lab.max() == 2 and lab[4, 4] == lab[5, 5] != lab[1, 9]


def _write_xml(path: Path, polygons: list[list[tuple[float, float]]]) -> None:
    regions = "".join(
        f'<Region Id="{i + 1}" Type="0"><Attributes/><Vertices>'
        + "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in poly)
        + "</Vertices></Region>"
        for i, poly in enumerate(polygons)
    )
    path.write_text(
        '<?xml version="1.0"?><Annotations MicronsPerPixel="0.25"><Annotation Id="1"><Attributes/>'
        f"<Regions><RegionAttributeHeaders/>{regions}</Regions></Annotation></Annotations>"
    )


def test_aperio_xml_rasterisation(tmp_path):
    xml = tmp_path / "a.xml"
    _write_xml(xml, [[(2, 2), (10, 2), (10, 8), (2, 8)], [(12.5, 3), (18, 3), (18, 9)], [(1, 1), (2, 2)]])
    lab = rasterize_aperio_xml(xml, (12, 20))
    assert lab.shape == (12, 20) and lab.max() == 2  # the 2-vertex region is skipped
    assert lab[5, 5] == 1 and lab[2, 2] == 1 and lab[8, 10] == 1  # polygon incl. its outline
    assert lab[4, 17] == 2 and lab[8, 13] == 0  # triangle: inside / outside
    assert (lab == 1).sum() == 9 * 7
    bad = tmp_path / "bad.xml"
    bad.write_text("<Annotations><Annotation><Regions><Region><Vertices><Vertex X='a' Y='1'/>")
    with pytest.raises(ValueError, match="bad.xml"):
        rasterize_aperio_xml(bad, (4, 4))


def test_monuseg_xml_format(tmp_path):
    raw = tmp_path / "MoNuSeg"
    (raw / "Tissue Images").mkdir(parents=True)
    (raw / "Annotations").mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(raw / "Tissue Images" / f"TCGA-{i}.tif")
        _write_xml(raw / "Annotations" / f"TCGA-{i}.xml", [[(2, 2), (6, 2), (6, 6), (2, 6)], [(9, 9), (13, 9), (13, 13)]])
    pairs, fmt = find_nuclei_pairs(raw)
    assert fmt == "monuseg_xml" and [p.name for p in pairs] == ["TCGA-0", "TCGA-1", "TCGA-2"]
    dl = json.loads(prepare_nuclei_dataset(raw, tmp_path / "out", label="binary").read_text())
    item = dl["training"][0]
    assert item["label"] == item["mask"]
    assert np.asarray(Image.open(tmp_path / "out" / item["instance"])).max() == 2


def _write_cpm_txt(path: Path, lab: np.ndarray, header: str | None = None) -> None:
    h, w = lab.shape
    path.write_text((header or f"{w} {h}") + "\n" + "\n".join(str(int(v)) for v in lab.ravel()) + "\n")


def test_cpm_txt_reader_and_format(tmp_path):
    lab = _inst(6, 5)
    lab[:] = 0
    lab[1, 3] = 2
    lab[4, 0] = 1
    _write_cpm_txt(tmp_path / "m.txt", lab)
    got = read_cpm_txt_mask(tmp_path / "m.txt")
    assert got.shape == (6, 5) and got[1, 3] == 2 and got[4, 0] == 1 and got.sum() == 3  # x fastest
    _write_cpm_txt(tmp_path / "short.txt", lab, header="5 7")
    with pytest.raises(ValueError, match="short.txt.*5x7"):
        read_cpm_txt_mask(tmp_path / "short.txt")
    (tmp_path / "junk.txt").write_text("hello world\n")
    with pytest.raises(ValueError, match="junk.txt"):
        read_cpm_txt_mask(tmp_path / "junk.txt")
    raw = tmp_path / "cpm"
    raw.mkdir()  # original CPM layout: imageXX.png and imageXX_mask.txt side by side
    for i in range(3):
        Image.fromarray(np.full((20, 24, 4), 180, np.uint8)).save(raw / f"image{i:02d}.png")  # RGBA
        _write_cpm_txt(raw / f"image{i:02d}_mask.txt", _inst())
    (raw / "README_training.txt").write_text("readme")
    dl = json.loads(prepare_nuclei_dataset(raw, tmp_path / "out").read_text())
    assert dl["preparation"]["format"] == "cpm_txt"
    items = dl["training"] + dl["validation"] + dl["test"]
    assert len(items) == 3
    assert np.asarray(Image.open(tmp_path / "out" / items[0]["image"])).shape == (20, 24, 3)  # alpha dropped


def test_size_mismatch_names_files_and_writes_nothing(tmp_path):
    _write_folder_case(tmp_path / "raw", n=3)
    Image.fromarray(_inst(21, 24)).save(tmp_path / "raw" / "labels" / "t1_label.png")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"size mismatch.*t1\.png.*t1_label\.png"):
        prepare_nuclei_dataset(tmp_path / "raw", out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no temp folder left behind


def test_unreadable_image_names_file_and_keeps_old_output(tmp_path):
    _write_folder_case(tmp_path / "raw", n=3)
    out = tmp_path / "out"
    prepare_nuclei_dataset(tmp_path / "raw", out)
    before = _tree(out)
    (tmp_path / "raw" / "images" / "t2.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*t2\.png"):
        prepare_nuclei_dataset(tmp_path / "raw", out, overwrite=True)
    assert _tree(out) == before  # the previous dataset is untouched
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare_nuclei_dataset(tmp_path / "raw", out)


def test_overwrite_without_boundary_removes_the_old_boundary_masks(tmp_path):
    """``--overwrite`` replaced only the folders the new run wrote: after a ``--boundary`` run, a run without it left
    the old ``boundary/`` masks beside a datalist that no longer names them."""
    _write_folder_case(tmp_path / "raw", n=3)
    out = tmp_path / "out"
    prepare_nuclei_dataset(tmp_path / "raw", out, boundary=True)
    assert (out / "boundary").is_dir()
    prepare_nuclei_dataset(tmp_path / "raw", out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["datalist.json", "images", "labels", "masks"]
    assert "boundary" not in json.loads((out / "datalist.json").read_text())["training"][0]


def test_auto_format_ignores_text_and_xml_files_that_are_not_annotations(tmp_path):
    """``--format auto`` took any .txt (e.g. CITATION.txt beside the images) for a CPM-15 mask and any .xml for
    MoNuSeg annotations, and a folders-layout dataset then failed with "no cpm_txt annotation"."""
    _write_folder_case(tmp_path / "raw", n=2)
    (tmp_path / "raw" / "CITATION.txt").write_text("@article{cpm, title={...}, year={2015}}\n")
    (tmp_path / "raw" / "images" / "scanner.xml").write_text("<?xml version='1.0'?><Scanner model='x'/>")
    pairs, fmt = find_nuclei_pairs(tmp_path / "raw")
    assert fmt == "folders" and len(pairs) == 2
    lab = _inst()
    (tmp_path / "cpm" / "masks_txt").mkdir(parents=True)
    _write_cpm_txt(tmp_path / "cpm" / "masks_txt" / "t0_mask.txt", lab)
    Image.fromarray(np.zeros((*lab.shape, 3), np.uint8)).save(tmp_path / "cpm" / "t0.png")
    assert find_nuclei_pairs(tmp_path / "cpm")[1] == "cpm_txt"


def test_missing_annotation_and_bad_input(tmp_path):
    _write_folder_case(tmp_path / "raw", n=2)
    (tmp_path / "raw" / "labels" / "t1_label.png").unlink()
    with pytest.raises(ValueError, match="t1.png"):
        find_nuclei_pairs(tmp_path / "raw")
    with pytest.raises(FileNotFoundError, match="nope"):
        find_nuclei_pairs(tmp_path / "nope")
    with pytest.raises(ValueError, match="format"):
        find_nuclei_pairs(tmp_path / "raw", format="dicom")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_rgb_image(tmp_path / "missing.png")


def test_short_pairs_csv_row_is_a_clear_error(tmp_path, capsys):
    _write_folder_case(tmp_path / "raw", n=2)
    pairs = tmp_path / "raw" / "pairs.csv"
    pairs.write_text("image,label\nimages/t0.png,labels/t0_label.png\nimages/t1.png\n")
    with pytest.raises(ValueError, match=r"pairs\.csv.*row 3.*'label'"):
        find_nuclei_pairs(tmp_path / "raw")
    pairs.write_text("image,label\nimages/t0.png,\n")  # empty mask cell
    with pytest.raises(ValueError, match=r"pairs\.csv.*row 2"):
        find_nuclei_pairs(tmp_path / "raw")
    assert main(["--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out")]) == 1  # no traceback
    assert "row 2" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_cli_main_and_module(tmp_path, capsys):
    _write_folder_case(tmp_path / "raw", n=4, suffix="_mask")
    rc = main(["--input", str(tmp_path / "raw"), "--output", str(tmp_path / "o1"), "--format", "folders",
               "--boundary", "--seed", "3", "--val_frac", "0.25", "--test_frac", "0.25"])  # fmt: skip
    assert rc == 0 and "training: 2, validation: 1, test: 1" in capsys.readouterr().out
    assert (tmp_path / "o1" / "boundary").is_dir()
    assert main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o2")]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "raw"), "--output", str(tmp_path / "o4"), "--boundary", "false"]) == 0
    assert not (tmp_path / "o4" / "boundary").exists()


@pytest.mark.slow
def test_cli_as_module_subprocess(tmp_path):
    """``python -m monai_gmr.data.prepare_nuclei`` in a fresh interpreter (slow: imports torch and MONAI)."""
    _write_folder_case(tmp_path / "raw", n=4, suffix="_mask")
    proc = subprocess.run(
        [sys.executable, "-m", "monai_gmr.data.prepare_nuclei", "--input", str(tmp_path / "raw"), "--output",
         str(tmp_path / "o3"), "--seed", "0", "--boundary", "false"],
        capture_output=True, text=True, cwd=str(ROOT), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "RuntimeWarning" not in proc.stderr
    assert not (tmp_path / "o3" / "boundary").exists()
    # the module's logger keeps its package name under `python -m` (it logged as "__main__", outside "monai_gmr")
    assert "INFO monai_gmr.data.prepare_nuclei:" in proc.stderr and "__main__" not in proc.stderr, proc.stderr


def test_instance_boundaries_width():
    lab = np.zeros((11, 11), np.int32)
    lab[1:10, 1:10] = 1
    assert instance_boundaries(lab, 1).sum() == 32 and instance_boundaries(lab, 2).sum() == 81 - 25


# ------------------------------------------------------------------------------------------------------------------
# real data: ../shared/data/cpm15_nuclei_he (skipped when absent)
# ------------------------------------------------------------------------------------------------------------------
def _cpm_subset(tmp_path: Path, names: list[str], column: str) -> Path:
    cpm = shared_path("data", "cpm15_nuclei_he")
    with open(cpm / "pairs.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if Path(r["image"]).stem in names]
    out = tmp_path / "pairs.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", column])
        for r in rows:
            w.writerow([str(cpm / r["image"]), str(cpm / r[column])])
    return out


def test_cpm15_txt_and_png_agree_with_the_swap_fix(tmp_path):
    names = ["image04", "image05", "image07"]
    cpm = shared_path("data", "cpm15_nuclei_he")
    dl_png = json.loads(prepare_nuclei_dataset(cpm, tmp_path / "png", pairs=_cpm_subset(tmp_path, names, "label_png")).read_text())
    (tmp_path / "pairs.csv").unlink()
    dl_txt = json.loads(prepare_nuclei_dataset(cpm, tmp_path / "txt", format="cpm_txt",
                                               pairs=_cpm_subset(tmp_path, names, "mask_txt")).read_text())  # fmt: skip
    assert dl_txt["preparation"]["format"] == "cpm_txt"
    counts = {d["name"]: d["n_nuclei"] for d in dl_txt["images"]}
    assert counts == {"image04": 144, "image05": 346, "image07": 292}  # pairs.csv n_nuclei
    for d in dl_png["images"]:
        a = np.asarray(Image.open(tmp_path / "png" / "labels" / f"{d['name']}.png"))
        b = np.asarray(Image.open(tmp_path / "txt" / "labels" / f"{d['name']}.png"))
        assert np.array_equal(a, b)
        img = np.asarray(Image.open(tmp_path / "txt" / "images" / f"{d['name']}.png")).astype(float).mean(-1)
        assert img[b > 0].mean() < img[b == 0].mean() - 20  # nuclei darker than background: pairs are right


def test_cpm15_name_pairing_catches_the_swap(tmp_path):
    cpm = shared_path("data", "cpm15_nuclei_he")
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "masks_txt").mkdir()
    for n in ("image04", "image06"):
        (raw / "images" / f"{n}.png").symlink_to(cpm / "images" / f"{n}.png")
        (raw / "masks_txt" / f"{n}_mask.txt").symlink_to(cpm / "masks_txt" / f"{n}_mask.txt")
    with pytest.raises(ValueError, match=r"size mismatch.*image04\.png.*623x493.*image04_mask\.txt.*863x597"):
        prepare_nuclei_dataset(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cpm15_default_cli_layout(tmp_path):
    """The benchmark's call (``--input cpm15 --output X --seed 0``) uses pairs.csv (swap fixed), 15 images."""
    cpm = shared_path("data", "cpm15_nuclei_he")
    pairs, fmt = find_nuclei_pairs(cpm)
    assert fmt == "folders" and len(pairs) == 15
    by_name = {p.name: p for p in pairs}
    assert by_name["image04"].mask.name == "image04_label.png"
    pairs_txt, fmt_txt = find_nuclei_pairs(cpm, format="cpm_txt")
    assert fmt_txt == "cpm_txt" and {p.name: p.mask.name for p in pairs_txt}["image04"] == "image05_mask.txt"


def test_cpm_download_layout_with_poly_renderings(tmp_path):
    """The CPM-15 download holds ``imageXX.png``, ``imageXX_mask.txt`` and ``imageXX_poly.png`` (a rendering of the
    annotation on the image, see its README) side by side: the renderings were taken for images and the run failed
    with "no cpm_txt annotation ... for 3 image(s): [...image00_poly.png, ...]"."""
    raw = tmp_path / "cpm"
    raw.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 24, 3), 180, np.uint8)).save(raw / f"image{i:02d}.png")
        Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(raw / f"image{i:02d}_poly.png")
        _write_cpm_txt(raw / f"image{i:02d}_mask.txt", _inst(i=i))
    pairs, fmt = find_nuclei_pairs(raw)
    assert fmt == "cpm_txt" and [(p.name, p.image.name, p.mask.name) for p in pairs] == [
        (f"image{i:02d}", f"image{i:02d}.png", f"image{i:02d}_mask.txt") for i in range(3)
    ]
    # a _poly image without its base image is still an image without annotation
    (raw / "image00.png").unlink()
    with pytest.raises(ValueError, match=r"image00_poly\.png"):
        find_nuclei_pairs(raw)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_aperio_xml_non_finite_vertex_is_refused(tmp_path, bad):
    """``X="nan"``/``"inf"`` parse as floats and were drawn as some polygon without a word (the docstring promises a
    ValueError for bad vertex coordinates)."""
    xml = tmp_path / "a.xml"
    _write_xml(xml, [[(2, 2), (6, 2), (6, 6)], [(1, 1), (bad, 5), (5, 5)]])
    with pytest.raises(ValueError, match=r"a\.xml.*region 2.*bad vertex"):
        rasterize_aperio_xml(xml, (8, 8))


def test_pairs_csv_with_bom_and_spaces(tmp_path):
    """pairs.csv saved by Excel starts with a byte-order mark ('needs an 'image' column, has ['\\ufeffimage', ...]')
    and ``image, label`` cells with a space after the comma gave paths starting with a space."""
    _write_folder_case(tmp_path / "raw", n=2)
    (tmp_path / "raw" / "pairs.csv").write_text(
        "\ufeffimage, label\n" + "".join(f"images/t{i}.png, labels/t{i}_label.png\n" for i in range(2)), "utf-8"
    )
    pairs, fmt = find_nuclei_pairs(tmp_path / "raw")
    assert fmt == "folders" and [(p.image.name, p.mask.name) for p in pairs] == [
        (f"t{i}.png", f"t{i}_label.png") for i in range(2)
    ]
    assert all(p.image.is_file() and p.mask.is_file() for p in pairs)


def test_rgba_colour_mask_transparent_background(tmp_path):
    """A colour-coded RGBA mask with a transparent background whose colour is not black (here white, alpha 0): the
    background became the largest 'nucleus'."""
    rgba = np.zeros((20, 24, 4), np.uint8)
    rgba[..., :3] = 255  # transparent white
    rgba[_inst() == 7] = (255, 0, 0, 255)
    rgba[_inst() == 3] = (0, 255, 0, 255)
    rgba[_inst() == 12] = (0, 0, 255, 255)
    Image.fromarray(rgba).save(tmp_path / "c.png")
    lab = read_instance_mask(tmp_path / "c.png")
    assert lab.max() == 3 and np.array_equal(lab > 0, _inst() > 0)


def test_float_grey_image_is_scaled_not_blackened(tmp_path):
    """A single-channel float32 TIFF (PIL mode "F", values in [0, 1]) went through PIL's convert("RGB") and came out
    all black without a word; it is now scaled by its maximum like 16-bit images."""
    import tifffile

    grey = np.linspace(0.0, 1.0, 20 * 24, dtype=np.float32).reshape(20, 24)
    tifffile.imwrite(tmp_path / "f.tif", grey)
    rgb = read_rgb_image(tmp_path / "f.tif")
    assert rgb.shape == (20, 24, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], np.rint(grey * 255).astype(np.uint8)) and np.array_equal(rgb[..., 0], rgb[..., 2])


def test_failed_run_leaves_no_parent_folders(tmp_path):
    """``--output new/sub/out`` and a run that fails while writing (size mismatch): ``new/sub`` (created for the
    temporary folder) stayed behind, empty."""
    _write_folder_case(tmp_path / "raw", n=3)
    Image.fromarray(_inst(21, 24)).save(tmp_path / "raw" / "labels" / "t1_label.png")
    with pytest.raises(ValueError, match="size mismatch"):
        prepare_nuclei_dataset(tmp_path / "raw", tmp_path / "new" / "sub" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_pairs_csv_not_utf8_names_the_file(tmp_path, capsys):
    """A pairs.csv in cp1252 (Excel's plain 'CSV') with an accented name: the error was only "'utf-8' codec can't
    decode byte 0xe9 ...", naming no file."""
    _write_folder_case(tmp_path / "raw", n=2)
    (tmp_path / "raw" / "pairs.csv").write_bytes("image,label\nimages/t0_é.png,labels/t0_label.png\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"pairs\.csv.*UTF-8"):
        find_nuclei_pairs(tmp_path / "raw")
    assert main(["--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out")]) == 1
    assert "pairs.csv" in capsys.readouterr().err


def test_output_holding_the_input_files_is_refused_and_left_untouched(tmp_path):
    """``--output`` equal to ``--input`` with ``--overwrite`` replaced the raw ``images/`` and ``masks/`` folders by
    the prepared ones (instance masks became binary 0/1 masks): the raw data was lost without an error."""
    raw = tmp_path / "raw"
    _write_folder_case(raw, n=3)
    (raw / "labels").rename(raw / "masks")  # a common raw layout: images/ + masks/ (instance ids)
    before = _tree(raw)
    with pytest.raises(ValueError, match=r"holds the input file .*choose another --output"):
        prepare_nuclei_dataset(raw, raw, overwrite=True)
    assert _tree(raw) == before
    with pytest.raises(ValueError, match="holds the input file"):  # an output that is the parent of the sources
        prepare_nuclei_dataset(raw / "images", raw, masks=raw / "masks", overwrite=True)
    assert _tree(raw) == before


def _png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG (colour type from the channels), which PIL cannot write."""
    import struct
    import zlib

    arr = np.asarray(arr, np.uint16)
    h, w = arr.shape[:2]
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[1 if arr.ndim == 2 else arr.shape[2]]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_colour_png_keeps_its_depth(tmp_path):
    """PIL keeps only the high byte of a 16-bit RGB(A) PNG: 12-bit camera data (0..4095) came out as a nearly black
    image (0..15) while 16-bit grey was scaled by its maximum; ids of a 16-bit RGB mask merged."""
    rgb = np.random.default_rng(0).integers(0, 4096, (6, 7, 3)).astype(np.uint16)
    rgb[0, 0] = (4095, 0, 0)
    _png16(tmp_path / "rgb.png", rgb)
    expected = np.rint(rgb / 4095.0 * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_rgb_image(tmp_path / "rgb.png"), expected)
    _png16(tmp_path / "rgba.png", np.dstack([rgb, np.full((6, 7), 65535)]))  # alpha does not set the scale
    np.testing.assert_array_equal(read_rgb_image(tmp_path / "rgba.png"), expected)
    mask = np.zeros((6, 7, 3), np.uint16)
    mask[1:3, 1:3], mask[4:6, 4:6] = (300, 0, 0), (301, 0, 0)  # same high byte: one colour for PIL
    _png16(tmp_path / "mask.png", mask)
    assert np.unique(read_instance_mask(tmp_path / "mask.png")).tolist() == [0, 1, 2]
    grey_alpha = np.zeros((6, 7, 2), np.uint16)
    grey_alpha[1:3, 1:3], grey_alpha[4:6, 4:6], grey_alpha[..., 1] = 256, 257, 65535
    grey_alpha[0, 0] = (999, 0)  # transparent: background
    _png16(tmp_path / "grey_alpha.png", grey_alpha)
    assert np.unique(read_instance_mask(tmp_path / "grey_alpha.png"), return_counts=True)[1].tolist() == [34, 4, 4]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_binary_mask_becomes_instances(tmp_path, suffix):
    """A 16-bit binary mask (0/65535, e.g. skimage's img_as_uint of a boolean mask) was taken as instance ids: every
    nucleus of the image became one instance with id 65535."""
    import tifffile

    binary = np.zeros((12, 14), np.uint16)
    binary[1:4, 1:4] = binary[7:11, 8:12] = 65535
    path = tmp_path / f"m{suffix}"
    if suffix == ".png":
        Image.fromarray(binary).save(path)
    else:
        tifffile.imwrite(path, binary)
    lab = read_instance_mask(path)
    assert lab.max() == 2 and (lab[1:4, 1:4] == 1).all() and (lab[7:11, 8:12] == 2).all()


def test_multi_page_tiff_mask_is_refused(tmp_path):
    """A TIFF mask with one page per nucleus was read by PIL as its first page only: one nucleus out of five, silently
    (the same stack as ``.npy`` was already refused)."""
    import tifffile

    stack = np.zeros((5, 10, 12), np.uint8)
    for k, (y, x) in enumerate([(1, 1), (5, 5), (1, 8), (7, 1), (8, 9)]):
        stack[k, y : y + 2, x : x + 2] = 1
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    with pytest.raises(ValueError, match=r"stack\.tif' has 5 pages .*merge the pages"):
        read_instance_mask(tmp_path / "stack.tif")
    tifffile.imwrite(tmp_path / "one.tif", stack.max(0) * np.arange(1, 11)[:, None].astype(np.uint8))  # one page
    assert read_instance_mask(tmp_path / "one.tif").max() >= 5


def test_images_in_sub_folders_are_named_in_a_warning(tmp_path, caplog):
    """Images in a sub-folder of the image folder (images/extra/*.png) were left out without a word: only the
    folder's own files are paired. The run still pairs those and warns, naming the count and a file."""
    _write_folder_case(tmp_path / "raw", n=3)
    (tmp_path / "raw" / "images" / "extra").mkdir()
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "raw" / "images" / "extra" / "x0.png")
    with caplog.at_level("WARNING", logger="monai_gmr.data.prepare_nuclei"):
        found, _ = find_nuclei_pairs(tmp_path / "raw")
    assert sorted(p.name for p in found) == ["t0", "t1", "t2"]
    (msg,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "1 image file(s) in sub-folders" in msg and "x0.png" in msg and "--images" in msg
    caplog.clear()
    with caplog.at_level("WARNING", logger="monai_gmr.data.prepare_nuclei"):
        _write_folder_case(tmp_path / "plain", n=2)
        find_nuclei_pairs(tmp_path / "plain")  # no sub-folder: no warning
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_bad_split_fractions_are_refused_before_any_image_is_converted(tmp_path, monkeypatch):
    """--val_frac 0.5 --test_frac 0.5 was refused by the split only after every image had been read, converted and
    written to the temporary folder (minutes for a large dataset); now before the first image is read."""
    import monai_gmr.data.prepare_nuclei as pn

    _write_folder_case(tmp_path / "raw")
    read = []
    monkeypatch.setattr(pn, "read_rgb_image", lambda p: read.append(p) or np.zeros((20, 24, 3), np.uint8))
    with pytest.raises(ValueError, match="val_frac \\+ test_frac must be < 1"):
        prepare_nuclei_dataset(tmp_path / "raw", tmp_path / "out", val_frac=0.5, test_frac=0.5)
    assert read == [] and not (tmp_path / "out").exists()


def test_negative_split_seed_is_refused_by_name_before_any_image_is_converted(tmp_path, monkeypatch, capsys):
    """--seed -1 failed as "error: expected non-negative integer" (NumPy's message, naming no option) after every
    image had been converted; now an error naming seed comes before the first image is read."""
    import monai_gmr.data.prepare_nuclei as pn

    _write_folder_case(tmp_path / "raw")
    read = []
    monkeypatch.setattr(pn, "read_rgb_image", lambda p: read.append(p) or np.zeros((20, 24, 3), np.uint8))
    assert main(["--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out"), "--seed", "-1"]) == 1
    assert "seed must be an integer >= 0" in capsys.readouterr().err
    assert read == [] and not (tmp_path / "out").exists()


def test_null_text_of_pairs_images_masks_means_none(tmp_path):
    """--pairs None (or null) failed as "pairs file 'None' does not exist" and --images null / --masks null as
    "image folder '<input>/null' does not exist"; the text now means None, as the defaults do."""
    _write_folder_case(tmp_path / "raw")
    (tmp_path / "raw" / "pairs.csv").write_text("image,label\nimages/t1.png,labels/t0_label.png\n")  # ignored by None
    want, fmt = find_nuclei_pairs(tmp_path / "raw", pairs=None)
    assert len(want) == 5 and fmt == "folders"
    for kw in ({"pairs": "None"}, {"pairs": " null "}, {"pairs": None, "images": "null", "masks": "None"}):
        assert find_nuclei_pairs(tmp_path / "raw", **kw) == (want, fmt), kw
    assert main(["--input", str(tmp_path / "raw"), "--output", str(tmp_path / "o"), "--pairs", "null"]) == 0


def test_negative_values_of_a_float_grey_image_become_0(tmp_path):
    """Negative values of a float grey image are clipped to 0 before the 8-bit scaling (as documented); unclipped,
    ``-0.5`` scaled to ``-128`` and wrapped to 128 in uint8: the darkest pixels came out mid-grey."""
    import tifffile

    grey = np.linspace(-0.5, 1.0, 20 * 24, dtype=np.float32).reshape(20, 24)
    tifffile.imwrite(tmp_path / "f.tif", grey)
    rgb = read_rgb_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(rgb[..., 0], np.rint(np.clip(grey, 0, None) * 255).astype(np.uint8))
    assert (rgb[grey < 0] == 0).all()


def test_a_float_mask_with_fractional_values_is_refused(tmp_path):
    """A float mask (e.g. a probability map saved by mistake) with fractional values is refused naming the file;
    truncated, 2.5 became nucleus 2. Whole-number floats are ids."""
    mask = np.zeros((6, 8), np.float32)
    mask[1:3, 1:3], mask[4:6, 5:8] = 1.0, 2.5
    np.save(tmp_path / "p.npy", mask)
    with pytest.raises(ValueError, match=r"p\.npy' has non-integer values"):
        read_instance_mask(tmp_path / "p.npy")
    mask[4:6, 5:8] = 2.0
    np.save(tmp_path / "q.npy", mask)
    assert np.unique(read_instance_mask(tmp_path / "q.npy")).tolist() == [0, 1, 2]


def test_a_mask_with_two_touching_ids_keeps_two_nuclei(tmp_path):
    """Only a mask with a single foreground value is binary (connected components); a mask holding ids 1 and 2 is an
    instance map, even with exactly two ids: its two touching nuclei stay two, not one component."""
    lab = np.zeros((8, 10), np.uint8)
    lab[2:6, 1:5], lab[2:6, 5:9] = 1, 2  # touching along a column
    Image.fromarray(lab).save(tmp_path / "two.png")
    got = read_instance_mask(tmp_path / "two.png")
    assert got.max() == 2 and (got[2:6, 1:5] == 1).all() and (got[2:6, 5:9] == 2).all()


def test_auto_format_prefers_aperio_xml_over_cpm_text_masks(tmp_path):
    """``auto`` picks ``monuseg_xml`` when an Aperio XML is found, *else* ``cpm_txt`` (module docstring): an input
    holding both the MoNuSeg XML annotations and CPM-style text masks is read from its XML."""
    raw = tmp_path / "raw"
    for d in ("images", "Annotations", "masks_txt"):
        (raw / d).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(raw / "images" / f"s{i}.png")
        _write_xml(raw / "Annotations" / f"s{i}.xml", [[(2, 2), (6, 2), (6, 6), (2, 6)]])
        _write_cpm_txt(raw / "masks_txt" / f"s{i}.txt", np.zeros((16, 16), np.int32))
    pairs, fmt = find_nuclei_pairs(raw)
    assert fmt == "monuseg_xml" and all(p.mask.suffix == ".xml" for p in pairs)


def test_boundary_width_sets_the_width_of_the_prepared_boundary_class(tmp_path):
    """``boundary_width`` reaches the 3-class masks written to ``boundary/`` (the width test covers
    ``instance_boundaries`` alone): with width 2 the boundary is two pixels thick."""
    from monai_gmr.data.prepare_nuclei import relabel_sequential

    _write_folder_case(tmp_path / "raw", n=3)
    out = tmp_path / "out"
    dl = json.loads(prepare_nuclei_dataset(tmp_path / "raw", out, boundary=True, boundary_width=2).read_text())
    assert dl["preparation"]["boundary_width"] == 2
    for it in dl["training"] + dl["validation"] + dl["test"]:
        inst = relabel_sequential(_inst(i=int(Path(it["image"]).stem[1:])))
        want = (inst > 0).astype(np.uint8)
        want[instance_boundaries(inst, 2)] = 2
        got = np.asarray(Image.open(out / it["boundary"]))
        assert np.array_equal(got, want) and not np.array_equal(instance_boundaries(inst, 1), got == 2)


def test_split_fractions_go_to_their_own_split(tmp_path):
    """``val_frac`` sizes the validation split and ``test_frac`` the test split (10 images at 0.1 / 0.3: 6, 1, 3);
    swapped, the held-out test set got the validation share."""
    _write_folder_case(tmp_path / "raw", n=10)
    dl = json.loads(prepare_nuclei_dataset(tmp_path / "raw", tmp_path / "out", val_frac=0.1, test_frac=0.3).read_text())
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [6, 1, 3]
    assert (dl["preparation"]["val_frac"], dl["preparation"]["test_frac"]) == (0.1, 0.3)


def test_missing_annotation_error_names_the_annotation_folder(tmp_path):
    """Images without annotation: the error says which folder was searched for the annotations (``labels/``), not
    the image folder (the images are there; the masks are what is missing)."""
    _write_folder_case(tmp_path / "raw", n=2)
    (tmp_path / "raw" / "labels" / "t1_label.png").unlink()
    labels = str(tmp_path / "raw" / "labels")
    with pytest.raises(ValueError, match="no folders annotation in '([^']*)' for 1 image") as e:
        find_nuclei_pairs(tmp_path / "raw")
    assert f"annotation in {labels!r}" in str(e.value) and "t1.png" in str(e.value)


def test_cpm_txt_mask_of_size_0_is_refused(tmp_path):
    """A CPM ASCII header ``0 0`` (no pixels) is an invalid size, refused naming the file; it was read as an empty
    ``(0, 0)`` mask."""
    (tmp_path / "empty.txt").write_text("0 0\n")
    with pytest.raises(ValueError, match=r"empty\.txt'.*invalid size 0x0"):
        read_cpm_txt_mask(tmp_path / "empty.txt")
    (tmp_path / "row.txt").write_text("3 0\n")
    with pytest.raises(ValueError, match="invalid size 3x0"):
        read_cpm_txt_mask(tmp_path / "row.txt")


def test_mask_suffixes_are_matched_in_any_case(tmp_path):
    """Mask names are matched by their suffix in any case (the code lower-cases the stem): ``t0_Mask.png`` and
    ``t1_LABEL.png`` pair with ``t0.png`` and ``t1.png``."""
    _write_folder_case(tmp_path / "raw", n=2)
    (tmp_path / "raw" / "labels" / "t0_label.png").rename(tmp_path / "raw" / "labels" / "t0_Mask.png")
    (tmp_path / "raw" / "labels" / "t1_label.png").rename(tmp_path / "raw" / "labels" / "t1_LABEL.png")
    pairs, _ = find_nuclei_pairs(tmp_path / "raw")
    assert [(p.name, p.mask.name) for p in pairs] == [("t0", "t0_Mask.png"), ("t1", "t1_LABEL.png")]
