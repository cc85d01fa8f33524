"""The dead-letter record: every exposure or CCD that cannot be graded, and why.

Bad input never kills a pipeline and never vanishes: a stage that cannot process an element
emits a :class:`Quarantined` on its ``quarantine`` output instead.
"""

from __future__ import annotations

from typing import NamedTuple

QUARANTINE = "quarantine"
"""Name of the tagged dead-letter output of every stage."""


class Quarantined(NamedTuple):
    """One exposure (``ccd is None``) or one CCD that was set aside."""

    exposure_id: str
    path: str
    ccd: int | None
    stage: str
    """Pipeline stage that refused it ("open", "extract", ...)."""
    reason: str
    """Short machine-friendly slug ("truncated", "all_zero", ...), usable as a metric label."""
    detail: str
    """Human explanation naming the file, HDU and problem."""

    @property
    def is_exposure(self) -> bool:
        return self.ccd is None
