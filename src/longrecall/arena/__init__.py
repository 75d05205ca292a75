"""The arena: grid specs that expand into runs, the results store, executors and presets.

    from longrecall.arena import run_arena
    run_arena("quick", store="arena.db", report_dir="report")
"""

from .arena import run_arena
from .presets import PRESETS
from .spec import ArenaSpec, RunSpec, load_spec, run_id
from .store import SCHEMA_VERSION, Store, StoreError, code_version

__all__ = ["PRESETS", "run_arena", "ArenaSpec", "RunSpec", "SCHEMA_VERSION", "Store", "StoreError", "code_version",
           "load_spec", "run_id"]
