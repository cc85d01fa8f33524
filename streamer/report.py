"""``skygrade report``: a night's summary from the grades dataset, as text and a PNG plot.

The night's exposure rows are read from ``DIR/exposures/night=NIGHT/`` (any file name: the
daemon's ``<exposure_id>.parquet`` and the backfill's ``<exposure_id>.<version>.parquet``). When
an exposure was graded by several model versions, the report takes one version: the one asked
for, else each exposure's most recently graded row.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)

HELP = "summarise a night of grades: grade counts, usable fraction, timeline (text and PNG)"
EXAMPLES = (
    "examples:\n"
    "  skygrade report --night 2026-11-24 grades\n"
    "  skygrade report --night 2026-11-24 grades --png night.png\n"
    "  skygrade report --night 2026-11-24 grades --html night.html   # the observer page, static\n"
    "  skygrade report grades --model-version 2026.11.24-101500   # the latest night"
)

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

STATISTICS = (
    ("median_elongation", "median elongation"),
    ("median_iso0", "median ISO0 (px)"),
    ("median_background", "median background (ADU)"),
    ("confidence", "confidence"),
)
"""Exposure columns plotted under the grades, with their axis labels."""


def nights(out_dir: str | os.PathLike) -> list[str]:
    """The nights present in the dataset at ``out_dir``, sorted."""
    root = Path(out_dir) / "exposures"
    return sorted(p.name.removeprefix("night=") for p in root.glob("night=*") if p.is_dir())


def night_rows(
    out_dir: str | os.PathLike, night: str, model_version: str | None = None
) -> list[dict]:
    """The exposure rows of ``night``, one per exposure, sorted by time.

    Parameters
    ----------
    out_dir : path-like
        The grades dataset.
    night : str
        ``YYYY-MM-DD``.
    model_version : str, optional
        Keep this model version's rows; default: each exposure's latest ``graded_at``.

    Returns
    -------
    list of dict
        Rows with ``night`` set and ``time`` (``date_obs`` as an aware datetime, else
        ``graded_at``); empty (with a warning) when the night has no row.
    """
    import pyarrow.parquet as pq

    folder = Path(out_dir) / "exposures" / f"night={night}"
    rows = []
    for file in sorted(folder.glob("*.parquet")):
        if file.name.startswith((".", "_")):
            continue
        for row in pq.read_table(file).to_pylist():
            row["night"] = night
            rows.append(row)
    chosen = latest_per_exposure(rows, model_version)
    if not chosen:
        log.warning("no exposure row for night %s under %s", night, folder)
    return chosen


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


def _usable(v) -> bool:
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
        if _usable(exptime):
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


def format_report(night: str, rows: list[dict]) -> str:
    """The text report: header, grade counts, hourly timeline (UTC), quarantined exposures."""
    import statistics

    from models.classes import CLASSES

    s = summarize(rows)
    if not rows:
        return f"night {night}: no exposure graded"
    usable = "-" if s["usable_fraction"] is None else f"{100 * s['usable_fraction']:.0f}%"
    lines = [
        f"night {night}: {s['n']} exposure(s), {s['graded']} graded, "
        f"{s['quarantined']} quarantined; usable (GOOD) {usable} of graded; "
        f"model {', '.join(s['model_versions'])}",
        "grades: "
        + "  ".join(
            f"{c} {n} ({100 * n / max(s['graded'], 1):.0f}%)"
            for c, n in ((c, s["grades"].get(c, 0)) for c in CLASSES)
        ),
        "",
        "timeline (UTC hour; grades; median elongation / ISO0 / background; confidence):",
        f"{'hour':>13}  {'n':>3}  " + " ".join(f"{c:>8}" for c in CLASSES) + f"  {'Q':>3}"
        f"  {'elong':>5}  {'iso0':>6}  {'bkg':>8}  {'conf':>4}",
    ]
    by_hour: dict[str, list[dict]] = {}
    for r in rows:
        key = r["time"].astimezone(dt.UTC).strftime("%Y-%m-%d %H") if r["time"] else "unknown"
        by_hour.setdefault(key, []).append(r)
    for hour, group in by_hour.items():
        graded = [r for r in group if r["status"] == "graded"]
        counts = Counter(r["grade"] for r in graded)

        def med(column, graded=graded):
            values = [r[column] for r in graded if _usable(r[column])]
            return statistics.median(values) if values else float("nan")

        lines.append(
            f"{hour:>13}  {len(group):>3}  "
            + " ".join(f"{counts.get(c, 0):>8}" for c in CLASSES)
            + f"  {len(group) - len(graded):>3}  {med('median_elongation'):5.2f}  "
            f"{med('median_iso0'):6.1f}  {med('median_background'):8.1f}  "
            f"{med('confidence'):4.2f}"
        )
    quarantined = [r for r in rows if r["status"] != "graded"]
    if quarantined:
        lines += ["", "quarantined:"]
        lines += [f"  {r['exposure_id']}: {(r['reason'] or '')[:100]}" for r in quarantined]
    return "\n".join(lines)


def plot_night(night: str, rows: list[dict], png: str | os.PathLike) -> Path:
    """Write a PNG of the grade and the key statistics of each exposure through the night.

    Panels share the time axis (``date_obs``, else ``graded_at``): the grade (one row per
    class, quarantined exposures as crosses), then median elongation, median ISO0, median
    background and confidence.

    Raises
    ------
    ValueError
        ``rows`` is empty (nothing to plot).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from models.classes import CLASSES

    if not rows:
        raise ValueError(f"night {night}: no exposure row to plot")
    timed = [r for r in rows if r["time"] is not None]
    times = [r["time"].astimezone(dt.UTC).replace(tzinfo=None) for r in timed]
    colors = dict(
        zip(CLASSES, ("tab:green", "tab:orange", "tab:purple", "tab:red", "tab:brown"), strict=True)
    )
    fig = Figure(figsize=(10, 2 + 1.6 * (1 + len(STATISTICS))), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1 + len(STATISTICS), 1, sharex=True)
    ax = axes[0]
    for c in CLASSES:
        sel = [
            t
            for t, r in zip(times, timed, strict=True)
            if r["status"] == "graded" and r["grade"] == c
        ]
        ax.scatter(sel, [CLASSES.index(c)] * len(sel), color=colors[c], s=25, label=c)
    bad = [t for t, r in zip(times, timed, strict=True) if r["status"] != "graded"]
    ax.scatter(bad, [len(CLASSES)] * len(bad), color="black", marker="x", s=25)
    ax.set_yticks(range(len(CLASSES) + 1), [*CLASSES, "quarantined"])
    ax.set_ylim(-0.5, len(CLASSES) + 0.5)
    ax.invert_yaxis()
    s = summarize(rows)
    usable = "-" if s["usable_fraction"] is None else f"{100 * s['usable_fraction']:.0f}%"
    ax.set_title(
        f"night {night}: {s['n']} exposures, {s['graded']} graded, usable (GOOD) {usable}; "
        f"model {', '.join(s['model_versions'])}"
    )
    for ax, (column, label) in zip(axes[1:], STATISTICS, strict=True):
        pts = [
            (t, r[column], r["grade"])
            for t, r in zip(times, timed, strict=True)
            if r["status"] == "graded" and _usable(r[column])
        ]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="0.7", lw=0.8, zorder=1)
        ax.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            c=[colors.get(p[2], "black") for p in pts],
            s=14,
            zorder=2,
        )
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("UTC (date_obs, else graded_at)")
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    return png


