"""The daemon end to end, in process, on tiny exposures (bounded in time)."""

import dataclasses
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from skygrade.models.bundle import ModelBundle
from skygrade.streamer.daemon import Daemon
from skygrade.streamer.sky_fits import exposure_bytes
from skygrade.streamer.sky_plan import Geometry, plan_night
from skygrade.streamer.telescope import write_progressively
from skygrade.transforms.grades_dataset import GradesDataset
from tests.helpers.bundles import bad_copies
from tests.helpers.daemon_process import metric_sample


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bundle):
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "b", "daemon-test")


def test_daemon_grades_progressive_files_once_and_quarantines_bad_ones(
    bundle, tmp_path, daemon_config, wait_for
):
    drop, out = tmp_path / "drop", tmp_path / "grades"
    (drop / "2026-11-24").mkdir(parents=True)
    plans = plan_night("2026-11-24", 2, seed=9, class_mix={"GOOD": 1})
    before = set(threading.enumerate())
    daemon = Daemon(drop, out, bundle, daemon_config)
    daemon.start()
    try:
        for plan in plans:
            data = exposure_bytes(plan, Geometry(2, 256, 320))
            write_progressively(data, drop / "2026-11-24" / plan.filename, 5, 0.5)
        (drop / "2026-11-24" / "2899999o.fits").write_bytes(b"garbage " * 400)
        assert wait_for(
            lambda: (
                daemon.ledger.counts().get("graded", 0) == 2
                and daemon.ledger.counts().get("quarantined", 0) == 1
            )
        )
        rows = GradesDataset(out).read().to_pylist()
        assert sorted(r["status"] for r in rows) == ["graded", "graded", "quarantined"]
        graded = [r for r in rows if r["status"] == "graded"]
        assert all(r["latency_s"] is not None and r["latency_s"] > 0 for r in graded)
        base = f"http://127.0.0.1:{daemon.server.port}"
        text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        assert "skygrade_exposures_graded_total" in text
        assert 'skygrade_exposures_quarantined_total{reason="not_fits"} 1.0' in text
        health = urllib.request.urlopen(f"{base}/healthz", timeout=5).read().decode()
        assert '"ok": true' in health.replace("'", '"')
    finally:
        daemon.stop(timeout=30)
    assert wait_for(lambda: set(threading.enumerate()) <= before, timeout=10)

    # restart: the files are known to the ledger, nothing is graded twice
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("exposures/*/*.parquet")}
    again = Daemon(drop, out, bundle, daemon_config)
    again.start()
    try:
        time.sleep(2.0)
        assert again.ledger.counts().get("graded") == 2
    finally:
        again.stop(timeout=30)
    assert {p: p.stat().st_mtime_ns for p in out.glob("exposures/*/*.parquet")} == stamps


def test_files_dropped_while_down_are_graded_at_start(bundle, tmp_path, daemon_config, wait_for):
    drop, out = tmp_path / "drop", tmp_path / "grades"
    (drop / "2026-11-25").mkdir(parents=True)
    plan = plan_night("2026-11-25", 1, seed=2, class_mix={"BT": 1})[0]
    (drop / "2026-11-25" / plan.filename).write_bytes(exposure_bytes(plan, Geometry(1, 256, 320)))
    daemon = Daemon(drop, out, bundle, daemon_config)
    daemon.start()
    try:
        assert wait_for(lambda: daemon.ledger.counts().get("graded", 0) == 1)
    finally:
        daemon.stop(timeout=30)
    assert len(GradesDataset(out).read()) == 1


