"""Small shared utilities: atomic file writes, seeding, the run environment recorded by benchmarks, a TensorBoard
writer that creates its event file only when something is written (and degrades to a no-op when ``tensorboard``
is missing), and command-line switches read as booleans.

Everything that writes a checkpoint, report or mask goes through these helpers so that a file on disk is
either the complete new version or absent (never half-written).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import sys
import tempfile
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_json",
    "json_dumps",
    "json_ready",
    "atomic_torch_save",
    "make_temp_dir",
    "missing_dirs",
    "output_dir_error",
    "remove_empty_dirs",
    "current_umask",
    "seed_everything",
    "run_environment",
    "subprocess_env",
    "summary_writer",
    "tensorboard_available",
    "NullSummaryWriter",
    "LazySummaryWriter",
    "size_hw",
    "as_bool",
    "positive_int",
    "positive_float",
    "fraction",
    "one_of",
    "refuse_unknown_names",
    "keyword_args",
    "null_to_none",
    "training_modes",
    "restore_training_modes",
]


logger = logging.getLogger(__name__)


def size_hw(size: Any, name: str = "size") -> tuple[int, int]:
    """``S`` or ``(H, W)`` -> ``(H, W)`` ints.

    Integral floats (``256.0``, as YAML may give them), NumPy integers and text holding an int are accepted.

    Raises:
        ValueError: a sequence that does not hold exactly 2 values, or a value that is not a whole number (a
            fraction, a bool, ``None``; ``int()`` would truncate ``1.5`` to 1 silently). The message names ``name``.
    """
    from monai.utils import ensure_tuple_rep

    try:
        hw = ensure_tuple_rep(size, 2)
    except ValueError as e:
        raise ValueError(f"{name} must be an int or (H, W), got {name}={size!r}.") from e
    out = []
    for v in hw:
        if isinstance(v, str):  # text from a config, as int() read it before
            with contextlib.suppress(ValueError):
                v = int(v.strip())
        whole = isinstance(v, numbers.Integral) or (isinstance(v, numbers.Real) and float(v).is_integer())
        if not whole or isinstance(v, bool):
            raise ValueError(f"{name} must be an int or (H, W) of ints, got {name}={size!r}.")
        out.append(int(v))
    return out[0], out[1]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` atomically.

    Args:
        path: final destination.
        suffix: suffix of the temporary file (defaults to the suffix of ``path`` so writers that infer the
            format from the extension, e.g. matplotlib, keep working).
        fsync: flush the written file to disk (``os.fsync``) before the rename, so that after a crash of the
            machine (not only of the process) ``path`` holds the old or the new content, never an empty file.

    On any exception the temporary file is removed and ``path`` is left untouched. The result gets the
    permissions of a normally created file (``0o666`` minus the umask), not ``mkstemp``'s private ``0o600``, so
    reports, maps and masks stay readable by a group as the user's umask intends.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())  # the writer may have replaced the file: set it last
        if fsync:  # by path: the writer (PIL, ITK, torch.save, matplotlib) has closed its own handle
            # Windows' fsync (_commit) needs a handle with write access; POSIX flushes through a read-only one
            fd = os.open(tmp_path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def make_temp_dir(path: str | os.PathLike, prefix: str | None = None) -> Path:
    """Create an empty, uniquely named folder next to ``path`` (``.<name>.tmp-XXXXXX``, or ``<prefix>XXXXXX``) and
    return its absolute path.

    Datasets are written there and moved onto ``path`` when complete
    (:func:`monai_gmr.data.datalist.move_into_place`), so the folder gets the permissions of a normally created
    folder (``0o777`` minus the umask) instead of ``mkdtemp``'s private ``0o700``. It is absolute, so paths
    built inside it stay valid (and relative to it) whatever the working folder; ``path``'s parent is created.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix if prefix is not None else f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def missing_dirs(path: str | os.PathLike) -> list[Path]:
    """The folders among ``path`` and its ancestors that do not exist yet, deepest first (``[]`` when ``path`` is a
    folder already).

    Record them before something creates ``path`` with ``parents=True``; :func:`remove_empty_dirs` can then undo
    exactly what was created (and nothing that existed before) when the run stops before writing into it.
    """
    path = Path(path).absolute()
    missing = []
    for p in (path, *path.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def output_dir_error(path: str | os.PathLike, name: str = "--out") -> str | None:
    """Why ``path`` cannot be (or become) a folder to write into, or ``None`` when it can.

    Scripts check their output folder with this before they compute anything: ``path`` being a file, or lying
    under a file, used to end a run of minutes with a ``FileExistsError`` / ``NotADirectoryError`` traceback when
    the first report was written.

    Args:
        path: the output folder (it may not exist yet; its missing parents are created when writing).
        name: the setting's name, for the message.
    """
    path = Path(path).absolute()
    for p in (path, *path.parents):
        if p.exists():
            if p.is_dir():
                return None
            what = "is a file" if p == path else f"lies under the file {str(p)!r}"
            return f"{name} {str(path)!r} {what}, not a folder to write into"
    return None


def remove_empty_dirs(dirs: list[Path] | tuple[Path, ...]) -> None:
    """Remove each folder of ``dirs`` (deepest first, as :func:`missing_dirs` lists them) that exists and is empty.

    Only empty folders are removed (``os.rmdir``): a folder holding anything, e.g. a file another process wrote
    meanwhile, stays, and so do its parents.
    """
    for d in dirs:
        try:
            os.rmdir(d)
        except FileNotFoundError:
            continue
        except OSError:  # not empty (or not ours to remove): its parents are not empty either
            return


def current_umask() -> int:
    """The process umask (read without changing it where ``/proc`` allows; otherwise set and restored at once)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Serialise ``obj`` as strict JSON (fully, before touching the disk) and write it atomically.

    Non-finite floats (``NaN``, ``inf``; e.g. the ROC-AUC of a single-class split) are written as ``null``: Python's
    default ``NaN`` token is not JSON and strict readers (JavaScript, ``jq``, ``json.loads(..., parse_constant=...)``)
    reject it. See :func:`json_dumps`.
    """
    return atomic_write_text(path, json_dumps(obj, indent=indent) + "\n")


def json_dumps(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as strict JSON text: :func:`json_ready` first, then ``json.dumps(..., allow_nan=False)``, so a
    non-finite float that escaped the conversion raises instead of writing a bare ``NaN``.

    Raises:
        TypeError: an object that is not JSON serialisable.
        ValueError: a non-finite float that :func:`json_ready` could not reach (it should not happen).
    """
    return json.dumps(json_ready(obj), indent=indent, default=_json_default, allow_nan=False)


def json_ready(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold: non-finite floats -> ``None``.

    Recurses into mappings, lists and tuples (tuples become lists); NumPy scalars and arrays, 0-d (or larger)
    ``torch`` tensors become Python numbers / lists; ``Path`` becomes ``str``. Mapping keys that are NumPy scalars
    become Python scalars, non-finite float keys the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``. Other objects
    are returned unchanged (``json.dumps`` then raises for what it cannot serialise). ``json.dumps``'s ``default=``
    hook is never called for floats, hence this walk.
    """
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {_json_key(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    # by isinstance, not by the type's module: subclasses defined elsewhere (MONAI's MetaTensor, which MONAI metrics
    # return) are tensors too; neither library is imported here if the caller has not imported it
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(obj, np.ndarray):
            return json_ready(obj.tolist())
        if isinstance(obj, np.generic):
            return json_ready(obj.item())
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return json_ready(obj.detach().cpu().tolist())
    return obj


def _json_key(k: Any) -> Any:
    # NumPy / 0-d tensor keys -> Python scalars; a non-finite float key becomes the string json.dumps would write
    # for it with allow_nan=True ("NaN", "Infinity", "-Infinity"): keys are strings in JSON, so that is strict JSON,
    # whereas allow_nan=False would raise on the float key
    if hasattr(k, "item") and not isinstance(k, (str, int, float, bool)):
        k = k.item()
    if isinstance(k, float) and not math.isfinite(k):
        return "NaN" if k != k else ("Infinity" if k > 0 else "-Infinity")
    return k


def _json_default(o: Any) -> Any:
    # json_ready has converted NumPy values, tensors and paths: anything reaching json.dumps' hook is not JSON
    raise TypeError(f"object of type {type(o).__name__} is not JSON serialisable")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def seed_everything(seed: int = 0, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (via MONAI's ``set_determinism`` when ``deterministic``)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        from monai.utils import set_determinism

        set_determinism(seed=seed)


def run_environment(device: str | None = None, repo: str | os.PathLike | None = None) -> dict[str, Any]:
    """What a benchmark report records about the machine: versions, device, GPU name, CPU, threads, git commit.

    Args:
        device: the device the run used (e.g. ``"cuda"``, ``"cuda:1"``, ``"cpu"``); the GPU name is read for CUDA.
        repo: a folder inside the git checkout whose ``HEAD`` is recorded (default: this package's folder, when it
            is a source checkout's ``monai_gmr``; an installed package records ``None``, also inside another
            project's checkout); ``commit`` is ``None`` outside a checkout or without git. The query is read-only.

    Returns:
        ``{"python", "torch", "monai", "device", "gpu", "cpu", "cpu_count", "torch_threads", "host", "commit"}``.
    """
    import platform
    import subprocess

    import monai
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    gpu = None
    if dev.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(dev if dev.index is not None else 0)
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "device": str(dev),
        "gpu": gpu,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
    }
    package = Path(__file__).resolve().parent
    cwd = Path(repo) if repo is not None else package
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD", "--show-toplevel"], cwd=cwd, capture_output=True, text=True,
                             timeout=10)  # fmt: skip
        commit, top = (out.stdout.splitlines() + [None, None])[:2] if out.returncode == 0 else (None, None)
        # an installed package (a wheel in site-packages) inside another git checkout, e.g. a project's .venv,
        # is not monai_gmr's source: that checkout's HEAD was recorded as monai_gmr's commit
        if repo is None and top is not None and Path(top).resolve() / package.name != package:
            commit = None
        env["commit"] = commit or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


def subprocess_env(device: str, pythonpath: str | os.PathLike | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process (a bundle run started by a benchmark script) that must use ``device``.

    The bundles pick ``cuda:0`` whenever CUDA is visible, so the device is chosen through
    ``CUDA_VISIBLE_DEVICES``: ``"cpu"`` hides every GPU; ``"cuda:N"`` makes the parent's N-th visible GPU the
    child's only one (the N-th entry of an existing ``CUDA_VISIBLE_DEVICES``, else GPU ``N``); ``"cuda"`` leaves
    the variable as it is.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        pythonpath: a folder put first on the child's ``PYTHONPATH`` (e.g. the repository root), or ``None``.
        base: the environment to start from (default: ``os.environ``); it is copied, never changed.

    Raises:
        ValueError: ``device`` is not a CPU/CUDA device, or ``cuda:N`` names a GPU the parent does not see
            (``N`` beyond the entries of ``CUDA_VISIBLE_DEVICES``). The message names ``device``.
    """
    import torch

    env = dict(os.environ if base is None else base)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH", "")) if p)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got device={device!r}.") from e
    if dev.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif dev.type != "cuda":
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got device={device!r}.")
    elif dev.index is not None:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            env["CUDA_VISIBLE_DEVICES"] = str(dev.index)
        else:
            entries = [v.strip() for v in visible.split(",") if v.strip()]
            if dev.index >= len(entries):
                raise ValueError(
                    f"device={device!r} but CUDA_VISIBLE_DEVICES={visible!r} makes {len(entries)} GPU(s) visible."
                )
            env["CUDA_VISIBLE_DEVICES"] = entries[dev.index]
    return env


# --------------------------------------------------------------------------------------------------------------------
# TensorBoard without tensorboard
# --------------------------------------------------------------------------------------------------------------------
class NullSummaryWriter:
    """Stand-in for ``torch.utils.tensorboard.SummaryWriter`` when the ``tensorboard`` package is missing: every
    method (``add_scalar``, ``add_image``, ``flush``, ``close``, ...) does nothing, so MONAI's TensorBoard handlers
    keep working and the run only loses its event files."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None

    def __enter__(self) -> NullSummaryWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can be imported (it needs the ``tensorboard`` package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class LazySummaryWriter:
    """A TensorBoard ``SummaryWriter`` that is created at its first use.

    ``torch.utils.tensorboard.SummaryWriter`` creates ``log_dir`` and an event file as soon as it is constructed.
    A bundle builds its writer while its handlers are parsed, before every setting and input has been checked, so
    a run that then stopped on bad input (e.g. ``--amp maybe``, ``--val_interval 0``) left a ``logs/`` folder with
    an empty event file. This stand-in takes the writer's arguments and builds the real writer when a method that
    writes (``add_scalar``, ``add_image``, ...) is first called, i.e. when the first value is logged: a run that
    fails before that writes nothing. ``flush`` and ``close`` do nothing before then; ``get_logdir`` and
    ``log_dir`` answer without creating anything.

    Args:
        log_dir: the TensorBoard folder.
        kwargs: further ``SummaryWriter`` arguments (``comment``, ``flush_secs``, ...).
    """

    def __init__(self, log_dir: str | os.PathLike, **kwargs: Any) -> None:
        self.log_dir = str(log_dir)
        self._kwargs = kwargs
        self._writer: Any = None

    @property
    def created(self) -> bool:
        """Whether the real ``SummaryWriter`` (and so the event file) exists yet."""
        return self.__dict__.get("_writer") is not None

    @property
    def writer(self) -> Any:
        """The real ``SummaryWriter``, created now if it was not yet."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir, **self._kwargs)
        return self._writer

    def __getattr__(self, name: str) -> Any:  # only called for names not defined on this class
        # private SummaryWriter methods are forwarded too: MONAI's add_animated_gif (TensorBoardImageHandler on 3D
        # images) calls writer._get_file_writer(); this class's own fields and dunder lookups (pickle, copy) are not
        if name.startswith("__") or name in ("_writer", "_kwargs"):
            raise AttributeError(name)
        return getattr(self.writer, name)

    def get_logdir(self) -> str:
        """The folder the event file is (or will be) written to."""
        return self.log_dir

    def flush(self) -> None:
        """Flush the event file (nothing to do before the first write)."""
        if self.created:
            self._writer.flush()

    def close(self) -> None:
        """Close the event file (nothing to do before the first write)."""
        if self.created:
            self._writer.close()

    def __enter__(self) -> LazySummaryWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def summary_writer(log_dir: str | os.PathLike) -> Any:
    """A TensorBoard writer for ``log_dir``: a :class:`LazySummaryWriter` (the event file and ``log_dir`` are
    created when the first value is written, so a run stopped by bad input leaves nothing behind), or a
    :class:`NullSummaryWriter` (warning logged) when ``tensorboard`` is not installed (e.g. a minimal GPU image),
    so training and evaluation still run."""
    if not tensorboard_available():
        logger.warning("tensorboard is not installed: no TensorBoard event files will be written to %s", log_dir)
        return NullSummaryWriter()
    return LazySummaryWriter(log_dir)


_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("0", "false", "no", "n", "off")


def null_to_none(value: Any, path_base: str | os.PathLike | None = None) -> Any:
    """``None`` for ``None`` or the text ``"null"`` / ``"none"`` (any case, surrounding spaces), else ``value``.

    A command line passes ``--mask_level null`` (a setting whose documented default is null) as the text
    ``"null"``, which was read as a level, a file or a folder named ``null``. With ``path_base``, text that names an
    existing file or folder under it (e.g. a folder really called ``none``) stays a path.
    """
    if isinstance(value, str) and value.strip().lower() in ("null", "none"):
        if path_base is None or not (Path(path_base) / value).exists():
            return None
    return value


def training_modes(module: Any) -> list[tuple[Any, bool]]:
    """The ``training`` flag of ``module`` (an ``nn.Module``) and of every submodule, in ``modules()`` order, for
    :func:`restore_training_modes`."""
    return [(m, bool(m.training)) for m in module.modules()]


def restore_training_modes(modes: list[tuple[Any, bool]]) -> None:
    """Put every module of :func:`training_modes` back into its recorded mode.

    A bare ``net.train()`` after an evaluation switched every submodule to training, also those the caller had put in
    eval mode (a frozen batch norm whose running statistics must not move, a frozen encoder); ``net.eval()`` left
    on none of them in training mode (Monte-Carlo dropout). Parents come first (``modules()`` order), so that a
    parent's recursive ``train()`` cannot undo a child's restored flag.
    """
    for m, flag in modes:
        if m.training != flag:
            m.train(flag)


def as_bool(value: Any, name: str = "value") -> bool:
    """A switch as a ``bool``, also when it arrives as text from a command line.

    ``python -m monai.bundle run --amp false`` passes the *string* ``"false"`` (Python Fire turns only ``True`` /
    ``False`` into booleans), and a non-empty string is true in Python: the bundle configs read every switch
    through this function, so ``true``/``false`` (any case), ``yes``/``no``, ``on``/``off`` and ``1``/``0`` mean
    what they say.

    Args:
        value: a ``bool``, ``0``/``1`` or one of the strings above.
        name: the switch's name, for the error message.

    Raises:
        ValueError: ``value`` is not one of these (the message names ``name``).
    """
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_" and type(value).__module__ == "numpy":  # numpy.bool_ is not a bool
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        s = value.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise ValueError(f"{name} must be a boolean (true/false, yes/no, on/off or 1/0), got {value!r}.")


def positive_int(value: Any, name: str = "value", allow_none: bool = False, allow_zero: bool = False) -> int | None:
    """A count or interval setting as a positive ``int``, refusing anything else by name.

    Bundle configs read ``epochs``, ``val_interval`` and ``epoch_length`` through this function: ``--val_interval 0``
    was refused only by the handler, whose message said ``interval``, and ``--epoch_length 0`` ran 0 iterations per
    epoch without an error (nothing trained, no summary written).

    Args:
        value: an int (or a NumPy integer, or text holding one, as a command line may pass it); ``None`` when
            ``allow_none``.
        name: the setting's name, for the error message.
        allow_none: accept ``None`` (e.g. ``epoch_length: null`` = the whole data loader), or the text ``"null"`` /
            ``"none"`` that ``--epoch_length null`` passes, and return ``None``.
        allow_zero: accept 0 too (``log_interval: 0`` turns the iteration lines off; ``seed``, ``num_workers``).
            ``--seed abc`` failed inside MONAI's ``set_determinism`` with "invalid literal for int()", naming no
            setting, and ``--seed 1.5`` was truncated to 1; ``--log_interval x`` failed with "'<' not supported".

    Raises:
        ValueError: ``value`` is not an integer >= 1 (>= 0 with ``allow_zero``); the message names ``name``.
    """
    if allow_none and null_to_none(value) is None:
        return None  # the command line passes ``--epoch_length null`` as the text "null" (``None`` as None)
    parsed = _number(value, int, numbers.Integral)
    if parsed is None or parsed < (0 if allow_zero else 1):
        kind = "a non-negative integer" if allow_zero else "a positive integer"
        extra = " or null" if allow_none else ""
        raise ValueError(f"{name} must be {kind}{extra}, got {value!r}.")
    return parsed


def fraction(value: Any, name: str = "value", include_one: bool = False) -> float:
    """A fraction setting as a ``float`` in ``[0, 1)`` (``[0, 1]`` with ``include_one``), refusing anything else by
    name.

    ``--cache_rate 2`` or ``-0.5`` was accepted silently (MONAI's ``CacheDataset`` clips it) and ``--cache_rate all``
    failed with "invalid literal for int() with base 10: 'allallallall'"; ``--val_frac 1.5`` was accepted silently
    where the split is read from the datalist, and ``--val_frac x`` failed with "could not convert string to float".

    Args:
        value: a number, or text holding one (``"0.5"``), as a command line may pass it.
        name: the setting's name, for the error message.
        include_one: accept 1 (e.g. ``cache_rate``: cache everything).

    Raises:
        ValueError: ``value`` is not a number in the range (the message names ``name``).
    """
    parsed = _number(value, float, numbers.Real)
    if parsed is None or not (0.0 <= parsed <= 1.0 if include_one else 0.0 <= parsed < 1.0):
        bounds = "[0, 1]" if include_one else "[0, 1)"
        raise ValueError(f"{name} must be a number in {bounds}, got {value!r}.")
    return parsed


def positive_float(value: Any, name: str = "value", allow_zero: bool = False) -> float:
    """A rate setting (learning rate, weight decay) as a finite ``float`` > 0 (>= 0 with ``allow_zero``).

    Bundle configs read ``learning_rate`` and ``weight_decay`` through this function: ``--learning_rate abc`` used
    to stop inside ``torch.optim.AdamW`` with ``TypeError: '<=' not supported between instances of 'float' and
    'str'``, which named neither the setting nor the value.

    Args:
        value: an int or float, or text holding one (``"1e-3"``), as a command line may pass it.
        name: the setting's name, for the error message.
        allow_zero: accept 0 (e.g. ``weight_decay``).

    Raises:
        ValueError: ``value`` is not a finite number > 0 (>= 0 with ``allow_zero``); the message names ``name``.
    """
    parsed = _number(value, float, numbers.Real)
    if parsed is None or not math.isfinite(parsed) or parsed < 0 or (parsed == 0 and not allow_zero):
        kind = "a non-negative number" if allow_zero else "a positive number"
        raise ValueError(f"{name} must be {kind}, got {value!r}.")
    return parsed


def one_of(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """A setting that takes one of a few values (``eval_split``, ``input_split``), refusing anything else by name.

    ``--eval_split tset`` was refused by the datalist function with "split must be one of ...", which named its
    argument but not the bundle setting.

    Args:
        value: the setting's value.
        name: the setting's name, for the error message.
        choices: the values allowed.

    Returns:
        ``value``, unchanged.

    Raises:
        ValueError: ``value`` is not one of ``choices``; the message names ``name``.
    """
    if isinstance(value, Hashable) and value in tuple(choices):
        return value
    raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")


def refuse_unknown_names(names: Any, known: Any, what: str) -> None:
    """Refuse names outside ``known`` (e.g. the keys of a bundle's ``synthetic`` setting), listing the known ones and
    the closest match of each unknown one.

    Args:
        names: the names given.
        known: the names accepted, in the order they are listed.
        what: what a name is, for the message (``"synthetic nuclei setting"``).

    Raises:
        ValueError: some of ``names`` are not in ``known``.
    """
    import difflib

    known = [str(k) for k in known]
    unknown = sorted(str(k) for k in names if str(k) not in known)
    if unknown:
        close = [c for k in unknown for c in difflib.get_close_matches(k, known, n=1)]
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise ValueError(f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(known)}.{hint}")


def keyword_args(value: Any, name: str = "value") -> dict[str, Any]:
    """A setting that holds keyword arguments (e.g. ``compile_kwargs``) as a ``dict`` with string keys.

    ``--compile_kwargs "{'backend': 'aot_eager'}"`` reaches the config as a dict (Python Fire parses the literal); a
    value Fire could not parse stays text, and ``torch.compile(net, **"text")`` failed inside MONAI's engine with
    "argument after ** must be a mapping", naming no setting.

    Args:
        value: a mapping with string keys, or ``None`` (no arguments).
        name: the setting's name, for the error message.

    Raises:
        ValueError: ``value`` is not such a mapping (the message names ``name``).
    """
    if value is None:
        return {}
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return dict(value)
    raise ValueError(
        f"{name} must be a mapping of keyword arguments with string keys, e.g. \"{{'backend': 'inductor'}}\", "
        f"got {value!r}."
    )


def _number(value: Any, cast: type, kind: type) -> Any:
    """``value`` as ``cast`` (``int`` / ``float``) when it is a number of ``kind`` (not a bool) or text holding one,
    else ``None`` (the callers raise, naming the setting)."""
    if isinstance(value, str):
        try:
            return cast(value.strip())
        except ValueError:
            return None
    if not isinstance(value, bool) and isinstance(value, kind):
        return cast(value)
    return None
