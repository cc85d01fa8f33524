"""CCD class probabilities -> one grade per exposure, with a confidence and a human reason.

Aggregation: the exposure's class probabilities are the mean of its graded CCDs' probabilities
(:func:`skygrade.models.aggregate.combine`): every CCD weighs the same, so the grade follows what
most CCDs say, and no single confident CCD outvotes the others (background problems are often local:
moonlight on one corner). The reason names the votes: ``BGP: 2/4 CCDs with a background problem
(1 RBT, 1 B_SEEING)``.

Rules:

- CCDs that were quarantined (dead, unreadable) or had no clean source do not vote; they are
  counted in ``n_ccd`` but not in ``n_ccd_graded``, and named in the reason.
- A saturated sky is a background problem, not a broken detector: when half or more of the
  exposure's CCDs were quarantined as ``saturated`` (most or all pixels at SATURATE, so no
  source can be measured), the exposure is graded BGP by rule, with probability 1 and the
  reason ``BGP: sky saturated on 8/8 CCDs ...``, whatever the other CCDs say.
- Otherwise an exposure with no graded CCD is not graded: status ``quarantined``, reason
  ``no_usable_ccds``.
- Exact ties between classes go to the more severe class (order RBT, BT, BGP, B_SEEING, GOOD):
  an observer would rather look at a doubtful exposure than miss a bad one.
- ``confidence`` is the winning class's exposure probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from skygrade.models.aggregate import combine
from skygrade.models.classes import CLASSES
from skygrade.transforms.psf_measure import (
    CcdPhysics,
    ExposurePhysics,
    exposure_physics,
    seeing_text,
)

SEVERITY = ("RBT", "BT", "BGP", "B_SEEING", "GOOD")
"""Tie-break order, most severe first."""

_VERB = {
    "GOOD": "good",
    "B_SEEING": "with bad seeing",
    "BGP": "with a background problem",
    "BT": "trailed",
    "RBT": "badly trailed",
}


@dataclass(frozen=True)
class CcdScore:
    """One scored CCD (or one that could not be scored: ``probs`` is None)."""

    exposure_id: str
    ccd: int
    probs: np.ndarray | None = field(repr=False)
    n_sources: int = 0
    median_elongation: float = float("nan")
    median_iso0: float = float("nan")
    median_background: float = float("nan")
    reason: str | None = None
    n_ccd: int = 0
    stage_s: dict = field(default_factory=dict, repr=False, compare=False)
    hits: np.ndarray | None = field(default=None, repr=False, compare=False)
    image: np.ndarray | None = field(default=None, repr=False, compare=False)
    """The CCD's representative image (Input-1 of the CNN), kept for the observer page and
    stored small by the sink; None when the CCD has none (catalog mode, no clean source)."""
    ood: float = field(default=float("nan"), compare=False)
    """Out-of-distribution score of the CCD's inputs (:mod:`skygrade.models.ood`; > 1: unlike any
    training CCD, its probabilities already tempered); NaN when not scored."""
    missing: tuple[str, ...] = field(default=(), compare=False)
    """Inputs the CCD was graded without (``EXPTIME``, ``FLUX_RADIUS``...), for the reason."""
    physics: CcdPhysics | None = field(default=None, compare=False)
    """Seeing, PSF shape, sky and source counts of the CCD (reported, not graded on)."""
    twin_fraction: float = field(default=float("nan"), compare=False)
    """Share of the CCD's brightest sources with a twin at one common offset
    (:func:`skygrade.models.summary.twin_fraction`: doubled images of a mount jump); NaN when
    not measured."""

    @property
    def grade(self) -> str | None:
        return None if self.probs is None else pick_class(self.probs)


@dataclass(frozen=True)
class ExposureGrade:
    exposure_id: str
    grade: str | None
    probs: np.ndarray | None = field(repr=False)
    confidence: float
    n_ccd: int
    n_ccd_graded: int
    n_sources: int
    median_elongation: float
    median_iso0: float
    median_background: float
    status: str
    """``graded`` or ``quarantined``."""
    reason: str
    ood: float = float("nan")
    """Median out-of-distribution score of the graded CCDs (> 1: unlike the training data)."""
    physics: ExposurePhysics = field(default_factory=ExposurePhysics)
    """Seeing, PSF shape, sky, airmass and source counts: medians over the measured CCDs."""


def pick_class(probs: np.ndarray) -> str:
    """The most probable class; exact ties go to the more severe class."""
    probs = np.asarray(probs)
    best = probs.max()
    tied = {CLASSES[i] for i in np.flatnonzero(probs == best)}
    return next(c for c in SEVERITY if c in tied)


def saturated_sky(n_saturated: int, n_ccd: int) -> bool:
    """Whether an exposure with ``n_saturated`` of its ``n_ccd`` CCDs quarantined as
    ``saturated`` is graded BGP by rule (half of the CCDs or more)."""
    return n_saturated > 0 and 2 * n_saturated >= n_ccd


def saturated_sky_probs() -> np.ndarray:
    """The exposure probabilities of the saturated-sky rule: 1 for BGP."""
    return np.array([float(c == "BGP") for c in CLASSES])


def _slug(reason: str | None) -> str:
    """The machine-readable part of a CCD's reason (before the first colon)."""
    return (reason or "unknown").split(":", 1)[0]


