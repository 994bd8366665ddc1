"""MONAI datalist helpers: seeded train/validation/test splits and atomic datalist JSON files.

A datalist is the MONAI (Decathlon-style) JSON read by :func:`monai.data.load_decathlon_datalist`::

    {"training": [{"image": "images/a.png", "label": "labels/a.png"}, ...],
     "validation": [...], "test": [...], ...extra top-level keys (description, generator parameters)...}

Paths are stored relative to the datalist file, so a dataset folder can be moved as a whole; pass
``base_dir=<folder of the datalist>`` to ``load_decathlon_datalist`` (it does this by default).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_gmr.utils import atomic_write_json

__all__ = [
    "DATALIST_NAME",
    "SPLITS",
    "split_counts",
    "split_items",
    "write_datalist",
    "read_datalist",
    "read_csv_rows",
    "move_into_place",
]

#: default file name of the datalist inside a dataset folder.
DATALIST_NAME = "datalist.json"
#: split keys, in the order they are filled.
SPLITS = ("training", "validation", "test")


def split_counts(n: int, val_frac: float, test_frac: float) -> tuple[int, int, int]:
    """Sizes ``(n_train, n_val, n_test)`` of a split of ``n`` items.

    ``round(n * frac)`` items go to validation/test; a non-zero fraction gets at least one item as long as at
    least one item is left for training.

    Raises:
        ValueError: fractions outside [0, 1) or summing to >= 1, or ``n < 1``.
    """
    for name, f in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0.0 <= float(f) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {f}.")
    if val_frac + test_frac >= 1.0:
        raise ValueError(f"val_frac + test_frac must be < 1, got {val_frac} + {test_frac}.")
    if n < 1:
        raise ValueError(f"need at least one item to split, got n={n}.")
    n_test = int(round(n * test_frac))
    n_val = int(round(n * val_frac))
    if test_frac > 0 and n_test == 0 and n - n_val > 1:
        n_test = 1
    if val_frac > 0 and n_val == 0 and n - n_test > 1:
        n_val = 1
    while n_val + n_test >= n and (n_val or n_test):  # keep >= 1 training item
        if n_test >= n_val and n_test:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def split_items(
    items: Sequence[Mapping[str, Any]],
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    seed: int = 0,
    stratify_key: str | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Seeded random split of ``items`` into ``{"training", "validation", "test"}``.

    The permutation depends only on ``seed`` and ``len(items)`` (``numpy.random.default_rng(seed)``), so the same
    inputs always give the same split; within a split the input order is kept.

    Args:
        items: datalist entries.
        val_frac: fraction for validation.
        test_frac: fraction for test.
        seed: split seed.
        stratify_key: split each value of ``item[stratify_key]`` (e.g. a class label) separately.

    Returns:
        dict of three lists (possibly empty).
    """
    items = [dict(i) for i in items]
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in SPLITS}
    if not items:
        raise ValueError("cannot split an empty list of items.")
    if stratify_key is None:
        groups = {None: list(range(len(items)))}
    else:
        groups = {}
        for i, it in enumerate(items):
            groups.setdefault(it[stratify_key], []).append(i)
    rng = np.random.default_rng(seed)
    assign = np.empty(len(items), dtype=np.int64)
    for key in sorted(groups, key=repr):
        idx = np.asarray(groups[key])
        n_tr, n_va, _ = split_counts(len(idx), val_frac, test_frac)
        perm = idx[rng.permutation(len(idx))]
        assign[perm[:n_tr]] = 0
        assign[perm[n_tr : n_tr + n_va]] = 1
        assign[perm[n_tr + n_va :]] = 2
    for i, it in enumerate(items):
        out[SPLITS[int(assign[i])]].append(it)
    return out


def _relative(value: Any, root: Path) -> Any:
    if isinstance(value, (list, tuple)):  # several files per key (e.g. multi-modal images), as MONAI's datalists allow
        return [_relative(v, root) for v in value]
    if isinstance(value, (str, os.PathLike)):
        p = Path(value)
        if p.is_absolute():
            try:
                return p.resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                return str(p)
        return p.as_posix() if isinstance(value, os.PathLike) else value
    return value


