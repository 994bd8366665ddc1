"""GMRConv module: shapes, validation, equivariance, cache, state_dict, initialisation, export, registration."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

import monai_gmr
from monai_gmr import GMRConv, GMRConv2d, GMRConv3d, GMRConvolution, export_dense
from monai_gmr.evaluation import spline_equivariance_error
from monai_gmr.functional import (
    cube_elements,
    d4_elements,
    offset_distances,
    ring_basis,
    ring_centers,
    synthesize_kernel,
)
from tests.conftest import rel_err


# ----------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("d,size", [(2, (13, 10)), (3, (7, 6, 9))])
@pytest.mark.parametrize("impl", ["dense", "rings", "auto"])
def test_same_padding_shapes(d, size, impl):
    m = GMRConv(d, 3, 5, 5, impl=impl)
    y = m(torch.randn(2, 3, *size))
    assert y.shape == (2, 5, *size)


def test_conv2d_positional_signature():
    m = GMRConv2d(3, 4, 5, 2, 2, 1, 1, False, "reflect", num_rings=4)
    assert (m.stride, m.padding, m.bias, m.padding_mode, m.num_rings) == (2, 2, None, "reflect", 4)
    assert m(torch.randn(1, 3, 8, 8)).shape == (1, 4, 4, 4)
    m3 = GMRConv3d(2, 2, (3, 3, 3), dtype=torch.float64)
    assert m3.weight.dtype == torch.float64 and m3(torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)).shape == (1, 2, 4, 4, 4)


@pytest.mark.parametrize("cls,d", [(GMRConv2d, 2), (GMRConv3d, 3)])
def test_positional_dilation_and_groups_land_where_nn_conv_puts_them(cls, d):
    # mutation audit round 6 (N18): nn.ConvNd's positional order is (..., padding, dilation, groups, bias,
    # padding_mode); dilation=3 and groups=2 given positionally must not be read the other way round
    m = cls(4, 6, 3, 1, 0, 3, 2, True, "zeros")
    assert (m.dilation, m.groups, m.padding) == (3, 2, 0)
    ref = (torch.nn.Conv2d if d == 2 else torch.nn.Conv3d)(4, 6, 3, 1, 0, 3, 2, True, "zeros")
    x = torch.randn(1, 4, *([9] * d))
    assert m(x).shape == ref(x).shape == (1, 6) + (3,) * d


def test_kernel_size_one_is_pointwise():
    m = GMRConv(2, 3, 4, 1)
    x = torch.randn(2, 3, 5, 5)
    ref = torch.nn.functional.conv2d(x, m.weight.reshape(4, 3, 1, 1), m.bias)
    assert m.num_rings == 1 and rel_err(m(x), ref) < 1e-6


def test_parameter_count_grows_with_rings_not_area():
    m = GMRConv(2, 16, 32, 9, bias=False)
    assert sum(p.numel() for p in m.parameters()) == 16 * 32 * 5 + 5  # weights + one log sigma per ring
    assert sum(p.numel() for p in torch.nn.Conv2d(16, 32, 9, bias=False).parameters()) == 16 * 32 * 81


@pytest.mark.parametrize("d", [2, 3])
def test_padding_text_valid_and_same_mean_what_nn_conv_means(d):
    # mutation audit round 6 (N20): padding="valid" is no padding (as in nn.Conv2d), "same" the symmetric pad
    x = torch.randn(1, 2, *([11] * d))
    valid = GMRConv(d, 2, 3, 5, padding="valid", dilation=2)
    same = GMRConv(d, 2, 3, 5, padding="same", dilation=2)
    assert (valid.padding, same.padding) == (0, 4)
    assert valid(x).shape == (1, 3) + (3,) * d and same(x).shape == (1, 3) + (11,) * d


# ----------------------------------------------------------------------------------------- validation
def test_numpy_integers_are_accepted():
    m = GMRConv(2, 1, 1, (np.int64(5),) * 2, stride=(np.int64(1),) * 2, padding=np.int32(2))
    assert (m.kernel_size, m.stride, m.padding) == (5, 1, 2) and type(m.kernel_size) is int
    assert GMRConv(2, 1, 1, np.int64(3)).kernel_size == 3
    # channels, groups and num_rings too (computed widths, e.g. np.prod; torch.nn.Conv2d takes them): they were refused
    m = GMRConv(2, np.int64(4), np.int32(6), 5, groups=np.int64(2), num_rings=np.int64(4))
    assert (m.in_channels, m.out_channels, m.groups, m.num_rings) == (4, 6, 2, 4)
    assert all(type(v) is int for v in (m.in_channels, m.out_channels, m.groups, m.num_rings))
    assert m.weight.shape == (6, 2, 4) and m(torch.randn(1, 4, 7, 7)).shape == (1, 6, 7, 7)
    for bad in (dict(in_channels=4.0), dict(groups=True), dict(num_rings=3.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GMRConv(**{**dict(spatial_dims=2, in_channels=4, out_channels=4, kernel_size=5), **bad})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(spatial_dims=1), "spatial_dims"),
        (dict(spatial_dims=4), "spatial_dims"),
        (dict(kernel_size=4), "kernel_size"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(kernel_size=-3), "kernel_size"),
        (dict(kernel_size=(3, 5)), "kernel_size"),
        (dict(num_rings=1), "num_rings"),
        (dict(kernel_size=1, num_rings=3), "num_rings"),
        (dict(impl="cuda"), "impl"),
        (dict(smoothing="box"), "smoothing"),
        (dict(sigma="channel"), "sigma"),
        (dict(padding_mode="mirror"), "padding_mode"),
        (dict(groups=3), "groups"),
        (dict(in_channels=0), "in_channels"),
        (dict(stride=0), "stride"),
        (dict(dilation=(1, 2)), "dilation"),
        # tuples of non-ints are not truncated by int()
        (dict(kernel_size=(3.7, 3.2)), "kernel_size"),
        (dict(kernel_size=(True, True)), "kernel_size"),
        (dict(kernel_size=("5", "5")), "kernel_size"),
        (dict(stride=(1.9, 1.9)), "stride"),
        (dict(padding=(2.7, 2.7)), "padding"),
        # torch.nn.Conv2d refuses a "same" strided conv too (the output cannot keep the input size)
        (dict(padding="same", stride=2), r"^padding='same' is not supported for strided"),
        (dict(padding="same", stride=(2, 2), dilation=2), r"^padding='same'"),
        # a float passed `spatial_dims in (2, 3)` and broke later with "can't multiply sequence by non-int"
        (dict(spatial_dims=2.0), "spatial_dims"),
        (dict(spatial_dims=True), "spatial_dims"),
    ],
)
def test_constructor_errors(kwargs, match):
    args = dict(spatial_dims=2, in_channels=4, out_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GMRConv(**args)


def test_forward_errors_name_the_problem():
    m = GMRConv(2, 3, 4, 3)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(C, H, W\).*input shape \[8, 8\]"):
        m(torch.randn(8, 8))
    with pytest.raises(ValueError, match=r"input shape \[1, 1, 3, 8, 8\]"):
        m(torch.randn(1, 1, 3, 8, 8))
    with pytest.raises(ValueError, match="in_channels=3"):
        m(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="in_channels=3.*spatial_dims=3"):  # 4D = unbatched (C, D, H, W) in 3D
        GMRConv(3, 3, 4, 3)(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\) or \(C, D, H, W\)"):
        GMRConv(3, 3, 4, 3)(torch.randn(3, 8, 8))



@pytest.mark.parametrize("scripted", [False, True])
def test_2d_batch_into_a_3d_layer_names_the_shape(scripted):
    """A batch of 2D images ``(B, C, H, W)`` given to a 3D layer is read as one unbatched volume ``(C, D, H, W)``;
    the error said "input has 2 channels but in_channels=3" for an input with 3 channels (B=2), without the shape.
    It now gives the shape, how it was read, and the 2D fix; a batched channel mismatch gives the shape too."""
    m = GMRConv(3, 3, 4, 3)
    m = torch.jit.script(m) if scripted else m
    with pytest.raises(Exception, match=r"input shape \[2, 3, 8, 8\].*unbatched \(C, D, H, W\) with C=2.*spatial_dims=2"):
        m(torch.randn(2, 3, 8, 8))
    with pytest.raises(Exception, match=r"input has 2 channels but in_channels=3 \(input shape \[1, 2, 4, 4, 4\]"):
        m(torch.randn(1, 2, 4, 4, 4))
    assert m(torch.randn(3, 4, 4, 4)).shape == (4, 4, 4, 4)  # a real unbatched volume still runs


@pytest.mark.parametrize("impl,scripted", [("dense", False), ("rings", False), ("dense", True)])
def test_integer_input_is_refused_not_run_with_a_truncated_kernel(impl, scripted):
    """The kernel is cast to the input's dtype; an integer input (e.g. a uint8/int64 image batch) used to run with
    the kernel truncated to integers, silently returning zeros, where ``nn.Conv2d`` raises. It is now an error naming
    the dtype; float and complex inputs still run."""
    torch.manual_seed(0)
    m = GMRConv(2, 1, 2, 5, impl=impl).eval()
    m = torch.jit.script(m) if scripted else m
    for dtype in (torch.int64, torch.uint8):
        with pytest.raises(Exception, match="floating-point" if scripted else f"floating-point.*{dtype}"):
            m(torch.randint(0, 4, (1, 1, 8, 8), dtype=dtype))
    assert m(torch.randint(0, 4, (1, 1, 8, 8)).float()).dtype == torch.float32


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("impl", ["dense", "rings"])
def test_unbatched_input_like_nn_conv(d, impl):
    """``nn.Conv2d``/``nn.Conv3d`` take an unbatched ``(C, *spatial)`` input; GMRConv raised on it (a converted or
    swapped-in layer broke code that used single samples). Same output as the batched call, in train and eval."""
    m = GMRConv(d, 3, 4, 5, impl=impl).double()
    x = torch.randn(3, *([9] * d), dtype=torch.float64)
    for train in (True, False):
        m.train(train)
        y = m(x)
        assert y.shape == (4, *([9] * d))
        assert torch.allclose(y, m(x[None])[0], rtol=0, atol=1e-12)
    ref = (torch.nn.Conv2d if d == 2 else torch.nn.Conv3d)(3, 4, 5, padding=2).double()
    assert ref(x).shape == y.shape


# ----------------------------------------------------------------------------------------- equivariance
@pytest.mark.parametrize("size", [(16, 16), (15, 17), (12, 9)])
@pytest.mark.parametrize("impl", ["dense", "rings"])
@pytest.mark.parametrize("sampling", ["center", "area"])
def test_exact_d4_equivariance(size, impl, sampling):
    m = GMRConv(2, 3, 4, 7, impl=impl, sampling=sampling)
    x = torch.randn(2, 3, *size)
    y = m(x)
    for g in d4_elements():
        assert rel_err(m(g(x)), g(y)) <= 1e-5, g.name


@pytest.mark.parametrize("pmode", ["reflect", "replicate", "circular"])
def test_d4_equivariance_other_padding_modes(pmode):
    m = GMRConv(2, 2, 2, 5, padding_mode=pmode)
    x = torch.randn(1, 2, 11, 11)
    y = m(x)
    for g in d4_elements():
        assert rel_err(m(g(x)), g(y)) <= 1e-5, g.name


@pytest.mark.parametrize("sampling", ["center", "area"])
def test_exact_cube_equivariance_all_48(sampling):
    m = GMRConv(3, 2, 3, 5, sampling=sampling)
    x = torch.randn(1, 2, 8, 7, 9)
    y = m(x)
    elements = cube_elements()
    assert len(elements) == 48 and len({e.name for e in elements}) == 48
    for g in elements:
        assert rel_err(m(g(x)), g(y)) <= 1e-5, g.name


def test_plain_conv_is_not_equivariant_so_the_check_can_fail():
    conv = torch.nn.Conv2d(2, 2, 5, padding=2)
    x = torch.randn(1, 2, 12, 12)
    g = d4_elements()[1]
    assert rel_err(conv(g(x)), g(conv(x))) > 0.1


def _worst_angle_error(k: int, seed: int, sampling: str) -> float:
    """Largest relative error at 15, 30 and 45 degrees of one random single-channel layer (float64, no bias) on a
    smooth random field (sigma = 3 px), cubic-spline rotations, central disk of radius 0.35 * size."""
    rng = np.random.default_rng(seed)
    field = torch.from_numpy(ndimage.gaussian_filter(rng.standard_normal((96, 96)), 3))[None, None]
    torch.manual_seed(seed)
    m = GMRConv(2, 1, 1, k, bias=False, sampling=sampling).double()
    with torch.no_grad():
        return max(spline_equivariance_error(m, field, (15, 30, 45)).values())


# Bound of the issue: <= 0.01 at 15, 30, 45 degrees (k = 9, smooth random field with sigma = 3 px, cubic
# interpolation, central disk of radius 0.35 * size). The paper's sampling ("center") meets it for a typical layer,
# not for every one: over seeds 0-39 the worst-angle error is 0.0003-0.028, median 0.006, and 11 of 40 seeds exceed
# 0.01 (those with a large outer-ring weight: that ring is centred on the support's edge, half cut off). The test
# therefore bounds the median over 20 seeds, and shows that a plain conv fails the same check.
def test_arbitrary_angle_error_bound_center_sampling_k9():
    errors = np.array([_worst_angle_error(9, seed, "center") for seed in range(20)])
    assert np.median(errors) <= 0.01, errors
    assert errors.max() > 0.01, errors  # the documented limitation (see sampling="area" below)
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.standard_normal((96, 96)), 3)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 9, padding=4, bias=False).double()
    with torch.no_grad():
        errors = spline_equivariance_error(conv, torch.from_numpy(field)[None, None], (15, 30, 45))
    assert min(errors.values()) > 0.1, errors


# sampling="area" meets the bound for every seed and kernel size 5..21 (measured over seeds 0-19: worst 0.0038 at
# k = 21; "center": worst 0.04 / 0.26 / 0.05 / 0.43 at k = 7 / 11 / 15 / 21). k = 3 is left out of the "every seed"
# bound: both samplings have rare seeds whose two ring weights nearly cancel on smooth inputs, so that the relative
# error of a near-zero output is large (seeds 0-59: 1 above 0.01 with "area", worst 0.011; 2 with "center", worst
# 0.033).
@pytest.mark.parametrize("k", [5, 7, 9, 11, 15, 21])
def test_arbitrary_angle_error_bound_area_sampling_every_seed(k):
    errors = np.array([_worst_angle_error(k, seed, "area") for seed in range(10)])
    assert errors.max() <= 0.01, errors


def test_area_sampling_beats_center_sampling_where_the_center_kernel_is_worst():
    """The check above fails for the paper's sampling: at k = 11 and 15 most seeds exceed 0.01."""
    for k in (11, 15):
        center = np.array([_worst_angle_error(k, seed, "center") for seed in range(10)])
        area = np.array([_worst_angle_error(k, seed, "area") for seed in range(10)])
        assert center.max() > 0.01 and np.median(area) < np.median(center) / 5, (k, center, area)


