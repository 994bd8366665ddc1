"""convert_to_gmr on MONAI networks and single layers: shapes, training, measured equivariance, summary, errors."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, DenseNet121, DynUNet, ResNet, SegResNet, UNet

from monai_gmr.conversion.convert import (
    AvgPool3dAnySize,
    ConversionSummary,
    PooledConv,
    UpsampledConv,
    audit_equivariance,
    convert_to_gmr,
)
from monai_gmr.conversion.export import export_dense, gmr_to_dense_conv
from monai_gmr.functional import cube_elements, d4_elements
from monai_gmr.nn import GMRConv
from tests.conftest import rel_err


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# name -> (factory, input size where the original runs and the GMR version is exact when possible, task)
NETS = {
    "UNet": (lambda: UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1), 16, "seg"),
    "BasicUNet": (lambda: BasicUNet(2, 1, 2, features=(4, 4, 8, 8, 16, 4)), 32, "seg"),
    "DynUNet": (lambda: DynUNet(2, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2]), 16, "seg"),
    "SegResNet": (lambda: SegResNet(2, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1, 1), blocks_up=(1, 1)), 16, "seg"),
    "DenseNet121": (lambda: DenseNet121(2, 1, 2, init_features=8, growth_rate=4, block_config=(1, 1, 1, 1)), 32, "cls"),
    "ResNet": (lambda: ResNet("basic", [1, 1, 1, 1], [4, 8, 16, 32], spatial_dims=2, n_input_channels=1, num_classes=2), 32, "cls"),
}
# measured: the only orientation-dependent module left after conversion (docs/networks.md)
LEFT_OVER = {"UNet": [], "BasicUNet": [], "DynUNet": [], "SegResNet": [], "DenseNet121": ["features.pool0"], "ResNet": ["maxpool"]}


def _errors(net: nn.Module, x: torch.Tensor, elements=None) -> dict[str, float]:
    with torch.no_grad():
        y = net(x)
        spatial = y.ndim == x.ndim
        return {g.name: rel_err(net(g(x)), g(y) if spatial else y) for g in (elements or d4_elements())}


def _data(task: str, size: int, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 1, size, size)
    smooth = F.avg_pool2d(x, 5, 1, 2)
    y = (smooth > 0).long()[:, 0] if task == "seg" else torch.arange(n) % 2
    if task == "cls":  # class = sign of a blob added to the image
        x = x + (2 * y.float() - 1).view(n, 1, 1, 1) * 0.5
    return x, y


@pytest.mark.parametrize("name", list(NETS))
def test_converted_runs_keeps_shape_and_lists_leftovers(name):
    factory, size, _ = NETS[name]
    orig = factory().eval()
    before = {k: v.clone() for k, v in orig.state_dict().items()}
    net = convert_to_gmr(orig).eval()
    assert all(torch.equal(before[k], v) for k, v in orig.state_dict().items())  # not inplace: original untouched
    summary = net.gmr_conversion_summary
    assert isinstance(summary, ConversionSummary)
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        assert net(x).shape == orig(x).shape
    # every learned k>1 conv / transposed conv became GMR; only 1x1 stride-1 convs stay plain
    for mname, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            assert not isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (1, 1) and m.stride == (1, 1), mname
        if isinstance(m, GMRConv):
            assert m.stride == 1
    assert summary.counts.get("conv", 0) + summary.counts.get("strided_conv", 0) > 0 and summary.converted
    assert sorted(summary.non_equivariant) == LEFT_OVER[name]
    assert not summary.unknown and not summary.kept


@pytest.mark.parametrize("name", list(NETS))
def test_converted_trains(name):
    factory, size, task = NETS[name]
    net = convert_to_gmr(factory()).train()
    x, y = _data(task, size, n=4 if task == "cls" else 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", ["UNet", "BasicUNet", "DynUNet", "SegResNet"])
def test_segmentation_nets_exactly_d4_equivariant(name):
    factory, size, _ = NETS[name]
    orig = factory().eval()
    net = convert_to_gmr(orig).eval()
    x = torch.randn(2, 1, size, size)
    errs = _errors(net, x)
    assert len(errs) == 8 and max(errs.values()) <= 1e-4, errs
    assert max(_errors(orig, x).values()) > 1e-2  # the plain net is not (the test can tell the difference)


@pytest.mark.parametrize("name, odd_size", [("DenseNet121", 30), ("ResNet", 15)])
def test_classifiers_stem_max_pool_measured(name, odd_size):
    """The 3x3/stride-2/pad-1 stem max pool is the only leftover: it breaks invariance at even input sizes, commutes
    when its input size is odd, and ``replace_pooling=True`` makes the net exact at even sizes."""
    factory, size, _ = NETS[name]
    orig = factory().eval()
    net = convert_to_gmr(orig).eval()
    assert max(_errors(net, torch.randn(2, 1, size, size)).values()) > 1e-3
    assert max(_errors(net, torch.randn(2, 1, odd_size, odd_size)).values()) <= 1e-4
    fixed, summary = convert_to_gmr(orig, replace_pooling=True, return_summary=True)
    assert summary.counts["pool_replaced"] == 1 and not summary.non_equivariant
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        assert fixed.eval()(x).shape == orig(x).shape
    assert max(_errors(fixed, x).values()) <= 1e-4


def test_3d_unet_cube_sample():
    orig = UNet(3, 1, 2, channels=(2, 4, 8), strides=(2, 2), num_res_units=1).eval()
    net = convert_to_gmr(orig).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    errs = _errors(net, x, [cube_elements()[i] for i in (0, 7, 13, 26, 40)])
    assert max(errs.values()) <= 1e-4, errs


# ---------------------------------------------------------------------------------------------------- single layers
@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.Conv2d(3, 4, 7, stride=2, padding=3),
        nn.Conv2d(3, 4, 1, stride=2),
        nn.Conv2d(3, 4, 2, stride=2),
        nn.Conv2d(3, 4, 4, stride=2, padding=1),
        nn.Conv2d(3, 4, 3, stride=3, padding=1),
        nn.Conv2d(3, 4, 2, padding="same"),
        nn.Conv2d(3, 4, 5, padding=0),
        nn.Conv2d(3, 4, 3, padding=2, dilation=2),
        nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False, padding_mode="reflect"),
        nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
        nn.ConvTranspose2d(3, 4, 2, stride=2),
        nn.ConvTranspose2d(3, 4, 4, stride=2, padding=1),
        nn.ConvTranspose2d(3, 4, 3, stride=1, padding=1),
        nn.ConvTranspose2d(3, 4, 1, stride=2, output_padding=1),
        nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2),
        nn.ConvTranspose2d(3, 4, 3, stride=2, padding=2, dilation=2, output_padding=1),
        nn.ConvTranspose2d(3, 4, 3, stride=1, padding=2, dilation=2),
    ],
)
def test_layer_output_sizes_match(conv):
    new, summary = convert_to_gmr(conv, return_summary=True)
    assert new is not conv and not summary.kept
    for h in range(1, 14):
        x = torch.randn(1, conv.in_channels, h, h + 1)
        with torch.no_grad():
            try:
                ref = conv(x)
            except RuntimeError:
                continue  # an input size the original rejects
            assert new(x).shape == ref.shape, (h, new)
    if isinstance(new, GMRConv):
        assert new.groups == conv.groups and (new.bias is None) == (conv.bias is None)
        assert new.padding_mode == conv.padding_mode and new.dilation == conv.dilation[0]
    if any(s > 1 for s in conv.stride):
        assert isinstance(new, UpsampledConv if isinstance(conv, nn.ConvTranspose2d) else PooledConv)


@pytest.mark.parametrize(
    "conv",
    [
        nn.ConvTranspose2d(3, 4, 3, padding=1),
        nn.ConvTranspose2d(4, 6, 3, padding=1, groups=2),
        nn.ConvTranspose2d(3, 4, 2),
        nn.ConvTranspose2d(3, 4, 3, padding=2, dilation=2),
        nn.ConvTranspose3d(2, 4, 3, padding=1, groups=2),
    ],
)
def test_transposed_weight_is_the_equivalent_ordinary_conv(conv):
    """The weights projected into a converted transposed conv are those of the ordinary conv it equals (channels
    swapped per group, kernel flipped). Mutation audit: dropping the flip survived every other test (the radial
    projection of an odd kernel does not see a flip); it changes the projection of even kernels (k = 2, 4)."""
    from monai_gmr.conversion.convert import _transposed_as_conv_weight

    torch.manual_seed(0)
    d = conv.weight.ndim - 2
    w = _transposed_as_conv_weight(conv)
    k, p, dil = conv.kernel_size[0], conv.padding[0], conv.dilation[0]
    x = torch.randn(2, conv.in_channels, *([7] * d))
    conv_nd = F.conv2d if d == 2 else F.conv3d
    with torch.no_grad():
        ref = conv(x)
        out = conv_nd(x, w, conv.bias, padding=dil * (k - 1) - p, dilation=dil, groups=conv.groups)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("conv", [nn.Conv3d(2, 3, 3, stride=2, padding=1), nn.Conv3d(2, 3, 5, stride=3, padding=2), nn.Conv3d(2, 3, 1, stride=2)])
def test_3d_strided_conv_inputs_smaller_than_the_stride(conv):
    """avg_pool3d rejects inputs smaller than its window (2D pools and max_pool3d do not): a converted MONAI 3D
    ResNet failed on 16^3 patches (its last strided conv sees 1 voxel), where MONAI's runs."""
    new = convert_to_gmr(conv)
    for shape in [(1, 1, 1), (1, 2, 2), (2, 1, 3), (2, 5, 6), (4, 4, 4), (7, 6, 5)]:
        x = torch.randn(2, 2, *shape)
        with torch.no_grad():
            assert new(x).shape == conv(x).shape, shape
    assert isinstance(new.pool, AvgPool3dAnySize) and isinstance(new.pool, nn.AvgPool3d)  # audited as an AvgPool3d
    pool = new.pool if new.pool.kernel_size == (2, 2, 2) else AvgPool3dAnySize((2, 2, 2), (2, 2, 2), (0, 0, 0), True)
    x = torch.randn(2, 3, 1, 3, 3)  # the depth window holds the single slice: the 2D ceil-mode pool of that slice
    assert torch.allclose(pool(x)[:, :, 0], nn.AvgPool2d(2, 2, ceil_mode=True)(x[:, :, 0]), atol=1e-6)
    x = torch.randn(2, 3, 5, 6, 7)  # inputs nn.AvgPool3d accepts: its result
    assert torch.equal(pool(x), nn.AvgPool3d(2, 2, ceil_mode=True)(x))
    resnet = ResNet("basic", [1, 1, 1, 1], [2, 2, 4, 4], spatial_dims=3, n_input_channels=1, num_classes=2, conv1_t_stride=2)
    with torch.no_grad():
        assert convert_to_gmr(resnet).eval()(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2)


