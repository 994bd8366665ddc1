"""Helpers shared by the bundle tests: run ``python -m monai.bundle run`` in a subprocess, parse configs, and read
the error of a failing in-process workflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

__all__ = ["bundle_env", "run_bundle", "config_parser", "workflow_error", "no_outputs"]


def bundle_env() -> dict[str, str]:
    """The environment of a bundle subprocess: 2 threads, the repository importable."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_bundle(
    configs: list[str], *args: str, cwd: Path, timeout: int = 240, check: bool = True
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run --config_file <configs> <args>`` in ``cwd``; raises with the log tail on failure
    when ``check``."""
    cfg = configs[0] if len(configs) == 1 else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", cfg, *args]
    proc = subprocess.run(cmd, cwd=cwd, env=bundle_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bundle run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def config_parser(files, *, metadata: str, **override):
    """A MONAI ``ConfigParser`` over ``files`` with the bundle's metadata and ``override`` applied."""
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(files)
    p.read_meta(metadata)
    p.update(override)
    return p


def workflow_error(configs, **override) -> str:
    """Initialise and run a bundle workflow in-process; it must fail: the text of the whole exception chain."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=configs, workflow_type=None, logging_file=False, **override)
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    msgs, e = [], info.value
    while e is not None:
        msgs.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return "\n".join(msgs)


def no_outputs(out: Path) -> bool:
    """True when ``out`` is missing or holds no file."""
    return not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
