"""Tests of monai_gmr.functional.rotation: conventions, exactness, inverses, validity masks, 3D, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_gmr.functional.groups import d4_elements
from monai_gmr.functional.rotation import (
    Geometry,
    central_disk_mask,
    flip,
    make_geometries,
    rotate,
    rotate_inverse,
    rotation_matrix,
    roundtrip_mask,
    validity_mask,
)


def _linear_image(*shape: int, dtype=torch.float64) -> torch.Tensor:
    """A linear function of the index coordinates: (bi/tri)linear interpolation reproduces it exactly."""
    coords = torch.meshgrid(*[torch.arange(s, dtype=dtype) for s in shape], indexing="ij")
    return sum((i + 1.5) * c for i, c in enumerate(coords))[None, None]


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, -1])
def test_right_angles_match_rot90_bit_exact(k):
    x = torch.randn(2, 3, 6, 9)
    y = rotate(x, 90 * k)
    assert torch.equal(y, torch.rot90(x, k, dims=(-2, -1)))
    assert torch.equal(rotate_inverse(y, 90 * k), x)


def test_sign_convention_counter_clockwise():
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 18] = 1.0  # right of the centre
    # 90 degrees counter-clockwise (display with row 0 on top): the point moves to the top
    assert (rotate(x, 90)[0, 0] == 1).nonzero().tolist() == [[2, 10]]
    # the interpolated path agrees with rot90 at 90 degrees
    assert torch.allclose(rotate(x, 90, exact=False), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)
    # 45 degrees: peak lands up-right, at radius 8 -> (10 - 8/sqrt2, 10 + 8/sqrt2) ~ (4.34, 15.66)
    peak = divmod(int(rotate(x, 45)[0, 0].argmax()), 21)
    assert peak == (4, 16)


def test_interpolated_path_agrees_with_rot90_non_square():
    x = torch.randn(1, 2, 5, 8)
    assert torch.allclose(rotate(x, 180, exact=False), torch.rot90(x, 2, dims=(-2, -1)), atol=1e-5)
    assert rotate(x, 90).shape == (1, 2, 8, 5)  # exact path swaps dims like rot90
    assert rotate(x, 30).shape == x.shape


def test_flips_exact_and_self_inverse():
    x = torch.randn(2, 1, 5, 7)
    assert torch.equal(flip(x, "h"), torch.flip(x, dims=(-1,)))
    assert torch.equal(flip(x, "v"), torch.flip(x, dims=(-2,)))
    assert torch.equal(flip(flip(x, "h"), "h"), x)
    g = Geometry(270, "v")
    assert torch.equal(g.invert(g.apply(x)), x)


def test_geometry_matches_d4_elements():
    x = torch.randn(1, 2, 6, 6)
    for e in d4_elements():
        g = Geometry(90 * e.k, "h" if e.flip else None)
        assert torch.equal(g.apply(x), e(x)), e.name
        assert g.is_exact


def test_names_and_make_geometries():
    assert Geometry(30).name == "rot30"
    assert Geometry(0, "h").name == "flip_h"
    assert Geometry(90, "v").name == "rot90_flip_v"
    assert Geometry(22.5).name == "rot22.5"
    assert Geometry((10, 0, 20), None, 3).name == "rot(10,0,20)"
    geoms = make_geometries(range(0, 360, 10), ("h", "v"))
    assert len(geoms) == 38 and geoms[-1].name == "flip_v"
    d4 = make_geometries((0, 90, 180, 270), ("h",), product=True)
    assert len(d4) == 8 and len({g.name for g in d4}) == 8



def test_make_geometries_rejects_views_that_are_the_same_transform():
    """Names differ but the pixels move the same way: a TTA average weighted such views twice (0 and 360 degrees; with
    flips ("h", "v") x 4 right angles every reflection came twice, rot180 + flip h being flip v)."""
    for angles, flips, product in (((0, 360), (), False), ((0, 90, -270), (), True), ((0, 90, 180, 270), ("h", "v"), True)):
        with pytest.raises(ValueError, match="duplicate views"):
            make_geometries(angles, flips, product=product)
    assert len(make_geometries((0, 90), ("h", "v"), product=True)) == 6  # all distinct
    x = torch.rand(1, 1, 5, 7)
    assert torch.equal(Geometry(180, "h").apply(x), Geometry(0, "v").apply(x))  # the duplicate really is one
    with pytest.raises(ValueError, match="padding_mode"):  # was only noticed at call time by a non-right angle
        Geometry(90, padding_mode="mirror")


def test_duplicate_views_of_3d_euler_rotations_and_flips_are_found():
    """Mutation audit round 6 (R24): the duplicate-view key is the map of ``apply`` (flip first, then rotate). In 2D,
    and for one 3D plane, composing the flip on the wrong side finds the same duplicates (the half turn that relates the
    flips commutes with every rotation of the plane); with 3D Euler rotations it does not: ``(0, 90, 0)`` + flip "v"
    moves every voxel as ``(180, 90, 0)`` + flip "h" does, and a TTA average would weight it twice."""
    x = torch.randn(1, 1, 5, 5, 5)
    assert torch.equal(Geometry((0, 90, 0), "v", 3).apply(x), Geometry((180, 90, 0), "h", 3).apply(x))
    with pytest.raises(ValueError, match="duplicate views"):
        make_geometries([(0, 90, 0), (180, 90, 0)], ["h", "v"], spatial_dims=3, product=True)
    distinct = make_geometries([(0, 90, 0), (90, 0, 0)], ["h", "v"], spatial_dims=3, product=True)
    outs = [g.apply(x) for g in distinct]
    assert len(outs) == 6 and not any(torch.equal(a, b) for i, a in enumerate(outs) for b in outs[i + 1 :])


@pytest.mark.parametrize("angle", [17.0, 30.0, 45.0, -60.0])
def test_linear_image_rotation_and_roundtrip_exact_on_valid(angle):
    img = _linear_image(33, 33)
    y = rotate(img, angle)
    vm = validity_mask((33, 33), angle)
    # compare against the analytic rotated linear function on the valid pixels
    m = rotation_matrix(angle)
    c = 16.0
    rr, cc = torch.meshgrid(torch.arange(33.0, dtype=torch.float64), torch.arange(33.0, dtype=torch.float64), indexing="ij")
    src = m @ torch.stack([rr.flatten() - c, cc.flatten() - c])
    expect = (1.5 * (src[0] + c) + 2.5 * (src[1] + c)).reshape(33, 33)
    assert torch.allclose(y[0, 0][vm], expect[vm], atol=1e-8)
    z = rotate_inverse(y, angle)
    rm = roundtrip_mask((33, 33), angle)
    assert 0.5 < rm.double().mean() < 1.0
    assert torch.allclose(z[0, 0][rm], img[0, 0][rm], atol=1e-8)
    # outside the round-trip mask the padding shows up somewhere
    assert (z[0, 0][~rm] - img[0, 0][~rm]).abs().max() > 1.0


def test_validity_mask_excludes_padding():
    ones = torch.ones(1, 1, 40, 40, dtype=torch.float64)
    for angle in (10.0, 45.0, 123.0):
        vm = validity_mask((40, 40), angle)
        y = rotate(ones, angle)
        assert torch.allclose(y[0, 0][vm], torch.ones(()).double(), atol=2e-3)
        assert (~vm).any()
        # corners always come from outside for non-right angles
        assert not vm[0, 0] and not vm[-1, -1]
    nm = validity_mask((40, 40), 45.0, mode="nearest")
    bm = validity_mask((40, 40), 45.0, mode="bilinear")
    cm = validity_mask((40, 40), 45.0, mode="bicubic")
    assert (cm <= bm).all() and (bm <= nm).all() and cm.sum() < bm.sum() < nm.sum()
    assert validity_mask((40, 30), 90.0).shape == (30, 40) and validity_mask((40, 30), 90.0).all()


@pytest.mark.parametrize("angle", [90, 270, -90, 450, 180, 360])
def test_validity_mask_of_every_right_angle_has_the_rotated_shape(angle):
    """Mutation audit round 6 (R18): every odd number of quarter turns (270, -90, 450, not only 90) swaps the plane's
    sizes of a non-square image; the mask must have the shape of ``rotate``'s output (it weights that output)."""
    x = torch.randn(1, 1, 5, 8)
    assert validity_mask((5, 8), angle).shape == rotate(x, angle).shape[-2:]
    vol = torch.randn(1, 3, 5, 7)
    for axes in [(0, 1), (1, 2), (0, 2)]:
        mask = validity_mask((3, 5, 7), angle, spatial_dims=3, axes=axes)
        assert mask.shape == rotate(vol, angle, 3, axes=axes).shape[-3:]
    euler = (angle, 90, -angle)
    assert validity_mask((3, 5, 7), euler, spatial_dims=3).shape == rotate(vol, euler, 3).shape[-3:]


