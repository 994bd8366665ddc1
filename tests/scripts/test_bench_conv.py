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
     (["--device", "gpu"], "--device")],
)  # fmt: skip
def test_bad_values_are_refused_before_measuring(tmp_path, capsys, extra, named):
    """An unknown --modes/--dtypes was measured as fwd_bwd/fp32 under the unknown label; others crashed mid-run."""
    out = tmp_path / "b.json"
    argv = ["--device", "cpu", "--shapes", "1,4,12,12", "--kernels", "3", "--impls", "torch", "--warmup", "0",
            "--repeats", "1", "--out", str(out)]  # fmt: skip
    with pytest.raises(SystemExit):
        load_script("bench_conv").main(argv + extra)
    assert named in capsys.readouterr().err and not out.exists()
