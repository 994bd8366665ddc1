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