# --------------------------------------------------------------------------- command line


def add_arguments(parser) -> None:
    """Declare ``skygrade report``'s arguments."""
    parser.add_argument("dataset", type=Path, help="grades dataset (exposures/ by night)")
    parser.add_argument(
        "--night", default=None, help="YYYY-MM-DD (default: the latest night in the dataset)"
    )
    parser.add_argument("--png", type=Path, default=None, help="also write a plot here")
    parser.add_argument(
        "--html",
        type=Path,
        default=None,
        help="also write the observer page's night view here: one self-contained HTML file "
        "(CSS and images inlined, no script)",
    )
    parser.add_argument(
        "--model-version",
        default=None,
        help="rows of this model version (default: each exposure's latest grade)",
    )


def command(args, cfg) -> int:
    """Run ``skygrade report``; returns the exit code."""
    from streamer.cli import EXIT_FAILURE, EXIT_OK, UsageError, parse_nights

    if not (args.dataset / "exposures").is_dir():
        raise UsageError(f"{args.dataset} is not a grades dataset (no exposures/ directory)")
    if args.night is None:
        available = nights(args.dataset)
        if not available:
            raise UsageError(f"{args.dataset}: no night in the dataset")
        night = available[-1]
    else:
        chosen = parse_nights(args.night)
        if len(chosen) != 1:
            raise UsageError(f"--night: give one night, got {args.night!r}")
        night = chosen[0]
    rows = night_rows(args.dataset, night, args.model_version)
    print(format_report(night, rows))
    if not rows:
        return EXIT_FAILURE
    if args.png is not None:
        print(f"plot: {plot_night(night, rows, args.png)}")
    if args.html is not None:
        print(f"page: {write_html(args.dataset, night, args.html)}")
    return EXIT_OK


def write_html(out_dir: str | os.PathLike, night: str, path: str | os.PathLike) -> Path:
    """Write the night view of the observer page as one self-contained HTML file, atomically.

    See :func:`streamer.observer.render_static_night` (each exposure's latest grade, as the
    live page shows it).
    """
    from ops.files import atomic_write_text
    from streamer.observer import render_static_night

    return atomic_write_text(path, render_static_night(out_dir, night))
