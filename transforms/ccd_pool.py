"""CCD-level parallelism with worker processes that live as long as the process using them.

Why: sep holds the GIL, so CCDs of one exposure run in parallel only in separate processes.
Beam's ``multi_processing`` mode starts fresh SDK workers for every pipeline run (~1.1-1.3 s
each, plus imports: measured ~7 CPU-s of fixed cost per run, REFERENCE.md and
benchmarks/extract.py), which is fine for a backfill of thousands of exposures but not for
the daemon, which runs one small bounded pipeline per exposure as it lands. Here the pool is
created once per process (lazily, on first use) and reused by every later pipeline run.

Each worker runs the whole per-CCD chain (read pixels, extract, SOM hits, representative
image) and returns only the small :class:`~transforms.representative.CcdInputs` (or a
quarantine record): the 38 MB of pixels never cross a process boundary.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace
from typing import Any, NamedTuple

import apache_beam as beam

from transforms.extract import CcdRejected, make_backend
from transforms.quarantine import QUARANTINE, Quarantined

log = logging.getLogger(__name__)

_POOL: ProcessPoolExecutor | None = None
_POOL_WORKERS = 0
_LOCK = threading.Lock()
_BACKENDS: dict = {}


def ccd_pool(workers: int) -> ProcessPoolExecutor:
    """The process-wide pool with ``workers`` processes (created on first use, then reused)."""
    global _POOL, _POOL_WORKERS
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with _LOCK:
        if _POOL is None or workers != _POOL_WORKERS:
            if _POOL is not None:
                _POOL.shutdown(wait=True, cancel_futures=True)
            # spawn, not fork: the parent runs Beam's gRPC threads, which fork does not survive.
            ctx = multiprocessing.get_context("spawn")
            # Workers import only the extraction chain (Beam, astropy, sep; never torch).
            _POOL = ProcessPoolExecutor(workers, mp_context=ctx)
            _POOL_WORKERS = workers
            log.info("started a pool of %d CCD worker processes", workers)
    return _POOL


def shutdown_pool() -> None:
    """Stop the pool's processes (at exit, or when the daemon stops)."""
    global _POOL, _POOL_WORKERS
    with _LOCK:
        if _POOL is not None:
            _POOL.shutdown(wait=True, cancel_futures=True)
            _POOL, _POOL_WORKERS = None, 0


atexit.register(shutdown_pool)


def measure_ccd(meta, ccd: int, extract, som_path: str | None, tile: int):
    """One CCD end to end in a worker: features, and with a SOM its hits and representative.

    Returns :class:`CcdInputs` (with ``som_path``), :class:`CcdFeatures` without pixels (no
    SOM), or a :class:`Quarantined` record.
    """
    from transforms.representative import ccd_inputs
    from transforms.som_hits import ccd_hits, load_som

    key = (extract.backend, extract)
    backend = _BACKENDS.get(key)
    if backend is None:
        backend = _BACKENDS[key] = make_backend(extract.backend, extract)
    start = time.perf_counter()
    try:
        features = backend.features(meta, ccd, keep_pixels=som_path is not None)
    except CcdRejected as exc:
        return Quarantined(meta.exposure_id, meta.path, ccd, "extract", exc.reason, exc.detail)
    except Exception as exc:  # a library failure on one CCD must not stop the night
        return Quarantined(
            meta.exposure_id,
            meta.path,
            ccd,
            "extract",
            "extract_failed",
            f"{meta.path}: CCD {ccd}: {type(exc).__name__}: {exc}",
        )
    features = replace(features, extract_s=time.perf_counter() - start)
    if som_path is None:
        return features
    return ccd_inputs(ccd_hits(features, load_som(som_path)), size=tile)


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


class ExposureInputs(NamedTuple):
    """Everything measured on one exposure's CCDs, travelling as one element.

    Attributes
    ----------
    meta : ExposureMeta
        The exposure's metadata.
    ccds : list of CcdInputs
        The CCDs ready for scoring, in CCD order.
    bad : list of Quarantined
        The CCDs that could not be measured, with their reasons.
    """

    meta: Any
    ccds: list
    bad: list


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
    (a bounded pipeline of one stage, and a chain a streaming pipeline can run)."""

    def __init__(self, workers: int, extract, som_path, tile: int = 32):
        super().__init__()
        self.args = (workers, extract, os.fspath(som_path), tile)

    def expand(self, metas):
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
        out = metas | "MeasureCcdsInPool" >> beam.ParDo(_PooledCcds(*self.args)).with_outputs(
            QUARANTINE, main="ccds"
        )
        return {"ccds": out.ccds, QUARANTINE: out[QUARANTINE]}
