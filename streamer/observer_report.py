"""The observer page's night view as one self-contained HTML file: ``skygrade report --html``.

The same panels as the served page (:mod:`skygrade.streamer.observer_views`), over the same index of
the dataset (:mod:`skygrade.streamer.observer_index`), with the CSS and the images inlined and no
script: grades per filter, what to re-observe, the plot, the night panel, the quarantined
files, then the latest graded exposure with every CCD's details.
"""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

from markupsafe import Markup

from skygrade.models.classes import CLASSES
from skygrade.streamer.night_summary import (
    counts_by_filter,
    physical_stats,
    summarize,
    to_reobserve,
)
from skygrade.streamer.observer_index import DatasetIndex
from skygrade.streamer.observer_templates import asset, render, render_page
from skygrade.streamer.observer_views import (
    hms,
    latest_graded,
    neighbours,
    num,
    render_ccd_detail,
    render_exposure,
    render_tonight,
    render_waiting,
    waiting_rows,
)
from skygrade.streamer.page_images import thumbnail_png

__all__ = ["render_static_empty", "render_static_night"]


def _anchor(r: dict) -> str:
    return f"#exp-{r['exposure_id']}"


def _nav(night: str, models: str) -> Markup:
    return render(
        "nav.html.j2",
        subtitle="night report",
        static=True,
        night=night,
        written=f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
        models=models,
    )


def _morning(rows: list[dict]) -> Markup:
    """Grades per filter, the physical statistics and the exposures to re-observe."""
    again = [
        {
            "id": r["exposure_id"],
            "hms": hms(r.get("time")),
            "object": r.get("object") or "",
            "filter": r.get("filter") or "",
            "exptime": num(r.get("exptime"), ".0f"),
            "grade": r["grade"],
            "conf": num(r.get("confidence")),
            "reason": r.get("reason") or "",
        }
        for r in to_reobserve(rows)
    ]
    return render(
        "morning.html.j2",
        classes=CLASSES,
        filters=counts_by_filter(rows),
        physical=physical_stats(rows),
        again=again,
    )


def _latest_exposure(data: DatasetIndex, rows: list[dict]) -> list[Markup]:
    """The latest graded exposure's panel, its CCDs linked to their details below it (each
    with its representative image inlined)."""
    latest = latest_graded(rows)
    if latest is None:
        return [
            Markup(
                '<section id="exposure" class="panel"><h2>Latest exposure</h2>'
                '<p class="empty">no exposure graded this night</p></section>'
            )
        ]
    ccds = data.ccd_rows(latest)
    images = data.images(latest)
    details = []
    for c in ccds:
        thumb = None
        if c["ccd"] in images:
            png = base64.b64encode(thumbnail_png(images[c["ccd"]])).decode()
            thumb = f"data:image/png;base64,{png}"
        details.append({"ccd": c["ccd"], "html": render_ccd_detail(c, thumb)})
    return [
        render_exposure(
            latest,
            ccds,
            "Latest exposure",
            href=lambda k: f"#ccd-{k}",
            neighbours=neighbours(rows, latest, _anchor),
            hint="select a CCD: its details are below",
        ),
        render("ccds.html.j2", details=details),
    ]


def render_static_night(out_dir, night: str, plot: str | None = None, csv: str | None = None):
    """The morning report of a night as one self-contained HTML document (CSS and images
    inlined, no script): grades per filter, what to re-observe, the plot, the night panel,
    the quarantined files, then the latest graded exposure.

    The latest graded exposure's focal plane links every CCD to its details (probabilities,
    hits and the representative image as an inlined PNG); the quarantined files are listed
    with their reasons; the timeline and the table list every exposure. ``plot``: a
    ``data:image/png`` URL of the night's plot, shown under the timeline; ``csv``: the name of
    the CSV written beside the page, linked.

    Raises
    ------
    LookupError
        The night is not in the dataset.
    """
    data = DatasetIndex(Path(out_dir), boot="report")  # one read: no revision is shown
    index = data.night(night)
    if index is None:
        raise LookupError(f"night {night!r} is not in the dataset at {out_dir}")
    rows = index.rows
    parts = [_nav(night, ", ".join(summarize(rows)["model_versions"])), _morning(rows)]
    if plot is not None:
        parts.append(render("plot.html.j2", png=plot, csv=csv))
    parts.append(render_tonight(night, rows, show_all=True, links=False))
    parts.append(render_waiting(waiting_rows([], rows, href=_anchor)))
    parts += _latest_exposure(data, rows)
    css = asset("observer.css").decode()
    return render_page(f"skygrade · night {night}", {"data-night": night}, parts, css)


def render_static_empty(out_dir) -> str:
    """The morning report of a dataset with no night yet: one short self-contained page."""
    parts = [
        _nav("-", "-"),
        render(
            "missing.html.j2",
            heading="no night yet",
            message=f"the dataset at {out_dir} has no graded exposure yet",
            nights=[],
            back=None,
        ),
    ]
    css = asset("observer.css").decode()
    return render_page("skygrade · no night yet", {"data-night": ""}, parts, css)