@pytest.mark.parametrize(
    "conv, reason",
    [
        (nn.Conv2d(3, 4, (1, 3), padding=(0, 1)), "anisotropic kernel"),
        (nn.Conv2d(3, 4, 3, stride=2, padding=0), "no pooling reproduces"),
        (nn.Conv2d(3, 4, 4, padding=1), "no symmetric padding"),
        (nn.Conv2d(3, 4, 4, stride=2), "no pooling reproduces"),
        (nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1), "no symmetric padding"),
        (nn.ConvTranspose2d(3, 4, 4, padding=1), "no symmetric padding"),
    ],
)
def test_unsupported_layers_are_kept_and_reported(conv, reason, caplog):
    net = nn.Sequential(conv)
    with caplog.at_level(logging.INFO, logger="monai_gmr.conversion.convert"):
        new, summary = convert_to_gmr(net, return_summary=True)
    assert type(new[0]) is type(conv)
    assert reason in summary.kept["0"] and summary.counts == {"unsupported": 1}  # no even_kernel for a kept conv
    assert "0" in summary.non_equivariant and not summary.fully_equivariant
    assert "left orientation-dependent: 0" in caplog.text


def test_anisotropic_stride_3d_reported():
    net = nn.Sequential(nn.Conv3d(1, 2, 3, stride=(1, 2, 2), padding=1))
    new, summary = convert_to_gmr(net, return_summary=True)
    assert isinstance(new[0], PooledConv) and new[0].pool.kernel_size == (1, 2, 2)
    assert "anisotropic pooling" in summary.non_equivariant["0.pool"]
    assert new(torch.randn(1, 1, 6, 8, 10)).shape == net(torch.randn(1, 1, 6, 8, 10)).shape


def test_anisotropic_transposed_stride_3d_reported():
    """An in-plane-only up-convolution (stride (2, 2, 1)) became an Upsample with unequal scales, which was reported
    fully equivariant although it breaks axis permutations (its down-sampling counterpart was reported)."""
    net = nn.Sequential(nn.ConvTranspose3d(1, 2, 3, stride=(2, 2, 1), padding=1, output_padding=(1, 1, 0)))
    new, summary = convert_to_gmr(net, return_summary=True)
    assert isinstance(new[0], UpsampledConv) and new[0].upsample.scale_factor == (2.0, 2.0, 1.0)
    assert "unequal scales" in summary.non_equivariant["0.upsample"] and not summary.fully_equivariant
    assert "x(2, 2, 1)" in summary.converted["0"]
    pools = audit_equivariance(nn.Sequential(nn.AdaptiveAvgPool3d((2, 2, 1)), nn.AdaptiveMaxPool3d((1, 1, None)), nn.AdaptiveAvgPool3d(2)))
    assert set(pools.non_equivariant) == {"0", "1"} and set(pools.conditions) == {"2"}  # (2, 2, 1) was a condition
    x = torch.randn(1, 1, 4, 4, 4)
    assert new(x).shape == net(x).shape == (1, 2, 8, 8, 4)
    with torch.no_grad():  # swapping the last two axes does not even commute with the output shape
        assert new(x.transpose(-1, -2)).shape != new(x).transpose(-1, -2).shape


def test_3d_summary_names_the_interpolation_that_runs_and_anisotropic_up_kernels():
    """In 3D the summary said ``Upsample(bilinear, x2)`` while the module runs trilinear interpolation; a kept
    anisotropic up-conv kernel (DynUNet's ``upsample_kernel_size=[2, 2, 1]``) was listed as
    "anisotropic kernel (2, 2, 1) / dilation (1, 1, 1)", naming an isotropic dilation as a cause."""
    net = nn.Sequential(nn.ConvTranspose3d(1, 2, 2, stride=2), nn.ConvTranspose3d(2, 2, (2, 2, 1), stride=(2, 2, 1)))
    new, summary = convert_to_gmr(net, return_summary=True)
    assert new[0].upsample.mode == "trilinear" and "Upsample(trilinear, x2)" in summary.converted["0"]
    assert summary.kept["1"] == "anisotropic kernel (2, 2, 1) (GMR kernels are isotropic)"
    net2d = nn.Sequential(nn.ConvTranspose2d(1, 2, 2, stride=2))
    assert "Upsample(bilinear, x2)" in convert_to_gmr(net2d, return_summary=True)[1].converted["0"]
    dil = nn.Sequential(nn.ConvTranspose3d(1, 2, 3, dilation=(1, 1, 2)))
    assert convert_to_gmr(dil, return_summary=True)[1].kept["0"] == "anisotropic dilation (1, 1, 2)"

