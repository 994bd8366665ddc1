"""Tests of monai_gmr.workflows.nuclei helpers (label conversion, channel handling, foreground merging)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from monai_gmr.workflows.nuclei import (
    NucleiLabeld,
    inference_datalist,
    merge_foreground,
    nuclei_datalist,
    nucleus_boundaries,
    nucleus_class_map,
    to_rgb,
)


def test_nuclei_labeld_binary_and_boundary():
    lab = torch.zeros(1, 12, 12)
    lab[0, 2:7, 2:7] = 3  # instance 3
    lab[0, 2:7, 7:11] = 5  # instance 5 touching instance 3
    out = NucleiLabeld("label")({"label": lab})["label"]
    assert out.dtype == torch.uint8 and out.shape == (1, 12, 12)
    assert torch.equal(out, (lab > 0).to(torch.uint8))
    out3 = NucleiLabeld("label", boundary=True)({"label": lab})["label"][0]
    assert set(torch.unique(out3).tolist()) == {0, 1, 2}
    assert out3[4, 4] == 1 and out3[4, 9] == 1  # interiors
    assert out3[4, 6] == 2 and out3[4, 7] == 2  # the shared border of the touching nuclei
    assert out3[2, 4] == 2 and out3[0, 0] == 0  # outer border, background
    assert torch.equal(out3 > 0, lab[0] > 0)
    with pytest.raises(ValueError, match="boundary_width"):
        NucleiLabeld("label", boundary=True, boundary_width=0)


def test_nucleus_boundaries_width():
    lab = np.zeros((11, 11), np.int64)
    lab[1:10, 1:10] = 1
    b1 = nucleus_boundaries(lab, 1)
    b2 = nucleus_boundaries(lab, 2)
    assert b1.sum() == 9 * 4 - 4 and b2.sum() == (81 - 25)
    assert not b1[5, 5] and b1[1, 5]


def test_nucleus_boundaries_do_not_run_along_the_image_edge():
    """A nucleus cut by the tile's edge has no boundary along that edge: only a differently labelled pixel (another
    nucleus or background) within ``width`` makes a boundary pixel, not the outside of the image (padding the
    erosion with 0 drew a boundary class along every edge nucleus's cut). The prepared masks use the same rule."""
    from monai_gmr.data.prepare_nuclei import instance_boundaries

    lab = np.zeros((8, 8), np.int64)
    lab[0:4, 0:4] = 1  # in the top-left corner
    lab[5:8, 2:8] = 2  # along the bottom and right edges
    want = np.zeros((8, 8), bool)
    want[3, 0:4] = want[0:4, 3] = True  # nucleus 1: its row and column next to the background
    want[5, 2:8] = want[5:8, 2] = True  # nucleus 2: its top row and left column
    for width in (1, 2):
        got = nucleus_boundaries(lab, width)
        assert np.array_equal(got, instance_boundaries(lab, width))
        assert not got[0, 0] and not got[7, 7] and not got[0, 1] and not got[7, 5]
    assert np.array_equal(nucleus_boundaries(lab), want)


def test_to_rgb():
    x = torch.arange(4 * 2 * 2, dtype=torch.float32).reshape(4, 2, 2)
    assert torch.equal(to_rgb(x), x[:3])
    assert torch.equal(to_rgb(x[:3]), x[:3])
    assert torch.equal(to_rgb(x[:1]), x[:1].repeat(3, 1, 1))
    with pytest.raises(ValueError, match="2 channels"):
        to_rgb(x[:2])


def test_colour_coded_label_masks_are_read_as_prepare_nuclei_reads_them(tmp_path):
    """A user's datalist may point "label" at a colour-coded RGB(A) instance mask, which prepare_nuclei reads (one
    nucleus per colour, transparent = background). The bundle took any non-zero channel for nucleus: an RGBA mask
    with an opaque black background (alpha 255 everywhere) was nucleus everywhere, and instance_ids passed its 4
    channels on as "ids". Now both read the nuclei of the file as prepare_nuclei does."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
    from PIL import Image

    from monai_gmr.data.prepare_nuclei import read_instance_mask
    from monai_gmr.workflows.nuclei import instance_ids

    ids = np.zeros((12, 14), np.int32)
    ids[2:7, 2:7] = 1
    ids[2:7, 7:11] = 2  # touching nucleus 1; its colour has the same largest channel value (200)
    ids[8:11, 3:6] = 3
    palette = np.array([[0, 0, 0], [200, 10, 30], [200, 60, 90], [15, 120, 240]], np.uint8)
    rgba = np.concatenate([palette[ids], np.full(ids.shape + (1,), 255, np.uint8)], axis=-1)  # opaque background
    Image.fromarray(rgba).save(tmp_path / "mask_rgba.png")
    Image.fromarray(palette[ids]).save(tmp_path / "mask_rgb.png")
    load = Compose([LoadImaged("label", image_only=True), EnsureChannelFirstd("label")])
    for name in ("mask_rgba.png", "mask_rgb.png"):
        assert _same_instances(read_instance_mask(tmp_path / name), ids)  # what prepare_nuclei reads
        lab = load({"label": str(tmp_path / name)})["label"]  # (C, W, H): MONAI's PIL reader swaps the axes
        assert lab.shape[0] == (4 if "rgba" in name else 3)
        classes = NucleiLabeld("label", boundary=True)({"label": lab})["label"]
        assert classes.shape == (1, 14, 12)
        expected = (ids > 0).astype(np.uint8)
        expected[nucleus_boundaries(ids)] = 2  # the boundary between nuclei 1 and 2 included
        assert np.array_equal(np.asarray(classes[0]).T, expected)
        inst = instance_ids(lab)
        assert inst.shape == (1, 14, 12) and inst.meta["filename_or_obj"].endswith(name)
        assert _same_instances(np.asarray(inst[0]).T, ids)


def test_binary_uint8_label_with_more_than_255_nuclei_keeps_every_id():
    """A uint8 0/255 binary label of 400 nuclei: ``instance_ids`` returns float32 ids 1..400 (ids written back into
    the label's uint8 would wrap, nucleus 256 becoming background and 257 merging with nucleus 1)."""
    from monai_gmr.workflows.nuclei import instance_ids

    binary = np.zeros((40, 40), np.uint8)
    binary[::2, ::2] = 255  # 20 x 20 single-pixel nuclei, 2 pixels apart: not 8-connected
    out = instance_ids(torch.from_numpy(binary)[None])
    assert out.dtype == torch.float32 and out.shape == (1, 40, 40)
    ids = np.unique(out.numpy())
    assert ids.tolist() == list(range(401)) and int((out > 0).sum()) == 400


def _same_instances(a, b) -> bool:
    """Whether two instance-id maps hold the same nuclei (the same background, ids matched one to one)."""
    a, b = np.asarray(a).astype(np.int64), np.asarray(b).astype(np.int64)
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = set(zip(a[a > 0].tolist(), b[b > 0].tolist()))
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


def test_palette_and_cmyk_images_are_refused_by_name(tmp_path):
    """A palette (indexed-colour) PNG went through LoadImaged as one channel of palette indices, repeated as grey,
    and a CMYK JPEG as 4 channels taken for RGBA (black dropped): both were segmented silently wrong. Now an error
    naming the file and the mode; the RGB, RGBA and grey versions of the same tile still pass."""
    import numpy as np
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
    from PIL import Image

    load = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])
    rgb = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    rgb.quantize(16).save(tmp_path / "palette.png")
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg")
    rgb.convert("1").save(tmp_path / "bits.png")
    for name, mode in (("palette.png", "P"), ("cmyk.jpg", "CMYK"), ("bits.png", "1")):
        img = load({"image": str(tmp_path / name)})["image"]
        with pytest.raises(ValueError, match=f"{name}.*PIL mode '{mode}'.*convert"):
            to_rgb(img)
    for name, im in (("rgb.png", rgb), ("rgba.png", rgb.convert("RGBA")), ("grey.png", rgb.convert("L"))):
        im.save(tmp_path / name)
        out = to_rgb(load({"image": str(tmp_path / name)})["image"])
        assert out.shape == (3, 16, 16)
        expected = np.asarray(im.convert("RGB")).transpose(2, 1, 0)  # PILReader: (W, H) spatial order
        assert np.array_equal(np.asarray(out), expected)


