"""monai_gmr.data."""
