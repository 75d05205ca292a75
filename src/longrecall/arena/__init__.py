"""The arena: grid specs that expand into runs, the results store, executors and presets.

    from longrecall.arena import run_arena
    run_arena("quick", store="arena.db", report_dir="report")
"""

from .spec import ArenaSpec, RunSpec, load_spec, run_id  # noqa: F401
from .store import SCHEMA_VERSION, Store, StoreError, code_version  # noqa: F401
from .arena import run_arena  # noqa: E402,F401
from .presets import PRESETS  # noqa: E402,F401

__all__ = ["PRESETS", "run_arena", "ArenaSpec", "RunSpec", "SCHEMA_VERSION", "Store", "StoreError", "code_version", "load_spec", "run_id"]