def test_integer_labels_nearest_keep_values_and_dtype():
    lab = torch.randint(0, 7_000_000, (2, 1, 16, 16))
    r = rotate(lab, 33, mode="nearest")
    assert r.dtype == torch.int64
    assert set(r.unique().tolist()) <= set(lab.unique().tolist()) | {0}
    b = rotate(lab > 3_000_000, 33, mode="nearest")
    assert b.dtype == torch.bool


def test_float_labels_and_int_labels_sample_same_pixels():
    lab = torch.randint(0, 3, (1, 1, 24, 24))
    a = rotate(lab, 27, mode="nearest")
    b = rotate(lab.float(), 27, mode="nearest")
    assert torch.equal(a.float(), b)


def test_3d_right_angles_and_planes():
    v = torch.randn(1, 2, 4, 5, 6)
    for axes in [(0, 1), (1, 2), (2, 0), (0, 2)]:
        assert torch.equal(rotate(v, 90, 3, axes=axes), torch.rot90(v, 1, dims=(2 + axes[0], 2 + axes[1])))
    cube = torch.randn(1, 1, 5, 5, 5)
    for axes in [(0, 1), (1, 2), (0, 2)]:
        assert torch.allclose(rotate(cube, 90, 3, axes=axes, exact=False), rotate(cube, 90, 3, axes=axes), atol=1e-5)
    # default plane is (H, W) and Euler angles compose in the order (1,2), (2,0), (0,1)
    assert torch.equal(rotate(cube, 90, 3), torch.rot90(cube, 1, dims=(3, 4)))
    e = (90, 180, 270)
    seq = torch.rot90(torch.rot90(torch.rot90(cube, 1, dims=(3, 4)), 2, dims=(4, 2)), 3, dims=(2, 3))
    assert torch.equal(rotate(cube, e, 3), seq)
    assert torch.allclose(rotate(cube, e, 3, exact=False), seq, atol=1e-5)
    assert torch.equal(rotate_inverse(rotate(cube, e, 3), e, 3), cube)


def test_euler_middle_angle_turns_in_the_plane_2_0_in_its_direction():
    """Mutation audit round 6 (R27): the second Euler angle rotates in the plane ``(2, 0)`` (W towards D), as the
    module docstring says; the composition test above uses 180 degrees there, which is the same in both directions."""
    cube = torch.randn(1, 1, 5, 5, 5, dtype=torch.float64)
    ref = torch.rot90(cube, 1, dims=(4, 2))
    assert torch.equal(rotate(cube, (0, 90, 0), 3), ref)
    assert torch.equal(rotate(cube, 90, 3, axes=(2, 0)), ref)
    assert torch.allclose(rotate(cube, (0, 90, 0), 3, exact=False), ref, atol=1e-10)  # the resampling's matrix too
    e = (90, 90, 270)
    seq = torch.rot90(torch.rot90(torch.rot90(cube, 1, dims=(3, 4)), 1, dims=(4, 2)), 3, dims=(2, 3))
    assert torch.equal(rotate(cube, e, 3), seq)
    assert torch.allclose(rotate(cube, e, 3, exact=False), seq, atol=1e-10)
    m = rotation_matrix(30.0, 3, axes=(2, 0))
    assert torch.allclose(rotation_matrix((0, 30.0, 0), 3), m, atol=1e-15)


