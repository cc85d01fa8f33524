"""One CCD of the GalSim renderer: sources, tracking, sky and detector (issue 20).

How a CCD is drawn (pixel scale 0.187"/px, electrons until the last step):

1. Sources on a canvas larger than the CCD by a margin (light from outside falls in): stars with
   ``dN/dm ~ 10**(0.15 m)`` (a per-exposure stellar density), galaxies with
   ``dN/dm ~ 10**(0.33 m)`` that outnumber stars beyond r ~ 21, sizes shrinking with magnitude.
   The PSF of each of a few zones per CCD is drawn once, pixel-convolved, into a GalSim
   ``InterpolatedImage`` (an effective PSF); stars are drawn from it with ``method='no_pixel'``
   and galaxies as ``Convolve(galaxy, effective PSF)``; bright stars use the analytic PSF on a
   large stamp (wings, optics).
2. Tracking: the canvas is convolved with the exposure's tracking path (the time the telescope
   spent at each offset, rasterised into a kernel), which is the same as convolving every
   source's PSF with the path. ``BT``: a straight 2-6" line, one direction for the whole mosaic;
   ``RBT``: 10-40" wobbling drifts, random walks, field-rotation arcs (longer away from the
   rotation centre) or jumps that give double images.
3. Sky: per-filter dark sky times a sky factor, vignetting, a gentle gradient; for ``BGP`` one or
   more of a strong gradient, a scattered-light arc, patchy clouds (extinction of the sources
   and moonlit patches of sky) or a very high sky, sometimes on part of the focal plane only.
4. Detector: Poisson noise, bleed trails along columns from saturated stars, cosmic rays (tracks
   and single hits), sometimes a bad column, read noise, a bias with two amplifier halves, and
   flat-topped saturation at ``SATURATE``.

Every random step is seeded from ``(seed, exposure, CCD, stream)``: the same spec gives the same
pixels. What the spec holds is drawn in :mod:`skygrade.streamer.galsim_spec`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import galsim
import numpy as np

from skygrade.streamer.galsim_spec import (
    FIELD_HALF_ARCSEC,
    FILTERS,
    PIXEL_SCALE,
    ExposureSpec,
    Mosaic,
    sky_field,
    transmission,
)

__all__ = ["render_ccd", "trail_path"]

_GSP = galsim.GSParams(folding_threshold=1e-2, maxk_threshold=3e-3, maximum_fft_size=8192)
_MAX_MAG = 25.6
_FAINT_PEAK_SIGMA = 4.0  # galaxies below this peak S/N are drawn as stretched PSFs
_BRIGHT_PEAK_E = 3.0e4  # stars brighter than this peak are drawn analytically on big stamps


# --------------------------------------------------------------------------------------------
# Tracking
# --------------------------------------------------------------------------------------------
def trail_path(spec: ExposureSpec, u: float, v: float, n: int = 800) -> np.ndarray | None:
    """Offsets (arcsec, shape (n, 2), equal time steps) of the pointing during the exposure as
    seen at focal-plane position (u, v), or ``None`` for good tracking."""
    if spec.trail_mode == "none" or spec.trail_length <= 0:
        return None
    t = np.linspace(0.0, 1.0, n)
    a = math.radians(spec.trail_angle)
    along = np.array([math.cos(a), math.sin(a)])
    perp = np.array([-math.sin(a), math.cos(a)])
    p, length = spec.trail_params, spec.trail_length
    if spec.trail_mode == "line":
        s = t + p.get("speed_wobble", 0.0) * np.sin(2 * np.pi * t) / (2 * np.pi)
        path = np.outer(s - 0.5, along) * length
    elif spec.trail_mode == "wobble":
        wob = p["amplitude"] * length * np.sin(2 * np.pi * p["periods"] * t + p["phase"])
        path = np.outer(t - 0.5, along) * length + np.outer(wob, perp)
    elif spec.trail_mode == "walk":
        rng = np.random.default_rng([p["walk_seed"], 3])
        steps = rng.normal(size=(n, 2))
        k = np.exp(-0.5 * (np.arange(-60, 61) / 20.0) ** 2)
        steps = np.stack([np.convolve(steps[:, i], k, "same") for i in range(2)], axis=1)
        steps += 0.6 * np.abs(steps).mean() * along  # a drift keeps the walk from folding up
        path = np.cumsum(steps, axis=0)
        span = np.ptp(path, axis=0)
        path = (path - path.mean(axis=0)) * (length / max(float(np.hypot(*span)), 1e-9))
    elif spec.trail_mode == "arc":
        # field rotation about a centre near the field centre, plus a drift of >= 10"
        drift = np.outer(t - 0.5, along) * max(10.0, 0.45 * length)
        cu = (u - p["rot_centre_u"]) * FIELD_HALF_ARCSEC
        cv = (v - p["rot_centre_v"]) * FIELD_HALF_ARCSEC
        omega = length / FIELD_HALF_ARCSEC  # radians: a ``length`` arc at the field edge
        ang = omega * (t - 0.5)
        rot = np.stack(
            [cu * np.cos(ang) - cv * np.sin(ang) - cu, cu * np.sin(ang) + cv * np.cos(ang) - cv],
            axis=1,
        )
        path = drift + rot
    elif spec.trail_mode == "jump":
        ja = math.radians(p["jump_angle"])
        jump = np.array([math.cos(ja), math.sin(ja)]) * p["jump"]
        path = np.outer(t - 0.5, along) * (length - p["jump"]) * 0.8
        after = t >= p["jump_at"]
        path[after] += jump
    else:
        raise ValueError(f"unknown trail mode {spec.trail_mode!r}")
    return path - path.mean(axis=0)


def _path_kernel(path_arcsec: np.ndarray) -> np.ndarray:
    """The path rasterised (bilinear, by dwell time) into a normalised odd-sized kernel."""
    pix = path_arcsec / PIXEL_SCALE
    half = int(np.ceil(np.abs(pix).max())) + 2
    size = 2 * half + 1
    k = np.zeros((size, size), dtype=np.float64)
    x, y = pix[:, 0] + half, pix[:, 1] + half
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    for dx, dy, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        np.add.at(k, (y0 + dy, x0 + dx), w)
    return k / k.sum()


def _fast_len(n: int) -> int:
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _convolve_same(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``img`` convolved with an odd-sized, centred ``kernel`` (FFT, same shape as ``img``)."""
    kh, kw = kernel.shape
    sh = (_fast_len(img.shape[0] + kh - 1), _fast_len(img.shape[1] + kw - 1))
    out = np.fft.irfft2(np.fft.rfft2(img, sh) * np.fft.rfft2(kernel, sh), sh)
    return out[kh // 2 : kh // 2 + img.shape[0], kw // 2 : kw // 2 + img.shape[1]]


# --------------------------------------------------------------------------------------------
# PSF
# --------------------------------------------------------------------------------------------
def _atmos(spec: ExposureSpec, u: float, v: float) -> galsim.GSObject:
    r2 = (u * u + v * v) / 2.0
    fwhm = spec.fwhm * (1.0 + spec.fwhm_quad * r2 + spec.fwhm_tilt[0] * u + spec.fwhm_tilt[1] * v)
    if spec.optics:
        fwhm *= 0.95  # the optics add a little in quadrature
    if spec.psf_family == "moffat":
        prof = galsim.Moffat(beta=spec.beta, fwhm=fwhm, gsparams=_GSP)
    else:
        prof = galsim.Kolmogorov(fwhm=fwhm, gsparams=_GSP)
    g1 = spec.shear[0] + spec.shear_pattern * (u * u - v * v) / 2.0
    g2 = spec.shear[1] + spec.shear_pattern * u * v
    return prof.shear(g1=g1, g2=g2)


def _optics(spec: ExposureSpec, u: float, v: float) -> galsim.GSObject | None:
    o = spec.optics
    if not o:
        return None
    lam = FILTERS[spec.filter][0]
    return galsim.OpticalPSF(
        lam=lam,
        diam=3.58,
        obscuration=0.43,
        nstruts=4,
        strut_angle=45 * galsim.degrees,
        defocus=o["defocus"] + o["defocus_r2"] * (u * u + v * v) / 2.0,
        astig1=o["astig"] + o["astig_u"] * u,
        astig2=o["astig_u"] * v,
        coma1=o["coma"] * u,
        coma2=o["coma"] * v,
        gsparams=_GSP,
    )


@dataclass
class _ZonePsf:
    profile: galsim.GSObject  # analytic, not pixel-convolved
    epsf: galsim.InterpolatedImage  # pixel-convolved, draw with method="no_pixel"
    peak: float  # fraction of the flux in the brightest pixel (centred)
    radial: np.ndarray  # max fraction per pixel at radius >= r (r in pixels)


def _zone_psf(spec: ExposureSpec, u: float, v: float) -> _ZonePsf:
    atm = _atmos(spec, u, v)
    opt = _optics(spec, u, v)
    prof = atm if opt is None else galsim.Convolve(atm, opt, gsparams=_GSP)
    fwhm_px = spec.fwhm / PIXEL_SCALE
    n = int(min(max(64, 12 * fwhm_px), 200)) // 2 * 2 + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", galsim.GalSimWarning)
        over = galsim.Convolve(prof, galsim.Pixel(PIXEL_SCALE), gsparams=_GSP).drawImage(
            nx=2 * n, ny=2 * n, scale=PIXEL_SCALE / 2, method="no_pixel"
        )
    epsf = galsim.InterpolatedImage(over, gsparams=_GSP, calculate_stepk=False)
    native = epsf.drawImage(nx=n, ny=n, scale=PIXEL_SCALE, method="no_pixel").array
    native = native / native.sum()
    c = n // 2
    yy, xx = np.indices(native.shape)
    r = np.hypot(xx - c, yy - c).astype(int).ravel()
    prof_max = np.zeros(r.max() + 1)
    np.maximum.at(prof_max, r, native.ravel())
    radial = np.maximum.accumulate(prof_max[::-1])[::-1]
    return _ZonePsf(prof, epsf, float(native.max()), radial)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
def _sample_mags(rng: np.random.Generator, n_per_mag: float, slope: float, lo: float, hi: float):
    """Magnitudes with ``dN/dm = n_per_mag * 10**(slope (m - hi))`` between lo and hi."""
    b = slope * math.log(10.0)
    total = n_per_mag / b * (1.0 - math.exp(-b * (hi - lo)))
    n = int(rng.poisson(total))
    x = rng.random(n)
    return hi + np.log(x + (1 - x) * math.exp(-b * (hi - lo))) / b


@dataclass(frozen=True)
class _GalaxyShape:
    hlr: float  # arcsec
    e: float  # distortion (a^2 - b^2) / (a^2 + b^2)
    beta: float  # position angle, radians
    kind: int
    n: float
    bulge_fraction: float

    @property
    def extent(self) -> float:
        """Radius in arcsec holding nearly all of the light (for the stamp)."""
        return (3.0, 5.0, 4.0, 3.5)[self.kind] * self.hlr


def _galaxy_shape(rng: np.random.Generator, mag: float) -> _GalaxyShape:
    """Random size (shrinking with magnitude), ellipticity and profile of a galaxy."""
    hlr = float(np.clip(0.35 * 10 ** (-0.1 * (mag - 23.0)) * np.exp(rng.normal(0, 0.45)), 0.08, 6))
    u = rng.random()
    kind = 0 if u < 0.45 else 1 if u < 0.65 else 2 if u < 0.85 else 3
    n = float(rng.choice([0.7, 1.5, 2.5, 3.5]))
    bf = float(rng.uniform(0.1, 0.6))
    e = float(min(abs(rng.normal(0, 0.3)), 0.75))
    return _GalaxyShape(hlr, e, float(rng.uniform(0, np.pi)), kind, n, bf)


def _galaxy(shape: _GalaxyShape) -> galsim.GSObject:
    """The GalSim profile (unit flux): Exponential, DeVaucouleurs, Sersic or bulge + disk."""
    hlr = shape.hlr
    if shape.kind == 0:
        gal = galsim.Exponential(half_light_radius=hlr, gsparams=_GSP)
    elif shape.kind == 1:
        gal = galsim.DeVaucouleurs(half_light_radius=hlr, trunc=8 * hlr, gsparams=_GSP)
    elif shape.kind == 2:
        gal = galsim.Sersic(n=shape.n, half_light_radius=hlr, trunc=6 * hlr, gsparams=_GSP)
    else:
        bf = shape.bulge_fraction
        bulge = galsim.DeVaucouleurs(half_light_radius=0.4 * hlr, trunc=8 * hlr, gsparams=_GSP)
        disk = galsim.Exponential(half_light_radius=hlr, gsparams=_GSP)
        gal = galsim.Add([bf * bulge, (1 - bf) * disk], gsparams=_GSP)
    b2 = 2 * shape.beta
    return gal.shear(e1=shape.e * math.cos(b2), e2=shape.e * math.sin(b2))


def _faint_galaxy(shape: _GalaxyShape, zpsf: _ZonePsf, psf_sigma: float) -> galsim.GSObject:
    """A faint galaxy as the effective PSF stretched to the second moments of PSF + galaxy.

    Below a few sigma of the sky the profile shape of a galaxy is invisible, only its size and
    elongation are; an exact ``Convolve`` costs ~10x more.
    """
    sig_g = shape.hlr / 1.1774
    a2 = math.sqrt((1 + shape.e) / (1 - shape.e))
    l1 = math.sqrt(1 + sig_g**2 * a2 / psf_sigma**2)
    l2 = math.sqrt(1 + sig_g**2 / a2 / psf_sigma**2)
    c, s = math.cos(shape.beta), math.sin(shape.beta)
    return zpsf.epsf.transform(
        l1 * c * c + l2 * s * s, (l1 - l2) * c * s, (l1 - l2) * c * s, l1 * s * s + l2 * c * c
    )


def _draw(obj, canvas: galsim.ImageF, x: float, y: float, half: int, method: str) -> None:
    ix, iy = int(round(x)), int(round(y))
    b = galsim.BoundsI(ix - half, ix + half, iy - half, iy + half) & canvas.bounds
    if not b.isDefined() or b.area() == 0:
        return
    obj.drawImage(image=canvas[b], add_to_image=True, method=method, center=galsim.PositionD(x, y))


# --------------------------------------------------------------------------------------------
# One CCD
# --------------------------------------------------------------------------------------------
def _ccd_rng(spec: ExposureSpec, ccd: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, spec.expnum, ccd, stream])


