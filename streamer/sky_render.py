"""One CCD of the simulated MegaCam rendered to uint16 ADU (:func:`_render_ccd`).

Per CCD (pixel scale 0.187 arcsec/px):

- sky: the exposure's sky field (:func:`skygrade.streamer.sky_context._fields`) on a coarse grid,
  interpolated to the pixels;
- sources: stars and galaxies with magnitudes from a power law ``dN/dm ~ 10**(0.3 m)``, a
  share of them close companions, rendered as flux-scaled stamps of the region's kernels
  (:mod:`skygrade.streamer.sky_kernels`; sub-pixel phases for the compact kernel);
- detector: Poisson (Gaussian approximation) and read noise, bias pedestal with an offset between
  the two amplifier halves of a CCD, saturation with bleed columns, cosmic rays (muon tracks and
  electron worms, diffused; rate proportional to the exposure time), bad columns and rare dead CCDs.

Every random step is seeded from ``(plan.seed, plan.expnum, ccd, stream)``, so the CCDs are
independent of each other and of the order they are rendered in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from skygrade.streamer.sky_context import _Context, _fields, _fwhm_at, _psf_shape_at, _trail_path
from skygrade.streamer.sky_kernels import _build_kernels
from skygrade.streamer.sky_plan import FILTERS, PIXEL_SCALE, ExposurePlan, Geometry, _ccd_origin

log = logging.getLogger(__name__)


_REF_CCD_AREA = 2048 * 4612
_REF_DENSITY_MAG = 24.0
_N_REF = 2000.0  # sources brighter than _REF_DENSITY_MAG on a full-size CCD
_COUNT_SLOPE = 0.3  # dN/dm ~ 10**(_COUNT_SLOPE * m)
_M_BRIGHT = 13.0
_PIXEL_UM = 13.5  # MegaCam pixel, microns
_PIXEL_CM2 = (_PIXEL_UM * 1e-4) ** 2
_DEAD_CCD_RATE = 1.0 / 300.0
_BIAS_LEVEL = 200.0
_N_GALAXY_TEMPLATES = 10
_COMPANION_FRACTION = 0.35
_LOG_HALF_LIGHT_22 = math.log(3.2)  # typical galaxy half-light radius at magnitude 22: 0.6", in px


def _interp_matrix(n_out: int, coarse: np.ndarray) -> np.ndarray:
    """Dense linear-interpolation matrix (n_out x len(coarse)) from coarse nodes to pixels."""
    pix = np.arange(n_out, dtype=np.float64)
    idx = np.clip(np.searchsorted(coarse, pix, side="right") - 1, 0, len(coarse) - 2)
    frac = (pix - coarse[idx]) / (coarse[idx + 1] - coarse[idx])
    m = np.zeros((n_out, len(coarse)), dtype=np.float32)
    m[np.arange(n_out), idx] = 1.0 - frac
    m[np.arange(n_out), idx + 1] = frac
    return m


@dataclass(frozen=True)
class _CcdMeta:
    gain: float
    rdnoise: float
    saturate: float
    bias: float
    dead: bool


def _ccd_meta(plan: ExposurePlan, ccd: int) -> _CcdMeta:
    rng = np.random.default_rng([plan.seed, ccd, 0xCCD])  # a CCD keeps its electronics
    gain = round(float(rng.uniform(1.5, 1.8)), 3)
    rdnoise = round(float(rng.uniform(4.0, 6.0)), 2)
    saturate = float(rng.choice([65535.0, 65000.0, 64000.0, 62000.0]))
    bias = _BIAS_LEVEL + round(float(rng.uniform(-20, 20)), 1)
    dead = np.random.default_rng([plan.seed, plan.expnum, ccd, 0xDEAD]).random() < _DEAD_CCD_RATE
    return _CcdMeta(gain, rdnoise, saturate, bias, bool(dead))


def _regions(geometry: Geometry) -> tuple[int, int]:
    return max(1, round(geometry.height / 2300)), max(1, round(geometry.width / 1024))


def _render_ccd(ctx: _Context, ccd: int) -> tuple[np.ndarray, _CcdMeta]:
    """Render one CCD to uint16 ADU."""
    plan, geo = ctx.plan, ctx.geometry
    meta = _ccd_meta(plan, ccd)
    rng = np.random.default_rng([plan.seed, plan.expnum, ccd])
    height, width = geo.height, geo.width
    x0, y0 = _ccd_origin(geo, ccd)
    xc, yc = ctx.fp_centre
    radius = ctx.fp_radius
    filt = FILTERS[plan.filter]

    def to_uv(x: np.ndarray | float, y: np.ndarray | float) -> tuple:
        return (x0 + x - xc) / radius, (y0 + y - yc) / radius

    # Sky: smooth fields evaluated on a coarse grid and interpolated (two small matmuls).
    step = 64.0
    cx = np.linspace(0.0, width - 1.0, max(2, int(math.ceil((width - 1) / step)) + 1))
    cy = np.linspace(0.0, height - 1.0, max(2, int(math.ceil((height - 1) / step)) + 1))
    gu, gv = to_uv(cx[None, :], cy[:, None])
    sky_mult, _ = _fields(ctx, gu + 0 * gv, gv + 0 * gu)
    sky_level = filt.sky_rate * plan.exptime * plan.sky_factor
    coarse = (sky_level * sky_mult).astype(np.float32)
    signal = _interp_matrix(height, cy) @ (coarse @ _interp_matrix(width, cx).T)
    signal = np.ascontiguousarray(signal, dtype=np.float32)

    if not meta.dead:
        _add_sources(ctx, rng, signal, to_uv, meta)
        _add_bad_columns(rng, signal, plan.exptime)
    else:
        log.debug("exposure %d ccd %d is dead", plan.expnum, ccd)
        signal[:] = 0.0

    # Noise: Poisson (Gaussian approximation) + read noise, in ADU.
    var = signal / meta.gain
    var += (meta.rdnoise / meta.gain) ** 2
    np.sqrt(var, out=var)
    noise = rng.standard_normal(signal.shape, dtype=np.float32)
    noise *= var
    del var
    signal += noise
    del noise
    signal += meta.bias
    if plan.amp_offset > 0:
        # The right amplifier's bias residual against the left one (MegaCam: 2 amps per CCD).
        amp_rng = np.random.default_rng([plan.seed, plan.expnum, ccd, 0xA3F])
        signal[:, width // 2 :] += float(plan.amp_offset * amp_rng.standard_normal())
    if not meta.dead:
        _add_cosmic_rays(rng, signal, plan, meta.gain)
    np.clip(signal, 0.0, meta.saturate, out=signal)
    np.rint(signal, out=signal)
    return signal.astype(np.uint16), meta


def _galaxy_templates(
    rng: np.random.Generator, mag: np.ndarray, half_light: np.ndarray
) -> np.ndarray:
    """Template index of each source if it is a galaxy: brighter galaxies are larger (apparent
    size falls ~0.1 dex per magnitude, 0.15 dex scatter), so that the brightest isolated
    sources hold resolved, intrinsically elongated galaxies as real fields do."""
    want = _LOG_HALF_LIGHT_22 - 0.23 * (mag - 22.0) + rng.normal(0.0, 0.35, mag.size)
    return np.abs(np.log(half_light)[None, :] - want[:, None]).argmin(axis=1)


def _add_sources(
    ctx: _Context,
    rng: np.random.Generator,
    signal: np.ndarray,
    to_uv: Callable,
    meta: _CcdMeta,
) -> None:
    """Add the CCD's stars and galaxies, each a flux-scaled kernel stamp, and the bleed columns
    of saturated stars, to ``signal`` (ADU, in place). The steps draw from ``rng`` in order."""
    height, width = signal.shape
    # 1. The galaxy templates and every kernel of each PSF region of the CCD.
    galaxy_shapes, half_light = _galaxy_shapes(rng)
    table = _region_kernels(ctx, width, height, to_uv, galaxy_shapes)
    # 2. Where the sources are and how bright, down to ~1 mag below detection.
    zp, m_faint = _magnitude_range(ctx.plan, meta, table)
    drawn = _draw_sources(ctx, rng, width, height, table.max_half, m_faint)
    if drawn is None:
        return
    x, y, mag = drawn
    u, v = to_uv(x, y)
    _, trans = _fields(ctx, u, v)
    flux = 10 ** (-0.4 * (mag - zp)) * trans
    # 3. Which kernel each source gets, then its stamp.
    kid, ix, iy, bright = _choose_kernels(rng, table, x, y, mag, flux, half_light, meta, signal)
    keep = _add_stamps(signal, table, kid, ix, iy, flux)
    # 4. Bleed trails: the charge above saturation spills along the column through the star.
    _add_bleed_trails(signal, table, kid, ix, iy, flux, bright & keep, meta.saturate)


@dataclass
class _KernelTable:
    """Every kernel of one CCD in one list, and where each PSF region's kernels start in it."""

    regions: tuple[int, int]  # (ry, rx), from _regions
    kernels: list[np.ndarray]
    halves: list[int]  # half size of each kernel
    core: dict[tuple[int, int], tuple[int, int]]  # region (j, i) -> (first core id, os)
    wide: dict[tuple[int, int], int]  # region -> id of its wide kernel
    galaxy: dict[tuple[int, int], int]  # region -> id of its first galaxy template
    max_half: int  # the largest core half size


