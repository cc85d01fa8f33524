"""The panels of the observer page, rendered from a night's rows: what each panel's template
is given (its view), and the markup it makes.

One function per panel, each a plain function of dataset rows and daemon documents (no
request, no file): :func:`render_now` (daemon state, last graded, alerts),
:func:`render_waiting` (files not graded, from :func:`waiting_rows`), :func:`render_exposure`
(headline, CCD votes, facts, the focal plane) with :func:`render_ccd_detail` (one CCD), and
:func:`render_tonight` (the night at a glance: chips, time lost, timeline, trends, table);
and the JSON of a night (:func:`night_json`) and of a row (:func:`public_row`).
:mod:`skygrade.streamer.observer` serves them and :mod:`skygrade.streamer.observer_report` puts them
in one file.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from markupsafe import Markup

from skygrade.models.classes import CLASSES, DESCRIPTIONS
from skygrade.ops.text import duration_text
from skygrade.streamer.night_summary import GRADE_COLORS, PHYSICAL, summarize, trends
from skygrade.streamer.observer_templates import TEMPLATES, page_url, render
from skygrade.streamer.page_images import focal_plane_layout
from skygrade.streamer.preview import PREVIEW_HEIGHT, hit_grid

if TYPE_CHECKING:
    from skygrade.streamer.observer_index import NightIndex

__all__ = [
    "TABLE_ROWS",
    "WAITING_ROWS",
    "ccd_confidence",
    "finite",
    "focal_plane_layout_for",
    "hms",
    "jsonable",
    "latest_graded",
    "nav_context",
    "neighbours",
    "night_json",
    "night_span",
    "num",
    "public_row",
    "render_ccd_detail",
    "render_exposure",
    "render_now",
    "render_tonight",
    "render_waiting",
    "rgba",
    "shade",
    "unix_seconds",
    "vote_flag",
    "votes",
    "waiting_rows",
]

TABLE_ROWS = 50
"""Exposures in the server-rendered table (newest first); ``all=1`` shows every one."""
WAITING_ROWS = 100
"""Rows of the Waiting panel (longest waiting first); the rest are counted."""


# --------------------------------------------------------------------------- small helpers


def finite(v) -> bool:
    """True for a finite int or float (not a bool, not None)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def hms(when: dt.datetime | None) -> str:
    """``HH:MM:SS`` in UTC, or ``-``."""
    return when.astimezone(dt.UTC).strftime("%H:%M:%S") if when else "-"


def num(v, fmt: str = ".2f", unit: str = "") -> str:
    """A number as the page shows it (``-`` when it is not finite)."""
    return f"{v:{fmt}}{unit}" if finite(v) else "-"


def rgba(grade: str | None, confidence) -> str | None:
    """Cell / mark colour: the grade's colour, more opaque the more confident."""
    if grade not in GRADE_COLORS:
        return None
    r, g, b = GRADE_COLORS[grade]
    c = confidence if finite(confidence) else 0.0
    return f"rgba({r}, {g}, {b}, {shade(c):.2f})"


def shade(confidence: float) -> float:
    """Opacity of a grade colour for a confidence in 0..1: 0.3 at 0, 1 at 1."""
    return 0.3 + 0.7 * min(max(float(confidence), 0.0), 1.0)


def unix_seconds(when) -> float | None:
    """Unix seconds of a datetime, an ISO 8601 text or a number (None when none of these)."""
    if isinstance(when, dt.datetime):
        return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
    if isinstance(when, str):
        try:
            return unix_seconds(dt.datetime.fromisoformat(when))
        except ValueError:
            return None
    return float(when) if finite(when) else None


def ccd_confidence(c: dict):
    """A CCD's probability of its own grade (None when it has no grade)."""
    return c.get(f"p_{c['grade']}") if c.get("grade") else None


def _ago(seconds: float) -> str:
    return duration_text(seconds) + " ago"


def _ood_text(score) -> str:
    """The out-of-distribution score for people: 1 is the edge of the training data."""
    if not finite(score):
        return "-"
    verdict = "unlike the training data: confidence lowered" if score > 1.0 else "familiar"
    return f"{score:.2f} ({verdict})"


def _exposure_href(r: dict) -> str:
    return page_url("/exposure", night=r["night"], id=r["exposure_id"])


def latest_graded(rows: list[dict]) -> dict | None:
    """The latest graded exposure of a night's rows (sorted by time), or None."""
    return next((r for r in reversed(rows) if r["status"] == "graded"), None)


