"""p4 / p4m group convolutions: group tables, exact equivariance, gradcheck, init scale, bad arguments."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from monai_gmr.functional import D4Element, d4_elements
from monai_gmr.nn.gconv import (
    GroupBatchNorm,
    GroupConv,
    GroupConvolution,
    GroupInstanceNorm,
    GroupLiftingConv,
    GroupPool,
    GroupSpatialPool,
    GroupUpsample,
    cayley_table,
    element_index,
    group_conv2d,
    group_elements_of,
    group_filter_bank,
    group_lifting_conv2d,
    group_order,
    inverse_table,
    lifting_filter_bank,
    orientation_permutation,
    transform_group_features,
)
from tests.conftest import rel_err

GROUPS = ("p4", "p4m")


def _elements(group):
    return [(group, g) for g in group_elements_of(group)]


ALL = _elements("p4") + _elements("p4m")
IDS = [f"{grp}-{g.name}" for grp, g in ALL]


# ------------------------------------------------------------------------------------------------ group structure
def test_group_orders_and_elements():
    assert group_order("p4") == 4 and group_order("p4m") == 8
    assert [g.name for g in group_elements_of("p4")] == ["rot0", "rot90", "rot180", "rot270"]
    assert group_elements_of("p4m") == d4_elements()


@pytest.mark.parametrize("group", GROUPS)
def test_cayley_table_is_composition(group):
    x = torch.randn(2, 5, 7)  # non-square: composition must also get the shapes right
    table, inv = cayley_table(group), inverse_table(group)
    elems = group_elements_of(group)
    n = len(elems)
    assert table.shape == (n, n)
    for a in range(n):
        assert torch.equal(elems[inv[a]](elems[a](x)), x)
        for b in range(n):
            assert torch.equal(elems[table[a, b]](x), elems[a](elems[b](x)))
            # closed form documented in the module docstring
            k1, f1, k2, f2 = a % 4, a // 4, b % 4, b // 4
            assert table[a, b] == (k1 + (-1) ** f1 * k2) % 4 + 4 * (f1 ^ f2)


@pytest.mark.parametrize("group", GROUPS)
def test_transform_group_features_is_a_group_action(group):
    x = torch.randn(2, 3, group_order(group), 5, 6)
    table = cayley_table(group)
    elems = group_elements_of(group)
    for a, ga in enumerate(elems):
        for b, gb in enumerate(elems):
            lhs = transform_group_features(transform_group_features(x, gb, group), ga, group)
            assert torch.equal(lhs, transform_group_features(x, elems[table[a, b]], group))
    # explicit convention: (L_g F)[:, :, h] = T_g(F[:, :, g^-1 . h])
    g = D4Element(1, group == "p4m")
    perm = orientation_permutation(g, group)
    gi = inverse_table(group)[element_index(g, group)]
    assert perm.tolist() == [int(table[gi, h]) for h in range(group_order(group))]
    out = transform_group_features(x, g, group)
    for h in range(group_order(group)):
        assert torch.equal(out[:, :, h], g(x[:, :, perm[h]]))


def test_p4_has_no_reflections():
    x = torch.randn(1, 1, 4, 3, 3)
    with pytest.raises(ValueError, match="p4"):
        transform_group_features(x, D4Element(0, True), "p4")
    with pytest.raises(ValueError, match="x must be shaped"):
        transform_group_features(torch.randn(1, 1, 8, 3, 3), D4Element(1), "p4")


# ------------------------------------------------------------------------------------------------ filter banks
@pytest.mark.parametrize("group", GROUPS)
def test_filter_banks_match_definition(group):
    n = group_order(group)
    elems = group_elements_of(group)
    table, inv = cayley_table(group), inverse_table(group)
    w_lift = torch.randn(3, 2, 5, 5)
    bank = lifting_filter_bank(w_lift, group)
    assert bank.shape == (3 * n, 2, 5, 5)
    for o in range(3):
        for h in range(n):
            assert torch.equal(bank[o * n + h], elems[h](w_lift[o]))
    w = torch.randn(3, 2, n, 3, 3)
    bank = group_filter_bank(w, group)
    assert bank.shape == (3 * n, 2 * n, 3, 3)
    for o in range(3):
        for c in range(2):
            for h in range(n):
                for hp in range(n):
                    assert torch.equal(bank[o * n + h, c * n + hp], elems[h](w[o, c, table[inv[h], hp]]))


@pytest.mark.parametrize("group", GROUPS)
def test_group_conv_matches_loop_reference(group):
    """y[:, o, h] = sum_{c,h'} x[:, c, h'] * T_h(psi[o, c, h^-1 h']) + b[o], computed by a loop of planar convs."""
    n = group_order(group)
    elems = group_elements_of(group)
    table, inv = cayley_table(group), inverse_table(group)
    conv = GroupConv(2, 3, 3, group).double()
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 2, n, 6, 5, dtype=torch.float64)
    ref = torch.zeros(2, 3, n, 6, 5, dtype=torch.float64)
    for h in range(n):
        for hp in range(n):
            w_h = torch.stack([elems[h](conv.weight[:, c, table[inv[h], hp]]) for c in range(2)], dim=1)
            ref[:, :, h] += F.conv2d(x[:, :, hp], w_h, padding=1)
    ref += conv.bias.view(1, 3, 1, 1, 1)
    assert rel_err(conv(x), ref) < 1e-12


# ------------------------------------------------------------------------------------------------ exact equivariance
@pytest.mark.parametrize("group,g", ALL, ids=IDS)
def test_lifting_conv_equivariance(group, g):
    conv = GroupLiftingConv(3, 4, 5, group)
    x = torch.randn(2, 3, 11, 14)
    y = conv(x)
    assert y.shape == (2, 4, group_order(group), 11, 14)
    assert rel_err(conv(g(x)), transform_group_features(y, g, group)) <= 1e-5


@pytest.mark.parametrize("group,g", ALL, ids=IDS)
@pytest.mark.parametrize("k", [1, 3])
def test_group_conv_equivariance(group, g, k):
    n = group_order(group)
    conv = GroupConv(3, 4, k, group)
    x = torch.randn(2, 3, n, 10, 13)
    y = conv(x)
    assert y.shape == (2, 4, n, 10, 13)
    assert rel_err(conv(transform_group_features(x, g, group)), transform_group_features(y, g, group)) <= 1e-5


@pytest.mark.parametrize("group,g", ALL, ids=IDS)
def test_group_pool_is_plainly_equivariant(group, g):
    x = torch.randn(2, 3, group_order(group), 6, 9)
    gx = transform_group_features(x, g, group)
    pmax, pmean = GroupPool("max"), GroupPool("mean")
    assert pmax(x).shape == (2, 3, 6, 9)
    assert torch.equal(pmax(gx), g(pmax(x)))  # max is order-free: bit-exact
    assert rel_err(pmean(gx), g(pmean(x))) <= 1e-6
    assert torch.allclose(pmean(x), x.mean(2)) and torch.equal(pmax(x), x.max(2).values)


@pytest.mark.parametrize("group,g", ALL, ids=IDS)
def test_lift_conv_pool_stack_is_plainly_equivariant(group, g):
    net = torch.nn.Sequential(GroupLiftingConv(2, 4, 3, group), torch.nn.ReLU(), GroupConv(4, 4, 3, group), GroupPool())
    x = torch.randn(1, 2, 12, 8)
    assert rel_err(net(g(x)), g(net(x))) <= 1e-5


@pytest.mark.parametrize("group", GROUPS)
def test_norms_pooling_upsampling_commute_with_action(group):
    n = group_order(group)
    x = torch.randn(3, 4, n, 8, 12) * 3 + 1
    bn, inorm = GroupBatchNorm(4), GroupInstanceNorm(4, affine=True)
    torch.nn.init.normal_(bn.weight), torch.nn.init.normal_(inorm.weight)
    mods = [bn, inorm, GroupSpatialPool(2, "avg"), GroupSpatialPool(2, "max"), GroupUpsample(2, "nearest"),
            GroupUpsample(2, "bilinear"), GroupConvolution(4, 5, 3, group, norm="batch", act="relu")]
    for m in mods:
        y = m(x)
        for g in group_elements_of(group):
            assert rel_err(m(transform_group_features(x, g, group)), transform_group_features(y, g, group)) <= 1e-5, m
    # statistics are shared across the orientation axis: per channel over (B, |H|, H, W)
    y = GroupBatchNorm(4, affine=False)(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3, 4)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y.var(dim=(0, 2, 3, 4), unbiased=False), torch.ones(4), atol=1e-3)
    y = GroupInstanceNorm(4)(x)
    assert torch.allclose(y.mean(dim=(2, 3, 4)), torch.zeros(3, 4), atol=1e-5)
    assert not torch.allclose(y.mean(dim=(3, 4)), torch.zeros(3, 4, n), atol=1e-3)  # not per orientation
    assert GroupSpatialPool(2)(x).shape == (3, 4, n, 4, 6)
    assert GroupUpsample(2)(x).shape == (3, 4, n, 16, 24)


