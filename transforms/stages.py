"""The Beam stages of the per-CCD chain: open the exposures, then measure their CCDs.

What happens to one CCD (pixels -> features -> SOM hits -> representative image) is one plain
function, :func:`skygrade.transforms.ccd_chain.measure_ccd`, which imports no Beam: the CCD pool's
fork server (:mod:`skygrade.streamer.ccd_pool`) imports the chain before it forks its first worker,
that start-up is paid inside the first exposure's wall time, and without Beam the chain imports in
well under half the time and memory (benchmarks/README.md). This module runs that function in
Beam: :class:`MeasureExposures` runs it in a Beam stage per CCD (any runner), or hands each
exposure to the CCD pool it is given (``ccd_pool``). The pool's processes are streamer/'s
(:func:`skygrade.streamer.ccd_pool.pooled` makes the handle); the graph only calls it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, NamedTuple, Protocol

import apache_beam as beam

from skygrade.transforms.ccd_chain import ExposureInputs, exposure_inputs, measure_ccd
from skygrade.transforms.ccd_memory import release_fragments, reuse_freed_memory
from skygrade.transforms.exposure import exposure_id_from_path
from skygrade.transforms.exposure_errors import ExposureError
from skygrade.transforms.extract import SepParams, make_backend
from skygrade.transforms.quarantine import QUARANTINE, Quarantined
from skygrade.transforms.som_hits import load_som

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
    """:class:`CcdTask` -> what :func:`~skygrade.transforms.ccd_chain.measure_ccd` gives, a
    quarantine record tagged; the backend and the SOM are made once per DoFn instance."""

    def __init__(self, extract, som_path: str | None, tile: int) -> None:
        self.extract, self.som_path, self.tile = extract, som_path, tile
        self.n_sources = beam.metrics.Metrics.distribution("extract", "sources_per_ccd")

    def setup(self) -> None:
        self.backend = make_backend(self.extract.backend, self.extract)
        if self.extract.backend != "catalog":
            # The process measures CCD after CCD of one size: keep their large arrays'
            # memory (ccd_memory.reuse_freed_memory; ~40 ms less per full CCD).
            reuse_freed_memory()
        self.som = None if self.som_path is None else load_som(self.som_path)

    def process(self, task: CcdTask):
        try:
            result = measure_ccd(
                self.backend, task.meta, task.ccd, self.extract, self.som, self.tile
            )
        finally:
            release_fragments()
        if isinstance(result, Quarantined):
            yield beam.pvalue.TaggedOutput(QUARANTINE, result)
            return
        self.n_sources.update(result.n_sources)
        yield result


class CcdPool(Protocol):
    """What :class:`MeasureExposures` needs of a CCD pool
    (:class:`skygrade.streamer.ccd_pool.CcdPool`): picklable, since Beam pickles the stage that
    holds it."""

    def start(self) -> None:
        """Start the workers now (called while the graph is built)."""

    def measure(self, meta, extract, som_path: str | None, tile: int) -> list:
        """What :func:`~skygrade.transforms.ccd_chain.measure_ccd` gives for each CCD of
        ``meta``."""


class _PooledExposure(beam.DoFn):
    """Exposure metadata -> one :class:`ExposureInputs`, its CCDs measured in the CCD pool."""

    def __init__(self, pool: CcdPool, extract, som_path: str | None, tile: int) -> None:
        self.pool, self.extract, self.som_path, self.tile = pool, extract, som_path, tile

    def process(self, meta):
        yield exposure_inputs(meta, self.pool.measure(meta, self.extract, self.som_path, self.tile))


def _ccd_tasks(meta) -> list[CcdTask]:
    return [CcdTask(meta, ccd) for ccd in range(meta.n_ccd)]


def _gathered(item) -> ExposureInputs:
    """(exposure_id, {"meta", "ccds", "bad"}) after the CoGroupByKey -> its ExposureInputs."""
    _, groups = item
    meta = next(iter(groups["meta"]))
    return exposure_inputs(meta, [*groups["ccds"], *groups["bad"]])


class MeasureExposures(beam.PTransform):
    """:class:`ExposureMeta` -> one :class:`ExposureInputs` per exposure: every CCD through
    :func:`~skygrade.transforms.ccd_chain.measure_ccd`, measured one of two ways, as the caller
    chooses.

    - ``ccd_pool=None`` (default): a Beam stage per CCD. The CCDs are spread with a Reshuffle,
      so a runner with several workers measures them in parallel, and gathered again by
      exposure (a CoGroupByKey with the metadata). Suits any runner.
    - ``ccd_pool``: each exposure's CCDs run in that pool of processes, which lives as long
      as this process (:mod:`skygrade.streamer.ccd_pool`,
      :func:`~skygrade.streamer.ccd_pool.pooled`), with the pipeline itself in one process, element
      by element with no shuffle (a bounded pipeline of one stage, and a chain a streaming pipeline
      can run). Beam's ``multi_processing`` workers import and start afresh on every run (~7 CPU-s
      measured); the pool pays that once per process, which is what a daemon or a short run on a few
      exposures wants.

    With ``som_path`` the ``ccds`` are :class:`~skygrade.transforms.representative.CcdInputs` ready
    for scoring (the pixels read for extraction reused for the cutouts, then dropped before
    anything is serialised); without, feature records without pixels (a feature cache).
    """

    def __init__(
        self, extract, ccd_pool: CcdPool | None = None, som_path=None, tile: int = 32
    ) -> None:
        super().__init__()
        make_backend(extract.backend, extract)  # fail at construction for an unknown name
        if tile < 4:
            raise ValueError(f"cutout size must be >= 4, got {tile}")
        self.extract, self.ccd_pool, self.tile = extract, ccd_pool, tile
        self.som_path = None if som_path is None else os.fspath(som_path)

    def expand(self, metas):
        if self.ccd_pool is not None:
            self.ccd_pool.start()  # workers boot while the graph is built
            return metas | "MeasureCcdsInPool" >> beam.ParDo(
                _PooledExposure(self.ccd_pool, self.extract, self.som_path, self.tile)
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
    :class:`OpenExposures` then :class:`MeasureExposures` (``ccd_pool`` as there).

    Returns a dict with ``"features"`` (:class:`CcdFeatures`), ``"quarantine"``
    (:class:`~skygrade.transforms.quarantine.Quarantined`) and ``"exposures"`` (the
    :class:`~skygrade.transforms.exposure.ExposureMeta` of every exposure that opened).

    Examples
    --------
    >>> # with beam.Pipeline() as p:
    >>> #     out = p | beam.Create(paths) | ExtractSources("sep")
    >>> #     out["features"] | beam.Map(print)
    """

    def __init__(
        self, backend: str = "sep", params: SepParams | None = None, ccd_pool: CcdPool | None = None
    ) -> None:
        super().__init__()
        make_backend(backend, params)  # an unknown name is refused with the valid ones
        self.extract = dataclasses.replace(params or SepParams(), backend=backend)
        self.measure = MeasureExposures(self.extract, ccd_pool)

    def expand(self, paths):
        opened = paths | "OpenExposures" >> OpenExposures(self.extract)
        measured = opened[EXPOSURES] | "MeasureExposures" >> self.measure
        features = measured | "Features" >> beam.FlatMap(lambda e: e.ccds)
        bad = measured | "BadCcds" >> beam.FlatMap(lambda e: e.bad)
        quarantined = (opened[QUARANTINE], bad) | "MergeQuarantine" >> beam.Flatten()
        return {"features": features, QUARANTINE: quarantined, EXPOSURES: opened[EXPOSURES]}
