"""export_dense on whole networks, TorchScript round trips, and MONAI's ``ckpt_export`` on GMR networks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn
from monai.networks.nets import BasicUNet, SegResNet, UNet

from monai_gmr import export_dense
from monai_gmr.conversion.convert import AvgPool3dAnySize, convert_to_gmr
from monai_gmr.nets import get_network, gmr_resnet50
from monai_gmr.nn import GMRConv
from tests.conftest import ROOT, rel_err


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


NETS = {
    "gmr_unet_2d": (lambda: get_network("gmr_unet_tiny", in_channels=2, out_channels=3), (2, 2, 32, 32)),
    "gmr_unet_3d": (lambda: get_network("gmr_unet_tiny", spatial_dims=3, features=(2, 4, 4, 8), kernel_sizes=3), (1, 1, 16, 16, 16)),
    "gmr_resnet18": (lambda: get_network("gmr_resnet18_tiny", in_channels=2, num_classes=3), (2, 2, 32, 32)),
    "gmr_resnet50": (lambda: gmr_resnet50(2, 2, 3, block_inplanes=(2, 4, 4, 8), kernel_sizes=3), (2, 2, 32, 32)),
    "converted_unet": (lambda: convert_to_gmr(UNet(2, 2, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)), (2, 2, 16, 16)),
    "converted_basicunet": (lambda: convert_to_gmr(BasicUNet(2, 2, 3, features=(4, 4, 8, 8, 16, 4))), (2, 2, 32, 32)),
    "converted_segresnet": (lambda: convert_to_gmr(SegResNet(2, 8, 2, 3, blocks_down=(1, 1, 1), blocks_up=(1, 1))), (2, 2, 16, 16)),
}


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation / tracer warnings
        return fn(*args)


SLOW_EXPORT = {"gmr_resnet50", "converted_basicunet"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_EXPORT else n for n in NETS])
def test_export_dense_matches_and_torchscript_round_trip(name, tmp_path):
    factory, shape = NETS[name]
    net = factory().eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = net(x)
        dense = export_dense(net).eval()
        assert not any(isinstance(m, GMRConv) for m in dense.modules())
        assert any(isinstance(m, GMRConv) for m in net.modules())  # not in place
        assert rel_err(dense(x), ref) <= 1e-5
        traced = _quiet(torch.jit.trace, dense, x)
        _quiet(torch.jit.save, traced, str(tmp_path / "traced.ts"))
        loaded = _quiet(torch.jit.load, str(tmp_path / "traced.ts"))
        assert rel_err(loaded(x), ref) <= 1e-5
        scripted = _quiet(torch.jit.script, dense)
        _quiet(torch.jit.save, scripted, str(tmp_path / "scripted.ts"))
        loaded = _quiet(torch.jit.load, str(tmp_path / "scripted.ts"))
        assert rel_err(loaded(x), ref) <= 1e-5


def test_export_after_training_and_gmr_trace(tmp_path):
    """Exported weights follow training (no stale kernel cache); the GMR net itself traces too."""
    net = get_network("gmr_unet_tiny")
    x = torch.randn(2, 1, 16, 16)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        ref = net(x)
        assert rel_err(export_dense(net)(x), ref) <= 1e-5
        traced = _quiet(torch.jit.trace, net, x)
        _quiet(torch.jit.save, traced, str(tmp_path / "gmr.ts"))
        loaded = _quiet(torch.jit.load, str(tmp_path / "gmr.ts"))
        assert rel_err(loaded(x), ref) <= 1e-5
        x2 = torch.randn(1, 1, 24, 24)
        assert rel_err(loaded(x2), net(x2)) <= 1e-5  # the trace is not specialised to the example size


@pytest.mark.parametrize("d", [2, 3])
def test_trace_of_gmr_net_records_kernel_synthesis_not_the_cache(d):
    """Traced in eval mode under no_grad after an earlier call (kernels cached): the traced module computes its
    kernels from its own parameters (it held the cached kernels as constants and ignored later weight changes)."""
    torch.manual_seed(0)
    net = get_network("gmr_unet_tiny", spatial_dims=d, features=(2, 4), kernel_sizes=3, impl="dense").eval()
    x = torch.randn(1, 1, *([8] * d))
    with torch.no_grad():
        net(x)  # fills the eval-mode kernel caches
        traced = _quiet(torch.jit.trace, net, x)  # (a fresh net failed the trace check: see the ckpt_export test)
        before = traced(x)
        delta = torch.randn_like(net.encoders[0][0].conv.weight)  # not a rescaling: instance norm would cancel that
        for m in (net, traced):
            getattr(getattr(m.encoders, "0"), "0").conv.weight.add_(delta)
        assert rel_err(traced(x), before) > 1e-2 and rel_err(traced(x), net(x)) <= 1e-5


def _bundle(tmp_path, network_def: dict, state: dict) -> tuple[str, str]:
    (tmp_path / "configs").mkdir()
    (tmp_path / "models").mkdir()
    config = tmp_path / "configs" / "inference.json"
    config.write_text(json.dumps({"network_def": network_def}))
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0", "name": "gmr_test"}))
    ckpt = tmp_path / "models" / "model.pt"
    torch.save(state, ckpt)
    return str(config), str(ckpt)


def test_ckpt_export_cli_on_exported_net(tmp_path):
    """``python -m monai.bundle ckpt_export`` (scripting) on a dense-exported GMR U-Net built by dotted _target_."""
    net_def = {"_target_": "monai_gmr.nets.get_network", "name": "gmr_unet_tiny", "dense": True, "in_channels": 1, "out_channels": 2}
    net = get_network("gmr_unet_tiny", in_channels=1, out_channels=2).eval()
    config, ckpt = _bundle(tmp_path, net_def, export_dense(net).state_dict())
    out = tmp_path / "models" / "model.ts"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(out),
           "--ckpt_file", ckpt, "--config_file", config, "--meta_file", str(tmp_path / "configs" / "metadata.json"),
           "--bundle_root", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    extra = {"inference.json": "", "metadata.json": ""}
    loaded = _quiet(torch.jit.load, str(out), None, extra)
    assert json.loads(extra["inference.json"])["network_def"]["name"] == "gmr_unet_tiny"
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert rel_err(loaded(x), net(x)) <= 1e-5


def test_ckpt_export_traced_gmr_net(tmp_path):
    """ckpt_export with ``use_trace`` on the GMR network itself (GMR checkpoint, no dense export), with the trace
    checker on: GMRConv's eval-mode kernel cache is bypassed while tracing (the checker's second invocation used the
    kernel cached by the first and failed with "Graphs differed across invocations")."""
    from monai.bundle import ckpt_export

    net_def = {"_target_": "monai_gmr.nets.gmr_resnet18", "spatial_dims": 2, "in_channels": 1, "num_classes": 3,
               "block_inplanes": [4, 8, 8, 16], "kernel_sizes": [5, 5, 3, 3]}  # fmt: skip
    net = get_network("gmr_resnet18_tiny", in_channels=1, num_classes=3).eval()
    config, ckpt = _bundle(tmp_path, net_def, net.state_dict())
    out = tmp_path / "model.ts"
    _quiet(lambda: ckpt_export(net_id="network_def", filepath=str(out), ckpt_file=ckpt, config_file=config,
                               meta_file=str(tmp_path / "configs" / "metadata.json"), use_trace=True,
                               input_shape=[1, 1, 32, 32]))  # fmt: skip
    loaded = _quiet(torch.jit.load, str(out))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert rel_err(loaded(x), net(x)) <= 1e-5


def test_converted_3d_net_scripts(tmp_path):
    """``torch.jit.script`` (``ckpt_export``'s default) of a converted 3D net: its strided convs become
    ``AvgPool3dAnySize`` pools, whose forward read ``divisor_override`` (an ``Optional[int]``) as a bool, and scripting
    stopped at "Could not cast value of type NoneType to bool" for the GMR net and its ``export_dense`` copy alike (2D
    nets use ``nn.AvgPool2d`` and scripted). Also the pool alone on inputs smaller than its window."""
    torch.manual_seed(0)
    net = convert_to_gmr(UNet(3, 1, 2, channels=(2, 4, 8), strides=(2, 2), num_res_units=1)).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        ref = net(x)
        for model in (net, export_dense(net).eval()):
            scripted = _quiet(torch.jit.script, model)
            _quiet(torch.jit.save, scripted, str(tmp_path / "scripted.ts"))
            assert rel_err(_quiet(torch.jit.load, str(tmp_path / "scripted.ts"))(x), ref) <= 1e-5
        small = torch.randn(1, 2, 1, 3, 3)  # depth 1 < window 2: the two-step path
        pools = (AvgPool3dAnySize(2, 2, ceil_mode=True), AvgPool3dAnySize((2, 2, 2), (2, 2, 2), (0, 0, 0), True, True, 3))
        for pool in pools:
            assert torch.equal(_quiet(torch.jit.script, pool)(small), pool(small))


def test_ckpt_export_scripted_gmr_net(tmp_path):
    """ckpt_export with its default (``torch.jit.script``) on the GMR network itself: scripting stopped at
    GMRConv.forward, so the docs said to trace."""
    from monai.bundle import ckpt_export

    net_def = {"_target_": "monai_gmr.nets.get_network", "name": "gmr_unet_tiny", "in_channels": 1, "out_channels": 2,
               "sampling": "area"}  # fmt: skip
    net = get_network("gmr_unet_tiny", in_channels=1, out_channels=2, sampling="area").eval()
    config, ckpt = _bundle(tmp_path, net_def, net.state_dict())
    out = tmp_path / "model.ts"
    _quiet(lambda: ckpt_export(net_id="network_def", filepath=str(out), ckpt_file=ckpt, config_file=config,
                               meta_file=str(tmp_path / "configs" / "metadata.json")))  # fmt: skip
    loaded = _quiet(torch.jit.load, str(out))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert rel_err(loaded(x), net(x)) <= 1e-5


def test_export_dense_on_plain_net_is_identity_function():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())
    x = torch.randn(1, 1, 8, 8)
    assert torch.equal(export_dense(net)(x), net(x))


def test_export_dense_keeps_shared_gmr_layers_shared():
    """A GMRConv registered twice under one parent (weight tying) was left in the exported net; one shared by two
    parents became two independent convs."""
    torch.manual_seed(0)
    conv = GMRConv(3, 2, 2, 3)
    net = nn.Module()
    net.a = nn.Sequential(conv, nn.ReLU(), conv)
    net.b = nn.Sequential(conv)
    dense = export_dense(net)
    assert not any(isinstance(m, GMRConv) for m in dense.modules())
    assert dense.a[0] is dense.a[2] is dense.b[0]
    x = torch.randn(1, 2, 5, 5, 5)
    with torch.no_grad():
        assert rel_err(dense.a(x), net.a(x)) <= 1e-5


def test_export_dense_keeps_frozen_layers_frozen():
    net = nn.Sequential(GMRConv(2, 1, 2, 3), GMRConv(2, 2, 2, 3))
    net[0].requires_grad_(False)
    dense = export_dense(net)
    assert [p.requires_grad for p in dense.parameters()] == [False, False, True, True]


@pytest.mark.parametrize(
    "d,kwargs",
    [
        (2, dict(stride=2, dilation=2, groups=2, padding_mode="reflect")),
        (2, dict(dilation=3, padding_mode="circular", bias=False)),
        (2, dict(padding=0, padding_mode="replicate", sampling="area")),
        (3, dict(stride=2, dilation=2, padding_mode="replicate", groups=2)),
    ],
)
def test_dense_conv_of_one_layer_keeps_its_geometry_and_mode(d, kwargs):
    """Every geometry option of a GMRConv (stride, dilation, groups, padding and its mode, bias) carries over to the
    dense conv: equal outputs on a non-square input whose border the padding mode changes, and the train/eval mode
    is kept."""
    torch.manual_seed(0)
    for training in (True, False):
        m = GMRConv(d, 4, 6, 5 if d == 2 else 3, **kwargs).double().train(training)
        with torch.no_grad():
            m.log_sigma.add_(0.1)
            if m.bias is not None:
                m.bias.normal_()
        dense = export_dense(m)
        assert isinstance(dense, nn.Conv2d if d == 2 else nn.Conv3d) and dense.training is training
        x = torch.randn(2, 4, *((13, 17) if d == 2 else (9, 10, 11)), dtype=torch.float64)
        with torch.no_grad():
            assert rel_err(dense(x), m(x)) <= 1e-12


def test_export_dense_keeps_tied_gmr_parameters_tied(caplog):
    """Distinct GMR layers sharing their weight and log_sigma Parameters (e.g. convert_to_gmr of convs sharing one
    weight) were exported as dense convs with independent copies of the kernel."""
    torch.manual_seed(0)
    net = nn.Module()
    net.a, net.b, net.c = GMRConv(2, 2, 2, 3), GMRConv(2, 2, 2, 3, stride=2), GMRConv(2, 2, 2, 3)
    net.b.weight, net.b.log_sigma, net.b.bias = net.a.weight, net.a.log_sigma, net.a.bias
    net.c.weight = net.a.weight  # own log_sigma: the kernels may differ, so the dense convs stay untied (warned)
    with torch.no_grad():
        net.c.log_sigma.add_(0.1)
    with caplog.at_level(logging.WARNING, logger="monai_gmr.conversion.export"):
        dense = export_dense(net)
    assert dense.a.weight is dense.b.weight and dense.a.bias is dense.b.bias
    assert dense.c.weight is not dense.a.weight and "exported untied" in caplog.text
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        for name in "abc":
            assert rel_err(getattr(dense, name)(x), getattr(net, name)(x)) <= 1e-5, name


def test_export_dense_leaves_layers_sharing_a_weight_but_not_their_kernel_untied(caplog):
    """Mutation audit round 6 (EX6): GMR layers sharing their ``weight`` with no learned ``log_sigma`` to compare
    (sigma="fixed") may still synthesise different kernels (another support, another fixed sigma): the kernels are
    compared before tying, so each dense conv keeps its own layer's kernel."""
    torch.manual_seed(0)
    net = nn.Module()
    net.a = GMRConv(2, 2, 2, 5, sigma="fixed")
    net.c = GMRConv(2, 2, 2, 5, sigma="fixed", circular=False)  # the corners kept: another kernel
    net.e = GMRConv(2, 2, 2, 5, sigma="fixed")
    net.c.weight = net.e.weight = net.a.weight
    with torch.no_grad():
        net.e.log_sigma.add_(0.3)  # a fixed sigma set by hand: another kernel too
    with caplog.at_level(logging.WARNING, logger="monai_gmr.conversion.export"):
        dense = export_dense(net)
    assert dense.c.weight is not dense.a.weight and dense.e.weight is not dense.a.weight
    assert "exported untied" in caplog.text
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        for name in "ace":
            assert rel_err(getattr(dense, name)(x), getattr(net, name)(x)) <= 1e-5, name
