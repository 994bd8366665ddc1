"""GMRResNet / gmr_resnet18/34/50: shapes, exact logit invariance (D4 / cube group), features, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_gmr.functional import cube_elements, d4_elements
from monai_gmr.nets import GMRResNet, gmr_resnet18, gmr_resnet34, gmr_resnet50
from monai_gmr.nn import GMRConv
from tests.conftest import rel_err

TINY = {"block_inplanes": (4, 8, 8, 16), "kernel_sizes": (5, 5, 3, 3)}
CUBE_SAMPLE = [cube_elements()[i] for i in (0, 1, 10, 19, 30, 47)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _invariance(net: nn.Module, x: torch.Tensor, elements) -> dict[str, float]:
    with torch.no_grad():
        y = net(x)
        return {g.name: rel_err(net(g(x)), y) for g in elements}


@pytest.mark.parametrize("fn, n_blocks, expansion", [(gmr_resnet18, 8, 1), (gmr_resnet34, 16, 1), (gmr_resnet50, 16, 4)])
def test_shapes_and_d4_invariance_2d(fn, n_blocks, expansion):
    net = fn(spatial_dims=2, in_channels=3, num_classes=5, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 5)
    assert net.forward_features(x).shape == (2, 16 * expansion) and net.num_features == 16 * expansion
    blocks = [m for m in net.modules() if type(m).__name__.startswith("GMRResNet") and m is not net]
    assert len(blocks) == n_blocks
    # the recipe: no strided conv anywhere, no 3x3/stride-2 max pool, no transposed conv
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, GMRConv)):
            assert (m.stride if isinstance(m, GMRConv) else m.stride[0]) == 1
        assert not isinstance(m, nn.MaxPool2d)
    errs = _invariance(net, x, d4_elements())
    assert len(errs) == 8 and max(errs.values()) <= 1e-4, errs


def test_paper_default_kernels_and_train_mode_invariance():
    net = gmr_resnet18(2, 3, 2, block_inplanes=(4, 8, 8, 16))
    assert net.kernel_sizes == (9, 9, 5, 5)
    assert net.stem[0].kernel_size == 9 and net.layer1[0].conv1.kernel_size == 9 and net.layer4[0].conv1.kernel_size == 5
    x = torch.randn(4, 3, 32, 32)
    errs = _invariance(net.train(), x, d4_elements())  # batch-norm batch statistics are invariant too
    assert max(errs.values()) <= 1e-4, errs


def test_invariant_after_training():
    net = gmr_resnet18(2, 1, 2, **TINY)
    x = torch.randn(4, 1, 32, 32)
    y = (x.mean((1, 2, 3)) > 0).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    errs = _invariance(net.eval(), torch.randn(2, 1, 32, 32), d4_elements())
    assert max(errs.values()) <= 1e-4, errs


def test_cube_sample_invariance_3d():
    net = gmr_resnet18(spatial_dims=3, in_channels=1, num_classes=3, block_inplanes=(2, 4, 4, 8), kernel_sizes=3).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    assert net(x).shape == (2, 3)
    errs = _invariance(net, x, CUBE_SAMPLE)
    assert max(errs.values()) <= 1e-4, errs


@pytest.mark.slow
def test_cube_all_48_invariance_3d():
    net = gmr_resnet50(spatial_dims=3, in_channels=1, num_classes=3, block_inplanes=(2, 4, 4, 8), kernel_sizes=3).eval()
    errs = _invariance(net, torch.randn(2, 1, 16, 16, 16), cube_elements())
    assert len(errs) == 48 and max(errs.values()) <= 1e-4, errs


def test_divisibility_rule_measured():
    net = gmr_resnet18(2, 1, 2, **TINY).eval()
    assert net.downsample_factor == 16
    assert max(_invariance(net, torch.randn(2, 1, 48, 48), d4_elements()).values()) <= 1e-4
    # 40 is not divisible by 16: the floor pooling at the 5x5 -> 2x2 level drops a row/column -> not exact
    assert max(_invariance(net, torch.randn(2, 1, 40, 40), d4_elements()).values()) > 1e-3
    no_pool = gmr_resnet18(2, 1, 2, no_max_pool=True, conv1_t_stride=2, **TINY)
    assert no_pool.downsample_factor == 16 and isinstance(no_pool.stem[0], nn.AvgPool2d)
    # below the factor the last pool had nothing to pool: a clear error instead of PyTorch's "Output size is too
    # small" (2D) / "input image ... smaller than kernel size" (3D)
    assert net(torch.randn(1, 1, 16, 17)).shape == (1, 2)
    for shape in [(1, 1, 15, 16), (1, 1, 8, 8), (1, 1, 16, 16, 15)]:
        model = net if len(shape) == 4 else gmr_resnet18(3, 1, 2, **TINY).eval()
        with pytest.raises(ValueError, match="downsample_factor=16"):
            model(torch.randn(*shape))


def test_feed_forward_false_and_features():
    net = gmr_resnet34(2, 1, 2, feed_forward=False, **TINY).eval()
    x = torch.randn(2, 1, 32, 32)
    assert net.fc is None and torch.equal(net(x), net.forward_features(x))
    net2 = GMRResNet("basic", (1, 1, 1, 1), (4, 4, 8, 8), 2, 1, 3, kernel_sizes=3, stem_pooling="max", widen_factor=2.0)
    assert net2(x).shape == (2, 3) and net2.num_features == 16
    assert isinstance(net2.stem[-1], nn.MaxPool2d) and isinstance(net.stem[-1], nn.AvgPool2d)  # stem_pooling (avg default)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"kernel_sizes": (5, 5, 3)}, "kernel_sizes"),
        ({"kernel_sizes": (5, 5, 3, 4)}, "kernel_sizes"),
        ({"layers": (2, 2, 2)}, "layers"),
        ({"block_inplanes": (4, 8)}, "block_inplanes"),
        ({"block": "wide"}, "block"),
        ({"conv1_t_size": 4}, "conv1_t_size"),
        ({"conv1_t_stride": 0}, "conv1_t_stride"),
        ({"conv1_t_size": (7, 5)}, "isotropic"),
        ({"conv1_t_stride": (2, 1)}, "isotropic"),
        ({"stem_pooling": "lp"}, "stem_pooling"),
        ({"num_classes": 0}, "num_classes"),
        ({"out_channels": 0}, "num_classes"),
        ({"num_classes": 2, "out_channels": 3}, "out_channels"),
        ({"stride": 2}, "stride"),  # GMR keywords only (was a TypeError from the blocks)
        ({"padding": 0}, "padding"),  # was accepted: 'valid' GMR convs, failing in forward
        ({"smothing": "none"}, "smothing"),
        # a width of 0 reached GMRConv, whose error named out_channels (here the alias of num_classes); a str
        # factor ("2", e.g. from a config) repeated the digits and tried to allocate hundreds of GB
        ({"widen_factor": 0.1}, "widen_factor"),
        ({"widen_factor": -1.0}, "widen_factor"),
        ({"widen_factor": "2"}, "widen_factor"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"block": "basic", "layers": (1, 1, 1, 1), "block_inplanes": (4, 8, 8, 16), "spatial_dims": 2,
            "in_channels": 1, "num_classes": 2, "kernel_sizes": 3}  # fmt: skip
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GMRResNet(**args)


def test_monai_style_tuple_stem_arguments():
    """MONAI's ResNet takes conv1_t_size / conv1_t_stride as per-dim tuples; GMRResNet rejected them: a tuple that
    repeats one value now means that value (same layers as the int)."""
    args = {"block": "basic", "layers": (1, 1, 1, 1), "block_inplanes": (4, 8, 8, 16), "spatial_dims": 3,
            "in_channels": 1, "num_classes": 2, "kernel_sizes": 3}  # fmt: skip
    a = GMRResNet(conv1_t_size=(5, 5, 5), conv1_t_stride=[2, 2, 2], **args)
    b = GMRResNet(conv1_t_size=5, conv1_t_stride=2, **args)
    assert repr(a) == repr(b) and a.downsample_factor == b.downsample_factor == 32


@pytest.mark.parametrize("fn", [gmr_resnet18, gmr_resnet34, gmr_resnet50])
def test_out_channels_alias_of_num_classes(fn):
    """``get_network`` documents ``out_channels / num_classes``; GMRResNet raised TypeError for out_channels."""
    from monai_gmr.nets import get_network

    args = dict(spatial_dims=2, in_channels=1, **TINY)
    assert fn(**args, out_channels=3).fc.out_features == 3
    assert fn(**args, num_classes=3, out_channels=3).num_classes == 3
    assert fn(**args).fc.out_features == 2  # default
    with pytest.raises(ValueError, match="out_channels"):
        fn(**args, num_classes=3, out_channels=4)
    if fn is gmr_resnet18:
        assert get_network("gmr_resnet18_tiny", out_channels=5).fc.out_features == 5
        assert GMRResNet(layers=(1, 1, 1, 1), out_channels=4, **args).num_classes == 4


def test_dilation_passes_through_and_stays_invariant():
    torch.manual_seed(0)
    net = gmr_resnet18(spatial_dims=2, in_channels=1, num_classes=3, **TINY, dilation=2).eval()
    assert all(m.dilation == 2 for m in net.modules() if isinstance(m, GMRConv))
    err = _invariance(net, torch.randn(2, 1, 32, 32), d4_elements())
    assert max(err.values()) < 1e-4


def test_bad_input_shape():
    net = gmr_resnet18(2, 3, 2, **TINY)
    with pytest.raises(ValueError, match="in_channels=3"):
        net(torch.randn(1, 1, 32, 32))


def test_per_axis_kernel_sizes_are_named_as_such():
    """As for GMRUNet: ``kernel_sizes=(3, 3, 1)`` or per-axis tuples per stage now say the sizes are isotropic widths
    per stage (the errors said "4 ints (one per stage)" / "odd positive ints")."""
    with pytest.raises(ValueError, match=r"isotropic widths per stage, not per axis"):
        gmr_resnet18(spatial_dims=3, in_channels=1, kernel_sizes=(3, 3, 1))
    with pytest.raises(ValueError, match=r"one odd int per stage \(GMR kernels are isotropic"):
        gmr_resnet18(spatial_dims=3, in_channels=1, kernel_sizes=[(3, 3, 3)] * 4)


@pytest.mark.parametrize("stride,in_planes", [(1, 8), (2, 4)])
def test_blocks_add_their_shortcut(stride, in_planes):
    """Both residual blocks compute ``act(main(x) + shortcut(x))``: identity shortcut when the shape is kept, pool ->
    1x1 conv -> norm otherwise (with ``bias_downsample`` as the 1x1 conv's bias), checked against the children."""
    from monai_gmr.nets.resnet import GMRResNetBlock, GMRResNetBottleneck

    torch.manual_seed(0)
    x = torch.randn(2, in_planes, 8, 8)
    for cls, planes in ((GMRResNetBlock, 8), (GMRResNetBottleneck, 2)):
        blk = cls(in_planes, planes, 2, stride, 3, bias_downsample=False).eval()
        with torch.no_grad():
            for m in blk.modules():  # non-trivial norm statistics
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_()
                    m.running_var.uniform_(0.5, 2.0)
            if cls is GMRResNetBlock:
                main = blk.bn2(blk.conv2(blk.act(blk.bn1(blk.conv1(blk.pool(x))))))
            else:
                main = blk.act(blk.bn2(blk.conv2(blk.pool(blk.act(blk.bn1(blk.conv1(x)))))))
                main = blk.bn3(blk.conv3(main))
            if stride == 1 and in_planes == planes * cls.expansion:
                assert blk.downsample is None
                short = x
            else:
                convs = [m for m in blk.downsample.modules() if isinstance(m, nn.Conv2d)]
                assert len(convs) == 1 and convs[0].bias is None  # bias_downsample=False
                short = blk.downsample(x)
                assert short.shape == main.shape
            assert torch.allclose(blk(x), torch.relu(main + short), atol=1e-6), cls.__name__


def test_strided_blocks_pool_before_their_gmr_conv():
    """Mutation audit round 6 (RN4): the stride is an average pool *before* the GMR conv (basic block: before conv1;
    bottleneck: before conv2, as MONAI's ResNetBottleneck strides conv2), so the GMR conv runs on the pooled map. The
    shortcut test above could not see a bottleneck pooling after conv2: its randomised norm statistics zero that
    branch after the ReLU."""
    from monai_gmr.nets.resnet import GMRResNetBlock, GMRResNetBottleneck

    torch.manual_seed(0)
    for cls, name in ((GMRResNetBlock, "conv1"), (GMRResNetBottleneck, "conv2")):
        blk = cls(4, 4, 2, 2, 3, norm=None).eval()
        seen = []
        getattr(blk, name).register_forward_hook(lambda m, i, o: seen.append((tuple(i[0].shape), tuple(o.shape))))
        x = torch.randn(1, 4, 8, 8)
        with torch.no_grad():
            y = blk(x)
        assert seen == [((1, 4, 4, 4), (1, 4, 4, 4))], cls.__name__
        if cls is GMRResNetBottleneck:
            with torch.no_grad():
                main = blk.conv3(blk.act(blk.conv2(blk.pool(blk.act(blk.conv1(x))))))
                assert torch.allclose(y, torch.relu(main + blk.downsample(x)), atol=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
def test_projection_shortcut_is_pool_then_1x1_conv_then_norm(stride):
    """The projection shortcut is average pool (kernel = stride) -> 1x1 conv -> norm (module docstring). The block test
    computes its reference through ``blk.downsample`` itself, so a shortcut that lost its norm passed every test."""
    from monai_gmr.nets.resnet import GMRResNetBlock, GMRResNetBottleneck

    for cls in (GMRResNetBlock, GMRResNetBottleneck):
        blk = cls(4, 8, 2, stride, 3)
        expected = ([nn.AvgPool2d] if stride > 1 else []) + [nn.Conv2d, nn.BatchNorm2d]
        assert [type(m) for m in blk.downsample] == expected, cls.__name__
        assert blk.downsample[-2].kernel_size == (1, 1) and blk.downsample[-1].num_features == 8 * cls.expansion
        if stride > 1:
            assert blk.downsample[0].kernel_size == blk.downsample[0].stride == stride


def test_features_are_the_global_average_of_the_last_stage():
    """``forward_features`` is global *average* pooling of ``layer4`` (module docstring). A global max pool is just as
    invariant, so the invariance tests passed with it; compare against the mean of the last stage."""
    torch.manual_seed(0)
    net = gmr_resnet18(2, 1, 2, **TINY).eval()
    x = torch.randn(2, 1, 64, 64)  # layer4 is 4x4: mean and max differ
    with torch.no_grad():
        h = net.layer4(net.layer3(net.layer2(net.layer1(net.stem(x)))))
        assert h.shape[2:] == (4, 4)
        assert torch.allclose(net.forward_features(x), h.mean((2, 3)), atol=1e-6)
        assert torch.allclose(net(x), net.fc(h.mean((2, 3))), atol=1e-6)


@pytest.mark.parametrize("fn", [gmr_resnet18, gmr_resnet50])
def test_norm_none_and_act_none_build_identities_and_stay_invariant(fn):
    """``norm=None`` / ``act=None`` mean "none", as for GMRUNet; they failed inside MONAI's factory with "cannot unpack
    non-iterable NoneType object", naming neither argument."""
    torch.manual_seed(0)
    net = fn(in_channels=1, num_classes=3, norm=None, act=None, **TINY).eval()
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in net.modules())
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 3)
        assert max(rel_err(net(g(x)), y) for g in d4_elements()) <= 1e-4