# ------------------------------------------------------------------------------------------------ gradients / init
@pytest.mark.parametrize("group", GROUPS)
def test_gradcheck(group):
    n = group_order(group)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    lift = lambda x, w, b: group_lifting_conv2d(x, w, b, group, padding=1)  # noqa: E731
    assert torch.autograd.gradcheck(lift, (x, w, b), fast_mode=True)
    xg = torch.randn(1, 1, n, 4, 3, dtype=torch.float64, requires_grad=True)
    wg = torch.randn(2, 1, n, 3, 3, dtype=torch.float64, requires_grad=True)
    gconv = lambda x, w, b: group_conv2d(x, w, b, group, padding=1)  # noqa: E731
    assert torch.autograd.gradcheck(gconv, (xg, wg, b), fast_mode=True)


def test_kaiming_init_keeps_a_relu_stack_well_scaled():
    torch.manual_seed(1)
    layers = [GroupLiftingConv(8, 12, 3, "p4m")]
    for _ in range(7):
        layers += [torch.nn.ReLU(), GroupConv(12, 12, 3, "p4m")]
    x = torch.randn(4, 8, 16, 16)
    with torch.no_grad():
        h = x
        rms = []
        for m in layers:
            h = m(h)
            if not isinstance(m, torch.nn.ReLU):
                rms.append(float(h.pow(2).mean().sqrt()))
    assert abs(float(x.pow(2).mean().sqrt()) - 1) < 0.05
    # 8 conv layers: the RMS stays within a factor 3 of the input's (it would shrink ~3^8 with PyTorch's default init)
    assert all(1 / 3 < r < 3 for r in rms), rms
    assert float(layers[0].bias.detach().abs().sum()) == 0
    assert abs(float(layers[2].weight.detach().std()) - (2 / (12 * 8 * 9)) ** 0.5) < 0.1 * (2 / (12 * 8 * 9)) ** 0.5


