"""Simulated CFHT MegaCam: renders labelled raw exposures and delivers them like the telescope.

The simulator draws one :class:`ExposurePlan` per exposure (class label, exposure time, filter,
seeing, tracking, sky...) and renders it into a MegaCam-like multi-extension FITS file: an empty
PRIMARY HDU and one uint16 image extension per CCD (stored as int16 with ``BZERO = 32768``).
Rendering is a pure function of the plan: every random step is seeded from
``(plan.seed, plan.expnum, ccd, stream)``, so the same plan always gives byte-identical files and
the CCDs are independent of each other and of the order they are rendered in.

Physics, per CCD (pixel scale 0.187 arcsec/px):

- sources: stars and galaxies with magnitudes from a power law ``dN/dm ~ 10**(0.3 m)``, rendered
  as flux-scaled stamps of a pixel-integrated kernel (sub-pixel phases for the compact kernel);
- PSF: elliptical Moffat (beta 2-5) or Kolmogorov (the long-exposure atmosphere, wings falling
  as r**(-11/3)) whose FWHM varies smoothly over the focal plane and between CCD regions,
  convolved with the tracking path of the exposure (a segment for ``BT``, a random walk
  and/or field rotation for ``RBT``); galaxies (Gaussian, exponential and de Vaucouleurs
  profiles) are convolved with that kernel;
- sky: per-filter rate times a sky factor, vignetting, linear (log) moonlight gradient, scattered
  light blobs and arcs and a cloud transmission field for ``BGP``;
- detector: Poisson (Gaussian approximation) and read noise, bias pedestal with an offset between
  the two amplifier halves of a CCD, saturation with bleed columns, cosmic rays (rate
  proportional to the exposure time), bad columns and rare dead CCDs.

The class parameter distributions overlap at their edges, as the real grades do.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

from models.classes import CLASSES
from ops.files import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

PIXEL_SCALE = 0.187
"""MegaCam pixel scale, arcsec per pixel."""

READOUT_S = 40.0
"""Readout and overhead between two exposures, seconds."""

HST_OFFSET = timedelta(hours=-10)
NIGHT_START_HST = timedelta(hours=19)
NIGHT_LENGTH = timedelta(hours=10, minutes=30)

LABELS_FILE = "labels.csv"
LABELS_HEADER = ("exposure_id", "label")

_CCD_GAP_PX = 80
_REF_CCD_AREA = 2048 * 4612
_REF_DENSITY_MAG = 24.0
_N_REF = 2000.0  # sources brighter than _REF_DENSITY_MAG on a full-size CCD
_COUNT_SLOPE = 0.3  # dN/dm ~ 10**(_COUNT_SLOPE * m)
_M_BRIGHT = 13.0
_CR_RATE = 26.0 / 60.0 / _REF_CCD_AREA  # cosmic rays per pixel per second
_DEAD_CCD_RATE = 1.0 / 300.0
_BIAS_LEVEL = 200.0
_MAX_HALF = 110  # cap on a kernel's half size, pixels
_N_GALAXY_TEMPLATES = 10
_COMPANION_FRACTION = 0.35
_LOG_HALF_LIGHT_22 = math.log(3.2)  # typical galaxy half-light radius at magnitude 22: 0.6", in px


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Mosaic geometry: number of CCDs and the shape of one CCD.

    Attributes
    ----------
    n_ccd : int
        Number of CCD extensions.
    width : int
        CCD width in pixels (``NAXIS1``, numpy axis 1).
    height : int
        CCD height in pixels (``NAXIS2``, numpy axis 0).
    """

    n_ccd: int
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("n_ccd", "width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.width < 64 or self.height < 64:
            raise ValueError(f"CCD shape must be at least 64x64, got {self.width}x{self.height}")


GEOMETRIES: dict[str, Geometry] = {
    "full": Geometry(36, 2048, 4612),
    "small": Geometry(4, 512, 1152),
}


def resolve_geometry(
    name: str, n_ccd: int | None = None, ccd_shape: tuple[int, int] | None = None
) -> Geometry:
    """Return a preset geometry, optionally overriding its CCD count or CCD shape.

    Parameters
    ----------
    name : str
        Preset name, one of ``GEOMETRIES`` (``"full"``: 36 x 2048x4612, ``"small"``: 4 x 512x1152).
    n_ccd : int, optional
        Number of CCDs instead of the preset's.
    ccd_shape : tuple of int, optional
        ``(width, height)`` of one CCD instead of the preset's.

    Returns
    -------
    Geometry

    Raises
    ------
    ValueError
        If ``name`` is not a preset (the message lists the valid names) or an override is invalid.

    Examples
    --------
    >>> resolve_geometry("small", n_ccd=2)
    Geometry(n_ccd=2, width=512, height=1152)
    """
    try:
        base = GEOMETRIES[name]
    except KeyError:
        valid = ", ".join(sorted(GEOMETRIES))
        raise ValueError(f"unknown geometry {name!r}; valid names: {valid}") from None
    width, height = base.width, base.height
    if ccd_shape is not None:
        if len(ccd_shape) != 2:
            raise ValueError(f"ccd_shape must be (width, height), got {ccd_shape!r}")
        width, height = (int(v) for v in ccd_shape)
    return Geometry(base.n_ccd if n_ccd is None else int(n_ccd), width, height)


def _layout(geometry: Geometry) -> tuple[int, int]:
    """Rows and columns of the focal plane: 4 x 9 for MegaCam, near-square otherwise."""
    n = geometry.n_ccd
    rows = max(1, round(math.sqrt(n * geometry.width / geometry.height)))
    rows = min(rows, n)
    cols = math.ceil(n / rows)
    return rows, cols


def _focal_plane(geometry: Geometry) -> tuple[float, float, float]:
    """Centre ``(xc, yc)`` and radius scale of the focal plane, in focal-plane pixels."""
    rows, cols = _layout(geometry)
    fp_w = cols * geometry.width + (cols - 1) * _CCD_GAP_PX
    fp_h = rows * geometry.height + (rows - 1) * _CCD_GAP_PX
    return fp_w / 2.0, fp_h / 2.0, max(fp_w, fp_h) / 2.0


def _ccd_origin(geometry: Geometry, ccd: int) -> tuple[float, float]:
    """Focal-plane pixel coordinates of a CCD's pixel (0, 0); ccd00 is at the top left."""
    rows, cols = _layout(geometry)
    row, col = divmod(ccd, cols)
    x0 = col * (geometry.width + _CCD_GAP_PX)
    y0 = (rows - 1 - row) * (geometry.height + _CCD_GAP_PX)
    return float(x0), float(y0)


# --------------------------------------------------------------------------------------------
# Filters and plans
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Filter:
    name: str
    zero_point: float  # magnitude giving 1 ADU/s
    sky_rate: float  # ADU/s/pixel on a dark night
    extinction: float  # mag per airmass
    weight: float  # how often it is used


FILTERS: dict[str, _Filter] = {
    f.name: f
    for f in (
        _Filter("u.MP9301", 25.3, 1.5, 0.35, 0.10),
        _Filter("g.MP9401", 26.0, 4.0, 0.17, 0.20),
        _Filter("r.MP9601", 26.3, 10.0, 0.10, 0.30),
        _Filter("i.MP9701", 26.6, 17.0, 0.05, 0.25),
        _Filter("z.MP9801", 26.2, 25.0, 0.04, 0.15),
    )
}

_TRAIL_MODES = ("none", "linear", "walk", "rotation", "walk+rotation")
_PSF_MODELS = ("moffat", "kolmogorov")


@dataclass(frozen=True)
class ExposurePlan:
    """Everything needed to render one exposure; rendering is a pure function of the plan.

    Attributes
    ----------
    expnum : int
        MegaCam-like exposure number (7 digits).
    label : str
        Ground-truth class, one of ``models.classes.CLASSES``.
    night : str
        Local (HST) observing night, ``YYYY-MM-DD``.
    date_obs : datetime
        Start of the exposure, UTC (timezone aware).
    exptime : float
        Exposure time, seconds.
    filter : str
        Filter name, e.g. ``"r.MP9601"``.
    object : str
        Target field name.
    airmass : float
        Airmass at the start of the exposure.
    seed : int
        Simulation seed; every pixel-level random stream derives from ``(seed, expnum, ccd)``.
    ra, dec : float
        Pointing, degrees.
    seeing : float
        Delivered FWHM at the centre of the focal plane, arcsec.
    beta : float
        Moffat beta of the PSF (unused by the Kolmogorov model).
    psf_model : str
        ``"moffat"`` or ``"kolmogorov"``.
    psf_ellip, psf_angle : float
        Intrinsic PSF ellipticity (1 - b/a) and position angle (degrees), the same everywhere.
    psf_astig : float
        Astigmatism over the focal plane: an ellipticity that grows as r^2 (r = 1 at the
        mosaic's half-size), radial when positive, tangential when negative (0: none); it adds
        to the constant part as a spin-2 vector (``_psf_shape_at``).
    trail_mode : str
        ``"none"``, ``"linear"`` (one direction, one length), ``"walk"`` (random-walk tracking
        error), ``"rotation"`` (field rotation) or ``"walk+rotation"``.
    trail_length : float
        Length of the linear trail or of the random-walk path, pixels.
    trail_angle : float
        Direction of the linear trail, degrees.
    rotation : float
        Field-rotation trail length at focal-plane radius 1 (the half-size of the mosaic), pixels.
    trail_jump : float
        Fraction of the exposure spent after a tracking jump (0: no jump). A linear trail
        becomes two images ``trail_length`` apart joined by a faint slew; a random walk jumps by
        half its length part way: double images.
    sky_factor : float
        Sky brightness relative to the filter's dark-sky rate.
    sky_gradient : float
        Natural-log amplitude of the sky gradient across the focal plane (``exp(g * u)``).
    gradient_angle : float
        Direction of the sky gradient, degrees.
    scatter : float
        Peak amplitude of scattered-light blobs relative to the sky (0: none).
    cloud_min : float
        Lowest transmission of the cloud field (1: clear).
    cloud_cover : float
        Fraction of the field under clouds (0-1).
    transparency : float
        Overall photometric transparency.
    amp_offset : float
        Scale (ADU) of the bias offset between a CCD's two amplifier halves; each CCD draws
        its own offset, normal with this standard deviation (0: none).
    """

    expnum: int
    label: str
    night: str
    date_obs: datetime
    exptime: float
    filter: str
    object: str
    airmass: float
    seed: int
    ra: float = 0.0
    dec: float = 0.0
    seeing: float = 0.7
    beta: float = 3.0
    psf_ellip: float = 0.03
    psf_angle: float = 0.0
    trail_mode: str = "none"
    trail_length: float = 0.0
    trail_angle: float = 0.0
    rotation: float = 0.0
    sky_factor: float = 1.0
    sky_gradient: float = 0.0
    gradient_angle: float = 0.0
    scatter: float = 0.0
    cloud_min: float = 1.0
    cloud_cover: float = 0.0
    transparency: float = 1.0
    psf_model: str = "moffat"
    amp_offset: float = 0.0
    psf_astig: float = 0.0
    trail_jump: float = 0.0

    def __post_init__(self) -> None:
        if self.label not in CLASSES:
            raise ValueError(f"label must be one of {CLASSES}, got {self.label!r}")
        if self.filter not in FILTERS:
            raise ValueError(f"filter must be one of {sorted(FILTERS)}, got {self.filter!r}")
        if self.psf_model not in _PSF_MODELS:
            raise ValueError(f"psf_model must be one of {_PSF_MODELS}, got {self.psf_model!r}")
        if self.trail_mode not in _TRAIL_MODES:
            raise ValueError(f"trail_mode must be one of {_TRAIL_MODES}, got {self.trail_mode!r}")
        if not 0.0 <= self.trail_jump < 1.0:
            raise ValueError(f"trail_jump must be in [0, 1), got {self.trail_jump!r}")
        if not self.exptime > 0:
            raise ValueError(f"exptime must be > 0, got {self.exptime!r}")
        if not self.seeing > 0:
            raise ValueError(f"seeing must be > 0, got {self.seeing!r}")
        if self.seed < 0 or self.expnum < 0:
            raise ValueError(f"seed and expnum must be >= 0, got {self.seed!r}, {self.expnum!r}")

    @property
    def exposure_id(self) -> str:
        """The exposure id used by the pipeline and in ``labels.csv``."""
        return str(self.expnum)

    @property
    def filename(self) -> str:
        """The raw file name, ``<expnum>o.fits``."""
        return f"{self.expnum}o.fits"


def _parse_night(night: str) -> date:
    try:
        return date.fromisoformat(night)
    except (TypeError, ValueError):
        raise ValueError(f"night must be 'YYYY-MM-DD', got {night!r}") from None


def _class_weights(class_mix: Mapping[str, float]) -> np.ndarray:
    unknown = sorted(set(class_mix) - set(CLASSES))
    if unknown:
        raise ValueError(f"class_mix has unknown classes {unknown}; valid: {', '.join(CLASSES)}")
    weights = np.array([float(class_mix.get(c, 0.0)) for c in CLASSES])
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"class_mix weights must be >= 0 with a positive sum, got {class_mix!r}")
    return weights / weights.sum()