def test_area_sampling_3d_arbitrary_angle():
    """3D, k = 9, 40^3 field, rotations in the H-W plane (scored on the cylinder along D); seed 8 is the paper's
    sampling's worst of seeds 0-9 (docs/benchmarks.md section 8: 0.045), and "area" holds 0.0006 there."""
    rng = np.random.default_rng(8)
    vol = torch.from_numpy(ndimage.gaussian_filter(rng.standard_normal((40, 40, 40)), 3))[None, None]
    worst = {}
    for sampling in ("center", "area"):
        torch.manual_seed(8)
        m = GMRConv(3, 1, 1, 9, bias=False, sampling=sampling).double()
        with torch.no_grad():
            worst[sampling] = max(spline_equivariance_error(m, vol, (15, 30, 45), spatial_dims=3).values())
    assert worst["area"] <= 0.005 < 0.01 < worst["center"], worst


def test_area_sampling_has_the_same_parameters_and_a_clear_error():
    a, c = GMRConv(2, 3, 4, 9, sampling="area"), GMRConv(2, 3, 4, 9)
    assert {n: p.shape for n, p in a.named_parameters()} == {n: p.shape for n, p in c.named_parameters()}
    assert set(a.state_dict()) == set(c.state_dict())
    assert a.distances.shape == (9, 9, 16) and a.basis().shape == (5, 9, 9)
    assert "sampling=area" in repr(a) and "sampling" not in repr(c)
    a.load_state_dict(c.state_dict())  # checkpoints move between samplings (the kernels differ)
    assert not torch.allclose(a.dense_kernel(), c.dense_kernel())
    with pytest.raises(ValueError, match="sampling must be one of"):
        GMRConv(2, 3, 4, 9, sampling="pixel")
    assert GMRConv(2, 3, 4, 1, sampling="area").distances.shape == (1, 1)  # k = 1: nothing to average


