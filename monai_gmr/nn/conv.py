"""GMR convolution modules.

:class:`GMRConv` is the general module; :class:`GMRConv2d` / :class:`GMRConv3d` take the positional signature of
``torch.nn.Conv2d`` / ``Conv3d`` so that MONAI blocks built through ``Conv["GMR", dim]`` construct them unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F

import monai_gmr.functional.conv as _fconv  # resolve_triton looked up there, as gmr_conv does (tests patch it)
from monai_gmr.functional import (
    AREA_SUBSAMPLES,
    IMPLS,
    PADDING_MODES,
    SMOOTHING_MODES,
    check_kernel_size,
    check_sampling,
    default_num_rings,
    gmr_conv,
    initial_sigma,
    log_sigma_bounds,
    offset_distances,
    ring_basis,
    ring_basis_values,
    ring_centers,
    same_padding,
    select_impl,
    support_mask,
    synthesize_kernel,
)
from monai_gmr.functional.basis import _ints, _is_int
from monai_gmr.utils import as_bool

__all__ = ["GMRConv", "GMRConv2d", "GMRConv3d", "SIGMA_MODES", "DC_GAIN_FRACTION"]

SIGMA_MODES = ("layer", "fixed")

# Fraction of a GMR kernel's squared DC gain that ReLU activations realise in the steady state of a deep stack
# (they are spatially smooth but not constant). Measured with 96-128-channel GMRConv+ReLU stacks, k = 3..11,
# 2D and 3D, white and smooth inputs: per-layer variance gain 0.90-1.0 of the pure-DC prediction; 0.93 is the
# median (see GMRConv.reset_parameters and tests/nn/test_gmrconv.py).
DC_GAIN_FRACTION = 0.93


def _single(value: int | Sequence[int], name: str, spatial_dims: int) -> int:
    """Collapse an isotropic int/tuple argument to one int (GMR layers are isotropic by construction)."""
    if isinstance(value, (tuple, list)):
        if len(value) != spatial_dims or not _ints(value) or len(set(value)) != 1:
            raise ValueError(f"{name} must be an int or {spatial_dims} equal ints, got {name}={tuple(value)}.")
        value = int(value[0])
    if not _is_int(value):
        raise ValueError(f"{name} must be an int, got {name}={value!r}.")
    return int(value)


class GMRConv(nn.Module):
    """Gaussian Mixture Ring convolution: a radially symmetric, rotation/reflection-equivariant convolution.

    Each kernel is ``K[o, c](p) = sum_i w[o, c, i] * exp(-(|p| - mu_i)^2 / (2 sigma_i^2))`` on the circular
    (spherical) support ``|p| <= k // 2 + 0.5``. The layer commutes exactly with the 8 symmetries of the square
    (2D) / 48 of the cube (3D) at stride 1 with symmetric padding, and approximately with arbitrary rotations.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        kernel_size: odd kernel width ``k`` (an int or ``spatial_dims`` equal ints).
        stride: convolution stride (an int; strides other than 1 break exact equivariance).
        padding: symmetric padding; ``None`` means "same" (``dilation * (k - 1) // 2``).
        dilation: kernel dilation.
        groups: channel groups, as in ``torch.nn.Conv2d``.
        bias: add a learnable bias.
        padding_mode: ``"zeros" | "reflect" | "replicate" | "circular"``.
        num_rings: number of rings ``n``; defaults to ``(k + 1) // 2``; must be >= 2 when ``k > 1``.
        smoothing: ``"gaussian"`` (GMR) or ``"none"`` (nearest-ring assignment, the naive "Symm" baseline).
        sigma: ``"layer"`` (one trainable sigma per ring, shared by the layer, stored as ``log_sigma``) or
            ``"fixed"`` (sigma kept at its initial value as a buffer). ``log_sigma`` is clipped to
            ``[log 1e-2, log 2n]`` when the kernel is built; outside that range its gradient is zero, so a value
            pushed past a bound (e.g. by a large learning rate) stays there until set back by hand.
        circular: zero the offsets outside the inscribed circle/sphere.
        sampling: ``"center"`` (the paper's: rings evaluated at the pixel centres, ring centres from 0 to ``k / 2``)
            or ``"area"`` (rings averaged over each pixel's area, ring centres from 0 to ``k // 2``): the same
            parameters and exact grid symmetries, with a much smaller error at arbitrary angles, largest at kernel
            sizes other than 5 and 9 (see :mod:`monai_gmr.functional.basis` and docs/benchmarks.md). ``"area"`` is
            not run by the Triton kernels (they need a basis that depends on ``|p|`` only) and falls back.
        impl: ``"auto" | "dense" | "rings" | "triton"``; see :func:`monai_gmr.functional.gmr_conv` (``"triton"``:
            fused GPU kernels, falling back with a one-time warning where they cannot run).

    Shapes:
        input ``(B, C_in, *spatial)``; output ``(B, C_out, *spatial_out)``; ``weight``: ``(C_out, C_in/groups, n)``.

    On CPU, in eval mode with gradients disabled, the synthesised dense kernel is cached. A cached kernel is used
    only while ``weight`` and ``log_sigma`` still hold the values it was built from (compared element-wise, which
    also catches in-place edits through ``.data`` that autograd's version counters miss, e.g. a mean-teacher EMA),
    and only in the inference mode it was built in; ``train()``, ``.to()`` and ``load_state_dict`` drop it, and
    ``torch.jit.trace`` (the trace records the synthesis), ``torch.func`` transforms (``vmap``, ``grad``) and
    forward-mode AD with dual parameters bypass it. On GPUs the kernel is synthesised on every call: it is one small
    einsum there, and a value check would synchronise the device. The kernel is always synthesised with autocast
    off, in the parameters' dtype (the convolution itself still autocasts).

    ``torch.compile`` (any backend) traces the whole layer into one graph, in training and in eval mode, with and
    without gradients: compiled code synthesises the kernel from the current parameters on every call and never reads
    or writes the eager cache, so it cannot use a kernel built from older values (tests/nn/test_compile.py).

    ``torch.jit.script`` compiles the layer (alone or in a net) to the dense path: the kernel is synthesised from the
    parameters on every call, without the cache and the ``impl`` dispatch (rings / Triton are eager-only). The scripted
    module holds the same parameters; its ``state_dict`` also lists the non-persistent geometry buffers, as TorchScript
    ignores ``persistent=False`` (pytorch/pytorch#69250).

    Under ``with torch.device("meta")`` the layer is built without initialising its weights; ``to_empty`` then
    rebuilds the geometry buffers and a fixed sigma (neither is in the ``state_dict``) before ``load_state_dict``;
    ``load_state_dict(..., assign=True)`` without ``to_empty`` rebuilds them on the loaded weight's device, in its dtype.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str | None = None,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        num_rings: int | None = None,
        smoothing: str = "gaussian",
        sigma: str = "layer",
        circular: bool = True,
        impl: str = "auto",
        sampling: str = "center",
    ) -> None:
        super().__init__()
        if not _is_int(spatial_dims) or spatial_dims not in (2, 3):  # 2.0 passed `in (2, 3)`, then broke deep inside
            raise ValueError(f"spatial_dims must be 2 or 3, got spatial_dims={spatial_dims!r}.")
        spatial_dims = int(spatial_dims)
        k = check_kernel_size(kernel_size, spatial_dims)
        for name, val in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not _is_int(val) or val <= 0:  # NumPy integers too, like kernel_size and torch.nn.Conv2d
                raise ValueError(f"{name} must be a positive int, got {name}={val!r}.")
        in_channels, out_channels, groups = int(in_channels), int(out_channels), int(groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels={in_channels} and out_channels={out_channels} must both be divisible by groups={groups}."
            )
        stride = _single(stride, "stride", spatial_dims)
        dilation = _single(dilation, "dilation", spatial_dims)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got stride={stride}.")
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got dilation={dilation}.")
        if isinstance(padding, str) and padding == "same" and stride > 1:
            # as torch.nn.Conv2d: a "same" output size cannot hold for a strided convolution (padding=None is this
            # layer's own default, the symmetric "same" pad dilation * (k - 1) // 2, and stays accepted)
            raise ValueError(
                f"padding='same' is not supported for strided convolutions (stride={stride}), as in torch.nn.Conv2d; "
                "pass an int padding (or padding=None for the symmetric pad dilation * (kernel_size - 1) // 2)."
            )
        if padding is None or padding == "same":
            padding = same_padding(k, dilation)
        elif padding == "valid":
            padding = 0
        padding = _single(padding, "padding", spatial_dims)
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got padding={padding}.")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got padding_mode={padding_mode!r}.")
        if smoothing not in SMOOTHING_MODES:
            raise ValueError(f"smoothing must be one of {SMOOTHING_MODES}, got smoothing={smoothing!r}.")
        if sigma not in SIGMA_MODES:
            raise ValueError(f"sigma must be one of {SIGMA_MODES}, got sigma={sigma!r}.")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got impl={impl!r}.")
        check_sampling(sampling)
        # text from a command line (`--network_def#bias false`: Python Fire passes "false", which is truthy)
        bias, circular = as_bool(bias, "bias"), as_bool(circular, "circular")
        if num_rings is None:
            num_rings = default_num_rings(k)
        if not _is_int(num_rings):
            raise ValueError(f"num_rings must be an int, got num_rings={num_rings!r}.")
        num_rings = int(num_rings)
        if k > 1 and num_rings < 2:
            raise ValueError(f"num_rings must be >= 2 for kernel_size={k} > 1, got num_rings={num_rings}.")
        if k == 1 and num_rings != 1:
            raise ValueError(f"kernel_size=1 has a single offset: num_rings must be 1 (or None), got num_rings={num_rings}.")

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = k
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.padding_mode = padding_mode
        self.num_rings = num_rings
        self.smoothing = smoothing
        self.sigma_mode = sigma
        self.circular = circular
        self.impl = impl
        self.sampling = sampling
        self.log_sigma_range = log_sigma_bounds(num_rings)

        # fixed geometry: non-persistent buffers, computed in float64 and rounded to the module's dtype (recomputed
        # by _apply, so that .double() gives float64-exact geometry rather than widened float32 values); the
        # module's dtype is that of its parameters, torch's default dtype (float64 geometry under
        # torch.set_default_dtype(torch.float64), not float32 values beside float64 weights)
        for name, value in self._geometry().items():
            self.register_buffer(name, value.to(torch.get_default_dtype()), persistent=False)

        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, num_rings))
        log_sigma = torch.full((num_rings,), math.log(initial_sigma(k, num_rings, sampling=sampling)))
        if smoothing == "gaussian" and sigma == "layer":
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            # sigma is not learned (fixed, or unused by hard ring assignment): keep it out of the state_dict
            self.register_buffer("log_sigma", log_sigma, persistent=False)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._kernel_cache: tuple[tuple, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.reset_parameters()

    def _geometry(self) -> dict[str, torch.Tensor]:
        """The fixed geometry buffers, in float64."""
        k, d = self.kernel_size, self.spatial_dims
        s = AREA_SUBSAMPLES if self.sampling == "area" and k > 1 else 1
        return {
            "distances": offset_distances(k, d, torch.float64, subsamples=s),
            "mask": support_mask(k, d, self.circular, torch.float64, subsamples=s),
            "centers": ring_centers(k, self.num_rings, torch.float64, sampling=self.sampling),
        }

    # ------------------------------------------------------------------ parameters
    def basis(self) -> torch.Tensor:
        """Ring basis ``G``, shape ``(n,) + (k,) * spatial_dims``."""
        return ring_basis(
            self.distances,
            self.centers,
            self.log_sigma,
            self.mask,
            self.smoothing,
            self.log_sigma_range,
            area=self.distances.ndim > self.spatial_dims,
        )

    def dc_energy(self) -> float:
        """``E[(sum_p K(p))^2] / Var(w) = sum_i (sum_p G_i(p))^2``: squared DC gain of a kernel with unit-variance ring weights."""
        with torch.no_grad():
            basis = self.basis().double()
            return float((basis.reshape(self.num_rings, -1).sum(1) ** 2).sum())

    def reset_parameters(self) -> None:
        """Kaiming-style initialisation computed from the synthesised kernel's actual gain.

        All offsets of a ring share one weight, so a GMR kernel responds to smooth inputs far more strongly than an
        i.i.d. kernel of the same energy. Activations of ReLU stacks become spatially smooth after the first layer
        (each ring is a low-pass filter), so the variance-preserving condition of He et al. is set on the
        kernel's DC gain: with ring weights ``w ~ N(0, s^2)``, ``E[(sum_p K(p))^2] = s^2 sum_i (sum_p G_i(p))^2``
        and ``s^2 = 2 / (C_in/groups * f * sum_i (sum_p G_i(p))^2)``, where ``f = DC_GAIN_FRACTION`` is the measured
        fraction of the DC gain that ReLU activations realise (they are smooth but not constant). For ``k = 1``
        the sum is 1, ``f`` is not applied and this is exactly Kaiming-normal.
        (Measured in tests/nn/test_gmrconv.py: a 20-layer GMRConv+ReLU stack keeps its activation std within 2x,
        where the white-noise energy ``sum_{i,p} G_i(p)^2`` explodes it by orders of magnitude.)

        A learned ``log_sigma`` is reset to its initial value first (the gain depends on it), so that the deferred
        initialisation ``with torch.device("meta")`` -> ``to_empty`` -> ``reset_parameters()`` gives the layer a
        constructor-fresh state; a fixed sigma (a buffer the user may have set) is kept.
        """
        if self.weight.device.type == "meta":  # no values to set (``with torch.device("meta")``; see _apply)
            self._kernel_cache = None
            return
        if isinstance(self.log_sigma, nn.Parameter):
            with torch.no_grad():
                self.log_sigma.fill_(math.log(initial_sigma(self.kernel_size, self.num_rings, sampling=self.sampling)))
        fan = (self.in_channels // self.groups) * self.dc_energy()
        if self.kernel_size > 1:
            fan *= DC_GAIN_FRACTION
        with torch.no_grad():
            self.weight.normal_(0.0, math.sqrt(2.0 / fan))
            if self.bias is not None:
                self.bias.zero_()
        self._kernel_cache = None

    @property
    def sigma(self) -> torch.Tensor:
        """Current (clipped) ring widths sigma_i."""
        return self.log_sigma.detach().clamp(self.log_sigma_range[0], self.log_sigma_range[1]).exp()

    def _cache_key(self) -> tuple:
        return (
            tuple((t.dtype, t.device) for t in (self.weight, self.log_sigma, self.distances)),
            torch.is_inference_mode_enabled(),  # an inference-mode kernel cannot take part in autograd later
        )

    def _synthesize(self) -> torch.Tensor:
        device_type = self.weight.device.type
        if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
            # synthesised in the parameters' dtype: a low-precision kernel would otherwise reach the cache
            with torch.autocast(device_type, enabled=False):
                return synthesize_kernel(self.weight, self.basis())
        return synthesize_kernel(self.weight, self.basis())

    def dense_kernel(self) -> torch.Tensor:
        """The synthesised dense kernel, shape ``(C_out, C_in/groups) + (k,) * spatial_dims``.

        Cached on CPU in eval mode when no gradient is needed, while the parameters keep their values (see the class
        docstring); never inside ``torch.compile``d code. A kernel served from the cache is returned as a copy, so
        that editing the returned tensor in place cannot change the layer's later outputs.
        """
        kernel = self._dense_kernel()
        cache = self._kernel_cache
        return kernel.clone() if cache is not None and kernel is cache[3] else kernel

    def _dense_kernel(self) -> torch.Tensor:
        """:meth:`dense_kernel` without the copy of a cached kernel (the forward, which never edits it)."""
        if torch.compiler.is_compiling():
            # torch.compile / torch.export: the synthesis is part of the graph (it is recomputed from the parameters on
            # every call, fused by inductor) and the cache is neither read nor written. Reading it needs value checks
            # that Dynamo cannot trace (a graph break per layer, and a recompilation when the cache fills), and a
            # compiled graph must never hold a kernel computed from older parameter values.
            return self._synthesize()
        cacheable = (
            self.weight.device.type == "cpu"
            and not self.training
            # a trace records the synthesis from the parameters, never a cached kernel as a constant (the traced
            # module would ignore later weight changes, and a trace after an earlier call recorded another graph
            # than the trace checker's rerun: "Graphs differed across invocations")
            and not torch.jit.is_tracing()
            and not (torch.is_grad_enabled() and (self.weight.requires_grad or self.log_sigma.requires_grad))
            # torch.func transforms (vmap, grad, ...): the parameters may be batched / wrapped tensors, which the value
            # check cannot compare (vmap: "Batching rule not implemented for aten::equal") and the cache must not
            # keep past the transform
            and not torch._C._are_functorch_transforms_active()
            # forward-mode AD (torch.autograd.forward_ad) runs under no_grad too: a cached kernel has no tangent
            and not any(fwAD.unpack_dual(t).tangent is not None for t in (self.weight, self.log_sigma))
        )
        if not cacheable:
            self._kernel_cache = None
            return self._synthesize()
        key = self._cache_key()
        cache = self._kernel_cache
        if (
            cache is not None
            and cache[0] == key
            and torch.equal(cache[1], self.weight)
            and torch.equal(cache[2], self.log_sigma)
        ):
            return cache[3]
        kernel = self._synthesize()
        self._kernel_cache = (key, self.weight.detach().clone(), self.log_sigma.detach().clone(), kernel)
        return kernel

    def train(self, mode: bool = True) -> "GMRConv":
        self._kernel_cache = None
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .double() drop the cache
        self._kernel_cache = None
        names = self._derived_buffer_names()
        before = {name: self._buffers[name] for name in names}
        out = super()._apply(fn, recurse)
        # a no-op .to() keeps the tensors; a fixed (non-learned, non-persistent) log_sigma is rebuilt only when it had
        # no values (meta -> to_empty: load_state_dict cannot restore it), never over a value the user set
        changed = [n for n, b in before.items() if self._buffers[n] is not b and (n != "log_sigma" or b.is_meta)]
        self._rebuild_buffers({n: (self._buffers[n].device, self._buffers[n].dtype) for n in changed})
        old, new = before.get("log_sigma"), self._buffers.get("log_sigma")
        if old is not None and new is not None and new is not old and not old.is_meta and not new.is_meta:
            # a fixed sigma that had values keeps them: to_empty() of a materialised layer left it uninitialised, and
            # neither load_state_dict (non-persistent) nor reset_parameters (keeps a fixed sigma) restored it
            with torch.inference_mode(False):
                self._buffers["log_sigma"] = old.to(device=new.device, dtype=new.dtype)
        return out

    def _derived_buffer_names(self) -> tuple[str, ...]:
        """The non-persistent buffers computed from the hyper-parameters (a fixed ``log_sigma`` included)."""
        return ("distances", "mask", "centers") + (("log_sigma",) if "log_sigma" in self._buffers else ())

    def _rebuild_buffers(self, targets: dict[str, tuple[torch.device, torch.dtype]]) -> None:
        """Recompute the named derived buffers in float64 and round them to ``targets[name] = (device, dtype)``
        (meta targets are skipped: they hold no values)."""
        targets = {n: t for n, t in targets.items() if torch.device(t[0]).type != "meta"}
        if not targets:
            return
        # buffers made inside inference mode could not enter autograd later
        with torch.inference_mode(False):
            exact = self._geometry()
            sigma0 = initial_sigma(self.kernel_size, self.num_rings, sampling=self.sampling)
            exact["log_sigma"] = torch.full((self.num_rings,), math.log(sigma0), dtype=torch.float64)
            for name, (device, dtype) in targets.items():  # round the float64 geometry to the new dtype, not twice
                buf = self._buffers[name]
                if buf is not None and buf.is_floating_point():
                    self._buffers[name] = exact[name].to(device=device, dtype=dtype)

    def __getstate__(self) -> dict:
        # the eval-mode kernel cache (a clone of the parameters and the dense kernel, k^d / n times the weight's size)
        # is rebuilt on the next call: not written by torch.save(model) / pickle, not duplicated by copy.deepcopy
        state = super().__getstate__()
        state["_kernel_cache"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        # a whole module pickled (torch.save(model)) before the sampling option existed used the paper's sampling
        state.setdefault("sampling", "center")
        super().__setstate__(state)

    def _load_from_state_dict(self, *args, **kwargs):
        self._kernel_cache = None
        super()._load_from_state_dict(*args, **kwargs)
        # ``with torch.device("meta")`` then ``load_state_dict(..., assign=True)``: the parameters are now the loaded
        # tensors, but the non-persistent buffers (not in the state dict) are still on meta; rebuild them on the
        # weight's device, in its dtype
        weight = self.weight
        if not weight.is_meta and weight.is_floating_point():
            meta = [n for n in self._derived_buffer_names() if self._buffers[n].is_meta]
            self._rebuild_buffers({n: (weight.device, weight.dtype) for n in meta})

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: input of shape ``(B, C_in, *spatial)`` with ``spatial_dims`` spatial dims, or unbatched
                ``(C_in, *spatial)`` as ``nn.Conv2d``/``nn.Conv3d`` accept.

        Returns:
            output of shape ``(B, C_out, *spatial_out)`` (``(C_out, *spatial_out)`` for an unbatched input).
        """
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"input must be a tensor, got {type(x).__name__}.")
        unbatched = x.dim() == self.spatial_dims + 1
        if unbatched:
            x = x.unsqueeze(0)
        self._check_input(x, unbatched)
        if torch.jit.is_scripting():
            y = self._forward_scripted(x)
        else:
            y = self._forward_eager(x)
        return y.squeeze(0) if unbatched else y

    def _check_input(self, x: torch.Tensor, unbatched: bool = False) -> None:
        """Shape checks of both forwards (TorchScript-compatible); ``x`` is batched here (``unbatched``: it was
        ``(C, *spatial)`` before the batch dim was added, which the channel error names)."""
        d = self.spatial_dims
        dims = "H, W" if d == 2 else "D, H, W"
        if x.dim() != d + 2:
            raise ValueError(
                f"input must have shape (B, C, {dims}) or (C, {dims}) for spatial_dims={d}, got input shape "
                f"{list(x.shape)}."
            )
        if not (x.is_floating_point() or x.is_complex()):
            # the kernel is cast to the input's dtype: an integer input (e.g. uint8 images) would truncate the kernel
            raise ValueError(
                f"input must be a floating-point tensor, got input dtype {x.dtype}; convert it first (e.g. x.float())."
            )
        if unbatched and x.shape[1] != self.in_channels:
            # e.g. a batch of 2D images (B, C, H, W) given to a 3D layer: say how the shape was read
            hint = " (a batch of 2D images (B, C, H, W) needs spatial_dims=2)" if d == 3 else ""
            raise ValueError(
                f"input shape {list(x.shape[1:])} has {d + 1} dims, so it is read as unbatched (C, {dims}) with "
                f"C={x.shape[1]}, but in_channels={self.in_channels}; a batched input is (B, C, {dims}) for "
                f"spatial_dims={d}{hint}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"input has {x.shape[1]} channels but in_channels={self.in_channels} (input shape {list(x.shape)} read "
                f"as (B, C, *spatial) with spatial_dims={d}, unbatched inputs as (C, *spatial))."
            )

    @torch.jit.unused
    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        """The eager forward: dispatch among the implementations, eval-mode kernel cache (not compiled by TorchScript)."""
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        impl = select_impl(
            self.impl, x.device, self.spatial_dims, self.kernel_size, self.in_channels, needs_grad, groups=self.groups
        )
        if impl == "triton":
            # an unsupported call (e.g. CPU without the interpreter) falls back here, so a fallback to "dense" uses
            # the eval-mode kernel cache below (gmr_conv re-synthesised the kernel on every call); an explicit
            # request still logs its one warning per reason
            impl = _fconv.resolve_triton(
                self.impl, x, self.kernel_size, self.stride, self.padding, self.dilation, self.groups,
                self.padding_mode, needs_grad, True, self.sampling == "center", out_channels=self.out_channels,
            )  # fmt: skip
        kernel = self._dense_kernel() if impl == "dense" else None  # cached in eval mode
        basis = self.basis() if kernel is None else None
        return gmr_conv(
            x,
            self.weight,
            basis,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
            # "triton" is resolved (support checks, fallbacks, warnings for an explicit request) by gmr_conv itself
            impl=self.impl if impl == "triton" else impl,
            kernel=kernel,
            circular=self.circular,
            radial=self.sampling == "center",
        )

    def _forward_scripted(self, x: torch.Tensor) -> torch.Tensor:
        """The forward compiled by ``torch.jit.script``: the dense path, kernel synthesised from the ring basis on
        every call (no cache, no ``impl`` dispatch); the same arithmetic as the eager dense path.

        Shapes: as :meth:`forward`.
        """
        d = self.spatial_dims
        n = self.num_rings
        lo, hi = self.log_sigma_range
        basis = ring_basis_values(
            self.distances, self.centers, self.log_sigma, self.mask, self.smoothing == "gaussian", lo, hi,
            self.distances.dim() > d,
        )  # fmt: skip
        weight = self.weight
        # synthesize_kernel's contraction over the rings, written as a sum of products: TorchScript ignores
        # ``torch.autocast(enabled=False)``, and under autocast a matmul would synthesise the kernel in bf16/fp16
        # (the eager layer synthesises it in the parameters' dtype); elementwise ops are not autocast
        flat = weight.reshape(-1, n)
        rings = basis.reshape(n, -1).to(weight.dtype)
        kernel = flat[:, 0:1] * rings[0:1]
        for i in range(1, n):
            kernel = kernel + flat[:, i : i + 1] * rings[i : i + 1]
        kernel = kernel.reshape([weight.shape[0], weight.shape[1]] + [self.kernel_size] * d)
        pad = self.padding
        if self.padding_mode != "zeros" and pad > 0:
            x = F.pad(x, [pad] * (2 * d), mode=self.padding_mode)
            pad = 0
        if kernel.dtype != x.dtype:
            kernel = kernel.to(x.dtype)
        bias = self.bias
        if bias is not None:
            if bias.dtype != x.dtype:
                bias = bias.to(x.dtype)
        if d == 2:
            return F.conv2d(x, kernel, bias, self.stride, pad, self.dilation, self.groups)
        return F.conv3d(x, kernel, bias, self.stride, pad, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = (
            f"spatial_dims={self.spatial_dims}, {self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"num_rings={self.num_rings}, stride={self.stride}, padding={self.padding}"
        )
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        if self.smoothing != "gaussian":
            s += f", smoothing={self.smoothing}"
        elif self.sigma_mode != "layer":
            s += f", sigma={self.sigma_mode}"
        if not self.circular:
            s += ", circular=False"
        if self.sampling != "center":
            s += f", sampling={self.sampling}"
        return s + f", impl={self.impl}"


class GMRConv2d(GMRConv):
    """2D GMR convolution with the positional signature of ``torch.nn.Conv2d``.

    ``padding=None`` (default) means "same"; the GMR options (``num_rings``, ``smoothing``, ``sigma``,
    ``circular``, ``impl``, ``sampling``) are keyword arguments. ``device``/``dtype`` are accepted like ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str | None = None,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **gmr_kwargs,
    ) -> None:
        super().__init__(2, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, **gmr_kwargs)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)


class GMRConv3d(GMRConv):
    """3D GMR convolution with the positional signature of ``torch.nn.Conv3d`` (see :class:`GMRConv2d`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str | None = None,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **gmr_kwargs,
    ) -> None:
        super().__init__(3, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, **gmr_kwargs)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)