# ------------------------------------------------------------------------------------------------ arguments
def test_stride_and_padding_shapes():
    assert GroupLiftingConv(1, 2, 3, "p4", stride=2)(torch.randn(1, 1, 8, 8)).shape == (1, 2, 4, 4, 4)
    assert GroupConv(2, 2, 5, "p4m", padding=0)(torch.randn(1, 2, 8, 9, 9)).shape == (1, 2, 8, 5, 5)
    assert GroupConv(2, 2, (3, 3), "p4m", dilation=2)(torch.randn(1, 2, 8, 9, 9)).shape == (1, 2, 8, 9, 9)
    assert GroupConv(2, 2, 3, "P4M").group == "p4m"
    assert GroupLiftingConv(1, 2, 3, bias=False).bias is None


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: GroupConv(2, 2, 3, "p6"), "group"),
        (lambda: GroupLiftingConv(2, 2, 3, group="c4"), "group"),
        (lambda: GroupConv(2, 2, 4, "p4m"), "kernel_size"),
        (lambda: GroupLiftingConv(2, 2, (3, 5), "p4m"), "kernel_size"),
        (lambda: GroupConv(0, 2, 3, "p4m"), "in_channels"),
        (lambda: GroupConv(2, 2.5, 3, "p4m"), "out_channels"),
        (lambda: GroupConv(2, 2, 3, "p4m", stride=0), "stride"),
        (lambda: GroupConv(2, 2, 3, "p4m", padding=-1), "padding"),
        (lambda: GroupPool("median"), "mode"),
        (lambda: GroupSpatialPool(2, "lp"), "mode"),
        (lambda: GroupUpsample(2, "bicubic"), "mode"),
        (lambda: GroupConvolution(2, 2, 3, "p4m", norm="layer"), "norm"),
        # a JSON/YAML bundle config gives the (name, kwargs) form as a list: it slipped past the check and built a
        # LayerNorm over the last (W) axis, which rotations swap with H (equivariance silently lost)
        (lambda: GroupConvolution(2, 2, 3, "p4m", norm=["layer", {"normalized_shape": 8}]), "norm"),
    ],
)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs():
    with pytest.raises(ValueError, match="in_channels=3"):
        GroupLiftingConv(3, 2, 3)(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="input must be shaped"):
        GroupLiftingConv(3, 2, 3)(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match=r"\|H\|=8"):
        GroupConv(2, 2, 3, "p4m")(torch.randn(1, 2, 4, 8, 8))
    with pytest.raises(ValueError, match="in_channels=2"):
        GroupConv(2, 2, 3, "p4")(torch.randn(1, 3, 4, 8, 8))
    with pytest.raises(ValueError, match="input.shape"):
        GroupConv(2, 2, 3, "p4")(torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match="GroupPool"):
        GroupPool()(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="GroupBatchNorm"):
        GroupBatchNorm(2)(torch.randn(1, 2, 8, 8))
    # the functional forms check too: group_conv2d reshaped any (B, C, n, H, W) / planar (B, C * n, H, W) input with
    # the right element count and mixed channels and orientations up silently
    w = torch.randn(3, 2, 8, 3, 3)
    for shape in ((1, 4, 4, 6, 6), (1, 16, 6, 6), (1, 1, 16, 6, 6)):
        with pytest.raises(ValueError, match=r"in_channels=2, \|H\|=8"):
            group_conv2d(torch.randn(*shape), w, None, "p4m", padding=1)
    with pytest.raises(ValueError, match="in_channels=2, H, W"):
        group_lifting_conv2d(torch.randn(1, 1, 2, 6, 6), torch.randn(3, 2, 3, 3), None, "p4m", padding=1)
    assert group_conv2d(torch.randn(1, 2, 8, 6, 6), w, None, "p4m", padding=1).shape == (1, 3, 8, 6, 6)


