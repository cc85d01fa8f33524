"""The daemon reads only files inside its drop directory, however the names change meanwhile."""

import pytest

from streamer.daemon import Daemon
from streamer.ledger import Ledger
from streamer.telescope import Geometry, exposure_bytes, plan_night
from transforms.sinks import read_grades

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
    rows = read_grades(out).to_pylist()
    # The secret exposure was never read: no row of it (before, it was graded).
    assert [r["exposure_id"] for r in rows] == [str(mine.expnum)]
    (row,) = rows
    assert row["status"] == "quarantined" and row["reason"].startswith("outside_drop: "), row
    assert counts.get("graded", 0) == 0
