"""The observer page: tonight at a glance, the focal plane of the last exposure, every CCD one
click away.

Served by the daemon's :class:`ops.http.HttpServer` (the same loopback-bound server as
``/metrics``; :meth:`Observer.routes` gives the exact paths) and rendered into one static file by
``skygrade report --html``. The page is read-only: it reads the grades dataset, never writes.

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

Serving fast with a night of 1,000 exposures: each night has a small in-process index (its
exposure rows, one per exposure) that is refreshed only when the listing of the night's
directory changes (names, sizes, mtimes; only new or changed files are read), and the JSON and
HTML built from it are cached per index revision. CCD rows and representative images are read
per exposure on demand (small files) and cached.

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

import base64
import datetime as dt
import json
import logging
import math
import os
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import numpy as np
from markupsafe import Markup

from models.classes import CLASSES, DESCRIPTIONS
from ops.http import Request, Response
from ops.text import duration_text
from streamer.night_summary import (
    GRADE_COLORS,
    PHYSICAL,
    counts_by_filter,
    latest_per_exposure,
    physical_stats,
    summarize,
    to_reobserve,
    trends,
)
from streamer.page_images import focal_plane_layout, png_gray8

log = logging.getLogger(__name__)

__all__ = [
    "GRADE_COLORS",
    "Observer",
    "focal_plane_layout",
    "png_gray8",
    "render_static_night",
]

NIGHT_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")

TABLE_ROWS = 50
"""Exposures in the server-rendered table (newest first); ``all=1`` shows every one."""
POLL_S = 3.0
"""Seconds between the page's polls of the JSON endpoints."""
ASSETS = {"observer.css": "text/css; charset=utf-8", "observer.js": "text/javascript"}
ASINH_SOFTENING = 0.2
"""Display stretch of the thumbnails (as ``skygrade inspect``): asinh, softened at 0.2 of the
source peak, over the stored range."""

_HTML = "text/html; charset=utf-8"
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_PNG = "image/png"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'"
)
_STATIC_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"
_NOT_FOUND = Response(404, _TEXT, b"not found\n")
_CACHE_ITEMS = 256
_MARGIN_NS = 100_000_000


# --------------------------------------------------------------------------- small helpers


def _stretch_lut() -> np.ndarray:
    from transforms.grades_dataset import IMAGE_RANGE

    lo, hi = IMAGE_RANGE
    values = lo + np.arange(256) * (hi - lo) / 255.0
    s = np.arcsinh((values - lo) / ASINH_SOFTENING) / np.arcsinh((hi - lo) / ASINH_SOFTENING)
    return np.clip(np.rint(255 * s), 0, 255).astype(np.uint8)


_LUT = _stretch_lut()


def thumbnail_png(stored: np.ndarray) -> bytes:
    """PNG of a stored (uint8, :func:`transforms.grades_dataset.quantize_image`) representative
    image, with the display stretch applied."""
    return png_gray8(_LUT[np.asarray(stored, dtype=np.uint8)])


def _finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dt.datetime):
        return (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).isoformat()
    return v


def _public(row: dict) -> dict:
    """A dataset row for JSON: NaN -> null, datetimes -> ISO 8601, private keys dropped."""
    return {k: _jsonable(v) for k, v in row.items() if not k.startswith("_")}


def _json(doc) -> Response:
    return Response(200, _JSON, json.dumps(doc, allow_nan=False).encode())


