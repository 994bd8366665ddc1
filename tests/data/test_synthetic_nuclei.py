"""Tests of the synthetic H&E-like nuclei generator and ensure_nuclei_dataset."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_gmr.data import ensure_nuclei_dataset, make_synthetic_nuclei, render_nuclei_tile


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_render_tile_content():
    rgb, inst, info = render_nuclei_tile(128, 0)
    assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8
    assert inst.shape == (128, 128) and inst.dtype == np.uint16
    n = int(inst.max())
    assert n == info["n_nuclei"] >= 5
    assert np.array_equal(np.unique(inst), np.arange(n + 1))  # consecutive ids, all present
    assert info["n_fibers"] >= 1 and info["n_touching"] >= 1
    fg, bg = inst > 0, inst == 0
    # haematoxylin-rich nuclei are darker and bluer than the eosin-pink stroma
    lum = rgb.astype(float).mean(-1)
    assert lum[fg].mean() < lum[bg].mean() - 40
    blue_minus_green = rgb[..., 2].astype(float) - rgb[..., 1]
    assert blue_minus_green[fg].mean() > 30 and rgb[bg][:, 0].mean() > rgb[bg][:, 1].mean() + 20  # pink: R > G
    # fibres follow the dominant direction, nuclei are oriented at random
    assert all(abs(a - 0.0) <= 15.0 + 1e-9 for a in info["fiber_angles"])
    _, _, info = render_nuclei_tile(256, 0)
    assert info["n_nuclei"] >= 30
    ang = np.deg2rad(2 * np.asarray(info["nucleus_angles"]))  # axial data: doubled angles
    # mean resultant length of uniform angles ~ 1/sqrt(n); P(R > 0.35) = exp(-n R^2) < 3% for n >= 30
    assert math.hypot(np.cos(ang).mean(), np.sin(ang).mean()) < 0.35
    fib = np.deg2rad(2 * np.asarray(info["fiber_angles"]))
    assert math.hypot(np.cos(fib).mean(), np.sin(fib).mean()) > 0.8  # fibres: one dominant direction


def test_touching_nuclei_share_borders():
    _, inst, info = render_nuclei_tile(128, 1, touching_frac=0.8)
    a, b = inst[:, :-1], inst[:, 1:]
    touching = (a > 0) & (b > 0) & (a != b)
    assert touching.sum() > 0 and info["n_touching"] >= 2


def test_fiber_angle_parameter_and_disable():
    _, _, info = render_nuclei_tile(128, 2, fiber_angle=60.0, fiber_angle_jitter=5.0)
    assert info["fiber_angles"] and all(55.0 <= a <= 65.0 for a in info["fiber_angles"])
    _, _, info0 = render_nuclei_tile(128, 2, fiber_density=0.0)
    assert info0["n_fibers"] == 0
    with pytest.raises(ValueError, match="size"):
        render_nuclei_tile(8, 0)


def test_fibers_are_dark_streaks_in_the_background():
    """Fibre pixels (rendered only in the image) are background in the label and darker than plain stroma."""
    rgb_f, inst_f, _ = render_nuclei_tile(128, 5)
    rgb_0, inst_0, _ = render_nuclei_tile(128, 5, fiber_density=0.0)
    # same seed: identical nuclei/labels up to the random draws consumed by the fibres -> compare statistics
    lum_f = rgb_f.astype(float).mean(-1)[inst_f == 0]
    lum_0 = rgb_0.astype(float).mean(-1)[inst_0 == 0]
    assert np.percentile(lum_f, 2) < np.percentile(lum_0, 2) - 10


def test_make_synthetic_nuclei_files_and_determinism(tmp_path):
    r1 = make_synthetic_nuclei(tmp_path / "a", n_images=5, size=64, seed=7)
    make_synthetic_nuclei(tmp_path / "b", n_images=5, size=64, seed=7)
    make_synthetic_nuclei(tmp_path / "c", n_images=5, size=64, seed=8)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert fa == fb  # same seed -> identical bytes
    assert fa["images/nuclei_000.png"] != fc["images/nuclei_000.png"]
    dl = json.loads((tmp_path / "a" / "datalist.json").read_text())
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [3, 1, 1]
    for item in dl["training"] + dl["validation"] + dl["test"]:
        assert not Path(item["image"]).is_absolute()
        img = np.asarray(Image.open(tmp_path / "a" / item["image"]))
        lab = np.asarray(Image.open(tmp_path / "a" / item["label"]))
        msk = np.asarray(Image.open(tmp_path / "a" / item["mask"]))
        assert img.shape == (64, 64, 3) and lab.shape == (64, 64) and lab.dtype == np.uint16
        assert np.array_equal(msk, (lab > 0).astype(np.uint8))
    assert Path(r1["datalist_path"]) == tmp_path / "a" / "datalist.json"
    assert Path(r1["training"][0]["image"]).is_absolute()
    # image i depends on (seed, i) only
    make_synthetic_nuclei(tmp_path / "d", n_images=2, size=64, seed=7)
    assert _files(tmp_path / "d")["images/nuclei_001.png"] == fa["images/nuclei_001.png"]


def test_monai_loads_the_datalist(tmp_path):
    from monai.data import load_decathlon_datalist
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    path = ensure_nuclei_dataset(tmp_path / "ds", n_images=3, size=48, seed=0)
    items = load_decathlon_datalist(str(path), True, "training", base_dir=str(path.parent))
    d = Compose([LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"])])(items[0])
    assert d["image"].shape == (3, 48, 48) and d["label"].shape == (1, 48, 48)
    assert float(d["label"].max()) >= 1


def test_ensure_nuclei_dataset_generates_logs_and_reuses(tmp_path, caplog):
    root = tmp_path / "data"
    with caplog.at_level(logging.INFO, logger="monai_gmr.data.synthetic_nuclei"):
        p = ensure_nuclei_dataset(root, n_images=3, size=48, seed=1)
    assert p == root / "datalist.json" and p.is_file()
    assert f"dataset_dir {root} holds no data: generating 3 synthetic images" in caplog.text
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")]  # temp folder cleaned up
    before = _files(root)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monai_gmr.data.synthetic_nuclei"):
        assert ensure_nuclei_dataset(root, n_images=5, size=64, seed=2, generate=False) == p
    assert "generating" not in caplog.text and _files(root) == before
    # an existing empty folder is filled
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ensure_nuclei_dataset(empty, n_images=2, size=32).is_file()


def test_size_must_be_an_int_or_two_values(tmp_path):
    # (32,) raised IndexError and (32, 32, 32) was taken as (32, 32) without a word
    for bad in ((32,), (32, 32, 32)):
        with pytest.raises(ValueError, match="size must be an int or"):
            render_nuclei_tile(bad, 0)
        with pytest.raises(ValueError, match="size must be an int or"):
            make_synthetic_nuclei(tmp_path / "out", n_images=1, size=bad)
    assert not (tmp_path / "out").exists()  # checked before anything is written
    assert render_nuclei_tile((20, 30), 0)[0].shape == (20, 30, 3)


@pytest.mark.parametrize(
    "kwargs,name",
    [({"nuclei_density": -1}, "nuclei_density"), ({"white_space": 1.5}, "white_space"),
     ({"touching_frac": 2.0}, "touching_frac"), ({"fiber_density": -1}, "fiber_density"),
     ({"nucleus_aspect": (2.0, 1.0)}, "nucleus_aspect"), ({"fiber_length": (10.0, 5.0)}, "fiber_length"),
     ({"stain_jitter": -0.1}, "stain_jitter"), ({"nucleus_axes": (6.0, math.nan)}, "nucleus_axes")],
)  # fmt: skip
def test_render_arguments_are_checked_by_name(kwargs, name):
    # numpy's own errors ("lam < 0 or lam is NaN", "high - low < 0", "Quantiles must be in the range [0, 1]") named
    # no argument, and a negative fiber_density or touching_frac=2 were accepted
    with pytest.raises(ValueError, match=f"^{name} must"):
        render_nuclei_tile(48, 0, **kwargs)


def test_ensure_nuclei_dataset_errors(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ensure_nuclei_dataset(missing, generate=False)
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no data"):
        ensure_nuclei_dataset(empty, generate=False)
    assert not any(empty.iterdir())
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(raw / "x.png")
    with pytest.raises(FileNotFoundError, match="prepare_nuclei"):
        ensure_nuclei_dataset(raw, generate=True)
    assert sorted(p.name for p in raw.iterdir()) == ["x.png"]


@pytest.mark.slow
def test_plain_cnn_learns_the_orientation_shortcut():
    """A small plain CNN trained without augmentation on fibre-distractor tiles loses Dice at 90 degrees (exact
    rotation, no interpolation), and does not when the fibres and oriented stroma are switched off."""
    import torch
    from monai.networks.nets import BasicUNet

    def run(**kw):
        torch.manual_seed(0)
        torch.set_num_threads(1)  # tiny convolutions: extra threads only add contention
        rng = np.random.default_rng(0)
        tr = [render_nuclei_tile(128, 100 + i, **kw) for i in range(24)]
        te = [render_nuclei_tile(192, 500 + i, **kw) for i in range(4)]
        x = torch.tensor(np.stack([t[0] for t in tr])).permute(0, 3, 1, 2).float() / 255
        y = torch.tensor(np.stack([t[1] > 0 for t in tr])).long()
        net = BasicUNet(2, 3, 2, features=(8, 16, 16, 32, 32, 8))
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        for _ in range(600):
            idx = torch.as_tensor(rng.integers(0, len(tr), 8))
            oy, ox = (int(v) for v in rng.integers(0, 65, 2))
            loss = torch.nn.functional.cross_entropy(net(x[idx, :, oy : oy + 64, ox : ox + 64]), y[idx, oy : oy + 64, ox : ox + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        dice = {}
        with torch.no_grad():
            for k in (0, 1):
                num = den = 0.0
                for rgb, inst, _ in te:
                    img = torch.tensor(np.rot90(rgb, k).copy()).permute(2, 0, 1)[None].float() / 255
                    p = net(img).argmax(1)[0].numpy().astype(bool)
                    g = np.rot90(inst > 0, k)
                    num += 2 * (p & g).sum()
                    den += p.sum() + g.sum()
                dice[90 * k] = num / den
        return dice

    threads = torch.get_num_threads()
    try:
        with_fibres = run()
        without = run(fiber_density=0.0, stroma_streaks=0.0)
    finally:
        torch.set_num_threads(threads)
    print(f"plain CNN Dice with fibres {with_fibres}, without {without}")  # shown with pytest -s
    assert with_fibres[0] > 0.9 and without[0] > 0.9
    assert with_fibres[0] - with_fibres[90] > 0.04, with_fibres
    assert abs(without[0] - without[90]) < 0.02, without


def test_image_streams_do_not_overlap_across_seeds(tmp_path):
    make_synthetic_nuclei(tmp_path / "a", n_images=2, size=64, seed=7)
    make_synthetic_nuclei(tmp_path / "c", n_images=1, size=64, seed=8)
    # SeedSequence([seed, i]): seed 8's image 0 is not seed 7's image 1
    assert _files(tmp_path / "c")["images/nuclei_000.png"] != _files(tmp_path / "a")["images/nuclei_001.png"]


def test_refuses_an_out_dir_that_holds_data(tmp_path):
    """A 2-image dataset written over a 3-image one kept nuclei_002 beside the new datalist: now a clear error, and
    nothing of the old dataset is touched; a folder with only hidden files counts as empty."""
    make_synthetic_nuclei(tmp_path / "a", n_images=3, size=32, seed=0)
    before = _files(tmp_path / "a")
    with pytest.raises(FileExistsError, match="already holds data"):
        make_synthetic_nuclei(tmp_path / "a", n_images=2, size=32, seed=1)
    assert _files(tmp_path / "a") == before
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / ".keep").write_text("")
    make_synthetic_nuclei(tmp_path / "b", n_images=1, size=32, seed=0)
    assert (tmp_path / "b" / "datalist.json").is_file()


def test_ensure_nuclei_dataset_with_another_datalist_name(tmp_path):
    """``datalist_name="train.json"``: the generator wrote datalist.json and the returned train.json did not exist
    (and the next call refused the folder: files but no train.json)."""
    root = tmp_path / "data"
    p = ensure_nuclei_dataset(root, n_images=2, size=32, datalist_name="train.json")
    assert p == root / "train.json" and p.is_file() and not (root / "datalist.json").exists()
    assert len(json.loads(p.read_text())["training"]) >= 1
    assert ensure_nuclei_dataset(root, generate=False, datalist_name="train.json") == p


def test_unknown_synthetic_setting_is_named_before_anything_is_written(tmp_path):
    """A typo in a bundle's ``--synthetic "{'n_image': 8}"`` reached render_nuclei_tile as a keyword and stopped
    with its TypeError; now the setting is named (with the known ones) before any file is written."""
    with pytest.raises(ValueError, match="unknown synthetic nuclei setting\\(s\\) n_image; known: n_images"):
        ensure_nuclei_dataset(str(tmp_path / "data"), generate=True, n_image=4, size=32)
    assert not (tmp_path / "data").exists() and list(tmp_path.iterdir()) == []
    make_synthetic_nuclei(tmp_path / "ok", n_images=1, size=32, fiber_angle=30.0)  # render settings still pass


def test_tiles_differ_and_split_seed_moves_only_the_split(tmp_path):
    """Every tile of a dataset is its own draw; ``split_seed`` changes the split (with the same files) and defaults
    to ``seed``."""
    a = make_synthetic_nuclei(tmp_path / "a", n_images=6, size=32, seed=7)
    fa = _files(tmp_path / "a")
    tiles = [fa[f"images/nuclei_{i:03d}.png"] for i in range(6)]
    assert len(set(tiles)) == 6
    names = lambda r: [sorted(Path(i["image"]).name for i in r[k]) for k in ("training", "validation", "test")]  # noqa: E731
    splits = {s: names(make_synthetic_nuclei(tmp_path / f"s{s}", n_images=6, size=32, seed=7, split_seed=s)) for s in range(4)}
    assert all(_files(tmp_path / f"s{s}")["images/nuclei_003.png"] == fa["images/nuclei_003.png"] for s in range(4))
    assert len({str(v) for v in splits.values()}) > 1  # the split follows split_seed
    assert names(a) == names(make_synthetic_nuclei(tmp_path / "b", n_images=6, size=32, seed=7, split_seed=7))


@pytest.mark.parametrize("angle", [30.0, 120.0])
def test_oriented_noise_streaks_run_along_the_documented_direction(angle):
    """``oriented_noise`` streaks run along ``angle`` counter-clockwise from the x axis on screen, i.e. along
    ``(dx, dy) = (cos t, -sin t)`` in array coordinates (y down): the direction of least gradient of the structure
    tensor (the mirrored, clockwise direction would be off by 2 t)."""
    from monai_gmr.data.render import oriented_noise

    img = oriented_noise((128, 128), 12.0, 1.0, angle, np.random.default_rng(0))
    gy, gx = np.gradient(img.astype(np.float64))
    j = np.array([[np.mean(gx * gx), np.mean(gx * gy)], [np.mean(gx * gy), np.mean(gy * gy)]])
    vals, vecs = np.linalg.eigh(j)
    streak = vecs[:, 0]  # (x, y) direction of the smallest eigenvalue
    t = math.radians(angle)
    assert abs(streak @ np.array([math.cos(t), -math.sin(t)])) > 0.97, (angle, streak)
    assert vals[1] > 10 * vals[0]  # clearly oriented


@pytest.mark.parametrize("kwargs, name", [
    ({"n_images": 2.5}, "n_images"),  # was 2 tiles, silently
    ({"n_images": True}, "n_images"),  # was 1 tile
    ({"n_images": None}, "n_images"),  # was int()'s TypeError
    ({"seed": None}, "seed"),  # was int()'s TypeError
    ({"seed": -1}, "seed"),  # was NumPy's "expected non-negative integer"
    ({"seed": 1.5}, "seed"),  # was SeedSequence's TypeError
    ({"seed": True}, "seed"),  # was seed 1, silently
    ({"split_seed": -1}, "split_seed"),  # NumPy's error after every tile was written
    ({"val_frac": 1.5}, "val_frac"),  # refused only after every tile was written
])  # fmt: skip
def test_bad_counts_and_seeds_are_refused_by_name_before_anything_is_written(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        make_synthetic_nuclei(tmp_path / "o", **{"n_images": 2, "size": 32, **kwargs})
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.png"))


def test_numpy_and_text_counts_and_seeds_are_the_same_dataset(tmp_path):
    """NumPy integers and text holding an int (``--synthetic#seed 3`` from a command line) give the same bytes."""
    make_synthetic_nuclei(tmp_path / "a", n_images=2, size=32, seed=3)
    make_synthetic_nuclei(tmp_path / "b", n_images=np.int64(2), size=32, seed=np.int64(3))
    make_synthetic_nuclei(tmp_path / "c", n_images="2", size=32, seed="3")
    assert _files(tmp_path / "a") == _files(tmp_path / "b") == _files(tmp_path / "c")


def test_ensure_nuclei_dataset_logs_text_settings(tmp_path, caplog):
    """``--synthetic#seed 3`` passes text: the "generating" line used %d and logging printed a "--- Logging error
    ---" traceback instead of the message."""
    with caplog.at_level(logging.INFO, logger="monai_gmr.data.synthetic_nuclei"):
        ensure_nuclei_dataset(tmp_path / "ds", n_images="1", size=32, seed="3")
    assert any("generating 1 synthetic images" in m and "seed 3" in m for m in caplog.messages)


@pytest.mark.parametrize("kwargs, name", [
    ({"fiber_angle": math.nan}, "fiber_angle"),  # rendered an all-black tile, silently
    ({"fiber_angle": math.inf}, "fiber_angle"),  # "math domain error"
    ({"fiber_angle": "30"}, "fiber_angle"),  # "must be real number, not str"
    ({"nuclei_density": None}, "nuclei_density"),  # float()'s TypeError
    ({"nuclei_density": "abc"}, "nuclei_density"),  # "could not convert string to float"
    ({"touching_frac": None}, "touching_frac"),
    ({"nucleus_axes": 5.0}, "nucleus_axes"),  # "'float' object is not subscriptable"
    ({"fiber_width": (1.0, 2.0, 3.0)}, "fiber_width"),  # "too many values to unpack"
])  # fmt: skip
def test_render_values_that_are_not_numbers_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must"):
        render_nuclei_tile(32, 0, **kwargs)
    # arrays and NumPy scalars still pass
    render_nuclei_tile(32, 0, nucleus_axes=np.array([6.0, 8.0]), fiber_angle=np.float32(30.0))


def test_a_crash_half_way_leaves_no_datalist(tmp_path, monkeypatch):
    """The datalist is written last: an error while writing tile 2 leaves no datalist naming missing files."""
    import monai_gmr.data.synthetic_nuclei as sn

    real, calls = sn.save_png, []

    def failing(path, array):
        calls.append(path)
        if len(calls) == 4:  # the first file of the second tile
            raise OSError("disk full")
        return real(path, array)

    monkeypatch.setattr(sn, "save_png", failing)
    with pytest.raises(OSError, match="disk full"):
        make_synthetic_nuclei(tmp_path / "o", n_images=3, size=32, seed=0)
    assert not (tmp_path / "o" / "datalist.json").exists()
    assert sorted(p.name for p in (tmp_path / "o").rglob("*.png")) == ["nuclei_000.png"] * 3  # tile 0 only


def test_unknown_synthetic_setting_is_refused_also_when_the_data_exist(tmp_path):
    """``--synthetic#n_imagez 8`` (a misspelt key) with a dataset_dir that holds data was silently ignored: the
    existing datalist was returned before the names were looked at. It is now refused naming the closest key."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "datalist.json").write_text('{"training": []}')
    with pytest.raises(ValueError, match="n_imagez.*did you mean 'n_images'"):
        ensure_nuclei_dataset(root, n_imagez=8, size=32)
    assert ensure_nuclei_dataset(root, n_images=8, size=32, val_frac=0.1) == root / "datalist.json"


def test_free_nuclei_do_not_overlap_earlier_ones():
    """Only the ``touching_frac`` nuclei share a border (module docstring): with ``touching_frac=0`` no nucleus is
    drawn over an earlier one, so different nuclei meet only where two happen to land side by side. Drawn over
    (cutting up to a quarter of the earlier nucleus), the shared border of three dense tiles grew from 38 to 305
    4-adjacent pixel pairs."""
    shared = 0
    for seed in range(3):
        _, inst, info = render_nuclei_tile(128, seed, touching_frac=0.0, nuclei_density=2e-3, fiber_density=0.0)
        assert info["n_touching"] == 0 and info["n_nuclei"] >= 20
        for a, b in ((inst[:, :-1], inst[:, 1:]), (inst[:-1], inst[1:])):
            shared += int(((a > 0) & (b > 0) & (a != b)).sum())
    assert shared < 80


def test_fibre_directions_spread_on_both_sides_of_fiber_angle():
    """Fibre directions are uniform in ``fiber_angle +- fiber_angle_jitter`` (both sides): a one-sided jitter kept
    every fibre within the range the other tests check, but tilted the dominant direction by half the jitter."""
    angles = [a for seed in range(3) for a in render_nuclei_tile(256, seed)[2]["fiber_angles"]]
    assert len(angles) >= 40 and all(-15.0 <= a <= 15.0 for a in angles)
    assert min(angles) < -10.0 and max(angles) > 10.0 and abs(float(np.mean(angles))) < 4.0


def test_save_png_is_atomic(tmp_path, monkeypatch):
    """``save_png`` writes every file atomically (``make_synthetic_nuclei``'s docstring): a writer failing half way
    leaves the earlier file as it was and no partial or temporary file beside it."""
    from PIL import Image as PILImage

    from monai_gmr.data.synthetic_nuclei import save_png

    p = tmp_path / "a.png"
    save_png(p, np.full((4, 5), 7, np.uint8))
    before = p.read_bytes()

    def broken(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n half")  # a partial file, then the error
        raise OSError("disk full")

    monkeypatch.setattr(PILImage.Image, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_png(p, np.zeros((4, 5), np.uint8))
    assert p.read_bytes() == before and [q.name for q in tmp_path.iterdir()] == ["a.png"]


def test_stains_to_rgb_rounds_to_the_nearest_grey_level():
    """Beer-Lambert intensities are rounded, not truncated (truncation darkened every pixel by half a grey level on
    average): empty glass of ``i0 = 200.6`` is 201; an optical density of ``ln 2`` halves ``i0 = 201.4`` to 101."""
    from monai_gmr.data.render import stains_to_rgb

    zero = np.zeros((2, 3), np.float32)
    assert (stains_to_rgb(zero, zero, 200.6) == 201).all()
    h = np.full((2, 3), math.log(2.0), np.float32)
    unit = np.array([1.0, 0.0, 0.0])
    rgb = stains_to_rgb(h, zero, 201.4, h_vec=unit, e_vec=unit)
    assert (rgb[..., 0] == 101).all() and (rgb[..., 1:] == 201).all()  # 100.7 -> 101, 201.4 -> 201


def test_fixed_ranges_low_equal_high_are_accepted():
    """A range is ``(low, high)`` with ``0 <= low <= high`` (``check_params``): a fixed value given as a range of
    one number, e.g. ``nucleus_aspect=(1.5, 1.5)``, is accepted, not refused."""
    from monai_gmr.data.render import check_params

    check_params(ranges={"fiber_width": (2.0, 2.0)})
    _, inst, info = render_nuclei_tile(64, 0, nucleus_aspect=(1.5, 1.5), fiber_width=(2.0, 2.0),
                                       nucleus_axes=(8.0, 8.0))  # fmt: skip
    assert info["n_nuclei"] >= 1 and inst.max() == info["n_nuclei"]
    with pytest.raises(ValueError, match="fiber_width"):
        check_params(ranges={"fiber_width": (3.0, 2.0)})


def test_smooth_noise_is_white_noise_blurred_by_a_gaussian_of_std_sigma():
    """``smooth_noise(shape, sigma)`` is white noise blurred by a Gaussian of standard deviation ``sigma``: its
    autocorrelation at lag ``d`` is ``exp(-d^2 / (4 sigma^2))`` (0.78 at ``d = sigma``); the filter
    ``exp(-2 pi sigma^2 k^2)`` (pi not squared) gave a correlation length ``sqrt(pi)`` times shorter (0.45)."""
    from monai_gmr.data.render import smooth_noise

    for sigma in (2.0, 4.0):
        corr = []
        for seed in range(3):
            n = smooth_noise((128, 128), sigma, np.random.default_rng(seed)).astype(np.float64)
            assert n.std() == pytest.approx(1.0, abs=1e-3)
            n -= n.mean()
            lag = int(sigma)  # periodic noise (FFT): a circular shift
            corr.append((np.mean(n * np.roll(n, lag, 0)) + np.mean(n * np.roll(n, lag, 1))) / 2)
        assert np.mean(corr) == pytest.approx(math.exp(-0.25), abs=0.06), (sigma, corr)


def _principal_angle(w: np.ndarray) -> float:
    """Screen angle (degrees, counter-clockwise from the x axis, y up) of the principal axis of the weights ``w``."""
    yy, xx = np.mgrid[: w.shape[0], : w.shape[1]].astype(np.float64)
    s = w.sum()
    dy, dx = yy - (w * yy).sum() / s, xx - (w * xx).sum() / s
    cxx, cyy, cxy = (w * dx * dx).sum() / s, (w * dy * dy).sum() / s, (w * dx * dy).sum() / s
    return -0.5 * math.degrees(math.atan2(2 * cxy, cxx - cyy))  # minus: rows grow downwards


@pytest.mark.parametrize("theta", [30.0, 120.0])
def test_draw_nucleus_geometry(theta):
    """``draw_nucleus``: the major axis runs along ``theta`` counter-clockwise on screen (clockwise, or the axes
    swapped, turned it); the label (hard inside test) is where the anti-aliased coverage is at least 1/2, so labels
    and images agree; a canvas wider than high clips the object to its own width, not to its height."""
    from monai_gmr.data.render import draw_nucleus

    params = {"a": 12.0, "b": 5.0, "orders": np.arange(2, 6), "amps": np.zeros(4), "phases": np.zeros(4)}
    sl, inside, soft, _ = draw_nucleus(30.0, 30.0, theta, params, (61, 61))
    canvas = np.zeros((61, 61))
    canvas[sl] = inside
    ang = _principal_angle(canvas)
    assert abs((ang - theta + 90.0) % 180.0 - 90.0) < 2.0, ang
    assert (soft[inside] >= 0.5).all() and (soft[~inside] <= 0.5).all() and inside.sum() > 150
    wide = draw_nucleus(10.0, 70.0, 0.0, params, (20, 90))  # near the right edge of a wide canvas
    big = draw_nucleus(10.0, 70.0, 0.0, params, (90, 90))
    assert wide is not None and wide[0][1] == big[0][1]  # same columns
    assert wide[1].sum() == big[1][: 20 - big[0][0].start].sum()


@pytest.mark.parametrize("theta", [0.0, 30.0, 120.0])
def test_draw_spindle_length_direction_and_taper(theta):
    """``draw_spindle``: a fibre of ``length`` along ``theta`` (counter-clockwise on screen) whose half-width tapers
    as ``width / 2 * sqrt(1 - t^2)``: the coverage reaches ``length / 2`` along the axis and no further, runs along
    ``theta``, is ``width`` wide at the middle and 0.6 of that at ``t = 0.8`` (blunt ends: the same width)."""
    from monai_gmr.data.render import draw_spindle

    sl, cov = draw_spindle(40.0, 40.0, theta, 40.0, 4.0, 0.0, (81, 81))
    canvas = np.zeros((81, 81))
    canvas[sl] = cov
    t = math.radians(theta)
    yy, xx = np.mgrid[:81, :81] - 40.0
    along = xx * math.cos(t) - yy * math.sin(t)  # screen direction (cos t, sin t), y up
    assert np.abs(along[canvas > 0]).max() <= 20.0 + 1e-6 and np.abs(along[canvas > 0]).max() > 19.0
    assert abs((_principal_angle(canvas) - theta + 90.0) % 180.0 - 90.0) < 1.0
    if theta == 0.0:  # columns are cuts across the fibre
        assert canvas[:, 40].sum() == pytest.approx(4.0, abs=0.05)
        assert canvas[:, 40 + 16].sum() / canvas[:, 40].sum() == pytest.approx(0.6, abs=0.05)


def test_split_fractions_go_to_their_own_split(tmp_path):
    """``val_frac`` sizes the validation split and ``test_frac`` the test split (10 tiles at 0.1 / 0.3: 6, 1, 3)."""
    r = make_synthetic_nuclei(tmp_path, n_images=10, size=32, val_frac=0.1, test_frac=0.3)
    assert [len(r[k]) for k in ("training", "validation", "test")] == [6, 1, 3]
