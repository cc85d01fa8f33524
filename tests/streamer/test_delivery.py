"""The telescope's progressive writes against the extraction's integrity walk."""

import pytest

from skygrade.streamer.sky_fits import exposure_bytes
from skygrade.streamer.sky_plan import Geometry, plan_night
from skygrade.streamer.telescope import write_progressively
from skygrade.transforms.exposure import read_meta
from skygrade.transforms.exposure_errors import IncompleteFileError
from skygrade.transforms.fits_walk import check_integrity


def test_progressively_written_file_is_valid_only_once_complete(tmp_path):
    plan = plan_night("2026-11-24", 1, seed=5, class_mix={"GOOD": 1})[0]
    data = exposure_bytes(plan, Geometry(3, 128, 192))
    path = tmp_path / plan.filename
    verdicts = []

    def on_chunk(i, n):
        if i < n:
            with pytest.raises(IncompleteFileError):
                check_integrity(path)
            verdicts.append("incomplete")
        else:
            check_integrity(path)
            verdicts.append("complete")

    write_progressively(data, path, chunks=7, duration_s=0.0, on_chunk=on_chunk)
    assert verdicts == ["incomplete"] * 6 + ["complete"]
    assert read_meta(path).exposure_id == plan.exposure_id