# ----------------------------------------------------------------------------------------- cache and state
def test_state_dict_keys_same_in_train_and_eval_and_buffers_not_persistent():
    m = GMRConv(2, 2, 3, 5)
    keys_train = set(m.state_dict())
    m.eval()
    with torch.no_grad():
        m(torch.randn(1, 2, 6, 6))
    assert set(m.state_dict()) == keys_train == {"weight", "log_sigma", "bias"}
    assert set(dict(m.named_buffers())) == {"distances", "mask", "centers"}
    fixed = GMRConv(2, 2, 3, 5, sigma="fixed", bias=False)
    assert set(fixed.state_dict()) == {"weight"} and not any(n == "log_sigma" for n, _ in fixed.named_parameters())


@pytest.mark.parametrize("kwargs", [{}, {"sigma": "fixed"}, {"smoothing": "none"}])
def test_meta_device_then_to_empty_then_reset_parameters(kwargs):
    """PyTorch's deferred initialisation without a checkpoint (``to_empty`` then ``reset_parameters()``, as FSDP's
    ``param_init_fn`` does): the learned ``log_sigma`` kept to_empty's uninitialised memory (0.0, i.e. sigma 1 instead
    of 0.53 at k = 5, or 8e14), or NaN, which made the gain NaN ("normal expects std >= 0.0")."""
    torch.manual_seed(0)
    ref = GMRConv(2, 2, 3, 5, **kwargs)
    with torch.device("meta"):
        m = GMRConv(2, 2, 3, 5, **kwargs)
    m = m.to_empty(device="cpu")
    if isinstance(m.log_sigma, torch.nn.Parameter):
        with torch.no_grad():
            m.log_sigma.fill_(float("nan"))  # what uninitialised memory may hold
    torch.manual_seed(0)
    m.reset_parameters()
    assert torch.equal(m.log_sigma, ref.log_sigma)
    assert torch.equal(m.weight, ref.weight) and torch.equal(m.bias, ref.bias)
    x = torch.randn(1, 2, 7, 7)
    assert torch.equal(m(x), ref(x))
    # a trained learned sigma is reset too (reset_parameters re-initialises every parameter); a fixed one is kept
    if "sigma" not in kwargs and "smoothing" not in kwargs:
        with torch.no_grad():
            m.log_sigma.add_(0.5)
        m.reset_parameters()
        assert torch.equal(m.log_sigma, ref.log_sigma)
    else:
        with torch.no_grad():
            m.log_sigma.add_(0.5)
        kept = m.log_sigma.clone()
        m.reset_parameters()
        assert torch.equal(m.log_sigma, kept)


