"""The Beam sink: each (exposure row, CCD rows) pair written to the grades dataset, the row
handed on."""

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from skygrade.transforms.grades_dataset import GradesDataset
from skygrade.transforms.sinks import WriteGrades

NIGHT = "2026-11-24"


def _pair(exposure_id, n_ccd):
    row = {
        "exposure_id": exposure_id,
        "night": NIGHT,
        "path": f"/drop/{exposure_id}o.fits",
        "status": "graded",
        "grade": "GOOD",
        "model_version": "v1",
    }
    ccds = [
        {"exposure_id": exposure_id, "night": NIGHT, "ccd": k, "status": "graded"}
        for k in range(n_ccd)
    ]
    return row, ccds


def test_write_grades_writes_every_exposure_and_yields_its_row(tmp_path):
    pairs = [_pair("2817001", 2), _pair("2817002", 3)]
    with test_pipeline.TestPipeline("DirectRunner") as p:
        written = (
            p
            | beam.Create(pairs)
            | WriteGrades(tmp_path)
            | beam.Map(lambda r: (r["exposure_id"], r["status"]))
        )
        assert_that(written, equal_to([("2817001", "graded"), ("2817002", "graded")]))
    data = GradesDataset(tmp_path)
    assert sorted(data.read().column("exposure_id").to_pylist()) == ["2817001", "2817002"]
    ccds = data.read("ccds").to_pylist()
    assert sorted((c["exposure_id"], c["ccd"]) for c in ccds) == [
        ("2817001", 0),
        ("2817001", 1),
        ("2817002", 0),
        ("2817002", 1),
        ("2817002", 2),
    ]
