"""equivariance_error / group_equivariance_error on exactly equivariant, approximately equivariant and plain maps."""

from __future__ import annotations

import pytest
import torch

import monai_gmr
from monai_gmr.evaluation import equivariance_error, group_equivariance_error


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
    assert 0 <= e[20.0] < 0.1


def test_errors():
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="angles"):
        equivariance_error(lambda t: t, x, angles=())
    with pytest.raises(ValueError, match="spatial_dims"):
        equivariance_error(lambda t: t, x, spatial_dims=3)
    with pytest.raises(ValueError, match="spatial_dims"):
        group_equivariance_error(lambda t: t, x, spatial_dims=4)


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