def write_datalist(
    path: str | os.PathLike,
    splits: Mapping[str, Sequence[Mapping[str, Any]]],
    path_keys: Sequence[str] = ("image", "label"),
    **extra: Any,
) -> Path:
    """Write a MONAI datalist JSON atomically, with the ``path_keys`` values made relative to its folder.

    Args:
        path: the JSON file (its folder is the base directory of the relative paths).
        splits: ``{"training": [...], "validation": [...], "test": [...]}`` (any keys).
        path_keys: item keys holding file paths (absolute paths under the datalist folder become relative).
        extra: additional top-level entries (e.g. ``description``, generator parameters).

    Returns:
        ``Path(path)``.
    """
    path = Path(path)
    root = path.parent
    obj: dict[str, Any] = dict(extra)
    for split, items in splits.items():
        obj[split] = [{k: (_relative(v, root) if k in path_keys else v) for k, v in dict(it).items()} for it in items]
    return atomic_write_json(path, obj)


def read_datalist(path: str | os.PathLike, split: str | None = None, absolute: bool = True) -> Any:
    """Read a datalist JSON; with ``split`` return that list, with ``absolute`` resolve ``image``/``label``/... paths
    (every non-empty string value of an item that names an existing file or folder relative to the datalist folder).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        KeyError: ``split`` is not in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist {str(path)!r} does not exist.")
    obj = json.loads(path.read_text())
    if split is None:
        return obj
    if split not in obj:
        raise KeyError(f"datalist {str(path)!r} has no split {split!r} (keys: {sorted(obj)}).")
    items = [dict(i) for i in obj[split]]
    if absolute:

        def resolve(v: Any) -> Any:
            if isinstance(v, list):  # several files per key, as MONAI's load_decathlon_datalist resolves them
                return [resolve(e) for e in v]
            # "" (an empty field) would name the datalist's own folder: left as it is
            if isinstance(v, str) and v.strip() and not Path(v).is_absolute() and (path.parent / v).exists():
                return str(path.parent / v)
            return v

        for it in items:
            for k, v in it.items():
                it[k] = resolve(v)
    return items


def read_csv_rows(path: str | os.PathLike, what: str = "CSV") -> list[dict[str, str]]:
    """Rows of a CSV file with a header, as dicts (``csv.DictReader``).

    Tolerates what spreadsheet programs write: a UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped and header
    names are stripped (``"file, label"`` gives the column ``label``). Values are returned as read.

    Args:
        path: the CSV file.
        what: what the file is called in error messages (e.g. ``"labels CSV"``).

    Raises:
        ValueError: the file is not UTF-8 text (e.g. Excel's plain "CSV", cp1252) or not parseable as CSV; the
            message names the file.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: drops the byte-order mark Excel writes
            reader = csv.DictReader(f)
            if reader.fieldnames:
                reader.fieldnames = [h.strip() for h in reader.fieldnames]
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"cannot read {what} {str(path)!r} (a UTF-8 CSV is expected): {e}") from e


def _as_int(v: str) -> int:
    """A CSV label ``v`` as an integer: ``"1"``, or ``"1.0"`` as pandas writes an integer column that held a missing
    value (labels files: read as a class name, ``"10.0"`` sorted before ``"2.0"`` and the labels were silently
    permuted; patch CSVs: refused).

    Raises:
        ValueError: ``v`` is not an integer.
    """
    try:
        return int(v)
    except ValueError:
        f = float(v)  # ValueError for a name such as "tumor"
        if not f.is_integer():  # also inf / nan
            raise ValueError(f"{v!r} is not an integer") from None
        return int(f)


def move_into_place(tmp: str | os.PathLike, root: str | os.PathLike, datalist_name: str = DATALIST_NAME) -> Path:
    """Move a complete dataset folder ``tmp`` to ``root``; ``root``'s datalist is replaced last.

    When ``root`` does not exist (or is an empty folder) this is a single ``os.replace`` (atomic on one file
    system); otherwise every top-level entry of ``tmp`` replaces the entry of the same name in ``root`` and the
    datalist file moves last, so a reader never sees a new datalist pointing at missing files.

    Returns:
        ``Path(root)``.
    """
    tmp, root = Path(tmp), Path(root)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    if not root.exists():
        os.replace(tmp, root)
        return root
    for p in sorted(tmp.iterdir()):
        if p.name != datalist_name:
            target = root / p.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(p, target)
    if (tmp / datalist_name).exists():
        os.replace(tmp / datalist_name, root / datalist_name)
    return root