def test_3d_arbitrary_euler_roundtrip_on_linear_volume():
    vol = _linear_image(13, 13, 13)
    for angle, axes in [((30.0, 20.0, 10.0), None), (25.0, (0, 2))]:
        y = rotate(vol, angle, 3, axes=axes)
        z = rotate_inverse(y, angle, 3, axes=axes)
        rm = roundtrip_mask((13, 13, 13), angle, 3, axes=axes)
        assert rm.any() and not rm.all()
        assert torch.allclose(z[0, 0][rm], vol[0, 0][rm], atol=1e-3)


def test_central_disk():
    d = central_disk_mask((20, 20), 0.35)
    assert d[10, 10] and not d[0, 0] and d.shape == (20, 20)
    assert d.dtype == torch.bool and abs(int(d.sum()) - 3.14159 * 7.0**2) < 12  # ~ pi r^2, r = 0.35 * 20
    for angle in (15.0, 30.0, 45.0):
        assert (d <= validity_mask((20, 20), angle, mode="bicubic")).all()
    b = central_disk_mask((9, 9, 9), 0.3)
    assert b.shape == (9, 9, 9) and b[4, 4, 4] and not b[0, 4, 4]


def test_bad_arguments():
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="mode"):
        rotate(x, 10, mode="cubic")
    with pytest.raises(ValueError, match="bicubic"):
        rotate(torch.randn(1, 1, 4, 4, 4), 10, 3, mode="bicubic")
    with pytest.raises(ValueError, match="angle"):
        rotate(x, float("nan"))
    with pytest.raises(ValueError, match="angle"):
        rotate(x, (10, 20, 30))  # Euler angles are 3D only
    with pytest.raises(ValueError, match="axes"):
        rotate(torch.randn(1, 1, 4, 4, 4), 10, 3, axes=(1, 1))
    with pytest.raises(ValueError, match="spatial_dims"):
        rotate(x, 10, spatial_dims=4)
    with pytest.raises(ValueError, match="axis"):
        flip(x, "x")
    with pytest.raises(ValueError, match="angles"):
        make_geometries([])
    with pytest.raises(ValueError, match="radius_frac"):
        central_disk_mask((8, 8), 0.9)
    with pytest.raises(ValueError, match="padding_mode"):
        rotate(x, 10, padding_mode="wrap")


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_nearest_gather_matches_grid_sample(padding_mode):
    """The exact integer-gather nearest path picks the same pixels as grid_sample(mode="nearest")."""
    import torch.nn.functional as F

    from monai_gmr.functional.rotation import _source_grid

    x = torch.randn(2, 3, 17, 23, dtype=torch.float64)
    y = rotate(x, 33.0, mode="nearest", padding_mode=padding_mode)
    grid = _source_grid((17, 23), rotation_matrix(33.0), x.device, torch.float64)
    ref = F.grid_sample(x.reshape(1, 6, 17, 23), grid, mode="nearest", padding_mode=padding_mode, align_corners=True)
    assert torch.equal(y, ref.reshape(x.shape))


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("shape", [(21, 21), (20, 20), (16, 27)])
def test_roundtrip_mask_reads_no_padding(mode, shape):
    # a round trip of an image of ones is 1 wherever the mask says no padding was read (the bicubic back-rotation
    # stencil reaches one pixel further than the bilinear one)
    ones = torch.ones(1, 1, *shape, dtype=torch.float64)
    for angle in (5.0, 10.0, 30.0, 45.0, 60.0, 100.0):
        z = rotate_inverse(rotate(ones, angle, mode=mode), angle, mode=mode)
        rm = roundtrip_mask(shape, angle, mode=mode)
        assert rm.any()
        assert torch.allclose(z[0, 0][rm], torch.ones_like(z[0, 0][rm]), atol=1e-9), (mode, shape, angle)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_resamples_in_float32(dtype):
    # a bf16 grid misplaces samples and CPU grid_sample in bf16 returns NaN on large images
    x = torch.ones(1, 1, 256, 256, dtype=dtype)
    y = rotate(x, 30.0)
    assert y.dtype == dtype and torch.isfinite(y).all()
    vm = validity_mask((256, 256), 30.0)
    assert (y[0, 0][vm].float() - 1).abs().max() <= 2e-3  # validity tolerates 1e-3 pixel of padding
    ramp = _linear_image(129, 129)
    ref = rotate(ramp.float(), 17.0)
    assert (rotate(ramp.to(dtype), 17.0).float() - ref).abs().max() <= 2 * ref.abs().max() * 2**-8


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_rotation_under_autocast_keeps_a_float32_grid(spatial_dims):
    """Inside torch.autocast (AMP: SupervisedEvaluator(amp=True) around a RotationTTAInferer with non-right angles)
    affine_grid ran in bfloat16 and its grid was cached under the float32 key: grid_sample failed with 'expected scalar
    type Float but found BFloat16' inside autocast, and every later float32 rotation of that shape failed too."""
    from monai_gmr.functional.rotation import clear_rotation_cache

    x = torch.rand(1, 1, *([12] * spatial_dims))
    ref = rotate(x, 30.0, spatial_dims)
    clear_rotation_cache()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = rotate(x, 30.0, spatial_dims)
    assert y.dtype == torch.float32 and torch.equal(y, ref)
    assert torch.equal(rotate(x, 30.0, spatial_dims), ref)  # the cached grid is still the float32 one