def test_kernel_size_options():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 5, padding=2), nn.Conv2d(2, 2, 1), nn.ConvTranspose2d(2, 2, 2, stride=2))
    ks = lambda m: [c.kernel_size for c in m.modules() if isinstance(c, GMRConv)]  # noqa: E731
    assert ks(convert_to_gmr(net)) == [3, 5, 3]  # even 2 -> 3
    assert ks(convert_to_gmr(net, kernel_size=7)) == [7, 7, 7]
    new, s = convert_to_gmr(net, kernel_size=lambda k: 2 * k, return_summary=True)
    assert ks(new) == [7, 11, 5] and s.counts["even_kernel"] == 3
    assert isinstance(new[2], nn.Conv2d) and s.counts["pointwise_kept"] == 1  # 1x1 stays
    x = torch.randn(1, 1, 8, 8)
    assert new(x).shape == net(x).shape


def test_exclude_inplace_and_summary_attribute(caplog):
    net = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()), nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1))
    new = convert_to_gmr(net, exclude=["0"])
    assert isinstance(new[0][0], nn.Conv2d) and isinstance(new[1], GMRConv) and new.gmr_conversion_summary.kept == {"0": "excluded"}
    new = convert_to_gmr(net, exclude="*2")
    assert isinstance(new[2], nn.Conv2d) and isinstance(new[1], GMRConv) and isinstance(new[0][0], GMRConv)
    new = convert_to_gmr(net, exclude=[nn.Conv2d])
    assert not any(isinstance(m, GMRConv) for m in new.modules()) and new.gmr_conversion_summary.counts["excluded"] == 3
    with caplog.at_level(logging.INFO, logger="monai_gmr.conversion.convert"):
        out = convert_to_gmr(net, inplace=True)
    assert out is net and isinstance(net[1], GMRConv) and "conv=3" in caplog.text
    text = net.gmr_conversion_summary.format()
    assert "converted (3)" in text and "Conv2d(k=3) -> GMRConv(k=3)" in text
    assert net.gmr_conversion_summary.to_dict()["counts"] == {"conv": 3}


def test_exclude_entries_matching_nothing_are_warned_about(caplog):
    net = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()), nn.Conv2d(2, 2, 3, padding=1))
    with caplog.at_level(logging.WARNING, logger="monai_gmr.conversion.convert"):
        new = convert_to_gmr(net, exclude=["0.0", "out", "*.final*", nn.ConvTranspose2d])
    assert isinstance(new[0][0], nn.Conv2d) and isinstance(new[1], GMRConv)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "'out', '*.final*', 'ConvTranspose2d' match no module" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_gmr.conversion.convert"):
        convert_to_gmr(net, exclude=["0", "0.0", "*1", nn.ReLU])  # all match (0.0 lies under the excluded 0)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_frozen_layers_stay_frozen():
    """A frozen (requires_grad=False) conv was replaced by a trainable GMR layer: fine-tuning then trained it."""
    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.Conv3d(2, 2, 3, stride=2, padding=1), nn.ConvTranspose3d(2, 2, 2, 2))
    net[0].requires_grad_(False)
    net[2].requires_grad_(False)
    new = convert_to_gmr(net, weights="project")
    assert [p.requires_grad for p in new[0].parameters()] == [False] * 3  # weight, log_sigma, bias
    assert all(p.requires_grad for p in new[1].parameters())
    assert isinstance(new[2], UpsampledConv) and not any(p.requires_grad for p in new[2].parameters())


