"""Executors run the claimed runs of a store: in this process, in a process pool, or on Ray.

All three write through the same ``Store`` API (claim, then finish or fail), so a store filled by
one executor can be resumed by another. KV-cache policy evaluations (``policies``, a spec's
``policy_plan``) run where the checkpoints are: in the local and process executors each worker
evaluates the runs it finishes, then any done run still missing evaluations (a per-run claim keeps
two workers off the same run); with Ray the driver evaluates them after the training tasks, from
the store's run folders (so a remote cluster's runs, whose checkpoints stay remote, are reported
as skipped).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from .runner import evaluate_pending_policies, execute, work_loop
from .store import Store, default_owner

EXECUTORS = ("local", "process", "ray")


def run_local(store_path: str | Path, *, progress: bool = True, on_done: Callable | None = None,
              run_ids=None, policies: list[dict] | None = None, on_policy: Callable | None = None, **_) -> int:
    """In this process, one run after another, with the training progress bar of the current run."""
    return work_loop(store_path, progress=progress, on_done=on_done, run_ids=run_ids, policies=policies,
                     on_policy=on_policy)


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to this worker when the arena process dies.

    Without it, killing the arena left its workers claiming and training runs on their own. A
    worker killed mid-run leaves its run ``running`` under a dead owner, which the next arena
    reclaims and resumes from its checkpoint (the same path as a SIGKILL of the whole arena).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # no libc.so.6: fall back to the check before each claim
        pass


def _process_worker(store_path: str, threads: int | None, parent_pid: int | None = None, run_ids=None,
                    policies: list[dict] | None = None) -> int:
    _die_with_parent()
    if parent_pid is not None and os.getppid() != parent_pid:
        return 0  # the arena died before this worker got going
    return work_loop(store_path, threads=threads, run_ids=run_ids, policies=policies,
                     keep_going=None if parent_pid is None else (lambda: os.getppid() == parent_pid))


def run_process(store_path: str | Path, *, workers: int = 2, threads_per_worker: int | None = None,
                on_done: Callable | None = None, poll_seconds: float = 1.0, run_ids=None,
                policies: list[dict] | None = None, on_policy: Callable | None = None, **_) -> int:
    """A pool of worker processes, each claiming runs until none is left.

    On a 2-core machine, 2 workers at 1 thread each beat 1 worker at 2 threads for small models
    (../shared/reference/cpu_performance_notes.md section 3: 1.8x from the second thread).
    """
    threads = threads_per_worker or 1
    ctx = mp.get_context("spawn")
    with Store.open(store_path, create=False) as store:
        seen_done = {r["id"] for r in store.runs() if r["status"] in ("done", "failed")}
        seen_policy = {(r["run_id"], r["policy_key"], r["budget_key"]) for r in store.policy_evals()}
        run_ids = None if run_ids is None else sorted(run_ids)
        processes = [ctx.Process(target=_process_worker,
                                 args=(str(store_path), threads, os.getpid(), run_ids, policies or None))
                     for _ in range(workers)]
        for process in processes:
            process.start()
        executed = 0
        while True:
            alive = any(p.is_alive() for p in processes)
            for row in store.runs():
                if row["status"] in ("done", "failed") and row["id"] not in seen_done:
                    seen_done.add(row["id"])
                    executed += 1
                    if on_done is not None:
                        on_done(row)
            if policies:
                for row in store.policy_evals():
                    key = (row["run_id"], row["policy_key"], row["budget_key"])
                    if key not in seen_policy:
                        seen_policy.add(key)
                        if on_policy is not None:
                            on_policy(row)
            if not alive:
                break
            time.sleep(poll_seconds)
        for process in processes:
            process.join()
    return executed


def _ray_train(config_dict: dict, out_dir: str | None) -> dict:
    """The Ray task: train one run and return its metrics (the driver writes them to the store)."""
    import dataclasses

    from ..config import TrainConfig
    from ..train import train

    config = TrainConfig(**config_dict)
    if out_dir is not None:
        config = dataclasses.replace(config, out_dir=out_dir)
    return train(config, progress=False, resume=True, log=lambda message: None)


def run_ray(store_path: str | Path, *, ray_address: str | None = None, workers: int | None = None,
            threads_per_worker: int | None = None, on_done: Callable | None = None, run_ids=None,
            policies: list[dict] | None = None, on_policy: Callable | None = None, **_) -> int:
    """One Ray task per run on an existing cluster (``ray_address``) or a local one.

    The driver claims every pending run, submits it, and records each result through the store as it
    arrives; workers need no access to the store file. Checkpoints go to the store's run folder when
    the workers share this file system (a local cluster), so a killed arena resumes from them.
    """
    try:
        import ray
    except ImportError:
        raise RuntimeError("the ray executor needs Ray: pip install 'longrecall[ray]'") from None
    from .runner import checkpoint_root

    started_here = not ray.is_initialized()
    if started_here:
        init = {"address": ray_address} if ray_address else {"num_cpus": workers or None, "include_dashboard": False}
        ray.init(**{k: v for k, v in init.items() if v is not None}, log_to_driver=False)
    threads = threads_per_worker or 1
    remote = ray.remote(num_cpus=threads)(_ray_train)
    owner = default_owner()
    executed = 0
    try:
        with Store.open(store_path, create=False) as store:
            pending = {}
            while (claimed := store.next_pending(owner, ids=run_ids)) is not None:
                config = dict(claimed["config"], threads=threads)
                out_dir = None if ray_address else str(checkpoint_root(store.path) / claimed["id"])
                pending[remote.remote(config, out_dir)] = claimed["id"]
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                run_id = pending.pop(ready[0])
                try:
                    metrics = ray.get(ready[0])
                    store.finish(run_id, metrics, eval_seconds=metrics.get("eval_seconds"), owner=owner)
                except Exception as error:  # a failed task fails its run only
                    store.fail(run_id, f"{type(error).__name__}: {error}", owner=owner)
                executed += 1
                if on_done is not None:
                    on_done(store.get(run_id))
            if policies:  # driver-side, from the checkpoints in the store's run folders
                evaluate_pending_policies(store, policies, run_ids=run_ids, owner=owner,
                                          threads=threads_per_worker, on_policy=on_policy)
    finally:
        if started_here:
            ray.shutdown()
    return executed


def run(executor: str, store_path: str | Path, **kwargs) -> int:
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}; got {executor!r}")
    return {"local": run_local, "process": run_process, "ray": run_ray}[executor](store_path, **kwargs)


__all__ = ["EXECUTORS", "run", "run_local", "run_process", "run_ray", "execute"]