def test_a_new_bundle_swapped_in_behind_a_symlink_is_used_without_restart(
    bundle, tmp_path, daemon_config, wait_for
):
    """Rolling out a model: point the bundle symlink at the new version; the next exposure
    is graded with it, and the model metric follows."""
    import os

    from skygrade.models.bundle import load_bundle

    old = load_bundle(bundle)
    new = ModelBundle(old.som, old.cnn, {"version": "daemon-test-2"}).save(tmp_path / "b2")
    current = tmp_path / "current"
    current.symlink_to(bundle)
    drop, out = tmp_path / "drop", tmp_path / "grades"
    (drop / "2026-11-25").mkdir(parents=True)
    plans = plan_night("2026-11-25", 2, seed=4, class_mix={"GOOD": 1})
    daemon = Daemon(drop, out, current, daemon_config)
    daemon.start()
    try:
        for i, plan in enumerate(plans):
            if i == 1:  # swap atomically, as an operator would: ln -s new tmp && mv -T tmp current
                (tmp_path / "next").symlink_to(new)
                os.replace(tmp_path / "next", current)
            path = drop / "2026-11-25" / plan.filename
            path.write_bytes(exposure_bytes(plan, Geometry(1, 256, 320)))
            assert wait_for(lambda n=i + 1: daemon.ledger.counts().get("graded", 0) == n)
        rows = sorted(GradesDataset(out).read().to_pylist(), key=lambda r: r["exposure_id"])
        assert [r["model_version"] for r in rows] == ["daemon-test", "daemon-test-2"]
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{daemon.server.port}/metrics", timeout=5
        ).read()
        assert b'skygrade_model_info{version="daemon-test-2"} 1.0' in text
        assert daemon.health()["model_version"] == "daemon-test-2"
    finally:
        daemon.stop(timeout=30)


CONTROLS = set("\n\r\x1b\x85")


def test_control_characters_in_names_reach_no_log_line_reason_or_row(
    bundle, tmp_path, daemon_config, wait_for, caplog
):
    """A newline in a file name split the daemon's log lines and went into the ledger's and the
    dataset's reasons as it was: every logged name and every reason is escaped (issue 21,
    item 11). The rows keep the file's real path."""
    caplog.set_level("DEBUG")
    drop, out = tmp_path / "drop", tmp_path / "grades"
    night = drop / "2026-11-24"
    night.mkdir(parents=True)
    plan = plan_night("2026-11-24", 1, seed=21, class_mix={"GOOD": 1})[0]
    data = exposure_bytes(plan, Geometry(1, 256, 320))
    garbage = night / "2899998o\nERROR forged line.fits"  # refused by the watcher
    no_exptime = night / "2899997o\r\x1b[2K\x85.fits"  # refused by the pipeline
    daemon = Daemon(drop, out, bundle, daemon_config)
    daemon.start()
    try:
        garbage.write_bytes(b"garbage " * 400)
        no_exptime.write_bytes(data.replace(b"EXPTIME =", b"EXPTIMX =", 1))
        assert wait_for(lambda: daemon.ledger.counts().get("quarantined", 0) == 2, timeout=60)
        entries = [
            daemon.ledger.latest(r["exposure_id"]) for r in GradesDataset(out).read().to_pylist()
        ]
    finally:
        daemon.stop(timeout=30)
    rows = GradesDataset(out).read().to_pylist()
    assert sorted(r["path"] for r in rows) == sorted([str(garbage), str(no_exptime)])
    reasons = [r["reason"] for r in rows] + [e.reason for e in entries]
    assert len(reasons) == 4 and all(reasons), reasons
    assert not [r for r in reasons if CONTROLS & set(r)], reasons
    assert any("2899998o\\nERROR forged line.fits" in r for r in reasons), reasons
    # Beam's own debug lines span lines
    lines = [r.getMessage() for r in caplog.records if r.name.split(".")[0] == "skygrade"]
    assert any("quarantined" in line and "2899998o" in line for line in lines)
    assert not [line for line in lines if CONTROLS & set(line)], lines


def test_a_gzipped_exposure_is_quarantined_and_counted(bundle, tmp_path, daemon_config, wait_for):
    """A ``.fits.gz`` in the drop left no trace (not graded, not quarantined, not counted): it is
    quarantined as ``unsupported_compression`` and counted in the quarantine metric."""
    import gzip

    drop, out = tmp_path / "drop", tmp_path / "grades"
    (drop / "2026-11-24").mkdir(parents=True)
    plan = plan_night("2026-11-24", 1, seed=22, class_mix={"GOOD": 1})[0]
    path = drop / "2026-11-24" / f"{plan.filename}.gz"
    path.write_bytes(gzip.compress(exposure_bytes(plan, Geometry(1, 256, 320))))
    daemon = Daemon(drop, out, bundle, daemon_config)
    daemon.start()
    try:
        assert wait_for(lambda: daemon.ledger.counts().get("quarantined", 0) == 1, timeout=30)
        base = f"http://127.0.0.1:{daemon.server.port}"
        text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    finally:
        daemon.stop(timeout=30)
    assert 'skygrade_exposures_quarantined_total{reason="unsupported_compression"} 1.0' in text
    (row,) = GradesDataset(out).read().to_pylist()
    assert row["path"] == str(path) and row["status"] == "quarantined"
    assert row["reason"].startswith(f"unsupported_compression: {path}: ")


