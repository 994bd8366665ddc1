"""Fused Triton GMR convolution (``impl="triton"``, issue 7).

- Pure-PyTorch checks of the shell decomposition (always run).
- Fallback behaviour on CPU and without Triton (always run).
- Kernel correctness in Triton's CPU interpreter (``TRITON_INTERPRET=1``, tiny shapes; skipped without Triton).
- Kernel correctness on CUDA against a float64 dense reference (``requires_cuda``, marked ``gpu``): outputs and
  the gradients for the input, ring weights, log sigma and bias; kernel outputs are poisoned with NaN first.
"""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monai_gmr.functional import gmr_conv, offset_distances, select_impl, support_mask, synthesize_kernel
import monai_gmr.functional.conv as conv_mod
from monai_gmr.functional import triton_conv as tc
from monai_gmr.nn import GMRConv
from tests.conftest import REQUIRE_GPU, rel_err, requires_cuda

HAS_TRITON = tc.triton_available()
# on a GPU machine (MONAI_GMR_REQUIRE_GPU=1) a missing Triton is a failure, not a skip
needs_triton = pytest.mark.skipif(not HAS_TRITON and not REQUIRE_GPU, reason="triton is not installed")


# ---------------------------------------------------------------------------------------------------- shell table
@pytest.mark.parametrize(
    "k,d,circular,shells,offsets",
    [(9, 2, True, 13, 69), (5, 2, True, 5, 21), (11, 2, True, 16, 97), (3, 2, False, 3, 9), (9, 2, False, 15, 81),
     (7, 3, True, 12, 179), (3, 3, True, 3, 19), (1, 2, True, 1, 1)],
)  # fmt: skip
def test_shell_table_counts(k, d, circular, shells, offsets):
    t = tc.shell_table(k, d, circular)
    assert t.num_shells == shells
    assert t.num_offsets == offsets
    assert t.sq_radius[0] == 0 and list(t.sq_radius) == sorted(set(t.sq_radius))
    # every offset of the support appears once: the centre plus both signs of every stored pair
    assert 1 + 2 * len(t.codes) == offsets
    mask = support_mask(k, d, circular)
    assert int(mask.sum()) == offsets


@pytest.mark.parametrize("d", [2, 3])
def test_shell_offsets_cover_support_with_equal_radius(d):
    k = 7 if d == 2 else 5
    t = tc.shell_table(k, d, True)
    shells = tc._shell_offsets(t)
    seen = set()
    for s, shell in enumerate(shells):
        for q in shell:
            assert sum(c * c for c in q) == t.sq_radius[s]
            seen.add(q)
    r = k // 2
    grid = offset_distances(k, d)
    mask = support_mask(k, d, True)
    want = {(0,) * (3 - d) + tuple(int(i) - r for i in idx) for idx in torch.nonzero(mask > 0).tolist()}
    assert seen == want
    # the representative index points at an offset of the right radius
    flat = grid.reshape(-1)
    for s in range(t.num_shells):
        assert abs(float(flat[t.rep_index[s]]) ** 2 - t.sq_radius[s]) < 1e-9


@pytest.mark.parametrize("d,k", [(2, 5), (2, 9), (3, 3), (3, 5)])
@pytest.mark.parametrize("smoothing,circular", [("gaussian", True), ("none", True), ("gaussian", False)])
def test_shell_weights_reproduce_dense_kernel(d, k, smoothing, circular):
    """Expanding the shell weights over their offsets gives exactly synthesize_kernel's dense kernel."""
    m = GMRConv(d, 3, 4, k, smoothing=smoothing, circular=circular).double()
    with torch.no_grad():
        m.log_sigma.add_(torch.randn_like(m.log_sigma) * 0.3)
    basis = m.basis()
    dense = synthesize_kernel(m.weight, basis)  # (C_out, C_in, k..)
    for circ in {circular, False}:  # the full cube is valid for any radial basis
        t = tc.shell_table(k, d, circ)
        w = tc.shell_weights(m.weight, basis, t).double()  # (S, C_in, C_out)
        rebuilt = torch.zeros_like(dense)
        r = k // 2
        for s, shell in enumerate(tc._shell_offsets(t)):
            for q in shell:
                idx = tuple(c + r for c in q[3 - d :])
                rebuilt[(slice(None), slice(None)) + idx] = w[s].t()
        assert rel_err(rebuilt, dense) < 1e-6  # shell weights are float32


def test_shell_weights_are_differentiable():
    m = GMRConv(2, 3, 4, 5).double()
    t = tc.shell_table(5, 2, True)
    w = tc.shell_weights(m.weight, m.basis(), t)
    w.sum().backward()
    assert m.weight.grad is not None and m.log_sigma.grad is not None
    assert torch.isfinite(m.log_sigma.grad).all() and m.log_sigma.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------- dispatch
def test_impl_triton_is_accepted():
    m = GMRConv(2, 3, 4, 5, impl="triton")
    assert "impl=triton" in repr(m)


def test_cpu_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(tc, "_WARNED", set())
    m = GMRConv(2, 3, 4, 5, impl="triton")
    x = torch.randn(2, 3, 9, 10)
    with caplog.at_level(logging.WARNING, logger=tc.__name__):
        y1 = m(x)
        y2 = m(x)
    warnings = [r for r in caplog.records if "impl='triton' is not available" in r.getMessage()]
    assert len(warnings) == 1
    m.impl = "dense"
    ref = m(x)
    assert rel_err(y1, ref) < 1e-6 and rel_err(y2, ref) < 1e-6