def _galaxy_shapes(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The CCD's galaxy templates, rows of (size, axis ratio, position angle, profile), and
    their half-light radii (pixels)."""
    # Faint galaxies have half-light radii of ~0.3-1" (1.5-5 pixels): discs (exponential),
    # spheroids (de Vaucouleurs) and compact Gaussians, so that their outer isophotes break
    # into deblended pieces as real ones do under a low DEBLEND_MINCONT.
    profile = rng.choice(3, _N_GALAXY_TEMPLATES, p=[0.25, 0.55, 0.2])
    half_light = np.clip(
        np.exp(rng.normal(_LOG_HALF_LIGHT_22, 0.6, _N_GALAXY_TEMPLATES)), 0.8, 14.0
    )
    galaxy_shapes = np.column_stack(
        [
            half_light / np.array([1.177, 1.678, 4.0])[profile],
            rng.uniform(0.3, 1.0, _N_GALAXY_TEMPLATES),
            rng.uniform(0.0, 180.0, _N_GALAXY_TEMPLATES),
            profile,
        ]
    )
    return galaxy_shapes, half_light


def _region_kernels(
    ctx: _Context, width: int, height: int, to_uv: Callable, galaxy_shapes: np.ndarray
) -> _KernelTable:
    """The kernels of each PSF region of a CCD, for the PSF and tracking at its centre."""
    plan = ctx.plan
    ry, rx = _regions(ctx.geometry)
    table = _KernelTable((ry, rx), [], [], {}, {}, {}, 0)
    kernels, halves = table.kernels, table.halves
    for j in range(ry):
        for i in range(rx):
            u, v = to_uv((i + 0.5) * width / rx, (j + 0.5) * height / ry)
            fwhm = _fwhm_at(ctx, u, v)
            path = _trail_path(ctx, u, v, fwhm)
            ellip, angle = _psf_shape_at(plan, u, v)
            ks = _build_kernels(fwhm, plan.beta, ellip, angle, path, galaxy_shapes, plan.psf_model)
            table.core[j, i] = (len(kernels), ks.oversample)
            kernels.extend(ks.core)
            halves.extend([ks.core_half] * len(ks.core))
            table.wide[j, i] = len(kernels)
            kernels.append(ks.wide)
            halves.append(ks.wide_half)
            table.galaxy[j, i] = len(kernels)
            kernels.extend(ks.galaxies)
            halves.extend(ks.galaxy_half)
            table.max_half = max(table.max_half, ks.core_half)
    return table


def _magnitude_range(
    plan: ExposurePlan, meta: _CcdMeta, table: _KernelTable
) -> tuple[float, float]:
    """The exposure's zero point (magnitude of 1 ADU) and the faintest magnitude worth drawing."""
    filt = FILTERS[plan.filter]
    sky_adu = filt.sky_rate * plan.exptime * plan.sky_factor
    sigma = math.sqrt(sky_adu / meta.gain + (meta.rdnoise / meta.gain) ** 2)
    zp = filt.zero_point + 2.5 * math.log10(plan.exptime)
    zp -= filt.extinction * (plan.airmass - 1.0) - 2.5 * math.log10(plan.transparency)
    # Sources whose peak would stay below ~0.08 sigma are invisible even in crowds: skip them.
    kernels = table.kernels
    peak = float(
        np.median([kernels[k0 + (os_ // 2) * (os_ + 1)].max() for k0, os_ in table.core.values()])
    )
    flux_min = 0.08 * sigma / peak
    m_faint = min(zp - 2.5 * math.log10(flux_min), 28.0)
    return zp, m_faint


def _draw_sources(
    ctx: _Context,
    rng: np.random.Generator,
    width: int,
    height: int,
    margin: int,
    m_faint: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Positions (pixels, ``margin`` beyond the edges so that stamps spill in) and magnitudes
    of the sources: a power law between _M_BRIGHT and ``m_faint``; None if there are none."""
    area = (width + 2 * margin) * (height + 2 * margin)
    n_exp = (
        _N_REF
        * area
        / _REF_CCD_AREA
        * (10 ** (_COUNT_SLOPE * (m_faint - _REF_DENSITY_MAG)) - 10 ** (_COUNT_SLOPE * (13 - 24)))
    )
    n = int(rng.poisson(max(n_exp, 0.0)))
    if n == 0:
        return None
    lo, hi = 10 ** (_COUNT_SLOPE * _M_BRIGHT), 10 ** (_COUNT_SLOPE * m_faint)
    mag = np.log10(lo + rng.random(n) * (hi - lo)) / _COUNT_SLOPE
    x = rng.uniform(-margin, width + margin, n)
    y = rng.uniform(-margin, height + margin, n)
    # Clustering: a fraction of the sources are close companions of another (pairs, groups,
    # clumpy galaxies), so that a realistic share of detections comes out blended.
    fwhm0 = ctx.plan.seeing / PIXEL_SCALE
    comp = np.nonzero(rng.random(n) < _COMPANION_FRACTION)[0]
    parent = rng.integers(0, n, comp.size)
    sep_px = fwhm0 * rng.uniform(1.0, 4.0, comp.size)
    theta = rng.uniform(0.0, 2.0 * math.pi, comp.size)
    x[comp] = x[parent] + sep_px * np.cos(theta)
    y[comp] = y[parent] + sep_px * np.sin(theta)
    mag[comp] = mag[parent] + rng.uniform(-0.5, 2.0, comp.size)
    return x, y, mag


def _choose_kernels(
    rng: np.random.Generator,
    table: _KernelTable,
    x: np.ndarray,
    y: np.ndarray,
    mag: np.ndarray,
    flux: np.ndarray,
    half_light: np.ndarray,
    meta: _CcdMeta,
    signal: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kernel id and centre pixel of each source, and which are bright stars: a star gets its
    region's core kernel at the nearest sub-pixel phase, or the wide kernel if it comes near
    saturation; a galaxy (more of them at faint magnitudes) gets a template of its size."""
    height, width = signal.shape
    ry, rx = table.regions
    n = x.size
    p_gal = np.clip(0.15 + 0.12 * (mag - 18.0), 0.1, 0.75)
    is_gal = rng.random(n) < p_gal
    gal_tpl = _galaxy_templates(rng, mag, half_light)
    reg_y = np.clip((y * ry / height).astype(np.int64), 0, ry - 1)
    reg_x = np.clip((x * rx / width).astype(np.int64), 0, rx - 1)
    core0 = np.empty(n, dtype=np.int64)
    osa = np.empty(n, dtype=np.int64)
    wide0 = np.empty(n, dtype=np.int64)
    gal0 = np.empty(n, dtype=np.int64)
    for (j, i), (k0, os_) in table.core.items():
        sel = (reg_y == j) & (reg_x == i)
        core0[sel], osa[sel] = k0, os_
        wide0[sel] = table.wide[j, i]
        gal0[sel] = table.galaxy[j, i]
    # Nearest sub-pixel phase: centre pixel ix, phase q in [-os/2, os/2).
    qx_all = np.rint(x * osa).astype(np.int64)
    qy_all = np.rint(y * osa).astype(np.int64)
    ix = np.floor_divide(qx_all + osa // 2, osa)
    iy = np.floor_divide(qy_all + osa // 2, osa)
    qx = qx_all - ix * osa + osa // 2
    qy = qy_all - iy * osa + osa // 2
    kid = core0 + qy * osa + qx
    kernels = table.kernels
    peak_core = flux * np.array([kernels[k].max() for k in range(len(kernels))])[kid]
    bright = (peak_core > 0.3 * meta.saturate) & ~is_gal
    kid = np.where(bright, wide0, kid)
    kid = np.where(is_gal, gal0 + gal_tpl, kid)
    ix = np.where(is_gal | bright, np.rint(x).astype(np.int64), ix)
    iy = np.where(is_gal | bright, np.rint(y).astype(np.int64), iy)
    return kid, ix, iy, bright


def _add_stamps(
    signal: np.ndarray,
    table: _KernelTable,
    kid: np.ndarray,
    ix: np.ndarray,
    iy: np.ndarray,
    flux: np.ndarray,
) -> np.ndarray:
    """Add each source's kernel, times its flux, centred on its pixel and cut at the CCD's
    edges; returns which sources touched the CCD."""
    height, width = signal.shape
    kernels = table.kernels
    half = np.asarray(table.halves)[kid]
    ya, yb = np.maximum(iy - half, 0), np.minimum(iy + half + 1, height)
    xa, xb = np.maximum(ix - half, 0), np.minimum(ix + half + 1, width)
    keep = (ya < yb) & (xa < xb)
    kya, kyb = ya - (iy - half), yb - (iy - half)
    kxa, kxb = xa - (ix - half), xb - (ix - half)
    idx = np.nonzero(keep)[0]
    cols = [a[idx].tolist() for a in (kid, ya, yb, xa, xb, kya, kyb, kxa, kxb)]
    fl = flux[idx].astype(np.float32).tolist()
    for k, a, b, c, d, ka, kb, kc, kd, f in zip(*cols, fl, strict=True):
        signal[a:b, c:d] += f * kernels[k][ka:kb, kc:kd]
    return keep


def _add_bleed_trails(
    signal: np.ndarray,
    table: _KernelTable,
    kid: np.ndarray,
    ix: np.ndarray,
    iy: np.ndarray,
    flux: np.ndarray,
    stars: np.ndarray,
    saturate: float,
) -> None:
    """Set to twice ``saturate`` the column through each of the ``stars`` that saturates, over
    its saturated rows and a spill that grows with the charge above saturation."""
    height, width = signal.shape
    halves = table.halves
    for s in np.nonzero(stars)[0].tolist():
        k = table.kernels[kid[s]]
        excess = float(np.clip(flux[s] * k - saturate, 0.0, None).sum())
        if excess <= 0 or not (0 <= ix[s] < width):
            continue
        h = halves[kid[s]]
        col = flux[s] * k[:, h]
        rows = np.nonzero(col > saturate)[0]
        if rows.size == 0:
            rows = np.array([h])
        spill = int(min(excess / saturate / 2.0, 600))
        top = max(int(iy[s]) - h + int(rows.min()) - spill, 0)
        bottom = min(int(iy[s]) - h + int(rows.max()) + spill + 1, height)
        signal[top:bottom, int(ix[s])] = 2.0 * saturate


def _add_bad_columns(rng: np.random.Generator, signal: np.ndarray, exptime: float) -> None:
    height, width = signal.shape
    for _ in range(int(rng.poisson(3.0 * width / 2048.0))):
        x = int(rng.integers(0, width))
        y0 = int(rng.integers(0, height)) if rng.random() < 0.5 else 0
        if rng.random() < 0.5:
            signal[y0:, x] += float(rng.uniform(0.05, 2.0)) * exptime + 20.0  # hot (dark current)
        else:
            signal[y0:, x] *= float(rng.uniform(0.0, 0.3))  # dead / low-response


def _add_cosmic_rays(
    rng: np.random.Generator, signal: np.ndarray, plan: ExposurePlan, gain: float
) -> None:
    """Charged particles crossing the CCD, as a thick silicon detector records them.

    Two kinds of event, at a rate per cm^2 drawn per exposure (1-5 /cm^2/min: sea-level muons
    are ~1, more at 4200 m, plus the dewar's own radioactivity):

    - muons (three events in four): straight tracks whose projected length is the depletion
      depth times tan(incidence); the incidence through a flat detector follows cos^3 sin, so
      most are 1-3 px spots and a few cross tens of pixels; ~80 electrons per micron of path
      (a minimum-ionising particle, Landau-like spread);
    - electrons (one in four; Compton and beta electrons): curled "worms" of 3-30 px that
      deposit several times more charge per pixel.

    The charge spreads by diffusion (0.3-0.7 px, drawn per exposure) before it is collected,
    so a track is a few pixels wide: under a 5-sigma, MINAREA-5 extraction without a filter,
    cosmic rays are small, sharp and often elongated detections, present in every class and
    untouched by clouds or tracking.
    """
    height, width = signal.shape
    exp_rng = np.random.default_rng([plan.seed, plan.expnum, 0xC05])
    rate = float(np.exp(exp_rng.uniform(np.log(1.0), np.log(5.0))))  # per cm^2 per minute
    depth_um = float(exp_rng.uniform(15.0, 40.0))
    diffusion = float(exp_rng.uniform(0.3, 0.7))
    n = int(rng.poisson(rate / 60.0 * plan.exptime * height * width * _PIXEL_CM2))
    if n == 0:
        return
    x0 = rng.uniform(0.0, width, n)
    y0 = rng.uniform(0.0, height, n)
    muon = rng.random(n) < 0.75
    cos_inc = np.clip(rng.random(n) ** 0.25, 0.05, 1.0)
    tan_inc = np.sqrt(1.0 - cos_inc**2) / cos_inc
    length = np.where(
        muon, depth_um * tan_inc / _PIXEL_UM, np.exp(rng.uniform(np.log(3), np.log(30), n))
    )
    path_um = np.where(muon, depth_um / cos_inc, length * _PIXEL_UM)
    per_um = np.where(muon, 80.0, 250.0) * np.exp(rng.normal(0.0, 0.35, n))
    charge = per_um * path_um / gain  # ADU
    xs, ys, qs = [], [], []
    for i in range(n):
        steps = max(int(length[i] * 4), 1)
        if muon[i]:
            angle = np.full(steps, rng.uniform(0.0, 2 * np.pi))
        else:
            angle = rng.uniform(0.0, 2 * np.pi) + np.cumsum(rng.normal(0.0, 0.15, steps))
        xs.append(x0[i] + np.cumsum(0.25 * np.cos(angle)))
        ys.append(y0[i] + np.cumsum(0.25 * np.sin(angle)))
        qs.append(np.full(steps, charge[i] / steps))
    # Diffusion: each path point's charge as 8 packets scattered by the diffusion length.
    x = np.repeat(np.concatenate(xs), 8) + rng.normal(0.0, diffusion, 8 * sum(map(len, xs)))
    y = np.repeat(np.concatenate(ys), 8) + rng.normal(0.0, diffusion, x.size)
    q = np.repeat(np.concatenate(qs) / 8.0, 8)
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
    np.add.at(signal, (iy[inside], ix[inside]), q[inside].astype(signal.dtype))
