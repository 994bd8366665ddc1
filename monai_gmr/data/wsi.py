"""Whole-slide image helpers on top of MONAI's :class:`monai.data.WSIReader`.

Conventions (the same as MONAI's ``WSIReader`` and ``PatchWSIDataset``):

- a **location** is ``(y, x)`` = ``(row, column)`` in **level-0** pixels;
- a **size** is ``(height, width)`` in pixels **at the level read**;
- datalist items made here use ``{"image": slide, "location": [y, x], "size": [h, w], "level": L, ...}`` in
  the convention of MONAI ``PatchWSIDataset(center_location=True)`` (its default): the patch read has its
  top-left corner at ``location - size // 2`` (level-0 pixels, ``size`` at the patch level, exactly as MONAI
  1.6.1 computes it). At level 0 this is the patch centre; at level ``L > 0`` MONAI does not scale the offset by
  the downsample, so the location is ``top_left + size // 2``, not the level-0 centre. All helpers here use
  the same formula (``center=True``), so an item reads the same pixels here and in ``PatchWSIDataset``;
- the training datalists of the WSI bundle (synthetic slides, ``patches.csv``) instead hold the **level-0 centre**
  of each patch, at every level: the patch of ``size`` at level ``L`` has its level-0 top-left corner at
  ``location - int(size * downsample_L) // 2`` (:func:`level0_top_left`, :func:`level0_center`); the bundle reads
  it with ``PatchWSIDataset(center_location=False)`` from that corner, so a larger context patch (rotations) or
  another level stays centred on the same point. At level 0 both conventions give the same patch;
- a mask at pyramid level ``L`` comes with its ``downsample`` (level-0 pixels per mask pixel), so mask pixel
  ``(i, j)`` covers level-0 pixels ``[i * ds, (i + 1) * ds) x [j * ds, (j + 1) * ds)``.

Errors name the slide: :class:`WSIError` (a ``ValueError``) for an unreadable slide, a level that does not exist,
a location/patch outside the slide; :class:`SlideNotFoundError` (both a ``WSIError`` and a
``FileNotFoundError``) for a missing file. Catch ``WSIError`` to report and skip a bad slide in a list.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data.wsi_reader import OpenSlideWSIReader, TiffFileWSIReader

from monai_gmr.utils import _number, positive_int, size_hw

__all__ = [
    "SLIDE_EXTENSIONS",
    "WSIError",
    "SlideNotFoundError",
    "list_slides",
    "WSI_BACKENDS",
    "check_wsi_backend",
    "get_wsi_reader",
    "wsi_reader_for",
    "TiffFileSlideReader",
    "OpenSlideSlideReader",
    "open_slide",
    "resolve_level",
    "slide_info",
    "read_region",
    "tissue_mask",
    "block_mean",
    "sample_patch_locations",
    "slide_patch_grid",
    "validate_patch_items",
    "monai_location",
    "level0_center",
    "level0_top_left",
    "TRANSFORM_MAX_PIXELS",
    "as_d4_element",
    "transform_array",
    "transform_box",
    "transform_slide",
]

logger = logging.getLogger(__name__)

#: file extensions treated as slides by :func:`list_slides`.
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")


class WSIError(ValueError):
    """A slide cannot be used (unreadable, missing level, location outside it); ``slide`` names the file."""

    def __init__(self, message: str, slide: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.slide = None if slide is None else str(slide)


class SlideNotFoundError(WSIError, FileNotFoundError):
    """The slide file does not exist."""


def list_slides(folder: str | os.PathLike, extensions: Sequence[str] = SLIDE_EXTENSIONS) -> list[str]:
    """Sorted slide files directly inside ``folder`` (hidden files skipped).

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"slide folder {str(folder)!r} does not exist.")
    exts = tuple(e.lower() for e in extensions)
    return sorted(
        str(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(exts)
    )


class TiffFileSlideReader(TiffFileWSIReader):
    """MONAI's ``TiffFileWSIReader`` with the levels of the slide's pyramid only.

    MONAI 1.6.1 counts and sizes levels by TIFF page (``wsi.pages``) but reads pixels by pyramid level
    (``wsi.asarray(level=...)``, the main series' levels). In an Aperio SVS the pages also hold the thumbnail, label
    and macro images (CMU-1-Small-Region: one level, four pages), so level 1 had the thumbnail's size and the next
    pyramid level's pixels, and the last "level" did not exist at all (tissue detection, which reads the lowest
    level, failed on every SVS). Here levels, sizes, downsamples and MPP all come from the main series' pyramid
    (``wsi.series[0].levels``); for a pyramidal TIFF with one page per level nothing changes. An SVS without
    resolution tags gets its MPP from the Aperio description (``MPP = ...``), as with openslide, so ``patch_mpp``
    works with both backends.
    """

    @staticmethod
    def get_level_count(wsi) -> int:
        return len(wsi.series[0].levels)

    def get_size(self, wsi, level: int) -> tuple[int, int]:
        page = wsi.series[0].levels[level].keyframe
        return (int(page.imagelength), int(page.imagewidth))

    def get_downsample_ratio(self, wsi, level: int) -> float:
        return float(self.get_size(wsi, 0)[0]) / float(self.get_size(wsi, level)[0])

    def get_mpp(self, wsi, level: int) -> tuple[float, float]:
        try:
            mpp0 = super().get_mpp(wsi, 0)  # resolution tags of the base level (page 0 in both counts)
        except ValueError:
            mpp0 = self._aperio_mpp(wsi)
            if mpp0 is None:
                raise
        (h0, w0), (h, w) = self.get_size(wsi, 0), self.get_size(wsi, level)
        return (float(mpp0[0]) * (h0 / h), float(mpp0[1]) * (w0 / w))

    def _get_patch(self, wsi, location: tuple[int, int], size: tuple[int, int], level: int, dtype, mode: str) -> np.ndarray:
        """A patch read from the tiles it overlaps only. MONAI's reader decodes the whole level for every patch
        (``wsi.asarray(level=level)``: slide inference on a 2967 x 2220 SVS took 7.6 s against openslide's 2.3 s,
        docs/benchmarks.md section 6, and a full-resolution 40x level does not fit in memory); a flat, untiled TIFF is read
        from the strips a patch overlaps (it was decoded whole for every patch, and for every strip of the tissue
        mask); pages that are not single-plane images still go through MONAI's whole-level read. Same output as
        MONAI's (a region beyond the slide is cut at the level's edge), except that a region inside the slide at
        level 0 is read whole: a level whose size was rounded down (1003 -> 250 pixels at downsample 4) ends before
        the slide, and the rounded window of such a region could end one level pixel past it (a 25 x 24 patch, so
        its batch failed to collate); that window is moved back inside the level."""
        ds = self.get_downsample_ratio(wsi=wsi, level=level)
        start = [round(location[i] / ds) for i in range(2)]
        size0, size_l = self.get_size(wsi, 0), self.get_size(wsi, level)
        for i in range(2):
            if start[i] + int(size[i]) > size_l[i] and location[i] + int(size[i]) * ds <= size0[i]:
                start[i] = max(int(size_l[i]) - int(size[i]), 0)
        y0, x0 = start
        region = _read_tiled_region(wsi.series[0].levels[level].pages[0], y0, x0, int(size[0]), int(size[1]))
        if region is None:
            return super()._get_patch(wsi, (y0 * ds, x0 * ds), size, level, dtype, mode)
        patch = np.moveaxis(region.astype(dtype, copy=False), -1, self.channel_dim)
        if mode in "RGB":  # as MONAI's TiffFileWSIReader._get_patch
            if patch.shape[self.channel_dim] not in (3, 4):
                raise ValueError(
                    f"The image is expected to have three or four color channels in '{mode}' mode but has "
                    f"{patch.shape[self.channel_dim]}. "
                )
            patch = np.take(patch, [0, 1, 2], self.channel_dim)
        return patch

    @staticmethod
    def _aperio_mpp(wsi) -> tuple[float, float] | None:
        """The ``MPP`` of an Aperio SVS description (where openslide reads it; SVS files carry no resolution
        tags), or ``None``."""
        if not getattr(wsi, "is_svs", False):
            return None
        from tifffile.tifffile import svs_description_metadata

        try:
            mpp = float(svs_description_metadata(wsi.pages[0].description)["MPP"])
        except (KeyError, ValueError, TypeError):
            return None
        return (mpp, mpp) if mpp > 0 else None


def _read_tiled_region(page: Any, y0: int, x0: int, h: int, w: int) -> np.ndarray | None:
    """Pixels ``[y0:y0+h, x0:x0+w]`` (cut at the page's edges) of a tiled or stripped TIFF page as
    ``(h', w', samples)``, decoding only the tiles or strips that overlap them (tifffile's own segment reader and
    decoder, as in ``TiffPage.segments``, which has no region argument); ``None`` for a page that is not one plane
    with contiguous samples, or not 2D. A strip is a segment of ``rowsperstrip`` full-width rows (the last one
    shorter): a flat, untiled TIFF was decoded whole for every patch."""
    kf = page.keyframe
    if kf.planarconfig != 1 or kf.imagedepth != 1 or len(kf.shape) not in (2, 3):
        return None
    hh, ww = int(kf.imagelength), int(kf.imagewidth)
    if kf.is_tiled:
        th, tw = int(kf.tilelength), int(kf.tilewidth)
    else:  # strips: full-width segments of rowsperstrip rows
        th, tw = max(1, min(int(kf.rowsperstrip), hh)), ww
    ny, nx = -(-hh // th), -(-ww // tw)
    if len(page.dataoffsets) != ny * nx:
        return None
    ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + h, hh), min(x0 + w, ww)
    samples = int(kf.samplesperpixel)
    out = np.zeros((max(yb - ya, 0), max(xb - xa, 0), samples), dtype=kf.dtype)
    if out.size == 0:
        return out
    fh = page.parent.filehandle
    if not kf.is_tiled and kf.compression == 1 and kf.predictor == 1 and kf.bitspersample == 8 and kf.fillorder == 1:
        # uncompressed 8-bit strips (often one strip for the whole image): only the rows needed are read
        rowbytes, r = ww * samples, ya
        while r < yb:
            s = r // th
            n = min(yb, (s + 1) * th) - r
            with fh.lock:
                fh.seek(int(page.dataoffsets[s]) + (r - s * th) * rowbytes)
                buf = fh.read(n * rowbytes)
            out[r - ya : r - ya + n] = np.frombuffer(buf, np.uint8).reshape(n, ww, samples)[:, xa:xb]
            r += n
        return out
    index = [ty * nx + tx for ty in range(ya // th, (yb - 1) // th + 1) for tx in range(xa // tw, (xb - 1) // tw + 1)]
    args: dict[str, Any] = {"_fullsize": True}
    if kf.compression in (6, 7, 34892, 33007):  # JPEG: shared tables, as TiffPage.segments passes them
        args["jpegtables"] = page.jpegtables
        args["jpegheader"] = kf.jpegheader
    offsets = [page.dataoffsets[i] for i in index]
    counts = [page.databytecounts[i] for i in index]
    for data, i in fh.read_segments(offsets, counts, indices=index, lock=fh.lock, flat=True):
        seg, (_, _, ty, tx, _), _ = kf.decode(data, i, **args)  # seg: (1, rows, cols, samples); ty, tx: its origin
        if seg is None:  # an empty (sparse) segment: zeros, as tifffile fills it
            continue
        seg = seg.reshape(seg.shape[-3], seg.shape[-2], samples)  # a tile (th, tw); a strip (<= th, ww)
        sy, sx = max(ya, ty), max(xa, tx)
        ey, ex = min(yb, ty + seg.shape[0]), min(xb, tx + seg.shape[1])
        out[sy - ya : ey - ya, sx - xa : ex - xa] = seg[sy - ty : ey - ty, sx - tx : ex - tx]
    return out


class OpenSlideSlideReader(OpenSlideWSIReader):
    """MONAI's ``OpenSlideWSIReader`` returning writable, C-contiguous patches.

    MONAI 1.6.1 returns ``np.asarray`` of the PIL image OpenSlide decoded, moved to channel-first: a read-only,
    strided view of PIL's buffer. ``PatchWSIDataset`` wraps it in a ``MetaTensor`` as it is, so PyTorch warns
    ("The given NumPy array is not writable ... undefined behavior") on the first patch of every run, and a transform
    writing in place would write into PIL's buffer. A patch is copied once (channel-first, contiguous), which
    costs little next to the JPEG decode; pixels are unchanged.
    """

    def _get_patch(self, wsi, location: tuple[int, int], size: tuple[int, int], level: int, dtype, mode: str) -> np.ndarray:
        patch = super()._get_patch(wsi, location, size, level, dtype, mode)
        if not (patch.flags.writeable and patch.flags.c_contiguous):
            patch = np.array(patch, order="C", copy=True)
        return patch


#: the slide-reader backends (any case): :class:`OpenSlideSlideReader`, :class:`TiffFileSlideReader`, MONAI's ``cucim``
WSI_BACKENDS = ("openslide", "tifffile", "cucim")


def check_wsi_backend(backend: Any, name: str = "backend") -> Any:
    """``backend`` unchanged when it names one of :data:`WSI_BACKENDS` (any case) or is a reader (not text).

    A typo (``opneslide``) failed in MONAI's ``WSIReader`` with "The supported backends are cucim, openslide, and
    tifffile but 'opneslide' was given", naming no setting, and only when the first slide was opened (after the
    synthetic slides had been generated).

    Args:
        backend: a backend name, ``None`` (the default, ``openslide``), or a ``WSIReader`` / reader class.
        name: the setting's name, for the error message (``wsi_backend`` in the bundle).

    Raises:
        ValueError: ``backend`` is text that names no backend; the message names ``name``.
    """
    if isinstance(backend, str) and backend.strip().lower() not in WSI_BACKENDS:
        raise ValueError(f"{name} must be one of {WSI_BACKENDS}, got {backend!r}.")
    return backend.strip() if isinstance(backend, str) else backend


def wsi_reader_for(backend: str = "openslide") -> Any:
    """What MONAI's WSI datasets take as ``reader`` for ``backend``: for ``openslide`` the
    :class:`OpenSlideSlideReader` class (writable patches), for ``tifffile`` the :class:`TiffFileSlideReader` class
    (levels of the slide's pyramid only, also for SVS files), else the name itself (MONAI ``WSIReader``)."""
    if isinstance(backend, str) and backend.lower() == "tifffile":
        return TiffFileSlideReader
    if isinstance(backend, str) and backend.lower() == "openslide":
        return OpenSlideSlideReader
    return backend


def get_wsi_reader(backend: str = "openslide", **kwargs: Any):
    """A reader with MONAI's ``WSIReader`` interface: :class:`OpenSlideSlideReader` for ``openslide``,
    :class:`TiffFileSlideReader` for ``tifffile`` (levels of the slide's pyramid only), MONAI's
    :class:`~monai.data.WSIReader` for other backends (``cucim``)."""
    from monai.data import WSIReader

    reader = wsi_reader_for(check_wsi_backend(backend))
    if not isinstance(reader, str):
        return reader(**kwargs)
    return WSIReader(backend=backend, **kwargs)


def _reader_of(reader_or_backend: Any):
    if reader_or_backend is None or isinstance(reader_or_backend, str):
        return get_wsi_reader(reader_or_backend or "openslide")
    return reader_or_backend


def _tifffile_hint(path: Path) -> str:
    """For a TIFF that openslide refuses but tifffile reads (a flat, untiled TIFF, e.g. a region exported from a
    viewer: "Unsupported or missing image file"), the setting that reads it."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return ""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                return ""
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads either: no hint
        return ""
    return "; tifffile reads this TIFF (openslide does not open flat, untiled TIFFs): use --wsi_backend tifffile."


def open_slide(slide: str | os.PathLike, backend: str | Any = "openslide") -> tuple[Any, Any]:
    """Open ``slide`` with a MONAI ``WSIReader``; returns ``(reader, wsi_object)``.

    Args:
        slide: slide path.
        backend: backend name or an existing ``WSIReader``/``BaseWSIReader``.

    Raises:
        SlideNotFoundError: the file does not exist.
        WSIError: ``slide`` is a folder, the backend cannot open it, it has no level, or it is a TIFF of other than
            8-bit samples.
    """
    path = Path(slide)
    if path.is_dir():  # it said "does not exist" (e.g. a folder of slides in a list of slides)
        raise WSIError(f"slide {str(path)!r} is a folder, not a slide file.", path)
    if not path.is_file():
        raise SlideNotFoundError(f"slide {str(path)!r} does not exist.", path)
    reader = _reader_of(backend)
    name = getattr(reader, "backend", type(reader).__name__)
    try:
        wsi = reader.read(str(path))
        n = reader.get_level_count(wsi)
        reader.get_size(wsi, 0)
    except Exception as e:  # noqa: BLE001 - any backend failure becomes a clear, slide-named error
        raise WSIError(
            f"cannot read slide {str(path)!r} with the {name!r} backend: {type(e).__name__}: {e}"
            + (_tifffile_hint(path) if name == "openslide" else ""),
            path,
        ) from e
    if n < 1:
        raise WSIError(f"slide {str(path)!r} has no image level ({name!r} backend).", path)
    dtype = _tiff_dtype(path)
    if dtype is not None and dtype != np.uint8:
        _close(wsi)
        raise WSIError(
            f"slide {str(path)!r} holds {dtype} samples: slides are read as 8-bit RGB (openslide keeps the high byte, "
            "the tifffile reader wraps the values around), so its patches would be silently wrong; convert it to an "
            "8-bit RGB slide.",
            path,
        )
    return reader, wsi


def _tiff_dtype(path: Path) -> np.dtype | None:
    """Sample type of the main image of a TIFF-based slide (``tifffile``, header only), ``None`` for other files."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return np.dtype(tif.series[0].dtype)
    except Exception:  # noqa: BLE001 - not a TIFF (MIRAX, ...): the backend's reader decides alone
        return None


def resolve_level(
    reader: Any, wsi: Any, level: int | None = None, mpp: float | None = None, slide: Any = None, name: str = "level"
) -> int:
    """A valid level index: ``level`` (negative counts from the lowest resolution, ``-1`` = last) or the level
    closest to ``mpp`` (microns per pixel, MONAI tolerances); ``None`` for both means 0. ``name``: what the level is
    called in the message of a level that does not exist (the setting, e.g. ``patch_level``: ``--patch_level 9``
    said only "level 9 does not exist").

    Raises:
        WSIError: the level does not exist, the slide has no MPP, or no level matches ``mpp``.
    """
    n = reader.get_level_count(wsi)
    where = str(slide) if slide is not None else _path_of(reader, wsi)
    if level is not None and mpp is not None:
        raise ValueError(f"give level or mpp, not both (level={level}, mpp={mpp}).")
    if mpp is not None:
        try:
            reader.get_mpp(wsi, 0)
        except Exception as e:  # noqa: BLE001 - MONAI's message ("only supports length conversion but `none` is given")
            raise WSIError(  # does not say that the slide lacks the metadata
                f"slide {where!r} has no microns-per-pixel (MPP) metadata (resolution tags or scanner properties), so "
                f"no level can be chosen by mpp={mpp}; give a level (e.g. patch_level) instead ({e}).",
                where,
            ) from e
        try:
            return int(reader.get_valid_level(wsi, None, mpp, None))
        except Exception as e:  # noqa: BLE001
            raise WSIError(f"slide {where!r}: no level at mpp={mpp}: {e}", where) from e
    lvl = 0 if level is None else _level_index(level)
    idx = lvl + n if lvl < 0 else lvl
    if not 0 <= idx < n:
        raise WSIError(f"slide {where!r} has {n} level(s) (0..{n - 1}); {name} {level} does not exist.", where)
    return idx


def _level_index(level: Any) -> int:
    """A level given as an integer (also a NumPy integer, a whole float such as pandas' ``1.0``, or text holding
    one) as an ``int``; anything else (``1.5``, which ``int()`` truncated to level 1 without a word) is an error."""
    if isinstance(level, numbers.Real) and not isinstance(level, (bool, numbers.Integral)):
        if math.isfinite(float(level)) and float(level).is_integer():
            return int(level)
    elif not isinstance(level, bool):
        parsed = _number(level, int, numbers.Integral)
        if parsed is not None:
            return parsed
    raise ValueError(
        f"a slide level must be an integer level index (negative: from the coarsest), got level={level!r}."
    )


def _path_of(reader: Any, wsi: Any) -> str:
    try:
        return str(reader.get_file_path(wsi))
    except Exception:  # noqa: BLE001
        return "<slide>"


def slide_info(slide: str | os.PathLike, backend: str | Any = "openslide") -> dict[str, Any]:
    """Levels, sizes, downsamples and MPP of a slide.

    Returns:
        ``{"path", "backend", "level_count", "sizes": [(H, W) per level], "downsamples": [...],
        "mpp": [(mpp_y, mpp_x) per level] or None}``.
    """
    reader, wsi = open_slide(slide, backend)
    n = reader.get_level_count(wsi)
    try:
        mpp = [tuple(float(v) for v in reader.get_mpp(wsi, i)) for i in range(n)]
    except Exception:  # noqa: BLE001 - a slide without resolution metadata
        mpp = None
    info = {
        "path": str(slide),
        "backend": getattr(reader, "backend", type(reader).__name__),
        "level_count": n,
        "sizes": [tuple(int(v) for v in reader.get_size(wsi, i)) for i in range(n)],
        "downsamples": [float(reader.get_downsample_ratio(wsi, i)) for i in range(n)],
        "mpp": mpp,
    }
    _close(wsi)
    return info


def _close(wsi: Any) -> None:
    close = getattr(wsi, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001
            pass


def read_region(
    slide: str | os.PathLike,
    location: Sequence[int],
    size: Sequence[int],
    level: int = 0,
    backend: str | Any = "openslide",
    center: bool = False,
) -> np.ndarray:
    """Read one patch as a ``(3, h, w)`` uint8 array, checking that it lies inside the slide.

    Args:
        slide: slide path.
        location: ``(y, x)`` in level-0 pixels: the top-left corner, or with ``center`` the MONAI
            ``center_location`` point (top-left = ``location - size // 2``).
        size: ``(h, w)`` at ``level``.
        level: level index (negative counts from the end).
        backend: ``WSIReader`` backend or reader.
        center: ``location`` follows ``PatchWSIDataset(center_location=True)``.

    Raises:
        SlideNotFoundError / WSIError: missing or unreadable slide, bad level, patch not inside the slide.
    """
    reader, wsi = open_slide(slide, backend)
    try:
        lvl = resolve_level(reader, wsi, level, slide=slide)
        ds = float(reader.get_downsample_ratio(wsi, lvl))
        top = _top_left(location, size, center)
        _check_inside(slide, top, size, ds, reader.get_size(wsi, 0))
        try:
            patch, _ = reader.get_data(wsi, location=top, size=tuple(int(s) for s in size), level=lvl)
        except Exception as e:  # noqa: BLE001
            raise WSIError(f"cannot read a patch of slide {str(slide)!r} at {top} level {lvl}: {e}", slide) from e
        return np.asarray(patch)
    finally:
        _close(wsi)


def _top_left(location: Sequence[int], size: Sequence[int], center: bool) -> tuple[int, int]:
    """Level-0 top-left corner of a patch; ``center`` uses MONAI 1.6.1 ``PatchWSIDataset._get_location``:
    ``location - size // 2`` with ``size`` at the patch level (not scaled by the downsample)."""
    if len(location) != 2 or len(size) != 2:
        raise ValueError(f"location and size must be (y, x) and (h, w), got {location} and {size}.")
    if not center:
        return int(location[0]), int(location[1])
    return int(location[0]) - int(size[0]) // 2, int(location[1]) - int(size[1]) // 2


def monai_location(top_left: Sequence[int], size: Sequence[int]) -> list[int]:
    """The ``PatchWSIDataset(center_location=True)`` location of a patch with level-0 ``top_left`` and ``size``
    at its level: ``top_left + size // 2`` (the level-0 centre when the patch is read at level 0)."""
    return [int(top_left[0]) + int(size[0]) // 2, int(top_left[1]) + int(size[1]) // 2]


def level0_top_left(location: Sequence[int], size: Sequence[int], downsample: float) -> list[int]:
    """Level-0 top-left corner of the patch of ``size`` (at a level of ``downsample``) whose level-0 centre is
    ``location``: ``location - int(size * downsample) // 2`` (the WSI bundle's datalist convention; equal to MONAI's
    ``center_location=True`` ``location - size // 2`` only at level 0)."""
    return [int(location[i]) - int(int(size[i]) * float(downsample)) // 2 for i in range(2)]


def level0_center(top_left: Sequence[int], size: Sequence[int], downsample: float) -> list[int]:
    """Inverse of :func:`level0_top_left`: the datalist location (level-0 centre) of the patch of ``size`` at a
    level of ``downsample`` whose level-0 top-left corner is ``top_left``."""
    return [int(top_left[i]) + int(int(size[i]) * float(downsample)) // 2 for i in range(2)]


def _check_inside(slide: Any, top: Sequence[int], size: Sequence[int], ds: float, size0: Sequence[int]) -> None:
    h0, w0 = int(size0[0]), int(size0[1])
    y, x = int(top[0]), int(top[1])
    ph, pw = int(math.ceil(size[0] * ds)), int(math.ceil(size[1] * ds))
    if size[0] <= 0 or size[1] <= 0:
        raise WSIError(f"slide {str(slide)!r}: patch size must be positive, got {tuple(size)}.", slide)
    if y < 0 or x < 0 or y + ph > h0 or x + pw > w0:
        raise WSIError(
            f"slide {str(slide)!r}: patch at (y, x)={(y, x)} of level-0 extent {(ph, pw)} is outside the slide "
            f"(level-0 size (H, W)={(h0, w0)}).",
            slide,
        )


def tissue_mask(
    slide: str | os.PathLike,
    level: int | None = -1,
    mpp: float | None = None,
    backend: str | Any = "openslide",
    hsv_threshold: Mapping[str, Any] | None = None,
    min_saturation: float = 0.04,
    min_brightness: float = 0.1,
    fill_holes: bool = True,
    min_area: float = 0.0005,
    max_size: int | None = 2048,
) -> tuple[np.ndarray, int, float]:
    """Tissue mask of a slide at a low resolution: Otsu threshold on HSV saturation (MONAI ``ForegroundMask``).

    The level is read through ``WSIReader`` (strip by strip when it is large, see ``max_size``); pixels whose saturation is above both Otsu's threshold and
    ``min_saturation`` are tissue, near-black pixels (brightest channel at most ``min_brightness``) are
    background; holes are filled and components smaller than ``min_area`` (fraction of the
    mask) removed (``scipy.ndimage``). When the level's larger side exceeds ``max_size`` it is block-averaged
    by an integer factor first (:func:`block_mean`; the returned ``downsample`` includes that factor). The last
    row and column of blocks may be partial (the level's size is rarely a multiple of the factor): they are
    averaged over the pixels they hold, so tissue at the right and bottom edges of the slide is in the mask, which
    has ``ceil(H / factor) x ceil(W / factor)`` pixels. Its grid can therefore extend past the slide by less than one
    mask pixel (``(H0, W0)`` at level 0 is the slide's extent, not ``mask.shape * downsample``): a footprint that
    must stay on the slide is checked against the slide size, as :func:`slide_patch_grid` and
    :func:`monai_gmr.workflows.wsi.infer_slide` do and :func:`sample_patch_locations` does with ``bounds``.

    Args:
        slide: slide path.
        level: level index (``-1`` = lowest resolution); ignored when ``mpp`` is given.
        mpp: pick the level closest to this resolution instead.
        backend: ``WSIReader`` backend or reader.
        hsv_threshold: thresholds passed to ``ForegroundMask(threshold=None, hsv_threshold=...)`` (default
            ``{"S": "otsu"}``).
        min_saturation: saturation floor (so a blank slide gives an empty mask, not Otsu noise).
        min_brightness: pixels whose brightest channel is at most this fraction of 255 are background (HSV
            saturation ``(max - min) / max`` is close to 1 for near-black pixels, so a black or noisy dark
            background, e.g. a scanner's unscanned area, would otherwise be tissue); ``0`` disables it.
        fill_holes: fill holes inside tissue.
        min_area: drop components smaller than this fraction of the mask.
        max_size: upper bound of the mask's larger side (``None``: no limit). A level that must be reduced and holds
            more than 16 M pixels is read in strips of whole blocks, so a large single-level slide need not fit in
            memory.

    Returns:
        ``(mask, level, downsample)``: ``(H, W)`` bool mask, level read, level-0 pixels per mask pixel.

    Raises:
        SlideNotFoundError / WSIError: missing/unreadable slide, level that does not exist.
        ValueError: ``max_size`` is not a positive integer or ``None``.
    """
    from monai.transforms import ForegroundMask
    from scipy import ndimage

    # a negative max_size gave a negative downsample (a map whose cells lay nowhere), 0 a ZeroDivisionError
    max_size = positive_int(max_size, "max_size", allow_none=True)
    reader, wsi = open_slide(slide, backend)
    try:
        lvl = resolve_level(reader, wsi, None if mpp is not None else level, mpp, slide=slide)
        ds = float(reader.get_downsample_ratio(wsi, lvl))
        hgt, wid = (int(v) for v in reader.get_size(wsi, lvl))
        factor = 1
        if max_size is not None and max(hgt, wid) > max_size:
            factor = int(math.ceil(max(hgt, wid) / max_size))
        try:
            img = _read_level_block_mean(reader, wsi, lvl, ds, (hgt, wid), factor)
        except Exception as e:  # noqa: BLE001
            raise WSIError(f"cannot read level {lvl} of slide {str(slide)!r}: {e}", slide) from e
    finally:
        _close(wsi)
    # near-black pixels (saturation ~1) become white background before Otsu, so they neither count as tissue nor
    # pull Otsu's threshold above the saturation of real tissue
    img = np.where(img.max(0, keepdims=True) > min_brightness * 255.0, img, np.uint8(255))
    fg = ForegroundMask(threshold=None, hsv_threshold=dict(hsv_threshold or {"S": "otsu"}))
    mask = np.asarray(fg(img))[0].astype(bool)
    sat = _saturation(img)
    if not sat.any() and img.min() < img.max():  # an empty mask that "lower min_tissue" advice would not explain
        logger.warning(
            "slide %s: level %d has no colour at all (a greyscale slide?): the tissue mask thresholds HSV saturation "
            "and is empty; give a tissue mask of your own or use min_tissue=0.", slide, lvl,
        )  # fmt: skip
    mask &= sat > min_saturation
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    if min_area > 0 and mask.any():
        lab, n = ndimage.label(mask)
        sizes = np.bincount(lab.ravel())
        keep = sizes >= max(1.0, min_area * mask.size)
        keep[0] = False
        mask = keep[lab]
    return mask, lvl, ds * factor


#: level pixels per strip when :func:`tissue_mask` reads a large level strip by strip (~64 MB of RGBA)
_STRIP_PIXELS = 1 << 24


def _read_level_block_mean(
    reader: Any, wsi: Any, lvl: int, ds: float, size: tuple[int, int], factor: int
) -> np.ndarray:
    """Level ``lvl`` as ``(3, ceil(H / factor), ceil(W / factor))`` uint8, block-averaged by ``factor``.

    A level larger than ``_STRIP_PIXELS`` is read in strips of whole block rows and each strip averaged before the
    next is read, so a single-level slide (a flat TIFF of 10^9 pixels and more) never has to fit in memory whole;
    the result is the same as :func:`block_mean` of the whole level. Strips need level-0 locations, so only levels
    with an integer downsample are read that way (others, rare, are read whole as before).
    """
    hgt, wid = size
    if factor <= 1 or hgt * wid <= _STRIP_PIXELS or ds != int(ds):
        img, _ = reader.get_data(wsi, level=lvl)
        return block_mean(np.asarray(img)[:3], factor)
    rows = factor * max(1, _STRIP_PIXELS // (wid * factor))  # a multiple of factor: blocks never straddle strips
    parts = []
    for y in range(0, hgt, rows):
        h = min(rows, hgt - y)
        strip, _ = reader.get_data(wsi, location=(int(y * ds), 0), size=(h, wid), level=lvl)
        parts.append(block_mean(np.asarray(strip)[:3], factor))
    return np.concatenate(parts, axis=1)


def block_mean(img: np.ndarray, factor: int) -> np.ndarray:
    """Block average of a ``(C, H, W)`` image by an integer ``factor``: ``(C, ceil(H / factor), ceil(W / factor))``.

    Output pixel ``(i, j)`` is the mean of the input pixels ``[i * factor, (i + 1) * factor) x [j * factor, (j + 1) *
    factor)`` that exist: the last row and column of blocks, when ``H`` or ``W`` is not a multiple of ``factor``, are
    averaged over the pixels they hold instead of being dropped. The result has ``img``'s dtype (integer types
    truncated, as ``mean().astype()`` does).
    """
    img = np.asarray(img)
    factor = int(factor)
    if factor <= 1:
        return img
    if img.ndim != 3:
        raise ValueError(f"img must be (C, H, W), got shape {img.shape}.")
    hgt, wid = img.shape[1:]
    rows, cols = np.arange(0, hgt, factor), np.arange(0, wid, factor)
    acc = np.float64 if img.dtype.kind == "f" else np.int64
    total = np.add.reduceat(np.add.reduceat(img, rows, axis=1, dtype=acc), cols, axis=2, dtype=acc)
    count = np.diff(np.append(rows, hgt))[:, None] * np.diff(np.append(cols, wid))[None, :]
    return (total / count).astype(img.dtype)


def _saturation(img_chw: np.ndarray) -> np.ndarray:
    rgb = img_chw.astype(np.float32) / 255.0
    mx, mn = rgb.max(0), rgb.min(0)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)


def sample_patch_locations(
    mask: np.ndarray,
    downsample: float,
    n: int,
    patch_size: int | Sequence[int] = 0,
    patch_downsample: float = 1.0,
    min_fraction: float = 1.0,
    exclude: np.ndarray | None = None,
    seed: int | np.random.Generator = 0,
    center: bool = True,
    replace: bool = False,
    bounds: Sequence[float] | None = None,
) -> np.ndarray:
    """Random patch locations (level-0 ``(y, x)``) whose footprint lies in ``mask`` (and outside ``exclude``).

    A mask pixel is eligible when at least ``min_fraction`` of the footprint window around it is inside ``mask``
    (and, with ``exclude``, none of it is inside ``exclude``). The window (``2 r + 1`` mask pixels, ``r =
    ceil(footprint / 2 / downsample)``) contains the footprint of a patch centred anywhere in that pixel, so the
    guarantee holds for the returned locations, which get sub-pixel jitter within the chosen mask pixel.

    Args:
        mask: ``(H, W)`` bool mask at ``downsample``.
        downsample: level-0 pixels per mask pixel.
        n: number of locations.
        patch_size: ``(h, w)`` at the patch level (0: point samples).
        patch_downsample: downsample of the patch level (patch footprint = ``patch_size * patch_downsample``).
        min_fraction: required fraction of the footprint inside ``mask``.
        exclude: optional ``(H, W)`` bool mask that the footprint must not touch (e.g. tumour for normal patches).
        seed: integer seed or numpy ``Generator``.
        center: return level-0 patch centres (else level-0 top-left corners; :func:`level0_center` turns them into
            the bundle's datalist locations, :func:`monai_location` into ``PatchWSIDataset(center_location=True)``
            ones).
        replace: sample mask pixels with replacement (otherwise ``n`` is capped by the eligible count).
        bounds: level-0 ``(H0, W0)`` of the slide: every footprint also stays inside it (default: the mask grid,
            ``mask.shape * downsample``). Give it with a :func:`tissue_mask` whose last row/column covers a partial
            block, i.e. reaches past the slide's edge.

    Returns:
        ``(m, 2)`` int64 array of ``(y, x)``, ``m <= n`` (a warning is logged when fewer are eligible).
    """
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {mask.shape}.")
    if downsample <= 0:
        raise ValueError(f"downsample must be > 0, got {downsample}.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    ph, pw = size_hw(patch_size, "patch_size")
    foot0 = (ph * patch_downsample, pw * patch_downsample)  # level-0 footprint
    # a centre anywhere in mask pixel i has its footprint inside mask pixels i - r .. i + r: an odd, centred
    # window of 2 r + 1 pixels is a conservative footprint for every jittered centre
    ry = int(math.ceil(foot0[0] / 2.0 / downsample))
    rx = int(math.ceil(foot0[1] / 2.0 / downsample))
    win = (2 * ry + 1, 2 * rx + 1)
    frac = ndimage.uniform_filter(mask.astype(np.float32), size=win, mode="constant", cval=0.0)
    eligible = frac >= min_fraction - 1e-6
    if exclude is not None:
        ex = np.asarray(exclude, bool)
        if ex.shape != mask.shape:
            raise ValueError(f"exclude must have the mask's shape {mask.shape}, got {ex.shape}.")
        eligible &= ~ndimage.maximum_filter(ex, size=win, mode="constant", cval=False)
    # keep the whole footprint inside the mask grid (and the slide)
    half_h, half_w = foot0[0] / 2.0, foot0[1] / 2.0
    ext_h, ext_w = mask.shape[0] * downsample, mask.shape[1] * downsample
    if bounds is not None:
        bh, bw = (float(v) for v in bounds)
        ext_h, ext_w = min(ext_h, bh), min(ext_w, bw)
    ys = (np.arange(mask.shape[0]) + 0.5) * downsample
    xs = (np.arange(mask.shape[1]) + 0.5) * downsample
    eligible &= ((ys - half_h >= 0) & (ys + half_h <= ext_h))[:, None]
    eligible &= ((xs - half_w >= 0) & (xs + half_w <= ext_w))[None, :]
    idx = np.flatnonzero(eligible)
    if idx.size == 0 or n <= 0:
        if n > 0:
            logger.warning("sample_patch_locations: no eligible location (mask sum %d).", int(mask.sum()))
        return np.zeros((0, 2), np.int64)
    m = n if replace else min(n, idx.size)
    if m < n:
        logger.warning("sample_patch_locations: only %d eligible locations for %d requested.", idx.size, n)
    pick = rng.choice(idx, size=m, replace=replace)
    iy, ix = np.unravel_index(pick, mask.shape)
    jy, jx = rng.uniform(0.0, 1.0, size=(2, m))
    cy = (iy + jy) * downsample
    cx = (ix + jx) * downsample
    cy = np.clip(cy, half_h, ext_h - half_h)
    cx = np.clip(cx, half_w, ext_w - half_w)
    if center:
        out = np.stack([np.floor(cy), np.floor(cx)], 1)
    else:
        out = np.stack([np.floor(cy - half_h), np.floor(cx - half_w)], 1)
    return out.astype(np.int64)


def slide_patch_grid(
    slide: str | os.PathLike,
    patch_size: int | Sequence[int] = 224,
    level: int = 0,
    stride: int | Sequence[int] | None = None,
    mask: np.ndarray | None = None,
    mask_downsample: float | None = None,
    tissue_level: int | None = -1,
    min_tissue: float = 0.25,
    backend: str | Any = "openslide",
    center: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A regular grid of patches over the tissue of a slide, for inference and probability maps.

    The grid has ``rows x cols`` cells of ``stride`` pixels at ``level`` (default: non-overlapping,
    ``stride = patch_size``), starting at the slide origin; a cell is kept when at least ``min_tissue`` of its
    patch footprint is tissue. The tissue mask is :func:`tissue_mask` at ``tissue_level`` unless ``mask`` /
    ``mask_downsample`` are given (``min_tissue=0`` keeps every cell).

    Args:
        slide: slide path.
        patch_size: ``(h, w)`` at ``level``.
        level: level the patches are read at.
        stride: grid step at ``level`` (default ``patch_size``).
        mask: optional precomputed tissue mask.
        mask_downsample: its downsample (required with ``mask``).
        tissue_level: level of the automatic tissue mask.
        min_tissue: minimal tissue fraction of a patch footprint.
        backend: ``WSIReader`` backend or reader.
        center: item locations follow ``PatchWSIDataset(center_location=True)`` (:func:`monai_location`), else
            they are level-0 top-left corners (``center_location=False``, as ``SlidingPatchWSIDataset``).
        extra: extra keys copied into every item (e.g. ``{"label": 0}``).

    Returns:
        dict with ``items`` (``[{"image", "location": [y, x], "size": [h, w], "level", "grid": [row, col]}]``),
        ``grid_shape`` (rows, cols), ``stride`` (level-0 pixels, (sy, sx)), ``level``, ``downsample`` (of
        ``level``), ``tissue`` (the mask), ``tissue_downsample``, ``size0`` (level-0 (H, W)). A probability map
        ``P`` of shape ``grid_shape`` filled by ``P[row, col] = p`` has ``stride`` level-0 pixels per cell.

    Raises:
        SlideNotFoundError / WSIError: missing/unreadable slide, bad level.
    """
    reader, wsi = open_slide(slide, backend)
    try:
        lvl = resolve_level(reader, wsi, level, slide=slide)
        ds = float(reader.get_downsample_ratio(wsi, lvl))
        h0, w0 = (int(v) for v in reader.get_size(wsi, 0))
    finally:
        _close(wsi)
    ph, pw = size_hw(patch_size, "patch_size")
    if stride is None:
        sh, sw = ph, pw
    else:
        sh, sw = size_hw(stride, "stride")
    if min(ph, pw, sh, sw) <= 0:
        raise ValueError(f"patch_size and stride must be positive, got {(ph, pw)} and {(sh, sw)}.")
    f0 = (int(round(ph * ds)), int(round(pw * ds)))  # level-0 footprint
    s0 = (int(round(sh * ds)), int(round(sw * ds)))
    rows = max(0, (h0 - f0[0]) // s0[0] + 1) if h0 >= f0[0] else 0
    cols = max(0, (w0 - f0[1]) // s0[1] + 1) if w0 >= f0[1] else 0
    if mask is None:
        if min_tissue > 0:
            mask, _, mask_downsample = tissue_mask(slide, level=tissue_level, backend=backend)
    elif mask_downsample is None:
        raise ValueError("mask_downsample is required with mask.")
    items: list[dict[str, Any]] = []
    if rows and cols:
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        ty, tx = r.ravel() * s0[0], c.ravel() * s0[1]
        if mask is not None and min_tissue > 0:
            m = np.asarray(mask, np.float32)
            # integral image of the mask gives the tissue fraction of every footprint
            ii = np.pad(m.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            y0 = np.clip(np.floor(ty / mask_downsample).astype(int), 0, m.shape[0])
            x0 = np.clip(np.floor(tx / mask_downsample).astype(int), 0, m.shape[1])
            y1 = np.clip(np.ceil((ty + f0[0]) / mask_downsample).astype(int), 0, m.shape[0])
            x1 = np.clip(np.ceil((tx + f0[1]) / mask_downsample).astype(int), 0, m.shape[1])
            area = np.maximum((y1 - y0) * (x1 - x0), 1)
            frac = (ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]) / area
            keep = frac >= min_tissue - 1e-6
        else:
            keep = np.ones(ty.shape, bool)
        for rr, cc, yy, xx in zip(r.ravel()[keep], c.ravel()[keep], ty[keep], tx[keep]):
            loc = monai_location((yy, xx), (ph, pw)) if center else [int(yy), int(xx)]
            items.append({"image": str(slide), "location": loc, "size": [ph, pw], "level": lvl,
                          "grid": [int(rr), int(cc)], **dict(extra or {})})  # fmt: skip
    return {
        "items": items,
        "grid_shape": (int(rows), int(cols)),
        "stride": s0,
        "level": lvl,
        "downsample": ds,
        "tissue": mask,
        "tissue_downsample": mask_downsample,
        "size0": (h0, w0),
    }


def validate_patch_items(
    items: Sequence[Mapping[str, Any]],
    backend: str | Any = "openslide",
    patch_size: int | Sequence[int] | None = None,
    patch_level: int | None = None,
    center_location: bool = True,
    skip_bad: bool = False,
    level0_centers: bool = False,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Check a ``PatchWSIDataset`` datalist before training/inference: every slide opens, every level exists,
    every patch lies inside its slide. Each slide is opened once.

    Args:
        items: ``[{"image": slide, "location": [y, x], "size"?: [h, w], "level"?: L, ...}]``.
        backend: ``WSIReader`` backend or reader.
        patch_size: dataset-wide patch size (overrides ``item["size"]``, like ``PatchWSIDataset``).
        patch_level: dataset-wide level (overrides ``item["level"]``).
        center_location: locations follow ``PatchWSIDataset(center_location=True)`` (its default).
        skip_bad: drop bad items and return their messages instead of raising.
        level0_centers: with ``center_location``, locations are level-0 patch centres (the WSI bundle's convention,
            :func:`level0_top_left`) rather than MONAI's ``location - size // 2``; the box checked is the one read.

    Returns:
        ``(good_items, error_messages)``.

    Raises:
        WSIError: the first bad item, unless ``skip_bad``.
    """
    good: list[dict[str, Any]] = []
    errors: list[str] = []
    cache: dict[str, Any] = {}
    for item in items:
        slide = str(item["image"])
        try:
            if slide not in cache:
                try:
                    reader, wsi = open_slide(slide, backend)
                    n_levels = reader.get_level_count(wsi)
                    dss_ = [float(reader.get_downsample_ratio(wsi, i)) for i in range(n_levels)]
                    cache[slide] = (n_levels, tuple(reader.get_size(wsi, 0)), dss_)
                    _close(wsi)
                except WSIError as e:
                    cache[slide] = e
            entry = cache[slide]
            if isinstance(entry, WSIError):
                raise entry
            n, size0, dss = entry
            lvl = patch_level if patch_level is not None else int(item.get("level", 0))
            idx = lvl + n if lvl < 0 else lvl
            if not 0 <= idx < n:  # the dataset-wide level is the patch_level setting (the message said "level 9")
                what = "patch_level" if patch_level is not None else "level"
                raise WSIError(f"slide {slide!r} has {n} level(s) (0..{n - 1}); {what} {lvl} does not exist.", slide)
            size = patch_size if patch_size is not None else item.get("size")
            if size is None:
                raise WSIError(f"item of slide {slide!r} has no 'size' and no patch_size was given.", slide)
            size = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
            loc = item.get("location")
            if loc is None:
                raise WSIError(f"item of slide {slide!r} has no 'location'.", slide)
            if center_location and level0_centers:
                # rounded as monai_gmr.workflows.wsi.to_top_left rounds them for the read (int() truncated: a
                # fractional centre passed here and was read one pixel further, past the slide's edge)
                top = tuple(level0_top_left([int(round(float(v))) for v in loc], size, dss[idx]))
            else:
                top = _top_left([int(v) for v in loc], size, center_location)
            _check_inside(slide, top, size, dss[idx], size0)
            good.append(dict(item))
        except WSIError as e:
            if not skip_bad:
                raise
            errors.append(str(e))
    if errors:
        logger.warning("%d bad patch item(s) skipped; first: %s", len(errors), errors[0])
    return good, errors


# --------------------------------------------------------------------------------------------------------------------
# D4 transforms of slides and maps
# --------------------------------------------------------------------------------------------------------------------
#: default upper bound of the level-0 pixels :func:`transform_slide` reads into memory (about 200 MB of RGB).
TRANSFORM_MAX_PIXELS = 2**26


def as_d4_element(element: Any, name: str = "element") -> Any:
    """A :class:`monai_gmr.functional.D4Element` from an element, its ``name`` (``"rot90"``, ``"rot270_flip"``, ...)
    or its index in :func:`monai_gmr.functional.d4_elements` (0-7, identity first).

    Raises:
        ValueError: anything else; the message names the argument ``name`` and lists the valid names.
    """
    from monai_gmr.functional.groups import D4Element, d4_elements

    elements = d4_elements()
    if isinstance(element, D4Element):
        return D4Element(k=int(element.k) % 4, flip=bool(element.flip))
    if isinstance(element, (int, np.integer)) and not isinstance(element, bool):
        if 0 <= int(element) < len(elements):
            return elements[int(element)]
    elif isinstance(element, str):
        for e in elements:
            if e.name == element.strip().lower():
                return e
    raise ValueError(
        f"{name} must be a D4Element, an index 0-7 or one of {[e.name for e in elements]}, got {name}={element!r}."
    )


def transform_array(array: Any, element: Any, inverse: bool = False, channels_last: bool = False) -> np.ndarray:
    """Apply a D4 element (or its inverse) to the last two dims of an array (a mask, a probability map).

    The element acts exactly as :class:`monai_gmr.functional.D4Element` on a tensor: ``(..., H, W)`` arrays (bool,
    integer, float) go through ``torch.flip``/``torch.rot90`` and come back as numpy, so
    ``transform_array(transform_array(a, g), g, inverse=True)`` is ``a`` bit for bit. Use it to bring a map computed on
    a :func:`transform_slide` copy back to the original slide's frame (``inverse=True``).

    Args:
        array: ``(..., H, W)`` array.
        element: :func:`as_d4_element` input.
        inverse: apply the inverse element.
        channels_last: ``array`` is ``(H, W, C)`` (an RGB image as slides are read): the element acts on its first
            two dims.

    Returns:
        ``(..., H, W)`` array (``(..., W, H)`` for a rotation by 90 or 270 degrees; ``(H, W, C)``/``(W, H, C)`` with
        ``channels_last``), a new contiguous array.
    """
    import torch

    g = as_d4_element(element)
    if inverse:
        g = g.inverse()
    arr = np.asarray(array)
    if arr.ndim < (3 if channels_last else 2):
        raise ValueError(f"array must be (..., H, W) or, with channels_last, (H, W, C); got shape {arr.shape}.")
    if channels_last:
        arr = np.moveaxis(arr, -1, 0)
    dtype = arr.dtype.newbyteorder("=")
    if not arr.dtype.isnative:  # torch.from_numpy refuses a non-native byte order
        arr = arr.astype(dtype)
    if dtype.kind == "u" and dtype.itemsize > 1:
        # torch cannot flip uint16/32/64 (e.g. label masks): permute the same bits as the signed type of that width
        arr = arr.view(np.dtype(f"i{dtype.itemsize}"))
    out = g(torch.from_numpy(np.require(arr, requirements=["C", "W"])))  # a copy only when read-only/strided
    if channels_last:
        out = out.movedim(0, -1)
    return np.ascontiguousarray(out.numpy()).view(dtype)


def transform_box(
    top_left: Sequence[int], size: Sequence[int], shape: Sequence[int], element: Any, inverse: bool = False
) -> list[int]:
    """Top-left corner of a box after a D4 element acts on the ``(H, W)`` image that holds it.

    ``transform_array`` of an image of ``shape`` moves the pixels ``[y, y + h) x [x, x + w)`` onto the box
    ``[y', y' + h') x [x', x' + w')`` returned here (``(h', w') = (w, h)`` for a rotation by 90 or 270 degrees), e.g.
    the level-0 footprint of a patch on the original slide to the one of the same pixels on the
    :func:`transform_slide` copy.

    Args:
        top_left: ``(y, x)`` of the box.
        size: ``(h, w)`` of the box.
        shape: ``(H, W)`` of the image before the element.
        element: :func:`as_d4_element` input.
        inverse: apply the inverse element (``shape`` is then the transformed image's).

    Returns:
        ``[y', x']``.
    """
    g = as_d4_element(element)
    if inverse:
        g = g.inverse()
    y, x = int(top_left[0]), int(top_left[1])
    h, w = int(size[0]), int(size[1])
    hh, ww = int(shape[0]), int(shape[1])
    if g.flip:  # D4Element: flip W first
        x = ww - x - w
    for _ in range(g.k % 4):  # rot90 in (H, W): pixel (i, j) of an (H, W) image goes to (W - 1 - j, i)
        y, x, h, w, hh, ww = ww - x - w, y, w, h, ww, hh
    return [y, x]


def transform_slide(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    element: Any,
    *,
    backend: str | Any = "openslide",
    max_pixels: int | None = TRANSFORM_MAX_PIXELS,
    n_levels: int | None = None,
    mpp: float | None = None,
    tile_size: int = 256,
    compression: str = "deflate",
) -> dict[str, Any]:
    """Write a copy of a slide as if the glass had been placed rotated/flipped on the scanner.

    Level 0 of ``src`` is read whole through MONAI's ``WSIReader`` (:func:`open_slide`), transformed by the D4
    ``element`` exactly as :func:`transform_array` (:class:`~monai_gmr.functional.D4Element` on the ``(3, H, W)``
    tensor) and written with :func:`~monai_gmr.data.synthetic_wsi.write_pyramidal_tiff` as a tiled pyramidal TIFF
    (OpenSlide ``generic-tiff``; MONAI's openslide and tifffile backends read it), by default losslessly
    (``deflate``), so level 0 of the copy holds exactly the transformed pixels. The lower levels are 2x2
    box-filter reductions of the new level 0, not copies of the source's levels: they are the transform of the same
    reductions of the source's level 0 only when the level-0 height and width are multiples of
    ``2 ** (n_levels - 1)`` (the reduction drops an odd last row/column, which a flip moves to the other side).
    Transform the reference slide with the identity (``element="rot0"``) to compare copies built the same way.

    Args:
        src: slide to read.
        dst: ``.tif``/``.tiff`` to write (atomically; its folder is created).
        element: :func:`as_d4_element` input (``D4Element``, name such as ``"rot90_flip"``, or index 0-7).
        backend: ``WSIReader`` backend or reader used to read ``src``.
        max_pixels: refuse a level 0 with more pixels than this (``None``: no limit); the level is held in memory
            twice.
        n_levels: levels of the copy (default: enough halvings to reach the resolution of ``src``'s coarsest
            level, ``1 + round(log2(its downsample))``; 1 for a single-level slide).
        mpp: level-0 microns per pixel of the copy (default: ``src``'s; a rotation by 90/270 degrees swaps the
            ``y``/``x`` values, and their mean is written: the TIFF writer stores one isotropic value).
        tile_size: TIFF tile edge (multiple of 16).
        compression: TIFF codec (``"deflate"``: lossless; ``"jpeg"`` would change the pixels).

    Returns:
        ``{"path", "src", "element", "size0": [H, W] of the copy, "src_size0", "levels": [[H, W] per level], "mpp"}``.

    Raises:
        SlideNotFoundError: ``src`` does not exist. WSIError: unreadable ``src``, no MPP and none given, or a
        level 0 larger than ``max_pixels`` (the message names the slide). ValueError: a bad ``element``, or ``dst``
        is the same file as ``src``.
    """
    from monai_gmr.data.synthetic_wsi import write_pyramidal_tiff

    g = as_d4_element(element)
    src_p, dst_p = Path(src), Path(dst)
    if dst_p.exists() and src_p.exists() and dst_p.resolve() == src_p.resolve():
        raise ValueError(f"dst must differ from src, got dst={str(dst)!r}.")
    reader, wsi = open_slide(src_p, backend)
    try:
        n_src = int(reader.get_level_count(wsi))
        h0, w0 = (int(v) for v in reader.get_size(wsi, 0))
        if max_pixels is not None and h0 * w0 > int(max_pixels):
            raise WSIError(
                f"slide {str(src)!r}: level 0 has {h0} x {w0} = {h0 * w0} pixels, more than max_pixels={max_pixels}; "
                "raise max_pixels if it fits in memory (about 6 bytes per pixel).",
                src,
            )
        if mpp is None:
            try:
                my, mx = (float(v) for v in reader.get_mpp(wsi, 0))
            except Exception as e:  # noqa: BLE001
                raise WSIError(f"slide {str(src)!r} has no MPP metadata; pass mpp=...", src) from e
            if abs(my - mx) > 0.01 * max(my, mx):
                logger.warning("slide %s: anisotropic MPP (%g, %g); the copy gets their mean.", src, my, mx)
            mpp = 0.5 * (my + mx)
        if n_levels is None:
            ds_last = float(reader.get_downsample_ratio(wsi, n_src - 1))
            n_levels = 1 + max(0, int(round(math.log2(max(ds_last, 1.0)))))
        try:
            img, _ = reader.get_data(wsi, location=(0, 0), size=(h0, w0), level=0)
        except Exception as e:  # noqa: BLE001
            raise WSIError(f"cannot read level 0 of slide {str(src)!r}: {type(e).__name__}: {e}", src) from e
    finally:
        _close(wsi)
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[0] < 3:
        raise WSIError(f"slide {str(src)!r}: level 0 read as shape {img.shape}, expected (3, H, W).", src)
    out = np.ascontiguousarray(np.moveaxis(transform_array(img[:3].astype(np.uint8, copy=False), g), 0, -1))
    del img  # out: (H', W', 3)
    levels = write_pyramidal_tiff(
        dst_p, out, mpp=float(mpp), tile_size=int(tile_size), n_levels=int(n_levels), compression=compression,
        description=f"monai_gmr transform_slide {g.name}",
    )
    logger.info("transform_slide: %s -> %s (%s, %d level(s))", src, dst, g.name, len(levels))
    return {
        "path": str(dst_p),
        "src": str(src_p),
        "element": g.name,
        "size0": [int(out.shape[0]), int(out.shape[1])],
        "src_size0": [h0, w0],
        "levels": [list(s) for s in levels],
        "mpp": float(mpp),
    }
