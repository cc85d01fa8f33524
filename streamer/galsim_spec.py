"""What one exposure of the GalSim renderer looks like, drawn before any pixel (issue 20).

:class:`Mosaic` is the focal plane (CCD count and shape, each CCD's centre in normalised
focal-plane coordinates); :func:`draw_spec` draws one :class:`ExposureSpec` (filter, exposure
time, PSF, tracking, sky, the ``BGP`` modes...) per exposure by class, and :func:`plan_archive`
the specs of an archive's nights. :func:`transmission` and :func:`sky_field` are the spec's
fields over the focal plane. :mod:`skygrade.streamer.galsim_ccd` draws the pixels; see
:mod:`skygrade.streamer.galsim_render` for what this renderer is for (evaluation only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np

from skygrade.models.classes import CLASSES

__all__ = [
    "FILTERS",
    "FULL_CCD_SHAPE",
    "PIXEL_SCALE",
    "ExposureSpec",
    "Mosaic",
    "draw_spec",
    "plan_archive",
    "sky_field",
    "transmission",
]

PIXEL_SCALE = 0.187
"""arcsec per pixel."""
FULL_CCD_SHAPE = (2048, 4612)
"""MegaCam CCD (width, height) in pixels."""
FULL_N_CCD = 36
FIELD_HALF_ARCSEC = 1720.0
"""Half the width of the MegaCam field, arcsec: normalised focal-plane coordinates map to it."""
CCD_AREA_DEG2 = FULL_CCD_SHAPE[0] * FULL_CCD_SHAPE[1] * (PIXEL_SCALE / 3600.0) ** 2

# name: (wavelength nm, zero point [mag giving 1 e-/s], dark sky [mag/arcsec^2], extinction/airmass)
FILTERS: dict[str, tuple[float, float, float, float]] = {
    "u.MP9302": (375.0, 25.0, 22.6, 0.35),
    "g.MP9402": (480.0, 26.8, 22.1, 0.15),
    "r.MP9602": (630.0, 26.5, 21.1, 0.10),
    "i.MP9703": (770.0, 26.2, 20.2, 0.04),
    "z.MP9901": (890.0, 25.2, 19.2, 0.03),
}
_FILTER_WEIGHTS = (0.12, 0.23, 0.28, 0.25, 0.12)
_EXPNUM_BASE = 3_000_000
_PER_NIGHT = 600
_HST = timedelta(hours=-10)
_NIGHT_LENGTH = timedelta(hours=10, minutes=30)


# --------------------------------------------------------------------------------------------
# Mosaic geometry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mosaic:
    """``n_ccd`` CCDs of ``width`` x ``height`` pixels, in rows of up to 9 (MegaCam: 9 x 4)."""

    n_ccd: int = FULL_N_CCD
    width: int = FULL_CCD_SHAPE[0]
    height: int = FULL_CCD_SHAPE[1]

    def __post_init__(self) -> None:
        if self.n_ccd < 1 or self.width < 64 or self.height < 64:
            raise ValueError(f"need n_ccd >= 1 and CCDs of at least 64x64, got {self}")

    @property
    def columns(self) -> int:
        return min(self.n_ccd, 9)

    @property
    def rows(self) -> int:
        return math.ceil(self.n_ccd / self.columns)

    def ccd_centre(self, ccd: int) -> tuple[float, float]:
        """Normalised focal-plane position (u, v) in [-1, 1] of the centre of a CCD."""
        col, row = ccd % self.columns, ccd // self.columns
        return ((col + 0.5) / self.columns * 2 - 1, (row + 0.5) / self.rows * 2 - 1)

    def to_uv(self, ccd: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised focal-plane coordinates of CCD pixel positions (x: column, y: row)."""
        col, row = ccd % self.columns, ccd // self.columns
        u = (col + np.asarray(x, dtype=float) / self.width) / self.columns * 2 - 1
        v = (row + np.asarray(y, dtype=float) / self.height) / self.rows * 2 - 1
        return u, v