def test_numpy_angles_and_non_finite_euler_angles():
    """NumPy scalars (``for a in np.arange(0, 360, 45)``) and arrays of Euler angles are angles like Python numbers
    and tensors; a NaN/inf Euler angle is refused by name (it failed with "cannot convert float NaN to integer", and
    a Geometry with one was accepted)."""
    np = pytest.importorskip("numpy")
    torch.manual_seed(0)
    x = torch.randn(1, 2, 7, 9)
    for a in (np.int64(90), np.float32(45.0), np.int32(-30)):
        assert torch.equal(rotate(x, a), rotate(x, float(a)))
        assert torch.equal(rotate_inverse(x, a), rotate_inverse(x, float(a)))
    v = torch.randn(1, 5, 6, 7)
    euler = np.array([10.0, 20.0, 90.0])
    assert torch.equal(rotate(v, euler, 3), rotate(v, (10.0, 20.0, 90.0), 3))
    assert torch.equal(validity_mask((5, 6, 7), euler, 3), validity_mask((5, 6, 7), (10.0, 20.0, 90.0), 3))
    g = Geometry(np.int64(90))
    assert g.angle == 90.0 and type(g.angle) is float and g.is_exact and g.name == "rot90"
    assert Geometry(euler, spatial_dims=3).angle == (10.0, 20.0, 90.0)
    for bad in ((float("nan"), 0, 0), (0, float("inf"), 0), (True, 0, 0)):
        with pytest.raises(ValueError, match="Euler angles"):
            rotate(v, bad, 3)
        with pytest.raises(ValueError, match="Euler angles"):
            Geometry(bad, spatial_dims=3)
    with pytest.raises(ValueError, match="angle"):
        rotate(x, True)


def test_bicubic_integer_images_saturate_instead_of_wrapping():
    """Bicubic overshoots a sharp edge (a uint8 0|255 edge resamples to -28 .. 301 in float): the integer cast wrapped
    those to 228 / 45, dark and bright speckles along every edge of a rotated uint8 RGB tile."""
    x = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    x[..., 16:] = 255
    x[..., 8:24, 8:12] = 0
    ref = rotate(x.float(), 30, mode="bicubic")
    assert ref.min() < -5 and ref.max() > 260  # the overshoot is there
    y = rotate(x, 30, mode="bicubic")
    assert y.dtype == torch.uint8
    assert torch.equal(y, ref.round().clamp(0, 255).to(torch.uint8))
    s8 = (x.to(torch.int16) - 128).to(torch.int8)  # signed: -128 | 127 edges saturate at -128 / 127
    ref8 = rotate(s8.float(), 30, mode="bicubic")
    assert ref8.min() < -130 and ref8.max() > 130
    assert torch.equal(rotate(s8, 30, mode="bicubic"), ref8.round().clamp(-128, 127).to(torch.int8))


def test_2d_axes_accept_negative_indices_like_3d_and_rot90():
    """``axes=(-1, -2)`` (the reversed plane, as torch.rot90 takes it) was refused in 2D while (1, 0) and (-2, -1)
    were accepted, and 3D normalises negative indices."""
    x = torch.randn(1, 2, 6, 7)
    for axes, ref in (((-1, -2), (1, 0)), ((0, -1), (0, 1)), ((-2, 1), (0, 1)), ((1, -2), (1, 0))):
        assert torch.equal(rotate(x, 90, axes=axes), rotate(x, 90, axes=ref)), axes
        assert torch.equal(rotate(x, 30, axes=axes), rotate(x, 30, axes=ref)), axes
    assert torch.equal(rotate(x, 90, axes=(-1, -2)), torch.rot90(x, 1, dims=(-1, -2)))
    for bad in ((0, 0), (-1, 1), (0, 2), (0, 1, 2)):
        with pytest.raises(ValueError, match="axes"):
            rotate(x, 30, axes=bad)
    v = torch.randn(1, 4, 5, 6)
    assert torch.equal(rotate(v, 90, 3, axes=(-1, -3)), torch.rot90(v, 1, dims=(-1, -3)))
    for bad in ((3, 1), (0, 5), (-4, 1)):  # out of range: (3, 1) was taken for (0, 1)
        with pytest.raises(ValueError, match="axes"):
            rotate(v, 30, 3, axes=bad)


def test_axes_must_be_a_plane_of_int_axes_named_in_the_error():
    """``axes`` is a plane: a single int (a 3D user's "rotate about the slice axis", ``axes=2`` for MONAI's
    ``(H, W, D)``) stopped in "'int' object is not iterable" naming nothing; floats and bools were truncated
    silently (``(0.5, 1)`` rotated in ``(0, 1)``, ``(True, 2)`` in ``(1, 2)``) and text was read digit by digit
    (``"01"``). Every entry point (rotate, Geometry, make_geometries / the TTA inferer, central_disk_mask) names
    ``axes``; a single 3D axis gets the plane that rotates about it."""
    v = torch.randn(1, 4, 5, 6)
    entry_points = (
        lambda ax: rotate(v, 30, 3, axes=ax),
        lambda ax: Geometry(30.0, None, 3, ax),
        lambda ax: make_geometries((0, 90), (), 3, ax),  # RotationTTAInferer and rotation_robustness build these
        lambda ax: central_disk_mask((4, 5, 6), axes=ax),
    )
    for f in entry_points:
        with pytest.raises(ValueError, match=r"single axis axes=2; to rotate about spatial axis 2 pass axes=\(0, 1\)"):
            f(2)
        for bad in ((0.5, 1), (True, 2), "01", (1.0, 2.0)):
            with pytest.raises(ValueError, match="axes"):
                f(bad)
    # integer sequences of any kind still work
    for ok in ([0, 1], np.array([0, 1]), torch.tensor([0, 1]), (np.int64(0), 1)):
        assert torch.equal(rotate(v, 30, 3, axes=ok), rotate(v, 30, 3, axes=(0, 1)))
        assert Geometry(30.0, None, 3, ok).axes == (0, 1)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_roundtrip_mask_is_tight(mode):
    """The round-trip mask keeps (nearly) every pixel whose round trip reads no padding, not just a safe subset: a
    13x21 image at 30 degrees keeps ~28 % (bicubic: forward and back stencils each reach a pixel further) / ~66 %
    (bilinear), and that is what the padding actually leaves (test_roundtrip_mask_reads_no_padding only checks the
    other direction, which an almost empty mask would pass)."""
    torch.manual_seed(0)
    shape = (13, 21)
    for angle in (10.0, 30.0, 45.0, 100.0):
        x = torch.rand(3, *shape, dtype=torch.float64)
        # a pixel that reads padding changes with the padding mode
        zs = [rotate_inverse(rotate(x, angle, mode=mode, padding_mode=p), angle, mode=mode, padding_mode=p) for p in ("zeros", "border", "reflection")]
        clean = ((zs[1] - zs[0]).abs().amax(0) < 1e-12) & ((zs[2] - zs[0]).abs().amax(0) < 1e-12)
        rm = roundtrip_mask(shape, angle, mode=mode)
        assert not (rm & ~clean).any(), angle
        assert int((clean & ~rm).sum()) <= 2, (angle, int(clean.sum()), int(rm.sum()))


