"""Tests of the exposure ledger: state machine, versions, crash recovery, concurrency."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from contextlib import closing
from pathlib import Path

import pytest

from skygrade.streamer.ledger import Ledger
from skygrade.streamer.ledger_store import STATES, Entry

pytestmark = pytest.mark.usefixtures("no_thread_leak")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "state" / "ledger.sqlite") as led:
        yield led


def _observe(ledger: Ledger, eid: str = "2817001", size: int = 2880, mtime_ns: int = 1, **kw):
    return ledger.observe(eid, f"/drop/{eid}o.fits", size, mtime_ns, **kw)


# ------------------------------------------------------------------------------ state machine
def test_creates_directories_and_uses_wal(tmp_path):
    path = tmp_path / "a" / "b" / "ledger.sqlite"
    with Ledger(path):
        pass
    assert path.exists()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_happy_path(ledger):
    entry, is_new = _observe(ledger, ready_at=123.0)
    assert is_new
    assert isinstance(entry, Entry)
    assert (entry.state, entry.version, entry.attempts, entry.ready_at) == ("seen", 1, 0, 123.0)
    assert entry.started_at is None and entry.finished_at is None
    assert ledger.pending() == [entry]

    claimed = ledger.claim(entry.key)
    assert claimed.state == "grading" and claimed.attempts == 1
    assert claimed.started_at is not None
    assert ledger.pending() == []
    assert not ledger.is_done("2817001", 2880, 1)

    done = ledger.finish(entry.key, "graded", model_version="som-cnn-1.2")
    assert (done.state, done.model_version, done.reason) == ("graded", "som-cnn-1.2", None)
    assert done.finished_at >= done.started_at >= done.seen_at
    assert done.done
    assert ledger.is_done("2817001", 2880, 1)
    assert not ledger.is_done("2817001", 2880, 2)
    assert ledger.get(entry.key) == done
    assert ledger.latest("2817001") == done
    assert ledger.latest("nope") is None
    assert ledger.counts() == {"seen": 0, "grading": 0, "graded": 1, "quarantined": 0}


def test_observe_same_identity_returns_existing_row_in_any_state(ledger):
    entry, _ = _observe(ledger)
    again, is_new = _observe(ledger, ready_at=999.0)
    assert not is_new and again == entry
    ledger.claim(entry.key)
    assert _observe(ledger)[0].state == "grading"
    ledger.finish(entry.key, "quarantined", reason="bad_shape")
    again, is_new = _observe(ledger)
    assert not is_new
    assert (again.state, again.reason) == ("quarantined", "bad_shape")
    assert ledger.counts()["quarantined"] == 1
    assert sum(ledger.counts().values()) == 1


def test_claim_only_from_seen(ledger):
    entry, _ = _observe(ledger)
    assert ledger.claim(entry.key) is not None
    assert ledger.claim(entry.key) is None  # already grading
    ledger.finish(entry.key, "graded")
    assert ledger.claim(entry.key) is None  # done
    assert ledger.get(entry.key).attempts == 1
    with pytest.raises(KeyError, match="12345"):
        ledger.claim(12345)


@pytest.mark.parametrize("state", ["seen", "graded", "quarantined"])
def test_finish_and_release_need_grading(ledger, state):
    entry, _ = _observe(ledger)
    if state != "seen":
        ledger.claim(entry.key)
        ledger.finish(entry.key, state, reason="x")
    with pytest.raises(ValueError, match=f"in state '{state}'"):
        ledger.finish(entry.key, "graded")
    with pytest.raises(ValueError, match=f"in state '{state}'"):
        ledger.release(entry.key)
    assert ledger.get(entry.key).state == state


def test_finish_validates_arguments(ledger):
    entry, _ = _observe(ledger)
    ledger.claim(entry.key)
    with pytest.raises(ValueError, match="state must be one of"):
        ledger.finish(entry.key, "seen")
    with pytest.raises(ValueError, match="needs a reason"):
        ledger.finish(entry.key, "quarantined")
    with pytest.raises(KeyError):
        ledger.finish(999, "graded")
    assert ledger.get(entry.key).state == "grading"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", "/p", 1, 1), "exposure_id"),
        (("e", "/p", -1, 1), "size"),
        (("e", "/p", 1, 1.5), "mtime_ns"),
    ],
)
def test_observe_validates_identity(ledger, args, match):
    with pytest.raises(ValueError, match=match):
        ledger.observe(*args)


def test_release_hands_back_without_counting_an_attempt(ledger):
    entry, _ = _observe(ledger)
    ledger.claim(entry.key)
    ledger.release(entry.key)
    back = ledger.get(entry.key)
    assert (back.state, back.attempts, back.started_at) == ("seen", 0, None)
    assert ledger.pending() == [back]


# ---------------------------------------------------------------------------------- versions
def test_rewritten_file_is_a_new_version_and_history_is_kept(ledger):
    v1, _ = _observe(ledger, size=2880, mtime_ns=10)
    ledger.claim(v1.key)
    ledger.finish(v1.key, "graded")
    v2, is_new = _observe(ledger, size=5760, mtime_ns=20)
    assert is_new and v2.version == 2 and v2.state == "seen"
    v3, is_new = _observe(ledger, size=5760, mtime_ns=30)  # touched: same size, new mtime
    assert is_new and v3.version == 3
    assert ledger.latest("2817001") == v3
    assert ledger.get(v1.key).state == "graded"  # history untouched
    # v2 was still waiting when v3 arrived: its bytes are gone, it is superseded.
    old = ledger.get(v2.key)
    assert (old.state, old.reason) == ("quarantined", "superseded")
    assert ledger.pending() == [v3]
    assert ledger.is_done("2817001", 2880, 10)
    assert not ledger.is_done("2817001", 5760, 30)


def test_versions_are_per_exposure(ledger):
    a, _ = _observe(ledger, "100")
    b, _ = _observe(ledger, "200")
    assert (a.version, b.version) == (1, 1)
    assert ledger.pending() == [a, b]


# -------------------------------------------------------------------------------- quarantine
def test_quarantine_a_refused_file(ledger):
    entry = ledger.quarantine("2817002", "/drop/2817002o.fits", "not_fits", size=100, mtime_ns=5)
    assert (entry.state, entry.reason, entry.version) == ("quarantined", "not_fits", 1)
    assert entry.finished_at is not None
    # Never retried while the identity stays the same...
    again = ledger.quarantine("2817002", "/drop/2817002o.fits", "not_fits", size=100, mtime_ns=5)
    assert again == entry
    same, is_new = ledger.observe("2817002", "/drop/2817002o.fits", 100, 5)
    assert not is_new and same.state == "quarantined"
    assert ledger.is_done("2817002", 100, 5)
    assert ledger.pending() == []
    # ...but a rewritten file is a new version to grade.
    fixed, is_new = ledger.observe("2817002", "/drop/2817002o.fits", 2880, 6)
    assert is_new and fixed.version == 2 and fixed.state == "seen"


def test_quarantine_unstatable_file_with_default_identity(ledger):
    entry = ledger.quarantine("x", "/drop/x.fits", "unreadable")
    assert (entry.size, entry.mtime_ns) == (0, 0)
    assert ledger.quarantine("x", "/drop/x.fits", "unreadable") == entry
    assert ledger.counts()["quarantined"] == 1


def test_quarantine_rules(ledger):
    seen, _ = _observe(ledger, "1")
    moved = ledger.quarantine("1", seen.path, "outside_drop", seen.size, seen.mtime_ns)
    assert (moved.key, moved.state) == (seen.key, "quarantined")
    busy, _ = _observe(ledger, "2")
    ledger.claim(busy.key)
    with pytest.raises(ValueError, match="'grading'"):
        ledger.quarantine("2", busy.path, "not_fits", busy.size, busy.mtime_ns)
    with pytest.raises(ValueError, match="reason"):
        ledger.quarantine("3", "/drop/3.fits", "")


# ----------------------------------------------------------------------------------- pending
def test_pending_orders(ledger):
    c, _ = _observe(ledger, "c", ready_at=30.0)
    a, _ = _observe(ledger, "a", ready_at=10.0)
    b, _ = _observe(ledger, "b", ready_at=20.0)
    d, _ = _observe(ledger, "d", ready_at=20.0)  # tie: arrival (key) order
    assert ledger.pending() == [a, b, d, c]
    assert ledger.pending("fifo") == [a, b, d, c]
    assert ledger.pending("newest-first") == [c, d, b, a]
    ledger.claim(b.key)
    assert ledger.pending() == [a, d, c]
    with pytest.raises(ValueError, match="newest-first"):
        ledger.pending("lifo")


# ---------------------------------------------------------------------------------- recovery
def test_recover_after_simulated_crash(tmp_path):
    path = tmp_path / "ledger.sqlite"
    crashed = Ledger(path)
    a, _ = _observe(crashed, "a")
    b, _ = _observe(crashed, "b")
    c, _ = _observe(crashed, "c")
    crashed.claim(a.key)
    crashed.claim(b.key)
    crashed.finish(b.key, "graded")
    # The process "dies" here: a is left in 'grading', the connection is never closed.
    with Ledger(path) as restarted:
        back = restarted.recover()
        assert [e.key for e in back] == [a.key]
        assert back[0].state == "seen" and back[0].attempts == 1
        assert (back[0].interruptions, back[0].failures) == (1, 0)
        assert [e.key for e in restarted.pending()] == [a.key, c.key]
        assert restarted.get(b.key).state == "graded"
        assert restarted.recover() == []
        again = restarted.claim(a.key)
        assert again.attempts == 2
    crashed.close()


def test_recover_gives_up_after_max_interruptions(ledger):
    entry, _ = _observe(ledger)
    for n in (1, 2):  # crashes while grading it, twice: retried
        ledger.claim(entry.key)
        back = ledger.recover(max_interruptions=3)
        assert [(e.key, e.interruptions, e.failures) for e in back] == [(entry.key, n, 0)]
    ledger.claim(entry.key)  # third crash: given up
    assert ledger.recover(max_interruptions=3) == []
    final = ledger.get(entry.key)
    assert final.state == "quarantined" and final.reason.startswith("crash_loop: ")
    with pytest.raises(ValueError, match="max_interruptions"):
        ledger.recover(max_interruptions=0)


def test_kills_of_the_daemon_are_not_failures_of_the_exposure(tmp_path):
    """Issue 21, item 6: an exposure in flight during three unrelated kills reached
    too_many_attempts (every claim counted). A restart after a kill counts an interruption,
    never a failure; failures come only from retry_later, and the exposure is graded."""
    path = tmp_path / "ledger.sqlite"
    first = Ledger(path)
    entry, _ = _observe(first)
    first.claim(entry.key)
    first.retry_later(entry.key, 0.0, "OSError: disk hiccup")  # one failure of its own
    first.claim(entry.key)
    killed = [first]
    for _ in range(3):  # killed mid-grading (connection never closed), restarted, claimed
        restarted = Ledger(path)
        killed.append(restarted)
        (back,) = restarted.recover(max_interruptions=10)
        assert back.key == entry.key and back.state == "seen"
        assert restarted.claim(entry.key) is not None
    final = restarted.finish(entry.key, "graded")
    assert (final.failures, final.interruptions, final.reason) == (1, 3, None)
    for led in killed:
        led.close()


def test_recover_does_not_retry_a_superseded_version(ledger):
    old, _ = _observe(ledger, size=2880, mtime_ns=1)
    ledger.claim(old.key)
    new, _ = _observe(ledger, size=5760, mtime_ns=2)
    assert ledger.get(old.key).state == "grading"  # a running grading is not disturbed
    assert ledger.recover() == []
    assert ledger.get(old.key).reason == "superseded"
    assert ledger.pending() == [new]


_HOLD_TRANSACTION = textwrap.dedent(
    """
    import sys
    from skygrade.streamer.ledger import Ledger

    ledger = Ledger(sys.argv[1])
    entry, _ = ledger.observe("crash", "/drop/crash.fits", 2880, 1)
    ledger.claim(entry.key)
    done, _ = ledger.observe("done", "/drop/done.fits", 2880, 1)
    ledger.claim(done.key)
    ledger.finish(done.key, "graded")
    # Open a write transaction and leave it half done, as a crash mid-write would.
    conn = ledger._conn
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE exposures SET state = 'graded' WHERE key = ?", (entry.key,))
    for i in range(500):
        conn.execute(
            "INSERT INTO exposures (exposure_id, path, size, mtime_ns, version, state, seen_at) "
            "VALUES (?, ?, 1, 1, 1, 'seen', 0)",
            (f"ghost{i}", f"/drop/ghost{i}.fits"),
        )
    print("holding", flush=True)
    sys.stdin.read()
    """
)


def test_kill_9_inside_a_transaction_leaves_the_ledger_consistent(tmp_path):
    path = tmp_path / "ledger.sqlite"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_TRANSACTION, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stdout.readline().strip() == b"holding"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    with Ledger(path) as ledger:
        integrity = ledger._conn.execute("PRAGMA integrity_check").fetchone()[0]
        assert integrity == "ok"
        # Committed work survived; the open transaction did not.
        assert ledger.counts() == {"seen": 0, "grading": 1, "graded": 1, "quarantined": 0}
        back = ledger.recover()
        assert [e.exposure_id for e in back] == ["crash"]
        # The dead process's write lock is gone: the ledger is writable again.
        claimed = ledger.claim(back[0].key)
        assert claimed.attempts == 2
        ledger.finish(claimed.key, "graded")
        assert ledger.is_done("crash", 2880, 1)


# ------------------------------------------------------------------------------- concurrency
def _run_threads(n: int, target) -> list:
    results = [None] * n
    errors = []
    barrier = threading.Barrier(n)

    def run(i):
        try:
            barrier.wait(timeout=5)
            results[i] = target(i)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"ledger-test-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors, errors
    return results


def test_claim_is_exclusive_across_threads(ledger):
    for round_ in range(20):
        entry, _ = _observe(ledger, f"e{round_}")
        results = _run_threads(8, lambda i, k=entry.key: ledger.claim(k))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert ledger.get(entry.key).attempts == 1


def test_claim_is_exclusive_across_connections(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledgers = [Ledger(path) for _ in range(4)]
    try:
        keys = [_observe(ledgers[0], f"e{i}")[0].key for i in range(10)]
        results = _run_threads(4, lambda i: [ledgers[i].claim(k) for k in keys])
        for j, key in enumerate(keys):
            winners = [r[j] for r in results if r[j] is not None]
            assert len(winners) == 1, key
    finally:
        for led in ledgers:
            led.close()


def test_concurrent_observe_and_workers(ledger):
    """Observers and graders hammering one ledger: every exposure graded once, versions unique."""
    n_exposures = 40

    def observer(i):
        return [_observe(ledger, f"x{j}")[1] for j in range(n_exposures)]

    news = _run_threads(4, observer)
    assert sum(flag for row in news for flag in row) == n_exposures

    def grader(i):
        graded = []
        for entry in ledger.pending():
            if ledger.claim(entry.key) is not None:
                ledger.finish(entry.key, "graded")
                graded.append(entry.exposure_id)
        return graded

    graded = [eid for part in _run_threads(4, grader) for eid in part]
    assert sorted(graded) == sorted(f"x{j}" for j in range(n_exposures))
    assert ledger.counts() == dict.fromkeys(STATES, 0) | {"graded": n_exposures}


def test_closed_ledger_refuses_work(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.close()
    ledger.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        ledger.pending()


def test_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="schema version 99"):
        Ledger(path)


def test_a_failed_row_waits_out_its_own_back_off(ledger):
    """Issue 21, item 2: a failure sends the row back with a time before which it is not due;
    the rows behind it are due meanwhile."""
    a, _ = _observe(ledger, "a", ready_at=1.0)
    b, _ = _observe(ledger, "b", ready_at=2.0)
    ledger.claim(a.key)
    back = ledger.retry_later(a.key, 60.0, "OSError: [Errno 36] File name too long")
    assert (back.state, back.failures) == ("seen", 1)
    assert "File name too long" in back.last_error
    now = back.next_attempt_at - 60.0
    assert [e.key for e in ledger.pending()] == [a.key, b.key]  # the backlog holds both
    assert [e.key for e in ledger.pending(due_at=now)] == [b.key]
    assert [e.key for e in ledger.pending(due_at=now + 61)] == [a.key, b.key]
    assert ledger.next_due() == back.next_attempt_at
    ledger.claim(a.key)
    assert ledger.retry_later(a.key, 0.0, "again", count=False).failures == 1
    with pytest.raises(ValueError, match="not 'grading'"):
        ledger.retry_later(a.key, 1.0, "not claimed")


def test_a_schema_1_ledger_is_upgraded_in_place(tmp_path):
    path = tmp_path / "l.sqlite"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(
            "CREATE TABLE exposures (key INTEGER PRIMARY KEY AUTOINCREMENT, exposure_id TEXT "
            "NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, "
            "version INTEGER NOT NULL, state TEXT NOT NULL, reason TEXT, attempts INTEGER NOT "
            "NULL DEFAULT 0, seen_at REAL NOT NULL, started_at REAL, finished_at REAL, "
            "model_version TEXT, ready_at REAL, UNIQUE (exposure_id, path, size, mtime_ns), "
            "UNIQUE (exposure_id, version))"
        )
        conn.execute(
            "INSERT INTO exposures (exposure_id, path, size, mtime_ns, version, state, "
            "seen_at) VALUES ('2817001', '/drop/2817001o.fits', 2880, 1, 1, 'seen', 5.0)"
        )
        conn.execute("PRAGMA user_version = 1")
    with Ledger(path) as ledger:
        (entry,) = ledger.pending(due_at=10.0)
        assert (entry.exposure_id, entry.failures, entry.next_attempt_at) == ("2817001", 0, None)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