def test_numpy_integer_channels_and_classes_are_accepted():
    """``num_classes=labels.max() + 1`` is a NumPy integer, which nn.Linear, GMRConv and GMRUNet take; GMRResNet
    refused it ("num_classes ... must be a positive int, got num_classes=np.int64(3)")."""
    np = pytest.importorskip("numpy")
    torch.manual_seed(0)
    net = gmr_resnet18(in_channels=np.int64(1), num_classes=np.int64(3), **TINY)
    assert type(net.num_classes) is int and type(net.in_channels) is int
    assert net.eval()(torch.randn(1, 1, 16, 16)).shape == (1, 3)
    with pytest.raises(ValueError, match="num_classes"):
        gmr_resnet18(num_classes=np.float64(3.0), **TINY)


@pytest.mark.parametrize("stride", [0, -1, 1.5])
def test_resnet_blocks_refuse_a_stride_that_is_not_a_positive_int(stride):
    """A stride of 0 or -1 built a stride-1 block without a word (``stride > 1`` was the only test)."""
    from monai_gmr.nets.gcnn import GCNNResNetBlock
    from monai_gmr.nets.resnet import GMRResNetBlock, GMRResNetBottleneck

    for build in (lambda: GMRResNetBlock(4, 4, 2, stride=stride), lambda: GMRResNetBottleneck(4, 4, 2, stride=stride),
                  lambda: GCNNResNetBlock(4, 4, stride=stride)):  # fmt: skip
        with pytest.raises(ValueError, match="stride"):
            build()
    assert isinstance(GMRResNetBlock(4, 4, 2, stride=2).pool, torch.nn.AvgPool2d)