def _nanmedian(values) -> float:
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    return float(np.median(values)) if len(values) else float("nan")


_MEASURED_INPUTS = ("EXPTIME", "FLUX", "FLUX_RADIUS", "A_IMAGE", "B_IMAGE", "THETA_IMAGE")


def ood_text(graded: list[CcdScore]) -> str:
    """``"; inputs unlike the training data on 5/8 CCDs (OOD 2.4): confidence lowered"``."""
    unusual = [c.ood for c in graded if np.isfinite(c.ood) and c.ood > 1.0]
    if not unusual:
        return ""
    return (
        f"; inputs unlike the training data on {len(unusual)}/{len(graded)} CCDs "
        f"(OOD {float(np.median(unusual)):.1f}): confidence lowered"
    )


TWIN_REASON = 0.1
"""A CCD whose :attr:`CcdScore.twin_fraction` exceeds this is named as doubled in the reason.
On simulated nights the median GOOD CCD has 0.01 (the most 0.015) and the median BGP 0.02; the
median RBT CCD of a jumping mount 0.19; ten real graded catalogs 0.003-0.005."""


def twin_text(graded: list[CcdScore]) -> str:
    """``"; doubled images on 6/8 CCDs (31% of the brightest sources twinned at one offset)"``,
    else "": the evidence of a mount jump, which the shape statistics do not see."""
    doubled = [c.twin_fraction for c in graded if c.twin_fraction > TWIN_REASON]
    if not doubled:
        return ""
    return (
        f"; doubled images on {len(doubled)}/{len(graded)} CCDs "
        f"({100 * float(np.median(doubled)):.0f}% of the brightest sources twinned at one offset)"
    )


def missing_text(graded: list[CcdScore]) -> str:
    """``"; graded without EXPTIME, FLUX_RADIUS (not in the input)"``, else "".

    Without EXPTIME the sky rate is not used; without FLUX the brighter half is chosen by ISO0;
    without FLUX_RADIUS, A/B_IMAGE and THETA_IMAGE the PSF size and trail-shape statistics."""
    names = [n for n in _MEASURED_INPUTS if any(n in c.missing for c in graded)]
    return f"; graded without {', '.join(names)} (not in the input)" if names else ""


SKY_SUBTRACTED_ADU = 25.0
"""A catalog-graded exposure whose median BACKGROUND lies within this of 0 ADU had its sky
subtracted before extraction (or is too short to hold one), and the reason says a background
problem may not show: the sky level is the BGP evidence a catalog carries. On held-out
simulated nights the shipped bundle grades 10 of 23 BGP right from sky-subtracted catalogs
against 22 of 23 with the sky kept (docs/model.md item 22). On those nights the threshold
flags 133 of 150 sky-subtracted catalogs and 18 of 300 with the sky kept (short exposures);
the one real sky-subtracted product of ``shared/real-catalogs`` has 12 ADU, the other nine
77-1,140."""


def sky_text(grade: str, graded: list[CcdScore], median_background: float) -> str:
    """``"; sky 3 ADU in the catalog (...): a background problem may not show"``, else "".

    Only for an exposure graded from catalogs (no CCD had pixels, so no representative image
    could show a gradient) and not graded BGP."""
    if grade == "BGP" or any(c.image is not None for c in graded):
        return ""
    if not np.isfinite(median_background) or abs(median_background) >= SKY_SUBTRACTED_ADU:
        return ""
    return (
        f"; sky {median_background:.0f} ADU in the catalog (subtracted before extraction, or a "
        "short exposure): a background problem may not show"
    )


