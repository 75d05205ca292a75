"""Rows for the results store's tests, shared by tests/arena and tests/report. Imported by its bare name,
``from store_helpers import evaluation_row`` (see tests/conftest.py)."""

import subprocess
import sys


def dead_pid() -> int:
    """The pid of a process that has exited (an owner the store must treat as dead)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def evaluation_row(**overrides) -> dict:
    """A ``memory-eval`` row of the store's ``evaluations`` table, with ``overrides`` applied."""
    base = {"source": "memory-eval", "family": "agent memory", "task": "locomo-style", "length": 300,
            "system": "bm25 / turn", "budget": None, "protocol": None, "setting": {"k": [5, 10], "seed": 0},
            "metric": "recall@10", "score": 0.75, "reference_score": None, "state_bytes": 4096,
            "metrics": {"recall@5": 0.5}, "seconds": 1.5}
    return {**base, **overrides}