def test_monai_block_classes_mean_their_gmr_counterparts():
    """A config ported from MONAI's ResNet names ``block=ResNetBlock``; it raised "takes from 3 to 8 positional
    arguments" (MONAI's block signature has ``downsample`` where GMR blocks take ``kernel_size``)."""
    from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck

    from monai_gmr.nets.resnet import GMRResNetBlock, GMRResNetBottleneck

    torch.manual_seed(0)
    for monai_block, gmr_block in ((ResNetBlock, GMRResNetBlock), (ResNetBottleneck, GMRResNetBottleneck)):
        net = GMRResNet(monai_block, (1, 1, 1, 1), (2, 2, 2, 2), spatial_dims=2, in_channels=1, num_classes=3, kernel_sizes=3)
        assert isinstance(net.layer1[0], gmr_block)
        assert net.eval()(torch.randn(1, 1, 16, 16)).shape == (1, 3)


def test_monai_resnet_keywords_n_input_channels_and_shortcut_type():
    """MONAI ResNet's ``n_input_channels`` and ``shortcut_type`` were refused as unknown GMRConv keywords."""
    args = dict(block="basic", layers=(1, 1, 1, 1), block_inplanes=(2, 2, 2, 2), spatial_dims=2, kernel_sizes=3)
    net = GMRResNet(**args, n_input_channels=1, shortcut_type="B", num_classes=2)
    assert net.in_channels == 1 and net.stem[0].in_channels == 1
    assert gmr_resnet18(n_input_channels=1, kernel_sizes=3, block_inplanes=(2, 2, 2, 2)).in_channels == 1
    assert GMRResNet(**args, in_channels=1, n_input_channels=1).in_channels == 1
    assert GMRResNet(**args).in_channels == 3  # the default is unchanged
    with pytest.raises(ValueError, match="n_input_channels"):
        GMRResNet(**args, in_channels=3, n_input_channels=1)
    with pytest.raises(ValueError, match="shortcut_type"):
        GMRResNet(**args, shortcut_type="A")


