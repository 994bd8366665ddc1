"""G-CNN baseline nets: exact D4 equivariance/invariance, documented parameter counts, bundle config, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.networks.nets import BasicUNet, resnet18

from monai_gmr.functional import d4_elements
from monai_gmr.nets.gcnn import GCNNResNet, GCNNUNet, count_parameters, gcnn_resnet18, gcnn_resnet34, group_widths
from monai_gmr.nn.gconv import group_elements_of
from tests.conftest import ROOT, rel_err

# measured with the code below and documented in docs/gcnn.md (spatial_dims=2, in_channels=3, 2 outputs)
DOCUMENTED = {
    "GCNNUNet p4m": 539_390,
    "GCNNUNet p4": 535_986,
    "gcnn_resnet18 p4m": 11_190_366,
    "gcnn_resnet18 p4": 11_167_970,
    "BasicUNet (16, 16, 32, 64, 128, 16)": 496_210,
    "MONAI resnet18": 11_178_434,
}
TINY_UNET = dict(features=(4, 4, 8, 8))
TINY_RESNET = dict(block_inplanes=(4, 4, 8, 8))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _param_counts() -> dict[str, int]:
    return {
        "GCNNUNet p4m": count_parameters(GCNNUNet(2, 3, 2, group="p4m")),
        "GCNNUNet p4": count_parameters(GCNNUNet(2, 3, 2, group="p4")),
        "gcnn_resnet18 p4m": count_parameters(gcnn_resnet18(2, 3, 2, group="p4m")),
        "gcnn_resnet18 p4": count_parameters(gcnn_resnet18(2, 3, 2, group="p4")),
        "BasicUNet (16, 16, 32, 64, 128, 16)": count_parameters(
            BasicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=(16, 16, 32, 64, 128, 16))
        ),
        "MONAI resnet18": count_parameters(resnet18(spatial_dims=2, n_input_channels=3, num_classes=2)),
    }


def test_parameter_counts_match_docs():
    counts = _param_counts()
    assert counts == DOCUMENTED
    # budgets: within 10 % of the plain MONAI counterparts
    assert 0.9 < counts["GCNNUNet p4m"] / counts["BasicUNet (16, 16, 32, 64, 128, 16)"] < 1.1
    assert 0.99 < counts["gcnn_resnet18 p4m"] / counts["MONAI resnet18"] < 1.01
    doc = ROOT / "docs" / "gcnn.md"
    if doc.is_file():  # the page lists the same numbers (formatted with thousands separators)
        text = doc.read_text()
        for name, value in DOCUMENTED.items():
            assert f"{value:,}" in text, (name, value)


def test_default_widths():
    assert group_widths((16, 32, 64, 128), "p4m") == (6, 11, 23, 45)
    assert group_widths((16, 32, 64, 128), "p4") == (8, 16, 32, 64)
    assert GCNNUNet(2, 1, 1).features == (6, 11, 23, 45)
    assert gcnn_resnet18(2, 3, 2, group="p4").block_inplanes == (32, 64, 128, 256)
    n34, n18 = (count_parameters(f(2, 3, 2, **TINY_RESNET)) for f in (gcnn_resnet34, gcnn_resnet18))
    assert n34 > n18


# ------------------------------------------------------------------------------------------------ equivariance
@pytest.mark.parametrize("group", ["p4m", "p4"])
def test_unet_exactly_equivariant(group):
    net = GCNNUNet(2, 2, 3, group=group, **TINY_UNET).eval()
    x = torch.randn(2, 2, 16, 24)  # non-square, divisible by 8
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 3, 16, 24)
        errs = {g.name: rel_err(net(g(x)), g(y)) for g in group_elements_of(group)}
    assert len(errs) == (8 if group == "p4m" else 4)
    assert max(errs.values()) <= 1e-4, errs


def test_unet_default_widths_equivariant_nearest_max_pool():
    net = GCNNUNet(2, 1, 2, upsample="nearest", pooling="max", group_pool="mean").eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        y = net(x)
        errs = [rel_err(net(g(x)), g(y)) for g in d4_elements()]
    assert max(errs) <= 1e-4, errs


def test_p4_unet_is_not_reflection_equivariant():
    """Sanity check that the test can fail: p4 nets are not equivariant to flips."""
    net = GCNNUNet(2, 1, 1, group="p4", **TINY_UNET).eval()
    x = torch.randn(1, 1, 16, 16)
    flip = d4_elements()[4]
    with torch.no_grad():
        assert rel_err(net(flip(x)), flip(net(x))) > 1e-2


@pytest.mark.parametrize("group", ["p4m", "p4"])
def test_resnet_logits_exactly_invariant(group):
    net = gcnn_resnet18(2, 3, 5, group=group, **TINY_RESNET)
    x = torch.randn(3, 3, 32, 48)
    net.train()
    net(x)  # non-trivial running statistics
    net.eval()
    with torch.no_grad():
        y = net(x)
        assert y.shape == (3, 5)
        errs = {g.name: rel_err(net(g(x)), y) for g in group_elements_of(group)}
    assert max(errs.values()) <= 1e-4, errs


def test_resnet_features_and_options():
    net = GCNNResNet((1, 1, 1, 1), (4, 4, 8, 6), 2, 1, feed_forward=False, conv1_t_stride=2, group_pool="mean").eval()
    assert net.downsample_factor == 32
    x = torch.randn(2, 1, 64, 32)
    with torch.no_grad():
        f = net(x)
        assert f.shape == (2, 6)
        assert max(rel_err(net(g(x)), f) for g in d4_elements()) <= 1e-4
    assert gcnn_resnet18(2, 3, out_channels=4, **TINY_RESNET).fc.out_features == 4


# ------------------------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: GCNNUNet(3, 1, 2), "spatial_dims"),
        (lambda: gcnn_resnet18(3, 1, 2), "spatial_dims"),
        (lambda: GCNNResNet(spatial_dims=1, num_classes=2), "spatial_dims"),
        (lambda: GCNNUNet(2, 1, 2, group="p6m"), "group"),
        (lambda: gcnn_resnet18(2, 1, 2, group="so2"), "group"),
        (lambda: GCNNUNet(2, 1, 2, kernel_size=4), "kernel_size"),
        (lambda: GCNNUNet(2, 1, 2, features=(4, 4), kernel_size=(3, 3, 3)), "kernel_size"),
        (lambda: GCNNUNet(2, 1, 2, features=(4,)), "features"),
        (lambda: GCNNUNet(2, 1, 2, features=8), "features"),  # was TypeError("'int' object is not iterable")
        (lambda: GCNNUNet(2, 1, 2, upsample="deconv"), "upsample"),
        (lambda: GCNNUNet(2, 1, 2, pooling="lp"), "pooling"),
        (lambda: GCNNUNet(2, 1, 2, group_pool="sum"), "group_pool"),
        (lambda: gcnn_resnet18(2, 1, 2, group_pool="sum"), "group_pool"),
        (lambda: GCNNUNet(2, 0, 2), "in_channels"),
        (lambda: GCNNUNet(2, 1, 0), "out_channels"),  # was built with a 0-channel head
        (lambda: gcnn_resnet18(2, 1), "num_classes"),
        (lambda: gcnn_resnet18(2, 1, 2, out_channels=3), "num_classes"),
        (lambda: GCNNResNet((2, 2, 2), num_classes=2), "layers"),
        # these reached the layers, whose errors named their own arguments: "out_channels=0" (GCNNResNet has an
        # out_channels argument, the alias of num_classes) and "kernel_size=6" (also a GCNNResNet argument); layers
        # with 0 or a negative count built an empty stage without a word
        (lambda: gcnn_resnet18(2, 1, 2, block_inplanes=(4, 0, 8, 8)), "block_inplanes"),
        (lambda: gcnn_resnet18(2, 1, 2, conv1_t_size=6), "conv1_t_size"),
        (lambda: gcnn_resnet18(2, 1, 2, conv1_t_size=(7, 5)), "conv1_t_size"),
        (lambda: GCNNResNet((2, 0, 2, 2), (4, 4, 8, 8), num_classes=2), "layers"),
        (lambda: GCNNResNet((2, -1, 2, 2), (4, 4, 8, 8), num_classes=2), "layers"),
        # dropout=True reached nn.Dropout as p=1 (every activation zeroed in training)
        (lambda: GCNNUNet(2, 1, 2, dropout=True, **TINY_UNET), "^dropout must be a probability"),
        (lambda: GCNNUNet(2, 1, 2, dropout=1.5, **TINY_UNET), "^dropout must be a probability"),
        # the U-Net's GroupConvolution refused norm="layer" by name; the ResNet raised LayerNorm's TypeError (no
        # normalized_shape), and with ("layer", {"normalized_shape": ...}) built a norm whose elementwise affine
        # over (|H|, H, W) is not shared across orientations
        (lambda: gcnn_resnet18(2, 1, 2, norm="layer", **TINY_RESNET), "norm='layer'"),
        (lambda: gcnn_resnet18(2, 1, 2, norm=("LAYER", {"normalized_shape": (8, 32, 32)}), **TINY_RESNET),
         "norm='layer'"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs():
    net = GCNNUNet(2, 1, 2, **TINY_UNET)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels=8"):
        net(torch.randn(1, 1, 20, 16))
    with pytest.raises(ValueError, match="in_channels=1"):
        net(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError, match="in_channels=3"):
        gcnn_resnet18(2, 3, 2, **TINY_RESNET)(torch.randn(1, 1, 32, 32))
    # smaller than downsample_factor: was RuntimeError('Given input size: (32x1x1) ... Output size is too small')
    net = gcnn_resnet18(2, 3, 2, **TINY_RESNET).eval()
    with pytest.raises(ValueError, match=f"at least downsample_factor={net.downsample_factor}"):
        net(torch.randn(1, 3, net.downsample_factor - 1, 64))
    assert net(torch.randn(1, 3, net.downsample_factor, net.downsample_factor + 1)).shape == (1, 2)


# ------------------------------------------------------------------------------------------------ bundle config
def test_bundle_config_instantiates_by_dotted_target():
    config = {
        "unet": {"_target_": "monai_gmr.nets.gcnn.GCNNUNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2},
        "unet_p4": {
            "_target_": "monai_gmr.nets.gcnn.GCNNUNet",
            "spatial_dims": 2,
            "in_channels": 3,
            "out_channels": 1,
            "group": "p4",
            "features": [4, 4, 8, 8],
            "upsample": "nearest",
        },
        "resnet": {"_target_": "monai_gmr.nets.gcnn.gcnn_resnet18", "spatial_dims": 2, "in_channels": 3,
                   "out_channels": 2, "block_inplanes": [4, 4, 8, 8]},
        "resnet_cls": {"_target_": "monai_gmr.nets.gcnn.GCNNResNet", "spatial_dims": 2, "in_channels": 3,
                       "num_classes": 7},
    }
    parser = ConfigParser(config)
    unet, unet_p4 = parser.get_parsed_content("unet"), parser.get_parsed_content("unet_p4")
    resnet, resnet_cls = parser.get_parsed_content("resnet"), parser.get_parsed_content("resnet_cls")
    assert isinstance(unet, GCNNUNet) and unet.features == (6, 11, 23, 45) and unet.group == "p4m"
    assert isinstance(unet_p4, GCNNUNet) and unet_p4.group == "p4" and unet_p4.features == (4, 4, 8, 8)
    assert isinstance(resnet, GCNNResNet) and resnet.num_classes == 2
    assert isinstance(resnet_cls, GCNNResNet) and resnet_cls.fc.out_features == 7
    assert count_parameters(resnet_cls) == DOCUMENTED["gcnn_resnet18 p4m"] - 181 * 2 - 2 + 181 * 7 + 7
    with torch.no_grad():
        assert unet(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)
        assert unet_p4(torch.randn(1, 3, 8, 8)).shape == (1, 1, 8, 8)
        assert resnet(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_bundle_override_swaps_a_monai_net_for_the_baseline():
    config = {"network_def": {"_target_": "monai.networks.nets.BasicUNet", "spatial_dims": 2, "in_channels": 1,
                              "out_channels": 2}}
    parser = ConfigParser(config)
    assert isinstance(parser.get_parsed_content("network_def"), BasicUNet)
    parser = ConfigParser(config)
    parser["network_def#_target_"] = "monai_gmr.nets.gcnn.GCNNUNet"
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, GCNNUNet) and net.out_channels == 2


def test_resnet_takes_monai_resnets_n_input_channels():
    # a config written for MONAI's resnet18 (or GMRResNet, which takes the alias) names the input channels
    # n_input_channels: GCNNResNet refused it ("unexpected keyword argument 'n_input_channels'")
    config = {"network_def": {"_target_": "monai.networks.nets.resnet18", "spatial_dims": 2, "n_input_channels": 1,
                              "num_classes": 2}}
    parser = ConfigParser(config)
    parser["network_def#_target_"] = "monai_gmr.nets.gcnn.gcnn_resnet18"
    for key, value in TINY_RESNET.items():
        parser[f"network_def#{key}"] = value
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, GCNNResNet) and net.in_channels == 1
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 2)
    assert GCNNResNet((1, 1, 1, 1), (4, 4, 8, 6), 2, num_classes=2, n_input_channels=5).in_channels == 5
    assert GCNNResNet((1, 1, 1, 1), (4, 4, 8, 6), 2, num_classes=2).in_channels == 3  # the default stays 3
    with pytest.raises(ValueError, match="n_input_channels"):
        gcnn_resnet34(2, 1, 2, n_input_channels=3)


# ------------------------------------------------------------------------------------------------ training
def _disks(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.randint(4, size - 4, (n, 2))
    radii = torch.randint(2, 5, (n,))
    mask = ((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2 <= radii[:, None, None] ** 2)
    img = mask.float() + 0.3 * torch.randn(n, size, size)
    return img[:, None], mask.long()


def test_unet_trains_and_stays_equivariant():
    net = GCNNUNet(2, 1, 2, **TINY_UNET)
    x, y = _disks(4, 16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    net.eval()
    with torch.no_grad():
        out = net(x)
        assert max(rel_err(net(g(x)), g(out)) for g in d4_elements()) <= 1e-4


def test_resnet_trains_and_stays_invariant():
    net = gcnn_resnet18(2, 1, 2, **TINY_RESNET)
    x = torch.randn(8, 1, 32, 32)
    labels = torch.arange(8) % 2
    x[labels == 1] += 1.0  # brighter images are class 1
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    net.eval()
    with torch.no_grad():
        out = net(x)
        assert max(rel_err(net(g(x)), out) for g in d4_elements()) <= 1e-4


def test_gcnn_unet_builds_the_requested_modes():
    from monai_gmr.nets.gcnn import GCNNUNet
    from monai_gmr.nn.gconv import GroupSpatialPool, GroupUpsample
    net = GCNNUNet(2, 1, 2, upsample="nearest", pooling="max", group_pool="mean")
    assert {m.mode for m in net.modules() if isinstance(m, GroupUpsample)} == {"nearest"}
    assert {m.mode for m in net.modules() if isinstance(m, GroupSpatialPool)} == {"max"}
    assert net.group_pool.mode == "mean"


@pytest.mark.parametrize("stride,in_planes", [(1, 4), (1, 3), (2, 3)])
def test_resnet_block_adds_its_shortcut(stride, in_planes):
    """``GCNNResNetBlock`` computes ``act(main(x) + shortcut(x))`` (identity, or pool -> 1x1 gconv -> norm)."""
    from monai_gmr.nets.gcnn import GCNNResNetBlock

    blk = GCNNResNetBlock(in_planes, 4, "p4", stride).eval()
    with torch.no_grad():
        for m in blk.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
        x = torch.randn(2, in_planes, 4, 8, 8)
        main = blk.bn2(blk.conv2(blk.act(blk.bn1(blk.conv1(blk.pool(x))))))
        short = x if blk.downsample is None else blk.downsample(x)
        assert (blk.downsample is None) == (stride == 1 and in_planes == 4)
        assert torch.allclose(blk(x), torch.relu(main + short), atol=1e-6)


def test_resnet_norm_none_and_act_none_build_identities():
    """``norm=None`` / ``act=None`` mean "none" (as for GCNNUNet and the GMR nets); the ResNet failed inside MONAI's
    factory with "cannot unpack non-iterable NoneType object", naming neither argument."""
    torch.manual_seed(0)
    net = gcnn_resnet18(2, 1, 2, norm=None, act=None, **TINY_RESNET).eval()
    assert not any(isinstance(m, (torch.nn.BatchNorm3d, torch.nn.ReLU)) for m in net.modules())
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 2)
        assert max(rel_err(net(g(x)), y) for g in d4_elements()) <= 1e-4


def test_numpy_integers_are_accepted_like_gmrunet():
    """GMRUNet takes np.int64 sizes; GCNNUNet / GCNNResNet refused them ("features must hold >= 2 positive ints")."""
    import numpy as np

    i = np.int64
    torch.manual_seed(0)
    unet = GCNNUNet(2, i(1), i(2), features=(i(4), i(4)), kernel_size=i(3), group="p4")
    assert unet.features == (4, 4) and all(type(f) is int for f in unet.features + unet.kernel_size)
    assert unet(torch.rand(1, 1, 8, 8)).shape == (1, 2, 8, 8)
    net = GCNNResNet((i(1),) * 4, block_inplanes=(i(2),) * 4, in_channels=i(1), num_classes=i(2), group="p4",
                     conv1_t_size=i(3), conv1_t_stride=i(1))  # fmt: skip
    assert net(torch.rand(1, 1, 16, 16)).shape == (1, 2)
    with pytest.raises(ValueError, match="^features must hold"):
        GCNNUNet(2, 1, 2, features=(4.0, 4), group="p4")


@pytest.mark.parametrize("spatial_dims", [2.0, "2", True])
def test_non_int_spatial_dims_is_refused_naming_spatial_dims(spatial_dims):
    """2.0 passed as 2 (== compares equal) and was stored as the network's spatial_dims."""
    with pytest.raises(ValueError, match="spatial_dims="):
        GCNNUNet(spatial_dims, 1, 2, features=(4, 4))
    with pytest.raises(ValueError, match="spatial_dims="):
        GCNNResNet(spatial_dims=spatial_dims, num_classes=2)


