"""The top-level package: what a plain ``import monai_gmr`` gives a user."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_plain_import_reaches_every_subpackage_as_the_docs_write_it():
    """docs/networks.md writes ``monai_gmr.evaluation.equivariance_error(net.eval(), x, ...)`` and docs/robustness.md
    ``monai_gmr.data.transform_slide(...)``; after ``import monai_gmr`` alone these raised AttributeError (the
    package imported only nn, nets, conversion and functional). Run in a fresh interpreter: other tests import the
    subpackages, which would hide the failure."""
    code = (
        "import sys, monai_gmr\n"
        "assert 'monai_gmr.evaluation' not in sys.modules  # still loaded on first use only\n"
        "assert callable(monai_gmr.evaluation.equivariance_error)\n"
        "assert callable(monai_gmr.data.transform_slide)\n"
        "assert callable(monai_gmr.inferers.RotationTTAInferer)\n"
        "assert callable(monai_gmr.utils.as_bool)\n"
        "assert callable(monai_gmr.workflows.find_bundle_root)\n"
        "assert {'evaluation', 'data', 'inferers', 'utils', 'workflows', 'nets'} <= set(dir(monai_gmr))\n"
        "try:\n"
        "    monai_gmr.no_such_thing\n"
        "except AttributeError as e:\n"
        "    assert 'no_such_thing' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
