"""Tests of monai_gmr.functional.groups: D4 and the cube group are groups of exact index operations."""

from __future__ import annotations

import pytest
import torch

from monai_gmr.functional import CubeElement, D4Element, cube_elements, d4_elements, group_elements


@pytest.mark.parametrize("spatial_dims,order,shape", [(2, 8, (5, 5)), (3, 48, (3, 3, 3))])
def test_group_structure_closure_inverses_identity(spatial_dims, order, shape):
    """Every element is a distinct permutation of a generic probe, the set is closed under composition, the identity
    comes first and ``inverse()`` undoes every element from both sides, bit-exactly."""
    els = group_elements(spatial_dims)
    probe = torch.arange(float(torch.Size(shape).numel())).reshape(shape)
    images = {tuple(g(probe).flatten().tolist()): g for g in els}
    assert len(els) == order and len(images) == order and len({g.name for g in els}) == order
    assert torch.equal(els[0](probe), probe)
    for a in els:
        assert torch.equal(a.inverse()(a(probe)), probe) and torch.equal(a(a.inverse()(probe)), probe), a.name
        for b in els:
            assert tuple(a(b(probe)).flatten().tolist()) in images, (a.name, b.name)


def test_elements_act_on_trailing_dims_of_non_square_batches():
    torch.manual_seed(0)
    x2, x3 = torch.randn(2, 3, 4, 6), torch.randn(2, 1, 3, 4, 5)
    assert all(torch.equal(g.inverse()(g(x2)), x2) for g in d4_elements())
    assert all(torch.equal(g.inverse()(g(x3)), x3) for g in cube_elements())
    assert torch.equal(D4Element(1)(x2), torch.rot90(x2, 1, (-2, -1)))
    assert torch.equal(D4Element(0, True)(x2), torch.flip(x2, (-1,)))
    assert torch.equal(CubeElement((0, 2, 1))(x3), x3.transpose(-2, -1))
    with pytest.raises(ValueError, match="spatial_dims"):
        group_elements(4)