def _blocked(drop_night, out, plan, data, version):
    """Write ``plan``'s exposure into the drop's night folder, with a directory standing where
    its exposure row must go: writing that exposure fails (IsADirectoryError) every time, and
    only that exposure's. Returns its path."""
    from skygrade.transforms.exposure import read_meta
    from skygrade.transforms.grades_dataset import GradesDataset

    staged = out.parent / "staging" / plan.filename
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(data)
    meta = read_meta(staged)
    GradesDataset(out).paths(meta.night, meta.exposure_id, version)[0].mkdir(parents=True)
    path = drop_night / plan.filename
    staged.rename(path)
    return path


def test_an_exposure_that_cannot_be_written_holds_up_no_other(
    bundle, tmp_path, daemon_config, wait_for
):
    """Issue 21, item 2: the grader slept out the back-off of a failing exposure (up to 300 s)
    and every other exposure waited behind it. Now the failing one waits on its own schedule
    (here 60 s, longer than the test) while three good ones are graded."""
    import dataclasses

    cfg = dataclasses.replace(
        daemon_config,
        watch=dataclasses.replace(daemon_config.watch, retry_s=60.0, backlog_policy="fifo"),
    )
    drop, out = tmp_path / "drop", tmp_path / "grades"
    night = drop / "2026-11-24"
    night.mkdir(parents=True)
    bad_plan, *good_plans = plan_night("2026-11-24", 4, seed=31, class_mix={"GOOD": 1})
    geometry = Geometry(1, 256, 320)
    daemon = Daemon(drop, out, bundle, cfg)
    daemon.start()
    try:
        _blocked(night, out, bad_plan, exposure_bytes(bad_plan, geometry), "daemon-test")
        bad_id = bad_plan.filename[:7]

        def failed_once() -> bool:
            entry = daemon.ledger.latest(bad_id)
            return entry is not None and entry.failures == 1

        assert wait_for(failed_once, timeout=60)
        failed_at = time.time()
        for plan in good_plans:
            (night / plan.filename).write_bytes(exposure_bytes(plan, geometry))
        assert wait_for(lambda: daemon.ledger.counts()["graded"] == 3, timeout=40), (
            daemon.ledger.counts()
        )
        waited = time.time() - failed_at
        entry = daemon.ledger.latest(bad_id)
    finally:
        daemon.stop(timeout=30)
    assert entry.state == "seen" and entry.failures == 1 and entry.next_attempt_at > failed_at
    assert "IsADirectoryError" in entry.last_error
    rows = [r for r in GradesDataset(out).read().to_pylist() if r["status"] == "graded"]
    assert len(rows) == 3 and waited < 40
    print(
        f"good exposures graded {waited:.1f} s after the failure; latencies "
        f"{[round(r['latency_s'], 1) for r in rows]}"
    )


def _config(daemon_config, **watch):
    import dataclasses

    return dataclasses.replace(
        daemon_config, watch=dataclasses.replace(daemon_config.watch, **watch)
    )