def _param(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None


def _hms(when: dt.datetime | None) -> str:
    return when.astimezone(dt.UTC).strftime("%H:%M:%S") if when else "-"


def _num(v, fmt: str = ".2f", unit: str = "") -> str:
    return f"{v:{fmt}}{unit}" if _finite(v) else "-"


def _rgba(grade: str | None, confidence) -> str | None:
    """Cell / mark colour: the grade's colour, more opaque the more confident."""
    if grade not in GRADE_COLORS:
        return None
    r, g, b = GRADE_COLORS[grade]
    c = confidence if _finite(confidence) else 0.0
    return f"rgba({r}, {g}, {b}, {shade(c):.2f})"


def shade(confidence: float) -> float:
    """Opacity of a grade colour for a confidence in 0..1: 0.3 at 0, 1 at 1."""
    return 0.3 + 0.7 * min(max(float(confidence), 0.0), 1.0)


def _url(path: str, **params) -> str:
    return path + "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())


# --------------------------------------------------------------------------- the night index


class _LRU(OrderedDict):
    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        if len(self) > _CACHE_ITEMS:
            self.popitem(last=False)
        return value


class NightIndex:
    """One exposure row per exposure of one night, refreshed when the directory listing
    changes.

    Rows are the dataset's exposure rows (each exposure's latest ``graded_at``, as ``skygrade
    report``), with ``night``, ``time`` (:func:`streamer.night_summary.row_time`) and ``_file`` (the
    parquet file's name, from which the CCD rows and images are found).
    """

    def __init__(self, out_dir: Path, night: str, boot: str) -> None:
        self.out_dir, self.night, self.boot = out_dir, night, boot
        self.folder = out_dir / "exposures" / f"night={night}"
        self.stamps: dict[str, tuple[int, int]] = {}
        self.by_file: dict[str, list[dict]] = {}
        self.rows: list[dict] = []
        self.by_id: dict[str, dict] = {}
        self.generation = 0
        self.cache: dict = {}
        self.dir_mtime: int | None = None
        self.listed_at = 0

    @property
    def rev(self) -> str:
        """Changes whenever the rows change (and across restarts of the server)."""
        return f"{self.boot}-{self.generation}"

    def refresh(self) -> bool:
        """Re-list the night's directory; read new or changed files. True when rows changed.

        The listing is skipped while the directory's mtime is the one of the last listing and
        that listing started well after it (the sink renames every file into place, which
        updates the directory's mtime; the margin covers coarse file-system timestamps).
        """
        started = time.time_ns()
        try:
            mtime = self.folder.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime is not None and mtime == self.dir_mtime and self.listed_at - mtime > _MARGIN_NS:
            return False
        self.dir_mtime, self.listed_at = mtime, started
        stamps: dict[str, tuple[int, int]] = {}
        try:
            with os.scandir(self.folder) as entries:
                for e in entries:
                    if e.name.endswith(".parquet") and not e.name.startswith((".", "_")):
                        st = e.stat()
                        stamps[e.name] = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            pass
        if stamps == self.stamps:
            return False
        changed = [n for n, s in stamps.items() if self.stamps.get(n) != s]
        for gone in set(self.by_file) - set(stamps):
            del self.by_file[gone]
        self.by_file.update(self._read(changed))
        self.stamps = stamps
        rows = [r for file_rows in self.by_file.values() for r in file_rows]
        self.rows = latest_per_exposure(rows)
        self.by_id = {r["exposure_id"]: r for r in self.rows}
        self.generation += 1
        self.cache.clear()
        return True

    def _read(self, names: list[str]) -> dict[str, list[dict]]:
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        from transforms.grades_dataset import EXPOSURE_SCHEMA

        out: dict[str, list[dict]] = {}
        if len(names) > 16:  # a night seen for the first time: one multi-threaded scan
            schema = EXPOSURE_SCHEMA.remove(EXPOSURE_SCHEMA.get_field_index("night"))
            try:
                table = ds.dataset(
                    [str(self.folder / n) for n in names], schema=schema, format="parquet"
                ).to_table(columns=[*schema.names, "__filename"])
            except Exception:  # one unreadable file: fall back to file by file
                log.warning("night %s: bulk read failed; reading file by file", self.night)
            else:
                for row in table.to_pylist():
                    name = Path(row.pop("__filename")).name
                    row.update(night=self.night, _file=name)
                    out.setdefault(name, []).append(row)
                return {n: out.get(n, []) for n in names}
        for name in names:
            try:
                rows = pq.read_table(self.folder / name).to_pylist()
            except Exception as exc:  # e.g. not parquet: skipped, and not retried until changed
                log.warning("night %s: cannot read %s: %s", self.night, name, exc)
                rows = []
            for row in rows:
                row.update(night=self.night, _file=name)
            out[name] = rows
        return out


# --------------------------------------------------------------------------- the observer


class Observer:
    """The observer page and its JSON endpoints over the grades dataset at ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        The grades dataset (``exposures/``, ``ccds/``, ``images/``).
    status : callable, optional
        Returns the daemon's health document (:meth:`streamer.daemon.Daemon.health`: ``ok``,
        ``model_version``, ``backlog``, ``alerts``, ...). None: no daemon (state "offline").
    poll_s : float, optional
        Seconds between the page's polls (default :data:`POLL_S`).
    drop_dir : path-like, optional
        The drop directory: the pixel previews (``/preview``, ``/mosaic``,
        :mod:`streamer.preview`) read the exposure files there, and nowhere else. None: no
        pixel previews (404, and the page does not offer them).
    waiting : callable, optional
        Returns the files the daemon holds but has not graded, for the Waiting panel: dicts
        with ``exposure_id`` (or ``path``), ``state`` (``incoming``, ``grading`` or
        ``incomplete``), ``since`` (Unix seconds or ISO 8601: when it arrived) and an optional
        ``reason``. The quarantined files of the night come from the dataset itself.

    Examples
    --------
    >>> from ops.http import HttpServer  # doctest: +SKIP
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
        from streamer.preview import PreviewCache, Previews

        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s!r}")
        self.out_dir = Path(out_dir)
        self.status = status
        self.waiting = waiting
        self.poll_s = float(poll_s)
        self._boot = format(time.time_ns() & 0xFFFFFFFFFF, "x")
        self._lock = threading.RLock()
        self._nights: dict[str, NightIndex] = {}
        self._ccds = _LRU()
        self._images = _LRU()
        self._pngs = _LRU()
        self.previews = None if drop_dir is None else Previews(drop_dir)
        self._hit_pngs = PreviewCache(max_bytes=8 * 1024 * 1024)
        pkg = resources.files("streamer") / "observer_assets"
        self.assets = {name: (pkg / name).read_bytes() for name in ASSETS}

    def routes(self) -> dict[str, Callable[[Request], Response]]:
        """Exact path -> handler, for :class:`ops.http.HttpServer`."""
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

    def nights(self) -> list[str]:
        """Nights present in the dataset, sorted."""
        try:
            with os.scandir(self.out_dir / "exposures") as entries:
                names = [e.name for e in entries if e.is_dir()]
        except FileNotFoundError:
            return []
        found = (n.removeprefix("night=") for n in names if n.startswith("night="))
        return sorted(n for n in found if NIGHT_PATTERN.match(n))

    def warm(self) -> None:
        """Build the live night's index now (the first page after a restart would otherwise
        read every file of the night: seconds for a thousand exposures)."""
        try:
            self.night(self.live_night())
        except Exception:  # a page request retries; never let warming take anything down
            log.exception("warming the observer index failed")

    def live_night(self) -> str:
        """The night the live page shows: the latest in the dataset, else tonight."""
        nights = self.nights()
        if nights:
            return nights[-1]
        from transforms.exposure import observing_night

        return observing_night(dt.datetime.now(dt.UTC))

    def night(self, night: str | None) -> NightIndex | None:
        """The refreshed index of ``night``, or None when it is not a night of the dataset."""
        if night is None or not NIGHT_PATTERN.match(night):
            return None
        if not (self.out_dir / "exposures" / f"night={night}").is_dir():
            return None
        with self._lock:
            index = self._nights.get(night)
            if index is None:
                index = self._nights[night] = NightIndex(self.out_dir, night, self._boot)
            index.refresh()
            return index

    def ccd_rows(self, row: dict) -> list[dict]:
        """The CCD rows of an exposure row (same file name under ``ccds/``), sorted by CCD."""
        path = self.out_dir / "ccds" / f"night={row['night']}" / row["_file"]
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            return []

        def read():
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
            for r in rows:
                r["night"] = row["night"]
            return sorted(rows, key=lambda r: r["ccd"])

        with self._lock:
            return self._ccds.get_or((str(path), stamp), read)

    def images(self, row: dict) -> dict[int, np.ndarray]:
        """The stored representative images of an exposure row's CCDs ({} when none)."""
        return self._images_keyed(row)[1]

    def _images_keyed(self, row: dict) -> tuple[tuple | None, dict[int, np.ndarray]]:
        from transforms.grades_dataset import GradesDataset, read_images

        dataset = GradesDataset(self.out_dir)
        path = dataset.images_file(dataset.partition(row["night"]) / row["_file"])
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except FileNotFoundError:
            return None, {}
        with self._lock:
            return key, self._images.get_or(key, lambda: read_images(path))

    def image_ccds(self, row: dict) -> set[int]:
        """The CCDs of an exposure row that have a stored image (reads only the index array)."""
        from transforms.grades_dataset import GradesDataset

        dataset = GradesDataset(self.out_dir)
        path = dataset.images_file(dataset.partition(row["night"]) / row["_file"])
        try:
            key = ("ccds", str(path), path.stat().st_mtime_ns)
        except FileNotFoundError:
            return set()

        def read():
            with np.load(path, allow_pickle=False) as z:
                return {int(c) for c in z["ccd"]}

        with self._lock:
            return self._images.get_or(key, read)

    def _thumb_png(self, row: dict, ccd: int) -> bytes | None:
        key, images = self._images_keyed(row)
        if ccd not in images:
            return None
        with self._lock:
            return self._pngs.get_or((*key, ccd), lambda: thumbnail_png(images[ccd]))

    def _exposure(self, request: Request, id_param: str = "id"):
        index = self.night(_param(request, "night"))
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
            index = self.night(night)
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
                k: _jsonable(last[k]) for k in ("exposure_id", "grade", "confidence", "graded_at")
            }
            doc["model_version"] = doc["model_version"] or last["model_version"]
        return doc

    def api_now(self, request: Request) -> Response:
        return _json(self.now_doc())

    def api_nights(self, request: Request) -> Response:
        return _json({"nights": self.nights()})

    def api_night(self, request: Request) -> Response:
        index = self.night(_param(request, "date"))
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
        ccds = self.ccd_rows(row)
        images = self.image_ccds(row)
        n = max([int(row["n_ccd"] or 0)] + [c["ccd"] + 1 for c in ccds])
        rows, cols, cells = focal_plane_layout(n)
        out = []
        for c in ccds:
            doc = _public(c)
            r, col = cells[c["ccd"]]
            doc["cell"] = {"row": r, "col": col, "color": _rgba(c["grade"], _ccd_conf(c))}
            doc["thumbnail"] = (
                _url("/thumb", night=row["night"], id=row["exposure_id"], ccd=c["ccd"])
                if c["ccd"] in images
                else None
            )
            doc["preview"] = self._preview_url("/preview", row, ccd=c["ccd"])
            out.append(doc)
        return {
            "exposure": _public(row),
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
        c = next((c for c in self.ccd_rows(row) if c["ccd"] == selected), None)
        return (row, c) if c is not None else (None, None)

    def _preview_png(self, make) -> Response:
        """A pixel preview (:mod:`streamer.preview`); 404 when there is no drop directory, the
        file is not (any more) that exposure in it, or it cannot be read."""
        from streamer.preview import PreviewError
        from transforms.exposure import ExposureError

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
        from streamer.preview import hits_png

        row, c = self._ccd_row(request)
        if c is None or not c.get("hits"):
            return _NOT_FOUND
        key, images = self._images_keyed(row)
        stored = images.get(c["ccd"])
        drawn = (c["hits"], c.get("n_sources"), c.get("median_elongation"), c.get("reason"))
        cache_key = (key, row["night"], row["_file"], c["ccd"], repr(drawn))
        return Response(200, _PNG, self._hit_pngs.get_or(cache_key, lambda: hits_png(c, stored)))

    # ------------------------------------------------------------------ pages

    def page_live(self, request: Request) -> Response:
        night = self.live_night()
        index = self.night(night)
        return self._page(night, index, live=True, show_all=False, selected=_ccd_param(request))

    def page_night(self, request: Request) -> Response:
        date = _param(request, "date")
        index = self.night(date)
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
            selected is None or selected not in {c["ccd"] for c in self.ccd_rows(row)}
        ):
            return self._missing(
                "no such CCD",
                f"exposure {row['exposure_id']} has no CCD {ccd!r}",
                index.night,
                _url("/exposure", night=index.night, id=row["exposure_id"]),
            )
        return self._page(index.night, index, False, False, pinned=row, selected=selected)

    def _missing(self, heading, message, night=None, back=None) -> Response:
        """A 404 page that says what is missing and lists the nights that have data."""
        nights = self.nights()
        parts = [
            render("nav.html.j2", **_nav_context(night or "", nights, live=False)),
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
        nights = self.nights()
        rows = index.rows if index else []
        shown = pinned or latest_graded(rows)
        if shown is None or (
            selected is not None and selected not in {c["ccd"] for c in self.ccd_rows(shown)}
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
            render("nav.html.j2", **_nav_context(night, nights, live)),
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
        ccds = self.ccd_rows(row)
        detail = None
        if selected is not None:
            c = next(c for c in ccds if c["ccd"] == selected)
            detail = self._ccd_detail(row, c)
        night = row["night"]

        def href_exposure(r):
            return _url("/exposure", night=night, id=r["exposure_id"])

        return render_exposure(
            row,
            ccds,
            title=f"Exposure {row['exposure_id']}" if pinned else "Latest exposure",
            href=lambda k: (
                _url("/exposure", night=night, id=row["exposure_id"], ccd=k) + "#ccd-detail"
            ),
            detail=detail,
            selected=selected,
            neighbours=_neighbours(index.rows, row, href_exposure),
            mosaic=self._preview_url("/mosaic", row),
        )

    def _preview_url(self, path: str, row: dict, **params) -> str | None:
        """The URL of a pixel preview of ``row``, or None when previews are not served."""
        if self.previews is None or not row.get("path"):
            return None
        return _url(path, night=row["night"], id=row["exposure_id"], **params)

    def _ccd_detail(self, row: dict, c: dict) -> Markup:
        k = c["ccd"]
        hits = None
        if c.get("hits"):
            hits = _url("/hits", night=row["night"], id=row["exposure_id"], ccd=k)
        return render_ccd_detail(
            c, self._thumb_url(row, k), self._preview_url("/preview", row, ccd=k), hits
        )

    def _thumb_url(self, row: dict, ccd: int) -> str | None:
        if ccd not in self.image_ccds(row):
            return None
        return _url("/thumb", night=row["night"], id=row["exposure_id"], ccd=ccd)

    # ------------------------------------------------------------------ fragments

    def fragment_now(self, request: Request) -> Response:
        """The Now and Waiting panels (``night``: whose quarantined files are listed; default
        the live night)."""
        nights = self.nights()
        index = self.night(_param(request, "night")) or self.night(self.live_night())
        doc = self.now_doc(nights, index)
        text = render_now(doc) + render_waiting(doc["waiting"])
        return Response(200, _HTML, text.encode())

    def fragment_night(self, request: Request) -> Response:
        """The night panel (glance, timeline, table) of ``date`` (``all=1``: every row); with
        ``rev`` equal to the current one only ``<p id="unchanged">`` (what the page polls: the
        panel carries ``data-rev`` and ``data-latest``, the latest graded exposure)."""
        index = self.night(_param(request, "date"))
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
        if selected not in {c["ccd"] for c in self.ccd_rows(row)}:
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
        ``href(row)``, default their exposure page)."""
        now = time.time() if now is None else now
        if href is None:

            def href(r):
                return _url("/exposure", night=r["night"], id=r["exposure_id"])

        items = []
        if self.waiting is not None:
            try:
                held = list(self.waiting())
            except Exception as exc:
                log.warning("observer: waiting failed: %s", exc)
                held = []
            for w in held:
                name = w.get("exposure_id") or Path(str(w.get("path") or "?")).name
                items.append(
                    _waiting(name, w.get("state") or "incoming", w.get("since"), w.get("reason"))
                )
        for r in index.rows if index else []:
            if r["status"] != "graded":
                since = r.get("arrived_at") or r.get("graded_at") or r.get("time")
                items.append(
                    _waiting(r["exposure_id"], r["status"], since, r.get("reason"), href(r))
                )
        for w in items:
            w["waited_s"] = None if w["t"] is None else max(0.0, now - w["t"])
        return sorted(items, key=lambda w: (w["t"] is None, w["t"] or 0.0, w["id"]))


def _waiting(name, state, since, reason, href=None) -> dict:
    return {
        "id": str(name),
        "state": str(state),
        "t": _unix(since),
        "reason": reason or "",
        "href": href,
    }


def _unix(when) -> float | None:
    """Unix seconds of a datetime, an ISO 8601 text or a number (None when none of these)."""
    if isinstance(when, dt.datetime):
        return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
    if isinstance(when, str):
        try:
            return _unix(dt.datetime.fromisoformat(when))
        except ValueError:
            return None
    return float(when) if _finite(when) else None


def _ccd_param(request: Request) -> int | None:
    ccd = _param(request, "ccd")
    return int(ccd) if ccd is not None and ccd.isdigit() and len(ccd) < 6 else None


def _ccd_conf(c: dict):
    return c.get(f"p_{c['grade']}") if c.get("grade") else None


def latest_graded(rows: list[dict]) -> dict | None:
    """The latest graded exposure of a night's rows (sorted by time), or None."""
    return next((r for r in reversed(rows) if r["status"] == "graded"), None)


def _neighbours(rows: list[dict], row: dict, href) -> dict:
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
            r["_json"] = json.dumps(_public(r), allow_nan=False)
        rows.append(r["_json"])
    text = json.dumps(head, allow_nan=False)[:-1] + ', "exposures": [' + ", ".join(rows) + "]}"
    return text.encode()


# --------------------------------------------------------------------------- rendering


def _environment():
    """The templates (``observer_assets/*.html.j2``), every one with HTML autoescaping."""
    import jinja2

    pkg = resources.files("streamer") / "observer_assets"
    sources = {
        p.name: p.read_text(encoding="utf-8") for p in pkg.iterdir() if p.name.endswith(".j2")
    }
    env = jinja2.Environment(
        loader=jinja2.DictLoader(sources),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["url"] = _url
    return env


TEMPLATES = _environment()
"""The page's Jinja2 environment: autoescape on, so a value is always text, never markup."""


def render(name: str, **context) -> Markup:
    """Template ``name`` rendered with ``context`` (escaped), as markup for an outer template."""
    return Markup(TEMPLATES.get_template(name).render(**context))


def grade_css() -> Markup:
    """CSS rules giving each grade's badge, chip and vote its colour (from
    :data:`GRADE_COLORS`: one palette for the page, the script and the report)."""
    rules = []
    for g, (r, gr, b) in GRADE_COLORS.items():
        rules.append(
            f".grade[data-grade={g}],.chip[data-grade={g}],.vote[data-grade={g}]"
            f"{{background:rgb({r}, {gr}, {b});color:#000}}"
        )
    return Markup("".join(rules))


def render_page(title: str, attrs: dict, parts: list, css: str | None = None) -> str:
    """The HTML document around ``parts``; with ``css`` it is self-contained (no script)."""
    return TEMPLATES.get_template("page.html.j2").render(
        title=title,
        attrs=attrs,
        parts=parts,
        css=None if css is None else Markup(css),
        csp=_CSP if css is None else _STATIC_CSP,
        grade_css=grade_css(),
        script=css is None,
    )


def _nav_context(night: str, nights: list[str], live: bool) -> dict:
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


def _ago(seconds: float) -> str:
    return duration_text(seconds) + " ago"


def render_now(doc: dict, now: float | None = None) -> Markup:
    """The Now panel: daemon state, backlog, last graded and the active alerts (since when)."""
    now = time.time() if now is None else now
    last = doc.get("last_graded")
    last_view = None
    if last:
        when = dt.datetime.fromisoformat(last["graded_at"])
        last_view = {
            "hms": _hms(when),
            "t": f"{when.timestamp():.3f}",
            "ago": _ago(max(0.0, now - when.timestamp())),
            "exposure_id": last["exposure_id"],
            "grade": last["grade"],
        }
    alerts = []
    for a in doc.get("alerts") or []:
        t = _unix(a.get("since"))
        alerts.append(
            {
                "level": a.get("level"),
                "css": str(a.get("level", "")).lower(),
                "rule": a.get("rule"),
                "message": a.get("message"),
                "t": None if t is None else f"{t:.3f}",
                "hms": "" if t is None else _hms(dt.datetime.fromtimestamp(t, dt.UTC)),
                "ago": "" if t is None else _ago(max(0.0, now - t)),
            }
        )
    return render("now.html.j2", doc=doc, last=last_view, alerts=alerts)


WAITING_ROWS = 100
"""Rows of the Waiting panel (longest waiting first); the rest are counted."""


def render_waiting(items: list[dict]) -> Markup:
    """The Waiting panel: files not graded (quarantined, incoming, incomplete), since when."""
    view = []
    for w in items[:WAITING_ROWS]:
        t = w["t"]
        view.append(
            w
            | {
                "t": None if t is None else f"{t:.3f}",
                "hms": "-" if t is None else _hms(dt.datetime.fromtimestamp(t, dt.UTC)) + " UT",
                "waited": "-" if w["waited_s"] is None else duration_text(w["waited_s"]),
            }
        )
    return render("waiting.html.j2", items=view, more=max(0, len(items) - WAITING_ROWS))


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
        ("EXPTIME", _num(row.get("exptime"), ".0f", " s")),
        ("taken", f"{_hms(row.get('time'))} UT"),
        ("latency", _num(row.get("latency_s"), ".1f", " s")),
        ("CCDs graded", f"{row.get('n_ccd_graded') or 0} / {row.get('n_ccd') or 0}"),
        ("OOD score", _ood_text(row.get("ood_score"))),
        ("model", row.get("model_version")),
    ]
    facts += [
        (label, _num(row[col], fmt, unit))
        for col, label, unit, fmt in PHYSICAL
        if _finite(row.get(col))
    ]
    tally = votes(ccds)
    neighbours = neighbours or {"prev": None, "next": None}
    rows, cols, cells = focal_plane_layout_for(row, ccds)
    return render(
        "exposure.html.j2",
        row=row,
        title=title,
        conf=_num(row.get("confidence")),
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
    n = max([int(row.get("n_ccd") or 0)] + [c["ccd"] + 1 for c in ccds])
    rows, cols, cells = focal_plane_layout(n)
    return rows, cols, cells[:n] if n else []


def _ood_text(score) -> str:
    """The out-of-distribution score for people: 1 is the edge of the training data."""
    if not _finite(score):
        return "-"
    verdict = "unlike the training data: confidence lowered" if score > 1.0 else "familiar"
    return f"{score:.2f} ({verdict})"


def _cells(ccds, cells, href, selected) -> list[dict]:
    """One focal-plane cell per CCD at its place, coloured by grade and confidence."""
    by_ccd = {c["ccd"]: c for c in ccds}
    out = []
    for k, (r, col) in enumerate(cells):
        c = by_ccd.get(k)
        status = c["status"] if c else "missing"
        grade = c["grade"] if c else None
        conf = _ccd_conf(c) if c else None
        color = _rgba(grade, conf)
        style = f"grid-row:{r + 1};grid-column:{col + 1}" + (
            f";background-color:{color}" if color else ""
        )
        tip = f"ccd{k:02d} {grade or status} {_num(conf)}"
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
    from streamer.preview import PREVIEW_HEIGHT, hit_grid

    facts = [
        ("status", c.get("status")),
        ("sources", c.get("n_sources")),
        ("median elongation", _num(c.get("median_elongation"))),
        ("median ISO0", _num(c.get("median_iso0"), ".1f", " px")),
        ("median background", _num(c.get("median_background"), ".1f", " ADU")),
    ]
    facts += [
        (label, _num(c[col], fmt, unit))
        for col, label, unit, fmt in PHYSICAL
        if _finite(c.get(col))
    ]
    facts.append(("reason", c.get("reason") or "-"))
    return render(
        "ccd_detail.html.j2",
        c=c,
        thumb=thumb,
        probs=[(k, c[f"p_{k}"]) for k in CLASSES if _finite(c.get(f"p_{k}"))],
        colors={k: "rgb({}, {}, {})".format(*GRADE_COLORS[k]) for k in CLASSES},
        facts=[(k, "" if v is None else v) for k, v in facts],
        hits=hit_grid(c.get("hits") or []),
        preview=preview,
        preview_height=PREVIEW_HEIGHT,
        hits_png=hits_png,
    )


_X0, _WIDTH, _BASE, _HEIGHT = 40.0, 940.0, 100.0, 80.0


_MARK = TEMPLATES.get_template("mark.html.j2")


def _mark_href(r: dict) -> str:
    return _url("/exposure", night=r["night"], id=r["exposure_id"])


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
        tip = f"{r['exposure_id']} {_hms(r['time'])} UT {r['grade'] or r['status']}"
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


def render_tonight(
    night: str, rows: list[dict], show_all: bool, links: bool = True, rev: str = ""
) -> Markup:
    """The night panel: grade chips and legend, time lost, the usable fraction, the timeline
    (marks link to the exposure pages, or with ``links`` off to the table rows) and the table.
    """
    s = summarize(rows)
    start, end = night_span(night, rows)

    href = _mark_href if links else _mark_anchor
    shown = rows[::-1] if show_all else rows[::-1][:TABLE_ROWS]
    table = [
        {
            "id": r["exposure_id"],
            "href": _url("/exposure", night=r["night"], id=r["exposure_id"]) if links else None,
            "hms": _hms(r.get("time")),
            "object": r.get("object") or "",
            "filter": r.get("filter") or "",
            "exptime": _num(r.get("exptime"), ".0f"),
            "grade": r["grade"] or "",
            "label": r["grade"] or r["status"],
            "conf": _num(r.get("confidence")),
            "latency": _num(r.get("latency_s"), ".1f"),
            "reason": r.get("reason") or "",
        }
        for r in shown
    ]
    span = (end - start).total_seconds() or 1.0
    strips = []
    for column, label in trends(rows):
        pts = [
            (_X0 + _WIDTH * (r["time"] - start).total_seconds() / span, float(r[column]))
            for r in rows
            if r["status"] == "graded" and r.get("time") is not None and _finite(r.get(column))
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
        strips=strips,
        table=table,
        more=None if show_all or len(rows) <= TABLE_ROWS else _url("/night", date=night, all=1),
    )


# --------------------------------------------------------------------------- static report


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
    observer = Observer(out_dir)
    index = observer.night(night)
    if index is None:
        raise LookupError(f"night {night!r} is not in the dataset at {out_dir}")
    css = observer.assets["observer.css"].decode()
    rows = index.rows
    latest = latest_graded(rows)
    parts = [
        render(
            "nav.html.j2",
            subtitle="night report",
            static=True,
            night=night,
            written=f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
            models=", ".join(summarize(rows)["model_versions"]),
        )
    ]
    again = [
        {
            "id": r["exposure_id"],
            "hms": _hms(r.get("time")),
            "object": r.get("object") or "",
            "filter": r.get("filter") or "",
            "exptime": _num(r.get("exptime"), ".0f"),
            "grade": r["grade"],
            "conf": _num(r.get("confidence")),
            "reason": r.get("reason") or "",
        }
        for r in to_reobserve(rows)
    ]
    parts.append(
        render(
            "morning.html.j2",
            classes=CLASSES,
            filters=counts_by_filter(rows),
            physical=physical_stats(rows),
            again=again,
        )
    )
    if plot is not None:
        parts.append(render("plot.html.j2", png=plot, csv=csv))
    parts.append(render_tonight(night, rows, show_all=True, links=False))
    parts.append(
        render_waiting(observer.waiting_items(index, href=lambda r: f"#exp-{r['exposure_id']}"))
    )
    if latest is None:
        parts.append(
            Markup(
                '<section id="exposure" class="panel"><h2>Latest exposure</h2>'
                '<p class="empty">no exposure graded this night</p></section>'
            )
        )
    else:
        ccds = observer.ccd_rows(latest)
        images = observer.images(latest)
        details = []
        for c in ccds:
            thumb = None
            if c["ccd"] in images:
                data = base64.b64encode(thumbnail_png(images[c["ccd"]])).decode()
                thumb = f"data:image/png;base64,{data}"
            details.append({"ccd": c["ccd"], "html": render_ccd_detail(c, thumb)})
        parts.append(
            render_exposure(
                latest,
                ccds,
                "Latest exposure",
                href=lambda k: f"#ccd-{k}",
                neighbours=_neighbours(rows, latest, lambda r: f"#exp-{r['exposure_id']}"),
                hint="select a CCD: its details are below",
            )
        )
        parts.append(render("ccds.html.j2", details=details))
    return render_page(f"skygrade · night {night}", {"data-night": night}, parts, css)


def render_static_empty(out_dir) -> str:
    """The morning report of a dataset with no night yet: one short self-contained page."""
    observer = Observer(out_dir)
    parts = [
        render(
            "nav.html.j2",
            subtitle="night report",
            static=True,
            night="-",
            written=f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
            models="-",
        ),
        render(
            "missing.html.j2",
            heading="no night yet",
            message=f"the dataset at {out_dir} has no graded exposure yet",
            nights=[],
            back=None,
        ),
    ]
    css = observer.assets["observer.css"].decode()
    return render_page("skygrade · no night yet", {"data-night": ""}, parts, css)
