"""Watch the data-drop directory and report each exposure once it is completely written.

MegaCam files (~680 MB) arrive progressively: the file exists, then grows in chunks for tens of
seconds. A file is *ready* when

1. its ``(st_size, st_mtime_ns)`` has not changed for ``settle_s`` seconds (debounce),
2. :func:`skygrade.transforms.fits_walk.check_integrity` proves, from the headers alone, that every
   HDU the headers announce is wholly present, and
3. :func:`skygrade.transforms.fits_walk.check_data` finds no data unit that ends in NUL bytes.

No check alone is enough: a stalled transfer is stable but incomplete, and a copy into a
preallocated file (``truncate -s SIZE`` then filled, as ``rsync --preallocate`` and
``fallocate`` do) has its final size from the start and can be structurally complete while
its data are still zeros. Before (3), such a copy that paused for ``settle_s`` was graded on
partial data, then again as it filled: three grades of one exposure. A data unit that ends in
zeros and has no ``DATASUM`` to prove them real is waited for like an incomplete file; if it
stays unchanged for ``incomplete_timeout_s`` it is graded as it is (zeros can be data).

Threads
-------
The watchdog observer's handler (:class:`_EnqueueHandler`) only puts the path on a queue: no
I/O, no stat, nothing that can block or raise. One worker thread owns all the state: it drains
the queue, keeps the candidates, re-checks them every ``poll_s`` (the checks, and the reports
and rejections they lead to, are :class:`skygrade.streamer.drop_checks.CandidateChecks`, a mixin of
:class:`DropWatcher`), and calls the callbacks. The
callbacks therefore run on the worker thread, one at a time, and an exception in one is logged
without killing the worker. :meth:`DropWatcher.stop` stops and joins the observer (and its
emitter threads) and the worker.

Outcomes
--------
``on_ready(path)``
    Once per file identity ``(size, mtime_ns)``. A file rewritten later is a new identity and is
    reported again if its content changed: one touched, or copied again as it was, has the
    same :func:`~skygrade.transforms.fits_walk.check_data` fingerprint and is not. A file is
    reported once whatever the number of names it has in the drop directory: a symlink (to a file
    inside the drop) is reported by the real name of its target, and a second hard link, or a
    symlink, to a file already reported as it is, is not reported at all (files are told apart
    by ``(st_dev, st_ino)``; before, a symlink to a file in the drop graded it twice). If
    ``on_ready`` raises, the file stays a candidate and is offered again after another
    ``settle_s`` (an exposure must not vanish because, say, the ledger disk was full).
``on_reject(path, reason, message)``, also once per identity, and once per file: another name
of a file rejected as it is (a hard link) is neither rejected nor reported. ``message`` names
the file and the problem with every control character escaped
(:func:`skygrade.ops.text.escape_controls`), as is every name the watcher logs: a newline in a file
name cannot forge a log line or a reason.

- ``outside_drop``: the real path (symlinks followed) lies outside the real drop directory. The
  file is never opened.
- ``truncated``: incomplete, and unchanged for ``incomplete_timeout_s`` (a copy that stopped
  half way). A file that keeps growing is waited for, however slow the transfer (a warning is
  logged once it has been growing for ``incomplete_timeout_s``). A rejected file that changes
  later becomes a candidate again.
- ``unreadable``: ``stat`` / ``open`` failed (permissions, I/O error) or it is not a regular file
  (a FIFO named ``*.fits`` would block a reader forever).
- any :class:`~skygrade.transforms.exposure_errors.CorruptFileError` / ``ExposureError`` reason
  (``not_fits``, ``bad_header``, ``trailing_data``...): at once.
- ``unsupported_compression``: a FITS file compressed as a whole (``*.fits.gz``, ``.bz2``,
  ``.xz``, ``.Z``, ``.zst``: :data:`UNSUPPORTED_PATTERNS`), once settled, without opening it.
  Before, such a file was ignored with no trace; only tile compression (``*.fits.fz``) is read.

Ignored: directories, names that do not match ``patterns``, hidden names (any path component
below the drop directory that starts with ``.``, so rsync's ``.name.XXXXXX`` temporaries and
hidden staging folders are skipped) and temporary names (``*.tmp``, ``*.part``, ``*~``,
``*.swp``). A file renamed from a temporary name to a real one is picked up by its moved-to
event. A directory created or moved into the drop directory is scanned, so a night folder moved
in whole is not missed.

Events can be lost (inotify queue overflow, a file created in a new sub-folder before
watchdog watches it) and a watchdog thread can die of an exception. Every ``rescan_s`` the
worker therefore restarts the observer if one of its threads is dead and rescans the drop
directory: a lost event delays a file, it does not lose it.

After a restart the watcher knows nothing: :meth:`DropWatcher.start` scans the drop directory
and every complete file is reported ready again. Telling the ones already graded apart is the
ledger's job (``Ledger.observe`` returns ``is_new=False`` for a known identity).

Examples
--------
>>> with DropWatcher("/data/drop", on_ready=ready.put, on_reject=quarantine):  # doctest: +SKIP
...     stop_event.wait()
"""