def neighbours(rows: list[dict], row: dict, href) -> dict:
    """The previous and next exposure of ``row`` in the night (``{"prev": ..., "next": ...}``,
    each ``{"id", "href"}`` or None)."""
    ids = [r["exposure_id"] for r in rows]
    try:
        i = ids.index(row["exposure_id"])
    except ValueError:
        return {"prev": None, "next": None}
    out = {}
    for name, j in (("prev", i - 1), ("next", i + 1)):
        out[name] = (
            {"id": rows[j]["exposure_id"], "href": href(rows[j])} if 0 <= j < len(rows) else None
        )
    return out


def night_span(night: str, rows: list[dict]) -> tuple[dt.datetime, dt.datetime]:
    """Time axis of the timeline: the night (18:00 to 07:00 HST), widened to every exposure."""
    start = dt.datetime.fromisoformat(night).replace(tzinfo=dt.UTC) + dt.timedelta(hours=28)
    end = start + dt.timedelta(hours=13)
    times = [r["time"] for r in rows if r.get("time") is not None]
    if times:
        start, end = min(start, min(times)), max(end, max(times))
    return start, end


# --------------------------------------------------------------------------- nav, now, waiting


def nav_context(night: str, nights: list[str], live: bool) -> dict:
    """The served page's nav bar: the night, the nights before and after it, live or not."""
    earlier = [n for n in nights if n < night]
    later = [n for n in nights if n > night]
    return {
        "subtitle": "observer",
        "static": False,
        "night": night,
        "earlier": earlier[-1] if earlier else None,
        "later": later[0] if later else None,
        "live": live,
    }


def render_now(doc: dict, now: float | None = None) -> Markup:
    """The Now panel: daemon state, backlog, last graded and the active alerts (since when)."""
    now = time.time() if now is None else now
    last = doc.get("last_graded")
    last_view = None
    if last:
        when = dt.datetime.fromisoformat(last["graded_at"])
        last_view = {
            "hms": hms(when),
            "t": f"{when.timestamp():.3f}",
            "ago": _ago(max(0.0, now - when.timestamp())),
            "exposure_id": last["exposure_id"],
            "grade": last["grade"],
        }
    alerts = []
    for a in doc.get("alerts") or []:
        t = unix_seconds(a.get("since"))
        alerts.append(
            {
                "level": a.get("level"),
                "css": str(a.get("level", "")).lower(),
                "rule": a.get("rule"),
                "message": a.get("message"),
                "t": None if t is None else f"{t:.3f}",
                "hms": "" if t is None else hms(dt.datetime.fromtimestamp(t, dt.UTC)),
                "ago": "" if t is None else _ago(max(0.0, now - t)),
            }
        )
    return render("now.html.j2", doc=doc, last=last_view, alerts=alerts)


def _waiting(name, state, since, reason, href=None) -> dict:
    return {
        "id": str(name),
        "state": str(state),
        "t": unix_seconds(since),
        "reason": reason or "",
        "href": href,
    }


def waiting_rows(
    held: list[dict], rows: list[dict], now: float | None = None, href=None
) -> list[dict]:
    """The Waiting panel's rows, longest waiting first: the files the daemon ``held`` and has
    not graded (:attr:`skygrade.streamer.observer.Observer.waiting`) and the quarantined exposures
    of a night's ``rows`` (linked by ``href(row)``, default their exposure page)."""
    now = time.time() if now is None else now
    href = _exposure_href if href is None else href
    items = []
    for w in held:
        name = w.get("exposure_id") or Path(str(w.get("path") or "?")).name
        items.append(_waiting(name, w.get("state") or "incoming", w.get("since"), w.get("reason")))
    for r in rows:
        if r["status"] != "graded":
            since = r.get("arrived_at") or r.get("graded_at") or r.get("time")
            items.append(_waiting(r["exposure_id"], r["status"], since, r.get("reason"), href(r)))
    for w in items:
        w["waited_s"] = None if w["t"] is None else max(0.0, now - w["t"])
    return sorted(items, key=lambda w: (w["t"] is None, w["t"] or 0.0, w["id"]))


