"""What the morning report and the observer page say about a night's exposure rows.

Plain functions of the rows (dicts with the exposure schema of
:mod:`skygrade.transforms.grades_dataset`): one row per exposure, the counts, the time lost, the
physical statistics and trends, what to re-observe, and the grade colours both draw with.
:mod:`skygrade.streamer.report` and :mod:`skygrade.streamer.observer_views` import them from here,
so neither imports the other for them.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections import Counter

from skygrade.models.classes import CLASSES

GRADE_COLORS = {
    "GOOD": (0, 158, 115),
    "B_SEEING": (240, 228, 66),
    "BGP": (230, 159, 0),
    "BT": (213, 94, 0),
    "RBT": (86, 180, 233),
}
"""Grade colours: Okabe & Ito's colour-blind-safe palette (bluish green, yellow, orange,
vermillion, sky blue), chosen so that every pair stays apart under protan-, deutan- and
tritanopia at every confidence shade (BT and RBT most of all: warm against cool), on the
observer page and in the report's plot."""

PHYSICAL = (
    ("seeing_arcsec", "seeing", '"', ".2f"),
    ("seeing_minor_arcsec", "seeing, minor axis", '"', ".2f"),
    ("seeing_zenith_arcsec", "seeing at zenith", '"', ".2f"),
    ("n_psf_stars", "PSF stars", "", ".0f"),
    ("psf_ellipticity", "PSF ellipticity", "", ".3f"),
    ("sky_mag_arcsec2", "sky", " mag/arcsec2", ".2f"),
    ("sky_adu_s", "sky rate", " ADU/s", ".1f"),
    ("source_count_ratio", "sources / expected", "", ".2f"),
    ("airmass", "airmass", "", ".2f"),
)
"""The physical measurements of the rows (column, label, unit, format;
:data:`skygrade.transforms.grades_dataset.PHYSICS_FIELDS`), reported where a row has a value: rows
written before they were measured have none, and then nothing is shown. ``sources / expected`` is a
transparency proxy, not a photometric zero point."""

TRENDS = (
    ("seeing_arcsec", 'seeing (")'),
    ("sky_mag_arcsec2", "sky (mag/arcsec2)"),
)
"""Physical columns plotted through the night (under the grades, and beside the page's
timeline) when the rows have values of them."""


def latest_per_exposure(rows, model_version: str | None = None) -> list[dict]:
    """One row per exposure: ``model_version``'s, else the latest ``graded_at``; each row gets
    ``time`` (:func:`row_time`); sorted by time, then exposure id."""
    latest: dict[str, dict] = {}
    for row in rows:
        if model_version is not None and row["model_version"] != model_version:
            continue
        if "time" not in row:
            row["time"] = row_time(row)
        seen = latest.get(row["exposure_id"])
        if seen is None or _stamp(row["graded_at"]) > _stamp(seen["graded_at"]):
            latest[row["exposure_id"]] = row
    return sorted(latest.values(), key=lambda r: (_stamp(r["time"]), r["exposure_id"]))


def _stamp(when: dt.datetime | None) -> float:
    return when.timestamp() if when is not None else -math.inf


def row_time(row: dict) -> dt.datetime | None:
    """When an exposure was taken: ``date_obs`` (UTC when naive), else ``graded_at``."""
    if row.get("date_obs"):
        try:
            when = dt.datetime.fromisoformat(row["date_obs"])
            return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
        except ValueError:
            pass
    return row.get("graded_at")


def has_value(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def summarize(rows: list[dict]) -> dict:
    """Counts of a night: ``n``, ``graded``, ``quarantined``, ``grades`` (per class),
    ``usable_fraction`` (GOOD / graded, None when nothing was graded), ``model_versions``,
    ``lost_s`` (per non-GOOD grade: the sum of the EXPTIME of its exposures, seconds) and
    ``lost_unknown`` (non-GOOD exposures without an EXPTIME, not in ``lost_s``)."""
    graded = [r for r in rows if r["status"] == "graded"]
    grades = Counter(r["grade"] for r in graded)
    lost: dict[str, float] = {}
    unknown = 0
    for r in graded:
        if r["grade"] == "GOOD":
            continue
        exptime = r.get("exptime")
        if has_value(exptime):
            lost[r["grade"]] = lost.get(r["grade"], 0.0) + float(exptime)
        else:
            unknown += 1
    return {
        "n": len(rows),
        "graded": len(graded),
        "quarantined": len(rows) - len(graded),
        "grades": dict(grades),
        "usable_fraction": grades.get("GOOD", 0) / len(graded) if graded else None,
        "model_versions": sorted({r["model_version"] or "?" for r in rows}),
        "lost_s": lost,
        "lost_unknown": unknown,
    }


def counts_by_filter(rows: list[dict]) -> dict[str, dict]:
    """Per filter (``?`` when the header had none), sorted: ``n``, the count of each grade and
    ``quarantined``."""
    out: dict[str, dict] = {}
    for r in rows:
        f = out.setdefault(r.get("filter") or "?", {"n": 0, **dict.fromkeys(CLASSES, 0)})
        f["n"] += 1
        if r["status"] == "graded" and r["grade"] in f:
            f[r["grade"]] += 1
    for f in out.values():
        f["quarantined"] = f["n"] - sum(f[c] for c in CLASSES)
    return dict(sorted(out.items()))


def to_reobserve(rows: list[dict]) -> list[dict]:
    """The graded exposures that are not GOOD, in time order: what to re-observe."""
    return [r for r in rows if r["status"] == "graded" and r["grade"] != "GOOD"]


def physical_stats(rows: list[dict]) -> list[tuple[str, str, str, int, float, float, float]]:
    """(label, unit, format, n, median, min, max) of each :data:`PHYSICAL` column the graded
    rows have a value of."""
    out = []
    for column, label, unit, fmt in PHYSICAL:
        values = [
            float(r[column])
            for r in rows
            if r["status"] == "graded"
            and has_value(r.get(column))
            and not isinstance(r[column], str)
        ]
        if values:
            out.append(
                (label, unit, fmt, len(values), statistics.median(values), min(values), max(values))
            )
    return out


def trends(rows: list[dict]) -> tuple[tuple[str, str], ...]:
    """The :data:`TRENDS` that some graded row of ``rows`` has a value of."""
    return tuple(
        (column, label)
        for column, label in TRENDS
        if any(r["status"] == "graded" and has_value(r.get(column)) for r in rows)
    )