def test_stem_tuples_need_one_value_per_spatial_dim():
    """conv1_t_size=(7, 7) for a 3D net (a 2D config ported to 3D) was taken as 7 without a word; MONAI's ResNet
    wants one value per spatial dim, as now here (all equal: GMR is isotropic)."""
    with pytest.raises(ValueError, match=r"conv1_t_size must be an int or one value per spatial dim \(3\)"):
        GMRResNet("basic", (1, 1, 1, 1), spatial_dims=3, in_channels=1, num_classes=2, conv1_t_size=(7, 7))
    with pytest.raises(ValueError, match=r"conv1_t_stride .*\(2\)"):
        GMRResNet("basic", (1, 1, 1, 1), spatial_dims=2, in_channels=1, num_classes=2, conv1_t_stride=(2, 2, 2))
    net = GMRResNet("basic", (1, 1, 1, 1), spatial_dims=3, in_channels=1, num_classes=2, conv1_t_size=(5, 5, 5),
                    block_inplanes=(4, 4, 4, 4), kernel_sizes=3)
    assert isinstance(net.stem[0], GMRConv) and net.stem[0].kernel_size == 5


def test_numpy_integers_are_taken_for_the_architecture_arguments():
    """NumPy integers (e.g. sizes read from a sweep table) were refused for ``kernel_sizes``, ``layers``,
    ``block_inplanes``, ``conv1_t_size``/``conv1_t_stride`` ("must hold odd positive ints, got (np.int64(3), ...)"),
    while ``in_channels``/``num_classes``, GMRUNet and GMRConv take them."""
    import numpy as np

    torch.manual_seed(0)
    net = GMRResNet(
        "basic", [np.int64(1)] * 4, block_inplanes=tuple(np.array([4, 8, 8, 16])), kernel_sizes=np.int64(3),
        conv1_t_size=np.int64(5), conv1_t_stride=np.int64(2), in_channels=np.int64(1), num_classes=np.int64(3),
    )  # fmt: skip
    ref = GMRResNet("basic", [1] * 4, block_inplanes=(4, 8, 8, 16), kernel_sizes=3, conv1_t_size=5, conv1_t_stride=2,
                    in_channels=1, num_classes=3)  # fmt: skip
    assert net.kernel_sizes == (3, 3, 3, 3) and all(type(k) is int for k in net.kernel_sizes)
    assert [type(m).__name__ for m in net.modules()] == [type(m).__name__ for m in ref.modules()]
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    net = gmr_resnet18(block_inplanes=(4, 8, 8, 16), kernel_sizes=list(np.array([5, 5, 3, 3])))
    assert net.kernel_sizes == (5, 5, 3, 3)
    with pytest.raises(ValueError, match="kernel_sizes must hold odd"):
        gmr_resnet18(kernel_sizes=np.float64(3.0))