def test_partly_frozen_layers_keep_each_parameters_state():
    """Bias-only fine-tuning (weight frozen, bias trainable) froze the new bias too, and a frozen bias next to a
    trainable weight became trainable: the whole layer followed the weight's requires_grad."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.ConvTranspose2d(2, 2, 2, 2), nn.Conv2d(2, 2, 1, stride=2))
    for i in (0, 2):
        net[i].weight.requires_grad_(False)  # bias stays trainable
    for i in (1, 3):
        net[i].bias.requires_grad_(False)  # weight stays trainable
    new = convert_to_gmr(net)
    for i in range(4):
        for name, p in new[i].named_parameters():
            src = net[i].bias if name.endswith("bias") else net[i].weight  # log_sigma shapes the kernel: as weight
            assert p.requires_grad == src.requires_grad, (i, name)


def test_shared_modules_stay_shared():
    conv = nn.Conv2d(1, 1, 3, padding=1)
    net = nn.Module()
    net.a = nn.Sequential(conv)
    net.b = nn.Sequential(conv)
    new = convert_to_gmr(net)
    assert isinstance(new.a[0], GMRConv) and new.a[0] is new.b[0]


@pytest.mark.parametrize("excluded", ["a", "b", "b.0"])
def test_shared_module_excluded_under_one_name_is_kept_under_all(excluded):
    """A conv shared by ``a`` and ``b`` with only one name excluded was converted under the other name, so the two
    stopped sharing weights, silently; exclusion now wins for the module under every name, and sharing holds."""
    conv = nn.Conv2d(1, 1, 3, padding=1)
    net = nn.Module()
    net.a = nn.Sequential(conv)
    net.b = nn.Sequential(conv)
    new, summary = convert_to_gmr(net, exclude=[excluded], return_summary=True)
    assert type(new.a[0]) is nn.Conv2d and new.a[0] is new.b[0]
    assert not summary.converted and summary.kept and all(r.startswith("excluded") for r in summary.kept.values())


def test_conv_registered_twice_in_one_parent_is_converted_once():
    """A weight-tied conv used twice in one Sequential: both names get the same GMRConv (the second was skipped)."""
    conv = nn.Conv2d(2, 2, 3, padding=1)
    new, summary = convert_to_gmr(nn.Sequential(conv, nn.ReLU(), conv), return_summary=True)
    assert isinstance(new[2], GMRConv) and new[0] is new[2]
    assert summary.counts == {"conv": 1} and summary.fully_equivariant


def test_converting_twice_counts_every_gmr_conv_and_changes_nothing():
    torch.manual_seed(0)
    once = convert_to_gmr(UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)).eval()
    n_gmr = sum(isinstance(m, GMRConv) for m in once.modules())
    twice, summary = convert_to_gmr(once, return_summary=True)
    assert summary.counts["already_gmr"] == n_gmr == 9  # 6 of them inside PooledConv/UpsampledConv
    assert not summary.converted and not summary.non_equivariant
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(twice.eval()(x), once(x))


def test_gmr_kwargs_and_padding_mode_override():
    net = nn.Sequential(nn.Conv2d(1, 2, 5, padding=2))
    new = convert_to_gmr(net, num_rings=2, smoothing="none", impl="dense", padding_mode="replicate")
    c = new[0]
    assert c.num_rings == 2 and c.smoothing == "none" and c.impl == "dense" and c.padding_mode == "replicate"


def test_project_weights_reproduce_radial_kernels():
    """A dense conv exported from a GMR conv is radially symmetric: projection recovers it exactly."""
    g = GMRConv(2, 3, 4, 7)
    dense = gmr_to_dense_conv(g)
    new = convert_to_gmr(dense, weights="project")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert rel_err(new(x), g(x)) <= 1e-5
    # transposed stride-1 conv with a radial kernel (flip + channel swap handled)
    t = nn.ConvTranspose2d(3, 4, 7, padding=3)
    with torch.no_grad():
        t.weight.copy_(dense.weight.transpose(0, 1))
        t.bias.copy_(dense.bias)
    new_t = convert_to_gmr(t, weights="project")
    assert isinstance(new_t, GMRConv)
    with torch.no_grad():
        assert rel_err(new_t(x), t(x)) <= 1e-5 and rel_err(t(x), g(x)) <= 1e-5


def test_audit_equivariance_of_plain_modules():
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.MaxPool2d(2), nn.AvgPool2d(3, 2, 1), nn.Upsample(scale_factor=1.5),
        nn.AdaptiveAvgPool2d(2), nn.LayerNorm(4), nn.Softmax(dim=-1),
    )  # fmt: skip
    s = audit_equivariance(net)
    assert set(s.non_equivariant) == {"0", "3"} and "H % 2 == 1" in s.non_equivariant["3"]
    assert set(s.conditions) == {"2", "5"}
    assert set(s.unknown) == {"4", "6", "7"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"upsample_mode": "deconv"}, "upsample_mode"),
        ({"pool_mode": "lp"}, "pool_mode"),
        ({"weights": "copy"}, "weights"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"kernel_size": lambda k: 0}, "kernel_size"),
        ({"exclude": [3]}, "exclude"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        convert_to_gmr(nn.Sequential(nn.Conv2d(1, 1, 3)), **kwargs)
    with pytest.raises(ValueError, match="model"):
        convert_to_gmr("UNet")  # type: ignore[arg-type]


def test_numpy_int_kernel_sizes_and_the_upsample_mode_list():
    """kernel_size as a NumPy int (as GMRConv accepts) was rejected, also from a callable; floats stay rejected;
    the upsample_mode error lists every accepted mode (it left out linear/trilinear, which it accepts)."""
    import numpy as np

    for ks in (np.int64(5), lambda k: np.int32(k + 2)):
        net = convert_to_gmr(nn.Sequential(nn.Conv2d(1, 1, 3)), kernel_size=ks)
        assert isinstance(net[0], GMRConv) and net[0].kernel_size == 5 and type(net[0].kernel_size) is int
    for bad in (5.0, np.float32(5), lambda k: 5.0):
        with pytest.raises(ValueError, match="kernel_size"):
            convert_to_gmr(nn.Sequential(nn.Conv2d(1, 1, 3)), kernel_size=bad)
    with pytest.raises(ValueError, match="linear, bilinear, trilinear, bicubic"):
        convert_to_gmr(nn.Sequential(nn.Conv2d(1, 1, 3)), upsample_mode="area")


def test_top_level_convert_to_gmr():
    import monai_gmr

    assert monai_gmr.convert_to_gmr is convert_to_gmr and monai_gmr.ConversionSummary is ConversionSummary
    net, summary = monai_gmr.convert_to_gmr(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)), return_summary=True)
    assert isinstance(net[0], GMRConv) and summary.counts == {"conv": 1} and summary.fully_equivariant


def test_segresnet_upsample_modes_measured():
    """deconv -> non-learned up-sampling + GMR conv (exact); pixel shuffle stays orientation-dependent and is reported."""
    kw = dict(spatial_dims=2, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1, 1), blocks_up=(1, 1))
    x = torch.randn(2, 1, 16, 16)
    net, s = convert_to_gmr(SegResNet(**kw, upsample_mode="deconv"), return_summary=True)
    assert s.counts["transposed_conv"] == 2 and s.fully_equivariant
    assert max(_errors(net.eval(), x).values()) <= 1e-4
    net, s = convert_to_gmr(SegResNet(**kw, upsample_mode="pixelshuffle"), return_summary=True)
    assert sorted(s.non_equivariant) == ["up_samples.0.1.pixelshuffle", "up_samples.1.1.pixelshuffle"]
    assert "pixel shuffle" in s.non_equivariant["up_samples.0.1.pixelshuffle"] and not s.unknown
    assert max(_errors(net.eval(), x).values()) > 1e-3


def test_dynunet_deep_supervision_and_anisotropic_kernels():
    net = convert_to_gmr(DynUNet(2, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                                 deep_supervision=True, deep_supr_num=1)).train()  # fmt: skip
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        y = net(x)  # (B, 1 + deep_supr_num, C, H, W): heads interpolated (nearest, x2) inside forward
        assert y.shape == (2, 2, 2, 16, 16)
        assert max(rel_err(net(g(x)), g(y)) for g in d4_elements()) <= 1e-4
    aniso, s = convert_to_gmr(DynUNet(3, 1, 2, kernel_size=[[3, 3, 1], 3, 3], strides=[1, [2, 2, 1], 2],
                                      upsample_kernel_size=[[2, 2, 1], 2]), return_summary=True)  # fmt: skip
    assert s.counts["unsupported"] == 3 and "anisotropic kernel (3, 3, 1)" in s.kept["input_block.conv1.conv"]
    assert "anisotropic pooling" in s.non_equivariant["downsamples.0.conv1.conv.pool"]
    xx = torch.randn(1, 1, 16, 16, 8)
    with torch.no_grad():
        assert aniso(xx).shape == (1, 2, 16, 16, 8)


def test_audit_padding_and_pixel_shuffle_layers():
    net = nn.Sequential(nn.ReflectionPad2d(2), nn.ConstantPad2d((1, 0, 1, 0), 0.0), nn.PixelShuffle(2), nn.ZeroPad2d(1))
    s = audit_equivariance(net)
    assert set(s.non_equivariant) == {"1", "2"} and not s.unknown


@pytest.mark.parametrize(
    "pool",
    [nn.MaxPool2d(3, stride=1, padding=1), nn.AvgPool2d(5, stride=1, padding=2), nn.MaxPool2d(4, stride=2, padding=1)],
)
def test_replace_pooling_keeps_pools_that_already_commute(pool):
    """Stride-1 pools with symmetric padding (and k=4/stride-2/pad-1) already commute: they stay, reported as kept."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), pool)
    new, summary = convert_to_gmr(net, replace_pooling=True, return_summary=True)
    assert new[1] is not pool and type(new[1]) is type(pool)  # a copy (not inplace) of the same pool
    assert (new[1].kernel_size, new[1].stride, new[1].padding) == (pool.kernel_size, pool.stride, pool.padding)
    assert "already commutes" in summary.kept["1"] and summary.counts["pool_kept"] == 1
    assert "pool_replaced" not in summary.counts and "1" not in summary.non_equivariant
    if pool.stride == 1:
        assert "1" not in summary.conditions and summary.fully_equivariant
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        h = new[0](x)
        assert torch.equal(new[1](h), pool(h))  # still the same operation (not an identity)
    assert max(_errors(new.eval(), x).values()) <= 1e-4


def test_replace_pooling_keeps_return_indices():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.MaxPool2d(3, 2, 1, return_indices=True)

        def forward(self, x):
            y, idx = self.pool(x)
            return y, idx

    new, summary = convert_to_gmr(Net(), replace_pooling=True, return_summary=True)
    assert summary.counts["pool_replaced"] == 1 and new.pool.return_indices
    x = torch.randn(1, 2, 8, 8)
    y, idx = new(x)
    assert y.shape == (1, 2, 4, 4)
    assert torch.equal(x.flatten(2).gather(2, idx.flatten(2)), y.flatten(2))  # indices point at the maxima


def _state(net: nn.Module) -> dict:
    return {"types": [type(m) for m in net.modules()], **{k: v.clone() for k, v in net.state_dict().items()}}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] if k == "types" else torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"padding_mode": "reflection"}, "padding_mode"),  # was silently replaced by "zeros"
        ({"smothing": "none"}, "smothing"),  # misspelled GMRConv keyword
        ({"smoothing": "nearest"}, "smoothing"),
        ({"num_rings": 1}, "num_rings"),
        ({"stride": 2}, "stride"),  # geometry is the converter's business
        ({"upsample_mode": "bicubic"}, "upsample_mode"),  # 2D only; the net has a 3D transposed conv
        ({"kernel_size": lambda k: 0 if k == 5 else k}, "kernel_size"),  # fails at the second conv
    ],
)
def test_bad_arguments_leave_inplace_model_unchanged(kwargs, match):
    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.Conv3d(2, 2, 5, padding=2), nn.ConvTranspose3d(2, 2, 2, stride=2))
    before = _state(net)
    with pytest.raises(ValueError, match=match):
        convert_to_gmr(net, inplace=True, **kwargs)
    assert _same_state(_state(net), before) and not hasattr(net, "gmr_conversion_summary")


