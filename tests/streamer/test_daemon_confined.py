"""The daemon under hostile input: it reads only files inside its drop directory, however the
names change meanwhile, grades a file once whatever its names or the way it was copied, and
bounds its HTTP clients as configured (issue 21, items 4, 9, 10, 12)."""

import pytest

from skygrade.streamer.daemon import Daemon
from skygrade.streamer.ledger import Ledger
from skygrade.streamer.sky_fits import exposure_bytes
from skygrade.streamer.sky_plan import Geometry, plan_night
from skygrade.transforms.grades_dataset import GradesDataset
from tests.helpers.daemon_process import metric_total

NIGHT = "2026-11-24"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bundle):
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "b", "confined-test")


def test_a_night_folder_swapped_for_a_symlink_after_the_check_is_never_read(
    bundle, tmp_path, daemon_config, wait_for, monkeypatch
):
    """Issue 21, item 9: the watcher checked drop/NIGHT/x.fits, then (here: as the grader
    claimed it) the night folder was swapped for a symlink to a folder outside the drop holding
    another x.fits, and the grader, which reopened the path by name, graded that one. Now it
    opens the path once, following no symlink below the drop, and quarantines it as
    outside_drop, unread."""
    drop, out, outside = tmp_path / "drop", tmp_path / "grades", tmp_path / "elsewhere"
    night = drop / NIGHT
    night.mkdir(parents=True)
    outside.mkdir()
    mine, secret = plan_night(NIGHT, 2, seed=21, class_mix={"GOOD": 1})
    (outside / mine.filename).write_bytes(exposure_bytes(secret, Geometry(1, 256, 320)))
    real_claim = Ledger.claim
    swapped = []

    def claim(self, key):
        entry = real_claim(self, key)
        if entry is not None and not swapped:  # checked, and now the grader's: swap
            night.rename(drop / f".{NIGHT}.old")
            night.symlink_to(outside, target_is_directory=True)
            swapped.append(entry.path)
        return entry

    monkeypatch.setattr(Ledger, "claim", claim)
    daemon = Daemon(drop, out, bundle, daemon_config)
    daemon.start()
    try:
        (night / mine.filename).write_bytes(exposure_bytes(mine, Geometry(1, 256, 320)))
        assert wait_for(
            lambda: sum(daemon.ledger.counts().get(s, 0) for s in ("graded", "quarantined")) >= 1
        )
        counts = daemon.ledger.counts()
    finally:
        daemon.stop(timeout=30)
    assert swapped == [str(night / mine.filename)]
    rows = GradesDataset(out).read().to_pylist()
    # The secret exposure was never read: no row of it (before, it was graded).
    assert [r["exposure_id"] for r in rows] == [str(mine.expnum)]
    (row,) = rows
    assert row["status"] == "quarantined" and row["reason"].startswith("outside_drop: "), row
    assert counts.get("graded", 0) == 0


def test_links_and_a_preallocated_copy_are_graded_once_each(
    bundle, tmp_path, daemon_config, wait_for
):
    """Issue 21, items 4 and 10, end to end: a file with a symlink and a hard link to it in the
    drop, and a copy into preallocated space that pauses twice in its last CCD, are two
    exposures: two grades in the metrics and two rows (before: the links graded the first
    one up to three times, and the copy was graded at each pause, on partial data)."""
    import os
    import time
    import urllib.request

    from skygrade.transforms.fits_walk import check_integrity

    drop, out = tmp_path / "drop", tmp_path / "grades"
    night = drop / NIGHT
    night.mkdir(parents=True)
    first, second = plan_night(NIGHT, 2, seed=22, class_mix={"GOOD": 1})
    geometry = Geometry(1, 256, 320)
    daemon = Daemon(drop, out, bundle, daemon_config)
    daemon.start()
    try:
        target = night / first.filename
        target.write_bytes(exposure_bytes(first, geometry))
        (drop / first.filename).symlink_to(target)
        os.link(target, drop / f"copy-{first.filename}")
        data = exposure_bytes(second, geometry)
        (tmp_path / "layout.fits").write_bytes(data)  # outside the drop: to learn its layout
        last = check_integrity(tmp_path / "layout.fits").hdus[-1]
        path = night / second.filename
        stops = [last.data_offset + last.data_bytes // 3, last.data_offset + last.data_bytes // 2]
        with open(path, "wb") as fh:
            fh.truncate(len(data))  # the space reserved first
        with open(path, "r+b") as fh:
            pos = 0
            for stop in [*stops, len(data)]:
                fh.write(data[pos:stop])
                fh.flush()
                pos = stop
                time.sleep(4 * daemon_config.watch.settle_s)
        assert wait_for(lambda: daemon.ledger.counts().get("graded", 0) >= 2)
        time.sleep(1.0)  # time for a second grade of either, had one been coming
        base = f"http://127.0.0.1:{daemon.server.port}"
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        counts = daemon.ledger.counts()
    finally:
        daemon.stop(timeout=30)
    assert metric_total(metrics, "skygrade_exposures_graded_total") == 2.0, counts
    rows = GradesDataset(out).read().to_pylist()
    assert sorted(r["exposure_id"] for r in rows) == sorted([str(first.expnum), str(second.expnum)])
    assert all(r["status"] == "graded" for r in rows)


def test_the_http_bounds_come_from_the_config(bundle, tmp_path, daemon_config):
    """metrics.request_timeout_s and metrics.max_connections reach the daemon's server (issue
    21, item 12)."""
    import dataclasses

    from skygrade.ops.config_daemon import MetricsConfig

    cfg = dataclasses.replace(
        daemon_config, metrics=MetricsConfig(port=0, request_timeout_s=3.5, max_connections=5)
    )
    (tmp_path / "drop").mkdir()
    daemon = Daemon(tmp_path / "drop", tmp_path / "grades", bundle, cfg)
    daemon.start()
    try:
        assert (daemon.server.request_timeout_s, daemon.server.max_connections) == (3.5, 5)
    finally:
        daemon.stop(timeout=30)
