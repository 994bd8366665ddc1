"""``torch.jit.script`` of whole GMR networks: outputs equal to eager, save/load round trip."""

from __future__ import annotations

import warnings

import pytest
import torch

from monai_gmr import GMRConv
from monai_gmr.nets import get_network

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CASES = {
    "gmr_unet_tiny_2d": ("gmr_unet_tiny", {"in_channels": 2, "out_channels": 3}, (2, 2, 16, 16)),
    "gmr_unet_tiny_3d_area": (
        "gmr_unet_tiny",
        {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "sampling": "area"},
        (1, 1, 16, 16, 16),
    ),
    "gmr_resnet18_tiny": ("gmr_resnet18_tiny", {"in_channels": 3, "num_classes": 2}, (2, 3, 32, 32)),
    "symm_unet_tiny": ("symm_unet_tiny", {"in_channels": 1, "out_channels": 2}, (1, 1, 16, 16)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_script_gmr_net_matches_eager(case, tmp_path):
    """Scripting a GMR net failed at its first GMRConv (docs said to trace instead)."""
    name, kwargs, shape = CASES[case]
    net = get_network(name, **kwargs).double().eval()
    assert any(isinstance(m, GMRConv) for m in net.modules())
    x = torch.randn(*shape, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation warnings
        scripted = torch.jit.script(net)
        with torch.no_grad():
            ref = net(x)
            assert torch.allclose(scripted(x), ref, rtol=0, atol=1e-10)
            torch.jit.save(scripted, str(tmp_path / "net.ts"))
            loaded = torch.jit.load(str(tmp_path / "net.ts"))
            assert torch.allclose(loaded(x), ref, rtol=0, atol=1e-10)


def test_trace_of_padding_unet_records_the_padding_branch():
    """What the nuclei bundle README says of ``ckpt_export --use_trace``: a ``GMRUNet(pad_to_multiple=True)`` traced at
    a size that needs padding computes the pad amounts from the input's shape, so it matches eager at other sizes
    (which need padding or not); traced at a divisible size it recorded "no padding" and fails on one that needs it."""
    from monai_gmr.nets import GMRUNet

    torch.manual_seed(0)
    net = GMRUNet(2, 1, 2, features=(4, 8, 8, 16), kernel_sizes=(5, 5, 3, 3), pad_to_multiple=True).double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of the shape checks
        traced = torch.jit.trace(net, torch.rand(1, 1, 60, 60, dtype=torch.float64), check_trace=False)
        traced_divisible = torch.jit.trace(net, torch.rand(1, 1, 64, 64, dtype=torch.float64), check_trace=False)
    with torch.no_grad():
        for size in (60, 64, 68, 52):
            x = torch.randn(1, 1, size, size + 8, dtype=torch.float64)
            assert torch.allclose(traced(x), net(x), rtol=0, atol=1e-10), size
        with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
            traced_divisible(torch.randn(1, 1, 60, 60, dtype=torch.float64))
