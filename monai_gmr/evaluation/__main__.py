"""CLI: ``python -m monai_gmr.evaluation --config_file <cfg[,cfg2]> --ckpt_path <ckpt> --output_dir <dir> [overrides]``.

Reads MONAI bundle config(s) with ``monai.bundle.ConfigParser`` and writes the rotation-robustness report
(JSON, CSV, polar PNG). See docs/robustness.md for the config contract. Examples::

    python -m monai_gmr.evaluation --config_file bundles/x/configs/train.json,bundles/x/configs/evaluate.json \\
        --ckpt_path bundles/x/outputs/models/model.pt --output_dir eval/robustness --angles "[0, 45, 90]" \\
        --flips "['h']" --validate#dataloader#batch_size 4
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["main", "ROBUSTNESS_ARGS"]

logger = logging.getLogger("monai_gmr.evaluation")


# every argument of rotation_robustness but network, data, device (a CLI argument of its own) and distributed (this
# CLI is one process over the whole data; multi-process evaluation is a bundle's configs/multi_gpu_evaluate.json
# under torchrun); a test keeps the two in step (written out so that --help does not import torch)
ROBUSTNESS_ARGS = (
    "angles", "flips", "metrics", "task", "inferer", "spatial_dims", "axes", "image_key", "label_key", "instance_key",
    "image_mode", "padding_mode", "region", "radius_frac", "include_background", "activation", "label_transform",
    "model_name", "amp", "auc_storage", "merge_foreground", "instance_kwargs",
)  # fmt: skip


def _first_id(parser: Any, candidates: list[str], what: str, required: bool = True) -> str | None:
    for c in candidates:
        if c and parser.get(c, None) is not None:
            return c
    if required:
        raise ValueError(f"{what}: none of the config ids {candidates} exists in the bundle config.")
    return None


def main(
    config_file: str | list[str],
    *more_config_files: str,
    ckpt_path: str | None = None,
    output_dir: str | None = None,
    meta_file: str | None = None,
    network_id: str | None = None,
    dataloader_id: str | None = None,
    inferer_id: str | None = None,
    device: str | None = None,
    robustness_id: str = "robustness",
    compare: str | list[str] | None = None,
    prefix: str = "robustness",
    plot: bool = True,
    **override: Any,
) -> dict[str, Any]:
    """Evaluate a bundle's network under rotations/flips and write the report.

    Args:
        config_file: bundle config file(s): a list or a comma-separated string (later files override earlier).
        more_config_files: further config files given after a space (``--config_file a.json b.json``), read after
            ``config_file``; the other arguments are options only. A second file after a space used to be taken for
            ``ckpt_path`` / ``output_dir`` and the run failed only after the whole evaluation, writing the report.
        ckpt_path: checkpoint loaded into the network (state dict or MONAI ``{"network"|"model": sd}``).
        output_dir: report directory (default: config id ``output_dir``).
        meta_file: optional bundle metadata (``metadata.json``).
        network_id: config id of the network (default: first of ``network``, ``network_def``).
        dataloader_id: config id of the dataloader (default: first of ``dataloader``, ``validate#dataloader``,
            ``evaluate#dataloader``, ``test#dataloader``).
        inferer_id: config id of an inner inferer (default: ``inferer`` when it exists, else ``SimpleInferer``).
        device: device string (default: config id ``device``, else CUDA when available).
        robustness_id: optional config section holding keyword arguments of ``rotation_robustness``.
        compare: JSON report(s) of other models to overlay on the polar plot.
        prefix: report file stem.
        plot: write the polar PNG.
        override: ``rotation_robustness`` arguments (``--angles "[0, 90]"``, ``--task classification``,
            ``--label_transform binarize``...) and config overrides by id (``--validate#dataloader#batch_size 2``).

    Returns:
        ``{"summary": ..., "paths": {...}}`` (also printed as JSON).
    """
    import torch
    from monai.bundle import ConfigParser

    from monai_gmr.utils import as_bool, output_dir_error

    from .robustness import binarize_label
    from .workflow import RotationRobustnessEvaluator

    plot = as_bool(plot, "plot")  # Fire passes --plot false as the (true) string "false"

    files = [f.strip() for f in config_file.split(",")] if isinstance(config_file, str) else list(config_file)
    for extra in more_config_files:
        files += [f.strip() for f in extra.split(",")] if isinstance(extra, str) else list(extra)
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"config_file {f} does not exist.")
    kwargs = {k: v for k, v in override.items() if k in ROBUSTNESS_ARGS}
    config_over = {k: v for k, v in override.items() if k not in ROBUSTNESS_ARGS}
    unknown = [k for k in config_over if "#" not in k and k not in ("bundle_root", "output_dir", "device")]
    parser = ConfigParser()
    parser.read_config(files)
    if meta_file is not None:
        parser.read_meta(meta_file)
    for k in unknown:
        if k not in parser:  # not parser.get(k) is None: ids whose value is null (image_dir, pcam_dir) were refused
            raise ValueError(f"unknown option --{k}: not a rotation_robustness argument {ROBUSTNESS_ARGS} nor a config id.")
    if "bundle_root" not in config_over and "find_bundle_root(" in str(parser.get("bundle_root", "")):
        # the bundles' find_bundle_root() looks for --config_file on the command line: config files given as
        # positional arguments or from Python were not seen, and an installed monai_gmr (no source checkout to fall
        # back on) then took the working directory for the bundle, its data and its outputs
        from monai_gmr.workflows.common import bundle_root_of

        parser["bundle_root"] = bundle_root_of(files[0])
    parser.update(config_over)
    if output_dir is None:
        if parser.get("output_dir", None) is None:
            raise ValueError("output_dir: pass --output_dir or define config id 'output_dir'.")
        output_dir = parser.get_parsed_content("output_dir")
    if output_dir_error(output_dir, "output_dir"):  # found before the evaluation, not after it (a file or under one)
        raise ValueError(output_dir_error(output_dir, "output_dir") + " (the report's folder).")
    if device is None and parser.get("device", None) is not None:
        device = parser.get_parsed_content("device")
    try:
        dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():  # else a torch AssertionError from inside the evaluation
        raise ValueError(f"device {str(dev)!r}: CUDA is not available here; pass --device cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(dev)!r}: only {torch.cuda.device_count()} GPU(s) visible here.")

    section: dict[str, Any] = {}
    if parser.get(robustness_id, None) is not None:
        parsed = parser.get_parsed_content(robustness_id)
        if not isinstance(parsed, Mapping):  # e.g. the evaluator itself under that id
            raise ValueError(
                f"robustness_id: config id {robustness_id!r} must hold a dict of rotation_robustness keyword "
                f"arguments, got a {type(parsed).__name__}; name the section with --robustness_id."
            )
        section = dict(parsed)
    section.update(kwargs)
    if section.get("label_transform") == "binarize":
        section["label_transform"] = binarize_label
    net_id = _first_id(parser, [network_id] if network_id else ["network", "network_def"], "network_id")
    dl_id = _first_id(
        parser,
        [dataloader_id] if dataloader_id else ["dataloader", "validate#dataloader", "evaluate#dataloader", "test#dataloader"],
        "dataloader_id",
    )
    if "inferer" not in section:
        inf_id = _first_id(parser, [inferer_id] if inferer_id else ["inferer"], "inferer_id", required=inferer_id is not None)
        if inf_id is not None:
            section["inferer"] = parser.get_parsed_content(inf_id)
    network = parser.get_parsed_content(net_id)
    if ckpt_path is None:  # the config's own "ckpt_path" id is not loaded: the numbers may be an untrained net's
        cfg_ckpt = parser.get("ckpt_path", None)
        logger.warning(
            "no --ckpt_path: evaluating %r with the weights the config builds it with%s.",
            net_id,
            f" (config id 'ckpt_path' = {cfg_ckpt!r} is not loaded)" if cfg_ckpt else "",
        )
    dataloader = parser.get_parsed_content(dl_id)
    section.setdefault("model_name", Path(ckpt_path).stem if ckpt_path else str(net_id))
    comp = [c.strip() for c in compare.split(",")] if isinstance(compare, str) else list(compare or [])
    evaluator = RotationRobustnessEvaluator(
        network, dataloader, output_dir, device=dev, ckpt_path=ckpt_path, prefix=prefix, plot=plot, compare=comp, **section
    )
    result = evaluator.run()
    return {"summary": result.summary(), "paths": {k: str(v) for k, v in evaluator.paths.items()}}


def cli(argv: list[str] | None = None) -> None:
    import fire

    from monai_gmr.utils import json_dumps  # strict JSON: NaN -> null

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fire.Fire(main, command=argv, name="python -m monai_gmr.evaluation", serialize=lambda r: json_dumps(r, indent=2))


if __name__ == "__main__":
    cli(sys.argv[1:])
