"""Patch-collection datasets for patch classification: PCam-style HDF5 and image folders with labels.

Both give MONAI-style dicts ``{"image": ..., "label": int}`` so they feed MONAI dictionary transforms and
``monai.data.DataLoader`` unchanged:

- :class:`PCamH5Dataset`: PatchCamelyon HDF5 pairs ``*_x.h5`` (dataset ``"x"``, ``(N, 96, 96, 3)`` uint8) and
  ``*_y.h5`` (dataset ``"y"``, ``(N, 1, 1, 1)``); items are ``{"image": (3, H, W) float32 tensor in [0, 1],
  "label": int}``. The files are opened lazily in each worker process (h5py handles cannot be shared across
  ``fork``).
- :func:`image_folder_datalist`: an image folder with class sub-folders (Kather / NCT-CRC-HE layout) or a labels
  CSV (``file,label`` or Kaggle's ``id,label``); items are ``{"image": path, "label": int}`` (paths, so any
  MONAI ``LoadImaged`` pipeline applies), with the class names.
- :class:`ImageFolderDataset`: the same items loaded with PIL as ``(3, H, W)`` float tensors in [0, 1].
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_gmr.data.datalist import _as_int, read_csv_rows

__all__ = [
    "PATCH_IMAGE_EXTENSIONS",
    "find_pcam_files",
    "PCamH5Dataset",
    "write_pcam_h5",
    "image_folder_datalist",
    "load_rgb_tensor",
    "ImageFolderDataset",
]

logger = logging.getLogger(__name__)

PATCH_IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_FILE_COLUMNS = ("file", "filename", "path", "image", "id", "name")
_LABEL_COLUMNS = ("label", "label_index", "class", "target", "y")


def find_pcam_files(folder: str | os.PathLike, split: str | None = None) -> list[tuple[Path, Path | None]]:
    """PCam ``(x, y)`` file pairs in ``folder``: every ``*_x.h5`` with its ``*_y.h5`` (or ``None``).

    Args:
        folder: folder with files such as ``camelyonpatch_level_2_split_train_x.h5``.
        split: keep files whose name contains ``split`` (e.g. ``"train"``, ``"valid"``, ``"test"``).

    Raises:
        FileNotFoundError: no ``*_x.h5`` file.
    """
    folder = Path(folder)
    xs = sorted(p for p in folder.glob("*_x.h5") if split is None or split in p.name)
    if not xs:
        which = f" for split {split!r}" if split else ""
        raise FileNotFoundError(f"no PCam '*_x.h5' file in {str(folder)!r}{which}.")
    out = []
    for x in xs:
        y = x.with_name(x.name[: -len("_x.h5")] + "_y.h5")
        out.append((x, y if y.is_file() else None))
    return out


class PCamH5Dataset(torch.utils.data.Dataset):
    """PatchCamelyon-style HDF5 patches as ``{"image": (3, H, W) float tensor, "label": int}``.

    Args:
        x_path: ``*_x.h5`` with dataset ``x_key`` of shape ``(N, H, W, 3)`` uint8.
        y_path: ``*_y.h5`` with dataset ``y_key`` of shape ``(N,)`` or ``(N, 1, 1, 1)``; default: the sibling
            ``*_y.h5`` if it exists, otherwise no labels (items have no ``"label"``).
        transform: optional callable applied to each item dict (e.g. MONAI dictionary transforms).
        x_key: image dataset name.
        y_key: label dataset name.
        scale: divide by 255 (``x`` must then be uint8); ``False``: the stored values as floats (0..255 for uint8).
        indices: optional subset of indices.

    Raises:
        FileNotFoundError: missing files. ValueError: wrong dataset names or shapes (the message names the file).
    """

    def __init__(
        self,
        x_path: str | os.PathLike,
        y_path: str | os.PathLike | None = None,
        transform: Callable | None = None,
        x_key: str = "x",
        y_key: str = "y",
        scale: bool = True,
        indices: Sequence[int] | None = None,
    ) -> None:
        import h5py

        self.x_path = Path(x_path)
        if not self.x_path.is_file():
            raise FileNotFoundError(f"PCam image file {str(self.x_path)!r} does not exist.")
        if y_path is None and self.x_path.name.endswith("_x.h5"):
            cand = self.x_path.with_name(self.x_path.name[: -len("_x.h5")] + "_y.h5")
            y_path = cand if cand.is_file() else None
        self.y_path = Path(y_path) if y_path is not None else None
        if self.y_path is not None and not self.y_path.is_file():
            raise FileNotFoundError(f"PCam label file {str(self.y_path)!r} does not exist.")
        self.x_key, self.y_key = x_key, y_key
        self.transform = transform
        self.scale = scale
        try:
            with h5py.File(self.x_path, "r") as f:
                if x_key not in f:
                    raise ValueError(f"PCam file {str(self.x_path)!r} has no dataset {x_key!r} (has {list(f.keys())}).")
                shape, dtype = f[x_key].shape, f[x_key].dtype
        except OSError as e:
            raise ValueError(f"cannot read PCam file {str(self.x_path)!r}: {e}") from e
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"PCam file {str(self.x_path)!r}: dataset {x_key!r} must be (N, H, W, 3), got {shape}.")
        if scale and dtype != np.uint8:  # float images in [0, 1] divided by 255 again would be nearly black
            raise ValueError(
                f"PCam file {str(self.x_path)!r}: dataset {x_key!r} is {dtype}; scale=True divides by 255 and expects "
                "uint8 images (pass scale=False to use the stored values as they are)."
            )
        self.n_total = int(shape[0])
        self.patch_shape = (int(shape[1]), int(shape[2]))  # (H, W) of every patch
        self.labels: np.ndarray | None = None
        if self.y_path is not None:
            try:
                with h5py.File(self.y_path, "r") as f:
                    if y_key not in f:
                        raise ValueError(f"PCam file {str(self.y_path)!r} has no dataset {y_key!r} (has {list(f.keys())}).")
                    y = np.asarray(f[y_key][...])
            except OSError as e:
                raise ValueError(f"cannot read PCam file {str(self.y_path)!r}: {e}") from e
            if y.ndim == 0 or y.shape[0] != self.n_total or y.size != self.n_total:
                raise ValueError(
                    f"PCam labels {str(self.y_path)!r} have shape {y.shape}; expected {self.n_total} labels "
                    f"((N,) or (N, 1, 1, 1)) for {str(self.x_path)!r}."
                )
            if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):  # 0.5 would become 0
                raise ValueError(f"PCam labels {str(self.y_path)!r} must be integer class indices, got {y.dtype} values "
                                 "with a fractional part.")  # fmt: skip
            self.labels = y.reshape(-1).astype(np.int64)
        self.indices = np.arange(self.n_total) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= self.n_total):
            raise ValueError(f"indices out of range for {self.n_total} patches in {str(self.x_path)!r}.")
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return int(self.indices.size)

    def _x(self):
        import h5py

        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.x_path, "r")
            self._pid = os.getpid()
        return self._file[self.x_key]

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(self.indices[index])
        arr = np.asarray(self._x()[i])  # (H, W, 3) uint8
        img = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()
        if self.scale:
            img = img / 255.0
        item: dict[str, Any] = {"image": img}
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        return self.transform(item) if self.transform is not None else item

    def close(self) -> None:
        """Close the HDF5 handle of this process."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict[str, Any]:  # h5py handles are not picklable: reopen in the worker
        state = dict(self.__dict__)
        state["_file"] = None
        state["_pid"] = None
        return state


