#!/usr/bin/env python
"""Tiles smaller than the sliding window: Dice of a trained nuclei checkpoint with each padding of the window.

A tile smaller than ``roi_size`` is padded to the window size (equally on both sides) before the network and cropped
back after it. The nuclei bundle's networks use instance norm, whose statistics are over the whole window, so what
fills the border changes the prediction inside the tile. For every tile of the chosen splits of a prepared nuclei
dataset (``datalist.json`` with ``image``/``label`` paths, as ``python -m monai_gmr.data.prepare_nuclei`` or the
bundle's synthetic generator write it), the four corner crops of ``--crop`` pixels are segmented

- with a window of the crop's own size (no padding: the reference),
- with a ``--roi`` window padded by ``constant`` 0 (black: MONAI's padding), ``constant`` 1 (white),
  ``replicate`` and ``reflect`` (:class:`monai_gmr.inferers.SymmetricSlidingWindowInferer`),

and the Dice of the nucleus class (classes > 0 of the prediction against label > 0) is averaged over the crops.

``--multiple-crop`` sizes (not divisible by ``2 ** levels``) measure the network's own padding instead: the crops
go through ``GMRUNet(..., pad_to_multiple=True, pad_mode=m)`` whole, for every ``m`` of
:data:`monai_gmr.functional.PAD_MODES` (a few pixels up to the next multiple of 8, cropped back after the network).

Example (the checkpoint of a short CPM-15 training with ``scripts/benchmark_nuclei.py``)::

    python scripts/small_tile_padding.py --data /tmp/bn_pad/prepared --checkpoint /tmp/bn_pad/gmrunet/models/model.pt \
        --network-def '{"kernel_sizes": [5, 5, 5, 5]}' --crop 96 160 --roi 256 --multiple-crop 100 153 \
        --out /tmp/small_tile_padding
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monai_gmr.utils import atomic_write_json, atomic_write_text, output_dir_error, run_environment  # noqa: E402

__all__ = ["PADDINGS", "corner_crops", "dice", "evaluate", "evaluate_net_padding", "main"]

logger = logging.getLogger("small_tile_padding")

#: name -> SymmetricSlidingWindowInferer padding arguments (the window is --roi); "none" runs the crop alone
PADDINGS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "black": {"padding_mode": "constant", "cval": 0.0},
    "white": {"padding_mode": "constant", "cval": 1.0},
    "replicate": {"padding_mode": "replicate"},
    "reflect": {"padding_mode": "reflect"},
}


def corner_crops(image: np.ndarray, label: np.ndarray, crop: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The four corner crops ``(image (crop, crop, 3), label (crop, crop))`` of a tile at least ``crop`` wide.

    Raises:
        ValueError: the tile is smaller than ``crop``.
    """
    h, w = label.shape[:2]
    if h < crop or w < crop:
        raise ValueError(f"crop={crop} is larger than a tile of {h} x {w}.")
    return [(image[y : y + crop, x : x + crop], label[y : y + crop, x : x + crop]) for y in (0, h - crop) for x in (0, w - crop)]


def dice(pred: np.ndarray, label: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    total = int(pred.sum()) + int(label.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(pred, label).sum()) / total


def _mean_dice(predict, items: list[tuple[np.ndarray, np.ndarray]], crop: int) -> float:
    """Mean nucleus Dice of ``predict`` (``(1, 3, crop, crop)`` image in [0, 1] -> logits) over the corner crops of
    ``items`` (``(RGB uint8 image, label)`` pairs)."""
    vals = []
    with torch.no_grad():
        for image, label in items:
            for img, lab in corner_crops(image, label, crop):
                x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / 255.0)[None]
                vals.append(dice(predict(x).argmax(1)[0].numpy() > 0, lab > 0))
    return float(np.mean(vals))


def evaluate(network: torch.nn.Module, items: list[tuple[np.ndarray, np.ndarray]], crop: int, roi: int) -> dict[str, float]:
    """Mean nucleus Dice over the corner crops of ``items`` (``(RGB uint8 image, label)`` pairs) per padding."""
    from monai_gmr.inferers import SymmetricSlidingWindowInferer

    if roi <= crop:
        raise ValueError(f"roi={roi} must be larger than crop={crop}: no padding would happen.")
    network.eval()
    scores = {}
    for name, kw in PADDINGS.items():
        inferer = SymmetricSlidingWindowInferer(roi_size=crop if kw is None else roi, sw_batch_size=1, **(kw or {}))
        scores[name] = _mean_dice(lambda x, inferer=inferer: inferer(x, network), items, crop)
    return scores