def grade_exposure(
    exposure_id: str, n_ccd: int, ccds: list[CcdScore], airmass: float | None = None
) -> ExposureGrade:
    """Aggregate the CCDs of one exposure (see the module docstring for the rules).

    Parameters
    ----------
    exposure_id : str
        The exposure.
    n_ccd : int
        CCDs the exposure has (graded or not).
    ccds : list of CcdScore
        Scored CCDs and CCDs that could not be scored (``probs is None`` with a reason).
    airmass : float, optional
        The exposure's AIRMASS, for the seeing at zenith.

    The physical measurements (:func:`skygrade.transforms.psf_measure.exposure_physics`) combine
    every CCD that has them, graded or not (a CCD without a clean source for the network may still
    have a sky); the seeing enters the reason as ``seeing 1.21" (0.98" at zenith, 37 stars)``.
    They never change the grade.
    """
    graded = [c for c in ccds if c.probs is not None]
    skipped = sorted((c for c in ccds if c.probs is None), key=lambda c: c.ccd)
    stats = {
        "n_sources": int(sum(c.n_sources for c in ccds)),
        "median_elongation": _nanmedian(c.median_elongation for c in graded),
        "median_iso0": _nanmedian(c.median_iso0 for c in graded),
        "median_background": _nanmedian(c.median_background for c in graded),
        "physics": exposure_physics([c.physics for c in ccds if c.physics is not None], airmass),
    }
    skipped_text = ""
    if skipped:
        reasons = sorted({_slug(c.reason) for c in skipped})
        skipped_text = f"; {len(skipped)} CCD(s) not graded ({', '.join(reasons)})"
    n_saturated = sum(_slug(c.reason) == "saturated" for c in skipped)
    if saturated_sky(n_saturated, n_ccd):
        return ExposureGrade(
            exposure_id,
            "BGP",
            saturated_sky_probs(),
            1.0,
            n_ccd,
            len(graded),
            **stats,
            status="graded",
            reason=f"BGP: sky saturated on {n_saturated}/{n_ccd} CCDs (no source measurable)"
            f"{skipped_text}",
        )
    if not graded:
        return ExposureGrade(
            exposure_id,
            None,
            None,
            0.0,
            n_ccd,
            0,
            **stats,
            status="quarantined",
            reason=f"no_usable_ccds: none of {n_ccd} CCDs could be graded{skipped_text}",
        )
    probs = combine(np.stack([c.probs for c in graded]))
    grade = pick_class(probs)
    votes = sum(c.grade == grade for c in graded)
    others = {k: sum(c.grade == k for c in graded) for k in SEVERITY if k != grade}
    other_text = ", ".join(f"{n} {k}" for k, n in others.items() if n)
    seeing = seeing_text(stats["physics"])
    reason = (
        f"{grade}: {votes}/{len(graded)} CCDs {_VERB[grade]}"
        f"{f' ({other_text})' if other_text else ''}, median elongation "
        f"{stats['median_elongation']:.2f}, median ISO0 {stats['median_iso0']:.0f}"
        f"{f', {seeing}' if seeing else ''}"
        f"{twin_text(graded)}{skipped_text}{missing_text(graded)}"
        f"{sky_text(grade, graded, stats['median_background'])}{ood_text(graded)}"
    )
    return ExposureGrade(
        exposure_id,
        grade,
        probs,
        float(probs.max()),
        n_ccd,
        len(graded),
        **stats,
        status="graded",
        reason=reason,
        ood=_nanmedian(c.ood for c in graded),
    )


PHYSICS_COLUMNS: tuple[str, ...] = (
    "seeing_arcsec",
    "seeing_minor_arcsec",
    "seeing_zenith_arcsec",
    "n_psf_stars",
    "psf_ellipticity",
    "psf_pa_deg",
    "sky_adu_s",
    "sky_mag_arcsec2",
    "source_count_ratio",
    "seeing_method",
)
"""The physical columns of the CCD rows; the exposure rows have them and ``airmass``."""


def _value(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def physics_columns(p: CcdPhysics | ExposurePhysics | None) -> dict:
    """The row columns of :data:`PHYSICS_COLUMNS` (and ``airmass`` for an exposure); None
    where not measured."""
    if p is None:
        p = CcdPhysics()
    out = {
        "seeing_arcsec": _value(p.seeing_arcsec),
        "seeing_minor_arcsec": _value(p.seeing_minor_arcsec),
        "seeing_zenith_arcsec": _value(p.seeing_zenith_arcsec),
        "n_psf_stars": int(p.n_stars),
        "psf_ellipticity": _value(p.psf_ellipticity),
        "psf_pa_deg": _value(p.psf_pa_deg),
        "sky_adu_s": _value(p.sky_adu_s),
        "sky_mag_arcsec2": _value(p.sky_mag_arcsec2),
        "source_count_ratio": _value(p.source_count_ratio),
        "seeing_method": p.method,
    }
    if isinstance(p, ExposurePhysics):
        out["airmass"] = _value(p.airmass)
    return out
