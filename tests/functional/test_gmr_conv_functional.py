"""The two implementations of the functional GMR convolution compute the same function."""

from __future__ import annotations

import itertools

import pytest
import torch

from monai_gmr.functional import gmr_conv, synthesize_kernel
from monai_gmr.nn import GMRConv
from tests.conftest import rel_err

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny, overhead-bound tensors

CASES = [
    # spatial_dims, c_in, c_out, k, stride, dilation, groups, bias, padding_mode
    (2, 4, 6, 5, 1, 1, 1, True, "zeros"),
    (2, 4, 6, 7, 2, 1, 2, False, "reflect"),
    (2, 6, 3, 3, 1, 2, 3, True, "replicate"),
    (2, 4, 4, 9, 3, 1, 4, True, "circular"),
    (3, 4, 6, 5, 1, 1, 2, True, "zeros"),
    (3, 2, 4, 3, 2, 2, 1, False, "reflect"),
    (3, 3, 3, 3, 1, 1, 3, True, "replicate"),
    (3, 2, 2, 5, 1, 1, 1, True, "circular"),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("sampling", ["center", "area"])
def test_dense_equals_rings(case, dtype, tol, sampling):
    d, cin, cout, k, stride, dil, groups, bias, pmode = case
    m = GMRConv(
        d, cin, cout, k, stride=stride, dilation=dil, groups=groups, bias=bias, padding_mode=pmode, sampling=sampling
    ).to(dtype)
    with torch.no_grad():
        m.log_sigma.add_(torch.randn_like(m.log_sigma) * 0.2)
        if bias:
            m.bias.normal_()
    x = torch.randn(2, cin, *([11] * d if d == 2 else [9, 8, 10]), dtype=dtype)
    m.impl = "dense"
    yd = m(x)
    m.impl = "rings"
    yr = m(x)
    assert yd.shape == yr.shape
    assert rel_err(yr, yd) <= tol


def test_dense_matches_manual_conv():
    m = GMRConv(2, 3, 2, 5).double()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    k = synthesize_kernel(m.weight, m.basis())
    ref = torch.nn.functional.conv2d(x, k, m.bias, padding=2)
    assert rel_err(m(x), ref) < 1e-12


@pytest.mark.parametrize("impl", ["dense", "rings"])
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("sampling", ["center", "area"])
def test_gradcheck(impl, d, sampling):
    m = GMRConv(d, 2, 3, 3 if d == 3 else 5, groups=1, impl=impl, sampling=sampling).double()
    x = torch.randn(1, 2, *([5] * d), dtype=torch.float64, requires_grad=True)

    def f(x, w, ls, b):
        basis = __import__("monai_gmr").functional.ring_basis(
            m.distances, m.centers, ls, m.mask, "gaussian", m.log_sigma_range, area=sampling == "area"
        )
        return gmr_conv(x, w, basis, b, padding=m.padding, impl=impl)

    w = m.weight.detach().clone().requires_grad_(True)
    ls = m.log_sigma.detach().clone().requires_grad_(True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x, w, ls, b), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["dense", "rings"])
def test_gradgradcheck_module_in_eval_mode(impl):
    """Double backward (gradient penalties, meta-learning) through the module's own forward, in eval mode where the
    kernel cache could otherwise hand autograd a detached kernel: second derivatives w.r.t. the input, the ring
    weights and log_sigma are exact."""
    torch.manual_seed(0)
    m = GMRConv(2, 2, 2, 3, impl=impl, padding_mode="reflect").double().eval()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = m.weight.detach().clone().requires_grad_(True)
    ls = m.log_sigma.detach().clone().requires_grad_(True)

    def f(x, w, ls):
        return torch.func.functional_call(m, {"weight": w, "log_sigma": ls}, (x,))

    assert torch.autograd.gradgradcheck(f, (x, w, ls), eps=1e-6, atol=1e-6)


def test_gradcheck_module_sigma_gets_gradient():
    m = GMRConv(2, 2, 2, 5).double()
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64)
    m(x).square().sum().backward()
    assert m.log_sigma.grad is not None and m.log_sigma.grad.abs().sum() > 0
    assert m.weight.grad.shape == (2, 2, 3)


def test_functional_errors():
    m = GMRConv(2, 2, 2, 3)
    with pytest.raises(ValueError, match="impl"):
        gmr_conv(torch.randn(1, 2, 5, 5), m.weight, m.basis(), impl="fft")
    with pytest.raises(ValueError, match="spatial dims"):
        gmr_conv(torch.randn(2, 5, 5), m.weight, m.basis())
    with pytest.raises(ValueError, match="rings"):
        synthesize_kernel(torch.randn(2, 2, 3), m.basis())
    for pad in (0, 1):  # also when no padding is applied
        with pytest.raises(ValueError, match="padding_mode"):
            gmr_conv(torch.randn(1, 2, 5, 5), m.weight, m.basis(), padding=pad, padding_mode="mirror")


