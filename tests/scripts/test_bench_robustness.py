"""scripts/bench_robustness.py: a tiny CPU run and the argument checks."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_script

TINY = ["--device", "cpu", "--n_images", "2", "--width", "2", "--angle_step", "90", "--threads", "1"]


def test_tiny_run_at_a_size_that_is_not_a_multiple_of_8(tmp_path):
    """The synthetic labels were built from 8-pixel blocks at size // 8 * 8: --size 36 crashed (32 vs 36)."""
    out = tmp_path / "r.json"
    res = load_script("bench_robustness").main(TINY + ["--size", "36", "--out", str(out)])
    assert res["data"] == "synthetic (2 images 36x36)" and res["views"] == 6 and 0.0 <= res["dice_mean"] <= 1.0
    assert json.loads(out.read_text()) == res


@pytest.mark.parametrize("extra, named", [(["--angle_step", "0"], "--angle_step"), (["--n_images", "0"], "--n_images"),
                                          (["--batch_size", "0"], "--batch_size"), (["--flips", "x"], "--flips"),
                                          (["--metrics", "foo"], "--metrics")])  # fmt: skip
def test_bad_values_are_refused_up_front(tmp_path, capsys, extra, named):
    """They raised ZeroDivisionError / ValueError tracebacks (or range() arg 3 must not be zero)."""
    with pytest.raises(SystemExit):
        load_script("bench_robustness").main(TINY + ["--size", "16", "--out", str(tmp_path / "r.json")] + extra)
    assert named in capsys.readouterr().err and not (tmp_path / "r.json").exists()
