"""monai_gmr.evaluation: rotation robustness (metrics per angle/flip, reports, handlers), equivariance errors and
slide-map consistency under D4 re-orientation of a slide."""

from __future__ import annotations

from .equivariance import (
    equivariance_error,
    group_equivariance_error,
    layerwise_equivariance_error,
    spline_equivariance_error,
    masked_rel_err,
    on_canvas,
)
from .handlers import DefinedClassesROCAUC, RotationRobustnessHandler, RotationRobustnessMetric
from .metrics import ClassificationAccumulator, DefinedClassesROCAUCMetric, ExactAUC, SegmentationAccumulator, roc_auc_exact, to_probabilities
from .report import load_result, plot_polar, result_to_csv, save_csv, save_json, write_report, write_tensorboard
from .robustness import RobustnessResult, binarize_label, parse_batch, rotation_robustness
from .slide_consistency import CONSISTENCY_FIELDS, compare_maps, consistency_rows, slide_map_consistency
from .workflow import RotationRobustnessEvaluator, load_checkpoint

__all__ = [
    "equivariance_error",
    "group_equivariance_error",
    "layerwise_equivariance_error",
    "spline_equivariance_error",
    "masked_rel_err",
    "on_canvas",
    "RotationRobustnessHandler",
    "RotationRobustnessMetric",
    "DefinedClassesROCAUC",
    "ClassificationAccumulator",
    "DefinedClassesROCAUCMetric",
    "ExactAUC",
    "SegmentationAccumulator",
    "roc_auc_exact",
    "to_probabilities",
    "load_result",
    "plot_polar",
    "result_to_csv",
    "save_csv",
    "save_json",
    "write_report",
    "write_tensorboard",
    "RobustnessResult",
    "binarize_label",
    "parse_batch",
    "rotation_robustness",
    "slide_map_consistency",
    "compare_maps",
    "consistency_rows",
    "CONSISTENCY_FIELDS",
    "RotationRobustnessEvaluator",
    "load_checkpoint",
]
