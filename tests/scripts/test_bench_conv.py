"""scripts/bench_conv.py: a tiny CPU run and the argument checks."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_script


def test_tiny_cpu_run_writes_json_and_markdown(tmp_path):
    out = tmp_path / "b.json"
    res = load_script("bench_conv").main(["--device", "cpu", "--shapes", "1,4,12,12", "--kernels", "3", "--impls",
                                          "torch,gmr_dense", "--modes", "fwd", "--warmup", "0", "--repeats", "1",
                                          "--out", str(out)])  # fmt: skip
    assert {(r["impl"], r["mode"], r["dtype"]) for r in res["rows"]} == {("torch", "fwd", "fp32"), ("gmr_dense", "fwd", "fp32")}
    assert json.loads(out.read_text())["rows"] == res["rows"] and out.with_suffix(".md").exists()


@pytest.mark.parametrize(
    "extra, named",
    [(["--modes", "bar"], "--modes"), (["--dtypes", "fp16"], "--dtypes"), (["--impls", "foo"], "--impls"),
     (["--repeats", "0"], "--repeats"), (["--kernels", "4"], "--kernels"), (["--shapes", "2,3"], "--shapes"),
     (["--device", "gpu"], "--device"), (["--groups", "3"], "--groups"), (["--groups", "0"], "--groups"),
     (["--groups", "x"], "--groups")],
)  # fmt: skip
def test_bad_values_are_refused_before_measuring(tmp_path, capsys, extra, named):
    """An unknown --modes/--dtypes was measured as fwd_bwd/fp32 under the unknown label; others crashed mid-run."""
    out = tmp_path / "b.json"
    argv = ["--device", "cpu", "--shapes", "1,4,12,12", "--kernels", "3", "--impls", "torch", "--warmup", "0",
            "--repeats", "1", "--out", str(out)]  # fmt: skip
    with pytest.raises(SystemExit):
        load_script("bench_conv").main(argv + extra)
    assert named in capsys.readouterr().err and not out.exists()


def test_groups_build_grouped_layers_and_label_their_rows(tmp_path):
    """--groups measures grouped/depthwise layers of every implementation; the table names the groups."""
    out = tmp_path / "b.json"
    res = load_script("bench_conv").main(["--device", "cpu", "--shapes", "1,4,12,12", "--kernels", "3", "--groups",
                                          "1,4", "--impls", "torch,gmr_dense,gmr_rings", "--modes", "fwd",
                                          "--warmup", "0", "--repeats", "1", "--out", str(out)])  # fmt: skip
    assert sorted({(r["groups"], r["impl"]) for r in res["rows"]}) == [
        (1, "gmr_dense"), (1, "gmr_rings"), (1, "torch"), (4, "gmr_dense"), (4, "gmr_rings"), (4, "torch")]
    table = out.with_suffix(".md").read_text()
    assert "| 1,4,12,12 | 3 |" in table and "| 1,4,12,12 g=4 | 3 |" in table
    mod = load_script("bench_conv")
    assert [mod.build(n, 2, 4, 3, "cpu", None, groups=4).groups for n in ("torch", "gmr_dense", "gmr_rings")] == [4] * 3


def test_impls_without_torch_write_the_markdown_without_ratios(tmp_path):
    """Without a torch row the ratio is None and the .md table crashed (TypeError) after the JSON was written."""
    out = tmp_path / "b.json"
    res = load_script("bench_conv").main(["--device", "cpu", "--shapes", "1,2,8,8", "--kernels", "3", "--impls",
                                          "gmr_dense", "--modes", "fwd", "--warmup", "0", "--repeats", "1",
                                          "--out", str(out)])  # fmt: skip
    assert [r["ratio_vs_torch"] for r in res["rows"]] == [None]
    row = [line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("| 1,2,8,8")]
    assert len(row) == 1 and "×" not in row[0] and f"{res['rows'][0]['ms']:.3f}" in row[0]


@pytest.mark.parametrize("kind", ["md", "folder", "under_file"])
def test_an_out_that_cannot_hold_the_json_is_refused_before_measuring(tmp_path, capsys, kind):
    """--out x.md: the table beside it replaced the JSON; a folder or a path under a file failed at the first save."""
    (tmp_path / "afile").write_text("")
    out = {"md": tmp_path / "b.md", "folder": tmp_path, "under_file": tmp_path / "afile" / "b.json"}[kind]
    with pytest.raises(SystemExit):
        load_script("bench_conv").main(["--device", "cpu", "--shapes", "1,2,8,8", "--kernels", "3", "--impls", "torch",
                                        "--modes", "fwd", "--warmup", "0", "--repeats", "1", "--out", str(out)])  # fmt: skip
    assert "--out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_gpu_index_beyond_the_visible_gpus_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    """--device cuda:1 on a one-GPU machine passed the checks and failed with "invalid device ordinal"."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit):
        load_script("bench_conv").main(["--device", "cuda:1", "--shapes", "1,2,8,8", "--kernels", "3", "--impls", "torch",
                                        "--warmup", "0", "--repeats", "1", "--out", str(tmp_path / "b.json")])  # fmt: skip
    assert "only 1 GPU(s) visible" in capsys.readouterr().err and not (tmp_path / "b.json").exists()


