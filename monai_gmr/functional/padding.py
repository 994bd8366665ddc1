"""Padding of whole inputs (tiles smaller than a window, sizes rounded up to a multiple): the modes, and a reflection
that takes any pad width.

Hand-written because ``torch.nn.functional.pad(mode="reflect")`` refuses a pad of the input's size or more and MONAI's
``SpatialPad(mode="reflect")`` raises then too (its numpy fallback is taken for other errors only); ``numpy.pad``
would leave the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["PAD_MODES", "reflect_pad", "reflect_pad_pairs"]

#: ``F.pad`` modes of an input padded whole: ``GMRUNet(pad_to_multiple=True)``'s ``pad_mode`` and the symmetric
#: sliding window's ``padding_mode`` (tiles smaller than the window). Not the convolutions' ``padding_mode``
#: (:data:`monai_gmr.functional.PADDING_MODES`, with ``"zeros"`` and ``"circular"``).
PAD_MODES = ("constant", "reflect", "replicate")


def reflect_pad(x: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
    """Pad the trailing ``len(pads)`` dims of ``x`` by ``pads[i]`` on both sides of dim ``i`` by reflection (without
    repeating the edge), for any pad: ``numpy.pad(..., mode="reflect")`` per dim.

    The reflection is repeated, which is what ``numpy.pad`` does (the padded dim reads the input's mirror-periodic
    extension, period ``2 * (size - 1)``); a dim of size 1 is repeated (``numpy.pad``'s rule for it). Equal pads on
    both sides commute with flips and 90° rotations of the padded dims. See :func:`reflect_pad_pairs` for unequal
    pads.
    """
    return reflect_pad_pairs(x, [int(p) for p in reversed(list(pads)) for _ in range(2)])


def reflect_pad_pairs(x: torch.Tensor, pads: list[int]) -> torch.Tensor:
    """Reflection padding of ``x`` for any pad width, with the pads in ``torch.nn.functional.pad``'s order (last dim
    first, ``(before, after)`` pairs, non-negative): ``F.pad(x, pads, mode="reflect")`` where that works (every pad
    smaller than its size), ``numpy.pad(..., mode="reflect")`` beyond (``F.pad`` raises there).

    Each padded dim reads the input's mirror-periodic extension (period ``2 * (size - 1)``; a dim of size 1 is
    repeated). TorchScript-compatible (``GMRUNet(pad_to_multiple=True, pad_mode="reflect")`` calls it).
    """
    for j in range(len(pads) // 2):
        dim = x.dim() - 1 - j
        before, after = pads[2 * j], pads[2 * j + 1]
        if before < 0 or after < 0:
            raise ValueError(f"pads must be >= 0, got pads={pads}.")
        if before == 0 and after == 0:
            continue
        size = x.shape[dim]
        idx = torch.arange(-before, size + after, device=x.device)
        if size > 1:
            period = 2 * (size - 1)
            idx = torch.remainder(idx, period)
            idx = torch.where(idx >= size, period - idx, idx)
        else:
            idx = torch.zeros_like(idx)
        x = x.index_select(dim, idx)
    return x
