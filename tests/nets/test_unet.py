"""GMRUNet: shapes (2D/3D), exact D4 / cube-group equivariance at init and after training, padding, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_gmr.functional import cube_elements, d4_elements
from monai_gmr.nets import GMRUNet
from monai_gmr.nets.unet import make_upsample
from tests.conftest import rel_err

TINY = {"features": (4, 8, 8, 16), "kernel_sizes": (5, 5, 3, 3)}
TINY3D = {"features": (2, 4, 4, 8), "kernel_sizes": (3, 3, 3, 3)}
# a sample of cube symmetries for the default suite: identity, a pure flip, a 90-degree turn, a 3-cycle with flips,
# an odd permutation with all flips (the full 48 run in the slow test)
CUBE_SAMPLE = [cube_elements()[i] for i in (0, 1, 10, 19, 30, 47)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _equiv_errors(net: nn.Module, x: torch.Tensor, elements) -> dict[str, float]:
    with torch.no_grad():
        y = net(x)
        return {g.name: rel_err(net(g(x)), g(y)) for g in elements}


def _train(net: nn.Module, x: torch.Tensor, steps: int = 20) -> list[float]:
    """A few Adam steps on a synthetic task (foreground = smoothed input above zero)."""
    y = (F.avg_pool2d(x[:, :1], 3, 1, 1) > 0).long()[:, 0] if x.ndim == 4 else (F.avg_pool3d(x[:, :1], 3, 1, 1) > 0).long()[:, 0]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_shapes_2d_3d():
    net2 = GMRUNet(2, 3, 5, **TINY)
    assert net2(torch.randn(2, 3, 32, 24)).shape == (2, 5, 32, 24)
    net3 = GMRUNet(3, 1, 2, **TINY3D)
    assert net3(torch.randn(1, 1, 16, 8, 24)).shape == (1, 2, 16, 8, 24)
    assert net2.levels == 3 and net2.multiple == 8


def test_paper_defaults():
    net = GMRUNet(2, 3, 2)
    assert net.features == (16, 32, 64, 128) and net.kernel_sizes == (9, 9, 5, 5) and net.levels == 3
    ks = [m.kernel_size for m in net.modules() if type(m).__name__ == "GMRConv"]
    assert ks[:2] == [9, 9] and 5 in ks and set(ks) == {9, 5}
    assert not any(isinstance(m, (nn.ConvTranspose2d, nn.MaxPool2d)) for m in net.modules())
    x = torch.randn(1, 3, 32, 32)
    errs = _equiv_errors(net.eval(), x, d4_elements())
    assert max(errs.values()) <= 1e-4, errs


@pytest.mark.parametrize("upsample", ["bilinear", "nearest", "nearest-exact", "bicubic"])
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_d4_exact_all_modes(upsample, pooling):
    net = GMRUNet(2, 2, 3, upsample=upsample, pooling=pooling, **TINY).eval()
    # the modes reach the layers (else every parametrisation would test the default net)
    pools = [m for m in net.modules() if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d))]
    ups = [m for m in net.modules() if isinstance(m, nn.Upsample)]
    assert len(pools) == 3 and all(isinstance(m, nn.MaxPool2d if pooling == "max" else nn.AvgPool2d) for m in pools)
    assert len(ups) == 3 and all(m.mode == upsample for m in ups)
    errs = _equiv_errors(net, torch.randn(2, 2, 32, 32), d4_elements())
    assert len(errs) == 8 and max(errs.values()) <= 1e-4, errs


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_upsample_commutes_with_d4(mode):
    up = make_upsample(2, 2, mode)
    x = torch.randn(1, 2, 6, 6)
    for g in d4_elements():
        assert rel_err(up(g(x)), g(up(x))) <= 1e-6, (mode, g.name)
    # align_corners=True would commute as well; a size-changing interpolation with a non-integer factor would not
    assert up.align_corners is (None if mode == "nearest" else False)


def test_d4_exact_after_training():
    net = GMRUNet(2, 1, 2, **TINY)
    x = torch.randn(2, 1, 16, 16)
    losses = _train(net, x, steps=20)
    assert losses[-1] < losses[0]
    net.eval()
    errs = _equiv_errors(net, torch.randn(2, 1, 16, 16), d4_elements())
    assert max(errs.values()) <= 1e-4, errs
    # instance norm without running stats: train mode is the same function and exact as well
    net.train()
    errs = _equiv_errors(net, torch.randn(2, 1, 16, 16), d4_elements())
    assert max(errs.values()) <= 1e-4, errs


def test_cube_sample_exact_at_init_and_after_training():
    net = GMRUNet(3, 1, 2, **TINY3D).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    errs = _equiv_errors(net, x, CUBE_SAMPLE)
    assert max(errs.values()) <= 1e-4, errs
    _train(net, torch.randn(2, 1, 16, 16, 16), steps=20)
    errs = _equiv_errors(net.eval(), x, CUBE_SAMPLE)
    assert max(errs.values()) <= 1e-4, errs


@pytest.mark.slow
def test_cube_all_48_exact():
    net = GMRUNet(3, 1, 2, **TINY3D)
    x = torch.randn(1, 1, 16, 16, 16)
    errs = _equiv_errors(net.eval(), x, cube_elements())
    assert len(errs) == 48 and max(errs.values()) <= 1e-4, errs
    _train(net, torch.randn(2, 1, 16, 16, 16), steps=20)
    errs = _equiv_errors(net.eval(), x, cube_elements())
    assert max(errs.values()) <= 1e-4, errs


def test_not_divisible_raises_with_shape_and_rule():
    net = GMRUNet(2, 1, 2, **TINY)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*levels=8.*\[1, 1, 30, 32\]"):
        net(torch.randn(1, 1, 30, 32))


def test_pad_to_multiple():
    net = GMRUNet(2, 1, 2, pad_to_multiple=True, **TINY).eval()
    x = torch.randn(1, 1, 29, 35)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (1, 2, 29, 35)
        # the documented split: total // 2 before, the rest after (29 -> 32: 1 + 2; 35 -> 40: 2 + 3); the output is
        # the padded input's output cropped at the same offsets (a crop off by one pixel on the odd side fails); the
        # default pads by replication (zeros change an instance-norm net's statistics over the whole input)
        ref = net(F.pad(x, [2, 3, 1, 2], mode="replicate"))[..., 1 : 1 + 29, 2 : 2 + 35]
    assert torch.equal(y, ref)
    # 30 -> 32: total pad 2 is split 1 + 1 (symmetric), so D4 equivariance stays exact
    errs = _equiv_errors(net, torch.randn(1, 1, 30, 30), d4_elements())
    assert max(errs.values()) <= 1e-4, errs
    # 31 -> 32: a 1-pixel pad on one side shifts the image by half a pixel: not exact
    errs = _equiv_errors(net, torch.randn(1, 1, 31, 31), d4_elements())
    assert max(errs.values()) > 1e-3
    same = GMRUNet(2, 1, 2, pad_to_multiple=True, **TINY).eval()
    same.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(same(x), net(x))  # divisible input: no padding at all
    # pad_mode is the F.pad mode of that padding
    x = torch.randn(1, 1, 29, 35)
    for mode in ("reflect", "constant"):
        other = GMRUNet(2, 1, 2, pad_to_multiple=True, pad_mode=mode, **TINY).eval()
        other.load_state_dict(net.state_dict())
        with torch.no_grad():
            ref = other(F.pad(x, [2, 3, 1, 2], mode=mode))[..., 1 : 1 + 29, 2 : 2 + 35]
            y = other(x)
            assert torch.equal(y, ref) and not torch.allclose(y, net(x))


def test_gmr_kwargs_pass_through():
    net = GMRUNet(2, 1, 2, num_rings=2, smoothing="none", impl="dense", **TINY)
    convs = [m for m in net.modules() if type(m).__name__ == "GMRConv"]
    assert convs and all(c.num_rings == 2 and c.smoothing == "none" and c.impl == "dense" for c in convs)


def test_num_rings_1_is_accepted_for_a_net_of_1x1_gmr_layers():
    """check_gmr_kwargs tried num_rings=1 on a 3x3 layer and refused it for a network whose layers are all 1x1."""
    torch.manual_seed(0)
    net = GMRUNet(2, 1, 2, features=(2, 2), kernel_sizes=1, num_rings=1)
    convs = [m for m in net.modules() if type(m).__name__ == "GMRConv"]
    assert convs and all(c.kernel_size == 1 and c.num_rings == 1 for c in convs)
    with pytest.raises(ValueError, match="num_rings"):  # a 3x3 layer still refuses it, when built
        GMRUNet(2, 1, 2, features=(2, 2), kernel_sizes=3, num_rings=1)


@pytest.mark.parametrize("d", [2, 3])
def test_area_sampling_passes_through_and_stays_exact_after_training(d):
    torch.manual_seed(0)
    net = GMRUNet(d, 2, 2, sampling="area", **(TINY if d == 2 else TINY3D))
    convs = [m for m in net.modules() if type(m).__name__ == "GMRConv"]
    assert convs and all(c.sampling == "area" for c in convs)
    x = torch.randn(2, 2, *((32, 32) if d == 2 else (16, 16, 16)))
    losses = _train(net, x, steps=20 if d == 2 else 5)
    assert losses[-1] < losses[0]
    errs = _equiv_errors(net.eval(), x, d4_elements() if d == 2 else CUBE_SAMPLE)
    assert max(errs.values()) <= 1e-4, errs


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"kernel_sizes": (5, 5, 3)}, "kernel_sizes"),
        ({"kernel_sizes": (5, 5, 4, 3)}, "kernel_sizes"),
        ({"features": (8,)}, "features"),
        ({"features": (8, 0, 16)}, "features"),
        ({"upsample": "deconv"}, "upsample"),
        ({"pooling": "strided"}, "pooling"),
        ({"pad_mode": "circular"}, "pad_mode"),
        ({"in_channels": 0}, "in_channels"),
        ({"spatial_dims": 3, "upsample": "bicubic"}, "bicubic"),
        # keywords other than GMRConv's were forwarded to every GMRConvolution: conv_only=True built a purely linear
        # net, strides/padding failed only in forward, a misspelled GMR keyword only deep in the constructor
        ({"conv_only": True}, "conv_only"),
        ({"strides": 2}, "strides"),
        ({"padding": 0}, "padding"),
        ({"num_classes": 3}, "num_classes"),
        ({"smothing": "none"}, "smothing"),
        ({"padding_mode": "reflection"}, "padding_mode"),
        # a float passed `spatial_dims in (2, 3)` and failed deep inside with "can't multiply sequence by non-int"
        ({"spatial_dims": 2.0}, "spatial_dims"),
        # dropout=True reached nn.Dropout as p=1 (every activation zeroed in training); out-of-range p named no argument
        ({"dropout": True}, "^dropout must be a probability"),
        ({"dropout": 1.5}, "^dropout must be a probability"),
        ({"dropout": -0.1}, "^dropout must be a probability"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, **TINY}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GMRUNet(**args)


def test_block_keywords_still_pass_through_and_stay_equivariant():
    """dilation / adn_ordering / dropout_dim reach every GMRConvolution (they worked before the keyword check)."""
    torch.manual_seed(0)
    net = GMRUNet(2, 1, 2, **TINY, dilation=2, adn_ordering="ADN", dropout_dim=2).eval()
    assert all(m.dilation == 2 for m in net.modules() if type(m).__name__ == "GMRConv" and m.kernel_size > 1)
    x = torch.randn(1, 1, 32, 32)
    y = net(x)
    for g in d4_elements():
        assert rel_err(net(g(x)), g(y)) < 1e-4


def test_bad_input_shape():
    net = GMRUNet(2, 3, 2, **TINY)
    with pytest.raises(ValueError, match="in_channels=3"):
        net(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="2 spatial dims"):
        net(torch.randn(1, 3, 16, 16, 16))


def test_per_axis_kernel_sizes_are_named_as_such():
    """A 3D user's per-axis kernel (``kernel_sizes=(3, 3, 1)``, or one ``(3, 3, 3)`` per level) was refused as
    "must be an int or have one entry per level" / "must hold odd positive ints (GMR kernels are centred)", with no word
    that the sizes are isotropic widths per level; both errors now say so."""
    with pytest.raises(ValueError, match=r"isotropic widths per level, not per axis"):
        GMRUNet(3, 1, 2, features=(4, 8), kernel_sizes=(3, 3, 1))
    with pytest.raises(ValueError, match=r"one odd int per level \(GMR kernels are isotropic: 3, not \(3, 3, 3\)\)"):
        GMRUNet(3, 1, 2, features=(4, 8), kernel_sizes=((3, 3, 3), (3, 3, 3)))
    assert GMRUNet(3, 1, 2, features=(4, 8), kernel_sizes=[3, 5]).kernel_sizes == (3, 5)


@pytest.mark.parametrize("scripted", [False, True])
def test_reflect_padding_of_a_thin_volume(scripted):
    """``pad_to_multiple=True, pad_mode="reflect"`` on a volume of 3 slices (padded to 8: 2 + 3 pixels, more than the
    size) raised (torch's "Padding size should be less than the corresponding input dimension", later an error
    naming ``pad_mode``); it now pads as ``numpy.pad(mode="reflect")`` does: the output is the unpadded net's output
    on the numpy-padded input, cropped back, also scripted. Sizes ``F.pad`` can reflect give what they gave."""
    torch.manual_seed(0)
    kw = {"features": (2, 2, 2, 2), "kernel_sizes": 3}
    net = GMRUNet(3, 1, 2, pad_to_multiple=True, pad_mode="reflect", **kw).eval()
    plain = GMRUNet(3, 1, 2, **kw).eval()
    plain.load_state_dict(net.state_dict())
    run = torch.jit.script(net) if scripted else net
    x = torch.randn(1, 1, 3, 8, 14, generator=torch.Generator().manual_seed(1))
    padded = torch.from_numpy(np.pad(x.numpy(), [(0, 0), (0, 0), (2, 3), (0, 0), (1, 1)], mode="reflect"))
    with torch.no_grad():
        out = run(x)
        assert out.shape == (1, 2, 3, 8, 14)
        assert torch.allclose(out, plain(padded)[:, :, 2:5, :, 1:15], atol=1e-6)
        y = torch.randn(1, 1, 6, 8, 14, generator=torch.Generator().manual_seed(2))
        want = plain(F.pad(y, [1, 1, 0, 0, 1, 1], mode="reflect"))[:, :, 1:7, :, 1:15]
        assert torch.allclose(run(y), want, atol=1e-6)


def test_decoders_read_the_skip_first_then_the_upsampled_path():
    """Every decoder reads ``cat([skip, up(h)])`` (the documented layout: up-conv, then concat with the skip of level
    ``i - 1``). The swapped order ``cat([up(h), skip])`` is just as equivariant and trains as well, so no other test
    saw it, but it loads every existing checkpoint into the wrong input channels. Checked with forward hooks."""
    torch.manual_seed(0)
    net = GMRUNet(2, 1, 2, **TINY).eval()
    enc_out, dec_in, up_out = [], [], []
    hooks = [e.register_forward_hook(lambda m, i, o: enc_out.append(o)) for e in net.encoders]
    hooks += [d.register_forward_hook(lambda m, i, o: dec_in.append(i[0])) for d in net.decoders]
    hooks += [u.register_forward_hook(lambda m, i, o: up_out.append(o)) for u in net.up_convs]
    with torch.no_grad():
        net(torch.randn(1, 1, 32, 32))
    for h in hooks:
        h.remove()
    assert len(enc_out) == 4 and len(dec_in) == len(up_out) == 3
    for k, (x, u) in enumerate(zip(dec_in, up_out)):
        skip = enc_out[len(enc_out) - 2 - k]  # deepest decoder first: skips of levels 2, 1, 0
        c = skip.shape[1]
        assert x.shape[1] == 2 * c and torch.equal(x[:, :c], skip) and torch.equal(x[:, c:], u), k


def test_up_convs_use_the_kernel_and_width_of_the_level_they_return_to():
    """``up i``: interpolation -> GMR conv with ``kernel_sizes[i - 1]`` and width ``features[i - 1]`` (module
    docstring). The paper-defaults test only checks the set of sizes ({9, 5}), which the kernel of level ``i`` keeps;
    distinct sizes per level tell them apart."""
    net = GMRUNet(2, 1, 2, features=(4, 8, 8, 16), kernel_sizes=(9, 7, 5, 3))
    assert len(net.up_convs) == 3
    for up, i in zip(net.up_convs, range(3, 0, -1)):
        assert isinstance(up[0], nn.Upsample)
        convs = [m for m in up.modules() if type(m).__name__ == "GMRConv"]
        assert len(convs) == 1, i
        assert convs[0].kernel_size == net.kernel_sizes[i - 1] and convs[0].out_channels == net.features[i - 1], i


def test_dropout_reaches_every_block():
    """``dropout`` is the element-wise dropout of every GMR conv block (the D of its ADN): ``dropout=0.5`` gives one
    ``p=0.5`` dropout per block, a stochastic net in train mode and a deterministic one in eval mode; the default 0
    adds none. A constructor that dropped the argument built the same net for every value without any test noticing."""
    torch.manual_seed(0)
    net = GMRUNet(2, 1, 2, dropout=0.5, **TINY)
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    n_blocks = sum(type(m).__name__ == "GMRConvolution" for m in net.modules())
    assert n_blocks == 17 and len(drops) == n_blocks and all(d.p == 0.5 for d in drops)
    assert not any(isinstance(m, nn.Dropout) for m in GMRUNet(2, 1, 2, **TINY).modules())
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert not torch.equal(net.train()(x), net(x))
        assert torch.equal(net.eval()(x), net(x))


def test_numpy_integer_arguments_are_accepted_like_gmrconv():
    """NumPy integers (e.g. ``out_channels=np.unique(labels).size``) are ints to GMRConv and nn.Conv2d; the U-Net
    refused them ("in_channels must be a positive int, got in_channels=np.int64(1)")."""
    np = pytest.importorskip("numpy")
    torch.manual_seed(0)
    net = GMRUNet(np.int64(2), np.int64(1), np.int64(2), features=[np.int64(2), np.int64(4)], kernel_sizes=np.int64(3))
    assert type(net.in_channels) is int and net.features == (2, 4) and net.kernel_sizes == (3, 3)
    assert net(torch.randn(1, 1, 8, 8)).shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match="in_channels"):
        GMRUNet(2, np.float64(1.0), 2, **TINY)


def test_features_of_another_length_without_kernel_sizes_say_to_pass_them():
    """``GMRUNet(2, 1, 2, features=(8, 16))`` (or ``get_network("gmr_unet_tiny", features=...)``) was refused with an
    error about ``kernel_sizes=(9, 9, 5, 5)``, a value the user never passed; the error now says where it came from."""
    from monai_gmr.nets import get_network

    with pytest.raises(ValueError, match="pass kernel_sizes together with features"):
        GMRUNet(2, 1, 2, features=(8, 16))
    with pytest.raises(ValueError, match="pass kernel_sizes together with features"):
        get_network("gmr_unet_tiny", features=(2, 4))
    assert GMRUNet(2, 1, 2, features=(2, 4), kernel_sizes=3).kernel_sizes == (3, 3)


@pytest.mark.parametrize("mode", ["deconv", "pixelshuffle", "nontrainable"])
def test_monai_upsample_names_are_explained(mode):
    """BasicUNet's ``upsample`` values were refused with only the list of GMR modes; the error now says why and that
    MONAI's ``"nontrainable"`` is ``"bilinear"`` here."""
    with pytest.raises(ValueError, match=r"upsample.*orientation-dependent.*'nontrainable' is upsample='bilinear'"):
        GMRUNet(2, 1, 2, features=(2, 2), kernel_sizes=3, upsample=mode)


def test_monai_unet_keywords_name_their_counterpart():
    """MONAI UNet's channels/strides/... were refused as unknown GMRConv keywords, without the GMRUNet counterpart."""
    with pytest.raises(ValueError, match=r"MONAI UNet's channels, strides: channels -> features.*strides -> none"):
        GMRUNet(2, 1, 2, channels=(4, 8), strides=(2,))
    with pytest.raises(ValueError, match=r"kernel_size -> kernel_sizes"):
        GMRUNet(2, 1, 2, kernel_size=3)