@pytest.mark.parametrize("n", [4, 8])
def test_pool_and_upsample_use_their_modes(n):
    from monai_gmr.nn.gconv import GroupSpatialPool, GroupUpsample
    x = torch.randn(2, 3, n, 8, 12)
    assert torch.equal(GroupSpatialPool(2, "max")(x), F.max_pool2d(x.flatten(1, 2), 2).unflatten(1, (3, n)))
    avg = F.avg_pool2d(x.flatten(1, 2), 2).unflatten(1, (3, n))  # the default mode, the GMR recipe's down-sampling
    assert torch.allclose(GroupSpatialPool(2)(x), avg) and torch.allclose(GroupSpatialPool(2, "avg")(x), avg)
    assert not torch.allclose(GroupSpatialPool(2, "max")(x), avg)
    ref = F.interpolate(x.flatten(1, 2), scale_factor=2, mode="bilinear", align_corners=False).unflatten(1, (3, n))
    assert torch.allclose(GroupUpsample(2, "bilinear")(x), ref)


# ------------------------------------------------------------------------------------------------ TorchScript
def _quiet(fn, *args, **kwargs):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation / tracer warnings
        return fn(*args, **kwargs)


def _clear_gconv_caches() -> None:
    from monai_gmr.nn import gconv

    for obj in vars(gconv).values():
        if callable(getattr(obj, "cache_clear", None)):
            obj.cache_clear()


