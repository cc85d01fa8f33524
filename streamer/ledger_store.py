"""The ledger's SQLite file: its schema, the connection and the queries that only read it.

:class:`LedgerStore` opens (and creates, or upgrades in place) the file and answers what is
waiting, failing or done; :class:`skygrade.streamer.ledger.Ledger` adds the state transitions on top
(``observe``, ``claim``, ``finish``...), and is the class to use. :class:`Entry` is one row.

The file: WAL journal, ``synchronous = FULL``, one row per *version* of an exposure (the
exposure id plus the file's path, size and ``mtime_ns``); ``PRAGMA user_version`` is
:data:`SCHEMA_VERSION`, and a file of schema version 1 gains the later columns
(``ALTER TABLE``) when it is opened.

Threads and processes
---------------------
A ledger holds one connection, opened with ``check_same_thread=False`` and guarded by a
lock, so it may be shared by the watcher callback, the grading worker and a status endpoint.
Every write is a ``BEGIN IMMEDIATE`` transaction, so several processes (``skygrade watch`` and
an ``sqlite3`` shell opened on ``ledger.sqlite`` to look, say) may open the same file;
``busy_timeout`` makes them wait for each other.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self

__all__ = [
    "FINAL_STATES",
    "ORDERS",
    "SCHEMA_VERSION",
    "STATES",
    "Entry",
    "LedgerStore",
]

log = logging.getLogger(__name__)

#: Every state a row can be in, in life-cycle order.
STATES = ("seen", "grading", "graded", "quarantined")
#: States a row never leaves.
FINAL_STATES = ("graded", "quarantined")
#: Orders :meth:`LedgerStore.pending` knows.
ORDERS = ("fifo", "newest-first")
#: ``PRAGMA user_version`` of the schema this code writes; a newer file is refused.
SCHEMA_VERSION = 2

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
        Row id: the handle :meth:`~skygrade.streamer.ledger.Ledger.claim`,
        :meth:`~skygrade.streamer.ledger.Ledger.finish` and friends take.
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
        Claims that were not handed back with :meth:`~skygrade.streamer.ledger.Ledger.release`.
    seen_at : float
        Unix time the row was created.
    started_at, finished_at : float or None
        Unix times of the last claim and of the final transition.
    model_version : str or None
        Model bundle version that graded it.
    ready_at : float or None
        Unix time the watcher found the file complete (arrival time for latency metrics).
    failures : int
        Gradings that failed on this exposure
        (:meth:`~skygrade.streamer.ledger.Ledger.retry_later`).
    next_attempt_at : float or None
        Unix time before which a failed row is not due again (None: due now).
    last_error : str or None
        What the last failure was.
    interruptions : int
        Times the row was caught mid-grading by a crash or kill of the daemon
        (:meth:`~skygrade.streamer.ledger.Ledger.recover`); not failures of the exposure.
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


class LedgerStore:
    """The ledger's SQLite file, opened: the schema, the connection, and the read-only queries.

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

    @staticmethod
    def _row(conn: sqlite3.Connection, key: int) -> Entry:
        row = conn.execute(f"SELECT {_COLUMNS} FROM exposures WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(f"no ledger entry with key {key!r}")
        return Entry(*row)

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({os.fspath(self.path)!r})"
