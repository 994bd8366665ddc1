"""Small rendering primitives shared by the synthetic H&E generators (tiles and whole slides).

Colours follow the Beer-Lambert stain model used by colour-deconvolution methods (Ruifrok & Johnston 2001): an
image is described by per-pixel haematoxylin (``h``) and eosin (``e``) concentrations, the optical density is
``od = h * HEMATOXYLIN + e * EOSIN`` and the transmitted light is ``I0 * exp(-od)``. Nuclei are haematoxylin
rich (purple/blue), stroma is eosin rich (pink), empty glass is white.

Shapes are drawn analytically inside their bounding box (a few vectorised numpy expressions per object) with a
half-pixel soft edge for anti-aliasing; the label of a pixel is its *hard* inside test, so labels and images agree.

Nothing here depends on orientation except where an angle is an explicit argument, which is what lets the
generators control exactly which structures carry orientation information.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "check_params",
    "HEMATOXYLIN",
    "EOSIN",
    "stains_to_rgb",
    "smooth_noise",
    "oriented_noise",
    "nucleus_polar_params",
    "draw_nucleus",
    "draw_spindle",
]

#: optical-density vectors (R, G, B) of haematoxylin and eosin, unit norm (Ruifrok & Johnston 2001).
HEMATOXYLIN = np.array([0.650, 0.704, 0.286], dtype=np.float64)
HEMATOXYLIN = HEMATOXYLIN / np.linalg.norm(HEMATOXYLIN)
EOSIN = np.array([0.072, 0.990, 0.105], dtype=np.float64)
EOSIN = EOSIN / np.linalg.norm(EOSIN)


def _real(v: object) -> float:
    """``v`` as a float when it is a real number (not a bool, not text), else NaN (which every rule refuses)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return math.nan
    return float(v)


def check_params(
    nonnegative: dict[str, float] | None = None,
    fractions: dict[str, float] | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
    finite: dict[str, float] | None = None,
) -> None:
    """Validate generator arguments, naming the first bad one (numpy's own errors, e.g. ``"high - low < 0"`` or
    ``"lam < 0"``, name none).

    Args:
        nonnegative: ``{name: value}`` that must be finite and ``>= 0``.
        fractions: ``{name: value}`` that must lie in ``[0, 1]``.
        ranges: ``{name: (low, high)}`` with ``0 <= low <= high``, both finite.
        finite: ``{name: value}`` that must be a finite number (e.g. an angle: NaN rendered an all-black tile).

    Raises:
        ValueError: the first argument that breaks its rule (also a value that is not a number, e.g. ``None`` or
            text, and a range that is not a pair).
    """
    for name, v in (finite or {}).items():
        if not math.isfinite(_real(v)):
            raise ValueError(f"{name} must be a finite number, got {name}={v!r}.")
    for name, v in (nonnegative or {}).items():
        if not math.isfinite(_real(v)) or _real(v) < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {name}={v!r}.")
    for name, v in (fractions or {}).items():
        if not 0.0 <= _real(v) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {name}={v!r}.")
    for name, pair in (ranges or {}).items():
        try:  # a tuple, a list (JSON/YAML configs) or an array of two numbers
            vals = [] if isinstance(pair, (str, bytes)) else list(pair)
        except TypeError:  # a single number
            vals = []
        lo, hi = (_real(v) for v in vals) if len(vals) == 2 else (math.nan, math.nan)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi):
            raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high, got {name}={pair!r}.")


def stains_to_rgb(
    h: np.ndarray,
    e: np.ndarray,
    i0: float = 245.0,
    h_vec: np.ndarray | None = None,
    e_vec: np.ndarray | None = None,
) -> np.ndarray:
    """Haematoxylin/eosin concentration maps ``(H, W)`` -> ``uint8`` RGB ``(H, W, 3)`` by Beer-Lambert.

    Args:
        h: haematoxylin concentration (optical density units, >= 0).
        e: eosin concentration.
        i0: incident light (brightness of empty glass, <= 255).
        h_vec: haematoxylin OD vector (defaults to :data:`HEMATOXYLIN`).
        e_vec: eosin OD vector (defaults to :data:`EOSIN`).
    """
    hv = HEMATOXYLIN if h_vec is None else np.asarray(h_vec, np.float64)
    ev = EOSIN if e_vec is None else np.asarray(e_vec, np.float64)
    h = np.asarray(h, np.float32)[..., None]
    e = np.asarray(e, np.float32)[..., None]
    od = h * hv.astype(np.float32) + e * ev.astype(np.float32)
    rgb = np.float32(i0) * np.exp(-od)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _spectral_noise(shape: tuple[int, int], rng: np.random.Generator, filt) -> np.ndarray:
    """White noise filtered in the Fourier domain by ``filt(ky, kx)`` (cycles/pixel), normalised to unit std."""
    hgt, wid = shape
    white = rng.standard_normal((hgt, wid)).astype(np.float32)
    ky = np.fft.fftfreq(hgt).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(wid).astype(np.float32)[None, :]
    spec = np.fft.rfft2(white) * filt(ky, kx)
    out = np.fft.irfft2(spec, s=(hgt, wid)).astype(np.float32)
    std = float(out.std())
    return out / std if std > 0 else out


def smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Isotropic Gaussian-correlated noise (correlation length ``sigma`` pixels), zero mean, unit std."""
    s = float(sigma)
    return _spectral_noise(shape, rng, lambda ky, kx: np.exp(-2.0 * (math.pi * s) ** 2 * (ky**2 + kx**2)))


def oriented_noise(
    shape: tuple[int, int], sigma_along: float, sigma_across: float, angle_deg: float, rng: np.random.Generator
) -> np.ndarray:
    """Anisotropic noise: streaks with correlation length ``sigma_along`` along ``angle_deg`` (image x axis = 0
    degrees, counter-clockwise on screen, i.e. towards -y) and ``sigma_across`` across it. Zero mean, unit std."""
    t = math.radians(angle_deg)
    ca, sa = math.cos(t), math.sin(t)
    sl, sc = float(sigma_along), float(sigma_across)

    def filt(ky, kx):
        # direction (dx, dy) = (cos t, -sin t) in array coordinates (y grows downwards)
        k_along = kx * ca - ky * sa
        k_across = kx * sa + ky * ca
        return np.exp(-2.0 * math.pi**2 * ((sl * k_along) ** 2 + (sc * k_across) ** 2))

    return _spectral_noise(shape, rng, filt)


def nucleus_polar_params(
    rng: np.random.Generator, a: float, b: float, irregularity: float, n_harmonics: int = 4
) -> dict:
    """Random parameters of an irregular elliptical nucleus (see :func:`draw_nucleus`).

    Args:
        rng: random generator.
        a: major semi-axis (pixels).
        b: minor semi-axis (pixels).
        irregularity: amplitude scale of the boundary harmonics (0 = perfect ellipse; ~0.1 is irregular).
        n_harmonics: number of harmonics (orders 2 .. n_harmonics + 1).
    """
    orders = np.arange(2, n_harmonics + 2)
    amps = irregularity * rng.uniform(0.3, 1.0, size=orders.size) / np.sqrt(orders - 1.0)
    phases = rng.uniform(0, 2 * math.pi, size=orders.size)
    return {"a": float(a), "b": float(b), "orders": orders, "amps": amps, "phases": phases}


def draw_nucleus(
    cy: float, cx: float, theta_deg: float, params: dict, shape: tuple[int, int]
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
    """Rasterise an irregular ellipse ``r(psi) = r_ellipse(psi) * (1 + sum_k A_k cos(k psi + phi_k))``.

    Args:
        cy, cx: centre (pixels, array coordinates).
        theta_deg: orientation of the major axis (degrees, counter-clockwise on screen from the x axis).
        params: from :func:`nucleus_polar_params`.
        shape: ``(H, W)`` of the canvas (the object is clipped to it).

    Returns:
        ``(slices, inside, soft, rel)``: the bounding-box slices in the canvas, the hard inside mask (bool),
        the anti-aliased coverage in [0, 1] and the relative radius ``d / r(psi)`` (for rim shading); or
        ``None`` when the object lies outside the canvas.
    """
    a, b = params["a"], params["b"]
    rmax = a * (1.0 + float(np.sum(np.abs(params["amps"])))) + 1.5
    y0, y1 = max(int(math.floor(cy - rmax)), 0), min(int(math.ceil(cy + rmax)) + 1, shape[0])
    x0, x1 = max(int(math.floor(cx - rmax)), 0), min(int(math.ceil(cx + rmax)) + 1, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    d = np.sqrt(yy * yy + xx * xx)
    # angle in the object frame: screen angle (counter-clockwise, y up) minus the orientation
    psi = np.arctan2(-yy, xx) - np.float32(math.radians(theta_deg))
    c, s = np.cos(psi), np.sin(psi)
    r = (a * b) / np.sqrt((b * c) ** 2 + (a * s) ** 2)
    mod = np.ones_like(r)
    for k, amp, ph in zip(params["orders"], params["amps"], params["phases"]):
        mod += np.float32(amp) * np.cos(np.float32(k) * psi + np.float32(ph))
    r = r * mod
    inside = d <= r
    soft = np.clip(r - d + 0.5, 0.0, 1.0)
    rel = d / np.maximum(r, 1e-3)
    return (slice(y0, y1), slice(x0, x1)), inside, soft, rel


def draw_spindle(
    cy: float,
    cx: float,
    theta_deg: float,
    length: float,
    width: float,
    curvature: float,
    shape: tuple[int, int],
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Rasterise a thin, slightly curved spindle (a stromal fibre / fibroblast streak) with tapered ends.

    The half-width along the axis is ``width / 2 * sqrt(1 - t^2)`` for ``t`` in [-1, 1]; the centre line is
    bent by ``curvature * u^2`` (pixels, ``u`` along the axis).

    Args:
        cy, cx: centre (pixels).
        theta_deg: direction of the long axis (degrees, counter-clockwise on screen from the x axis).
        length: total length (pixels).
        width: maximal width (pixels).
        curvature: bend coefficient (1/pixels).
        shape: canvas ``(H, W)``.

    Returns:
        ``(slices, coverage)`` with coverage in [0, 1], or ``None`` when outside the canvas.
    """
    half = 0.5 * length
    ext = half + width + abs(curvature) * half * half + 2.0
    y0, y1 = max(int(math.floor(cy - ext)), 0), min(int(math.ceil(cy + ext)) + 1, shape[0])
    x0, x1 = max(int(math.floor(cx - ext)), 0), min(int(math.ceil(cx + ext)) + 1, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    t = math.radians(theta_deg)
    ca, sa = np.float32(math.cos(t)), np.float32(math.sin(t))
    u = xx * ca - yy * sa  # along the axis (screen direction (cos t, sin t), y up)
    v = xx * sa + yy * ca  # across
    v = v - np.float32(curvature) * u * u
    tt = np.clip(u / np.float32(half), -1.0, 1.0)
    hw = np.float32(0.5 * width) * np.sqrt(np.maximum(1.0 - tt * tt, 0.0))
    cov = np.clip(hw - np.abs(v) + 0.5, 0.0, 1.0) * (np.abs(u) <= half)
    return (slice(y0, y1), slice(x0, x1)), cov.astype(np.float32)
