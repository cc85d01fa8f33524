"""The Beam sink of the grading pipeline: each exposure's rows into the grades dataset.

The dataset's layout and format are :mod:`skygrade.transforms.grades_dataset`'s; this module only
wraps its writer in a DoFn.
"""

from __future__ import annotations

import os

import apache_beam as beam

from skygrade.transforms.grades_dataset import GradesDataset


class _WriteGrades(beam.DoFn):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def setup(self) -> None:
        self.dataset = GradesDataset(self.out_dir)

    def process(self, item):
        row, ccd_rows = item
        self.dataset.write(row, ccd_rows)
        yield row


class WriteGrades(beam.PTransform):
    """``(exposure_row, ccd_rows)`` -> the grades dataset under ``out_dir``; yields the exposure
    rows written."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        super().__init__()
        self.out_dir = os.fspath(out_dir)

    def expand(self, graded):
        return graded | "WriteParquet" >> beam.ParDo(_WriteGrades(self.out_dir))
