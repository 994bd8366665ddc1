"""``torch.jit.script`` of GMRConv: outputs equal to eager, shared parameters and gradients, state dicts, save/load."""

from __future__ import annotations

import warnings

import pytest
import torch

from monai_gmr import GMRConv, GMRConv2d, GMRConv3d

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny, overhead-bound tensors

#: non-persistent buffers that TorchScript lists in a ScriptModule's state_dict anyway (pytorch/pytorch#69250)
GEOMETRY = {"distances", "mask", "centers"}

OPTIONS = [
    {},
    {"sampling": "area"},
    {"sigma": "fixed", "bias": False},
    {"smoothing": "none", "padding_mode": "reflect"},
    {"sampling": "area", "padding_mode": "circular", "stride": 2, "groups": 3, "circular": False, "dilation": 2},
]


def _script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation warnings
        return torch.jit.script(module)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kwargs", OPTIONS)
def test_script_matches_eager(d, kwargs):
    """``torch.jit.script(GMRConv(...))`` failed ("cannot statically infer the expected size of a list" in the input
    check; the forward dispatched among implementations in Python)."""
    m = GMRConv(d, 3, 6, 5, impl="dense", **kwargs).double()
    scripted = _script(m)
    x = torch.randn(2, 3, *(9,) * d, dtype=torch.float64)
    assert torch.allclose(scripted(x), m(x), rtol=0, atol=1e-12)
    m.eval()
    with torch.no_grad():  # the eager eval-mode kernel cache is not involved in the scripted module
        assert torch.allclose(scripted(x), m(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [GMRConv2d, GMRConv3d])
def test_script_kernel_size_one_and_rings_impl(cls):
    d = 2 if cls is GMRConv2d else 3
    for k, impl in ((1, "auto"), (3, "rings")):
        m = cls(4, 2, k, impl=impl).double()
        x = torch.randn(1, 4, *(6,) * d, dtype=torch.float64)
        assert torch.allclose(_script(m)(x), m(x), rtol=0, atol=1e-12)


def test_script_shares_parameters_and_gradients():
    """The scripted layer holds the eager layer's parameters: its backward fills their ``.grad``, and a weight
    change through the eager layer changes the scripted output (no kernel is baked in)."""
    m = GMRConv(2, 3, 4, 5, sampling="area").double()
    scripted = _script(m)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    scripted(x).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    assert set(grads) == {"weight", "log_sigma", "bias"} and all(g.abs().sum() > 0 for g in grads.values())
    for p in m.parameters():
        p.grad = None
    m(x).square().sum().backward()
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, grads[n], rtol=1e-10, atol=1e-12), n
    with torch.no_grad():
        m.weight.mul_(2.0)
        m.log_sigma.add_(0.1)
    assert torch.allclose(scripted(x), m(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"sigma": "fixed"}])
def test_script_state_dict_and_save_load(kwargs, tmp_path):
    m = GMRConv(3, 2, 3, 5, sampling="area", **kwargs).double()
    scripted = _script(m)
    keys = set(m.state_dict())
    # TorchScript ignores persistent=False: the scripted state dict adds the fixed geometry (and a fixed sigma), the
    # parameters keep their names, so an eager state dict loads into the scripted module and back
    extra = GEOMETRY | ({"log_sigma"} if kwargs else set())
    assert set(scripted.state_dict()) == keys | extra
    assert {n for n, _ in scripted.named_parameters()} == {n for n, _ in m.named_parameters()}
    fresh = GMRConv(3, 2, 3, 5, sampling="area", **kwargs).double()
    fresh.load_state_dict({k: v for k, v in scripted.state_dict().items() if k in keys})
    x = torch.randn(1, 2, 6, 6, 6, dtype=torch.float64)
    assert torch.allclose(fresh(x), m(x), rtol=0, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(scripted, str(tmp_path / "gmr.ts"))
        loaded = torch.jit.load(str(tmp_path / "gmr.ts"))
    assert torch.allclose(loaded(x), m(x), rtol=0, atol=1e-12)


def test_script_leaves_the_eager_module_unchanged():
    """The layer scripts as itself (no stand-in module): the eager net keeps its GMRConv, cache and dispatch."""
    net = torch.nn.Sequential(GMRConv(2, 2, 2, 3), torch.nn.ReLU())
    layer = net[0]
    _script(net)
    assert net[0] is layer and type(net[0]) is GMRConv


def test_script_checks_the_input_shape():
    scripted = _script(GMRConv(2, 3, 4, 5))
    with pytest.raises(Exception, match=r"\(B, C, H, W\) or \(C, H, W\) for spatial_dims=2"):
        scripted(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(Exception, match="in_channels=3"):
        scripted(torch.randn(1, 2, 8, 8))
    x = torch.randn(3, 8, 8)  # unbatched (C, H, W), as in eager
    assert torch.allclose(scripted(x), scripted(x[None])[0], atol=1e-6) and scripted(x).shape == (4, 8, 8)


def test_script_under_autocast_synthesises_the_kernel_like_eager():
    """Under autocast the eager layer synthesises its kernel in the parameters' dtype; the scripted layer used a matmul
    that autocast ran in bf16 (TorchScript ignores ``torch.autocast(enabled=False)``), so its bf16 output differed from
    the eager layer's by about one bf16 rounding of the kernel."""
    torch.manual_seed(0)
    m = GMRConv(2, 8, 8, 9, impl="dense").eval()
    scripted = _script(m)
    x = torch.randn(2, 8, 24, 24)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        eager, script = m(x), scripted(x)
    assert script.dtype == eager.dtype == torch.bfloat16
    scale = eager.float().abs().max()
    assert (script.float() - eager.float()).abs().max() <= 1e-3 * scale