def evaluate_net_padding(make_network, items: list[tuple[np.ndarray, np.ndarray]], crop: int) -> dict[str, float]:
    """Mean nucleus Dice over the corner crops of ``items`` run whole through ``make_network(pad_mode)`` (a network
    built with ``pad_to_multiple=True`` and that ``pad_mode``, weights loaded), per mode of
    :data:`monai_gmr.functional.PAD_MODES`."""
    from monai_gmr.functional import PAD_MODES

    return {mode: _mean_dice(make_network(mode).eval(), items, crop) for mode in PAD_MODES}


def _load_items(data: Path, splits: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    from PIL import Image

    datalist = json.loads((data / "datalist.json").read_text())
    out = []
    for split in splits:
        if split not in datalist:
            raise ValueError(f"--splits: {split!r} is not a split of {data / 'datalist.json'} ({sorted(datalist)}).")
        for it in datalist[split]:
            image = np.asarray(Image.open(data / it["image"]).convert("RGB"))
            out.append((image, np.asarray(Image.open(data / it["label"]))))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="prepared nuclei dataset (datalist.json)")
    p.add_argument("--checkpoint", required=True, help="GMRUNet weights (bundle model.pt)")
    p.add_argument("--network-def", default="{}", help="GMRUNet keyword arguments as JSON (besides 2, 3, 2)")
    p.add_argument("--crop", type=int, nargs="+", default=[96, 160], help="crop sizes (multiples of 8)")
    p.add_argument("--roi", type=int, default=256, help="window size (the bundle's roi_size)")
    p.add_argument("--multiple-crop", type=int, nargs="*", default=[],
                   help="crop sizes (not multiples of 8) run whole through GMRUNet(pad_to_multiple=True) per pad_mode")
    p.add_argument("--splits", nargs="+", default=["test", "validation"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output stem: writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    err = output_dir_error(Path(args.out).parent)
    if err:
        p.error(err)
    from monai_gmr.nets import GMRUNet
    from monai_gmr.workflows import load_checkpoint

    torch.manual_seed(args.seed)
    net = GMRUNet(2, 3, 2, **json.loads(args.network_def))
    load_checkpoint(net, args.checkpoint)
    items = _load_items(Path(args.data), args.splits)
    rows = []
    for crop in args.crop:
        scores = evaluate(net, items, crop, args.roi)
        rows.append({"crop": crop, "roi": args.roi, "crops": 4 * len(items), **scores})
        logger.info("crop %d, window %d: %s", crop, args.roi, {k: round(v, 4) for k, v in scores.items()})
    net_rows = []
    for crop in args.multiple_crop:

        def make_network(mode: str) -> torch.nn.Module:
            torch.manual_seed(args.seed)
            other = GMRUNet(2, 3, 2, **{**json.loads(args.network_def), "pad_to_multiple": True, "pad_mode": mode})
            load_checkpoint(other, args.checkpoint)
            return other

        scores = evaluate_net_padding(make_network, items, crop)
        net_rows.append({"crop": crop, "crops": 4 * len(items), **scores})
        logger.info("crop %d through the network's pad_to_multiple: %s", crop, {k: round(v, 4) for k, v in scores.items()})
    result = {"rows": rows, "net_padding_rows": net_rows, "settings": vars(args), "environment": run_environment()}
    atomic_write_json(f"{args.out}.json", result)
    lines = [
        "| crop | crops | " + " | ".join(PADDINGS) + " |",
        "|---|---|" + "---|" * len(PADDINGS),
        *(f"| {r['crop']} (window {r['roi']}) | {r['crops']} | " + " | ".join(f"{r[k]:.4f}" for k in PADDINGS) + " |" for r in rows),
    ]
    if net_rows:
        modes = [k for k in net_rows[0] if k not in ("crop", "crops")]
        lines += ["", "GMRUNet(pad_to_multiple=True) on the whole crop, per pad_mode:", "",
                  "| crop | crops | " + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes),
                  *(f"| {r['crop']} | {r['crops']} | " + " | ".join(f"{r[k]:.4f}" for k in modes) + " |" for r in net_rows)]
    atomic_write_text(f"{args.out}.md", "\n".join(lines) + "\n")
    logger.info("written: %s.json, %s.md", args.out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
