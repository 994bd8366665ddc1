"""Exact symmetry actions on tensors: the dihedral group D4 (2D) and the 48-element cube group (3D).

Every element is an index permutation (``rot90``/``flip``/``permute``), so applying an element and its inverse is
bit-exact. Spatial dims are always the trailing ``spatial_dims`` dims of a tensor shaped ``(..., *spatial)``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from .basis import _is_int

__all__ = ["D4Element", "CubeElement", "d4_elements", "cube_elements", "group_elements"]


def _as_flag(value: object, name: str) -> bool:
    """A bool, NumPy bool or 0/1 as a ``bool``; anything else is a ``ValueError`` naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or (_is_int(value) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{name} must be bools, got {name}={value!r}.")


@dataclass(frozen=True)
class D4Element:
    """``x -> rot90(flip_W(x) if flip else x, k)`` on the last two dims (rotation counter-clockwise in (H, W))."""

    k: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        # stored normalised (k in 0..3, flip a bool): equal transforms compare and hash equal (D4Element(5) ==
        # D4Element(1)); a float k failed only when applied, inside torch.rot90
        if not _is_int(self.k):
            raise ValueError(f"k must be an int (quarter turns), got k={self.k!r}.")
        object.__setattr__(self, "k", int(self.k) % 4)
        object.__setattr__(self, "flip", _as_flag(self.flip, "flip"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            x = torch.flip(x, dims=(-1,))
        return torch.rot90(x, self.k % 4, dims=(-2, -1)) if self.k % 4 else x

    def inverse(self) -> "D4Element":
        return D4Element(k=self.k % 4 if self.flip else (-self.k) % 4, flip=self.flip)

    @property
    def name(self) -> str:
        return f"rot{90 * (self.k % 4)}" + ("_flip" if self.flip else "")


@dataclass(frozen=True)
class CubeElement:
    """Signed permutation of the last three dims: permute axes by ``perm`` then flip the axes in ``flips``."""

    perm: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    def __post_init__(self) -> None:
        # stored as tuples of ints / bools: a list perm made the element unhashable (not usable in a set or as a
        # key) and an invalid perm failed only when applied, inside Tensor.permute
        perm, flips = tuple(self.perm), tuple(self.flips)
        if len(perm) != 3 or not all(_is_int(p) for p in perm) or sorted(int(p) for p in perm) != [0, 1, 2]:
            raise ValueError(f"perm must be a permutation of (0, 1, 2), got perm={self.perm!r}.")
        if len(flips) != 3:
            raise ValueError(f"flips must be 3 bools, got flips={self.flips!r}.")
        object.__setattr__(self, "perm", tuple(int(p) for p in perm))
        object.__setattr__(self, "flips", tuple(_as_flag(f, "flips") for f in flips))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.ndim - 3
        if self.perm != (0, 1, 2):
            x = x.permute(*range(lead), *(lead + p for p in self.perm))
        dims = tuple(lead + i for i, f in enumerate(self.flips) if f)
        return torch.flip(x, dims=dims) if dims else x

    def inverse(self) -> "CubeElement":
        inv = [0, 0, 0]
        for i, p in enumerate(self.perm):
            inv[p] = i
        # y = flip_F(permute_P(x)) -> x = permute_{P^-1}(flip_F(y)) = flip_{F o P^-1 positions}(permute_{P^-1}(y))
        flips = tuple(self.flips[inv[j]] for j in range(3))
        return CubeElement(perm=tuple(inv), flips=flips)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return "perm" + "".join(map(str, self.perm)) + "_flip" + "".join("1" if f else "0" for f in self.flips)


def d4_elements() -> list[D4Element]:
    """All 8 elements of D4 (4 rotations, each with and without a reflection); identity first."""
    return [D4Element(k, f) for f in (False, True) for k in range(4)]


def cube_elements() -> list[CubeElement]:
    """All 48 symmetries of the cube (6 axis permutations x 8 axis reflections); identity first."""
    return [
        CubeElement(perm=perm, flips=flips)  # type: ignore[arg-type]
        for perm in itertools.permutations(range(3))
        for flips in itertools.product((False, True), repeat=3)
    ]


def group_elements(spatial_dims: int) -> list[D4Element] | list[CubeElement]:
    """D4 for ``spatial_dims=2``, the cube group for ``spatial_dims=3``."""
    if spatial_dims == 2:
        return d4_elements()
    if spatial_dims == 3:
        return cube_elements()
    raise ValueError(f"spatial_dims must be 2 or 3, got spatial_dims={spatial_dims}.")
