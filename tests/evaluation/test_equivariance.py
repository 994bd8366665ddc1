"""equivariance_error / group_equivariance_error on exactly equivariant, approximately equivariant and plain maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

import monai_gmr
from monai_gmr.evaluation import equivariance_error, group_equivariance_error, spline_equivariance_error

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny, overhead-bound tensors


def _smooth(n: int, size: int, spatial_dims: int = 2) -> torch.Tensor:
    """Band-limited random field (sums of a few low-frequency cosines): interpolation is accurate on it."""
    coords = torch.meshgrid(*[torch.linspace(-1, 1, size)] * spatial_dims, indexing="ij")
    out = torch.zeros(n, 1, *([size] * spatial_dims))
    for i in range(n):
        for _ in range(4):
            k = torch.randn(spatial_dims) * 2.5
            out[i, 0] += torch.cos(sum(kk * c for kk, c in zip(k, coords)) + torch.rand(()) * 6.28)
    return out


def test_linear_pointwise_map_is_equivariant_at_every_angle():
    x = _smooth(2, 33)
    err = equivariance_error(lambda t: 3.0 * t - 1.0, x, angles=(15, 30, 45, 73))
    assert set(err) == {15.0, 30.0, 45.0, 73.0}
    assert max(err.values()) < 1e-6


def test_non_square_inputs_at_right_and_arbitrary_angles():
    """A right angle swaps the sizes of a non-square output: the disk is taken in the rotated frame."""
    from monai_gmr.evaluation import layerwise_equivariance_error

    torch.manual_seed(0)
    x = torch.randn(1, 1, 20, 30)
    err = equivariance_error(lambda t: 2.0 * t, x, angles=(30, 90, 270))
    assert set(err) == {30.0, 90.0, 270.0} and err[90.0] < 1e-7 and err[270.0] < 1e-7 and err[30.0] < 1e-6
    plain = torch.nn.Conv2d(1, 1, 3, padding=1).eval()
    assert equivariance_error(plain, x, angles=(90,))[90.0] > 0.1
    net = torch.nn.Sequential(monai_gmr.GMRConv(2, 1, 2, 5), torch.nn.Conv2d(2, 1, 3, padding=1)).eval()
    layer = layerwise_equivariance_error(net, x, angle=90.0)
    assert layer["0"][1] < 1e-5 and layer["1"][1] > 1e-2


def test_gmr_exact_group_and_approximate_angles():
    net = torch.nn.Sequential(monai_gmr.GMRConv(2, 1, 4, 5), torch.nn.Tanh(), monai_gmr.GMRConv(2, 4, 2, 5)).eval()
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5, padding=2), torch.nn.Tanh(), torch.nn.Conv2d(4, 2, 5, padding=2)).eval()
    x = _smooth(2, 48)
    g = group_equivariance_error(net, x)
    assert len(g) == 8 and g["rot0"] == 0.0 and max(g.values()) < 1e-5
    gp = group_equivariance_error(plain, x)
    assert min(v for k, v in gp.items() if k != "rot0") > 1e-2
    e_gmr = equivariance_error(net, x, angles=(15, 30, 45))
    e_plain = equivariance_error(plain, x, angles=(15, 30, 45))
    for a in (15.0, 30.0, 45.0):
        assert e_gmr[a] < 0.05 and e_gmr[a] < 0.3 * e_plain[a], (a, e_gmr[a], e_plain[a])


def test_invariant_head_and_3d():
    head = torch.nn.Sequential(monai_gmr.GMRConv(3, 1, 3, 3), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten()).eval()
    x = _smooth(1, 12, 3)
    g = group_equivariance_error(head, x, spatial_dims=3)
    assert len(g) == 48 and max(g.values()) < 1e-5
    e = equivariance_error(monai_gmr.GMRConv(3, 1, 2, 3).eval(), x, angles=(20,), spatial_dims=3, radius_frac=0.3)
    # a plain 3x3x3 conv measures ~0.1-0.3 here (a bound of 0.1 alone would not tell them apart)
    e_plain = equivariance_error(torch.nn.Conv3d(1, 2, 3, padding=1).eval(), x, angles=(20,), spatial_dims=3, radius_frac=0.3)
    assert 0 <= e[20.0] < 0.03 and e[20.0] < 0.3 * e_plain[20.0], (e, e_plain)


def test_3d_euler_angles():
    # rotate() and layerwise_equivariance_error take 3 Euler angles in 3D; equivariance_error keys them by tuple
    x = _smooth(1, 12, 3)
    e = equivariance_error(lambda t: 2.0 * t, x, angles=((10, 20, 30), 45, [0, 90, 0]), spatial_dims=3)
    assert set(e) == {(10.0, 20.0, 30.0), 45.0, (0.0, 90.0, 0.0)} and max(e.values()) < 1e-6
    plain = torch.nn.Conv3d(1, 1, 3, padding=1).eval()
    assert equivariance_error(plain, x, angles=((0, 90, 0),), spatial_dims=3)[(0.0, 90.0, 0.0)] > 1e-2


def test_errors():
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="angles"):
        equivariance_error(lambda t: t, x, angles=())
    with pytest.raises(ValueError, match="spatial_dims"):
        equivariance_error(lambda t: t, x, spatial_dims=3)
    with pytest.raises(ValueError, match="spatial_dims"):
        group_equivariance_error(lambda t: t, x, spatial_dims=4)
    with pytest.raises(TypeError, match="fn must return a tensor"):  # was AttributeError: 'dict' has no 'ndim'
        equivariance_error(lambda t: {"seg": t}, x)


def test_layerwise_error_locates_the_non_equivariant_layer():
    """A GMR stack with one plain 3x3 conv in the middle: exact (90 deg) up to that conv, broken from it on."""
    from monai_gmr.evaluation import layerwise_equivariance_error

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        monai_gmr.GMRConv(2, 1, 4, 5), torch.nn.InstanceNorm2d(4), torch.nn.LeakyReLU(0.1, inplace=True),
        torch.nn.Conv2d(4, 4, 3, padding=1), monai_gmr.GMRConv(2, 4, 2, 5),
    ).eval()  # fmt: skip
    x = _smooth(2, 32)
    err = layerwise_equivariance_error(net, x, angle=90.0)
    assert list(err) == ["0", "1", "2", "3", "4"] and all(s == (32, 32) for s, _ in err.values())
    assert max(err[n][1] for n in ("0", "1", "2")) < 1e-5
    assert min(err[n][1] for n in ("3", "4")) > 1e-2
    # hooks clone: the norm's output is recorded before the in-place activation overwrites it
    y0 = net[1](net[0](x))
    y1 = net[1](net[0](torch.rot90(x, 1, (2, 3))))
    assert torch.allclose(torch.rot90(y0, 1, (2, 3)), y1, atol=1e-5) and (y0 < 0).any()
    one = layerwise_equivariance_error(net, x, angle=45.0, modules=["1", "2"])
    assert list(one) == ["1", "2"] and one["1"][1] != one["2"][1]
    with pytest.raises(ValueError, match="nope"):
        layerwise_equivariance_error(net, x, modules=["nope"])


def _disk_input(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random content inside a soft-edged disk (zero outside): the same content at every angle."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 1, size + 4, size + 4, generator=g), 5, 1)
    c = (size - 1) / 2.0
    yy, xx = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    w = ((size / 2.0 - 1.0 - (yy**2 + xx**2).sqrt()) / 3.0).clamp(0.0, 1.0)
    return x * (0.5 - 0.5 * torch.cos(torch.pi * w))


def test_on_canvas_centres_and_keeps_the_disk_radius():
    from monai_gmr.evaluation import on_canvas
    from monai_gmr.functional.rotation import central_disk_mask

    x = torch.randn(2, 3, 16, 24)
    y, r = on_canvas(x, 40, radius_frac=0.35)
    assert y.shape == (2, 3, 40, 40) and torch.equal(y[..., 12:28, 8:32], x)
    y[..., 12:28, 8:32] = 0
    assert not y.any()  # zeros around the input
    # the disk has the same pixels as the input's own central disk, at the same place
    assert torch.equal(central_disk_mask((40, 40), r)[12:28, 8:32], central_disk_mask((16, 24), 0.35))
    assert central_disk_mask((40, 40), r).sum() == central_disk_mask((16, 24), 0.35).sum()
    y3, r3 = on_canvas(torch.randn(1, 1, 4, 6, 8), (8, 10, 8), spatial_dims=3, radius_frac=0.5)
    assert y3.shape == (1, 1, 8, 10, 8) and r3 == 0.5 * 4 / 8
    assert on_canvas(x, None, radius_frac=0.3) == (x, 0.3)
    for bad in (15, 17, (40,), (40, 40, 40), 2.5, (40, 39), True):
        with pytest.raises(ValueError, match="canvas"):
            on_canvas(x, bad)
    # NumPy integers (a size computed with NumPy) were refused as 'canvas must be an int or 2 ints, got canvas=40'
    for good in (np.int64(40), (np.int64(40), 40), np.array([40, 40])):
        assert on_canvas(x, good)[0].shape == (2, 3, 40, 40)


def test_canvas_keeps_the_border_out_of_a_large_receptive_field():
    """A GMRUNet's receptive field spans the whole 32-pixel input: on the bare input its 45-degree error is
    dominated by the square border (zero padding, bias and norm outputs around the content), on a 96-pixel canvas
    mostly the layers' own error remains. A pointwise map is unaffected by the canvas."""
    from monai_gmr.evaluation import layerwise_equivariance_error
    from monai_gmr.nets import GMRUNet

    for seed in range(3):
        torch.manual_seed(seed)
        net = GMRUNet(2, 1, 2, features=(4, 8, 8), kernel_sizes=(5, 5, 5)).eval()
        x = _disk_input(2, 32, seed)
        bare = equivariance_error(net, x, angles=(45,))[45.0]
        framed = equivariance_error(net, x, angles=(45,), canvas=96)[45.0]
        assert framed < 0.3 * bare, (seed, framed, bare)
    x = _disk_input(1, 32, 0)
    assert equivariance_error(lambda t: 2.0 * t, x, angles=(30,), canvas=(48, 64))[30.0] < 1e-6
    layers = layerwise_equivariance_error(net, x, angle=45.0, modules=["encoders.0.0.conv", "head"], canvas=96)
    assert [s for s, _ in layers.values()] == [(96, 96), (96, 96)]
    assert layers["head"][1] == pytest.approx(equivariance_error(net, x, angles=(45,), canvas=96)[45.0], rel=1e-6)