from __future__ import annotations

import fnmatch
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from skygrade.ops.text import escape_controls
from skygrade.streamer.drop_checks import UNSUPPORTED_PATTERNS, Candidate, CandidateChecks, Identity

__all__ = ["DEFAULT_PATTERNS", "TEMPORARY_PATTERNS", "UNSUPPORTED_PATTERNS", "DropWatcher"]

log = logging.getLogger(__name__)

#: File names the watcher considers exposures.
DEFAULT_PATTERNS = ("*.fits", "*.fits.fz")
#: Names of files still being written by a transfer tool; never considered.
TEMPORARY_PATTERNS = ("*.tmp", "*.part", "*~", "*.swp")

# Events worth a look. Opened / closed-without-write events are left out on purpose: the
# worker's own integrity check opens the file and would otherwise feed itself.
_FILE_EVENTS = (FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileDeletedEvent)
_DIR_EVENTS = (DirCreatedEvent,)
_MOVE_EVENTS = (FileMovedEvent, DirMovedEvent)


class _EnqueueHandler(FileSystemEventHandler):
    """Watchdog handler that puts the path of each interesting event on a queue, nothing else."""

    def __init__(self, sink: queue.SimpleQueue) -> None:
        super().__init__()
        self._sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, _MOVE_EVENTS):
            self._sink.put(os.fsdecode(event.src_path))  # so that the worker forgets it
            self._sink.put(os.fsdecode(event.dest_path))
        elif isinstance(event, _FILE_EVENTS + _DIR_EVENTS):
            self._sink.put(os.fsdecode(event.src_path))


