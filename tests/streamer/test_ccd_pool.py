"""The CCD pool (streamer/ccd_pool.py): its workers start at once and keep freed memory, the
handle the Beam graph holds is small, and the pool dies with the process that uses it: after a
``kill -9`` of that process no fork server, worker or resource tracker is left behind (issue 21,
item 1).

Each test starts a small process that creates the pool (what the daemon does on its first
exposure, without Beam or torch), kills it with SIGKILL, and looks in /proc for what is left of
its process group. Every process started is killed in a ``finally``."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.daemon_process import live_processes, poll_until

REPO = Path(__file__).resolve().parents[2]
#: Seconds the pool's processes may take to go once their parent is killed.
ORPHAN_TIMEOUT_S = 5.0
#: Seconds the parent may take to start the pool (the fork server imports the CCD chain).
START_TIMEOUT_S = 60.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

#: A parent that starts a pool of two workers, prints "ready" and the parent-death signals of
#: its workers, then sleeps until killed.
PARENT = """
import os, sys, time
{prelude}
from skygrade.streamer.ccd_pool import pdeathsig, start_pool

pool = start_pool(2)
deadline = time.monotonic() + 60
while len(pool._processes) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
signals = {{pool.submit(pdeathsig).result(timeout=60) for _ in range(4)}}
print("ready", *sorted(signals), flush=True)
time.sleep(600)
"""

#: First in the fork server's preload list: takes prctl away, as on a system without it.
NO_PRCTL = """
import skygrade.streamer.ccd_pool as ccd_pool

ccd_pool.set_pdeathsig = lambda: False
"""


def group_members(pgid: int) -> list[tuple[int, int, str]]:
    """(pid, ppid, command line) of every live (not zombie) process in group ``pgid``."""
    members = []
    for pid, entry, fields in live_processes():
        if int(fields[2]) != pgid:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        members.append((pid, int(fields[1]), cmdline[:120]))
    return members


@contextlib.contextmanager
def pool_parent(prelude: str = "", env: dict | None = None):
    """A process (its own session and group) holding a started pool of two CCD workers."""
    code = textwrap.dedent(PARENT.format(prelude=prelude))
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("ready"), f"the pool did not start: {line!r}"
        proc.signals = {int(word) for word in line.split()[1:]}
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        for pid, _, _ in group_members(proc.pid):  # the orphans, if the test failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def kill_9_leaves_nothing(proc: subprocess.Popen) -> None:
    members = group_members(proc.pid)
    # the parent, its fork server and two workers (and the resource tracker)
    assert len(members) >= 4, members
    os.kill(proc.pid, signal.SIGKILL)  # the parent alone, as an OOM kill or `kill -9 PID`
    proc.wait(10)
    survivors: list = []

    def gone() -> bool:
        survivors[:] = group_members(proc.pid)
        return not survivors

    assert poll_until(gone, ORPHAN_TIMEOUT_S), (
        f"{len(survivors)} of {len(members)} processes still alive "
        f"{ORPHAN_TIMEOUT_S:.0f} s after kill -9 of their parent: {survivors}"
    )


def test_kill_9_of_the_parent_leaves_no_pool_process():
    with pool_parent() as proc:
        if sys.platform.startswith("linux"):
            assert proc.signals == {signal.SIGKILL}
        kill_9_leaves_nothing(proc)


def test_without_prctl_the_pool_still_dies_with_its_parent(tmp_path):
    """Where PR_SET_PDEATHSIG is missing, the fork server ends on the EOF of its "alive" pipe
    and the workers on a watchdog of their parent pid."""
    (tmp_path / "no_prctl.py").write_text(NO_PRCTL)
    prelude = "import no_prctl, skygrade.streamer.ccd_pool as p\np._CHAIN = ('no_prctl', *p._CHAIN)"
    # on the path through the environment: the fork server ignores its parent's sys.path
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    with pool_parent(prelude, env={"PYTHONPATH": path}) as proc:
        assert proc.signals == {0}  # no prctl in the workers either
        kill_9_leaves_nothing(proc)


def test_the_pool_outlives_the_thread_that_started_it():
    """PR_SET_PDEATHSIG fires when the *thread* that forked a process exits: the fork server
    must not be tied to the short-lived thread that first asked for a worker."""
    from skygrade.streamer.ccd_pool import shutdown_pool, start_pool

    pools: list = []
    try:
        starter = threading.Thread(target=lambda: pools.append(start_pool(2)))
        starter.start()
        starter.join()
        pool = pools[0]
        assert poll_until(lambda: len(pool._processes) == 2, START_TIMEOUT_S)
        first = {pool.submit(os.getpid).result(timeout=60) for _ in range(4)}
        time.sleep(1.0)  # the start_pool thread and the starter are gone by now
        later = {pool.submit(os.getpid).result(timeout=60) for _ in range(4)}
        assert later <= set(pool._processes) and first <= set(pool._processes)
    finally:
        shutdown_pool()


def test_workers_ask_to_be_killed_with_their_parent():
    """Each worker has armed PR_SET_PDEATHSIG (SIGKILL) on Linux."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    from skygrade.streamer.ccd_pool import ccd_pool, pdeathsig, shutdown_pool

    try:
        assert ccd_pool(1).submit(pdeathsig).result(timeout=60) == signal.SIGKILL
    finally:
        shutdown_pool()
    assert pdeathsig() == 0  # this process is not tied to its parent