def render_waiting(items: list[dict]) -> Markup:
    """The Waiting panel: files not graded (quarantined, incoming, incomplete), since when."""
    view = []
    for w in items[:WAITING_ROWS]:
        t = w["t"]
        view.append(
            w
            | {
                "t": None if t is None else f"{t:.3f}",
                "hms": "-" if t is None else hms(dt.datetime.fromtimestamp(t, dt.UTC)) + " UT",
                "waited": "-" if w["waited_s"] is None else duration_text(w["waited_s"]),
            }
        )
    return render("waiting.html.j2", items=view, more=max(0, len(items) - WAITING_ROWS))


# --------------------------------------------------------------------------- exposure, CCD


def votes(ccds: list[dict]) -> list[tuple[str, int]]:
    """The grades of an exposure's graded CCDs, most votes first (ties in :data:`CLASSES`
    order): ``[("BGP", 2), ("RBT", 1), ("B_SEEING", 1)]``."""
    counts = Counter(c["grade"] for c in ccds if c.get("grade"))
    order = {g: i for i, g in enumerate(CLASSES)}
    return sorted(counts.items(), key=lambda gn: (-gn[1], order.get(gn[0], len(order)), gn[0]))


def vote_flag(grade: str | None, tally: list[tuple[str, int]]) -> str | None:
    """Why the headline grade needs a second look, or None: when another grade has more CCD
    votes than it (or as many)."""
    if not grade or not tally:
        return None
    mine = dict(tally).get(grade, 0)
    top_grade, top = tally[0]
    total = sum(n for _, n in tally)
    if mine < top:
        return (
            f"{grade} is not the majority of the CCDs: {mine} of {total} votes, "
            f"{top_grade} has {top}"
        )
    rivals = [g for g, n in tally if n == mine and g != grade]
    if rivals:
        return f"{grade} ties with {', '.join(rivals)}: {mine} of {total} votes each"
    return None


def render_exposure(
    row: dict,
    ccds: list[dict],
    title: str,
    href: Callable[[int], str],
    detail: Markup | None = None,
    selected: int | None = None,
    neighbours: dict | None = None,
    hint: str = "select a CCD for its probabilities, hits and image",
    mosaic: str | None = None,
) -> Markup:
    """The exposure panel: headline, CCD votes, previous / next, facts, focal plane (and one
    CCD's details)."""
    facts = [
        ("EXPNUM", row["exposure_id"]),
        ("OBJECT", row.get("object")),
        ("FILTER", row.get("filter")),
        ("EXPTIME", num(row.get("exptime"), ".0f", " s")),
        ("taken", f"{hms(row.get('time'))} UT"),
        ("latency", num(row.get("latency_s"), ".1f", " s")),
        ("CCDs graded", f"{row.get('n_ccd_graded') or 0} / {row.get('n_ccd') or 0}"),
        ("OOD score", _ood_text(row.get("ood_score"))),
        ("model", row.get("model_version")),
    ]
    facts += [
        (label, num(row[col], fmt, unit))
        for col, label, unit, fmt in PHYSICAL
        if finite(row.get(col))
    ]
    tally = votes(ccds)
    neighbours = neighbours or {"prev": None, "next": None}
    rows, cols, cells = focal_plane_layout_for(row, ccds)
    return render(
        "exposure.html.j2",
        row=row,
        title=title,
        conf=num(row.get("confidence")),
        votes=tally,
        flag=vote_flag(row.get("grade"), tally),
        facts=[(k, "" if v is None else v) for k, v in facts],
        rows=rows,
        cols=cols,
        cells=_cells(ccds, cells, href, selected),
        detail=detail,
        hint=hint,
        prev=neighbours["prev"],
        next=neighbours["next"],
        mosaic=mosaic,
    )


def focal_plane_layout_for(row: dict, ccds: list[dict]):
    """:func:`skygrade.streamer.page_images.focal_plane_layout` of an exposure: as many cells as it
    has CCDs (its ``n_ccd``, or more when a CCD row says so)."""
    n = max([int(row.get("n_ccd") or 0)] + [c["ccd"] + 1 for c in ccds])
    rows, cols, cells = focal_plane_layout(n)
    return rows, cols, cells[:n] if n else []