# ------------------------------------------------------------------------------------------------ mutation audit 4
def test_group_widths_keep_at_least_one_channel():
    """A planar width below sqrt(|H|) rounds to 0 group channels: the budget-matched width is at least 1."""
    assert group_widths((1, 2, 3), "p4m") == (1, 1, 1)
    assert group_widths((1,), "p4") == (1,)


def test_unet_decoders_read_the_skip_first_then_the_upsampled_path():
    """Each decoder gets ``cat([skip, up(h)])`` (the GMR U-Net's order): the first half of its input channels is the
    output of the encoder of its level, the second half the up-sampled deeper path."""
    torch.manual_seed(0)
    net = GCNNUNet(2, 1, 2, group="p4", **TINY_UNET).eval()
    enc_out, dec_in = [], []
    hooks = [e.register_forward_hook(lambda m, i, o: enc_out.append(o)) for e in net.encoders]
    hooks += [d.register_forward_pre_hook(lambda m, i: dec_in.append(i[0])) for d in net.decoders]
    with torch.no_grad():
        net(torch.randn(1, 1, 16, 16))
    for h in hooks:
        h.remove()
    assert len(dec_in) == net.levels
    for k, x in enumerate(dec_in):  # decoder k reads the skip of level L - 1 - k
        skip = enc_out[net.levels - 1 - k]
        assert torch.equal(x[:, : skip.shape[1]], skip), k
        assert not torch.equal(x[:, skip.shape[1]:], skip), k


