"""The fault suite of issue 21: the real daemon (``python -m skygrade.streamer.cli watch``) treated
as an operator would treat it, each scenario asserting numbers.

- kill -9 of the daemon at random points over a burst of exposures, restarted each time: every
  exposure ends exactly once (one row, graded or quarantined with a reason), no process of the
  daemon's session survives it (orphans), and the ledger agrees with the dataset;
- a slow copy and a copy into preallocated space, each pausing where a careless check would
  take the file for complete: never graded before the copy ends, graded once;
- the output directory made read-only, then repaired: the writes fail and are counted, health
  is 503, nothing counts against the exposures, and the pending work completes once repaired;
- the bundle symlink swapped to bad bundles: refused and counted, grading goes on with the old
  one, and a good one swapped in later is taken;
- more silent clients than ``metrics.max_connections`` on the metrics server: /metrics still
  answers a normal client within ``metrics.request_timeout_s``.

Small geometries and few exposures (the whole suite runs in about a minute on 2 cores). Each
scenario records its figures (``figures`` fixture, printed at the end of the run).
``SKYGRADE_FAULT_SEED`` changes the kill points.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from skygrade.streamer.ledger import Ledger
from skygrade.streamer.sky_plan import Geometry
from skygrade.streamer.telescope import write_progressively
from skygrade.transforms.exposure import exposure_id_from_path
from skygrade.transforms.fits_walk import check_integrity
from skygrade.transforms.grades_dataset import GradesDataset
from tests.helpers.bundles import bad_copies
from tests.helpers.daemon_process import (
    GRADE_TIMEOUT_S,
    NIGHT,
    all_stopped,
    daemon,
    exposures,
    health_of,
    make_dirs,
    metric_total,
    poll_until,
    session_members,
    start_daemon,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.faults

#: Two CCDs of 256x320: a CCD boundary to stop a copy at, graded in about a second.
TWO_CCDS = Geometry(2, 256, 320)
LEDGER = "ledger.sqlite"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bundle):
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "b", "fault-test")


def outcome(out: Path, expected: dict[str, tuple[str, str | None]]) -> dict:
    """Check the dataset and the ledger against ``expected`` (exposure id -> status, reason
    slug); returns the figures: rows, duplicates, graded, quarantined.

    Exactly once: one row per exposure, no other row; the ledger holds one final entry per
    exposure that says the same as the row, and nothing pending.
    """
    rows = GradesDataset(out).read().to_pylist()
    ids = [r["exposure_id"] for r in rows]
    duplicates = len(ids) - len(set(ids))
    assert duplicates == 0, sorted(ids)
    assert sorted(ids) == sorted(expected), (sorted(ids), sorted(expected))
    with Ledger(out / LEDGER) as ledger:
        counts = ledger.counts()
        latest = {eid: ledger.latest(eid) for eid in expected}
    assert counts["seen"] == counts["grading"] == 0, counts
    assert counts["graded"] + counts["quarantined"] == len(expected), counts
    for row in rows:
        status, slug = expected[row["exposure_id"]]
        entry = latest[row["exposure_id"]]
        assert (row["status"], entry.state) == (status, status), (row, entry)
        if status == "quarantined":
            assert row["reason"].startswith(f"{slug}: "), row["reason"]
            assert entry.reason.startswith(f"{slug}: "), entry.reason
        else:
            assert row["grade"] and entry.model_version == row["model_version"], (row, entry)
    return {
        "rows": len(rows),
        "duplicates": duplicates,
        "graded": counts["graded"],
        "quarantined": counts["quarantined"],
    }


def metrics_of(proc) -> str:
    text = proc.get("/metrics")
    assert text is not None, f"/metrics did not answer:\n{proc}"
    return text


# ----------------------------------------------------------------------- kill -9 over a burst

#: Restarts killed with SIGKILL before the last daemon, which finishes the burst.
KILLS = 6


def _caught_grading(out: Path) -> set[tuple[int, int]]:
    """(key, interruptions) of the ledger rows in ``grading``: a row caught by a kill is put
    back at the next start with one more interruption, so each pair is one interruption."""
    path = out / LEDGER
    if not path.exists():
        return set()
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
        rows = conn.execute(
            "SELECT key, interruptions FROM exposures WHERE state = 'grading'"
        ).fetchall()
    return {(k, i) for k, i in rows}


def test_kill_9_at_random_points_over_a_burst(bundle, tmp_path, figures):
    seed = int(os.environ.get("SKYGRADE_FAULT_SEED", "2126"))
    rng = random.Random(seed)
    drop, out = make_dirs(tmp_path)
    config = write_config(tmp_path / "skygrade.yaml", incomplete_timeout_s=2.0)
    good = exposures(12, seed=41, geometry=TWO_CCDS)
    truncated = ("3999001o.fits", good[0][1][: len(good[0][1]) // 2])  # a copy that stopped
    garbage = ("3999002o.fits", b"observing log: clear, seeing 0.7\n" * 100)
    burst = [*good, truncated, garbage]
    rng.shuffle(burst)
    expected = {exposure_id_from_path(name): ("graded", None) for name, _ in good}
    expected[exposure_id_from_path(truncated[0])] = ("quarantined", "truncated")
    expected[exposure_id_from_path(garbage[0])] = ("quarantined", "not_fits")

    stop = threading.Event()
    gaps = random.Random(seed + 1)

    def write_burst() -> None:  # paced to last over the kills and restarts
        for name, data in burst:
            if stop.wait(gaps.uniform(0.5, 3.0)):
                break
            write_progressively(data, drop / NIGHT / name, chunks=3, duration_s=0.2, stop=stop)

    writer = threading.Thread(target=write_burst, name="fault-burst-writer")
    start = time.monotonic()
    writer.start()
    caught: set[tuple[int, int]] = set()
    orphans = 0
    modes = []
    try:
        for _ in range(KILLS):
            proc = start_daemon(tmp_path, config, drop, out, bundle)
            try:
                # a third of the kills at any moment of the start (imports, ledger recovery,
                # CCD pool start-up, first grades), the others while an exposure is graded
                mode = rng.choice(["start", "grading", "grading"])
                if mode == "start":
                    time.sleep(rng.uniform(0.2, 4.0))
                else:
                    proc.wait_ready()
                    if not poll_until(lambda: bool(_caught_grading(out)), 30.0):
                        mode = "idle"
                    time.sleep(rng.uniform(0.0, 0.5))
                modes.append(mode)
                os.killpg(proc.pid, signal.SIGSTOP)  # freeze it all to read the ledger
                poll_until(lambda p=proc: all_stopped(p.pid), 5.0)  # the signal is delivered
                caught |= _caught_grading(out)
                os.kill(proc.pid, signal.SIGKILL)  # the daemon alone: its pool must follow
                proc.proc.wait(10)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
                poll_until(lambda p=proc: not session_members(p.pid), 5.0)
                left = session_members(proc.pid)
                orphans += len(left)
                assert not left, f"left after kill -9 ({mode}): {left}\n{proc}"
            finally:
                proc.kill()
        with daemon(tmp_path, config, drop, out, bundle) as proc:
            writer.join(60)
            assert not writer.is_alive()
            wait_for(
                lambda: _final(out) == len(expected),
                GRADE_TIMEOUT_S,
                f"{len(expected)} exposures final",
                proc,
            )
            proc.proc.send_signal(signal.SIGTERM)
            assert proc.proc.wait(30) == 0, str(proc)
            poll_until(lambda: not session_members(proc.pid), 5.0)
            orphans += len(session_members(proc.pid))
    finally:
        stop.set()
        writer.join(10)
    wall = time.monotonic() - start
    figures.update(outcome(out, expected))
    with contextlib.closing(sqlite3.connect(out / LEDGER)) as conn:
        interruptions, failures = conn.execute(
            "SELECT SUM(interruptions), SUM(failures) FROM exposures"
        ).fetchone()
    figures.update(
        exposures=len(burst),
        kills=KILLS,
        kills_mid_grading=len(caught),
        orphans=orphans,
        seed=seed,
        wall_s=round(wall, 1),
    )
    assert orphans == 0
    # every kill that caught an exposure mid-grading is one interruption in the ledger, and
    # none is counted as a failure of the exposure (issue 21, item 6)
    assert (interruptions, failures) == (len(caught), 0), (interruptions, failures, caught)
    assert "grading" in modes and caught, f"no kill caught an exposure mid-grading: {modes}"


def _final(out: Path) -> int:
    with Ledger(out / LEDGER) as ledger:
        c = ledger.counts()
    return c["graded"] + c["quarantined"] if c["seen"] == c["grading"] == 0 else -1


# ------------------------------------------------------------------- copies in progress

#: Seconds a copy pauses at each of its stops: five settle times, below the
#: incomplete_timeout_s of these daemons (3 s), after which a stalled copy is given up.
PAUSE_S = 1.0


@pytest.mark.parametrize("copy", ["slow", "preallocated"])
def test_a_copy_in_progress_is_never_graded_early(bundle, tmp_path, figures, copy):
    """A copy that pauses (longer than ``settle_s``) in a header, inside a CCD, at the start
    of the last CCD and a few bytes before its end (and, slow, one byte short of its padding's
    end): written in place (slow) or into space
    reserved first and full of zeros (``truncate -s SIZE``, as ``rsync --preallocate`` and
    ``fallocate`` do). No ledger entry, row or grade before the copy ends; then one."""
    drop, out = make_dirs(tmp_path)
    config = write_config(tmp_path / "skygrade.yaml", incomplete_timeout_s=3.0)
    ((name, data),) = exposures(1, seed=43, geometry=TWO_CCDS)
    (tmp_path / "layout.fits").write_bytes(data)  # outside the drop: to learn its layout
    first, last = check_integrity(tmp_path / "layout.fits").hdus[1:]
    stops = [
        1440,  # in the primary header
        first.data_offset + first.data_bytes // 2,  # inside the first CCD
        last.data_offset,  # the last CCD's header written, none of its data
        last.data_offset + last.data_bytes - 10,  # all but its last 5 pixels
    ]
    if copy == "slow":  # (preallocated, the padding's last NUL byte is there from the start)
        stops.append(len(data) - 1)  # all but the last byte of padding
    path = drop / NIGHT / name
    eid = exposure_id_from_path(name)
    early = []
    with daemon(tmp_path, config, drop, out, bundle) as proc, Ledger(out / LEDGER) as ledger:
        with open(path, "wb") as fh:
            if copy == "preallocated":
                fh.truncate(len(data))
        with open(path, "r+b") as fh:
            pos = 0
            for stop in [*stops, len(data)]:
                fh.seek(pos)
                fh.write(data[pos:stop])
                fh.flush()
                pos = stop
                if stop == len(data):
                    break
                time.sleep(PAUSE_S)
                if ledger.latest(eid) is not None:
                    early.append((stop, ledger.latest(eid).state))
        done = os.stat(path)
        wait_for(lambda: _final(out) >= 1, GRADE_TIMEOUT_S, "graded", proc)
        time.sleep(1.0)  # time for a second grade, had one been coming
        metrics = metrics_of(proc)
        entry = ledger.latest(eid)
        counts = ledger.counts()
    graded = metric_total(metrics, "skygrade_exposures_graded_total")
    quarantined = metric_total(metrics, "skygrade_exposures_quarantined_total")
    figures.update(
        exposures=1, pauses=len(stops), early_grades=len(early), grades_counted=int(graded)
    )
    assert early == [], f"taken for complete at (byte, state): {early}"
    figures.update(outcome(out, {eid: ("graded", None)}))
    assert (entry.size, entry.mtime_ns, entry.version) == (len(data), done.st_mtime_ns, 1)
    assert entry.attempts == 1 and counts == {**counts, "graded": 1, "quarantined": 0}
    assert (graded, quarantined) == (1.0, 0.0)


# ------------------------------------------------------------------- read-only output

#: Seconds the output stays read-only while exposures arrive.
READ_ONLY_S = 4.0


def test_a_read_only_output_fails_its_writes_then_is_repaired(bundle, tmp_path, figures):
    drop, out = make_dirs(tmp_path)
    config = write_config(tmp_path / "skygrade.yaml", retry_s=0.3)
    files = exposures(4, seed=44)
    ids = [exposure_id_from_path(name) for name, _ in files]
    output_failed = 'skygrade_write_failures_total{kind="output"}'
    own_failed = 'skygrade_write_failures_total{kind="exposure"}'
    with (
        daemon(tmp_path, config, drop, out, bundle, unprivileged=True) as proc,
        Ledger(out / LEDGER) as ledger,
    ):
        (drop / NIGHT / files[0][0]).write_bytes(files[0][1])
        wait_for(lambda: ledger.counts()["graded"] == 1, GRADE_TIMEOUT_S, "graded", proc)
        folders = [out, *(p for p in out.rglob("*") if p.is_dir())]
        modes = {p: p.stat().st_mode for p in folders}
        try:
            for p in folders:
                p.chmod(0o555)  # r-x: nothing can be created, renamed or removed in them
            for name, data in files[1:]:
                (drop / NIGHT / name).write_bytes(data)
            wait_for(
                lambda: (proc.metric(output_failed) or 0) >= len(files) - 1,
                GRADE_TIMEOUT_S,
                "a failed write of each exposure",
                proc,
            )
            time.sleep(max(0.0, READ_ONLY_S - 1.0))
            status, body = health_of(proc)
            during = metrics_of(proc)
            counts = ledger.counts()
            pending = [ledger.latest(i) for i in ids[1:]]
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        repaired = time.monotonic()
        wait_for(
            lambda: ledger.counts()["graded"] == len(files), GRADE_TIMEOUT_S, "all graded", proc
        )
        catch_up = time.monotonic() - repaired
        wait_for(lambda: health_of(proc)[0] == 200, 10.0, "/healthz 200", proc)
        after = metrics_of(proc)
    assert status == 503, body
    assert [p for p in json.loads(body)["problems"] if p.startswith("cannot write grades")]
    assert counts == {"seen": len(files) - 1, "grading": 0, "graded": 1, "quarantined": 0}
    # a dataset that cannot be written is no exposure's fault: nothing counts against them
    assert [e.failures for e in pending] == [0] * (len(files) - 1)
    assert metric_total(during, own_failed) == metric_total(after, own_failed) == 0
    assert metric_total(during, "skygrade_oldest_pending_age_seconds") > 0
    assert metric_total(after, "skygrade_oldest_pending_age_seconds") == 0
    figures.update(outcome(out, {i: ("graded", None) for i in ids}))
    figures.update(
        exposures=len(files),
        failed_writes=int(metric_total(after, output_failed)),
        exposure_failures=int(metric_total(after, own_failed)),
        read_only_s=READ_ONLY_S,
        repaired_to_done_s=round(catch_up, 1),
    )
    # once repaired, the pending work is done at once, not after the back-off it built up
    assert catch_up < 10.0, catch_up


# ------------------------------------------------------------------- bad bundle swap


def test_a_bad_bundle_swapped_in_is_refused_and_grading_goes_on(
    bundle, tiny_bundle, tmp_path, figures
):
    drop, out = make_dirs(tmp_path)
    config = write_config(tmp_path / "skygrade.yaml")
    garbled, nan = bad_copies(bundle, tmp_path)
    new = tiny_bundle(tmp_path / "b2", "fault-test-2")
    current = tmp_path / "current"
    current.symlink_to(bundle)

    def swap(target: Path) -> None:
        (tmp_path / "next").symlink_to(target)
        os.replace(tmp_path / "next", current)

    files = exposures(5, seed=45)
    ids = [exposure_id_from_path(name) for name, _ in files]
    plan = [None, garbled, nan, new, None]  # what is swapped in before each exposure
    refusals, healths = [], []
    with daemon(tmp_path, config, drop, out, current) as proc, Ledger(out / LEDGER) as ledger:
        for n, ((name, data), target) in enumerate(zip(files, plan, strict=True), 1):
            if target is not None:
                swap(target)
            (drop / NIGHT / name).write_bytes(data)
            wait_for(lambda n=n: ledger.counts()["graded"] == n, GRADE_TIMEOUT_S, "graded", proc)
            refusals.append(proc.metric("skygrade_bundle_refusals_total"))
            healths.append(health_of(proc))
    rows = {r["exposure_id"]: r for r in GradesDataset(out).read().to_pylist()}
    versions = [rows[i]["model_version"] for i in ids]
    assert versions == ["fault-test"] * 3 + ["fault-test-2"] * 2
    assert refusals == [0.0, 1.0, 2.0, 2.0, 2.0]
    # grading went on: healthy, with a warning naming the refused bundle while it is there
    assert [s for s, _ in healths] == [200] * 5, healths
    warned = [bool(json.loads(b)["warnings"]) for _, b in healths]
    assert warned == [False, True, True, False, False], healths
    figures.update(outcome(out, {i: ("graded", None) for i in ids}))
    figures.update(exposures=len(files), swaps=3, refusals=int(refusals[-1]))


# ------------------------------------------------------------------- slow-client flood

MAX_CONNECTIONS = 8
REQUEST_TIMEOUT_S = 3.0
#: Silent clients: four times ``metrics.max_connections``, each reconnecting once closed.
FLOOD = 4 * MAX_CONNECTIONS


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_a_slow_client_flood_leaves_metrics_answering(bundle, tmp_path, figures):
    drop, out = make_dirs(tmp_path)
    limits = {"max_connections": MAX_CONNECTIONS, "request_timeout_s": REQUEST_TIMEOUT_S}
    config = write_config(tmp_path / "skygrade.yaml", metrics=limits)
    with daemon(tmp_path, config, drop, out, bundle) as proc:
        host, port = proc.url.removeprefix("http://").rsplit(":", 1)
        baseline = _threads(proc.pid)
        stop = threading.Event()
        opened = [0]

        def flood() -> None:  # connect, send nothing; reconnect whatever the server closed
            socks: list[socket.socket] = []
            try:
                while not stop.is_set():
                    for s in [s for s in socks if _closed(s)]:
                        socks.remove(s)
                        s.close()
                    while len(socks) < FLOOD and not stop.is_set():
                        socks.append(socket.create_connection((host, int(port)), timeout=5))
                        opened[0] += 1
                    stop.wait(0.02)
            finally:
                for s in socks:
                    s.close()

        flooder = threading.Thread(target=flood, name="fault-flood")
        flooder.start()
        answers, most = [], 0
        try:
            assert poll_until(lambda: opened[0] >= FLOOD, 10.0)
            time.sleep(0.5)  # every slot held by a silent client
            for _ in range(8):
                most = max(most, _threads(proc.pid))
                t0 = time.monotonic()
                try:
                    url = f"{proc.url}/metrics"
                    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S) as response:
                        status = response.status
                except urllib.error.HTTPError as exc:
                    status = exc.code
                except OSError as exc:
                    status = type(exc).__name__
                answers.append((status, round(time.monotonic() - t0, 2)))
                time.sleep(0.4)
        finally:
            stop.set()
            flooder.join(10)
        assert proc.proc.poll() is None
    slowest = max(t for _, t in answers)
    figures.update(
        max_connections=MAX_CONNECTIONS,
        silent_clients=FLOOD,
        connections_opened=opened[0],
        requests=len(answers),
        answered_200=sum(s == 200 for s, _ in answers),
        slowest_s=slowest,
        extra_threads=most - baseline,
    )
    assert [s for s, _ in answers] == [200] * len(answers), answers
    assert slowest < REQUEST_TIMEOUT_S, answers
    assert most - baseline <= MAX_CONNECTIONS + 1, (most, baseline)


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset), without blocking."""
    try:
        sock.setblocking(False)
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        with contextlib.suppress(OSError):
            sock.setblocking(True)
