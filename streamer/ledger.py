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
A :class:`Ledger` holds one connection, opened with ``check_same_thread=False`` and guarded by a
lock, so it may be shared by the watcher callback, the grading worker and a status endpoint.
Every write is a ``BEGIN IMMEDIATE`` transaction, so several processes (``skygrade watch`` and
an ``sqlite3`` shell opened on ``ledger.sqlite`` to look, say) may open the same file;
``busy_timeout`` makes them wait for each other.

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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ops.text import escape_controls

__all__ = [
    "FINAL_STATES",
    "ORDERS",
    "SCHEMA_VERSION",
    "STATES",
    "Entry",
    "Ledger",
]

log = logging.getLogger(__name__)

#: Every state a row can be in, in life-cycle order.
STATES = ("seen", "grading", "graded", "quarantined")
#: States a row never leaves.
FINAL_STATES = ("graded", "quarantined")
#: Orders :meth:`Ledger.pending` knows.
ORDERS = ("fifo", "newest-first")
#: ``PRAGMA user_version`` of the schema this code writes; a newer file is refused.
SCHEMA_VERSION = 2
#: Reason given to a waiting row when a newer version of its exposure is observed.
SUPERSEDED = "superseded"
#: Reason given to a row that failed too many times on its own (the daemon's ``max_attempts``).
TOO_MANY_ATTEMPTS = "too_many_attempts"
#: Reason given by :meth:`Ledger.recover` to a row caught mid-grading too many times.
CRASH_LOOP = "crash_loop"

_BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS exposures (
    key           INTEGER PRIMARY KEY AUTOINCREMENT,
    exposure_id   TEXT    NOT NULL,
    path          TEXT    NOT NULL,
    size          INTEGER NOT NULL,
    mtime_ns      INTEGER NOT NULL,
    version       INTEGER NOT NULL,
    state         TEXT    NOT NULL
                  CHECK (state IN ('seen', 'grading', 'graded', 'quarantined')),
    reason        TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    seen_at       REAL    NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    model_version TEXT,
    ready_at      REAL,
    failures      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error    TEXT,
    interruptions INTEGER NOT NULL DEFAULT 0,
    UNIQUE (exposure_id, path, size, mtime_ns),
    UNIQUE (exposure_id, version)
);
CREATE INDEX IF NOT EXISTS exposures_state ON exposures (state, ready_at, seen_at);
CREATE INDEX IF NOT EXISTS exposures_done ON exposures (exposure_id, size, mtime_ns, state);
"""

_COLUMNS = (
    "key, exposure_id, path, size, mtime_ns, version, state, reason, attempts, seen_at, "
    "started_at, finished_at, model_version, ready_at, failures, next_attempt_at, last_error, "
    "interruptions"
)
#: Columns added after schema version 1, with their definitions (added by ``ALTER TABLE``).
_ADDED_COLUMNS = {
    "failures": "INTEGER NOT NULL DEFAULT 0",
    "next_attempt_at": "REAL",
    "last_error": "TEXT",
    "interruptions": "INTEGER NOT NULL DEFAULT 0",
}


@dataclass(frozen=True)
class Entry:
    """One version of one exposure, as the ledger holds it.

    Attributes
    ----------
    key : int
        Row id: the handle :meth:`Ledger.claim`, :meth:`Ledger.finish` and friends take.
    exposure_id : str
        The MegaCam EXPNUM (or the file stem).
    path : str
        The file as the watcher saw it.
    size, mtime_ns : int
        File identity at observation time (``st_size``, ``st_mtime_ns``).
    version : int
        1 for the first identity of this exposure, then 2, 3... for each rewrite.
    state : str
        One of :data:`STATES`.
    reason : str or None
        Why the row was quarantined (or a note on a graded row).
    attempts : int
        Claims that were not handed back with :meth:`Ledger.release`.
    seen_at : float
        Unix time the row was created.
    started_at, finished_at : float or None
        Unix times of the last claim and of the final transition.
    model_version : str or None
        Model bundle version that graded it.
    ready_at : float or None
        Unix time the watcher found the file complete (arrival time for latency metrics).
    failures : int
        Gradings that failed on this exposure (:meth:`Ledger.retry_later`).
    next_attempt_at : float or None
        Unix time before which a failed row is not due again (None: due now).
    last_error : str or None
        What the last failure was.
    interruptions : int
        Times the row was caught mid-grading by a crash or kill of the daemon
        (:meth:`Ledger.recover`); not failures of the exposure.
    """

    key: int
    exposure_id: str
    path: str
    size: int
    mtime_ns: int
    version: int
    state: str
    reason: str | None
    attempts: int
    seen_at: float
    started_at: float | None
    finished_at: float | None
    model_version: str | None
    ready_at: float | None
    failures: int = 0
    next_attempt_at: float | None = None
    last_error: str | None = None
    interruptions: int = 0

    @property
    def done(self) -> bool:
        """Whether the row is in a final state (graded or quarantined)."""
        return self.state in FINAL_STATES


def _check_identity(exposure_id: str, path: str | os.PathLike, size: int, mtime_ns: int) -> str:
    if not isinstance(exposure_id, str) or not exposure_id:
        raise ValueError(f"exposure_id must be a non-empty string, got {exposure_id!r}")
    for name, value in (("size", size), ("mtime_ns", mtime_ns)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return os.fspath(path)


class Ledger:
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
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,  # autocommit; transactions are explicit BEGIN IMMEDIATE
            check_same_thread=False,
        )
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    def _setup(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("ledger %s: journal_mode is %s, not wal", self.path, mode)
        conn.execute("PRAGMA synchronous = FULL")
        with self._tx() as tx:
            found = tx.execute("PRAGMA user_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise RuntimeError(
                    f"ledger {self.path} has schema version {found}, this code knows up to "
                    f"{SCHEMA_VERSION}: upgrade skygrade"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    tx.execute(statement)
            have = {row[1] for row in tx.execute("PRAGMA table_info(exposures)")}
            for name, definition in _ADDED_COLUMNS.items():
                if name not in have:  # a ledger written by schema version 1
                    tx.execute(f"ALTER TABLE exposures ADD COLUMN {name} {definition}")
            tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ------------------------------------------------------------------------------ plumbing
    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"ledger {self.path} is closed")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken before the first read so that it cannot deadlock."""
        with self._lock:
            conn = self._db
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

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
    def _row(conn: sqlite3.Connection, key: int) -> Entry:
        row = conn.execute(f"SELECT {_COLUMNS} FROM exposures WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(f"no ledger entry with key {key!r}")
        return Entry(*row)

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

    @staticmethod
    def _find(
        conn: sqlite3.Connection, exposure_id: str, path: str, size: int, mtime_ns: int
    ) -> Entry | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM exposures "
            "WHERE exposure_id = ? AND path = ? AND size = ? AND mtime_ns = ?",
            (exposure_id, path, size, mtime_ns),
        ).fetchone()
        return None if row is None else Entry(*row)

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

    # ------------------------------------------------------------------------------ queries
    def pending(self, order: str = "fifo", due_at: float | None = None) -> list[Entry]:
        """The rows waiting to be graded (state ``seen``).

        Parameters
        ----------
        order : {"fifo", "newest-first"}
            Arrival order (``ready_at``, else ``seen_at``) or its reverse.
        due_at : float, optional
            Only the rows due by this Unix time (``next_attempt_at`` unset or not later); by
            default every waiting row, those waiting out a back-off included.

        Returns
        -------
        list of Entry

        Raises
        ------
        ValueError
            On an unknown order (the message lists the valid ones).
        """
        direction = {"fifo": "ASC", "newest-first": "DESC"}.get(order)
        if direction is None:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        with self._lock:
            due = "" if due_at is None else "AND COALESCE(next_attempt_at, 0) <= ? "
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM exposures WHERE state = 'seen' {due}"
                f"ORDER BY COALESCE(ready_at, seen_at) {direction}, key {direction}",
                () if due_at is None else (due_at,),
            ).fetchall()
        return [Entry(*row) for row in rows]

    def oldest_pending(self) -> float | None:
        """Arrival time (``ready_at``, else ``seen_at``) of the oldest row not yet final."""
        with self._lock:
            (when,) = self._db.execute(
                "SELECT MIN(COALESCE(ready_at, seen_at)) FROM exposures "
                "WHERE state IN ('seen', 'grading')"
            ).fetchone()
        return when

    def failing(self, min_failures: int = 1) -> list[Entry]:
        """Rows still waiting that failed at least ``min_failures`` times, most failures first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM exposures WHERE state IN ('seen', 'grading') "
                "AND failures >= ? ORDER BY failures DESC, key",
                (min_failures,),
            ).fetchall()
        return [Entry(*row) for row in rows]

    def next_due(self) -> float | None:
        """The earliest ``next_attempt_at`` of the rows waiting out a back-off, or None."""
        with self._lock:
            (when,) = self._db.execute(
                "SELECT MIN(next_attempt_at) FROM exposures WHERE state = 'seen'"
            ).fetchone()
        return when

    def get(self, key: int) -> Entry:
        """The row with this key.

        Raises
        ------
        KeyError
            If there is none.
        """
        with self._lock:
            return self._row(self._db, key)

    def latest(self, exposure_id: str) -> Entry | None:
        """The newest version of an exposure, or ``None`` if the ledger has never seen it."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM exposures WHERE exposure_id = ? "
                "ORDER BY version DESC LIMIT 1",
                (exposure_id,),
            ).fetchone()
        return None if row is None else Entry(*row)

    def counts(self) -> dict[str, int]:
        """Number of rows in each state (every state present, zeros included)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT state, COUNT(*) FROM exposures GROUP BY state"
            ).fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update(rows)
        return counts

    def is_done(self, exposure_id: str, size: int, mtime_ns: int) -> bool:
        """Whether a version with this identity is graded or quarantined."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM exposures WHERE exposure_id = ? AND size = ? AND mtime_ns = ? "
                "AND state IN ('graded', 'quarantined') LIMIT 1",
                (exposure_id, size, mtime_ns),
            ).fetchone()
        return row is not None

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({os.fspath(self.path)!r})"