@pytest.mark.parametrize("impl", ["dense", "rings", "auto"])
def test_integer_input_is_an_error_naming_the_dtype(impl):
    """An integer input made gmr_conv cast the kernel to integers (all zeros for |K| < 1): a silent wrong result."""
    m = GMRConv(2, 1, 2, 5)
    with pytest.raises(ValueError, match="floating-point.*torch.int64"):
        gmr_conv(torch.ones(1, 1, 8, 8, dtype=torch.int64), m.weight, m.basis(), padding=2, impl=impl)


def test_all_padding_modes_and_strides_keep_shapes():
    for pmode, stride in itertools.product(("zeros", "reflect", "replicate", "circular"), (1, 2)):
        m = GMRConv(2, 1, 1, 5, stride=stride, padding_mode=pmode)
        y = m(torch.randn(1, 1, 10, 10))
        assert y.shape == (1, 1, 10 // stride, 10 // stride)


def test_auto_selection_follows_measured_table():
    from monai_gmr.functional import select_impl

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert select_impl("dense", cpu, 2, 9, 128, True) == "dense"  # explicit choice passes through
    assert select_impl("auto", cpu, 2, 5, 128, True) == "rings"  # wide 2D layers on CPU
    assert select_impl("auto", cpu, 2, 11, 256, False) == "rings"
    assert select_impl("auto", cpu, 2, 3, 128, True) == "rings"  # k = 3: rings 1.17-1.30x dense (0e81fa8), 0.64-0.73x (35ea11e)
    assert select_impl("auto", cpu, 2, 5, 64, True) == "dense"  # rings 1.2-1.7x dense at C_in = 64
    assert select_impl("auto", cpu, 2, 9, 32, False) == "dense"  # rings 3.1x dense (it won on the slower VM)
    assert select_impl("auto", cpu, 2, 9, 16, True) == "dense"
    assert select_impl("auto", cpu, 3, 5, 16, False) == "dense" and select_impl("auto", cpu, 3, 3, 16, False) == "rings"
    assert select_impl("auto", cpu, 3, 9, 16, False) == "dense"  # rings 4.3x dense at 24^3 (0e81fa8)
    assert select_impl("auto", cuda, 2, 9, 128, True) == "triton"  # measured on H100 (docs/benchmarks_triton.md)
    assert select_impl("auto", cpu, 2, 1, 128, True) == "dense"
    # an unknown width matches only the width-free rules (the CPU rules need in_channels)
    assert select_impl("auto", cpu, 2, 5, None, True) == "dense"
    assert select_impl("auto", cpu, 3, 3, None, False) == "dense"
    assert select_impl("auto", cuda, 2, 9, None, True) == "dense"


def test_auto_selection_compares_the_per_group_width():
    """The 128-channel CPU rule read C_in whatever the groups: depthwise/grouped layers went to rings, which
    convolves every input channel with all n rings and ran 3.6-28x slower than dense there (docs/benchmarks.md
    section 1). The width compared is C_in / groups now; groups=1 is unchanged."""
    from monai_gmr.functional import gmr_conv, select_impl

    cpu = torch.device("cpu")
    assert select_impl("auto", cpu, 2, 9, 128, True, groups=1) == "rings"
    assert select_impl("auto", cpu, 2, 9, 128, True, groups=128) == "dense"  # depthwise
    assert select_impl("auto", cpu, 2, 9, 256, False, groups=8) == "dense"  # 32 channels per group
    assert select_impl("auto", cpu, 2, 9, 256, False, groups=2) == "rings"  # 128 per group
    assert select_impl("auto", cpu, 3, 3, 32, True, groups=1) == "rings"
    assert select_impl("auto", cpu, 3, 3, 32, True, groups=32) == "dense"  # 3D depthwise: rings 12x slower
    assert select_impl("auto", cpu, 3, 3, 32, True, groups=4) == "dense"
    # the layer and the functional form pass their groups
    seen = []
    import monai_gmr.functional.conv as fconv

    real = fconv.select_impl

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out)
        return out

    layer = GMRConv(2, 128, 128, 5, groups=128, impl="auto")
    x = torch.randn(1, 128, 6, 6)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fconv, "select_impl", spy)
        import monai_gmr.nn.conv as nconv

        mp.setattr(nconv, "select_impl", spy)
        layer(x)
        gmr_conv(x, layer.weight, layer.basis(), padding=2, groups=128, impl="auto")
    assert seen == ["dense", "dense"]


