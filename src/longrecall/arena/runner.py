"""Run a grid: claim pending runs from the store, train each, write its result transactionally.

Durability comes from three rules:

1. a run is claimed (status ``running``, owner ``host:pid``) in one transaction before it starts,
   so two workers never train the same run;
2. its result is written with its ``done`` status in one transaction, and only by its owner, so a
   killed worker leaves either no result or a whole one, never two;
3. each run trains in ``<store>.runs/<run id>/`` and checkpoints there (atomically), so a restarted
   arena reclaims a run whose owner died and resumes it from its last checkpoint; training is
   deterministic per step, so the resumed run ends with exactly the losses of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import traceback
from pathlib import Path

from ..config import TrainConfig
from ..train import TrainingDiverged, train
from .store import Store, default_owner


def checkpoint_root(store_path: str | Path) -> Path:
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".runs")


def execute(store: Store, claimed: dict, *, owner: str, progress: bool = False, threads: int | None = None) -> dict:
    """Train one claimed run and record its result (or its failure). Returns the stored row."""
    run_id = claimed["id"]
    config = TrainConfig(**claimed["config"])
    out_dir = checkpoint_root(store.path) / run_id
    changes = {"out_dir": str(out_dir)}
    if threads is not None:
        changes["threads"] = threads
    config = dataclasses.replace(config, **changes)
    try:
        metrics = train(config, progress=progress, resume=True, log=lambda message: None)
        store.finish(run_id, metrics, eval_seconds=metrics["eval_seconds"], owner=owner)
    except (Exception, TrainingDiverged) as error:  # the run fails; the arena goes on
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        store.fail(run_id, f"{detail}\n\n{traceback.format_exc()}", owner=owner)
    return store.get(run_id)


def work_loop(store_path: str | Path, *, owner: str | None = None, progress: bool = False,
              threads: int | None = None, max_runs: int | None = None, on_done=None, keep_going=None,
              run_ids=None) -> int:
    """Claim and execute runs until none is left; returns how many this worker executed.

    ``keep_going()`` (optional) is asked before each claim; a process-pool worker uses it to stop
    when the arena that started it has gone. ``run_ids`` restricts the claims to those runs.
    """
    owner = owner or default_owner()
    done = 0
    with Store.open(store_path, create=False) as store:
        while max_runs is None or done < max_runs:
            if keep_going is not None and not keep_going():
                break
            claimed = store.next_pending(owner, ids=run_ids)
            if claimed is None:
                break
            row = execute(store, claimed, owner=owner, progress=progress, threads=threads)
            done += 1
            if on_done is not None:
                on_done(row)
    return done

