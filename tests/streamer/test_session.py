"""The daemon's grading session (issue 23 items 4 and 9): the pipeline is built once, run per
exposure, and hands back the rows it wrote, which are the rows on disk."""

import pytest

from skygrade.ops.config import Config
from skygrade.streamer.session import GradingSession
from skygrade.streamer.sky_fits import write_exposure
from skygrade.streamer.sky_plan import Geometry, plan_night
from skygrade.transforms.grades_dataset import GradesDataset

NIGHT = "2026-11-24"
KEYS = ("exposure_id", "night", "path", "status", "grade", "confidence", "model_version")
KEYS += ("arrived_at", "graded_at", "latency_s", "reason", "n_ccd_graded")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bundle):
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "b", "session-test")


def test_a_session_hands_back_the_rows_it_wrote_run_after_run(bundle, tmp_path):
    drop, out = tmp_path / "drop", tmp_path / "grades"
    plans = plan_night(NIGHT, 2, seed=9, class_mix={"GOOD": 1})
    paths = [str(write_exposure(p, Geometry(1, 256, 320), drop / p.filename)) for p in plans]
    bad = drop / "2899999o.fits"
    bad.write_bytes(b"garbage " * 400)
    session = GradingSession(out, bundle, Config(), ccd_workers=0)
    first = session.grade([paths[0], str(bad)], {paths[0]: 1.0e9, str(bad): 1.0e9})
    second = session.grade([paths[1]])
    assert session.runs == 2  # the second run reused the first one's pipeline
    assert [r["exposure_id"] for r in first] == sorted(r["exposure_id"] for r in first)
    status = {r["path"]: r["status"] for r in first}
    assert status == {paths[0]: "graded", str(bad): "quarantined"}
    first = sorted(first, key=lambda r: r["status"])  # graded, then quarantined
    assert first[1]["reason"].startswith("not_fits")
    assert [(r["path"], r["status"]) for r in second] == [(paths[1], "graded")]
    # what came back is what was written, and only what this run wrote
    data = GradesDataset(out)
    for row in (*first, *second):
        (on_disk,) = data.rows_of(row["exposure_id"], "session-test")
        assert {k: on_disk[k] for k in KEYS} == {k: row[k] for k in KEYS}
        assert set(row) == set(on_disk)
    assert first[0]["latency_s"] is not None and second[0]["latency_s"] is None
