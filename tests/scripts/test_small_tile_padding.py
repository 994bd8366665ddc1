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
    assert mod.main([*args, "--multiple-crop", "13", "--out", str(tmp_path / "out" / "res")]) == 0
    res = json.loads((tmp_path / "out" / "res.json").read_text())
    rows, net_rows = res["rows"], res["net_padding_rows"]
    assert len(rows) == 1 and rows[0]["crop"] == 16 and rows[0]["crops"] == 4
    assert all(0.0 <= rows[0][k] <= 1.0 for k in mod.PADDINGS)
    assert [r["crop"] for r in net_rows] == [13] and set(net_rows[0]) == {"crop", "crops", "constant", "reflect", "replicate"}
    md = (tmp_path / "out" / "res.md").read_text()
    assert "| 16 (window 32) | 4 |" in md and "| 13 | 4 |" in md
    with pytest.raises(SystemExit):  # --out under a file: refused before anything runs
        mod.main([*args, "--out", str(tmp_path / "out" / "res.json" / "x")])
    with pytest.raises(ValueError, match="--splits: 'tset' is not a split"):
        mod.main([*args[:-6], "--splits", "tset", *args[-6:], "--out", str(tmp_path / "out" / "res2")])


def test_net_padding_builds_one_network_per_pad_mode():
    """evaluate_net_padding runs each crop whole through the network built for every pad_mode: with a network that
    calls a pixel a nucleus when it is darker than the mean of its (padded) input, zero padding pulls that mean down
    and misses nuclei, replication keeps the crop's statistics."""
    mod = load_script("small_tile_padding")
    g = np.random.default_rng(2)
    lab = (g.random((30, 30)) > 0.7).astype(np.uint8)
    img = np.where(lab[..., None] > 0, 60, 220).astype(np.uint8).repeat(3, axis=2)
    built = []

    def make(mode):
        built.append(mode)

        class Padded(torch.nn.Module):  # pads 12 pixels per side with ``mode`` (zeros for "constant"), crops back
            def forward(self, x):
                big = torch.nn.functional.pad(x, [12] * 4, mode=mode)
                return _DarkerThanTheWindow()(big)[..., 12:-12, 12:-12]

        return Padded()

    scores = mod.evaluate_net_padding(make, [(img, lab)], crop=20)
    assert built == ["constant", "reflect", "replicate"]
    assert scores["replicate"] == 1.0 and scores["constant"] < 0.8, scores