# ----------------------------------------------------------------------------------------- spline rotations
def _numpy_reference(fn, field, angle: float) -> float:
    """The same error written out with NumPy/SciPy only (independent of the library's disk and norm helpers)."""
    size = field.shape[0]
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    disk = (yy - c) ** 2 + (xx - c) ** 2 <= (0.35 * size) ** 2
    a = ndimage.rotate(fn(field), angle, reshape=False, order=3)
    b = fn(ndimage.rotate(field, angle, reshape=False, order=3))
    return float(np.linalg.norm((a - b)[disk]) / np.linalg.norm(a[disk]))


def test_spline_error_matches_a_numpy_reference_and_is_below_bicubic():
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.standard_normal((64, 64)), 3)
    torch.manual_seed(0)
    m = monai_gmr.GMRConv(2, 1, 1, 9, bias=False).double().eval()
    run = lambda a: m(torch.from_numpy(a)[None, None]).detach().numpy()[0, 0]  # noqa: E731
    x = torch.from_numpy(field)[None, None]
    with torch.no_grad():
        spline = spline_equivariance_error(m, x, (15, 40))
        bicubic = equivariance_error(m, x, (15, 40))
    for a in (15, 40):
        assert spline[a] == pytest.approx(_numpy_reference(run, field, a), rel=1e-9)
        assert spline[a] < bicubic[a] / 2  # PyTorch's bicubic resampling adds its own error (about 1% here)
    assert spline_equivariance_error(lambda t: t, x, 30) == {30.0: 0.0}  # both sides are the same rotation