@pytest.mark.parametrize("kwargs", [{}, {"sigma": "fixed"}, {"smoothing": "none"}])
def test_meta_device_construction_then_to_empty_and_load(kwargs):
    """``with torch.device("meta")`` (fast init of large 3D nets) then ``to_empty`` + ``load_state_dict``: construction
    failed ("Tensor.item() cannot be called on meta tensors" in the DC-gain initialisation), and a fixed sigma, a
    non-persistent buffer, would have kept to_empty's garbage."""
    torch.manual_seed(0)
    ref = GMRConv(3, 2, 3, 5, **kwargs).eval()
    with torch.device("meta"):
        m = GMRConv(3, 2, 3, 5, **kwargs)
    assert m.weight.is_meta
    m = m.to_empty(device="cpu")
    m.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2, 6, 6, 6)
    assert torch.equal(m.eval()(x), ref(x))
    fixed = GMRConv(2, 1, 1, 3, sigma="fixed")
    with torch.no_grad():
        fixed.log_sigma.fill_(-1.0)  # a value set by the user survives .to()/.double() (rebuilt only from meta)
    assert torch.all(fixed.double().log_sigma == -1.0)


def test_to_empty_of_a_materialised_layer_keeps_a_fixed_sigma():
    """``to_empty`` of a layer that already had values (built on CPU, moved without copying storage) left a fixed
    sigma uninitialised: it is not in the state_dict and reset_parameters keeps a fixed sigma, so the layer then ran
    with garbage ring widths. A fixed sigma now keeps its values (dtype conversions still round them as before)."""
    torch.manual_seed(0)
    m = GMRConv(2, 2, 3, 5, sigma="fixed")
    with torch.no_grad():
        m.log_sigma.fill_(-0.3)
    ref = copy.deepcopy(m)
    m.to_empty(device="cpu")
    m.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2, 8, 8)
    assert torch.equal(m.log_sigma, ref.log_sigma) and torch.equal(m(x), ref(x))
    assert torch.equal(m.half().log_sigma, ref.log_sigma.half())


def test_repr_shows_non_default_options():
    """``print(model)`` showed smoothing='none' but not sigma='fixed' or circular=False."""
    assert "sigma" not in repr(GMRConv(3, 1, 1, 3)) and "circular" not in repr(GMRConv(3, 1, 1, 3))
    text = repr(GMRConv(3, 1, 1, 3, sigma="fixed", circular=False, padding_mode="reflect", bias=False))
    assert "sigma=fixed" in text and "circular=False" in text and "padding_mode=reflect" in text and "bias=False" in text


def test_eval_cache_is_used_and_invalidated():
    m = GMRConv(2, 2, 3, 5).eval()
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        y0 = m(x)
        k0 = m.dense_kernel()
        assert m._dense_kernel() is m._dense_kernel() is m._kernel_cache[3]  # cached
        assert torch.equal(m.dense_kernel(), k0)
        # 1) in-place parameter update (what optimizers do)
        m.weight.mul_(2.0)
        y1 = m(x)
        assert rel_err(y1, 2 * (y0 - m.bias[:, None, None]) + m.bias[:, None, None]) < 1e-6
        # 2) sigma change alone (compared with the output just before it, not with y0, which the weight change
        # already moved)
        m.log_sigma.add_(0.3)
        y2 = m(x)
        assert rel_err(y2, y1) > 1e-3
        fresh = torch.nn.functional.conv2d(x, synthesize_kernel(m.weight, m.basis()), m.bias, padding=2)
        assert rel_err(y2, fresh) < 1e-6
    # 3) load_state_dict
    other = GMRConv(2, 2, 3, 5)
    m.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert rel_err(m(x), other(x)) < 1e-6
        # 4) .data assignment
        m.weight.data = torch.zeros_like(m.weight)
        assert torch.allclose(m(x), m.bias[:, None, None].expand(1, 3, 8, 8))
    # 5) optimizer step while in eval mode
    m2 = GMRConv(2, 2, 3, 5).eval()
    with torch.no_grad():
        before = m2(x)
    opt = torch.optim.SGD(m2.parameters(), lr=0.5)
    m2(x).square().sum().backward()
    opt.step()
    with torch.no_grad():
        assert rel_err(m2(x), before) > 1e-3


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_editing_the_returned_dense_kernel_leaves_the_layer_alone(mode):
    """In eval mode without gradients dense_kernel() returned the cached tensor itself: scaling it in place (e.g. to
    plot a normalised kernel) silently changed every later output of the layer. It now returns a copy."""
    torch.manual_seed(0)
    m = GMRConv(2, 2, 3, 5).eval()
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
        y = m(x)
        m.dense_kernel().mul_(0)
        assert torch.equal(m(x), y)


@pytest.mark.parametrize("filled", [True, False])
def test_vmap_over_stacked_parameters_bypasses_the_eval_cache(filled):
    """Model ensembling with torch.func (vmap over stacked parameters through functional_call) in eval mode without
    gradients: with a kernel cached, the value check failed ("Batching rule not implemented for aten::equal"); with
    none, the cache kept batched tensors past the vmap. Under torch.func transforms the cache is now bypassed."""
    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    models = [GMRConv(2, 2, 3, 5, impl="dense").eval() for _ in range(2)]
    x = torch.randn(1, 2, 8, 8)
    m = models[0]
    with torch.no_grad():
        refs = [mm(x) for mm in models]
        if not filled:
            m._kernel_cache = None
        params, buffers = stack_module_state(models)
        ys = vmap(lambda p, b: functional_call(m, (p, b), (x,)))(params, buffers)
        assert torch.allclose(ys, torch.stack(refs), atol=1e-6)
        assert m._kernel_cache is None or not filled
        assert torch.equal(m(x), refs[0])  # the plain layer after the transform


