"""Report writers for :class:`~monai_gmr.evaluation.robustness.RobustnessResult`: JSON, CSV, polar PNG, TensorBoard.

Every file goes through :mod:`monai_gmr.utils` atomic helpers: the content is fully produced first and renamed
onto its final path, so a report file is either complete or absent.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_gmr.utils import as_bool, atomic_path, atomic_write_json, atomic_write_text

from .robustness import RobustnessResult

__all__ = [
    "load_result", "plot_polar", "report_paths", "result_to_csv", "save_csv", "save_json", "write_report", "write_tensorboard",
]

logger = logging.getLogger(__name__)


def save_json(result: RobustnessResult, path: str | os.PathLike) -> Path:
    """Write ``result.to_dict()`` (with the summary) as JSON, atomically."""
    return atomic_write_json(path, result.to_dict())


def load_result(path: str | os.PathLike) -> RobustnessResult:
    """Read a JSON report written by :func:`save_json`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not JSON, or not a robustness report (e.g. a bundle's ``eval/metrics.json`` or the
            CSV given to ``--compare``); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"robustness report {path} does not exist.")
    try:
        d = json.loads(path.read_text())
    except ValueError as e:  # a bare JSONDecodeError named no file
        raise ValueError(f"robustness report {path} is not JSON ({e}); pass the {{prefix}}.json report.") from e
    keys = ("model_name", "task", "metrics", "angles", "flips", "per_angle")
    missing = [k for k in keys if not isinstance(d, dict) or k not in d]
    if missing:  # a bare KeyError 'model_name'
        raise ValueError(f"{path} is not a robustness report written by save_json: it lacks {missing}.")
    return RobustnessResult.from_dict(d)