def _first_expnum(night_date: date, seed: int) -> int:
    """A 7-digit exposure number for the first exposure of a night (400 numbers per night)."""
    day_index = (night_date - date(2003, 1, 1)).days % 20000
    offset = int(np.random.default_rng([seed, 0x5EED]).integers(0, 100))
    return 1_000_000 + day_index * 400 + offset


def _night_start_utc(night_date: date) -> datetime:
    local = datetime(night_date.year, night_date.month, night_date.day, tzinfo=UTC)
    return local + NIGHT_START_HST - HST_OFFSET


def _draw_exptime(rng: np.random.Generator) -> float:
    # MegaCam exposures run from 5 s snapshots (standards, twilight) to 20-minute narrow-band.
    if rng.random() < 0.5:
        return float(rng.choice([30.0, 60.0, 300.0, 600.0]))
    return float(np.round(np.exp(rng.uniform(np.log(5.0), np.log(1200.0)))))


def _draw_instrument(rng: np.random.Generator) -> dict[str, object]:
    """PSF family and amplifier offsets, from their own random stream (so that adding them left
    every other parameter of a plan as it was)."""
    # About a third of nights are dominated by the free atmosphere (Kolmogorov, wings ~r^-11/3,
    # broader than any Moffat of beta >= 2), the others by dome and optics (Moffat).
    model = "kolmogorov" if rng.random() < 0.35 else "moffat"
    # Bias residuals between the two amplifiers of a CCD: usually none, sometimes tens of ADU.
    offset = float(np.exp(rng.uniform(np.log(0.5), np.log(20.0)))) if rng.random() < 0.3 else 0.0
    return {"psf_model": model, "amp_offset": offset}


