"""The built wheel carries what a user of the package needs: the PEP 561 marker and the licence."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_the_type_marker_and_the_licence(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:  # pyproject's build requirement (SPDX licence field)
        pytest.skip(f"setuptools {setuptools.__version__} < 77 in this environment: the wheel is built in isolation only")
    # no build isolation: nothing is downloaded, the environment's setuptools builds the wheel
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)]
    build_dir_existed = (ROOT / "build").exists()
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=300, cwd=tmp_path)
    finally:  # setuptools builds in the source tree: leave no build/ folder that was not there
        if not build_dir_existed:
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    (wheel,) = tmp_path.glob("monai_gmr-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "monai_gmr/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in meta
    assert "monai_gmr/nn/conv.py" in names and not any(n.startswith(("tests/", "scripts/", "bundles/")) for n in names)
