"""Durable state of every exposure: what has been seen, what is being graded, what is done.

The ledger is one SQLite file (WAL journal, ``synchronous = FULL``) with one row per *version*
of an exposure. A version is a file identity: the exposure id plus the file's path, size and
``mtime_ns``. The same file rewritten with new content (another size or mtime) is a new version
to grade; older versions stay in the table as history.

States
------
::

    seen ──claim()──▶ grading ──finish()──▶ graded
      ▲                  │           └────▶ quarantined (reason)
      └───release() / recover()

    quarantine():  (nothing) ──▶ quarantined (reason)    files refused before they are observed

- ``seen``: observed and waiting to be graded (:meth:`Ledger.pending` lists these). A ``seen``
  row with a ``reason`` is a file the watcher refused whose quarantine row could not be written
  yet: the grader writes that row instead of grading the file.
- ``grading``: claimed by a worker; ``attempts`` counts the claims that were not handed back.
- ``graded`` / ``quarantined``: final. A quarantined row always carries a ``reason`` slug.

A grading that fails (the results cannot be written, the pipeline raised) goes back to ``seen``
with :meth:`Ledger.retry_later`: ``failures`` counts it and ``next_attempt_at`` says when it is
due again. :meth:`Ledger.pending` with ``due_at`` lists only the rows due by then, so one
exposure waiting out its back-off holds up no other.

A row caught in ``grading`` by a crash or a kill of the daemon is an *interruption*, not a
failure: :meth:`Ledger.recover` counts it in ``interruptions`` and leaves ``failures`` alone, so
a good exposure in flight during unrelated kills is never quarantined as
``too_many_attempts``. Only a long run of interruptions (``max_interruptions``, a guard against a
file that crashes the daemon each time) quarantines it, as ``crash_loop``.

A new version supersedes the older versions of the same exposure that are still waiting
(``seen``): they end ``quarantined`` with reason ``"superseded"``, so that the file, which now
holds the new content, is graded once and every row still ends in a final state.

Exactly once
------------
"Nothing lost, nothing graded twice" is the ledger together with an idempotent sink:

1. The watcher reports a complete file; the daemon calls :meth:`Ledger.observe`. The row is
   committed (durable) before anything else happens. An identity already in the ledger, in any
   state, is not new: a restart that re-discovers every file in the drop directory grades none
   of them again.
2. :meth:`Ledger.claim` moves the row ``seen -> grading`` atomically; exactly one claimant wins.
3. The pipeline grades the exposure and the parquet sink writes ``<exposure_id>.parquet`` to a
   temporary name and ``os.replace``-s it onto a name that depends only on the exposure.
4. :meth:`Ledger.finish` moves the row to ``graded`` (or ``quarantined``).

A ``kill -9`` anywhere leaves SQLite consistent (an open transaction is rolled back on the next
open). At start-up :meth:`Ledger.recover` puts every row caught in ``grading`` back to ``seen``
and it is graded again. If the crash fell between steps 3 and 4 the second grading replaces the
same parquet file with an equivalent one, so the output holds each exposure exactly once. The
computation itself is at-least-once; the *result* is exactly-once.

Threads and processes
---------------------
A :class:`Ledger` may be shared by the watcher callback, the grading worker and a status
endpoint, and several processes may open the same file: :mod:`skygrade.streamer.ledger_store` holds
the connection, the schema and the queries that only read.

Examples
--------
>>> import tempfile, os
>>> ledger = Ledger(os.path.join(tempfile.mkdtemp(), "ledger.sqlite"))
>>> entry, is_new = ledger.observe("2817001", "/drop/2817001o.fits", 2880, 1)
>>> ledger.claim(entry.key).state
'grading'
>>> ledger.finish(entry.key, "graded", model_version="1.0").state
'graded'
>>> ledger.is_done("2817001", 2880, 1)
True
>>> ledger.close()
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time

from skygrade.ops.text import escape_controls
from skygrade.streamer.ledger_store import FINAL_STATES, Entry, LedgerStore

__all__ = ["CRASH_LOOP", "SUPERSEDED", "TOO_MANY_ATTEMPTS", "Ledger"]

log = logging.getLogger(__name__)

#: Reason given to a waiting row when a newer version of its exposure is observed.
SUPERSEDED = "superseded"
#: Reason given to a row that failed too many times on its own (the daemon's ``max_attempts``).
TOO_MANY_ATTEMPTS = "too_many_attempts"
#: Reason given by :meth:`Ledger.recover` to a row caught mid-grading too many times.
CRASH_LOOP = "crash_loop"


def _check_identity(exposure_id: str, path: str | os.PathLike, size: int, mtime_ns: int) -> str:
    if not isinstance(exposure_id, str) or not exposure_id:
        raise ValueError(f"exposure_id must be a non-empty string, got {exposure_id!r}")
    for name, value in (("size", size), ("mtime_ns", mtime_ns)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return os.fspath(path)


class Ledger(LedgerStore):
    """The exposure ledger: one SQLite file, safe to share between threads.

    Parameters
    ----------
    path : str or os.PathLike
        The SQLite file; missing parent directories are created, and so is the schema.

    Raises
    ------
    RuntimeError
        If the file was written by a newer schema than this code knows.
    sqlite3.DatabaseError
        If the file is not an SQLite database.

    Notes
    -----
    Methods that take a ``key`` raise :class:`KeyError` for a key the ledger does not hold, and
    :class:`ValueError` naming the current state for a transition the state machine forbids.
    The file, its connection and the queries that only read (:meth:`pending`, :meth:`counts`,
    :meth:`latest`, :meth:`is_done`...) are :class:`~skygrade.streamer.ledger_store.LedgerStore`'s.
    """

    @classmethod
    def _grading_row(cls, conn, key: int, verb: str, detail: str = "") -> Entry:
        """The row ``key``, which must be in ``grading`` (else ValueError naming its state)."""
        current = cls._row(conn, key)
        if current.state != "grading":
            raise ValueError(
                f"cannot {verb} exposure {current.exposure_id} v{current.version} "
                f"(key {key}){detail}: it is in state {current.state!r}, not 'grading'"
            )
        return current

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        exposure_id: str,
        path: str,
        size: int,
        mtime_ns: int,
        state: str,
        now: float,
        *,
        reason: str | None = None,
        ready_at: float | None = None,
    ) -> int:
        (last,) = conn.execute(
            "SELECT COALESCE(MAX(version), 0) FROM exposures WHERE exposure_id = ?",
            (exposure_id,),
        ).fetchone()
        superseded = conn.execute(
            "UPDATE exposures SET state = 'quarantined', reason = ?, finished_at = ? "
            "WHERE exposure_id = ? AND state = 'seen'",
            (SUPERSEDED, now, exposure_id),
        ).rowcount
        if superseded:
            log.info(
                "exposure %s: %d waiting version(s) superseded",
                escape_controls(exposure_id),
                superseded,
            )
        finished_at = now if state in FINAL_STATES else None
        cursor = conn.execute(
            "INSERT INTO exposures (exposure_id, path, size, mtime_ns, version, state, reason, "
            "seen_at, finished_at, ready_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                exposure_id,
                path,
                size,
                mtime_ns,
                last + 1,
                state,
                reason,
                now,
                finished_at,
                ready_at,
            ),
        )
        return cursor.lastrowid

    # --------------------------------------------------------------------------- life cycle
    def observe(
        self,
        exposure_id: str,
        path: str | os.PathLike,
        size: int,
        mtime_ns: int,
        ready_at: float | None = None,
        refused: str | None = None,
    ) -> tuple[Entry, bool]:
        """Record a complete file, or find the row that already records it.

        Parameters
        ----------
        exposure_id : str
            The exposure id.
        path : str or os.PathLike
            The file.
        size, mtime_ns : int
            ``st_size`` and ``st_mtime_ns`` of the file when it was found complete.
        ready_at : float, optional
            Unix time the watcher found it complete (defaults to none; ``seen_at`` is set).
        refused : str, optional
            Why the watcher refused the file, when its quarantine row is still to be written
            (kept as the row's ``reason``, control characters escaped).

        Returns
        -------
        entry : Entry
            The row: new in state ``seen``, or the existing one in whatever state it is.
        is_new : bool
            True if this identity was not in the ledger. A new identity of a known exposure is
            a new version; older versions still waiting are quarantined as ``"superseded"``.

        Raises
        ------
        ValueError
            On an empty exposure id or a negative size or mtime.

        Examples
        --------
        >>> entry, new = ledger.observe("2817001", "/drop/2817001o.fits", 2880, 1)  # doctest: +SKIP
        >>> new, entry.state, entry.version  # doctest: +SKIP
        (True, 'seen', 1)
        """
        spath = _check_identity(exposure_id, path, size, mtime_ns)
        with self._tx() as conn:
            existing = self._find(conn, exposure_id, spath, size, mtime_ns)
            if existing is not None:
                return existing, False
            key = self._insert(
                conn,
                exposure_id,
                spath,
                size,
                mtime_ns,
                "seen",
                time.time(),
                reason=None if refused is None else escape_controls(refused),
                ready_at=ready_at,
            )
            entry = self._row(conn, key)
        log.debug(
            "ledger: %s v%d seen (%s)",
            escape_controls(exposure_id),
            entry.version,
            escape_controls(spath),
        )
        return entry, True

    def claim(self, key: int) -> Entry | None:
        """Take a ``seen`` row for grading: ``seen -> grading``, atomically.

        Parameters
        ----------
        key : int
            Row id.

        Returns
        -------
        Entry or None
            The row in state ``grading`` (``attempts`` incremented, ``started_at`` set), or
            ``None`` if it is not in ``seen`` (someone else claimed it, or it is done).

        Raises
        ------
        KeyError
            If no row has this key.
        """
        with self._tx() as conn:
            changed = conn.execute(
                "UPDATE exposures SET state = 'grading', attempts = attempts + 1, "
                "started_at = ? WHERE key = ? AND state = 'seen'",
                (time.time(), key),
            ).rowcount
            entry = self._row(conn, key)
        return entry if changed else None

    def finish(
        self,
        key: int,
        state: str,
        reason: str | None = None,
        model_version: str | None = None,
    ) -> Entry:
        """End a ``grading`` row: ``grading -> graded | quarantined``.

        Parameters
        ----------
        key : int
            Row id.
        state : {"graded", "quarantined"}
            The final state.
        reason : str, optional
            Why (required for ``quarantined``); kept with its control characters escaped.
        model_version : str, optional
            The model bundle version that graded it.

        Returns
        -------
        Entry
            The finished row.

        Raises
        ------
        KeyError
            If no row has this key.
        ValueError
            If ``state`` is not final, a quarantine has no reason, or the row is not in
            ``grading`` (the message names its state).
        """
        if state not in FINAL_STATES:
            raise ValueError(f"state must be one of {FINAL_STATES}, got {state!r}")
        if state == "quarantined" and not reason:
            raise ValueError(f"a quarantined exposure needs a reason, got {reason!r}")
        reason = None if reason is None else escape_controls(reason)
        with self._tx() as conn:
            self._grading_row(conn, key, "finish", f" as {state!r}")
            conn.execute(
                "UPDATE exposures SET state = ?, reason = ?, model_version = ?, finished_at = ? "
                "WHERE key = ?",
                (state, reason, model_version, time.time(), key),
            )
            entry = self._row(conn, key)
        log.debug("ledger: %s v%d %s", escape_controls(entry.exposure_id), entry.version, state)
        return entry

    def quarantine(
        self,
        exposure_id: str,
        path: str | os.PathLike,
        reason: str,
        size: int = 0,
        mtime_ns: int = 0,
    ) -> Entry:
        """Record a file refused before it could be observed (corrupt, outside, unreadable).

        The row goes straight to ``quarantined`` and is never retried: a later call with the same
        identity returns it unchanged; only a new identity (the file rewritten) makes a new
        version. A ``seen`` row with this identity is quarantined in place.

        Parameters
        ----------
        exposure_id : str
            The exposure id (``exposure_id_from_path`` for a file whose header is unreadable).
        path : str or os.PathLike
            The file.
        reason : str
            Reason slug (``"not_fits"``, ``"truncated"``, ``"outside_drop"``...).
        size, mtime_ns : int, optional
            The file's identity if it could be stat-ed, else 0.

        Returns
        -------
        Entry
            The quarantined row.

        Raises
        ------
        ValueError
            On an empty reason or identity, or if this identity is already ``grading`` or
            ``graded`` (the message names the state).
        """
        spath = _check_identity(exposure_id, path, size, mtime_ns)
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"reason must be a non-empty string, got {reason!r}")
        reason = escape_controls(reason)
        with self._tx() as conn:
            existing = self._find(conn, exposure_id, spath, size, mtime_ns)
            if existing is None:
                key = self._insert(
                    conn,
                    exposure_id,
                    spath,
                    size,
                    mtime_ns,
                    "quarantined",
                    time.time(),
                    reason=reason,
                )
            elif existing.state == "quarantined":
                return existing
            elif existing.state == "seen":
                key = existing.key
                conn.execute(
                    "UPDATE exposures SET state = 'quarantined', reason = ?, finished_at = ? "
                    "WHERE key = ?",
                    (reason, time.time(), key),
                )
            else:
                raise ValueError(
                    f"cannot quarantine exposure {exposure_id} v{existing.version} "
                    f"(key {existing.key}): it is in state {existing.state!r}"
                )
            entry = self._row(conn, key)
        log.info(
            "ledger: %s v%d quarantined: %s", escape_controls(exposure_id), entry.version, reason
        )
        return entry

    def release(self, key: int) -> None:
        """Hand a ``grading`` row back (``grading -> seen``), e.g. on a clean shutdown.

        The claim does not count as an attempt (``attempts`` is decremented).

        Parameters
        ----------
        key : int
            Row id.

        Raises
        ------
        KeyError
            If no row has this key.
        ValueError
            If the row is not in ``grading`` (the message names its state).
        """
        with self._tx() as conn:
            self._grading_row(conn, key, "release")
            conn.execute(
                "UPDATE exposures SET state = 'seen', attempts = MAX(attempts - 1, 0), "
                "started_at = NULL WHERE key = ?",
                (key,),
            )

    def retry_later(self, key: int, delay_s: float, error: str, count: bool = True) -> Entry:
        """A grading that failed: ``grading -> seen``, not due again for ``delay_s`` seconds.

        Parameters
        ----------
        key : int
            Row id.
        delay_s : float
            Seconds before the row is due again (:meth:`pending` with ``due_at``).
        error : str
            What failed (kept, control characters escaped, as ``last_error``).
        count : bool
            Whether the failure is the exposure's own (``failures`` is incremented); a failure
            of the output as a whole (nothing can be written) is not held against it.

        Returns
        -------
        Entry
            The row, back in ``seen``.

        Raises
        ------
        KeyError
            If no row has this key.
        ValueError
            If the row is not in ``grading`` (the message names its state).
        """
        with self._tx() as conn:
            self._grading_row(conn, key, "retry")
            conn.execute(
                "UPDATE exposures SET state = 'seen', failures = failures + ?, "
                "next_attempt_at = ?, last_error = ? WHERE key = ?",
                (int(bool(count)), time.time() + max(delay_s, 0.0), escape_controls(error), key),
            )
            return self._row(conn, key)

    def due_now(self, keys) -> int:
        """Make the rows ``keys`` still waiting (``seen``) due at once, whatever their back-off;
        returns how many. For the rows that waited for the output to be writable again."""
        keys = [int(k) for k in keys]
        if not keys:
            return 0
        with self._tx() as conn:
            marks = ",".join("?" * len(keys))
            return conn.execute(
                f"UPDATE exposures SET next_attempt_at = NULL "
                f"WHERE state = 'seen' AND key IN ({marks})",
                keys,
            ).rowcount

    def recover(self, max_interruptions: int | None = None) -> list[Entry]:
        """Put every row caught in ``grading`` by a crash back to ``seen`` (call at start-up).

        Each such row counts one more ``interruption``; its ``failures`` (what counts toward
        ``too_many_attempts``) are left alone: a kill of the daemon is not the exposure's fault.
        A row caught in ``grading`` for which a newer version of the exposure exists is not
        retried but quarantined with reason ``"superseded"``: the file holds the new content.

        Parameters
        ----------
        max_interruptions : int, optional
            A row caught mid-grading this many times is not retried again but quarantined with
            reason ``"crash_loop"``: an exposure that kills the daemon every time must not
            crash-loop it all night. By default every row is retried.

        Returns
        -------
        list of Entry
            The rows put back to ``seen``, in key order.

        Raises
        ------
        ValueError
            If ``max_interruptions`` is given and < 1.
        """
        if max_interruptions is not None and max_interruptions < 1:
            raise ValueError(f"max_interruptions must be >= 1, got {max_interruptions!r}")
        with self._tx() as conn:
            now = time.time()
            conn.execute(
                "UPDATE exposures SET interruptions = interruptions + 1 WHERE state = 'grading'"
            )
            if max_interruptions is not None:
                given_up = conn.execute(
                    "UPDATE exposures SET state = 'quarantined', reason = ?, finished_at = ? "
                    "WHERE state = 'grading' AND interruptions >= ? "
                    "RETURNING exposure_id, interruptions",
                    (
                        f"{CRASH_LOOP}: caught mid-grading by {max_interruptions} crashes or "
                        "kills of the daemon",
                        now,
                        max_interruptions,
                    ),
                ).fetchall()
                for exposure_id, interruptions in given_up:
                    log.error(
                        "exposure %s was being graded at %d crashes in a row: quarantined",
                        escape_controls(exposure_id),
                        interruptions,
                    )
            stale = conn.execute(
                "UPDATE exposures AS old SET state = 'quarantined', reason = ?, finished_at = ? "
                "WHERE state = 'grading' AND EXISTS (SELECT 1 FROM exposures AS new "
                "WHERE new.exposure_id = old.exposure_id AND new.version > old.version) "
                "RETURNING exposure_id",
                (SUPERSEDED, now),
            ).fetchall()
            for (exposure_id,) in stale:
                log.info(
                    "exposure %s: version caught mid-grading superseded",
                    escape_controls(exposure_id),
                )
            back = conn.execute(
                "UPDATE exposures SET state = 'seen' WHERE state = 'grading' RETURNING key"
            ).fetchall()
            entries = [self._row(conn, k) for (k,) in sorted(back)]
        if entries:
            log.warning(
                "ledger: %d exposure(s) caught mid-grading put back to 'seen'", len(entries)
            )
        return entries