def write_pcam_h5(prefix: str | os.PathLike, images: np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple[Path, Path]:
    """Write ``<prefix>_x.h5`` (``"x"``, ``(N, H, W, 3)`` uint8) and ``<prefix>_y.h5`` (``"y"``, ``(N, 1, 1, 1)``
    uint8) in the PCam layout (e.g. to package synthetic or extracted patches). Returns both paths."""
    import h5py

    from monai_gmr.utils import atomic_path

    images = np.asarray(images)
    labels = np.asarray(labels).reshape(-1)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.dtype} {images.shape}.")
    if labels.size != images.shape[0]:
        raise ValueError(f"{labels.size} labels for {images.shape[0]} images.")
    # the labels are stored as uint8 (PCam layout): anything else would wrap silently (-1 -> 255, 256 -> 0)
    if labels.size and (not np.all(np.mod(labels, 1) == 0) or labels.min() < 0 or labels.max() > 255):
        raise ValueError(
            f"labels must be integers in [0, 255] (stored as uint8), got range [{labels.min()}, {labels.max()}]."
        )
    prefix = str(prefix)
    xp, yp = Path(prefix + "_x.h5"), Path(prefix + "_y.h5")
    with atomic_path(xp) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("x", data=images, chunks=(1, *images.shape[1:]))
    with atomic_path(yp) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("y", data=labels.astype(np.uint8).reshape(-1, 1, 1, 1))
    return xp, yp


def _resolve_file(root: Path, value: str, extensions: Sequence[str]) -> Path | None:
    p = Path(value)
    p = p if p.is_absolute() else root / p
    if p.is_file():
        return p
    for ext in extensions:  # Kaggle style: ids without extension
        q = p.with_name(p.name + ext)
        if q.is_file():
            return q
    return None