def _cells(ccds, cells, href, selected) -> list[dict]:
    """One focal-plane cell per CCD at its place, coloured by grade and confidence."""
    by_ccd = {c["ccd"]: c for c in ccds}
    out = []
    for k, (r, col) in enumerate(cells):
        c = by_ccd.get(k)
        status = c["status"] if c else "missing"
        grade = c["grade"] if c else None
        conf = ccd_confidence(c) if c else None
        color = rgba(grade, conf)
        style = f"grid-row:{r + 1};grid-column:{col + 1}" + (
            f";background-color:{color}" if color else ""
        )
        tip = f"ccd{k:02d} {grade or status} {num(conf)}"
        if c and c.get("reason"):
            tip += f" ({c['reason']})"
        out.append(
            {
                "k": k,
                "grade": grade or "",
                "status": status,
                "label": grade
                or {"quarantined": "Q", "not_graded": "-", "missing": "?"}.get(status, "?"),
                "style": style,
                "tip": tip,
                "href": href(k),
                "selected": k == selected,
            }
        )
    return out


def render_ccd_detail(
    c: dict, thumb: str | None, preview: str | None = None, hits_png: str | None = None
) -> Markup:
    """Class probabilities, sources, medians, the hit counts by cluster (laid out as the
    representative image's tiles) and the representative image of a CCD; with ``preview``
    (a URL) its binned pixels beside it, with ``hits_png`` the hits drawn over the tiles as
    ``skygrade inspect`` draws them."""

    facts = [
        ("status", c.get("status")),
        ("sources", c.get("n_sources")),
        ("median elongation", num(c.get("median_elongation"))),
        ("median ISO0", num(c.get("median_iso0"), ".1f", " px")),
        ("median background", num(c.get("median_background"), ".1f", " ADU")),
    ]
    facts += [
        (label, num(c[col], fmt, unit)) for col, label, unit, fmt in PHYSICAL if finite(c.get(col))
    ]
    facts.append(("reason", c.get("reason") or "-"))
    return render(
        "ccd_detail.html.j2",
        c=c,
        thumb=thumb,
        probs=[(k, c[f"p_{k}"]) for k in CLASSES if finite(c.get(f"p_{k}"))],
        colors={k: "rgb({}, {}, {})".format(*GRADE_COLORS[k]) for k in CLASSES},
        facts=[(k, "" if v is None else v) for k, v in facts],
        hits=hit_grid(c.get("hits") or []),
        preview=preview,
        preview_height=PREVIEW_HEIGHT,
        hits_png=hits_png,
    )


# --------------------------------------------------------------------------- the night panel

_X0, _WIDTH, _BASE, _HEIGHT = 40.0, 940.0, 100.0, 80.0


_MARK = TEMPLATES.get_template("mark.html.j2")


def _mark_anchor(r: dict) -> str:
    return f"#exp-{r['exposure_id']}"


def _marks(night: str, rows: list[dict], start, end, href) -> Markup:
    """The timeline's marks, one link per exposure; each mark's markup is made once and kept
    with its row (a new exposure renders one mark, not a thousand)."""
    span = (end - start).total_seconds() or 1.0
    marks = []
    for r in rows:
        if r.get("time") is None:
            continue
        cached = r.get("_mark")
        if cached is not None and cached[0] == (start, end, href):
            marks.append(cached[1])
            continue
        link = href(r)
        x = _X0 + _WIDTH * (r["time"] - start).total_seconds() / span
        graded = r["status"] == "graded"
        h = max(_HEIGHT * (r["confidence"] or 0.0), 4.0) if graded else 6.0
        tip = f"{r['exposure_id']} {hms(r['time'])} UT {r['grade'] or r['status']}"
        tip += f" {r['confidence']:.2f}" if graded else ""
        mark = _MARK.render(
            id=r["exposure_id"],
            cls="mark" if graded else "mark q",
            x=f"{x - 1.5:.1f}",
            y=f"{_BASE - h:.1f}",
            h=f"{h:.1f}",
            fill="rgb({}, {}, {})".format(*GRADE_COLORS[r["grade"]]) if graded else "#888",
            opacity=f"{shade(r['confidence'] or 0.0) if graded else 1.0:.2f}",
            tip=tip,
            href=link,
        )
        r["_mark"] = ((start, end, href), mark)
        marks.append(mark)
    return Markup("".join(marks))


def _ticks(start, end) -> list[dict]:
    span = (end - start).total_seconds() or 1.0
    ticks = []
    hour = start.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    while hour < end:
        x = _X0 + _WIDTH * (hour - start).total_seconds() / span
        ticks.append({"x": f"{x:.1f}", "label": f"{hour:%H}"})
        hour += dt.timedelta(hours=1)
    return ticks


