import pytest
import torch

import longrecall.mixers  # noqa: F401  registers every mixer
import longrecall.policies  # noqa: F401  registers every KV-cache policy
import longrecall.tasks  # noqa: F401  registers every task


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # one thread: tests run while other processes may be busy, and 2-thread OpenMP barriers
    # make small ops 100x slower under contention (cpu_performance_notes.md section 6)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