def test_bad_gmr_kwargs_rejected_without_any_k_gt_1_conv():
    with pytest.raises(ValueError, match="smothing"):
        convert_to_gmr(nn.Sequential(nn.Conv2d(1, 2, 1)), smothing="none")


def test_bicubic_allowed_when_3d_transposed_convs_do_not_upsample():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ConvTranspose2d(2, 2, 2, stride=2))
    new = convert_to_gmr(net, upsample_mode="bicubic")
    assert new[1].upsample.mode == "bicubic"
    net3d = nn.Sequential(nn.ConvTranspose3d(1, 2, 3, padding=1), nn.Sequential(nn.ConvTranspose3d(2, 2, 2, stride=2)))
    new3d, s = convert_to_gmr(net3d, upsample_mode="bicubic", exclude="1", return_summary=True)  # stride 1 / excluded
    assert isinstance(new3d[0], GMRConv) and s.kept == {"1": "excluded"}


def test_gmr_conv_kwargs_match_gmrconv_signature():
    import inspect

    from monai_gmr.nn import GMR_CONV_KWARGS

    geometry = {"self", "spatial_dims", "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias"}
    assert set(GMR_CONV_KWARGS) == set(inspect.signature(GMRConv.__init__).parameters) - geometry


def test_audit_upsample_to_a_fixed_size():
    """``Upsample(size=...)`` was reported equivariant: nearest resizing 4 -> 7 is not (measured)."""
    near, lin, aniso = nn.Upsample(size=(7, 7)), nn.Upsample(size=(7, 7), mode="bilinear"), nn.Upsample(size=(6, 8))
    s = audit_equivariance(nn.Sequential(near, lin, aniso))
    assert set(s.conditions) == {"0"} and "integer multiple" in s.conditions["0"]
    assert set(s.non_equivariant) == {"2"} and not s.unknown
    x = torch.randn(1, 1, 4, 5)
    with torch.no_grad():
        assert max(rel_err(near(g(x)), g(near(x))) for g in d4_elements()) > 1e-1
        assert max(rel_err(lin(g(x)), g(lin(x))) for g in d4_elements()) <= 1e-5  # linear resizing is symmetric
        near8, x4 = nn.Upsample(size=(8, 8)), torch.randn(1, 1, 4, 4)
        assert max(rel_err(near8(g(x4)), g(near8(x4))) for g in d4_elements()) == 0  # the condition holds: 4 -> 8


def test_resnet_shortcut_a_reported():
    """MONAI ResNet(shortcut_type="A") subsamples its shortcuts with a functools.partial inside forward: the audit
    (leaf modules only) called the converted net fully equivariant while its D4 error is ~0.1."""
    kw = dict(block="basic", layers=[1, 1, 1, 1], block_inplanes=[4, 8, 16, 32], spatial_dims=2, n_input_channels=1, num_classes=2)
    x = torch.randn(2, 1, 32, 32)
    net_b, s_b = convert_to_gmr(ResNet(**kw, shortcut_type="B"), replace_pooling=True, return_summary=True)
    assert s_b.fully_equivariant and max(_errors(net_b.eval(), x).values()) <= 1e-4
    net_a, s_a = convert_to_gmr(ResNet(**kw, shortcut_type="A"), replace_pooling=True, return_summary=True)
    assert sorted(s_a.non_equivariant) == ["layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"]
    assert "shortcut_type='A'" in s_a.non_equivariant["layer2.0.downsample"] and not s_a.fully_equivariant
    assert max(_errors(net_a.eval(), x).values()) > 1e-3

    class Block(nn.Module):  # any other plain-callable downsample is unknown to the audit
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)
            self.downsample = lambda t: t[..., ::2, ::2]

    s = audit_equivariance(nn.Sequential(Block()))
    assert "function" in s.unknown["0.downsample"] and not s.fully_equivariant


def test_float64_weights_keep_float64_precision():
    """Weights were copied into float32 modules before the cast to the source dtype (projection rel. error ~2e-8)."""
    g = GMRConv(2, 3, 4, 5).double()
    with torch.no_grad():
        g.bias.normal_()
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    for src in (gmr_to_dense_conv(g), nn.Sequential(nn.Conv2d(3, 4, 5, stride=2, padding=2).double())):
        new = convert_to_gmr(src, weights="project")
        assert all(p.dtype == torch.float64 for p in new.parameters())
    new = convert_to_gmr(gmr_to_dense_conv(g), weights="project")
    with torch.no_grad():
        assert rel_err(new(x), g(x)) <= 1e-12
    c1 = nn.Conv2d(3, 4, 1, stride=2).double()
    t1 = nn.ConvTranspose2d(3, 4, 1, stride=2, output_padding=1).double()
    p1, u1 = convert_to_gmr(c1), convert_to_gmr(t1)
    assert torch.equal(p1.conv.weight, c1.weight) and torch.equal(p1.conv.bias, c1.bias)
    assert torch.equal(u1.conv.weight, t1.weight.transpose(0, 1)) and torch.equal(u1.conv.bias, t1.bias)


def test_segresnetvae_flattening_linears_reported():
    """SegResNetVAE's VAE branch flattens a spatial map into ``vae_fc1/2`` and reshapes ``vae_fc3``'s output to one:
    the audit called the converted net fully equivariant. The segmentation output stays exact (the VAE branch runs
    only in training); the VAE loss depends on the orientation (measured)."""
    from monai.networks.nets import SegResNetVAE

    orig = SegResNetVAE(input_image_size=(16, 16), spatial_dims=2, init_filters=8, in_channels=1, out_channels=2,
                        blocks_down=(1, 1, 1), blocks_up=(1, 1), vae_nz=8)  # fmt: skip
    net, s = convert_to_gmr(orig, return_summary=True)
    assert sorted(s.non_equivariant) == ["vae_fc1", "vae_fc2", "vae_fc3"] and not s.fully_equivariant
    assert "no global pooling" in s.non_equivariant["vae_fc1"] and not s.unknown
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        y = net.eval()(x)[0]
        assert max(rel_err(net(g(x))[0], g(y)) for g in d4_elements()) <= 1e-4

        def vae_loss(inp: torch.Tensor) -> float:
            torch.manual_seed(1)  # the same latent noise for every orientation
            return float(net.train()(inp)[1])

        ref = vae_loss(x)
        assert vae_loss(x) == ref and max(abs(vae_loss(g(x)) - ref) / ref for g in d4_elements()) > 1e-3


def test_audit_linear_layers_by_what_precedes_them():
    """A Linear after global pooling (also through Flatten / activations / dropout / another Linear) is invariant and
    not reported; one reading a flattened map (no pooling, a non-global adaptive pool) is."""
    from monai.networks.blocks import ChannelSELayer

    head = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 8),
                         nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 2))  # fmt: skip
    s = audit_equivariance(head)
    assert set(s.non_equivariant) == {"0"}  # only the learned conv
    flat = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    assert set(audit_equivariance(flat).non_equivariant) == {"0", "3"}
    for pool in (nn.AdaptiveAvgPool2d(2), nn.AdaptiveMaxPool2d((1, None))):
        s = audit_equivariance(nn.Sequential(GMRConv(2, 1, 4, 3), pool, nn.Flatten(), nn.Linear(16, 2)))
        assert "3" in s.non_equivariant, pool
    # squeeze-and-excitation: global pooling then Linear layers, invariant per channel
    se = nn.Sequential(GMRConv(2, 1, 4, 3), ChannelSELayer(2, 4, r=2))
    assert audit_equivariance(se).fully_equivariant
    # the classification heads of MONAI ResNet / DenseNet121 (global pooling -> fc) stay unreported after conversion
    for name in ("ResNet", "DenseNet121"):
        s = convert_to_gmr(NETS[name][0](), replace_pooling=True, return_summary=True)[1]
        assert s.fully_equivariant, (name, s.non_equivariant)


