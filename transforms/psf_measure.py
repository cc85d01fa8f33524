"""What observers read of a CCD: seeing in arcsec, PSF shape, sky brightness, source counts.

Pure numpy: no Beam, no sep, no torch (imported from ``ops`` only: the config defaults, the
log escaping; the star fit from :mod:`skygrade.transforms.moffat_fit`). The per-CCD chain calls
:func:`with_physics` (:func:`ccd_physics`) right after extraction, in the Beam stage
(:mod:`skygrade.transforms.stages`) and in the CCD pool (:mod:`skygrade.streamer.ccd_pool`);
:func:`exposure_physics` combines the CCDs.

Stars (:func:`select_stars`)
----------------------------
From the CCD's feature table, a source is used as a PSF star when it is

- clean: no FLAGS bit but 1 and 2 (not saturated, truncated or corrupted; a deblended
  source is kept when it passes the isolation test below);
- unsaturated with margin: peak + background below half of ``SATURATE`` (the linear range;
  SExtractor's saturated flag alone lets through stars a hair below saturation);
- bright: peak above :data:`MIN_PEAK_SNR` times the pixel noise (pixel mode);
- not sharper than a PSF: the peak pixel holds at most 30% of the flux (cosmic rays and hot
  pixels hold more; a 0.37" PSF, 2 px FWHM, holds ~25%);
- point-like: its half-light radius ``FLUX_RADIUS`` between 0.8 and 1.4 times the stellar
  locus (the narrowest dense group of the candidates' radii, :func:`_locus`: galaxies lie
  above it, cosmic rays below, both spread out), then, after the fits, in the narrowest group
  of FWHMs (within 15%; every source is at least as broad as the PSF). A size, not a shape: trailed
  stars still qualify;
- isolated: no other detection brighter than 2% of its flux within 1.5 stamp half-sizes,
  and its stamp inside the CCD.

The :data:`MAX_STARS` brightest of them are measured.

Seeing (pixel mode, ``method = "moffat_fit"``)
----------------------------------------------
Each star's stamp (its border median subtracted) is fitted by least squares with an
elliptical Moffat profile ``I = A (1 + dx' Q dx)^-beta + c`` integrated over the pixel
(sub-sampled on an ``os x os`` grid, os 3 to 1 as the PSF grows: at 0.5" the FWHM is 2.7 px
and point sampling reads it ~3% small), with free centre, amplitude, shape matrix ``Q``,
``beta`` and local background. The FWHM along an axis
is ``2 sqrt((2^(1/beta) - 1) / lambda)`` with ``lambda`` an eigenvalue of ``Q``. Per CCD:

- ``seeing`` is the median over the stars of the equivalent-circle FWHM
  ``sqrt(FWHM_major * FWHM_minor)`` (the diameter of the circle with the half-maximum area);
- ``seeing_minor`` is the median FWHM along the minor axis: a linear trail stretches stars
  along one direction and leaves the minor axis at the seeing;
- ``psf_ellipticity`` is the median ``1 - FWHM_minor / FWHM_major`` and ``psf_pa_deg`` the
  position angle of the major axis (degrees from +x towards +y, SExtractor's THETA_IMAGE
  convention, in [-90, 90)) of the median of the stars' spin-2 shape ``e exp(2i theta)``:
  one direction everywhere on the focal plane is tracking, a radial pattern optics.

The fit itself is :func:`skygrade.transforms.moffat_fit.fit_moffat`. The Moffat model is the
standard for ground-based seeing (the simulator's PSF is one, with beta 2-5, so that
``2 * FLUX_RADIUS``, exact for a Gaussian, reads 17-55% high there).

Catalog mode (no pixels, ``method = "catalog_flux_radius"``)
-----------------------------------------------------------
An archived catalog has no pixels to fit: the seeing is ``2 * FLUX_RADIUS`` of the stars
(exact for a Gaussian PSF, an overestimate for Moffat wings: measured ~1.2-1.5x on the
simulator), the minor axis ``seeing * sqrt(B_IMAGE / A_IMAGE)`` and the shape from the
isophotal moments (``A_IMAGE``, ``B_IMAGE``, ``THETA_IMAGE``). NaN without ``FLUX_RADIUS``
or with fewer than :data:`MIN_STARS` stars (``method = "none"``).

Sky
---
The median ``BACKGROUND`` (the background map at the detections) minus the CCD's bias level
(``BIASLVL`` when the header has one, else 0: Elixir-processed files are bias-subtracted),
divided by EXPTIME: ADU/s per pixel. In mag/arcsec^2 with the zero point ``zp`` (magnitude of
1 ADU/s): ``zp - 2.5 log10(sky_adu_s / pixel_scale^2)``; ``zp`` is PHOTZP from the header
when present, else the filter's nominal zero point from the configuration
(``extract.zero_points``).

Source counts
-------------
``source_count_ratio``: clean detections per megapixel over the expectation for the filter
and exposure time (``extract.expected_sources_per_mpx`` at 100 s, scaled by
``(EXPTIME / 100)^extract.source_count_exponent``). A transparency proxy, NOT a photometric
zero point: it also falls with bad seeing, a bright sky and a sparse field.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from skygrade.ops.config import ExtractConfig
from skygrade.ops.text import escape_controls
from skygrade.transforms.moffat_fit import StarFit, fit_moffat

NAN = float("nan")
PIXEL_SCALE = 0.187
"""MegaCam arcsec per pixel (the default of ``extract.pixel_scale``)."""
ZENITH_EXPONENT = -0.6
"""Seeing scales as airmass^0.6 (Kolmogorov turbulence): FWHM at zenith = FWHM * X^-0.6."""
MIN_PEAK_SNR = 10.0
"""A PSF star's peak is at least this many times the pixel noise (20 left most CCDs of short
or bright-sky simulated exposures without 3 stars, at the same accuracy; the brightest
:data:`MAX_STARS` are fitted anyway)."""
MAX_STARS = 30
"""The brightest stars fitted per CCD (the median changes little beyond)."""
MIN_STARS = 3
"""Fewer usable stars than this: the CCD's seeing is NaN."""
LOCUS_TOLERANCE = 0.2
"""A point source's FLUX_RADIUS lies within this fraction of the stellar locus."""
CLUSTER_WIDTH = 0.15
"""Relative width of the group of FWHMs taken as the stars (see :func:`_clip`)."""
MIN_FWHM_PX = 1.5
"""Fits sharper than this (pixels; 0.28" on MegaCam) are cosmic rays or hot pixels."""
MAX_PEAK_FRACTION = 0.3
"""Sources whose peak pixel holds more than this fraction of their flux are sharper than any
PSF of FWHM above ~2 px (0.37"): cosmic rays and hot pixels."""
SATURATION_FRACTION = 0.5
"""A PSF star's peak + background stays below this fraction of SATURATE."""