def render_ccd(spec: ExposureSpec, mosaic: Mosaic, ccd: int) -> tuple[np.ndarray, dict]:
    """Render one CCD: uint16 ADU (rows, columns) and its header values."""
    rng_src = _ccd_rng(spec, ccd, 1)
    rng_noise = _ccd_rng(spec, ccd, 2)
    rng_det = _ccd_rng(spec, ccd, 3)
    w, h = mosaic.width, mosaic.height
    amps = _electronics(spec, rng_det)
    cu, cv = mosaic.ccd_centre(ccd)
    _, zp, sky_mag, kext = FILTERS[spec.filter]
    mag_off = kext * (spec.airmass - 1.0)
    dark_e = spec.exptime * 10 ** (-0.4 * (sky_mag - 5 * math.log10(PIXEL_SCALE) - zp))

    # tracking kernel and canvas margin
    path = trail_path(spec, cu, cv)
    kernel = None if path is None else _path_kernel(path)
    khalf = 0 if kernel is None else kernel.shape[0] // 2
    fwhm_px = spec.fwhm / PIXEL_SCALE
    margin = khalf + int(4 * fwhm_px) + 16
    canvas = galsim.ImageF(
        w + 2 * margin, h + 2 * margin, xmin=-margin, ymin=-margin, scale=PIXEL_SCALE
    )
    zones = _psf_zones(spec, mosaic, ccd)

    # depth: faintest magnitude worth drawing (~0.5 sigma peak)
    sky_c = float(sky_field(spec, np.array([cu]), np.array([cv]), dark_e)[0])
    sigma = math.sqrt(sky_c + amps.rdnoise**2)
    peak_frac = zones.psfs[0].peak
    f_min = 0.3 * sigma / peak_frac
    mag_lim = min(_MAX_MAG, zp + 2.5 * math.log10(spec.exptime / f_min) - mag_off)
    stars, gals = _source_mags(spec, rng_src, mosaic, margin, mag_lim)

    # sources on the canvas: stars, then galaxies (each drawn with its zone's PSF)
    sx, sy, st = _place(rng_src, spec, mosaic, ccd, margin, len(stars))
    star_flux = spec.exptime * 10 ** (-0.4 * (stars + mag_off - zp)) * st
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", galsim.GalSimWarning)
        saturated = _draw_stars(canvas, zones, sx, sy, star_flux, 0.3 * sigma, amps.full_well)
        gx, gy, gt = _place(rng_src, spec, mosaic, ccd, margin, len(gals))
        gal_flux = spec.exptime * 10 ** (-0.4 * (gals + mag_off - zp)) * gt
        _draw_galaxies(rng_src, spec, canvas, zones, gals, gx, gy, gal_flux, sigma)

    # tracking: the whole canvas convolved with the path, then cut to the CCD
    signal = canvas.array.astype(np.float64)
    if kernel is not None:
        signal = _convolve_same(signal, kernel)
    signal = signal[margin : margin + h, margin : margin + w]
    np.clip(signal, 0.0, None, out=signal)

    sky = _sky_image(spec, mosaic, ccd, dark_e)
    dead = ccd == spec.dead_ccd
    adu = _read_out(spec, ccd, rng_noise, rng_det, signal + sky, saturated, amps, bool(dead))
    meta = {
        "gain": amps.gain,
        "rdnoise": amps.rdnoise,
        "saturate": spec.saturate,
        "bias": round(amps.bias, 1),
    }
    meta.update(n_star=len(stars), n_gal=len(gals), mag_lim=round(mag_lim, 2), dead=bool(dead))
    return np.round(adu).astype(np.uint16), meta