def test_highresnet_3d_channel_padding_is_known_equivariant():
    """MONAI's HighResNet (3D; dilated 3x3x3 convs, residual channel matching by ``ChannelPad``): every conv converts,
    but the summary listed each ``ChannelPad`` as unknown, so ``fully_equivariant`` was False for an exactly
    equivariant net. ``ChannelPad`` only adds zero channels; it now counts as equivariant."""
    from monai.networks.layers.simplelayers import ChannelPad
    from monai.networks.nets import HighResNet

    torch.manual_seed(0)
    params = ({"name": "conv_0", "n_features": 2, "kernel_size": 3},
              {"name": "res_1", "n_features": 4, "kernels": (3, 3), "repeat": 1},
              {"name": "conv_1", "n_features": 4, "kernel_size": 1}, {"name": "conv_2", "kernel_size": 1})  # fmt: skip
    net, summary = convert_to_gmr(HighResNet(3, 1, 2, layer_params=params), return_summary=True)
    assert not summary.unknown and not summary.non_equivariant and summary.fully_equivariant
    net.eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        y = net(x)
        for g in cube_elements()[::7]:
            assert rel_err(net(g(x)), g(y)) < 1e-4
    # a ChannelPad that also pads space would not be equivariant: still reported
    odd = ChannelPad(3, 2, 4)
    odd.pad = (1, 0) + odd.pad[2:]
    assert set(audit_equivariance(nn.Sequential(odd)).unknown) == {"0"}


def test_project_to_a_smaller_kernel_keeps_the_centre():
    """``kernel_size`` smaller than the conv's with ``weights="project"``: the dense kernel is centre-cropped before the
    projection, so a 5x5 kernel whose centre 3x3 is a GMR kernel (and whose border is noise) becomes that GMR conv."""
    torch.manual_seed(0)
    g = GMRConv(2, 2, 3, 3)
    conv = nn.Conv2d(2, 3, 5, padding=2)
    with torch.no_grad():
        conv.weight.normal_()
        conv.weight[:, :, 1:4, 1:4] = g.dense_kernel()
        conv.bias.copy_(g.bias)
    new = convert_to_gmr(conv, kernel_size=3, weights="project")
    assert isinstance(new, GMRConv) and new.kernel_size == 3
    x = torch.randn(1, 2, 9, 11)
    with torch.no_grad():
        assert rel_err(new(x), g(x)) <= 1e-5


def test_replacements_keep_the_train_eval_mode():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.ConvTranspose2d(2, 2, 2, 2))
    for training in (True, False):
        new = convert_to_gmr(net.train(training))
        assert [type(m).__name__ for m in new] == ["GMRConv", "PooledConv", "UpsampledConv"]
        assert all(m.training is training for m in new.modules())


def test_audit_dilated_pools_and_strided_gmr_convs():
    """The pool rule uses the dilated window span ``di (k - 1) + 1``: a 2x2/stride-2 max pool with dilation 2 commutes
    at odd sizes only (its windows end at the far edge there), without dilation at even sizes; a strided GMRConv
    samples an off-centre sub-grid. The rule is checked against the dilated pool itself."""
    dil = nn.MaxPool2d(2, 2, dilation=2)
    net = nn.Sequential(dil, nn.MaxPool2d(2, 2), GMRConv(2, 1, 1, 3, stride=2), GMRConv(2, 1, 1, 3))
    s = audit_equivariance(net)
    assert set(s.conditions) == {"1"} and set(s.non_equivariant) == {"0", "2"}
    assert "H % 2 == 1" in s.non_equivariant["0"] and "stride 2" in s.non_equivariant["2"]
    x = torch.randn(1, 1, 11, 11)  # an odd size: the dilated pool commutes with every D4 element
    for g in d4_elements():
        assert torch.equal(dil(g(x)), g(dil(x))), g.name
    x = torch.randn(1, 1, 12, 12)
    assert not all(torch.equal(dil(g(x)), g(dil(x))) for g in d4_elements())


def test_avg_pool_3d_any_size_pads_the_depth_axis_too():
    """The two-step pooling of inputs smaller than the window pads every axis as ``nn.AvgPool3d`` would (zeros that
    count in the average): with padding 1, a one-slice input's depth window [-1, 1) holds the slice and one padded
    slice, so the result is the padded 2D pool of the slice divided by 2."""
    pool = AvgPool3dAnySize(2, 2, padding=1, ceil_mode=True)
    pool.kernel_size, pool.stride, pool.padding = (2, 2, 2), (2, 2, 2), (1, 1, 1)  # as convert_to_gmr sets them
    x = torch.randn(2, 3, 1, 4, 5)
    ref = nn.AvgPool2d(2, 2, padding=1, ceil_mode=True)(x[:, :, 0]) / 2
    y = pool(x)
    assert y.shape == (2, 3, 1, 3, 3) and torch.allclose(y[:, :, 0], ref, atol=1e-6)
    one = torch.randn(1, 1, 1, 1, 1)
    assert torch.allclose(pool(one), one / 8)  # one real voxel in a 2x2x2 window of zeros


def test_avg_pool_3d_any_size_takes_int_arguments_as_nn_avg_pool_3d_does():
    """``AvgPool3dAnySize(2)`` (int kernel/stride/padding, as ``nn.AvgPool3d`` is usually built) pools like
    ``nn.AvgPool3d(2)``; its forward indexed ``kernel_size[0]`` and raised ``TypeError: 'int' object is not
    subscriptable`` on every input, large or small."""
    torch.manual_seed(0)
    pool = AvgPool3dAnySize(2, padding=1, ceil_mode=True)
    x = torch.randn(2, 3, 4, 5, 6)
    assert torch.equal(pool(x), nn.AvgPool3d(2, padding=1, ceil_mode=True)(x))
    small = torch.randn(1, 2, 1, 4, 5)  # smaller than the window in depth: the two-step path
    tupled = AvgPool3dAnySize(2, padding=1, ceil_mode=True)
    tupled.kernel_size, tupled.stride, tupled.padding = (2, 2, 2), (2, 2, 2), (1, 1, 1)
    assert torch.allclose(pool(small), tupled(small), atol=1e-6)


def test_avg_pool_3d_any_size_honours_divisor_override_on_small_inputs():
    """With ``divisor_override`` the window sum is divided by it, as ``nn.AvgPool3d`` does: the two-step path of
    inputs smaller than the window averaged each step instead (a sum pool, ``divisor_override=1``, returned means)."""
    torch.manual_seed(0)
    pool = AvgPool3dAnySize((2, 2, 2), (2, 2, 2), (0, 0, 0), ceil_mode=True, divisor_override=3)
    small = torch.rand(2, 3, 1, 4, 6)  # one slice: each window holds a 2x2 block of it
    ref = small[:, :, 0].reshape(2, 3, 2, 2, 3, 2).sum((3, 5))[:, :, None] / 3
    assert torch.allclose(pool(small), ref, atol=1e-6)
    big = torch.rand(2, 3, 2, 4, 6)  # the nn.AvgPool3d path agrees
    assert torch.allclose(pool(big), nn.AvgPool3d(2, 2, 0, True, divisor_override=3)(big), atol=1e-6)


@pytest.mark.parametrize("pool_mode", ["avg", "max"])
def test_pool_mode_picks_the_pool_of_strided_convs(pool_mode):
    want2 = nn.MaxPool2d if pool_mode == "max" else nn.AvgPool2d
    want3 = nn.MaxPool3d if pool_mode == "max" else AvgPool3dAnySize
    new2 = convert_to_gmr(nn.Conv2d(2, 3, 3, stride=2, padding=1), pool_mode=pool_mode)
    new3 = convert_to_gmr(nn.Conv3d(2, 3, 3, stride=2, padding=1), pool_mode=pool_mode)
    assert type(new2.pool) is want2 and type(new3.pool) is want3


