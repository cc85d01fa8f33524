"""The dataset holds one row per exposure and model version, whichever night it was filed under
(issue 21 item 5)."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from streamer.report import night_rows, nights
from transforms import sinks
from transforms.sinks import read_grades, write_grade_rows

ARRIVAL, DATE_OBS = "2026-12-01", "2026-11-24"


def _row(exposure_id, night, status, version="v1"):
    return {
        "exposure_id": exposure_id,
        "night": night,
        "path": f"/drop/{exposure_id}o.fits",
        "status": status,
        "reason": "truncated: 1000 of 2000 bytes" if status == "quarantined" else None,
        "model_version": version,
        "graded_at": 1.0 if status == "quarantined" else 2.0,
    }


def _ccd(exposure_id, night, version="v1"):
    base = {"exposure_id": exposure_id, "night": night, "model_version": version}
    return {**base, "ccd": 0, "status": "graded", "image": np.zeros((4, 4), np.float32)}


def _outcomes(out):
    """(exposure_id, model_version, night, status) of every exposure row in the dataset."""
    return sorted(
        (r["exposure_id"], r["model_version"], r["night"], r["status"])
        for r in read_grades(out).to_pylist()
    )


def test_a_later_outcome_in_another_night_replaces_the_earlier_one(tmp_path):
    out = tmp_path / "grades"
    write_grade_rows(out, _row("2817001", ARRIVAL, "quarantined"), [])
    # beside it, in the arrival night: another exposure, and the same one with another model
    write_grade_rows(out, _row("2817002", ARRIVAL, "quarantined"), [])
    write_grade_rows(
        out, _row("2817001", ARRIVAL, "graded", "v0"), [_ccd("2817001", ARRIVAL, "v0")]
    )
    assert len(_outcomes(out)) == 3

    write_grade_rows(out, _row("2817001", DATE_OBS, "graded"), [_ccd("2817001", DATE_OBS)])

    assert _outcomes(out) == [
        ("2817001", "v0", ARRIVAL, "graded"),
        ("2817001", "v1", DATE_OBS, "graded"),
        ("2817002", "v1", ARRIVAL, "quarantined"),
    ]
    ccds = sorted(
        (r["exposure_id"], r["model_version"]) for r in read_grades(out, "ccds").to_pylist()
    )
    assert ccds == [("2817001", "v0"), ("2817001", "v1")]
    images = sorted(p.relative_to(out).as_posix() for p in out.glob("images/*/*.npz"))
    assert images == [
        f"images/night={DATE_OBS}/2817001.v1.npz",
        f"images/night={ARRIVAL}/2817001.v0.npz",
    ]
    # the night report reads what read_grades reads
    assert [r["status"] for r in night_rows(out, DATE_OBS)] == ["graded"]
    assert sorted(r["exposure_id"] for r in night_rows(out, ARRIVAL)) == ["2817001", "2817002"]


def test_a_night_left_empty_is_no_longer_listed(tmp_path):
    out = tmp_path / "grades"
    write_grade_rows(out, _row("2817003", ARRIVAL, "quarantined"), [])
    assert nights(out) == [ARRIVAL]
    write_grade_rows(out, _row("2817003", DATE_OBS, "graded"), [_ccd("2817003", DATE_OBS)])
    assert nights(out) == [DATE_OBS]
    assert not (out / "ccds" / f"night={ARRIVAL}").exists()
    assert _outcomes(out) == [("2817003", "v1", DATE_OBS, "graded")]


def test_a_crash_before_the_removal_leaves_a_row_and_the_rewrite_finishes_it(tmp_path, monkeypatch):
    """The new outcome is committed before the old one goes: a crash in between leaves both,
    never none, and writing the exposure again (the daemon's regrade after the crash) removes
    the old one."""
    out = tmp_path / "grades"
    write_grade_rows(out, _row("2817004", ARRIVAL, "quarantined"), [])

    def crash(*_):
        raise KeyboardInterrupt  # the daemon dies right after the new file is committed

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(sinks, "remove_other_nights", crash)
        write_grade_rows(out, _row("2817004", DATE_OBS, "graded"), [_ccd("2817004", DATE_OBS)])
    assert [o[2:] for o in _outcomes(out)] == [(DATE_OBS, "graded"), (ARRIVAL, "quarantined")]
    write_grade_rows(out, _row("2817004", DATE_OBS, "graded"), [_ccd("2817004", DATE_OBS)])
    assert _outcomes(out) == [("2817004", "v1", DATE_OBS, "graded")]
    (file,) = out.glob("exposures/*/*.parquet")
    assert pq.read_table(file).num_rows == 1