def test_forward_mode_ad_through_dual_parameters_bypasses_the_eval_cache():
    """Forward-mode AD (torch.autograd.forward_ad) also runs under no_grad: with dual (primal, tangent) ring
    weights in eval mode, the value check matched the primal and the cached kernel was used, so the output had no
    tangent (a JVP with respect to the weights silently missing). It now equals torch.func.jvp's."""
    import torch.autograd.forward_ad as fwAD
    from torch.func import functional_call, jvp

    torch.manual_seed(0)
    m = GMRConv(2, 2, 3, 5, impl="dense").eval()
    x = torch.randn(1, 2, 8, 8)
    tangent = torch.randn_like(m.weight)
    _, ref = jvp(lambda w: functional_call(m, {"weight": w}, (x,)), (m.weight.detach(),), (tangent,))
    with torch.no_grad():
        m(x)  # a cached kernel
        with fwAD.dual_level():
            y = functional_call(m, {"weight": fwAD.make_dual(m.weight.detach(), tangent)}, (x,))
            jvp_out = fwAD.unpack_dual(y).tangent
    assert jvp_out is not None and torch.allclose(jvp_out, ref, atol=1e-5)


def test_eval_cache_follows_edits_autograd_does_not_see():
    """In-place edits through ``.data`` (a mean-teacher EMA) leave the version counter alone: the cache compares
    values. A kernel cached under autocast or inference mode must not leak into later fp32 / autograd calls."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 8, 8)
    m = GMRConv(2, 2, 3, 5, impl="dense").eval()
    fresh = GMRConv(2, 2, 3, 5, impl="dense").eval()
    with torch.no_grad():
        m(x)
        m.weight.data.mul_(2.0)  # no version bump
        m.log_sigma.data.add_(0.2)
        fresh.load_state_dict(m.state_dict())
        assert torch.equal(m(x), fresh(x))
        teacher, student = GMRConv(2, 2, 3, 5).eval(), GMRConv(2, 2, 3, 5)
        teacher(x)
        for _ in range(3):  # EMA through .data, as mean-teacher code does
            for tp, sp in zip(teacher.parameters(), student.parameters()):
                tp.data.mul_(0.5).add_(sp.data, alpha=0.5)
        fresh.load_state_dict(teacher.state_dict())
        assert torch.equal(teacher(x), fresh(x))
    # autocast first: the cached kernel stays in the parameters' dtype
    m = GMRConv(2, 2, 3, 5, impl="dense").eval()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert m(x).dtype == torch.bfloat16
        fresh.load_state_dict(m.state_dict())
        assert torch.equal(m(x), fresh(x))
    # inference mode first, then autograd through a frozen model (saliency maps)
    m = GMRConv(2, 2, 3, 5, impl="dense").eval().requires_grad_(False)
    with torch.inference_mode():
        m(x)
    xg = x.clone().requires_grad_(True)
    m(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_a_trace_under_no_grad_records_the_synthesis_not_the_cached_kernel():
    """Mutation audit round 6 (N24): ``torch.jit.trace`` of an eval-mode layer under ``no_grad`` (how a model is
    usually exported) must record the synthesis from the parameters: a cached kernel would be baked in as a constant,
    and the traced module would ignore later parameter changes (the trace-checker test runs with gradients on, where
    the cache is off anyway)."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 8, 8)
    m = GMRConv(2, 2, 3, 5, impl="dense").eval()
    with torch.no_grad():
        m(x)  # fills the eval-mode cache
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings of the shape checks
            traced = torch.jit.trace(m, x, check_trace=False)
        before = m(x)
        m.weight.mul_(-2.0)
        m.log_sigma.add_(0.2)
        after = m(x)
        assert rel_err(after, before) > 0.5
        assert rel_err(traced(x), after) < 1e-6


def test_double_has_float64_exact_geometry():
    m = GMRConv(3, 1, 1, 7, num_rings=4).double()
    assert torch.equal(m.distances, offset_distances(7, 3, torch.float64))
    assert torch.equal(m.centers, ring_centers(7, 4, torch.float64))
    back = m.float()
    assert back.distances.dtype == torch.float32
    assert torch.equal(back.distances, offset_distances(7, 3, torch.float64).float())


def test_default_dtype_float64_builds_float64_exact_geometry():
    """Built under ``torch.set_default_dtype(torch.float64)`` the parameters were float64 but the geometry buffers
    float32 (rounded distances, centres and mask): outputs differed from the ``.double()`` layer by ~1e-8."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        m = GMRConv(2, 1, 2, 5, num_rings=3)
    finally:
        torch.set_default_dtype(previous)
    ref = GMRConv(2, 1, 2, 5, num_rings=3).double()
    ref.load_state_dict(m.state_dict())
    for name, buf in ref.named_buffers():
        assert m.get_buffer(name).dtype == torch.float64 and torch.equal(m.get_buffer(name), buf), name
    x = torch.randn(1, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))


def test_no_cache_when_gradients_are_needed():
    m = GMRConv(2, 2, 2, 3).eval()
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    m(x).sum().backward()
    assert m._kernel_cache is None and m.weight.grad is not None


def test_no_cache_when_only_sigma_is_trained():
    """Frozen ring weights and a learned ``log_sigma`` in eval mode (fine-tuning the ring widths with frozen norms):
    the kernel needs a fresh graph to ``log_sigma`` on every call, so it is never cached. A cached kernel would carry
    the first call's graph, and the second backward with unchanged parameters would fail ("Trying to backward
    through the graph a second time")."""
    torch.manual_seed(0)
    m = GMRConv(2, 2, 2, 5).eval()
    m.weight.requires_grad_(False)
    x = torch.randn(1, 2, 7, 7)
    for _ in range(2):
        m.log_sigma.grad = None
        m(x).square().sum().backward()
        assert m._kernel_cache is None
        assert m.log_sigma.grad is not None and m.log_sigma.grad.abs().sum() > 0


def test_module_basis_clips_log_sigma_like_sigma_reports():
    """The layer's basis, and so its kernel and output, uses ``log_sigma`` clipped to ``log_sigma_range`` (the widths
    that ``sigma`` reports): a learned ``log_sigma`` pushed out of range by an optimizer must not give rings wider
    than ``2 n`` or narrower than ``1e-2``."""
    torch.manual_seed(0)
    m = GMRConv(2, 1, 1, 5).double()
    lo, hi = m.log_sigma_range
    with torch.no_grad():
        m.log_sigma.copy_(torch.tensor([lo - 3.0, 0.0, hi + 3.0], dtype=torch.float64))
    clipped = ring_basis(m.distances, m.centers, m.log_sigma.detach().clamp(lo, hi), m.mask)
    assert torch.equal(m.basis(), clipped)
    x = torch.randn(1, 1, 7, 7, dtype=torch.float64)
    ref = torch.nn.functional.conv2d(x, synthesize_kernel(m.weight, clipped), m.bias, padding=2)
    assert rel_err(m(x), ref) < 1e-12


