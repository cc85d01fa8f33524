"""The observer page: tonight at a glance, the focal plane of the last exposure, every CCD one
click away.

Served by the daemon's :class:`skygrade.ops.http.HttpServer` (the same loopback-bound server as
``/metrics``; :meth:`Observer.routes` gives the exact paths) and rendered into one static file by
``skygrade report --html`` (:mod:`skygrade.streamer.observer_report`). The page is read-only: it
reads the grades dataset, never writes.

Routes (every one answers GET and HEAD; unknown nights, ids and CCDs are 404, the pages' with a
page that says what is missing and lists the nights that have data):

===================================  ==================================================
``/[?ccd=K]``                        the live page: the latest night in the dataset
``/night?date=YYYY-MM-DD[&all=1]``   any night (``all=1``: every exposure in the table)
``/exposure?night=N&id=X[&ccd=K]``   one exposure's focal plane (``ccd``: its details)
``/fragment/now?night=N``            the Now and Waiting panels, HTML (the page's polls)
``/fragment/night?date=N[&all=1]``   the night panel, HTML
``/fragment/exposure?night=N&id=X``  the exposure panel, HTML (``ccd``, ``pinned=1``)
``/fragment/ccd?night=N&id=X&ccd=K`` one CCD's details, HTML
``/thumb?night=N&id=X&ccd=K``        a CCD's representative image, PNG
``/preview?night=N&id=X&ccd=K``      a CCD's pixels binned to ~256 px tall, PNG (``stretch``)
``/mosaic?night=N&id=X``             the whole focal plane's pixels binned, PNG (``stretch``)
``/hits?night=N&id=X&ccd=K``         a CCD's SOM hits by cluster as ``skygrade inspect``, PNG
``/api/now``                         daemon state, backlog, last graded, alerts, waiting
``/api/nights``                      the nights in the dataset
``/api/night?date=N[&rev=R]``        summary + every exposure row of a night
``/api/exposure?night=N&id=X``       one exposure row + its CCD rows (+ layout)
``/static/observer.css``, ``.js``    the page's assets, shipped in the package
===================================  ==================================================

This module is the HTTP side: the routes, their parameters and their responses. The pieces
it serves come from its neighbours: :mod:`skygrade.streamer.observer_index` reads the dataset (a
:class:`~skygrade.streamer.observer_index.NightIndex` per night, refreshed only when the listing of
the night's directory changes; CCD rows and images on demand),
:mod:`skygrade.streamer.observer_views` renders each panel from its rows, with the templates of
:mod:`skygrade.streamer.observer_templates`, and :mod:`skygrade.streamer.observer_report` is the
static file. The JSON and HTML built from a night's index are cached per index revision.

Rendering: every piece of HTML, the page and the fragments its script swaps in while it polls,
comes from the Jinja2 templates ``observer_assets/*.html.j2`` with autoescape on (one renderer:
the script builds no markup and holds no copy of the classes or colours).

Safety: nothing from a URL reaches the filesystem except through ids looked up in the index
(the night must match ``YYYY-MM-DD`` and exist as a directory, the exposure id must be a key of
that night's index, the CCD a row of that exposure); every text from the dataset (OBJECT comes
from a FITS header typed by observers) is HTML-escaped by the templates; the browser parses
those fragments with ``DOMParser`` (no script in them runs) and the page carries a
Content-Security-Policy that allows scripts from this server only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from markupsafe import Markup

from skygrade.ops.http import Request, Response
from skygrade.streamer.observer_index import LRU, DatasetIndex, NightIndex
from skygrade.streamer.observer_templates import ASSETS, asset, page_url, render, render_page
from skygrade.streamer.observer_views import (
    ccd_confidence,
    jsonable,
    latest_graded,
    nav_context,
    neighbours,
    night_json,
    public_row,
    render_ccd_detail,
    render_exposure,
    render_now,
    render_tonight,
    render_waiting,
    rgba,
    waiting_rows,
)
from skygrade.streamer.page_images import focal_plane_layout, thumbnail_png
from skygrade.streamer.preview import PreviewCache, PreviewError, Previews, hits_png
from skygrade.transforms.exposure import ExposureError, observing_night

log = logging.getLogger(__name__)

__all__ = ["POLL_S", "Observer"]

POLL_S = 3.0
"""Seconds between the page's polls of the JSON endpoints."""