@dataclass(frozen=True)
class _Electronics:
    """A CCD's gain (e-/ADU), read noise (e-), bias (ADU), right-amplifier offset (ADU) and the
    charge (e-) at which a pixel reads ``SATURATE``."""

    gain: float
    rdnoise: float
    bias: float
    amp_offset: float
    full_well: float


def _electronics(spec: ExposureSpec, rng_det: np.random.Generator) -> _Electronics:
    gain = round(float(rng_det.uniform(1.45, 1.85)), 3)
    rdnoise = round(float(rng_det.uniform(3.5, 5.5)), 2)
    bias = spec.bias + float(rng_det.normal(0, 30))
    amp_offset = float(rng_det.normal(0, 6)) if rng_det.random() < 0.5 else 0.0
    full_well = (spec.saturate - bias - abs(amp_offset) - 10) * gain
    return _Electronics(gain, rdnoise, bias, amp_offset, full_well)


@dataclass
class _Zones:
    """The PSF zones of a CCD, along its long axis: zone ``k`` spans ``edges[k]..edges[k+1]``."""

    edges: np.ndarray
    psfs: list[_ZonePsf]

    def at(self, y: float) -> _ZonePsf:
        """The zone of CCD row ``y``."""
        return self.psfs[int(np.clip(np.searchsorted(self.edges, y) - 1, 0, len(self.psfs) - 1))]