def test_names_too_long_for_the_output_are_written_under_a_bounded_name(
    bundle, tmp_path, daemon_config, wait_for
):
    """Issue 21, item 3: an exposure id taken from a file name of ~230 bytes made an output
    name over 255 bytes (ENAMETOOLONG), retried forever. Both the watcher's refusal and a
    graded exposure without EXPNUM are now written, under a name that stays short."""
    drop, out = tmp_path / "drop", tmp_path / "grades"
    night = drop / "2026-11-24"
    night.mkdir(parents=True)
    plan = plan_night("2026-11-24", 1, seed=32, class_mix={"GOOD": 1})[0]
    data = exposure_bytes(plan, Geometry(1, 256, 320)).replace(b"EXPNUM  =", b"EXPNUX  =")
    garbage, no_expnum = night / ("g" * 230 + ".fits"), night / ("n" * 230 + ".fits")
    daemon = Daemon(drop, out, bundle, daemon_config)
    daemon.start()
    try:
        garbage.write_bytes(b"garbage " * 400)
        no_expnum.write_bytes(data)
        assert wait_for(
            lambda: (
                daemon.ledger.counts()["graded"] == 1 and daemon.ledger.counts()["quarantined"] == 1
            ),
            timeout=40,
        ), daemon.ledger.counts()
    finally:
        daemon.stop(timeout=30)
    rows = {r["path"]: r for r in GradesDataset(out).read().to_pylist()}
    assert rows[str(garbage)]["status"] == "quarantined"
    assert rows[str(garbage)]["reason"].startswith("not_fits: ")
    assert rows[str(no_expnum)]["status"] == "graded"
    assert rows[str(no_expnum)]["exposure_id"] == "n" * 230
    names = [p.name for p in out.rglob("*") if p.is_file()]
    assert names and max(len(n.encode()) for n in names) < 200


def test_an_exposure_that_keeps_failing_is_quarantined_after_max_attempts(
    bundle, tmp_path, daemon_config, wait_for, caplog
):
    """Issue 21, item 3: an exposure that cannot be written was retried forever with an ERROR
    and a traceback each time. After ``watch.max_attempts`` failures of its own it is
    quarantined with the reason; one log line per attempt, no traceback."""
    caplog.set_level("INFO")
    cfg = _config(daemon_config, retry_s=0.1, max_attempts=3)
    drop, out = tmp_path / "drop", tmp_path / "grades"
    night = drop / "2026-11-24"
    night.mkdir(parents=True)
    plan = plan_night("2026-11-24", 1, seed=33, class_mix={"GOOD": 1})[0]
    daemon = Daemon(drop, out, bundle, cfg)
    daemon.start()
    try:
        _blocked(night, out, plan, exposure_bytes(plan, Geometry(1, 256, 320)), "daemon-test")
        counted = b'skygrade_exposures_quarantined_total{reason="too_many_attempts"} 1.0'
        url = f"http://127.0.0.1:{daemon.server.port}/metrics"
        assert wait_for(lambda: counted in urllib.request.urlopen(url, timeout=5).read(), 40)
        entry = daemon.ledger.latest(plan.filename[:7])
    finally:
        daemon.stop(timeout=30)
    assert entry.state == "quarantined"
    assert entry.reason.startswith("too_many_attempts: 3 failed attempts, the last: ")
    assert "IsADirectoryError" in entry.reason
    ours = [r for r in caplog.records if r.name.startswith("skygrade.streamer")]
    failed = [r for r in ours if "failed" in r.getMessage() and r.levelname == "ERROR"]
    assert len(failed) == 3, [r.getMessage() for r in failed]  # 2 retries, then given up
    assert not [r for r in ours if r.exc_info], "a traceback was logged"


def test_a_deleted_file_leaves_the_pending_work(bundle, tmp_path, daemon_config, wait_for):
    """Issue 21, item 3: a failing exposure whose file is deleted is no longer retried."""
    cfg = _config(daemon_config, retry_s=60.0)
    drop, out = tmp_path / "drop", tmp_path / "grades"
    night = drop / "2026-11-24"
    night.mkdir(parents=True)
    plan = plan_night("2026-11-24", 1, seed=34, class_mix={"GOOD": 1})[0]
    daemon = Daemon(drop, out, bundle, cfg)
    daemon.start()
    try:
        path = _blocked(
            night, out, plan, exposure_bytes(plan, Geometry(1, 256, 320)), "daemon-test"
        )
        eid = plan.filename[:7]
        assert wait_for(lambda: getattr(daemon.ledger.latest(eid), "failures", 0) == 1, 40)
        path.unlink()
        assert wait_for(lambda: daemon.ledger.counts()["seen"] == 0, timeout=10)
        entry = daemon.ledger.latest(eid)
    finally:
        daemon.stop(timeout=30)
    assert entry.state == "quarantined" and entry.reason.startswith("deleted: ")


