"""scripts/benchmark_wsi.py: the pieces that run without training (the full benchmark is a device/CPU-hours job)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "benchmark_wsi.py"


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_wsi", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _finished(run_dir, epochs: int, wall: float = 12.5, model: bool = True):
    (run_dir / "models").mkdir(parents=True)
    (run_dir / "train_summary.json").write_text(json.dumps({"epochs_completed": epochs, "wall_time_s": wall}))
    if model:
        (run_dir / "models" / "model.pt").write_bytes(b"weights")
    return run_dir


def test_completed_training_is_reused_only_when_finished(tmp_path):
    bw = _load()
    assert bw._completed_training(_finished(tmp_path / "a", 30), 30) == 12.5
    assert bw._completed_training(_finished(tmp_path / "b", 4), 30) is None  # a different (or unfinished) budget
    assert bw._completed_training(_finished(tmp_path / "c", 30, model=False), 30) is None  # no model.pt
    assert bw._completed_training(tmp_path / "missing", 30) is None
    bad = _finished(tmp_path / "d", 30)
    (bad / "train_summary.json").write_text("{ not json")
    assert bw._completed_training(bad, 30) is None


def test_both_networks_take_the_same_widths():
    bw = _load()
    nets = bw.networks([8, 16, 32, 64])
    assert set(nets) == {"gmr_resnet18", "resnet18"}
    assert nets["gmr_resnet18"]["block_inplanes"] == nets["resnet18"]["block_inplanes"] == [8, 16, 32, 64]
    default = bw.networks(None)
    assert default["resnet18"]["_target_"] == "monai.networks.nets.resnet18"
    assert default["gmr_resnet18"]["kernel_sizes"] == [9, 9, 5, 5]


def test_out_inside_the_repository_is_refused():
    bw = _load()
    with pytest.raises(SystemExit, match="inside the repository"):
        bw.main(["--out", str(ROOT / "bench_out"), "--device", "cpu", "--skip-throughput", "--skip-training"])
    assert not (ROOT / "bench_out").exists()
