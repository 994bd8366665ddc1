"""``torch.compile`` of GMR layers and networks: outputs and gradients equal to eager, no graph breaks (train, eval,
eval without gradients), exact D4 equivariance kept, and never a stale eval-mode kernel cache.

The default tests use the ``aot_eager`` backend (Dynamo + AOTAutograd tracing, no C compiler); the ``inductor`` tests
(generated C++ kernels on CPU) are marked slow.
"""

from __future__ import annotations

import copy

import pytest
import torch

from monai_gmr import GMRConv
from monai_gmr.conversion import export_dense
from monai_gmr.evaluation import group_equivariance_error
from monai_gmr.nets import get_network
from tests.conftest import requires_cuda


def _dynamo_unavailable() -> str | None:
    """Why ``torch.compile`` cannot run here, or ``None``."""
    try:
        import torch._dynamo  # noqa: F401

        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile (Dynamo) is not supported on this Python / torch build"
    except Exception as e:  # pragma: no cover - depends on the build
        return f"torch.compile is unavailable: {type(e).__name__}: {e}"
    return None


pytestmark = [
    pytest.mark.skipif(_dynamo_unavailable() is not None, reason=str(_dynamo_unavailable())),
    pytest.mark.usefixtures("one_thread"),
]

#: the fast backend of the default tests (Dynamo + AOTAutograd, no code generation)
BACKEND = "aot_eager"
#: the repository's bound for exact (grid-symmetry) equivariance in float32, relative
EXACT_EQUIVARIANCE = 1e-4


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch (no graphs, guards or recompilation counts carried over)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compile(module: torch.nn.Module, backend: str = BACKEND) -> torch.nn.Module:
    # fullgraph=True: any graph break raises instead of silently splitting the graph
    return torch.compile(module, backend=backend, fullgraph=True)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _check_grads(net: torch.nn.Module, ref: torch.nn.Module, tol: float) -> None:
    """Every parameter's gradient equals the reference's, to ``tol`` relative to the largest reference gradient (a
    bias followed by a normalisation has a gradient of rounding size only)."""
    pairs = [(n, p.grad, q.grad) for (n, p), q in zip(net.named_parameters(), ref.parameters())]
    for n, g, g_ref in pairs:
        assert g is not None and g_ref is not None, n
    scale = max(float(g_ref.abs().max()) for _, _, g_ref in pairs)
    assert scale > 0
    for n, g, g_ref in pairs:
        assert float((g - g_ref).abs().max()) <= tol * scale, n


def _check_step(compiled: torch.nn.Module, net: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor,
                tol: float = 1e-5, grad_tol: float = 1e-4) -> None:
    """One training forward + backward of ``compiled`` (wrapping ``net``) against the eager copy ``ref``: outputs to
    ``tol`` relative, gradients to ``grad_tol`` of the largest gradient."""
    y, y_ref = compiled(x), ref(x)
    assert _rel(y, y_ref) < tol
    y.square().mean().backward()
    y_ref.square().mean().backward()
    _check_grads(net, ref, grad_tol)


def _conv(d: int) -> GMRConv:
    return GMRConv(d, 3, 4, 5 if d == 3 else 7)


MODULES = {
    "conv2d": (lambda: _conv(2), (2, 3, 16, 16)),
    "conv3d": (lambda: _conv(3), (1, 3, 8, 8, 8)),
    "conv2d_rings": (lambda: GMRConv(2, 3, 4, 9, impl="rings"), (2, 3, 16, 16)),  # the paper-size kernels' CPU path
    "unet": (lambda: get_network("gmr_unet_tiny"), (1, 1, 32, 32)),
    "resnet18": (lambda: get_network("gmr_resnet18_tiny"), (2, 3, 32, 32)),
}


def _graph_breaks(module: torch.nn.Module, x: torch.Tensor) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(module)(x).graph_break_count


@pytest.mark.parametrize("name", [n for n in MODULES if n != "unet"])  # the U-Net: in the training test below (time)
def test_compiled_matches_eager(name):
    """Compiled forward and gradients equal the eager ones in train mode; eval forward with and without gradients."""
    build, shape = MODULES[name]
    net = build()
    ref = copy.deepcopy(net)
    compiled = _compile(net)
    x = torch.randn(*shape)
    _check_step(compiled, net, ref, x)

    net.eval(), ref.eval()
    if name.startswith("conv"):  # eval with gradients: the layer's uncached path again (one more compilation)
        assert _rel(compiled(x), ref(x)) < 1e-5
    with torch.no_grad():
        for _ in range(2):  # the second call is where an eager layer would read its kernel cache
            assert _rel(compiled(x), ref(x)) < 1e-5


@pytest.mark.parametrize("name", list(MODULES))
def test_no_graph_breaks(name):
    """One graph, no breaks, in train mode, in eval mode, and in eval mode without gradients (how MONAI's
    ``SupervisedEvaluator`` and sliding-window inference run the network), before and after the layers' kernel
    caches were filled by an eager call."""
    build, shape = MODULES[name]
    net = build()
    x = torch.randn(*shape)
    layer = name.startswith("conv")  # the networks: train and eval without gradients only (time)
    assert _graph_breaks(net, x) == 0
    net.eval()
    if layer:
        assert _graph_breaks(net, x) == 0
    with torch.no_grad():
        assert _graph_breaks(net, x) == 0
        if layer:
            net(x)  # eager: fills the kernel cache
            assert _graph_breaks(net, x) == 0


