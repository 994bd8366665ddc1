"""SymmetricSlidingWindowInferer: a mirror-symmetric window grid keeps an equivariant network exactly equivariant
on whole tiles of any size; MONAI's top-left-anchored grid does not."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from monai_gmr.functional import d4_elements
from monai_gmr.inferers import SymmetricSlidingWindowInferer, symmetric_window_grid
from monai_gmr.nets import GMRUNet
from tests.conftest import rel_err


@pytest.mark.parametrize("roi", [8, 16, 15])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_grid_is_symmetric_and_minimal(roi, overlap):
    for size in range(1, 70):
        t, interval = symmetric_window_grid(size, roi, overlap)
        assert t >= size and (t - size) % 2 == 0 and t >= roi and (t - roi) % interval == 0
        assert interval in (max(1, int(roi * (1 - overlap))), max(1, int(roi * (1 - overlap)) - 1))
        starts = set(range(0, t - roi + 1, interval))
        assert starts == {t - roi - s for s in starts}  # mirror-symmetric
        assert t < size + 2 * roi  # never more than a couple of extra windows


def test_grid_bad_arguments():
    with pytest.raises(ValueError, match="overlap"):
        symmetric_window_grid(10, 8, 1.0)
    with pytest.raises(ValueError, match="size"):
        symmetric_window_grid(0, 8, 0.25)
    with pytest.raises(ValueError, match="padding_mode"):
        SymmetricSlidingWindowInferer(16, padding_mode="circular")


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return GMRUNet(2, 3, 2, features=(4, 4, 8, 8), kernel_sizes=(5, 5, 3, 3)).eval()


@torch.no_grad()
@pytest.mark.parametrize("shape", [(37, 50), (40, 40), (16, 29)])
def test_exact_d4_equivariance_on_whole_tiles(shape):
    net = _net()
    x = torch.rand(1, 3, *shape)
    sym = SymmetricSlidingWindowInferer(16, sw_batch_size=4, overlap=0.25)
    y = sym(x, net)
    assert y.shape == (1, 2, *shape)
    for g in d4_elements():
        assert rel_err(sym(g(x), net), g(y)) < 1e-5, g


@torch.no_grad()
def test_monai_grid_is_not_equivariant_and_reflect_padding_works():
    net = _net()
    x = torch.rand(1, 3, 37, 50)
    plain = SlidingWindowInferer(16, sw_batch_size=4, overlap=0.25)
    flip = lambda t: torch.flip(t, (-1,))  # noqa: E731
    assert rel_err(plain(flip(x), net), flip(plain(x, net))) > 1e-3  # what the symmetric grid fixes
    sym = SymmetricSlidingWindowInferer(16, sw_batch_size=4, overlap=0.25, padding_mode="reflect")
    assert rel_err(sym(flip(x), net), flip(sym(x, net))) < 1e-5
    # one window covering the whole (divisible) tile: the same as running the network directly
    one = SymmetricSlidingWindowInferer(32, sw_batch_size=1, overlap=0.25)
    x32 = torch.rand(1, 3, 32, 32)
    assert rel_err(one(x32, net), net(x32)) < 1e-6
