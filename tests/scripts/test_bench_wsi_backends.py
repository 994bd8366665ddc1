"""scripts/bench_wsi_backends.py: both backends run the bundle's slide inference and read the same pixels."""

from __future__ import annotations

import json

from tests.conftest import load_script


def test_backends_give_the_same_map_on_a_synthetic_slide(tmp_path):
    from monai_gmr.data import make_synthetic_wsi

    res = make_synthetic_wsi(tmp_path / "d", n_slides=1, size=512, seed=0, patches_per_slide=4, patch_size=32)
    slide = str(tmp_path / "d" / res["slides"][0]["image"])
    out = load_script("bench_wsi_backends").main(["--slide", slide, "--out", str(tmp_path / "o"), "--repeats", "1",
                                                  "--map-max-size", "256"])  # fmt: skip
    assert out["n_patches"] > 0 and out["max_abs_prob_difference"] == 0.0
    assert set(out["median_wall_s"]) == {"openslide", "tifffile"} and all(v > 0 for v in out["median_wall_s"].values())
    assert json.loads((tmp_path / "o" / "bench_wsi_backends.json").read_text()) == out


def test_refuses_a_missing_slide_and_an_output_folder_inside_the_repository(tmp_path, capsys):
    import pytest

    from tests.conftest import ROOT

    mod = load_script("bench_wsi_backends")
    with pytest.raises(SystemExit):
        mod.main(["--slide", str(tmp_path / "nope.svs"), "--out", str(tmp_path / "o")])
    assert "--slide" in capsys.readouterr().err and not (tmp_path / "o").exists()
    slide = tmp_path / "s.tiff"
    slide.write_bytes(b"")
    inside = ROOT / "bench_wsi_backends_out_test"
    with pytest.raises(SystemExit):
        mod.main(["--slide", str(slide), "--out", str(inside)])
    assert "inside the repository" in capsys.readouterr().err and not inside.exists()


def test_map_max_size_below_one_is_refused_before_anything_runs(tmp_path, capsys):
    """--map-max-size 0 ran the warm-up inference into a ZeroDivisionError traceback (every slide failed)."""
    import pytest

    slide = tmp_path / "s.tiff"
    slide.write_bytes(b"")
    with pytest.raises(SystemExit):
        load_script("bench_wsi_backends").main(["--slide", str(slide), "--out", str(tmp_path / "o"), "--map-max-size", "0"])
    assert "--map-max-size" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_medians_leave_out_the_warm_up_round_and_the_difference_is_the_largest(tmp_path, monkeypatch):
    """With a fake slide inference: the first run of each backend (100 s, warm-up) is not in the medians of the
    timed runs (1, 2, 3 s), and the map difference reported is the largest per-cell one (not the mean)."""
    import numpy as np

    mod = load_script("bench_wsi_backends")
    slide = tmp_path / "slide.tiff"
    slide.write_bytes(b"")
    maps = {"openslide": np.zeros((4, 4)), "tifffile": np.zeros((4, 4))}
    maps["tifffile"][1, 2] = 0.5
    calls = {b: 0 for b in maps}

    def run_once(slide, backend, out, map_max_size):
        wall = (100.0, 1.0, 2.0, 3.0)[calls[backend]]
        calls[backend] += 1
        np.save(tmp_path / f"{backend}.npy", maps[backend])
        return {"files": {"prob": str(tmp_path / f"{backend}.npy")}, "n_patches": 10, "wall_s": wall, "patches_per_s": 10 / wall}

    monkeypatch.setattr(mod, "run_once", run_once)
    out = mod.main(["--slide", str(slide), "--out", str(tmp_path / "o"), "--repeats", "3"])
    assert calls == {"openslide": 4, "tifffile": 4}
    assert out["median_wall_s"] == {"openslide": 2.0, "tifffile": 2.0}
    assert out["median_patches_per_s"] == {"openslide": 5.0, "tifffile": 5.0}
    assert out["max_abs_prob_difference"] == 0.5
