"""scripts/bench_nets.py: the argument checks and the documented --quick sizes."""

from __future__ import annotations

import pytest

from tests.conftest import load_script


@pytest.mark.parametrize("extra, named", [(["--repeats", "0"], "--repeats"), (["--iters", "0"], "--iters"),
                                          (["--impls", "foo"], "--impls"), (["--threads", "-1"], "--threads"),
                                          (["--budget-s", "-1"], "--budget-s"), (["--device", "gpu"], "--device")])  # fmt: skip
def test_bad_values_are_refused_before_measuring(tmp_path, capsys, extra, named):
    """--repeats 0 / --iters 0 crashed after the models were built (empty median, division by zero); a negative
    --budget-s skipped every suite and then failed with KeyError: 'seconds'."""
    with pytest.raises(SystemExit):
        load_script("bench_nets").main(["--device", "cpu", "--quick", "--out", str(tmp_path / "o")] + extra)
    assert named in capsys.readouterr().err and not (tmp_path / "o").exists()


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
