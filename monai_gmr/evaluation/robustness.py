"""Rotation robustness of any network: metrics per rotation angle and per flip, with consistency statistics.

Each batch is read once and moved to the device once; every view (36 angles + 2 flips by default) is produced on
the device from that batch by :class:`~monai_gmr.functional.rotation.Geometry`, so 38 views cost 38 forward
passes (plus cheap ``grid_sample`` calls) and no extra data loading.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from monai.inferers import SimpleInferer

from monai_gmr.functional.rotation import Geometry, _cached, _disk_axes, _is_euler, _region_name, _spatial_dims_hint
from monai_gmr.functional.rotation import as_angle_list, as_flip_list, central_disk_mask, make_geometries
from monai_gmr.functional.rotation import warn_if_anisotropic
from monai_gmr.utils import as_bool, restore_training_modes, training_modes

from .metrics import CLS_METRICS, INSTANCE_METRICS, SEG_METRICS, ClassificationAccumulator, SegmentationAccumulator

__all__ = ["RobustnessResult", "rotation_robustness", "parse_batch", "binarize_label", "TASKS", "REGIONS"]

logger = logging.getLogger(__name__)

TASKS = ("segmentation", "classification")
REGIONS = ("valid", "disk")


def binarize_label(label: torch.Tensor) -> torch.Tensor:
    """Instance-id map -> foreground (1) / background (0) class map (``label > 0``, int64)."""
    return (label > 0).long()


@dataclass
class RobustnessResult:
    """Metrics of one model under rotations and flips.

    Attributes:
        model_name: label used in reports and plots.
        task: ``"segmentation"`` or ``"classification"``.
        metrics: metric names.
        angles: rotation angles (degrees, counter-clockwise).
        flips: flip names (``"h"`` mirrors W, ``"v"`` mirrors H).
        per_angle: ``{metric: [value per angle]}`` aligned with ``angles``.
        per_flip: ``{flip: {metric: value}}`` (flip alone, no rotation).
        n_images: number of images (samples) evaluated.
        settings: evaluation settings (region, modes, ...), for the record.
        seconds: wall time of the evaluation.
    """

    model_name: str
    task: str
    metrics: list[str]
    angles: list[float]
    flips: list[str]
    per_angle: dict[str, list[float]]
    per_flip: dict[str, dict[str, float]] = field(default_factory=dict)
    n_images: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, dict[str, float | None]]:
        """Per metric across angles (NaNs ignored): ``mean``, ``std`` (population, ddof=0: the consistency
        figure), ``min``, ``max``, ``range`` (max - min), ``worst_angle`` (angle of the minimum; on ties the first
        in the order of ``angles``) and ``at_0`` (value at angle 0 when evaluated, ``None`` otherwise or when NaN).
        A NaN angle (nothing scorable in its region, e.g. no foreground) is left out of every statistic, so they are
        over the defined angles only; all ``None`` when no angle is defined."""
        out: dict[str, dict[str, float | None]] = {}
        for m in self.metrics:
            v = np.asarray(self.per_angle[m], dtype=np.float64)
            ok = ~np.isnan(v)
            if not ok.any():
                out[m] = {"mean": None, "std": None, "min": None, "max": None, "range": None, "worst_angle": None, "at_0": None}
                continue
            vv = v[ok]
            worst = int(np.flatnonzero(ok)[np.argmin(vv)])
            at0 = [v[i] for i, a in enumerate(self.angles) if a % 360 == 0]
            out[m] = {
                "mean": float(vv.mean()),
                "std": float(vv.std()),
                "min": float(vv.min()),
                "max": float(vv.max()),
                "range": float(vv.max() - vv.min()),
                "worst_angle": float(self.angles[worst]),
                "at_0": _clean(at0[0]) if at0 else None,
            }
        return out

    def plane(self) -> tuple[int, int] | None:
        """The rotation plane of a 3D result (``settings["axes"]``), ``None`` in 2D: what tells the reports of two
        planes apart (view names, plot legends, TensorBoard tags)."""
        axes = self.settings.get("axes") if self.settings.get("spatial_dims") == 3 else None
        return tuple(int(a) for a in axes) if axes else None  # type: ignore[return-value]

    def angle_view_names(self) -> list[str]:
        """View names of :attr:`angles` (``rot0``, ``rot10``, ...; in 3D with the rotation plane, as the TTA inferer
        names its views: ``rot10_ax01``), so that reports of different planes are told apart."""
        plane = self.plane()
        if plane:
            return [Geometry(a, spatial_dims=3, axes=plane).name for a in self.angles]
        return [Geometry(a).name for a in self.angles]

    def per_view(self) -> dict[str, dict[str, float]]:
        """``{view name: {metric: value}}`` in evaluation order (``rot0``, ``rot10``, ..., ``flip_h``, ``flip_v``; in
        3D the angles' names carry the plane, ``rot10_ax12``)."""
        names = self.angle_view_names()
        views = {names[i]: {m: self.per_angle[m][i] for m in self.metrics} for i in range(len(self.angles))}
        for f, vals in self.per_flip.items():
            views[f"flip_{f}"] = dict(vals)
        return views

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN -> None) including the summary."""
        d = asdict(self)
        d["per_angle"] = {m: [_clean(v) for v in vals] for m, vals in self.per_angle.items()}
        d["per_flip"] = {f: {m: _clean(v) for m, v in vals.items()} for f, vals in self.per_flip.items()}
        d["summary"] = self.summary()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RobustnessResult:
        nan = float("nan")
        return cls(
            model_name=d["model_name"],
            task=d["task"],
            metrics=list(d["metrics"]),
            angles=[float(a) for a in d["angles"]],
            flips=list(d["flips"]),
            per_angle={m: [nan if v is None else float(v) for v in vals] for m, vals in d["per_angle"].items()},
            per_flip={f: {m: nan if v is None else float(v) for m, v in vals.items()} for f, vals in d.get("per_flip", {}).items()},
            n_images=int(d.get("n_images", 0)),
            settings=dict(d.get("settings", {})),
            seconds=float(d.get("seconds", 0.0)),
        )


def _clean(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def parse_batch(batch: Any, image_key: str = "image", label_key: str = "label") -> tuple[torch.Tensor, torch.Tensor]:
    """``{"image": x, "label": y}`` or ``(x, y)`` -> ``(x, y)`` tensors."""
    if isinstance(batch, Mapping):
        for k in (image_key, label_key):
            if k not in batch:
                raise ValueError(f"batch dict has no key {k!r} (keys: {sorted(batch)}); set image_key/label_key.")
        x, y = batch[image_key], batch[label_key]
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        raise ValueError(f"data must yield dicts with {image_key!r}/{label_key!r} or (image, label) pairs, got {type(batch).__name__}.")
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    return (x.as_tensor() if hasattr(x, "as_tensor") else x), (y.as_tensor() if hasattr(y, "as_tensor") else y)


def _as_batches(data: Any) -> Iterable:
    if isinstance(data, Mapping):
        return [data]
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return [data]
    return data


@torch.no_grad()
def rotation_robustness(
    network: Callable,
    data: Any,
    angles: Iterable[float] = range(0, 360, 10),
    flips: Sequence[str] | None = ("h", "v"),
    metrics: Sequence[str] | None = None,
    task: str = "segmentation",
    inferer: Callable | None = None,
    device: torch.device | str | None = None,
    spatial_dims: int = 2,
    axes: Sequence[int] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    instance_key: str | None = None,
    image_mode: str = "bilinear",
    padding_mode: str = "reflection",
    region: str = "valid",
    radius_frac: float = 0.35,
    include_background: bool = False,
    activation: str | None = "auto",
    label_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    model_name: str = "model",
    amp: bool = False,
    auc_storage: torch.device | str | None = None,
    merge_foreground: bool = False,
    instance_kwargs: Mapping[str, Any] | None = None,
    distributed: bool = False,
) -> RobustnessResult:
    """Evaluate ``network`` on ``data`` under every rotation angle and flip.

    For each view the images are transformed on the device (``image_mode`` interpolation; labels always with
    ``nearest``, the same geometry), the network is run through ``inferer`` and the metrics are accumulated over the
    whole data set. Segmentation metrics use only the valid pixels (``region="valid"``: output pixels that came from
    inside the image, :func:`~monai_gmr.functional.rotation.validity_mask` for ``image_mode``) or the central disk
    (``region="disk"``: the same tissue at every angle, radius ``radius_frac * min(size)``, intersected with the
    valid pixels; in 3D the cylinder of that disk in the rotation plane ``axes``, radius ``radius_frac`` times the
    smaller of the plane's two sizes, times the whole rotation axis, so a thin volume keeps all its slices).
    Classification uses the whole rotated image (corners filled with ``padding_mode``).

    Args:
        network: model ``(N, C, *spatial) -> (N, C', *spatial)`` (segmentation) or ``(N, C')`` (classification);
            put in ``eval()`` mode here (and restored afterwards) when it is an ``nn.Module``; a
            ``DistributedDataParallel`` wrapper (a DDP trainer's ``engine.network``) is evaluated through its module.
        data: iterable of batches (a ``DataLoader``) of dicts with ``image_key``/``label_key`` or ``(image, label)``
            pairs; a single dict / pair of tensors is accepted too. Images ``(N, C, *spatial)``; labels
            ``(N, 1, *spatial)`` (or ``(N, *spatial)``) class indices for segmentation, ``(N,)``/``(N, 1)`` indices or
            ``(N, C)`` one-hot for classification.
        angles: degrees (counter-clockwise; single angles, in 3D in the plane ``axes``); right angles are exact
            index ops.
        flips: ``"h"``/``"v"`` (``"d"`` in 3D) views at angle 0, reported separately from the angles; in 3D they
            mirror spatial axes 2 / 1 / 0 (of a MONAI ``(N, C, H, W, D)`` volume: D / W / H), or pass axis indices.
        metrics: segmentation ``("dice", "iou", "auc")``, classification ``("accuracy", "auc")`` (the defaults);
            segmentation also takes the nuclei instance metrics ``"aji"`` and ``"pq"`` (labels must then be
            instance-id maps, turned into classes by ``label_transform``; predicted instances are the connected
            components of class 1; computed on the CPU, per image).
        task: ``"segmentation"`` or ``"classification"``.
        inferer: called as ``inferer(images, network)``; default ``SimpleInferer()`` (``SlidingWindowInferer`` works).
        device: where images, network and metric maths run (default: the network's device, else CPU).
        spatial_dims: 2 or 3 (3D angles rotate in the plane ``axes``, default ``(1, 2)``).
        axes: 3D rotation plane.
        image_key, label_key: dict keys of the batches.
        instance_key: dict key of ground-truth instance-id maps ``(N, 1, *spatial)`` for ``"aji"``/``"pq"`` when the
            labels are already class maps (default: the label before ``label_transform`` is the instance map).
        image_mode: interpolation of the images (``"bilinear"``, ``"bicubic"`` (2D), ``"nearest"``).
        padding_mode: padding of rotated-in image pixels (``"reflection"``, the default since 2026-12-07,
            ``"border"`` or ``"zeros"``). Only valid pixels are scored, but the network sees the filled corners:
            with instance norm, black corners (``"zeros"``, the earlier default) cost a GMRUNet 2-3 Dice points at
            30° and 45° on CPM-15 (docs/robustness.md), an error of the evaluation, not of the model.
        region: ``"valid"`` or ``"disk"`` (segmentation).
        radius_frac: disk (3D: cylinder) radius for ``region="disk"``, a fraction of the smallest size (3D: of the
            smaller of the two sizes of the plane ``axes``).
        include_background: score class 0 too (Dice/IoU/AUC); binary tasks default to the foreground only. This
            switch, ``amp`` and ``merge_foreground`` also take the text forms of :func:`monai_gmr.utils.as_bool`
            (``"false"``, ``"no"``, ``"0"`` from a command line; other text raises ``ValueError``).
        activation: outputs -> probabilities: ``"auto"`` (softmax if C > 1 else sigmoid), ``"softmax"``,
            ``"sigmoid"`` or ``None`` (already probabilities). Predicted class = argmax of probabilities (> 0.5 for a
            single channel).
        label_transform: applied to each label batch before anything else (e.g. :func:`binarize_label` for
            instance-id maps).
        model_name: name in reports.
        amp: run the network under ``torch.autocast`` on CUDA; ignored on other devices, as in MONAI's engines
            (a bundle's ``amp`` switch must not turn on bfloat16 CPU autocast in the robustness report alone).
        auc_storage: device keeping the AUC scores (default: ``device``; 4 bytes per scored pixel per view, 8 for
            float64 network outputs).
        merge_foreground, instance_kwargs: segmentation with several nuclei classes (e.g. interior + boundary):
            Dice/IoU/AUC of their sum, instances from the full class map with these
            :func:`~monai_gmr.workflows.instance_from_semantic` settings (see
            :class:`~monai_gmr.evaluation.metrics.SegmentationAccumulator`).
        distributed: multi-process evaluation (one process per GPU, e.g. under ``torchrun``): needs an initialised
            ``torch.distributed`` process group; every process (rank) must call this with the same settings on its
            own shard of the data (e.g. a ``DataLoader`` with ``DistributedSampler(shuffle=False,
            even_divisible=False)``: every image once). Each rank evaluates its shard, then the accumulated metric
            data of every view are merged across the ranks (:func:`_merge_across_ranks`), so every rank returns the
            same result, that of a one-process run over all the shards (up to the float summation order of the
            image means; ``n_images`` is the total). A rank may have no batch when the others have some. Also text
            forms of :func:`monai_gmr.utils.as_bool`.

    Returns:
        :class:`RobustnessResult`.

    Without ``distributed`` it runs in one process: inside a multi-process ``torch.distributed`` run it raises (a
    rank would report its own shard's metrics only). An error on one rank of a distributed evaluation (e.g. a bad
    label) is raised there and, as a ``RuntimeError`` naming that rank, on the others (none waits forever).

    Raises:
        ValueError: empty ``angles`` or entries that are not finite numbers (also ``angles`` given as text),
            unknown ``metrics``/``task``/``region``/``image_mode``, a label whose size does not match the image,
            label values outside the output classes or not whole numbers (float labels are
            not truncated), classification outputs that are not ``(N, C)``, NaN network outputs (any metric),
            ``distributed`` without an initialised ``torch.distributed`` process group, or ranks of a distributed
            evaluation whose views (angles, flips, in order) differ (e.g. ``flips`` given as a set).
        RuntimeError: called inside a distributed run with more than one process without ``distributed``; with
            ``distributed``, when another rank failed.
    """
    distributed = as_bool(distributed, "distributed")
    dist_ready = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and not dist_ready:
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group (torch.distributed."
            "init_process_group, e.g. under torchrun); none is: pass distributed=False to evaluate in one process."
        )
    if not distributed and dist_ready and torch.distributed.get_world_size() > 1:
        raise RuntimeError(
            "rotation_robustness runs in a single process, but torch.distributed is initialised with "
            f"{torch.distributed.get_world_size()} processes: pass distributed=True with each rank's shard of the "
            "data (the bundle's configs/multi_gpu_evaluate.json), or evaluate in one process (configs/evaluate.json)."
        )
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got task={task!r}.")
    # switches from a command line arrive as text: "false" is a non-empty, true string (it scored the background)
    include_background = as_bool(include_background, "include_background")
    amp = as_bool(amp, "amp")
    merge_foreground = as_bool(merge_foreground, "merge_foreground")
    allowed = SEG_METRICS + INSTANCE_METRICS if task == "segmentation" else CLS_METRICS
    default = SEG_METRICS if task == "segmentation" else CLS_METRICS
    metrics = tuple(default if metrics is None else ([metrics] if isinstance(metrics, str) else metrics))
    want_instances = any(m in INSTANCE_METRICS for m in metrics)
    bad = [m for m in metrics if m not in allowed]
    if bad or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {allowed} for task={task!r}, got metrics={metrics!r}.")
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got region={region!r}.")
    given = angles
    # one number (a CLI's --angles 90) is one angle; text and entries that are not finite degrees are refused
    angles = as_angle_list(angles)
    if any(_is_euler(a) for a in angles):
        raise ValueError(
            f"angles must be single angles in degrees (rotations in the plane axes; no Euler triples), got angles={angles!r}."
        )
    angles = [float(a) for a in angles]
    if not angles:
        raise ValueError(f"angles must be a non-empty sequence of degrees, got angles={given!r}.")
    flips = as_flip_list(flips)  # one flip name as text is one flip; other text is refused naming flips
    geoms = make_geometries(angles, flips, spatial_dims, axes, product=False, padding_mode=padding_mode)
    try:  # validates image_mode early
        geoms[0].valid_mask([4] * spatial_dims, image_mode)
    except ValueError as e:
        raise ValueError(f"image_mode: {e} (got image_mode={image_mode!r})") from e
    inferer = inferer if inferer is not None else SimpleInferer()
    if device is None:
        params = list(network.parameters()) if isinstance(network, torch.nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)
    modes = None
    if isinstance(network, torch.nn.Module):
        # every submodule's mode, not the root's only: a frozen batch norm of a training net came back training
        modes = training_modes(network)
        network.to(device).eval()
        if isinstance(network, torch.nn.parallel.DistributedDataParallel):
            # the wrapped module: DDP's first forward after training broadcasts the buffers (GMR convs have some), a
            # collective that a rank without a batch never joins (the ranks hung, in that broadcast and in the merge)
            network = network.module

    if task == "segmentation":
        accs: list[Any] = [
            SegmentationAccumulator(metrics, include_background, activation, auc_storage, merge_foreground, instance_kwargs)
            for _ in geoms
        ]
    else:
        accs = [ClassificationAccumulator(metrics, activation) for _ in geoms]
    n_images = 0
    t0 = time.perf_counter()
    failure: Exception | None = None
    try:
        for batch in _as_batches(data):
            x, y = parse_batch(batch, image_key, label_key)
            # MetaTensor images rotated in a plane of unequal voxel spacings (parse_batch drops the affine)
            warn_if_anisotropic(batch[image_key] if isinstance(batch, Mapping) else batch[0], geoms)
            x = x.to(device, non_blocking=True)
            y = _signed(y.to(device, non_blocking=True))
            y_inst = None
            if want_instances and task == "segmentation":
                if instance_key is None:
                    y_inst = y
                else:
                    if not isinstance(batch, Mapping) or instance_key not in batch:
                        raise ValueError(f"instance_key={instance_key!r} is not a key of the batches.")
                    y_inst = torch.as_tensor(batch[instance_key])
                    y_inst = _signed((y_inst.as_tensor() if hasattr(y_inst, "as_tensor") else y_inst).to(device))
            if y_inst is not None and y_inst.ndim == x.ndim - 1:
                y_inst = y_inst.unsqueeze(1)
            if label_transform is not None:
                y = label_transform(y)
            _check_pair(x, y, task, spatial_dims)
            if task == "segmentation" and y.ndim == x.ndim - 1:
                y = y.unsqueeze(1)
            n_images += int(x.shape[0])
            spatial = tuple(x.shape[-spatial_dims:])
            for g, acc in zip(geoms, accs):
                xg = g.apply(x, image_mode)
                with torch.autocast(device.type, enabled=bool(amp) and device.type == "cuda"):
                    out = inferer(xg, network)
                out = out[0] if isinstance(out, (tuple, list)) and out else out
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"the network (through the inferer) must return a tensor or a tuple/list whose first entry is "
                        f"one, got {type(out).__name__}; wrap the network to pick the output to score."
                    )
                out = out.as_tensor() if hasattr(out, "as_tensor") else out
                # scored in float32, float64 outputs in float64 (rounded, distinct probabilities near 0 or 1 were ties)
                out = out if out.dtype == torch.float64 else out.float()
                if task == "classification":
                    acc.update(out, y)
                    continue
                yg = g.apply(y, "nearest")
                same = out.shape[-spatial_dims:] == yg.shape[-spatial_dims:] and out.shape[0] == yg.shape[0]
                if out.ndim != yg.ndim or not same:  # (N, H, W): a softmax over H, then a bare broadcasting error
                    raise ValueError(
                        f"network output shape {tuple(out.shape)} does not match the (rotated) label {tuple(yg.shape)}: "
                        "segmentation outputs must be (N, C, *spatial) (a single-channel output keeps its C = 1 dim)."
                    )
                # the rotation module's byte-budgeted LRU: a dict kept one mask per view and tile size for the whole
                # run (GBs on data sets of varied tile sizes)
                mask = _cached(
                    ("robustness_mask", g, spatial, device, image_mode, region, radius_frac),
                    lambda g=g, spatial=spatial: (_region_mask(g, spatial, image_mode, region, radius_frac, device),),
                )[0]
                inst = None if y_inst is None else g.apply(y_inst, "nearest")
                acc.update(out, yg, mask, instances=inst)
    except Exception as e:
        if not distributed:
            raise
        failure = e  # raised after the merge below, which the other ranks wait in
    finally:
        if modes is not None:
            restore_training_modes(modes)
    seconds = time.perf_counter() - t0
    main = True
    if distributed:
        views = [f"{g.angle} deg" if g.flip is None else f"flip {g.flip}" for g in geoms]
        n_images, seconds, device_names = _merge_across_ranks(accs, n_images, seconds, device, failure, views)
        main = torch.distributed.get_rank() == 0
    if n_images == 0:
        raise ValueError("data yielded no batches" + (" on any rank." if distributed else "."))
    values = [acc.compute() for acc in accs]
    na = len(angles)
    per_angle = {m: [values[i][m] for i in range(na)] for m in metrics}
    per_flip = {str(f): values[na + j] for j, f in enumerate(flips)}
    settings = {
        "spatial_dims": spatial_dims,
        # the plane the angles turned in (3D: the default (1, 2) too; it was null, so a 3D report did not say)
        "axes": list(geoms[0].axes) if geoms[0].axes is not None else ([1, 2] if spatial_dims == 3 else None),
        "image_mode": image_mode,
        "label_mode": "nearest",
        "padding_mode": padding_mode,
        "region": region if task == "segmentation" else "full",
        "radius_frac": radius_frac if region == "disk" else None,
        "include_background": include_background,
        "activation": activation,
        "merge_foreground": merge_foreground,
        "instance_kwargs": dict(instance_kwargs or {}),
        "inferer": type(inferer).__name__,
        "device": str(device),
        "forward_passes_per_batch": len(geoms),
    }
    if distributed:  # the same settings on every rank: all ranks' devices
        settings.update(device=device_names[0], devices=device_names, world_size=len(device_names))
    if main:  # every rank has the same result: rank 0 tells it
        _log_result(model_name, metrics, angles, per_angle, n_images, len(geoms), seconds)
    return RobustnessResult(
        model_name=model_name,
        task=task,
        metrics=list(metrics),
        angles=angles,
        flips=[str(f) for f in flips],
        per_angle=per_angle,
        per_flip=per_flip,
        n_images=n_images,
        settings=settings,
        seconds=seconds,
    )


def _log_result(
    model_name: str, metrics: Sequence[str], angles: list[float], per_angle: Mapping[str, list[float]], n_images: int,
    n_views: int, seconds: float,
) -> None:
    """Log the result's size and time, and warn of the metrics undefined (NaN) at some angles."""
    na = len(angles)
    logger.info("rotation robustness of %s: %d images x %d views in %.1fs", model_name, n_images, n_views, seconds)
    for m in metrics:  # the summary skips NaN angles: say so when it is over some of them only
        undefined = [a for a, v in zip(angles, per_angle[m]) if math.isnan(v)]
        if undefined and len(undefined) < na:
            logger.warning(
                "rotation robustness of %s: %s is undefined (NaN: nothing scorable in the region) at %d of %d angles "
                "%s; its mean/std/min/worst angle are over the other %d angles only.",
                model_name, m, len(undefined), na, undefined, na - len(undefined),
            )  # fmt: skip


def _merge_across_ranks(
    accs: Sequence[Any],
    n_images: int,
    seconds: float,
    device: torch.device,
    failure: Exception | None,
    views: Sequence[str],
) -> tuple[int, float, list[str]]:
    """Merge the per-view accumulators of every rank of a ``torch.distributed`` run into each rank's ``accs`` (the
    one place where ranks exchange robustness data).

    One ``all_gather_object`` of each rank's ``([acc.state() per view], n_images, seconds, device, error)``: the
    states are CPU tensors and lists (pickled, so it works with gloo and with nccl, where the current CUDA device
    must be the rank's own), and each rank then loads the union of all ranks' states in rank order
    (``merge_states``). Hand-written because MONAI has nothing for it: its ``evenly_divisible_all_gather`` /
    ``string_list_all_gather`` move one tensor / a list of strings, not the exact AUC's score lists, the
    instance-metric lists or the counts of our accumulators, and its Cumulative metrics (Dice/IoU buffers) do
    all-gather by themselves, but inside ``aggregate()`` (``Cumulative.get_buffer``), one collective per metric and
    view, which a rank with an empty buffer (no batch) skips, leaving the other ranks waiting; so the accumulators
    keep the Dice/IoU rows themselves and only this function exchanges data.

    Args:
        accs: this rank's accumulators, one per view (the same views, in the same order, on every rank).
        n_images: images this rank evaluated.
        seconds: this rank's evaluation time.
        device: this rank's device.
        failure: the exception this rank's evaluation raised, if any: the others raise too (no rank hangs).
        views: this rank's view names, in the order of ``accs``: the accumulators are merged by position, so every
            rank must list the same views in the same order (``flips`` given as a set, e.g. ``{"h", "v"}``, are
            ordered by each process's string hash seed: rank 1's "v" was merged into rank 0's "h").

    Returns:
        ``(total images, slowest rank's seconds, every rank's device name)``.

    Raises:
        Exception: ``failure`` on its rank; ``RuntimeError`` naming the failed rank(s) on the others.
        ValueError: the ranks' ``views`` differ (on every rank, naming them).
    """
    world = torch.distributed.get_world_size()
    rank = torch.distributed.get_rank()
    states = None if failure is not None else [acc.state() for acc in accs]
    error = None if failure is None else f"{type(failure).__name__}: {failure}"
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, (states, int(n_images), float(seconds), str(device), error, list(views)))
    if failure is not None:
        raise failure
    failed = {r: g[4] for r, g in enumerate(gathered) if g[4] is not None}
    if failed:
        raise RuntimeError(
            f"rotation_robustness failed on rank(s) {sorted(failed)} of the distributed evaluation: "
            + "; ".join(f"rank {r}: {e}" for r, e in failed.items())
        )
    differ = [r for r, g in enumerate(gathered) if g[5] != gathered[0][5]]
    if differ:
        raise ValueError(
            "the ranks of a distributed rotation_robustness must evaluate the same views in the same order (pass the "
            "same angles and flips as lists; a set of flips is ordered differently in each process), got "
            + "; ".join(f"rank {r}: {gathered[r][5]}" for r in [0, *differ])
        )
    for i, acc in enumerate(accs):
        acc.merge_states([g[0][i] for g in gathered])
    logger.debug("rotation robustness: merged the views of %d ranks (rank %d)", world, rank)
    return sum(g[1] for g in gathered), max(g[2] for g in gathered), [g[3] for g in gathered]


def _signed(t: torch.Tensor) -> torch.Tensor:
    """uint16/32/64 labels (16-bit instance maps) -> int64: PyTorch has no comparison or gather for them ("gt_cpu"
    not implemented for 'UInt16' in binarize_label)."""
    return t.long() if t.dtype in (torch.uint16, torch.uint32, torch.uint64) else t


def _region_mask(
    g: Geometry, spatial: tuple[int, ...], image_mode: str, region: str, radius_frac: float, device: torch.device
) -> torch.Tensor:
    """Pixels scored for view ``g``: valid (no padding in the stencil), and for ``"disk"`` inside the central disk
    (3D: the cylinder about the rotation axis of the plane ``g.axes``, a ball for Euler angles)."""
    m = g.valid_mask(spatial, image_mode, device=device)
    if region != "disk":
        return m
    plane = _disk_axes(g.angle, g.spatial_dims, g.axes)
    disk = central_disk_mask(m.shape, radius_frac, device=device, axes=plane)
    if not bool(disk.any()):  # e.g. a tiny rotation plane: the metrics were NaN at every view
        sizes = tuple(m.shape) if plane is None else tuple(m.shape[a] for a in plane)
        raise ValueError(
            f"region='disk' scores no pixel: the {_region_name(g.spatial_dims, plane)} = "
            f"{radius_frac * min(sizes):g} pixels is empty for the spatial shape {tuple(m.shape)}; use "
            f"region='valid' or a larger radius_frac."
        )
    return m & disk


def _check_pair(x: torch.Tensor, y: torch.Tensor, task: str, spatial_dims: int) -> None:
    if x.ndim != spatial_dims + 2:
        raise ValueError(
            f"image must be (N, C, *spatial) with spatial_dims={spatial_dims}, got image shape {tuple(x.shape)}"
            f"{_spatial_dims_hint(x.ndim, spatial_dims)}."
        )
    if task == "segmentation":
        ok = (y.ndim == x.ndim and y.shape[1] == 1) or y.ndim == x.ndim - 1
        if not ok or y.shape[0] != x.shape[0] or tuple(y.shape[-spatial_dims:]) != tuple(x.shape[-spatial_dims:]):
            raise ValueError(
                f"label must be (N, 1, *spatial) matching the image, got label shape {tuple(y.shape)} for image "
                f"shape {tuple(x.shape)}."
            )
    elif y.shape[0] != x.shape[0]:
        raise ValueError(f"label must have one entry per image, got label shape {tuple(y.shape)} for image shape {tuple(x.shape)}.")