def _psf_zones(spec: ExposureSpec, mosaic: Mosaic, ccd: int) -> _Zones:
    w, h = mosaic.width, mosaic.height
    n_zone = max(1, round(h / 1150))
    zone_edges = np.linspace(0, h, n_zone + 1)
    zones = []
    for z in range(n_zone):
        zu, zv = mosaic.to_uv(ccd, w / 2.0, (zone_edges[z] + zone_edges[z + 1]) / 2.0)
        zones.append(_zone_psf(spec, float(zu), float(zv)))
    return _Zones(zone_edges, zones)


def _source_mags(
    spec: ExposureSpec, rng_src: np.random.Generator, mosaic: Mosaic, margin: int, mag_lim: float
) -> tuple[np.ndarray, np.ndarray]:
    """Magnitudes of the stars and galaxies on the canvas (the CCD and its margin), brighter
    than ``mag_lim``."""
    w, h = mosaic.width, mosaic.height
    area = mosaic.width * mosaic.height * (PIXEL_SCALE / 3600.0) ** 2
    area *= (w + 2 * margin) * (h + 2 * margin) / (w * h)
    stars = _sample_mags(rng_src, spec.star_density * 400 * area * 10 ** (0.15 * 4), 0.15, 9.0, 24)
    stars = stars[stars < mag_lim]
    gals = _sample_mags(rng_src, spec.galaxy_density * 3.5e4 * area, 0.33, 15.0, 24.0)
    if mag_lim > 24.0:  # the faint end, with the same slope, up to the depth
        n_faint = spec.galaxy_density * 3.5e4 * area * 10 ** (0.33 * (mag_lim - 24))
        extra = _sample_mags(rng_src, n_faint, 0.33, 24.0, mag_lim)
        gals = np.concatenate([gals, extra])
    gals = gals[gals < mag_lim]
    return stars, gals