def result_to_csv(result: RobustnessResult) -> str:
    """CSV text: one row per view (``model, view, kind, angle, flip, <metrics...>``) then one row per summary
    statistic (``kind=summary``, ``view`` = statistic name)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "view", "kind", "angle", "flip", *result.metrics])
    names = result.angle_view_names()  # as in per_view() and the TTA inferer (rotm10, not rot-10; 3D: rot30_ax01)
    for i, a in enumerate(result.angles):
        w.writerow([result.model_name, names[i], "angle", f"{a:g}", "", *(_fmt(result.per_angle[m][i]) for m in result.metrics)])
    for f, vals in result.per_flip.items():
        w.writerow([result.model_name, f"flip_{f}", "flip", "0", f, *(_fmt(vals.get(m)) for m in result.metrics)])
    summ = result.summary()
    for stat in next(iter(summ.values()), {}):  # every statistic of the JSON summary, in its order
        w.writerow([result.model_name, stat, "summary", "", "", *(_fmt(summ[m][stat]) for m in result.metrics)])
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{float(v):.6g}"


def save_csv(result: RobustnessResult, path: str | os.PathLike) -> Path:
    """Write :func:`result_to_csv` atomically."""
    return atomic_write_text(path, result_to_csv(result))


def _as_named(results: RobustnessResult | Sequence[RobustnessResult] | Mapping[str, RobustnessResult]) -> dict[str, RobustnessResult]:
    if isinstance(results, RobustnessResult):
        return {results.model_name: results}
    if isinstance(results, Mapping):
        return dict(results)
    named: dict[str, RobustnessResult] = {}
    for r in results:
        name = r.model_name
        i = 2
        while name in named:
            name = f"{r.model_name} ({i})"
            i += 1
        named[name] = r
    return named


def _polar_line(angles: Any, values: Any) -> tuple[Any, Any]:
    """The polar line of one metric: ``(theta (radians), values)`` in angle order, closed only when the angles go
    round the circle (no gap between neighbours wider than twice the median gap, at least 3 angles). Otherwise the
    line starts after its widest gap and ends before it: a sweep such as 0..90 or ``[0, 45, 90, 135]`` was joined
    from its last angle back to 0 by a chord through angles never measured."""
    import numpy as np

    a = np.mod(np.asarray(angles, dtype=float), 360.0)
    order = np.argsort(a, kind="stable")
    a, v = a[order], np.asarray(values, dtype=float)[order]
    if a.size < 2:
        return np.deg2rad(a), v
    gaps = np.append(np.diff(a), a[0] + 360.0 - a[-1])
    if a.size >= 3 and gaps.max() <= 2.0 * float(np.median(gaps)) + 1e-9:
        return np.deg2rad(np.append(a, a[0] + 360.0)), np.append(v, v[0])
    first = (int(np.argmax(gaps)) + 1) % a.size  # the line is left open at its widest gap
    a, v = np.roll(a, -first), np.roll(v, -first)
    return np.deg2rad(a[0] + np.mod(a - a[0], 360.0)), v


def plot_polar(
    results: RobustnessResult | Sequence[RobustnessResult] | Mapping[str, RobustnessResult],
    path: str | os.PathLike,
    metrics: Sequence[str] | None = None,
    title: str | None = None,
    rlim: tuple[float, float] | None = None,
    dpi: int = 120,
) -> Path:
    """Polar plot PNG of each metric vs rotation angle, several models overlaid (one subplot per metric).

    Args:
        results: one result, a sequence (labelled by ``model_name``) or ``{label: result}``.
        path: output file (format from the suffix, e.g. ``.png``), written atomically.
        metrics: metrics to plot (default: those of the first result present in all results).
        title: figure title.
        rlim: radial limits (default: from the data, padded).
        dpi: resolution.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    named = _as_named(results)
    if not named:
        raise ValueError("results must hold at least one RobustnessResult, got none.")
    first = next(iter(named.values()))
    metrics = list(metrics) if metrics is not None else [m for m in first.metrics if all(m in r.metrics for r in named.values())]
    if not metrics:  # else matplotlib's 'Number of columns must be a positive integer, not 0'
        raise ValueError(
            "metrics: no metric to plot (metrics=[] given, or the results share no metric); metrics of the results: "
            f"{ {n: list(r.metrics) for n, r in named.items()} }."
        )
    for m in metrics:
        missing = [n for n, r in named.items() if m not in r.metrics]
        if missing:
            raise ValueError(f"metrics: {m!r} is missing from results {missing}.")
    fig, axs = plt.subplots(1, len(metrics), subplot_kw={"projection": "polar"}, figsize=(4.2 * len(metrics), 4.4), squeeze=False)
    for ax, m in zip(axs[0], metrics):
        allv = []
        for label, r in named.items():
            th, v = _polar_line(r.angles, r.per_angle[m])
            summ = r.summary()[m]
            std = summ["std"]
            if r.plane():  # the angles of a 3D result mean nothing without their plane (two planes were told apart by name only)
                label = f"{label}, axes ({', '.join(str(a) for a in r.plane())})"
            ax.plot(th, v, marker="o", ms=2.5, lw=1.2, label=f"{label} (std {std:.3g})" if std is not None else label)
            allv.extend(x for x in v if not math.isnan(x))
        if rlim is not None:
            ax.set_ylim(*rlim)
        elif allv:
            lo, hi = min(allv), max(allv)
            pad = max(0.05 * (hi - lo), 1e-3)
            bottom = lo - 4 * pad
            ax.set_ylim(max(bottom, 0.0) if lo >= 0 else bottom, hi + pad)
        ax.set_title(m, pad=12)
        ax.tick_params(labelsize=7)
        # matplotlib's default puts 6-8 radial labels on a zoomed axis, where they overlap one another; 4 are readable
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
    handles, labels = axs[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    # polar axes titles (pad 12) are not fully counted by tight_layout: without a suptitle they were cut off at the top
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def write_tensorboard(result: RobustnessResult, writer: Any, tag_prefix: str = "robustness", step: int | None = None) -> None:
    """Write scalars to a TensorBoard ``SummaryWriter``.

    * ``{tag_prefix}/{model}/{metric}/by_angle`` with ``global_step`` = angle in degrees (rounded; angles less than
      1 degree apart share a step and TensorBoard shows one of them, logged as a warning): the curve;
      ``.../by_angle/step{step}`` when ``step`` is given, so that the curves of several epochs do not overlay
      each other on one tag.
    * ``{tag_prefix}/{model}/{metric}/flip_{f}`` at ``step``.
    * ``{tag_prefix}/{model}/{metric}/{mean|std|min|worst_angle}`` at ``step`` (e.g. the epoch).

    In 3D ``{model}`` ends with the rotation plane (``GMRUNet_ax12``), so that two planes of one model written to
    one log do not share (and overwrite) their tags.
    """
    curve = "by_angle" if step is None else f"by_angle/step{int(step)}"
    steps = [int(round(a)) for a in result.angles]
    if len(set(steps)) < len(steps):  # TensorBoard keeps one point per step: the curve silently lost angles
        logger.warning(
            "write_tensorboard: angles %s share integer steps once rounded (%s); the %s curve shows one of each.",
            result.angles, steps, curve,
        )
    step = 0 if step is None else int(step)
    plane = result.plane()
    base = f"{tag_prefix}/{result.model_name}" + (f"_ax{plane[0]}{plane[1]}" if plane else "")
    for m in result.metrics:
        for a, v in zip(result.angles, result.per_angle[m]):
            if not math.isnan(v):
                writer.add_scalar(f"{base}/{m}/{curve}", v, int(round(a)))
        for f, vals in result.per_flip.items():
            v = vals.get(m, math.nan)
            if not math.isnan(v):
                writer.add_scalar(f"{base}/{m}/flip_{f}", v, step)
        for stat, v in result.summary()[m].items():
            if stat in ("mean", "std", "min", "worst_angle") and v is not None:
                writer.add_scalar(f"{base}/{m}/{stat}", v, step)
    if hasattr(writer, "flush"):
        writer.flush()


def report_paths(output_dir: str | os.PathLike, prefix: str = "robustness", plot: bool = True) -> dict[str, Path]:
    """The paths :func:`write_report` writes (``{"json", "csv"[, "png"]}``), without writing anything (e.g. on
    the ranks of a distributed evaluation that leave the writing to rank 0)."""
    out = Path(output_dir)
    paths = {"json": out / f"{prefix}.json", "csv": out / f"{prefix}.csv"}
    if as_bool(plot, "plot"):
        paths["png"] = out / f"{prefix}_polar.png"
    return paths


def write_report(
    result: RobustnessResult,
    output_dir: str | os.PathLike,
    prefix: str = "robustness",
    plot: bool = True,
    compare: Sequence[RobustnessResult] = (),
) -> dict[str, Path]:
    """Write ``{prefix}.json``, ``{prefix}.csv`` and (``plot``) ``{prefix}_polar.png`` into ``output_dir``.

    Args:
        result: the result to write.
        output_dir: created if missing.
        prefix: file name stem.
        plot: also write the polar plot (``compare`` results overlaid); text forms of
            :func:`monai_gmr.utils.as_bool` (``"false"``, ``"no"``) are read as such, other text raises ``ValueError``.
        compare: other results to overlay on the plot (e.g. a plain baseline).

    Returns:
        ``{"json": path, "csv": path[, "png": path]}``.
    """
    plot = as_bool(plot, "plot")  # before anything is written: "false" from a config or command line is true text
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": save_json(result, out / f"{prefix}.json"), "csv": save_csv(result, out / f"{prefix}.csv")}
    if plot:
        paths["png"] = plot_polar([result, *compare], out / f"{prefix}_polar.png", title=f"rotation robustness ({result.task})")
    return paths
