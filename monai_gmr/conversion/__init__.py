"""Conversion of MONAI networks to GMR and export of GMR networks to plain convolutions."""

from .convert import ConversionSummary, PooledConv, UpsampledConv, audit_equivariance, convert_to_gmr
from .export import export_dense, gmr_to_dense_conv

__all__ = [
    "convert_to_gmr",
    "ConversionSummary",
    "PooledConv",
    "UpsampledConv",
    "audit_equivariance",
    "export_dense",
    "gmr_to_dense_conv",
]
