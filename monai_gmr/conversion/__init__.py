"""Conversion of MONAI networks to GMR and export of GMR networks to plain convolutions."""

from .export import export_dense, gmr_to_dense_conv

__all__ = ["export_dense", "gmr_to_dense_conv"]
