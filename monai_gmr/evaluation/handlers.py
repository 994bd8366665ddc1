"""Ignite handlers: the rotation-robustness evaluation run from a trainer or ``SupervisedEvaluator``, and a MONAI
ROC-AUC metric handler whose macro average leaves out the classes whose AUC is undefined."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from monai.handlers import IgniteMetricHandler

from monai_gmr.utils import as_bool, positive_int

from .metrics import DefinedClassesROCAUCMetric
from .report import write_report, write_tensorboard
from .robustness import RobustnessResult, rotation_robustness

__all__ = ["RotationRobustnessHandler", "RotationRobustnessMetric", "DefinedClassesROCAUC"]

logger = logging.getLogger(__name__)


class RotationRobustnessHandler:
    """Run :func:`~monai_gmr.evaluation.rotation_robustness` on an Ignite/MONAI engine event.

    On each firing it evaluates ``network`` (default: ``engine.network``) on ``data`` (default:
    ``engine.data_loader``) on ``engine.state.device``, stores ``{prefix}_{metric}_{mean|std|min}`` in
    ``engine.state.metrics`` (so checkpoint/early-stopping handlers can key on them; NaN when no angle gave a value,
    e.g. no foreground in any scored region, never the value of an earlier epoch), writes TensorBoard scalars
    (:func:`~monai_gmr.evaluation.report.write_tensorboard`, ``step`` = epoch) when ``summary_writer`` or ``log_dir``
    is given, and the JSON/CSV/PNG report when ``output_dir`` is given. The network's train/eval mode is restored.
    In a multi-process (``torchrun``) run pass ``distributed=True`` with each rank's shard of the data (e.g. a
    validation loader with ``DistributedSampler(shuffle=False, even_divisible=False)``): every rank evaluates its
    shard, every rank stores the merged metrics (all ranks must fire the handler, as for any collective), and rank 0
    alone writes the report and the TensorBoard scalars (see ``distributed`` of
    :func:`~monai_gmr.evaluation.rotation_robustness`); without it a multi-process run is refused there.

    Args:
        data: iterable of batches (dicts with ``image``/``label``); ``None`` = ``engine.data_loader``.
        network: model; ``None`` = ``engine.network``.
        output_dir: where to write reports (``{prefix}_epoch{N}.json`` etc.; ``{prefix}.json`` at ``COMPLETED``).
        summary_writer: a TensorBoard ``SummaryWriter``; or ``log_dir`` to create one lazily.
        log_dir: TensorBoard directory.
        event: ``"EPOCH_COMPLETED"`` (every ``interval`` epochs) or ``"COMPLETED"``.
        interval: epochs between evaluations.
        prefix: metric-name and file prefix.
        plot: write the polar PNG with the report.
        distributed: multi-process evaluation (above); also text forms of :func:`monai_gmr.utils.as_bool`.
        kwargs: forwarded to :func:`~monai_gmr.evaluation.rotation_robustness` (``angles``, ``flips``,
            ``metrics``, ``task``, ``inferer``, ``label_transform``, ``model_name`` ...).

    Example (bundle ``train.json`` / ``evaluate.json`` handler list)::

        {"_target_": "monai_gmr.evaluation.RotationRobustnessHandler", "data": "@val#dataloader",
         "angles": "$list(range(0, 360, 30))", "log_dir": "@output_dir", "event": "COMPLETED"}
    """

    def __init__(
        self,
        data: Any = None,
        network: Callable | None = None,
        output_dir: str | os.PathLike | None = None,
        summary_writer: Any = None,
        log_dir: str | os.PathLike | None = None,
        event: str = "EPOCH_COMPLETED",
        interval: int = 1,
        prefix: str = "robustness",
        plot: bool = True,
        distributed: bool = False,
        **kwargs: Any,
    ) -> None:
        if event not in ("EPOCH_COMPLETED", "COMPLETED"):
            raise ValueError(f"event must be 'EPOCH_COMPLETED' or 'COMPLETED', got event={event!r}.")
        interval = positive_int(interval, "interval")  # int() read 2.5 as 2 and True as 1 without a word
        self.data = data
        self.network = network
        self.output_dir = output_dir
        self.summary_writer = summary_writer
        self.log_dir = log_dir
        self._own_writer = False  # True once a writer was created from log_dir (the one close() closes)
        self.event = event
        self.interval = interval
        self.prefix = prefix
        self.plot = as_bool(plot, "plot")  # "false" (text from a config) was true: a plot was written
        self.distributed = as_bool(distributed, "distributed")
        self.kwargs = kwargs
        self.last_result: RobustnessResult | None = None
        self.history: list[tuple[int, RobustnessResult]] = []

    def attach(self, engine: Any) -> None:
        """Register on ``engine`` (Ignite ``Engine``, MONAI ``SupervisedTrainer``/``SupervisedEvaluator``)."""
        from ignite.engine import Events

        ev = Events.EPOCH_COMPLETED(every=self.interval) if self.event == "EPOCH_COMPLETED" else Events.COMPLETED
        engine.add_event_handler(ev, self)

    def _writer(self) -> Any:
        if self.summary_writer is None and self.log_dir is not None:
            from monai_gmr.utils import summary_writer  # a no-op writer when tensorboard is not installed

            self.summary_writer = summary_writer(self.log_dir)
            self._own_writer = True
        return self.summary_writer

    def __call__(self, engine: Any) -> None:
        network = self.network if self.network is not None else getattr(engine, "network", None)
        data = self.data if self.data is not None else getattr(engine, "data_loader", None)
        if network is None or data is None:
            raise ValueError("RotationRobustnessHandler needs network and data (or an engine with .network/.data_loader).")
        kwargs = dict(self.kwargs)
        kwargs.setdefault("device", getattr(engine.state, "device", None))
        result = rotation_robustness(network, data, distributed=self.distributed, **kwargs)
        epoch = int(getattr(engine.state, "epoch", 0) or 0)
        self.last_result = result
        self.history.append((epoch, result))
        for m, s in result.summary().items():
            for stat in ("mean", "std", "min"):  # NaN when undefined: skipping it left the previous epoch's value
                engine.state.metrics[f"{self.prefix}_{m}_{stat}"] = math.nan if s[stat] is None else s[stat]
        if self.distributed and torch.distributed.get_rank() != 0:  # the same merged result: rank 0 writes it once
            return
        writer = self._writer()
        if writer is not None:
            write_tensorboard(result, writer, self.prefix, step=epoch)
        if self.output_dir is not None:
            stem = self.prefix if self.event == "COMPLETED" else f"{self.prefix}_epoch{epoch}"
            write_report(result, self.output_dir, stem, plot=self.plot)
        logger.info(
            "rotation robustness (epoch %d): %s",
            epoch,
            ", ".join(f"{m} mean {s['mean']:.4f} std {s['std']:.4f}" for m, s in result.summary().items() if s["mean"] is not None),
        )

    def close(self) -> None:
        """Close a writer created from ``log_dir``."""
        if self.summary_writer is not None and self._own_writer:
            self.summary_writer.close()


class RotationRobustnessMetric:
    """One summary value of a :class:`RotationRobustnessHandler`, used as a MONAI evaluator metric.

    Given as the ``key_val_metric`` of a MONAI ``SupervisedEvaluator`` (e.g. ``{"val_rotation_dice_min":
    RotationRobustnessMetric(handler, "dice", "min")}``), the rotated evaluation chooses the best model: MONAI
    compares the key metric, and a key-metric ``CheckpointSaver`` reads it, at ``EPOCH_COMPLETED`` *before* any
    validation handler runs, so the handler itself, attached as a validation handler, came too late for both.
    Attached under ``name``, this runs ``handler`` at every ``EPOCH_COMPLETED`` of the evaluator (one per
    validation; the handler's own ``event`` and ``interval`` are not used), with everything the handler does (all
    ``{prefix}_{metric}_{mean|std|min}`` entries of ``engine.state.metrics``, TensorBoard, reports, logging), then
    stores the chosen value as ``engine.state.metrics[name]``. Do not attach ``handler`` to the same engine as
    well (it would evaluate twice). In a multi-process run every process must attach it (as the handler). A NaN value
    (no view had anything to score) is never better than another, nor another better than a NaN best, so the
    first validation's model stays the best when its value is the NaN, else the best so far: this is warned of once.

    Args:
        handler: the rotation-robustness handler whose result is read.
        metric: one of the handler's metrics (e.g. ``"dice"``, ``"auc"``).
        stat: ``"mean"`` or ``"min"`` over the angles (flipped views are not in it, see
            :meth:`~monai_gmr.evaluation.RobustnessResult.summary`; higher is better, as MONAI's default comparison
            expects), or
            ``"std"`` (lower is better: give the evaluator a ``metric_cmp_fn`` that prefers lower values, and a
            key-metric ``CheckpointSaver`` ``key_metric_negative_sign=True``, or it keeps the model of the highest).
    """

    STATS = ("mean", "std", "min")

    def __init__(self, handler: RotationRobustnessHandler, metric: str = "dice", stat: str = "mean") -> None:
        if not isinstance(handler, RotationRobustnessHandler):
            raise TypeError(f"handler must be a RotationRobustnessHandler, got {type(handler).__name__}.")
        if stat not in self.STATS:
            raise ValueError(f"stat must be one of {self.STATS}, got stat={stat!r}.")
        metrics = handler.kwargs.get("metrics")
        if metrics is not None and metric not in ([metrics] if isinstance(metrics, str) else list(metrics)):
            raise ValueError(f"metric={metric!r} is not among the handler's metrics {metrics!r}.")
        self.handler = handler
        self.metric = metric
        self.stat = stat
        self._warned = False

    @property
    def source(self) -> str:
        """The handler's name for the value: ``{prefix}_{metric}_{stat}``."""
        return f"{self.handler.prefix}_{self.metric}_{self.stat}"

    def attach(self, engine: Any, name: str) -> None:
        """Register on ``engine`` as the metric ``name`` (MONAI ``Workflow`` calls this for its metrics)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self.completed, name)

    def completed(self, engine: Any, name: str) -> None:
        """Run the rotated evaluation and store the chosen value under ``name``."""
        self.handler(engine)
        if self.source not in engine.state.metrics:  # a metric the evaluation did not produce
            raise KeyError(f"the rotation-robustness evaluation gave no {self.source!r} (it gave {sorted(engine.state.metrics)}).")
        value = engine.state.metrics[name] = engine.state.metrics[self.source]
        if isinstance(value, float) and math.isnan(value) and not self._warned:
            # NaN is never better (MONAI's comparison, ignite's checkpoint ordering), nor is anything better than a NaN
            # best: the first validation's stays best when it is the NaN, else the best so far (MONAI compares after
            # this, so best_metric_epoch is that of the earlier validations)
            self._warned = True
            best_epoch = int(getattr(engine.state, "best_metric_epoch", -1))
            kept = "the first validation" if best_epoch == -1 else f"epoch {best_epoch}"
            logger.warning(
                "the key metric %s is undefined (NaN: no view of the rotated evaluation %r had anything to score, e.g. no "
                "foreground in the validation labels), so it cannot rank the models: the best model stays that of %s; "
                "choose another key metric (the bundles' best_model_metric).", name, self.handler.prefix, kept,
            )  # fmt: skip



class DefinedClassesROCAUC(IgniteMetricHandler):
    """MONAI ``ROCAUC`` handler (macro average) that never averages in an undefined class.

    A drop-in replacement for ``monai.handlers.ROCAUC(average="macro")`` (same ``output_transform`` and inputs:
    probabilities and one-hot labels) computing :class:`~monai_gmr.evaluation.metrics.DefinedClassesROCAUCMetric`:
    a class without a positive (or negative) sample among the evaluated ones, e.g. a class of ``num_classes`` that
    the validation split lacks, is left out of the mean and named in a warning, instead of turning the whole
    metric, and the best-checkpoint selection keyed on it, into NaN.

    Args:
        output_transform: extracts ``(y_pred, y)`` from ``engine.state.output``
            (e.g. ``monai.handlers.from_engine(["pred", "label"])``).
    """

    def __init__(self, output_transform: Callable = lambda x: x) -> None:
        super().__init__(metric_fn=DefinedClassesROCAUCMetric(), output_transform=output_transform, save_details=False)

    def attach(self, engine: Any, name: str) -> None:  # type: ignore[override]
        """Attach as ``name`` (also the name the warning about undefined classes uses)."""
        self.metric_fn.name = name  # type: ignore[attr-defined]
        super().attach(engine, name)
