"""Ring basis geometry: centres, widths, support, hard assignment."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from monai_gmr.functional import (
    AREA_SUBSAMPLES,
    check_kernel_size,
    default_num_rings,
    initial_sigma,
    log_sigma_bounds,
    offset_distances,
    ring_basis,
    ring_centers,
    ring_extent,
    support_mask,
)


def test_ring_centres_follow_paper_spacing():
    mu = ring_centers(9, 5)
    assert torch.allclose(mu, torch.tensor([0.0, 1.125, 2.25, 3.375, 4.5], dtype=torch.float64))
    assert default_num_rings(9) == 5 and default_num_rings(3) == 2 and default_num_rings(1) == 1


def test_initial_sigma_has_fwhm_equal_to_spacing():
    k, n = 7, 4
    spacing = k / (2 * (n - 1))
    sigma = initial_sigma(k, n)
    fwhm = 2 * math.sqrt(2 * math.log(2)) * sigma
    assert fwhm == pytest.approx(spacing)
    lo, hi = log_sigma_bounds(n)
    assert math.exp(lo) == pytest.approx(1e-2) and math.exp(hi) == pytest.approx(2 * n)


def test_true_distance_and_circular_support():
    d = offset_distances(9, 2)
    assert d[4, 4] == 0 and d[4, 8] == 4 and d[0, 0] == pytest.approx(math.sqrt(32))
    m = support_mask(9, 2)
    # |p| <= 4.5 kept: (4, 2) has |p| = 4.47, (4, 3) has 5.0 and the corner 5.66
    assert m[4 + 4, 4 + 2] == 1 and m[4 + 4, 4 + 3] == 0 and m[0, 0] == 0
    assert support_mask(9, 2, circular=False).all()
    m3 = support_mask(5, 3)
    assert m3.shape == (5, 5, 5) and m3[0, 0, 0] == 0 and m3[2, 2, 0] == 1


def test_gaussian_basis_values():
    k, n = 5, 3
    d = offset_distances(k, 2)
    mu = ring_centers(k, n)
    ls = torch.full((n,), math.log(0.7), dtype=torch.float64)
    g = ring_basis(d, mu, ls, support_mask(k, 2), "gaussian")
    assert g.shape == (3, 5, 5)
    expected = math.exp(-((math.sqrt(2) - 1.25) ** 2) / (2 * 0.49))
    assert g[1, 1, 1].item() == pytest.approx(expected)
    assert g[:, 0, 0].abs().sum() == 0  # outside the inscribed circle


def test_sigma_is_clipped():
    d = offset_distances(5, 2)
    mu = ring_centers(5, 3)
    big = ring_basis(d, mu, torch.full((3,), 50.0, dtype=torch.float64), support_mask(5, 2), log_sigma_range=(-4.6, math.log(6)))
    ref = ring_basis(d, mu, torch.full((3,), math.log(6), dtype=torch.float64), support_mask(5, 2))
    assert torch.equal(big, ref)


def test_hard_assignment_is_one_hot_nearest_ring():
    k, n = 9, 5
    d = offset_distances(k, 2)
    g = ring_basis(d, ring_centers(k, n), None, support_mask(k, 2), "none")
    inside = support_mask(k, 2).bool()
    assert torch.equal(g.sum(0)[inside], torch.ones(int(inside.sum()), dtype=g.dtype))
    # offset (0, 3): |p| = 3, nearest centre 3.375 (ring 3)
    assert g[3, 4, 7] == 1


@pytest.mark.parametrize("bad", [0, -3, 4, (3, 5), (3, 3, 3), 2.0, True])
def test_check_kernel_size_rejects(bad):
    with pytest.raises(ValueError, match="kernel_size"):
        check_kernel_size(bad, 2)


def test_unknown_smoothing():
    with pytest.raises(ValueError, match="smoothing"):
        ring_basis(offset_distances(3, 2), ring_centers(3, 2), None, support_mask(3, 2), "bilateral")


def test_sigma_is_clipped_from_below_too():
    from monai_gmr.functional import offset_distances, ring_basis, ring_centers, support_mask
    d, mu, m = offset_distances(5, 2), ring_centers(5, 3), support_mask(5, 2)
    rng = (-4.6, math.log(6))
    small = ring_basis(d, mu, torch.full((3,), -50.0, dtype=torch.float64), m, log_sigma_range=rng)
    assert torch.equal(small, ring_basis(d, mu, torch.full((3,), -4.6, dtype=torch.float64), m))


# ----------------------------------------------------------------------------------------- sampling="area"
def test_area_sampling_ring_centres_and_sigma():
    assert torch.equal(ring_centers(9, 5, sampling="area"), torch.arange(5, dtype=torch.float64))
    assert torch.allclose(ring_centers(7, 3, sampling="area"), torch.tensor([0.0, 1.5, 3.0], dtype=torch.float64))
    assert ring_extent(9, "center") == 4.5 and ring_extent(9, "area") == 4.0
    assert initial_sigma(9, 5, sampling="area") == pytest.approx(1.0 / (2 * math.sqrt(2 * math.log(2))))
    with pytest.raises(ValueError, match="sampling"):
        ring_centers(9, 5, sampling="pixel")
    with pytest.raises(ValueError, match="subsamples"):
        offset_distances(5, 2, subsamples=0)


@pytest.mark.parametrize("d", [2, 3])
def test_subsample_distances_are_the_midpoint_grid_of_each_pixel(d):
    k, s = 5, 4
    dist = offset_distances(k, d, subsamples=s)
    assert dist.shape == (k,) * d + (s**d,)
    sub = [(j + 0.5) / s - 0.5 for j in range(s)]
    # pixel at offset (1, -2[, 2]) computed by hand
    offset = (1, -2, 2)[:d]
    expected = sorted(
        math.sqrt(sum((o + u) ** 2 for o, u in zip(offset, us))) for us in itertools.product(sub, repeat=d)
    )
    idx = tuple(o + k // 2 for o in offset)
    assert torch.allclose(dist[idx], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.allclose(dist.mean(-1).min(), dist.mean(-1)[(k // 2,) * d])  # the centre pixel is the closest


def test_area_basis_is_the_pixel_average_of_the_masked_rings():
    k, n = 9, 5
    mu = ring_centers(k, n, sampling="area")
    ls = torch.full((n,), math.log(0.6), dtype=torch.float64)
    g = ring_basis(offset_distances(k, 2, subsamples=4), mu, ls, support_mask(k, 2, subsamples=4), area=True)
    assert g.shape == (n, k, k)
    # pixel (4, 3) (offset from the centre): centre at |p| = 5 > 4.5 (outside the point-sampled support), but its
    # corner nearest the centre lies inside the circle: a fraction of it counts
    sub = [(j + 0.5) / 4 - 0.5 for j in range(4)]
    vals = []
    for uy in sub:
        for ux in sub:
            r = math.hypot(4 + uy, 3 + ux)
            vals.append(math.exp(-((r - 4.0) ** 2) / (2 * 0.36)) if r <= 4.5 else 0.0)
    assert g[4, 4 + 4, 4 + 3].item() == pytest.approx(sum(vals) / 16, rel=1e-12)
    assert 0 < g[4, 8, 7] and support_mask(k, 2)[8, 7] == 0
    assert g[:, 0, 0].abs().sum() == 0  # the corner pixel lies wholly outside: zero
    with pytest.raises(ValueError, match="area=True needs per-sub-sample distances"):  # a point grid averaged its last axis
        ring_basis(offset_distances(k, 2), mu, ls, support_mask(k, 2), area=True)
    with pytest.raises(ValueError, match="mask shape"):
        ring_basis(offset_distances(k, 2, subsamples=4), mu, ls, support_mask(k, 2), area=True)


@pytest.mark.parametrize("d,k", [(2, 11), (2, 15), (3, 7)])
def test_area_basis_is_bitwise_symmetric_under_the_grid_symmetries(d, k):
    """Sorted sub-sample distances make pixels related by a symmetry sum the same values in the same order."""
    n = default_num_rings(k)
    ls = torch.linspace(-1.0, 0.3, n, dtype=torch.float64)
    s = 4
    g = ring_basis(offset_distances(k, d, subsamples=s), ring_centers(k, n, sampling="area"), ls,
                   support_mask(k, d, subsamples=s), area=True)  # fmt: skip
    sp = tuple(range(1, d + 1))
    for perm in itertools.permutations(sp):
        for flips in range(2**d):
            axes = [a for i, a in enumerate(sp) if flips >> i & 1]
            h = g.permute(0, *perm)
            h = h.flip(axes) if axes else h
            assert torch.equal(h, g), (perm, axes)


@pytest.mark.parametrize(
    "d,k,radial_area",
    [(2, 5, True), (2, 9, True), (2, 11, False), (2, 13, False), (3, 5, True), (3, 7, False)],
)
def test_is_radial_basis_center_vs_area(d, k, radial_area):
    """Centre-sampled bases are constant on shells of equal |p|^2; area-sampled ones are once every shell is a
    single grid-symmetry orbit, and not from (5, 0) ~ (3, 4) (2D, k = 11) / (3, 0, 0) ~ (2, 2, 1) (3D, k = 7)."""
    from monai_gmr.functional import is_radial_basis

    for sampling, expected in (("center", True), ("area", radial_area)):
        s = AREA_SUBSAMPLES if sampling == "area" else 1
        n = (k + 1) // 2
        sigma = initial_sigma(k, n, sampling=sampling)
        basis = ring_basis(
            offset_distances(k, d, subsamples=s), ring_centers(k, n, sampling=sampling),
            torch.full((n,), math.log(sigma), dtype=torch.float64), support_mask(k, d, subsamples=s), area=s > 1,
        )  # fmt: skip
        assert is_radial_basis(basis) is expected, sampling
        assert is_radial_basis(basis.float()) is expected, sampling
    assert is_radial_basis(torch.ones(2, *(k,) * d))
    assert not is_radial_basis(torch.randn(2, *(k,) * d))
    with pytest.raises(ValueError, match="basis"):
        is_radial_basis(torch.ones(2, 4, 4))


@pytest.mark.parametrize("scale", [1e-7, 1e7])
def test_is_radial_basis_tolerance_is_relative_to_the_basis_magnitude(scale):
    """``rtol`` is relative to ``max |basis|`` (mutation audit: an absolute tolerance survived, as every tested basis
    peaks near 1): a non-radial area basis (2D, k = 11) stays non-radial when scaled down, a radial centre basis
    stays radial when scaled up."""
    from monai_gmr.functional import is_radial_basis

    k, d = 11, 2
    n = (k + 1) // 2
    for sampling, expected in (("center", True), ("area", False)):
        s = AREA_SUBSAMPLES if sampling == "area" else 1
        sigma = initial_sigma(k, n, sampling=sampling)
        basis = ring_basis(
            offset_distances(k, d, subsamples=s), ring_centers(k, n, sampling=sampling),
            torch.full((n,), math.log(sigma), dtype=torch.float64), support_mask(k, d, subsamples=s), area=s > 1,
        )  # fmt: skip
        assert is_radial_basis(basis * scale) is expected, sampling


def test_basis_helpers_refuse_even_kernel_sizes_and_no_rings():
    """offset_distances / support_mask of an even k returned a (k + 1)-wide grid (offsets -k/2..k/2) where the docs
    promise (k,) * d; ring_centers(k, 0) an empty tensor and initial_sigma(k, 0) a negative sigma. They now raise
    naming the argument, as GMRConv does."""
    for bad in (4, 0, -3, 3.0, True):
        with pytest.raises(ValueError, match="kernel_size"):
            offset_distances(bad, 2)
        with pytest.raises(ValueError, match="kernel_size"):
            support_mask(bad, 2)
        with pytest.raises(ValueError, match="kernel_size"):
            ring_centers(bad, 2)
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match="num_rings"):
            ring_centers(5, bad)
        with pytest.raises(ValueError, match="num_rings"):
            initial_sigma(5, bad)
    assert offset_distances(5, 3).shape == (5, 5, 5) and ring_centers(1, 1).shape == (1,) and initial_sigma(1, 1) == 1.0


def test_ring_basis_names_a_log_sigma_of_another_ring_count():
    """A log_sigma with another number of values than the ring centres failed inside a reshape ("shape '[3, 1, 1]'
    is invalid for input of size 2"); it is a ValueError naming log_sigma."""
    d, c, m = offset_distances(5, 2), ring_centers(5, 3), support_mask(5, 2)
    for bad in (torch.zeros(2), torch.zeros(1), torch.tensor(0.0)):
        with pytest.raises(ValueError, match="log_sigma must have one value per ring"):
            ring_basis(d, c, bad, m)
    assert ring_basis(d, c, torch.zeros(3), m).shape == (3, 5, 5)
    assert ring_basis(d, c, torch.zeros(2), m, "none").shape == (3, 5, 5)  # hard assignment ignores sigma
