"""Suite-wide settings: deterministic, single-threaded torch (the CI machine has 2 cores and
several test processes' worth of work; intra-op threads only add contention here)."""

import logging

import pytest


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A command run in a test (``skygrade ...``) sets up the root logger on the sys.stderr of
    that moment: pytest's capture stream, closed when the test ends. Later tests' log lines
    then fail with "I/O operation on closed file". Put the root logger back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tiny_bundle():
    """``tiny_bundle(path, version)``: save a small untrained model bundle at ``path`` and
    return the path. The SOM is fitted once per session on noise, the CNN (tile 16) is freshly
    initialised with torch seed 0: grades are arbitrary but deterministic, which is what the
    plumbing tests (grading, daemon, backfill, metrics) need."""
    import numpy as np
    import torch

    from skygrade.models.bundle import ModelBundle
    from skygrade.models.cnn import CnnShape, DualInputNet
    from skygrade.models.som import SOM_FEATURES, train_som

    rows = np.random.default_rng(0).normal(size=(3000, len(SOM_FEATURES))).astype(np.float32)
    som = train_som(rows, grid=(6, 6), iterations=1000, n_clusters=20, seed=0)

    def save(path, version: str):
        torch.manual_seed(0)
        return ModelBundle(som, DualInputNet(CnnShape(tile=16)), {"version": version}).save(path)

    return save
