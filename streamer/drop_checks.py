"""The drop watcher's look at each file: when a candidate is settled, whole and new, and what is
then reported or rejected.

:class:`~skygrade.streamer.watcher.DropWatcher` keeps a :class:`Candidate` per file it has seen and,
on its worker thread, gives each one look every ``poll_s`` with :meth:`CandidateChecks._check`,
whose steps are those of the watcher's readiness rule: inside the drop directory, a regular
file not already reported under another name, ``(st_size, st_mtime_ns)`` unchanged for
``settle_s``, not compressed as a whole, and proven whole by
:func:`skygrade.transforms.fits_walk.check_integrity` and
:func:`~skygrade.transforms.fits_walk.check_data` (or unchanged for ``incomplete_timeout_s``). The
outcomes (``on_ready``, ``on_reject`` and their reasons) are described in
:mod:`skygrade.streamer.watcher`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from skygrade.ops.text import escape_controls
from skygrade.transforms.exposure_errors import CorruptFileError, ExposureError, IncompleteFileError
from skygrade.transforms.fits_walk import check_data, check_integrity

__all__ = ["UNSUPPORTED_PATTERNS", "Candidate", "CandidateChecks", "Identity"]

# The watcher's log: what it reports and rejects is logged under its name, as before these
# checks had a module of their own.
log = logging.getLogger("skygrade.streamer.watcher")

#: FITS files compressed as a whole, which the grader cannot read: quarantined as
#: ``unsupported_compression`` (tile-compressed ``*.fits.fz`` files are read).
UNSUPPORTED_PATTERNS = ("*.fits.gz", "*.fits.bz2", "*.fits.xz", "*.fits.Z", "*.fits.zst")

#: Least delay before a file whose callback raised is offered again.
_MIN_RETRY_S = 1.0

Identity = tuple[int, int]


@dataclass
class Candidate:
    """A file being watched until it is ready or rejected."""

    first_seen: float  # monotonic
    identity: Identity | None = None
    stable_since: float = 0.0  # monotonic time identity was last seen to change
    not_before: float = 0.0  # monotonic time before which it is not looked at (callback retry)
    incomplete: tuple[Identity, IncompleteFileError] | None = None  # last walk's verdict
    warned_slow: bool = False  # the "still growing" warning was logged
    fingerprint: str = ""  # check_data's digest of the content, from the last walk
    file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the last stat


class CandidateChecks:
    """The looks :class:`~skygrade.streamer.watcher.DropWatcher` gives its candidates (worker
    thread).

    A mixin of the watcher: it reads its settings (``drop_dir``, ``settle_s``,
    ``incomplete_timeout_s``, ``poll_s``), its callbacks (``on_ready``, ``on_reject``), the real
    path of the drop directory (``_root``) and the worker's state, made by the watcher:
    ``_candidates`` (path -> :class:`Candidate`), ``_reported`` (path -> identity reported or
    rejected), ``_files`` (``(st_dev, st_ino)`` -> name and identity) and ``_content`` (name ->
    :func:`~skygrade.transforms.fits_walk.check_data` fingerprint).
    """

    def pending(self) -> list[dict]:
        """The files seen but not reported nor rejected yet, for the observer page's Waiting
        panel, oldest first: dicts with ``path``, ``state``, ``since`` (Unix seconds: when the
        watcher first saw it) and ``reason``.

        ``state`` is ``incomplete`` for a file the integrity walk found not whole (a copy still
        arriving: the reason says what is missing; it is rejected as ``truncated`` once
        unchanged for ``incomplete_timeout_s``) and ``copying`` for one still changing or not
        yet settled. Callable from any thread: it reads a copy of the worker's candidates.
        """
        for _ in range(5):
            try:
                candidates = list(self._candidates.items())
                break
            except RuntimeError:  # changed size during the copy: the worker is busy; again
                continue
        else:
            return []
        wall, mono = time.time(), time.monotonic()
        out = []
        for path, cand in candidates:
            if cand.identity is None:
                continue  # not looked at yet (maybe a directory, or gone already)
            verdict = cand.incomplete
            if verdict is not None and verdict[0] == cand.identity:
                state = "incomplete"
                reason = f"{verdict[1].reason}: waiting for the rest of the copy"
            else:
                state = "copying"
                changed = mono - cand.stable_since
                reason = f"being written: last changed {changed:.0f} s ago"
            out.append(
                {
                    "path": path,
                    "state": state,
                    "since": wall - (mono - cand.first_seen),
                    "reason": reason,
                }
            )
        return sorted(out, key=lambda w: w["since"])

    def _inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self._root or os.path.commonpath([real, self._root]) == self._root

    def _check(self, path: str) -> None:
        """One look at a candidate: drop it, keep waiting, or report it.

        Its steps, in order; each returns True when it decided this look (the candidate
        dropped, rejected, or waited for), and the next one runs only if it did not."""
        cand = self._candidates[path]
        now = time.monotonic()
        if not self._inside(path):
            self._reject_outside(path)
            return
        st = self._stat_file(path)
        if st is None:
            return
        identity = (st.st_size, st.st_mtime_ns)
        if (
            self._another_name(path, cand, st, identity)
            or self._settling(path, cand, identity, now)
            or self._compressed(path, identity)
            or self._walk(path, cand, identity)
            or self._incomplete(path, cand, identity, now)
        ):
            return
        try:
            after = os.stat(path)
        except OSError:
            return  # gone or unreadable since: the next look decides
        if (after.st_size, after.st_mtime_ns) != identity:
            return  # changed during the walk: not settled after all
        self._report(path, identity, (after.st_dev, after.st_ino))

    def _reject_outside(self, path: str) -> None:
        """A name whose real path lies outside the drop directory: rejected, never opened."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._forget(path)
            return
        except OSError:
            st = None
        identity = (st.st_size, st.st_mtime_ns) if st is not None else (0, 0)
        if self._reported.get(path) == identity:
            del self._candidates[path]
            return
        real = os.path.realpath(path)
        self._reject(
            path, identity, "outside_drop", f"{path} resolves to {real}, outside {self._root}"
        )

    def _stat_file(self, path: str) -> os.stat_result | None:
        """The candidate's stat if it is a regular file not reported as it is, else None (it is
        forgotten, dropped or rejected)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._forget(path)  # deleted or moved away (a move-to event brings the new name)
            return None
        except OSError as exc:
            if self._reported.get(path) == (0, 0):
                del self._candidates[path]  # rejected already, and still cannot be stat-ed
            else:
                self._reject(path, (0, 0), "unreadable", f"{path}: cannot stat: {exc}")
            return None
        if stat.S_ISDIR(st.st_mode):
            del self._candidates[path]
            return None
        identity = (st.st_size, st.st_mtime_ns)
        if self._reported.get(path) == identity:
            del self._candidates[path]  # an event for a file already reported as it is
            return None
        if not stat.S_ISREG(st.st_mode):
            self._reject(path, identity, "unreadable", f"{path}: not a regular file")
            return None
        return st

    def _another_name(
        self, path: str, cand: Candidate, st: os.stat_result, identity: Identity
    ) -> bool:
        """Whether it is another name of a file reported or rejected as it is (then dropped)."""
        cand.file_id = (st.st_dev, st.st_ino)
        known = self._files.get(cand.file_id)
        if known is not None and known[0] != path and known[1] == identity:
            # Another name of a file reported or rejected as it is (a hard link, a symlink).
            del self._candidates[path]
            self._reported[path] = identity
            log.info(
                "%s is %s (same file), done already: not reported again",
                escape_controls(path),
                escape_controls(known[0]),
            )
            return True
        return False

    def _settling(self, path: str, cand: Candidate, identity: Identity, now: float) -> bool:
        """Whether its identity changed less than ``settle_s`` ago (waited for, however long)."""
        if identity != cand.identity:
            cand.identity = identity
            cand.stable_since = now
        if now - cand.stable_since < self.settle_s:  # still changing: wait, however long
            if not cand.warned_slow and now - cand.first_seen >= self.incomplete_timeout_s:
                cand.warned_slow = True
                log.warning(
                    "%s: still being written %.0f s after it appeared; waiting for it",
                    escape_controls(path),
                    now - cand.first_seen,
                )
            return True
        return False

    def _compressed(self, path: str, identity: Identity) -> bool:
        """Whether it is a FITS file compressed as a whole (then rejected, not opened)."""
        name = os.path.basename(path)
        if any(fnmatch.fnmatchcase(name, p) for p in UNSUPPORTED_PATTERNS):
            suffix = name.rsplit(".", 1)[1]
            self._reject(
                path,
                identity,
                "unsupported_compression",
                f"{path}: a FITS file compressed as a whole (.{suffix}) is not read; decompress "
                "it, or tile-compress it with fpack (*.fits.fz)",
            )
            return True
        return False

    def _walk(self, path: str, cand: Candidate, identity: Identity) -> bool:
        """The integrity walk of a new identity; True when it rejected or forgot the file. Its
        verdict (incomplete or whole) and the content's fingerprint go into the candidate."""
        if cand.incomplete is None or cand.incomplete[0] != identity:
            # A new identity since the last walk (an unchanged one gives the same verdict).
            try:
                cand.fingerprint = check_data(path, check_integrity(path))
            except IncompleteFileError as exc:
                cand.incomplete = (identity, exc)
            except (CorruptFileError, ExposureError) as exc:
                self._reject(path, identity, exc.reason, str(exc))
                return True
            except FileNotFoundError:
                self._forget(path)
                return True
            except OSError as exc:
                self._reject(path, identity, "unreadable", f"{path}: {exc}")
                return True
            else:
                cand.incomplete = None
        return False

    def _incomplete(self, path: str, cand: Candidate, identity: Identity, now: float) -> bool:
        """Whether an incomplete file is still waited for, or rejected as ``truncated``; one
        whose only fault is a ``zero_tail`` is graded as it is once unchanged that long."""
        if cand.incomplete is not None:
            unchanged = now - cand.stable_since
            if unchanged < self.incomplete_timeout_s:
                return True
            exc = cand.incomplete[1]
            if exc.reason != "zero_tail":
                detail = f"still incomplete, unchanged for {unchanged:.0f} s"
                self._reject(path, identity, "truncated", f"{exc} ({detail})")
                return True
            # Structurally complete, only its data end in zeros with no DATASUM to tell: after
            # this long unchanged they are taken for data (a copy that resumes is regraded).
            log.warning(
                "%s; unchanged for %.0f s: grading it as it is", escape_controls(exc), unchanged
            )
        return False

    def _forget(self, path: str) -> None:
        self._candidates.pop(path, None)
        self._reported.pop(path, None)
        self._content.pop(path, None)
        for file_id, (name, _) in list(self._files.items()):
            if name == path:
                del self._files[file_id]

    def _real_name(self, path: str) -> str:
        """The name of ``path``'s file with no symlink below the drop directory (it is inside)."""
        real = os.path.realpath(path)
        rel = os.path.relpath(real, self._root)
        name = os.path.normpath(os.path.join(os.fspath(self.drop_dir), rel))
        return path if name == os.path.normpath(path) else name

    def _report(self, path: str, identity: Identity, file_id: tuple[int, int]) -> None:
        cand = self._candidates.pop(path)
        self._reported[path] = identity
        if cand.fingerprint and self._content.get(path) == cand.fingerprint:
            log.info(
                "%s: new size or mtime, same content: not reported again", escape_controls(path)
            )
            return
        known = self._files.get(file_id)
        if known is not None and known[1] == identity:
            log.info(
                "%s is %s (same file), reported already: not reported again",
                escape_controls(path),
                escape_controls(known[0]),
            )
            return
        name = self._real_name(path)
        if name != path:
            # A symlink inside the drop: its target's real name is what the grader opens (it
            # follows no symlink). The target, watched under that name too, is then known.
            self._candidates.pop(name, None)
            self._reported[name] = identity
        self._files[file_id] = (name, identity)
        log.info("ready: %s (%d bytes)", escape_controls(name), identity[0])
        try:
            self.on_ready(Path(name))
        except Exception:
            self._files.pop(file_id, None)
            if name != path:
                self._reported.pop(name, None)
            self._retry_later(path, cand, f"on_ready({escape_controls(name)}) failed")
            return
        if cand.fingerprint:
            self._content[path] = self._content[name] = cand.fingerprint

    def _reject(self, path: str, identity: Identity, reason: str, message: str) -> None:
        cand = self._candidates.pop(path)
        self._reported[path] = identity
        # The message names the file: escaped once here, for the log and for on_reject, which
        # keeps it as the reason text (the path handed over is the real one).
        reason, message = escape_controls(reason), escape_controls(message)
        log.warning("rejected %s: %s: %s", escape_controls(path), reason, message)
        if cand.file_id is not None:
            self._files[cand.file_id] = (path, identity)  # its other names: not again
        try:
            self.on_reject(Path(path), reason, message)
        except Exception:
            if cand.file_id is not None:
                self._files.pop(cand.file_id, None)
            what = f"on_reject({escape_controls(path)}, {reason!r}) failed"
            self._retry_later(path, cand, what)

    def _retry_later(self, path: str, cand: Candidate, what: str) -> None:
        """A callback raised: the file must not vanish, so look at it again a little later."""
        delay = max(self.settle_s, self.poll_s, _MIN_RETRY_S)
        log.exception("%s; offering it again in %.1f s", what, delay)
        self._reported.pop(path, None)
        cand.not_before = time.monotonic() + delay
        self._candidates[path] = cand
