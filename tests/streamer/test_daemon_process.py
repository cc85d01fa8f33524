"""The daemon as a real process (``python -m skygrade.streamer.cli watch``): kill -9 and restart,
SIGTERM, a failing sink, bad inputs. Tiny exposures; every wait is bounded and every daemon started
is killed, with its whole session, in a ``finally``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skygrade.streamer.ledger import Ledger
from skygrade.streamer.sky_plan import Geometry
from skygrade.streamer.telescope import write_progressively
from skygrade.transforms.grades_dataset import GradesDataset
from tests.helpers.daemon_process import (
    GRADE_TIMEOUT_S,
    NIGHT,
    REPO,
    SHUTDOWN_TIMEOUT_S,
    START_TIMEOUT_S,
    daemon,
    exposures,
    health_of,
    ids_of,
    make_dirs,
    poll_until,
    session_members,
    wait_for,
    write_config,
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bundle):
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "b", "process-test")


@pytest.fixture
def dirs(tmp_path):
    return make_dirs(tmp_path)


# ------------------------------------------------------------------------------------ tests


def test_kill_9_mid_grading_then_restart_loses_nothing_and_duplicates_nothing(
    bundle, dirs, tmp_path
):
    drop, out = dirs
    config = write_config(tmp_path / "skygrade.yaml")
    files = exposures(6, seed=11, geometry=Geometry(2, 256, 320))
    first, later = files[:4], files[4:]
    with (
        daemon(tmp_path, config, drop, out, bundle) as proc,
        Ledger(out / "ledger.sqlite") as ledger,
    ):
        for name, data in first:
            write_progressively(data, drop / NIGHT / name, chunks=3, duration_s=0.1)

        def frozen_mid_grading() -> bool:
            """Freeze the daemon; keep it frozen if one exposure is graded and one grading."""
            os.killpg(proc.pid, signal.SIGSTOP)
            c = ledger.counts()
            if c["graded"] >= 1 and c["grading"] == 1:
                return True
            os.killpg(proc.pid, signal.SIGCONT)
            time.sleep(0.05)
            return False

        wait_for(frozen_mid_grading, GRADE_TIMEOUT_S, "one graded, one grading", proc)
        assert proc.kill(), f"processes left in the killed session: {session_members(proc.pid)}"
        caught = ledger.counts()
        (victim,) = [e for e in map(ledger.latest, ids_of(files)) if e and e.state == "grading"]
    assert caught["graded"] < len(first)

    for name, data in later:  # arrive while the daemon is down
        (drop / NIGHT / name).write_bytes(data)
    with (
        daemon(tmp_path, config, drop, out, bundle) as proc,
        Ledger(out / "ledger.sqlite") as ledger,
    ):
        wait_for(
            lambda: ledger.counts()["graded"] == len(files),
            GRADE_TIMEOUT_S,
            f"{len(files)} graded",
            proc,
        )
        final = ledger.counts()
        regraded = ledger.get(victim.key)
        assert "recovered 1 exposure(s) caught mid-grading" in proc.text()
    assert regraded.state == "graded" and regraded.attempts == 2
    # the kill is an interruption, not a failure of the exposure (issue 21, item 6)
    assert (regraded.interruptions, regraded.failures) == (1, 0)
    assert final == {"seen": 0, "grading": 0, "graded": len(files), "quarantined": 0}
    rows = GradesDataset(out).read().to_pylist()
    ids = [r["exposure_id"] for r in rows]
    assert len(rows) == len(set(ids)) == len(files)
    assert {Path(r["path"]).name for r in rows} == {name for name, _ in files}
    assert all(r["status"] == "graded" for r in rows)


def test_kill_9_of_the_daemon_alone_leaves_no_orphan(bundle, dirs, tmp_path):
    """``kill -9 PID`` of the daemon (not its group): its fork server, CCD workers and resource
    tracker go with it (before the fix all four stayed, for good)."""
    drop, out = dirs
    config = write_config(tmp_path / "skygrade.yaml", ccd_workers=2)
    ((name, data),) = exposures(1, seed=15, geometry=Geometry(2, 256, 320))
    with daemon(tmp_path, config, drop, out, bundle) as proc:
        (drop / NIGHT / name).write_bytes(data)
        with Ledger(out / "ledger.sqlite") as ledger:
            wait_for(lambda: ledger.counts()["graded"] == 1, GRADE_TIMEOUT_S, "graded", proc)
        pool = [pid for pid, _ in session_members(proc.pid) if pid != proc.pid]
        assert len(pool) >= 3, f"no CCD pool? {pool}"  # fork server, 2 workers, tracker
        os.kill(proc.pid, signal.SIGKILL)
        proc.proc.wait(10)
        left: list = []

        def empty() -> bool:
            left[:] = session_members(proc.pid)
            return not left

        assert poll_until(empty, 5.0), f"{len(left)} of {len(pool)} left after kill -9: {left}"


def test_sigterm_exits_zero_and_leaves_no_process(bundle, dirs, tmp_path):
    drop, out = dirs
    config = write_config(tmp_path / "skygrade.yaml")
    ((name, data),) = exposures(1, seed=12)
    with daemon(tmp_path, config, drop, out, bundle) as proc:
        (drop / NIGHT / name).write_bytes(data)
        with Ledger(out / "ledger.sqlite") as ledger:
            wait_for(lambda: ledger.counts()["graded"] == 1, GRADE_TIMEOUT_S, "graded", proc)
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        session = {pid for pid, _ in session_members(proc.pid)}
        assert children and set(map(int, children)) <= session - {proc.pid}, "no CCD worker?"
        start = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.proc.wait(SHUTDOWN_TIMEOUT_S + 5)
        took = time.monotonic() - start
        assert code == 0, str(proc)
        assert took < SHUTDOWN_TIMEOUT_S, str(proc)
        wait_for(lambda: not session_members(proc.pid), 5.0, "the daemon's session to be empty")
    assert "signal 15: stopping" in proc.text() and proc.text().rstrip().endswith("stopped")
    assert len(GradesDataset(out).read()) == 1


def test_failing_sink_keeps_exposures_pending_until_they_can_be_written(bundle, dirs, tmp_path):
    drop, out = dirs
    config = write_config(tmp_path / "skygrade.yaml")
    ((name, data),) = exposures(1, seed=13)
    garbage = drop / NIGHT / "2890009o.fits"
    out.mkdir()
    # A file where the exposures/ directory should be: every exposure row write fails, as root
    # too (NotADirectoryError), while the ledger beside it stays writable.
    blocker = out / "exposures"
    blocker.write_text("not a directory: the exposure files cannot be written under it\n")
    failed = re.compile(r"grading \S+ failed .*retrying")
    with daemon(tmp_path, config, drop, out, bundle) as proc:
        (drop / NIGHT / name).write_bytes(data)
        garbage.write_bytes(b"garbage " * 400)  # refused by the watcher: its row fails too
        with Ledger(out / "ledger.sqlite") as ledger:
            wait_for(lambda: failed.search(proc.text()), GRADE_TIMEOUT_S, "a failed write", proc)
            wait_for(
                lambda: len(failed.findall(proc.text())) >= 2, GRADE_TIMEOUT_S, "a retry", proc
            )
            # The refusal waits in the ledger for its row (the watcher no longer retries it
            # every second with a traceback: issue 21, item 3).
            refused = f"quarantine row of {garbage} not written"
            wait_for(lambda: refused in proc.text(), 10.0, "the garbage's row to fail", proc)
            c = ledger.counts()
            assert c["graded"] == 0 and c["quarantined"] == 0, c
            assert c["seen"] + c["grading"] == 2, c
            assert "on_reject(" not in proc.text()  # the watcher did not have to retry it
            assert proc.proc.poll() is None
            # /healthz tells the truth: 503, saying why (issue 21, item 7)
            status, body = health_of(proc)
            assert status == 503 and "cannot write grades into" in body, (status, body)
            blocker.unlink()
            wait_for(
                lambda: ledger.counts()["graded"] == 1 and ledger.counts()["quarantined"] == 1,
                GRADE_TIMEOUT_S,
                "the exposure graded and the garbage quarantined",
                proc,
            )
            assert ledger.latest("2890009").reason.startswith("not_fits: ")
    rows = sorted((r["path"], r["status"]) for r in GradesDataset(out).read().to_pylist())
    assert rows == sorted([(str(drop / NIGHT / name), "graded"), (str(garbage), "quarantined")])


def test_bad_inputs_are_quarantined_and_grading_goes_on(bundle, dirs, tmp_path):
    drop, out = dirs
    config = write_config(tmp_path / "skygrade.yaml", incomplete_timeout_s=1.0)
    (good_name, good), (_, other), (no_exptime_name, no_exptime) = exposures(3, seed=14)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "2890004o.fits").write_bytes(other)
    bad = {
        "2890001o.fits": ("truncated", good[: len(good) // 2]),
        "2890002o.fits": ("bad_header", good.replace(b"NAXIS   =", b"NAXIZ   =", 1)),
        "2890003o.fits": ("not_fits", b"observing log, 2026-11-24: clear, seeing 0.7\n" * 50),
        "2890004o.fits": ("outside_drop", None),
        # complete and structurally sound, so refused by the pipeline, not the watcher
        no_exptime_name: ("missing_exptime", no_exptime.replace(b"EXPTIME =", b"EXPTIMX =", 1)),
    }
    with daemon(tmp_path, config, drop, out, bundle) as proc:
        for name, (_, data) in bad.items():
            if data is None:
                (drop / NIGHT / name).symlink_to(outside / name)
            else:
                (drop / NIGHT / name).write_bytes(data)
        with Ledger(out / "ledger.sqlite") as ledger:
            wait_for(
                lambda: ledger.counts()["quarantined"] == len(bad),
                GRADE_TIMEOUT_S,
                "the bad files quarantined",
                proc,
            )
            (drop / NIGHT / good_name).write_bytes(good)
            wait_for(lambda: ledger.counts()["graded"] == 1, GRADE_TIMEOUT_S, "graded", proc)
            reasons = {
                exposure_id: ledger.latest(exposure_id).reason
                for exposure_id in (name[:7] for name in bad)
            }
        metrics = proc.get("/metrics") or ""
        assert proc.proc.poll() is None
    for name, (reason, _) in bad.items():
        assert reasons[name[:7]].startswith(f"{reason}: "), reasons
        line = f'skygrade_exposures_quarantined_total{{reason="{reason}"}} 1.0'
        assert line in metrics
    rows = {r["exposure_id"]: r for r in GradesDataset(out).read().to_pylist()}
    assert len(rows) == len(bad) + 1
    for name, (reason, _) in bad.items():
        assert rows[name[:7]]["status"] == "quarantined"
        assert rows[name[:7]]["reason"].startswith(f"{reason}: ")
    assert [r["status"] for r in rows.values() if r["path"].endswith(good_name)] == ["graded"]


def test_watch_with_a_bad_bundle_exits_2_saying_why(bundle, dirs, tmp_path):
    """Issue 21, item 8: ``watch --bundle BAD`` (weights that do not load) started and retried
    forever; it is checked whole at start and the command exits 2 with the reason."""
    import shutil

    drop, out = dirs
    bad = Path(shutil.copytree(bundle, tmp_path / "bad"))
    (bad / "cnn.pt").write_bytes(b"not a torch file " * 64)
    config = write_config(tmp_path / "skygrade.yaml")
    cmd = [sys.executable, "-m", "skygrade.streamer.cli", "--config", str(config), "watch"]
    cmd += ["--drop", str(drop), "--out", str(out), "--bundle", str(bad)]
    done = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"{bad}: cannot load model bundle" in done.stderr