def test_a_bad_bundle_is_refused_at_start(bundle, tmp_path, daemon_config):
    """Issue 21, item 8: ``watch --bundle BAD`` started and failed on every exposure; the whole
    bundle, weights included, is checked first (the CLI exits 2 with this message)."""
    from skygrade.models.bundle import BundleError

    garbled, nan = bad_copies(bundle, tmp_path)
    drop = tmp_path / "drop"
    drop.mkdir()
    with pytest.raises(BundleError, match="cannot load model bundle"):
        Daemon(drop, tmp_path / "out", garbled, daemon_config)
    with pytest.raises(BundleError, match="not finite"):
        Daemon(drop, tmp_path / "out", nan, daemon_config)


def test_a_bad_bundle_swapped_in_is_refused_and_the_old_one_kept(
    bundle, tmp_path, daemon_config, wait_for, caplog
):
    """Issue 21, item 8: a bad bundle behind the symlink stopped all grading until rollback.
    It is checked before use, refused once (logged, counted), the bundle in use goes on; a good
    one swapped in later is taken."""
    import os

    from skygrade.models.bundle import load_bundle

    caplog.set_level("INFO")
    garbled, _ = bad_copies(bundle, tmp_path)
    old = load_bundle(bundle)
    new = ModelBundle(old.som, old.cnn, {"version": "daemon-test-3"}).save(tmp_path / "b3")
    current = tmp_path / "current"
    current.symlink_to(bundle)

    def swap(target):
        (tmp_path / "next").symlink_to(target)
        os.replace(tmp_path / "next", current)

    drop, out = tmp_path / "drop", tmp_path / "grades"
    (drop / "2026-11-25").mkdir(parents=True)
    plans = plan_night("2026-11-25", 4, seed=35, class_mix={"GOOD": 1})
    daemon = Daemon(drop, out, current, daemon_config)
    daemon.start()
    try:
        for i, plan in enumerate(plans):
            if i == 1:
                swap(garbled)
            if i == 3:
                swap(new)
            path = drop / "2026-11-25" / plan.filename
            path.write_bytes(exposure_bytes(plan, Geometry(1, 256, 320)))
            assert wait_for(lambda n=i + 1: daemon.ledger.counts()["graded"] == n, timeout=40), (
                daemon.ledger.counts()
            )
            if i == 2:
                text = urllib.request.urlopen(
                    f"http://127.0.0.1:{daemon.server.port}/metrics", timeout=5
                ).read()
    finally:
        daemon.stop(timeout=30)
    rows = sorted(GradesDataset(out).read().to_pylist(), key=lambda r: r["exposure_id"])
    assert [r["model_version"] for r in rows] == ["daemon-test"] * 3 + ["daemon-test-3"]
    assert b"skygrade_bundle_refusals_total 1.0" in text
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "still grading with the bundle in use" in refused[0].getMessage()


def test_an_exposure_in_flight_during_three_kills_is_still_graded(
    bundle, tmp_path, daemon_config, wait_for
):
    """Issue 21, item 6: three unrelated kills of the daemon while it graded the same good
    exposure took it to too_many_attempts (watch.max_attempts 3): each restart counted as an
    attempt. Kills are interruptions, not failures of the exposure; it is graded."""
    from skygrade.streamer.ledger import Ledger
    from skygrade.transforms.exposure import exposure_id_from_path

    cfg = _config(daemon_config, max_attempts=3)
    drop, out = tmp_path / "drop", tmp_path / "grades"
    night = drop / "2026-11-24"
    night.mkdir(parents=True)
    plan = plan_night("2026-11-24", 1, seed=36, class_mix={"GOOD": 1})[0]
    path = night / plan.filename
    path.write_bytes(exposure_bytes(plan, Geometry(1, 256, 320)))
    st = path.stat()
    eid = exposure_id_from_path(path)
    ledgers = [Ledger(out / "ledger.sqlite")]
    entry, _ = ledgers[0].observe(eid, str(path), st.st_size, st.st_mtime_ns, ready_at=1.0)
    for kill in range(3):  # claimed, then the daemon is killed (the ledger is never closed)
        if kill:
            ledgers.append(Ledger(out / "ledger.sqlite"))
            ledgers[-1].recover()
        assert ledgers[-1].claim(entry.key) is not None
    daemon = Daemon(drop, out, bundle, cfg)
    daemon.start()
    try:
        assert wait_for(lambda: daemon.ledger.get(entry.key).done, timeout=40)
        final = daemon.ledger.get(entry.key)
    finally:
        daemon.stop(timeout=30)
        for led in ledgers:
            led.close()
    assert (final.state, final.reason, final.failures) == ("graded", None, 0)
    assert final.interruptions == 3


