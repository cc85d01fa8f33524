"""Fixtures for the live side: a guard against threads left running by a test, a daemon
configuration for tiny exposures, and a bounded wait."""

import dataclasses
import threading
import time

import pytest

from skygrade.ops.config import Config
from skygrade.ops.config_daemon import MetricsConfig, WatchConfig

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


@pytest.fixture
def daemon_config() -> Config:
    """A daemon configuration for tiny exposures: short settle and poll times, one CCD worker,
    fast retries, and the metrics server on a free port."""
    return dataclasses.replace(
        Config(),
        watch=WatchConfig(settle_s=0.2, poll_s=0.05, rescan_s=None, ccd_workers=1, retry_s=0.2),
        metrics=MetricsConfig(port=0),
    )


@pytest.fixture
def wait_for():
    """``wait_for(predicate, timeout=120.0)``: poll until it is true; False on timeout."""

    def wait(predicate, timeout=120.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.1)
        return False

    return wait


@pytest.fixture(scope="session")
def observer_rows():
    """The hand-made grades rows of tests/streamer/test_observer.py (``exposure``,
    ``ccd_rows``): one source of rows for the page's other tests."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "observer_rows", Path(__file__).with_name("test_observer.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
