"""monai_gmr.evaluation."""
