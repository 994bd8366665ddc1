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
                                          (["--metrics", "foo"], "--metrics"), (["--device", "gpu"], "--device")])  # fmt: skip
def test_bad_values_are_refused_up_front(tmp_path, capsys, extra, named):
    """They raised ZeroDivisionError / ValueError tracebacks (or range() arg 3 must not be zero)."""
    with pytest.raises(SystemExit):
        load_script("bench_robustness").main(TINY + ["--size", "16", "--out", str(tmp_path / "r.json")] + extra)
    assert named in capsys.readouterr().err and not (tmp_path / "r.json").exists()


def _on_forward(mod, monkeypatch, hook) -> None:
    """Make the script's ``build_net`` wrap every net in a module that calls ``hook()`` before each forward."""
    import torch

    build = mod.build_net

    class Hooked(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            hook()
            return self.net(x)

    monkeypatch.setattr(mod, "build_net", lambda kind, width: Hooked(build(kind, width)))

def test_amp_gives_the_plain_passes_the_same_precision_as_rotation_robustness(tmp_path, monkeypatch):
    """rotation_robustness runs autocast on CUDA only; with --amp on the CPU the plain forward passes still ran under
    bfloat16 autocast, so the two timings compared fp32 against bf16 (the ratio measured the precision)."""
    import torch

    mod = load_script("bench_robustness")
    seen = []
    _on_forward(mod, monkeypatch, lambda: seen.append(torch.is_autocast_enabled("cpu")))
    mod.main(TINY + ["--size", "16", "--amp", "--out", str(tmp_path / "r.json")])
    assert seen and not any(seen)


def test_plain_passes_cover_every_view_and_the_ratio_is_robustness_over_plain(tmp_path, monkeypatch):
    """Under a fake clock (1 s per forward call): the plain timing runs one forward per batch and view (angles and
    flips), and overhead_ratio = robustness time / plain time."""
    from types import SimpleNamespace

    mod = load_script("bench_robustness")
    clock = [0.0]

    def tick() -> None:
        clock[0] += 1.0

    _on_forward(mod, monkeypatch, tick)
    monkeypatch.setattr(mod, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    rr = mod.rotation_robustness

    def resampling_costs_30_s(*a, **k):  # the rotations' own cost, beside the same forwards as the plain passes
        clock[0] += 30.0
        return rr(*a, **k)

    monkeypatch.setattr(mod, "rotation_robustness", resampling_costs_30_s)
    res = mod.main(TINY + ["--size", "16", "--batch_size", "1", "--out", str(tmp_path / "r.json")])
    assert res["views"] == 6 and res["images"] == 2
    assert res["plain_forward_s"] == 2 * 6  # 2 batches x (4 angles + 2 flips)
    assert res["plain_ms_per_image_view"] == pytest.approx(1000.0)
    # both per-image-view times divide by images x views (12 here), not by images only
    assert res["robustness_ms_per_image_view"] == pytest.approx(1000 * res["robustness_s"] / 12, abs=0.1)
    assert res["robustness_s"] > 30 and res["overhead_ratio"] == pytest.approx(res["robustness_s"] / res["plain_forward_s"], abs=1e-3)
    assert res["overhead_ratio"] > 1