def test_spline_error_3d_plane_and_bad_arguments():
    rng = np.random.default_rng(1)
    vol = torch.from_numpy(ndimage.gaussian_filter(rng.standard_normal((24, 24, 24)), 2))[None, None]
    m = monai_gmr.GMRConv(3, 1, 1, 5, bias=False).double().eval()
    plain = torch.nn.Conv3d(1, 1, 5, padding=2, bias=False).double().eval()
    with torch.no_grad():
        for axes in ((1, 2), (0, 2)):
            assert spline_equivariance_error(m, vol, 30, spatial_dims=3, axes=axes)[30.0] < 0.005  # measured 4e-4
            assert spline_equivariance_error(plain, vol, 30, spatial_dims=3, axes=axes)[30.0] > 0.1
        with pytest.raises(ValueError, match="axes"):
            spline_equivariance_error(m, vol, 30, spatial_dims=3, axes=(1, 1))
        with pytest.raises(ValueError, match="single angles"):
            spline_equivariance_error(m, vol, [(10, 20, 30)], spatial_dims=3)
        with pytest.raises(ValueError, match="spatial outputs"):
            spline_equivariance_error(lambda t: t.mean((2, 3, 4)), vol, 30, spatial_dims=3)


@pytest.mark.parametrize(
    "kwargs, named",
    [({"axes": (3, 1)}, "axes"), ({"axes": (5, 7)}, "axes"), ({"axes": (1, 2, 0)}, "axes"),
     ({"angles": (15, float("nan"))}, "angles"), ({"angles": float("inf")}, "angles"), ({"order": 7}, "order"),
     ({"order": 1.5}, "order")],
)  # fmt: skip
def test_spline_error_refuses_what_rotate_refuses(kwargs, named):
    """3D axes as rotate() reads them ((3, 1) is out of range, not (0, 1); (5, 7) is not (2, 1)), finite angles (a
    NaN angle gave an error of 0), and a spline order scipy runs, each refused by name."""
    vol = torch.zeros(1, 1, 8, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=named):
        spline_equivariance_error(lambda t: t, vol, **{"angles": 30, "spatial_dims": 3, **kwargs})


