"""CCD-level parallelism with worker processes that live as long as the process using them.

Why: sep holds the GIL, so CCDs of one exposure run in parallel only in separate processes.
Beam's ``multi_processing`` mode starts fresh SDK workers for every pipeline run (a fixed
cost of several CPU-seconds per run: benchmarks/extract.py, figures in benchmarks/README.md),
which is fine for a backfill of thousands of exposures but not for the daemon, which runs one
small bounded pipeline per exposure as it lands. Here the pool is created once per process (on
first use, or early with :func:`start_pool`) and reused by every later pipeline run.

Each worker runs the whole per-CCD chain (:func:`skygrade.transforms.ccd_chain.measure_ccd`: read
pixels, extract, SOM hits, representative image) and returns only the small
:class:`~skygrade.transforms.representative.CcdInputs` (or a quarantine record): the 38 MB of pixels
never cross a process boundary.

Workers are forked from a fork server (``multiprocessing``'s "forkserver" start method): a
clean single-threaded process started once, which imports the per-CCD chain once and forks
every worker from there. Forking the parent itself is unsafe (it runs Beam's gRPC threads), and
spawning fresh interpreters makes every worker import the chain again, so every pool start
costs more wall and CPU than with the fork server. This module and the chain it runs
(:mod:`skygrade.transforms.ccd_chain`, :mod:`skygrade.transforms.extract`,
:mod:`skygrade.transforms.som_hits`,
:mod:`skygrade.transforms.representative`) never import Beam or torch (Beam alone costs each process
a second and more of import and over 100 MB); their Beam wrappers are in
:mod:`skygrade.transforms.stages`, which takes the pool as a :class:`CcdPool` (:func:`pooled`): the
processes live here, in streamer/, and the Beam graph only runs what it is given. The heap settings
every worker makes are :mod:`skygrade.transforms.ccd_memory`'s (the Beam stage makes them too).
The figures are in benchmarks/README.md.

The pool dies with the process that uses it, even under ``kill -9`` (before, every kill left
the fork server, the resource tracker and each worker running for good: the workers hold the
write end of the fork server's "alive" pipe and of their own task queue, so none of them ever
saw an EOF). On Linux the fork server and each worker ask for SIGKILL when their parent dies
(``prctl(PR_SET_PDEATHSIG)``, see :func:`die_with_parent`); elsewhere the fork server ends on
the EOF of its "alive" pipe (which the workers now close) and each worker polls its parent's
pid. The resource tracker then ends on its own EOF. Measured: 4 of the 5 processes of a
2-worker pool survived a ``kill -9`` of their parent, none now (tests/streamer/test_ccd_pool.py).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver

from skygrade.transforms import ccd_chain as chain
from skygrade.transforms.ccd_memory import release_fragments, reuse_freed_memory
from skygrade.transforms.extract import make_backend
from skygrade.transforms.som_hits import load_som

log = logging.getLogger(__name__)

_POOL: ProcessPoolExecutor | None = None
_POOL_WORKERS = 0
_LOCK = threading.Lock()
_BACKENDS: dict = {}
_CHAIN = (
    "skygrade.streamer.ccd_pool_server",
    "sep",
    "skygrade.transforms.exposure",
    "skygrade.streamer.ccd_pool",
)
"""What the fork server imports before it serves: first the module that ties it to its parent
(:mod:`skygrade.streamer.ccd_pool_server`), then what every worker needs, imported once by the fork
server and inherited by each worker."""
_KEEPER: threading.Thread | None = None
_KEEPER_STOP = threading.Event()
_FORK_SERVER_PID: int | None = None
"""In the fork server and its workers: the fork server's pid (None in any other process)."""
PARENT_POLL_S = 0.5
"""Seconds between two looks at the parent's pid, where PR_SET_PDEATHSIG is not available."""
PR_SET_PDEATHSIG, PR_GET_PDEATHSIG = 1, 2


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
            _start_fork_server()
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


def _start_fork_server() -> None:
    """Start the fork server from a thread that lives as long as the fork server.

    The fork server asks to be killed when its parent dies (:func:`die_with_parent`), and Linux
    sends that signal when the *thread* that forked it exits, not the process.
    ``multiprocessing`` starts the server from whichever thread first starts a worker: the
    short-lived thread of :func:`start_pool`, or a Beam thread that ends with its pipeline.
    Started here, from a thread that waits until :func:`shutdown_pool` (or the end of the
    process), the fork server lives as long as the pool. Call with ``_LOCK`` held.

    Raises
    ------
    OSError
        The fork server could not be started.
    """
    global _KEEPER
    if _KEEPER is not None and _KEEPER.is_alive():
        return
    started, failed = threading.Event(), []

    def keep() -> None:
        try:
            forkserver.ensure_running()
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)
            return
        finally:
            started.set()
        _KEEPER_STOP.wait()

    _KEEPER_STOP.clear()
    _KEEPER = threading.Thread(target=keep, name="ccd-pool-forkserver", daemon=True)
    _KEEPER.start()
    started.wait()
    if failed:
        _KEEPER = None
        raise failed[0]


def _stop_keeper() -> None:
    """Let the thread of :func:`_start_fork_server` end (the fork server is stopped)."""
    global _KEEPER
    if _KEEPER is not None:
        _KEEPER_STOP.set()
        _KEEPER.join(5.0)
        _KEEPER = None


