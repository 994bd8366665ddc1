"""scripts/slide_rotation_consistency.py: argument checks and the Markdown report (the measurement itself trains two
networks: docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from tests.conftest import load_script


def _run(kind: str, model: str, grid: str, max_diff: float) -> dict:
    names = ["rot0", "rot90", "rot180", "rot270", "rot0_flip", "rot90_flip", "rot180_flip", "rot270_flip"]
    els = [{"element": n, "max_abs_diff": 0.0 if i == 0 else max_diff, "grid_offset": [16, 16]} for i, n in enumerate(names)]
    worst = {"mean_abs_diff": max_diff / 10, "max_abs_diff": max_diff, "max_abs_diff_element": "rot90", "dice": 0.9,
             "agreement": 0.95, "tissue_iou": 1.0, "coverage_iou": 0.875}  # fmt: skip
    return {"slide_kind": kind, "model": model, "grid": grid, "reference": {"n_patches": 12}, "worst": worst,
            "elements": els}  # fmt: skip


def test_markdown_tables():
    mod = load_script("slide_rotation_consistency")
    report = {"command": "python scripts/slide_rotation_consistency.py --quick", "seconds": 1.0,
              "settings": {"profile": "quick", "epochs": 4, "patch_size": 48, "widths": [8, 16, 32, 64]},
              "environment": {"commit": "abc", "cpu_count": 2, "cpu": "x86_64", "device": "cpu", "torch": "2.13.0",
                              "monai": "1.6.1"},
              "slides": {"synthetic": {"path": "s.tiff", "size0": [2048, 2048], "levels": 4}},
              "runs": [_run("synthetic", "gmr_resnet18", "centered", 3e-8), _run("synthetic", "resnet18", "top_left", 0.5)]}  # fmt: skip
    md = mod.markdown(report)
    assert "| synthetic | gmr_resnet18 | centered | 12 | 3.00e-09 | 3.00e-08 (rot90) | 0.9000 |" in md
    assert "| synthetic | resnet18 | top_left | 12 | 0.0500 | 0.5000 (rot90) | 0.9000 | 0.9500 | 1.0000 | 0.8750 |" in md
    assert "| rot0 | rot90 | rot180 | rot270 | rot0_flip | rot90_flip | rot180_flip | rot270_flip |" in md
    assert "commit: abc" in md and "2-core" in md


def test_bad_arguments(tmp_path):
    mod = load_script("slide_rotation_consistency")
    with pytest.raises(SystemExit):
        mod._parse(["--out", str(tmp_path), "--epochs", "0"])
    with pytest.raises(SystemExit):
        mod._parse(["--out", str(tmp_path), "--real-slide", str(tmp_path / "missing.svs")])
    assert mod._parse(["--out", str(tmp_path), "--quick"]).quick


def test_an_out_or_results_under_a_file_is_refused(tmp_path, capsys):
    """--out naming a file stopped with a FileExistsError traceback; --results under a file after the whole run."""
    mod = load_script("slide_rotation_consistency")
    (tmp_path / "afile").write_text("")
    for argv, named in ((["--out", str(tmp_path / "afile")], "--out"), (["--out", str(tmp_path / "afile" / "o")], "--out"),
                        (["--out", str(tmp_path / "o"), "--results", str(tmp_path / "afile" / "r")], "--results")):  # fmt: skip
        with pytest.raises(SystemExit):
            mod._parse(argv)
        assert named in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_gpu_index_beyond_the_visible_gpus_is_refused(tmp_path, capsys, monkeypatch):
    """--device cuda:1 on a one-GPU machine trained both networks (through CUDA_VISIBLE_DEVICES, which the parent
    process had not checked) and then failed at net.to(device)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit):
        load_script("slide_rotation_consistency")._parse(["--out", str(tmp_path / "o"), "--device", "cuda:1"])
    assert "only 1 GPU(s) visible" in capsys.readouterr().err