class DropWatcher(CandidateChecks):
    """Report the exposures in a drop directory once each is completely written.

    Parameters
    ----------
    drop_dir : str or os.PathLike
        The directory to watch, recursively (night sub-folders work). Must exist at
        :meth:`start`.
    on_ready : callable
        ``on_ready(path)`` with a :class:`~pathlib.Path`, once per identity of a complete file.
    on_reject : callable
        ``on_reject(path, reason, message)`` for a file that will not become gradable as it is.
    settle_s : float, default 2.0
        How long size and mtime must stay unchanged before the integrity walk (>= 0).
    incomplete_timeout_s : float, default 900.0
        Seconds an incomplete file may stay unchanged before it is rejected as
        ``"truncated"`` (> 0); a file still growing is waited for.
    poll_s : float, default 0.5
        How often candidates are re-checked (> 0).
    patterns : iterable of str, default ("*.fits", "*.fits.fz")
        ``fnmatch`` patterns of the file names to consider (case-sensitive). Names matching
        :data:`UNSUPPORTED_PATTERNS` are considered too, to be rejected.
    use_polling : bool, default False
        Use watchdog's polling observer instead of the native one (inotify), e.g. on NFS, where
        the native events of writes made on another host never arrive.
    rescan_s : float or None, default 60.0
        Every ``rescan_s`` the worker checks that the watchdog threads are alive (restarting
        the observer if one died) and rescans the drop directory, so that an event lost to an
        inotify queue overflow or a watchdog race delays a file instead of losing it. ``None``
        turns both off.

    Raises
    ------
    ValueError
        On a negative ``settle_s``, a non-positive ``poll_s`` or ``incomplete_timeout_s``, or
        no pattern.

    Examples
    --------
    >>> watcher = DropWatcher("/data/drop", print, print, settle_s=2.0)  # doctest: +SKIP
    >>> watcher.start()  # doctest: +SKIP
    >>> watcher.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        drop_dir: str | os.PathLike,
        on_ready: Callable[[Path], None],
        on_reject: Callable[[Path, str, str], None],
        *,
        settle_s: float = 2.0,
        incomplete_timeout_s: float = 900.0,
        poll_s: float = 0.5,
        patterns: Iterable[str] = DEFAULT_PATTERNS,
        use_polling: bool = False,
        rescan_s: float | None = 60.0,
    ) -> None:
        if not settle_s >= 0:
            raise ValueError(f"settle_s must be >= 0, got {settle_s!r}")
        if not incomplete_timeout_s > 0:
            raise ValueError(f"incomplete_timeout_s must be > 0, got {incomplete_timeout_s!r}")
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s!r}")
        if rescan_s is not None and not rescan_s > 0:
            raise ValueError(f"rescan_s must be > 0 or None, got {rescan_s!r}")
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        if not patterns:
            raise ValueError("patterns must name at least one pattern, got none")
        # Absolute, so that scanned paths and event paths are the same strings; not resolved,
        # so that the names reported are the names in the drop directory.
        self.drop_dir = Path(drop_dir).absolute()
        self.on_ready = on_ready
        self.on_reject = on_reject
        self.settle_s = float(settle_s)
        self.incomplete_timeout_s = float(incomplete_timeout_s)
        self.poll_s = float(poll_s)
        self.patterns = patterns
        self.use_polling = use_polling
        self.rescan_s = None if rescan_s is None else float(rescan_s)
        self._observer_lock = threading.Lock()  # start/stop vs the worker's health check
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._observer = None
        self._worker: threading.Thread | None = None
        self._root = ""  # real path of drop_dir, set by start()
        # Worker-thread state: touched by the worker only.
        self._candidates: dict[str, Candidate] = {}
        self._reported: dict[str, Identity] = {}
        # (st_dev, st_ino) of each file reported ready -> the name reported and its identity.
        self._files: dict[tuple[int, int], tuple[str, Identity]] = {}
        self._content: dict[str, str] = {}  # name reported -> check_data fingerprint

    # ------------------------------------------------------------------------------ control
    def start(self) -> None:
        """Start the observer and the worker, then enqueue the files already there.

        Raises
        ------
        FileNotFoundError
            If ``drop_dir`` is not an existing directory.
        RuntimeError
            If the watcher is already running.
        """
        if self._worker is not None:
            raise RuntimeError("DropWatcher is already running")
        if not self.drop_dir.is_dir():
            raise FileNotFoundError(f"drop_dir is not an existing directory: {self.drop_dir}")
        self._root = os.path.realpath(self.drop_dir)
        self._stopping.clear()
        worker = threading.Thread(target=self._run, name="DropWatcher-worker", daemon=True)
        try:
            with self._observer_lock:
                self._observer = self._start_observer()
            worker.start()
            self._worker = worker
            n = self.scan()
        except BaseException:
            self.stop()
            raise
        log.info("watching %s (%d file(s) already there)", escape_controls(self.drop_dir), n)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the observer and the worker and join them (idempotent).

        Parameters
        ----------
        timeout : float, default 5.0
            Seconds to wait for each thread. A thread still alive after that (a callback that
            does not return) is logged; it is a daemon thread and cannot hold up exit.
        """
        self._stopping.set()
        with self._observer_lock:
            observer, self._observer = self._observer, None
        worker, self._worker = self._worker, None
        try:
            if observer is not None:
                observer.stop()
        finally:
            if worker is not None:
                self._queue.put(None)  # wake the worker
                # From a callback stop() runs on the worker itself, which ends once it returns.
                if worker is not threading.current_thread():
                    worker.join(timeout)
                    if worker.is_alive():
                        log.error("watcher worker did not stop within %.1f s", timeout)
            if observer is not None:
                observer.join(timeout)
                if observer.is_alive():
                    log.error("watchdog observer did not stop within %.1f s", timeout)

    def _start_observer(self):
        observer = PollingObserver(timeout=self.poll_s) if self.use_polling else Observer()
        observer.schedule(_EnqueueHandler(self._queue), os.fspath(self.drop_dir), recursive=True)
        observer.start()
        return observer

    def _check_observer(self) -> None:
        """Restart the observer if a watchdog thread has died (worker thread)."""
        with self._observer_lock:
            observer = self._observer
            if self._stopping.is_set() or observer is None:
                return
            if observer.is_alive() and all(e.is_alive() for e in observer.emitters):
                return
            log.error("a watchdog thread died: restarting the observer and rescanning")
            observer.stop()
            observer.join(5.0)
            self._observer = self._start_observer()

    def __enter__(self) -> DropWatcher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive."""
        return self._worker is not None and self._worker.is_alive()

    def scan(self) -> int:
        """Enqueue every file under the drop directory whose name the watcher would consider.

        Returns
        -------
        int
            The number of paths enqueued (the worker still checks each one).
        """
        return self._scan_dir(os.fspath(self.drop_dir))

    def _scan_dir(self, top: str) -> int:
        n = 0
        for dirpath, dirnames, filenames in os.walk(top, onerror=self._walk_error):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if self._wanted(path):
                    self._queue.put(path)
                    n += 1
        return n

    @staticmethod
    def _walk_error(exc: OSError) -> None:
        log.error("cannot list %s: %s", escape_controls(exc.filename), escape_controls(exc))

    # ------------------------------------------------------------------------------- worker
    def _wanted(self, path: str) -> bool:
        """Whether a name deserves a look: matching, not hidden, not temporary."""
        name = os.path.basename(path)
        try:
            parts = Path(os.path.relpath(path, self.drop_dir)).parts
        except ValueError:
            parts = (name,)
        if any(part.startswith(".") and part not in (".", "..") for part in parts):
            return False
        if any(fnmatch.fnmatchcase(name, p) for p in TEMPORARY_PATTERNS):
            return False
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns + UNSUPPORTED_PATTERNS)

    def _run(self) -> None:
        log.debug("watcher worker started")
        next_poll = time.monotonic()
        next_rescan = next_poll + (self.rescan_s or 0.0)
        while not self._stopping.is_set():
            try:
                path = self._queue.get(timeout=max(next_poll - time.monotonic(), 0.0))
            except queue.Empty:
                path = ""
            try:
                if path:
                    self._take(path)
                if time.monotonic() >= next_poll:
                    self._poll()
                    next_poll = time.monotonic() + self.poll_s
                if self.rescan_s is not None and time.monotonic() >= next_rescan:
                    next_rescan = time.monotonic() + self.rescan_s
                    self._check_observer()
                    self.scan()  # the safety net for events lost (queue overflow, races)
            except Exception:  # a bug here must not stop the watching: log and go on
                log.exception("watcher worker error")
                next_poll = time.monotonic() + self.poll_s
        log.debug("watcher worker stopped")

    def _take(self, path: str) -> None:
        """A path from the queue: start watching it (or scan it, if a directory came in)."""
        if path in self._candidates:
            return
        if os.path.isdir(path) and not os.path.islink(path):
            if self._wanted_dir(path):
                self._scan_dir(path)
            return
        if self._wanted(path):
            now = time.monotonic()
            self._candidates[path] = Candidate(first_seen=now, stable_since=now)

    def _wanted_dir(self, path: str) -> bool:
        try:
            parts = Path(os.path.relpath(path, self.drop_dir)).parts
        except ValueError:
            return False
        return not any(part.startswith(".") and part not in (".", "..") for part in parts)

    def _poll(self) -> None:
        for path, cand in list(self._candidates.items()):
            if self._stopping.is_set():
                return
            if time.monotonic() >= cand.not_before:
                self._check(path)