# --------------------------------------------------------------------------------------------
# What one exposure looks like
# --------------------------------------------------------------------------------------------
@dataclass
class ExposureSpec:
    """Everything drawn for one exposure (conditions are per exposure, pixels per CCD)."""

    label: str
    expnum: int
    night: str
    date_obs: datetime
    seed: int
    exptime: float
    filter: str
    airmass: float
    ra: float
    dec: float
    object: str
    # PSF
    psf_family: str = "moffat"
    beta: float = 3.0
    fwhm: float = 0.7
    fwhm_quad: float = 0.0  # fractional FWHM change at the field corner (r^2 term)
    fwhm_tilt: tuple[float, float] = (0.0, 0.0)
    shear: tuple[float, float] = (0.0, 0.0)
    shear_pattern: float = 0.0  # astigmatism-like shear ~ (u^2 - v^2, 2uv)
    optics: dict[str, float] = field(default_factory=dict)  # empty: no OpticalPSF
    # tracking
    trail_mode: str = "none"
    trail_length: float = 0.0  # arcsec
    trail_angle: float = 0.0  # degrees
    trail_params: dict[str, float] = field(default_factory=dict)
    # sky and transparency
    sky_factor: float = 1.0
    gradient_ratio: float = 1.0
    gradient_angle: float = 0.0
    vignetting: float = 0.05
    transparency: float = 1.0
    bgp_modes: tuple[str, ...] = ()
    bgp_params: dict[str, float] = field(default_factory=dict)
    # sources and detector
    star_density: float = 1.0
    galaxy_density: float = 1.0
    bias: float = 1000.0
    saturate: float = 65535.0
    bad_column_ccds: tuple[int, ...] = ()
    dead_ccd: int = -1

    @property
    def exposure_id(self) -> str:
        return str(self.expnum)

    @property
    def filename(self) -> str:
        return f"{self.expnum}o.fits"


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))


def _draw_exptime(rng: np.random.Generator, label: str) -> float:
    lo = 30.0 if label in ("BT", "RBT") else 5.0
    if rng.random() < 0.4:
        return float(rng.choice([t for t in (5.0, 30.0, 60.0, 120.0, 300.0, 600.0) if t >= lo]))
    return float(round(_loguniform(rng, lo, 1200.0)))