def _get(daemon, path):
    """(status, body) of a GET on the daemon's server; a 503 is an answer, not an error."""
    import urllib.error

    url = f"http://127.0.0.1:{daemon.server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_healthz_is_503_with_the_reason_while_no_grade_can_be_written(
    bundle, tmp_path, daemon_config, wait_for
):
    """Issue 21, item 7: /healthz said ok while every write failed. It is 503 with the reason
    until the output is repaired; the failed writes and the age of the oldest waiting exposure
    are metrics."""
    import json

    drop, out = tmp_path / "drop", tmp_path / "grades"
    night = drop / "2026-11-24"
    night.mkdir(parents=True)
    out.mkdir()
    blocker = out / "exposures"  # a file where the dataset's directory goes: nothing writes
    blocker.write_text("not a directory\n")
    plan = plan_night("2026-11-24", 1, seed=37, class_mix={"GOOD": 1})[0]
    daemon = Daemon(drop, out, bundle, _config(daemon_config, retry_s=0.3))
    daemon.start()
    try:
        (night / plan.filename).write_bytes(exposure_bytes(plan, Geometry(1, 256, 320)))
        output_failed = 'skygrade_write_failures_total{kind="output"}'
        assert wait_for(
            lambda: (metric_sample(_get(daemon, "/metrics")[1], output_failed) or 0) >= 1
        )
        status, body = _get(daemon, "/healthz")
        metrics = _get(daemon, "/metrics")[1]
        blocker.unlink()
        assert wait_for(lambda: daemon.ledger.counts()["graded"] == 1, timeout=30)
        assert wait_for(lambda: _get(daemon, "/healthz")[0] == 200, timeout=10)
        after = _get(daemon, "/metrics")[1]
    finally:
        daemon.stop(timeout=30)
    assert status == 503, body
    doc = json.loads(body)
    assert doc["ok"] is False
    assert [p for p in doc["problems"] if p.startswith(f"cannot write grades into {out}")], doc
    assert metric_sample(metrics, "skygrade_oldest_pending_age_seconds") > 0
    assert metric_sample(metrics, 'skygrade_write_failures_total{kind="exposure"}') == 0
    assert metric_sample(after, "skygrade_oldest_pending_age_seconds") == 0


def test_healthz_is_503_while_an_exposure_keeps_failing(bundle, tmp_path, daemon_config, wait_for):
    """Issue 21, item 7: an exposure that loops (fails again and again) shows in /healthz."""
    import json

    cfg = _config(daemon_config, retry_s=0.3, max_attempts=50)
    drop, out = tmp_path / "drop", tmp_path / "grades"
    night = drop / "2026-11-24"
    night.mkdir(parents=True)
    plan = plan_night("2026-11-24", 1, seed=38, class_mix={"GOOD": 1})[0]
    daemon = Daemon(drop, out, bundle, cfg)
    daemon.start()
    try:
        _blocked(night, out, plan, exposure_bytes(plan, Geometry(1, 256, 320)), "daemon-test")
        assert wait_for(lambda: _get(daemon, "/healthz")[0] == 503, timeout=30)
        doc = json.loads(_get(daemon, "/healthz")[1])
        metrics = _get(daemon, "/metrics")[1]
    finally:
        daemon.stop(timeout=30)
    (problem,) = doc["problems"]
    assert problem.startswith(f"exposure {plan.filename[:7]} (") and "IsADirectoryError" in problem
    assert metric_sample(metrics, 'skygrade_write_failures_total{kind="exposure"}') >= 2


