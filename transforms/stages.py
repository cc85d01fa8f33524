"""The Beam stages of the per-CCD chain: open, extract, SOM hits, representative image.

The work itself is plain Python in :mod:`transforms.extract`, :mod:`transforms.som_hits`,
:mod:`transforms.representative` and :mod:`transforms.ccd_pool`, which never import Beam.
That is on purpose: the CCD pool's fork server (:mod:`transforms.ccd_pool`) imports the whole
chain before it forks its first worker, and that start-up is paid inside the first exposure's
wall time, and without Beam the chain imports in well under half the time and memory
(benchmarks/README.md). This module wraps the same functions into DoFns and PTransforms
for the pipelines.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any, NamedTuple

import apache_beam as beam

from ops.text import escape_controls
from transforms.ccd_pool import (
    ExposureInputs,
    ccd_pool,
    measure_ccd,
    release_fragments,
    reuse_freed_memory,
    start_pool,
)
from transforms.extract import CcdFeatures, CcdRejected, SepParams, make_backend
from transforms.psf_measure import with_physics
from transforms.quarantine import QUARANTINE, Quarantined
from transforms.representative import ccd_inputs
from transforms.som_hits import ccd_hits, load_som

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- extraction


class CcdTask(NamedTuple):
    """One CCD to measure: the exposure's metadata (small) and the CCD index. Paths, not
    pixels, travel between workers."""

    meta: Any
    ccd: int


EXPOSURES = "exposures"
"""Tagged output of :class:`ExtractSources` with the metadata of every opened exposure."""


class _OpenExposure(beam.DoFn):
    """Exposure path -> its metadata (tagged ``exposures``) and one :class:`CcdTask` per CCD,
    or an exposure quarantine record."""

    def __init__(self, backend: str, params: SepParams | None) -> None:
        self._backend_name, self._params = backend, params

    def setup(self) -> None:
        self.backend = make_backend(self._backend_name, self._params)

    def process(self, path: str):
        from transforms.exposure import exposure_id_from_path
        from transforms.exposure_errors import ExposureError

        try:
            meta = self.backend.open(path)
        except ExposureError as exc:
            yield _quarantine(exposure_id_from_path(path), path, None, exc.reason, str(exc))
            return
        except (OSError, ValueError) as exc:
            yield _quarantine(
                exposure_id_from_path(path), path, None, "unreadable", f"{path}: {exc}"
            )
            return
        yield beam.pvalue.TaggedOutput(EXPOSURES, meta)
        for ccd in range(meta.n_ccd):
            yield CcdTask(meta, ccd)


class _ExtractCcd(beam.DoFn):
    """:class:`CcdTask` -> :class:`CcdFeatures`, or a CCD quarantine record."""

    def __init__(self, backend: str, params: SepParams | None, keep_pixels: bool) -> None:
        self._backend_name, self._params = backend, params
        self.keep_pixels = keep_pixels
        self.n_sources = beam.metrics.Metrics.distribution("extract", "sources_per_ccd")

    def setup(self) -> None:
        self.backend = make_backend(self._backend_name, self._params)
        if self._backend_name != "catalog":
            # The process measures CCD after CCD of one size: keep their large arrays'
            # memory (ccd_pool.reuse_freed_memory; ~40 ms less per full CCD).
            reuse_freed_memory()

    def process(self, task: CcdTask):
        try:
            yield from self._extract(task)
        finally:
            release_fragments()

    def _extract(self, task: CcdTask):
        meta = task.meta
        start = time.perf_counter()
        try:
            features = self.backend.features(meta, task.ccd, keep_pixels=self.keep_pixels)
        except CcdRejected as exc:
            yield _quarantine(meta.exposure_id, meta.path, task.ccd, exc.reason, exc.detail)
            return
        except Exception as exc:  # a library failure on one CCD must not stop the night
            log.warning(
                "%s CCD %d: extraction failed: %s",
                escape_controls(meta.path),
                task.ccd,
                escape_controls(exc),
            )
            yield _quarantine(
                meta.exposure_id,
                meta.path,
                task.ccd,
                "extract_failed",
                f"{meta.path}: CCD {task.ccd}: {type(exc).__name__}: {exc}",
            )
            return
        self.n_sources.update(features.n_sources)
        features = with_physics(features, meta, self._params)
        yield dataclasses.replace(features, extract_s=time.perf_counter() - start)


def _quarantine(exposure_id, path, ccd, reason, detail) -> beam.pvalue.TaggedOutput:
    record = Quarantined(exposure_id, str(path), ccd, "extract", reason, detail)
    return beam.pvalue.TaggedOutput(QUARANTINE, record)


class OpenExposures(beam.PTransform):
    """Exposure paths -> ``{"exposures": ExposureMeta, "quarantine": Quarantined}``: the
    integrity walk and metadata only (for callers that measure CCDs their own way)."""

    def __init__(self, params: SepParams) -> None:
        super().__init__()
        self.params = params

    def expand(self, paths):
        opened = paths | "Open" >> beam.ParDo(
            _OpenExposure(self.params.backend, self.params)
        ).with_outputs(QUARANTINE, EXPOSURES, main="ccds")
        return {EXPOSURES: opened[EXPOSURES], QUARANTINE: opened[QUARANTINE]}


class ExtractSources(beam.PTransform):
    """Exposure paths -> per-CCD feature records, with a tagged quarantine output.

    Two ways to measure the CCDs of an exposure in parallel:

    - ``ccd_workers=0`` (default): CCDs are spread with a Reshuffle after the exposure is
      opened, so a runner with several workers measures them in parallel. Suits any runner.
    - ``ccd_workers=N``: each exposure's CCDs run in a pool of N processes that lives as long
      as this process (:mod:`transforms.ccd_pool`), with the pipeline itself in one process.
      Beam's ``multi_processing`` workers import and start afresh on every run (~7 CPU-s
      measured); the pool pays that once per process, which is what a daemon or a short run
      on a few exposures wants.

    With ``keep_pixels`` each record carries its background-subtracted image for the fused
    representative-image step (Reshuffle mode only: pixels never cross the pool's process
    boundary).

    Returns a dict with ``"features"`` (:class:`CcdFeatures`), ``"quarantine"``
    (:class:`~transforms.quarantine.Quarantined`) and ``"exposures"`` (the
    :class:`~transforms.exposure.ExposureMeta` of every exposure that opened).

    Examples
    --------
    >>> # with beam.Pipeline() as p:
    >>> #     out = p | beam.Create(paths) | ExtractSources("sep")
    >>> #     out["features"] | beam.Map(print)
    """

    def __init__(
        self,
        backend: str = "sep",
        params: SepParams | None = None,
        keep_pixels: bool = False,
        ccd_workers: int = 0,
    ) -> None:
        super().__init__()
        make_backend(backend, params)  # fail at construction for an unknown name
        if ccd_workers < 0:
            raise ValueError(f"ccd_workers must be >= 0, got {ccd_workers}")
        if ccd_workers and keep_pixels:
            raise ValueError("keep_pixels needs ccd_workers=0: pixels stay in the pool workers")
        self.backend, self.params, self.keep_pixels = backend, params, keep_pixels
        self.ccd_workers = ccd_workers

    def expand(self, paths):
        if self.ccd_workers:
            return self._expand_pooled(paths)
        opened = paths | "OpenExposures" >> beam.ParDo(
            _OpenExposure(self.backend, self.params)
        ).with_outputs(QUARANTINE, EXPOSURES, main="ccds")
        extracted = (
            opened.ccds
            | "SpreadCcds" >> beam.Reshuffle()
            | "ExtractCcd"
            >> beam.ParDo(_ExtractCcd(self.backend, self.params, self.keep_pixels)).with_outputs(
                QUARANTINE, main="features"
            )
        )
        quarantined = (opened[QUARANTINE], extracted[QUARANTINE]) | "MergeQuarantine" >> (
            beam.Flatten()
        )
        return {
            "features": extracted.features,
            QUARANTINE: quarantined,
            EXPOSURES: opened[EXPOSURES],
        }

    def _expand_pooled(self, paths):
        params = dataclasses.replace(self.params or SepParams(), backend=self.backend)
        opened = paths | "OpenExposures" >> OpenExposures(params)
        pooled = opened[EXPOSURES] | "PooledCcds" >> PooledCcds(self.ccd_workers, params)
        quarantined = (opened[QUARANTINE], pooled[QUARANTINE]) | "MergeQuarantine" >> (
            beam.Flatten()
        )
        return {"features": pooled["ccds"], QUARANTINE: quarantined, EXPOSURES: opened[EXPOSURES]}


# ----------------------------------------------------------- SOM hits and representative images


class _HitsFn(beam.DoFn):
    def __init__(self, som_path: str) -> None:
        self.som_path = som_path

    def setup(self) -> None:
        self.som = load_som(self.som_path)

    def process(self, features: CcdFeatures):
        yield ccd_hits(features, self.som)


class SomHits(beam.PTransform):
    """:class:`CcdFeatures` -> :class:`CcdHits` with the SOM at ``som_path``."""

    def __init__(self, som_path: str | os.PathLike) -> None:
        super().__init__()
        self.som_path = os.fspath(som_path)

    def expand(self, features):
        return features | "MapToClusters" >> beam.ParDo(_HitsFn(self.som_path))


class BuildRepresentatives(beam.PTransform):
    """:class:`CcdHits` (with pixels) -> :class:`CcdInputs` (without pixels).

    Keep this step fused with extraction (no shuffle in between) so the CCD's pixels, read once
    for extraction, are reused here and never serialised.
    """

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        if size < 4:
            raise ValueError(f"cutout size must be >= 4, got {size}")
        self.size = size

    def expand(self, hits):
        size = self.size
        return hits | "Representative" >> beam.Map(ccd_inputs, size=size)


# --------------------------------------------------------------------------- the CCD pool


class _PooledCcds(beam.DoFn):
    """Exposure metadata -> the results of all its CCDs, computed in the process pool."""

    def __init__(self, workers: int, extract, som_path: str | None, tile: int) -> None:
        self.workers, self.extract, self.som_path, self.tile = workers, extract, som_path, tile

    def setup(self) -> None:
        self.pool = ccd_pool(self.workers)

    def process(self, meta):
        futures = {
            self.pool.submit(measure_ccd, meta, ccd, self.extract, self.som_path, self.tile)
            for ccd in range(meta.n_ccd)
        }
        while futures:
            done, futures = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                if isinstance(result, Quarantined):
                    yield beam.pvalue.TaggedOutput(QUARANTINE, result)
                else:
                    yield result


class _PooledExposures(_PooledCcds):
    """Exposure metadata -> one :class:`ExposureInputs`, its CCDs computed in the pool."""

    def process(self, meta):
        ccds, bad = [], []
        for result in super().process(meta):
            if isinstance(result, beam.pvalue.TaggedOutput):
                bad.append(result.value)
            else:
                ccds.append(result)
        yield ExposureInputs(
            meta,
            sorted(ccds, key=lambda c: c.ccd),
            sorted(bad, key=lambda b: b.ccd),
        )


class PooledExposures(beam.PTransform):
    """:class:`ExposureMeta` -> :class:`ExposureInputs`: one element per exposure, so that
    scoring and grading follow element by element, with no shuffle to gather the CCDs again
    (a bounded pipeline of one stage, and a chain a streaming pipeline can run).

    Without ``som_path`` its ``ccds`` are feature records without pixels (the training job's
    feature cache)."""

    def __init__(self, workers: int, extract, som_path=None, tile: int = 32):
        super().__init__()
        self.args = (workers, extract, None if som_path is None else os.fspath(som_path), tile)

    def expand(self, metas):
        start_pool(self.args[0])  # workers boot while the graph is built and files open
        return metas | "MeasureCcdsInPool" >> beam.ParDo(_PooledExposures(*self.args))


class PooledCcds(beam.PTransform):
    """:class:`ExposureMeta` -> per-CCD results from a process pool that outlives the pipeline.

    With ``som_path`` the results are :class:`CcdInputs` ready for scoring; without, feature
    records without pixels. Returns a dict with ``"ccds"`` and ``"quarantine"``.
    """

    def __init__(self, workers: int, extract, som_path: str | None = None, tile: int = 32):
        super().__init__()
        self.args = (workers, extract, None if som_path is None else os.fspath(som_path), tile)

    def expand(self, metas):
        start_pool(self.args[0])  # workers boot while the graph is built and files open
        out = metas | "MeasureCcdsInPool" >> beam.ParDo(_PooledCcds(*self.args)).with_outputs(
            QUARANTINE, main="ccds"
        )
        return {"ccds": out.ccds, QUARANTINE: out[QUARANTINE]}