_FLAG_NEIGHBOURS_BLENDED = 1 | 2
"""SExtractor's 'has neighbours' and 'deblended' bits: allowed, isolation is checked apart."""


@dataclass(frozen=True)
class CcdPhysics:
    """Physical measurements of one CCD (NaN where not measurable)."""

    seeing_arcsec: float = NAN
    """Equivalent-circle PSF FWHM, median over the stars."""
    seeing_minor_arcsec: float = NAN
    """PSF FWHM along the minor axis (robust to a linear trail)."""
    seeing_zenith_arcsec: float = NAN
    """``seeing_arcsec * airmass^-0.6``."""
    n_stars: int = 0
    """Stars the seeing and shape were measured on."""
    psf_ellipticity: float = NAN
    psf_pa_deg: float = NAN
    sky_adu_s: float = NAN
    """Sky level, ADU per second per pixel (bias removed)."""
    sky_mag_arcsec2: float = NAN
    zero_point: float = NAN
    """The zero point used for ``sky_mag_arcsec2`` (mag of 1 ADU/s)."""
    source_count_ratio: float = NAN
    """Clean detections per Mpx over the expectation (transparency proxy)."""
    method: str = "none"
    """``moffat_fit`` (pixels), ``catalog_flux_radius`` (catalog) or ``none``."""


