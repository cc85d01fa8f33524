"""Robust per-CCD summary statistics of the clean sources, an input of the CNN beside the hits.

numpy only (no torch, no Beam): the CCD worker processes compute them next to the hits, and
they must not pay for importing torch.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from skygrade.models.som import EDGE_MARGIN, MIN_ISOLATED, measured_mask

SUMMARY_FEATURES: tuple[str, ...] = (
    "log_flux_radius",
    "log_elongation",
    "log_elongation_p90",
    "log_extent_p90",
    "log_sky_rate",
    "sky_spread_dex",
    "log_major_spread",
    "log_radius_spread",
    "log_major_over_radius",
    "theta_alignment",
    "log_iso0_bright",
    "log_iso0_spread",
    "isolated",
    "twin_fraction",
    "log_sky_spread_adu",
)
"""Robust per-CCD summary statistics of the clean sources (:func:`ccd_summary`), in units that
mean the same on a quarter-size simulated CCD and on a full 2048x4612 MegaCam CCD (same pixel
scale; medians and percentiles, not counts):

- ``log_flux_radius``: log10 median FLUX_RADIUS (pixels) of the brighter half of the sources
  (the PSF size: fat for B_SEEING, long for trails);
- ``log_elongation``: log10 median ELONGATION of the brighter half (trailing: BT, RBT);
- ``log_elongation_p90``: log10 90th percentile of the brighter half's ELONGATION;
- ``log_extent_p90``: log10 of the brighter half's 90th percentile A_IMAGE over its median
  B_IMAGE: the longest detections in units of the PSF width (a linear BT trail of a few FWHM
  against the long pieces of an erratic RBT trail);
- ``log_sky_rate``: log10 median BACKGROUND per second (ADU/s, floored at 0.01 as the SOM's
  feature: sky-subtracted products read as a dark sky);
- ``sky_spread_dex``: log10(p90 / p10) of BACKGROUND over the CCD's sources (floored at 1 ADU):
  gradients, scattered light and clouds of BGP;
- ``log_major_spread``: log10 of the brighter half's 90th percentile A_IMAGE over its median;
- ``log_radius_spread``: the same for FLUX_RADIUS;
- ``log_major_over_radius``: log10 median A_IMAGE over median FLUX_RADIUS of the brighter half;
- ``theta_alignment``: how much the brighter half's shapes point one way,
  ``|sum e exp(2i theta)| / sum e`` with e = ELLIPTICITY, theta = THETA_IMAGE (0: random
  orientations, galaxies under a round PSF; 1: every source stretched along one direction).

- ``log_iso0_bright``: log10 median ISO0 of the brighter half (by FLUX; the footprint: larger for
  bad seeing and trails; it also grows with a lower DETECT_THRESH);
- ``log_iso0_spread``: log10 of the 90th over the 50th percentile ISO0;
- ``isolated``: 1 when the statistics are of the isolated sources, 0 when the CCD had too few
  and all clean sources were used (:func:`skygrade.models.som.measured_mask`);
- ``twin_fraction``: the share of the brightest sources that have a twin at one common offset
  (:func:`twin_fraction`): a jump of the mount during the exposure draws every star twice, each
  image round, so no shape statistic sees it (0 for a single image of the sky, up to 0.5 when
  every star is doubled). It needs positions only, so every archive catalog has it.
- ``log_sky_spread_adu``: :func:`sky_spread_adu`, log10(1 + p90 - p10) of BACKGROUND in ADU:
  the sky's structure over the CCD in ADU, which a sky level subtracted before extraction leaves
  as it was (``log_sky_rate`` and ``sky_spread_dex`` are ratios, which a subtracted level turns
  into noise around 0; docs/model.md item 22).

Every statistic is of the CCD's measured sources (:func:`skygrade.models.som.measured_mask`): the
isolated (FLAGS == 0) clean sources, whose shapes are the PSF's whatever the deblending
settings, at least the SOM's edge margin from the CCD's edges (where the real archives' prescan
and overscan strips bend the background: :data:`skygrade.models.som.EDGE_MARGIN`).
``log_elongation``, ``log_iso0_bright`` and ``log_iso0_spread`` need only the eight columns
every archive catalog has (X/Y_IMAGE, ISO0, ELONGATION, ELLIPTICITY, CLASS_STAR,
BACKGROUND, FLAGS).

