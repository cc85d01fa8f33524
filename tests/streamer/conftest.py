"""Fixtures for the live side: a guard against threads left running by a test."""

import threading
import time

import pytest

#: How long the guard waits for threads that are still shutting down.
THREAD_JOIN_GRACE_S = 2.0


@pytest.fixture
def no_thread_leak():
    """Fail the test if it leaves a thread running.

    Compares :func:`threading.enumerate` before and after the test; threads started by the test
    get ``THREAD_JOIN_GRACE_S`` seconds in all to finish. Use it with
    ``pytestmark = pytest.mark.usefixtures("no_thread_leak")`` in a module that starts threads.
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_JOIN_GRACE_S
    leaked = []
    for thread in threading.enumerate():
        if thread in before or thread is threading.current_thread():
            continue
        thread.join(max(deadline - time.monotonic(), 0.0))
        if thread.is_alive():
            leaked.append(thread)
    if leaked:
        names = ", ".join(sorted(f"{t.name} ({type(t).__name__})" for t in leaked))
        pytest.fail(f"test left {len(leaked)} thread(s) running: {names}", pytrace=False)
