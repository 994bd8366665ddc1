"""Small helpers shared by the monai_gmr MONAI bundles (nuclei segmentation, WSI patch classification).

Everything here is generic (no task-specific assumptions) and is meant to be called from bundle JSON configs by
full dotted ``_target_`` / ``$`` expressions:

- locating the bundle folder (:func:`find_bundle_root`) so configs run from any working directory;
- resumable training (:func:`find_latest_checkpoint`, :func:`attach_resume`, :class:`AtomicCheckpointSaver`);
- distributed helpers (:func:`is_main_process`, :func:`rank_seed`, :func:`run_on_rank0`, :func:`run_on_rank0_first`,
  :func:`distributed_sampler`, :func:`attach_handlers`);
- a log-friendly progress display with a run summary (:class:`ProgressLogger`);
- atomic image writers for ``SaveImaged`` (:class:`AtomicPILWriter`, :class:`AtomicITKWriter`,
  :class:`AtomicNibabelWriter`, :func:`atomic_writer_for`);
- instance-mask post-processing of semantic masks (:func:`instance_from_semantic`, :class:`InstanceMaskd`);
- datalist checks that fail early with a message naming the bad file (:func:`check_datalist`).
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.handlers import DiskSaver
from monai.config import KeysCollection
from monai.data import ITKWriter, MetaTensor, NibabelWriter, PILWriter
from monai.handlers import CheckpointLoader, CheckpointSaver, ValidationHandler
from monai.transforms import MapTransform

from monai_gmr.utils import (
    as_bool,
    atomic_path,
    atomic_write_json,
    fraction,
    keyword_args,
    make_temp_dir,
    missing_dirs,
    one_of,
    positive_float,
    positive_int,
    remove_empty_dirs,
)

__all__ = [
    "check_training_settings",
    "check_robustness_settings",
    "check_tta_settings",
    "check_key_metric_setting",
    "choose_key_metric",
    "compile_prepare_batch",
    "CompiledModule",
    "maybe_compile",
    "bundle_root_of",
    "find_bundle_root",
    "find_latest_checkpoint",
    "attach_resume",
    "KeyMetricState",
    "attach_handlers",
    "load_checkpoint",
    "summarize_evaluation",
    "AtomicCheckpointSaver",
    "EpochValidationHandler",
    "ProgressLogger",
    "is_main_process",
    "rank_seed",
    "run_on_rank0",
    "run_on_rank0_first",
    "distributed_sampler",
    "AtomicPILWriter",
    "AtomicITKWriter",
    "AtomicNibabelWriter",
    "atomic_writer_for",
    "instance_from_semantic",
    "InstanceMaskd",
    "check_datalist",
    "list_images",
    "IMAGE_EXTENSIONS",
    "CHECKPOINT_PATTERN",
]

logger = logging.getLogger(__name__)

#: file names written by ``CheckpointSaver(save_interval=N, epoch_level=True)`` (``checkpoint_epoch=N.pt``) or at
#: iteration level (``checkpoint_iteration=N.pt``); group 1 is the kind, group 2 the number.
CHECKPOINT_PATTERN = re.compile(r"^(?:.*_)?checkpoint_(epoch|iteration)=(\d+)\.pt$")


# --------------------------------------------------------------------------------------------------------------------
# bundle root
# --------------------------------------------------------------------------------------------------------------------
def _config_root_from_stack() -> Path | None:
    """The ``config_root_path`` of a ``monai.bundle.ConfigWorkflow`` found up the call stack, if any."""
    try:
        from monai.bundle import ConfigWorkflow
    except ImportError:  # pragma: no cover - monai always provides it
        return None
    frame = sys._getframe(1)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, ConfigWorkflow) and getattr(obj, "config_root_path", None) is not None:
            return Path(obj.config_root_path)
        frame = frame.f_back
    return None


def _config_root_from_argv(argv: Sequence[str]) -> Path | None:
    """Parent folder of the first ``--config_file`` given on a ``python -m monai.bundle ...`` command line."""
    for i, arg in enumerate(argv):
        value = None
        key, eq, rest = arg.partition("=")
        if key.replace("-", "_") != "__config_file":  # Fire reads --config-file as --config_file
            continue
        if eq:
            value = rest
        elif i + 1 < len(argv):
            value = argv[i + 1]
        if value is None:
            continue
        value = value.strip()
        first: Any = value
        if value.startswith(("[", "(")):
            try:
                first = ast.literal_eval(value)[0]
            except (ValueError, SyntaxError, IndexError):
                first = value.strip("[]()").split(",")[0].strip(" '\"")
        elif "," in value:
            first = value.split(",")[0]
        return Path(str(first)).expanduser().resolve().parent
    return None


def bundle_root_of(config_file: str | os.PathLike) -> str:
    """The bundle folder of a config file: its folder, or that folder's parent when it is named ``configs``.

    Args:
        config_file: a bundle config file (e.g. ``bundles/x/configs/train.json``).

    Returns:
        Absolute path of the bundle root as a string (``bundles/x``).
    """
    return _bundle_of_config_folder(Path(config_file).expanduser().resolve().parent)


def _bundle_of_config_folder(folder: Path) -> str:
    """The bundle root of a config folder: the folder, or its parent when it is named ``configs``."""
    folder = folder.resolve()
    return str(folder.parent if folder.name == "configs" else folder)


def find_bundle_root(name: str | None = None, default: str | os.PathLike | None = None) -> str:
    """Locate the folder of the running bundle, so that configs run from any working directory.

    MONAI bundle configs cannot see their own file path, and the model-zoo convention (``"bundle_root": "."``)
    only works when started inside the bundle. This looks, in order, for:

    1. a ``monai.bundle.ConfigWorkflow`` up the call stack (``python -m monai.bundle run``, ``monai.bundle.run``,
       ``create_workflow``): its config folder;
    2. ``--config_file`` on the command line (e.g. ``verify_net_in_out`` or ``torchrun -m monai.bundle ...``);
    3. ``default`` when given, else ``<source checkout>/bundles/<name>`` (editable install of monai_gmr).

    A config folder named ``configs`` maps to its parent. Users can always override ``--bundle_root``.

    Args:
        name: bundle folder name (e.g. ``"gmr_nuclei_segmentation"``), used by the source-checkout fallback.
        default: explicit fallback path.

    Returns:
        Absolute path of the bundle root as a string.
    """
    root = _config_root_from_stack() or _config_root_from_argv(sys.argv)
    if root is not None:
        return _bundle_of_config_folder(root)
    if default is not None:
        return str(Path(default).expanduser().resolve())
    if name is not None:
        candidate = Path(__file__).resolve().parents[2] / "bundles" / name
        if candidate.is_dir():
            return str(candidate)
    logger.warning(
        "could not locate the bundle root%s (no bundle workflow running, no --config_file on the command line%s); "
        "using the current directory %s: set bundle_root to the bundle folder (--bundle_root, or "
        "parser['bundle_root'] with monai.bundle.ConfigParser) so that its data and outputs are found there",
        f" of {name!r}" if name else "", ", monai_gmr is not a source checkout" if name else "", os.getcwd(),
    )  # fmt: skip
    return os.getcwd()


# --------------------------------------------------------------------------------------------------------------------
# checkpoints and resuming
# --------------------------------------------------------------------------------------------------------------------
def find_latest_checkpoint(ckpt_dir: str | os.PathLike, kind: str | None = None) -> str | None:
    """Return the newest interval checkpoint in ``ckpt_dir`` (highest ``epoch=N`` / ``iteration=N``), or ``None``.

    Only complete files written by :class:`AtomicCheckpointSaver` / MONAI ``CheckpointSaver`` interval saving
    (``[prefix_]checkpoint_epoch=N.pt`` or ``checkpoint_iteration=N.pt``) are considered; temporary files of an
    interrupted atomic save never match.

    Args:
        ckpt_dir: folder holding the checkpoints (a missing folder gives ``None``).
        kind: ``"epoch"``, ``"iteration"`` or ``None`` (both; epoch checkpoints win when both exist).
    """
    if kind not in (None, "epoch", "iteration"):
        raise ValueError(f"kind must be None, 'epoch' or 'iteration', got {kind!r}.")
    for k in ("epoch", "iteration") if kind is None else (kind,):
        found = _interval_checkpoints(Path(ckpt_dir), re.compile(rf"^(?:.*_)?checkpoint_{k}=(\d+)\.pt$"))
        if found:
            return str(found[-1][1])
    return None


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` whose files are written atomically (temporary file + ``os.replace``).

    MONAI's ``CheckpointSaver`` builds ignite ``DiskSaver`` objects with ``atomic=False`` (MONAI 1.6.1, to keep
    group/other read permissions); ignite >= 0.4.12 restores those permissions itself after an atomic save, so
    this subclass switches ignite's own atomic mode back on. A crash or kill during a save leaves the previous
    checkpoint intact instead of a truncated ``.pt``; the files a new checkpoint replaces (``model.pt`` of the
    best-metric saver, the oldest interval checkpoint beyond ``n_saved``) are removed only after it was written.
    Same arguments as ``monai.handlers.CheckpointSaver``.

    ``save_dir`` is created when the first checkpoint is saved, not when the saver is built (ignite's
    ``DiskSaver`` creates it, and its missing parents such as a new ``output_dir``, at once): a bundle run stopped
    by bad input after its handlers were built leaves neither an empty checkpoint folder nor an empty output
    folder behind. Folders that existed before are never removed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        save_dir = kwargs.get("save_dir", args[0] if args else None)
        created = [] if save_dir is None else missing_dirs(save_dir)
        super().__init__(*args, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is None:
                continue
            if hasattr(ckpt.save_handler, "_atomic"):
                ckpt.save_handler._atomic = True
            if isinstance(ckpt.save_handler, DiskSaver):
                ckpt.save_handler.__class__ = _creates_dir_on_save(type(ckpt.save_handler))
        # ignite's DiskSaver made save_dir *and its missing parents* (e.g. a new output_dir): remove every folder
        # it created, deepest first, as long as it is empty (a folder another process wrote to is kept). Only the
        # process that saves (ignite creates the folder on rank 0 only) undoes it: another rank would find rank 0's
        # new, still empty output folder among the folders missing when it looked, and remove it while rank 0 was
        # starting to write there (a multi-process run failed now and then)
        if idist.get_rank() == 0:
            remove_empty_dirs(created)


@functools.lru_cache(maxsize=None)
def _creates_dir_on_save(cls: type) -> type:
    """``cls`` (an ignite ``DiskSaver`` class, e.g. MONAI's private subclass) that creates its folder when saving
    and removes replaced checkpoints only once the new one is in place.

    ignite's ``Checkpoint`` calls ``remove(old)`` *before* saving the new file; for the best model (MONAI's fixed
    ``key_metric_filename``, e.g. ``model.pt``) that deleted ``model.pt`` itself, so a save that failed or was
    killed while writing left no best model at all. Removals are therefore deferred to after a successful save
    (and dropped when the save fails, or when they name the file just written, which ``os.replace`` overwrote).
    """

    class _CreatesDirOnSave(cls):  # type: ignore[valid-type, misc]
        def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
            pending, self._pending_removals = getattr(self, "_pending_removals", []), []
            Path(self.dirname).mkdir(parents=True, exist_ok=True)
            super().__call__(checkpoint, filename, metadata)
            fixed = getattr(self, "filename", None)  # MONAI's _DiskSaver: one fixed file name for every save
            for old in pending:
                if (fixed or old) != (fixed or filename):
                    super().remove(old)

        def remove(self, filename: str) -> None:
            self._pending_removals = [*getattr(self, "_pending_removals", []), filename]

    _CreatesDirOnSave.__name__ = _CreatesDirOnSave.__qualname__ = f"{cls.__name__}CreatesDirOnSave"
    return _CreatesDirOnSave


def _interval_checkpoints(ckpt_dir: Path, pattern: re.Pattern = CHECKPOINT_PATTERN) -> list[tuple[int, Path]]:
    """``(N, path)`` of the interval checkpoints in ``ckpt_dir`` whose names match ``pattern`` (default: every
    ``[prefix_]checkpoint_{epoch|iteration}=N.pt``; the number is the pattern's last group), sorted by N."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for path in ckpt_dir.iterdir():
        m = pattern.match(path.name)
        if m is not None and path.is_file():
            found.append((int(m.groups()[-1]), path))
    return sorted(found)


def _saver_pattern(interval: Any) -> re.Pattern:
    """File names of one ignite interval ``Checkpoint`` (MONAI ``CheckpointSaver``: ``[prefix_]checkpoint_epoch=N.pt``)."""
    prefix = f"{re.escape(interval.filename_prefix)}_" if interval.filename_prefix else ""
    return re.compile(rf"^{prefix}checkpoint_{re.escape(str(interval.score_name))}=(\d+)\.pt$")


def attach_resume(
    engine: Any,
    enabled: bool,
    ckpt_dir: str | os.PathLike,
    load_dict: Mapping[str, Any],
    map_location: Any = "cpu",
    saver: CheckpointSaver | None = None,
) -> str | None:
    """Resume training from the newest checkpoint in ``ckpt_dir`` when ``enabled`` (the bundles' ``resume`` switch).

    Attaches a MONAI ``CheckpointLoader`` (fires on ``Events.STARTED``) that restores every object of
    ``load_dict`` — typically ``{"model", "optimizer", "lr_scheduler", "trainer", "best_metric_state"}`` (see
    :class:`KeyMetricState`) — so the run continues from the saved epoch/iteration with the saved optimizer and
    schedule state. Use the same dict as the interval :class:`AtomicCheckpointSaver`'s ``save_dict``.

    A run started with a larger ``max_epochs`` than the checkpoint's keeps the configured horizon of schedulers
    that have one (``CosineAnnealingLR.T_max``): the checkpoint's value would make the learning rate climb back
    after the old end; it also keeps the trainer's configured ``epoch_length`` (ignite would restore the
    checkpoint's, the old number of iterations per epoch after the data grew). Without ``enabled`` (a fresh run), interval checkpoints an earlier run left in ``ckpt_dir``
    are moved to ``ckpt_dir/previous_run_<time>/`` (on the main process), so that a later resume cannot pick one
    of them up, together with the best model of every :class:`KeyMetricState` in ``load_dict`` saved there under a
    fixed name (``model.pt``), which the new run would otherwise overwrite at its first validation.

    Args:
        engine: the ignite trainer (must also be the ``"trainer"`` entry of ``load_dict`` to restore its state).
        enabled: the ``resume`` switch (a ``bool`` or text read by :func:`~monai_gmr.utils.as_bool`); ``False``
            returns ``None`` and attaches nothing.
        ckpt_dir: checkpoint folder (see :func:`find_latest_checkpoint`).
        load_dict: name -> object with ``load_state_dict`` (``DistributedDataParallel`` is unwrapped by ignite).
        map_location: ``torch.load`` map location (``"cpu"`` is safe for every rank; tensors are then copied to
            the parameters' devices).
        saver: the interval ``CheckpointSaver`` writing into ``ckpt_dir``: on resume its ``n_saved`` bookkeeping is
            rebuilt from the files (ignite's list starts empty, so older checkpoints were never pruned again).

    Returns:
        The checkpoint path being resumed from, or ``None`` (disabled or nothing to resume; a warning is logged).
        A newest checkpoint that cannot be loaded (truncated by a crash outside the atomic saver) is skipped with a
        warning in favour of the newest readable one.

    Raises:
        RuntimeError: checkpoints exist but none can be loaded.
    """
    ckpt_dir = Path(ckpt_dir)
    # from Python too, not only from the bundles' ``$as_bool(@resume)``: ``"false"`` is a true string
    enabled = as_bool(enabled, "enabled")
    if not enabled:
        stale = [p for _, p in _interval_checkpoints(ckpt_dir)] + _best_model_files(load_dict, ckpt_dir)
        if stale and is_main_process():
            # a unique folder: two fresh runs within a second must not overwrite each other's
            dest = make_temp_dir(ckpt_dir / "previous_run", prefix=time.strftime("previous_run_%Y%m%d-%H%M%S_"))
            for path in stale:
                os.replace(path, dest / path.name)
            logger.warning("resume=False: moved %d checkpoints of an earlier run to %s", len(stale), dest)
        return None
    path = find_latest_checkpoint(ckpt_dir)
    if path is None:
        logger.warning("resume=True but no checkpoint_epoch=N.pt in %s: training starts from scratch.", ckpt_dir)
        return None
    unreadable = []
    path = _newest_readable_checkpoint(Path(path), map_location, unreadable)
    logger.info("resuming training from %s", path)
    _ResumeLoader(load_path=path, load_dict=dict(load_dict), map_location=map_location).attach(engine)
    horizons = {k: v.T_max for k, v in load_dict.items() if isinstance(v, torch.optim.lr_scheduler.CosineAnnealingLR)}
    if horizons:
        from ignite.engine import Events

        def _keep_horizons(_engine: Any) -> None:  # registered after the loader: runs once it has loaded
            for k, t_max in horizons.items():
                sched = load_dict[k]
                if sched.T_max != t_max:
                    logger.info("%s: T_max %s from the checkpoint -> %s as configured", k, sched.T_max, t_max)
                    sched.T_max = t_max
                    # back onto the configured curve (the recursive step would continue from the old curve's rate,
                    # e.g. eta_min at the end of a shorter run)
                    lrs = sched._get_closed_form_lr()
                    for group, lr in zip(sched.optimizer.param_groups, lrs):
                        group["lr"] = lr
                    sched._last_lr = list(lrs)

        engine.add_event_handler(Events.STARTED, _keep_horizons)
    interval = getattr(saver, "_interval_checkpoint", None)
    if interval is not None and is_main_process():
        pattern = _saver_pattern(interval)  # only this saver's files (another saver may share the folder)
        # unreadable newer files are neither counted nor pruned: the run's next saves of those epochs replace them
        files = [p for _, p in _interval_checkpoints(ckpt_dir, pattern) if p not in unreadable]
        keep = files[-interval.n_saved :] if interval.n_saved else files
        for old in files[: len(files) - len(keep)]:
            if old != Path(path):  # never the one being resumed
                old.unlink()
        interval._saved = [
            type(interval).Item(n, p.name) for n, p in _interval_checkpoints(ckpt_dir, pattern) if p not in unreadable
        ]
    return path


class _ResumeLoader(CheckpointLoader):
    """MONAI ``CheckpointLoader`` whose errors name the checkpoint and the likely cause, and which keeps the
    trainer's configured ``epoch_length`` (like MONAI's loader keeps ``max_epochs``).

    MONAI's loader raises torch's bare ``Error(s) in loading state_dict for ...`` when the checkpoint comes from a
    run with another network or settings, and "Epoch count (N) in checkpoint is larger than the
    `engine.state.max_epochs`" when the run's ``epochs`` is below the checkpoint's epoch; neither names the file.
    """

    def __call__(self, engine: Any) -> None:
        max_epochs, epoch_length = engine.state.max_epochs, engine.state.epoch_length
        try:
            super().__call__(engine)
        except _KeyMetricMismatch as e:  # already says what differs and what to do
            raise ValueError(f"cannot resume from {self.load_path!r}: {e}") from e
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            first = " ".join(line.strip() for line in str(e).splitlines()[:2])  # the heading and the first key
            if isinstance(e, ValueError) and max_epochs is not None and engine.state.epoch > max_epochs:
                msg = (
                    f"cannot resume from {self.load_path!r}: it was saved after epoch {engine.state.epoch}, beyond "
                    f"this run's epochs ({max_epochs}); set epochs above {engine.state.epoch} to train on, or start "
                    "a fresh run without resume."
                )
            else:
                msg = (
                    f"cannot resume from {self.load_path!r}: it does not fit this run ({first} ...); it was probably "
                    "written by a run with another network or settings: resume with those, or start a fresh run "
                    "without resume (which moves the earlier run's checkpoints aside)."
                )
            raise type(e)(msg) from e
        # ignite restores the checkpoint's epoch_length too: a run resumed after the data grew (or with another
        # epoch_length) ran the old number of iterations per epoch and left the rest of each epoch's data unused
        if epoch_length is not None and engine.state.epoch_length != epoch_length:
            logger.warning(
                "resume: epoch_length %s in %s -> %s as configured (the data or epoch_length changed)",
                engine.state.epoch_length, self.load_path, epoch_length,
            )  # fmt: skip
            engine.state.epoch_length = epoch_length
            engine.state.iteration = engine.state.epoch * epoch_length  # an interrupted epoch starts again


def _newest_readable_checkpoint(latest: Path, map_location: Any, unreadable: list[Path]) -> str:
    """``latest`` or, when it cannot be loaded (truncated by a crash outside :class:`AtomicCheckpointSaver`, a full
    disk, a copy cut short), the newest readable checkpoint of the same kind before it; each unreadable one is
    logged and appended to ``unreadable``.

    Raises:
        RuntimeError: no checkpoint of that kind can be loaded (the message names the files).
    """
    kind = CHECKPOINT_PATTERN.match(latest.name).group(1)
    candidates = _interval_checkpoints(latest.parent, re.compile(rf"^(?:.*_)?checkpoint_{kind}=(\d+)\.pt$"))
    for _, path in reversed(candidates):
        try:
            torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to read it: try the previous one
            reason = (str(e).splitlines() or [""])[0]
            logger.warning("resume: skipping unreadable checkpoint %s (%s: %s)", path, type(e).__name__, reason)
            unreadable.append(path)
            continue
        return str(path)
    raise RuntimeError(
        f"resume=True but none of the checkpoints in {str(latest.parent)!r} can be loaded "
        f"({', '.join(p.name for p in unreadable)}): remove them, or start a fresh run without resume."
    )


def _best_model_files(load_dict: Mapping[str, Any], ckpt_dir: Path) -> list[Path]:
    """Existing fixed-name best-model files (``key_metric_filename``, e.g. ``model.pt``) in ``ckpt_dir`` of the
    :class:`KeyMetricState` entries of ``load_dict``."""
    found = []
    for obj in load_dict.values():
        handler = obj._ckpt.save_handler if isinstance(obj, KeyMetricState) else None
        name, dirname = getattr(handler, "filename", None), getattr(handler, "dirname", None)
        if name and dirname is not None and Path(dirname).resolve() == ckpt_dir.resolve():
            for path in (ckpt_dir / name, ckpt_dir / f"{name}.json"):  # and KeyMetricState's record of it
                if path.is_file() and path not in found:
                    found.append(path)
    return found


def _score(value: Any) -> float:
    """A saved score as a float: the best model's ``.json`` (strict JSON) holds an undefined (NaN) score as ``null``."""
    return math.nan if value is None else float(value)


class _KeyMetricMismatch(ValueError):
    """A resumed run keeps its best model by another metric than the checkpoint's (see :class:`KeyMetricState`)."""


class KeyMetricState:
    """``state_dict``/``load_state_dict`` view of a key-metric ``CheckpointSaver``'s tracking list.

    Put it in the interval checkpoint's ``save_dict`` (e.g. ``"best_metric_state"``) so that a resumed run knows
    the best validation score reached so far and does not overwrite a better ``model.pt`` with a worse one. (The
    alternative, MONAI's ``key_metric_save_state=True``, stores the state *inside* ``model.pt``, which then is no
    longer a plain state dict.) With ``evaluator`` it also carries the evaluator's ``best_metric`` and
    ``best_metric_epoch``, so that the logs and the run summary of a resumed run name the same best epoch as
    ``model.pt`` (a fresh evaluator would otherwise start from "no best yet"), and the name of its key metric: a
    run resumed with another key metric (``best_model_metric``) is refused once a best model was saved, as its scores
    would be compared with the other metric's best.

    A best model saved *after* the newest interval checkpoint (``--ckpt_interval`` above the validation interval,
    or a kill between a validation and that epoch's checkpoint) is unknown to the checkpoint: a resumed run compared
    later scores with the checkpoint's older, lower best and replaced the better ``model.pt`` with a worse one.
    With ``evaluator`` the state is therefore also written (atomically, main process) next to a fixed-name best
    model after each validation that saved one (``model.pt.json``), and :meth:`load_state_dict` takes that file's
    state when it is better than the checkpoint's (and ``model.pt`` exists).

    Args:
        saver: a ``CheckpointSaver`` created with ``save_key_metric=True``.
        evaluator: optional MONAI evaluator (``Workflow``) whose ``state.best_metric`` / ``best_metric_epoch``
            are saved and restored with the tracking list.
    """

    def __init__(self, saver: CheckpointSaver, evaluator: Any = None) -> None:
        ckpt = getattr(saver, "_key_metric_checkpoint", None)
        if ckpt is None:
            raise ValueError("KeyMetricState needs a CheckpointSaver created with save_key_metric=True.")
        if evaluator is not None and not hasattr(evaluator, "state"):
            raise TypeError(f"evaluator must be an ignite/MONAI engine with a state, got {type(evaluator).__name__}.")
        self._ckpt = ckpt
        self._evaluator = evaluator
        self._written: dict | None = None
        if evaluator is not None and hasattr(evaluator, "add_event_handler"):
            from ignite.engine import Events

            # registered after the saver (a validation handler attached when the evaluator was built)
            evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._write_sidecar)

    def _sidecar(self) -> Path | None:
        """``<best model>.json`` of a fixed-name best model (MONAI ``key_metric_filename``), else ``None``."""
        handler = self._ckpt.save_handler
        name, dirname = getattr(handler, "filename", None), getattr(handler, "dirname", None)
        return None if not name or dirname is None else Path(dirname) / f"{name}.json"

    def _write_sidecar(self, _engine: Any = None) -> None:
        sidecar = self._sidecar()
        if sidecar is not None and self._ckpt._saved and is_main_process():
            # the whole state, not only the (score, file) list: a tie rewrites the best model (greater_or_equal) and
            # moves the evaluator's best epoch without changing that list
            state = self.state_dict()
            if state != self._written and sidecar.with_suffix("").is_file():  # the best model was written
                atomic_write_json(sidecar, state)
                self._written = state

    def state_dict(self) -> dict[str, Any]:
        """Saved (priority, filename) pairs of the best checkpoints (and the evaluator's best metric/epoch)."""
        out: dict[str, Any] = {"saved": [[float(item.priority), str(item.filename)] for item in self._ckpt._saved]}
        st = getattr(self._evaluator, "state", None)
        if st is not None and getattr(st, "key_metric_name", None) is not None:
            out["key_metric"] = str(st.key_metric_name)
        if st is not None and getattr(st, "best_metric", -1) not in (None, -1):
            out["best_metric"] = float(st.best_metric)
            out["best_metric_epoch"] = int(getattr(st, "best_metric_epoch", -1))
        return out

    def _check_key_metric(self, state_dict: Mapping[str, Any], source: Any) -> None:
        """Refuse a state saved while another metric chose the best model (its scores are not comparable); a state
        from before the first validation (no best model yet) has nothing to compare and is accepted."""
        st = getattr(self._evaluator, "state", None)
        current, saved = getattr(st, "key_metric_name", None), state_dict.get("key_metric")
        chose = bool(state_dict.get("saved")) or "best_metric" in state_dict
        if current is not None and saved is not None and saved != current and chose:
            raise _KeyMetricMismatch(
                f"{source} chose the best model by {saved!r}, this run by {current!r} (best_model_metric): their scores "
                f"cannot be compared; resume with best_model_metric={saved!r}, or start a fresh run without resume."
            )

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the tracking list (keeps the saver's existing files) and the evaluator's best metric/epoch, from
        ``state_dict`` or from the best model's ``.json`` when that one is better (saved after the checkpoint)."""
        sidecar = self._sidecar()
        if sidecar is not None and sidecar.is_file() and sidecar.with_suffix("").is_file():
            try:
                newer = json.loads(sidecar.read_text())
            except (OSError, ValueError) as e:
                logger.warning("ignoring unreadable %s (%s)", sidecar, e)
                newer = {}

            def _rank(sd: Mapping[str, Any]) -> tuple[float, int]:
                best = max((_score(p) for p, _ in sd.get("saved", [])), default=float("-inf"))
                return best, int(sd.get("best_metric_epoch", -1))

            self._check_key_metric(newer, sidecar)
            if newer.get("saved") and _rank(newer) > _rank(state_dict):
                logger.info(
                    "%s is newer than the checkpoint (best %s at epoch %s): kept as the best so far",
                    sidecar.with_suffix(""), newer.get("best_metric", newer["saved"][0][0]), newer.get("best_metric_epoch"),
                )  # fmt: skip
                state_dict = newer
        self._check_key_metric(state_dict, "the checkpoint")
        self._ckpt.load_state_dict({"_saved": [(_score(p), f) for p, f in state_dict.get("saved", [])]})
        st = getattr(self._evaluator, "state", None)
        if st is not None and "best_metric" in state_dict:
            st.best_metric = _score(state_dict["best_metric"])
            st.best_metric_epoch = int(state_dict.get("best_metric_epoch", -1))


# the keys MONAI/ignite checkpoints keep a network's state dict under (``key`` is tried first)
STATE_DICT_KEYS = ("model", "network", "state_dict", "net", "network_weights")


def load_checkpoint(
    network: torch.nn.Module, path: str | os.PathLike, key: str | None = "model", map_location: Any = "cpu", strict: bool = True
) -> torch.nn.Module:
    """Load network weights from a MONAI/ignite checkpoint file (``{key: state_dict, ...}`` or a bare state dict).

    The state dict is taken from ``key``, else from the first of :data:`STATE_DICT_KEYS` holding one, else the
    file is a bare state dict (possibly with ignite's ``"checkpointer"`` bookkeeping entry beside the tensors).
    Loaded with ``weights_only=True``. Used by evaluation/inference configs before anything is written, so a
    missing checkpoint stops the bundle with a clear message instead of half-written outputs.
    ``DistributedDataParallel``/``DataParallel`` wrappers are unwrapped.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message says how to produce it).
        KeyError: the file holds no state dict.
        RuntimeError: the file cannot be read by ``torch.load`` (not a checkpoint, truncated), or the state dict
            does not fit ``network`` (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist: train the bundle first (configs/train.json writes "
            "<output_dir>/models/model.pt) or point ckpt_path / output_dir at an existing one."
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a text file gave "KeyError: 101", a truncated one a zip error: neither named the file
        reason = (str(e).splitlines() or [""])[0]
        raise RuntimeError(
            f"checkpoint {str(path)!r} cannot be read as a PyTorch checkpoint ({type(e).__name__}: {reason}): is it "
            "a complete file written by torch.save (e.g. <output_dir>/models/model.pt)?"
        ) from e
    if isinstance(state, Mapping):
        keys = ([key] if key is not None else []) + [k for k in STATE_DICT_KEYS if k != key]
        found = next((k for k in keys if isinstance(state.get(k), Mapping)), None)
        if found is not None:
            state = state[found]
        else:
            tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
            if not tensors:
                raise KeyError(
                    f"checkpoint {str(path)!r} has no state dict under {keys} and no tensors (entries: {sorted(state)})."
                )
            state = tensors
    else:
        raise KeyError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a state dict.")
    module = network.module if isinstance(network, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else network
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:  # missing / unexpected keys, shape mismatches: name the file and the likely cause
        raise RuntimeError(
            f"checkpoint {str(path)!r} does not fit the network {type(module).__name__}: run with the network_def "
            f"(and num_classes) it was trained with ({str(e).splitlines()[0]} ...)"
        ) from e
    logger.info("loaded weights from %s", path)
    return network


def compile_prepare_batch(
    batchdata: dict[str, torch.Tensor] | torch.Tensor | Sequence[torch.Tensor],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> Any:
    """``monai.engines.default_prepare_batch`` returning plain tensors: the ``prepare_batch`` of a MONAI engine built
    with ``compile=True``.

    MONAI 1.6.1's ``SupervisedTrainer(compile=True)`` converts MetaTensor inputs to tensors for the compiled network
    and rebuilds MetaTensors from the batch's metadata after the step; for a collated batch of more than one image
    whose metadata hold ``original_channel_dim`` (one value per image) that rebuild fails with "Boolean value of Tensor
    with more than one value is ambiguous". A batch of plain tensors skips it; the network sees the same values.

    Args:
        batchdata: the collated batch, as for ``default_prepare_batch``.
        device: device to move the tensors to.
        non_blocking: non-blocking copies.
        kwargs: passed to ``Tensor.to``.

    Returns:
        ``default_prepare_batch``'s result with every MetaTensor replaced by a plain tensor.
    """
    from monai.engines.utils import default_prepare_batch

    prepared = default_prepare_batch(batchdata, device=device, non_blocking=non_blocking, **kwargs)
    if isinstance(prepared, torch.Tensor):  # a batch of GAN "reals" comes back alone, not as a pair
        return prepared.as_tensor() if isinstance(prepared, MetaTensor) else prepared
    return tuple(t.as_tensor() if isinstance(t, MetaTensor) else t for t in prepared)


class CompiledModule(torch.nn.Module):
    """``torch.compile(module)`` for a network used outside MONAI's engines, fed plain tensors, whose state stays the
    original module's (:func:`maybe_compile` builds it from the bundle settings).

    - Calls run the compiled module with every ``MetaTensor`` argument turned into a plain tensor first (outputs are
      plain tensors): with torch 2.13 / MONAI 1.6.1 a compiled module called on a collated MetaTensor batch fails
      (``aot_eager``: "Multiple dispatch failed for 'torch._ops.aten.convolution.default'"), as MONAI's compiled
      engines do without :func:`compile_prepare_batch`.
    - The original module is the only registered child (``module``), so ``.to()``, ``.eval()``, ``.train()``,
      ``.parameters()`` and ``.training`` act on it (``training`` is the original module's flag), and
      ``state_dict()`` / ``load_state_dict()`` are the original module's, with its keys (no ``module.`` or
      ``_orig_mod.`` prefix): checkpoints load either way. Other attributes not found on the wrapper are looked up on
      the original module.

    Args:
        module: the network (left unchanged; weights loaded into it later are used by the compiled calls).
        compile_kwargs: keyword arguments of ``torch.compile`` (e.g. ``backend="aot_eager"``).
    """

    def __init__(self, module: torch.nn.Module, **compile_kwargs: Any) -> None:
        super().__init__()
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"CompiledModule needs a torch.nn.Module, got {type(module).__name__}.")
        self.module = module
        self.compile_kwargs = dict(compile_kwargs)
        # not registered as a child: it holds ``module`` again (as ``_orig_mod``) and would add prefixed state_dict keys
        object.__setattr__(self, "compiled", torch.compile(module, **compile_kwargs))

    @property
    def training(self) -> bool:  # type: ignore[override]
        """The original module's mode (as ``torch.compile``'s ``OptimizedModule`` does): a MONAI engine that compiled
        the same module itself and switched it to ``eval()`` leaves no stale ``training`` flag here."""
        module = self.__dict__.get("_modules", {}).get("module")
        return True if module is None else module.training

    @training.setter
    def training(self, value: bool) -> None:
        module = self.__dict__.get("_modules", {}).get("module")
        if module is not None:  # nn.Module.__init__ sets the default before ``module`` exists
            module.training = value

    @staticmethod
    def _plain(x: Any) -> Any:
        return x.as_tensor() if isinstance(x, MetaTensor) else x

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args = tuple(self._plain(a) for a in args)
        kwargs = {k: self._plain(v) for k, v in kwargs.items()}
        return self.compiled(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # the original module's keys
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":  # not set yet (during __init__)
                raise
            return getattr(self._modules["module"], name)

    def extra_repr(self) -> str:
        return f"compile_kwargs={self.compile_kwargs!r}"


def maybe_compile(
    module: torch.nn.Module, compile: Any = False, compile_kwargs: Any = None
) -> torch.nn.Module:
    """The network to use outside MONAI's engines under the bundle settings ``compile`` / ``compile_kwargs``: a
    :class:`CompiledModule` of ``module`` when ``compile`` is true, else ``module`` itself.

    The bundle configs pass ``@network`` through this function for the rotation-robustness evaluator and the WSI slide
    inference, which are not MONAI engines (MONAI's ``compile=True`` option does not reach them); checkpoints keep
    loading into the plain ``@network`` (the compiled calls use its current weights).

    Args:
        module: the network.
        compile: the ``compile`` setting (a bool, or text such as ``"true"`` from a command line; see
            :func:`monai_gmr.utils.as_bool`).
        compile_kwargs: the ``compile_kwargs`` setting: keyword arguments of ``torch.compile`` (a mapping with string
            keys, or ``None``; see :func:`monai_gmr.utils.keyword_args`).

    Raises:
        ValueError: ``compile`` is not a boolean or ``compile_kwargs`` not such a mapping (the message names the
            setting). ``compile_kwargs`` is checked when ``compile`` is false too.
    """
    from monai_gmr.utils import as_bool, keyword_args

    on = as_bool(compile, "compile")
    kwargs = keyword_args(compile_kwargs, "compile_kwargs")
    if not on:
        return module
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    logger.info("running %s through torch.compile(%s)", type(module).__name__, shown)
    return CompiledModule(module, **kwargs)


#: default of :func:`check_training_settings`'s bundle-specific settings: not given, not checked
_NOT_GIVEN: Any = object()


def check_training_settings(
    *,
    epochs: Any,
    epoch_length: Any,
    val_interval: Any,
    ckpt_interval: Any,
    log_interval: Any,
    learning_rate: Any,
    weight_decay: Any,
    batch_size: Any,
    amp: Any,
    compile: Any = False,
    compile_kwargs: Any = None,
    resume: Any = False,
    augment_rotation: Any = False,
    num_workers: Any = 0,
    val_batch_size: Any = _NOT_GIVEN,
    crops_per_image: Any = _NOT_GIVEN,
    cache_rate: Any = _NOT_GIVEN,
    sw_padding: Any = _NOT_GIVEN,
    val_rotation: Any = False,
) -> None:
    """Refuse, by setting name, the training settings of a bundle's ``train.json`` before any data are generated or
    read.

    The configs read these settings when the optimizer, the data loaders, the handlers and the trainer are built,
    which comes after the synthetic data were generated (the nuclei bundle builds its network after the data, which
    keeps seeded results identical): ``--batch_size 0`` or ``--learning_rate abc`` was refused only after the
    data generation (6 synthetic slides of 4096 x 4096 pixels by default in the WSI bundle). Each value is read by
    the same reader the config uses when it builds the run (:func:`monai_gmr.utils.positive_int`,
    :func:`monai_gmr.utils.positive_float`, :func:`monai_gmr.utils.fraction`, :func:`monai_gmr.utils.as_bool`,
    :func:`monai_gmr.utils.keyword_args`), so this check accepts exactly what the run accepts (``epoch_length
    null``, ``--learning_rate 1e-3`` given as text, ``--amp false``).

    Args:
        epochs: ``epochs`` (an integer >= 1).
        epoch_length: ``epoch_length`` (an integer >= 1, or ``None`` / ``"null"``: the whole data loader).
        val_interval: ``val_interval`` (an integer >= 1, in epochs).
        ckpt_interval: ``ckpt_interval`` (an integer >= 1, in epochs).
        log_interval: ``log_interval`` (an integer >= 0, in iterations; 0 turns the iteration lines off).
        learning_rate: ``learning_rate`` (a finite number > 0).
        weight_decay: ``weight_decay`` (a finite number >= 0).
        batch_size: ``batch_size`` (an integer >= 1).
        amp: ``amp`` (a switch).
        compile: ``compile`` (a switch).
        compile_kwargs: ``compile_kwargs`` (a mapping with string keys, or ``None``).
        resume: ``resume`` (a switch).
        augment_rotation: ``augment_rotation`` (a switch).
        num_workers: ``num_workers`` (an integer >= 0).
        val_batch_size: ``val_batch_size`` (an integer >= 1), where the bundle has it (WSI).
        crops_per_image: ``crops_per_image`` (an integer >= 1), where the bundle has it (nuclei).
        cache_rate: ``cache_rate`` (a number in ``[0, 1]``), where the bundle has it (nuclei).
        sw_padding: ``sw_padding`` (one of :data:`monai_gmr.functional.PAD_MODES`), where the bundle has it
            (nuclei).
        val_rotation: ``val_rotation`` (a switch: the rotated validation).

    Raises:
        ValueError: any of them is invalid; the message names the setting.
    """
    positive_int(epochs, "epochs")
    positive_int(epoch_length, "epoch_length", allow_none=True)
    positive_int(val_interval, "val_interval")
    positive_int(ckpt_interval, "ckpt_interval")
    positive_int(log_interval, "log_interval", allow_zero=True)
    positive_float(learning_rate, "learning_rate")
    positive_float(weight_decay, "weight_decay", allow_zero=True)
    positive_int(batch_size, "batch_size")
    as_bool(amp, "amp")
    as_bool(compile, "compile")
    keyword_args(compile_kwargs, "compile_kwargs")
    as_bool(resume, "resume")
    as_bool(augment_rotation, "augment_rotation")
    as_bool(val_rotation, "val_rotation")
    positive_int(num_workers, "num_workers", allow_zero=True)
    if val_batch_size is not _NOT_GIVEN:
        positive_int(val_batch_size, "val_batch_size")
    if crops_per_image is not _NOT_GIVEN:
        positive_int(crops_per_image, "crops_per_image")
    if cache_rate is not _NOT_GIVEN:
        fraction(cache_rate, "cache_rate", include_one=True)
    if sw_padding is not _NOT_GIVEN:
        from monai_gmr.functional import PAD_MODES

        one_of(sw_padding, "sw_padding", PAD_MODES)


def check_robustness_settings(
    angles: Any,
    flips: Any,
    region: Any = "valid",
    padding_mode: Any = "reflection",
    metrics: Any = None,
    task: str = "segmentation",
    prefix: str = "robustness",
    instance_metrics: bool = True,
) -> None:
    """Refuse, by setting name, the rotation-robustness settings of a bundle's ``evaluate.json`` before anything runs.

    The robustness evaluator reads them only when it starts, after the validation run over the whole evaluation
    split: ``--robustness_region valdi``, ``--robustness_angles "[]"``, ``--robustness_flips "['x']"`` or
    ``--robustness_metrics "['acc']"`` stopped the run only then, with messages that named ``region`` / ``angles`` /
    ``axis`` / ``metrics`` but no bundle setting.

    Args:
        angles: ``robustness_angles`` (degrees; one number or a non-empty list).
        flips: ``robustness_flips`` (``"h"``, ``"v"``; may be empty).
        region: ``robustness_region`` (``"valid"`` or ``"disk"``).
        padding_mode: ``robustness_padding`` (``"zeros"``, ``"border"`` or ``"reflection"``).
        metrics: ``robustness_metrics`` (``None``: the task's default metrics, not checked).
        task: ``"segmentation"`` or ``"classification"``, for the metrics allowed.
        prefix: the settings' common prefix in the messages: ``"robustness"`` (``evaluate.json``) or
            ``"val_rotation"`` (the rotated validation of ``train.json``).
        instance_metrics: whether the instance metrics (AJI, PQ) are allowed for segmentation (the rotated
            validation has no instance labels).

    Raises:
        ValueError: any of them is invalid; the message names the setting.
    """
    from monai_gmr.evaluation.robustness import CLS_METRICS, INSTANCE_METRICS, REGIONS, SEG_METRICS
    from monai_gmr.functional.rotation import make_geometries

    if region not in REGIONS:
        raise ValueError(f"{prefix}_region must be one of {REGIONS}, got {region!r}.")
    if metrics is not None:
        allowed = (SEG_METRICS + (INSTANCE_METRICS if instance_metrics else ())) if task == "segmentation" else CLS_METRICS
        given = [metrics] if isinstance(metrics, str) else metrics
        if not isinstance(given, (list, tuple)) or not given or any(m not in allowed for m in given):
            raise ValueError(f"{prefix}_metrics must be a non-empty list of {allowed}, got {metrics!r}.")
    try:
        make_geometries(angles, flips, 2, None, product=False, padding_mode=padding_mode)
    except ValueError as e:
        raise ValueError(
            f"{prefix}_angles={angles!r} / {prefix}_flips={flips!r} / {prefix}_padding={padding_mode!r}: {e}"
        ) from e


#: summary values of the rotated validation that can choose the best model (higher is better for each)
ROTATION_KEY_STATS = ("mean", "min")


def check_key_metric_setting(
    name: Any,
    metric_names: Sequence[str],
    val_rotation: bool = False,
    rotation_metrics: Any = None,
    task: str = "segmentation",
    prefix: str = "val_rotation",
    setting: str = "best_model_metric",
) -> tuple[str, str] | None:
    """Refuse, by setting name, a validation metric that cannot choose the best model, before anything runs.

    The bundles' ``train.json`` keep the best model (``model.pt``) by ``best_model_metric``: one of the validation's
    own metrics (``metric_names``, e.g. ``val_mean_dice``, ``val_mean_iou``), or, with the rotated validation on
    (``val_rotation``), the mean or the minimum over its angles of one of its metrics, ``{prefix}_{metric}_mean`` /
    ``{prefix}_{metric}_min`` (e.g. ``val_rotation_dice_min``: the model whose worst rotation scores best; flipped
    views are not in them, see :meth:`~monai_gmr.evaluation.RobustnessResult.summary`).
    ``{prefix}_{metric}_std`` is refused: a lower spread is better, while the best model is the highest score.

    Args:
        name: the ``best_model_metric`` setting.
        metric_names: names of the validation's key and additional metrics.
        val_rotation: whether the rotated validation runs (the ``val_rotation`` switch).
        rotation_metrics: its metrics (``val_rotation_metrics``; ``None``: the task's defaults).
        task: ``"segmentation"`` or ``"classification"``, for the default rotation metrics.
        prefix: the rotated validation's metric-name prefix.
        setting: the setting's name in the messages.

    Returns:
        ``None`` for a metric of the validation itself, ``(metric, stat)`` for a rotated one.

    Raises:
        ValueError: the name is not a metric the run computes, or one that cannot choose the best model.
    """
    from monai_gmr.evaluation.robustness import CLS_METRICS, SEG_METRICS

    if rotation_metrics is None:
        rotation_metrics = SEG_METRICS if task == "segmentation" else CLS_METRICS
    rotation_metrics = [rotation_metrics] if isinstance(rotation_metrics, str) else list(rotation_metrics)
    rotated = [f"{prefix}_{m}_{stat}" for m in rotation_metrics for stat in ROTATION_KEY_STATS]
    if not isinstance(name, str):
        example = list(metric_names)[:1] or rotated[-1:]  # the plain metrics may be none (a rotated key metric only)
        eg = f", e.g. {example[0]!r}" if example else ""
        raise ValueError(f"{setting} must be the name of a validation metric{eg}, got {name!r}.")
    if name in metric_names:
        return None
    m = re.fullmatch(rf"{re.escape(prefix)}_(.+)_(mean|std|min)", name)
    if m is None:
        allowed = list(metric_names) + (rotated if val_rotation else [f"{prefix}_<metric>_{{mean|min}}"])
        raise ValueError(f"{setting} must be one of {allowed}, got {name!r}.")
    metric, stat = m.groups()
    if stat == "std":
        raise ValueError(
            f"{setting}={name!r} cannot choose the best model: a lower spread is better, while the best model is the "
            f"highest score; use {prefix}_{metric}_mean or {prefix}_{metric}_min."
        )
    if not val_rotation:
        raise ValueError(f"{setting}={name!r} is a metric of the rotated validation: add --{prefix} true.")
    if metric not in rotation_metrics:
        raise ValueError(
            f"{setting}={name!r}: the rotated validation does not compute {metric!r} ({prefix}_metrics is "
            f"{rotation_metrics!r}); add it there, or use one of {rotated}."
        )
    return metric, stat


def choose_key_metric(
    name: str,
    key_metric: Mapping[str, Any],
    additional_metrics: Mapping[str, Any] | None = None,
    rotation: Any = None,
    setting: str = "best_model_metric",
) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """The ``key_val_metric``, ``additional_metrics`` and rotation handlers of a validation evaluator whose best
    model is chosen by the metric ``name`` (see :func:`check_key_metric_setting`).

    MONAI keeps the evaluator's best metric and epoch, and a key-metric ``CheckpointSaver`` its best model, by the
    evaluator's key metric. ``name`` one of ``additional_metrics``: it becomes the key metric and the configured
    key metric an additional one. ``name`` a value of the rotated validation (``rotation``): the key metric is a
    :class:`~monai_gmr.evaluation.RotationRobustnessMetric` that runs the rotated evaluation itself, so ``rotation``
    is not returned among the handlers (it would evaluate twice); otherwise the handlers are ``[rotation]`` (or
    ``[]`` without it), for the evaluator's ``val_handlers`` ahead of the others.

    Args:
        name: the ``best_model_metric`` setting.
        key_metric: the configured key metric (``{name: metric}``).
        additional_metrics: the other validation metrics.
        rotation: the rotated validation's :class:`~monai_gmr.evaluation.RotationRobustnessHandler`, ``None`` when it
            is off.
        setting: the setting's name in the messages.

    Returns:
        ``(key_val_metric, additional_metrics, rotation_handlers)``.
    """
    from monai_gmr.evaluation import RotationRobustnessMetric

    additional = dict(additional_metrics or {})
    rotation_kwargs = getattr(rotation, "kwargs", {})
    chosen = check_key_metric_setting(
        name, [*key_metric, *additional], val_rotation=rotation is not None,
        rotation_metrics=rotation_kwargs.get("metrics"), task=rotation_kwargs.get("task", "segmentation"),
        prefix=getattr(rotation, "prefix", "val_rotation"), setting=setting,
    )  # fmt: skip
    handlers = [] if rotation is None else [rotation]
    if chosen is not None:
        return {name: RotationRobustnessMetric(rotation, *chosen)}, {**key_metric, **additional}, []
    if name in key_metric:
        return dict(key_metric), additional, handlers
    return {name: additional.pop(name)}, {**key_metric, **additional}, handlers


def check_tta_settings(angles: Any, flips: Any, padding_mode: Any = "zeros", task: str = "segmentation") -> None:
    """Refuse, by setting name, the rotation test-time augmentation settings of a bundle before anything runs.

    ``--tta_angles "[]"``, ``--tta_flips "['x']"`` or ``--tta_padding zero`` failed when the inferer was built, with
    messages of :class:`monai_gmr.inferers.RotationTTAInferer` that named ``angles`` / ``axis`` / ``padding_mode``
    but no bundle setting. They are checked whether ``tta`` is on or not, as the configs build the inferer either way.

    Args:
        angles: ``tta_angles`` (degrees; one number or a non-empty list).
        flips: ``tta_flips`` (``"h"``, ``"v"``; may be empty).
        padding_mode: ``tta_padding`` (``"zeros"``, ``"border"`` or ``"reflection"``).
        task: ``"segmentation"`` or ``"classification"``.

    Raises:
        ValueError: any of them is invalid; the message names the settings.
    """
    from monai_gmr.inferers import RotationTTAInferer

    try:
        RotationTTAInferer(None, angles=angles, flips=flips, padding_mode=padding_mode, task=task)
    except ValueError as e:
        raise ValueError(f"tta_angles={angles!r} / tta_flips={flips!r} / tta_padding={padding_mode!r}: {e}") from e


def summarize_evaluation(
    output_file: str | os.PathLike | None,
    evaluator: Any = None,
    robustness: Any = None,
    report_paths: Mapping[str, Any] | None = None,
    **info: Any,
) -> dict[str, Any]:
    """Collect an evaluation's results into one dict, log it as a table and write it as JSON (atomically).

    Args:
        output_file: JSON path (``None``: do not write). Written on the main process only.
        evaluator: a MONAI evaluator that has run (its ``state.metrics`` are reported).
        robustness: a :class:`monai_gmr.evaluation.RobustnessResult` (its ``summary()`` and flips are reported).
        report_paths: paths of the written robustness report files.
        info: extra JSON-serialisable entries (split, TTA settings, checkpoint, ...).

    Returns:
        The summary dict.
    """
    out: dict[str, Any] = dict(info)
    if evaluator is not None:
        out["metrics"] = {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, (int, float))}
    lines = []
    if robustness is not None:
        summ = robustness.summary()
        out["robustness"] = {
            "model_name": robustness.model_name,
            "n_images": robustness.n_images,
            "n_angles": len(robustness.angles),
            "summary": summ,
            "per_flip": robustness.per_flip,
            "seconds": round(float(robustness.seconds), 3),
        }
        head = f"{'metric':<8} {'at 0':>8} {'mean':>8} {'std':>8} {'min':>8} {'worst':>7}" + "".join(
            f" {'flip ' + f:>8}" for f in robustness.per_flip
        )
        lines.append(head)
        for m, s in summ.items():
            def f(v: Any) -> str:
                return "     n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:8.4f}"

            row = f"{m:<8} {f(s['at_0'])} {f(s['mean'])} {f(s['std'])} {f(s['min'])} {s['worst_angle'] if s['worst_angle'] is not None else 'n/a':>7}"
            row += "".join(f" {f(robustness.per_flip[fl].get(m))}" for fl in robustness.per_flip)
            lines.append(row)
    if report_paths:
        out["report"] = {k: str(v) for k, v in report_paths.items()}
    if "metrics" in out:
        logger.info("evaluation metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in out["metrics"].items()))
    if lines:
        out["table"] = "\n".join(lines)
        logger.info("rotation robustness (%d angles):\n%s", len(robustness.angles), out["table"])
    if output_file is not None and is_main_process():
        atomic_write_json(output_file, out)
        logger.info("evaluation summary written to %s", output_file)
    return out


def attach_handlers(engine: Any, handlers: Sequence[Any] | None) -> Any:
    """Attach ignite/MONAI handlers (objects with ``attach(engine)``; ``None`` entries skipped) and return ``engine``.

    Bundle configs use this for handlers that need the engine itself (e.g. a ``CheckpointSaver`` whose
    ``save_dict`` contains the trainer), which cannot be in the engine's own handler list without a circular
    reference.
    """
    for h in handlers or ():
        if h is not None:
            h.attach(engine)
    return engine


class EpochValidationHandler(ValidationHandler):
    """MONAI ``ValidationHandler`` (epoch level) that also validates after the last epoch.

    ``ValidationHandler(interval=N)`` validates at epochs N, 2N, ...; when ``max_epochs`` is not a multiple of N the
    final model is never validated (and a short run may end without any best-metric checkpoint). This handler
    fires at every N-th epoch *and* at the last epoch.

    Args:
        interval: validate every N epochs (>= 1).
        validator: the MONAI evaluator to run.
        exec_at_start: also validate before training (at the run's first epoch start, after any resume has restored
            the weights; a run resumed from its final checkpoint trains no epoch and so does not validate).
    """

    def __init__(self, interval: int, validator: Any = None, exec_at_start: bool = False) -> None:
        if int(interval) < 1:
            raise ValueError(f"interval must be >= 1, got {interval}.")
        super().__init__(interval=int(interval), validator=validator, epoch_level=True, exec_at_start=exec_at_start)

    def attach(self, engine: Any) -> None:
        """Register on the trainer ``engine``."""
        from ignite.engine import Events

        def _due(eng: Any, epoch: int) -> bool:
            return epoch % self.interval == 0 or epoch == eng.state.max_epochs

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=_due), self)
        if self.exec_at_start:
            # at the run's first EPOCH_STARTED, not at STARTED: a resume loader attached later also fires at STARTED
            # and must restore the weights (and the best-metric state) before this validation
            pending = {"run": False}
            engine.add_event_handler(Events.STARTED, lambda _e: pending.update(run=True))

            def _at_start(eng: Any) -> None:
                if pending["run"]:
                    pending["run"] = False
                    if self.validator is None:
                        raise RuntimeError("EpochValidationHandler: set validator before training.")
                    self.validator.run(eng.state.epoch - 1)  # the epoch the weights come from, as at STARTED

            engine.add_event_handler(Events.EPOCH_STARTED, _at_start)


# --------------------------------------------------------------------------------------------------------------------
# distributed helpers
# --------------------------------------------------------------------------------------------------------------------
def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main_process() -> bool:
    """``True`` outside distributed runs and on global rank 0."""
    return not _dist_ready() or torch.distributed.get_rank() == 0


def rank_seed(seed: int) -> int:
    """``seed`` plus the process's global rank (``seed`` itself outside distributed runs and on rank 0).

    For ``set_determinism`` in multi-process training: with the same seed on every rank, the random augmentations
    (crop positions, rotation angles, flips, intensity changes) and the data loader workers' seeds were drawn from
    the same stream on every rank, so the k-th sample of each rank's shard got the same crop and rotation as on
    rank 0, and a global batch of N processes carried 1/N of the augmentation variety of a one-process run. The
    initial weights stay rank 0's (``DistributedDataParallel`` broadcasts them) and ``DistributedSampler`` shuffles
    with its own seed, so every rank still starts from the same model and shards the same permutation.
    """
    return int(seed) + (torch.distributed.get_rank() if _dist_ready() else 0)


def distributed_sampler(
    dataset: torch.utils.data.Dataset,
    split: str,
    even_divisible: bool = True,
    shuffle: bool = True,
    allow_empty: bool = False,
    **kwargs: Any,
) -> torch.utils.data.Sampler:
    """MONAI ``DistributedSampler`` of one split of a multi-process run, refusing by name a split it cannot shard.

    With ``even_divisible=False`` (validation: every item once) MONAI needs at least as many items as processes and
    said only "the dataset length is less than the number of participating ranks", without naming the split, its
    size or the number of processes.

    Args:
        dataset: the split's dataset.
        split: its name in messages (e.g. ``"validation"``).
        even_divisible: MONAI's switch: ``True`` repeats a few items so that every process gets as many.
        shuffle: shuffle the items (with the sampler's seed).
        allow_empty: with ``even_divisible=False``, accept fewer items than processes: process ``r`` gets item ``r``
            (after the shuffle, if any) and the processes beyond the last item get none (an empty shard: a MONAI
            engine over an empty data loader skips its run with a warning). For inference, where every item is
            processed once and no process waits on another's batches; training and validation (collective metric
            reductions) keep the refusal.
        kwargs: further arguments of ``monai.data.DistributedSampler`` (``num_replicas``, ``rank``, ``seed``, ...).

    ``even_divisible``, ``shuffle`` and ``allow_empty`` also take the text forms of :func:`monai_gmr.utils.as_bool`
    (``"false"`` from a command line).

    Raises:
        ValueError: a switch given as other text (naming it); ``even_divisible=False``, not ``allow_empty``, and
            ``dataset`` has fewer items than processes (the message names the split and both numbers).
    """
    from monai.data import DistributedSampler

    # text from a command line (--validate#sampler#even_divisible false) is true: an item was repeated (counted twice)
    even_divisible = as_bool(even_divisible, "even_divisible")
    shuffle = as_bool(shuffle, "shuffle")
    allow_empty = as_bool(allow_empty, "allow_empty")
    replicas = kwargs.get("num_replicas")
    if replicas is None and _dist_ready():
        replicas = torch.distributed.get_world_size()
    n = len(dataset)  # type: ignore[arg-type]  # map-style datasets (MONAI's) have a length
    if not even_divisible and allow_empty and replicas is not None and n < int(replicas):
        # MONAI refuses this case; its even split (every process one item, the missing ones repeated) cut down to
        # the items themselves: indices[rank:n:replicas] is [rank] for rank < n, else empty (torch's __iter__)
        sampler = DistributedSampler(dataset, even_divisible=True, shuffle=shuffle, **kwargs)
        sampler.total_size = n
        sampler.num_samples = int(sampler.rank < n)
        return sampler
    if not even_divisible and replicas is not None and n < int(replicas):
        raise ValueError(
            f"the {split} split has {n} item(s) but {int(replicas)} processes take part: each process needs at least "
            f"one {split} item; run with at most {n} process(es) (--nproc_per_node) or give the {split} split more data."
        )
    return DistributedSampler(dataset, even_divisible=even_divisible, shuffle=shuffle, **kwargs)


def run_on_rank0(
    fn: Callable[..., Any], *args: Any, barrier_before: bool = False, barrier_after: bool = False, **kwargs: Any
) -> Any:
    """Call ``fn(*args, **kwargs)`` on rank 0 only, with optional barriers of all ranks around it.

    For steps of a multi-process run that must happen once: removing an earlier run's outputs before any rank
    writes (``barrier_after``), reporting on the outputs of all ranks once they are written (``barrier_before``).
    Outside a distributed run (or with one process) this is just ``fn(*args, **kwargs)``.

    A rank that fails before a barrier never reaches it: the others wait there until the launcher stops them
    (``torchrun`` stops every process as soon as one exits with an error) or the process group's timeout ends.

    Returns:
        ``fn``'s result on rank 0, ``None`` on the other ranks.
    """
    if not _dist_ready() or torch.distributed.get_world_size() == 1:
        return fn(*args, **kwargs)
    if barrier_before:
        torch.distributed.barrier()
    result = fn(*args, **kwargs) if torch.distributed.get_rank() == 0 else None
    if barrier_after:
        torch.distributed.barrier()
    return result


def run_on_rank0_first(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` on rank 0 first, then (after a barrier) on the other ranks.

    For idempotent set-up steps that write files (e.g. generating a synthetic dataset): rank 0 creates them and
    the other ranks then find them ready. Outside a distributed run this is just ``fn(*args, **kwargs)``.
    """
    if not _dist_ready() or torch.distributed.get_world_size() == 1:
        return fn(*args, **kwargs)
    result = None
    if torch.distributed.get_rank() == 0:
        result = fn(*args, **kwargs)
    torch.distributed.barrier()
    if torch.distributed.get_rank() != 0:
        result = fn(*args, **kwargs)
    return result


# --------------------------------------------------------------------------------------------------------------------
# progress display and run summary
# --------------------------------------------------------------------------------------------------------------------
def _fmt_seconds(s: float) -> str:
    s = int(round(max(s, 0.0)))
    return f"{s // 3600:d}:{(s % 3600) // 60:02d}:{s % 60:02d}"


def _default_loss(output: Any) -> float | None:
    """Loss of a MONAI engine output (decollated list of dicts, or a dict), or ``None``."""
    item = output[0] if isinstance(output, (list, tuple)) and output else output
    if isinstance(item, Mapping) and "loss" in item:
        loss = item["loss"]
        return float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
    return None


class ProgressLogger:
    """Log-friendly progress display for long runs, plus a JSON run summary.

    Every ``interval`` iterations it logs ``epoch e/E, iteration i/N (p%), loss, elapsed, ETA``; after every
    epoch the epoch time; at the end a summary (epochs, iterations, wall time, where the run started — useful
    to check a resumed run —, best validation metric). tqdm-style bars are not used because they garble log
    files and are not installed with MONAI.

    Args:
        interval: log every N iterations (``0`` disables iteration lines).
        evaluator: optional validation engine; its ``state.best_metric`` / ``best_metric_epoch`` (MONAI
            ``Workflow``) go into the summary.
        summary_file: optional JSON path written atomically on completion (main process only). A summary that
            an earlier run left there is removed when a run starts from scratch (not resumed), so that a run that
            fails or is killed does not leave the earlier run's summary beside its own checkpoints.
        loss_transform: maps ``engine.state.output`` to a float loss (default: the ``"loss"`` of MONAI's
            decollated output).
        name: logger name (default: the engine's logger).
    """

    def __init__(
        self,
        interval: int = 10,
        evaluator: Any = None,
        summary_file: str | os.PathLike | None = None,
        loss_transform: Callable[[Any], float | None] = _default_loss,
        name: str | None = None,
    ) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0, got {interval}.")
        self.interval = int(interval)
        self.evaluator = evaluator
        self.summary_file = summary_file
        self.loss_transform = loss_transform
        self.logger = logging.getLogger(name) if name else None
        self.summary: dict[str, Any] = {}
        self._t0 = 0.0
        self._t_epoch = 0.0
        self._start_iteration = 0
        self._start_epoch: int | None = None

    def attach(self, engine: Any) -> None:
        """Register on ``engine`` (an ignite ``Engine``)."""
        from ignite.engine import Events

        if self.logger is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        if self.interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Any) -> None:
        self._t0 = time.perf_counter()
        self._start_epoch = None
        self._start_iteration = 0

    def _epoch_started(self, engine: Any) -> None:
        self._t_epoch = time.perf_counter()
        if self._start_epoch is None:  # after any CheckpointLoader (STARTED) has restored the state
            self._start_epoch = engine.state.epoch - 1
            self._start_iteration = engine.state.iteration
            if self._start_iteration > 0:
                self.logger.info(  # type: ignore[union-attr]
                    "continuing from epoch %d, iteration %d", self._start_epoch, self._start_iteration
                )
            elif self.summary_file is not None and Path(self.summary_file).is_file() and is_main_process():
                os.remove(self.summary_file)  # an earlier run's: it described other checkpoints than this run's
                self.logger.warning(  # type: ignore[union-attr]
                    "removed the run summary %s of an earlier run (this run starts from scratch)", self.summary_file
                )

    def _iteration(self, engine: Any) -> None:
        st = engine.state
        epoch_len = st.epoch_length or 0
        total = (st.max_epochs or 0) * epoch_len
        done = st.iteration - self._start_iteration
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / max(done, 1) * max(total - st.iteration, 0)
        it_in_epoch = (st.iteration - 1) % max(epoch_len, 1) + 1
        loss = self.loss_transform(st.output)
        loss_txt = "" if loss is None else f", loss {loss:.4f}"
        pct = 100.0 * st.iteration / total if total else 0.0
        self.logger.info(  # type: ignore[union-attr]
            f"epoch {st.epoch}/{st.max_epochs}, iteration {it_in_epoch}/{epoch_len} ({pct:.0f}% of run){loss_txt}, "
            f"elapsed {_fmt_seconds(elapsed)}, ETA {_fmt_seconds(eta)}"
        )

    def _epoch_completed(self, engine: Any) -> None:
        self.logger.info(  # type: ignore[union-attr]
            f"epoch {engine.state.epoch}/{engine.state.max_epochs} done in {time.perf_counter() - self._t_epoch:.1f}s"
        )

    def _completed(self, engine: Any) -> None:
        st = engine.state
        if self._start_epoch is None:  # no epoch ran: resumed from the final checkpoint
            self._start_epoch, self._start_iteration = int(st.epoch), int(st.iteration)
        summary: dict[str, Any] = {
            "epochs_completed": int(st.epoch),
            "max_epochs": int(st.max_epochs or 0),
            "iterations_completed": int(st.iteration),
            "start_epoch": int(self._start_epoch or 0),
            "start_iteration": int(self._start_iteration),
            "resumed": bool(self._start_iteration > 0),
            "wall_time_s": round(time.perf_counter() - self._t0, 3),
            "final_loss": self.loss_transform(st.output) if st.output is not None else None,
        }
        ev_state = getattr(self.evaluator, "state", None)
        if ev_state is not None and getattr(ev_state, "best_metric", -1) not in (None, -1):
            summary["best_metric"] = float(ev_state.best_metric)
            summary["best_metric_epoch"] = int(getattr(ev_state, "best_metric_epoch", -1))
            summary["key_metric_name"] = getattr(ev_state, "key_metric_name", None)
        self.summary = summary
        self.logger.info(  # type: ignore[union-attr]
            "run summary: "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items())
        )
        if self.summary_file is not None and is_main_process():
            atomic_write_json(self.summary_file, summary)


# --------------------------------------------------------------------------------------------------------------------
# atomic image writers (for SaveImage / SaveImaged ``writer=``)
# --------------------------------------------------------------------------------------------------------------------
def _full_suffix(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    for ext in (".nii.gz", ".ome.tif", ".ome.tiff"):
        if name.endswith(ext):
            return Path(path).name[-len(ext) :]
    return Path(path).suffix


def _check_integer_range(data: Any, dtype: Any, filename: str | os.PathLike) -> None:
    """Refuse values that an integer ``dtype`` cannot hold: the writers cast with ``astype``, which wraps them
    silently (instance id 65536 of a ``uint16`` mask became 0, i.e. background, and 65537 merged with nucleus 1).

    Raises:
        ValueError: ``data`` holds a value below or above the range of ``dtype`` (the message names the file).
    """
    if dtype is None or data is None or not hasattr(data, "dtype"):
        return
    dt = np.dtype(dtype)
    if dt.kind not in "iu" or data.size == 0:
        return
    arr = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if arr.dtype.kind not in "iufb":
        return
    lo, hi = arr.min(), arr.max()
    info = np.iinfo(dt)
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError(f"{filename}: the data holds NaN, which the output dtype {dt.name} cannot hold.")
    if lo < info.min or hi > info.max:
        raise ValueError(
            f"{filename}: values {lo}..{hi} do not fit the output dtype {dt.name} ({info.min}..{info.max}); "
            "they would wrap around (e.g. instance ids above 65535 in a uint16 mask): choose a wider output_dtype."
        )


class _AtomicWriteMixin:
    """Write to a temporary file beside the target and rename it into place (nothing half-written).

    Data that an integer output dtype cannot hold is refused before anything is written (without a ``scale``, the
    writers cast with ``astype``, which wraps out-of-range values around silently).
    """

    def write(self, filename: str | os.PathLike, verbose: bool = False, **kwargs: Any) -> None:
        if not getattr(self, "scale", None):  # PILWriter's scale clips to [0, 1] first: nothing can wrap then
            _check_integer_range(getattr(self, "data_obj", None), getattr(self, "output_dtype", None), filename)
        with atomic_path(filename, suffix=_full_suffix(filename)) as tmp:
            super().write(str(tmp), verbose=False, **kwargs)  # type: ignore[misc]
        if verbose:
            logger.info("file written: %s.", filename)


class AtomicPILWriter(_AtomicWriteMixin, PILWriter):
    """``monai.data.PILWriter`` (PNG/JPEG/BMP ...) writing atomically."""


class AtomicITKWriter(_AtomicWriteMixin, ITKWriter):
    """``monai.data.ITKWriter`` (TIFF, NRRD, MHA, NIfTI ...) writing atomically."""


class AtomicNibabelWriter(_AtomicWriteMixin, NibabelWriter):
    """``monai.data.NibabelWriter`` (NIfTI) writing atomically."""


def atomic_writer_for(ext: str) -> type:
    """Atomic writer class for an output extension (2D ``.png/.jpg/.bmp/.tif(f)`` -> PIL (float32 TIFF included),
    ``.nii(.gz)`` -> nibabel, else ITK)."""
    ext = ext.lower() if ext.startswith(".") else f".{ext.lower()}"
    if ext in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        return AtomicPILWriter
    if ext in (".nii", ".nii.gz"):
        return AtomicNibabelWriter
    return AtomicITKWriter


# --------------------------------------------------------------------------------------------------------------------
# instance post-processing
# --------------------------------------------------------------------------------------------------------------------
def _nearest_seed(seeds: np.ndarray, area: np.ndarray) -> np.ndarray:
    """The id of the nearest seed (exact Euclidean distance) of every pixel, ties broken without the scan order.

    ``scipy.ndimage.distance_transform_edt`` gives one of several equidistant seeds by its scan order, so a
    boundary pixel halfway between two nuclei joined the upper/left one and the partition of a rotated or flipped
    prediction was not the rotated partition. Here the transform runs in every orientation of the grid (2D: the 8
    rotations/flips; 3D: the 8 axis flips), each result mapped back; a pixel takes, among the equidistant seeds
    found, the one with the largest ``area`` (pixels), then the smallest id (the only scan-order-dependent case:
    equidistant seeds of equal area).

    Args:
        seeds: integer seed ids ``(H, W[, D])`` (0 = no seed; at least one seed).
        area: ``area[i]`` = size of seed ``i`` (length > max id).

    Returns:
        array of ``seeds``' shape with the chosen seed id of every pixel.
    """
    from scipy import ndimage

    area = np.asarray(area, dtype=np.int64)
    m = len(area)
    transposes = (False, True) if seeds.ndim == 2 else (False,)
    best = np.full(seeds.shape, -1, dtype=np.int64)
    for flips in np.ndindex(*(2,) * seeds.ndim):
        axes = tuple(a for a, f in enumerate(flips) if f)
        for transpose in transposes:
            s = np.flip(seeds, axes) if axes else seeds
            s = np.ascontiguousarray(s.T if transpose else s)
            _, idx = ndimage.distance_transform_edt(s == 0, return_indices=True)
            lab = s[tuple(idx)]
            lab = lab.T if transpose else lab
            lab = (np.flip(lab, axes) if axes else lab).astype(np.int64)
            best = np.maximum(best, area[lab] * m + (m - 1 - lab))  # larger area first, then the smaller id
    return (m - 1 - best % m).astype(seeds.dtype)


def _watershed_markers(dist: np.ndarray, blobs: np.ndarray, min_distance: int) -> np.ndarray:
    """Markers of :func:`instance_from_semantic`'s watershed: the peaks of the distance map ``dist`` (pixels not
    lower than any pixel of their own blob within the (2 min_distance + 1)-wide square/cube around them), peaks of
    one blob within Chebyshev distance ``min_distance`` of each other chained into one marker.

    scikit-image's ``peak_local_max`` keeps one peak of a plateau, or of peaks closer than ``min_distance``, by scan
    order (the first one listed): the marker set of a rotated map was not the rotated marker set. Keeping every peak
    and merging close ones depends only on the geometry, so it commutes with the rotations and flips of the grid.
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    md = max(int(min_distance), 1)
    size = 2 * md + 1
    peaks = np.zeros(dist.shape, dtype=bool)
    for b, box in enumerate(ndimage.find_objects(blobs), start=1):
        if box is None:
            continue
        # the box grown by the window's half-width, so every window around a blob pixel lies inside it
        big = tuple(slice(max(s.start - md, 0), min(s.stop + md, n)) for s, n in zip(box, dist.shape))
        own = blobs[big] == b
        local = np.where(own, dist[big], -1.0)  # other blobs and background never dominate a peak
        peaks[big] |= own & (local >= ndimage.maximum_filter(local, size=size, mode="constant", cval=-1.0))
    coords = np.argwhere(peaks)
    group = np.arange(len(coords))  # union-find over peaks of one blob within min_distance (Chebyshev)

    def root(i: int) -> int:
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    if len(coords):
        owner = blobs[tuple(coords.T)]
        for i, j in cKDTree(coords).query_pairs(r=md, p=np.inf):
            if owner[i] == owner[j]:
                group[root(i)] = root(j)
    roots = np.array([root(i) for i in range(len(coords))], dtype=np.int64)
    _, ids = np.unique(roots, return_inverse=True)
    markers = np.zeros(dist.shape, dtype=np.int64)
    markers[tuple(coords.T)] = ids.reshape(-1) + 1
    return markers


def _flood(dist: np.ndarray, markers: np.ndarray, fg: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Marker watershed of ``-dist`` restricted to ``fg``, flooded level by level in synchronous steps.

    scikit-image's ``watershed`` floods pixels of equal level in the order they were queued, so a pixel reached from
    two markers at the same level joined whichever came first in scan order. Here every level (from the highest
    distance down) grows all regions at once, one neighbourhood step at a time. A pixel reached by several regions
    in the same step joins the one holding more of its neighbours, then the one whose marker is nearest
    (Euclidean), then the one grown larger so far, then the larger marker, then the higher peak: properties that a
    rotation or flip of the map keeps. A pixel these leave undecided waits (for the next step or level: the regions
    growing around may decide it); only one still undecided when nothing else can grow (a pixel midway between two
    mirror-image regions) goes to the smaller marker id.
    """
    shape = dist.shape
    pad = np.pad(markers, 1).astype(np.int64)
    strides = np.array(pad.strides) // pad.itemsize
    centre = np.array(structure.shape) // 2
    offsets = np.array(
        [int(np.dot(np.array(o) - centre, strides)) for o in np.argwhere(structure) if (np.array(o) != centre).any()],
        dtype=np.int64,
    )
    lab = pad.ravel()
    # flat indices (in the padded array) of every foreground pixel, highest distance first
    idx = np.ravel_multi_index(tuple((np.argwhere(fg) + 1).T), pad.shape) if fg.any() else np.zeros(0, np.int64)
    dvals = dist[fg]
    order = np.argsort(-dvals, kind="stable")
    idx, dvals = idx[order], dvals[order]
    n = int(markers.max())
    area = np.bincount(markers.ravel(), minlength=n + 1)
    grown = area.copy()
    height = np.zeros(n + 1)
    np.maximum.at(height, markers[markers > 0], dist[markers > 0])
    coords = np.argwhere(markers > 0)
    ids = markers[markers > 0]
    where = {int(m): coords[ids == m] for m in np.unique(ids)}  # each marker's pixels
    pending = np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, dvals[1:] != dvals[:-1]]) if len(dvals) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(dvals)]
    for s, e in zip(starts, ends):
        pending = np.concatenate([pending, idx[s:e]])
        pending = pending[lab[pending] == 0]
        while len(pending):
            near = lab[pending[:, None] + offsets[None, :]]  # (P, K) neighbour labels, 0 = none
            first = near.max(axis=1)
            reached = first > 0
            if not reached.any():
                break
            new = first.copy()
            # contested: reached by two different regions in this step
            contested = np.flatnonzero(reached & ((near > 0) & (near != first[:, None])).any(axis=1))
            tied = []
            for i in contested.tolist():
                pix = np.array(np.unravel_index(pending[i], pad.shape)) - 1
                cands, votes = np.unique(near[i][near[i] > 0], return_counts=True)
                keys = sorted(
                    (int(v), -int(((where[m] - pix) ** 2).sum(axis=1).min()), int(grown[m]), int(area[m]), height[m], -m)
                    for m, v in zip(cands.tolist(), votes.tolist())
                )
                new[i] = -keys[-1][-1]
                if keys[-1][:-1] == keys[-2][:-1]:
                    tied.append(i)
            if tied and (len(tied) < int(reached.sum()) or e < len(dvals)):
                # undecided: wait a step (or for the next level), the regions growing around may decide it
                reached[tied] = False
                if not reached.any():
                    break
            lab[pending[reached]] = new[reached]  # all at once: this step's growth sees none of itself
            np.add.at(grown, new[reached], 1)
            pending = pending[~reached]
    return pad[tuple(slice(1, -1) for _ in shape)]