def test_double_and_deepcopy():
    m = GMRConv(3, 2, 2, 3)
    m2 = copy.deepcopy(m).double()
    x = torch.randn(1, 2, 5, 5, 5)
    assert rel_err(m2(x.double()), m(x)) < 1e-5


def test_save_pickle_and_deepcopy_leave_the_kernel_cache_out():
    """After an eval-mode forward the layer holds its kernel cache (parameter clones and the dense kernel, here
    81 / 5 times the weight's size); torch.save(model), pickle and copy.deepcopy carried it along (a saved model
    several times its state_dict, an AveragedModel copy doubling it in memory). The copies now start without it and
    give the same outputs; the original keeps its cache."""
    import io
    import pickle

    torch.manual_seed(0)
    m = GMRConv(2, 16, 16, 9).eval()
    x = torch.randn(1, 16, 12, 12)
    with torch.no_grad():
        y = m(x)
    assert m._kernel_cache is not None
    buf, sd = io.BytesIO(), io.BytesIO()
    torch.save(m, buf)
    torch.save(m.state_dict(), sd)
    assert len(buf.getvalue()) < 1.5 * len(sd.getvalue())
    buf.seek(0)
    copies = [torch.load(buf, weights_only=False), pickle.loads(pickle.dumps(m)), copy.deepcopy(m)]
    for c in copies:
        assert c._kernel_cache is None
        with torch.no_grad():
            assert torch.equal(c(x), y)
    assert m._kernel_cache is not None