def draw_spec(
    rng: np.random.Generator,
    label: str,
    expnum: int,
    night: str,
    date_obs: datetime,
    seed: int,
    n_ccd: int = FULL_N_CCD,
) -> ExposureSpec:
    """Draw the conditions of one exposure of class ``label``, as a person would grade them.

    GOOD: delivered FWHM 0.5-0.9", round PSF, ordinary sky. B_SEEING: 1.25-2.5". BGP: good
    seeing and tracking, a background problem. BT: a straight 2-6" trail. RBT: a 10-40"
    erratic trail.
    """
    if label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    filt = str(rng.choice(list(FILTERS), p=_FILTER_WEIGHTS))
    spec = ExposureSpec(
        label=label,
        expnum=expnum,
        night=night,
        date_obs=date_obs,
        seed=seed,
        exptime=_draw_exptime(rng, label),
        filter=filt,
        airmass=float(1.0 + rng.exponential(0.25)),
        ra=float(rng.uniform(0, 360)),
        dec=float(rng.uniform(-25, 70)),
        object=f"GSF{int(rng.integers(0, 10_000)):04d}",
    )
    spec.airmass = min(spec.airmass, 2.3)
    spec.psf_family = "moffat" if rng.random() < 0.6 else "kolmogorov"
    spec.beta = float(rng.uniform(2.0, 5.0))
    if label == "GOOD":
        spec.fwhm = float(rng.uniform(0.5, 0.88))
    elif label == "B_SEEING":
        spec.fwhm = float(rng.uniform(1.25, 2.5))
    else:
        spec.fwhm = float(rng.uniform(0.5, 1.0))
    spec.fwhm_quad = float(rng.uniform(-0.06, 0.12))
    spec.fwhm_tilt = (float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04)))
    max_shear = 0.03 if label in ("GOOD", "BGP") else 0.05
    g = rng.uniform(0, max_shear)
    phi = rng.uniform(0, np.pi)
    spec.shear = (float(g * np.cos(phi)), float(g * np.sin(phi)))
    spec.shear_pattern = float(rng.uniform(-1, 1) * max_shear * 0.6)
    if rng.random() < 0.5:
        astig = 0.08 if label in ("GOOD", "BGP") else 0.2
        spec.optics = {
            "defocus": float(rng.uniform(-0.5, 0.5)),
            "defocus_r2": float(rng.uniform(-0.3, 0.3)),
            "astig": float(rng.uniform(-astig, astig)),
            "astig_u": float(rng.uniform(-astig, astig)),
            "coma": float(rng.uniform(-0.15, 0.15)),
        }
    # tracking
    spec.trail_angle = float(rng.uniform(0, 180))
    if label == "BT":
        spec.trail_mode = "line"
        spec.trail_length = float(rng.uniform(2.0, 6.0))
        spec.trail_params = {"speed_wobble": float(rng.uniform(0, 0.3))}
    elif label == "RBT":
        spec.trail_mode = str(rng.choice(["wobble", "walk", "arc", "jump"]))
        spec.trail_length = float(rng.uniform(10.0, 40.0))
        spec.trail_params = {
            "amplitude": float(rng.uniform(0.08, 0.3)),
            "periods": float(rng.uniform(0.7, 4.0)),
            "phase": float(rng.uniform(0, 2 * np.pi)),
            "walk_seed": int(rng.integers(0, 2**31)),
            "rot_centre_u": float(rng.uniform(-0.3, 0.3)),
            "rot_centre_v": float(rng.uniform(-0.3, 0.3)),
            "jump_at": float(rng.uniform(0.3, 0.7)),
            "jump": float(rng.uniform(4.0, 15.0)),
            "jump_angle": float(rng.uniform(0, 360)),
        }
    else:
        spec.trail_mode = "none"
    # sky
    spec.sky_factor = float(np.clip(np.exp(rng.normal(0.0, 0.3)), 0.6, 2.5))
    spec.gradient_ratio = float(rng.uniform(1.0, 1.12))
    spec.gradient_angle = float(rng.uniform(0, 360))
    spec.vignetting = float(rng.uniform(0.0, 0.12))
    spec.transparency = float(rng.uniform(0.85, 1.0))
    if label == "BGP":
        modes = [m for m in ("gradient", "arc", "clouds", "high_sky") if rng.random() < 0.4]
        spec.bgp_modes = tuple(modes) or (str(rng.choice(["gradient", "arc", "clouds"])),)
        spec.bgp_params = {
            "gradient_ratio": _loguniform(rng, 3.0, 20.0),
            "arc_u": float(rng.uniform(-1.8, 1.8)),
            "arc_v": float(rng.choice([-1, 1]) * rng.uniform(0.9, 1.8)),
            "arc_radius": float(rng.uniform(0.6, 1.6)),
            "arc_width": float(rng.uniform(0.04, 0.2)),
            "arc_amp": _loguniform(rng, 1.0, 8.0),
            "cloud_depth": float(rng.uniform(0.4, 0.9)),
            "cloud_moon": float(rng.uniform(1.0, 5.0)),
            "cloud_seed": int(rng.integers(0, 2**31)),
            "high_sky": _loguniform(rng, 12.0, 60.0),
            "partial": float(rng.random() < 0.35),
            "partial_angle": float(rng.uniform(0, 2 * np.pi)),
            "partial_cut": float(rng.uniform(-0.3, 0.4)),
        }
        if "arc" in spec.bgp_modes and rng.random() < 0.5:
            spec.bgp_params["arc_v"] = -spec.bgp_params["arc_v"]
    # sources and detector
    spec.star_density = _loguniform(rng, 0.3, 8.0)
    spec.galaxy_density = float(rng.uniform(0.7, 1.3))
    spec.bias = float(rng.uniform(400.0, 1200.0))
    spec.saturate = float(rng.choice([65535.0, 65000.0, 64000.0, 60000.0]))
    if rng.random() < 0.4:
        k = int(rng.integers(1, 4))
        spec.bad_column_ccds = tuple(int(c) for c in rng.choice(n_ccd, min(k, n_ccd), False))
    if n_ccd > 4 and rng.random() < 0.02:
        spec.dead_ccd = int(rng.integers(0, n_ccd))
    return spec