def image_folder_datalist(
    root: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    image_dir: str | os.PathLike | None = None,
    file_column: str | None = None,
    label_column: str | None = None,
    extensions: Sequence[str] = PATCH_IMAGE_EXTENSIONS,
) -> tuple[list[dict[str, Any]], list[str]]:
    """List a patch collection as ``[{"image": path, "label": int}]`` plus the class names.

    Two layouts:

    - **class folders** (``labels_csv=None``): ``root/<class>/*.tif`` (Kather 2016, NCT-CRC-HE-100K); classes
      are the sorted sub-folder names (or ``classes``) and labels their indices;
    - **labels CSV**: a file column (first of ``file``, ``filename``, ``path``, ``image``, ``id``, ``name`` or
      ``file_column``) with paths relative to ``image_dir`` (default: the CSV's folder; files without an
      extension are looked up with ``extensions``, as in Kaggle's ``id,label``) and a label column (``label``,
      ``label_index``, ``class``, ``target``, ``y`` or ``label_column``): integers (also written ``1.0``) are used
      as they are, strings are mapped to indices of the sorted names (or ``classes``).

    Args:
        root: collection folder (class folders), or the folder of the CSV.
        labels_csv: CSV path (absolute, or relative to ``root``); ``"auto"`` picks the only ``*.csv`` in ``root``.
        classes: class names in label order.
        image_dir: base folder of the CSV's file paths.
        file_column: file column name.
        label_column: label column name.
        extensions: image extensions.

    Returns:
        ``(items, class_names)``; ``class_names`` is empty for integer CSV labels without ``classes``.

    Raises:
        FileNotFoundError: missing folder/CSV, or a listed image that does not exist (named).
        ValueError: no images, a class sub-folder without images (without ``classes``), unknown columns or labels, an
            image listed with two labels (an image listed again
            with the same label is kept once, with a warning).
    """
    root = Path(root).absolute()  # relative CSV / image_dir paths are joined to it (a relative root doubled them)
    if not root.is_dir():
        raise FileNotFoundError(f"patch folder {str(root)!r} does not exist.")
    exts = tuple(e.lower() for e in extensions)
    if labels_csv == "auto":
        csvs = sorted(root.glob("*.csv"))
        if len(csvs) != 1:
            raise ValueError(f"labels_csv='auto' needs exactly one CSV in {str(root)!r}, found {[c.name for c in csvs]}.")
        labels_csv = csvs[0]
    if labels_csv is None:
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        names = list(classes) if classes is not None else [d.name for d in dirs]
        if not names:
            raise ValueError(f"no class sub-folder in {str(root)!r}.")
        items = []
        for idx, name in enumerate(names):
            d = root / name
            if not d.is_dir():
                raise FileNotFoundError(f"class folder {str(d)!r} does not exist.")
            for f in sorted(d.iterdir()):
                if f.is_file() and f.name.lower().endswith(exts) and not f.name.startswith("."):
                    items.append({"image": str(f), "label": idx})
        empty = sorted(set(names) - {Path(i["image"]).parent.name for i in items})
        if classes is None and items and empty:  # e.g. macOS's __MACOSX/ of an unzipped archive: it took label 0
            raise ValueError(
                f"sub-folder(s) {empty} of {str(root)!r} hold no image with extension in {list(exts)}: as classes "
                "they would shift the labels of the classes sorted after them; remove them or pass classes."
            )
        if not items:
            raise ValueError(f"no image with extension in {list(exts)} under {str(root)!r}.")
        return items, names
    csv_path = Path(labels_csv)
    csv_path = csv_path if csv_path.is_absolute() else root / csv_path
    if not csv_path.is_file():
        raise FileNotFoundError(f"labels CSV {str(csv_path)!r} does not exist.")
    rows = read_csv_rows(csv_path, "labels CSV")
    if not rows:
        raise ValueError(f"labels CSV {str(csv_path)!r} has no rows.")
    cols = list(rows[0].keys())
    fcol = file_column or next((c for c in _FILE_COLUMNS if c in cols), None)
    lcol = label_column or next((c for c in _LABEL_COLUMNS if c in cols), None)
    if fcol not in cols or lcol not in cols:
        raise ValueError(f"labels CSV {str(csv_path)!r}: need a file column and a label column, has {cols}.")
    base = Path(image_dir) if image_dir is not None else csv_path.parent
    base = base if base.is_absolute() else root / base
    for n, r in enumerate(rows, start=2):  # row 1 is the header; csv gives None for the cells of a short row
        if r[fcol] is None or r[lcol] is None:
            raise ValueError(
                f"labels CSV {str(csv_path)!r} row {n}: needs a {fcol!r} and a {lcol!r} value, got "
                f"{[v for k, v in r.items() if k is not None and v is not None]}."
            )
    raw = [r[lcol].strip() for r in rows]
    int_labels = all(_is_int(v) for v in raw)
    if classes is not None:
        names = list(classes)
    elif int_labels:
        names = []
        if "label_name" in cols:  # e.g. Kather's labels.csv: label_index + label_name
            by_index = {_as_int(v): r["label_name"].strip() for r, v in zip(rows, raw)}
            if sorted(by_index) == list(range(len(by_index))):
                names = [by_index[i] for i in range(len(by_index))]
    else:
        names = sorted(set(raw))
    items = []
    seen: dict[Path, tuple[int, int]] = {}  # image -> (row, label) of its first row
    for n, (r, v) in enumerate(zip(rows, raw), start=2):
        p = _resolve_file(base, r[fcol].strip(), exts)
        if p is None:
            # Kaggle: ids live in a sub-folder such as train/
            p = next((q for sub in sorted(base.iterdir()) if sub.is_dir()
                      for q in [_resolve_file(sub, r[fcol].strip(), exts)] if q is not None), None)  # fmt: skip
        if p is None:
            raise FileNotFoundError(
                f"labels CSV {str(csv_path)!r} row {n}: image {r[fcol]!r} not found under {str(base)!r}."
            )
        if _is_int(v) and (int_labels or v not in names):
            label = _as_int(v)
            if names and not 0 <= label < len(names):
                raise ValueError(f"labels CSV {str(csv_path)!r} row {n}: label {label} outside classes {names}.")
        elif v in names:
            label = names.index(v)
        else:
            raise ValueError(f"labels CSV {str(csv_path)!r} row {n}: unknown label {v!r} (classes {names}).")
        first = seen.setdefault(p.resolve(), (n, int(label)))
        if first[1] != int(label):  # one image, two classes: contradictory training targets
            raise ValueError(
                f"labels CSV {str(csv_path)!r} row {n}: image {r[fcol]!r} has label {v!r} but row {first[0]} gives "
                f"it another label; an image must be listed with one label."
            )
        if first[0] != n:  # listed again: kept once (a repeated image could land in training and test)
            logger.warning("labels CSV %s row %d: image %r is listed again (row %d); kept once", csv_path, n,
                           r[fcol], first[0])  # fmt: skip
            continue
        items.append({"image": str(p), "label": int(label)})
    return items, names