def _table(rows: list[dict], show_all: bool, links: bool) -> list[dict]:
    """The night table's rows, newest first (:data:`TABLE_ROWS` of them unless ``show_all``)."""
    shown = rows[::-1] if show_all else rows[::-1][:TABLE_ROWS]
    return [
        {
            "id": r["exposure_id"],
            "href": page_url("/exposure", night=r["night"], id=r["exposure_id"]) if links else None,
            "hms": hms(r.get("time")),
            "object": r.get("object") or "",
            "filter": r.get("filter") or "",
            "exptime": num(r.get("exptime"), ".0f"),
            "grade": r["grade"] or "",
            "label": r["grade"] or r["status"],
            "conf": num(r.get("confidence")),
            "latency": num(r.get("latency_s"), ".1f"),
            "reason": r.get("reason") or "",
        }
        for r in shown
    ]


def _strips(rows: list[dict], start, end) -> list[dict]:
    """The trend strips beside the timeline: one polyline per physical column with values."""
    span = (end - start).total_seconds() or 1.0
    strips = []
    for column, label in trends(rows):
        pts = [
            (_X0 + _WIDTH * (r["time"] - start).total_seconds() / span, float(r[column]))
            for r in rows
            if r["status"] == "graded" and r.get("time") is not None and finite(r.get(column))
        ]
        if not pts:
            continue
        lo, hi = min(v for _, v in pts), max(v for _, v in pts)
        scale = (hi - lo) or 1.0
        strips.append(
            {
                "column": column,
                "label": label,
                "points": " ".join(f"{x:.1f},{52 - 44 * (v - lo) / scale:.1f}" for x, v in pts),
                "lo": f"{lo:.2f}",
                "hi": f"{hi:.2f}",
                "last": f"{pts[-1][1]:.2f}",
            }
        )
    return strips


def render_tonight(
    night: str, rows: list[dict], show_all: bool, links: bool = True, rev: str = ""
) -> Markup:
    """The night panel: grade chips and legend, time lost, the usable fraction, the timeline
    (marks link to the exposure pages, or with ``links`` off to the table rows) and the table.
    """
    s = summarize(rows)
    start, end = night_span(night, rows)
    href = _exposure_href if links else _mark_anchor
    usable = "-" if s["usable_fraction"] is None else f"{100 * s['usable_fraction']:.0f}%"
    latest = latest_graded(rows)
    return render(
        "tonight.html.j2",
        night=night,
        rev=rev,
        latest=latest["exposure_id"] if latest else "",
        s=s,
        usable=usable,
        chips=[
            {"grade": g, "n": s["grades"].get(g, 0), "description": DESCRIPTIONS[g]}
            for g in CLASSES
        ],
        lost=[(g, duration_text(s["lost_s"][g])) for g in CLASSES if g in s["lost_s"]],
        links=links,
        start=start.isoformat(),
        end=end.isoformat(),
        x0=_X0,
        x1=_X0 + _WIDTH,
        base=_BASE,
        ticks=_ticks(start, end),
        marks=_marks(night, rows, start, end, href),
        strips=_strips(rows, start, end),
        table=_table(rows, show_all, links),
        more=None if show_all or len(rows) <= TABLE_ROWS else page_url("/night", date=night, all=1),
    )


# --------------------------------------------------------------------------- JSON


def jsonable(v):
    """A dataset value for JSON: NaN -> None, a datetime -> ISO 8601 (UTC when naive)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dt.datetime):
        return (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).isoformat()
    return v


def public_row(row: dict) -> dict:
    """A dataset row for JSON: NaN -> null, datetimes -> ISO 8601, private keys dropped."""
    return {k: jsonable(v) for k, v in row.items() if not k.startswith("_")}


def night_json(index: NightIndex) -> bytes:
    """The ``/api/night`` document, serialised: ``night``, ``rev``, ``summary``, ``span`` and
    ``exposures`` (every row; each row's JSON is made once and kept with the row)."""
    start, end = night_span(index.night, index.rows)
    head = {
        "night": index.night,
        "rev": index.rev,
        "summary": summarize(index.rows),
        "span": [start.isoformat(), end.isoformat()],
    }
    rows = []
    for r in index.rows:
        if "_json" not in r:
            r["_json"] = json.dumps(public_row(r), allow_nan=False)
        rows.append(r["_json"])
    text = json.dumps(head, allow_nan=False)[:-1] + ', "exposures": [' + ", ".join(rows) + "]}"
    return text.encode()
