"""On/off constructor arguments given as text, as a bundle command line passes them.

``python -m monai.bundle run ... --network_def#pad_to_multiple false`` reaches the constructor as the *string*
``"false"`` (Python Fire turns only ``True``/``False`` into booleans), and a non-empty string is true: GMRUNet padded
anyway, GMRConv kept its bias, ``get_network(dense="false")`` exported the net to plain convolutions, and so on.
Every such argument is now read like the bundle switches (``monai_gmr.utils.as_bool``); other text is an error
naming the argument.
"""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from monai_gmr import GMRConv, GMRConvolution, convert_to_gmr
from monai_gmr.nets import GCNNUNet, GMRUNet, gcnn_resnet18, get_network, gmr_resnet18
from monai_gmr.nn.conv import GMRConv as _GMRConv

TINY = {"features": (4, 4, 4, 4), "kernel_sizes": 3}


def test_gmrunet_pad_to_multiple_false_as_text_does_not_pad():
    net = GMRUNet(2, 1, 2, pad_to_multiple="false", **TINY)
    assert net.pad_to_multiple is False
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels=8"):
        net(torch.rand(1, 1, 30, 30))
    assert GMRUNet(2, 1, 2, pad_to_multiple="true", **TINY).pad_to_multiple is True
    assert all(m.bias is None for m in GMRUNet(2, 1, 2, bias="false", **TINY).modules() if isinstance(m, _GMRConv))


def test_bundle_override_text_reaches_the_network_as_a_bool():
    """The same through MONAI's ConfigParser with the values a command line gives (strings)."""
    p = ConfigParser({"network_def": {"_target_": "monai_gmr.nets.GMRUNet", "spatial_dims": 2, "in_channels": 1,
                                      "out_channels": 2, "features": [4, 4, 4, 4], "kernel_sizes": 3}})  # fmt: skip
    p["network_def#pad_to_multiple"] = "false"
    assert p.get_parsed_content("network_def").pad_to_multiple is False


def test_layer_switches_from_text():
    assert GMRConv(2, 3, 4, 3, bias="false").bias is None
    assert GMRConv(2, 3, 4, 3, bias="true").bias is not None
    assert GMRConv(2, 3, 4, 5, circular="false").circular is False
    block = GMRConvolution(2, 3, 4, conv_only="true", bias="false")
    assert not hasattr(block, "adn") and block.conv.bias is None
    with pytest.raises(ValueError, match="is_transposed"):
        GMRConvolution(2, 3, 4, is_transposed="true")
    assert GMRConvolution(2, 3, 4, is_transposed="false") is not None


def test_network_switches_from_text():
    net = gmr_resnet18(2, 3, 2, feed_forward="false", no_max_pool="true", block_inplanes=(4, 4, 4, 4))
    assert net.fc is None and net.downsample_factor == 8
    assert gcnn_resnet18(2, 3, 2, feed_forward="false", block_inplanes=(1, 1, 1, 1)).fc is None
    assert GCNNUNet(2, 1, 2, bias="false", features=(2, 2, 2, 2)) is not None
    net = get_network("gmr_unet_tiny", dense="false")
    assert any(isinstance(m, _GMRConv) for m in net.modules())  # "false" exported it to plain convs before


def test_convert_to_gmr_switches_from_text():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1))
    out = convert_to_gmr(model, inplace="false", return_summary="false")
    assert isinstance(out, torch.nn.Module) and isinstance(model[0], torch.nn.Conv2d)  # a copy, no summary tuple


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: GMRConv(2, 3, 4, 3, bias="no bias"), "bias"),
        (lambda: GMRUNet(2, 1, 2, pad_to_multiple="maybe", **TINY), "pad_to_multiple"),
        (lambda: gmr_resnet18(2, 3, 2, feed_forward="maybe"), "feed_forward"),
        (lambda: get_network("gmr_unet_tiny", dense="maybe"), "dense"),
        (lambda: convert_to_gmr(torch.nn.Conv2d(1, 2, 3), replace_pooling="maybe"), "replace_pooling"),
    ],
)
def test_other_text_is_an_error_naming_the_argument(build, name):
    with pytest.raises(ValueError, match=f"{name} must be a boolean"):
        build()


@pytest.mark.parametrize("build", [lambda d: GMRUNet(2, 1, 2, dropout=d, **TINY),
                                   lambda d: GCNNUNet(2, 1, 2, features=(4, 4), kernel_size=3, group="p4", dropout=d)])
def test_dropout_given_as_text_is_a_probability(build):
    """``--network_def#dropout 0.2`` passes the text "0.2": MONAI refused it with "Unsupported option '0.2'" (and
    "0.0", a non-empty string, was truthy in GMRUNet: a dropout layer of "0.0" was asked for)."""
    ps = {m.p for m in build("0.2").modules() if isinstance(m, torch.nn.Dropout)}
    assert ps == {0.2}
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in build("0.0").modules())
    with pytest.raises(ValueError, match="^dropout must be a probability"):
        build("1.5")
