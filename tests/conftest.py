"""Suite-wide settings: deterministic, single-threaded torch (the CI machine has 2 cores and
several test processes' worth of work; intra-op threads only add contention here)."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    import torch

    torch.set_num_threads(1)
    yield
