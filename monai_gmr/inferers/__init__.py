"""monai_gmr.inferers: rotation/reflection test-time augmentation and a symmetric sliding window."""

from __future__ import annotations

from .rotation_tta import RotationTTAInferer
from .sliding_window import SymmetricSlidingWindowInferer, symmetric_window_starts

__all__ = ["RotationTTAInferer", "SymmetricSlidingWindowInferer", "symmetric_window_starts"]