# --------------------------------------------------------------------------------------------
# Fields over the focal plane
# --------------------------------------------------------------------------------------------
def _window(spec: ExposureSpec, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which part of the focal plane a BGP effect covers (1 everywhere unless partial)."""
    p = spec.bgp_params
    if not p.get("partial"):
        return np.ones_like(u)
    a = p["partial_angle"]
    d = u * np.cos(a) + v * np.sin(a)
    return 1.0 / (1.0 + np.exp(-(d - p["partial_cut"]) / 0.08))


def _cloud_field(spec: ExposureSpec, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Patchy cloud optical depth in [0, 1] (a sum of random Gaussian blobs)."""
    rng = np.random.default_rng([spec.bgp_params["cloud_seed"], 11])
    n = int(rng.integers(6, 16))
    f = np.zeros_like(u)
    for cu, cv, w, amp in zip(
        rng.uniform(-1.3, 1.3, n),
        rng.uniform(-1.3, 1.3, n),
        rng.uniform(0.15, 0.6, n),
        rng.uniform(0.3, 1.0, n),
        strict=True,
    ):
        f += amp * np.exp(-0.5 * ((u - cu) ** 2 + (v - cv) ** 2) / w**2)
    return np.clip(f, 0.0, 1.0)


def transmission(spec: ExposureSpec, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Fraction of a source's light that reaches the detector (clouds, vignetting)."""
    t = spec.transparency * (1.0 - spec.vignetting * ((u**2 + v**2) / 2.0) ** 2)
    if "clouds" in spec.bgp_modes:
        depth = spec.bgp_params["cloud_depth"] * _window(spec, u, v)
        t = t * (1.0 - depth * _cloud_field(spec, u, v))
    return t


def sky_field(spec: ExposureSpec, u: np.ndarray, v: np.ndarray, dark_e: float) -> np.ndarray:
    """Sky in electrons per pixel at focal-plane positions."""
    a = math.radians(spec.gradient_angle)
    d = (u * math.cos(a) + v * math.sin(a)) / 2.0
    sky = dark_e * spec.sky_factor * np.exp(math.log(spec.gradient_ratio) * d)
    sky *= 1.0 - spec.vignetting * ((u**2 + v**2) / 2.0) ** 2
    p, modes = spec.bgp_params, spec.bgp_modes
    if not modes:
        return sky
    w = _window(spec, u, v)
    base = sky.copy()
    if "high_sky" in modes:
        sky = sky * (1.0 + (p["high_sky"] - 1.0) * w)
    if "gradient" in modes:
        sky = sky * np.exp(math.log(p["gradient_ratio"]) * (d + 0.5))
    if "arc" in modes:
        rho = np.hypot(u - p["arc_u"], v - p["arc_v"])
        ring = np.exp(-0.5 * ((rho - p["arc_radius"]) / p["arc_width"]) ** 2)
        glow = 0.25 * np.exp(-0.5 * ((rho - p["arc_radius"]) / (4 * p["arc_width"])) ** 2)
        sky = sky + base * p["arc_amp"] * (ring + glow)
    if "clouds" in modes:
        c = _cloud_field(spec, u, v) * w
        sky = sky * (1.0 + (p["cloud_moon"] - 1.0) * c)
    return sky


# --------------------------------------------------------------------------------------------
# The specs of an archive
# --------------------------------------------------------------------------------------------
def _night_ordinal(night: str) -> int:
    return (date.fromisoformat(night) - date(2020, 1, 1)).days


def plan_archive(
    nights: Sequence[str], per_class: int, classes: Sequence[str], seed: int, n_ccd: int
) -> list[ExposureSpec]:
    """The exposures of an archive: ``per_class`` of each class per night, shuffled in time."""
    specs = []
    for night in nights:
        d = date.fromisoformat(night)
        k = _night_ordinal(night)
        labels = [c for c in classes for _ in range(per_class)]
        rng = np.random.default_rng([seed, k, 0])
        labels = [labels[i] for i in rng.permutation(len(labels))]
        if len(labels) > _PER_NIGHT:
            raise ValueError(f"at most {_PER_NIGHT} exposures per night")
        start = datetime(d.year, d.month, d.day, 19, 0, tzinfo=UTC) - _HST  # 19:00 HST
        when = start
        for i, label in enumerate(labels):
            expnum = _EXPNUM_BASE + (k % 5000) * _PER_NIGHT + i
            spec = draw_spec(
                np.random.default_rng([seed, k, i + 1]), label, expnum, night, when, seed, n_ccd
            )
            specs.append(spec)
            when = when + timedelta(seconds=spec.exptime + 40.0)
            if when - start > _NIGHT_LENGTH:  # a long list wraps round within the night
                when = start + (when - start) % _NIGHT_LENGTH
    return specs