def test_exclude_name_covers_its_submodules_but_not_longer_names():
    """``exclude="conv1"`` keeps ``conv1`` and everything under ``conv1.`` but not ``conv10``: a prefix match without
    the dot would silently leave every module whose name merely starts with the same characters unconverted."""
    from collections import OrderedDict

    net = nn.Sequential(OrderedDict(conv1=nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)), conv10=nn.Conv2d(2, 2, 3, padding=1)))
    new, summary = convert_to_gmr(net, exclude="conv1", return_summary=True)
    assert isinstance(new.conv1[0], nn.Conv2d) and isinstance(new.conv10, GMRConv)
    assert summary.kept == {"conv1": "excluded"} and summary.counts == {"conv": 1, "excluded": 1}


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_transposed_conv_upsampling_is_align_corners_false(mode):
    """The interpolation replacing a strided transposed conv uses ``align_corners=False``, like GMRUNet's
    (:func:`monai_gmr.nets.unet.make_upsample`). ``True`` is just as equivariant, so only the values tell them apart."""
    from monai_gmr.nets.unet import make_upsample

    torch.manual_seed(0)
    new = convert_to_gmr(nn.ConvTranspose2d(2, 3, 2, stride=2), upsample_mode=mode)
    assert isinstance(new, UpsampledConv) and new.upsample.align_corners is False
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    ref = F.interpolate(x, scale_factor=2, mode=mode, align_corners=False)
    assert torch.allclose(new.upsample(x), ref) and torch.allclose(make_upsample(2, 2, mode)(x), ref)


def test_already_gmr_counts_gmr_convs_not_replacement_blocks():
    """A second conversion counts the GMR convs it meets (``already_gmr``). A PooledConv / UpsampledConv that holds a
    1x1 ``nn.Conv`` (from a strided / transposed pointwise conv) holds none and must not count as one."""
    net = nn.Sequential(
        nn.Conv2d(1, 2, 1, stride=2), nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.ConvTranspose2d(2, 2, 1, stride=2, output_padding=1)
    )
    once, s1 = convert_to_gmr(net, return_summary=True)
    assert s1.counts == {"strided_pointwise": 1, "strided_conv": 1, "transposed_pointwise": 1}
    assert isinstance(once[0], PooledConv) and isinstance(once[2], UpsampledConv)
    _, s2 = convert_to_gmr(once, return_summary=True)
    assert s2.counts == {"already_gmr": 1} and not s2.converted


def test_replace_pooling_keeps_count_include_pad():
    """A replaced average pool keeps ``count_include_pad``. Kernel 2 / stride 4 becomes kernel = stride = 4 with
    padding 1, so the border windows reach into the padding: with ``count_include_pad=False`` a constant image must
    stay constant (a replacement that always counted the padding darkened every border window)."""
    for include in (False, True):
        new = convert_to_gmr(nn.Sequential(nn.AvgPool2d(2, 4, count_include_pad=include)), replace_pooling=True)
        pool = new[0]
        assert isinstance(pool, nn.AvgPool2d) and tuple(pool.padding) == (1, 1) and pool.count_include_pad is include
        x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
        assert torch.allclose(pool(x), F.avg_pool2d(x, 4, 4, 1, count_include_pad=include))
        ones = pool(torch.ones(1, 1, 8, 8, dtype=torch.float64))
        assert torch.equal(ones, torch.ones_like(ones)) is (not include)


def test_replace_pooling_keeps_an_average_pool_with_divisor_override():
    """A sum-like average pool (``divisor_override``) was swapped for a kernel=stride pool without the override: a
    3x3/stride-2/pad-1 pool with divisor 1 gave 9.0 on ones, its replacement 1.0. It is kept now, and said so."""
    net = nn.Sequential(nn.AvgPool2d(3, 2, 1, divisor_override=1))
    x = torch.ones(1, 1, 8, 8)
    new, summary = convert_to_gmr(net, replace_pooling=True, return_summary=True)
    assert new[0] is not net[0] and isinstance(new[0], nn.AvgPool2d)  # a copy (inplace=False), not replaced
    assert torch.equal(new(x), net(x)) and net(x)[0, 0, 1, 1] == 9.0
    assert "divisor_override=1" in summary.kept["0"] and summary.counts == {"pool_kept": 1}
    assert "0" in summary.non_equivariant  # its off-centre window grid is still listed
    plain = convert_to_gmr(nn.Sequential(nn.AvgPool2d(3, 2, 1)), replace_pooling=True)  # no override: replaced
    assert tuple(plain[0].kernel_size) == (2, 2)


@pytest.mark.parametrize("weights", ["init", "project"])
def test_convs_sharing_a_weight_parameter_stay_tied(weights):
    """Two distinct convs sharing one weight Parameter (tying without a shared module) were converted into two
    independent GMR convs, silently: 3 parameters became 6 and training let the kernels drift apart."""
    torch.manual_seed(0)
    net = nn.Module()
    net.a = nn.Conv2d(2, 2, 3, padding=1)
    net.b = nn.Conv2d(2, 2, 3, padding=1)  # own bias
    net.c = nn.Conv2d(2, 2, 3, stride=2, padding=1)  # strided: a PooledConv around the tied GMRConv
    net.b.weight = net.a.weight
    net.c.weight, net.c.bias = net.a.weight, net.a.bias
    new = convert_to_gmr(net, weights=weights)
    a, b, c = new.a, new.b, new.c.conv
    assert isinstance(a, GMRConv) and isinstance(c, GMRConv)
    assert a.weight is b.weight is c.weight and a.log_sigma is b.log_sigma is c.log_sigma
    assert c.bias is a.bias and b.bias is not a.bias
    assert len(list(new.parameters())) == 4  # weight, log_sigma, a/c bias, b bias
    assert net.a.weight is net.b.weight and isinstance(net.a, nn.Conv2d)  # the original is untouched


def test_convs_sharing_a_weight_parameter_that_cannot_stay_tied_are_warned_about(caplog):
    net = nn.Module()
    net.a = nn.Conv2d(2, 2, 3, padding=1)
    net.b = nn.Conv2d(2, 2, 3, padding=1)
    net.b.weight = net.a.weight
    with caplog.at_level(logging.WARNING, logger="monai_gmr.conversion.convert"):
        new = convert_to_gmr(net, exclude="b")
    assert isinstance(new.a, GMRConv) and isinstance(new.b, nn.Conv2d)
    assert "a, b share one weight Parameter" in caplog.text


def test_parametrized_convs_are_not_taken_for_tied_ones():
    """A parametrized weight (weight_norm) is a fresh tensor on every access; grouping convs by ``id(conv.weight)``
    would see reused ids and tie distinct convs."""
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    net = nn.Sequential(*[weight_norm(nn.Conv2d(2, 2, 3, padding=1)) for _ in range(4)])
    new = convert_to_gmr(net)
    assert all(isinstance(m, GMRConv) for m in new)
    assert len({id(m.weight) for m in new}) == 4 and len(list(new.parameters())) == 12