def test_angles_as_a_1d_tensor_or_array():
    """``as_angle_list`` lists a 1D tensor as it is: equivariance_error raised 'iteration over a 0-d tensor' on its
    entries, spline_equivariance_error refused them as 'not single angles'; an array row is an Euler triple in 3D."""
    x = _smooth(1, 17)
    for angles in (torch.tensor([15.0, 30.0]), np.array([15.0, 30.0])):
        assert set(equivariance_error(lambda t: 2.0 * t, x, angles=angles)) == {15.0, 30.0}
        assert set(spline_equivariance_error(lambda t: 2.0 * t, x, angles=angles)) == {15.0, 30.0}
    vol = _smooth(1, 8, 3)
    e = equivariance_error(lambda t: 2.0 * t, vol, angles=np.array([[10.0, 20.0, 30.0]]), spatial_dims=3)
    assert set(e) == {(10.0, 20.0, 30.0)}


def test_a_volume_without_spatial_dims_says_to_pass_3():
    """``spatial_dims`` defaults to 2: a volume passed without it stopped with "x must be (N, C, *spatial) with
    spatial_dims=2, got x.shape=(1, 1, 8, 8, 8)", not saying what to pass; the error now names spatial_dims=3 (and
    spatial_dims=2 for an image given with spatial_dims=3)."""
    from monai_gmr.evaluation import layerwise_equivariance_error

    net = torch.nn.Identity()
    vol, img = torch.randn(1, 1, 8, 8, 8), torch.randn(1, 1, 8, 8)
    for fn in (equivariance_error, group_equivariance_error, spline_equivariance_error, layerwise_equivariance_error):
        with pytest.raises(ValueError, match=r"x.shape=\(1, 1, 8, 8, 8\); a volume \(N, C, D, H, W\) needs spatial_dims=3"):
            fn(net, vol)
        with pytest.raises(ValueError, match=r"an image \(N, C, H, W\) needs spatial_dims=2"):
            fn(net, img, spatial_dims=3)


def test_an_empty_compared_region_is_not_a_zero_error():
    """An empty compared region read as an error of 0.0 (perfect) for any network; it is refused, naming the region
    and its radius: the ball of Euler angles (radius ``radius_frac * min(size)``) on a thin volume (2 slices), the
    cylinder of a rotation in a plane only 2 voxels wide. Layerwise errors give NaN for a module whose grid is too
    coarse (the 2x2 bottom of a U-Net fed 16x16 read 0.0)."""
    from monai_gmr.evaluation import layerwise_equivariance_error

    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 1, 1, bias=False)
    thin = torch.randn(1, 1, 16, 16, 2)
    with pytest.raises(ValueError, match=r"empty: the central ball of radius .* 0.35 \* 2 = 0.7 pixels.*\(16, 16, 2\)"):
        equivariance_error(lambda t: t.flip(-1), thin, angles=[(10, 20, 30)], spatial_dims=3)
    cyl = r"empty: the central cylinder \(along axis 1\) of radius radius_frac \* min\(size\[0\], size\[2\]\) = "
    cyl += r"0.35 \* 2 = 0.7 pixels.*\(16, 16, 2\)"
    with pytest.raises(ValueError, match=cyl):
        equivariance_error(lambda t: t.flip(-1), thin, spatial_dims=3, axes=(2, 0))
    with pytest.raises(ValueError, match=cyl):
        spline_equivariance_error(net, thin, spatial_dims=3, axes=(0, 2))
    assert equivariance_error(net, torch.randn(1, 1, 16, 16, 8), spatial_dims=3, axes=(0, 1))[45.0] < 1e-6
    pool = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.AvgPool2d(8))
    errs = layerwise_equivariance_error(pool, torch.randn(1, 1, 16, 16), angle=30)
    assert errs["0"][1] < 1e-6 and errs["1"][0] == (2, 2) and errs["1"][1] != errs["1"][1]  # NaN


