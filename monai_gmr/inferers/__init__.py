"""monai_gmr.inferers: rotation/reflection test-time augmentation."""

from __future__ import annotations

from .rotation_tta import RotationTTAInferer

__all__ = ["RotationTTAInferer"]