def test_autocast_bf16_cpu_runs():
    m = GMRConv(2, 4, 4, 5)
    x = torch.randn(1, 4, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16 and rel_err(y.float(), m(x)) < 3e-2


@pytest.mark.parametrize("impl", ["dense", "rings"])
def test_float64_input_under_autocast_runs_in_float64(impl):
    """A float64 input to a float32 layer runs in float64 (the kernel is cast to the input's dtype); under autocast,
    which leaves float64 alone, the float32 kernel was cast to bfloat16 instead and the convolution failed ("Input
    type (double) and bias type (c10::BFloat16) should be the same")."""
    torch.manual_seed(0)
    m = GMRConv(2, 2, 3, 5, impl=impl).eval()
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
    assert y.dtype == torch.float64 and torch.equal(y, ref)


# ----------------------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("k", [3, 5, 9])
def test_twenty_layer_relu_stack_keeps_activation_std_within_factor_two(k):
    """Variance-preserving initialisation (see GMRConv.reset_parameters).

    A single random 96-channel stack drifts by up to ~2x from weight noise alone (as plain Kaiming does), so the
    check is on the expectation: the geometric mean over three seeded stacks of std(layer l) / std(layer 1) stays
    within [0.5, 2] for all 20 layers. Input: a smooth random image (Gaussian-filtered noise), zero padding.
    """
    log_ratios = []
    for seed in range(3):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        layers = [GMRConv(2, 3 if i == 0 else 96, 96, k) for i in range(20)]
        x = ndimage.gaussian_filter(rng.standard_normal((1, 3, 48, 48)), (0, 0, 2, 2))
        x = torch.from_numpy(x / x.std()).float()
        stds = []
        with torch.no_grad():
            for layer in layers:
                x = torch.relu(layer(x))
                stds.append(x.std().item())
        log_ratios.append(np.log(np.array(stds) / stds[0]))
    ratios = np.exp(np.mean(log_ratios, axis=0))
    assert 0.5 <= ratios.min() and ratios.max() <= 2.0, ratios.round(2)


def test_white_noise_energy_init_would_explode():
    """The naive alternative (variance from sum_{i,p} G_i(p)^2) grows the activation by >100x in 10 layers."""
    layers = [GMRConv(2, 3 if i == 0 else 32, 32, 9, padding_mode="circular") for i in range(10)]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for layer in layers:
            energy = float((layer.basis().double() ** 2).sum())
            layer.weight.normal_(0, (2.0 / (layer.in_channels * energy)) ** 0.5)
        first = torch.relu(layers[0](x))
        y = first
        for layer in layers[1:]:
            y = torch.relu(layer(y))
    assert y.std() / first.std() > 100


# ----------------------------------------------------------------------------------------- block, export, factory
def test_gmr_convolution_block():
    b = GMRConvolution(2, 3, 8, kernel_size=5, act="relu", norm=("instance", {"affine": True}), dropout=0.1)
    assert isinstance(b.conv, GMRConv) and b(torch.randn(2, 3, 12, 12)).shape == (2, 8, 12, 12)
    only = GMRConvolution(3, 2, 4, kernel_size=3, conv_only=True, num_rings=3)
    assert len(only) == 1 and only.conv.num_rings == 3
    b.eval()
    x = torch.randn(1, 3, 12, 12)
    for g in d4_elements():
        assert rel_err(b(g(x)), g(b(x))) < 1e-5
    # MONAI's positional order: (spatial_dims, in_channels, out_channels, strides, kernel_size)
    from monai.networks.blocks import Convolution

    ref, pos = Convolution(2, 4, 8, 1, 3), GMRConvolution(2, 4, 8, 1, 3)
    assert pos.conv.stride == 1 and pos.conv.kernel_size == 3
    assert pos(torch.randn(1, 4, 12, 12)).shape == ref(torch.randn(1, 4, 12, 12)).shape == (1, 8, 12, 12)
    # every positional argument in MONAI's order, padding after is_transposed (it took is_transposed's place before)
    args = (3, 2, 4, 1, 5, "NDA", "relu", None, None, 1, 1, 1, True, False, False, 1)
    ref, pos = Convolution(*args), GMRConvolution(*args)
    assert pos.conv.padding == 1 and pos(torch.randn(1, 2, 6, 6, 6)).shape == ref(torch.randn(1, 2, 6, 6, 6)).shape
    assert GMRConvolution(2, 4, 8, is_transposed=False, output_padding=None).conv.padding == 1  # MONAI-style keywords
    for bad in ({"is_transposed": True}, {"output_padding": 1}):
        with pytest.raises(ValueError, match="no transposed form"):
            GMRConvolution(2, 4, 8, strides=2, **bad)
    for bad in ((1, 2), 0, 1.5):  # errors name this block's argument, not GMRConv's `stride`
        with pytest.raises(ValueError, match=r"^strides must"):
            GMRConvolution(2, 4, 8, strides=bad)
    assert GMRConvolution(3, 4, 8, strides=[2, 2, 2]).conv.stride == 2


def test_gmr_convolution_has_monai_s_attributes():
    """Code reading MONAI ``Convolution``'s attributes (``is_transposed`` raised AttributeError) works on the block."""
    from monai.networks.blocks import Convolution

    ref, blk = Convolution(2, 4, 8), GMRConvolution(2, 4, 8)
    for name in ("spatial_dims", "in_channels", "out_channels", "is_transposed"):
        assert getattr(blk, name) == getattr(ref, name), name
    assert [n for n, _ in blk.named_children()] == [n for n, _ in ref.named_children()] == ["conv", "adn"]



def test_gmr_convolution_block_default_order_is_monai_s():
    """Without ``adn_ordering`` the block applies norm, dropout, act in that order ("NDA"), MONAI ``Convolution``'s
    default: the same layers in the same order as the MONAI block it replaces."""
    from monai.networks.blocks import Convolution

    kw = {"act": "relu", "norm": "batch", "dropout": 0.1}
    ours, ref = GMRConvolution(2, 4, 8, **kw), Convolution(2, 4, 8, **kw)
    assert list(ours.adn._modules) == list(ref.adn._modules) == ["N", "D", "A"]
    assert [type(m) for m in ours.adn.children()] == [type(m) for m in ref.adn.children()]


@pytest.mark.parametrize("d", [2, 3])
def test_export_dense_layer_and_tree(d):
    m = GMRConv(d, 2, 3, 5, stride=2, padding_mode="reflect", groups=1)
    x = torch.randn(1, 2, *([9] * d))
    conv = export_dense(m)
    assert type(conv) is (torch.nn.Conv2d if d == 2 else torch.nn.Conv3d)
    assert rel_err(conv(x), m(x)) <= 1e-5
    net = torch.nn.Sequential(GMRConvolution(d, 2, 4, kernel_size=3, act="relu", norm=None), GMRConv(d, 4, 1, 3))
    dense = export_dense(net)
    assert not any(isinstance(s, GMRConv) for s in dense.modules())
    assert any(isinstance(s, GMRConv) for s in net.modules())  # original untouched
    assert rel_err(dense(x), net(x)) <= 1e-5
    traced = torch.jit.trace(dense.eval(), x)
    assert rel_err(traced(x), net(x)) <= 1e-5


def test_monai_factory_registration():
    from monai.networks.layers.factories import Conv

    assert Conv["GMR", 2] is GMRConv2d and Conv["GMR", 3] is GMRConv3d
    assert Conv[Conv.CONV, 2] is torch.nn.Conv2d  # MONAI's own entry untouched
    names = Conv.names
    monai_gmr.register_monai_factories()
    assert Conv.names == names  # idempotent
    layer = Conv["GMR", 2](4, 8, 5)
    assert isinstance(layer, GMRConv) and layer(torch.randn(1, 4, 6, 6)).shape == (1, 8, 6, 6)
    with pytest.raises(ValueError, match="spatial_dims"):
        Conv["GMR", 1]


def test_factory_follows_a_fresh_import_of_monai_gmr():
    """With MONAI kept and monai_gmr's modules dropped from sys.modules, a fresh ``import monai_gmr`` left
    ``Conv["GMR", 2]`` building the first import's class (not an instance of the new ``monai_gmr.GMRConv``).
    Run in a subprocess: purging monai_gmr here would split class identities for the other tests."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, monai_gmr\n"
        "from monai.networks.layers.factories import Conv\n"
        "doc = Conv.__doc__\n"
        "for k in [k for k in sys.modules if k.startswith('monai_gmr')]: del sys.modules[k]\n"
        "import monai_gmr as fresh\n"
        "assert Conv['GMR', 2] is fresh.GMRConv2d and Conv['GMR', 3] is fresh.GMRConv3d\n"
        "assert isinstance(Conv['GMR', 2](1, 1, 3), fresh.GMRConv)\n"
        "assert Conv.names.count('GMR') == 1 and Conv.__doc__ == doc\n"
        "print('ok')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_to_inside_inference_mode_keeps_the_module_trainable():
    """A no-op .to()/.float() (or a real .double()) inside inference mode must not leave inference-tensor geometry
    buffers behind: training through basis() afterwards would fail."""
    m = GMRConv(2, 2, 2, 5)
    with torch.inference_mode():
        m.to("cpu")
        m.float()
    x = torch.randn(1, 2, 8, 8)
    m.train()
    m(x).sum().backward()
    assert m.weight.grad is not None and not m.distances.is_inference()


def test_keyword_check_leaves_the_global_rng_alone():
    """Networks validate their GMR keywords with a trial layer: seeded initialisation must not depend on it."""
    from monai_gmr.nn.blocks import check_gmr_kwargs

    torch.manual_seed(0)
    ref = torch.rand(3)
    torch.manual_seed(0)
    check_gmr_kwargs({"num_rings": 2, "smoothing": "gaussian"})
    assert torch.equal(torch.rand(3), ref)


def test_a_module_pickled_before_the_sampling_option_loads_as_center():
    """torch.save(model) from before ``sampling`` existed: the unpickled layer has no such attribute; it must run
    with the paper's sampling instead of failing in forward with an AttributeError."""
    import pickle

    m = GMRConv(2, 2, 3, 5).eval()
    x = torch.randn(1, 2, 9, 9)
    state = dict(m.__dict__)
    del state["sampling"]
    old = GMRConv.__new__(GMRConv)
    old.__setstate__(state)
    old = pickle.loads(pickle.dumps(old))
    assert old.sampling == "center" and torch.equal(old(x), m(x)) and "sampling" not in repr(old)


@pytest.mark.parametrize(
    "d,kwargs",
    [(2, {}), (3, {}), (2, {"sampling": "area"}), (3, {"sampling": "area", "sigma": "fixed"}), (2, {"smoothing": "none"})],
)
def test_meta_device_construction_then_load_with_assign(d, kwargs):
    """``with torch.device("meta")`` then ``load_state_dict(..., assign=True)`` (no ``to_empty``): the non-persistent
    geometry buffers (and a fixed sigma) stayed on meta, and the forward raised "Tensor on device cpu is not on the
    expected device meta!"."""
    ref = GMRConv(d, 3, 4, 5, **kwargs)
    with torch.device("meta"):
        m = GMRConv(d, 3, 4, 5, **kwargs)
    m.load_state_dict(ref.state_dict(), assign=True)
    assert not any(b.is_meta for b in m.buffers())
    for name, buf in m.named_buffers():
        assert torch.equal(buf, getattr(ref, name)), name
    x = torch.randn(2, 3, *(7,) * d)
    assert torch.equal(m(x), ref(x))
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), ref.eval()(x))
    # the buffers follow the loaded parameters' dtype
    with torch.device("meta"):
        m64 = GMRConv(d, 3, 4, 5, **kwargs)
    m64.load_state_dict(ref.double().state_dict(), assign=True)
    assert all(b.dtype == torch.float64 and b.device.type == "cpu" for b in m64.buffers())
    assert torch.allclose(m64(x.double()), ref(x.double()), rtol=0, atol=1e-6)