# --------------------------------------------------------------------------- stars


def pixel_noise(pixels: np.ndarray, n: int = 200_000) -> float:
    """Robust RMS of a background-subtracted image (MAD of an even subsample)."""
    flat = pixels.reshape(-1)
    step = max(1, flat.size // n)
    sample = flat[::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return NAN
    med = np.median(sample)
    return float(1.4826 * np.median(np.abs(sample - med)))


def _locus(radius: np.ndarray) -> float:
    """The stellar locus of half-light radii: the narrowest dense group of them.

    Stars share one radius, so they pile up in a narrow window; galaxies lie above it, spread
    out, and cosmic rays below it, spread out too (spots, tracks, worms: a real CCD records
    tens to hundreds in a long exposure). The locus is the median of the radii in the window
    (``LOCUS_TOLERANCE`` wide in log radius) that holds the most sources among those no larger
    than the narrowest window holding a third of the fullest one. Neither the densest window
    alone (on a small CCD a few galaxies can outnumber the stars) nor the narrow end alone
    (cosmic rays) is the stars'.
    """
    r = np.sort(np.asarray(radius, np.float64))
    r = r[r > 0]
    if len(r) == 0:
        return NAN
    log_r = np.log(r)
    half = 0.5 * math.log1p(LOCUS_TOLERANCE)
    counts = np.searchsorted(log_r, log_r + half, "right") - np.searchsorted(log_r, log_r - half)
    first = int(np.argmax(counts >= counts.max() / 3.0))
    # within one more window above the first dense one, centre on its fullest window
    reach = np.searchsorted(log_r, log_r[first] + 2 * half, "right")
    centre = first + int(np.argmax(counts[first:reach]))
    near = np.abs(log_r - log_r[centre]) <= half
    return float(np.median(r[near]))


def stamp_half(r0: float) -> int:
    """Half-size (pixels) of a PSF star's stamp for a stellar half-light radius ``r0``."""
    return int(np.clip(math.ceil(2.5 * r0) + 2, 6, 30))


def select_stars(
    sources: Mapping[str, np.ndarray],
    shape: tuple[int, int] | None = None,
    saturate: float | None = None,
    noise: float | None = None,
) -> tuple[np.ndarray, float]:
    """Indices of the PSF stars in a feature table (brightest first) and the locus radius.

    See the module docstring for the criteria. ``shape`` (rows, columns) keeps stamps inside
    the CCD; ``noise`` (pixel RMS) enables the brightness cut; ``saturate`` the linearity cut.
    """
    x = np.asarray(sources["X_IMAGE"], np.float64) - 1.0
    y = np.asarray(sources["Y_IMAGE"], np.float64) - 1.0
    flags = np.asarray(sources["FLAGS"])
    radius = np.asarray(sources["FLUX_RADIUS"], np.float64)
    flux = np.asarray(sources["FLUX"], np.float64)
    peak = np.asarray(sources["FLUX_MAX"], np.float64)
    back = np.asarray(sources["BACKGROUND"], np.float64)
    ok = (
        ((flags & ~_FLAG_NEIGHBOURS_BLENDED) == 0)
        & np.isfinite(x)
        & np.isfinite(y)
        & np.isfinite(radius)
        & (radius > 0.3)
    )
    if saturate is not None and np.isfinite(saturate):
        ok &= ~(peak + back >= SATURATION_FRACTION * saturate)
    if noise is not None and np.isfinite(noise) and noise > 0:
        ok &= peak > MIN_PEAK_SNR * noise
    if ok.sum() < MIN_STARS:
        return np.zeros(0, np.int64), NAN
    # The stellar locus is the lower ridge of the radii of the bright candidates (galaxies lie
    # above it); candidates within a broad band around it are fitted, the fits then pick the
    # narrowest group (:func:`_clip`).
    with np.errstate(divide="ignore", invalid="ignore"):
        ok &= ~(peak / flux > MAX_PEAK_FRACTION)  # cosmic rays, hot pixels
    cand = np.flatnonzero(ok)
    if len(cand) < MIN_STARS:
        return np.zeros(0, np.int64), NAN
    r0 = _locus(radius[cand])
    ok &= (radius > (1 - LOCUS_TOLERANCE) * r0) & (radius < (1 + 2 * LOCUS_TOLERANCE) * r0)
    half = stamp_half(r0)
    if shape is not None:
        h, w = shape
        ok &= (x >= half) & (y >= half) & (x <= w - 1 - half) & (y <= h - 1 - half)
    cand = np.flatnonzero(ok)
    if len(cand) == 0:
        return cand.astype(np.int64), r0
    # isolation: no detection brighter than 2% of the star within 1.5 half-sizes
    reach = 1.5 * half
    flux_all = np.nan_to_num(flux, nan=0.0)
    keep = []
    for i in cand[np.argsort(-flux_all[cand], kind="stable")]:  # brightest first
        near = (np.abs(x - x[i]) < reach) & (np.abs(y - y[i]) < reach)
        near[i] = False
        if not np.any(near & (flux_all > 0.02 * max(flux_all[i], 0.0))):
            keep.append(i)
            if len(keep) == MAX_STARS:
                break
    return np.asarray(keep, np.int64), r0


# --------------------------------------------------------------------------- Moffat fit


def _oversample(r0: float) -> int:
    """Sub-samples per pixel side: pixel integration matters for small PSFs only."""
    return 3 if r0 < 2.5 else 2 if r0 < 4.0 else 1


def fit_stars(
    pixels: np.ndarray, sources: Mapping[str, np.ndarray], index: np.ndarray, r0: float
) -> list[StarFit]:
    """Moffat fits of the stars ``index`` of a background-subtracted CCD image."""
    half = stamp_half(r0)
    os_ = _oversample(r0)
    fits = []
    x = np.asarray(sources["X_IMAGE"], np.float64) - 1.0
    y = np.asarray(sources["Y_IMAGE"], np.float64) - 1.0
    for i in index:
        cx, cy = int(round(x[i])), int(round(y[i]))
        stamp = pixels[cy - half : cy + half + 1, cx - half : cx + half + 1]
        if stamp.shape != (2 * half + 1, 2 * half + 1):
            continue
        stamp = np.asarray(stamp, np.float64)
        # the local sky (median of the border) first: the pixels may still hold the sky (the
        # sextractor backend keeps them as read); the fit's constant takes what is left
        border = np.concatenate([stamp[0], stamp[-1], stamp[1:-1, 0], stamp[1:-1, -1]])
        border = border[np.isfinite(border)]
        if border.size:
            stamp = stamp - float(np.median(border))
        fit = fit_moffat(stamp, 2.0 * r0, os_)
        if fit is not None:
            fits.append(fit)
    return _clip(fits)


def _clip(fits: list[StarFit]) -> list[StarFit]:
    """The stars of the PSF among the fits: the lowest dense group of FWHMs.

    Every source is at least as broad as the PSF (galaxies are convolved with it, a blend is
    wider), so the stars are the narrowest group, not the most common size: among the fits
    sorted by FWHM, the group starts at the first FWHM ``f`` with at least half as many fits
    in ``[f, (1 + CLUSTER_WIDTH) f]`` as the densest such window (and :data:`MIN_STARS`);
    the stars are the fits within ``CLUSTER_WIDTH / 2`` of that group's median. Fits sharper
    than :data:`MIN_FWHM_PX` (cosmic rays, hot pixels) are dropped first.
    """
    fits = [f for f in fits if f.fwhm >= MIN_FWHM_PX]
    if len(fits) < MIN_STARS:
        return fits
    fw = np.array([f.fwhm for f in fits])
    starts = np.sort(fw)
    counts = np.array([np.sum((fw >= v) & (fw <= v * (1 + CLUSTER_WIDTH))) for v in starts])
    need = max(MIN_STARS, int(math.ceil(0.5 * counts.max())))
    if counts.max() < need:
        return []
    start = float(starts[np.argmax(counts >= need)])
    group = fw[(fw >= start) & (fw <= start * (1 + CLUSTER_WIDTH))]
    med = float(np.median(group))
    return [f for f in fits if abs(f.fwhm / med - 1.0) <= CLUSTER_WIDTH / 2]


def median_shape(ellipticity: np.ndarray, theta_deg: np.ndarray) -> tuple[float, float]:
    """Median ellipticity and the position angle of the median spin-2 shape (degrees)."""
    e = np.asarray(ellipticity, np.float64)
    t = np.radians(np.asarray(theta_deg, np.float64))
    ok = np.isfinite(e) & np.isfinite(t)
    if not ok.any():
        return NAN, NAN
    e, t = e[ok], t[ok]
    e1, e2 = np.median(e * np.cos(2 * t)), np.median(e * np.sin(2 * t))
    pa = math.degrees(0.5 * math.atan2(e2, e1))
    return float(np.median(e)), (pa + 90.0) % 180.0 - 90.0


# --------------------------------------------------------------------------- per CCD


@dataclass(frozen=True)
class PsfResult:
    """The PSF of one CCD in pixels."""

    fwhm: float = NAN
    fwhm_minor: float = NAN
    ellipticity: float = NAN
    pa_deg: float = NAN
    n_stars: int = 0
    method: str = "none"


def measure_psf(
    sources: Mapping[str, np.ndarray],
    pixels: np.ndarray | None = None,
    saturate: float | None = None,
) -> PsfResult:
    """The PSF of one CCD from its pixels (Moffat fits) or, without, from its catalog."""
    if len(sources.get("X_IMAGE", ())) == 0:
        return PsfResult()
    if pixels is not None:
        noise = pixel_noise(pixels)
        index, r0 = select_stars(sources, pixels.shape, saturate, noise)
        if len(index) < MIN_STARS:
            return PsfResult(n_stars=0, method="none")
        fits = fit_stars(pixels, sources, index, r0)
        if len(fits) < MIN_STARS:
            return PsfResult(n_stars=len(fits), method="none")
        e, pa = median_shape(
            np.array([f.ellipticity for f in fits]), np.array([f.theta_deg for f in fits])
        )
        return PsfResult(
            float(np.median([f.fwhm for f in fits])),
            float(np.median([f.fwhm_minor for f in fits])),
            e,
            pa,
            len(fits),
            "moffat_fit",
        )
    radius = np.asarray(sources["FLUX_RADIUS"], np.float64)
    if not np.isfinite(radius).any():
        return PsfResult()
    index, _ = select_stars(sources, None, saturate, None)
    if len(index) < MIN_STARS:
        return PsfResult()
    a = np.asarray(sources["A_IMAGE"], np.float64)[index]
    b = np.asarray(sources["B_IMAGE"], np.float64)[index]
    fwhm = 2.0 * float(np.median(radius[index]))
    q = b / a
    minor = fwhm * float(np.sqrt(np.nanmedian(q))) if np.isfinite(q).any() else NAN
    e, pa = median_shape(1.0 - q, np.asarray(sources["THETA_IMAGE"], np.float64)[index])
    return PsfResult(fwhm, minor, e, pa, len(index), "catalog_flux_radius")


def zero_point(
    filter_name: str | None, zero_points: Mapping[str, float], photzp: float | None = None
) -> float:
    """PHOTZP when given, else the filter's entry (full name, else its band letter), else NaN."""
    if photzp is not None and math.isfinite(photzp):
        return float(photzp)
    if not filter_name:
        return NAN
    if filter_name in zero_points:
        return float(zero_points[filter_name])
    band = filter_name.split(".", 1)[0].strip()
    return float(zero_points[band]) if band in zero_points else NAN


def sky_brightness(sky_adu_s: float, zp: float, pixel_scale: float = PIXEL_SCALE) -> float:
    """mag/arcsec^2 of a sky of ``sky_adu_s`` ADU/s/pixel (NaN when not positive)."""
    if not (math.isfinite(sky_adu_s) and sky_adu_s > 0 and math.isfinite(zp)):
        return NAN
    return zp - 2.5 * math.log10(sky_adu_s / pixel_scale**2)


def expected_density(
    filter_name: str | None, exptime: float, per_mpx: Mapping[str, float], exponent: float
) -> float:
    """Expected clean detections per Mpx for a filter and exposure time (NaN if unknown)."""
    if not filter_name or not (math.isfinite(exptime) and exptime > 0):
        return NAN
    ref = per_mpx.get(filter_name, per_mpx.get(filter_name.split(".", 1)[0].strip()))
    if ref is None:
        return NAN
    return float(ref) * (exptime / 100.0) ** exponent


def zenith_seeing(seeing: float, airmass: float | None) -> float:
    """``seeing * airmass^-0.6`` (NaN without a valid airmass >= 1)."""
    if airmass is None or not (math.isfinite(airmass) and airmass >= 1.0):
        return NAN
    return seeing * airmass**ZENITH_EXPONENT


def ccd_physics(features, meta, settings=None, saturate=None, bias=None) -> CcdPhysics:
    """The physical measurements of one CCD's :class:`~skygrade.transforms.extract.CcdFeatures`.

    Parameters
    ----------
    features : CcdFeatures
        With ``pixels`` (background subtracted) for the Moffat fits, else catalog mode.
    meta : ExposureMeta
        ``filter``, ``airmass``, ``exptime`` and ``photzp`` (when it has one).
    settings : ExtractConfig, optional
        ``pixel_scale``, ``zero_points``, ``expected_sources_per_mpx``,
        ``source_count_exponent``; the defaults of :mod:`skygrade.ops.config` when None.
    saturate, bias : float, optional
        The CCD's SATURATE and bias level (default: ``features.saturate`` / ``features.bias``).
    """
    if settings is None:
        settings = ExtractConfig()
    scale = float(settings.pixel_scale)
    t = features.sources
    saturate = getattr(features, "saturate", None) if saturate is None else saturate
    bias = getattr(features, "bias", None) if bias is None else bias
    psf = measure_psf(t, features.pixels, saturate)
    seeing = psf.fwhm * scale
    exptime = float(features.exptime)
    back = np.asarray(t["BACKGROUND"], np.float64)
    back = back[np.isfinite(back)]
    sky = NAN
    if back.size and math.isfinite(exptime) and exptime > 0:
        level = float(np.median(back)) - (float(bias) if bias is not None else 0.0)
        sky = level / exptime
    zp = zero_point(meta.filter, settings.zero_points, getattr(meta, "photzp", None))
    clean = int(np.sum(np.asarray(t["FLAGS"]) == 0)) if len(t["FLAGS"]) else 0
    area = features.width * features.height / 1e6
    expected = expected_density(
        meta.filter, exptime, settings.expected_sources_per_mpx, settings.source_count_exponent
    )
    ratio = clean / area / expected if area > 0 and expected > 0 else NAN
    return CcdPhysics(
        seeing_arcsec=seeing,
        seeing_minor_arcsec=psf.fwhm_minor * scale,
        seeing_zenith_arcsec=zenith_seeing(seeing, meta.airmass),
        n_stars=psf.n_stars,
        psf_ellipticity=psf.ellipticity,
        psf_pa_deg=psf.pa_deg,
        sky_adu_s=sky,
        sky_mag_arcsec2=sky_brightness(sky, zp, scale),
        zero_point=zp,
        source_count_ratio=float(ratio),
        method=psf.method,
    )


def with_physics(features, meta, settings=None):
    """``features`` with its :class:`CcdPhysics` (``features.physics``) when it can be
    measured: from the pixels when they were kept, from the table for the catalog backend.

    Called by the per-CCD chain (:func:`skygrade.transforms.ccd_chain.measure_ccd`), whether it runs
    in a Beam stage or in the CCD pool. A measurement failure never loses the CCD: it is
    logged and the CCD goes on without physics.
    """
    if features.pixels is None and features.backend != "catalog":
        return features  # a feature cache (training): nothing to report
    try:
        physics = ccd_physics(features, meta, settings)
    except Exception as exc:  # pragma: no cover - defensive: the grade matters more
        logging.getLogger(__name__).warning(
            "CCD %d of %s: physical measurements failed: %s",
            features.ccd,
            escape_controls(features.exposure_id),
            escape_controls(f"{type(exc).__name__}: {exc}"),
        )
        return features
    return replace(features, physics=physics)


# --------------------------------------------------------------------------- per exposure


@dataclass(frozen=True)
class ExposurePhysics:
    """The exposure's physical measurements: medians over its measured CCDs."""

    seeing_arcsec: float = NAN
    seeing_minor_arcsec: float = NAN
    seeing_zenith_arcsec: float = NAN
    n_stars: int = 0
    """Stars used, summed over the CCDs."""
    psf_ellipticity: float = NAN
    psf_pa_deg: float = NAN
    sky_adu_s: float = NAN
    sky_mag_arcsec2: float = NAN
    source_count_ratio: float = NAN
    airmass: float = NAN
    method: str = "none"


def _median(values) -> float:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    return float(np.median(v)) if v.size else NAN


def exposure_physics(ccds: list[CcdPhysics], airmass: float | None = None) -> ExposurePhysics:
    """Combine the CCDs of an exposure: medians of the CCD values, stars summed.

    The PSF position angle is that of the median spin-2 shape of the CCDs; the zenith seeing
    is recomputed from the median seeing and the exposure's airmass.
    """
    measured = [c for c in ccds if math.isfinite(c.seeing_arcsec)]
    seeing = _median(c.seeing_arcsec for c in measured)
    _, pa = median_shape(
        np.array([c.psf_ellipticity for c in measured]), np.array([c.psf_pa_deg for c in measured])
    )
    methods = sorted({c.method for c in measured})
    return ExposurePhysics(
        seeing_arcsec=seeing,
        seeing_minor_arcsec=_median(c.seeing_minor_arcsec for c in measured),
        seeing_zenith_arcsec=zenith_seeing(seeing, airmass),
        n_stars=int(sum(c.n_stars for c in measured)),
        psf_ellipticity=_median(c.psf_ellipticity for c in measured),
        psf_pa_deg=pa,
        sky_adu_s=_median(c.sky_adu_s for c in ccds),
        sky_mag_arcsec2=_median(c.sky_mag_arcsec2 for c in ccds),
        source_count_ratio=_median(c.source_count_ratio for c in ccds),
        airmass=float(airmass) if airmass is not None and math.isfinite(airmass) else NAN,
        method=methods[0] if len(methods) == 1 else ("mixed" if methods else "none"),
    )


def seeing_text(p: ExposurePhysics) -> str:
    """``seeing 1.21" (0.98" at zenith, 37 stars)`` for the reason, or "" when unmeasured."""
    if not math.isfinite(p.seeing_arcsec):
        return ""
    zenith = (
        f'{p.seeing_zenith_arcsec:.2f}" at zenith, '
        if math.isfinite(p.seeing_zenith_arcsec)
        else ""
    )
    how = "" if p.method == "moffat_fit" else f", {p.method.replace('_', ' ')}"
    return f'seeing {p.seeing_arcsec:.2f}" ({zenith}{p.n_stars} stars{how})'