def test_start_pool_starts_every_worker_at_once():
    """start_pool starts all workers before the first CCD, so their start-up overlaps the
    caller's own work instead of delaying the first exposure; shutdown stops them all."""
    from skygrade.streamer.ccd_pool import shutdown_pool, start_pool

    try:
        pool = start_pool(2)
        deadline = time.monotonic() + 60
        while len(pool._processes) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool._processes) == 2  # started, though no CCD was submitted
        workers = list(pool._processes.values())
        pids = {pool.submit(os.getpid).result(timeout=60) for _ in range(8)}
        assert pids <= {w.pid for w in workers} and os.getpid() not in pids
    finally:
        shutdown_pool()
    assert not any(w.is_alive() for w in workers)


# Page-fault counts after each of two 40 MB allocations, each freed at once (an expression,
# so that a spawned worker can evaluate it without importing this test module).
FAULTS_OF_TWO_LARGE_ALLOCATIONS = (
    "[(bytearray(40_000_000) and None, __import__('resource').getrusage(0).ru_minflt)[1]"
    " for _ in range(2)]"
)


def test_pool_workers_reuse_freed_memory_across_ccds():
    """Each full CCD allocates several 38 MB arrays; a worker keeps them for the next CCD
    instead of faulting in fresh zeroed pages (~10k faults per array by default)."""
    from skygrade.streamer.ccd_pool import ccd_pool, shutdown_pool

    try:
        pool = ccd_pool(1)
        first, second = pool.submit(eval, FAULTS_OF_TWO_LARGE_ALLOCATIONS).result(timeout=60)
    finally:
        shutdown_pool()
    assert second - first < 500
    # A fresh interpreter keeps glibc's defaults (this one may have measured CCDs already).
    fresh = subprocess.run(
        [sys.executable, "-c", f"print(*{FAULTS_OF_TWO_LARGE_ALLOCATIONS})"],
        capture_output=True,
        text=True,
        check=True,
    )
    first, second = map(int, fresh.stdout.split())
    assert second - first > 5000


def test_the_pool_handle_is_small_picklable_and_refuses_bad_sizes():
    """What the Beam graph holds (MeasureExposures pickles it): the worker count only."""
    import pickle

    from skygrade.streamer.ccd_pool import CcdPool, pooled

    assert pooled(0) is None and pooled(2) == CcdPool(2)
    assert pickle.loads(pickle.dumps(CcdPool(2))) == CcdPool(2)
    with pytest.raises(ValueError, match="ccd_workers"):
        pooled(-1)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        CcdPool(0)
