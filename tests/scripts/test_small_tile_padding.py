"""scripts/small_tile_padding.py: corner crops, Dice, and a run over a tiny prepared dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import load_script


def test_corner_crops_and_dice():
    mod = load_script("small_tile_padding")
    img = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    lab = np.arange(30).reshape(5, 6)
    crops = mod.corner_crops(img, lab, 3)
    assert [c[1][0, 0] for c in crops] == [0, 3, 12, 15]  # (0, 0), (0, 3), (2, 0), (2, 3)
    assert all(c[0].shape == (3, 3, 3) and np.array_equal(c[0][..., 0] // 3, c[1]) for c in crops)
    with pytest.raises(ValueError, match="crop=6 is larger than a tile of 5 x 6"):
        mod.corner_crops(img, lab, 6)
    a = np.array([1, 1, 0, 0], bool)
    assert mod.dice(a, np.array([1, 0, 1, 0], bool)) == 0.5 and mod.dice(~a & a, ~a & a) == 1.0


class _DarkerThanTheWindow(torch.nn.Module):
    """Nucleus where a pixel is darker than its window's mean (a global statistic, as instance norm has one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean(1, keepdim=True)
        fg = g.mean(dim=(2, 3), keepdim=True) - g
        return torch.cat([-fg, fg], 1)


def test_black_padding_is_scored_against_the_crop_alone():
    """Dark nuclei on a bright background: black borders make the window mean darker than the background, so the
    padded windows miss most nuclei; reflection keeps the crop's statistics (Dice of the crop alone)."""
    mod = load_script("small_tile_padding")
    g = np.random.default_rng(0)
    lab = (g.random((40, 40)) > 0.7).astype(np.uint8)
    img = np.where(lab[..., None] > 0, 60, 220).astype(np.uint8).repeat(3, axis=2)
    scores = mod.evaluate(_DarkerThanTheWindow(), [(img, lab)], crop=24, roi=64)
    assert set(scores) == set(mod.PADDINGS)
    assert scores["none"] == 1.0 and scores["reflect"] == 1.0
    assert scores["black"] < 0.8, scores
    with pytest.raises(ValueError, match="roi=24 must be larger than crop=24"):
        mod.evaluate(_DarkerThanTheWindow(), [(img, lab)], crop=24, roi=24)


def test_run_writes_the_tables(tmp_path):
    from PIL import Image

    from monai_gmr.nets import GMRUNet

    mod = load_script("small_tile_padding")
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    g = np.random.default_rng(1)
    Image.fromarray(g.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / "images" / "a.png")
    Image.fromarray((g.random((32, 32)) > 0.5).astype(np.uint8)).save(data / "labels" / "a.png")
    (data / "datalist.json").write_text(json.dumps({"test": [{"image": "images/a.png", "label": "labels/a.png"}]}))
    torch.manual_seed(0)
    net = GMRUNet(2, 3, 2, features=(4, 4, 8, 8), kernel_sizes=(3, 3, 3, 3))
    torch.save(net.state_dict(), tmp_path / "model.pt")
    args = ["--data", str(data), "--checkpoint", str(tmp_path / "model.pt"), "--splits", "test", "--crop", "16",
            "--roi", "32", "--network-def", '{"features": [4, 4, 8, 8], "kernel_sizes": [3, 3, 3, 3]}']  # fmt: skip
    assert mod.main([*args, "--out", str(tmp_path / "out" / "res")]) == 0
    rows = json.loads((tmp_path / "out" / "res.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["crop"] == 16 and rows[0]["crops"] == 4
    assert all(0.0 <= rows[0][k] <= 1.0 for k in mod.PADDINGS)
    assert "| 16 (window 32) | 4 |" in (tmp_path / "out" / "res.md").read_text()
    with pytest.raises(SystemExit):  # --out under a file: refused before anything runs
        mod.main([*args, "--out", str(tmp_path / "out" / "res.json" / "x")])
    with pytest.raises(ValueError, match="--splits: 'tset' is not a split"):
        mod.main([*args[:-6], "--splits", "tset", *args[-6:], "--out", str(tmp_path / "out" / "res2")])
