"""monai_gmr.nets."""