_HTML = "text/html; charset=utf-8"
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_PNG = "image/png"
_NOT_FOUND = Response(404, _TEXT, b"not found\n")


class Observer:
    """The observer page and its JSON endpoints over the grades dataset at ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        The grades dataset (``exposures/``, ``ccds/``, ``images/``).
    status : callable, optional
        Returns the daemon's health document (:meth:`skygrade.streamer.daemon.Daemon.health`:
        ``ok``, ``model_version``, ``backlog``, ``alerts``, ...). None: no daemon (state "offline").
    poll_s : float, optional
        Seconds between the page's polls (default :data:`POLL_S`).
    drop_dir : path-like, optional
        The drop directory: the pixel previews (``/preview``, ``/mosaic``,
        :mod:`skygrade.streamer.preview`) read the exposure files there, and nowhere else. None: no
        pixel previews (404, and the page does not offer them).
    waiting : callable, optional
        Returns the files the daemon holds but has not graded, for the Waiting panel: dicts
        with ``exposure_id`` (or ``path``), ``state`` (``incoming``, ``grading`` or
        ``incomplete``), ``since`` (Unix seconds or ISO 8601: when it arrived) and an optional
        ``reason``. The quarantined files of the night come from the dataset itself.

    Attributes
    ----------
    index : DatasetIndex
        The dataset as the page reads it (:mod:`skygrade.streamer.observer_index`):
        ``index.night(N)`` is the refreshed :class:`~skygrade.streamer.observer_index.NightIndex` of
        night ``N``.

    Examples
    --------
    >>> from skygrade.ops.http import HttpServer  # doctest: +SKIP
    >>> server = HttpServer(registry, routes=Observer("grades").routes())  # doctest: +SKIP
    """

    def __init__(
        self,
        out_dir,
        status: Callable[[], dict] | None = None,
        poll_s: float = POLL_S,
        waiting: Callable[[], list[dict]] | None = None,
        drop_dir=None,
    ):

        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s!r}")
        self.out_dir = Path(out_dir)
        self.status = status
        self.waiting = waiting
        self.poll_s = float(poll_s)
        self.index = DatasetIndex(self.out_dir, format(time.time_ns() & 0xFFFFFFFFFF, "x"))
        # one lock: a night's rendered HTML (NightIndex.cache) is cleared by its refresh
        self._lock = self.index.lock
        self._pngs = LRU()
        self.previews = None if drop_dir is None else Previews(drop_dir)
        self._hit_pngs = PreviewCache(max_bytes=8 * 1024 * 1024)
        self.assets = {name: asset(name) for name in ASSETS}

    def routes(self) -> dict[str, Callable[[Request], Response]]:
        """Exact path -> handler, for :class:`skygrade.ops.http.HttpServer`."""
        routes = {
            "/": self.page_live,
            "/night": self.page_night,
            "/exposure": self.page_exposure,
            "/thumb": self.thumb,
            "/preview": self.preview,
            "/mosaic": self.mosaic,
            "/hits": self.hits,
            "/api/now": self.api_now,
            "/api/nights": self.api_nights,
            "/api/night": self.api_night,
            "/api/exposure": self.api_exposure,
            "/fragment/now": self.fragment_now,
            "/fragment/night": self.fragment_night,
            "/fragment/exposure": self.fragment_exposure,
            "/fragment/ccd": self.fragment_ccd,
        }
        for name, content_type in ASSETS.items():
            body = self.assets[name]
            routes[f"/static/{name}"] = lambda _r, b=body, t=content_type: Response(200, t, b)
        return routes

    # ------------------------------------------------------------------ data

    def warm(self) -> None:
        """Build the live night's index now (the first page after a restart would otherwise
        read every file of the night: seconds for a thousand exposures)."""
        try:
            self.index.night(self.live_night())
        except Exception:  # a page request retries; never let warming take anything down
            log.exception("warming the observer index failed")

    def live_night(self) -> str:
        """The night the live page shows: the latest in the dataset, else tonight."""
        nights = self.index.nights()
        if nights:
            return nights[-1]

        return observing_night(dt.datetime.now(dt.UTC))

    def _thumb_png(self, row: dict, ccd: int) -> bytes | None:
        key, images = self.index.images_keyed(row)
        if ccd not in images:
            return None
        with self._lock:
            return self._pngs.get_or((*key, ccd), lambda: thumbnail_png(images[ccd]))

    def _exposure(self, request: Request, id_param: str = "id"):
        index = self.index.night(_param(request, "night"))
        if index is None:
            return None, None
        return index, index.by_id.get(_param(request, id_param) or "")

    # ------------------------------------------------------------------ JSON

    def now_doc(self, nights: list[str] | None = None, index: NightIndex | None = None) -> dict:
        """The ``/api/now`` document (``nights`` and ``index``: already known by the caller).

        ``waiting`` lists the files not graded (:meth:`waiting_items`): the daemon's and the
        quarantined ones of ``index``'s night (default: the live night).
        """
        night = nights[-1] if nights else self.live_night()
        page_index = index
        if index is None or index.night != night:
            index = self.index.night(night)
        doc: dict = {
            "night": night,
            "server_time": dt.datetime.now(dt.UTC).isoformat(),
            "state": "offline",
            "ok": None,
            "backlog": None,
            "counts": {},
            "alerts": [],
            "model_version": None,
            "last_graded": None,
            "waiting": self.waiting_items(page_index or index),
        }
        if self.status is not None:
            try:
                health = dict(self.status())
            except Exception as exc:
                log.warning("observer: status failed: %s", exc)
                health = {"ok": False}
            doc.update(
                state="watching" if health.get("ok") else "not watching",
                ok=bool(health.get("ok")),
                backlog=health.get("backlog"),
                counts=health.get("counts", {}),
                alerts=health.get("alerts", []),
                model_version=health.get("model_version"),
            )
        graded = [r for r in (index.rows if index else []) if r["status"] == "graded"]
        if graded:
            last = max(graded, key=lambda r: r["graded_at"])
            doc["last_graded"] = {
                k: jsonable(last[k]) for k in ("exposure_id", "grade", "confidence", "graded_at")
            }
            doc["model_version"] = doc["model_version"] or last["model_version"]
        return doc

    def api_now(self, request: Request) -> Response:
        return _json(self.now_doc())

    def api_nights(self, request: Request) -> Response:
        return _json({"nights": self.index.nights()})

    def api_night(self, request: Request) -> Response:
        index = self.index.night(_param(request, "date"))
        if index is None:
            return _NOT_FOUND
        with self._lock:
            if _param(request, "rev") == index.rev:
                return _json({"night": index.night, "rev": index.rev, "unchanged": True})
            body = index.cache.get("json")
            if body is None:
                body = index.cache["json"] = night_json(index)
        return Response(200, _JSON, body)

    def exposure_doc(self, row: dict) -> dict:
        """The ``/api/exposure`` document of an index row."""
        ccds = self.index.ccd_rows(row)
        images = self.index.image_ccds(row)
        n = max([int(row["n_ccd"] or 0)] + [c["ccd"] + 1 for c in ccds])
        rows, cols, cells = focal_plane_layout(n)
        out = []
        for c in ccds:
            doc = public_row(c)
            r, col = cells[c["ccd"]]
            doc["cell"] = {"row": r, "col": col, "color": rgba(c["grade"], ccd_confidence(c))}
            doc["thumbnail"] = (
                page_url("/thumb", night=row["night"], id=row["exposure_id"], ccd=c["ccd"])
                if c["ccd"] in images
                else None
            )
            doc["preview"] = self._preview_url("/preview", row, ccd=c["ccd"])
            out.append(doc)
        return {
            "exposure": public_row(row),
            "ccds": out,
            "layout": {"n_ccd": n, "rows": rows, "cols": cols},
            "mosaic": self._preview_url("/mosaic", row),
        }

    def api_exposure(self, request: Request) -> Response:
        _, row = self._exposure(request)
        if row is None:
            return _NOT_FOUND
        return _json(self.exposure_doc(row))

    def thumb(self, request: Request) -> Response:
        _, row = self._exposure(request)
        ccd = _param(request, "ccd")
        if row is None or ccd is None or not ccd.isdigit():
            return _NOT_FOUND
        png = self._thumb_png(row, int(ccd))
        return _NOT_FOUND if png is None else Response(200, _PNG, png)

    def _ccd_row(self, request: Request) -> tuple[dict | None, dict | None]:
        """The exposure row and the CCD row a request names (None, None when either is not in
        the dataset)."""
        _, row = self._exposure(request)
        selected = _ccd_param(request)
        if row is None or selected is None:
            return None, None
        c = next((c for c in self.index.ccd_rows(row) if c["ccd"] == selected), None)
        return (row, c) if c is not None else (None, None)

    def _preview_png(self, make) -> Response:
        """A pixel preview (:mod:`skygrade.streamer.preview`); 404 when there is no drop directory,
        the file is not (any more) that exposure in it, or it cannot be read."""

        if self.previews is None:
            return _NOT_FOUND
        try:
            return Response(200, _PNG, make(self.previews))
        except (ExposureError, PreviewError, OSError) as exc:
            log.info("observer: no preview: %s", exc)
            return _NOT_FOUND

    def preview(self, request: Request) -> Response:
        """``/preview``: one CCD's pixels, binned (``stretch``: asinh or zscale)."""
        row, c = self._ccd_row(request)
        if c is None or not row.get("path"):
            return _NOT_FOUND
        stretch = _param(request, "stretch") or "asinh"
        return self._preview_png(
            lambda p: p.ccd_png(row["path"], row["exposure_id"], c["ccd"], stretch)
        )

    def mosaic(self, request: Request) -> Response:
        """``/mosaic``: the whole focal plane's pixels, binned (``stretch``)."""
        _, row = self._exposure(request)
        if row is None or not row.get("path"):
            return _NOT_FOUND
        stretch = _param(request, "stretch") or "asinh"
        return self._preview_png(lambda p: p.mosaic_png(row["path"], row["exposure_id"], stretch))

    def hits(self, request: Request) -> Response:
        """``/hits``: a CCD's SOM hits by cluster over its representative image."""

        row, c = self._ccd_row(request)
        if c is None or not c.get("hits"):
            return _NOT_FOUND
        key, images = self.index.images_keyed(row)
        stored = images.get(c["ccd"])
        drawn = (c["hits"], c.get("n_sources"), c.get("median_elongation"), c.get("reason"))
        cache_key = (key, row["night"], row["_file"], c["ccd"], repr(drawn))
        return Response(200, _PNG, self._hit_pngs.get_or(cache_key, lambda: hits_png(c, stored)))

    # ------------------------------------------------------------------ pages

    def page_live(self, request: Request) -> Response:
        night = self.live_night()
        index = self.index.night(night)
        return self._page(night, index, live=True, show_all=False, selected=_ccd_param(request))

    def page_night(self, request: Request) -> Response:
        date = _param(request, "date")
        index = self.index.night(date)
        if index is None:
            return self._missing(
                "no such night" if date else "no night given",
                f"the dataset has no exposure for the night {date!r}"
                if date
                else "give a night as YYYY-MM-DD",
            )
        show_all = _param(request, "all") == "1"
        return self._page(index.night, index, False, show_all, selected=_ccd_param(request))

    def page_exposure(self, request: Request) -> Response:
        index, row = self._exposure(request)
        if row is None:
            night, eid = _param(request, "night"), _param(request, "id")
            if index is None:
                return self._missing("no such night", f"the dataset has no night {night!r}")
            return self._missing(
                "no such exposure", f"night {index.night} has no exposure {eid!r}", index.night
            )
        ccd = _param(request, "ccd")
        selected = _ccd_param(request)
        if ccd is not None and (
            selected is None or selected not in {c["ccd"] for c in self.index.ccd_rows(row)}
        ):
            return self._missing(
                "no such CCD",
                f"exposure {row['exposure_id']} has no CCD {ccd!r}",
                index.night,
                page_url("/exposure", night=index.night, id=row["exposure_id"]),
            )
        return self._page(index.night, index, False, False, pinned=row, selected=selected)

    def _missing(self, heading, message, night=None, back=None) -> Response:
        """A 404 page that says what is missing and lists the nights that have data."""
        nights = self.index.nights()
        parts = [
            render("nav.html.j2", **nav_context(night or "", nights, live=False)),
            render(
                "missing.html.j2",
                heading=heading,
                message=message,
                nights=nights,
                back=back,
            ),
        ]
        page = render_page(f"skygrade · {heading}", {"data-night": night or ""}, parts)
        return Response(404, _HTML, page.encode())

    def _page(self, night, index, live, show_all, pinned=None, selected=None) -> Response:
        nights = self.index.nights()
        rows = index.rows if index else []
        shown = pinned or latest_graded(rows)
        if shown is None or (
            selected is not None and selected not in {c["ccd"] for c in self.index.ccd_rows(shown)}
        ):
            selected = None  # the live page: a CCD the newest exposure lacks
        doc = self.now_doc(nights, index)
        attrs = {
            "data-night": night,
            "data-rev": index.rev if index else "",
            "data-live": "1" if live else "0",
            "data-pinned": pinned["exposure_id"] if pinned else "",
            "data-exposure": shown["exposure_id"] if shown else "",
            "data-ccd": "" if selected is None else str(selected),
            "data-all": "1" if show_all else "0",
            "data-poll-ms": str(int(self.poll_s * 1000)),
        }
        parts = [
            render("nav.html.j2", **nav_context(night, nights, live)),
            render_now(doc),
            self._exposure_html(index, shown, pinned is not None, selected),
            render_waiting(doc["waiting"]),
            self._tonight_html(index, night, show_all),
        ]
        title = f"skygrade · {'exposure ' + pinned['exposure_id'] if pinned else 'night ' + night}"
        return Response(200, _HTML, render_page(title, attrs, parts).encode())

    def _tonight_html(self, index, night: str, show_all: bool) -> Markup:
        if index is None:
            return render_tonight(night, [], show_all)
        with self._lock:
            key = ("tonight", show_all)
            if key not in index.cache:
                index.cache[key] = render_tonight(night, index.rows, show_all, rev=index.rev)
            return index.cache[key]

    def _exposure_html(self, index, row, pinned: bool, selected: int | None) -> Markup:
        if row is None:
            return Markup(
                '<section id="exposure" class="panel" data-id=""><h2 id="exposure-title">'
                'Latest exposure</h2><p class="empty">no exposure graded yet tonight</p>'
                "</section>"
            )
        key = ("exposure", row["exposure_id"], pinned, selected)
        with self._lock:
            if key not in index.cache:
                index.cache[key] = self._render_exposure(index, row, pinned, selected)
            return index.cache[key]

    def _render_exposure(self, index, row: dict, pinned: bool, selected: int | None) -> Markup:
        ccds = self.index.ccd_rows(row)
        detail = None
        if selected is not None:
            c = next(c for c in ccds if c["ccd"] == selected)
            detail = self._ccd_detail(row, c)
        night = row["night"]

        def href_exposure(r):
            return page_url("/exposure", night=night, id=r["exposure_id"])

        return render_exposure(
            row,
            ccds,
            title=f"Exposure {row['exposure_id']}" if pinned else "Latest exposure",
            href=lambda k: (
                page_url("/exposure", night=night, id=row["exposure_id"], ccd=k) + "#ccd-detail"
            ),
            detail=detail,
            selected=selected,
            neighbours=neighbours(index.rows, row, href_exposure),
            mosaic=self._preview_url("/mosaic", row),
        )

    def _preview_url(self, path: str, row: dict, **params) -> str | None:
        """The URL of a pixel preview of ``row``, or None when previews are not served."""
        if self.previews is None or not row.get("path"):
            return None
        return page_url(path, night=row["night"], id=row["exposure_id"], **params)

    def _ccd_detail(self, row: dict, c: dict) -> Markup:
        k = c["ccd"]
        hits = None
        if c.get("hits"):
            hits = page_url("/hits", night=row["night"], id=row["exposure_id"], ccd=k)
        return render_ccd_detail(
            c, self._thumb_url(row, k), self._preview_url("/preview", row, ccd=k), hits
        )

    def _thumb_url(self, row: dict, ccd: int) -> str | None:
        if ccd not in self.index.image_ccds(row):
            return None
        return page_url("/thumb", night=row["night"], id=row["exposure_id"], ccd=ccd)

    # ------------------------------------------------------------------ fragments

    def fragment_now(self, request: Request) -> Response:
        """The Now and Waiting panels (``night``: whose quarantined files are listed; default
        the live night)."""
        nights = self.index.nights()
        index = self.index.night(_param(request, "night")) or self.index.night(self.live_night())
        doc = self.now_doc(nights, index)
        text = render_now(doc) + render_waiting(doc["waiting"])
        return Response(200, _HTML, text.encode())

    def fragment_night(self, request: Request) -> Response:
        """The night panel (glance, timeline, table) of ``date`` (``all=1``: every row); with
        ``rev`` equal to the current one only ``<p id="unchanged">`` (what the page polls: the
        panel carries ``data-rev`` and ``data-latest``, the latest graded exposure)."""
        index = self.index.night(_param(request, "date"))
        if index is None:
            return _NOT_FOUND
        if _param(request, "rev") == index.rev:
            return Response(200, _HTML, b'<p id="unchanged"></p>')
        html_ = self._tonight_html(index, index.night, _param(request, "all") == "1")
        return Response(200, _HTML, html_.encode())

    def fragment_exposure(self, request: Request) -> Response:
        """The exposure panel of ``night`` / ``id`` (``ccd``: with its details when the
        exposure has that CCD; ``pinned=1``: titled by its id)."""
        index, row = self._exposure(request)
        if row is None:
            return _NOT_FOUND
        selected = _ccd_param(request)
        if selected not in {c["ccd"] for c in self.index.ccd_rows(row)}:
            selected = None
        html_ = self._exposure_html(index, row, _param(request, "pinned") == "1", selected)
        return Response(200, _HTML, html_.encode())

    def fragment_ccd(self, request: Request) -> Response:
        """The details of one CCD (``night``, ``id``, ``ccd``)."""
        row, c = self._ccd_row(request)
        if c is None:
            return _NOT_FOUND
        detail = self._ccd_detail(row, c)
        return Response(200, _HTML, render("ccd_fragment.html.j2", detail=detail).encode())

    # ------------------------------------------------------------------ waiting

    def waiting_items(
        self, index: NightIndex | None, now: float | None = None, href=None
    ) -> list[dict]:
        """The Waiting panel's rows, longest waiting first: the daemon's files not graded yet
        (:attr:`waiting`) and the quarantined exposures of ``index``'s night (linked by
        ``href(row)``, default their exposure page:
        :func:`skygrade.streamer.observer_views.waiting_rows`).
        """
        now = time.time() if now is None else now
        held = []
        if self.waiting is not None:
            try:
                held = list(self.waiting())
            except Exception as exc:
                log.warning("observer: waiting failed: %s", exc)
                held = []
        return waiting_rows(held, index.rows if index else [], now, href)


# --------------------------------------------------------------------------- requests


def _param(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None


def _ccd_param(request: Request) -> int | None:
    ccd = _param(request, "ccd")
    return int(ccd) if ccd is not None and ccd.isdigit() and len(ccd) < 6 else None


def _json(doc) -> Response:
    return Response(200, _JSON, json.dumps(doc, allow_nan=False).encode())
