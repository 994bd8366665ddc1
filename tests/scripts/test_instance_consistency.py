"""scripts/instance_consistency.py: the partition comparison, and a run over a tiny folder of instance masks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import load_script


def test_partition_mismatch_is_zero_only_for_the_same_partition():
    mod = load_script("instance_consistency")
    a = np.zeros((6, 6), np.int64)
    a[:3, :3], a[3:, 3:] = 1, 2
    assert mod.partition_mismatch(a, np.where(a > 0, 3 - a, 0)) == 0  # ids swapped: same partition
    split = a.copy()
    split[:3, :1] = 5  # one instance cut in two
    assert mod.partition_mismatch(a, split) == 3 and mod.partition_mismatch(split, a) == 3
    assert mod.partition_mismatch(a, (a > 0).astype(np.int64)) == 9  # two merged into one
    assert mod.partition_mismatch(a, np.where(a == 2, 0, a)) == 9  # foreground differs


def test_run_writes_the_tables(tmp_path):
    pytest.importorskip("skimage")
    from PIL import Image

    mod = load_script("instance_consistency")
    (tmp_path / "labels").mkdir()
    yy, xx = np.mgrid[:32, :40]
    inst = np.zeros((32, 40), np.uint16)
    inst[(yy - 12) ** 2 + (xx - 11) ** 2 <= 49] = 1
    inst[((yy - 12) ** 2 + (xx - 22) ** 2 <= 36) & (inst == 0)] = 2  # touching the first (not its mirror image)
    inst[24:29, 3:37] = 3  # a bar: one ridge of equal distance
    Image.fromarray(inst).save(tmp_path / "labels" / "a.png")
    assert mod.main(["--labels", str(tmp_path / "labels"), "--out", str(tmp_path / "out" / "res")]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "out" / "res.json").read_text())["rows"]}
    assert set(rows) == {"connected_components", "watershed", "skimage_watershed"}
    assert rows["connected_components"]["instances"] == 2 and rows["watershed"]["instances"] == 3
    assert rows["watershed"]["consistent_elements"] == 7 and rows["watershed"]["aji"] > 0.9
    assert rows["skimage_watershed"]["instances"] > 3  # the bar cut into pieces
    assert f"| watershed | {rows['watershed']['aji']:.4f} | 3 (3) | 1/1 | 7/7 | 0 |" in (tmp_path / "out" / "res.md").read_text()
    with pytest.raises(SystemExit):
        mod.main(["--labels", str(tmp_path / "out"), "--pattern", "*.tif", "--out", str(tmp_path / "o2")])


def test_consistency_counts_only_elements_without_any_mismatched_pixel(tmp_path, monkeypatch):
    """One mismatched pixel makes an element inconsistent; a tile is consistent only under all 7 elements, and the
    table counts such tiles (6 of 7 is not enough)."""
    from PIL import Image

    mod = load_script("instance_consistency")
    Image.fromarray(np.eye(8, dtype=np.uint8)).save(tmp_path / "a.png")
    mism = iter([0, 1, 0, 0, 0, 0, 0])  # the 7 non-identity elements of one tile, one of them off by one pixel
    monkeypatch.setattr(mod, "_methods", lambda md: {"m": lambda fg: fg.astype(np.int64)})
    monkeypatch.setattr(mod, "partition_mismatch", lambda a, b: next(mism))
    (row,) = mod.evaluate_masks([tmp_path / "a.png"])
    assert row["consistent_elements"] == 6 and row["mismatched_pixels"] == 1
    table = mod._table([row, {**row, "mask": "b.png", "consistent_elements": 7, "mismatched_pixels": 0}])
    assert "| 1/2 | 13/14 | 1 |" in table