def instance_from_semantic(
    semantic: np.ndarray | torch.Tensor,
    method: str = "connected_components",
    boundary_class: int | None = None,
    min_size: int = 0,
    connectivity: int = 1,
    min_distance: int = 3,
) -> np.ndarray:
    """Turn a semantic mask (0 = background) into an instance-id mask (0 = background, 1..N = objects).

    Methods:
        - ``"connected_components"``: connected foreground regions (``scipy.ndimage.label``). With
          ``boundary_class`` set (3-class models: background / interior / boundary), the seeds are the connected
          interior regions and every other foreground pixel (the predicted boundaries) joins the nearest seed of
          its own foreground region (exact Euclidean distance transform; equidistant seeds: the larger one, so that
          the partition of a rotated/flipped map is the rotated/flipped partition), which separates touching
          objects; a region without interior pixels is one object.
        - ``"watershed"``: marker watershed on the distance transform of the foreground, the classic split of
          touching blobs for binary masks. Markers are the distance map's peaks within each blob (not lower than
          any pixel of the blob in the (2 ``min_distance`` + 1)-wide window), peaks at most ``min_distance`` apart
          (Chebyshev) chained into one marker, so a plateau or ridge of equal distance (a bar-shaped nucleus) is
          one marker. The flooding goes level by level in synchronous steps; a pixel reached by two regions in
          one step joins the one with more neighbours there, then the nearer marker, the larger region, the larger
          marker, the higher peak. So the partition of a rotated/flipped (2D: D4; 3D: cube group) map is the
          rotated/flipped partition, except at a pixel midway between two mirror-image regions, which no
          orientation-free rule can give to one of them: it goes to the smaller marker id (scan order). (Written here
          rather than with scikit-image's ``peak_local_max`` + ``watershed``, whose plateau peaks and equal-level
          flooding follow the pixel scan order: the instances of a rotated tile were not the rotated instances.)

    Args:
        semantic: class map ``(H, W[, D])`` or ``(1, H, W[, D])`` of non-negative integers.
        method: ``"connected_components"`` or ``"watershed"``.
        boundary_class: class id of the boundary class, or ``None``.
        min_size: objects smaller than this many pixels are removed (set to background).
        connectivity: neighbourhood for connected components (1 = faces, ndim = full).
        min_distance: ``"watershed"``: half-width of the peak window, and peaks of one blob at most this far apart
            (Chebyshev distance, pixels) form one marker.

    Returns:
        ``int32`` array of the input's spatial shape with ids 1..N numbered consecutively.
    """
    from scipy import ndimage

    sem = semantic.detach().cpu().numpy() if isinstance(semantic, torch.Tensor) else np.asarray(semantic)
    if sem.ndim >= 3 and sem.shape[0] == 1:
        sem = sem[0]
    if sem.ndim not in (2, 3):
        raise ValueError(f"semantic must be (H, W[, D]) or (1, H, W[, D]), got shape {tuple(np.shape(semantic))}.")
    if method not in ("connected_components", "watershed"):
        raise ValueError(f"method must be 'connected_components' or 'watershed', got {method!r}.")
    sem = np.rint(sem).astype(np.int64)
    fg = sem > 0
    structure = ndimage.generate_binary_structure(sem.ndim, connectivity)
    if method == "connected_components":
        if boundary_class is None:
            inst, _ = ndimage.label(fg, structure=structure)
        else:
            seeds, n = ndimage.label(fg & (sem != boundary_class), structure=structure)
            if n == 0:
                inst, _ = ndimage.label(fg, structure=structure)
            else:
                # each remaining foreground pixel joins the nearest seed of its own foreground blob; a blob without
                # interior pixels (a nucleus predicted as boundary only) is an object of its own
                blobs, _ = ndimage.label(fg, structure=structure)
                area = np.bincount(seeds.ravel(), minlength=n + 1)
                near = _nearest_seed(seeds, area)
                inst = np.where(fg, near, 0)
                seed_blob = np.zeros(n + 1, dtype=blobs.dtype)
                seed_blob[seeds[seeds > 0]] = blobs[seeds > 0]
                wrong = fg & (seed_blob[near] != blobs)  # the nearest seed lies in another region
                seeded = set(np.unique(blobs[seeds > 0]).tolist())
                boxes = ndimage.find_objects(blobs)
                for b in np.unique(blobs[wrong]).tolist():
                    box = boxes[b - 1]
                    own = blobs[box] == b
                    if b in seeded:  # again, with this region's seeds only
                        local = np.where(own, seeds[box], 0)
                        inst[box] = np.where(own, _nearest_seed(local, area), inst[box])
                    else:  # no interior pixel: the region is one object
                        n += 1
                        inst[box] = np.where(own, n, inst[box])
    else:
        dist = ndimage.distance_transform_edt(fg)
        blobs, _ = ndimage.label(fg, structure=structure)
        inst = _flood(dist, _watershed_markers(dist, blobs, min_distance), fg, structure)
    inst = inst.astype(np.int64)
    if min_size > 0 and inst.max() > 0:
        sizes = np.bincount(inst.ravel())
        small = sizes < min_size
        small[0] = False
        inst[small[inst]] = 0
    # consecutive ids 1..N
    ids = np.unique(inst)
    ids = ids[ids > 0]
    lut = np.zeros(int(inst.max()) + 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[inst]


class InstanceMaskd(MapTransform):
    """Dictionary transform: semantic class map -> instance-id mask (see :func:`instance_from_semantic`).

    Args:
        keys: key(s) of channel-first semantic masks ``(1, H, W[, D])`` (e.g. the argmax ``"pred"``).
        output_key: where to store the result (one key only); defaults to ``f"{key}_instance"``.
        method, boundary_class, min_size, connectivity, min_distance: see :func:`instance_from_semantic`.
        allow_missing_keys: skip missing keys.

    The output is an ``int32`` ``MetaTensor`` ``(1, H, W[, D])`` carrying the input's metadata, so ``SaveImaged``
    names the file after the source image.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_key: str | None = None,
        method: str = "connected_components",
        boundary_class: int | None = None,
        min_size: int = 0,
        connectivity: int = 1,
        min_distance: int = 3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if output_key is not None and len(self.keys) != 1:
            raise ValueError(f"output_key needs exactly one key, got keys={self.keys}.")
        self.output_key = output_key
        self.kwargs = dict(
            method=method, boundary_class=boundary_class, min_size=min_size, connectivity=connectivity,
            min_distance=min_distance,
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            src = d[key]
            inst = torch.as_tensor(instance_from_semantic(src, **self.kwargs))[None]
            if isinstance(src, MetaTensor):
                inst = MetaTensor(inst, meta=dict(src.meta), applied_operations=list(src.applied_operations))
            d[self.output_key or f"{key}_instance"] = inst
        return d


# --------------------------------------------------------------------------------------------------------------------
# datalist checks
# --------------------------------------------------------------------------------------------------------------------
def check_datalist(
    items: Sequence[Mapping[str, Any]],
    keys: Sequence[str] = ("image", "label"),
    same_shape: bool = True,
    reader: Any = None,
    name: str = "datalist",
    image_checks: Mapping[str, Callable[[Any], Any]] | None = None,
) -> list[dict[str, Any]]:
    """Read every file of a datalist once and fail early, naming the file, on missing/unreadable/mismatched data.

    Called before any engine, writer or checkpoint is created, so a bad dataset stops a bundle before it writes
    anything. Files are read with MONAI ``LoadImage`` (the same readers as the pipeline: PIL for PNG/JPEG,
    tifffile/PIL for TIFF, nibabel for NIfTI, ITK for the rest).

    Args:
        items: datalist entries (``{"image": path, "label": path, ...}``).
        keys: keys that must be present and readable.
        same_shape: require equal spatial shapes across ``keys`` of one item.
        reader: optional reader passed to ``LoadImage``.
        name: what the list is called in messages.
        image_checks: optional ``key -> callable`` run on each loaded channel-first image of that key (e.g. the
            pipeline's own channel/intensity check), so that an image the transforms would refuse later stops the
            run here; a ``ValueError`` it raises is re-raised naming the item and the file.

    Returns:
        The items as a list of dicts (unchanged).

    Raises:
        ValueError: empty list, missing key, unreadable file, a 16-bit colour PNG (read as its high byte),
            spatial-shape mismatch or a failed ``image_checks`` check (message names the file).
        FileNotFoundError: a listed file does not exist.
    """
    from monai.transforms import EnsureChannelFirst, LoadImage

    items = [dict(i) for i in items]
    if not items:
        raise ValueError(f"{name} is empty: no items to process.")
    loader = LoadImage(reader=reader, image_only=True)
    ensure_cf = EnsureChannelFirst()
    for n, item in enumerate(items):
        shapes: dict[str, tuple[int, ...]] = {}
        for key in keys:
            if key not in item:
                raise ValueError(f"{name} item {n} has no {key!r} entry: {item}.")
            path = item[key]
            if isinstance(path, (str, os.PathLike)) and not Path(path).is_file():
                raise FileNotFoundError(f"{name} item {n}: {key} file {str(path)!r} does not exist.")
            if isinstance(path, (str, os.PathLike)) and _colour_png16(path):
                raise ValueError(
                    f"{name} item {n}: {key} file {str(path)!r} is a 16-bit colour PNG, which MONAI's PNG reader (PIL) "
                    "cuts to its high byte (12-bit data becomes nearly black); convert it to 8 bits (python -m "
                    "monai_gmr.data.prepare_nuclei reads it at full depth and writes 8-bit images)."
                )
            try:
                img = ensure_cf(loader(path))
            except Exception as e:
                raise ValueError(f"{name} item {n}: cannot read {key} file {str(path)!r}: {e}") from e
            if image_checks and key in image_checks:
                try:
                    image_checks[key](img)
                except ValueError as e:
                    where = "" if str(path) in str(e) else f"{key} file {str(path)!r}: "  # name the file once
                    raise ValueError(f"{name} item {n}: {where}{e}") from e
            shapes[key] = tuple(int(s) for s in img.shape[1:])
        if same_shape and len(set(shapes.values())) > 1:
            desc = ", ".join(f"{k} {str(item[k])!r} has spatial shape {s}" for k, s in shapes.items())
            raise ValueError(f"{name} item {n}: spatial size mismatch: {desc}.")
    return items


def _colour_png16(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a 16-bit RGB(A) PNG (read by PIL as 8 bits: only the high byte is kept)."""
    if not str(path).lower().endswith(".png"):
        return False
    from PIL import Image

    from monai_gmr.data.prepare_nuclei import is_colour_png16

    try:
        with Image.open(path) as im:  # the header only
            return is_colour_png16(im)
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the read that follows
        return False


#: image file extensions recognised by :func:`list_images` (MONAI readers: PIL, tifffile, nibabel, ITK).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


def list_images(folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Sorted image files directly inside ``folder`` (by extension, case-insensitive; hidden files such as macOS
    ``._name.png`` resource forks are skipped, as in the slide and dataset listings).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NotADirectoryError: ``folder`` is a file (e.g. one image given as ``--input_dir``; the message said
            "does not exist").
        ValueError: no image file in ``folder``.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"input folder {str(folder)!r} is a file, not a folder: give the folder that holds the images."
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {str(folder)!r} does not exist.")
    exts = tuple(e.lower() for e in extensions)
    files = sorted(
        str(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(exts)
    )
    if not files:
        raise ValueError(f"input folder {str(folder)!r} holds no image file with extension in {list(exts)}.")
    return files