def set_pdeathsig() -> bool:
    """Ask Linux to SIGKILL this process when the thread that forked it exits.

    ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` through ctypes. Returns False where it is not
    available (not Linux, no C library, or the call failed); then nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    return prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0


def pdeathsig() -> int:
    """The signal this process gets when its parent dies (0: none, or not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return 0
    sig = ctypes.c_int(0)
    return sig.value if prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0) == 0 else 0


def die_with_parent(parent: int, watch: bool = True) -> str:
    """Make this process end when ``parent`` (its parent's pid) dies, even by SIGKILL.

    Arms PR_SET_PDEATHSIG (:func:`set_pdeathsig`), then looks at ``os.getppid()`` once more:
    a parent that died before the signal was armed is caught there (this process then exits at
    once). Without prctl and with ``watch``, a daemon thread polls the parent's pid every
    :data:`PARENT_POLL_S` seconds and exits the process when it changes.

    Parameters
    ----------
    parent : int
        The pid this process must not outlive.
    watch : bool
        Start the polling thread where prctl is missing. The fork server passes False: it must
        stay single-threaded, and it ends on the EOF of its "alive" pipe instead.

    Returns
    -------
    str
        How the process is tied to its parent: ``"prctl"``, ``"watchdog"`` or ``"none"``.
    """
    armed = set_pdeathsig()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if armed:
        return "prctl"
    if not watch:
        return "none"

    def watchdog() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watchdog, name="ccd-pool-parent-watchdog", daemon=True).start()
    return "watchdog"


def guard_fork_server() -> None:
    """In the fork server, before it imports the CCD chain: end with the process it serves.

    Called by :mod:`skygrade.streamer.ccd_pool_server`, first in the fork server's preload list. The
    parent pid is read here, so a parent that dies while the fork server starts (before this
    runs) goes unseen by :func:`die_with_parent`; the fork server then still ends, on the EOF
    of its "alive" pipe, since no worker holds it yet.
    """
    global _FORK_SERVER_PID
    _FORK_SERVER_PID = os.getpid()
    die_with_parent(os.getppid(), watch=False)


def _init_worker() -> None:
    """Worker initializer: end with the fork server, and keep freed memory for the next CCD."""
    parent = _FORK_SERVER_PID or os.getppid()
    die_with_parent(parent)
    _close_alive_fd()
    reuse_freed_memory()


def _close_alive_fd() -> None:
    """In a worker: close its copy of the write end of the fork server's "alive" pipe.

    ``multiprocessing`` hands it to every process the fork server forks, so the fork server,
    which stops on the EOF of that pipe, outlived its client as long as one worker lived (and
    the workers lived as long as it). A worker never starts processes of its own, so it has no
    use for it.
    """
    if multiprocessing.parent_process() is None:  # not a pool worker: leave the server alone
        return
    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        server._forkserver_alive_fd = None
        with contextlib.suppress(OSError):
            os.close(fd)


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
            stop = getattr(forkserver._forkserver, "_stop", None)
            if stop is not None:
                stop()
            _stop_keeper()


atexit.register(shutdown_pool)


def measure_ccd(meta, ccd: int, extract, som_path: str | None, tile: int):
    """One CCD end to end in a worker: :func:`skygrade.transforms.ccd_chain.measure_ccd` with this
    process's backend and SOM (built on the first CCD, then reused).

    Returns :class:`CcdInputs` (with ``som_path``), :class:`CcdFeatures` without pixels (no
    SOM), or a :class:`Quarantined` record.
    """
    key = (extract.backend, extract)
    backend = _BACKENDS.get(key)
    if backend is None:
        backend = _BACKENDS[key] = make_backend(extract.backend, extract)
    som = None if som_path is None else load_som(som_path)
    try:
        return chain.measure_ccd(backend, meta, ccd, extract, som, tile)
    finally:
        release_fragments()


@dataclasses.dataclass(frozen=True)
class CcdPool:
    """The CCD pool of ``workers`` processes, as
    :class:`skygrade.transforms.stages.MeasureExposures` takes it: a small picklable handle (Beam
    pickles the stage that holds it) that reaches the process-wide pool (:func:`ccd_pool`) of
    whichever process runs the stage.
    """

    workers: int

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    def start(self) -> None:
        """:func:`start_pool`: the workers boot while the caller builds its graph."""
        start_pool(self.workers)

    def measure(self, meta, extract, som_path: str | None, tile: int) -> list:
        """Every CCD of one exposure through :func:`measure_ccd` in the pool, in CCD order."""
        pool = ccd_pool(self.workers)
        futures = [
            pool.submit(measure_ccd, meta, ccd, extract, som_path, tile)
            for ccd in range(meta.n_ccd)
        ]
        return [f.result() for f in futures]


def pooled(ccd_workers: int) -> CcdPool | None:
    """``ccd_workers`` as the config and the commands give it, as the graph takes it: 0 gives
    None (a Beam stage per CCD, any runner), N > 0 a :class:`CcdPool` of N processes.

    Raises
    ------
    ValueError
        ``ccd_workers`` is negative.
    """
    if ccd_workers < 0:
        raise ValueError(f"ccd_workers must be >= 0, got {ccd_workers}")
    return CcdPool(ccd_workers) if ccd_workers else None