def test_auto_module_matches_dense_in_train_and_inference():
    m = GMRConv(2, 128, 8, 5, impl="auto")  # a width and size for which auto resolves to rings on CPU
    x = torch.randn(1, 128, 9, 9)
    y_auto = m(x)
    m.impl = "dense"
    assert rel_err(y_auto, m(x)) < 1e-5
    m.impl = "auto"
    with torch.no_grad():
        assert rel_err(m(x), y_auto) < 1e-5


@pytest.mark.parametrize("k", [9, 11])
def test_auto_trace_with_grad_enabled_passes_the_trace_checker(k, monkeypatch):
    """``impl="auto"`` on CPU picked rings for k = 9, 11 in inference and dense with grad: ``torch.jit.trace`` (grad
    enabled, checker on, as by default) recorded the dense graph and its checker, which reruns under no_grad, the
    rings graph ("Graphs differed across invocations"), so an eval-mode GMRUNet (k = 9) could not be traced.
    While tracing, the choice no longer follows the grad mode. (The measured table has no grad-dependent CPU rule
    since 0e81fa8: the test installs that earlier rule, so it still guards the tracing fix.)"""
    import warnings

    from monai_gmr.functional import AUTO_TABLE, select_impl

    monkeypatch.setitem(AUTO_TABLE, ("cpu", 2), [(0, (9, 11), False, "rings")])
    assert select_impl("auto", torch.device("cpu"), 2, k, 4, False) == "rings"
    assert select_impl("auto", torch.device("cpu"), 2, k, 4, True) == "dense"
    torch.manual_seed(0)
    conv = GMRConv(2, 4, 4, k).eval()
    x = torch.randn(2, 4, 16, 16)
    basis = conv.basis().detach()

    def functional(inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return gmr_conv(inp, weight, basis, bias, padding=k // 2, impl="auto")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of the input checks
        traced = torch.jit.trace(conv, x)  # check_trace=True
        traced_f = torch.jit.trace(functional, (x, conv.weight, conv.bias))
    with torch.no_grad():
        ref = conv(x)
        assert rel_err(traced(x), ref) <= 1e-5 and rel_err(traced_f(x, conv.weight, conv.bias), ref) <= 1e-5


@pytest.mark.parametrize("impl", ["dense", "rings"])
@pytest.mark.parametrize("pmode", ["reflect", "replicate", "circular", "zeros"])
def test_per_dim_padding_matches_torch_reference(impl, pmode):
    """A per-dim padding ``(ph, pw)`` pads H by ``ph`` and W by ``pw`` (F.pad takes the last dim first), checked against
    an independent F.pad + F.conv2d reference on a non-square input, where swapping the two would change the result
    (both impls share the padding, so comparing them with each other cannot see it)."""
    torch.manual_seed(0)
    m = GMRConv(2, 2, 3, 5).double()
    x = torch.randn(1, 2, 9, 12, dtype=torch.float64)
    kernel = synthesize_kernel(m.weight, m.basis())
    if pmode == "zeros":
        ref = torch.nn.functional.conv2d(x, kernel, m.bias, padding=(1, 2))
    else:
        ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [2, 2, 1, 1], mode=pmode), kernel, m.bias)
    y = gmr_conv(x, m.weight, m.basis(), m.bias, padding=(1, 2), padding_mode=pmode, impl=impl)
    assert y.shape == ref.shape == (1, 3, 7, 12)
    assert rel_err(y, ref) < 1e-12


@pytest.mark.parametrize("impl", ["dense", "rings"])
@pytest.mark.parametrize("pmode", ["reflect", "replicate", "circular"])
def test_per_dim_padding_with_a_zero_entry_still_uses_the_mode(impl, pmode):
    """Mutation audit round 6 (C14): a per-dim padding ``(0, p)`` pads W with ``padding_mode``, not with zeros (the
    mode must not be applied only when every dim pads)."""
    torch.manual_seed(0)
    m = GMRConv(2, 2, 3, 5).double()
    x = torch.randn(1, 2, 9, 12, dtype=torch.float64) + 2.0  # far from zero, so zero padding is far from the mode's
    kernel = synthesize_kernel(m.weight, m.basis())
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [2, 2, 0, 0], mode=pmode), kernel, m.bias)
    y = gmr_conv(x, m.weight, m.basis(), m.bias, padding=(0, 2), padding_mode=pmode, impl=impl)
    assert y.shape == ref.shape == (1, 3, 5, 12)
    assert rel_err(y, ref) < 1e-12


