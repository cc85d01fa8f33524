"""``GradeExposures``: exposure paths in, exposure and CCD grade rows out (and quarantine).

The one composite transform that the daemon, ``skygrade grade`` and the backfill share::

    paths ─ OpenExposures ─ MeasureExposures ─ ScoreExposures ─ GradeExposure ─┐
              └ quarantine (files) ──────────────────────────── GradeRefused ──┴─ rows

Each CCD goes through the per-CCD chain (:func:`skygrade.transforms.ccd_chain.measure_ccd`:
extraction, hits and cutouts in one call, so the pixels read for extraction are reused for the
cutouts and dropped before anything is serialised).
:class:`~skygrade.transforms.stages.MeasureExposures` runs it either in a Beam stage per CCD,
gathered again by exposure (no ``ccd_pool``: batch runs on any runner), or in a process pool that
outlives the pipeline, element by element with no shuffle (``ccd_pool``, from
:func:`skygrade.streamer.ccd_pool.pooled`: the daemon). Either way each exposure comes back as one
element, whose CCDs are scored as one batch and graded. Rows are plain dicts with the parquet schema
of :mod:`skygrade.transforms.grades_dataset`.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import apache_beam as beam

from skygrade.models.bundle import read_manifest
from skygrade.models.classes import CLASSES
from skygrade.transforms.exposure import NIGHT_PATTERN, observing_night
from skygrade.transforms.grade import CcdScore, grade_exposure, physics_columns
from skygrade.transforms.psf_measure import ExposurePhysics
from skygrade.transforms.quarantine import QUARANTINE, Quarantined
from skygrade.transforms.score import ScoreExposures
from skygrade.transforms.stages import EXPOSURES, CcdPool, MeasureExposures, OpenExposures

STAGES = ("extract", "som", "representative", "score")


def _night_of(path: str, fallback_time: float | None) -> str:
    """Night of a file whose header could not be read: its YYYY-MM-DD folder, else the
    observing night of its arrival (or of now)."""
    parent = Path(path).parent.name
    if NIGHT_PATTERN.match(parent):
        return parent
    when = dt.datetime.fromtimestamp(fallback_time or time.time(), dt.UTC)
    return observing_night(when)


def exposure_row(
    exposure_id: str,
    meta,
    scores: list[CcdScore],
    bad: list[Quarantined],
    model_version: str,
    config_digest: str,
    arrived_at: float | None,
) -> tuple[dict, list[dict]]:
    """The exposure row and its CCD rows (columns: ``EXPOSURE_SCHEMA`` and ``CCD_SCHEMA`` of
    :mod:`skygrade.transforms.grades_dataset`)."""
    now = time.time()
    if meta is None:  # refused when opened: the first (exposure-level) quarantine record
        q = next(b for b in bad if b.ccd is None)
        row = _base_row(
            exposure_id,
            q.path,
            _night_of(q.path, arrived_at),
            model_version,
            config_digest,
            arrived_at,
            now,
        )
        row.update(status="quarantined", reason=f"{q.reason}: {q.detail}", n_ccd=0)
        return row, []
    ccd_bad = {b.ccd: b for b in bad if b.ccd is not None}
    unscored = [
        CcdScore(exposure_id, b.ccd, None, reason=f"{b.reason}: {b.detail}", n_ccd=meta.n_ccd)
        for b in ccd_bad.values()
    ]
    all_ccds = sorted(scores + unscored, key=lambda c: c.ccd)
    g = grade_exposure(exposure_id, meta.n_ccd, all_ccds, airmass=meta.airmass)
    row = _base_row(
        exposure_id,
        meta.path,
        meta.night or _night_of(meta.path, arrived_at),
        model_version,
        config_digest,
        arrived_at,
        now,
    )
    row.update(
        grade=g.grade,
        confidence=g.confidence,
        ood_score=float(g.ood) if math.isfinite(g.ood) else None,
        n_ccd=g.n_ccd,
        n_ccd_graded=g.n_ccd_graded,
        n_sources=g.n_sources,
        median_elongation=g.median_elongation,
        median_iso0=g.median_iso0,
        median_background=g.median_background,
        status=g.status,
        reason=g.reason,
        exptime=float(meta.exptime),
        filter=meta.filter,
        object=meta.object,
        date_obs=meta.date_obs.isoformat() if meta.date_obs else None,
    )
    row.update(physics_columns(g.physics))
    for i, c in enumerate(CLASSES):
        row[f"p_{c}"] = None if g.probs is None else float(g.probs[i])
    for stage in STAGES:
        row[f"{stage}_s"] = float(sum(s.stage_s.get(stage, 0.0) for s in scores))
    ccd_rows = [_ccd_row(row, s, ccd_bad.get(s.ccd)) for s in all_ccds]
    return row, ccd_rows


def _base_row(exposure_id, path, night, model_version, config_digest, arrived_at, now) -> dict:
    row = {
        "exposure_id": exposure_id,
        "night": night,
        "path": str(path),
        "grade": None,
        "confidence": 0.0,
        "n_ccd": 0,
        "n_ccd_graded": 0,
        "n_sources": 0,
        "median_elongation": float("nan"),
        "median_iso0": float("nan"),
        "median_background": float("nan"),
        "model_version": model_version,
        "config_digest": config_digest,
        "arrived_at": arrived_at,
        "graded_at": now,
        "latency_s": None if arrived_at is None else now - arrived_at,
        "status": "quarantined",
        "reason": "",
        "exptime": None,
        "filter": None,
        "object": None,
        "date_obs": None,
    }
    row.update({f"p_{c}": None for c in CLASSES})
    row.update({f"{stage}_s": 0.0 for stage in STAGES})
    row.update(physics_columns(ExposurePhysics()))
    return row


def _ccd_row(exposure: dict, s: CcdScore, bad: Quarantined | None) -> dict:
    """One CCD row of the parquet schema, plus ``image``: the representative image (or None),
    which is not a parquet column; the sink stores it beside the rows (``images/``)."""
    status = "graded" if s.probs is not None else ("quarantined" if bad else "not_graded")
    row = {
        "exposure_id": exposure["exposure_id"],
        "night": exposure["night"],
        "ccd": int(s.ccd),
        "grade": s.grade,
        "hits": None if s.hits is None else [int(h) for h in s.hits],
        "n_sources": int(s.n_sources),
        "median_elongation": float(s.median_elongation),
        "median_iso0": float(s.median_iso0),
        "median_background": float(s.median_background),
        "ood_score": float(s.ood) if math.isfinite(s.ood) else None,
        "status": status,
        "reason": s.reason,
        "model_version": exposure["model_version"],
        "image": s.image,
        **physics_columns(s.physics),
    }
    for i, c in enumerate(CLASSES):
        row[f"p_{c}"] = None if s.probs is None else float(s.probs[i])
    return row


class GradeExposures(beam.PTransform):
    """Exposure paths -> ``(exposure_row, [ccd_rows])`` per exposure, graded or quarantined.

    Parameters
    ----------
    bundle_path : path-like
        Model bundle (SOM + CNN + manifest).
    extract : ExtractConfig
        Extraction settings (backend, thresholds).
    config_digest : str
        Digest of the configuration, recorded on every row.
    arrivals : mapping of path -> epoch seconds, optional
        When each file was complete at the drop (the daemon knows); gives ``latency_s``.
    torch_threads : int or None
        Torch threads per worker process.
    ccd_pool : CcdPool or None
        None (default): CCDs are spread by Beam (a Reshuffle), which suits batch runs on any
        runner. A pool (:func:`skygrade.streamer.ccd_pool.pooled`): each exposure's CCDs run in its
        processes, which live as long as this process, which suits the daemon's one-exposure
        pipelines on the in-process runner.
    """

    def __init__(
        self,
        bundle_path: str | os.PathLike,
        extract,
        config_digest: str = "",
        arrivals: Mapping[str, float] | None = None,
        torch_threads: int | None = 1,
        ccd_pool: CcdPool | None = None,
    ) -> None:
        super().__init__()
        self.ccd_pool = ccd_pool
        self.bundle_path = os.fspath(bundle_path)
        manifest = read_manifest(self.bundle_path)  # refuse a mismatched bundle at build time
        self.model_version = str(manifest["version"])
        self.som_path = os.path.join(self.bundle_path, manifest["som"]["file"])
        self.tile = int(manifest["cnn"]["shape"]["tile"])
        self.extract, self.config_digest = extract, config_digest
        # Any mapping: a plain dict, or one that reads live values (the daemon's session).
        self.arrivals = {} if arrivals is None else arrivals
        self.torch_threads = torch_threads

    def expand(self, paths):
        """Open -> every CCD measured (:class:`~skygrade.transforms.stages.MeasureExposures`, which
        chooses how) -> each exposure's CCDs scored as one batch -> graded; a file refused
        when opened becomes its quarantined row."""
        opened = paths | "OpenExposures" >> OpenExposures(self.extract)
        scored = (
            opened[EXPOSURES]
            | "MeasureExposures"
            >> MeasureExposures(self.extract, self.ccd_pool, self.som_path, self.tile)
            | "ScoreExposures" >> ScoreExposures(self.bundle_path, self.torch_threads)
        )
        version, digest, arrivals = self.model_version, self.config_digest, self.arrivals
        graded = scored | "GradeExposure" >> beam.Map(
            lambda item: exposure_row(
                item[0].meta.exposure_id,
                item[0].meta,
                item[1],
                item[0].bad,
                version,
                digest,
                arrivals.get(item[0].meta.path),
            )
        )
        refused = opened[QUARANTINE] | "GradeRefused" >> beam.Map(
            lambda q: exposure_row(
                q.exposure_id, None, [], [q], version, digest, arrivals.get(q.path)
            )
        )
        return (graded, refused) | "AllExposures" >> beam.Flatten()