def test_padding_outside_the_valid_region_is_left_out():
    """A disk of radius 0.5 reaches pixels that a 45-degree rotation fills with padding; an affine pointwise map is
    exactly equivariant on the real pixels only (``t + 1`` of the zero padding is 1, the rotated output's padding 0),
    so the error is ~0 only because the validity mask removes them."""
    x = _smooth(2, 33)
    err = equivariance_error(lambda t: 3.0 * t - 1.0, x, angles=(30, 45), radius_frac=0.5)
    assert max(err.values()) < 1e-6
    for mode in ("bilinear", "nearest"):
        assert max(equivariance_error(lambda t: t + 1.0, x, angles=(45,), radius_frac=0.5, mode=mode).values()) < 1e-6
    from monai_gmr.evaluation import layerwise_equivariance_error

    class Shift(torch.nn.Module):
        def forward(self, t):
            return t + 1.0

    net = torch.nn.Sequential(Shift(), torch.nn.Identity()).eval()
    layer = layerwise_equivariance_error(net, x, angle=45.0, radius_frac=0.5)
    assert set(layer) == {"0", "1"} and max(e for _, e in layer.values()) < 1e-6


def _thin_field(depth: int) -> torch.Tensor:
    """Smooth random float64 volume ``(1, 1, 32, 32, depth)`` (seeded), thin along the last axis."""
    rng = np.random.default_rng(0)
    return torch.from_numpy(ndimage.gaussian_filter(rng.standard_normal((32, 32, depth)), (2.5, 2.5, 1.0)))[None, None]


def test_a_thin_volume_rotated_in_its_large_plane_is_scored_on_a_cylinder():
    """A rotation in the plane ``axes`` maps the cylinder (central disk of that plane x the whole rotation axis) onto
    itself: a 32x32x2 volume rotated in its 32x32 plane was refused (the ball of radius 0.35 * 2 held no voxel) and is
    now scored by all three arbitrary-angle errors, a GMR layer / net small, a plain Conv3d clearly larger.

    Measured (seed 0, float64): equivariance_error (trilinear) GMRConv k5 0.0039-0.0056, plain Conv3d k5
    0.057-0.17, GMR net 0.0091-0.0101; spline error GMRConv 1.7e-4-2.9e-4, plain 0.058-0.17; layerwise at 30 deg:
    0.0037, 0.021, 0.010. Bounds: GMR < 0.02 (trilinear) / < 0.002 (spline), plain > 0.04, GMR < 0.2 x plain."""
    from monai_gmr.evaluation import layerwise_equivariance_error

    torch.manual_seed(0)
    x = _thin_field(2)
    gmr = monai_gmr.GMRConv(3, 1, 2, 5).double().eval()
    plain = torch.nn.Conv3d(1, 2, 5, padding=2).double().eval()
    net = torch.nn.Sequential(monai_gmr.GMRConv(3, 1, 2, 5), torch.nn.LeakyReLU(0.1), monai_gmr.GMRConv(3, 2, 2, 5))
    net = net.double().eval()
    kw = dict(angles=(15, 30, 45), spatial_dims=3, axes=(0, 1))
    e_gmr, e_plain, e_net = (equivariance_error(f, x, **kw) for f in (gmr, plain, net))
    s_gmr, s_plain = (spline_equivariance_error(f, x, **kw) for f in (gmr, plain))
    for a in (15.0, 30.0, 45.0):
        assert 0 < e_gmr[a] < 0.02 and e_net[a] < 0.02 and e_plain[a] > 0.04, (a, e_gmr, e_net, e_plain)
        assert e_gmr[a] < 0.2 * e_plain[a] and e_net[a] < 0.2 * e_plain[a]
        assert 0 < s_gmr[a] < 0.002 and s_plain[a] > 0.04 and s_gmr[a] < 0.2 * s_plain[a], (a, s_gmr, s_plain)
    layers = layerwise_equivariance_error(net, x, 30.0, spatial_dims=3, axes=(0, 1))
    assert [s for s, _ in layers.values()] == [(32, 32, 2)] * 3
    assert all(0 < err < 0.05 for _, err in layers.values()), layers
    # on a canvas of the plane only (40x40, the 2 slices kept) the cylinder keeps its radius in pixels of x (the
    # ball's fraction came from the 2 slices), so the errors are those without the canvas
    on = layerwise_equivariance_error(net, x, 30.0, spatial_dims=3, axes=(0, 1), canvas=(40, 40, 2))
    for name, (_, err) in layers.items():
        assert on[name][0] == (40, 40, 2) and abs(on[name][1] - err) < 1e-9 * err, (name, on[name], err)