def test_functional_triton_falls_back_for_unsupported_configs(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    m = GMRConv(2, 4, 6, 5).double()
    x = torch.randn(1, 4, 11, 12, dtype=torch.float64)
    basis = m.basis()
    for kw in (dict(stride=2, padding=2), dict(padding=2, groups=2), dict(padding=2, padding_mode="reflect"),
               dict(padding=0), dict(padding=4, dilation=2)):  # fmt: skip
        w = m.weight if kw.get("groups", 1) == 1 else m.weight[:, :2]
        y = gmr_conv(x, w, basis, m.bias, impl="triton", **kw)
        ref = gmr_conv(x, w, basis, m.bias, impl="dense", **kw)
        assert rel_err(y, ref) < 1e-12


def test_unsupported_reasons(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(1, 2, 8, 8)
    if HAS_TRITON:
        assert tc.triton_unsupported_reason(x, 5, 1, 2, 1, 1, "zeros") is None
    assert "stride" in tc.triton_unsupported_reason(x, 5, 2, 2, 1, 1, "zeros")
    assert "dilation" in tc.triton_unsupported_reason(x, 5, 1, 4, 2, 1, "zeros")
    assert "groups" in tc.triton_unsupported_reason(x, 5, 1, 2, 1, 2, "zeros")
    assert "padding" in tc.triton_unsupported_reason(x, 5, 1, 1, 1, 1, "zeros")
    assert "padding_mode" in tc.triton_unsupported_reason(x, 5, 1, 2, 1, 1, "reflect")
    assert "dtype" in tc.triton_unsupported_reason(x.double(), 5, 1, 2, 1, 1, "zeros")
    monkeypatch.delenv("TRITON_INTERPRET")
    assert tc.triton_unsupported_reason(x, 5, 1, 2, 1, 1, "zeros") is not None  # CPU without the interpreter


def test_tf32_rule_reads_the_conv_precision_flag():
    """The float32 kernels use TF32 when cuDNN convolutions may. The rule read ``torch.backends.cudnn.allow_tf32``,
    which raises once PyTorch's newer per-operator flags differ between conv and RNN: after
    ``torch.backends.cudnn.conv.fp32_precision = "ieee"`` every float32 Triton call raised there, which gmr_conv
    took for a kernel failure (kernels off for the process). It now reads the conv flag."""
    cudnn = torch.backends.cudnn
    if not hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        pytest.skip("this PyTorch has only the legacy allow_tf32 flag")
    saved = (cudnn.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision)
    try:
        cudnn.conv.fp32_precision = "ieee"
        assert tc._dot_mode(torch.float32, False) == (False, "ieee")
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = "tf32", "ieee"
        assert tc._dot_mode(torch.float32, False) == (True, "tf32")
        assert tc._dot_mode(torch.float32, True) == (False, "ieee")  # the interpreter: exact fp32
        cudnn.conv.fp32_precision = cudnn.rnn.fp32_precision = "tf32"
        cudnn.allow_tf32 = False  # the legacy flag still decides when it is the one used
        assert tc._dot_mode(torch.float32, False) == (False, "ieee")
    finally:
        cudnn.fp32_precision = saved[0]
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = saved[1:]
    assert (cudnn.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) == saved


def test_auto_never_selects_triton_on_cpu():
    for k in (3, 5, 7, 9, 11):
        for c in (1, 32, 128):
            for d in (2, 3):
                assert select_impl("auto", torch.device("cpu"), d, k, c, True) != "triton"


def test_auto_selects_triton_only_where_measured_faster_on_cuda():
    cuda = torch.device("cuda")  # select_impl only reads the device type: no GPU needed
    for k in (7, 9, 11):
        assert select_impl("auto", cuda, 2, k, 128, True) == "triton"
        assert select_impl("auto", cuda, 2, k, 128, False) == "triton"
        assert select_impl("auto", cuda, 2, k, 64, True) == "dense"  # narrower layers were not measured
    for k in (1, 3, 5):
        assert select_impl("auto", cuda, 2, k, 128, True) == "dense"
    assert select_impl("auto", cuda, 3, 7, 32, True) == "triton" and select_impl("auto", cuda, 3, 5, 32, False) == "triton"
    assert select_impl("auto", cuda, 3, 3, 32, True) == "dense" and select_impl("auto", cuda, 3, 7, 16, True) == "dense"
    assert select_impl("auto", cuda, 2, 9, 128, True, allow_triton=False) == "dense"


def test_fallback_without_triton(monkeypatch, caplog):
    """With triton unimportable, impl='triton' falls back to a working implementation."""
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setattr(tc, "_WARNED", set())
    tc.triton_available.cache_clear()
    try:
        assert not tc.triton_available()
        m = GMRConv(2, 3, 4, 3, impl="triton")
        x = torch.randn(1, 3, 8, 8)
        with caplog.at_level(logging.WARNING, logger=tc.__name__):
            y = m(x)
        assert any("not installed" in r.getMessage() for r in caplog.records)
        m.impl = "dense"
        assert rel_err(y, m(x)) < 1e-6
    finally:
        monkeypatch.undo()
        tc.triton_available.cache_clear()


def test_module_imports_without_triton():
    path = Path(tc.__file__)
    code = (
        "import sys, importlib.util as u; sys.modules['triton'] = None; "
        f"spec = u.spec_from_file_location('tc_probe', {str(path)!r}); m = u.module_from_spec(spec); "
        "sys.modules['tc_probe'] = m; spec.loader.exec_module(m); assert not m.triton_available(); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


# ---------------------------------------------------------------------------------------------------- helpers
def _make(d, c_in, c_out, k, circular=True, smoothing="gaussian", bias=True, dtype=torch.float64, device="cpu"):
    m = GMRConv(d, c_in, c_out, k, circular=circular, smoothing=smoothing, bias=bias)
    with torch.no_grad():
        if smoothing == "gaussian":
            m.log_sigma.add_(torch.randn_like(m.log_sigma) * 0.2)
        if bias:
            m.bias.normal_()
    return m.to(device=device, dtype=dtype)


def _grads(m, x, g, autocast_dtype=None):
    """Output and gradients (input, ring weights, log sigma, bias) of ``m(x)`` with upstream gradient ``g``."""
    x = x.detach().clone().requires_grad_(True)
    params = [m.weight] + ([m.log_sigma] if isinstance(m.log_sigma, torch.nn.Parameter) else []) + (
        [m.bias] if m.bias is not None else []
    )
    if autocast_dtype is not None:
        with torch.autocast(x.device.type, dtype=autocast_dtype):
            y = m(x)
    else:
        y = m(x)
    grads = torch.autograd.grad(y, [x] + params, g.to(y.dtype))
    return [y.detach()] + list(grads)


def _compare(d, shape, c_out, k, dtype, tol, device, autocast=False, circular=True, smoothing="gaussian", bias=True,
             channels_last=False):  # fmt: skip
    """Triton impl in ``dtype`` (or fp32 params under autocast to ``dtype``) against the float64 dense impl."""
    b, c_in = shape[:2]
    ref_m = _make(d, c_in, c_out, k, circular, smoothing, bias, torch.float64, device)
    ref_m.impl = "dense"
    if not autocast and dtype != torch.float32:  # low-precision parameters: compare the same rounded function
        with torch.no_grad():
            for prm in ref_m.parameters():
                prm.copy_(prm.to(dtype).double())
    x = torch.randn(*shape, dtype=torch.float64, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if d == 2 else torch.channels_last_3d)
    g = torch.randn(b, c_out, *shape[2:], dtype=torch.float64, device=device)
    ref = _grads(ref_m, x, g)
    m = copy.deepcopy(ref_m)
    m.impl = "triton"
    launches = len(_TRITON_CALLS)
    if autocast:
        got = _grads(m.float(), x.float(), g, autocast_dtype=dtype)
    else:
        got = _grads(m.to(dtype), x.to(dtype), g)
    assert len(_TRITON_CALLS) > launches, "the Triton kernels were never called (the dispatcher took another path)"
    names = ["output", "grad_input", "grad_weight"]
    names += ["grad_log_sigma"] if smoothing == "gaussian" else []
    names += ["grad_bias"] if bias else []
    assert len(names) == len(got) == len(ref)
    errs = {}
    for name, a, r in zip(names, got, ref):
        assert torch.isfinite(a).all(), f"{name} has non-finite values (unwritten output?)"
        assert a.shape == r.shape, name
        errs[name] = rel_err(a, r)
    bad = {n: e for n, e in errs.items() if not e <= tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errs})"
    if autocast:
        assert got[0].dtype == dtype
    return got


_TRITON_CALLS: list[int] = []  # launches seen since the poison fixture started (checked by _compare)


@pytest.fixture
def poison(monkeypatch):
    """Unwritten outputs become NaN, a Triton failure raises instead of falling back to dense, and the test fails
    unless the Triton path actually ran (a silent fallback would pass every comparison with the dense reference)."""
    monkeypatch.setattr(tc, "_POISON", True)
    monkeypatch.setenv(conv_mod.TRITON_STRICT_ENV, "1")
    monkeypatch.setattr(conv_mod, "_TRITON_FAILED", set())
    _TRITON_CALLS.clear()
    real = tc.triton_forward  # every Triton forward/backward kernel launch of the convolution goes through it

    def counted(*args, **kwargs):
        _TRITON_CALLS.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tc, "triton_forward", counted)


# ---------------------------------------------------------------------------------------------------- interpreter
def _interpreter_works() -> bool:
    """Triton 3.6's interpreter cannot take int kernel arguments with numpy >= 2.3 ('only 0-dimensional arrays');
    newer Triton can. Probe once with the smallest call."""
    if not HAS_TRITON:
        return False
    import os

    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        m = _make(2, 1, 1, 3, dtype=torch.float32)
        m.impl = "triton"
        with torch.no_grad():
            m(torch.randn(1, 1, 3, 3))
        return True
    except Exception as e:  # noqa: BLE001 - any interpreter failure means: skip these tests
        logging.getLogger(__name__).warning("Triton interpreter unusable here: %r", e, exc_info=True)
        return False
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


_INTERP_OK: list[bool] = []


@pytest.fixture
def interpreter(monkeypatch, poison):
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if not _INTERP_OK:
        _INTERP_OK.append(_interpreter_works())
    if not _INTERP_OK[0]:
        pytest.skip("the Triton CPU interpreter does not run here (see _interpreter_works)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@needs_triton
@pytest.mark.parametrize("variant", ["unrolled", pytest.param("loop", marks=pytest.mark.slow)])
def test_interpreter_2d(interpreter, monkeypatch, variant):
    monkeypatch.setattr(tc, "VARIANT", variant)
    _compare(2, (2, 5, 9, 11), 7, 5, torch.float32, 1e-5, "cpu")


@needs_triton
def test_interpreter_3d(interpreter):
    # k = 3 in 3D: shells of 6 and 12 offsets, the second summed by the run-time loop inside the unrolled kernel
    _compare(3, (1, 3, 5, 6, 7), 4, 3, torch.float32, 1e-5, "cpu")


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize(
    "d,shape,c_out,k,circular,smoothing,bias",
    [(2, (1, 3, 7, 6), 5, 3, False, "gaussian", True), (2, (1, 17, 12, 13), 3, 11, True, "gaussian", False),
     (2, (2, 4, 6, 9), 4, 7, True, "none", True), (3, (2, 2, 4, 5, 6), 3, 5, True, "gaussian", True)],
)  # fmt: skip
def test_interpreter_more(interpreter, d, shape, c_out, k, circular, smoothing, bias):
    _compare(d, shape, c_out, k, torch.float32, 1e-5, "cpu", circular=circular, smoothing=smoothing, bias=bias)


@needs_triton
def test_interpreter_low_level_writes_every_output(interpreter):
    t = tc.shell_table(5, 2, True)
    x = torch.randn(2, 3, 7, 9)
    w = torch.randn(t.num_shells, 3, 5)
    out = torch.full((2, 5, 7, 9), float("nan"))
    tc.triton_forward(x, w, t, None, out=out)
    assert torch.isfinite(out).all()
    gw = tc.triton_weight_grad(x, torch.randn(2, 5, 7, 9), t)
    assert gw.shape == (t.num_shells, 3, 5) and torch.isfinite(gw).all()


@needs_triton
def test_interpreter_bfloat16_falls_back_instead_of_garbage(interpreter, monkeypatch, caplog):
    """Triton's CPU interpreter computes ``tl.dot`` on bfloat16 operands wrongly: a bf16 GMRConv (or a float32 one
    under CPU bf16 autocast) with ``impl="triton"`` returned values around 1e10 for unit-size inputs, silently. The
    interpreter now refuses bf16 by name and the dense path gives the result."""
    monkeypatch.setattr(tc, "_WARNED", set())
    torch.manual_seed(0)
    m = _make(2, 3, 4, 3, dtype=torch.float32)
    x = torch.randn(1, 3, 6, 7)
    ref_m = copy.deepcopy(m)
    ref_m.impl = "dense"
    m.impl = "triton"
    launches = len(_TRITON_CALLS)
    with caplog.at_level(logging.WARNING, logger=tc.__name__):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ya = m(x)
            ra = ref_m(x)
        y = m.bfloat16()(x.bfloat16())
    r = ref_m.bfloat16()(x.bfloat16())
    assert y.dtype == ya.dtype == torch.bfloat16
    assert rel_err(y.float(), r.float()) < 1e-6 and rel_err(ya.float(), ra.float()) < 1e-6
    assert len(_TRITON_CALLS) == launches
    assert any("bfloat16" in rec.getMessage() for rec in caplog.records)
    assert "bfloat16" in tc.triton_unsupported_reason(x.bfloat16(), 3, 1, 1, 1, 1, "zeros")


@needs_triton
def test_interpreter_float64_under_autocast_stays_float64(interpreter):
    """Autocast leaves float64 tensors alone, so a float64 GMRConv under autocast runs in float64 with the dense
    impl (``F.conv2d`` does the same). ``impl="triton"`` took the autocast dtype as the compute dtype and cast the
    float64 input down: a float16 result, relative error 4e-4 against dense, no warning. It now falls back."""
    torch.manual_seed(0)
    m = _make(2, 3, 4, 3, dtype=torch.float64)
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64)
    ref_m = copy.deepcopy(m)
    ref_m.impl = "dense"
    m.impl = "triton"
    launches = len(_TRITON_CALLS)
    with torch.autocast("cpu", dtype=torch.float16):
        y = m(x)
        r = ref_m(x)
    assert r.dtype == torch.float64
    assert y.dtype == torch.float64 and rel_err(y, r) < 1e-12
    assert len(_TRITON_CALLS) == launches


@needs_triton
def test_interpreter_trains_after_a_first_call_under_inference_mode(interpreter, monkeypatch):
    """The shell-table tensors are cached per device; built by a first call under ``torch.inference_mode()`` they
    were inference tensors, which ``shell_weights``' ``index_select`` saves for backward: the next training call
    failed ("Inference tensors cannot be saved for backward"), and outside the strict mode the Triton kernels were
    switched off for that kernel size for the rest of the process. Training now runs the kernels."""
    monkeypatch.setattr(tc, "_TABLE_TENSORS", {})
    torch.manual_seed(0)
    m = _make(2, 2, 3, 3, dtype=torch.float32)
    ref_m = copy.deepcopy(m)
    ref_m.impl = "dense"
    m.impl = "triton"
    x = torch.randn(1, 2, 5, 6)
    with torch.inference_mode():
        m(x)
    launches = len(_TRITON_CALLS)
    g = torch.randn(1, 3, 5, 6)
    got = _grads(m, x, g)  # output and the gradients of input, ring weights, log sigma and bias
    assert len(_TRITON_CALLS) > launches
    for a, r in zip(got, _grads(ref_m, x, g)):
        assert rel_err(a, r) < 1e-5


@needs_triton
def test_interpreter_torch_func_and_forward_ad_fall_back_without_disabling_the_kernels(interpreter):
    """The kernels' autograd function has no functorch rule and no jvp: ``torch.func.vmap`` over a Triton GMRConv,
    or a forward-mode AD dual input, raised inside it, which gmr_conv took for a kernel failure: "impl='triton'
    failed ...; using the dense/rings path from now on", and every later plain call of that kernel size ran dense.
    Both now fall back for that call only (matching dense), and the next plain call runs the kernels."""
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(0)
    m = _make(2, 2, 3, 3, dtype=torch.float32)
    ref_m = copy.deepcopy(m)
    ref_m.impl = "dense"
    m.impl = "triton"
    x = torch.randn(3, 1, 2, 5, 5)
    launches = len(_TRITON_CALLS)
    with torch.no_grad():
        assert rel_err(torch.func.vmap(m)(x), torch.func.vmap(ref_m)(x)) < 1e-6
    t = torch.randn_like(x[0])
    with fwAD.dual_level():
        y, r = (fwAD.unpack_dual(f(fwAD.make_dual(x[0], t))) for f in (m, ref_m))
        assert rel_err(y.primal, r.primal) < 1e-6 and rel_err(y.tangent, r.tangent) < 1e-6
    assert len(_TRITON_CALLS) == launches and not conv_mod._TRITON_FAILED
    with torch.no_grad():
        assert rel_err(m(x[0]), ref_m(x[0])) < 1e-5
    assert len(_TRITON_CALLS) > launches


@needs_triton
def test_interpreter_metatensor_input_matches_dense(interpreter):
    """MONAI pipelines feed ``MetaTensor`` batches to networks. The dense impl returns a ``MetaTensor`` with the
    input's metadata (``F.conv2d``'s ``__torch_function__``); the Triton path launched the kernels on the
    ``MetaTensor`` itself, which Triton's interpreter cannot copy (``TypeError`` from ``MetaTensor.new_empty``:
    a "kernel failure" that switched the kernels off), and on CUDA it returned a plain tensor. Now the kernels get
    plain views and the result is wrapped like the dense impl's."""
    from monai.data import MetaTensor

    torch.manual_seed(0)
    m = _make(2, 2, 3, 3, dtype=torch.float32)
    ref_m = copy.deepcopy(m)
    ref_m.impl = "dense"
    m.impl = "triton"
    x = MetaTensor(torch.randn(1, 2, 5, 6), meta={"filename_or_obj": "tile_0.png"})
    g = torch.randn(1, 3, 5, 6)
    launches = len(_TRITON_CALLS)
    got, ref = _grads(m, x, g), _grads(ref_m, x, g)
    assert len(_TRITON_CALLS) > launches
    assert type(got[0]) is type(ref[0]) is MetaTensor
    assert got[0].meta["filename_or_obj"] == "tile_0.png"
    for a, r in zip(got, ref):
        assert rel_err(torch.as_tensor(a), torch.as_tensor(r)) < 1e-5


def test_area_sampling_is_refused_by_name(monkeypatch, caplog):
    """A ``sampling="area"`` basis is not constant on shells of equal ``|q|``: the Triton kernels must not run it."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU would otherwise be the reason
    monkeypatch.setattr(tc, "_WARNED", set())
    x = torch.randn(1, 2, 8, 8)
    with caplog.at_level(logging.WARNING, logger=tc.__name__):
        impl = tc.resolve_triton("triton", x, 11, 1, 5, 1, 1, "zeros", False, True, radial=False)
    assert impl != "triton"
    assert any("sampling='area'" in r.getMessage() for r in caplog.records)


@needs_triton
def test_interpreter_area_sampling_falls_back_and_matches_dense(interpreter, monkeypatch):
    """k = 11: offsets (5, 0) and (3, 4) share a shell but not an area-averaged value, so the shell kernels would be
    wrong on this basis (checked below); the module falls back to the dense path instead."""
    monkeypatch.setattr(tc, "_WARNED", set())
    torch.manual_seed(0)
    m = GMRConv(2, 3, 4, 11, impl="triton", sampling="area")
    x = torch.randn(1, 3, 13, 12)
    with torch.no_grad():
        y = m(x)
        m.impl = "dense"
        ref = m(x)
        assert rel_err(y, ref) < 1e-6
        shells = tc.gmr_conv_triton(x, m.weight, m.basis(), m.bias, circular=True)  # what the fallback avoids
        assert rel_err(shells, ref) > 1e-3


# ---------------------------------------------------------------------------------------------------- CUDA
CUDA_2D = [
    # batch-1, odd channel counts, sizes that are not multiples of the tiles, every k
    ((1, 3, 13, 21), 17, 3),
    ((1, 17, 13, 21), 3, 5),
    ((2, 3, 23, 17), 17, 7),
    ((1, 17, 19, 30), 17, 9),
    ((2, 5, 21, 19), 7, 11),
    # wider layers: several channel blocks, C_out above one block
    ((2, 64, 40, 37), 130, 9),
    ((3, 130, 19, 70), 33, 5),
]
CUDA_3D = [
    ((1, 3, 9, 10, 11), 17, 3),
    ((1, 17, 7, 9, 12), 5, 5),
    ((2, 32, 13, 12, 17), 32, 7),
]
DTYPES = [(torch.float32, 2e-3, False), (torch.bfloat16, 1e-2, True)]


@requires_cuda
@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("dtype,tol,autocast", DTYPES, ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("shape,c_out,k", CUDA_2D)
def test_cuda_2d(poison, shape, c_out, k, dtype, tol, autocast):
    _compare(2, shape, c_out, k, dtype, tol, "cuda", autocast=autocast)


@requires_cuda
@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("dtype,tol,autocast", DTYPES, ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("shape,c_out,k", CUDA_3D)
def test_cuda_3d(poison, shape, c_out, k, dtype, tol, autocast):
    _compare(3, shape, c_out, k, dtype, tol, "cuda", autocast=autocast)


@requires_cuda
@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize(
    "case",
    ["fp16-autocast", "bf16-params", "channels_last", "native-layout", "loop-variant", "loop-3d", "no-tf32",
     "full-cube", "hard-rings", "no-bias"],
)  # fmt: skip
def test_cuda_variants(poison, monkeypatch, case):
    shape, c_out, k, dtype, tol, kw = (2, 19, 21, 26), 24, 9, torch.float32, 2e-3, {}
    if case == "fp16-autocast":
        dtype, tol, kw = torch.float16, 1e-2, dict(autocast=True)
    elif case == "bf16-params":
        dtype, tol = torch.bfloat16, 1e-2
    elif case == "channels_last":
        kw = dict(channels_last=True)
    elif case == "native-layout":
        monkeypatch.setattr(tc, "LAYOUT", "native")
    elif case == "loop-variant":
        monkeypatch.setattr(tc, "VARIANT", "loop")
    elif case == "loop-3d":
        monkeypatch.setattr(tc, "VARIANT", "loop")
        _compare(3, (1, 5, 9, 8, 10), 6, 5, dtype, tol, "cuda")
        return
    elif case == "no-tf32":
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        tol = 1e-4
    elif case == "full-cube":
        kw = dict(circular=False)
    elif case == "hard-rings":
        kw = dict(smoothing="none")
    elif case == "no-bias":
        kw = dict(bias=False)
    got = _compare(2, shape, c_out, k, dtype, tol, "cuda", **kw)
    if case == "channels_last":
        assert got[0].is_contiguous(memory_format=torch.channels_last)
        assert got[1].is_contiguous(memory_format=torch.channels_last)


@requires_cuda
@pytest.mark.gpu
@needs_triton
def test_cuda_fallbacks_match_dense(monkeypatch):
    monkeypatch.setattr(tc, "_WARNED", set())
    x = torch.randn(2, 4, 17, 18, device="cuda")
    for kw in (dict(stride=2), dict(groups=2), dict(padding_mode="reflect"), dict(dilation=2)):
        m = GMRConv(2, 4, 6, 5, impl="triton", **kw).cuda()
        y = m(x)
        m.impl = "dense"
        assert rel_err(y, m(x)) < 1e-5
    m = GMRConv(2, 4, 6, 5, impl="triton").cuda().double()
    y = m(x.double())  # float64: unsupported dtype -> dense
    m.impl = "dense"
    assert rel_err(y, m(x.double())) < 1e-12


@requires_cuda
@pytest.mark.gpu
@needs_triton
def test_cuda_low_level_writes_every_output():
    t = tc.shell_table(7, 2, True)
    x = torch.randn(3, 21, 29, 33, device="cuda")
    w = torch.randn(t.num_shells, 21, 40, device="cuda")
    out = torch.full((3, 40, 29, 33), float("nan"), device="cuda")
    tc.triton_forward(x, w, t, None, out=out)
    assert torch.isfinite(out).all()
    ref = torch.nn.functional.conv2d(x.double(), _expand(w.double(), t, 2), padding=3)
    assert rel_err(out, ref) < 2e-3


def _expand(w: torch.Tensor, t, d: int) -> torch.Tensor:
    """Dense (C_out, C_in, k..) kernel from shell weights (S, C_in, C_out)."""
    k, r = t.kernel_size, t.kernel_size // 2
    dense = torch.zeros(w.shape[2], w.shape[1], *([k] * d), dtype=w.dtype, device=w.device)
    for s, shell in enumerate(tc._shell_offsets(t)):
        for q in shell:
            dense[(slice(None), slice(None)) + tuple(c + r for c in q[3 - d :])] = w[s].t()
    return dense


def test_runtime_failure_falls_back_to_dense(monkeypatch, caplog):
    """A Triton compile/launch error in the forward pass is logged once and the call is served by the dense path."""
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("out of resources: shared memory")

    monkeypatch.setattr(conv_mod, "resolve_triton", lambda *a, **k: "triton")
    monkeypatch.setattr(conv_mod, "gmr_conv_triton", broken)
    monkeypatch.setattr(conv_mod, "_TRITON_FAILED", set())
    m = GMRConv(2, 3, 4, 5).double()
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    ref = gmr_conv(x, m.weight, m.basis(), m.bias, padding=2, impl="dense")
    with caplog.at_level("WARNING", logger="monai_gmr.functional.conv"):
        y1 = gmr_conv(x, m.weight, m.basis(), m.bias, padding=2, impl="triton")
        y2 = gmr_conv(x, m.weight, m.basis(), m.bias, padding=2, impl="triton")
    assert rel_err(y1, ref) < 1e-12 and rel_err(y2, ref) < 1e-12
    assert len(calls) == 1  # not retried for the same configuration
    assert sum("out of resources" in r.message for r in caplog.records) == 1
    # strict mode (GPU tests and benchmarks): the failure surfaces instead of a dense result counted as Triton
    monkeypatch.setattr(conv_mod, "_TRITON_FAILED", set())
    monkeypatch.setenv(conv_mod.TRITON_STRICT_ENV, "1")
    with pytest.raises(RuntimeError, match="out of resources"):
        gmr_conv(x, m.weight, m.basis(), m.bias, padding=2, impl="triton")


def test_module_goes_through_the_same_dispatch(monkeypatch):
    """GMRConv(impl="triton") uses gmr_conv's resolution, so it gets the same fallback and the circular flag."""
    import monai_gmr.functional.conv as conv_mod

    seen = []

    def broken(x, weight, basis, bias=None, circular=None):
        seen.append(circular)
        raise RuntimeError("launch failed")

    monkeypatch.setattr(conv_mod, "resolve_triton", lambda *a, **k: "triton")
    monkeypatch.setattr(conv_mod, "gmr_conv_triton", broken)
    monkeypatch.setattr(conv_mod, "_TRITON_FAILED", set())
    m = GMRConv(2, 3, 4, 5, impl="triton").double()
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    ref = gmr_conv(x, m.weight, m.basis(), m.bias, padding=2, impl="dense")
    assert rel_err(m(x), ref) < 1e-12 and seen == [True]


@pytest.mark.parametrize("d,k", [(2, 11), (3, 7)])
def test_direct_call_detects_a_non_radial_basis(monkeypatch, d, k):
    """``gmr_conv(..., impl="triton")`` with an area basis and no ``radial`` argument told the Triton kernels the
    basis was radial (the default was ``radial=True``), which gives wrong results on it. Now ``radial=None`` checks
    the basis, only on the Triton path; an explicit bool is passed through unchecked."""
    seen = []

    def fake_resolve(*args, **kwargs):
        seen.append(args[-1])  # the radial flag
        return "dense"

    monkeypatch.setattr(conv_mod, "resolve_triton", fake_resolve)
    x = torch.randn(1, 2, *(k + 2,) * d, dtype=torch.float64)
    for sampling, radial in (("area", False), ("center", True)):
        m = GMRConv(d, 2, 3, k, sampling=sampling).double()
        basis = m.basis().detach()
        seen.clear()
        y = gmr_conv(x, m.weight, basis, m.bias, padding=k // 2, impl="triton")
        assert seen == [radial], sampling
        assert torch.allclose(y, gmr_conv(x, m.weight, basis, m.bias, padding=k // 2, impl="dense"), atol=1e-12)
        seen.clear()
        gmr_conv(x, m.weight, basis, m.bias, padding=k // 2, impl="triton", radial=True)  # explicit: trusted
        assert seen == [True]

    def no_check(basis):
        raise AssertionError("is_radial_basis called off the Triton path")

    monkeypatch.setattr(conv_mod, "is_radial_basis", no_check)
    for impl in ("dense", "rings", "auto"):  # CPU: "auto" never picks Triton
        gmr_conv(x, m.weight, basis, m.bias, padding=k // 2, impl=impl)
    seen.clear()
    GMRConv(d, 2, 3, k, sampling="area", impl="triton")(x.float())  # the module passes its own bool
    assert seen == [False]


def test_area_basis_no_radial_argument_is_refused(monkeypatch, caplog):
    """End to end through the real resolver: an area basis without ``radial`` never reaches the shell kernels."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU would otherwise be the reason
    monkeypatch.setattr(tc, "_WARNED", set())
    monkeypatch.setattr(tc, "gmr_conv_triton", lambda *a, **kw: pytest.fail("shell kernels ran on an area basis"))
    monkeypatch.setattr(conv_mod, "gmr_conv_triton", tc.gmr_conv_triton)
    m = GMRConv(2, 2, 3, 11, sampling="area").double()
    x = torch.randn(1, 2, 13, 13, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger=tc.__name__):
        y = gmr_conv(x, m.weight, m.basis().detach(), m.bias, padding=5, impl="triton")
    assert any("sampling='area'" in r.getMessage() for r in caplog.records)
    assert torch.allclose(y, gmr_conv(x, m.weight, m.basis().detach(), m.bias, padding=5, impl="dense"), atol=1e-12)


def test_direct_call_with_an_unreadable_basis_falls_back(monkeypatch):
    """A basis the radial check cannot read (even k) raised ValueError from ``is_radial_basis`` on the Triton path;
    before the check existed such a call fell back to another implementation. It does again (radial=False)."""
    seen = []

    def fake_resolve(*args, **kwargs):
        seen.append(args[-1])
        return "dense"

    monkeypatch.setattr(conv_mod, "resolve_triton", fake_resolve)
    torch.manual_seed(0)
    basis = torch.rand(2, 4, 4, dtype=torch.float64)  # even k
    weight = torch.randn(3, 2, 2, dtype=torch.float64)
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    y = gmr_conv(x, weight, basis, None, padding=0, impl="triton")
    assert seen == [False]
    assert torch.allclose(y, gmr_conv(x, weight, basis, None, padding=0, impl="dense"), atol=1e-12)


def test_even_kernel_size_is_refused(monkeypatch, caplog):
    """The shell table centres the offsets on a pixel, so an even ``k`` has no shell decomposition: its rep indices
    ran past the ``k^d`` grid (an index error on CPU, a device-side assert on CUDA) even when the caller vouched
    ``radial=True``. The support check now names it and the call falls back without trying the kernels."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU would otherwise be the reason
    monkeypatch.setattr(conv_mod, "_TRITON_FAILED", set())
    x = torch.randn(1, 2, 8, 8, dtype=torch.float32)
    for k in (2, 4):
        reason = tc.triton_unsupported_reason(x, k, 1, (k - 1) // 2, 1, 1, "zeros")
        assert reason is not None and f"kernel_size={k}" in reason
    torch.manual_seed(0)
    basis = torch.rand(2, 4, 4)
    weight = torch.randn(3, 2, 2)
    with caplog.at_level(logging.WARNING, logger=conv_mod.__name__):
        y = gmr_conv(x, weight, basis, None, padding=1, impl="triton", radial=True)
    assert not any("failed" in r.getMessage() for r in caplog.records)
    assert torch.allclose(y, gmr_conv(x, weight, basis, None, padding=1, impl="dense"), atol=1e-6)


def test_output_sample_past_int32_is_refused(monkeypatch):
    """The kernels index within a sample in int32: the input check alone let a layer widening past 2**31 elements per
    output sample (``C_out * spatial``; also the ``grad_out`` read in the backward) run with overflowing offsets."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.zeros(1, 1, 1, 1).expand(1, 2, 2**15, 2**14)  # 2**30 elements per input sample, no memory
    if HAS_TRITON:
        assert tc.triton_unsupported_reason(x, 5, 1, 2, 1, 1, "zeros", out_channels=2) is None
    reason = tc.triton_unsupported_reason(x, 5, 1, 2, 1, 1, "zeros", out_channels=4)
    assert reason is not None and "2**31" in reason
    seen = []

    def fake_resolve(*args, **kwargs):
        seen.append(kwargs.get("out_channels"))
        return "dense"

    monkeypatch.setattr(conv_mod, "resolve_triton", fake_resolve)
    m = GMRConv(2, 2, 5, 3)
    gmr_conv(torch.randn(1, 2, 6, 6), m.weight, m.basis(), None, padding=1, impl="triton", radial=True)
    assert seen == [5]  # gmr_conv hands the output width to the support check


def test_out_of_memory_is_not_a_triton_failure(monkeypatch):
    """A CUDA out-of-memory error in the Triton forward (a batch too large this once, e.g. while a batch size is
    probed) is not a compile/launch failure of the kernels: it used to be served by the dense path (which needs the
    same memory or more) and disabled Triton for the configuration for the rest of the process. It surfaces now,
    and a later call that fits still runs the fused kernels."""
    calls = []

    def oom(*args, **kwargs):
        calls.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(conv_mod, "resolve_triton", lambda *a, **k: "triton")
    monkeypatch.setattr(conv_mod, "gmr_conv_triton", oom)
    monkeypatch.setattr(conv_mod, "_TRITON_FAILED", set())
    m = GMRConv(2, 3, 4, 5)
    x = torch.randn(1, 3, 9, 9)
    for _ in range(2):
        with pytest.raises(torch.OutOfMemoryError):
            gmr_conv(x, m.weight, m.basis(), m.bias, padding=2, impl="triton")
    assert len(calls) == 2 and not conv_mod._TRITON_FAILED


def test_triton_failure_is_remembered_per_compute_dtype(monkeypatch):
    """A failure of the bf16 kernels (under autocast) must not disable the float32 kernels of the same layer: the
    failure key used the input's dtype (float32 in both cases) instead of the dtype the kernels ran in."""
    calls = []

    def broken_under_autocast(x, *args, **kwargs):
        calls.append(torch.is_autocast_enabled("cpu"))
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("bf16 dot unsupported")
        return torch.zeros(1)

    monkeypatch.setattr(conv_mod, "resolve_triton", lambda *a, **k: "triton")
    monkeypatch.setattr(conv_mod, "gmr_conv_triton", broken_under_autocast)
    monkeypatch.setattr(conv_mod, "_TRITON_FAILED", set())
    m = GMRConv(2, 3, 4, 5)
    x = torch.randn(1, 3, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gmr_conv(x, m.weight, m.basis(), m.bias, padding=2, impl="triton")  # falls back
    y = gmr_conv(x, m.weight, m.basis(), m.bias, padding=2, impl="triton")
    assert calls == [True, False] and torch.equal(y, torch.zeros(1))


@needs_triton
def test_interpreter_double_backward_is_refused_not_silently_zero(interpreter):
    """The Triton backward runs opaque kernels, so its gradients carry no graph: a gradient penalty built with
    ``create_graph=True`` (WGAN-GP, input-gradient regularisers) silently contributed nothing through a Triton layer
    while the dense and rings paths differentiate it. Differentiating twice now raises."""
    torch.manual_seed(0)
    m = GMRConv(2, 2, 3, 3, impl="triton")
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    (gx,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
    loss = m(x).mean() + gx.square().sum()  # the penalty's weight gradient was silently dropped
    with pytest.raises(RuntimeError, match="differentiate twice"):
        loss.backward()


def test_triton_path_refuses_mismatched_weight_and_bias_by_name(monkeypatch):
    """The kernels read the ring weights and the bias by the input's channel count and the weight's output count,
    without bounds: a weight for another input width, or a bias of another length, ran and returned garbage (seen
    in the interpreter) where the dense path raises. It is refused by name before the kernels are launched."""
    calls = []
    monkeypatch.setattr(conv_mod, "resolve_triton", lambda *a, **k: "triton")
    monkeypatch.setattr(conv_mod, "gmr_conv_triton", lambda *a, **k: calls.append(1) or torch.zeros(1))
    m = GMRConv(2, 2, 3, 3)
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(ValueError, match=r"weight .*4 input channels"):
        gmr_conv(x, m.weight, m.basis(), None, padding=1, impl="triton", radial=True)
    with pytest.raises(ValueError, match=r"bias .*\(3,\)"):
        gmr_conv(x[:, :2], m.weight, m.basis(), torch.randn(5), padding=1, impl="triton", radial=True)
    assert not calls
    gmr_conv(x[:, :2], m.weight, m.basis(), torch.randn(3), padding=1, impl="triton", radial=True)
    assert calls == [1]


def test_triton_path_refuses_a_weight_with_another_ring_count(monkeypatch):
    """``shell_weights`` reshapes the weight by the basis' ring count: a weight with 2 rings against a 3-ring basis
    was silently scrambled into shell weights (synthesize_kernel refuses it on the dense path)."""
    basis = torch.rand(3, 3, 3)
    weight = torch.randn(3, 2, 2)
    assert tc.shell_weights(weight, basis, tc.shell_table(3, 2)).shape[1:] == (2, 3)  # no error down there
    calls = []
    monkeypatch.setattr(conv_mod, "resolve_triton", lambda *a, **k: "triton")
    monkeypatch.setattr(conv_mod, "gmr_conv_triton", lambda *a, **k: calls.append(1) or torch.zeros(1))
    with pytest.raises(ValueError, match="rings"):
        gmr_conv(torch.randn(1, 2, 6, 6), weight, basis, None, padding=1, impl="triton", radial=True)
    assert not calls


def test_triton_path_refuses_a_basis_of_other_dims(monkeypatch):
    """A 2D basis with a 3D input (``radial=True`` given by the caller) reached ``shell_weights``, whose 3D rep
    indices run past the ``k^2`` grid (an index error here, a device-side assert on CUDA); the dense path raises a
    shape error. It is refused by name before the kernels."""
    calls = []
    monkeypatch.setattr(conv_mod, "resolve_triton", lambda *a, **k: "triton")
    monkeypatch.setattr(conv_mod, "gmr_conv_triton", lambda *a, **k: calls.append(1) or torch.zeros(1))
    with pytest.raises(ValueError, match="basis"):
        gmr_conv(torch.randn(1, 2, 5, 5, 5), torch.randn(3, 2, 3), torch.rand(3, 3, 3), None, padding=1,
                 impl="triton", radial=True)  # fmt: skip
    assert not calls
