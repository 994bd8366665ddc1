"""Padding of whole inputs (tiles smaller than a window, sizes rounded up to a multiple): the modes, and a reflection
that takes any pad width.

Hand-written because ``torch.nn.functional.pad(mode="reflect")`` refuses a pad of the input's size or more and MONAI's
``SpatialPad(mode="reflect")`` raises then too (its numpy fallback is taken for other errors only); ``numpy.pad``
would leave the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["PAD_MODES", "reflect_pad"]

#: ``F.pad`` modes of an input padded whole: ``GMRUNet(pad_to_multiple=True)``'s ``pad_mode`` and the symmetric
#: sliding window's ``padding_mode`` (tiles smaller than the window). Not the convolutions' ``padding_mode``
#: (:data:`monai_gmr.functional.PADDING_MODES`, with ``"zeros"`` and ``"circular"``).
PAD_MODES = ("constant", "reflect", "replicate")


def reflect_pad(x: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
    """Pad the trailing ``len(pads)`` dims of ``x`` by ``pads[i]`` on both sides of dim ``i`` by reflection (without
    repeating the edge), for any pad: ``numpy.pad(..., mode="reflect")`` per dim.

    The reflection is repeated, each time by at most ``size - 1`` of the size reached so far, which is what
    ``numpy.pad`` does; a dim of size 1 is repeated (``numpy.pad``'s rule for it). Equal pads on both sides commute
    with flips and 90° rotations of the padded dims.
    """
    for i, p in enumerate(pads):
        dim = x.ndim - len(pads) + i
        while p > 0:
            s = x.shape[dim]
            if s == 1:
                x = torch.cat([x] * (2 * p + 1), dim=dim)
                break
            step = min(p, s - 1)
            left = x.narrow(dim, 1, step).flip(dim)  # x[1 : step + 1] reversed: the edge pixel is not repeated
            right = x.narrow(dim, s - 1 - step, step).flip(dim)
            x = torch.cat([left, x, right], dim=dim)
            p -= step
    return x
