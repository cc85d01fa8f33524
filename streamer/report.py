"""``skygrade report``: the morning report of a night from the grades dataset: text, a PNG plot,
a CSV of every exposure and the observer page's night view as one HTML file.

About the night, not the last exposure: counts per grade per filter, the time lost to each
non-GOOD grade, seeing / sky / airmass statistics when the rows carry them, the exposures to
re-observe (non-GOOD, with their reasons), the quarantined files and the timeline. An empty
dataset and a night with only quarantined files give a short report that says so (exit 0).

The night's exposure rows are read from ``DIR/exposures/night=NIGHT/`` (any file name: the
daemon's ``<exposure_id>.parquet`` and the backfill's ``<exposure_id>.<version>.parquet``). When
an exposure was graded by several model versions, the report takes one version: the one asked
for, else each exposure's most recently graded row.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import logging
import math
import os
import statistics
from collections import Counter
from pathlib import Path

from skygrade.models.classes import CLASSES
from skygrade.ops.files import atomic_write_text
from skygrade.ops.text import duration_text
from skygrade.streamer.night_summary import (
    GRADE_COLORS,
    PHYSICAL,
    counts_by_filter,
    has_value,
    latest_per_exposure,
    physical_stats,
    summarize,
    to_reobserve,
    trends,
)
from skygrade.streamer.observer_report import render_static_empty, render_static_night
from skygrade.transforms.exposure import observing_night
from skygrade.transforms.grades_dataset import GradesDataset

log = logging.getLogger(__name__)

STATISTICS = (
    ("median_elongation", "median elongation"),
    ("median_iso0", "median ISO0 (px)"),
    ("median_background", "median background (ADU)"),
    ("confidence", "confidence"),
)
"""Exposure columns plotted under the grades, with their axis labels."""

CSV_COLUMNS = (
    "night",
    "exposure_id",
    "time",
    "object",
    "filter",
    "exptime",
    "status",
    "grade",
    "confidence",
    *(f"p_{c}" for c in ("GOOD", "B_SEEING", "BGP", "BT", "RBT")),
    "n_ccd",
    "n_ccd_graded",
    "n_sources",
    "median_elongation",
    "median_iso0",
    "median_background",
    "ood_score",
    "latency_s",
    "model_version",
    "path",
    "reason",
)
"""Columns of the report's CSV, one row per exposure (then any :data:`PHYSICAL` column the
rows have)."""


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
    dataset = GradesDataset(out_dir)
    chosen = latest_per_exposure(dataset.night_rows(night), model_version)
    if not chosen:
        log.warning("no exposure row for night %s under %s", night, dataset.partition(night))
    return chosen


def _ut(when: dt.datetime | None) -> str:
    return when.astimezone(dt.UTC).strftime("%H:%M:%S") if when else "--:--:--"


def format_report(night: str, rows: list[dict]) -> str:
    """The text report: header, grades per filter, time lost, physical statistics (when the
    rows have them), hourly timeline (UTC), the exposures to re-observe and the quarantined."""

    s = summarize(rows)
    if not rows:
        return f"night {night}: no exposure graded"
    usable = "-" if s["usable_fraction"] is None else f"{100 * s['usable_fraction']:.0f}%"
    lines = [
        f"night {night}: {s['n']} exposure(s), {s['graded']} graded, "
        f"{s['quarantined']} quarantined; usable (GOOD) {usable} of graded; "
        f"model {', '.join(s['model_versions'])}",
    ]
    if not s["graded"]:
        lines.append("no exposure graded: every file of the night was quarantined (below)")
    else:
        lost = " · ".join(
            f"{c} {duration_text(s['lost_s'][c])}" for c in CLASSES if c in s["lost_s"]
        )
        lines += [
            "grades: "
            + "  ".join(
                f"{c} {n} ({100 * n / max(s['graded'], 1):.0f}%)"
                for c, n in ((c, s["grades"].get(c, 0)) for c in CLASSES)
            ),
            "time lost (sum of EXPTIME per grade): "
            + (lost or "none")
            + (
                f" ({s['lost_unknown']} exposure(s) without EXPTIME not counted)"
                if s["lost_unknown"]
                else ""
            ),
            "",
            "grades per filter:",
            f"  {'filter':<12} {'n':>4} " + " ".join(f"{c:>8}" for c in CLASSES) + f" {'Q':>4}",
        ]
        for name, f in counts_by_filter(rows).items():
            lines.append(
                f"  {name[:12]:<12} {f['n']:>4} "
                + " ".join(f"{f[c]:>8}" for c in CLASSES)
                + f" {f['quarantined']:>4}"
            )
        physical = physical_stats(rows)
        if physical:
            lines += ["", "measured (graded exposures): median [min, max]"]
            lines += [
                f"  {label}: {med:{fmt}}{unit} [{lo:{fmt}}, {hi:{fmt}}] ({n} exposures)"
                for label, unit, fmt, n, med, lo, hi in physical
            ]
    lines += [
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
            values = [r[column] for r in graded if has_value(r.get(column))]
            return statistics.median(values) if values else float("nan")

        lines.append(
            f"{hour:>13}  {len(group):>3}  "
            + " ".join(f"{counts.get(c, 0):>8}" for c in CLASSES)
            + f"  {len(group) - len(graded):>3}  {med('median_elongation'):5.2f}  "
            f"{med('median_iso0'):6.1f}  {med('median_background'):8.1f}  "
            f"{med('confidence'):4.2f}"
        )
    again = to_reobserve(rows)
    if again:
        lines += ["", f"to re-observe ({len(again)} not GOOD; UT, EXPNUM, OBJECT, FILTER, grade):"]
        lines += [
            f"  {_ut(r['time'])} {r['exposure_id']} {(r.get('object') or '-')[:20]} "
            f"{r.get('filter') or '-'} {r['grade']} {r['confidence']:.2f}: "
            f"{(r['reason'] or '')[:100]}"
            for r in again
        ]
    quarantined = [r for r in rows if r["status"] != "graded"]
    if quarantined:
        lines += ["", "quarantined:"]
        lines += [f"  {r['exposure_id']}: {(r['reason'] or '')[:100]}" for r in quarantined]
    return "\n".join(lines)


def format_empty(out_dir: str | os.PathLike) -> str:
    """The report of a dataset without any night yet."""
    return f"{out_dir}: no night in the dataset yet (nothing graded)"


def night_axis(night: str, rows: list[dict]) -> tuple[dt.datetime, dt.datetime]:
    """The plot's time range: the exposures' times, padded by 10 minutes; the night (18:00 to
    07:00 HST) when no exposure has a time."""
    times = [r["time"] for r in rows if r.get("time") is not None]
    if not times:
        start = dt.datetime.fromisoformat(night).replace(tzinfo=dt.UTC) + dt.timedelta(hours=28)
        return start, start + dt.timedelta(hours=13)
    pad = dt.timedelta(minutes=10)
    return min(times) - pad, max(times) + pad


def plot_night(night: str, rows: list[dict], png: str | os.PathLike | None = None):
    """Write a PNG of :func:`night_figure`; ``png`` None: return the PNG's bytes instead of a
    path."""

    fig = night_figure(night, rows)
    if png is None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    return png


def night_figure(night: str, rows: list[dict]):
    """The grade and the key statistics of each exposure through the night, a figure.

    Panels share the time axis (``date_obs``, else ``graded_at``; hours UT): the grade (one
    row per class, quarantined exposures as crosses), then median elongation, median ISO0,
    median background and confidence; a panel without a value says so. With no exposure, or
    none graded, only the grade panel, over the night.
    """
    # matplotlib on first use: the daemon imports this module but draws a night PNG only on
    # request, and matplotlib costs every process that imports it a second of start-up
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    timed = [r for r in rows if r["time"] is not None]
    times = [r["time"].astimezone(dt.UTC).replace(tzinfo=None) for r in timed]
    colors = {c: tuple(v / 255 for v in GRADE_COLORS[c]) for c in CLASSES}
    s = summarize(rows)
    stats = (*trends(rows), *STATISTICS) if s["graded"] else ()
    fig = Figure(figsize=(10, 2.4 + 1.6 * (1 + len(stats))), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1 + len(stats), 1, sharex=True, squeeze=False)[:, 0]
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
    ax.grid(alpha=0.3)
    usable = "-" if s["usable_fraction"] is None else f"{100 * s['usable_fraction']:.0f}%"
    ax.set_title(
        f"night {night}: {s['n']} exposures, {s['graded']} graded, "
        f"{s['quarantined']} quarantined, usable (GOOD) {usable}; "
        f"model {', '.join(s['model_versions']) or '-'}",
        fontsize=10,
    )
    if not s["graded"]:
        ax.text(
            0.5,
            0.5,
            "no exposure" if not rows else "no exposure graded: every file quarantined",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=12,
            color="0.3",
        )
    for ax, (column, label) in zip(axes[1:], stats, strict=True):
        pts = [
            (t, r[column], r["grade"])
            for t, r in zip(times, timed, strict=True)
            if r["status"] == "graded" and has_value(r.get(column))
        ]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="0.7", lw=0.8, zorder=1)
        ax.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            c=[colors.get(p[2], "black") for p in pts],
            s=14,
            zorder=2,
        )
        if not pts:
            ax.text(0.5, 0.5, "no value", transform=ax.transAxes, ha="center", color="0.4")
            ax.set_yticks([])
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    start, end = night_axis(night, rows)
    axes[-1].set_xlim(start.replace(tzinfo=None), end.replace(tzinfo=None))
    axes[-1].xaxis.set_major_formatter(DateFormatter("%H:%M"))
    axes[-1].set_xlabel(f"UT from {start:%Y-%m-%d %H:%M} (date_obs, else graded_at)")
    return fig


def csv_text(rows: list[dict]) -> str:
    """Every exposure of ``rows`` as CSV (:data:`CSV_COLUMNS`, then the :data:`PHYSICAL`
    columns the rows have); ``time`` in ISO 8601 UTC."""

    extra = [c for c, *_ in PHYSICAL if any(c in r for r in rows)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *extra])
    for r in rows:
        out = []
        for column in (*CSV_COLUMNS, *extra):
            v = r.get(column)
            if column == "time" and v is not None:
                v = v.astimezone(dt.UTC).isoformat()
            elif isinstance(v, float) and math.isnan(v):
                v = ""
            out.append("" if v is None else v)
        writer.writerow(out)
    return buf.getvalue()


def write_png(out_dir, night: str | None, path: str | os.PathLike) -> Path:
    """The plot of an empty dataset (``night`` None: tonight's axis) or of a night."""

    night = night or observing_night(dt.datetime.now(dt.UTC))
    rows = night_rows(out_dir, night) if GradesDataset(out_dir).has_exposures() else []
    return plot_night(night, rows, path)


def write_html(
    out_dir: str | os.PathLike,
    night: str | None,
    path: str | os.PathLike,
    rows: list[dict] | None = None,
    csv: str | None = None,
) -> Path:
    """Write the morning report as one self-contained HTML file, atomically: the observer
    page's night view (:func:`skygrade.streamer.observer_report.render_static_night`, each
    exposure's latest grade, as the live page shows it), the exposures to re-observe, the grades per
    filter and the plot inlined; ``csv``: the name of the CSV written beside it, linked. ``night``
    None: the short page of a dataset with no night yet.
    """

    if night is None:
        return atomic_write_text(path, render_static_empty(out_dir))
    if rows is None:
        rows = night_rows(out_dir, night)
    png = "data:image/png;base64," + base64.b64encode(plot_night(night, rows)).decode()
    return atomic_write_text(path, render_static_night(out_dir, night, plot=png, csv=csv))
