"""Shared pytest fixtures: seeding, thread limits, locations of ../shared data, skip helpers."""

from __future__ import annotations

import importlib.util
import os
import random
from types import ModuleType
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the project root; tests using it skip cleanly when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    return SHARED


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the calling test if it does not exist."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent")
    return p


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny nets are
    overhead-bound, so one thread is faster and avoids OpenMP spin contention on shared CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: set MONAI_GMR_REQUIRE_GPU=1 on a GPU machine (scripts/device_checks.py does): the CUDA tests then fail instead of
#: being skipped when CUDA is not usable, so "all skipped" cannot pass for a GPU run
REQUIRE_GPU = os.environ.get("MONAI_GMR_REQUIRE_GPU") == "1"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available() and not REQUIRE_GPU, reason="needs a CUDA device")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / max(||b||, tiny)."""
    a = a.detach().double()
    b = b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as a fresh module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
