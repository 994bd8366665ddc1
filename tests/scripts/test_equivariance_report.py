"""scripts/equivariance_report.py on a tiny setting: files, exact 90-degree rows for GMRUNet, per-layer errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

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
    assert len(gmr90) == 8 and max(gmr90) < 1e-4 and min(plain90) > 1e-3
    layers = list(csv.DictReader(open(tmp_path / "equivariance_layers.csv")))
    gmr = [r for r in layers if r["model"] == "GMRUNet"]
    assert {r["stage"] for r in gmr} == {"init", "trained"} and {"4x4", "32x32"} <= {r["shape"] for r in gmr}
    assert max(float(r["rel_err"]) for r in gmr) < 1e-4  # every layer exact at 90 degrees
    assert max(float(r["rel_err"]) for r in layers if r["model"] == "BasicUNet") > 1e-3
    saved = json.loads((tmp_path / "equivariance_report.json").read_text())
    assert set(saved["ratio_gmr_over_basicunet_at_45"]) == set(summary["ratio_gmr_over_basicunet_at_45"]) and (tmp_path / "equivariance_report.png").is_file()
