"""Binned previews of an exposure's pixels and a CCD's SOM hit grid, for the observer page.

What the page shows beside a CCD's representative image (issue 22 item 10):

:func:`ccd_preview`
    One CCD's pixels binned by an integer factor to about :data:`PREVIEW_HEIGHT` pixels tall
    (a full MegaCam CCD, 2048 x 4612, is binned 19 x 19 into 107 x 242), stretched to 8 bits.
:func:`mosaic_preview`
    Every CCD of the exposure binned alike (to about :data:`MOSAIC_HEIGHT` pixels tall in all)
    and laid out as the page's focal plane
    (:func:`skygrade.streamer.page_images.focal_plane_layout`: MegaCam's 4 rows of 9, ``ccd00`` top
    left, as :mod:`skygrade.streamer.sky_plan` lays them), with one display range for all, so a CCD
    brighter than the others shows it.
:func:`hits_png`
    The CCD's representative image with the SOM hit count of each cluster under its tile, drawn
    by ``skygrade inspect``'s own renderer (:func:`skygrade.streamer.inspect.render_png`) from what
    the grades dataset stores (the hits of the CCD row and the stored representative image).

Pixels are shown as ds9 shows them: FITS row 1 at the bottom (the simulator puts a CCD's pixel
(0, 0) at its bottom left in the focal plane). Two stretches (:data:`STRETCHES`): ``asinh``
(black a little under the sky, linear near the sky and logarithmic over the stars, so faint
trails and bright cores both show) and ``zscale`` (IRAF's zscale range, linear).

Reading: only the exposure file in the drop directory, opened with
:func:`skygrade.transforms.confined_reads.pinned` beneath it (no symlink followed, nothing outside
it read), and only when its ``EXPNUM`` is the exposure asked for. The PNGs are cached in a
:class:`PreviewCache` bounded in bytes, keyed by the file's identity (device, inode, size,
mtime), and computed one at a time (a full focal plane reads 680 MB: two page readers must not
read it twice at once, nor starve the grader).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from skygrade.models.mosaic import tile_grid
from skygrade.streamer.page_images import focal_plane_layout, png_gray8
from skygrade.transforms.ccd_pixels import read_ccd
from skygrade.transforms.confined_reads import pinned
from skygrade.transforms.exposure import ExposureError, read_meta
from skygrade.transforms.grades_dataset import IMAGE_RANGE
from skygrade.transforms.representative import CcdInputs

log = logging.getLogger(__name__)

PREVIEW_HEIGHT = 256
"""Target height of a CCD preview, pixels: the binning factor is the smallest integer that
brings the CCD to at most this height."""
MOSAIC_HEIGHT = 600
"""Target height of the focal-plane preview (CCDs and gaps), pixels."""
GAP_PX = 80
"""Gap between CCDs in the mosaic, in CCD pixels before binning (the simulator's gap); at
least one binned pixel."""
STRETCHES = ("asinh", "zscale")
ASINH_SOFTENING = 0.05
"""Softening of the asinh stretch, as a fraction of the display range: linear below it,
logarithmic above."""
CACHE_BYTES = 16 * 1024 * 1024
"""Bound on the cached PNGs, bytes (a full-size CCD preview is ~15-20 kB, a full focal plane
~160-180 kB: some 90 exposures' mosaics)."""
CACHE_ITEMS = 512


class PreviewError(ValueError):
    """A preview that cannot be made: an unknown stretch, a CCD the exposure lacks, or a file
    in the drop directory that is not (any more) the exposure asked for."""


class Preview(NamedTuple):
    """An 8-bit preview and how it was made."""

    image: np.ndarray
    """uint8, display orientation (FITS row 1 at the bottom)."""
    factor: int
    """Binning factor (``factor`` x ``factor`` CCD pixels per preview pixel)."""
    limits: tuple[float, float]
    """The ADU range mapped onto 0..255 (before the stretch)."""


# --------------------------------------------------------------------------- pixels


def bin_factor(height: int, target: int) -> int:
    """The smallest integer factor that bins ``height`` rows to at most ``target``.

    Examples
    --------
    >>> bin_factor(4612, 256), bin_factor(192, 256)
    (19, 1)
    """
    return max(1, math.ceil(int(height) / max(1, int(target))))


def bin_pixels(data: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block (NaN pixels left out; a block of NaN only is
    NaN); the rows and columns that do not fill a block are dropped.

    Examples
    --------
    >>> bin_pixels(np.arange(16.0).reshape(4, 4), 2)
    array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
    """
    data = np.asarray(data, dtype=np.float32)
    f = int(factor)
    h, w = data.shape[0] // f, data.shape[1] // f
    if h == 0 or w == 0:
        raise PreviewError(f"cannot bin a {data.shape} image by {f}")
    blocks = data[: h * f, : w * f].reshape(h, f, w, f)
    good = np.isfinite(blocks)
    total = np.where(good, blocks, 0.0).sum(axis=(1, 3), dtype=np.float64)
    count = good.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).astype(np.float32)


def display_limits(values: np.ndarray, stretch: str = "asinh") -> tuple[float, float]:
    """The ADU range a stretch maps onto black..white, from the finite ``values``.

    ``zscale``: IRAF's zscale (astropy). ``asinh``: from two sky sigmas (robust, from the
    median absolute deviation) under the median sky up to the 99.9th percentile, so that the
    sky is a dark grey and only the brightest stars reach white.
    """
    if stretch not in STRETCHES:
        raise PreviewError(f"stretch must be one of {', '.join(STRETCHES)}, got {stretch!r}")
    finite = np.asarray(values, dtype=np.float32)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    if stretch == "zscale":
        # astropy.visualization is slow to import, and only the zscale stretch needs it
        from astropy.visualization import ZScaleInterval

        lo, hi = ZScaleInterval().get_limits(finite)
    else:
        sky = float(np.median(finite))
        sigma = 1.4826 * float(np.median(np.abs(finite - sky)))
        lo, hi = sky - 2.0 * sigma, float(np.percentile(finite, 99.9))
    lo, hi = float(lo), float(hi)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def to_uint8(values: np.ndarray, limits: tuple[float, float], stretch: str = "asinh"):
    """``values`` over ``limits`` as 0..255 with the stretch (NaN is black)."""
    lo, hi = limits
    x = np.clip((np.asarray(values, dtype=np.float32) - lo) / np.float32(hi - lo), 0.0, 1.0)
    if stretch == "asinh":
        x = np.arcsinh(x / ASINH_SOFTENING) / np.arcsinh(1.0 / ASINH_SOFTENING)
    return np.where(np.isfinite(x), np.rint(255.0 * x), 0.0).astype(np.uint8)


def _display(binned: np.ndarray) -> np.ndarray:
    """FITS row 1 at the bottom, as ds9 draws a CCD and the simulator lays it."""
    return binned[::-1]


def ccd_binned(path: str, ccd: int, height: int = PREVIEW_HEIGHT) -> tuple[np.ndarray, int]:
    """One CCD of a (pinned) exposure, binned to at most ``height`` rows; and the factor."""
    pixels = read_ccd(path, ccd)
    factor = bin_factor(pixels.shape[0], height)
    return bin_pixels(pixels.data, factor), factor


def ccd_preview(
    path: str, ccd: int, stretch: str = "asinh", height: int = PREVIEW_HEIGHT
) -> Preview:
    """The preview of one CCD of the exposure at ``path`` (read as :func:`read_ccd` does: in a
    :func:`skygrade.transforms.confined_reads.pinned` block, the pinned file)."""
    binned, factor = ccd_binned(path, ccd, height)
    limits = display_limits(binned, stretch)
    return Preview(_display(to_uint8(binned, limits, stretch)), factor, limits)


def mosaic_cells(n_ccd: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Rows, columns and each CCD's (row, column) from the top left: the page's focal plane."""

    return focal_plane_layout(n_ccd)


def assemble_mosaic(ccds: list[np.ndarray | None], gap: int) -> np.ndarray:
    """The CCD images (all of one shape, display orientation; None: a CCD that could not be
    read) at their places in the focal plane, ``gap`` pixels apart; gaps and missing CCDs
    are NaN.

    Examples
    --------
    >>> assemble_mosaic([np.zeros((2, 1)), np.ones((2, 1))], gap=1)
    array([[ 0., nan,  1.],
           [ 0., nan,  1.]], dtype=float32)
    """
    shape = next((c.shape for c in ccds if c is not None), None)
    if shape is None:
        raise PreviewError("no CCD could be read")
    rows, cols, cells = mosaic_cells(len(ccds))
    h, w = shape
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, dtype=np.float32)
    for image, (r, c) in zip(ccds, cells, strict=True):
        if image is not None:
            out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = image
    return out


def mosaic_preview(path: str, stretch: str = "asinh", height: int = MOSAIC_HEIGHT) -> Preview:
    """The focal-plane preview of the (pinned) exposure at ``path``: every CCD binned alike, one
    display range for all; a CCD that cannot be read is left black."""
    meta = read_meta(path)
    rows = mosaic_cells(meta.n_ccd)[0]
    ccd_h = meta.ccd_shape[0]
    factor = bin_factor(rows * ccd_h + (rows - 1) * GAP_PX, height)
    images: list[np.ndarray | None] = []
    for k in range(meta.n_ccd):
        try:
            images.append(_display(bin_pixels(read_ccd(path, k).data, factor)))
        except ExposureError as exc:
            log.warning("preview of %s: CCD %d not shown: %s", meta.exposure_id, k, exc)
            images.append(None)
    mosaic = assemble_mosaic(images, max(1, round(GAP_PX / factor)))
    limits = display_limits(mosaic, stretch)
    image = to_uint8(mosaic, limits, stretch)
    return Preview(image, factor, limits)


# --------------------------------------------------------------------------- SOM hits


def hit_grid(hits) -> list[list[dict]]:
    """The hit counts laid out as the representative image's tiles (one row of the grid per
    tile row, :func:`skygrade.models.mosaic.tile_grid`), each cell ``{"cluster": k, "hits": n}``.

    Examples
    --------
    >>> [[c["cluster"] for c in row] for row in hit_grid(range(6))]
    [[0, 1, 2], [3, 4, 5]]
    """
    counts = [int(h) for h in hits]
    if not counts:
        return []
    cols = tile_grid(len(counts))[1]
    cells = [{"cluster": k, "hits": n} for k, n in enumerate(counts)]
    return [cells[i : i + cols] for i in range(0, len(cells), cols)]


def hits_png(c: dict, stored: np.ndarray | None) -> bytes:
    """A CCD's SOM hit grid as ``skygrade inspect --ccd`` draws it: each cluster's tile of the
    representative image with ``#k: hits`` under it, the title with the sources and the
    elongation. ``c``: the CCD row (``hits``, ``n_sources``...); ``stored``: its stored
    representative image (uint8), or None (the tiles are then blank)."""
    # skygrade.streamer.inspect draws with matplotlib: loaded on the first hit grid, not with the
    # page
    from skygrade.streamer.inspect import CcdPanel, Inspection, render_png

    hits = np.asarray(c.get("hits") or [], dtype=np.int64)
    if hits.size == 0:
        raise PreviewError(f"ccd{c['ccd']:02d} has no SOM hits")
    rows, cols = tile_grid(len(hits))
    lo, hi = IMAGE_RANGE
    if stored is not None and stored.shape[0] % rows == 0 and stored.shape[1] % cols == 0:
        tile = stored.shape[0] // rows
        image = lo + np.asarray(stored, dtype=np.float32) * np.float32((hi - lo) / 255.0)
    else:  # no stored image: the counts under empty (background) tiles
        tile = 16
        image = np.full((rows * tile, cols * tile), np.nan, dtype=np.float32)
    elong = c.get("median_elongation")
    inputs = CcdInputs(
        exposure_id=str(c.get("exposure_id") or ""),
        ccd=int(c["ccd"]),
        n_ccd=0,
        exptime=0.0,
        hits=hits,
        image=image,
        n_sources=int(c.get("n_sources") or 0),
        n_clean=int(hits.sum()),
        median_elongation=float("nan") if elong is None else float(elong),
    )
    name = f"ccd{int(c['ccd']):02d}"
    panel = CcdPanel(int(c["ccd"]), name, inputs=inputs, reason=c.get("reason"))
    title = f"exposure {c.get('exposure_id')}  |  {name}  |  SOM hits per cluster"
    return render_png(Inspection(title, tile, [panel]), "asinh", single=True)


# --------------------------------------------------------------------------- cache


class PreviewCache:
    """PNG bytes by key, least recently used first out, bounded by ``max_bytes`` and
    ``max_items``; :meth:`get_or` makes a missing one, one at a time.

    Examples
    --------
    >>> cache = PreviewCache(max_bytes=10)
    >>> cache.get_or("a", lambda: b"123456"), cache.get_or("b", lambda: b"7890ab")
    (b'123456', b'7890ab')
    >>> list(cache.keys()), cache.size
    (['b'], 6)
    """

    def __init__(self, max_bytes: int = CACHE_BYTES, max_items: int = CACHE_ITEMS) -> None:
        self.max_bytes, self.max_items = int(max_bytes), int(max_items)
        self._items: OrderedDict = OrderedDict()
        self.size = 0
        self._lock = threading.Lock()
        self._making = threading.Lock()  # one preview computed at a time
        self.made = 0

    def keys(self):
        with self._lock:
            return list(self._items)

    def _get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def get_or(self, key, make: Callable[[], bytes]) -> bytes:
        found = self._get(key)
        if found is not None:
            return found
        with self._making:
            found = self._get(key)  # made meanwhile by the request that held the lock
            if found is not None:
                return found
            value = bytes(make())
            self.made += 1
        with self._lock:
            if len(value) <= self.max_bytes:
                self._items[key] = value
                self.size += len(value)
                while self.size > self.max_bytes or len(self._items) > self.max_items:
                    _, old = self._items.popitem(last=False)
                    self.size -= len(old)
        return value


# --------------------------------------------------------------------------- the page's source


class Previews:
    """The previews of the exposures in one drop directory, cached.

    Parameters
    ----------
    drop_dir : path-like
        The drop directory: the only place files are read from.
    cache : PreviewCache, optional
    """

    def __init__(self, drop_dir, cache: PreviewCache | None = None) -> None:
        self.drop_dir = os.fspath(drop_dir)
        self.cache = cache if cache is not None else PreviewCache()

    def _png(self, path: str, exposure_id: str, what: tuple, make) -> bytes:
        """``make(path)``'s PNG for the exposure file ``path`` (its row's ``path``), read
        pinned beneath the drop directory, cached by the file's identity.

        Raises
        ------
        skygrade.transforms.exposure.ExposureError
            Not readable there (``outside_drop``: outside the drop directory or through a
            symlink; ``unreadable``; a broken file).
        FileNotFoundError
        PreviewError
            The file there is another exposure now.
        """
        with pinned(path, self.drop_dir):
            meta = read_meta(path)  # the header walk: ~1 ms; refuses a file outside the drop
            if meta.exposure_id != exposure_id:
                raise PreviewError(f"{path} is exposure {meta.exposure_id} now, not {exposure_id}")
            st = os.stat(meta.source) if meta.source else os.stat(path)
            key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, *what)
            return self.cache.get_or(key, lambda: png_gray8(make(path).image))

    def ccd_png(self, path: str, exposure_id: str, ccd: int, stretch: str = "asinh") -> bytes:
        """The PNG of :func:`ccd_preview` of CCD ``ccd``; errors as :meth:`_png`, and
        :class:`PreviewError` for a stretch or CCD the exposure does not have."""
        if stretch not in STRETCHES:
            raise PreviewError(f"stretch must be one of {', '.join(STRETCHES)}")

        def make(p):
            try:
                return ccd_preview(p, ccd, stretch)
            except ValueError as exc:  # read_ccd: not a CCD of this file
                raise PreviewError(str(exc)) from None

        return self._png(path, exposure_id, ("ccd", int(ccd), stretch), make)

    def mosaic_png(self, path: str, exposure_id: str, stretch: str = "asinh") -> bytes:
        """The PNG of :func:`mosaic_preview`; errors as :meth:`_png`."""
        if stretch not in STRETCHES:
            raise PreviewError(f"stretch must be one of {', '.join(STRETCHES)}")
        return self._png(
            path, exposure_id, ("mosaic", stretch), lambda p: mosaic_preview(p, stretch)
        )
