"""The grades dataset as the observer page reads it: an index of each night's exposure rows,
and the CCD rows and stored images of one exposure, read on demand and cached.

Every read of the dataset's files made for the page (and for ``skygrade report --html``) is
here, and nothing here renders: :mod:`skygrade.streamer.observer` serves what it finds,
:mod:`skygrade.streamer.observer_views` and :mod:`skygrade.streamer.observer_report` draw it.

The layout is :class:`skygrade.transforms.grades_dataset.GradesDataset`'s:
``exposures/night=N/*.parquet`` (one exposure row per file, the commit mark), the CCD rows under
``ccds/`` and the images under ``images/`` (same file names).

Serving fast with a night of 1,000 exposures: each night's :class:`NightIndex` (its exposure
rows, one per exposure) is refreshed only when the listing of the night's directory changes
(names, sizes, mtimes; only new or changed files are read). CCD rows and representative images
are read per exposure on demand (small files) and cached.

Safety: nothing from a URL reaches the filesystem except through ids looked up here (the night
must match ``YYYY-MM-DD`` and exist as a directory; rows, and so the files named by their
``_file``, come from the night's listing).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from skygrade.streamer.night_summary import latest_per_exposure
from skygrade.transforms.exposure import NIGHT_PATTERN
from skygrade.transforms.grades_dataset import EXPOSURE_SCHEMA, GradesDataset, read_images

log = logging.getLogger(__name__)

__all__ = ["NIGHT_PATTERN", "DatasetIndex", "LRU", "NightIndex"]

_CACHE_ITEMS = 256
_MARGIN_NS = 100_000_000


class LRU(OrderedDict):
    """A dict that keeps its :data:`_CACHE_ITEMS` most recently used items."""

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
    report``), with ``night``, ``time`` (:func:`skygrade.streamer.night_summary.row_time`) and
    ``_file`` (the parquet file's name, from which the CCD rows and images are found).
    """

    def __init__(self, out_dir: Path, night: str, boot: str) -> None:
        self.out_dir, self.night, self.boot = out_dir, night, boot
        self.folder = GradesDataset(out_dir).partition(night)
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


class DatasetIndex:
    """The grades dataset at ``out_dir`` as the page reads it: the nights, a
    :class:`NightIndex` per night, and each exposure's CCD rows and stored images (cached).

    Parameters
    ----------
    out_dir : Path
        The grades dataset (``exposures/``, ``ccds/``, ``images/``).
    boot : str
        Begins every :attr:`NightIndex.rev`, so that revisions differ across restarts.

    Attributes
    ----------
    lock : threading.RLock
        Held while an index refreshes or a cache changes; the page keeps what it renders of a
        night (:attr:`NightIndex.cache`, cleared by a refresh) under it too.
    """

    def __init__(self, out_dir: Path, boot: str) -> None:
        self.out_dir = out_dir
        self.dataset = GradesDataset(out_dir)
        self.boot = boot
        self.lock = threading.RLock()
        self._nights: dict[str, NightIndex] = {}
        self._ccds = LRU()
        self._images = LRU()

    def nights(self) -> list[str]:
        """Nights present in the dataset (those named ``YYYY-MM-DD``), sorted."""
        return [n for n in self.dataset.nights() if NIGHT_PATTERN.match(n)]

    def night(self, night: str | None) -> NightIndex | None:
        """The refreshed index of ``night``, or None when it is not a night of the dataset."""
        if night is None or not NIGHT_PATTERN.match(night):
            return None
        if not self.dataset.partition(night).is_dir():
            return None
        with self.lock:
            index = self._nights.get(night)
            if index is None:
                index = self._nights[night] = NightIndex(self.out_dir, night, self.boot)
            index.refresh()
            return index

    def ccd_rows(self, row: dict) -> list[dict]:
        """The CCD rows of an exposure row (same file name under ``ccds/``), sorted by CCD."""
        path = self.dataset.ccds_file(self.dataset.partition(row["night"]) / row["_file"])
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            return []

        def read():
            rows = pq.read_table(path).to_pylist()
            for r in rows:
                r["night"] = row["night"]
            return sorted(rows, key=lambda r: r["ccd"])

        with self.lock:
            return self._ccds.get_or((str(path), stamp), read)

    def images(self, row: dict) -> dict[int, np.ndarray]:
        """The stored representative images of an exposure row's CCDs ({} when none)."""
        return self.images_keyed(row)[1]

    def images_keyed(self, row: dict) -> tuple[tuple | None, dict[int, np.ndarray]]:
        """:meth:`images` with the identity of the file they come from (its path and mtime;
        None when there is none), the key of what is drawn from them."""
        path = self._images_file(row)
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except FileNotFoundError:
            return None, {}
        with self.lock:
            return key, self._images.get_or(key, lambda: read_images(path))

    def image_ccds(self, row: dict) -> set[int]:
        """The CCDs of an exposure row that have a stored image (reads only the index array)."""
        path = self._images_file(row)
        try:
            key = ("ccds", str(path), path.stat().st_mtime_ns)
        except FileNotFoundError:
            return set()

        def read():
            with np.load(path, allow_pickle=False) as z:
                return {int(c) for c in z["ccd"]}

        with self.lock:
            return self._images.get_or(key, read)

    def _images_file(self, row: dict) -> Path:
        return self.dataset.images_file(self.dataset.partition(row["night"]) / row["_file"])
