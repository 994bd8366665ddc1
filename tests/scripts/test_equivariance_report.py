"""scripts/equivariance_report.py on a tiny setting: files, exact 90-degree rows for GMRUNet, per-layer errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import equivariance_report as er  # noqa: E402


def test_tiny_report(tmp_path, one_thread):
    summary = er.main(["--out", str(tmp_path), "--size", "32", "--eval-size", "32", "--features", "4", "8", "8", "8",
                       "--kernel-sizes", "5", "5", "3", "3", "--step", "45", "--n-train", "2", "--n-eval", "1",
                       "--train-steps", "2", "--batch", "2", "--layer-angle", "90"])  # fmt: skip
    rows = list(csv.DictReader(open(tmp_path / "equivariance_report.csv")))
    assert {r["angle"] for r in rows} == {"0.0", "45.0", "90.0"}
    gmr90 = [float(r["rel_err"]) for r in rows if r["model"] == "GMRUNet" and r["angle"] == "90.0"]
    plain90 = [float(r["rel_err"]) for r in rows if r["model"] == "BasicUNet" and r["angle"] == "90.0"]
    assert len(gmr90) == 16 and max(gmr90) < 1e-4 and min(plain90) > 1e-3  # 2 stages x 4 inputs x 2 outputs
    assert {r["input"] for r in rows} == {"tile", "crop", "disk", "canvas"}
    layers = list(csv.DictReader(open(tmp_path / "equivariance_layers.csv")))
    gmr = [r for r in layers if r["model"] == "GMRUNet"]
    assert {r["stage"] for r in gmr} == {"init", "trained"} and {r["input"] for r in gmr} == {"disk", "canvas"}
    assert {"4x4", "32x32"} <= {r["shape"] for r in gmr if r["input"] == "disk"}
    assert {"8x8", "64x64"} <= {r["shape"] for r in gmr if r["input"] == "canvas"}  # default canvas: 2 x 32
    assert max(float(r["rel_err"]) for r in gmr) < 1e-4  # every layer exact at 90 degrees
    assert max(float(r["rel_err"]) for r in layers if r["model"] == "BasicUNet") > 1e-3
    saved = json.loads((tmp_path / "equivariance_report.json").read_text())
    assert set(saved["ratio_gmr_over_basicunet_at_45"]) == set(summary["ratio_gmr_over_basicunet_at_45"]) and (tmp_path / "equivariance_report.png").is_file()


def test_crop_view_covers_the_tile_at_every_angle():
    """The ``crop`` input: the field is large enough at every angle, is refused when it is not, and a right angle
    gives the exactly rotated crop (the crop is centred on the field)."""
    import pytest
    import torch

    size = 32
    field = torch.rand(1, 3, er.field_size(size), er.field_size(size))
    assert (field.shape[-1] - size) % 2 == 0
    view = er.crop_view(field, size, "bicubic")
    for a in (0.0, 15.0, 45.0, 80.0):
        assert view(a).shape == (1, 3, size, size)
    assert torch.allclose(view(90.0), torch.rot90(er.center_crop(field, size), 1, (2, 3)))
    with pytest.raises(ValueError, match="does not cover"):
        er.crop_view(field[..., 8:-8, 8:-8], size, "bicubic")(45.0)  # 38 / sqrt(2) < 32


def test_bad_values_are_refused_before_any_work(tmp_path, capsys):
    """--step 0, --train-steps 0, --n-eval 0, --threads 0 and an unknown --mode were tracebacks (ZeroDivisionError,
    IndexError, ...), some after the training."""
    import pytest

    for extra, named in ((["--step", "0"], "--step"), (["--train-steps", "0"], "--train-steps"),
                         (["--n-eval", "0"], "--n-eval"), (["--threads", "0"], "--threads"), (["--mode", "foo"], "--mode"),
                         (["--kernel-sizes", "4", "4", "4", "4"], "--kernel-sizes"), (["--radius-frac", "0"], "--radius-frac")):  # fmt: skip
        with pytest.raises(SystemExit):
            er.main(["--out", str(tmp_path / "o"), "--size", "32", "--eval-size", "32"] + extra)
        assert named in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_sampling_option_reaches_every_gmr_layer_only():
    models = er.build_models((4, 8, 8, 8), (5, 5, 3, 3), "instance", "area")
    convs = [m for m in models["GMRUNet"].modules() if type(m).__name__ == "GMRConv"]
    assert convs and all(c.sampling == "area" for c in convs)
    default = er.build_models((4, 8, 8, 8), (5, 5, 3, 3))
    assert all(m.sampling == "center" for m in default["GMRUNet"].modules() if type(m).__name__ == "GMRConv")


def test_sizes_below_16_are_refused_before_any_work(tmp_path):
    """--size 0 / --eval-size 0 passed the multiple-of-16 check and failed with a ValueError traceback in the data."""
    import pytest

    for extra, named in ((["--size", "0"], "--size"), (["--eval-size", "-16"], "--eval-size")):
        with pytest.raises(SystemExit, match=named):
            er.main(["--out", str(tmp_path / "o"), "--size", "32", "--eval-size", "32"] + extra)
        assert not (tmp_path / "o").exists()


def test_size_16_with_instance_norm_is_refused_before_any_work(tmp_path):
    """--size 16 / --eval-size 16 passed the multiple-of-16 check; BasicUNet's 1-pixel deepest features then stopped
    the run in instance norm ("Expected more than 1 spatial element") with a traceback."""
    import pytest

    for extra, named in ((["--size", "16"], "--size"), (["--eval-size", "16", "--canvas", "32"], "--eval-size"),
                         (["--size", "16", "--norm", "batch", "--batch", "1"], "--size")):  # fmt: skip
        with pytest.raises(SystemExit, match=f"{named} must be at least 32"):
            er.main(["--out", str(tmp_path / "o"), "--size", "32", "--eval-size", "32"] + extra)
        assert not (tmp_path / "o").exists()


def test_non_finite_angles_taper_and_lr_are_refused_before_any_work(tmp_path, capsys):
    """--taper nan wrote a complete-looking report of NaN errors; --step inf measured angle 0 only; --layer-angle nan
    and --max-angle nan failed with tracebacks (the former after the whole measurement); --lr 0 trained nothing."""
    import pytest

    for extra, named in ((["--taper", "nan"], "--taper"), (["--taper", "-1"], "--taper"), (["--step", "inf"], "--step"),
                         (["--max-angle", "nan"], "--max-angle"), (["--layer-angle", "nan"], "--layer-angle"),
                         (["--lr", "0"], "--lr"), (["--lr", "nan"], "--lr")):  # fmt: skip
        with pytest.raises(SystemExit):
            er.main(["--out", str(tmp_path / "o"), "--size", "32", "--eval-size", "32", "--features", "2", "2", "2", "2",
                     "--kernel-sizes", "3", "3", "3", "3", "--step", "90", "--n-train", "1", "--n-eval", "1",
                     "--train-steps", "1", "--batch", "2", "--layer-angle", "90"] + extra)  # fmt: skip
        assert named in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    """--out naming a file (or a path under one) ended the whole run with a FileExistsError traceback."""
    import pytest

    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(SystemExit):
            er.main(["--out", str(out), "--size", "32", "--eval-size", "32", "--features", "2", "2", "2", "2",
                     "--kernel-sizes", "3", "3", "3", "3", "--step", "90", "--n-train", "1", "--n-eval", "1",
                     "--train-steps", "1", "--batch", "2", "--layer-angle", "90"])  # fmt: skip (tiny: the old code ran)
        assert "--out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# ---- mutation audit round 4: the ratio's direction and the scored region ----


def test_ratio_at_45_is_gmr_error_over_basicunet_error(tmp_path, one_thread):
    summary = er.main(["--out", str(tmp_path), "--size", "32", "--eval-size", "32", "--features", "4", "8", "8", "8",
                       "--kernel-sizes", "5", "5", "3", "3", "--step", "45", "--max-angle", "45", "--n-train", "2",
                       "--n-eval", "1", "--train-steps", "1", "--batch", "2", "--layer-angle", "90"])  # fmt: skip
    errors, ratios = summary["errors"], summary["ratio_gmr_over_basicunet_at_45"]
    assert ratios
    for key, ratio in ratios.items():
        stage, inp, output = key.split("/")
        gmr, basic = errors["GMRUNet"][stage][inp][output]["45.0"], errors["BasicUNet"][stage][inp][output]["45.0"]
        assert ratio == gmr / basic, key
    assert summary["target_met"] == {k: v <= summary["target_ratio_at_45"] for k, v in ratios.items()}


def test_measure_scores_the_central_disk_only():
    """A net that is equivariant inside the disk but not in one corner has zero error: the corners are not scored."""
    import torch

    class CornerBump(torch.nn.Module):
        def forward(self, x):
            y = x.clone()
            y[..., :4, :4] += 5.0
            return y

    x = torch.rand(1, 2, 32, 32)
    for a in (90.0, 180.0):
        errs = er.measure(CornerBump(), x, [a], 0.4, "bicubic")
        assert errs["logits"][a] < 1e-6 and errs["probs"][a] < 1e-6, (a, errs)


def test_angle_grid_is_rounded():
    """np.arange gave 89.10000000000001 (step 0.1), written to the CSV as is."""
    grid = er.angle_grid(90.0, 0.1)
    assert 89.1 in grid and 45.0 in grid and len(grid) == 901
    assert all(a == round(a, 6) and len(repr(a)) <= 8 for a in grid)
    assert er.angle_grid(90.0, 7.0)[:3] == [0.0, 7.0, 14.0]


def test_grid_without_45_degrees_warns_before_any_work(tmp_path, monkeypatch, caplog):
    """--step 7 or --max-angle < 45 left the 45-degree ratios and target_met empty without a word."""
    import logging

    import pytest

    class Stop(Exception):
        pass

    def stop(args):
        raise Stop

    monkeypatch.setattr(er, "run_report", stop)
    for extra in (["--step", "7"], ["--max-angle", "30"]):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="monai_gmr.equivariance_report"), pytest.raises(Stop):
            er.main(["--out", str(tmp_path / "o"), *extra])
        assert any("does not contain 45 degrees" in r.getMessage() and "target_met" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_gmr.equivariance_report"), pytest.raises(Stop):
        er.main(["--out", str(tmp_path / "o"), "--step", "0.1"])
    assert not caplog.records


def test_measure_normalises_by_the_rotated_reference_output():
    """rel err = ||f(rot x) - rot f(x)|| / ||rot f(x)|| on the disk: checked by hand at 180 degrees (exact) for a
    net that multiplies by a fixed left-to-right ramp, on an input ramp, so ||f(rot x)|| != ||rot f(x)||."""
    import torch

    from monai_gmr.functional.rotation import central_disk_mask

    ramp = torch.linspace(1.0, 3.0, 16).expand(16, 16)

    class Ramp(torch.nn.Module):
        def forward(self, x):
            return x * ramp

    x = (1.0 + torch.linspace(0.0, 1.0, 16).expand(1, 2, 16, 16)).double()
    rot = lambda t: torch.flip(t, (-2, -1))  # noqa: E731
    disk = central_disk_mask((16, 16), 0.4)
    diff, ref = (Ramp()(rot(x)) - rot(Ramp()(x))) * disk, rot(Ramp()(x)) * disk
    expected = float(diff.norm() / ref.norm())
    assert float((Ramp()(rot(x)) * disk).norm()) != pytest.approx(float(ref.norm()), rel=1e-2)  # the norms differ
    errs = er.measure(Ramp(), x, [180.0], 0.4, "bicubic")
    assert errs["logits"][180.0] == pytest.approx(expected, rel=1e-9)


def test_measure_leaves_out_the_pixels_the_rotation_could_not_fill():
    """With the disk as large as the tile (radius_frac 0.5), its rim at 30/45 degrees reads padding: x + 1 is
    equivariant wherever the rotation is valid, so its error must be ~0 (the padded rim gave 1e-2)."""
    import torch

    class AddOne(torch.nn.Module):
        def forward(self, x):
            return x + 1.0

    errs = er.measure(AddOne(), torch.rand(1, 2, 32, 32, generator=torch.Generator().manual_seed(0)), [30.0, 45.0], 0.5, "bicubic")
    assert max(errs["logits"].values()) < 1e-5, errs


def test_train_follows_its_seed():
    """The mini-batch draw of train() follows ``seed``: same seed, same losses; another seed, other losses."""
    import torch

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 8, 8, generator=g), torch.randint(0, 2, (6, 8, 8), generator=g)

    def losses(seed):
        torch.manual_seed(0)
        return er.train(torch.nn.Conv2d(3, 2, 1), x, y, steps=4, batch=1, lr=1e-2, seed=seed)

    assert losses(1) == losses(1) and losses(1) != losses(2)