def test_depth_flip_without_spatial_dims_3_says_to_pass_it():
    """``spatial_dims`` defaults to 2 in the TTA inferer and the robustness evaluation: ``flips=("d",)`` for a volume
    without ``spatial_dims=3`` stopped with "flip axis must be one of ['h', 'v'] or an int, got axis='d'"."""
    from monai_gmr.functional.rotation import flip_axis
    from monai_gmr.inferers import RotationTTAInferer

    with pytest.raises(ValueError, match="'d' mirrors the depth axis of a volume: pass spatial_dims=3"):
        flip_axis("d")
    with pytest.raises(ValueError, match="pass spatial_dims=3"):
        RotationTTAInferer(angles=(0,), flips=("d",))
    with pytest.raises(ValueError, match=r"got axis='x'\.$"):
        flip_axis("x", 3)
    assert flip_axis("d", 3) == 0
    assert RotationTTAInferer(angles=(0,), flips=("d",), spatial_dims=3).view_names == ["rot0", "flip_d"]


def test_central_disk_is_centred_with_radius_from_the_shorter_side():
    """Brute force on a non-square grid: centre ``(s - 1) / 2`` per axis and radius ``radius_frac * min(shape)``; the
    disk of an even-sized grid is symmetric under both flips (an off-by-half centre is not), and it stays inside the
    image along the short side."""
    shape, frac = (10, 16), 0.4
    d = central_disk_mask(shape, frac)
    r2 = (frac * 10) ** 2
    ref = torch.tensor([[(i - 4.5) ** 2 + (j - 7.5) ** 2 <= r2 + 1e-9 for j in range(16)] for i in range(10)])
    assert torch.equal(d, ref)
    assert torch.equal(d, d.flip(0)) and torch.equal(d, d.flip(1))
    assert not d[0].any() and not d[-1].any()  # r = 4 < 4.5: the top and bottom rows are outside
    b = central_disk_mask((6, 8, 12), 0.5)
    assert torch.equal(b, b.flip(0)) and torch.equal(b, b.flip(1)) and torch.equal(b, b.flip(2))
    assert int(b.sum()) == sum(
        (i - 2.5) ** 2 + (j - 3.5) ** 2 + (k - 5.5) ** 2 <= 9 + 1e-9 for i in range(6) for j in range(8) for k in range(12)
    )


def test_central_disk_is_closed_pixels_on_the_radius_are_inside():
    """A pixel at distance exactly ``r`` from the centre is inside (a closed disk / ball, as the 1e-9 margin for the
    rounding of ``r * r`` intends): 25 x 25 at ``radius_frac=0.2`` (r = 5) holds the 81 lattice points with
    ``|p| <= 5``, among them (5, 0) and (3, 4); likewise the 15^3 ball of r = 3. (The other disk tests use even sizes
    or radii that no pixel lies on, where ``<`` and ``<=`` agree.)"""
    d = central_disk_mask((25, 25), 0.2)
    assert int(d.sum()) == sum(i * i + j * j <= 25 for i in range(-12, 13) for j in range(-12, 13)) == 81
    assert d[12 + 5, 12] and d[12 + 3, 12 + 4] and not d[12 + 5, 12 + 1]
    b = central_disk_mask((15, 15, 15), 0.2)  # r = 3: (3, 0, 0) and (2, 2, 1) lie on the sphere
    assert int(b.sum()) == sum(
        i * i + j * j + k * k <= 9 for i in range(-7, 8) for j in range(-7, 8) for k in range(-7, 8)
    )
    assert b[7 + 3, 7, 7] and b[7 + 2, 7 + 2, 7 + 1]


def test_near_right_angles_are_resampled_not_rot90():
    """Only true multiples of 90 degrees take the exact rot90 path: 90.2 degrees is resampled (and differs from rot90
    on a random image)."""
    from monai_gmr.functional.rotation import is_right_angle

    assert is_right_angle(90.0) and is_right_angle(-270.0) and is_right_angle((0.0, 180.0, 90.0))
    assert not is_right_angle(90.2) and not is_right_angle(0.5) and not is_right_angle((0.0, 90.0, 90.05))
    torch.manual_seed(0)
    x = torch.rand(1, 1, 31, 31, dtype=torch.float64)
    assert not torch.allclose(rotate(x, 90.2), torch.rot90(x, 1, (-2, -1)))
    assert torch.equal(rotate(x, 90.0), torch.rot90(x, 1, (-2, -1)))


@pytest.mark.parametrize("fl", ["h", "v"])
def test_flipped_geometry_roundtrip_mask_is_in_the_input_frame(fl):
    """``Geometry.roundtrip_mask`` of a flipped view is the rotation's round-trip mask mirrored into the input frame:
    exactly the pixels whose ``invert(apply(x))`` reads no padding (checked against the padding modes, as in
    test_roundtrip_mask_is_tight), on a non-square image where the unmirrored mask differs."""
    torch.manual_seed(0)
    shape, angle = (13, 21), 30.0
    x = torch.rand(3, *shape, dtype=torch.float64)
    zs = []
    for p in ("zeros", "border", "reflection"):
        g = Geometry(angle, fl, padding_mode=p)
        zs.append(g.invert(g.apply(x)))
    clean = ((zs[1] - zs[0]).abs().amax(0) < 1e-12) & ((zs[2] - zs[0]).abs().amax(0) < 1e-12)
    rm = Geometry(angle, fl).roundtrip_mask(shape)
    assert not torch.equal(rm, roundtrip_mask(shape, angle))  # the mirror matters here
    assert not (rm & ~clean).any()
    assert int((clean & ~rm).sum()) <= 2


