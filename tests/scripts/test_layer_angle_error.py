"""scripts/layer_angle_error.py: a tiny run (files, both samplings, the ordering it exists to show) and bad arguments."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import load_script

TINY = ["--kernel-sizes", "11", "--seeds", "3", "--size", "48", "--threads", "1"]


def test_tiny_run_writes_the_table_and_area_beats_center_at_k11(tmp_path):
    res = load_script("layer_angle_error").main(TINY + ["--out", str(tmp_path)])
    rows = {r["sampling"]: r for r in res["rows"]}
    assert set(rows) == {"center", "area"} and all(len(r["errors"]) == 3 for r in rows.values())
    assert rows["area"]["max"] < 0.01 < rows["center"]["max"]  # k = 11: the paper's sampling is worst here
    assert json.loads((tmp_path / "layer_angle_error.json").read_text())["rows"][0]["kernel_size"] == 11
    with open(tmp_path / "layer_angle_error.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["sampling"] for r in table] == ["center", "area"] and int(table[1]["over_bound"]) == 0
    assert "| 11 | area |" in (tmp_path / "layer_angle_error.md").read_text()


@pytest.mark.parametrize("extra, named", [(["--kernel-sizes", "4"], "--kernel-sizes"), (["--seeds", "0"], "--seeds"),
                                          (["--size", "16"], "--size"), (["--samplings", "pixel"], "--samplings"),
                                          (["--bound", "0"], "--bound"), (["--bound", "nan"], "--bound"),
                                          (["--field-sigma", "nan"], "--field-sigma"),
                                          (["--angles", "15", "nan"], "--angles")])  # fmt: skip
def test_bad_values_are_refused_up_front(tmp_path, capsys, extra, named):
    with pytest.raises(SystemExit):
        load_script("layer_angle_error").main(TINY + ["--out", str(tmp_path / "o")] + extra)
    assert named in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_an_out_that_is_a_file_is_refused_up_front(tmp_path, capsys):
    """--out naming a file measured every layer, then stopped with a FileExistsError traceback."""
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(SystemExit):
            load_script("layer_angle_error").main(["--kernel-sizes", "3", "--seeds", "1", "--size", "8", "--angles", "45",
                                                   "--samplings", "center", "--threads", "1", "--out", str(out)])  # fmt: skip
        assert "--out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# ---- mutation audit round 4: the worst angle per seed and the summary statistics ----


def test_worst_errors_keep_the_worst_angle_of_each_seed(monkeypatch):
    mod = load_script("layer_angle_error")
    monkeypatch.setattr(mod, "spline_equivariance_error", lambda layer, x, angles, spatial_dims: {15.0: 0.1, 30.0: 0.5, 45.0: 0.2})
    assert mod.worst_errors(3, "center", 2, [15.0, 30.0, 45.0], 16, 2, 2.0) == [0.5, 0.5]


def test_summarise_gives_median_p90_max_and_the_count_over_the_bound():
    mod = load_script("layer_angle_error")
    s = mod.summarise([v / 10 for v in range(11)], bound=0.75)  # 0.0, 0.1, ..., 1.0
    assert s["median"] == pytest.approx(0.5) and s["p90"] == pytest.approx(0.9) and s["max"] == pytest.approx(1.0)
    assert s["over_bound"] == 3 and s["seeds"] == 11


def test_each_seed_draws_its_own_unit_std_field():
    """The input field follows the seed (same seed, same field; another seed, another field), with unit std."""
    mod = load_script("layer_angle_error")
    a, b, c = (mod.smooth_field(24, 2, 2.0, s) for s in (0, 0, 1))
    assert a.shape == (1, 1, 24, 24) and a.std(unbiased=False).item() == pytest.approx(1.0)
    assert bool((a == b).all()) and not bool((a - c).abs().max() < 1e-3)


def test_over_bound_counts_errors_strictly_above_the_bound():
    """The column is 'seeds > bound': an error equal to the bound is not over it."""
    mod = load_script("layer_angle_error")
    assert mod.summarise([0.5, 0.75, 1.0], bound=0.75)["over_bound"] == 1
