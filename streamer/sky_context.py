"""What every CCD of one exposure shares: the focal-plane fields, drawn once from the plan.

:func:`_context` draws, from the exposure's own random stream, what varies smoothly over the
focal plane: the PSF's FWHM (:func:`_fwhm_at`) and shape (:func:`_psf_shape_at`, with
astigmatism), the tracking path a source sees (:func:`_trail_path`: a linear trail with
stick-slip knots, a random walk, field rotation, jumps), and the sky and transmission fields
(:func:`_fields`: vignetting, a linear (log) moonlight gradient, scattered-light blobs and arcs,
clouds). Positions ``(u, v)`` are focal-plane coordinates in units of the mosaic's half-size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from skygrade.streamer.sky_kernels import _MAX_HALF, _path_extent
from skygrade.streamer.sky_plan import PIXEL_SCALE, ExposurePlan, Geometry, _focal_plane


@dataclass
class _Context:
    plan: ExposurePlan
    geometry: Geometry
    fp_centre: tuple[float, float]
    fp_radius: float
    psf_coeffs: np.ndarray  # fwhm multiplier: 1 + c0 (r^2 - 0.5) + c1 u + c2 v
    walk: np.ndarray | None  # (n, 2) pixels, centred
    dwell: np.ndarray  # (k, 2): position along a linear trail (-0.5..0.5), flux fraction
    blobs: np.ndarray  # (k, 4): u, v, size, amplitude
    arcs: np.ndarray  # (k, 5): centre u, v, radius, width, amplitude (rings of scattered light)
    cloud_modes: np.ndarray  # (m, 4): ku, kv, phase, amplitude
    cloud_threshold: float
    vignetting: float


def _context(plan: ExposurePlan, geometry: Geometry) -> _Context:
    rng = np.random.default_rng([plan.seed, plan.expnum, 1_000_000])
    xc, yc, radius = _focal_plane(geometry)
    coeffs = np.array(
        [rng.uniform(-0.12, 0.12), rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)]
    )
    walk = None
    if "walk" in plan.trail_mode and plan.trail_length > 0:
        walk = _random_walk(rng, plan.trail_length)
    # Stick-slip tracking: the mount dwells at a few points of a linear trail (brighter knots).
    n_dwell = int(rng.integers(1, 4))
    dwell = np.column_stack([rng.uniform(-0.5, 0.5, n_dwell), rng.uniform(0.1, 0.35, n_dwell)])
    n_blobs = int(rng.integers(1, 5)) if plan.scatter > 0 else 0
    blobs = np.column_stack(
        [
            rng.uniform(-1.2, 1.2, n_blobs),
            rng.uniform(-1.2, 1.2, n_blobs),
            rng.uniform(0.15, 0.5, n_blobs),
            plan.scatter * rng.uniform(0.3, 1.0, n_blobs),
        ]
    )
    m = 8
    k = rng.uniform(0.4, 2.2, m) * math.pi
    theta = rng.uniform(0, 2 * math.pi, m)
    modes = np.column_stack(
        [
            k * np.cos(theta),
            k * np.sin(theta),
            rng.uniform(0, 2 * math.pi, m),
            np.full(m, 1 / math.sqrt(m / 2)),
        ]
    )
    # cloud_cover of the field has s < 0.5: threshold at that quantile of a ~N(0, 1) field.
    cover = min(max(plan.cloud_cover, 0.0), 1.0)
    threshold = float(np.sqrt(2.0) * _erfinv(2.0 * cover - 1.0)) if 0 < cover < 1 else 0.0
    if cover >= 1:
        threshold = 10.0
    vign = float(rng.uniform(0.15, 0.3))
    # Scattered light also comes as arcs (reflections of a bright star off the field): rings
    # centred outside the mosaic whose edge crosses it. Drawn last so earlier draws keep.
    n_arcs = int(rng.random() < 0.5) * int(rng.integers(1, 3)) if plan.scatter > 0 else 0
    phi = rng.uniform(0.0, 2.0 * math.pi, n_arcs)
    dist = rng.uniform(1.2, 2.2, n_arcs)
    arcs = np.column_stack(
        [
            dist * np.cos(phi),
            dist * np.sin(phi),
            dist + rng.uniform(-0.9, -0.2, n_arcs),
            rng.uniform(0.03, 0.15, n_arcs),
            plan.scatter * rng.uniform(0.2, 0.7, n_arcs),
        ]
    )
    # A tracking jump part way through a random walk: the rest of the path is displaced by
    # half the walk's length (drawn last so earlier draws keep).
    if walk is not None and plan.trail_jump > 0:
        k = int(round(len(walk) * (1.0 - plan.trail_jump)))
        phi_jump = rng.uniform(0.0, 2.0 * math.pi)
        walk[k:] += 0.5 * plan.trail_length * np.array([math.cos(phi_jump), math.sin(phi_jump)])
        walk -= walk.mean(axis=0)
    return _Context(
        plan, geometry, (xc, yc), radius, coeffs, walk, dwell, blobs, arcs, modes, threshold, vign
    )


def _random_walk(rng: np.random.Generator, length: float, n: int = 600) -> np.ndarray:
    """An erratic tracking path of total length ``length`` (pixels), centred on its mean.

    The heading drifts, the speed varies by large factors (the mount sticks and slips: slow
    stretches make bright knots that break a trail into pieces) and the path wobbles.
    """
    heading = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0.0, 0.03, n))
    log_speed = np.zeros(n)
    for i in range(1, n):
        log_speed[i] = 0.97 * log_speed[i - 1] + 0.2 * rng.normal()
    speed = np.exp(log_speed)
    step = speed[:, None] * np.column_stack([np.cos(heading), np.sin(heading)])
    step += 0.15 * speed.mean() * rng.normal(size=(n, 2))
    pos = np.cumsum(step, axis=0)
    total = np.sum(np.hypot(*np.diff(pos, axis=0).T))
    pos *= length / max(total, 1e-9)
    return pos - pos.mean(axis=0)


def _erfinv(y: float) -> float:
    """Inverse error function (Winitzki's approximation, refined by two Newton steps)."""
    y = min(max(y, -0.999999), 0.999999)
    a = 0.147
    ln = math.log(1.0 - y * y)
    t = 2.0 / (math.pi * a) + ln / 2.0
    x = math.copysign(math.sqrt(math.sqrt(t * t - ln / a) - t), y)
    for _ in range(2):
        x -= (math.erf(x) - y) / (2.0 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


def _fwhm_at(ctx: _Context, u: float, v: float) -> float:
    c = ctx.psf_coeffs
    scale = 1.0 + c[0] * (u * u + v * v - 0.5) + c[1] * u + c[2] * v
    return ctx.plan.seeing / PIXEL_SCALE * max(scale, 0.5)


def _psf_shape_at(plan: ExposurePlan, u: float, v: float) -> tuple[float, float]:
    """PSF ellipticity (1 - b/a) and position angle (degrees) at focal-plane position (u, v):
    the plan's constant part plus astigmatism ``psf_astig * r^2`` along (or, negative, across)
    the radius, added as spin-2 vectors."""
    a0 = math.radians(2.0 * plan.psf_angle)
    e1 = plan.psf_ellip * math.cos(a0) + plan.psf_astig * (u * u - v * v)
    e2 = plan.psf_ellip * math.sin(a0) + plan.psf_astig * 2.0 * u * v
    ellip = min(math.hypot(e1, e2), 0.25)
    return ellip, math.degrees(math.atan2(e2, e1)) / 2.0 % 180.0


def _trail_path(ctx: _Context, u: float, v: float, fwhm: float) -> np.ndarray | None:
    """The tracking path (pixels, centred) seen by a source at focal-plane position (u, v)."""
    plan = ctx.plan
    parts = []
    if plan.trail_mode == "linear" and plan.trail_length > 0.05:
        n = max(8, int(plan.trail_length * 8))
        if plan.trail_jump > 0:
            # Held at one end, a fast slew (3% of the light), held at the other: two images.
            n_hold = 32 * n
            t = np.concatenate(
                [
                    np.full(int(n_hold * (1.0 - plan.trail_jump)), -0.5),
                    np.linspace(-0.5, 0.5, max(2, n_hold * 3 // 100)),
                    np.full(int(n_hold * plan.trail_jump), 0.5),
                ]
            )
        else:
            t = np.linspace(-0.5, 0.5, n)
            knots = [np.full(int(n * w / (1 - w)), p) for p, w in ctx.dwell]
            t = np.concatenate([t, *knots])
        t -= t.mean()
        a = math.radians(plan.trail_angle)
        parts.append(np.column_stack([t * math.cos(a), t * math.sin(a)]) * plan.trail_length)
    if ctx.walk is not None:
        parts.append(ctx.walk)
    if "rotation" in plan.trail_mode and plan.rotation > 0:
        n = len(ctx.walk) if ctx.walk is not None else max(8, int(plan.rotation * 8))
        phi = plan.rotation / ctx.fp_radius * (np.linspace(0, 1, n) - 0.5)
        px, py = u * ctx.fp_radius, v * ctx.fp_radius
        rot = np.column_stack(
            [px * np.cos(phi) - py * np.sin(phi) - px, px * np.sin(phi) + py * np.cos(phi) - py]
        )
        parts.append(rot - rot.mean(axis=0))
    if not parts:
        return None
    if len(parts) == 1:
        path = parts[0]
    else:
        path = parts[0] + parts[1] if len(parts[0]) == len(parts[1]) else parts[0]
    # Keep the kernel within its cap.
    limit = _MAX_HALF - 3.0 * fwhm - 3
    ext = _path_extent(path)
    if ext > limit:
        path = path * (limit / ext)
    return path


def _fields(ctx: _Context, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sky multiplier and source transmission at focal-plane positions (u, v)."""
    plan = ctx.plan
    r2 = u * u + v * v
    vign = 1.0 - ctx.vignetting * np.clip(np.sqrt(r2) - 0.7, 0.0, None) ** 2 / 0.5
    g = math.radians(plan.gradient_angle)
    sky = np.exp(plan.sky_gradient * (u * math.cos(g) + v * math.sin(g)))
    for bu, bv, size, amp in ctx.blobs:
        sky = sky + amp * np.exp(-((u - bu) ** 2 + (v - bv) ** 2) / (2 * size * size))
    for au, av, rad, width, amp in ctx.arcs:
        ring = (np.hypot(u - au, v - av) - rad) / width
        sky = sky + amp * np.exp(-0.5 * ring * ring)
    trans = np.ones_like(u)
    if plan.cloud_min < 1.0:
        f = np.zeros_like(u)
        for ku, kv, ph, amp in ctx.cloud_modes:
            f = f + amp * np.cos(ku * u + kv * v + ph)
        s = 1.0 / (1.0 + np.exp(-3.0 * (f - ctx.cloud_threshold)))
        trans = plan.cloud_min + (1.0 - plan.cloud_min) * s
        # Clouds scatter moonlight: brighter where thick under a bright sky, darker otherwise.
        sky = sky * (1.0 + (0.8 if plan.sky_factor > 2 else -0.4) * (1.0 - trans))
    return sky * vign, trans * vign