def test_interpolated_bool_masks_are_thresholded_at_one_half():
    """A bool tensor resampled with an interpolating mode is the float resampling thresholded at 0.5 (not any
    non-zero weight, which would grow the mask by a pixel at every edge)."""
    m = torch.zeros(1, 1, 24, 24, dtype=torch.bool)
    m[..., 6:18, 8:14] = True
    for mode in ("bilinear", "bicubic"):
        r = rotate(m, 30.0, mode=mode)
        assert r.dtype == torch.bool and torch.equal(r, rotate(m.float(), 30.0, mode=mode) > 0.5), mode
        assert abs(int(r.sum()) - int(m.sum())) <= 8, mode


@pytest.mark.parametrize("axes, along", [((1, 2), 0), ((2, 1), 0), ((0, 2), 1), ((-3, -1), 1), ((0, 1), 2)])
def test_central_disk_mask_of_a_3d_plane_is_a_cylinder(axes, along):
    """``axes`` (a 3D rotation plane): the disk of radius ``radius_frac * min(the plane's two sizes)`` in that plane,
    about the centre ``(s - 1) / 2``, times the whole extent of the rotation axis ``along``; checked voxel by voxel
    against a brute-force construction, on a shape whose three sizes differ (the ball took its radius from the
    smallest size, 5, and left the ends of the long axis out)."""
    shape, frac = (5, 8, 12), 0.4
    a, b = sorted(int(v) % 3 for v in axes)
    r = frac * min(shape[a], shape[b])
    ref = torch.zeros(shape, dtype=torch.bool)
    for idx in [(i, j, k) for i in range(5) for j in range(8) for k in range(12)]:
        ref[idx] = (idx[a] - (shape[a] - 1) / 2) ** 2 + (idx[b] - (shape[b] - 1) / 2) ** 2 <= r * r + 1e-9
    m = central_disk_mask(shape, frac, axes=axes)
    assert m.dtype == torch.bool and m.shape == shape and torch.equal(m, ref)
    # every slice across the rotation axis is the same 2D disk, the whole axis long (both end slices included)
    disk = central_disk_mask([shape[a], shape[b]], frac)
    for s in range(shape[along]):
        assert torch.equal(m.select(along, s), disk)
    assert m.sum() == disk.sum() * shape[along]


@pytest.mark.parametrize("shape, axes", [((7, 10, 10), (1, 2)), ((10, 3, 10), (0, 2)), ((9, 9, 4), (-3, -2))])
def test_cylinder_is_invariant_under_its_plane_rotations(shape, axes):
    """A square rotation plane: the cylinder maps onto itself under rot90 in that plane (exact), and it lies inside the
    validity mask of every angle in that plane (the same voxels at every angle)."""
    m = central_disk_mask(shape, 0.35, axes=axes)
    assert m.any() and not m.all()
    for k in (1, 2, 3):
        assert torch.equal(torch.rot90(m, k, dims=axes), m)
    for angle in (15.0, 30.0, 45.0, 137.0):
        assert (m <= validity_mask(shape, angle, 3, "bilinear", axes=axes)).all()


def test_central_disk_mask_axes_in_2d_and_the_ball_without_axes():
    """2D: the plane is the whole image, ``axes`` changes nothing; 3D without ``axes``: the ball (Euler angles);
    bad ``axes`` are refused by name as in rotate()."""
    assert torch.equal(central_disk_mask((10, 16), 0.4, axes=(0, 1)), central_disk_mask((10, 16), 0.4))
    assert torch.equal(central_disk_mask((10, 16), 0.4, axes=(-1, -2)), central_disk_mask((10, 16), 0.4))
    ball, cyl = central_disk_mask((9, 9, 9), 0.3), central_disk_mask((9, 9, 9), 0.3, axes=(1, 2))
    assert (ball <= cyl).all() and not ball[0].any() and torch.equal(cyl[0], cyl[4])
    for bad in ((1, 1), (0, 3), (0, 1, 2)):
        with pytest.raises(ValueError, match="axes"):
            central_disk_mask((9, 9, 9), 0.3, axes=bad)


def test_mask_shapes_must_be_ints_and_a_tensor_is_named():
    """``spatial_shape`` of the mask functions: a float size was truncated silently (``validity_mask((7.5, 7), 30)``
    gave a 7x7 mask) and the image itself (``roundtrip_mask(x, 30)`` instead of ``x.shape[-2:]``) raised "only one
    element tensors can be converted to Python scalars"; both now name ``spatial_shape``. Integers of every kind
    (NumPy, torch.Size, 0-dim integer tensors) still work."""
    x = torch.zeros(1, 1, 9, 9)
    with pytest.raises(ValueError, match=r"spatial_shape.*x\.shape"):
        roundtrip_mask(x, 30.0)
    for bad in ((7.5, 7), (True, 7)):
        with pytest.raises(ValueError, match="spatial_shape"):
            validity_mask(bad, 30.0)
        with pytest.raises(ValueError, match="spatial_shape"):
            central_disk_mask(bad)
    ref = validity_mask((9, 8), 30.0)
    for ok in (x.shape[-2:][:1] + (8,), (np.int64(9), 8), (torch.tensor(9), torch.tensor(8)), torch.tensor([9, 8])):
        assert torch.equal(validity_mask(ok, 30.0), ref)
    assert central_disk_mask(torch.Size([9, 8])).shape == (9, 8)