@pytest.mark.parametrize("mode", ["reflect", "circular"])
def test_strided_reflect_circular_small_input_names_module_and_min_size(mode):
    """A strided reflect/circular conv pads the smaller pooled map in its replacement: at input sizes where the
    original still works but the pooled map is too small, the error names the module and the smallest input size
    (torch's bare "Padding size should be less than ..." / "wrapping around more than once" before); from that size
    on the output shape is the original's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4, 5, stride=3, padding=2, padding_mode=mode))
    gmr = convert_to_gmr(net)
    need = 7 if mode == "reflect" else 4  # pooled size (H - 1) // 3 + 1 must exceed 2 (reflect) / reach 2 (circular)
    assert gmr[0].min_size == (need, need)
    small = torch.randn(1, 4, need - 1, need - 1)
    net(small)  # the original accepts it
    with pytest.raises(ValueError, match=rf"^0: input spatial size \[{need - 1}, {need - 1}\].*at least \[{need}, {need}\]"):
        gmr(small)
    for h in (need, 8):
        x = torch.randn(1, 4, h, h)
        assert gmr(x).shape == net(x).shape
    # zero padding has no such limit
    assert convert_to_gmr(nn.Conv2d(4, 4, 5, stride=3, padding=2)).min_size == ()


def test_conv1d_left_alone_is_a_warning_naming_it(caplog):
    """nn.Conv1d / nn.ConvTranspose1d stay (GMR convs are 2D/3D) but were only listed in summary.unknown, silently."""
    net = nn.Sequential(nn.Conv1d(2, 2, 3, padding=1), nn.ReLU(), nn.ConvTranspose1d(2, 2, 2, stride=2), nn.Conv2d(2, 2, 3))
    with caplog.at_level(logging.WARNING, logger="monai_gmr.conversion.convert"):
        out, summary = convert_to_gmr(net, return_summary=True)
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "1D convolutions" in r.getMessage()]
    assert len(msgs) == 1 and "0, 2" in msgs[0]
    assert type(out[0]) is nn.Conv1d and type(out[2]) is nn.ConvTranspose1d and isinstance(out[3], GMRConv)
    assert {"0", "2"} <= set(summary.unknown)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_gmr.conversion.convert"):
        convert_to_gmr(net, exclude=["0", "2"])  # excluded on purpose: no warning
    assert not any("1D convolutions" in r.getMessage() for r in caplog.records)


def test_scripted_submodules_left_alone_are_a_warning_naming_them(caplog):
    """A conv inside a torch.jit.script'ed module cannot be replaced: the model came back unchanged with only
    ``summary.unknown: RecursiveScriptModule`` and no warning (as 1D convs were before)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), torch.jit.script(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU())))
    with caplog.at_level(logging.WARNING, logger="monai_gmr.conversion.convert"):
        out, summary = convert_to_gmr(net, return_summary=True)
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "TorchScript" in r.getMessage()]
    assert len(msgs) == 1 and "'1'" in msgs[0] and "before torch.jit.script" in msgs[0]
    assert isinstance(out[0], GMRConv) and isinstance(out[1], torch.jit.ScriptModule)
    assert "Conv2d" in summary.unknown["1.0"] and "TorchScript" in summary.unknown["1.0"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_gmr.conversion.convert"):
        whole = convert_to_gmr(torch.jit.script(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1))))
    assert isinstance(whole, torch.jit.ScriptModule)
    assert any("TorchScript" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_gmr.conversion.convert"):
        convert_to_gmr(net, exclude=["1"])  # excluded on purpose: no warning
        convert_to_gmr(nn.Sequential(nn.Conv2d(2, 2, 3), torch.jit.script(nn.ReLU())))  # no conv inside: no warning
        convert_to_gmr(nn.Sequential(nn.Conv2d(2, 2, 3), torch.jit.script(nn.Conv2d(2, 2, 1))))  # a 1x1 conv stays anyway
    assert not any("TorchScript" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_reconverting_a_dense_export_converts_the_convs_inside_replacement_blocks():
    """``export_dense`` of a converted net keeps its PooledConv / UpsampledConv blocks with a dense k > 1 conv inside;
    converting that back (``weights="project"``, exact for the export of an untrained one) skipped those blocks as "already GMR"
    and left their convs dense (listed as "learned 3x3 Conv2d kernel (not converted)"): 1 of 5 convs came back."""
    torch.manual_seed(0)
    once = convert_to_gmr(UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=0)).eval()
    dense = export_dense(once)
    back, summary = convert_to_gmr(dense, weights="project", return_summary=True)
    n_gmr = sum(isinstance(m, GMRConv) for m in once.modules())
    assert sum(isinstance(m, GMRConv) for m in back.modules()) == n_gmr == 5
    assert summary.counts == {"conv": 5} and not summary.non_equivariant
    assert isinstance(back.model[0].conv, PooledConv) and isinstance(back.model[0].conv.conv, GMRConv)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(back.eval()(x), once(x), atol=1e-5)
    excluded, s2 = convert_to_gmr(dense, exclude=["model.0.conv.conv"], return_summary=True)
    assert type(excluded.model[0].conv.conv) is nn.Conv2d and "model.0.conv.conv" in s2.kept
    block, s3 = convert_to_gmr(dense, exclude=["model.0.conv"], return_summary=True)  # the whole block excluded
    assert type(block.model[0].conv.conv) is nn.Conv2d and "model.0.conv" in s3.kept


def test_uninitialised_lazy_convs_are_refused_naming_them():
    """An uninitialised ``nn.LazyConv2d`` (no in_channels yet) stopped in "spatial_dims must be 2 or 3, got
    spatial_dims=-1", which names neither the layer nor the cause."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Sequential(nn.LazyConv2d(4, 3, padding=1)), nn.LazyBatchNorm2d())
    with pytest.raises(ValueError, match=r"'1\.0'.*LazyConv2d.*example input"):
        convert_to_gmr(net, inplace=True)
    assert type(net[0]) is nn.Conv2d  # nothing changed
    out = convert_to_gmr(net, exclude=["1.0"], inplace=True)  # excluded: kept as it is (a deep copy needs values)
    assert isinstance(out[0], GMRConv) and isinstance(out[1][0], nn.LazyConv2d)
    net(torch.randn(1, 3, 8, 8))  # initialised: converts
    assert isinstance(convert_to_gmr(net)[1][0], GMRConv)


def test_hooks_on_replaced_modules_are_named_in_a_warning(caplog):
    """A forward / forward-pre hook registered on a conv that convert_to_gmr replaces (inplace or in the copy, which
    deepcopy gives the same hooks) was dropped silently: the replacement has none, so e.g. a feature-extraction hook
    stopped firing without a word. A warning now names those modules; kept modules keep their hooks (no warning)."""
    torch.manual_seed(0)
    calls = []
    for inplace in (True, False):
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 1))
        model[0].register_forward_hook(lambda m, i, o: calls.append("fwd"))
        model[2].register_forward_pre_hook(lambda m, i: calls.append("pre"))
        model[1].register_forward_hook(lambda m, i, o: calls.append("relu"))  # kept: its hook still fires
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="monai_gmr.conversion.convert"):
            out = convert_to_gmr(model, inplace=inplace)
        msgs = [r.getMessage() for r in caplog.records if "hook" in r.getMessage()]
        assert len(msgs) == 1 and "'0'" in msgs[0] and "'2'" in msgs[0] and "'1'" not in msgs[0], msgs
        calls.clear()
        out(torch.randn(1, 1, 8, 8))
        assert calls == ["relu"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_gmr.conversion.convert"):
        convert_to_gmr(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    assert not [r for r in caplog.records if "hook" in r.getMessage()]
    single = nn.Conv2d(1, 2, 3, padding=1)
    single.register_forward_hook(lambda m, i, o: None)
    with caplog.at_level(logging.WARNING, logger="monai_gmr.conversion.convert"):
        convert_to_gmr(single)
    assert any("hook" in r.getMessage() and "Conv2d" in r.getMessage() for r in caplog.records)


def test_uninitialised_lazy_convs_that_stay_are_not_refused():
    """Only a lazy conv the converter would replace needs its in_channels: a lazy 1x1 stride-1 head stays as it is,
    and such a model converted before the lazy check was added; the model itself a lazy conv is named by its type."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.LazyConv2d(2, 1))
    out = convert_to_gmr(net)
    assert isinstance(out[0], GMRConv) and isinstance(out[2], nn.LazyConv2d)
    assert out(torch.randn(1, 3, 8, 8)).shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"'LazyConv2d' \(LazyConv2d\)"):
        convert_to_gmr(nn.LazyConv2d(2, 3))
