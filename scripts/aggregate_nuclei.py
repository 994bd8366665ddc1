"""Aggregate several ``scripts/benchmark_nuclei.py`` results over training seeds.

Each input is a ``benchmark.json`` written by ``scripts/benchmark_nuclei.py`` (or a folder holding one, i.e. its
``--out``), or a merged results file from ``docs/results/`` that holds rows of several runs with their settings
under ``settings`` (one mapping, or a mapping of run name -> settings) and ``settings_<model>``. Every row is
matched to the settings of the run that produced it (the one whose ``models`` list names the row's model), which
gives its training seed and budget. All rows must share one budget and split (epochs, steps, crops, batch, lr,
window, angles, split seed); each (model, seed) pair may appear once.

Outputs (under ``--out``, written atomically): ``seeds.json`` and ``seeds.md`` with, per model, each seed's value
and the mean / min / max / sample std across seeds of Dice at 0 degrees, the mean over angles, the std across
angles, the worst angle, IoU and AUC means and the best validation Dice; and, for every other model, the paired
per-seed difference to ``--reference`` (same seed, same split), with how many seeds it was positive.

Usage::

    python scripts/aggregate_nuclei.py /work/runs/seed0 /work/runs/seed1/benchmark.json --out /work/runs/seeds
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "aggregate", "load_rows", "BUDGET_KEYS", "METRICS"]

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("monai_gmr.aggregate_nuclei")

#: settings that must agree across every aggregated row (a different budget or split is another experiment).
BUDGET_KEYS = ("epochs", "max_steps", "val_interval", "crop", "crops_per_image", "batch_size", "lr", "roi",
               "angle_step", "split_seed")  # fmt: skip
#: row columns aggregated across seeds (those absent from any row of a model are left out for that model).
METRICS = ("dice_0", "dice_mean", "dice_std", "dice_min", "iou_mean", "auc_mean", "aji_mean", "pq_mean",
           "best_val_dice")  # fmt: skip
#: columns compared seed by seed against the reference model.
PAIRED = ("dice_0", "dice_mean", "dice_min")


def _candidate_settings(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    s = doc.get("settings")
    if isinstance(s, dict):
        if "seed" in s:
            out.append(s)
        else:  # a mapping of run name -> settings
            out += [v for v in s.values() if isinstance(v, dict) and "seed" in v]
    out += [v for k, v in doc.items() if k.startswith("settings_") and isinstance(v, dict) and "seed" in v]
    return out


def _label(row_model: str, settings: dict[str, Any]) -> str:
    """``gmrunet (kernel_sizes=[5,5,5,5])``: the model name with the run's ``--set`` overrides, as merged files name it."""
    if "(" in row_model or not settings.get("extra"):
        return row_model
    extra = ", ".join(f"{k.split('#')[-1]}={json.dumps(v, separators=(',', ':'))}" for k, v in settings["extra"].items())
    return f"{row_model} ({extra})"


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of one results file, each with ``label``, ``seed``, ``source`` and its run's budget under ``budget``.

    Raises:
        SystemExit: the file is missing or unreadable, or a row's run settings cannot be found.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "benchmark.json"
    if not p.is_file():
        raise SystemExit(f"input {str(path)!r}: no benchmark.json there (expected a benchmark_nuclei.py --out folder or file)")
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SystemExit(f"input {str(p)!r} is not readable JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise SystemExit(f"input {str(p)!r} has no 'rows' list; is it a benchmark_nuclei.py result?")
    cands = _candidate_settings(doc)
    rows = []
    for row in doc["rows"]:
        base = str(row.get("model", "")).split(" ")[0]
        match = [s for s in cands if base in (s.get("models") or [])]
        if len(match) != 1:
            raise SystemExit(f"input {str(p)!r}: found {len(match)} run settings naming model {base!r} (need exactly one)")
        s = match[0]
        rows.append({**row, "label": _label(str(row["model"]), s), "seed": int(s["seed"]), "source": str(p),
                     "budget": {k: s.get(k) for k in BUDGET_KEYS}})  # fmt: skip
    return rows


def _stats(values: list[float]) -> dict[str, Any]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"values": values, "mean": mean, "min": min(values), "max": max(values), "std": sd}


