"""The observer page: tonight at a glance, the focal plane of the last exposure, every CCD one
click away.

Served by the daemon's :class:`ops.http.HttpServer` (the same loopback-bound server as
``/metrics``; :meth:`Observer.routes` gives the exact paths) and rendered into one static file by
``skygrade report --html``. The page is read-only: it reads the grades dataset, never writes.

Routes (every one answers GET and HEAD; unknown nights, ids and CCDs are 404):

===================================  ==================================================
``/``                                the live page: the latest night in the dataset
``/night?date=YYYY-MM-DD[&all=1]``   any night (``all=1``: every exposure in the table)
``/exposure?night=N&id=X[&ccd=K]``   one exposure's focal plane (``ccd``: its details)
``/thumb?night=N&id=X&ccd=K``        a CCD's representative image, PNG
``/api/now``                         daemon state, backlog, last graded, active alerts
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

Safety: nothing from a URL reaches the filesystem except through ids looked up in the index
(the night must match ``YYYY-MM-DD`` and exist as a directory, the exposure id must be a key of
that night's index, the CCD a row of that exposure); every text from the dataset (OBJECT comes
from a FITS header typed by observers) is HTML-escaped on the server and set with
``textContent`` in the browser; the page carries a Content-Security-Policy that allows scripts
from this server only.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
import math
import os
import re
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import numpy as np

from models.classes import CLASSES
from ops.http import Request, Response
from streamer.report import latest_per_exposure, summarize

log = logging.getLogger(__name__)

__all__ = [
    "GRADE_COLORS",
    "Observer",
    "focal_plane_layout",
    "png_gray8",
    "render_static_night",
]

NIGHT_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
GRADE_COLORS = {
    "GOOD": (44, 160, 44),
    "B_SEEING": (255, 127, 14),
    "BGP": (148, 103, 189),
    "BT": (214, 39, 40),
    "RBT": (140, 86, 75),
}
"""Grade colours (matplotlib's tab: colours, as in the ``skygrade report`` PNG)."""

MEGACAM_COLUMNS = 9
"""MegaCam's 36 science CCDs are 4 rows of 9 (``ccd00`` top left, as the simulator and
``skygrade inspect`` lay them out); 40-CCD products put the guide CCDs 36-39 on a fifth row."""
CCD_ASPECT = 2048 / 4612
"""Width / height of a MegaCam CCD: smaller geometries are laid out like the simulator does."""
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


def esc(value) -> str:
    """HTML-escaped text of ``value`` ("" for None)."""
    return "" if value is None else html.escape(str(value), quote=True)


def focal_plane_layout(n_ccd: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Rows, columns and the (row, column) of each CCD index on the page.

    36 CCDs (or 40) are MegaCam's 4 rows of 9, ``ccd00`` top left; smaller test geometries
    are laid out as :mod:`streamer.telescope` arranges them (near-square rows of
    MegaCam-shaped CCDs).

    Examples
    --------
    >>> focal_plane_layout(36)[:2]
    (4, 9)
    >>> focal_plane_layout(4)
    (1, 4, [(0, 0), (0, 1), (0, 2), (0, 3)])
    """
    n = max(int(n_ccd), 1)
    if n >= 36:
        cols = MEGACAM_COLUMNS
    else:
        rows = min(max(1, round(math.sqrt(n * CCD_ASPECT))), n)
        cols = math.ceil(n / rows)
    cells = [divmod(k, cols) for k in range(n)]
    return cells[-1][0] + 1, cols, cells


def png_gray8(image: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a 2-D uint8 array (no dependency beyond zlib).

    Examples
    --------
    >>> png_gray8(np.zeros((2, 3), np.uint8))[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 2 or 0 in image.shape:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {image.shape}")
    h, w = image.shape
    raw = np.hstack([np.zeros((h, 1), np.uint8), image]).tobytes()  # filter type 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def _stretch_lut() -> np.ndarray:
    from transforms.sinks import IMAGE_RANGE

    lo, hi = IMAGE_RANGE
    values = lo + np.arange(256) * (hi - lo) / 255.0
    s = np.arcsinh((values - lo) / ASINH_SOFTENING) / np.arcsinh((hi - lo) / ASINH_SOFTENING)
    return np.clip(np.rint(255 * s), 0, 255).astype(np.uint8)


_LUT = _stretch_lut()


def thumbnail_png(stored: np.ndarray) -> bytes:
    """PNG of a stored (uint8, :func:`transforms.sinks.quantize_image`) representative image,
    with the display stretch applied."""
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
    report``), with ``night``, ``time`` (:func:`streamer.report.row_time`) and ``_file`` (the
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

        from transforms.sinks import EXPOSURE_SCHEMA

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

    Examples
    --------
    >>> from ops.http import HttpServer  # doctest: +SKIP
    >>> server = HttpServer(registry, routes=Observer("grades").routes())  # doctest: +SKIP
    """

    def __init__(self, out_dir, status: Callable[[], dict] | None = None, poll_s: float = POLL_S):
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s!r}")
        self.out_dir = Path(out_dir)
        self.status = status
        self.poll_s = float(poll_s)
        self._boot = format(time.time_ns() & 0xFFFFFFFFFF, "x")
        self._lock = threading.RLock()
        self._nights: dict[str, NightIndex] = {}
        self._ccds = _LRU()
        self._images = _LRU()
        self._pngs = _LRU()
        pkg = resources.files("streamer") / "observer_assets"
        self.assets = {name: (pkg / name).read_bytes() for name in ASSETS}

    def routes(self) -> dict[str, Callable[[Request], Response]]:
        """Exact path -> handler, for :class:`ops.http.HttpServer`."""
        routes = {
            "/": self.page_live,
            "/night": self.page_night,
            "/exposure": self.page_exposure,
            "/thumb": self.thumb,
            "/api/now": self.api_now,
            "/api/nights": self.api_nights,
            "/api/night": self.api_night,
            "/api/exposure": self.api_exposure,
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
        from transforms.sinks import images_path, read_images

        path = images_path(self.out_dir / "exposures" / f"night={row['night']}" / row["_file"])
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except FileNotFoundError:
            return None, {}
        with self._lock:
            return key, self._images.get_or(key, lambda: read_images(path))

    def image_ccds(self, row: dict) -> set[int]:
        """The CCDs of an exposure row that have a stored image (reads only the index array)."""
        from transforms.sinks import images_path

        path = images_path(self.out_dir / "exposures" / f"night={row['night']}" / row["_file"])
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
        """The ``/api/now`` document (``nights`` and ``index``: already known by the caller)."""
        night = nights[-1] if nights else self.live_night()
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
            out.append(doc)
        return {
            "exposure": _public(row),
            "ccds": out,
            "layout": {"n_ccd": n, "rows": rows, "cols": cols},
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

    # ------------------------------------------------------------------ pages

    def page_live(self, request: Request) -> Response:
        night = self.live_night()
        index = self.night(night)
        return self._page(night, index, live=True, show_all=False)

    def page_night(self, request: Request) -> Response:
        index = self.night(_param(request, "date"))
        if index is None:
            return _NOT_FOUND
        return self._page(index.night, index, live=False, show_all=_param(request, "all") == "1")

    def page_exposure(self, request: Request) -> Response:
        index, row = self._exposure(request)
        if row is None:
            return _NOT_FOUND
        ccd = _param(request, "ccd")
        selected = int(ccd) if ccd is not None and ccd.isdigit() else None
        if ccd is not None and (
            selected is None or selected not in {c["ccd"] for c in self.ccd_rows(row)}
        ):
            return _NOT_FOUND
        return self._page(index.night, index, False, False, pinned=row, selected=selected)

    def _page(self, night, index, live, show_all, pinned=None, selected=None) -> Response:
        nights = self.nights()
        rows = index.rows if index else []
        shown = pinned or (rows[-1] if rows else None)
        cache = index.cache if index else {}
        with self._lock:
            tonight = cache.get(("tonight", show_all))
            if tonight is None:
                tonight = cache[("tonight", show_all)] = render_tonight(night, rows, show_all)
            key = ("exposure", shown["exposure_id"] if shown else None, pinned is None, selected)
            exposure = cache.get(key)
            if exposure is None:
                exposure = cache[key] = (
                    self._render_exposure(shown, pinned is not None, selected)
                    if shown
                    else '<section id="exposure" class="panel"><h2>Latest exposure</h2>'
                    '<p class="empty">no exposure graded yet tonight</p></section>'
                )
        attrs = {
            "data-night": night,
            "data-rev": index.rev if index else "",
            "data-live": "1" if live else "0",
            "data-pinned": pinned["exposure_id"] if pinned else "",
            "data-exposure": shown["exposure_id"] if shown else "",
            "data-all": "1" if show_all else "0",
            "data-poll-ms": str(int(self.poll_s * 1000)),
            "data-colors": json.dumps(
                {g: "rgb({}, {}, {})".format(*c) for g, c in GRADE_COLORS.items()}
            ),
        }
        body = (
            render_nav(night, nights, live)
            + render_now(self.now_doc(nights, index))
            + exposure
            + tonight
        )
        page = render_page(
            f"skygrade · {'exposure ' + pinned['exposure_id'] if pinned else 'night ' + night}",
            attrs,
            body,
        )
        return Response(200, _HTML, page.encode())

    def _render_exposure(self, row: dict, pinned: bool, selected: int | None) -> str:
        ccds = self.ccd_rows(row)
        detail = None
        if selected is not None:
            images = self.image_ccds(row)
            c = next(c for c in ccds if c["ccd"] == selected)
            thumb = (
                _url("/thumb", night=row["night"], id=row["exposure_id"], ccd=selected)
                if selected in images
                else None
            )
            detail = render_ccd_detail(c, thumb)
        return render_exposure(
            row,
            ccds,
            title=f"Exposure {row['exposure_id']}" if pinned else "Latest exposure",
            href=lambda k: (
                _url("/exposure", night=row["night"], id=row["exposure_id"], ccd=k) + "#ccd-detail"
            ),
            detail=detail,
            selected=selected,
        )


def _ccd_conf(c: dict):
    return c.get(f"p_{c['grade']}") if c.get("grade") else None


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


def render_page(title: str, attrs: dict, body: str, css: str | None = None) -> str:
    """The HTML document around ``body``; with ``css`` it is self-contained (no script)."""
    attr_text = "".join(f' {k}="{esc(v)}"' for k, v in attrs.items())
    if css is None:
        head = (
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<link rel="stylesheet" href="/static/observer.css">'
        )
        tail = '<script src="/static/observer.js" defer></script>'
    else:
        head = (
            f'<meta http-equiv="Content-Security-Policy" content="{_STATIC_CSP}">'
            f"<style>{css}</style>"
        )
        tail = ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{head}<title>{esc(title)}</title></head><body{attr_text}>{body}{tail}</body></html>"
    )


def render_nav(night: str, nights: list[str], live: bool) -> str:
    earlier = [n for n in nights if n < night]
    later = [n for n in nights if n > night]
    links = ['<a href="/">live</a>']
    if earlier:
        href = esc(_url("/night", date=earlier[-1]))
        links.append(f'<a rel="prev" href="{href}">&larr; {esc(earlier[-1])}</a>')
    if later:
        href = esc(_url("/night", date=later[0]))
        links.append(f'<a rel="next" href="{href}">{esc(later[0])} &rarr;</a>')
    return (
        '<header><h1>skygrade <span class="sub">observer</span></h1><nav>'
        + " ".join(links)
        + '<form action="/night" method="get"><label>night <input type="date" name="date" '
        f'value="{esc(night)}" required></label> <button type="submit">show</button></form>'
        + ('<span class="live">live</span>' if live else "")
        + "</nav></header>"
    )


def render_now(doc: dict) -> str:
    last = doc.get("last_graded")
    if last:
        when = dt.datetime.fromisoformat(last["graded_at"])
        ago = max(0.0, time.time() - when.timestamp())
        last_text = (
            f'<span id="now-last-time">{esc(_hms(when))} UT</span> '
            f'(<span id="now-ago" data-t="{when.timestamp():.3f}">{_ago(ago)}</span>), '
            f"{esc(last['exposure_id'])} {esc(last['grade'])}"
        )
    else:
        last_text = '<span id="now-last-time">-</span>'
    alerts = doc.get("alerts") or []
    items = "".join(
        f'<li class="alert {esc(str(a.get("level", "")).lower())}"><b>{esc(a.get("level"))}</b> '
        f"{esc(a.get('rule'))}: {esc(a.get('message'))}</li>"
        for a in alerts
    )
    backlog = doc.get("backlog")
    return (
        '<section id="now" class="panel"><h2>Now</h2><dl class="facts">'
        f'<dt>night</dt><dd id="now-night">{esc(doc["night"])}</dd>'
        f'<dt>model</dt><dd id="now-model">{esc(doc.get("model_version") or "-")}</dd>'
        f'<dt>daemon</dt><dd id="now-state" class="state-{esc(doc["state"].replace(" ", "-"))}">'
        f"{esc(doc['state'])}</dd>"
        f'<dt>backlog</dt><dd id="now-backlog">{esc("-" if backlog is None else backlog)}</dd>'
        f'<dt>last graded</dt><dd id="now-last">{last_text}</dd></dl>'
        f'<ul id="alerts">{items or "<li class=none>no active alert</li>"}</ul></section>'
    )


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render_exposure(
    row: dict,
    ccds: list[dict],
    title: str,
    href: Callable[[int], str],
    detail: str | None = None,
    selected: int | None = None,
) -> str:
    """The exposure panel: headline, facts, focal plane (and one CCD's details)."""
    grade = row.get("grade")
    grade_html = (
        f'<span class="grade" data-grade="{esc(grade)}">{esc(grade)}</span>'
        if grade
        else f'<span class="grade q">{esc(row["status"])}</span>'
    )
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
    facts_html = "".join(
        f'<dt>{esc(k)}</dt><dd class="f-{esc(k.split()[0].lower())}">{esc(v)}</dd>'
        for k, v in facts
    )
    return (
        f'<section id="exposure" class="panel"><h2 id="exposure-title">{esc(title)}</h2>'
        '<div id="exposure-summary">'
        f'<p class="headline">{grade_html} <span class="conf">'
        f"{_num(row.get('confidence'))}</span> "
        f'<span class="reason">{esc(row.get("reason"))}</span></p>'
        f'<dl class="facts">{facts_html}</dl></div>'
        '<div class="fp-wrap">'
        + render_focal_plane(row, ccds, href, selected)
        + f'<div id="ccd-detail" class="detail">{detail or _DETAIL_HINT}</div></div></section>'
    )


def _ood_text(score) -> str:
    """The out-of-distribution score for people: 1 is the edge of the training data."""
    if not _finite(score):
        return "-"
    verdict = "unlike the training data: confidence lowered" if score > 1.0 else "familiar"
    return f"{score:.2f} ({verdict})"


_DETAIL_HINT = '<p class="hint">select a CCD for its probabilities, hits and image</p>'


def render_focal_plane(row, ccds, href, selected=None) -> str:
    """One cell per CCD at its place on the focal plane, coloured by grade and confidence."""
    by_ccd = {c["ccd"]: c for c in ccds}
    n = max([int(row.get("n_ccd") or 0)] + [k + 1 for k in by_ccd])
    rows, cols, cells = focal_plane_layout(n)
    out = []
    for k, (r, col) in enumerate(cells[:n] if n else []):
        c = by_ccd.get(k)
        status = c["status"] if c else "missing"
        grade = c["grade"] if c else None
        conf = _ccd_conf(c) if c else None
        color = _rgba(grade, conf)
        style = f"grid-row:{r + 1};grid-column:{col + 1}" + (
            f";background-color:{color}" if color else ""
        )
        label = grade or {"quarantined": "Q", "not_graded": "-", "missing": "?"}.get(status, "?")
        tip = f"ccd{k:02d} {grade or status} {_num(conf)}"
        if c and c.get("reason"):
            tip += f" ({c['reason']})"
        cls = "ccd" + (" selected" if k == selected else "")
        out.append(
            f'<a class="{cls}" id="cell-{k}" data-ccd="{k}" data-grade="{esc(grade or "")}" '
            f'data-status="{esc(status)}" href="{esc(href(k))}" style="{style}" '
            f'title="{esc(tip)}"><span class="n">{k:02d}</span>'
            f'<span class="g">{esc(label)}</span></a>'
        )
    return (
        f'<div id="focal-plane" class="focal-plane" data-rows="{rows}" data-cols="{cols}" '
        f'style="grid-template-columns:repeat({cols},var(--cell-w))">' + "".join(out) + "</div>"
    )


def render_ccd_detail(c: dict, thumb: str | None) -> str:
    """Class probabilities, sources, medians, the 20 hit counts and the thumbnail of a CCD."""
    probs = "".join(
        f'<tr><th>{esc(k)}</th><td class="bar"><span style="width:{100 * p:.0f}%;'
        f'background-color:rgb{GRADE_COLORS[k]}"></span></td><td>{p:.3f}</td></tr>'
        for k, p in ((k, c.get(f"p_{k}")) for k in CLASSES)
        if _finite(p)
    )
    hits = c.get("hits") or []
    hit_cells = "".join(
        "<tr>" + "".join(f"<td>{int(h)}</td>" for h in hits[i : i + 5]) + "</tr>"
        for i in range(0, len(hits), 5)
    )
    img = (
        f'<img class="thumb" src="{esc(thumb)}" alt="representative image of ccd{c["ccd"]:02d}">'
        if thumb
        else '<p class="noimg">no representative image</p>'
    )
    facts = [
        ("status", c.get("status")),
        ("sources", c.get("n_sources")),
        ("median elongation", _num(c.get("median_elongation"))),
        ("median ISO0", _num(c.get("median_iso0"), ".1f", " px")),
        ("median background", _num(c.get("median_background"), ".1f", " ADU")),
        ("reason", c.get("reason") or "-"),
    ]
    return (
        f'<h3>ccd{c["ccd"]:02d} <span class="grade" data-grade="{esc(c.get("grade") or "")}">'
        f"{esc(c.get('grade') or c.get('status'))}</span></h3>{img}"
        f'<table class="probs">{probs}</table><dl class="facts">'
        + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
        + f'</dl><table class="hits" title="SOM hits per cluster">{hit_cells}</table>'
    )


def render_timeline(night: str, rows: list[dict]) -> str:
    """SVG: one mark per exposure at its time, coloured by grade, as tall as its confidence."""
    start, end = night_span(night, rows)
    span = (end - start).total_seconds() or 1.0
    x0, width, base, height = 40.0, 940.0, 100.0, 80.0
    ticks = []
    hour = start.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    while hour < end:
        x = x0 + width * (hour - start).total_seconds() / span
        ticks.append(
            f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{base:.0f}" y2="{base + 4:.0f}"/>'
            f'<text x="{x:.1f}" y="{base + 16:.0f}">{hour:%H}</text>'
        )
        hour += dt.timedelta(hours=1)
    marks = []
    for r in rows:
        if r.get("time") is None:
            continue
        cached = r.get("_mark")
        if cached is not None and cached[0] == (start, end):
            marks.append(cached[1])
            continue
        x = x0 + width * (r["time"] - start).total_seconds() / span
        graded = r["status"] == "graded"
        h = max(height * (r["confidence"] or 0.0), 4.0) if graded else 6.0
        color = "rgb({}, {}, {})".format(*GRADE_COLORS[r["grade"]]) if graded else "#888"
        opacity = shade(r["confidence"] or 0.0) if graded else 1.0
        tip = f"{r['exposure_id']} {_hms(r['time'])} UT {r['grade'] or r['status']}"
        tip += f" {r['confidence']:.2f}" if graded else ""
        mark = (
            f'<rect class="mark{"" if graded else " q"}" data-id="{esc(r["exposure_id"])}" '
            f'x="{x - 1.5:.1f}" y="{base - h:.1f}" width="3" height="{h:.1f}" fill="{color}" '
            f'fill-opacity="{opacity:.2f}"><title>{esc(tip)}</title></rect>'
        )
        r["_mark"] = ((start, end), mark)  # kept with the row: a new exposure adds one mark
        marks.append(mark)
    return (
        f'<svg id="timeline" viewBox="0 0 1000 120" role="img" data-start="{start.isoformat()}" '
        f'data-end="{end.isoformat()}" aria-label="grades through the night (UT hours)">'
        f'<line class="axis" x1="{x0}" x2="{x0 + width}" y1="{base}" y2="{base}"/>'
        + "".join(ticks)
        + f'<text x="{x0 + width}" y="{base + 16:.0f}" class="unit">UT</text>'
        + f'<g id="marks">{"".join(marks)}</g></svg>'
    )


def render_usable(s: dict) -> str:
    usable = "-" if s["usable_fraction"] is None else f"{100 * s['usable_fraction']:.0f}%"
    return (
        f'<p id="usable">usable (GOOD) so far: <b>{usable}</b> of {s["graded"]} graded; '
        f"{s['n']} exposure(s), {s['quarantined']} quarantined</p>"
    )


def render_table(rows: list[dict], show_all: bool, links: bool = True) -> str:
    shown = rows[::-1] if show_all else rows[::-1][:TABLE_ROWS]
    body = []
    for r in shown:
        eid = esc(r["exposure_id"])
        link = (
            f'<a href="{esc(_url("/exposure", night=r["night"], id=r["exposure_id"]))}">{eid}</a>'
            if links
            else eid
        )
        grade = r["grade"] or r["status"]
        body.append(
            f'<tr id="exp-{eid}" data-id="{eid}"><td>{_hms(r.get("time"))}</td><td>{link}</td>'
            f"<td>{esc(r.get('object'))}</td><td>{esc(r.get('filter'))}</td>"
            f'<td class="num">{_num(r.get("exptime"), ".0f")}</td>'
            f'<td><span class="grade" data-grade="{esc(r["grade"] or "")}">{esc(grade)}</span>'
            f'</td><td class="num">{_num(r.get("confidence"))}</td>'
            f'<td class="num">{_num(r.get("latency_s"), ".1f")}</td>'
            f'<td class="reason">{esc(r.get("reason"))}</td></tr>'
        )
    more = (
        ""
        if show_all or len(rows) <= TABLE_ROWS
        else f'<p class="more">latest {TABLE_ROWS} of {len(rows)} shown; '
        f'<a href="{esc(_url("/night", date=rows[0]["night"], all=1))}">all exposures</a></p>'
    )
    return (
        '<table id="exposures"><thead><tr><th>UT</th><th>EXPNUM</th><th>OBJECT</th>'
        "<th>FILTER</th><th>EXPTIME</th><th>grade</th><th>conf.</th><th>latency s</th>"
        f"<th>reason</th></tr></thead><tbody>{''.join(body)}</tbody></table>{more}"
    )


def render_tonight(night: str, rows: list[dict], show_all: bool, links: bool = True) -> str:
    """The night panel: usable fraction, timeline and the table (``links``: to exposure pages)."""
    return (
        f'<section id="tonight" class="panel"><h2>Night {esc(night)}</h2>'
        + render_usable(summarize(rows))
        + render_timeline(night, rows)
        + render_table(rows, show_all, links=links)
        + "</section>"
    )


# --------------------------------------------------------------------------- static report


def render_static_night(out_dir, night: str) -> str:
    """The night view as one self-contained HTML document (CSS and images inlined, no script).

    The latest exposure's focal plane links every CCD to its details (probabilities, hits and
    the representative image as an inlined PNG), the timeline and the table list every
    exposure.

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
    latest = rows[-1] if rows else None
    parts = [
        '<header><h1>skygrade <span class="sub">night report</span></h1>'
        f"<p>night {esc(night)}, written {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UT; "
        f"model {esc(', '.join(summarize(rows)['model_versions']))}</p></header>"
    ]
    if latest is not None:
        ccds = observer.ccd_rows(latest)
        images = observer.images(latest)
        details = []
        for c in ccds:
            thumb = None
            if c["ccd"] in images:
                data = base64.b64encode(thumbnail_png(images[c["ccd"]])).decode()
                thumb = f"data:image/png;base64,{data}"
            details.append(
                f'<div class="detail static" id="ccd-{c["ccd"]}">'
                + render_ccd_detail(c, thumb)
                + "</div>"
            )
        parts.append(
            render_exposure(latest, ccds, "Latest exposure", href=lambda k: f"#ccd-{k}").replace(
                _DETAIL_HINT, '<p class="hint">select a CCD: its details are below</p>'
            )
            + '<section id="ccds" class="panel"><h2>CCDs of the latest exposure</h2>'
            + "".join(details)
            + "</section>"
        )
    parts.append(render_tonight(night, rows, show_all=True, links=False))
    return render_page(f"skygrade · night {night}", {"data-night": night}, "".join(parts), css)
