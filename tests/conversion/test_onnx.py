"""ONNX export of GMR networks: ``torch.onnx.export`` (TorchScript-based and dynamo exporters) of a GMR net and of its
``export_dense`` copy, run by ONNX Runtime, and MONAI's ``python -m monai.bundle onnx_export`` on the nuclei bundle.
Skipped when ``onnx`` / ``onnxruntime`` / ``onnxscript`` are not installed (the ``onnx`` extra; ``dev`` includes it)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from monai_gmr import export_dense
from monai_gmr.functional import group_elements
from monai_gmr.nets import GMRUNet, get_network
from tests.conftest import ROOT

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

BUNDLE = ROOT / "bundles" / "gmr_nuclei_segmentation"


def _run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _export(model: torch.nn.Module, x: torch.Tensor, path, dynamo: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation / tracer warnings
        torch.onnx.export(model, (x,), str(path), dynamo=dynamo, input_names=["x"], output_names=["y"])


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript_exporter", "dynamo_exporter"])
@pytest.mark.parametrize("dense", [False, True], ids=["gmr", "export_dense"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_onnx_runtime_matches_and_stays_equivariant(tmp_path, spatial_dims, dense, dynamo):
    """The exported graph computes the eager net's output, and the exact symmetries survive the export (every D4
    element in 2D, every 6th cube symmetry in 3D)."""
    torch.manual_seed(0)
    if spatial_dims == 2:
        net, shape = get_network("gmr_unet_tiny", in_channels=3, out_channels=2), (1, 3, 32, 32)
    else:
        net = get_network("gmr_unet_tiny", spatial_dims=3, in_channels=1, out_channels=2, features=(2, 4, 4, 8),
                          kernel_sizes=3)  # fmt: skip
        shape = (1, 1, 16, 16, 16)
    net.eval()
    model = export_dense(net).eval() if dense else net
    x = torch.randn(shape)
    path = tmp_path / "model.onnx"
    _export(model, x, path, dynamo)
    with torch.no_grad():
        want = net(x)
    got = _run_onnx(path, x)
    assert got.shape == want.shape
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-4 * scale
    elements = group_elements(spatial_dims)
    for g in elements if spatial_dims == 2 else elements[::6]:
        assert (_run_onnx(path, g(x)) - g(got)).abs().max() <= 1e-4 * scale


def test_monai_bundle_onnx_export_of_the_nuclei_bundle(tmp_path):
    """``python -m monai.bundle onnx_export network_def`` with the nuclei bundle's inference config and a checkpoint
    of its default network writes an ONNX file whose output matches the network with that checkpoint."""
    torch.manual_seed(0)
    net = GMRUNet(2, 3, 2).eval()
    ckpt, out = tmp_path / "model.pt", tmp_path / "model.onnx"
    torch.save(net.state_dict(), ckpt)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "monai.bundle", "onnx_export", "network_def", "--filepath", str(out),
           "--ckpt_file", str(ckpt), "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
           "--config_file", str(BUNDLE / "configs" / "inference.json"), "--input_shape", "[1, 3, 64, 64]"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        want = net(x)
    got = _run_onnx(out, x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert np.isfinite(got.numpy()).all()


TINY = {
    "gcnn_unet_tiny": ({"in_channels": 3, "out_channels": 2}, (1, 3, 32, 32)),
    "gcnn_resnet18_tiny": ({"in_channels": 3, "num_classes": 2}, (2, 3, 32, 32)),
    "gmr_resnet18_tiny": ({"in_channels": 3, "num_classes": 2}, (2, 3, 32, 32)),
    "symm_unet_tiny": ({"in_channels": 3, "out_channels": 2}, (1, 3, 32, 32)),
    "gmr_unet_tiny": ({"in_channels": 3, "out_channels": 2, "sampling": "area"}, (1, 3, 32, 32)),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_registry_networks_export_to_onnx(tmp_path, name):
    """The G-CNN baselines, the ResNet, the naive radial net and area sampling export as they are (no export_dense)."""
    torch.manual_seed(0)
    kwargs, shape = TINY[name]
    net = get_network(name, **kwargs).eval()
    x = torch.randn(shape)
    path = tmp_path / "model.onnx"
    _export(net, x, path, dynamo=True)
    with torch.no_grad():
        want = net(x)
    assert (_run_onnx(path, x) - want).abs().max() <= 1e-4 * want.abs().max()