def test_the_cylinder_spans_the_whole_rotation_axis_and_euler_angles_keep_the_ball():
    """A map that is equivariant except on the first slice along the rotation axis (it adds a fixed, not
    rotation-invariant pattern there): the ball of a 32x32x6 volume (radius 0.35 * 6 = 2.1 about slice 2.5) left that
    slice out and read 0; the cylinder includes it. Euler angles keep the ball even when they turn one plane only:
    a defect at the end of the rotation axis of a cube is scored for the single angle 30 (cylinder), not for the same
    rotation given as Euler angles (30, 0, 0) (ball). On a canvas the cylinder keeps its radius in pixels of ``x``."""
    from monai_gmr.evaluation import on_canvas
    from monai_gmr.functional.rotation import central_disk_mask

    x = _thin_field(6)
    pattern = torch.zeros(32, 32, 6, dtype=torch.float64)
    pattern[10:16, 12:20, 0] = 1.0

    def fn(t: torch.Tensor) -> torch.Tensor:
        return 2.0 * t + pattern

    for err_fn in (equivariance_error, spline_equivariance_error):
        e = err_fn(fn, x, angles=(30,), spatial_dims=3, axes=(0, 1))[30.0]
        assert e > 0.05, (err_fn.__name__, e)
        assert err_fn(lambda t: 2.0 * t, x, angles=(30,), spatial_dims=3, axes=(0, 1))[30.0] < 0.05 * e
    # a defect at the end of the rotation axis 0, off-centre in the plane (1, 2): inside the cylinder of that plane,
    # outside the ball (radius 0.35 * 12 = 4.2 about index 5.5); Euler angles (30, 0, 0) turn the same plane
    vol = ndimage.gaussian_filter(np.random.default_rng(1).standard_normal((12, 12, 12)), 2)
    vol = torch.from_numpy(vol)[None, None]
    defect = torch.zeros(12, 12, 12, dtype=torch.float64)
    defect[0, 3:5, 6:8] = 1.0
    e = equivariance_error(lambda t: 2.0 * t + defect, vol, angles=(30, (30, 0, 0)), spatial_dims=3)
    assert e[30.0] > 0.01 and e[(30.0, 0.0, 0.0)] < 1e-12, e
    # on_canvas with the plane: the cylinder on the canvas has the pixels of x's own cylinder
    y, r = on_canvas(x, (40, 40, 6), spatial_dims=3, radius_frac=0.35, axes=(0, 1))
    assert y.shape == (1, 1, 40, 40, 6) and r == 0.35 * 32 / 40
    own = central_disk_mask((32, 32, 6), 0.35, axes=(0, 1))
    assert torch.equal(central_disk_mask((40, 40, 6), r, axes=(0, 1))[4:36, 4:36], own) and own[..., 0].any()


def test_zero_reference_output_gives_zero_or_inf_not_a_huge_finite_error():
    """||a - b|| / ||b|| with b = 0 divided by clamp_min(1e-300): a map that is zero on x but not on g(x) read as an
    error of ~1e301, a finite number that reports and means carried as such."""
    from monai_gmr.evaluation import masked_rel_err

    assert masked_rel_err(torch.ones(3), torch.zeros(3)) == float("inf")
    assert masked_rel_err(torch.zeros(3), torch.zeros(3)) == 0.0
    x = torch.zeros(1, 1, 8, 8)
    x[..., 1, 2] = 1.0  # off-centre: every non-identity D4 element moves it

    def fn(t):  # zero for x, one everywhere for any other image
        return (1.0 - t[..., 1:2, 2:3]).expand_as(t)

    errs = group_equivariance_error(fn, x)
    assert errs["rot0"] == 0.0 and errs["rot90"] == float("inf")
    assert equivariance_error(lambda t: torch.zeros_like(t), torch.randn(1, 1, 16, 16), angles=(30,)) == {30.0: 0.0}