def test_is_right_angle_of_a_non_finite_angle_is_false():
    """is_right_angle(nan) raised "cannot convert float NaN to integer" (inf: OverflowError) from round(); a
    non-finite angle is no right angle (rotate() itself refuses it by name)."""
    from monai_gmr.functional.rotation import is_right_angle

    assert not is_right_angle(float("nan")) and not is_right_angle(float("inf"))
    assert not is_right_angle((0, 90, -float("inf")))
    assert is_right_angle(-270.0) and is_right_angle((0, 90, 180))
    with pytest.raises(ValueError, match="angle"):
        rotate(torch.zeros(3, 3), float("nan"))


def test_flip_axis_must_be_a_name_or_an_int():
    """flip_axis(1.5) was truncated to axis 1 and flip_axis(True) read as axis 1 (also through Geometry(flip=...));
    both are refused by name. NumPy integers and negative indices still work."""
    from monai_gmr.functional.rotation import flip_axis

    for bad in (1.5, True, None):
        with pytest.raises(ValueError, match="flip axis"):
            flip_axis(bad)
    with pytest.raises(ValueError, match="flip axis"):
        Geometry(0.0, 1.0)
    assert flip_axis(np.int64(-1)) == 1 and flip_axis("v") == 0 and flip_axis(-3, 3) == 0


@pytest.mark.parametrize("angles", ["90", [0, "90"], [0, None], [True], [float("nan")], [(0, 0, float("inf"))], None])
def test_as_angle_list_refuses_text_and_non_degrees_for_every_caller(angles):
    """The one check of angle lists (make_geometries, rotation_robustness, RotationTTAInferer, equivariance_error
    each had a copy): text, non-numbers, bools and non-finite entries are refused naming ``angles``."""
    from monai_gmr.functional.rotation import as_angle_list

    with pytest.raises(ValueError, match="^angles must be"):
        as_angle_list(angles)
    with pytest.raises(ValueError, match="^angles must be"):
        make_geometries(angles)
    assert as_angle_list(90) == [90.0] and as_angle_list(torch.tensor(45.0)) == [45.0]
    assert as_angle_list(range(0, 180, 90)) == [0, 90] and as_angle_list([(0, 90, 0)]) == [(0, 90, 0)]


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_a_first_rotation_under_inference_mode_does_not_break_later_training(mode):
    """The grid / gather index built by a first call under ``torch.inference_mode()`` (an evaluation) was an inference
    tensor in the cache: every later rotation of a tensor that needs gradients failed in backward ("Inference tensors
    cannot be saved for backward")."""
    from monai_gmr.functional.rotation import clear_rotation_cache

    clear_rotation_cache()
    torch.manual_seed(0)
    x = torch.randn(1, 2, 11, 13)
    with torch.inference_mode():
        ref = rotate(x, 33.0, mode=mode)
    xg = x.clone().requires_grad_(True)
    y = rotate(xg, 33.0, mode=mode)
    y.square().sum().backward()
    assert torch.equal(y.detach(), ref) and xg.grad is not None and xg.grad.abs().sum() > 0


# --- chunked resampling of large inputs (bounded memory) -----------------------------------------------------------


def _force_chunks(monkeypatch, cache: bool) -> None:
    """Make every input "large": a 1-byte chunk budget (chunks of 128-256 voxels), and with ``cache=False`` a zero
    cache budget, so that nothing is cached and the per-chunk loop runs."""
    from monai_gmr.functional import rotation as rot

    rot.clear_rotation_cache()
    monkeypatch.setattr(rot, "_CHUNK_BUDGET_BYTES", 1, raising=False)
    monkeypatch.setattr(rot, "_CHUNK_MIN_VOXELS", 256, raising=False)
    if not cache:
        monkeypatch.setattr(rot, "_CACHE_BUDGET_BYTES", 0)


_CHUNK_CASES = [
    (2, (37, 43), 30.0, "bilinear"),
    (2, (37, 43), -71.3, "bicubic"),
    (2, (43, 37), 30.0, "nearest"),
    (3, (12, 10, 9), 30.0, "bilinear"),
    (3, (11, 7, 13), (10.0, 25.0, 40.0), "bilinear"),
    (3, (12, 10, 9), 30.0, "nearest"),
    (3, (11, 7, 13), (10.0, 25.0, 40.0), "nearest"),
]


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("spatial_dims,shape,angle,mode", _CHUNK_CASES)
def test_chunked_resampling_is_identical_to_the_single_shot_path(monkeypatch, spatial_dims, shape, angle, mode, cache):
    """Large inputs are resampled in chunks of output voxels (a grid too large to cache is never built whole):
    torch.equal to the single-shot path for every padding mode and dtype (images, integer and bool labels), forward and
    inverse, with the grid / gather index cached (built chunk by chunk) or not cached (per-chunk loop)."""
    from monai_gmr.functional import rotation as rot

    torch.manual_seed(0)
    dtypes = [torch.float32, torch.float64, torch.float16, torch.uint8, torch.int64, torch.bool]
    xs = [(torch.rand(2, 3, *shape) * 200).to(dt) if dt != torch.bool else torch.rand(2, 3, *shape) > 0.5
          for dt in dtypes]  # fmt: skip
    calls = []
    for pad in rot.PADDING_MODES_ROT:
        for x in xs:
            for fn in (rotate, rotate_inverse):
                rot.clear_rotation_cache()
                ref = fn(x, angle, spatial_dims, mode, padding_mode=pad)
                with monkeypatch.context() as mp:
                    _force_chunks(mp, cache)
                    n_before = rot._chunk_ranges(x[0, 0].numel(), rot._grid_bytes_per_voxel(spatial_dims, 6))
                    out = fn(x, angle, spatial_dims, mode, padding_mode=pad)
                    again = fn(x, angle, spatial_dims, mode, padding_mode=pad)  # from the cache when cache=True
                    calls.append(len(n_before))
                assert out.dtype == x.dtype and torch.equal(out, ref), (pad, x.dtype, fn.__name__)
                assert torch.equal(again, ref)
    assert min(calls) >= 4  # the chunked path ran (several chunks)