def test_compiled_eval_no_grad_fullgraph_and_no_recompile():
    """Eval mode without gradients: the compiled layer never touches the eager kernel cache, so it compiles to one
    graph and repeated calls (cache empty, then filled by an eager call) do not recompile."""
    from torch._dynamo.testing import CompileCounter

    m = _conv(2).eval()
    counter = CompileCounter()
    compiled = torch.compile(m, backend=counter, fullgraph=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        y0 = compiled(x)
        m(x)  # eager: fills the cache
        y1 = compiled(x)
        y2 = compiled(x)
    assert counter.frame_count == 1
    assert torch.equal(y0, y1) and torch.equal(y1, y2)


def _train_steps(fn, params, x: torch.Tensor, steps: int = 2) -> None:
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        fn(x).square().mean().backward()
        opt.step()


def test_compiled_training_then_eval_no_stale_kernel_and_exact_d4():
    """GMRUNet: the first compiled training step gives the eager outputs and gradients; after a few compiled steps, in
    eval mode, the compiled net, the same net uncompiled and a fresh net loaded with its state (which never cached
    anything) agree, although the eager layers cached their kernels before the training; the compiled eval net keeps
    exact D4 equivariance."""
    net = get_network("gmr_unet_tiny")
    ref = copy.deepcopy(net)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():  # eager eval calls before training: fill the kernel caches with the initial kernels
        net.eval()
        y_before = net(x)
    net.train()
    compiled = _compile(net)
    _check_step(compiled, net, ref, x)
    _train_steps(compiled, net.parameters(), x)
    net.eval()
    fresh = get_network("gmr_unet_tiny").eval()
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        expected = fresh(x)
        assert _rel(expected, y_before) > 1e-3  # the training changed the outputs
        assert _rel(compiled(x), expected) < 1e-5
        assert _rel(net(x), expected) < 1e-5
        assert _rel(compiled(x), expected) < 1e-5
        errors = group_equivariance_error(compiled, x)
    assert len(errors) == 8 and max(errors.values()) < EXACT_EQUIVARIANCE, errors


def test_no_stale_kernel_after_in_place_changes():
    """In-place edits of weight / log_sigma (``.data``, ``copy_`` under no_grad) and ``load_state_dict`` between
    compiled eval calls, with eager calls in between filling the kernel cache: the compiled layer always uses the
    current parameters."""
    m = _conv(2).eval()
    compiled = _compile(m)
    x = torch.randn(2, 3, 16, 16)
    fresh = _conv(2).eval()

    def check():
        with torch.no_grad():
            fresh.load_state_dict(m.state_dict())
            expected = fresh(x)  # a layer that has never cached anything
            assert _rel(compiled(x), expected) < 1e-6  # m's cache still holds the kernel of the previous values
            assert _rel(m(x), expected) < 1e-6  # eager: refreshes the cache
            assert _rel(compiled(x), expected) < 1e-6

    with torch.no_grad():
        m(x)  # eager: fills the cache before the first compiled call
    check()
    m.weight.data.mul_(2.0)
    check()
    m.log_sigma.data.add_(0.3)
    check()
    with torch.no_grad():
        m.weight.copy_(torch.randn_like(m.weight))
    check()
    m.load_state_dict({k: torch.randn_like(v) if k == "weight" else v for k, v in m.state_dict().items()})
    check()


def test_compiled_dense_export_matches():
    net = get_network("gmr_unet_tiny").eval()
    dense = export_dense(net).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        y = net(x)
        assert _graph_breaks(dense, x) == 0
        assert _rel(_compile(dense)(x), y) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["conv2d", "conv3d", "unet"])
def test_inductor_matches_eager(name):
    """The default backend (inductor: generated C++ on CPU) gives the eager outputs and gradients, and equivariance."""
    build, shape = MODULES[name]
    net = build()
    ref = copy.deepcopy(net)
    compiled = _compile(net, backend="inductor")
    x = torch.randn(*shape)
    _check_step(compiled, net, ref, x)
    net.eval(), ref.eval()
    with torch.no_grad():
        assert _rel(compiled(x), ref(x)) < 1e-5
        if name == "unet":
            errors = group_equivariance_error(compiled, x)
            assert max(errors.values()) < EXACT_EQUIVARIANCE, errors


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["dense", "rings", "triton"])
def test_inductor_on_cuda_matches_eager(impl, monkeypatch):
    """CUDA, default backend (inductor: generated Triton kernels): a GMR layer on each ``impl`` gives the eager outputs
    and gradients. ``impl="triton"`` (our fused kernels, a custom autograd function) may split the graph, so it is
    compiled without ``fullgraph``; the others must trace whole."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full fp32 on both sides: a 1e-4 bound holds
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    net = GMRConv(2, 16, 16, 9, impl=impl).cuda()
    ref = copy.deepcopy(net)
    compiled = torch.compile(net, fullgraph=impl != "triton")
    x = torch.randn(4, 16, 64, 64, device="cuda")
    _check_step(compiled, net, ref, x, tol=1e-4, grad_tol=1e-3)
    net.eval(), ref.eval()
    with torch.no_grad():
        assert _rel(compiled(x), ref(x)) < 1e-4