def test_healthz_is_503_while_the_bundle_cannot_be_loaded(
    bundle, tmp_path, daemon_config, wait_for
):
    """Issue 21, item 7: a bundle rewritten in place with bad weights (nothing to fall back
    on) stops grading: /healthz says so until it is repaired, and no exposure is blamed."""
    import json
    import os
    import shutil

    own = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    good_weights = (own / "cnn.pt").read_bytes()
    drop, out = tmp_path / "drop", tmp_path / "grades"
    night = drop / "2026-11-24"
    night.mkdir(parents=True)
    plan = plan_night("2026-11-24", 1, seed=39, class_mix={"GOOD": 1})[0]
    daemon = Daemon(drop, out, own, daemon_config)
    daemon.start()

    def touch_manifest():
        st = (own / "manifest.json").stat()
        os.utime(own / "manifest.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    try:
        (own / "cnn.pt").write_bytes(b"not a torch file " * 64)
        touch_manifest()
        (night / plan.filename).write_bytes(exposure_bytes(plan, Geometry(1, 256, 320)))
        assert wait_for(lambda: _get(daemon, "/healthz")[0] == 503, timeout=30)
        doc = json.loads(_get(daemon, "/healthz")[1])
        (own / "cnn.pt").write_bytes(good_weights)
        touch_manifest()
        assert wait_for(lambda: daemon.ledger.counts()["graded"] == 1, timeout=30)
        entry = daemon.ledger.latest(plan.filename[:7])
        assert wait_for(lambda: _get(daemon, "/healthz")[0] == 200, timeout=10)
    finally:
        daemon.stop(timeout=30)
    (problem,) = doc["problems"]
    assert problem.startswith(f"model bundle {own} cannot be loaded: "), problem
    assert entry.failures == 0


def test_a_truncated_file_completed_later_has_one_row_in_the_night_of_its_date_obs(
    bundle, tmp_path, daemon_config, wait_for
):
    """Issue 21, item 5: a file quarantined as truncated (no DATE-OBS read: filed under the
    night of its arrival) and completed later was graded under the night of its DATE-OBS and
    kept both rows. The later outcome replaces the earlier one: one row, one night, everywhere
    (GradesDataset.read, the report, the observer's /api/nights)."""
    import json

    cfg = _config(daemon_config, incomplete_timeout_s=0.5)
    drop, out = tmp_path / "drop", tmp_path / "grades"
    drop.mkdir()  # no night folder: the quarantine row takes the night of arrival
    plan = plan_night("2026-11-24", 1, seed=41, class_mix={"GOOD": 1})[0]
    plan = dataclasses.replace(plan, exptime=300.0)  # enough clean sources on a tiny CCD
    data = exposure_bytes(plan, Geometry(1, 256, 320))
    eid = plan.filename[:7]
    daemon = Daemon(drop, out, bundle, cfg)
    daemon.start()
    try:
        (drop / plan.filename).write_bytes(data[: len(data) // 2])
        assert wait_for(lambda: daemon.ledger.counts()["quarantined"] == 1, timeout=30)
        (first,) = GradesDataset(out).read().to_pylist()
        assert first["status"] == "quarantined" and first["reason"].startswith("truncated")
        assert first["night"] != "2026-11-24"
        (drop / plan.filename).write_bytes(data)  # the rest of the copy arrives
        assert wait_for(lambda: daemon.ledger.counts()["graded"] == 1, timeout=30)
        status, body = _get(daemon, "/api/nights")
    finally:
        daemon.stop(timeout=30)
    rows = [r for r in GradesDataset(out).read().to_pylist() if r["exposure_id"] == eid]
    assert [(r["night"], r["status"]) for r in rows] == [("2026-11-24", "graded")]
    assert GradesDataset(out).nights() == ["2026-11-24"]
    assert status == 200 and json.loads(body)["nights"] == ["2026-11-24"], body