@pytest.mark.parametrize("spatial_dims,shape,angle,mode", _CHUNK_CASES)
def test_chunked_masks_are_identical(monkeypatch, spatial_dims, shape, angle, mode):
    if isinstance(angle, tuple) and mode == "bicubic":
        pytest.skip("bicubic is 2D")
    ref_v = validity_mask(shape, angle, spatial_dims, mode)
    ref_r = roundtrip_mask(shape, angle, spatial_dims, mode)
    for cache in (True, False):
        with monkeypatch.context() as mp:
            _force_chunks(mp, cache)
            assert torch.equal(validity_mask(shape, angle, spatial_dims, mode), ref_v)
            assert torch.equal(roundtrip_mask(shape, angle, spatial_dims, mode), ref_r)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "mask"])
def test_large_volume_never_builds_the_whole_grid(monkeypatch, mode):
    """Regression: a non-right-angle rotation of a volume built float64 coordinates / the affine_grid of the whole
    volume at once (~50-94 bytes per voxel: 7 GB for a 512x512x300 CT at 30 degrees). Now no build step covers more
    than one chunk of output voxels (``_CHUNK_BUDGET_BYTES`` / bytes per voxel) when the grid is too large to cache."""
    from monai_gmr.functional import rotation as rot

    shape = (20, 24, 22)
    n = 20 * 24 * 22  # 10560 voxels, over 200 bytes of temporaries each: 3 chunks of a 1 MiB budget
    _force_chunks(monkeypatch, cache=False)
    monkeypatch.setattr(rot, "_CHUNK_BUDGET_BYTES", 2**20, raising=False)
    built = []

    def spy(real):
        def wrapper(*args, **kwargs):
            out = real(*args, **kwargs)
            built.append(out.numel() // 3)  # (..., 3): voxels covered by this build
            return out

        return wrapper

    monkeypatch.setattr(rot.F, "affine_grid", spy(torch.nn.functional.affine_grid))
    monkeypatch.setattr(rot, "_source_coords", spy(rot._source_coords))
    if hasattr(rot, "_source_grid_chunk"):
        monkeypatch.setattr(rot, "_source_grid_chunk", spy(rot._source_grid_chunk))
    x = torch.rand(1, 1, *shape)
    if mode == "mask":
        roundtrip_mask(shape, 30.0, 3, "bilinear")
    else:
        rotate(x, 30.0, 3, mode)
    assert built and max(built) < n / 2, built


@pytest.mark.parametrize("spatial_dims,mode", [(2, "bilinear"), (2, "bicubic"), (2, "nearest"), (3, "bilinear")])
def test_chunked_path_gradcheck(monkeypatch, spatial_dims, mode):
    """Autograd through the per-chunk loop (outputs written into slices of one output tensor)."""
    from monai_gmr.functional import rotation as rot

    _force_chunks(monkeypatch, cache=False)
    monkeypatch.setattr(rot, "_CHUNK_MIN_VOXELS", 8)
    shape = (7, 9) if spatial_dims == 2 else (4, 5, 6)
    assert len(rot._chunk_ranges(math.prod(shape), rot._grid_bytes_per_voxel(spatial_dims, 2))) >= 3
    torch.manual_seed(0)
    x = torch.randn(1, 2, *shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rotate(t, 30.0, spatial_dims, mode, padding_mode="border"), (x,))


def test_chunk_ranges_cover_the_output_in_bounded_near_equal_chunks(monkeypatch):
    from monai_gmr.functional import rotation as rot

    assert rot._chunk_ranges(1000, 100) is None  # fits the budget: single shot
    monkeypatch.setattr(rot, "_CHUNK_BUDGET_BYTES", 100 * 5000)
    monkeypatch.setattr(rot, "_CHUNK_MIN_VOXELS", 16)
    r = rot._chunk_ranges(12_345, 100)
    assert r[0][0] == 0 and r[-1][1] == 12_345 and all(a[1] == b[0] for a, b in zip(r, r[1:]))
    sizes = [b - a for a, b in r]
    assert len(r) == 3 and max(sizes) <= 5000 and max(sizes) - min(sizes) <= 1
    monkeypatch.setattr(rot, "_CHUNK_BUDGET_BYTES", 1)
    assert all(b - a >= 8 for a, b in rot._chunk_ranges(100, 100))  # never below _CHUNK_MIN_VOXELS / 2


def test_half_turns_of_an_anisotropic_plane_do_not_warn(monkeypatch, caplog):
    """A 180-degree turn maps voxel offset (i, j) to (-i, -j): a physical rotation whatever the two spacings, like a
    flip. The anisotropic-plane warning fired for it (TTA ``angles=(0, 180)`` of a 0.8 x 0.8 x 3 mm MR volume in its
    W-D plane told the user the views were distorted anatomy); it still fires for 90 and 30 degrees there."""
    from monai.data import MetaTensor

    import monai_gmr.functional.rotation as rot

    monkeypatch.setattr(rot, "_WARNED_ANISOTROPIC", set())
    affine = torch.diag(torch.tensor([0.8, 0.8, 3.0, 1.0], dtype=torch.float64))
    x = MetaTensor(torch.randn(1, 1, 6, 6, 4), affine=affine)
    name = "monai_gmr.functional.rotation"
    with caplog.at_level("WARNING", logger=name):
        rot.warn_if_anisotropic(x, [rot.Geometry(a, f, 3, (1, 2)) for a in (0, 180, -180, 540) for f in (None, "h")])
        assert not [r for r in caplog.records if r.name == name]
        rot.warn_if_anisotropic(x, [rot.Geometry(90, None, 3, (1, 2))])
        rot.warn_if_anisotropic(x, [rot.Geometry(30, None, 3, (0, 2))])
    msgs = [r.getMessage() for r in caplog.records if r.name == name]
    assert len(msgs) == 2 and "(1, 2)" in msgs[0] and "(0, 2)" in msgs[1], msgs
