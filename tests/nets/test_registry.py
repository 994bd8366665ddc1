"""Network registry and bundle-config construction by full dotted ``_target_``."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.bundle import ConfigParser

from monai_gmr.nets import GMRResNet, GMRUNet, get_network, list_networks, register_network
from monai_gmr.nn import GMRConv


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_list_networks():
    names = list_networks()
    for n in ("gmr_unet", "gmr_unet_tiny", "gmr_resnet18", "gmr_resnet34", "gmr_resnet50", "gmr_resnet18_tiny", "gcnn_unet"):
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