def test_outputs_of_different_shapes_are_an_error_not_broadcast():
    """masked_rel_err broadcast a against b: an (N, 1) output against an (N, 2) reference read as a finite error (0.0
    for equal values), and group_equivariance_error on an output whose size does not follow a right angle of a
    non-square input stopped in torch's "The size of tensor a (12) must match ..."."""
    from monai_gmr.evaluation import masked_rel_err

    with pytest.raises(ValueError, match="differ in shape"):
        masked_rel_err(torch.ones(1, 2, 4, 4), torch.ones(1, 1, 4, 4))
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 12)
    with pytest.raises(ValueError, match="differ in shape"):
        group_equivariance_error(lambda t: torch.zeros(1, 2, 8, 12) + t.mean(), x)

    def head(t):  # 2 class scores for the unrotated input, 1 for any other
        return t.mean((2, 3)).repeat(1, 2) if torch.equal(t, x) else t.mean((2, 3))

    with pytest.raises(ValueError, match="differ in shape"):
        equivariance_error(head, x, angles=(30,))


def test_nan_output_with_zero_reference_is_nan_not_inf():
    from monai_gmr.evaluation import masked_rel_err

    assert np.isnan(masked_rel_err(torch.full((3,), float("nan")), torch.zeros(3)))
    assert masked_rel_err(torch.ones(3), torch.zeros(3)) == float("inf")


@pytest.mark.parametrize("angles", ["30", ("abc",), (0, None), (15, True)])
def test_angles_as_text_or_non_numbers_are_refused_naming_angles(angles):
    """``angles="30"`` was the angles 3 and 0 (reported as "angle='3'"), ``"abc"`` stopped in float() with "could not
    convert string to float", ``True`` was an angle of 1 degree."""
    with pytest.raises(ValueError, match="angles"):
        equivariance_error(lambda t: t, torch.randn(1, 1, 16, 16), angles=angles)


def test_bad_x_spatial_dims_and_a_single_module_name():
    """``spatial_dims=2.0`` stopped in a slice ("slice indices must be integers"), a NumPy ``x`` was reported as fn's
    output ("fn must return a tensor"), and ``modules="0"`` of layerwise_equivariance_error was read letter by letter
    (``"conv"`` as the modules 'c', 'o', 'n', 'v')."""
    from monai_gmr.evaluation import layerwise_equivariance_error

    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(ValueError, match="spatial_dims"):
        equivariance_error(lambda t: t, x, spatial_dims=2.0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        group_equivariance_error(lambda t: t, x.numpy())
    net = torch.nn.Sequential()
    net.add_module("conv", torch.nn.Conv2d(1, 2, 3, padding=1))
    net.add_module("act", torch.nn.ReLU())
    res = layerwise_equivariance_error(net.eval(), x, angle=90.0, modules="conv")
    assert list(res) == ["conv"] and res["conv"][0] == (16, 16)


def test_a_mask_of_another_size_is_an_error_naming_mask():
    from monai_gmr.evaluation import masked_rel_err

    a = torch.ones(1, 1, 8, 8)
    with pytest.raises(ValueError, match="mask of shape"):
        masked_rel_err(a, a, torch.ones(4, 4, dtype=torch.bool))
    assert masked_rel_err(2 * a, a, torch.ones(8, 8, dtype=torch.bool)) == 1.0


def test_layerwise_names_a_module_whose_output_does_not_rotate_with_the_input():
    """A module with a fixed output size on a non-square input at 90 degrees stopped in torch's "The size of tensor a
    (12) must match the size of tensor b (8)" without saying which module."""
    from monai_gmr.evaluation import layerwise_equivariance_error

    class Fixed(torch.nn.Module):
        def forward(self, t):
            return torch.zeros(t.shape[0], 2, 8, 12) + t.mean()

    net = torch.nn.Sequential()
    net.add_module("conv", torch.nn.Conv2d(1, 2, 3, padding=1))
    net.add_module("fixed", Fixed())
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 12)
    with pytest.raises(ValueError, match="module 'fixed'"):
        layerwise_equivariance_error(net.eval(), x, angle=90.0)
    assert list(layerwise_equivariance_error(net, x, angle=90.0, modules=["conv"])) == ["conv"]