def test_unet_kernel_size_per_level():
    """``kernel_size`` given per level: the encoder of level i and the up-sampling conv and decoder back to level i
    use ``kernel_size[i]``."""
    ks = (3, 5, 7, 9)
    net = GCNNUNet(2, 1, 2, kernel_size=ks, group="p4", **TINY_UNET)

    def sizes(module):
        return {m.kernel_size for m in module.modules() if hasattr(m, "bank_index")}

    for i, enc in enumerate(net.encoders):
        assert sizes(enc) == {ks[i]}, i
    for k, (up, dec) in enumerate(zip(net.up_convs, net.decoders)):
        level = net.levels - 1 - k
        assert sizes(up) == sizes(dec) == {ks[level]}, level


def test_resnet_builds_the_requested_modes():
    """``pooling`` is the stem's 2x2 pool (the blocks' strides stay average pools) and ``group_pool`` the pooling over
    orientations before the global average pooling."""
    from monai_gmr.nn.gconv import GroupSpatialPool

    net = gcnn_resnet18(2, 1, 2, pooling="max", group_pool="mean", **TINY_RESNET)
    assert [m.mode for m in net.stem.modules() if isinstance(m, GroupSpatialPool)] == ["max"]
    stages = torch.nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)
    assert {m.mode for m in stages.modules() if isinstance(m, GroupSpatialPool)} == {"avg"}
    assert net.group_pool.mode == "mean"
    assert gcnn_resnet18(2, 1, 2, **TINY_RESNET).group_pool.mode == "max"


def test_resnet_initialises_its_norms_and_head_bias_like_monai():
    """As MONAI's ResNet: norm weights 1 and biases 0, and a zero bias on the linear head."""
    torch.manual_seed(0)
    net = gcnn_resnet18(2, 1, 3, **TINY_RESNET)
    assert torch.equal(net.fc.bias, torch.zeros(3))
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert norms and all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in norms)


def test_unet_dropout_reaches_every_block():
    """``dropout`` is applied in every conv block (MONAI ``ADN``), not only validated."""
    net = GCNNUNet(2, 1, 2, dropout=0.2, group="p4", **TINY_UNET)
    drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    n_blocks = sum(1 for m in net.modules() if type(m).__name__ == "GroupConvolution")
    assert len(drops) == n_blocks > 0 and all(m.p == 0.2 for m in drops)
