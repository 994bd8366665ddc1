"""TorchScript export of the G-CNN baselines: ``torch.jit.trace`` with the trace checker on, ``torch.jit.script``,
save/load round trips; outputs equal to eager."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from monai_gmr.nets import get_network
from monai_gmr.nets.gcnn import GCNNResNet, GCNNUNet
from monai_gmr.nn import gconv
from tests.conftest import rel_err, requires_cuda

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

#: (factory, example input shape, a second input shape: another batch and spatial size)
NETS = {
    "gcnn_unet_tiny": (lambda: get_network("gcnn_unet_tiny", in_channels=2, out_channels=3), (2, 2, 16, 16),
                       (1, 2, 24, 32)),
    "gcnn_unet_p4_nearest_max": (lambda: GCNNUNet(2, 1, 2, features=(2, 4, 4), group="p4", upsample="nearest",
                                                  pooling="max", group_pool="mean", norm="batch", dropout=0.2),
                                 (2, 1, 8, 8), (1, 1, 12, 16)),
    "gcnn_resnet18_tiny": (lambda: get_network("gcnn_resnet18_tiny", in_channels=3, num_classes=2), (2, 3, 32, 32),
                           (1, 3, 48, 32)),
    "gcnn_resnet_p4_features": (lambda: GCNNResNet((1, 1, 1, 1), (2, 2, 4, 4), in_channels=1, group="p4",
                                                   conv1_t_size=3, conv1_t_stride=2, no_max_pool=True,
                                                   feed_forward=False),
                                (2, 1, 32, 32), (1, 1, 32, 48)),
}  # fmt: skip


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation / tracer warnings (the shape checks in forward)
        return fn(*args, **kwargs)


def _clear_gconv_caches() -> None:
    """Empty every ``functools.lru_cache`` of monai_gmr.nn.gconv: a trace in a fresh process (e.g. ``ckpt_export``)."""
    for obj in vars(gconv).values():
        if callable(getattr(obj, "cache_clear", None)):
            obj.cache_clear()


def _build(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    factory, shape, shape2 = NETS[name]
    net = factory().eval()
    return net, torch.randn(*shape), torch.randn(*shape2)


@pytest.mark.parametrize("name", list(NETS))
def test_trace_with_checker_matches_eager(name, tmp_path):
    """A fresh G-CNN net traced in a fresh process (cold index caches) with the default ``check_trace=True``: the
    filter-bank gather indices were built by torch ops on the first call and taken from an lru_cache on the
    checker's rerun, so the trace failed with "Graphs differed across invocations"."""
    _clear_gconv_caches()
    net, x, x2 = _build(name)
    with torch.no_grad():
        traced = _quiet(torch.jit.trace, net, x)  # check_trace=True (default)
        assert torch.allclose(traced(x), net(x), atol=1e-5)
        assert torch.allclose(traced(x2), net(x2), atol=1e-5)  # not specialised to the example's sizes
        _quiet(torch.jit.save, traced, str(tmp_path / "traced.ts"))
        loaded = _quiet(torch.jit.load, str(tmp_path / "traced.ts"))
        assert torch.allclose(loaded(x2), net(x2), atol=1e-5)


@pytest.mark.parametrize("name", list(NETS))
def test_script_matches_eager(name, tmp_path):
    """``torch.jit.script`` compiles the nets (it failed on gconv's module-level dict / lru_cache helpers, a
    function-valued local in GroupSpatialPool, ``**kwargs`` in GroupUpsample, ``tuple(x.shape)``)."""
    net, x, x2 = _build(name)
    scripted = _quiet(torch.jit.script, net)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)
        assert torch.allclose(scripted(x2), net(x2), atol=1e-5)
        _quiet(torch.jit.save, scripted, str(tmp_path / "scripted.ts"))
        loaded = _quiet(torch.jit.load, str(tmp_path / "scripted.ts"))
        assert torch.allclose(loaded(x2), net(x2), atol=1e-5)


