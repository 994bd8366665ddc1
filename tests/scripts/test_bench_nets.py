"""scripts/bench_nets.py: the argument checks and the documented --quick sizes."""

from __future__ import annotations

import pytest

from tests.conftest import load_script

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny, overhead-bound tensors


@pytest.mark.parametrize("extra, named", [(["--repeats", "0"], "--repeats"), (["--iters", "0"], "--iters"),
                                          (["--impls", "foo"], "--impls"), (["--threads", "-1"], "--threads"),
                                          (["--budget-s", "-1"], "--budget-s"), (["--device", "gpu"], "--device")])  # fmt: skip
def test_bad_values_are_refused_before_measuring(tmp_path, capsys, extra, named):
    """--repeats 0 / --iters 0 crashed after the models were built (empty median, division by zero); a negative
    --budget-s skipped every suite and then failed with KeyError: 'seconds'."""
    with pytest.raises(SystemExit):
        load_script("bench_nets").main(["--device", "cpu", "--quick", "--out", str(tmp_path / "o")] + extra)
    assert named in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_an_out_that_is_a_file_is_refused_before_measuring(tmp_path, capsys):
    """--out naming a file timed the first suite, then stopped with a FileExistsError traceback."""
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(SystemExit):
            load_script("bench_nets").main(["--device", "cpu", "--quick", "--suites", "unet", "--impls", "dense",
                                            "--size", "32", "--batch", "1", "--warmup", "1", "--repeats", "1",
                                            "--threads", "1", "--out", str(out)])  # fmt: skip
        assert "--out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_gpu_index_beyond_the_visible_gpus_is_refused_before_measuring(tmp_path, monkeypatch):
    """--device cuda:1 on a one-GPU machine passed the checks and failed with "invalid device ordinal"."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit, match="only 1 GPU"):
        load_script("bench_nets").main(["--device", "cuda:1", "--quick", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_quick_help_states_the_quick_sizes(capsys):
    """The help said 64 x 64 while --quick runs 32 x 32."""
    mod = load_script("bench_nets")
    with pytest.raises(SystemExit):
        mod.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for suite, (_, _, size, batch) in mod.SUITES.items():
        assert f"{suite} {size} x {size}, batch {batch}" in text


@pytest.mark.slow  # about 15 s on 2 CPU cores
def test_compile_option_times_compiled_copies_beside_the_eager_models(tmp_path):
    """``--compile aot_eager``: every model gets a compiled copy, timed in the same run, with compiled / eager ratios."""
    pytest.importorskip("torch._dynamo")
    mod = load_script("bench_nets")
    result = mod.main(["--device", "cpu", "--quick", "--suites", "unet", "--impls", "dense", "--compile", "aot_eager",
                       "--size", "32", "--batch", "1", "--repeats", "1", "--out", str(tmp_path)])  # fmt: skip
    labels = {(r["mode"], r["model"]) for r in result["rows"] if r["kind"] != "failed"}
    for mode in ("train", "infer"):
        for model in ("BasicUNet", "GMRUNet[dense]"):
            assert (mode, model) in labels and (mode, model + "+compile") in labels, labels
    ratios = {(q["mode"], q["model"]): q["compiled_over_eager"] for q in result["compile_ratios"]}
    assert len(ratios) == 4 and all(v > 0 for v in ratios.values())
    assert result["settings"]["warmup"] >= 2 and result["rows"][0]["size"] == 32
    assert "torch.compile (backend aot_eager)" in (tmp_path / "bench_nets_cpu.md").read_text()


# ---- mutation audit round 4: what the timed region, the rates, the ratios and the peak memory measure ----


def _fake_clock_suite(monkeypatch, mod, compile_backend=None):
    """bench_suite on two tiny nets under a fake clock: a forward costs 1 s, a backward 10 s, an Adam step 100 s."""
    import argparse
    from types import SimpleNamespace

    import torch

    clock = [0.0]

    def tick(dt):
        clock[0] += dt

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)

        def forward(self, x):
            tick(getattr(self, "cost", 1.0))  # a compiled copy (below) costs 0.5 s
            y = self.conv(x)
            if y.requires_grad:
                y.register_hook(lambda g: tick(10.0))
            return y

    class Adam(torch.optim.Adam):
        def step(self, closure=None):
            tick(100.0)
            return super().step(closure)

    monkeypatch.setattr(mod, "build_suite", lambda suite, impls: {"Base": (Net(), "baseline", "-"),
                                                                  "Gmr[x]": (Net(), "gmr", "x")})  # fmt: skip
    monkeypatch.setattr(torch.optim, "Adam", Adam)
    monkeypatch.setattr(mod, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, backend=None: compiled.append(backend) or setattr(m, "cost", 0.5) or m)
    args = argparse.Namespace(quick=True, size=16, batch=3, impls=["x"], compile=compile_backend, warmup=2, repeats=2,
                              iters=4)  # fmt: skip
    return mod.bench_suite("unet", "fp32", args, torch.device("cpu")), compiled


def test_rates_cover_forward_backward_and_optimizer_step_per_image(monkeypatch):
    """Training images/s = iters x batch / time of iters full steps (forward + backward + Adam step); inference
    images/s = iters x batch / time of iters forwards; warm-up steps are not timed."""
    rows, compiled = _fake_clock_suite(monkeypatch, load_script("bench_nets"))
    assert compiled == []
    got = {(r["mode"], r["model"]): r["images_per_s"] for r in rows}
    assert set(got) == {("train", "Base"), ("train", "Gmr[x]"), ("infer", "Base"), ("infer", "Gmr[x]"),
                        ("infer", "Gmr[export_dense]")}  # fmt: skip
    for (mode, model), ips in got.items():
        assert ips == pytest.approx(3 / 111 if mode == "train" else 3 / 1), (mode, model)


def test_compile_option_adds_compiled_copies_to_the_timed_models(monkeypatch):
    """--compile BACKEND reaches bench_suite: every model gets a compiled copy (torch.compile with that backend)."""
    rows, compiled = _fake_clock_suite(monkeypatch, load_script("bench_nets"), compile_backend="fake_backend")
    assert compiled and set(compiled) == {"fake_backend"}
    labels = {(r["mode"], r["model"], r["kind"]) for r in rows}
    for mode in ("train", "infer"):
        assert (mode, "Base+compile", "baseline_compiled") in labels and (mode, "Gmr[x]+compile", "gmr_compiled") in labels
    ratios = {(q["mode"], q["model"]): q["compiled_over_eager"] for q in load_script("bench_nets")._compile_ratios(rows)}
    assert ratios == pytest.approx({("train", "Base"): 111 / 110.5, ("train", "Gmr[x]"): 111 / 110.5,
                                    ("infer", "Base"): 2.0, ("infer", "Gmr[x]"): 2.0})  # compiled / eager images/s


def test_a_model_failing_in_a_timed_step_is_recorded_and_the_others_measured(monkeypatch):
    """With --warmup 0 a model's first step is timed, outside the warm-up's per-model error handling: one failing
    model (e.g. out of memory) ended the whole run and lost every measurement of the suite."""
    import argparse

    import torch

    mod = load_script("bench_nets")

    class Broken(torch.nn.Conv2d):
        def forward(self, x):
            raise RuntimeError("out of memory (simulated)")

    torch.manual_seed(0)
    monkeypatch.setattr(mod, "build_suite", lambda suite, impls: {"Base": (torch.nn.Conv2d(3, 2, 1), "baseline", "-"),
                                                                  "Gmr[x]": (Broken(3, 2, 1), "gmr", "x")})  # fmt: skip
    args = argparse.Namespace(quick=True, size=8, batch=1, impls=["x"], compile=None, warmup=0, repeats=2, iters=1)
    rows = mod.bench_suite("unet", "fp32", args, torch.device("cpu"))
    kinds = {(r["mode"], r["model"]): r["kind"] for r in rows}
    assert kinds[("train", "Base")] == kinds[("infer", "Base")] == "baseline"
    assert kinds[("train", "Gmr[x]")] == "failed" and "out of memory" in next(r["error"] for r in rows if r["kind"] == "failed")
    assert all(r["images_per_s"] > 0 for r in rows if r["kind"] == "baseline")


def test_ratios_are_gmr_over_baseline():
    mod = load_script("bench_nets")
    key = {"suite": "unet", "precision": "fp32", "mode": "train"}
    rows = [{**key, "model": "B", "kind": "baseline", "images_per_s": 100.0, "peak_mb": 200.0},
            {**key, "model": "G", "kind": "gmr", "images_per_s": 40.0, "peak_mb": 300.0}]  # fmt: skip
    (q,) = mod._ratios(rows)
    assert q["model"] == "G" and q["baseline"] == "B"
    assert q["throughput_ratio"] == pytest.approx(0.4) and q["memory_ratio"] == pytest.approx(1.5)


def test_peak_memory_is_reset_before_the_measured_step(monkeypatch):
    """_peak_alone_mb on a fake CUDA allocator: an earlier, larger peak (another model's) must not be reported."""
    from types import SimpleNamespace

    import torch

    mod = load_script("bench_nets")
    mb = 2**20
    mem = {"alloc": 10 * mb, "peak": 500 * mb}  # 500 MB: the peak of a model measured before

    def step():
        mem["alloc"] += 30 * mb
        mem["peak"] = max(mem["peak"], mem["alloc"])
        mem["alloc"] -= 30 * mb

    for name in ("synchronize", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: mem["alloc"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: mem["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a, **k: mem.update(peak=mem["alloc"]))
    runner = SimpleNamespace(device=torch.device("cuda"), opt=None, step=step, persistent_bytes=lambda: 1 * mb)
    assert mod._peak_alone_mb(runner) == pytest.approx(31.0)  # 30 MB of the step + 1 MB held between steps


def test_images_per_s_is_the_median_over_interleaved_rounds(monkeypatch):
    """Under a fake clock where every third round of a model is 4x slower: images/s is the median over the rounds
    (not the mean), min/max are the extreme rounds, and the rounds alternate between the models (round-robin,
    not one model's rounds in a block)."""
    import argparse
    from types import SimpleNamespace

    import torch

    mod = load_script("bench_nets")
    clock, order = [0.0], []

    class Net(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name, self.calls, self.conv = name, 0, torch.nn.Conv2d(3, 2, 1)

        def forward(self, x):
            clock[0] += (1.0, 1.0, 4.0)[self.calls % 3]  # 3 images in 1 s, 1 s, 4 s
            self.calls += 1
            order.append(self.name)
            return self.conv(x)

    monkeypatch.setattr(mod, "build_suite", lambda suite, impls: {"Base": (Net("Base"), "baseline", "-"),
                                                                  "Gmr[x]": (Net("Gmr"), "gmr", "x")})  # fmt: skip
    monkeypatch.setattr(mod, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    args = argparse.Namespace(quick=True, size=8, batch=3, impls=["x"], compile=None, warmup=0, repeats=3, iters=1)
    rows = mod.bench_suite("unet", "fp32", args, torch.device("cpu"))
    train = [r for r in rows if r["mode"] == "train"]
    assert [r["model"] for r in train] == ["Base", "Gmr[x]"]
    for r in train:
        assert r["images_per_s"] == pytest.approx(3.0)  # median of 3, 3, 0.75 (the mean is 2.25)
        assert r["images_per_s_min"] == pytest.approx(0.75) and r["images_per_s_max"] == pytest.approx(3.0)
    assert order[:6] == ["Base", "Gmr"] * 3  # the timed training rounds, interleaved


def test_ratios_compare_with_the_baseline_of_the_same_precision():
    """A bf16 GMR row is compared with the bf16 baseline, not with the first baseline of the suite (fp32)."""
    mod = load_script("bench_nets")
    rows = [{"suite": "unet", "precision": p, "mode": "train", "model": m, "kind": k, "images_per_s": ips, "peak_mb": mb}
            for p, m, k, ips, mb in (("fp32", "B", "baseline", 100.0, 200.0), ("bf16", "B", "baseline", 300.0, 100.0),
                                     ("fp32", "G", "gmr", 50.0, 300.0), ("bf16", "G", "gmr", 60.0, 250.0))]  # fmt: skip
    got = {q["precision"]: (q["throughput_ratio"], q["memory_ratio"]) for q in mod._ratios(rows)}
    assert got == {"fp32": pytest.approx((0.5, 1.5)), "bf16": pytest.approx((0.2, 2.5))}