def _draw_optics_and_jumps(rng: np.random.Generator, label: str) -> dict[str, object]:
    """Astigmatism over the focal plane and tracking jumps, from their own random stream (so
    that adding them left every other parameter of a plan as it was)."""
    # Half of the nights have an astigmatic focal plane: up to 0.06 ellipticity at r = 1
    # (~0.08 in the corners), radial or tangential, on top of the constant part.
    astig = float(rng.uniform(-0.06, 0.06)) if rng.random() < 0.5 else 0.0
    # A quarter of the tracking failures are jumps (a wind gust, a guide-star swap): the
    # mount holds, jumps, holds again, and every source is doubled.
    jump = float(rng.uniform(0.2, 0.5)) if label in ("BT", "RBT") and rng.random() < 0.25 else 0.0
    return {"psf_astig": astig, "trail_jump": jump}


def _draw_conditions(rng: np.random.Generator, label: str) -> dict[str, object]:
    """Physical parameters of one exposure, by class (the distributions overlap at the edges)."""
    c: dict[str, object] = {
        # Moffat wings from broad (beta 2) to nearly Gaussian (5); optics up to ~0.1 ellipticity.
        "beta": float(rng.uniform(2.0, 5.0)),
        "psf_ellip": float(rng.uniform(0.0, 0.1)),
        "psf_angle": float(rng.uniform(0.0, 180.0)),
        "trail_angle": float(rng.uniform(0.0, 180.0)),
        "sky_factor": float(np.exp(rng.normal(0.0, 0.25))),
        "sky_gradient": float(rng.uniform(0.0, 0.15)),
        "gradient_angle": float(rng.uniform(0.0, 360.0)),
        "transparency": float(rng.uniform(0.85, 1.0)),
    }
    if label == "B_SEEING":
        seeing = float(np.clip(np.exp(rng.normal(np.log(1.4), 0.2)), 1.0, 2.3))
    elif label == "GOOD":
        seeing = float(np.clip(rng.normal(0.72, 0.12), 0.48, 1.02))
    else:
        seeing = float(np.clip(rng.normal(0.75, 0.14), 0.5, 1.15))
    c["seeing"] = seeing
    fwhm_px = seeing / PIXEL_SCALE
    if label == "BT":
        c["trail_mode"] = "linear"
        c["trail_length"] = float(fwhm_px * np.exp(rng.uniform(np.log(1.2), np.log(5.0))))
    elif label == "RBT":
        mode = str(rng.choice(["walk", "walk+rotation"], p=[0.6, 0.4]))
        c["trail_mode"] = mode
        c["trail_length"] = float(fwhm_px * rng.uniform(11.0, 28.0))
        if "rotation" in mode:
            c["rotation"] = float(fwhm_px * rng.uniform(5.0, 15.0))
    else:
        # Good tracking still leaves a little smear, up to ~0.8 FWHM.
        c["trail_mode"] = "linear"
        c["trail_length"] = float(fwhm_px * rng.uniform(0.0, 0.8))
    if label == "BGP":
        moon, scatter, clouds = (rng.random(3) < [0.6, 0.4, 0.5]).tolist()
        if not (moon or scatter or clouds):
            moon = True
        if moon:
            c["sky_factor"] = float(np.exp(rng.uniform(np.log(3.0), np.log(30.0))))
            # From a uniformly bright sky (moon high) to a strong gradient (moon near the field).
            c["sky_gradient"] = float(rng.uniform(0.0, 2.0))
        if scatter:
            c["scatter"] = float(np.exp(rng.uniform(np.log(1.0), np.log(10.0))))
        if clouds:
            c["cloud_min"] = float(rng.uniform(0.05, 0.5))
            c["cloud_cover"] = float(rng.uniform(0.4, 1.0))
            c["transparency"] = float(rng.uniform(0.4, 0.9))
    return c


def _make_plan(
    night: str,
    index: int,
    expnum: int,
    date_obs: datetime,
    seed: int,
    weights: np.ndarray,
    rng: np.random.Generator,
) -> ExposurePlan:
    label = CLASSES[int(rng.choice(len(CLASSES), p=weights))]
    names = list(FILTERS)
    probs = np.array([FILTERS[n].weight for n in names])
    filt = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    exptime = _draw_exptime(rng)
    zenith = math.degrees(math.acos(1.0 / rng.uniform(1.0, 1.8)))
    airmass = round(1.0 / math.cos(math.radians(zenith)), 3)
    ra = round(float(rng.uniform(0.0, 360.0)), 5)
    dec = round(float(rng.uniform(-25.0, 75.0)), 5)
    obj = f"F{int(ra):03d}{int(round(dec)):+03d}"
    conditions = _draw_conditions(rng, label)
    conditions.update(_draw_instrument(np.random.default_rng([seed, expnum, 0x1257])))
    conditions.update(_draw_optics_and_jumps(np.random.default_rng([seed, expnum, 0x2A57]), label))
    return ExposurePlan(
        expnum=expnum,
        label=label,
        night=night,
        date_obs=date_obs,
        exptime=exptime,
        filter=filt,
        object=obj,
        airmass=airmass,
        seed=seed,
        ra=ra,
        dec=dec,
        **conditions,  # type: ignore[arg-type]
    )


def _exposure_rng(seed: int, night_date: date, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, night_date.toordinal(), index, 0x91A])


