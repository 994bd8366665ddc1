"""Rotation/reflection test-time augmentation as a MONAI ``Inferer`` wrapping any inner inferer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer
from monai.utils import convert_to_dst_type

from monai_gmr.functional.basis import _is_int
from monai_gmr.functional.rotation import Geometry, _cached, _spatial_dims_hint
from monai_gmr.functional.rotation import make_geometries, warn_if_anisotropic
from monai_gmr.utils import as_bool

__all__ = ["RotationTTAInferer"]

TASKS = ("segmentation", "classification")
REDUCTIONS = ("mean", "none")
AVERAGES = ("probs", "logits")
ACTIVATIONS = ("softmax", "sigmoid")
OUTPUTS = ("logits", "probs")
_EPS = 1e-7


class RotationTTAInferer(Inferer):
    """Test-time augmentation over rotations (and flips): rotate the input, infer, undo, reduce.

    Views are every angle without a flip plus every flip combined with every angle, so
    ``angles=(0, 90, 180, 270), flips=("h",)`` gives the 8 elements of D4. Right angles and flips are exact index
    operations; other angles resample (``mode``) and their corners, filled by padding, get zero weight.

    * ``task="segmentation"``: each view's prediction ``(N, C, *spatial)`` is rotated back to the input frame and
      the views are averaged pixel-wise with weights = :meth:`Geometry.roundtrip_mask` (1 where the view's
      prediction was computed from real pixels only, 0 in the padded corners; pixels no view covers get the
      plain mean).
    * ``task="classification"``: outputs ``(N, C)`` are averaged directly (rotation does not move class scores); an
      output with any dim after ``C`` larger than 1 (``(N, C, H, W)`` maps, ``(N, C, L)`` flattened maps) is an
      error (its views would be averaged in their rotated frames); ``(N,)`` and ``(N, C, 1, ...)`` run.

    What is averaged (``average``): ``"probs"`` (default) applies ``activation`` (``"softmax"`` over channels or
    ``"sigmoid"``) to every view and averages probabilities; with ``output="logits"`` (default) the mean
    probability ``p`` is returned as logits (``log p`` for softmax, ``log(p / (1 - p))`` for sigmoid, ``p`` clamped to
    ``[1e-7, 1 - 1e-7]``) so the post transforms written for the plain network (``Activations``, ``AsDiscrete``)
    still apply and recover ``p`` (up to the clamping); ``output="probs"`` returns ``p``. ``average="logits"``
    averages raw outputs (no activation) and returns their mean, or ``activation`` of the mean with
    ``output="probs"``. Half-precision network outputs (AMP) are averaged in float32 and returned as float32.

    Args:
        inferer: inner inferer called as ``inferer(view, network, *args, **kwargs)``; default ``SimpleInferer()``,
            e.g. a ``SlidingWindowInferer`` works unchanged.
        angles: rotation angles in degrees (counter-clockwise, see :func:`~monai_gmr.functional.rotation.rotate`).
        flips: flips combined with every angle: ``"h"`` (mirror W), ``"v"`` (mirror H), ``"d"`` (3D depth), or a
            spatial axis index. In 3D they mirror spatial axes 2 / 1 / 0 whatever they hold: of a MONAI
            ``(N, C, H, W, D)`` volume ``"h"`` mirrors D (the slice order); with ``axes=(0, 1)`` the axial D4 is
            ``angles=(0, 90, 180, 270), flips=(0,)``.
        reduce: ``"mean"`` or ``"none"``: return all views stacked as ``(V, N, C, ...)`` (segmentation views
            rotated back to the input frame), raw network outputs without activation; names in
            :attr:`view_names`, weights from :meth:`view_weights`.
        task: ``"segmentation"`` or ``"classification"``.
        spatial_dims: 2 or 3.
        axes: 3D rotation plane (default ``(1, 2)``, about axis 0, the depth axis of ``(N, C, D, H, W)``; for
            MONAI-loaded NIfTI volumes ``(N, C, H, W, D)`` pass ``(0, 1)`` to turn the axial slices).
        average, activation, output: see above.
        mode: interpolation for inputs and back-rotated predictions of non-right angles (``"bilinear"``,
            ``"bicubic"`` (2D), ``"nearest"``).
        padding_mode: padding for rotated-in pixels of the input (``"reflection"``, the default since 2026-12-07,
            ``"border"`` or ``"zeros"``; right angles and flips need none): black corners change the statistics of
            an instance-norm network's whole input (see ``padding_mode`` of
            :func:`monai_gmr.evaluation.rotation_robustness`).
        batch_views: run all views in one inner-inferer call (views concatenated along the batch dim; needs equal
            view shapes, else falls back to one call per view). Faster on GPUs, ``V`` times the memory. Text from a
            config or command line (``"false"``, ``"no"``) is read by :func:`monai_gmr.utils.as_bool`.

    Raises:
        ValueError: an unknown ``reduce``/``task``/``average``/``activation``/``output``/``mode``/``padding_mode``,
            ``spatial_dims`` other than 2 or 3, ``angles`` given as text or with entries that are not finite numbers
            of degrees (3D: or Euler triples), ``flips`` given as text other than one flip name (``"h"`` is
            ``["h"]``), duplicate views, a ``batch_views`` that is not a switch; at call time, integer/bool network
            outputs (argmax labels) with ``reduce="mean"``.
        TypeError: an ``inferer`` that is not callable.

    Example (bundle config)::

        "inferer": {"_target_": "monai_gmr.inferers.RotationTTAInferer",
                    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [256, 256]},
                    "angles": [0, 90, 180, 270], "flips": ["h"]}
    """

    def __init__(
        self,
        inferer: Inferer | Callable | None = None,
        angles: Sequence[float] = (0, 90, 180, 270),
        flips: Sequence[str | int] = (),
        reduce: str = "mean",
        task: str = "segmentation",
        spatial_dims: int = 2,
        axes: Sequence[int] | None = None,
        average: str = "probs",
        activation: str = "softmax",
        output: str = "logits",
        mode: str = "bilinear",
        padding_mode: str = "reflection",
        batch_views: bool = False,
    ) -> None:
        for name, value, allowed in (
            ("reduce", reduce, REDUCTIONS),
            ("task", task, TASKS),
            ("average", average, AVERAGES),
            ("activation", activation, ACTIVATIONS),
            ("output", output, OUTPUTS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {name}={value!r}.")
        if not (_is_int(spatial_dims) and spatial_dims in (2, 3)):  # 2.0 stopped in torch.eye, "2" read as 2
            raise ValueError(f"spatial_dims must be 2 or 3, got spatial_dims={spatial_dims!r}.")
        if inferer is not None and not callable(inferer):  # failed only at the first call, "'str' is not callable"
            raise TypeError(f"inferer must be an Inferer or a callable, got inferer={inferer!r}.")
        batch_views = as_bool(batch_views, "batch_views")  # "false" from a config was true text: all views batched
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.geometries: list[Geometry] = make_geometries(
            angles, flips, spatial_dims, axes, product=True, padding_mode=padding_mode
        )
        self.reduce = reduce
        self.task = task
        self.spatial_dims = spatial_dims
        self.average = average
        self.activation = activation
        self.output = output
        self.mode = mode
        self.batch_views = batch_views
        # validate the interpolation mode early (raises ValueError naming `mode`)
        self.geometries[0].valid_mask([4] * spatial_dims, mode)

    @property
    def view_names(self) -> list[str]:
        """Names of the views in output order (e.g. ``["rot0", "rot90", ..., "rot270_flip_h"]``)."""
        return [g.name for g in self.geometries]

    def view_weights(self, spatial_shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """``(V, *spatial)`` float weights of the segmentation views in the input frame (1 = real pixels only)."""
        shape = tuple(int(s) for s in spatial_shape)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        # bool masks in the rotation module's LRU cache (byte budget): a run over tiles of many sizes no longer keeps
        # one float (V, H, W) stack per size for the inferer's lifetime
        masks = _cached(
            ("tta_weights", shape, tuple(self.geometries), self.mode, dev),
            lambda: (torch.stack([g.roundtrip_mask(shape, self.mode, device=dev) for g in self.geometries]),),
        )[0]
        return masks.float()

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        softmax = self.activation == "softmax" and (self.average == "probs" or self.output == "probs")
        if softmax and y.ndim < 2:
            # a softmax over channels needs a channel dim: an (N,) output stopped in "tuple index out of range"
            raise ValueError(
                f"RotationTTAInferer(activation='softmax') needs (N, C, ...) network outputs, got shape "
                f"{tuple(y.shape)}; use activation='sigmoid' for one logit per sample."
            )
        if softmax and y.shape[1] == 1:
            # a softmax over one channel is 1 everywhere: every prediction would become the same constant
            raise ValueError(
                "RotationTTAInferer(activation='softmax') got a network output with a single channel; use "
                "activation='sigmoid' for single-logit networks."
            )
        if self.average == "logits":
            return y
        return torch.softmax(y, dim=1) if self.activation == "softmax" else torch.sigmoid(y)

    def _finalize(self, p: torch.Tensor) -> torch.Tensor:
        if self.average == "logits":  # p is the mean of the raw outputs
            if self.output == "logits":
                return p
            return torch.softmax(p, dim=1) if self.activation == "softmax" else torch.sigmoid(p)
        if self.output == "probs":
            return p
        p = p.clamp(_EPS, 1.0 - _EPS)
        return torch.log(p) if self.activation == "softmax" else torch.log(p) - torch.log1p(-p)

    def _run_views(self, x: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        views = [g.apply(x, self.mode) for g in self.geometries]
        if self.batch_views and len({tuple(v.shape) for v in views}) == 1:
            out = _output(self.inferer(torch.cat(views, 0), network, *args, **kwargs))
            return list(out.split(x.shape[0], dim=0))
        return [_output(self.inferer(v, network, *args, **kwargs)) for v in views]

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run TTA inference.

        Args:
            inputs: ``(N, C, *spatial)`` batch (tensor or MetaTensor; MetaTensor metadata is copied to the result).
            network: model; extra ``args``/``kwargs`` are passed to the inner inferer.

        Returns:
            ``(N, C', *spatial')`` (segmentation) or ``(N, C')`` (classification) for ``reduce="mean"``;
            ``(V, ...)`` for ``reduce="none"``: a plain tensor (a MetaTensor's metadata describes ``N`` samples, not
            ``V`` stacked views), while ``reduce="mean"`` returns a MetaTensor with the input's metadata.
        """
        if not isinstance(inputs, torch.Tensor):  # a NumPy array was reported as an inner-inferer output
            raise TypeError(f"inputs must be a torch.Tensor (or MetaTensor), got {type(inputs).__name__}.")
        if inputs.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"inputs must be (N, C, *spatial) with spatial_dims={self.spatial_dims}, got shape {tuple(inputs.shape)}"
                f"{_spatial_dims_hint(inputs.ndim, self.spatial_dims)}."
            )
        warn_if_anisotropic(inputs, self.geometries)  # a MetaTensor rotated in a plane of unequal spacings
        x = _plain(inputs)
        outs = self._run_views(x, network, *args, **kwargs)
        if self.reduce == "mean" and not all(o.is_floating_point() for o in outs):
            # integer/bool outputs (argmax labels) stopped in a raw torch mean()/softmax error
            dtype = next(o.dtype for o in outs if not o.is_floating_point())
            raise ValueError(
                f"reduce='mean' averages floating point network outputs (logits or probabilities), got {dtype}; return "
                "logits (not argmax labels) or use reduce='none'."
            )
        if self.task == "segmentation":
            for o in outs:
                if o.ndim != inputs.ndim:
                    raise ValueError(
                        f"task='segmentation' needs (N, C, *spatial) network outputs, got shape {tuple(o.shape)}; "
                        "use task='classification' for (N, C) outputs."
                    )
            if self.reduce == "none":
                res = torch.stack([g.invert(o, self.mode) for g, o in zip(self.geometries, outs)])
                return res
            ys = torch.stack([g.invert(self._activate(o), self.mode) for g, o in zip(self.geometries, outs)])
            w = self.view_weights(ys.shape[-self.spatial_dims :], ys.device).to(ys.dtype)
            w = w.reshape(w.shape[0], 1, 1, *w.shape[1:])
            wsum = w.sum(0)
            mean = torch.where(wsum > 0, (w * ys).sum(0) / wsum.clamp_min(1e-12), ys.mean(0))
        else:
            for o in outs:
                if any(s != 1 for s in o.shape[2:]):
                    # the views' maps are in rotated frames: averaging them without rotating back mixes pixels (also
                    # (N, C, L) outputs of a 2D input, e.g. a map flattened to tokens, which passed before)
                    raise ValueError(
                        f"task='classification' needs (N, C) network outputs, got shape {tuple(o.shape)}; use "
                        "task='segmentation' for (N, C, *spatial) outputs."
                    )
            if self.reduce == "none":
                return torch.stack(outs)
            mean = torch.stack([self._activate(o) for o in outs]).mean(0)
        res = self._finalize(mean)
        if hasattr(inputs, "meta"):  # MetaTensor in -> MetaTensor out with the input's metadata
            res = convert_to_dst_type(res, inputs, dtype=res.dtype)[0]
        return res


def _plain(y: Any) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"the inner inferer must return a tensor, got {type(y).__name__}; for a network with several outputs (deep "
            "supervision, a dict of heads) pass one returning the output to average, e.g. lambda x: net(x)[0]."
        )
    return y.as_tensor() if hasattr(y, "as_tensor") else y


def _output(y: Any) -> torch.Tensor:
    """An inner-inferer output as a plain tensor, half precision (AMP) widened to float32: in float16/bfloat16 the
    clamp ``1 - 1e-7`` rounds to 1, so a confident sigmoid probability became an infinite logit."""
    y = _plain(y)
    return y.float() if y.dtype in (torch.float16, torch.bfloat16) else y