@pytest.mark.parametrize("group", GROUPS)
def test_functional_forms_trace_on_cold_caches(group):
    """``torch.jit.trace`` (trace checker on) of the functional forms in a fresh process: the gather index was built
    by torch ops on the first call (recorded in the graph) and read from the cache on the checker's rerun."""
    n = group_order(group)
    w_lift, w = torch.randn(3, 2, 3, 3), torch.randn(2, 3, n, 3, 3)
    b = torch.randn(2)

    def f(x):
        return group_conv2d(group_lifting_conv2d(x, w_lift, None, group, padding=1), w, b, group, padding=1)

    x = torch.randn(1, 2, 6, 7)
    _clear_gconv_caches()
    traced = _quiet(torch.jit.trace, f, x)
    assert torch.allclose(traced(x), f(x), atol=1e-5)
    x2 = torch.randn(2, 2, 5, 4)
    assert torch.allclose(traced(x2), f(x2), atol=1e-5)


def test_functional_forms_train_after_a_first_call_under_inference_mode():
    """The functional forms cache their gather index per device; filled by a first call under
    ``torch.inference_mode()`` (a validation pass before training), it was an inference tensor, which the bank's
    ``index_select`` saves for backward: every later training call raised "Inference tensors cannot be saved for
    backward". The cached index is now a normal tensor."""
    torch.manual_seed(0)
    w_lift, w = torch.randn(3, 2, 3, 3, requires_grad=True), torch.randn(2, 3, 8, 3, 3, requires_grad=True)
    x = torch.randn(1, 2, 6, 6)

    def f(x):
        return group_conv2d(group_lifting_conv2d(x, w_lift, None, "p4m", padding=1), w, None, "p4m", padding=1)

    _clear_gconv_caches()
    with torch.inference_mode():
        y0 = f(x)
    y = f(x)
    y.square().sum().backward()
    assert torch.equal(y.detach(), y0)
    assert w_lift.grad.abs().sum() > 0 and w.grad.abs().sum() > 0


@pytest.mark.parametrize("group", GROUPS)
def test_layers_script_and_trace(group):
    """Every layer compiles with ``torch.jit.script`` and traces with the checker on; outputs equal eager."""
    n = group_order(group)
    cases = [
        (GroupLiftingConv(2, 3, 3, group), (2, 2, 6, 7)),
        (GroupLiftingConv(2, 3, 5, group, bias=False, stride=2), (1, 2, 9, 9)),
        (GroupConv(3, 2, 3, group, dilation=2), (2, 3, n, 6, 7)),
        (GroupConv(3, 2, 1, group, bias=False), (2, 3, n, 6, 7)),
        (GroupPool("max"), (2, 3, n, 4, 5)),
        (GroupPool("mean"), (2, 3, n, 4, 5)),
        (GroupBatchNorm(3).eval(), (2, 3, n, 4, 5)),
        (GroupInstanceNorm(3, affine=True), (2, 3, n, 4, 5)),
        (GroupSpatialPool(2, "avg"), (2, 3, n, 4, 6)),
        (GroupSpatialPool(2, "max"), (2, 3, n, 4, 6)),
        (GroupUpsample(2, "nearest"), (2, 3, n, 3, 4)),
        (GroupUpsample(2, "bilinear"), (2, 3, n, 3, 4)),
        (GroupConvolution(3, 4, 3, group, norm="batch", act="relu", dropout=0.1).eval(), (2, 3, n, 4, 5)),
        (GroupConvolution(2, 4, 3, group, lifting=True), (2, 2, 4, 5)),
    ]
    for m, shape in cases:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = m(x)
            scripted = _quiet(torch.jit.script, m)
            assert torch.allclose(scripted(x), ref, atol=1e-5), m
            _clear_gconv_caches()
            traced = _quiet(torch.jit.trace, m, x)
            assert torch.allclose(traced(x), ref, atol=1e-5), m
    with pytest.raises(Exception, match=r"\|H\|=8"):
        _quiet(torch.jit.script, GroupConv(2, 2, 3, "p4m"))(torch.randn(1, 2, 4, 8, 8))
    with pytest.raises(Exception, match="GroupPool"):
        _quiet(torch.jit.script, GroupPool())(torch.randn(1, 2, 8, 8))


