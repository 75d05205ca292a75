"""Test layout: one folder per package area, no ``__init__.py`` anywhere under tests/.

pytest's default ``prepend`` import mode then puts each test file's folder (and tests/ itself, for this
conftest) on ``sys.path`` and imports every file by its bare name. So test file names must be unique across
folders, and a helper module imports by its name: ``policy_helpers`` (here, shared by tests/policies and
tests/adapters) and ``mixer_helpers`` (tests/mixers). A helper lives in the nearest folder above all its users.
"""

import pytest
import torch

import longrecall.mixers  # registers every mixer
import longrecall.policies  # registers every KV-cache policy
import longrecall.tasks  # noqa: F401 - registers every task

pytest.register_assert_rewrite("mixer_helpers")  # its shared checks' asserts explain their failures, as a test's do


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