def _place(
    rng_src: np.random.Generator,
    spec: ExposureSpec,
    mosaic: Mosaic,
    ccd: int,
    margin: int,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (CCD pixels, over the canvas) of ``n`` sources and the transmission at each."""
    x = rng_src.uniform(-margin, mosaic.width + margin - 1, n)
    y = rng_src.uniform(-margin, mosaic.height + margin - 1, n)
    u, v = mosaic.to_uv(ccd, x, y)
    return x, y, transmission(spec, u, v)


def _draw_stars(
    canvas: galsim.ImageF,
    zones: _Zones,
    sx: np.ndarray,
    sy: np.ndarray,
    star_flux: np.ndarray,
    thr: float,
    full_well: float,
) -> list[tuple[float, float]]:
    """Draw the stars, out to where their profile falls below ``thr`` (e-); the bright ones from
    the analytic PSF on large stamps. Returns the positions of those that saturate."""
    saturated: list[tuple[float, float]] = []
    for x, y, f in zip(sx, sy, star_flux, strict=True):
        zpsf = zones.at(y)
        radial = zpsf.radial * f
        half = int(np.searchsorted(-radial, -thr)) + 2
        if f * zpsf.peak > _BRIGHT_PEAK_E:
            half = min(max(half, 32), 300)
            _draw(zpsf.profile.withFlux(f), canvas, x, y, half, "auto")
            if f * zpsf.peak > full_well:
                saturated.append((x, y))
        else:
            _draw(zpsf.epsf.withFlux(f), canvas, x, y, min(half, 60), "no_pixel")
    return saturated


def _draw_galaxies(
    rng_src: np.random.Generator,
    spec: ExposureSpec,
    canvas: galsim.ImageF,
    zones: _Zones,
    gals: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
    gal_flux: np.ndarray,
    sigma: float,
) -> None:
    """Draw the galaxies, each convolved with its zone's PSF; faint or small ones, which no
    measurement resolves, as stretched PSFs."""
    psf_sigma = spec.fwhm / 2.3548
    for m, x, y, f in zip(gals, gx, gy, gal_flux, strict=True):
        shape = _galaxy_shape(rng_src, float(m))
        zpsf = zones.at(y)
        half = int(min((shape.extent + 2.0 * spec.fwhm) / PIXEL_SCALE, 120)) + 3
        snr_peak = f * zpsf.peak / sigma
        if snr_peak < _FAINT_PEAK_SIGMA or (shape.hlr < 0.3 * spec.fwhm and snr_peak < 50):
            _draw(
                _faint_galaxy(shape, zpsf, psf_sigma).withFlux(f),
                canvas,
                x,
                y,
                half,
                "no_pixel",
            )
        else:
            obj = galsim.Convolve(_galaxy(shape), zpsf.epsf, gsparams=_GSP).withFlux(f)
            _draw(obj, canvas, x, y, half, "no_pixel")


def _sky_image(spec: ExposureSpec, mosaic: Mosaic, ccd: int, dark_e: float) -> np.ndarray:
    """The sky (e-) of every pixel: the spec's field on a coarse grid, bilinearly upsampled."""
    w, h = mosaic.width, mosaic.height
    step = 32
    gy_c = np.arange(0, h + step, step, dtype=float)
    gx_c = np.arange(0, w + step, step, dtype=float)
    uu, vv = mosaic.to_uv(ccd, gx_c[None, :], gy_c[:, None])
    coarse = sky_field(spec, uu + 0 * vv, vv + 0 * uu, dark_e)
    rows = np.stack([np.interp(np.arange(w), gx_c, coarse[i]) for i in range(len(gy_c))])
    i0 = np.arange(h) // step
    frac = (np.arange(h) % step / step)[:, None]
    return rows[i0] * (1.0 - frac) + rows[i0 + 1] * frac


def _read_out(
    spec: ExposureSpec,
    ccd: int,
    rng_noise: np.random.Generator,
    rng_det: np.random.Generator,
    expected: np.ndarray,
    saturated: list[tuple[float, float]],
    amps: _Electronics,
    dead: bool,
) -> np.ndarray:
    """ADU (float, clipped to ``SATURATE``) read from ``expected`` electrons: Poisson noise,
    bleed trails, cosmic rays, a bad column, a dead CCD, read noise, gain, bias, amplifiers."""
    h, w = expected.shape
    electrons = rng_noise.poisson(np.clip(expected, 0, 1e9)).astype(np.float64)
    _bleed(electrons, saturated, amps.full_well, margin=0)
    _cosmic_rays(rng_det, electrons, spec.exptime)
    if ccd in spec.bad_column_ccds:
        col = int(rng_det.integers(0, w))
        start = int(rng_det.integers(0, h // 2)) if rng_det.random() < 0.5 else 0
        if rng_det.random() < 0.5:
            electrons[start:, col] *= 0.05
        else:
            electrons[start:, col] += rng_det.uniform(300, 3000)
    if dead:
        electrons[:] = rng_noise.poisson(5.0, electrons.shape)
    electrons += rng_noise.normal(0.0, amps.rdnoise, electrons.shape)
    adu = electrons / amps.gain + amps.bias
    adu[:, w // 2 :] += amps.amp_offset
    np.clip(adu, 0.0, spec.saturate, out=adu)
    return adu


def _bleed(img: np.ndarray, stars: Iterable[tuple[float, float]], full_well: float, margin: int):
    """Flat-topped saturation with charge spilling up and down the columns of saturated stars."""
    h, w = img.shape
    for x, y in stars:
        ix, iy = int(round(x)) - margin, int(round(y)) - margin
        x0, x1 = max(ix - 40, 0), min(ix + 41, w)
        y0, y1 = max(iy - 300, 0), min(iy + 301, h)
        if x0 >= x1 or y0 >= y1:
            continue
        block = img[y0:y1, x0:x1]
        for c in range(block.shape[1]):
            col = block[:, c]
            over = np.nonzero(col > full_well)[0]
            if over.size == 0:
                continue
            excess = float((col[over] - full_well).sum())
            extra = int(excess / full_well / 2) + 1
            lo, hi = max(int(over[0]) - extra, 0), min(int(over[-1]) + extra + 1, len(col))
            col[lo:hi] = np.maximum(col[lo:hi], full_well * 1.02)
    # whatever is still above the full well (stars near the edges) is flat-topped too
    np.minimum(img, full_well * 1.05, out=img)


def _cosmic_rays(rng: np.random.Generator, img: np.ndarray, exptime: float) -> None:
    """Cosmic rays: ~2.5 /cm^2/min on 13.5 um pixels; tracks of 1-20 px plus single hits."""
    h, w = img.shape
    area_cm2 = h * w * (13.5e-4) ** 2
    n = int(rng.poisson(2.5 * area_cm2 * exptime / 60.0))
    if n == 0:
        return
    x0, y0 = rng.uniform(0, w, n), rng.uniform(0, h, n)
    length = np.where(rng.random(n) < 0.4, 0.0, rng.exponential(5.0, n))
    ang = rng.uniform(0, np.pi, n)
    charge = np.exp(rng.normal(np.log(2500.0), 0.7, n))
    for i in range(n):
        m = max(int(length[i]) + 1, 1)
        t = np.linspace(0, length[i], m)
        xs = np.clip((x0[i] + t * np.cos(ang[i])).astype(int), 0, w - 1)
        ys = np.clip((y0[i] + t * np.sin(ang[i])).astype(int), 0, h - 1)
        img[ys, xs] += charge[i] / m * rng.uniform(0.5, 1.5, m)