def plan_night(
    night: str,
    n_exposures: int,
    seed: int,
    class_mix: Mapping[str, float],
    first_expnum: int | None = None,
) -> list[ExposurePlan]:
    """Plan a night of exposures: labels, times, exposure numbers and observing conditions.

    Parameters
    ----------
    night : str
        Local observing night, ``YYYY-MM-DD`` (CFHT, HST = UTC-10; the night runs from about
        19:00 to 05:30 HST, ``date_obs`` is UTC).
    n_exposures : int
        Number of exposures, spread evenly (with jitter) through the night.
    seed : int
        Simulation seed (>= 0).
    class_mix : mapping of str to float
        Relative frequency of each class (keys from ``CLASSES``, need not sum to 1).
    first_expnum : int, optional
        Exposure number of the first exposure; by default a 7-digit number derived from the
        night and the seed.

    Returns
    -------
    list of ExposurePlan
        In time order, with increasing exposure numbers.

    Raises
    ------
    ValueError
        On a malformed night, a negative count or seed, or an invalid class mix.

    Examples
    --------
    >>> plans = plan_night("2024-03-01", 3, seed=1, class_mix={"GOOD": 1.0})
    >>> [p.label for p in plans]
    ['GOOD', 'GOOD', 'GOOD']
    """
    night_date = _parse_night(night)
    if n_exposures < 0:
        raise ValueError(f"n_exposures must be >= 0, got {n_exposures!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed!r}")
    weights = _class_weights(class_mix)
    start = _night_start_utc(night_date)
    base = _first_expnum(night_date, seed) if first_expnum is None else int(first_expnum)
    plans = []
    window = NIGHT_LENGTH.total_seconds()
    for i in range(n_exposures):
        rng = _exposure_rng(seed, night_date, i)
        offset = window * (i + 0.1 + 0.8 * rng.random()) / n_exposures
        date_obs = start + timedelta(seconds=round(offset, 1))
        plans.append(_make_plan(night, i, base + i, date_obs, seed, weights, rng))
    return plans


def _iter_plans(
    night: str, seed: int, class_mix: Mapping[str, float], first_expnum: int | None = None
) -> Iterator[ExposurePlan]:
    """Endless plans at the telescope's pace (exposure + readout); time wraps after the night."""
    night_date = _parse_night(night)
    weights = _class_weights(class_mix)
    start = _night_start_utc(night_date)
    base = _first_expnum(night_date, seed) if first_expnum is None else int(first_expnum)
    window = NIGHT_LENGTH.total_seconds()
    elapsed = 0.0
    index = 0
    while True:
        rng = _exposure_rng(seed, night_date, index)
        date_obs = start + timedelta(seconds=round(elapsed % window, 1))
        plan = _make_plan(night, index, base + index, date_obs, seed, weights, rng)
        elapsed += plan.exptime + READOUT_S
        index += 1
        yield plan


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


