"""The simulated MegaCam's instrument and nights: geometry, filters, and what each exposure is.

:class:`Geometry` and its presets (``GEOMETRIES``, :func:`resolve_geometry`) say how many CCDs
and of what shape, and where each sits on the focal plane; ``FILTERS`` hold the zero points
and sky rates. :func:`plan_night` draws one :class:`ExposurePlan` per exposure (class label,
exposure time, filter, seeing, tracking, sky...) from random streams seeded by the night, the
seed and the exposure's index, so the same arguments always give the same plans.
:mod:`skygrade.streamer.sky_render` turns a plan into pixels; :mod:`skygrade.streamer.telescope`
delivers them.

The class parameter distributions overlap at their edges, as the real grades do.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np

from skygrade.models.classes import CLASSES
from skygrade.ops.config import TelescopeConfig

PIXEL_SCALE = 0.187
"""MegaCam pixel scale, arcsec per pixel."""

READOUT_S = 40.0
"""Readout and overhead between two exposures, seconds."""

HST_OFFSET = timedelta(hours=-10)
NIGHT_START_HST = timedelta(hours=19)
NIGHT_LENGTH = timedelta(hours=10, minutes=30)

_CCD_GAP_PX = 80


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
    weight: float  # how often it is used, among filters of its kind (broad or narrow band)
    narrow: bool = False  # a narrow-band filter (drawn for NARROW_BAND_FRACTION of exposures)


FILTERS: dict[str, _Filter] = {
    f.name: f
    for f in (
        _Filter("u.MP9301", 25.3, 1.5, 0.35, 0.10),
        _Filter("g.MP9401", 26.0, 4.0, 0.17, 0.20),
        _Filter("r.MP9601", 26.3, 10.0, 0.10, 0.30),
        _Filter("i.MP9701", 26.6, 17.0, 0.05, 0.25),
        _Filter("z.MP9801", 26.2, 25.0, 0.04, 0.15),
        # MegaCam's narrow-band filters pass ~10 nm, against 70-150 nm for the broad bands
        # around them (u, g, r): zero points ~2-3 mag fainter and skies 7-15x darker, so a long
        # narrow-band exposure holds few sources over a faint sky, and its cosmic rays stand out
        # (CaHK: the Pristine survey's metallicity filter).
        _Filter("CaHK.MP9303", 23.3, 0.20, 0.25, 0.5, narrow=True),
        _Filter("Ha.MP9603", 23.4, 0.80, 0.08, 0.3, narrow=True),
        _Filter("OIII.MP9501", 23.1, 0.27, 0.15, 0.2, narrow=True),
    )
}

NARROW_BAND_FRACTION: float = TelescopeConfig().narrow_band
"""Default share of exposures taken through a narrow-band filter (``telescope.narrow_band``).
Which exposures are narrow-band comes from a random stream of their own, so the broad-band
exposures' plans do not depend on it, and those narrow-band at a smaller share stay so at a
larger one."""

NARROW_BAND_EXPTIME_S = (120.0, 1200.0)
"""Range of narrow-band exposure times (log-uniform): minutes, for a sky 10x darker."""

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
        Ground-truth class, one of ``skygrade.models.classes.CLASSES``.
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


def _draw_filter(rng: np.random.Generator, narrow: bool) -> str:
    """A broad-band (or narrow-band) filter name, by the filters' weights."""
    names = [n for n, f in FILTERS.items() if f.narrow == narrow]
    probs = np.array([FILTERS[n].weight for n in names])
    return names[int(rng.choice(len(names), p=probs / probs.sum()))]


def _check_narrow_band(share: float) -> None:
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"narrow_band must be in [0, 1], got {share!r}")


def _draw_narrow_band(rng: np.random.Generator, fraction: float) -> tuple[str, float] | None:
    """``(filter, exptime)`` for the share ``fraction`` of exposures taken through a narrow-band
    filter, else None; ``rng`` is the exposure's own narrow-band stream."""
    if not rng.random() < fraction:
        return None
    low, high = NARROW_BAND_EXPTIME_S
    filt = _draw_filter(rng, narrow=True)
    return filt, float(np.round(np.exp(rng.uniform(np.log(low), np.log(high)))))


def _draw_exptime(rng: np.random.Generator) -> float:
    # Broad-band MegaCam exposures run from 5 s snapshots (standards, twilight) to 20 minutes
    # (narrow-band times: _draw_narrow_band).
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
    # A quarter of the severe tracking failures are jumps (a wind gust, a guide-star swap): the
    # mount holds, jumps, holds again, and every source is doubled. A doubled sky is RBT
    # (random, severe bad tracking), never BT: BT is every star trailed along one direction.
    jump = float(rng.uniform(0.2, 0.5)) if label == "RBT" and rng.random() < 0.25 else 0.0
    return {"psf_astig": astig, "trail_jump": jump}


OVERCAST_SHARE = 0.4
"""Share of cloudy BGP exposures taken through an even overcast rather than patchy cloud."""


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
            if rng.random() < OVERCAST_SHARE:
                # Overcast: a thick, nearly even deck takes 1-3.5 mag off every source and
                # leaves the sky and the cosmic rays as they were, so a long exposure's
                # brightest isolated detections are cosmic rays (the real BGP catalogs:
                # docs/model.md item 15).
                c["transparency"] = float(np.exp(rng.uniform(np.log(0.04), np.log(0.4))))
                c["cloud_min"] = float(rng.uniform(0.6, 0.9))
                c["cloud_cover"] = 1.0
    return c


def _make_plan(
    night: str,
    index: int,
    expnum: int,
    date_obs: datetime,
    seed: int,
    weights: np.ndarray,
    rng: np.random.Generator,
    narrow_band: float = NARROW_BAND_FRACTION,
) -> ExposurePlan:
    label = CLASSES[int(rng.choice(len(CLASSES), p=weights))]
    filt = _draw_filter(rng, narrow=False)
    exptime = _draw_exptime(rng)
    narrow = _draw_narrow_band(np.random.default_rng([seed, expnum, 0x4EB]), narrow_band)
    if narrow is not None:
        filt, exptime = narrow
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
    narrow_band: float = NARROW_BAND_FRACTION,
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
    narrow_band : float, optional
        Share of exposures taken through a narrow-band filter (0-1; default
        :data:`NARROW_BAND_FRACTION`).

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
    _check_narrow_band(narrow_band)
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
        plans.append(_make_plan(night, i, base + i, date_obs, seed, weights, rng, narrow_band))
    return plans


def _iter_plans(
    night: str,
    seed: int,
    class_mix: Mapping[str, float],
    first_expnum: int | None = None,
    narrow_band: float = NARROW_BAND_FRACTION,
) -> Iterator[ExposurePlan]:
    """Endless plans at the telescope's pace (exposure + readout); time wraps after the night."""
    night_date = _parse_night(night)
    _check_narrow_band(narrow_band)
    weights = _class_weights(class_mix)
    start = _night_start_utc(night_date)
    base = _first_expnum(night_date, seed) if first_expnum is None else int(first_expnum)
    window = NIGHT_LENGTH.total_seconds()
    elapsed = 0.0
    index = 0
    while True:
        rng = _exposure_rng(seed, night_date, index)
        date_obs = start + timedelta(seconds=round(elapsed % window, 1))
        plan = _make_plan(night, index, base + index, date_obs, seed, weights, rng, narrow_band)
        elapsed += plan.exptime + READOUT_S
        index += 1
        yield plan