def test_gather_index_is_a_non_persistent_buffer():
    """The filter-bank index follows ``.to()`` as a module buffer (a traced net moved to another device used to keep
    a constant on the tracing device), stays int64 under ``.double()``, and is not in the state dict."""
    conv = GroupConv(2, 3, 3, "p4m")
    assert "bank_index" in dict(conv.named_buffers()) and "bank_index" not in conv.state_dict()
    assert set(conv.state_dict()) == {"weight", "bias"}
    conv = conv.double()
    assert conv.bank_index.dtype == torch.long and conv.weight.dtype == torch.float64
    x = torch.randn(1, 2, 8, 5, 5, dtype=torch.float64)
    assert torch.equal(conv(x), group_conv2d(x, conv.weight, conv.bias, "p4m", padding=1))
    lift = GroupLiftingConv(2, 3, 5, "p4")
    assert lift.bank_index.shape == (4 * 25,) and set(lift.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("group", ["p4", "p4m"])
@pytest.mark.parametrize("cls", [GroupLiftingConv, GroupConv])
def test_meta_construction_then_load_or_to_empty(cls, group):
    """The non-persistent ``bank_index`` stayed on meta after ``load_state_dict(..., assign=True)`` (wrong output),
    and held uninitialised memory after ``to_empty`` ("index out of range")."""
    ref = cls(2, 3, 3, group=group)
    x = torch.randn(1, 2, 7, 7) if cls is GroupLiftingConv else torch.randn(1, 2, ref.group_order, 7, 7)
    with torch.device("meta"):
        m = cls(2, 3, 3, group=group)
    m.load_state_dict(ref.state_dict(), assign=True)
    assert torch.equal(m.bank_index, ref.bank_index) and torch.equal(m(x), ref(x))
    with torch.device("meta"):
        m = cls(2, 3, 3, group=group)
    m = m.to_empty(device="cpu")
    m.load_state_dict(ref.state_dict())
    assert torch.equal(m.bank_index, ref.bank_index) and torch.equal(m(x), ref(x))


@pytest.mark.parametrize("cls", [GroupLiftingConv, GroupConv])
def test_to_empty_of_a_materialised_layer_rebuilds_the_index(cls):
    """``to_empty`` of a layer built on a real device (moved without copying storage, then loaded) left the
    non-persistent ``bank_index`` uninitialised: only a meta index was rebuilt ("index out of range" in forward)."""
    torch.manual_seed(0)
    ref = cls(2, 3, 3, group="p4m")
    x = torch.randn(1, 2, 7, 7) if cls is GroupLiftingConv else torch.randn(1, 2, ref.group_order, 7, 7)
    m = copy.deepcopy(ref)
    torch.full((1 << 16,), 123456789, dtype=torch.long)  # leave non-index values in the allocator's free memory
    m = m.to_empty(device="cpu")
    m.load_state_dict(ref.state_dict())
    assert torch.equal(m.bank_index, ref.bank_index) and torch.equal(m(x), ref(x))


def test_numpy_integers_are_accepted_like_gmrconv():
    """GMRConv takes np.int64 channels/sizes (``_is_int``); the group convs refused them ("in_channels must be an
    int >= 1, got in_channels=np.int64(4)"). They are stored as Python ints."""
    import numpy as np

    i = np.int64
    lift = GroupLiftingConv(i(1), i(2), i(3), "p4", stride=i(1), padding=i(1), dilation=i(1))
    conv = GroupConv(i(2), i(2), (i(3), i(3)), "p4", padding=i(1))
    for m in (lift, conv):
        assert all(type(v) is int for v in (m.in_channels, m.out_channels, m.kernel_size, m.padding, m.stride))
    torch.manual_seed(0)
    assert conv(lift(torch.rand(1, 1, 6, 6))).shape == (1, 2, 4, 6, 6)
    with pytest.raises(ValueError, match="^in_channels must be an int"):
        GroupLiftingConv(np.float64(1.0), 2, 3, "p4")


def test_numpy_int_arguments_are_taken_as_ints():
    """GMRConv and torch.nn.Conv2d take NumPy integers (e.g. widths from np.arange); the G-CNN layers refused them
    ("in_channels must be an int >= 1, got in_channels=np.int64(4)")."""
    np = pytest.importorskip("numpy")
    torch.manual_seed(0)
    m = GroupConv(np.int64(2), np.int64(3), np.int64(3), "p4", stride=np.int64(1), padding=np.int64(1))
    assert (m.in_channels, m.out_channels, m.kernel_size, m.padding) == (2, 3, 3, 1)
    assert all(type(v) is int for v in (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding))
    assert m(torch.randn(1, 2, 4, 5, 5)).shape == (1, 3, 4, 5, 5)
    assert GroupSpatialPool(np.int64(2)).kernel_size == 2 and GroupUpsample(np.int64(2)).scale_factor == 2
    with pytest.raises(ValueError, match="in_channels"):
        GroupConv(True, 3)
    with pytest.raises(ValueError, match="kernel_size"):
        GroupConv(2, 3, 3.0)


def test_text_switches_are_read_as_what_they_say():
    """A switch given as text (``--network_def#bias false`` from a command line: the string "false", which is
    truthy) built the opposite layer: a bias, a lifting conv for ``lifting="false"`` and no ADN for
    ``conv_only="false"``. They are read as GMRConv / GMRConvolution read them."""
    torch.manual_seed(0)
    assert GroupConv(2, 3, bias="false").bias is None and GroupLiftingConv(2, 3, bias="true").bias is not None
    block = GroupConvolution(2, 3, lifting="false", conv_only="false")
    assert isinstance(block.conv, GroupConv) and not isinstance(block.conv, GroupLiftingConv) and hasattr(block, "adn")
    assert not hasattr(GroupConvolution(2, 3, lifting="true", conv_only="true"), "adn")
    with pytest.raises(ValueError, match="conv_only"):
        GroupConvolution(2, 3, conv_only="maybe")


def test_group_convolution_reads_a_numeric_text_dropout():
    block = GroupConvolution(2, 2, 3, "p4", dropout="0.2")
    assert isinstance(block.adn.D, torch.nn.Dropout) and block.adn.D.p == 0.2
    with pytest.raises(ValueError, match="dropout="):
        GroupConvolution(2, 2, 3, "p4", dropout=1.5)


def test_functional_group_convs_refuse_even_kernels_as_the_modules_do():
    """An even kernel has no centre: the functional convs ran it (not exactly equivariant) while the modules refused."""
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="kernel_size=4"):
        group_lifting_conv2d(torch.randn(1, 1, 6, 6), torch.randn(2, 1, 4, 4), None, "p4")
    with pytest.raises(ValueError, match="kernel_size=2"):
        group_conv2d(torch.randn(1, 1, 4, 6, 6), torch.randn(2, 1, 4, 2, 2), None, "p4")
    assert group_conv2d(torch.randn(1, 1, 4, 6, 6), torch.randn(2, 1, 4, 1, 1), None, "p4").shape == (1, 2, 4, 6, 6)


def test_same_padding_is_refused_for_a_strided_group_conv():
    """padding="same" with stride 2 gave a half-size output (as GMRConv and torch.nn.Conv2d refuse it)."""
    from monai_gmr.nn import GroupConv, GroupConvolution, GroupLiftingConv

    for make in (lambda: GroupConv(2, 3, group="p4", stride=2, padding="same"),
                 lambda: GroupLiftingConv(2, 3, group="p4", stride=2, padding="same"),
                 lambda: GroupConvolution(2, 3, group="p4", strides=2, padding="same")):
        with pytest.raises(ValueError, match="same"):
            make()
    torch.manual_seed(0)
    assert GroupConv(2, 3, group="p4", stride=2)(torch.randn(1, 2, 4, 8, 8)).shape == (1, 3, 4, 4, 4)  # None: kept
    assert GroupConv(2, 3, group="p4", padding="same")(torch.randn(1, 2, 4, 8, 8)).shape == (1, 3, 4, 8, 8)
