"""RotationTTAInferer: exactness on equivariant nets, symmetrisation, validity weighting, wrappers, 3D, errors."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer

import monai_gmr
from monai_gmr.functional.groups import d4_elements
from monai_gmr.inferers import RotationTTAInferer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny, overhead-bound tensors


def _gmr_seg(spatial_dims: int = 2) -> torch.nn.Module:
    return torch.nn.Sequential(
        monai_gmr.GMRConv(spatial_dims, 1, 4, 5), torch.nn.ReLU(), monai_gmr.GMRConv(spatial_dims, 4, 2, 3)
    ).eval()


@torch.no_grad()
def test_d4_tta_of_equivariant_net_equals_single_pass():
    net = _gmr_seg()
    x = torch.randn(2, 1, 24, 24)
    single = net(x)
    tta = RotationTTAInferer(flips=("h",))
    assert isinstance(tta, Inferer) and len(tta.view_names) == 8
    out = tta(x, net)
    assert out.shape == single.shape
    assert torch.allclose(out.softmax(1), single.softmax(1), atol=1e-6)
    out_logits = RotationTTAInferer(flips=("h",), average="logits")(x, net)
    assert torch.allclose(out_logits, single, atol=1e-5)
    probs = RotationTTAInferer(output="probs")(x, net)
    assert torch.allclose(probs, single.softmax(1), atol=1e-6)


@torch.no_grad()
def test_tta_symmetrises_a_plain_network():
    """D4-averaged outputs of a non-equivariant net are exactly D4-equivariant (and differ from one pass)."""
    net = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    x = torch.randn(1, 1, 16, 16)
    tta = RotationTTAInferer(flips=("h",), output="probs")
    base = tta(x, net)
    assert (base - net(x).softmax(1)).abs().max() > 1e-3
    for g in d4_elements():
        assert torch.allclose(tta(g(x), net), g(base), atol=1e-6), g.name


@torch.no_grad()
def test_validity_weighting_ignores_padded_corners():
    """Identity 'network' on a linear ramp: views at 30/45 degrees are exact where they read real pixels; with
    validity weights the TTA mean reproduces the input everywhere (the padded corners get weight 0)."""
    rr, cc = torch.meshgrid(torch.arange(21.0), torch.arange(21.0), indexing="ij")
    x = (0.1 * rr + 0.05 * cc + 1.0)[None, None].double()
    ident = lambda t: t  # noqa: E731
    tta = RotationTTAInferer(angles=(0, 30, 45), average="logits")
    assert torch.allclose(tta(x, ident), x, atol=2e-3)
    w = tta.view_weights((21, 21))
    assert w.shape == (3, 21, 21) and w[0].all() and w[1, 0, 0] == 0 and 0.5 < w[1].mean() < 1
    # an unweighted mean would be pulled towards the zero padding in the corners
    views = RotationTTAInferer(angles=(0, 30, 45), reduce="none")(x, ident)
    assert views.shape == (3, 1, 1, 21, 21)
    assert (views.mean(0) - x).abs().max() > 0.3


@torch.no_grad()
def test_pixels_no_view_covers_get_the_plain_mean_of_the_views():
    """Mutation audit round 6 (T5): without the identity view (angles 45 and -45) the image corners are padding in
    every view; there the class docstring promises the plain mean of the views, not one view's value."""
    x = torch.rand(1, 1, 15, 15, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ramp = torch.arange(15.0, dtype=torch.float64)  # the network's output depends on the frame: views differ
    net = lambda t: t + ramp  # noqa: E731
    tta = RotationTTAInferer(angles=(45, -45), average="logits", padding_mode="zeros")
    w = tta.view_weights((15, 15))
    none = w.sum(0) == 0
    assert none[0, 0] and none[-1, -1] and not none[7, 7]
    views = RotationTTAInferer(angles=(45, -45), reduce="none", padding_mode="zeros")(x, net)
    assert (views[0] - views[1])[..., none].abs().max() > 0.5  # the choice of the fallback shows
    out = tta(x, net)
    assert torch.allclose(out[..., none], views.mean(0)[..., none], atol=1e-12)
    inside = w.sum(0) == 2
    assert torch.allclose(out[..., inside], views.mean(0)[..., inside], atol=1e-12)


@torch.no_grad()
def test_wraps_sliding_window_inferer():
    net = _gmr_seg()
    x = torch.randn(1, 1, 32, 32)
    sw = SlidingWindowInferer(roi_size=16, overlap=0.5, sw_batch_size=4)
    ref = sw(x, net)
    for batch_views in (False, True):
        out = RotationTTAInferer(inferer=sw, angles=(0, 90, 270), flips=("v",), batch_views=batch_views)(x, net)
        assert torch.allclose(out.softmax(1), ref.softmax(1), atol=1e-6)


@torch.no_grad()
def test_classification_average_probabilities():
    net = torch.nn.Sequential(
        monai_gmr.GMRConv(2, 1, 3, 5), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()  # invariant to D4 up to float rounding
    x = torch.randn(3, 1, 20, 20)
    single = net(x)
    out = RotationTTAInferer(task="classification", flips=("h",))(x, net)
    assert out.shape == (3, 3)
    assert torch.allclose(out.softmax(1), single.softmax(1), atol=1e-6)
    # hand check of probability averaging on a non-invariant toy "network"
    toy = lambda t: torch.stack([t[:, 0, 0, 0], t[:, 0, 0, -1]], 1)  # noqa: E731  (top-left, top-right pixels)
    y = torch.zeros(1, 1, 3, 3)
    y[0, 0, 0, 0] = 2.0
    res = RotationTTAInferer(task="classification", angles=(0, 90), output="probs")(y, toy)
    p0 = torch.softmax(torch.tensor([2.0, 0.0]), 0)  # view 0: (2, 0); view 90: the 2 moves to the bottom-left
    p1 = torch.softmax(torch.tensor([0.0, 0.0]), 0)
    assert torch.allclose(res[0], (p0 + p1) / 2, atol=1e-6)
    stacked = RotationTTAInferer(task="classification", angles=(0, 90), reduce="none")(y, toy)
    assert stacked.shape == (2, 1, 2)
    # averaged logits, returned as probabilities: the activation of the mean logit
    res = RotationTTAInferer(task="classification", angles=(0, 90), average="logits", output="probs")(y, toy)
    assert torch.allclose(res[0], torch.softmax(torch.tensor([1.0, 0.0]), 0), atol=1e-6)
    res = RotationTTAInferer(task="classification", angles=(0, 90), average="logits")(y, toy)
    assert torch.allclose(res[0], torch.tensor([1.0, 0.0]), atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("wrap", [lambda y: (y, y), lambda y: {"seg": y}])
def test_several_network_outputs_are_an_error_saying_how_to_pick_one(wrap):
    """A deep-supervision tuple or a dict of heads: the TypeError named only the type; it now says how to pick the
    output to average (the untested branch of _plain)."""
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    with pytest.raises(TypeError, match=r"got (tuple|dict); .*several outputs.*net\(x\)\[0\]"):
        RotationTTAInferer()(torch.randn(1, 1, 8, 8), lambda v: wrap(net(v)))


@torch.no_grad()
@pytest.mark.parametrize("reduce", ["mean", "none"])
def test_classification_of_a_segmentation_output_is_an_error(reduce):
    """task='classification' given (N, C, H, W) maps averaged the views' maps in their rotated frames (no error, a
    mixture of pixels from different places); now an error pointing to task='segmentation'. Pooled (N, C, 1, 1)
    outputs, which rotation does not move, still run."""
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"classification.*\(1, 2, 8, 8\).*task='segmentation'"):
        RotationTTAInferer(task="classification", reduce=reduce)(x, net)
    pooled = RotationTTAInferer(task="classification", reduce=reduce)(x, lambda v: net(v).mean((2, 3), keepdim=True))
    assert pooled.shape[-3:] == (2, 1, 1)
    # a map flattened to (N, C, L) passed the check (its ndim differs from the input's) and was averaged
    with pytest.raises(ValueError, match=r"classification.*\(1, 2, 64\).*task='segmentation'"):
        RotationTTAInferer(task="classification", reduce=reduce)(x, lambda v: net(v).flatten(2))
    flat = RotationTTAInferer(task="classification", reduce=reduce)(x, lambda v: net(v).mean((2, 3))[..., None])
    assert flat.shape[-2:] == (2, 1)


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_outputs_are_reduced_in_float32(dtype):
    """AMP outputs: in half precision the clamp 1 - 1e-7 rounds to 1 and a confident sigmoid logit became +inf."""
    x = torch.randn(1, 1, 8, 8)
    net = lambda t: (40.0 * t).to(dtype)  # noqa: E731  (confident single-logit network)
    y = RotationTTAInferer(activation="sigmoid")(x, net)
    ref = RotationTTAInferer(activation="sigmoid")(x, lambda t: net(t).float())
    assert y.dtype == torch.float32 and torch.isfinite(y).all() and torch.equal(y, ref)
    assert y.max() > 15.0  # logit(1 - 1e-7)


@torch.no_grad()
def test_non_right_angles_under_autocast():
    """SupervisedEvaluator(amp=True) runs the inferer inside torch.autocast: a 30-degree view failed in grid_sample
    ('expected scalar type Float but found BFloat16', the sampling grid was built in half precision)."""
    from monai_gmr.functional.rotation import clear_rotation_cache

    clear_rotation_cache()
    net, x = _gmr_seg(), torch.randn(1, 1, 20, 20)
    inf = RotationTTAInferer(angles=(0, 30), flips=("h",))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = inf(x, net)
    assert y.dtype == torch.float32 and (y.softmax(1) - inf(x, net).softmax(1)).abs().max() < 0.05


@torch.no_grad()
def test_view_weights_of_many_tile_sizes_stay_within_the_rotation_cache_budget(monkeypatch):
    """The inferer kept one float (V, H, W) weight stack per tile size for its whole life (18 MiB after 40 sizes of
    ~120 px, GBs for a varied-size data set on the GPU); the weights now live in the rotation module's LRU cache."""
    import monai_gmr.functional.rotation as rot

    rot.clear_rotation_cache()
    monkeypatch.setattr(rot, "_CACHE_BUDGET_BYTES", 2**20)
    inf = RotationTTAInferer(angles=(0, 30, 90), flips=("h",))
    net = lambda t: torch.cat([t, -t], 1)  # noqa: E731
    for s in range(60, 76):
        inf(torch.rand(1, 1, s, s + 3), net)
    assert sum(t.numel() * t.element_size() for v in rot._CACHE.values() for t in v) <= 2**20
    assert not [k for k, v in vars(inf).items() if isinstance(v, dict) and len(v) > 1]  # no per-size state
    w = inf.view_weights((20, 23))
    assert w.dtype == torch.float32 and w.shape == (6, 20, 23) and bool((w[[0, 2, 3, 5]] == 1).all())
    assert 0 < float(w[1].mean()) < 1  # the 30-degree views lose their corners
    rot.clear_rotation_cache()


@torch.no_grad()
def test_3d_tta():
    net = _gmr_seg(3)
    x = torch.randn(1, 1, 10, 10, 10)
    out = RotationTTAInferer(spatial_dims=3, flips=("d",))(x, net)
    assert torch.allclose(out.softmax(1), net(x).softmax(1), atol=1e-6)
    # another plane: TTA over its four right angles makes a plain conv equivariant in that plane only
    torch.manual_seed(0)
    plain = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    tta = RotationTTAInferer(spatial_dims=3, angles=(0, 90, 180, 270), axes=(0, 2))
    out = tta(x, plain)
    assert out.shape == (1, 2, 10, 10, 10)
    assert torch.allclose(tta(torch.rot90(x, 1, (2, 4)), plain), torch.rot90(out, 1, (2, 4)), atol=1e-5)
    assert not torch.allclose(tta(torch.rot90(x, 1, (2, 3)), plain), torch.rot90(out, 1, (2, 3)), atol=1e-3)
    # an arbitrary angle: the identity on a linear ramp comes back exactly (view 0 covers every pixel, the 25 deg
    # view is exact where its weight is 1), so a wrong inverse rotation or plane would show
    ramp = torch.arange(10.0).reshape(1, 1, 10, 1, 1) + 2.0 * torch.arange(10.0).reshape(1, 1, 1, 1, 10)
    ramp = ramp + 3.0 * torch.arange(10.0).reshape(1, 1, 1, 10, 1)
    for axes in ((1, 2), (0, 2)):
        tta = RotationTTAInferer(spatial_dims=3, angles=(0, 25), axes=axes, average="logits")
        assert tta.view_weights((10, 10, 10))[1].mean() > 0.3
        assert torch.allclose(tta(ramp, lambda t: t), ramp, atol=1e-4)


@torch.no_grad()
def test_rotating_an_anisotropic_metatensor_plane_warns(monkeypatch, caplog):
    """A MONAI volume ``(N, C, H, W, D)`` of 0.8 x 0.8 x 3 mm voxels under the default ``axes=(1, 2)`` is rotated in
    its W-D plane: views of distorted anatomy (a rotation of voxel indices, right angles swapping the spacings),
    averaged without a word. Now a warning (once per plane and spacings) names the plane, the spacings and
    ``axes=(0, 1)``; the axial plane (equal spacings), flips alone and plain tensors stay silent. The same check runs
    in rotation_robustness."""
    import monai_gmr.functional.rotation as rot
    from monai_gmr.evaluation import rotation_robustness

    monkeypatch.setattr(rot, "_WARNED_ANISOTROPIC", set(), raising=False)
    affine = torch.diag(torch.tensor([0.8, 0.8, 3.0, 1.0], dtype=torch.float64))
    x = MetaTensor(torch.randn(1, 1, 6, 6, 4), affine=affine)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    name = "monai_gmr.functional.rotation"
    with caplog.at_level("WARNING", logger=name):
        RotationTTAInferer(spatial_dims=3, axes=(0, 1), flips=(0,))(x, net)  # axial D4: equal spacings
        RotationTTAInferer(spatial_dims=3, angles=(0,), flips=("h", "v"))(x, net)  # flips only
        RotationTTAInferer(spatial_dims=3)(x.as_tensor(), net)  # no affine
        assert not [r for r in caplog.records if r.name == name]
        RotationTTAInferer(spatial_dims=3)(x, net)
        RotationTTAInferer(spatial_dims=3, angles=(0, 30))(x, net)  # the same plane again: warned once
    msgs = [r.getMessage() for r in caplog.records if r.name == name]
    assert len(msgs) == 1 and "(1, 2)" in msgs[0] and "0.8 vs 3" in msgs[0] and "axes=(0, 1)" in msgs[0], msgs
    caplog.clear()
    with caplog.at_level("WARNING", logger=name):
        label = torch.zeros(1, 1, 6, 6, 4, dtype=torch.long)
        rotation_robustness(net, {"image": x, "label": label}, angles=(0, 90), flips=(), spatial_dims=3, axes=(2, 0))
    msgs = [r.getMessage() for r in caplog.records if r.name == name]
    assert len(msgs) == 1 and "(2, 0)" in msgs[0] and "3 vs 0.8" in msgs[0], msgs


@torch.no_grad()
def test_metatensor_passthrough_and_supervised_evaluator():
    net = _gmr_seg()
    x = MetaTensor(torch.randn(1, 1, 16, 16), meta={"filename_or_obj": "a.png"})
    out = RotationTTAInferer()(x, net)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.png"
    data = [{"image": torch.randn(2, 1, 16, 16), "label": torch.zeros(2, 1, 16, 16)}]
    ev = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=data, network=net,
                             inferer=RotationTTAInferer(angles=(0, 90, 180, 270)), epoch_length=1)
    ev.run()
    pred = ev.state.output[0]["pred"] if isinstance(ev.state.output, list) else ev.state.output["pred"]
    assert pred.shape[-3:] == (2, 16, 16)


def test_bad_arguments():
    with pytest.raises(ValueError, match="reduce"):
        RotationTTAInferer(reduce="max")
    with pytest.raises(ValueError, match="task"):
        RotationTTAInferer(task="detection")
    with pytest.raises(ValueError, match="angles"):
        RotationTTAInferer(angles=())
    with pytest.raises(ValueError, match="mode"):
        RotationTTAInferer(mode="cubic")
    with pytest.raises(ValueError, match="inputs"):
        RotationTTAInferer()(torch.randn(1, 16, 16), SimpleInferer())
    with pytest.raises(ValueError, match="classification"):
        RotationTTAInferer()(torch.randn(1, 1, 8, 8), lambda t: t.mean((2, 3)))
    # a single logit under softmax would be a constant 1 (a 0.5 map after the caller's sigmoid)
    one_logit = lambda t: t.mean((2, 3))  # noqa: E731
    with pytest.raises(ValueError, match="sigmoid"):
        RotationTTAInferer(task="classification")(torch.randn(2, 1, 8, 8), one_logit)
    x = torch.randn(2, 1, 8, 8)
    out = RotationTTAInferer(task="classification", activation="sigmoid", output="probs")(x, one_logit)
    torch.testing.assert_close(out, torch.sigmoid(one_logit(x)))  # the mean is rotation invariant


def test_a_volume_without_spatial_dims_says_to_pass_3():
    """``spatial_dims`` defaults to 2: a volume stopped with "inputs must be (N, C, *spatial) with spatial_dims=2,
    got shape (1, 1, 8, 8, 8)"; the error now names spatial_dims=3 (and spatial_dims=2 for an image in 3D)."""
    net = torch.nn.Conv3d(1, 2, 1)
    with pytest.raises(ValueError, match=r"a volume \(N, C, D, H, W\) needs spatial_dims=3"):
        RotationTTAInferer(angles=(0, 90))(torch.randn(1, 1, 8, 8, 8), net)
    with pytest.raises(ValueError, match=r"an image \(N, C, H, W\) needs spatial_dims=2"):
        RotationTTAInferer(angles=(0, 90), spatial_dims=3)(torch.randn(1, 1, 8, 8), torch.nn.Conv2d(1, 2, 1))
    assert RotationTTAInferer(angles=(0, 90), spatial_dims=3)(torch.randn(1, 1, 8, 8, 8), net).shape == (1, 2, 8, 8, 8)


@torch.no_grad()
def test_reduce_none_returns_raw_views_in_the_input_frame():
    """``reduce="none"`` (segmentation): every view's raw output (no activation) rotated back to the input frame; with
    an identity 'network' each of the 8 D4 views reproduces the input bit-exactly, and a view of a plain convolution
    equals g^-1(net(g(x))) (a non-square input, so an un-inverted odd rotation would not even have the right shape)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 14)
    tta = RotationTTAInferer(flips=("h",), reduce="none")
    views = tta(x, lambda t: t)
    assert views.shape == (8, 2, 3, 10, 14)
    for v in views:
        assert torch.equal(v, x)
    net = torch.nn.Conv2d(3, 2, 3, padding=1).eval()
    views = tta(x, net)
    for g, v in zip(d4_elements(), views):
        assert torch.allclose(v, g.inverse()(net(g(x))), atol=1e-6), g.name


def test_view_weights_follow_the_interpolation_mode():
    """The weights are each view's round-trip mask for the inferer's own ``mode`` (bicubic stencils reach further
    than bilinear ones, nearest ones less), also when an inferer of another mode computed them first for the same
    views and size (cache)."""
    from monai_gmr.functional.rotation import Geometry

    shape = (21, 21)
    w = {m: RotationTTAInferer(angles=(0, 30), mode=m).view_weights(shape) for m in ("bilinear", "bicubic", "nearest")}
    for m, wm in w.items():
        assert torch.equal(wm[1].bool(), Geometry(30.0).roundtrip_mask(shape, m)), m
    assert w["bicubic"][1].sum() < w["bilinear"][1].sum() < w["nearest"][1].sum()


def test_batch_views_reads_text_switches():
    """``batch_views="false"`` (text from a config or command line) was true: all views went in one batched call."""
    calls = []

    def inner(v, net):
        calls.append(v.shape[0])
        return net(v)

    x = torch.randn(1, 1, 8, 8)
    RotationTTAInferer(inferer=inner, batch_views="false")(x, torch.nn.Conv2d(1, 2, 1))
    assert calls == [1, 1, 1, 1]
    calls.clear()
    RotationTTAInferer(inferer=inner, batch_views="true")(x, torch.nn.Conv2d(1, 2, 1))
    assert calls == [4]
    with pytest.raises(ValueError, match="batch_views"):
        RotationTTAInferer(batch_views="sometimes")


@pytest.mark.parametrize("angles", ["90", ("abc",), (0, None), (0, True), (0, float("nan"))])
def test_angles_as_text_or_non_numbers_are_refused_naming_angles(angles):
    """``angles="90"`` (a config's text) was the views rot9 and rot0; ``"abc"`` / ``None`` stopped in float() without
    naming ``angles``; ``True`` was a 1 degree view."""
    with pytest.raises(ValueError, match="angles"):
        RotationTTAInferer(angles=angles)
    assert RotationTTAInferer(angles=torch.tensor([0, 90])).view_names == ["rot0", "rot90"]
    assert RotationTTAInferer(angles=[0, (0, 90, 0)], spatial_dims=3).view_names == ["rot0", "rot(0,90,0)"]


def test_bad_inferer_spatial_dims_and_inputs_name_the_argument():
    """A non-callable ``inferer`` failed only at the first call ("'str' object is not callable"), ``spatial_dims=2.0``
    in torch.eye, and a NumPy input was reported as an inner-inferer output."""
    with pytest.raises(TypeError, match="inferer"):
        RotationTTAInferer(inferer="SlidingWindowInferer")
    with pytest.raises(ValueError, match="spatial_dims"):
        RotationTTAInferer(spatial_dims=2.0)
    with pytest.raises(TypeError, match="inputs must be a torch.Tensor"):
        RotationTTAInferer()(torch.randn(1, 1, 8, 8).numpy(), torch.nn.Conv2d(1, 2, 1))


def test_outputs_without_a_channel_dim_under_softmax():
    """An ``(N,)`` classification output stopped in ``y.shape[1]`` ("tuple index out of range"), also with
    ``average="logits", output="logits"`` where no softmax is applied (that case now averages the raw outputs)."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    score = lambda t: t.mean((1, 2, 3))  # noqa: E731
    with pytest.raises(ValueError, match="activation='sigmoid'"):
        RotationTTAInferer(task="classification")(x, score)
    out = RotationTTAInferer(task="classification", average="logits")(x, score)
    torch.testing.assert_close(out, score(x))  # the mean is rotation invariant


@pytest.mark.parametrize("flips", ["false", "hv", "x"])
def test_flips_as_text_is_refused_naming_flips(flips):
    with pytest.raises(ValueError, match="flips="):
        RotationTTAInferer(flips=flips)


def test_a_single_flip_name_as_text_is_one_flip():
    assert RotationTTAInferer(flips="h").view_names == RotationTTAInferer(flips=["h"]).view_names


@pytest.mark.parametrize("average", ["logits", "probs"])
@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_integer_outputs_are_refused_under_reduce_mean(average, task):
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 8)

    def net(v):
        labels = (v > 0).long().repeat(1, 2, 1, 1)
        return labels if task == "segmentation" else labels.flatten(2).amax(-1)

    with pytest.raises(ValueError, match="floating point.*torch.int64"):
        RotationTTAInferer(average=average, task=task)(x, net)
    assert RotationTTAInferer(task=task, reduce="none")(x, net).dtype == torch.int64


def test_default_padding_of_arbitrary_angles_is_reflection():
    """Arbitrary-angle TTA views were padded with zeros (black corners: an instance-norm network's statistics change
    over the whole view); the default is now reflection, as the bundles' ``tta_padding``."""
    from monai.inferers import SimpleInferer

    tta = RotationTTAInferer(SimpleInferer(), angles=[0, 30], flips=[])
    assert {g.padding_mode for g in tta.geometries} == {"reflection"}
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    views = [g.apply(x, "bilinear") for g in tta.geometries]
    assert views[1].min() > 0.5  # no black corner in the 30-degree view (the image's smallest value is 0, at a corner)
