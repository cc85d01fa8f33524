"""The Beam stages of the per-CCD chain: open the exposures, then measure their CCDs.

What happens to one CCD (pixels -> features -> SOM hits -> representative image) is one plain
function, :func:`transforms.ccd_chain.measure_ccd`, which imports no Beam: the CCD pool's fork
server (:mod:`transforms.ccd_pool`) imports the chain before it forks its first worker, that
start-up is paid inside the first exposure's wall time, and without Beam the chain imports in
well under half the time and memory (benchmarks/README.md). This module runs that function in
Beam, and :class:`MeasureExposures` is the one place that chooses how: in a Beam stage per CCD
(any runner) or in the CCD pool (``ccd_workers``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, NamedTuple

import apache_beam as beam

from transforms import ccd_pool
from transforms.ccd_chain import ExposureInputs, exposure_inputs, measure_ccd
from transforms.extract import SepParams, make_backend
from transforms.quarantine import QUARANTINE, Quarantined
from transforms.som_hits import load_som

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- opening


class CcdTask(NamedTuple):
    """One CCD to measure: the exposure's metadata (small) and the CCD index. Paths, not
    pixels, travel between workers."""

    meta: Any
    ccd: int


EXPOSURES = "exposures"
"""Output of :class:`OpenExposures` (and :class:`ExtractSources`) with the metadata of every
opened exposure."""


class _OpenExposure(beam.DoFn):
    """Exposure path -> its metadata, or an exposure quarantine record (tagged)."""

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
        yield meta


def _quarantine(exposure_id, path, ccd, reason, detail) -> beam.pvalue.TaggedOutput:
    record = Quarantined(exposure_id, str(path), ccd, "extract", reason, detail)
    return beam.pvalue.TaggedOutput(QUARANTINE, record)


class OpenExposures(beam.PTransform):
    """Exposure paths -> ``{"exposures": ExposureMeta, "quarantine": Quarantined}``: the
    integrity walk and metadata only; :class:`MeasureExposures` measures the CCDs."""

    def __init__(self, params: SepParams) -> None:
        super().__init__()
        self.params = params

    def expand(self, paths):
        opened = paths | "Open" >> beam.ParDo(
            _OpenExposure(self.params.backend, self.params)
        ).with_outputs(QUARANTINE, main=EXPOSURES)
        return {EXPOSURES: opened[EXPOSURES], QUARANTINE: opened[QUARANTINE]}


# --------------------------------------------------------------------------- measuring


class _MeasureCcd(beam.DoFn):
    """:class:`CcdTask` -> what :func:`~transforms.ccd_chain.measure_ccd` gives, a quarantine
    record tagged; the backend and the SOM are made once per DoFn instance."""

    def __init__(self, extract, som_path: str | None, tile: int) -> None:
        self.extract, self.som_path, self.tile = extract, som_path, tile
        self.n_sources = beam.metrics.Metrics.distribution("extract", "sources_per_ccd")

    def setup(self) -> None:
        self.backend = make_backend(self.extract.backend, self.extract)
        if self.extract.backend != "catalog":
            # The process measures CCD after CCD of one size: keep their large arrays'
            # memory (ccd_pool.reuse_freed_memory; ~40 ms less per full CCD).
            ccd_pool.reuse_freed_memory()
        self.som = None if self.som_path is None else load_som(self.som_path)

    def process(self, task: CcdTask):
        try:
            result = measure_ccd(
                self.backend, task.meta, task.ccd, self.extract, self.som, self.tile
            )
        finally:
            ccd_pool.release_fragments()
        if isinstance(result, Quarantined):
            yield beam.pvalue.TaggedOutput(QUARANTINE, result)
            return
        self.n_sources.update(result.n_sources)
        yield result


class _PooledExposure(beam.DoFn):
    """Exposure metadata -> one :class:`ExposureInputs`, its CCDs measured in the CCD pool."""

    def __init__(self, workers: int, extract, som_path: str | None, tile: int) -> None:
        self.workers, self.extract, self.som_path, self.tile = workers, extract, som_path, tile

    def setup(self) -> None:
        self.pool = ccd_pool.ccd_pool(self.workers)

    def process(self, meta):
        args = (self.extract, self.som_path, self.tile)
        futures = [
            self.pool.submit(ccd_pool.measure_ccd, meta, ccd, *args) for ccd in range(meta.n_ccd)
        ]
        yield exposure_inputs(meta, [f.result() for f in futures])


def _ccd_tasks(meta) -> list[CcdTask]:
    return [CcdTask(meta, ccd) for ccd in range(meta.n_ccd)]


def _gathered(item) -> ExposureInputs:
    """(exposure_id, {"meta", "ccds", "bad"}) after the CoGroupByKey -> its ExposureInputs."""
    _, groups = item
    meta = next(iter(groups["meta"]))
    return exposure_inputs(meta, [*groups["ccds"], *groups["bad"]])


class MeasureExposures(beam.PTransform):
    """:class:`ExposureMeta` -> one :class:`ExposureInputs` per exposure: every CCD through
    :func:`~transforms.ccd_chain.measure_ccd`, measured one of two ways, chosen here alone.

    - ``ccd_workers=0`` (default): a Beam stage per CCD. The CCDs are spread with a Reshuffle,
      so a runner with several workers measures them in parallel, and gathered again by
      exposure (a CoGroupByKey with the metadata). Suits any runner.
    - ``ccd_workers=N``: each exposure's CCDs run in a pool of N processes that lives as long
      as this process (:mod:`transforms.ccd_pool`), with the pipeline itself in one process,
      element by element with no shuffle (a bounded pipeline of one stage, and a chain a
      streaming pipeline can run). Beam's ``multi_processing`` workers import and start afresh
      on every run (~7 CPU-s measured); the pool pays that once per process, which is what a
      daemon or a short run on a few exposures wants.

    With ``som_path`` the ``ccds`` are :class:`~transforms.representative.CcdInputs` ready for
    scoring (the pixels read for extraction reused for the cutouts, then dropped before
    anything is serialised); without, feature records without pixels (a feature cache).
    """

    def __init__(self, extract, ccd_workers: int = 0, som_path=None, tile: int = 32) -> None:
        super().__init__()
        make_backend(extract.backend, extract)  # fail at construction for an unknown name
        if ccd_workers < 0:
            raise ValueError(f"ccd_workers must be >= 0, got {ccd_workers}")
        if tile < 4:
            raise ValueError(f"cutout size must be >= 4, got {tile}")
        self.extract, self.ccd_workers, self.tile = extract, ccd_workers, tile
        self.som_path = None if som_path is None else os.fspath(som_path)

    def expand(self, metas):
        if self.ccd_workers:
            ccd_pool.start_pool(self.ccd_workers)  # workers boot while the graph is built
            return metas | "MeasureCcdsInPool" >> beam.ParDo(
                _PooledExposure(self.ccd_workers, self.extract, self.som_path, self.tile)
            )
        measured = (
            metas
            | "CcdTasks" >> beam.FlatMap(_ccd_tasks)
            | "SpreadCcds" >> beam.Reshuffle()
            | "MeasureCcd"
            >> beam.ParDo(_MeasureCcd(self.extract, self.som_path, self.tile)).with_outputs(
                QUARANTINE, main="ccds"
            )
        )
        keyed = {
            "meta": metas | "KeyMeta" >> beam.Map(lambda m: (m.exposure_id, m)),
            "ccds": measured.ccds | "KeyCcds" >> beam.Map(lambda c: (c.exposure_id, c)),
            "bad": measured[QUARANTINE] | "KeyBad" >> beam.Map(lambda q: (q.exposure_id, q)),
        }
        return keyed | "ByExposure" >> beam.CoGroupByKey() | "Gather" >> beam.Map(_gathered)


class ExtractSources(beam.PTransform):
    """Exposure paths -> per-CCD feature records (without pixels), with the quarantine records
    of files and CCDs and the metadata of every exposure that opened:
    :class:`OpenExposures` then :class:`MeasureExposures` (``ccd_workers`` as there).

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
        self, backend: str = "sep", params: SepParams | None = None, ccd_workers: int = 0
    ) -> None:
        super().__init__()
        make_backend(backend, params)  # an unknown name is refused with the valid ones
        self.extract = dataclasses.replace(params or SepParams(), backend=backend)
        self.measure = MeasureExposures(self.extract, ccd_workers)

    def expand(self, paths):
        opened = paths | "OpenExposures" >> OpenExposures(self.extract)
        measured = opened[EXPOSURES] | "MeasureExposures" >> self.measure
        features = measured | "Features" >> beam.FlatMap(lambda e: e.ccds)
        bad = measured | "BadCcds" >> beam.FlatMap(lambda e: e.bad)
        quarantined = (opened[QUARANTINE], bad) | "MergeQuarantine" >> beam.Flatten()
        return {"features": features, QUARANTINE: quarantined, EXPOSURES: opened[EXPOSURES]}
