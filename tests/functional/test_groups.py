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


def test_elements_are_validated_and_normalised():
    """D4Element(5) and D4Element(1) are one transform but compared unequal; a list perm made a CubeElement
    unhashable (TypeError in a set); a float k or a non-permutation perm failed only when applied, inside
    torch.rot90 / Tensor.permute. Elements are now stored normalised and checked at construction."""
    assert D4Element(5) == D4Element(1) and D4Element(-1, 1) == D4Element(3, True) and D4Element(-1).k == 3
    assert hash(D4Element(4)) == hash(D4Element(0)) and D4Element(-1, True).inverse() == D4Element(3, True)
    assert CubeElement([1, 0, 2], [1, 0, 0]) == CubeElement((1, 0, 2), (True, False, False))
    assert CubeElement([1, 0, 2]) in set(cube_elements()) and len(set(cube_elements())) == 48
    x = torch.arange(27.0).reshape(3, 3, 3)
    assert torch.equal(CubeElement([1, 0, 2])(x), x.transpose(0, 1))
    for bad in (1.0, 1.5, "1"):
        with pytest.raises(ValueError, match="k must be an int"):
            D4Element(bad)
    with pytest.raises(ValueError, match="flip"):
        D4Element(1, 2)
    for bad in ((0, 0, 1), (0, 1, 3), (0, 1), (0.0, 1, 2)):
        with pytest.raises(ValueError, match="perm"):
            CubeElement(bad)
    with pytest.raises(ValueError, match="flips"):
        CubeElement((0, 1, 2), (True, False))
