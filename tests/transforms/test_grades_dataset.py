"""The grades dataset: its layout (one place knows it, issue 23 item 3), and one row per exposure
and model version, whichever night it was filed under (issue 21 item 5)."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from skygrade.streamer.report import night_rows
from skygrade.transforms.grades_dataset import GradesDataset

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
        for r in GradesDataset(out).read().to_pylist()
    )


def test_a_later_outcome_in_another_night_replaces_the_earlier_one(tmp_path):
    out = tmp_path / "grades"
    GradesDataset(out).write(_row("2817001", ARRIVAL, "quarantined"), [])
    # beside it, in the arrival night: another exposure, and the same one with another model
    GradesDataset(out).write(_row("2817002", ARRIVAL, "quarantined"), [])
    GradesDataset(out).write(
        _row("2817001", ARRIVAL, "graded", "v0"), [_ccd("2817001", ARRIVAL, "v0")]
    )
    assert len(_outcomes(out)) == 3

    GradesDataset(out).write(_row("2817001", DATE_OBS, "graded"), [_ccd("2817001", DATE_OBS)])

    assert _outcomes(out) == [
        ("2817001", "v0", ARRIVAL, "graded"),
        ("2817001", "v1", DATE_OBS, "graded"),
        ("2817002", "v1", ARRIVAL, "quarantined"),
    ]
    ccds = sorted(
        (r["exposure_id"], r["model_version"]) for r in GradesDataset(out).read("ccds").to_pylist()
    )
    assert ccds == [("2817001", "v0"), ("2817001", "v1")]
    images = sorted(p.relative_to(out).as_posix() for p in out.glob("images/*/*.npz"))
    assert images == [
        f"images/night={DATE_OBS}/2817001.v1.npz",
        f"images/night={ARRIVAL}/2817001.v0.npz",
    ]
    # the night report reads what GradesDataset.read reads
    assert [r["status"] for r in night_rows(out, DATE_OBS)] == ["graded"]
    assert sorted(r["exposure_id"] for r in night_rows(out, ARRIVAL)) == ["2817001", "2817002"]


def test_a_night_left_empty_is_no_longer_listed(tmp_path):
    out = tmp_path / "grades"
    GradesDataset(out).write(_row("2817003", ARRIVAL, "quarantined"), [])
    assert GradesDataset(out).nights() == [ARRIVAL]
    GradesDataset(out).write(_row("2817003", DATE_OBS, "graded"), [_ccd("2817003", DATE_OBS)])
    assert GradesDataset(out).nights() == [DATE_OBS]
    assert not (out / "ccds" / f"night={ARRIVAL}").exists()
    assert _outcomes(out) == [("2817003", "v1", DATE_OBS, "graded")]


def test_a_crash_before_the_removal_leaves_a_row_and_the_rewrite_finishes_it(tmp_path, monkeypatch):
    """The new outcome is committed before the old one goes: a crash in between leaves both,
    never none, and writing the exposure again (the daemon's regrade after the crash) removes
    the old one."""
    out = tmp_path / "grades"
    GradesDataset(out).write(_row("2817004", ARRIVAL, "quarantined"), [])

    def crash(*_):
        raise KeyboardInterrupt  # the daemon dies right after the new file is committed

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(GradesDataset, "remove_other_nights", crash)
        GradesDataset(out).write(_row("2817004", DATE_OBS, "graded"), [_ccd("2817004", DATE_OBS)])
    assert [o[2:] for o in _outcomes(out)] == [(DATE_OBS, "graded"), (ARRIVAL, "quarantined")]
    GradesDataset(out).write(_row("2817004", DATE_OBS, "graded"), [_ccd("2817004", DATE_OBS)])
    assert _outcomes(out) == [("2817004", "v1", DATE_OBS, "graded")]
    (file,) = out.glob("exposures/*/*.parquet")
    assert pq.read_table(file).num_rows == 1


def test_the_layout_is_named_in_one_place(tmp_path):
    data = GradesDataset(tmp_path)
    exp, ccd = data.paths("2026-11-24", "2817001", "2026.12.02-152407")
    assert exp == tmp_path / "exposures/night=2026-11-24/2817001.2026.12.02-152407.parquet"
    assert ccd == tmp_path / "ccds/night=2026-11-24/2817001.2026.12.02-152407.parquet"
    assert data.ccds_file(exp) == ccd
    assert (
        data.images_file(exp) == tmp_path / "images/night=2026-11-24/2817001.2026.12.02-152407.npz"
    )
    assert data.partition("2026-11-24", "images") == tmp_path / "images/night=2026-11-24"
    with pytest.raises(ValueError, match="tree must be one of"):
        data.partition("2026-11-24", "exposure")


def test_nights_and_files_skip_what_is_not_a_partition_or_a_finished_file(tmp_path):
    data = GradesDataset(tmp_path)
    assert data.nights() == [] and not data.has_exposures()
    assert data.read().num_rows == 0 and "grade" in data.read().column_names
    data.write(_row("2817001", DATE_OBS, "graded"), [_ccd("2817001", DATE_OBS)])
    data.write(_row("2817002", ARRIVAL, "graded"), [])
    (tmp_path / "exposures" / "README").write_text("not a night")
    (tmp_path / "exposures" / "night=2026-12-09").write_text("a file, not a folder")
    tmp = data.partition(ARRIVAL) / ".2817003.v1.parquet.tmp-1"
    tmp.write_bytes(b"half a file")  # an atomic write in progress
    assert data.nights() == [DATE_OBS, ARRIVAL]
    assert [f.name for f in data.exposure_files(ARRIVAL)] == ["2817002.v1.parquet"]
    assert len(data.exposure_files()) == 2
    assert [r["night"] for r in data.night_rows(DATE_OBS)] == [DATE_OBS]


def test_rows_of_one_exposure_are_found_by_name_in_any_night(tmp_path):
    data = GradesDataset(tmp_path)
    data.write(_row("2817001", DATE_OBS, "graded"), [])
    data.write(_row("2817001", ARRIVAL, "graded", "v2"), [])
    data.write(_row("28170011", ARRIVAL, "graded"), [])  # a longer id is another exposure
    (row,) = data.rows_of("2817001", "v1")
    assert (row["night"], row["model_version"]) == (DATE_OBS, "v1")
    assert [r["night"] for r in data.rows_of("2817001", "v2")] == [ARRIVAL]
    assert data.rows_of("2817001", "v3") == []
