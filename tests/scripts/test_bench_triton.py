"""scripts/bench_triton.py: argument handling only (its measurements need a CUDA device)."""

from __future__ import annotations

import pytest

from tests.conftest import load_script


@pytest.mark.parametrize("spec", ["2,bf16", "2,bf16,9,32,128,64", "2,int8,9,1,8,16,16", "4,bf16,9,1,8,16,16,16,16",
                                  "2,bf16,x,1,8,16,16"])  # fmt: skip
def test_malformed_inspect_is_refused_naming_the_option(tmp_path, capsys, spec):
    """A short or malformed --inspect spec failed with IndexError / KeyError / ValueError tracebacks."""
    with pytest.raises(SystemExit):
        load_script("bench_triton").main(["--out", str(tmp_path / "o"), "--inspect", spec])
    assert "--inspect" in capsys.readouterr().err and not (tmp_path / "o").exists()