# ---- mutation audit round 4: what measure() times and how make_step / the ratios are defined ----


def test_measure_times_round_robin_after_untimed_warmup_and_reports_the_median(monkeypatch):
    import torch

    mod = load_script("bench_conv")
    calls, timed = [], []
    vals = {"a": iter([1.0, 2.0, 30.0]), "b": iter([5.0, 4.0, 3.0])}

    def fake_time_once(fn, device):
        fn()
        timed.append(calls[-1])
        return next(vals[calls[-1]])

    monkeypatch.setattr(mod, "time_once", fake_time_once)
    steps = {n: (lambda n=n: calls.append(n)) for n in ("a", "b")}
    out = mod.measure(steps, torch.device("cpu"), warmup=2, repeats=3)
    assert calls[:4] == ["a", "a", "b", "b"] and len(calls) == 10  # warm-up calls, not timed
    assert timed == ["a", "b"] * 3  # interleaved: one call of each implementation per repeat
    assert out == {"a": (2.0, None), "b": (4.0, None)}  # medians, not means (11.0, 4.0)


def test_fwd_bwd_step_computes_input_and_weight_gradients():
    import torch

    mod = load_script("bench_conv")
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    mod.make_step(conv, x, "fwd", "fp32")()
    assert conv.weight.grad is None and x.grad is None
    mod.make_step(conv, x, "fwd_bwd", "fp32")()
    assert conv.weight.grad is not None and x.grad is not None and float(conv.weight.grad.abs().sum()) > 0


def test_ratio_vs_torch_is_time_over_the_torch_time(tmp_path, monkeypatch):
    mod = load_script("bench_conv")
    ms = {"torch": 2.0, "gmr_dense": 5.0}
    monkeypatch.setattr(mod, "measure", lambda steps, device, warmup, repeats: {n: (ms[n], None) for n in steps})
    res = mod.main(["--device", "cpu", "--shapes", "1,4,12,12", "--kernels", "3", "--impls", "torch,gmr_dense",
                    "--modes", "fwd", "--warmup", "0", "--repeats", "1"])  # fmt: skip
    ratios = {r["impl"]: r["ratio_vs_torch"] for r in res["rows"]}
    assert ratios == {"torch": 1.0, "gmr_dense": 2.5}  # 2.5x slower than the dense conv


def test_cuda_peak_memory_is_each_implementation_as_if_alone(monkeypatch):
    """On a (fake) CUDA allocator: each implementation's peak is what its call allocates above the memory resident
    before it, plus its own parameters and input, after every implementation's gradients were freed; the other
    implementations' resident weights (and an earlier, larger peak) are not counted."""
    import torch

    mod = load_script("bench_conv")
    mem = {"alloc": 0, "peak": 0}
    for name in ("synchronize", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: mem["alloc"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: mem["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a, **k: mem.update(peak=mem["alloc"]))
    monkeypatch.setattr(mod, "time_once", lambda fn, device: 1.0)
    x = torch.zeros(4, dtype=torch.float32)  # 16 bytes
    convs = {"small": torch.nn.Linear(1, 1, bias=False), "large": torch.nn.Linear(8, 8, bias=False)}  # 4, 256 bytes
    grads_freed = []

    def step(name, extra):
        def fn():
            grads_freed.append(all(m.weight.grad is None for m in convs.values()))
            mem["peak"] = max(mem["peak"], mem["alloc"] + extra)  # a transient allocation of `extra` bytes
        fn.module, fn.input = convs[name], x
        return fn

    for m in convs.values():
        m.weight.grad = torch.ones_like(m.weight)
    mem["alloc"] = 10**6  # resident: all weights, the input, other tensors of the process
    mem["peak"] = 5 * 10**6  # an earlier peak of another implementation
    out = mod.measure({"small": step("small", 2**20), "large": step("large", 2 * 2**20)}, torch.device("cuda"), 0, 1)
    assert out["small"][1] == pytest.approx((2**20 + 4 + 16) / 2**20)
    assert out["large"][1] == pytest.approx((2 * 2**20 + 256 + 16) / 2**20)
    assert grads_freed[-2:] == [True, True]