def aggregate(rows: list[dict[str, Any]], reference: str | None = None) -> dict[str, Any]:
    """Group ``rows`` (from :func:`load_rows`) by model label and summarise across seeds.

    Args:
        rows: rows of one or more results files.
        reference: label of the model the others are compared with seed by seed (default: the first label).

    Returns:
        ``{"budget", "reference", "models": {label: {"seeds", "sources", metric: stats}}, "paired": {label:
        {metric: {"seeds", "differences", "mean", "positive"}}}}``; stats hold ``values`` (in seed order),
        ``mean``, ``min``, ``max`` and the sample ``std`` across seeds (None for one seed).

    Raises:
        SystemExit: rows disagree on the budget or split, a (model, seed) pair repeats, or ``reference`` is unknown.
    """
    if not rows:
        raise SystemExit("no rows to aggregate")
    budget = rows[0]["budget"]
    for r in rows[1:]:
        diff = [k for k in BUDGET_KEYS if r["budget"].get(k) != budget.get(k)]
        if diff:
            k = diff[0]
            raise SystemExit(f"input {r['source']!r} ({r['label']}, seed {r['seed']}) has {k}={r['budget'].get(k)!r}, "
                             f"but {rows[0]['source']!r} has {k}={budget.get(k)!r}: only runs of one budget and split "
                             "can be aggregated")  # fmt: skip
    by_label: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        seen = by_label.setdefault(r["label"], {})
        if r["seed"] in seen:
            raise SystemExit(f"{r['label']} seed {r['seed']} appears twice: {seen[r['seed']]['source']!r} and {r['source']!r}")
        seen[r["seed"]] = r
    labels = list(by_label)
    reference = labels[0] if reference is None else reference
    if reference not in by_label:
        raise SystemExit(f"--reference {reference!r} is not among the models: {labels}")
    models: dict[str, Any] = {}
    for label, per_seed in by_label.items():
        seeds = sorted(per_seed)
        entry: dict[str, Any] = {"seeds": seeds, "sources": sorted({per_seed[s]["source"] for s in seeds})}
        for m in METRICS:
            vals = [per_seed[s].get(m) for s in seeds]
            if all(isinstance(v, (int, float)) for v in vals):
                entry[m] = _stats([float(v) for v in vals])
        models[label] = entry
    paired: dict[str, Any] = {}
    ref = by_label[reference]
    for label, per_seed in by_label.items():
        if label == reference:
            continue
        common = sorted(set(per_seed) & set(ref))
        paired[label] = {}
        for m in PAIRED:
            d = [float(per_seed[s][m]) - float(ref[s][m]) for s in common if per_seed[s].get(m) is not None
                 and ref[s].get(m) is not None]  # fmt: skip
            if d and len(d) == len(common):
                paired[label][m] = {"seeds": common, "differences": d, "mean": sum(d) / len(d),
                                    "positive": sum(x > 0 for x in d)}  # fmt: skip
    return {"budget": budget, "reference": reference, "models": models, "paired": paired}


def _markdown(summary: dict[str, Any]) -> str:
    def pts(v: float) -> str:  # Dice points (x100), signed
        return f"{100 * v:+.2f}"

    metrics = [m for m in METRICS if any(m in e for e in summary["models"].values())]
    lines = [
        "# benchmark_nuclei.py across training seeds",
        "",
        "budget and split: " + ", ".join(f"{k} {v}" for k, v in summary["budget"].items()),
        "",
        "Per model: mean over seeds [min, max]; 'seed sd' is the sample std across seeds.",
        "",
        "| model | seeds | " + " | ".join(metrics) + " | dice_mean seed sd |",
        "|---|---|" + "|".join("---" for _ in metrics) + "|---|",
    ]
    for label, e in summary["models"].items():
        cells = []
        for m in metrics:
            st = e.get(m)
            cells.append("n/a" if st is None else f"{st['mean']:.4f} [{st['min']:.4f}, {st['max']:.4f}]")
        sd = (e.get("dice_mean") or {}).get("std")
        lines.append(f"| {label} | {', '.join(map(str, e['seeds']))} | " + " | ".join(cells)
                     + f" | {'n/a' if sd is None else f'{sd:.4f}'} |")  # fmt: skip
    if summary["paired"]:
        lines += ["", f"Paired by seed, minus {summary['reference']}, in Dice points (per seed; mean; seeds > 0):", "",
                  "| model | " + " | ".join(PAIRED) + " |", "|---|" + "|".join("---" for _ in PAIRED) + "|"]  # fmt: skip
        for label, p in summary["paired"].items():
            cells = []
            for m in PAIRED:
                q = p.get(m)
                if q is None:
                    cells.append("n/a")
                    continue
                per_seed = " / ".join(pts(x) for x in q["differences"])
                cells.append(f"{per_seed}; {pts(q['mean'])}; {q['positive']} of {len(q['differences'])}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="benchmark.json files or benchmark_nuclei.py --out folders")
    p.add_argument("--out", required=True, help="output folder for seeds.json and seeds.md")
    p.add_argument("--reference", default=None, help="model label the others are compared with (default: the first)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from monai_gmr.utils import output_dir_error

    if output_dir_error(args.out):
        p.error(output_dir_error(args.out))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Aggregate the inputs and write ``seeds.json`` / ``seeds.md`` under ``--out``; returns the summary."""
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(ROOT))
    from monai_gmr.utils import atomic_write_json, atomic_write_text

    rows = [r for path in args.inputs for r in load_rows(path)]  # every input is read before anything is written
    summary = aggregate(rows, args.reference)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "seeds.json", summary)
    md = _markdown(summary)
    atomic_write_text(out / "seeds.md", md)
    print(md)
    logger.info("written: %s, %s", out / "seeds.json", out / "seeds.md")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