The trail-shape statistics (major spread to theta alignment) tell a linear trail (BT: every
star the same short stroke, all one way) from an
erratic one (RBT: a wandering path broken by the mount's stick-slip into pieces of unequal
length, and curved, so the pieces point less one way). On the training archive's BT and RBT
CCDs, a small classifier on the first four statistics told the two apart at 91% on the
validation split, and at 97% with these four added (the CNN's own CCD-level rate was 92%).
A sign or origin convention of THETA_IMAGE (sep vs SExtractor) does not change the modulus.

The statistics marked 'brighter half' are of the brightest quarter when a CCD has 40 or more
measured sources (:func:`bright_mask`: near-threshold detections have the noise's shape), else
of the brighter half; by FLUX (by ISO0 where a catalog has no FLUX). A statistic that cannot be
measured (a catalog without FLUX_RADIUS, too few sources) is NaN and enters the network at its
:data:`SUMMARY_FILL` value, i.e. "unremarkable"."""

_SUMMARY_CENTRE = np.array(
    [0.4, 0.0, 0.0, 0.4, 1.0, 0.0, 0.15, 0.1, -0.03, 0.5, 1.3, 0.5, 0.5, 0.05, 2.0]
)
_SUMMARY_SCALE = np.array(
    [0.15, 0.1, 0.2, 0.2, 0.5, 0.1, 0.1, 0.1, 0.06, 0.3, 0.4, 0.3, 0.5, 0.15, 0.5]
)
SUMMARY_FILL = np.array(
    [0.37, 0.05, 0.12, 0.19, 1.1, 0.025, 0.12, 0.1, -0.05, 0.32, 1.3, 0.5, 1.0, 0.02, 1.9]
)
"""Raw value used for a summary statistic that is missing (typical of a GOOD CCD); the
network is told which inputs were missing (:data:`skygrade.models.cnn.AUX_FEATURES`)."""

MEASURED_COLUMNS = ("FLUX", "FLUX_RADIUS", "A_IMAGE", "B_IMAGE", "THETA_IMAGE")
"""Optional catalog columns some statistics need; :func:`missing_columns` names the absent."""


def missing_columns(table: dict[str, np.ndarray]) -> tuple[str, ...]:
    """The :data:`MEASURED_COLUMNS` a CCD's table lacks (absent, or NaN for every source).

    >>> missing_columns({"FLUX": np.array([1.0]), "FLUX_RADIUS": np.array([np.nan])})
    ('FLUX_RADIUS', 'A_IMAGE', 'B_IMAGE', 'THETA_IMAGE')
    """
    out = []
    for name in MEASURED_COLUMNS:
        values = table.get(name)
        if values is None or (len(values) and not np.isfinite(np.asarray(values, float)).any()):
            out.append(name)
    return tuple(out)


def sky_spread_adu(background: np.ndarray) -> float:
    """log10(1 + p90 - p10) of the BACKGROUND values of a CCD's sources, in ADU (NaN if none).

    A sky level subtracted before extraction shifts every value alike and leaves it as it was;
    a gradient, scattered light or a cloud's patches widen it.

    >>> sky = np.linspace(100.0, 1100.0, 101)
    >>> round(sky_spread_adu(sky), 3), round(sky_spread_adu(sky - 600.0), 3)
    (2.904, 2.904)
    """
    sky = np.asarray(background, dtype=np.float64)
    sky = sky[np.isfinite(sky)]
    if not len(sky):
        return float("nan")
    return float(np.log10(1.0 + np.subtract(*np.percentile(sky, [90, 10]))))


MIN_BRIGHT = 10
"""Sources the brightest quarter needs; a CCD with fewer than 4x this uses its brighter half."""


def bright_mask(flux: np.ndarray) -> np.ndarray:
    """The well-measured sources whose shapes the statistics read: the brightest quarter.

    A detection near the threshold is a few pixels above the noise and its shape is noise
    (under a 5-sigma, unfiltered extraction most isolated detections of a cloudy or bright sky
    are such blobs, median ISO0 ~7 px, elongation ~1.8 whatever the PSF); the brightest quarter
    is mostly stars and bright galaxies, whose shapes are the PSF's under any extraction
    configuration. With fewer than ``4 * MIN_BRIGHT`` sources the brighter half is used.

    >>> bright_mask(np.arange(40.0)).sum(), bright_mask(np.arange(8.0)).sum()
    (np.int64(10), np.int64(4))
    """
    flux = np.asarray(flux, dtype=np.float64)
    quantile = 75 if len(flux) >= 4 * MIN_BRIGHT else 50
    return flux >= np.percentile(flux, quantile)


TWIN_SOURCES = 300
"""The brightest sources :func:`twin_fraction` pairs (44,850 pairs: ~1.5 ms a CCD)."""
TWIN_MIN_SOURCES = 20
"""Fewer measured sources than this: :func:`twin_fraction` is NaN (filled as unremarkable)."""
TWIN_OFFSETS = (4.0, 256.0)
"""Pixels: the twin offsets looked for (0.75" to 48" at 0.187"/px). Under 4 px a second image
blends with the first (one elongated source, which the shape statistics see); past 256 px the
chance pairs of a crowded CCD drown a few real twins."""
TWIN_BIN = 2.0
"""Pixels: the grid of pair offsets (twins are matched within 2x2 cells, 4 px)."""


@lru_cache(maxsize=4)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs i < j of n sources (cached: most CCDs pair exactly TWIN_SOURCES)."""
    return np.triu_indices(n, k=1)


def twin_fraction(x: np.ndarray, y: np.ndarray, flux: np.ndarray) -> float:
    """The share of the brightest sources that have a twin at one common offset (NaN when
    fewer than :data:`TWIN_MIN_SOURCES`).

    The offsets of every pair of the :data:`TWIN_SOURCES` brightest sources are folded into one
    half-plane and counted on a :data:`TWIN_BIN` grid within :data:`TWIN_OFFSETS`. A mount that
    jumped once during the exposure draws every star twice, all at the same offset: one cell of
    the grid holds about one pair per doubled star. The fullest 2x2 window, less what chance
    puts in a window (its mean, plus 4 sigma of Poisson noise, plus 1), over the number of
    sources paired: 0 for a single image (random positions), 0.5 when every source is doubled.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> x, y, flux = rng.uniform(0, 2048, 150), rng.uniform(0, 4612, 150), rng.uniform(1, 9, 150)
    >>> round(twin_fraction(x, y, flux), 2)
    0.0
    >>> twice = twin_fraction(np.r_[x, x + 30], np.r_[y, y - 12], np.r_[flux, flux / 2])
    >>> round(twice, 2)
    0.49
    """
    x, y, flux = (np.asarray(a, dtype=np.float64) for a in (x, y, flux))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    if int(ok.sum()) < TWIN_MIN_SOURCES:
        return float("nan")
    brightest = np.argsort(-flux[ok], kind="stable")[:TWIN_SOURCES]
    x, y = x[ok][brightest], y[ok][brightest]
    i, j = _pairs(len(x))
    dx, dy = x[j] - x[i], y[j] - y[i]
    flip = (dy < 0) | ((dy == 0) & (dx < 0))
    dx, dy = np.where(flip, -dx, dx), np.where(flip, -dy, dy)
    low, high = TWIN_OFFSETS
    keep = (dx * dx + dy * dy >= low * low) & (np.abs(dx) < high) & (dy < high)
    nx, ny = int(2 * high / TWIN_BIN), int(high / TWIN_BIN)
    ix = ((dx[keep] + high) / TWIN_BIN).astype(np.int64)
    iy = (dy[keep] / TWIN_BIN).astype(np.int64)
    grid = np.bincount(iy * nx + ix, minlength=nx * ny).reshape(ny, nx)
    window = grid[:-1, :-1] + grid[1:, :-1] + grid[:-1, 1:] + grid[1:, 1:]
    chance = float(window.mean())
    excess = float(window.max()) - (chance + 4.0 * np.sqrt(chance) + 1.0)
    return float(max(excess, 0.0) / len(x))


def ccd_summary(
    table: dict[str, np.ndarray],
    exptime: float,
    width: int,
    height: int,
    margin: int = EDGE_MARGIN,
) -> np.ndarray:
    """The :data:`SUMMARY_FEATURES` of one CCD's feature table (float64, NaN where unmeasurable).

    Uses the SOM's measured sources (:func:`skygrade.models.som.measured_mask`) of a ``width`` x
    ``height`` CCD, ``margin`` pixels from its edges (the SOM's ``edge_margin``).

    Examples
    --------
    >>> t = {"X_IMAGE": np.full(4, 4.0), "Y_IMAGE": np.full(4, 4.0), "ISO0": np.full(4, 20.0),
    ...      "ELONGATION": np.array([1.0, 1.0, 2.0, 2.0]),
    ...      "ELLIPTICITY": np.array([0.0, 0.0, 0.5, 0.5]),
    ...      "CLASS_STAR": np.zeros(4), "FLAGS": np.zeros(4, int),
    ...      "FLUX": np.array([1.0, 2.0, 3.0, 4.0]), "FLUX_RADIUS": np.full(4, 2.5),
    ...      "A_IMAGE": np.array([1.0, 1.0, 2.0, 4.0]), "B_IMAGE": np.ones(4),
    ...      "BACKGROUND": np.full(4, 100.0), "THETA_IMAGE": np.full(4, 30.0)}
    >>> ccd_summary(t, 100.0, 8, 8).round(3).tolist()[:10]
    [0.398, 0.301, 0.301, 0.58, 0.0, 0.0, 0.103, 0.0, 0.079, nan]

    (``theta_alignment`` needs 5 bright sources: NaN here.) ``exptime`` may be NaN (a catalog
    without EXPTIME): the sky rate is then NaN.
    """
    out = np.full(len(SUMMARY_FEATURES), np.nan)
    clean = measured_mask(table, width, height, margin)
    flags = np.asarray(table["FLAGS"])
    isolated = int(clean.sum()) >= MIN_ISOLATED and bool((flags[clean] == 0).all())
    if not clean.any():
        return out

    def col(name: str) -> np.ndarray:
        if name not in table:
            return np.full(int(clean.sum()), np.nan)
        return np.asarray(table[name], dtype=np.float64)[clean]

    flux = col("FLUX")
    if not np.isfinite(flux).all():
        flux = col("ISO0")
    bright = bright_mask(flux)
    radius = col("FLUX_RADIUS")[bright]
    radius = radius[np.isfinite(radius) & (radius > 0)]
    elong = col("ELONGATION")[bright]
    elong = np.maximum(elong[np.isfinite(elong)], 1.0)
    major, minor = col("A_IMAGE")[bright], col("B_IMAGE")[bright]
    major, minor = major[np.isfinite(major)], minor[np.isfinite(minor) & (minor > 0)]
    sky = col("BACKGROUND")
    sky = sky[np.isfinite(sky)]
    if len(radius):
        out[0] = np.log10(np.median(radius))
    if len(elong):
        out[1] = np.log10(np.median(elong))
        out[2] = np.log10(np.percentile(elong, 90))
    if len(major) and len(minor):
        out[3] = np.log10(max(float(np.percentile(major, 90)), 1e-3) / float(np.median(minor)))
    if len(sky) and np.isfinite(exptime) and exptime > 0:
        out[4] = np.log10(max(float(np.median(sky)) / max(float(exptime), 1e-3), 0.01))
    if len(sky):
        lo, hi = np.percentile(np.maximum(sky, 1.0), [10, 90])
        out[5] = np.log10(hi / lo)
    if len(major):
        p90, p50 = (max(float(q), 1e-3) for q in np.percentile(major, [90, 50]))
        out[6] = np.log10(p90 / p50)
    if len(radius):
        out[7] = np.log10(float(np.percentile(radius, 90)) / float(np.median(radius)))
    if len(major) and len(radius):
        out[8] = np.log10(max(float(np.median(major)), 1e-3) / float(np.median(radius)))
    e, theta = col("ELLIPTICITY")[bright], np.radians(col("THETA_IMAGE")[bright])
    ok = np.isfinite(e) & np.isfinite(theta) & (e >= 0)
    if ok.sum() >= 5 and e[ok].sum() > 0:
        out[9] = abs(np.sum(e[ok] * np.exp(2j * theta[ok]))) / np.sum(e[ok])
    iso = col("ISO0")
    iso = iso[np.isfinite(iso)]
    if len(iso):
        bright_iso = col("ISO0")[bright]
        bright_iso = bright_iso[np.isfinite(bright_iso)]
        out[10] = np.log10(max(float(np.median(bright_iso)) if len(bright_iso) else 1.0, 1.0))
        p90, p50 = (max(float(q), 1.0) for q in np.percentile(iso, [90, 50]))
        out[11] = np.log10(p90 / p50)
    out[12] = float(isolated)
    out[13] = twin_fraction(col("X_IMAGE"), col("Y_IMAGE"), flux)
    out[14] = sky_spread_adu(sky)
    return out


def stack_summaries(summaries) -> np.ndarray:
    """(B, len(SUMMARY_FEATURES)) from per-CCD summaries, None (not measured) -> NaN rows."""
    rows = [
        np.full(len(SUMMARY_FEATURES), np.nan) if s is None else np.asarray(s, dtype=np.float64)
        for s in summaries
    ]
    return np.stack(rows) if rows else np.zeros((0, len(SUMMARY_FEATURES)))
