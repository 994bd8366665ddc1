"""Bundle-facing workflow step: evaluate rotation robustness and write the report (``.run()``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_gmr.utils import as_bool

from .report import load_result, report_paths, write_report, write_tensorboard
from .robustness import RobustnessResult, rotation_robustness

__all__ = ["RotationRobustnessEvaluator", "load_checkpoint"]

logger = logging.getLogger(__name__)

def load_checkpoint(network: torch.nn.Module, ckpt_path: str | os.PathLike, strict: bool = True) -> torch.nn.Module:
    """Load weights into ``network`` from a plain state dict file or a MONAI ``CheckpointSaver`` dict
    (``{"model": sd}``, ``{"network": sd}``, ...): :func:`monai_gmr.workflows.load_checkpoint`, the one loader of
    the package (imported here lazily: the evaluation package does not depend on the workflows at import time)."""
    from monai_gmr.workflows.common import load_checkpoint as _load

    return _load(network, ckpt_path, strict=strict)


class RotationRobustnessEvaluator:
    """Rotation-robustness evaluation as a bundle workflow step.

    ``run()`` evaluates (:func:`~monai_gmr.evaluation.rotation_robustness`), writes ``{prefix}.json``,
    ``{prefix}.csv`` and ``{prefix}_polar.png`` into ``output_dir`` (atomically), TensorBoard scalars under
    ``log_dir`` when given, and returns the :class:`RobustnessResult`.

    Args:
        network: the model (weights loaded from ``ckpt_path`` when given).
        dataloader: iterable of dict batches with ``image``/``label`` (after the bundle's preprocessing).
        output_dir: report directory.
        device: device to run on (default: CUDA when available, else CPU).
        ckpt_path: optional checkpoint to load first (see :func:`load_checkpoint`); ``network`` must then be an
            ``nn.Module`` (``TypeError`` otherwise: the weights would not be loaded).
        prefix: report file stem.
        plot: write the polar plot.
        compare: JSON reports of other models (paths) overlaid on the polar plot.
        log_dir: TensorBoard log directory (optional).
        distributed: multi-process evaluation (``torchrun``; see ``distributed`` of
            :func:`~monai_gmr.evaluation.rotation_robustness`: ``dataloader`` yields this rank's shard): every rank
            evaluates its shard and gets the merged :attr:`result`; only rank 0 writes the report files and the
            TensorBoard scalars; :attr:`paths` names the same files on every rank.
        kwargs: forwarded to :func:`~monai_gmr.evaluation.rotation_robustness` (``angles``, ``flips``,
            ``metrics``, ``task``, ``inferer``, ``spatial_dims``, ``region``, ``label_transform``, ``model_name``...).

    Bundle use (``evaluate.json``; not under the id ``robustness``, which ``python -m monai_gmr.evaluation`` reads
    as a dict of ``rotation_robustness`` keyword arguments)::

        "robustness_eval": {"_target_": "monai_gmr.evaluation.RotationRobustnessEvaluator",
                            "network": "@network", "dataloader": "@validate#dataloader",
                            "output_dir": "$@bundle_root + '/eval/robustness'", "device": "@device",
                            "angles": "$list(range(0, 360, 10))", "flips": ["h", "v"]},
        "run": ["$@robustness_eval.run()"]
    """

    def __init__(
        self,
        network: torch.nn.Module | Callable,
        dataloader: Any,
        output_dir: str | os.PathLike,
        device: torch.device | str | None = None,
        ckpt_path: str | os.PathLike | None = None,
        prefix: str = "robustness",
        plot: bool = True,
        compare: Sequence[str | os.PathLike] = (),
        log_dir: str | os.PathLike | None = None,
        distributed: bool = False,
        **kwargs: Any,
    ) -> None:
        if output_dir is None:
            raise ValueError("output_dir must be a directory path, got output_dir=None.")
        if ckpt_path is not None and not isinstance(network, torch.nn.Module):  # the weights were skipped silently
            raise TypeError(
                f"ckpt_path={str(ckpt_path)!r} needs an nn.Module network to load into, got a "
                f"{type(network).__name__}; load the weights into the module before wrapping it, or pass the module."
            )
        self.network = network
        self.dataloader = dataloader
        self.output_dir = Path(output_dir)
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.ckpt_path = ckpt_path
        self.prefix = prefix
        self.plot = as_bool(plot, "plot")  # "false" (text from a config) was true: a plot was written
        self.compare = [Path(c) for c in compare]
        self.log_dir = log_dir
        self.distributed = as_bool(distributed, "distributed")
        self.kwargs = kwargs
        self.result: RobustnessResult | None = None
        self.paths: dict[str, Path] = {}

    def run(self) -> RobustnessResult:
        if self.ckpt_path is not None and isinstance(self.network, torch.nn.Module):
            load_checkpoint(self.network, self.ckpt_path)
        others = [load_result(c) for c in self.compare]
        self.result = rotation_robustness(
            self.network, self.dataloader, device=self.device, distributed=self.distributed, **self.kwargs
        )
        if self.distributed and torch.distributed.get_rank() != 0:  # rank 0 writes the one report of all ranks
            self.paths = report_paths(self.output_dir, self.prefix, plot=self.plot)
            return self.result
        self.paths = write_report(self.result, self.output_dir, self.prefix, plot=self.plot, compare=others)
        if self.log_dir is not None:
            from monai_gmr.utils import summary_writer  # a no-op writer when tensorboard is not installed

            w = summary_writer(self.log_dir)
            try:
                write_tensorboard(self.result, w)
            finally:
                w.close()
        logger.info("rotation robustness report: %s", {k: str(v) for k, v in self.paths.items()})
        return self.result
