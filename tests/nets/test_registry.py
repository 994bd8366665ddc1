"""Network registry and bundle-config construction by full dotted ``_target_``."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.bundle import ConfigParser

from monai_gmr.functional import d4_elements
from monai_gmr.nets import GCNNResNet, GCNNUNet, GMRResNet, GMRUNet, get_network, list_networks, register_network
from monai_gmr.nn import GMRConv
from tests.conftest import rel_err


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_list_networks():
    names = list_networks()
    for n in ("gmr_unet", "gmr_unet_tiny", "gmr_resnet18", "gmr_resnet34", "gmr_resnet50", "gmr_resnet18_tiny",
              "symm_unet", "symm_unet_tiny", "symm_resnet18", "symm_resnet18_tiny",
              "gcnn_unet", "gcnn_unet_tiny", "gcnn_resnet18", "gcnn_resnet34", "gcnn_resnet18_tiny"):  # fmt: skip
        assert n in names
    assert names == sorted(names)


def test_tiny_variants():
    unet = get_network("gmr_unet_tiny", in_channels=3, out_channels=4)
    assert isinstance(unet, GMRUNet) and unet.features == (4, 8, 8, 16) and unet.kernel_sizes == (5, 5, 3, 3)
    assert unet(torch.randn(1, 3, 16, 16)).shape == (1, 4, 16, 16)
    res = get_network("gmr_resnet18_tiny", in_channels=1, num_classes=3)
    assert isinstance(res, GMRResNet) and res(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    # kwargs override registered defaults
    assert get_network("gmr_unet_tiny", features=(2, 4), kernel_sizes=3).features == (2, 4)
    big = get_network("gmr_unet")
    assert big.features == (16, 32, 64, 128) and big.kernel_sizes == (9, 9, 5, 5)


def test_dense_variant():
    net = get_network("gmr_unet_tiny", dense=True)
    assert not any(isinstance(m, GMRConv) for m in net.modules())
    assert any(isinstance(m, nn.Conv2d) and m.kernel_size == (5, 5) for m in net.modules())


def test_unknown_and_duplicate_names():
    with pytest.raises(ValueError, match="unknown network name='nope'.*gmr_unet"):
        get_network("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_network("gmr_unet", GMRUNet)
    with pytest.raises(ValueError, match="callable"):
        register_network("x_not_callable", 3)  # type: ignore[arg-type]
    # a non-str name was registered, after which list_networks() (and every unknown-name error) raised TypeError
    for bad in (3, None, ""):
        with pytest.raises(ValueError, match="^name must be a non-empty str"):
            register_network(bad, GMRUNet)  # type: ignore[arg-type]
    assert all(isinstance(n, str) for n in list_networks())


def test_register_network():
    register_network("test_identity_net", lambda **kw: nn.Identity(), overwrite=True)
    assert "test_identity_net" in list_networks()
    assert isinstance(get_network("test_identity_net"), nn.Identity)


@pytest.mark.parametrize(
    "target, extra, cls",
    [
        ("monai_gmr.nets.GMRUNet", {"spatial_dims": 2, "in_channels": 3, "out_channels": 2, "features": [4, 8, 8, 16], "kernel_sizes": [5, 5, 3, 3]}, GMRUNet),
        ("monai_gmr.nets.unet.GMRUNet", {"spatial_dims": 2, "in_channels": 3, "out_channels": 2, "features": [4, 8], "kernel_sizes": 3}, GMRUNet),
        ("monai_gmr.nets.gmr_resnet18", {"spatial_dims": 2, "in_channels": 3, "num_classes": 2, "block_inplanes": [4, 8, 8, 16], "kernel_sizes": [5, 5, 3, 3]}, GMRResNet),
        ("monai_gmr.nets.GMRResNet", {"block": "bottleneck", "layers": [1, 1, 1, 1], "block_inplanes": [2, 4, 4, 8], "in_channels": 3, "kernel_sizes": 3}, GMRResNet),
        ("monai_gmr.nets.get_network", {"name": "gmr_unet_tiny", "in_channels": 3}, GMRUNet),
    ],
)
def test_bundle_config_dotted_target(target, extra, cls):
    parser = ConfigParser({"network_def": {"_target_": target, **extra}, "network": "$@network_def.eval()"})
    net = parser.get_parsed_content("network")
    assert type(net) is cls
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert net(x).shape[:2] == (1, 2)


def test_top_level_exports():
    import monai_gmr
    import monai_gmr.nets as nets

    assert callable(monai_gmr.convert_to_gmr) and monai_gmr.ConversionSummary is not None
    for name in ("GCNNUNet", "GCNNResNet", "gcnn_resnet18", "gcnn_resnet34", "group_widths"):
        assert name in nets.__all__ and callable(getattr(nets, name))


@pytest.mark.parametrize("name, cls", [("symm_unet_tiny", GMRUNet), ("symm_resnet18_tiny", GMRResNet)])
def test_symm_baselines_are_gmr_nets_without_smoothing(name, cls):
    net = get_network(name, in_channels=1).eval()
    gmr = get_network(name.replace("symm", "gmr"), in_channels=1)
    convs = [m for m in net.modules() if isinstance(m, GMRConv)]
    assert type(net) is cls and convs and all(c.smoothing == "none" for c in convs)
    assert all(c.smoothing == "gaussian" for c in gmr.modules() if isinstance(c, GMRConv))
    # same architecture; the Symm kernels have no learnable sigma, hence fewer parameters
    n_sigma = sum(p.numel() for n, p in gmr.named_parameters() if "sigma" in n)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in gmr.parameters()) - n_sigma
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        y = net(x)
        errs = [rel_err(net(g(x)), g(y) if y.ndim == 4 else y) for g in d4_elements()]
    assert max(errs) <= 1e-4, errs
    # with the same ring weights the Symm kernel differs from the GMR kernel (hard ring assignment, no Gaussians)
    missing, unexpected = net.load_state_dict(gmr.state_dict(), strict=False)
    assert not missing and unexpected and all("sigma" in k for k in unexpected)
    g0 = next(c for c in gmr.modules() if isinstance(c, GMRConv))
    with torch.no_grad():
        assert torch.equal(convs[0].weight, g0.weight)
        assert rel_err(convs[0].dense_kernel(), g0.dense_kernel()) > 1e-2


def test_gmr_resnet_passes_smoothing_to_every_conv():
    net = get_network("gmr_resnet18_tiny", smoothing="none", num_rings=2)
    convs = [m for m in net.modules() if isinstance(m, GMRConv)]
    assert len(convs) == 17 and all(c.smoothing == "none" and c.num_rings == 2 for c in convs)


def test_gcnn_tiny_variants():
    unet = get_network("gcnn_unet_tiny", in_channels=3, out_channels=4)
    assert isinstance(unet, GCNNUNet) and unet.features == (4, 4, 8, 8) and unet.group == "p4m"
    res = get_network("gcnn_resnet18_tiny", in_channels=1, num_classes=3, group="p4")
    assert isinstance(res, GCNNResNet) and res.block_inplanes == (4, 4, 8, 8) and res.group == "p4"
    with torch.no_grad():
        assert unet(torch.randn(1, 3, 16, 16)).shape == (1, 4, 16, 16)
        assert res.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize(
    "network_def, cls",
    [
        ({"_target_": "monai_gmr.nets.GCNNUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2, "features": [4, 4, 8, 8]}, GCNNUNet),
        ({"_target_": "monai_gmr.nets.GCNNUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2, "group": "p4", "features": [4, 4, 8, 8]}, GCNNUNet),
        ({"_target_": "monai_gmr.nets.gcnn_resnet18", "spatial_dims": 2, "in_channels": 3, "num_classes": 2, "block_inplanes": [4, 4, 8, 8]}, GCNNResNet),
        ({"_target_": "monai_gmr.nets.get_network", "name": "gcnn_unet_tiny", "in_channels": 3, "out_channels": 2}, GCNNUNet),
        ({"_target_": "monai_gmr.nets.get_network", "name": "gcnn_resnet18_tiny", "in_channels": 3, "num_classes": 2}, GCNNResNet),
        ({"_target_": "monai_gmr.nets.get_network", "name": "symm_unet_tiny", "in_channels": 3}, GMRUNet),
        ({"_target_": "monai_gmr.nets.get_network", "name": "symm_resnet18_tiny", "in_channels": 3}, GMRResNet),
        ({"_target_": "monai_gmr.nets.GMRUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2, "features": [4, 8], "kernel_sizes": 3, "smoothing": "none"}, GMRUNet),
    ],
)
def test_baselines_through_bundle_config(network_def, cls):
    parser = ConfigParser({"network_def": network_def, "network": "$@network_def.eval()"})
    net = parser.get_parsed_content("network")
    assert type(net) is cls
    if "smoothing" in network_def or "symm" in network_def.get("name", ""):
        assert all(c.smoothing == "none" for c in net.modules() if isinstance(c, GMRConv))
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32)).shape[:2] == (1, 2)


def test_bundle_overrides_swap_gmr_for_baselines():
    """How a bundle switches models: override ``network_def#name`` or ``network_def#_target_`` (as on the CLI
    ``--network_def#name symm_unet_tiny``)."""
    config = {"network_def": {"_target_": "monai_gmr.nets.get_network", "name": "gmr_unet_tiny", "in_channels": 1, "out_channels": 2}}
    for name, cls, smoothing in (("symm_unet_tiny", GMRUNet, "none"), ("gcnn_unet_tiny", GCNNUNet, None), ("gmr_unet_tiny", GMRUNet, "gaussian")):
        parser = ConfigParser(config)
        parser["network_def#name"] = name
        net = parser.get_parsed_content("network_def")
        assert type(net) is cls and net.out_channels == 2
        if smoothing:
            assert {c.smoothing for c in net.modules() if isinstance(c, GMRConv)} == {smoothing}
    parser = ConfigParser({"network_def": {"_target_": "monai_gmr.nets.GMRUNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2}})
    parser.update({"network_def#_target_": "monai_gmr.nets.GCNNUNet", "network_def#features": [4, 4, 8, 8]})
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, GCNNUNet) and net.features == (4, 4, 8, 8)


def test_registry_returns_fresh_modules_and_overwrite_replaces():
    from monai_gmr.nets import get_network, list_networks, register_network
    register_network("test_identity_net", lambda **kw: nn.Identity(), overwrite=True)
    assert "test_identity_net" in list_networks()
    a, b = get_network("test_identity_net"), get_network("test_identity_net")
    assert isinstance(a, nn.Identity) and a is not b  # a fresh module per call, never a shared instance
    register_network("test_identity_net", lambda **kw: nn.Tanh(), overwrite=True)
    assert isinstance(get_network("test_identity_net"), nn.Tanh)  # overwrite=True replaces the factory


@pytest.mark.parametrize(
    "name, small",
    [("symm_unet", {"features": (2, 4), "kernel_sizes": 3}), ("symm_resnet18", {"block_inplanes": (2, 2, 2, 2), "kernel_sizes": 3}),
     ("symm_unet_tiny", {}), ("symm_resnet18_tiny", {})],
)  # fmt: skip
def test_every_symm_name_builds_hard_ring_assignment(name, small):
    """Every ``symm_*`` registry name (full-size ones too, built small here) gives smoothing="none" GMR convolutions."""
    convs = [m for m in get_network(name, in_channels=1, **small).modules() if isinstance(m, GMRConv)]
    assert convs and all(c.smoothing == "none" for c in convs), name