def test_symmetric_size():
    mod = load_script("slide_rotation_consistency")
    # the CMU-1 small region (2967 x 2220), 48-pixel patches, map blocks of 2: one row less
    assert mod.symmetric_size([2967, 2220], 48, 48, 2) == [2966, 2220]
    assert mod.symmetric_size([2048, 2048], 48, 48, 1) == [2048, 2048]
    h, w = mod.symmetric_size([203, 131], 16, 16, 4)
    assert h % 4 == 0 and w % 4 == 0 and h <= 203 and w <= 131 and (h - 16) % 16 % 2 == 0 and (w - 16) % 16 % 2 == 0


@pytest.mark.parametrize("extra, named", [(["--device", "cuda"], "--device"), (["--batch-size", "0"], "--batch-size"),
                                          (["--timeout", "0"], "--timeout")])  # fmt: skip
def test_bad_values_are_refused_before_training(tmp_path, capsys, monkeypatch, extra, named):
    """--device cuda without CUDA trained both networks (minutes) and then failed with a traceback at net.to(device);
    --batch-size 0 failed after training, --timeout 0 killed the first bundle run."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        load_script("slide_rotation_consistency").main(["--out", str(tmp_path / "o"), "--quick"] + extra)
    assert named in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_slides_of_another_profile_in_out_are_refused(tmp_path):
    """A full run into the --out of a --quick run reused the quick profile's 2048-pixel slides (ensure_wsi_dataset
    keeps an existing dataset) while the report gave the full profile's settings."""
    import json

    data = tmp_path / "o" / "data"
    data.mkdir(parents=True)
    (data / "datalist.json").write_text(json.dumps({"training": [], "validation": [], "test": []}))
    (data / "slides.json").write_text(json.dumps({"n_slides": 4, "size": [2048, 2048], "seed": 0}))
    with pytest.raises(SystemExit, match="holds synthetic slides generated with"):
        load_script("slide_rotation_consistency").main(["--out", str(tmp_path / "o"), "--epochs", "1", "--timeout", "60"])


# ------------------------------------------------------------------------------------------------ mutation audit 4
def test_symmetric_size_counts_a_patch_that_ends_on_the_border():
    """A grid whose last patch ends exactly on the border leaves no remainder: 45 = 3 x 15 is symmetric (counting one
    patch too few gave an odd remainder of 15 and cut the slide to 44)."""
    mod = load_script("slide_rotation_consistency")
    assert mod.symmetric_size([45, 30], 15, 15, 1) == [45, 30]
    assert mod.symmetric_size([64], 16, 16, 1) == [64]


def test_symmetric_crop_uses_whole_map_blocks_of_the_rounded_up_block_size(tmp_path):
    """The map block of a slide larger than ``map_max_size`` is ``ceil(size / map_max_size)`` level-0 pixels (the
    map then fits in ``map_max_size``); the crop is a multiple of it and keeps the slide's pixels."""
    import numpy as np

    from monai_gmr.data import slide_info, write_pyramidal_tiff
    from monai_gmr.data.wsi import open_slide

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (70, 52, 3), dtype=np.uint8)
    write_pyramidal_tiff(tmp_path / "s.tif", rgb, n_levels=1, compression="deflate")
    mod = load_script("slide_rotation_consistency")
    out = mod._write_symmetric_crop(str(tmp_path / "s.tif"), tmp_path / "c.tif", 8, 40)
    assert out["block"] == 2  # ceil(70 / 40), not 70 // 40 = 1
    h, w = out["size0"]
    assert h % 2 == 0 and w % 2 == 0 and h <= 70 and w <= 52 and (h - 8) % 8 % 2 == 0 and (w - 8) % 8 % 2 == 0
    assert list(slide_info(tmp_path / "c.tif")["sizes"][0]) == [h, w]
    reader, wsi = open_slide(str(tmp_path / "c.tif"))
    img, _ = reader.get_data(wsi, location=(0, 0), size=(h, w), level=0)
    assert np.array_equal(np.moveaxis(np.asarray(img)[:3], 0, -1), rgb[:h, :w])