def test_16_bit_images_are_refused_by_name(tmp_path):
    """A 16-bit image (grey TIFF through ITK, grey PNG through PIL) went through LoadImaged and the [0, 255] ->
    [0, 1] clipping as an almost white tile and was segmented without a word; now an error naming the file. 8-bit
    images (255 included) pass unchanged."""
    import numpy as np
    import tifffile
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
    from PIL import Image

    load = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])
    grey16 = (np.random.default_rng(0).random((16, 16)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "tile16.tif", grey16)
    Image.fromarray(grey16).save(tmp_path / "tile16.png")
    for name in ("tile16.tif", "tile16.png"):
        img = load({"image": str(tmp_path / name)})["image"]
        assert float(img.max()) > 255  # the reader kept 16 bits
        with pytest.raises(ValueError, match=f"{name}.*8-bit"):
            to_rgb(img)
    Image.fromarray((grey16 >> 8).astype(np.uint8)).save(tmp_path / "tile8.png")
    img8 = load({"image": str(tmp_path / "tile8.png")})["image"]
    assert torch.equal(to_rgb(img8), img8.repeat(3, 1, 1))
    assert torch.equal(to_rgb(torch.full((3, 2, 2), 255.0)), torch.full((3, 2, 2), 255.0))


def test_nucleus_class_map_has_the_scored_foreground():
    """Inference's class map: foreground exactly where validation (merge_foreground + argmax) sees a nucleus."""
    p = torch.tensor([0.4, 0.3, 0.3]).reshape(3, 1, 1)  # argmax says background, nucleus probability 0.6
    assert nucleus_class_map(p).item() == 1.0
    torch.manual_seed(0)
    p = torch.softmax(3 * torch.randn(3, 16, 16), 0)
    cmap = nucleus_class_map(p)
    assert cmap.shape == (1, 16, 16)
    torch.testing.assert_close((cmap > 0).float(), merge_foreground(p).argmax(0, keepdim=True).float())
    fg = cmap[0] > 0
    torch.testing.assert_close(cmap[0][fg], (1 + p[1:].argmax(0))[fg].float())
    two = torch.softmax(torch.randn(2, 16, 16), 0)
    torch.testing.assert_close(nucleus_class_map(two), two.argmax(0, keepdim=True).float())
    with pytest.raises(ValueError, match="2 channels"):
        nucleus_class_map(p[:1])


def test_merge_foreground():
    p = torch.softmax(torch.randn(3, 5, 5), 0)
    m = merge_foreground(p)
    assert m.shape == (2, 5, 5)
    torch.testing.assert_close(m[1], p[1] + p[2])
    assert merge_foreground(p[:2]) is not None and merge_foreground(p[:2]).shape == (2, 5, 5)
    with pytest.raises(ValueError):
        merge_foreground(p[:1])


def test_inference_datalist_refuses_two_images_with_one_output_name(tmp_path):
    """``a.png`` and ``a.tif`` in one input folder: MONAI's writers name outputs by the file name without its
    extension, so the second image's masks silently replaced the first's; now an error names both files."""
    from PIL import Image

    img = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    for name in ("a.png", "a.tif", "b.png"):
        img.save(tmp_path / name)
    with pytest.raises(ValueError, match=r"a\.png' and .*a\.tif' would both be written as a_seg\.png"):
        inference_datalist(tmp_path, tmp_path / "unused", check=False)
    (tmp_path / "a.tif").unlink()
    assert [Path(d["image"]).name for d in inference_datalist(tmp_path, tmp_path / "unused")] == ["a.png", "b.png"]



def test_one_channel_outputs_name_num_classes():
    """``--num_classes 1`` failed with "need >= 2 channels" only; the message now names the setting."""
    for fn in (merge_foreground, nucleus_class_map):
        with pytest.raises(ValueError, match="num_classes >= 2"):
            fn(torch.zeros(1, 4, 4))


def test_inference_messages_name_the_fallback_split_actually_used(tmp_path, caplog):
    """Inference on a dataset without a test split falls back to validation (logged); errors about its images
    must name the validation images, not the test split that was not read."""
    import json
    import logging

    from PIL import Image

    from monai_gmr.workflows.nuclei import inference_datalist

    for name in ("a.png", "a.tif", "t.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "l.png")
    dl = {"training": [{"image": "t.png", "label": "l.png"}],
          "validation": [{"image": "a.png", "label": "l.png"}, {"image": "a.tif", "label": "l.png"}]}  # fmt: skip
    (tmp_path / "datalist.json").write_text(json.dumps(dl))
    with caplog.at_level(logging.WARNING, logger="monai_gmr"), pytest.raises(ValueError) as info:
        inference_datalist(None, tmp_path, "test", generate=False, check=False)
    assert any("no 'test' split; using 'validation'" in r.getMessage() for r in caplog.records)
    msg = str(info.value)
    assert msg.startswith("validation images of") and "would both be written" in msg, msg


def test_empty_or_null_input_dir(tmp_path):
    """--input_dir null (the documented default, passed as the text 'null') failed as "input folder 'null' does not
    exist"; --input_dir "[]" or "" (e.g. an unset shell variable) silently segmented the test images of dataset_dir
    instead. Now "null" means None and an empty input_dir is an error naming it."""
    from monai_gmr.data import ensure_nuclei_dataset

    data = tmp_path / "data"
    ensure_nuclei_dataset(str(data), generate=True, n_images=5, size=32, seed=0)
    want = inference_datalist(None, data, "test", generate=False, check=False)
    assert want
    assert inference_datalist("null", data, "test", generate=False, check=False) == want
    assert inference_datalist(" None ", data, "test", generate=False, check=False) == want
    for empty in ([], (), "", " "):
        with pytest.raises(ValueError, match="input_dir is empty"):
            inference_datalist(empty, data, "test", generate=False, check=False)


def test_two_channel_image_error_names_the_file(tmp_path):
    """A grey + alpha PNG (PIL mode "LA") loads as 2 channels; the error said "got 2 channels" without naming the
    image, which in a folder of thousands of tiles left the user searching."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).convert("LA").save(tmp_path / "grey_alpha.png")
    img = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])(
        {"image": str(tmp_path / "grey_alpha.png")}
    )["image"]
    assert img.shape[0] == 2
    with pytest.raises(ValueError, match=r"grey_alpha.png.*2 channels.*convert it to RGB"):  # and what to do
        to_rgb(img)


@pytest.mark.parametrize("bad", ["16-bit", "grey+alpha"])
def test_inference_datalist_refuses_images_the_pipeline_cannot_take(tmp_path, bad):
    """Every input image is read once before inference starts, but a 16-bit or 2-channel image passed that check
    and stopped the run only when its turn came, after the masks of the images before it had been written (a
    half-finished pred_dir); now the check refuses it, naming the file, before anything is written."""
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    if bad == "16-bit":
        Image.fromarray(np.full((8, 8), 4000, np.uint16)).save(tmp_path / "b.png")
    else:
        Image.fromarray(np.zeros((8, 8), np.uint8)).convert("LA").save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"b\.png.*(8-bit|2 channels)"):
        inference_datalist(tmp_path, tmp_path / "unused")


def test_nuclei_datalist_paths_are_absolute_for_a_relative_dataset_dir(tmp_path, monkeypatch):
    """The docstring promises absolute paths; with a relative ``--dataset_dir`` (as the bundle README writes it)
    the items were relative to the working directory."""
    from monai_gmr.data import ensure_nuclei_dataset

    ensure_nuclei_dataset(str(tmp_path / "data"), generate=True, n_images=5, size=32, seed=0)
    monkeypatch.chdir(tmp_path)
    items = nuclei_datalist("data", "training", generate=False, check=False)
    assert items and all(Path(d[k]).is_absolute() and Path(d[k]).is_file() for d in items for k in ("image", "label"))


# --------------------------------------------------------------------- instance post-processing under rotations/flips
def _canonical(inst: np.ndarray) -> np.ndarray:
    """Relabel an instance map by the raster order of each instance's first pixel: equal partitions compare equal."""
    flat = inst.ravel()
    ids, first = np.unique(flat, return_index=True)
    order = ids[np.argsort(first)]
    order = order[order > 0]
    lut = np.zeros(int(flat.max()) + 1, dtype=np.int64)
    lut[order] = np.arange(1, len(order) + 1)
    return lut[inst]


_D4 = [lambda a, k=k: np.rot90(a, k) for k in (1, 2, 3)] + [lambda a: a[::-1], lambda a: a[:, ::-1], lambda a: a.T]


def _random_class_maps(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` random (binary map, 3-class map with a 1-pixel boundary class 2) pairs of 20 x 20 blobs."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        fg = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((20, 20)), 1.5) > 0.5)
        sem3 = fg.astype(np.int64)
        sem3[fg & ~ndimage.binary_erosion(fg)] = 2
        out.append((fg.astype(np.int64), sem3))
    return out


def test_connected_components_partition_commutes_with_rotations_and_flips():
    """Locks in: connected components (4- and 8-connectivity, with min_size) give the rotated/flipped partition of a
    rotated/flipped map (the structuring elements are symmetric)."""
    from monai_gmr.workflows.common import instance_from_semantic

    for sem, _ in _random_class_maps(10):
        for kw in ({"connectivity": 1}, {"connectivity": 2}, {"connectivity": 2, "min_size": 5}):
            base = instance_from_semantic(sem, **kw)
            for op in _D4:
                got = instance_from_semantic(np.ascontiguousarray(op(sem)), **kw)
                assert np.array_equal(_canonical(got), _canonical(op(base))), kw


def test_boundary_class_partition_commutes_with_rotations_and_flips():
    """Boundary pixels equidistant from two interiors joined the first seed of distance_transform_edt's scan order
    (upper/left), so the instances of a rotated/flipped 3-class map were not the rotated/flipped instances; they
    now join the larger interior whatever the orientation."""
    from monai_gmr.workflows.common import instance_from_semantic

    sem = np.zeros((7, 10), dtype=np.int64)
    sem[1:6, 1:4], sem[1:6, 5:9], sem[1:6, 4] = 1, 1, 2  # interiors of 15 and 20 px, a 1-px boundary column between
    inst = instance_from_semantic(sem, boundary_class=2, connectivity=2)
    assert (inst[1:6, 4] == inst[3, 6]).all() and len(np.unique(inst)) == 3  # the column joins the larger nucleus
    flipped = instance_from_semantic(np.ascontiguousarray(sem[:, ::-1]), boundary_class=2, connectivity=2)
    assert np.array_equal(_canonical(flipped), _canonical(inst[:, ::-1]))
    for _, sem3 in _random_class_maps(10, seed=1):
        base = instance_from_semantic(sem3, boundary_class=2, connectivity=2)
        for op in _D4:
            got = instance_from_semantic(np.ascontiguousarray(op(sem3)), boundary_class=2, connectivity=2)
            assert np.array_equal(_canonical(got), _canonical(op(base)))


def test_instance_ids_and_min_size_threshold():
    """Locks in: ids 1..N in raster order of first pixel (connected components), objects of exactly min_size pixels
    are kept (only smaller ones removed), 4- vs 8-connectivity as documented (1 = faces, 2 = full)."""
    from monai_gmr.workflows.common import instance_from_semantic

    sem = np.zeros((6, 6), dtype=np.int64)
    sem[0, 4:6], sem[2, 0], sem[3, 1], sem[5, 3:6] = 1, 1, 1, 1  # 2 px, a diagonal pair, 3 px
    assert instance_from_semantic(sem, connectivity=1).tolist() == [
        [0, 0, 0, 0, 1, 1], [0] * 6, [2, 0, 0, 0, 0, 0], [0, 3, 0, 0, 0, 0], [0] * 6, [0, 0, 0, 4, 4, 4]
    ]  # fmt: skip
    eight = instance_from_semantic(sem, connectivity=2)
    assert eight.max() == 3 and eight[2, 0] == eight[3, 1] == 2
    kept = instance_from_semantic(sem, connectivity=2, min_size=2)  # the 2-px objects stay
    assert kept.max() == 3
    assert instance_from_semantic(sem, connectivity=1, min_size=2).max() == 2  # the single pixels go
    assert instance_from_semantic(sem, connectivity=2, min_size=3).tolist()[5] == [0, 0, 0, 1, 1, 1]


def test_watershed_partition_commutes_with_rotations_and_flips():
    """scikit-image's peak_local_max kept one peak of a distance plateau (or of close peaks) and its watershed
    flooded equal levels in queue order, both by scan order: the instances of a rotated/flipped map were not the
    rotated/flipped instances. Markers and flooding now depend only on the geometry."""
    from monai_gmr.workflows.common import instance_from_semantic

    for sem, _ in _random_class_maps(10, seed=2):
        base = instance_from_semantic(sem, method="watershed", connectivity=2)
        for op in _D4:
            got = instance_from_semantic(np.ascontiguousarray(op(sem)), method="watershed", connectivity=2)
            assert np.array_equal(_canonical(got), _canonical(op(base)))


def test_watershed_keeps_a_distance_plateau_as_one_nucleus():
    """A bar-shaped nucleus has a ridge of equal distance; peak_local_max put a seed every min_distance pixels
    along it, so the old watershed cut one 5 x 34 bar into 10 "nuclei". The ridge is one marker now; two touching
    discs are still split in two."""
    from monai_gmr.workflows.common import instance_from_semantic

    bar = np.zeros((12, 40), dtype=np.int64)
    bar[3:8, 3:37] = 1
    for kw in ({}, {"connectivity": 2}, {"min_distance": 1}):
        inst = instance_from_semantic(bar, method="watershed", **kw)
        assert inst.max() == 1 and np.array_equal(inst > 0, bar > 0), kw
    yy, xx = np.mgrid[:24, :44]
    discs = ((yy - 12) ** 2 + (xx - 12) ** 2 <= 81) | ((yy - 12) ** 2 + (xx - 29) ** 2 <= 81)
    inst = instance_from_semantic(discs.astype(np.int64), method="watershed")
    assert inst.max() == 2 and inst[12, 8] != inst[12, 34] and np.array_equal(inst > 0, discs)


def test_watershed_chains_peaks_up_to_min_distance_apart_into_one_marker():
    """Two discs of radius 6 whose centres are 3 pixels apart (one nucleus with a shallow waist) have two distance
    peaks 3 pixels apart, not adjacent: with ``min_distance=3`` they are one marker, so one nucleus (peaks merged
    only when adjacent split it in two); ``min_distance=1`` keeps them apart."""
    from monai_gmr.workflows.common import instance_from_semantic

    yy, xx = np.mgrid[:24, :30]
    blob = ((yy - 12) ** 2 + (xx - 12) ** 2 <= 36) | ((yy - 12) ** 2 + (xx - 15) ** 2 <= 36)
    one = instance_from_semantic(blob.astype(np.int64), method="watershed", min_distance=3)
    assert one.max() == 1 and np.array_equal(one > 0, blob)
    assert instance_from_semantic(blob.astype(np.int64), method="watershed", min_distance=1).max() == 2


#: a 24 x 24 tile (from a seeded search over unions of random discs; nuclei cut by its left edge) whose watershed
#: flooding meets a pixel that every orientation-free rule leaves tied in one step and that a later step decides
_WAITING_TIE = [
    '........................',
    '........................',
    '.........#..............',
    '......#######...........',
    '.....#########..........',
    '....#############.......',
    '....##############......',
    '....##############......',
    '..################......',
    '#################.......',
    '##############..........',
    '##############..........',
    '#############...........',
    '###########.............',
    '##########.....##.......',
    '##########...#####......',
    '.########....######.....',
    '..######....#######.....',
    '............#######.....',
    '.............######.....',
    '..............####......',
    '........................',
    '........................',
    '........................',
]


def test_watershed_defers_an_undecided_pixel_until_a_later_step_decides_it():
    """A pixel reached by two regions in one step with every tie rule equal waits for a later step (the regions
    growing around it may decide it); giving it at once to the smaller marker id made the partition depend on the
    orientation of the map (this blob: its rotated/flipped instances were not the rotated/flipped partition)."""
    from monai_gmr.workflows.common import instance_from_semantic

    sem = np.array([[c == "#" for c in row] for row in _WAITING_TIE], dtype=np.int64)
    base = instance_from_semantic(sem, method="watershed")
    assert base.max() >= 2
    for op in _D4:
        got = instance_from_semantic(np.ascontiguousarray(op(sem)), method="watershed")
        assert np.array_equal(_canonical(got), _canonical(op(base)))


def test_watershed_partition_commutes_with_the_48_cube_symmetries():
    import itertools

    from scipy import ndimage

    from monai_gmr.workflows.common import instance_from_semantic

    rng = np.random.default_rng(3)
    for _ in range(2):
        sem = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((12, 13, 14)), 1.5) > 0.5).astype(np.int64)
        base = instance_from_semantic(sem, method="watershed", min_distance=2)
        assert base.max() > 1 and np.array_equal(base > 0, sem > 0)
        for perm in itertools.permutations(range(3)):
            for flips in itertools.product((False, True), repeat=3):
                axes = tuple(a for a, f in enumerate(flips) if f)

                def op(a, perm=perm, axes=axes):
                    a = np.transpose(a, perm)
                    return np.ascontiguousarray(np.flip(a, axes) if axes else a)

                got = instance_from_semantic(op(sem), method="watershed", min_distance=2)
                assert np.array_equal(_canonical(got), _canonical(op(base))), (perm, flips)


@pytest.mark.parametrize("label", ["boundary", "binary"])
def test_prepared_label_choice_does_not_change_the_classes_or_the_nuclei(tmp_path, label, caplog):
    """A dataset prepared with ``--label boundary`` made the bundle read its 3-class map as instance ids: the
    boundary class it trained on (num_classes=3) was 2 pixels wide instead of 1, and AJI/PQ scored one "interior"
    and one "boundary" nucleus per tile (``--label binary``: one nucleus per tile). The bundle now reads the
    prepared instance masks, whatever "label" names, and says so."""
    import logging

    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
    from PIL import Image

    from monai_gmr.data.prepare_nuclei import prepare_nuclei_dataset

    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "labels").mkdir()
    for i in range(5):
        Image.fromarray(np.full((16, 20, 3), 200, np.uint8)).save(raw / "images" / f"t{i}.png")
        inst = np.zeros((16, 20), np.uint16)
        inst[2:9, 2:9], inst[2:9, 9:15] = 1, 2  # two touching nuclei
        Image.fromarray(inst).save(raw / "labels" / f"t{i}.png")
    prepare_nuclei_dataset(raw, tmp_path / "out", label=label, boundary=True, seed=0)
    with caplog.at_level(logging.WARNING, logger="monai_gmr"):
        items = nuclei_datalist(tmp_path / "out", "training", generate=False)
    assert all(it["label"] == it["instance"] for it in items)
    assert any("is not the instance mask" in r.getMessage() for r in caplog.records)
    load = Compose([LoadImaged("label", image_only=True), EnsureChannelFirstd("label"), NucleiLabeld("label", True)])
    three = load({"label": items[0]["label"]})["label"][0].numpy()
    prepared = load.transforms[0]({"label": items[0]["boundary"]})["label"].numpy()  # prepare_nuclei's 3-class map
    np.testing.assert_array_equal(three, prepared)  # the same 1-pixel boundaries, between touching nuclei too


@pytest.mark.parametrize("bad", [{"crop_size": 0}, {"crop_size": -8}, {"crop_size": "0"}, {"roi_size": [0, 0]},
                                 {"roi_size": [64, -8]}, {"roi_size": 0}],
                         ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))  # fmt: skip
def test_non_positive_window_sizes_are_refused_by_name(bad):
    """MONAI reads a crop / window size <= 0 as "the whole dimension": --crop_size 0 (or -8) silently trained on
    whole tiles instead of random crops and --roi_size "[0, 0]" ran whole tiles through the network, for any
    network. Now an error names the setting; -1 in roi_size keeps MONAI's documented meaning."""
    from monai.networks.nets import BasicUNet

    from monai_gmr.nets import GMRUNet
    from monai_gmr.workflows.nuclei import check_window_sizes

    name = next(iter(bad))
    for net in (GMRUNet(2, 3, 2, features=(4, 4, 4, 4)), BasicUNet(2, 3, 2, features=(4, 4, 4, 4, 4, 4))):
        with pytest.raises(ValueError, match=f"{name}=.*must be positive"):
            check_window_sizes(net, **bad)
        check_window_sizes(net, crop_size=32, roi_size=[64, -1])  # -1: the whole dimension, as in MONAI


def test_synthetic_settings_other_than_the_generated_data_are_named_in_a_warning(tmp_path, caplog):
    """Synthetic data are generated only into an empty dataset_dir: a later run with other --synthetic settings
    silently used the tiles generated before (the log said only "using the dataset in ..."); a warning names the
    settings that differ. The same settings (size as an int or a pair) warn nothing."""
    import logging

    data = tmp_path / "data"
    nuclei_datalist(data, "training", n_images=5, size=32, seed=0, check=False)
    with caplog.at_level(logging.WARNING, logger="monai_gmr"):
        nuclei_datalist(data, "training", n_images=5, size=[32, 32], seed=0, check=False)
        assert not [r for r in caplog.records if "other settings" in r.getMessage()]
        items = nuclei_datalist(data, "training", n_images=8, size=64, seed=0, check=False)
    assert len(items) == 3  # the data there, as before
    msgs = [r.getMessage() for r in caplog.records if "other settings" in r.getMessage()]
    assert len(msgs) == 1 and "n_images: 5 there, 8 asked for" in msgs[0] and "size: [32, 32] there" in msgs[0], msgs


def test_remove_earlier_outputs_keeps_input_images_and_other_files(tmp_path):
    """pred_dir may be the input folder: an input image named like an output (a_seg.png) is never removed."""
    from monai_gmr.workflows.nuclei import remove_earlier_outputs

    for name in ("a.png", "a_seg.png", "a_prob.tif", "b_seg.png"):
        (tmp_path / name).write_bytes(b"x")
    items = [{"image": str(tmp_path / "a.png")}, {"image": str(tmp_path / "a_seg.png")}]
    removed = remove_earlier_outputs(items, tmp_path)
    assert sorted(Path(p).name for p in removed) == ["a_prob.tif"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a_seg.png", "b_seg.png"]
    assert remove_earlier_outputs(items, tmp_path / "missing") == []


def test_float_images_in_0_1_are_refused_by_name():
    """A float image in [0, 1] (e.g. a float32 TIFF) passed the 16-bit check, was divided by 255 once more into a
    nearly black tile and segmented without a word; no 8-bit image has fractional or negative intensities, so they
    are now an error naming the file (the input check of inference_datalist / nuclei_datalist runs to_rgb on every
    image before anything is written). Whole numbers 0..255 as floats pass."""
    from monai.data import MetaTensor

    rng = np.random.default_rng(0)
    img = MetaTensor(torch.as_tensor(rng.random((3, 16, 16)), dtype=torch.float32),
                     meta={"filename_or_obj": "unit.tif"})  # fmt: skip
    with pytest.raises(ValueError, match=r"unit\.tif.*not on the 0\.\.255 scale"):
        to_rgb(img)
    whole = torch.as_tensor(rng.integers(0, 256, (3, 4, 4)), dtype=torch.float32)
    assert torch.equal(to_rgb(whole), whole)
    fractional = whole + 0.25  # float intensities on the 0..255 scale (e.g. stain-normalised) are read as they are
    assert torch.equal(to_rgb(fractional), fractional)
    with pytest.raises(ValueError, match="not on the 0..255 scale"):
        to_rgb(torch.full((3, 2, 2), -1.0))  # negative


def test_images_in_sub_folders_of_input_dir_are_named_in_a_warning(tmp_path, caplog):
    """Only the files directly in input_dir are segmented; images in its sub-folders (e.g. one per slide) were
    left out without a word. A warning now says how many (a folder without images does not count)."""
    import logging

    from PIL import Image

    img = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    img.save(tmp_path / "a.png")
    (tmp_path / "slide1").mkdir()
    img.save(tmp_path / "slide1" / "b.png")
    img.save(tmp_path / "slide1" / "c.tif")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.txt").write_text("x")
    with caplog.at_level(logging.WARNING, logger="monai_gmr"):
        items = inference_datalist(tmp_path, tmp_path / "unused", check=False)
    assert [Path(d["image"]).name for d in items] == ["a.png"]
    msgs = [r.getMessage() for r in caplog.records if "sub-folders" in r.getMessage()]
    assert len(msgs) == 1 and msgs[0].startswith("2 image file(s)") and "b.png" in msgs[0], msgs


def test_empty_split_of_a_tiny_synthetic_dataset_says_to_generate_more_images(tmp_path):
    """A tiny --synthetic n_images left a split empty and the error named only the split; it now names the
    synthetic n_images and fractions and says how to get more. Prepared data keep the plain message."""
    import json

    data = tmp_path / "data"
    with pytest.raises(ValueError, match=r"no items in split 'validation'.*n_images=2 .*--synthetic#n_images"):
        nuclei_datalist(data, "validation", n_images=2, size=32, seed=0, check=False)
    dl = data / "datalist.json"
    record = json.loads(dl.read_text())
    del record["generator"]  # as a prepared dataset's datalist
    dl.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="no items in split 'validation'") as err:
        nuclei_datalist(data, "validation", generate=False, check=False)
    assert "n_images" not in str(err.value)


@pytest.mark.parametrize("bad,match", [({"roi_size": [64, 64, 64]}, "roi_size=.*give one size or 2"),
                                       ({"crop_size": "32x"}, "crop_size=.*must be integers"),
                                       ({"roi_size": [64, "6x"]}, "roi_size=.*must be integers")],
                         ids=["roi_size-3-values", "crop_size-text", "roi_size-text"])  # fmt: skip
def test_window_sizes_of_the_wrong_length_or_not_integers_are_refused_by_name(bad, match):
    """--roi_size "[64, 64, 64]" for the 2D network passed every check and stopped only at the first validation,
    after val_interval epochs of training (leaving an event file), in the sliding-window inferer; text that is no
    number was left to the transforms, which failed naming no setting."""
    from monai_gmr.nets import GMRUNet
    from monai_gmr.workflows.nuclei import check_window_sizes

    net = GMRUNet(2, 3, 2, features=(4, 4, 4, 4))
    with pytest.raises(ValueError, match=match):
        check_window_sizes(net, **bad)
    check_window_sizes(net, crop_size="32", roi_size=[64.0, 64])  # text holding an int, an integral float
    check_window_sizes(torch.nn.Conv2d(3, 2, 3), roi_size=[64, 64, 64])  # no spatial_dims attribute: no length check


def test_report_outputs_counts_each_output_and_warns_about_missing_ones(tmp_path, caplog):
    import logging

    from monai_gmr.workflows.nuclei import report_outputs

    items = [{"image": str(tmp_path / "in" / f"t{i}.png")} for i in range(3)]
    for name in ("t0_seg.png", "t0_instance.png", "t0_prob.tif", "t1_seg.png", "other_seg.png"):
        (tmp_path / name).write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="monai_gmr"):
        counts = report_outputs(items, tmp_path)
    assert counts == {"_seg.png": 2, "_instance.png": 1, "_prob.tif": 1}
    text = caplog.text
    assert f"inference wrote 2 *_seg.png, 1 *_instance.png, 1 *_prob.tif for 3 image(s) to {tmp_path.resolve()}" in text
    assert "2 image(s) lack some of their outputs" in text and "t1.png" in text


def test_window_sizes_must_be_multiples_of_the_unets_downsampling_unless_it_pads():
    """A U-Net with 2**levels down-sampling refuses, by setting name, a crop or window size it cannot take (with a
    suggestion), also behind a DistributedDataParallel-style ``.module`` wrapper (multi-GPU configs pass the
    wrapped network); built with ``pad_to_multiple=True`` it takes any size."""
    from monai_gmr.nets import GMRUNet
    from monai_gmr.workflows.nuclei import check_window_sizes

    net = GMRUNet(2, 3, 2, features=(4, 4, 4, 4))
    assert net.multiple == 8
    check_window_sizes(net, crop_size=32, roi_size=[64, 40])

    class Wrapped(torch.nn.Module):  # what DistributedDataParallel exposes: the network as .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    for network in (net, Wrapped(net)):
        with pytest.raises(ValueError, match=r"crop_size=30: GMRUNet needs every size divisible by 8 .*30 -> 32"):
            check_window_sizes(network, crop_size=30)
        with pytest.raises(ValueError, match=r"roi_size=\[64, 36\]: GMRUNet needs every size divisible by 8"):
            check_window_sizes(network, roi_size=[64, 36])
    padded = GMRUNet(2, 3, 2, features=(4, 4, 4, 4), pad_to_multiple=True)
    check_window_sizes(padded, crop_size=30, roi_size=[64, 36])
    check_window_sizes(Wrapped(padded), crop_size=30)


def test_check_instance_settings_accepts_min_nucleus_size_0_and_names_bad_settings():
    """min_nucleus_size 0 keeps every object (no size filter) and is valid; a negative or non-integer size and an
    unknown method are refused naming the setting."""
    from monai_gmr.workflows.nuclei import check_instance_settings

    for method in ("connected_components", "watershed"):
        for size in (0, 1, 30, np.int64(5)):
            check_instance_settings(method, size)
    for size in (-1, 2.5, True, "10"):
        with pytest.raises(ValueError, match=r"^min_nucleus_size must be an integer >= 0"):
            check_instance_settings("watershed", size)
    with pytest.raises(ValueError, match=r"^instance_method must be"):
        check_instance_settings("watershd", 0)


def test_empty_test_split_falls_back_or_is_named(tmp_path):
    """``prepare_nuclei --test_frac 0`` writes ``"test": []``: MONAI's ``load_decathlon_datalist`` fails on an empty
    test list with a bare ``IndexError: list index out of range``, so inference (test split, validation fallback)
    crashed instead of using the validation tiles, and an empty datalist was not named."""
    import json

    from monai_gmr.workflows.nuclei import nuclei_datalist

    item = {"image": "images/a.png", "label": "labels/a.png"}
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [item], "validation": [item], "test": []}))
    items, used = nuclei_datalist(tmp_path, "test", generate=False, check=False, fallback_split="validation",
                                  return_split=True)  # fmt: skip
    assert used == "validation" and [Path(i["image"]).name for i in items] == ["a.png"]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [item], "validation": [], "test": []}))
    with pytest.raises(ValueError, match="has no items in split 'validation'"):
        nuclei_datalist(tmp_path, "test", generate=False, check=False, fallback_split="validation")
    with pytest.raises(ValueError, match="has no items in split 'test'"):
        nuclei_datalist(tmp_path, "test", generate=False, check=False)
