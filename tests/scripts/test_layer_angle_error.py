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