def _is_int(v: str) -> bool:
    try:
        _as_int(v)
        return True
    except ValueError:
        return False


def load_rgb_tensor(path: str | os.PathLike, scale: bool = True) -> torch.Tensor:
    """Read an image file as a ``(3, H, W)`` float32 tensor (PIL; tifffile fallback), in [0, 1] with ``scale``.

    Raises:
        FileNotFoundError / ValueError: missing or unreadable file (named).
    """
    from monai_gmr.data.prepare_nuclei import read_rgb_image

    arr = read_rgb_image(path)
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()
    return t / 255.0 if scale else t


class ImageFolderDataset(torch.utils.data.Dataset):
    """Image-folder patches as ``{"image": (3, H, W) float tensor, "label": int, "path": str}``.

    Args:
        items: ``[{"image": path, "label": int}]`` (e.g. from :func:`image_folder_datalist`), or a folder, in
            which case :func:`image_folder_datalist` is called with ``**kwargs``.
        transform: optional callable applied to each item dict.
        scale: divide by 255.
        min_size: ``(h, w)`` (or one int) an image must at least have (the bundle's ``patch_size``, to which it is
            centre-cropped); a smaller one is an error naming the file when it is read. ``None``: any size.
        kwargs: forwarded to :func:`image_folder_datalist` when ``items`` is a folder.
    """

    def __init__(
        self,
        items: Sequence[dict[str, Any]] | str | os.PathLike,
        transform: Callable | None = None,
        scale: bool = True,
        min_size: int | Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(items, (str, os.PathLike)):
            items, self.class_names = image_folder_datalist(items, **kwargs)
        else:
            self.class_names = []
        self.items = [dict(i) for i in items]
        self.transform = transform
        self.scale = scale
        self.min_size = None if min_size is None else tuple(int(v) for v in np.broadcast_to(min_size, (2,)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        it = self.items[index]
        out = {"image": load_rgb_tensor(it["image"], self.scale), "label": int(it["label"]), "path": str(it["image"])}
        h, w = out["image"].shape[-2:]
        if self.min_size is not None and (h < self.min_size[0] or w < self.min_size[1]):
            # a centre crop cannot enlarge it: such tiles were trained on at their own size without a word, and a
            # folder mixing sizes stopped on the first batch with torch's bare "stack expects each tensor ..."
            raise ValueError(
                f"image {str(it['image'])!r} is {h} x {w} pixels (H x W), smaller than patch_size "
                f"{self.min_size[0]} x {self.min_size[1]}: lower --patch_size or leave such tiles out."
            )
        return self.transform(out) if self.transform is not None else out