@torch.no_grad()
def test_layerwise_of_a_leaf_net_reports_it_under_the_empty_name():
    """A bare layer has no children: its own error is reported under "" (it returned {})."""
    from monai_gmr.evaluation import layerwise_equivariance_error

    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 16)
    for net in (monai_gmr.GMRConv(2, 1, 2, 3).eval(), torch.nn.Conv2d(1, 2, 3, padding=1).eval()):
        res = layerwise_equivariance_error(net, x, 90)
        assert list(res) == [""] and res[""][0] == (16, 16)
    assert layerwise_equivariance_error(monai_gmr.GMRConv(2, 1, 2, 3).eval(), x, 90)[""][1] < 1e-5


def test_layerwise_reports_a_module_called_several_times_per_forward():
    """A module used twice per forward (a shared activation, as in GMRResNet's and MONAI's ResNet blocks) was left out
    of the result without a word, and returned {} when asked for by name: each call is reported as ``name#i``."""
    from monai_gmr.evaluation import layerwise_equivariance_error

    class Shared(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = monai_gmr.GMRConv(2, 1, 2, 3), torch.nn.Conv2d(2, 2, 3, padding=1)
            self.act = torch.nn.LeakyReLU(0.1)

        def forward(self, x):
            return self.act(self.conv2(self.act(self.conv1(x))))

    torch.manual_seed(0)
    net = Shared().eval()
    x = _smooth(1, 16)
    err = layerwise_equivariance_error(net, x, angle=90.0)
    assert list(err) == ["conv1", "act#0", "conv2", "act#1"]
    assert err["act#0"][1] < 1e-5 < 1e-2 < err["act#1"][1]  # the plain conv between the calls breaks equivariance
    assert list(layerwise_equivariance_error(net, x, angle=90.0, modules=["act"])) == ["act#0", "act#1"]


def test_an_empty_batch_is_not_a_zero_error():
    """An empty batch (N = 0) compared no pixel, but every error function read it as 0.0 (exactly equivariant)."""
    from monai_gmr.evaluation import layerwise_equivariance_error, masked_rel_err

    torch.manual_seed(0)
    conv = monai_gmr.GMRConv(2, 1, 2, 3).eval()
    x = torch.randn(0, 1, 16, 16)
    for run in (lambda: equivariance_error(conv, x, (30,)), lambda: group_equivariance_error(conv, x),
                lambda: spline_equivariance_error(conv, x, (30,)), lambda: layerwise_equivariance_error(conv, x, 90)):
        with pytest.raises(ValueError, match="empty"):
            run()
    assert np.isnan(masked_rel_err(torch.zeros(0, 2), torch.zeros(0, 2)))
    assert np.isnan(masked_rel_err(torch.zeros(2, 0, 4), torch.zeros(2, 0, 4), torch.ones(4, dtype=torch.bool)))


def test_radius_frac_is_checked_against_the_input_also_on_a_canvas():
    """radius_frac is a fraction of the input's size in (0, 0.5]: on a canvas 0.6 was rescaled to 0.24 of the canvas and
    accepted (a disk reaching past the input into the zero canvas; refused without a canvas), and text stopped in
    "'<' not supported between instances of 'int' and 'str'" (or a str repeated by the canvas rescaling)."""
    from monai_gmr.evaluation import layerwise_equivariance_error

    torch.manual_seed(0)
    conv = monai_gmr.GMRConv(2, 1, 1, 3).eval()
    x = torch.randn(1, 1, 16, 16)
    for bad in (0.6, "0.3", True, float("nan"), 0.0):
        for canvas in (None, 40):
            with pytest.raises(ValueError, match="radius_frac"):
                equivariance_error(conv, x, (30,), radius_frac=bad, canvas=canvas)
            with pytest.raises(ValueError, match="radius_frac"):
                layerwise_equivariance_error(conv, x, 30, radius_frac=bad, canvas=canvas)
    assert equivariance_error(conv, x, (90,), radius_frac=0.5, canvas=40)[90.0] < 1e-5
