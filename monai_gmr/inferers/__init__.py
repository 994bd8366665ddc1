"""monai_gmr.inferers."""