@pytest.mark.parametrize("pmode", ["zeros", "reflect"])
def test_numpy_int_padding_is_taken_as_an_int(pmode):
    """A NumPy integer padding (a value read from an array or a config) pads like the same Python int, as in
    ``torch.nn.functional.conv2d``; ``gmr_conv`` called ``list()`` on it and raised ``TypeError: 'numpy.int64' object
    is not iterable``."""
    import numpy as np

    torch.manual_seed(0)
    m = GMRConv(2, 2, 3, 5).double()
    x = torch.randn(1, 2, 7, 9, dtype=torch.float64)
    ref = gmr_conv(x, m.weight, m.basis(), m.bias, padding=2, padding_mode=pmode)
    y = gmr_conv(x, m.weight, m.basis(), m.bias, padding=np.int64(2), padding_mode=pmode)
    assert y.shape == ref.shape == (1, 3, 7, 9) and torch.equal(y, ref)


@pytest.mark.parametrize("d", [2, 3])
def test_same_padding_keeps_size_with_dilation(d):
    """``padding=None``/``"same"`` is ``dilation * (k - 1) // 2``: the output keeps the input size at any dilation,
    and the module equals the dilated torch convolution of its synthesised kernel."""
    from monai_gmr.functional import same_padding

    assert same_padding(5, 1) == 2 and same_padding(5, 3) == 6 and same_padding(3, 2) == 2
    torch.manual_seed(0)
    m = GMRConv(d, 2, 2, 3, dilation=2, padding="same").double()
    x = torch.randn(1, 2, *([9] * d), dtype=torch.float64)
    y = m(x)
    assert y.shape == x.shape
    conv = torch.nn.functional.conv2d if d == 2 else torch.nn.functional.conv3d
    ref = conv(x, synthesize_kernel(m.weight, m.basis()), m.bias, padding=2, dilation=2)
    assert rel_err(y, ref) < 1e-12


@pytest.mark.parametrize("impl", ["dense", "rings"])
def test_parameters_are_cast_to_the_input_dtype(impl):
    """float32 parameters and a float64 input (no autocast): the kernel/bias are cast to the input's dtype, so the
    output is float64 and equals the float64 computation (to float32 rounding of the parameters)."""
    torch.manual_seed(0)
    m = GMRConv(2, 2, 3, 5, impl=impl)
    with torch.no_grad():
        m.bias.normal_()
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    y = gmr_conv(x, m.weight, m.basis(), m.bias, padding=2, impl=impl)
    ref = gmr_conv(x, m.weight.double(), m.basis().double(), m.bias.double(), padding=2, impl=impl)
    assert y.dtype == torch.float64 and rel_err(y, ref) < 1e-6


@pytest.mark.parametrize("impl", ["dense", "rings", "auto", "triton"])
def test_ring_count_mismatch_is_an_error_on_every_impl(impl):
    """The rings path reshaped the weight to (C_out, C_in/groups * n) without reading its ring axis: a weight of 4
    channels x 2 rings against a 2-channel input and a 4-ring basis (both 8 ring responses) ran silently, mixing the
    ring responses with the wrong weights."""
    torch.manual_seed(0)
    basis = GMRConv(2, 2, 3, 7).basis().detach()  # 4 rings
    with pytest.raises(ValueError, match="2 rings but basis has 4"):
        gmr_conv(torch.randn(1, 2, 9, 9), torch.randn(3, 4, 2), basis, padding=3, impl=impl)


@pytest.mark.parametrize("impl", ["dense", "rings", "auto", "triton"])
def test_shape_errors_name_the_argument_on_every_impl(impl):
    """Channel, groups, bias, basis and padding mismatches raise a ValueError naming the argument, not a RuntimeError
    from inside F.conv2d / Tensor.repeat."""
    torch.manual_seed(0)
    m = GMRConv(2, 4, 6, 3)
    w, basis, x = m.weight.detach(), m.basis().detach(), torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="input has 3 input channels"):
        gmr_conv(torch.randn(1, 3, 8, 8), w, basis, padding=1, impl=impl)
    with pytest.raises(ValueError, match="groups=2"):
        gmr_conv(x, w, basis, padding=1, groups=2, impl=impl)
    with pytest.raises(ValueError, match="bias must have shape"):
        gmr_conv(x, w, basis, torch.zeros(5), padding=1, impl=impl)
    with pytest.raises(ValueError, match="basis must have shape"):
        gmr_conv(x, w, torch.randn(2, 3, 3, 3), padding=1, impl=impl)
    for pad in ((1, 1, 1), -1):
        with pytest.raises(ValueError, match="padding must be"):
            gmr_conv(x, w, basis, padding=pad, impl=impl)