def test_circular_false_keeps_the_corners_and_sigma_is_clipped():
    """``circular=False``: the support is the whole k x k square (corners non-zero in the basis and the kernel);
    ``sigma`` reports the clipped widths (what the basis uses)."""
    torch.manual_seed(0)
    sq, disk = GMRConv(2, 1, 1, 5, circular=False), GMRConv(2, 1, 1, 5)
    assert (sq.basis()[:, 0, 0] > 0).any() and (sq.basis().sum(0) > 0).all()
    assert (disk.basis()[:, 0, 0] == 0).all()
    assert torch.equal(sq.mask, torch.ones(5, 5)) and sq.dense_kernel()[0, 0, 0, 0] != 0
    sq3 = GMRConv(3, 1, 1, 3, circular=False)
    assert (sq3.basis()[:, 0, 0, 0] > 0).any()
    lo, hi = sq.log_sigma_range
    with torch.no_grad():
        sq.log_sigma.copy_(torch.tensor([lo - 3.0, 0.0, hi + 3.0]))
    assert torch.allclose(sq.sigma, torch.tensor([math.exp(lo), 1.0, math.exp(hi)]))


def test_gmr_convolution_passes_adn_ordering_and_dropout_dim():
    """``GMRConvolution`` builds MONAI's ADN with the given ``adn_ordering`` and ``dropout_dim`` (as
    ``monai.networks.blocks.Convolution`` does)."""
    blk = GMRConvolution(2, 1, 2, kernel_size=3, adn_ordering="AN", act="relu", norm="batch", dropout=0.1)
    assert list(blk.adn._modules) == ["A", "N"]
    blk = GMRConvolution(2, 1, 2, kernel_size=3, adn_ordering="DNA", act="relu", norm="batch", dropout=0.1, dropout_dim=2)
    assert list(blk.adn._modules) == ["D", "N", "A"] and isinstance(blk.adn.D, torch.nn.Dropout2d)
    assert isinstance(GMRConvolution(2, 1, 2, kernel_size=3, dropout=0.1).adn.D, torch.nn.Dropout)
    assert not hasattr(GMRConvolution(2, 1, 2, kernel_size=3, conv_only=True), "adn")


@pytest.mark.parametrize("kw, layers", [({"act": "relu", "norm": None}, ["A"]), ({"act": None, "norm": "batch"}, ["N"]),
                                        ({"act": None, "norm": None, "dropout": 0.1}, ["D"])])  # fmt: skip
def test_gmr_convolution_block_keeps_a_single_adn_layer(kw, layers):
    """Only act, norm and dropout all ``None`` leave out the ADN block (as MONAI's ``Convolution``); one of them alone
    is still applied (an activation-only block ends in that activation)."""
    block = GMRConvolution(2, 4, 8, **kw)
    assert list(block.adn._modules) == layers
    if kw["act"] == "relu":
        assert (block(torch.randn(1, 4, 8, 8)) >= 0).all()
    assert not hasattr(GMRConvolution(2, 4, 8, act=None, norm=None), "adn")


def test_gmrconvolution_strided_same_padding_error_names_strides():
    with pytest.raises(ValueError, match=r"\(strides=2\)"):
        GMRConvolution(2, 1, 2, strides=2, padding="same")


@pytest.mark.parametrize("dropout", ["0.2", 0.2])
def test_gmrconvolution_reads_a_numeric_text_dropout(dropout):
    block = GMRConvolution(2, 1, 2, dropout=dropout)
    assert isinstance(block.adn.D, torch.nn.Dropout) and block.adn.D.p == 0.2
    with pytest.raises(ValueError, match="dropout="):
        GMRConvolution(2, 1, 2, dropout=True)


def test_explicit_triton_fallback_on_cpu_uses_the_eval_kernel_cache(monkeypatch):
    """impl="triton" falling back to the dense path (CPU, no interpreter) re-synthesised the kernel on every call."""
    import os

    import monai_gmr.functional.conv as fconv
    import monai_gmr.nn.conv as nconv

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the Triton interpreter runs impl='triton' on CPU")
    calls = []
    for mod in (nconv, fconv):
        orig = mod.synthesize_kernel
        monkeypatch.setattr(mod, "synthesize_kernel", lambda *a, _o=orig, **k: calls.append(1) or _o(*a, **k))
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 8)
    ref = GMRConv(2, 1, 2, 3, impl="dense").eval()
    conv = GMRConv(2, 1, 2, 3, impl="triton").eval()
    conv.load_state_dict(ref.state_dict())
    with torch.no_grad():
        y1, y2 = conv(x), conv(x)
        assert len(calls) == 1
        assert torch.equal(y1, y2) and torch.allclose(y1, ref(x), atol=1e-6)


# ------------------------------------------------------------------------------------------------ mutation audit 4
@pytest.mark.parametrize("norm, cls", [("batch", torch.nn.BatchNorm3d), ("instance", torch.nn.InstanceNorm3d)])
def test_gmr_convolution_3d_norm_is_built_for_3_spatial_dims(norm, cls):
    """A 3D block's norm is MONAI's 3D layer (``norm_dim=spatial_dims``), as in ``Convolution``; a 2D norm refuses
    the 5D activations."""
    from monai.networks.blocks import Convolution

    blk = GMRConvolution(3, 2, 4, kernel_size=3, norm=norm)
    assert type(blk.adn.N) is type(Convolution(3, 2, 4, norm=norm).adn.N) is cls
    assert blk(torch.randn(2, 2, 5, 5, 5)).shape == (2, 4, 5, 5, 5)


def test_gmr_convolution_dropout_probability_bounds_are_inclusive():
    """The documented range is [0, 1], bounds included (as ``torch.nn.Dropout``)."""
    for p in (0.0, 1.0, "1"):
        assert GMRConvolution(2, 1, 2, dropout=p).adn.D.p == float(p)
    for p in (-0.1, 1.1):
        with pytest.raises(ValueError, match="dropout="):
            GMRConvolution(2, 1, 2, dropout=p)
