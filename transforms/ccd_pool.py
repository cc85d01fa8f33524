"""CCD-level parallelism with worker processes that live as long as the process using them.

Why: sep holds the GIL, so CCDs of one exposure run in parallel only in separate processes.
Beam's ``multi_processing`` mode starts fresh SDK workers for every pipeline run (~1.1-1.3 s
each, plus imports: measured ~7 CPU-s of fixed cost per run, REFERENCE.md and
benchmarks/extract.py), which is fine for a backfill of thousands of exposures but not for
the daemon, which runs one small bounded pipeline per exposure as it lands. Here the pool is
created once per process (on first use, or early with :func:`start_pool`) and reused by every
later pipeline run.

Each worker runs the whole per-CCD chain (read pixels, extract, SOM hits, representative
image) and returns only the small :class:`~transforms.representative.CcdInputs` (or a
quarantine record): the 38 MB of pixels never cross a process boundary.

Workers are forked from a fork server (``multiprocessing``'s "forkserver" start method): a
clean single-threaded process started once, which imports the per-CCD chain once and forks
every worker from there. Forking the parent itself is unsafe (it runs Beam's gRPC threads), and
spawning fresh interpreters makes every worker import the chain again: ~1 CPU-s each, measured
~0.9 s more wall and CPU per pool start on 2 cores than the fork server. This module and the
chain it runs (:mod:`transforms.extract`, :mod:`transforms.som_hits`,
:mod:`transforms.representative`) never import Beam or torch (Beam alone took ~1.3 s and
~130 MB per process); their Beam wrappers are in :mod:`transforms.stages`.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any, NamedTuple

from transforms.extract import CcdRejected, make_backend
from transforms.quarantine import Quarantined
from transforms.representative import ccd_inputs
from transforms.som_hits import ccd_hits, load_som

log = logging.getLogger(__name__)

_POOL: ProcessPoolExecutor | None = None
_POOL_WORKERS = 0
_LOCK = threading.Lock()
_BACKENDS: dict = {}
_CHAIN = ("sep", "transforms.exposure", "transforms.ccd_pool")
"""What every worker needs, imported once by the fork server and inherited by each worker."""


def ccd_pool(workers: int) -> ProcessPoolExecutor:
    """The process-wide pool with ``workers`` processes (created on first use, then reused)."""
    global _POOL, _POOL_WORKERS
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with _LOCK:
        if _POOL is None or workers != _POOL_WORKERS:
            if _POOL is not None:
                _POOL.shutdown(wait=True, cancel_futures=True)
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(list(_CHAIN))
            _POOL = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)
            _POOL_WORKERS = workers
            log.info("started a pool of %d CCD worker processes", workers)
    return _POOL


def start_pool(workers: int) -> ProcessPoolExecutor:
    """:func:`ccd_pool`, with every worker started now rather than on the first CCD.

    The first start costs ~1 s (the fork server imports the chain); started early (when a
    pipeline is built, while a file is still being copied) it overlaps the caller's own
    work. Returns at once: the workers start from a background thread.
    """
    pool = ccd_pool(workers)

    def start_workers() -> None:
        try:
            for _ in range(workers):  # one task per worker: each submit starts one process
                pool.submit(_ready)
        except RuntimeError:  # the pool was shut down meanwhile: nothing to start
            pass

    threading.Thread(target=start_workers, name="ccd-pool-start", daemon=True).start()
    return pool


def _init_worker() -> None:
    """Worker initializer: keep freed memory for the next CCD."""
    reuse_freed_memory()


def reuse_freed_memory() -> bool:
    """Serve large allocations from the heap and keep freed memory (glibc ``mallopt``).

    A full CCD's arrays (pixels, background and RMS maps: 38 MB each) are above glibc's
    largest mmap threshold (32 MB), so by default each is a fresh mmap whose pages fault in
    zeroed, unmapped again when freed: ~12k page faults per CCD. A process that measures CCD
    after CCD of one size keeps that memory instead: measured 550 -> 512 ms CPU per full CCD
    (page faults 175k -> 26k over 13 CCDs) at the same peak RSS. Without mmap the heap
    fragments slowly (+0.5 MB per exposure over 200 small ones, measured), so the caller also
    calls :func:`release_fragments` after every CCD. Returns False where the C library is
    not glibc (then nothing changes).
    """
    global _MALLOC_TRIM
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    ok = bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 256 << 20))
    _MALLOC_TRIM = malloc_trim if ok else None
    return ok


TRIM_EVERY = 32
"""CCDs between two :func:`release_fragments` trims: one round of page faults (~40 ms) per
32 CCDs keeps nearly all the gain of :func:`reuse_freed_memory` and bounds the RSS."""
_MALLOC_TRIM = None
_since_trim = 0


def release_fragments() -> None:
    """Call after each CCD: every :data:`TRIM_EVERY` CCDs, hand the free pages of the heap
    (holes included, not just its top) back to the system with glibc's ``malloc_trim``."""
    global _since_trim
    if _MALLOC_TRIM is None:
        return
    _since_trim += 1
    if _since_trim >= TRIM_EVERY:
        _since_trim = 0
        _MALLOC_TRIM(0)


def _ready() -> None:
    """A no-op task: submitting it makes the pool spawn a worker."""


def shutdown_pool() -> None:
    """Stop the pool's processes and its fork server (at exit, or when the daemon stops)."""
    global _POOL, _POOL_WORKERS
    with _LOCK:
        if _POOL is not None:
            _POOL.shutdown(wait=True, cancel_futures=True)
            _POOL, _POOL_WORKERS = None, 0
            # The fork server would otherwise idle until this process exits. multiprocessing
            # has no public call to stop it; _stop exists in CPython 3.8 to 3.14.
            from multiprocessing import forkserver

            stop = getattr(forkserver._forkserver, "_stop", None)
            if stop is not None:
                stop()


atexit.register(shutdown_pool)


def measure_ccd(meta, ccd: int, extract, som_path: str | None, tile: int):
    """One CCD end to end in a worker: features, and with a SOM its hits and representative.

    Returns :class:`CcdInputs` (with ``som_path``), :class:`CcdFeatures` without pixels (no
    SOM), or a :class:`Quarantined` record.
    """
    try:
        return _measure(meta, ccd, extract, som_path, tile)
    finally:
        release_fragments()


def _measure(meta, ccd: int, extract, som_path: str | None, tile: int):
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
