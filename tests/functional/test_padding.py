"""reflect_pad / reflect_pad_pairs: numpy.pad's reflection for any pad width (F.pad's where it works)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_gmr.functional.padding import reflect_pad, reflect_pad_pairs


@pytest.mark.parametrize("shape,pads", [((1, 1, 3, 20), [0, 3, 2, 5]), ((2, 1, 2, 5, 7), [3, 9, 0, 0, 4, 1]),
                                        ((1, 2, 1, 4), [0, 0, 7, 2]), ((1, 1, 6, 5), [4, 3, 5, 0])])  # fmt: skip
def test_reflect_pad_pairs_equals_numpy_for_unequal_pads(shape, pads):
    """Unequal ``(before, after)`` pads in F.pad's order (last dim first), wider than the size too (GMRUNet's
    pad_to_multiple of a thin volume: 3 slices padded by 2 and 3), and a size-1 dim; also scripted."""
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    n = len(pads) // 2
    widths = [(0, 0)] * (x.ndim - n) + [(pads[2 * j], pads[2 * j + 1]) for j in reversed(range(n))]
    want = np.pad(x.numpy(), widths, mode="reflect")
    assert np.array_equal(reflect_pad_pairs(x, pads).numpy(), want)
    assert np.array_equal(torch.jit.script(reflect_pad_pairs)(x, pads).numpy(), want)


def test_reflect_pad_pairs_is_f_pad_where_f_pad_works_and_keeps_gradients():
    x = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(1), requires_grad=True)
    pads = [3, 6, 0, 5]
    out = reflect_pad_pairs(x, pads)
    assert torch.equal(out, F.pad(x, pads, mode="reflect"))
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.equal(reflect_pad(x, (2, 3)), F.pad(x, [3, 3, 2, 2], mode="reflect"))
    assert reflect_pad_pairs(x, [0, 0, 0, 0]) is x
    with pytest.raises(ValueError, match="pads must be >= 0"):
        reflect_pad_pairs(x, [-1, 0])
