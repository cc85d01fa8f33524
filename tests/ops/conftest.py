"""Fixtures of the ops tests: every test must end with the threads it started joined."""

import threading
import time

import pytest

JOIN_GRACE_S = 2.0


@pytest.fixture(autouse=True)
def no_thread_left_running():
    """Fail the test if it leaves a thread running that was not there before it started.

    A thread still alive after a short grace (it may be finishing a response) counts, daemon or
    not: a server or worker that the test started must have been stopped and joined.
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + JOIN_GRACE_S
    for thread in threading.enumerate():
        if thread not in before and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    if left:
        names = ", ".join(f"{t.name} (daemon={t.daemon})" for t in left)
        pytest.fail(f"test left {len(left)} thread(s) running: {names}", pytrace=False)