def test_scripted_net_keeps_the_input_checks_and_trains():
    """The scripted U-Net still rejects bad inputs with the eager message, and a train-mode step through it gives the
    eager gradients (equal parameters, same batch)."""
    net = GCNNUNet(2, 1, 2, features=(2, 4), norm="batch")
    scripted = _quiet(torch.jit.script, net)
    with pytest.raises(Exception, match=r"divisible by 2\*\*levels=2"):
        scripted(torch.randn(1, 1, 5, 4))
    with pytest.raises(Exception, match="in_channels=1"):
        scripted(torch.randn(1, 2, 4, 4))
    x = torch.randn(2, 1, 8, 8)
    scripted(x).square().mean().backward()
    net(x).square().mean().backward()
    grads = dict(scripted.named_parameters())
    for n, p in net.named_parameters():
        assert rel_err(grads[n].grad, p.grad) <= 1e-5, n


def test_traced_net_follows_weight_changes_and_state_dict_unchanged():
    """The trace reads the weights as parameters (not constants), and the gather-index buffers are not persistent:
    checkpoints hold the same keys as before and load with ``strict=True``."""
    net, x, _ = _build("gcnn_unet_tiny")
    keys = set(net.state_dict())
    assert not any("bank_index" in k for k in keys)
    assert all(hasattr(m, "bank_index") for m in net.modules() if isinstance(m, gconv._GroupConvBase))
    with torch.no_grad():
        traced = _quiet(torch.jit.trace, net, x)
        before = traced(x)
        delta = torch.randn_like(net.encoders[0][0].conv.weight)
        for m in (net, traced):
            getattr(getattr(m.encoders, "0"), "0").conv.weight.add_(delta)
        assert rel_err(traced(x), before) > 1e-3 and torch.allclose(traced(x), net(x), atol=1e-5)
    fresh, _, _ = _build("gcnn_unet_tiny")
    fresh.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))


@pytest.mark.parametrize("use_trace", [False, True])
def test_monai_ckpt_export(tmp_path, use_trace):
    """MONAI's bundle ``ckpt_export`` on a G-CNN checkpoint built from its registry name: scripted (the default) and
    traced (``use_trace``, which runs the trace checker)."""
    from monai.bundle import ckpt_export

    _clear_gconv_caches()
    net_def = {"_target_": "monai_gmr.nets.get_network", "name": "gcnn_unet_tiny", "in_channels": 1, "out_channels": 2}
    net = get_network("gcnn_unet_tiny", in_channels=1, out_channels=2).eval()
    (tmp_path / "inference.json").write_text(json.dumps({"network_def": net_def}))
    (tmp_path / "metadata.json").write_text(json.dumps({"version": "0.1.0", "name": "gcnn_test"}))
    torch.save(net.state_dict(), tmp_path / "model.pt")
    kwargs = {"use_trace": True, "input_shape": [1, 1, 16, 16]} if use_trace else {}
    _quiet(ckpt_export, net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
           config_file=str(tmp_path / "inference.json"), meta_file=str(tmp_path / "metadata.json"), **kwargs)
    loaded = _quiet(torch.jit.load, str(tmp_path / "model.ts"))
    x = torch.randn(2, 1, 24, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)


@requires_cuda
def test_trace_on_cpu_then_move_to_cuda():
    """A trace made on the CPU and moved with ``.to("cuda")`` runs there: the gather indices are buffers of the
    traced module (they were constants pinned to the tracing device). Not run on the CPU-only CI."""
    net, x, _ = _build("gcnn_unet_tiny")
    with torch.no_grad():
        traced = _quiet(torch.jit.trace, net, x).to("cuda")
        scripted = _quiet(torch.jit.script, net).to("cuda")
        ref = net.to("cuda")(x.cuda())
        assert rel_err(traced(x.cuda()), ref) <= 1e-4 and rel_err(scripted(x.cuda()), ref) <= 1e-4