def _moffat_alpha(fwhm: float, beta: float) -> float:
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _rotated(x: np.ndarray, y: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    return x * c + y * s, -x * s + y * c


def _moffat_grid(
    n: int, step: float, fwhm: float, beta: float, ellip: float, angle: float
) -> np.ndarray:
    """Elliptical Moffat sampled on an ``n x n`` grid centred on the middle sample."""
    coords = (np.arange(n) - (n - 1) / 2.0) * step
    x, y = np.meshgrid(coords, coords)
    xr, yr = _rotated(x, y, angle)
    q = max(1.0 - ellip, 0.05)
    alpha = _moffat_alpha(fwhm, beta)
    r2 = (xr / (alpha / math.sqrt(q))) ** 2 + (yr / (alpha * math.sqrt(q))) ** 2
    return (1.0 + r2) ** (-beta)


@functools.cache
def _kolmogorov_profile() -> tuple[np.ndarray, np.ndarray]:
    """Radial profile of the long-exposure Kolmogorov PSF: (radius / FWHM, peak-normalised).

    The inverse Fourier transform of the atmospheric transfer function
    ``exp(-3.44 (f lambda / r0)**(5/3))`` on a 2048^2 grid with 16 samples per FWHM (FWHM ~
    0.976 lambda / r0), read along one axis; the radius is rescaled so that the half maximum
    lies at exactly 0.5 FWHM. Computed once per process (~0.3 s).
    """
    n, per_fwhm = 2048, 16.0
    lam_r0 = per_fwhm / 0.976  # samples
    f = np.fft.fftfreq(n)
    k = np.hypot(f[:, None], f[None, :])
    psf = np.fft.fftshift(np.fft.ifft2(np.exp(-3.44 * (k * lam_r0) ** (5.0 / 3.0))).real)
    prof = psf[n // 2, n // 2 :]
    prof = np.clip(prof / prof[0], 0.0, None)
    r = np.arange(prof.size) / per_fwhm
    i = int(np.argmax(prof < 0.5))
    r_half = r[i - 1] + (prof[i - 1] - 0.5) / (prof[i - 1] - prof[i]) * (r[i] - r[i - 1])
    return r * (0.5 / r_half), prof


def _psf_grid(
    n: int, step: float, fwhm: float, beta: float, ellip: float, angle: float, model: str
) -> np.ndarray:
    """Elliptical PSF of the plan's model sampled on an ``n x n`` grid (centred as Moffat's)."""
    if model == "moffat":
        return _moffat_grid(n, step, fwhm, beta, ellip, angle)
    coords = (np.arange(n) - (n - 1) / 2.0) * step
    x, y = np.meshgrid(coords, coords)
    xr, yr = _rotated(x, y, angle)
    q = max(1.0 - ellip, 0.05)
    r = np.hypot(xr * math.sqrt(q), yr / math.sqrt(q)) / fwhm
    radius, prof = _kolmogorov_profile()
    return np.interp(r, radius, prof, right=0.0)


def _deposit(step: float, path: np.ndarray) -> np.ndarray:
    """Bilinear deposit of equally weighted path points (pixels) on a grid of odd size.

    The grid has spacing ``step`` and its origin at the central sample; the result sums to 1.
    """
    half = int(math.ceil(np.max(np.abs(path)) / step)) + 1
    n = 2 * half + 1
    img = np.zeros(n * n, dtype=np.float64)
    gx = path[:, 0] / step + half
    gy = path[:, 1] / step + half
    ix = np.floor(gx).astype(np.int64)
    iy = np.floor(gy).astype(np.int64)
    fx = gx - ix
    fy = gy - iy
    for dy, dx, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        yy = np.clip(iy + dy, 0, n - 1)
        xx = np.clip(ix + dx, 0, n - 1)
        img += np.bincount(yy * n + xx, weights=w, minlength=n * n)
    return img.reshape(n, n) / img.sum()


def _convolve_same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Linear convolution of ``a`` with ``b`` (odd size, origin at its centre), ``a``-shaped."""
    na, nb = a.shape[0], b.shape[0]
    size = na + nb - 1
    size += size % 2
    full = np.fft.irfft2(
        np.fft.rfft2(a, (size, size)) * np.fft.rfft2(b, (size, size)), (size, size)
    )
    h = nb // 2
    out = full[h : h + na, h : h + na]
    return np.clip(out, 0.0, None)


def _bin(img: np.ndarray, os_: int) -> np.ndarray:
    n = img.shape[0] // os_
    return img[: n * os_, : n * os_].reshape(n, os_, n, os_).sum(axis=(1, 3))


@dataclass
class _KernelSet:
    """Pixel kernels of one CCD region: compact with sub-pixel phases, wide, galaxy templates."""

    oversample: int
    core: list[np.ndarray]  # index qy * os + qx, phases q in [-os/2, os/2)
    core_half: int
    wide: np.ndarray
    wide_half: int
    galaxies: list[np.ndarray]
    galaxy_half: list[int]


def _path_extent(path: np.ndarray | None) -> float:
    if path is None or len(path) == 0:
        return 0.0
    return float(np.max(np.abs(path)))


def _build_kernels(
    fwhm: float,
    beta: float,
    ellip: float,
    angle: float,
    path: np.ndarray | None,
    galaxy_shapes: np.ndarray,
    model: str = "moffat",
) -> _KernelSet:
    """Build the kernels of one region: PSF (``model``) convolved with the tracking path."""
    extent = _path_extent(path)
    core_half = min(_MAX_HALF, int(math.ceil(3.0 * fwhm + extent + 2)))
    os_ = 4 if core_half <= 24 else 2 if core_half <= 60 else 1
    n = (2 * core_half + 1) * os_
    step = 1.0 / os_
    psf = _psf_grid(n, step, fwhm, beta, ellip, angle, model)
    if path is not None and extent > 0.05:
        psf = _convolve_same(psf, _deposit(step, path))
    # The oversampled grid is centred on the centre of pixel h; phase q (a sub-pixel shift of
    # q/os, q in [-os/2, os/2)) is a roll by q samples before binning.
    core: list[np.ndarray] = []
    for qy in range(-(os_ // 2), os_ - os_ // 2):
        for qx in range(-(os_ // 2), os_ - os_ // 2):
            shifted = np.roll(psf, (qy, qx), (0, 1))
            k = _bin(shifted, os_)
            core.append((k / k.sum()).astype(np.float32))
    # Phase-0 pixel kernel for galaxies and the wide kernel.
    pix0 = core[(os_ // 2) * os_ + (os_ // 2)].astype(np.float64)
    wide_half = min(_MAX_HALF, int(math.ceil(12.0 * fwhm + extent + 2)))
    nw = 2 * wide_half + 1
    wide = _psf_grid(nw, 1.0, fwhm, beta, ellip, angle, model)
    if path is not None and extent > 0.05:
        wide = _convolve_same(wide, _deposit(1.0, path))
    wide = (wide / wide.sum()).astype(np.float32)
    galaxies: list[np.ndarray] = []
    galaxy_half: list[int] = []
    for size, q, pa, profile in galaxy_shapes:
        extra = int(math.ceil(_GALAXY_EXTENT[int(profile)] * size))
        gh = min(_MAX_HALF, core_half + extra)
        coords = np.arange(2 * extra + 1, dtype=np.float64) - extra
        x, y = np.meshgrid(coords, coords)
        xr, yr = _rotated(x, y, pa)
        gal = _galaxy_profile(np.hypot(xr / size, yr / (size * q)), int(profile))
        padded = np.pad(pix0, extra)
        g = _convolve_same(padded, gal / gal.sum())
        if gh < core_half + extra:
            cut = core_half + extra - gh
            g = g[cut:-cut, cut:-cut]
        galaxies.append((g / g.sum()).astype(np.float32))
        galaxy_half.append(gh)
    return _KernelSet(os_, core, core_half, wide, wide_half, galaxies, galaxy_half)


# --------------------------------------------------------------------------------------------
# Exposure-level context (shared by all CCDs; deterministic from the plan)
# --------------------------------------------------------------------------------------------


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


def _interp_matrix(n_out: int, coarse: np.ndarray) -> np.ndarray:
    """Dense linear-interpolation matrix (n_out x len(coarse)) from coarse nodes to pixels."""
    pix = np.arange(n_out, dtype=np.float64)
    idx = np.clip(np.searchsorted(coarse, pix, side="right") - 1, 0, len(coarse) - 2)
    frac = (pix - coarse[idx]) / (coarse[idx + 1] - coarse[idx])
    m = np.zeros((n_out, len(coarse)), dtype=np.float32)
    m[np.arange(n_out), idx] = 1.0 - frac
    m[np.arange(n_out), idx + 1] = frac
    return m


# --------------------------------------------------------------------------------------------
# CCD rendering
# --------------------------------------------------------------------------------------------


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
        _add_cosmic_rays(rng, signal, plan.exptime, meta.gain)
    np.clip(signal, 0.0, meta.saturate, out=signal)
    np.rint(signal, out=signal)
    return signal.astype(np.uint16), meta


_GALAXY_EXTENT = (3.5, 6.0, 8.0)
"""Stamp half-size, in units of the profile's size, of each galaxy profile."""


def _galaxy_profile(r: np.ndarray, profile: int) -> np.ndarray:
    """Galaxy surface brightness at elliptical radius ``r`` (in units of the profile's size):
    0 Gaussian (``size`` = sigma), 1 exponential disc (``size`` = scale length), 2 de
    Vaucouleurs (Sersic n = 4; ``size`` = effective radius / 4, its core as compact as an
    exponential's)."""
    if profile == 0:
        return np.exp(-0.5 * r**2)
    if profile == 1:
        return np.exp(-r)
    return np.exp(-7.669 * ((r / 4.0) ** 0.25 - 1.0)) * (r <= 8.0)


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
    plan = ctx.plan
    height, width = signal.shape
    filt = FILTERS[plan.filter]
    ry, rx = _regions(ctx.geometry)
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
    kernels: list[np.ndarray] = []
    halves: list[int] = []
    region_core: dict[tuple[int, int], tuple[int, int]] = {}  # -> (first core id, os)
    region_wide: dict[tuple[int, int], int] = {}
    region_gal: dict[tuple[int, int], int] = {}
    max_half = 0
    for j in range(ry):
        for i in range(rx):
            u, v = to_uv((i + 0.5) * width / rx, (j + 0.5) * height / ry)
            fwhm = _fwhm_at(ctx, u, v)
            path = _trail_path(ctx, u, v, fwhm)
            ellip, angle = _psf_shape_at(plan, u, v)
            ks = _build_kernels(fwhm, plan.beta, ellip, angle, path, galaxy_shapes, plan.psf_model)
            region_core[j, i] = (len(kernels), ks.oversample)
            kernels.extend(ks.core)
            halves.extend([ks.core_half] * len(ks.core))
            region_wide[j, i] = len(kernels)
            kernels.append(ks.wide)
            halves.append(ks.wide_half)
            region_gal[j, i] = len(kernels)
            kernels.extend(ks.galaxies)
            halves.extend(ks.galaxy_half)
            max_half = max(max_half, ks.core_half)

    # Source magnitudes: power law between _M_BRIGHT and a faint limit ~1 mag below detection.
    sky_adu = filt.sky_rate * plan.exptime * plan.sky_factor
    sigma = math.sqrt(sky_adu / meta.gain + (meta.rdnoise / meta.gain) ** 2)
    fwhm0 = plan.seeing / PIXEL_SCALE
    zp = filt.zero_point + 2.5 * math.log10(plan.exptime)
    zp -= filt.extinction * (plan.airmass - 1.0) - 2.5 * math.log10(plan.transparency)
    # Sources whose peak would stay below ~0.08 sigma are invisible even in crowds: skip them.
    peak = float(
        np.median([kernels[k0 + (os_ // 2) * (os_ + 1)].max() for k0, os_ in region_core.values()])
    )
    flux_min = 0.08 * sigma / peak
    m_faint = min(zp - 2.5 * math.log10(flux_min), 28.0)
    margin = max_half
    area = (width + 2 * margin) * (height + 2 * margin)
    n_exp = (
        _N_REF
        * area
        / _REF_CCD_AREA
        * (10 ** (_COUNT_SLOPE * (m_faint - _REF_DENSITY_MAG)) - 10 ** (_COUNT_SLOPE * (13 - 24)))
    )
    n = int(rng.poisson(max(n_exp, 0.0)))
    if n == 0:
        return
    lo, hi = 10 ** (_COUNT_SLOPE * _M_BRIGHT), 10 ** (_COUNT_SLOPE * m_faint)
    mag = np.log10(lo + rng.random(n) * (hi - lo)) / _COUNT_SLOPE
    x = rng.uniform(-margin, width + margin, n)
    y = rng.uniform(-margin, height + margin, n)
    # Clustering: a fraction of the sources are close companions of another (pairs, groups,
    # clumpy galaxies), so that a realistic share of detections comes out blended.
    comp = np.nonzero(rng.random(n) < _COMPANION_FRACTION)[0]
    parent = rng.integers(0, n, comp.size)
    sep_px = fwhm0 * rng.uniform(1.0, 4.0, comp.size)
    theta = rng.uniform(0.0, 2.0 * math.pi, comp.size)
    x[comp] = x[parent] + sep_px * np.cos(theta)
    y[comp] = y[parent] + sep_px * np.sin(theta)
    mag[comp] = mag[parent] + rng.uniform(-0.5, 2.0, comp.size)
    u, v = to_uv(x, y)
    _, trans = _fields(ctx, u, v)
    flux = 10 ** (-0.4 * (mag - zp)) * trans
    p_gal = np.clip(0.15 + 0.12 * (mag - 18.0), 0.1, 0.75)
    is_gal = rng.random(n) < p_gal
    gal_tpl = _galaxy_templates(rng, mag, half_light)
    reg_y = np.clip((y * ry / height).astype(np.int64), 0, ry - 1)
    reg_x = np.clip((x * rx / width).astype(np.int64), 0, rx - 1)
    core0 = np.empty(n, dtype=np.int64)
    osa = np.empty(n, dtype=np.int64)
    wide0 = np.empty(n, dtype=np.int64)
    gal0 = np.empty(n, dtype=np.int64)
    for (j, i), (k0, os_) in region_core.items():
        sel = (reg_y == j) & (reg_x == i)
        core0[sel], osa[sel] = k0, os_
        wide0[sel] = region_wide[j, i]
        gal0[sel] = region_gal[j, i]
    # Nearest sub-pixel phase: centre pixel ix, phase q in [-os/2, os/2).
    qx_all = np.rint(x * osa).astype(np.int64)
    qy_all = np.rint(y * osa).astype(np.int64)
    ix = np.floor_divide(qx_all + osa // 2, osa)
    iy = np.floor_divide(qy_all + osa // 2, osa)
    qx = qx_all - ix * osa + osa // 2
    qy = qy_all - iy * osa + osa // 2
    kid = core0 + qy * osa + qx
    peak_core = flux * np.array([kernels[k].max() for k in range(len(kernels))])[kid]
    bright = (peak_core > 0.3 * meta.saturate) & ~is_gal
    kid = np.where(bright, wide0, kid)
    kid = np.where(is_gal, gal0 + gal_tpl, kid)
    ix = np.where(is_gal | bright, np.rint(x).astype(np.int64), ix)
    iy = np.where(is_gal | bright, np.rint(y).astype(np.int64), iy)
    half = np.asarray(halves)[kid]
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
    # Bleed trails: the charge above saturation spills along the column through the star.
    for s in np.nonzero(bright & keep)[0].tolist():
        k = kernels[kid[s]]
        excess = float(np.clip(flux[s] * k - meta.saturate, 0.0, None).sum())
        if excess <= 0 or not (0 <= ix[s] < width):
            continue
        h = halves[kid[s]]
        col = flux[s] * k[:, h]
        rows = np.nonzero(col > meta.saturate)[0]
        if rows.size == 0:
            rows = np.array([h])
        spill = int(min(excess / meta.saturate / 2.0, 600))
        top = max(int(iy[s]) - h + int(rows.min()) - spill, 0)
        bottom = min(int(iy[s]) - h + int(rows.max()) + spill + 1, height)
        signal[top:bottom, int(ix[s])] = 2.0 * meta.saturate


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
    rng: np.random.Generator, signal: np.ndarray, exptime: float, gain: float
) -> None:
    height, width = signal.shape
    n = int(rng.poisson(_CR_RATE * exptime * height * width))
    if n == 0:
        return
    y = rng.integers(1, height - 3, n)
    x = rng.integers(1, width - 3, n)
    amp = np.exp(rng.normal(np.log(1500.0), 0.8, n)) / gain
    length = rng.integers(1, 4, n)
    dy = rng.integers(-1, 2, n)
    dx = rng.integers(-1, 2, n)
    for step in range(3):
        on = length > step
        frac = rng.uniform(0.3, 1.0, n)
        signal[y[on] + step * dy[on], x[on] + step * dx[on]] += (amp * frac)[on]


# --------------------------------------------------------------------------------------------
# FITS assembly and delivery
# --------------------------------------------------------------------------------------------


def _primary_header(plan: ExposurePlan, geometry: Geometry) -> fits.Header:
    h = fits.Header()
    h["INSTRUME"] = ("MegaPrime", "simulated CFHT MegaCam")
    h["TELESCOP"] = "CFHT 3.6m"
    h["OBSTYPE"] = "OBJECT"
    h["EXPNUM"] = (plan.expnum, "exposure number")
    h["OBJECT"] = plan.object
    h["FILTER"] = plan.filter
    h["EXPTIME"] = (float(plan.exptime), "exposure time [s]")
    h["DATE-OBS"] = (_isot(plan.date_obs), "start of exposure, UTC")
    h["AIRMASS"] = float(plan.airmass)
    h["RA"] = (float(plan.ra), "pointing RA [deg]")
    h["DEC"] = (float(plan.dec), "pointing Dec [deg]")
    h["PIXSCAL"] = (PIXEL_SCALE, "arcsec per pixel")
    h["NEXTEND"] = (geometry.n_ccd, "number of image extensions")
    h["SIMCLASS"] = (plan.label, "simulation truth: image-quality class")
    h["SIMSEED"] = (plan.seed, "simulation seed")
    h["SIMSEEIN"] = (round(plan.seeing, 4), "truth: FWHM at field centre [arcsec]")
    h["SIMBETA"] = (round(plan.beta, 4), "truth: Moffat beta")
    h["SIMPSF"] = (plan.psf_model, "truth: PSF model")
    h["SIMAMP"] = (round(plan.amp_offset, 3), "truth: amplifier offset scale [ADU]")
    h["SIMTRMOD"] = (plan.trail_mode, "truth: tracking error model")
    h["SIMJUMP"] = (round(plan.trail_jump, 3), "truth: exposure fraction after a jump")
    h["SIMASTIG"] = (round(plan.psf_astig, 4), "truth: PSF ellipticity at r=1 (astig)")
    h["SIMTRAIL"] = (round(plan.trail_length, 3), "truth: trail / walk length [px]")
    h["SIMTRANG"] = (round(plan.trail_angle, 3), "truth: trail direction [deg]")
    h["SIMROT"] = (round(plan.rotation, 3), "truth: rotation trail at r=1 [px]")
    h["SIMSKY"] = (round(plan.sky_factor, 4), "truth: sky factor vs dark sky")
    h["SIMGRAD"] = (round(plan.sky_gradient, 4), "truth: ln sky gradient across field")
    h["SIMSCAT"] = (round(plan.scatter, 4), "truth: scattered light amplitude")
    h["SIMCLOUD"] = (round(plan.cloud_min, 4), "truth: min cloud transmission")
    h["SIMCOVER"] = (round(plan.cloud_cover, 4), "truth: cloud cover fraction")
    h["SIMTRANS"] = (round(plan.transparency, 4), "truth: transparency")
    return h


def _isot(when: datetime) -> str:
    when = when.astimezone(UTC) if when.tzinfo else when
    tenths = round(when.microsecond / 100_000)
    base = when.replace(microsecond=0) + timedelta(seconds=tenths // 10)
    return f"{base:%Y-%m-%dT%H:%M:%S}.{tenths % 10}"


def render_exposure(plan: ExposurePlan, geometry: Geometry) -> fits.HDUList:
    """Render one exposure as a MegaCam-like multi-extension FITS in memory.

    Parameters
    ----------
    plan : ExposurePlan
        What to render (see :func:`plan_night`).
    geometry : Geometry
        Number and shape of the CCDs.

    Returns
    -------
    astropy.io.fits.HDUList
        An empty PRIMARY HDU (exposure and truth headers) and ``geometry.n_ccd`` uint16 image
        extensions ``ccd00``, ``ccd01``... (written as int16 with ``BZERO = 32768``).

    Examples
    --------
    >>> plan = plan_night("2024-03-01", 1, seed=1, class_mix={"GOOD": 1.0})[0]
    >>> hdul = render_exposure(plan, Geometry(2, 256, 256))
    >>> len(hdul), hdul[1].data.dtype
    (3, dtype('uint16'))
    """
    t0 = time.perf_counter()
    ctx = _context(plan, geometry)
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [
        fits.PrimaryHDU(header=_primary_header(plan, geometry))
    ]
    for ccd in range(geometry.n_ccd):
        data, meta = _render_ccd(ctx, ccd)
        name = f"ccd{ccd:02d}"
        hdr = fits.Header()
        hdr["EXTNAME"] = name
        hdr["CCDNAME"] = name
        hdr["IMAGEID"] = (ccd, "CCD index")
        hdr["EXPNUM"] = plan.expnum
        hdr["GAIN"] = (meta.gain, "e-/ADU")
        hdr["RDNOISE"] = (meta.rdnoise, "read noise [e-]")
        hdr["SATURATE"] = (meta.saturate, "saturation level [ADU]")
        hdr["BIASLVL"] = (meta.bias, "bias pedestal [ADU]")
        hdr["SIMDEAD"] = (meta.dead, "truth: dead CCD")
        hdus.append(fits.ImageHDU(data=data, header=hdr))
    log.debug(
        "rendered exposure %d (%s, %d CCDs) in %.2f s",
        plan.expnum,
        plan.label,
        geometry.n_ccd,
        time.perf_counter() - t0,
    )
    return fits.HDUList(hdus)


def exposure_bytes(plan: ExposurePlan, geometry: Geometry) -> bytes:
    """The exact bytes of the exposure's FITS file (deterministic for a given plan).

    Parameters
    ----------
    plan : ExposurePlan
    geometry : Geometry

    Returns
    -------
    bytes
        The complete FITS file, a multiple of 2880 bytes.

    Examples
    --------
    >>> plan = plan_night("2024-03-01", 1, seed=1, class_mix={"GOOD": 1.0})[0]
    >>> len(exposure_bytes(plan, Geometry(1, 128, 128))) % 2880
    0
    """
    buf = io.BytesIO()
    render_exposure(plan, geometry).writeto(buf)
    return buf.getvalue()


def write_exposure(plan: ExposurePlan, geometry: Geometry, path: str | os.PathLike) -> Path:
    """Render an exposure and write it atomically (temporary name, then ``os.replace``).

    Parameters
    ----------
    plan : ExposurePlan
    geometry : Geometry
    path : path-like
        Destination file; its directory is created if needed.

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> plan = plan_night("2024-03-01", 1, seed=1, class_mix={"GOOD": 1.0})[0]
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_exposure(plan, Geometry(1, 128, 128), d / plan.filename).exists()
    True
    """
    path = Path(path)
    atomic_write_bytes(path, exposure_bytes(plan, geometry))
    return path


def _merge_labels(labels_path: Path, new: Mapping[str, str]) -> None:
    """Merge exposure labels into ``labels.csv`` (sorted by id, rewritten atomically)."""
    rows: dict[str, str] = {}
    if labels_path.exists():
        with labels_path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("exposure_id"):
                    rows[row["exposure_id"]] = row.get("label", "")
    rows.update(new)

    def key(eid: str) -> tuple[int, int, str]:
        return (0, int(eid), "") if eid.isdigit() else (1, 0, eid)

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LABELS_HEADER)
    for eid in sorted(rows, key=key):
        writer.writerow([eid, rows[eid]])
    atomic_write_text(labels_path, buf.getvalue())


def simulate_archive(
    out_dir: str | os.PathLike,
    nights: Sequence[str],
    exposures_per_night: int,
    geometry: Geometry,
    seed: int,
    class_mix: Mapping[str, float],
    progress: Callable[[int, int, Path], None] | None = None,
) -> list[Path]:
    """Write an archive of labelled exposures: ``out_dir/<night>/<expnum>o.fits``.

    ``out_dir/labels.csv`` (header ``exposure_id,label``) is merged with what is already there
    after each night, so calls for other nights accumulate.

    Parameters
    ----------
    out_dir : path-like
        Archive root (created if needed).
    nights : sequence of str
        Observing nights, ``YYYY-MM-DD``.
    exposures_per_night : int
        Exposures per night.
    geometry : Geometry
    seed : int
        Simulation seed.
    class_mix : mapping of str to float
        Relative class frequencies.
    progress : callable, optional
        Called as ``progress(done, total, path)`` after each file.

    Returns
    -------
    list of pathlib.Path
        The files written, in order.

    Examples
    --------
    >>> import tempfile
    >>> paths = simulate_archive(tempfile.mkdtemp(), ["2024-03-01"], 1, Geometry(1, 128, 128),
    ...                          seed=1, class_mix={"BT": 1.0})
    >>> paths[0].name.endswith("o.fits")
    True
    """
    out = Path(out_dir)
    plans = [plan_night(night, exposures_per_night, seed, class_mix) for night in nights]
    total = sum(len(p) for p in plans)
    paths: list[Path] = []
    for night, night_plans in zip(nights, plans, strict=True):
        for plan in night_plans:
            path = write_exposure(plan, geometry, out / night / plan.filename)
            paths.append(path)
            log.info("wrote %s (%s)", path, plan.label)
            if progress is not None:
                progress(len(paths), total, path)
        _merge_labels(out / LABELS_FILE, {p.exposure_id: p.label for p in night_plans})
    return paths


def write_progressively(
    data: bytes,
    path: str | os.PathLike,
    chunks: int,
    duration_s: float,
    on_chunk: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Write ``data`` to ``path`` in pieces spread over ``duration_s``, like a slow transfer.

    The first piece is written at once and the last after ``duration_s``; each piece is
    flushed before ``on_chunk(pieces_written, chunks)`` is called. If ``stop`` is set, the rest
    is written at once so that no truncated file is left behind.

    Parameters
    ----------
    data : bytes
        The complete file content.
    path : path-like
        Destination (written in place, not atomically: readers can see a partial file).
    chunks : int
        Number of pieces (>= 1).
    duration_s : float
        Duration of the whole transfer, seconds (>= 0).
    on_chunk : callable, optional
        Called as ``on_chunk(i, chunks)`` after piece ``i`` (1-based) is on disk.
    stop : threading.Event, optional
        Cuts the waits short.

    Raises
    ------
    ValueError
        If ``chunks < 1`` or ``duration_s < 0``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> write_progressively(b"abcdef", p, chunks=3, duration_s=0.0)
    >>> p.read_bytes()
    b'abcdef'
    """
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks!r}")
    if not duration_s >= 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bounds = [len(data) * i // chunks for i in range(chunks + 1)]
    start = time.monotonic()
    hurry = False
    view = memoryview(data)
    with path.open("wb") as fh:
        for i in range(chunks):
            if i > 0 and not hurry:
                due = start + duration_s * i / (chunks - 1)
                remaining = due - time.monotonic()
                if remaining > 0:
                    if stop is not None:
                        hurry = stop.wait(remaining)
                    else:
                        time.sleep(remaining)
            fh.write(view[bounds[i] : bounds[i + 1]])
            fh.flush()
            if on_chunk is not None:
                on_chunk(i + 1, chunks)


def run_telescope(
    drop_dir: str | os.PathLike,
    n_exposures: int | None,
    geometry: Geometry,
    seed: int,
    class_mix: Mapping[str, float],
    cadence_s: float,
    transfer_s: float,
    transfer_chunks: int,
    night: str,
    stop: threading.Event | None = None,
    progress: Callable[[int, int, Path], None] | None = None,
) -> list[Path]:
    """Act as the telescope: deliver one exposure every ``cadence_s`` into a drop directory.

    Each exposure is rendered ahead of its slot, then written progressively (over
    ``transfer_s`` in ``transfer_chunks`` pieces) directly at ``drop_dir/<night>/<expnum>o.fits``,
    after which its label is merged into ``drop_dir/labels.csv``.

    Parameters
    ----------
    drop_dir : path-like
        The data drop.
    n_exposures : int or None
        How many exposures; ``None`` runs until ``stop`` is set.
    geometry : Geometry
    seed : int
    class_mix : mapping of str to float
    cadence_s : float
        Seconds between the starts of two deliveries (a slow render or transfer delays the next).
    transfer_s : float
        Duration of one file's transfer.
    transfer_chunks : int
        Pieces per transfer.
    night : str
        Observing night, ``YYYY-MM-DD``.
    stop : threading.Event, optional
        Set it to stop promptly (a transfer in progress is completed at once).
    progress : callable, optional
        ``progress(done, total, path)`` after each delivery; ``total`` is 0 when unbounded.

    Returns
    -------
    list of pathlib.Path
        The files delivered.

    Raises
    ------
    ValueError
        If ``n_exposures`` is None without a ``stop`` event, or a timing argument is negative.

    Examples
    --------
    >>> import tempfile
    >>> paths = run_telescope(tempfile.mkdtemp(), 1, Geometry(1, 128, 128), 1, {"GOOD": 1},
    ...                       cadence_s=0.0, transfer_s=0.0, transfer_chunks=2, night="2024-03-01")
    >>> len(paths)
    1
    """
    if n_exposures is None and stop is None:
        raise ValueError("n_exposures=None runs until stopped: pass a stop event")
    if n_exposures is not None and n_exposures < 0:
        raise ValueError(f"n_exposures must be >= 0 or None, got {n_exposures!r}")
    if not cadence_s >= 0 or not transfer_s >= 0:
        raise ValueError(f"cadence_s and transfer_s must be >= 0, got {cadence_s}, {transfer_s}")
    if transfer_chunks < 1:
        raise ValueError(f"transfer_chunks must be >= 1, got {transfer_chunks!r}")
    drop = Path(drop_dir)
    plans: Iterator[ExposurePlan] | list[ExposurePlan]
    plans = (
        plan_night(night, n_exposures, seed, class_mix)
        if n_exposures is not None
        else _iter_plans(night, seed, class_mix)
    )
    total = n_exposures or 0
    stop = stop or threading.Event()
    written: list[Path] = []
    start = time.monotonic()
    for k, plan in enumerate(plans):
        if stop.is_set():
            break
        data = exposure_bytes(plan, geometry)
        wait = start + k * cadence_s - time.monotonic()
        if wait > 0 and stop.wait(wait):
            break
        if wait < -cadence_s:
            log.warning("telescope is %.1f s behind its cadence", -wait)
        path = drop / night / plan.filename
        write_progressively(data, path, transfer_chunks, transfer_s, stop=stop)
        _merge_labels(drop / LABELS_FILE, {plan.exposure_id: plan.label})
        written.append(path)
        log.info("delivered %s (%s)", path, plan.label)
        if progress is not None:
            progress(len(written), total, path)
    return written
