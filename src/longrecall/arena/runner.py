"""Run a grid: claim pending runs from the store, train each, write its result transactionally.

Durability comes from three rules:

1. a run is claimed (status ``running``, owner ``host:pid``) in one transaction before it starts,
   so two workers never train the same run;
2. its result is written with its ``done`` status in one transaction, and only by its owner, so a
   killed worker leaves either no result or a whole one, never two;
3. each run trains in ``<store>.runs/<run id>/`` and checkpoints there (atomically), so a restarted
   arena reclaims a run whose owner died and resumes it from its last checkpoint; training is
   deterministic per step, so the resumed run ends with exactly the losses of an uninterrupted one.

KV-cache policy evaluations ("train once, evaluate many"): a run whose model has an ``attention``
layer is evaluated under every (policy, budget) pair of the spec's policy plan, from its final
checkpoint, after it is trained or when it is found done. Each evaluation is written in its own
transaction (``Store.add_policy_eval``), once; pairs already stored are skipped, so adding
policies to a spec evaluates only the new pairs and never retrains. A run without its checkpoint
(deleted, or trained on a remote Ray cluster) is never retrained for this: its evaluations are
reported as skipped, with the reason, and not stored.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path
from typing import Callable

from ..config import TrainConfig
from ..train import TrainingDiverged, train
from .spec import budget_key, policy_applies, policy_pairs
from .spec import run_id as config_run_id
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
    except TrainingDiverged as error:
        # a result, not a failure: the run is stored with convergence "diverged" and the held-out
        # accuracy of its last evaluation before the loss blew up (its last good checkpoint)
        if error.metrics is None:
            store.fail(run_id, str(error), owner=owner)
        else:
            store.finish(run_id, error.metrics, eval_seconds=error.metrics["eval_seconds"], owner=owner)
            store.set_error(run_id, str(error))
    except Exception as error:  # the run fails; the arena goes on
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        store.fail(run_id, f"{detail}\n\n{traceback.format_exc()}", owner=owner)
    return store.get(run_id)


def work_loop(store_path: str | Path, *, owner: str | None = None, progress: bool = False,
              threads: int | None = None, max_runs: int | None = None, on_done=None, keep_going=None,
              run_ids=None, policies: list[dict] | None = None, on_policy=None) -> int:
    """Claim and execute runs until none is left; returns how many this worker executed.

    ``keep_going()`` (optional) is asked before each claim; a process-pool worker uses it to stop
    when the arena that started it has gone. ``run_ids`` restricts the claims to those runs.
    ``policies`` (a spec's ``policy_plan``): each run this worker finishes is then evaluated under
    them, and once no run is left to train, so is every done run (of ``run_ids``) still missing
    evaluations; ``on_policy(row)`` is called with each stored evaluation.
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
            if policies and row["status"] == "done":
                evaluate_run_policies(store, row, policies, owner=owner, threads=threads, on_policy=on_policy)
        if policies and (max_runs is None or done < max_runs) and (keep_going is None or keep_going()):
            evaluate_pending_policies(store, policies, run_ids=run_ids, owner=owner, threads=threads,
                                      on_policy=on_policy, keep_going=keep_going)
    return done


# ----------------------------------------------------------------------------- KV-cache policies


def missing_policy_pairs(store: Store, row: dict, policies: list[dict]) -> list[tuple[dict, object]]:
    """The (policy entry, budget) pairs of ``policies`` a done run still lacks (none for a model
    without an attention layer). Failed evaluations count as present (``retry_failed`` deletes them)."""
    if not policies or row.get("status") != "done" or not policy_applies(row["config"]):
        return []
    stored = store.policy_eval_keys(row["id"])
    return [(entry, budget) for entry, budget in policy_pairs(policies)
            if (entry["key"], budget_key(budget)) not in stored]


def checkpoint_problem(store: Store, row: dict) -> str | None:
    """Why the run's final checkpoint cannot be used for policy evaluations (None: it can)."""
    from ..checkpoint import read_manifest

    folder = checkpoint_root(store.path) / row["id"]
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError) as error:
        return f"its checkpoint in {folder} cannot be read ({error}); the run is not retrained for policy evaluations"
    if manifest is None:
        return (f"no checkpoint in {folder} (a store written before policy evaluations, a deleted folder, or a "
                f"remote Ray cluster); the run is not retrained for policy evaluations")
    if config_run_id(manifest.get("config") or {}) != row["id"]:
        return f"the checkpoint in {folder} belongs to another config"
    if row.get("steps") is not None and manifest.get("step") != row["steps"]:
        return (f"the checkpoint in {folder} is at step {manifest.get('step')}, "
                f"but the run finished at step {row['steps']}")
    return None


def load_run_model(store: Store, row: dict, *, threads: int | None = None):
    """(model, config) of a done run, its weights from the run's final checkpoint."""
    import torch

    from ..checkpoint import load_weights
    from ..train import make_model, make_task

    config = TrainConfig(**row["config"])
    if threads or config.threads:
        torch.set_num_threads(threads or config.threads)
    task = make_task(config)
    model = make_model(config, task.vocab_size).to(torch.device(config.device))
    load_weights(checkpoint_root(store.path) / row["id"], model)
    model.eval()
    return model, config


def _policy_record(row: dict, entry: dict, budget, **values) -> dict:
    from ..policy_protocols import STORED_NAMES

    return {"run_id": row["id"], "policy_key": entry["key"], "budget_key": budget_key(budget), "policy": entry["name"],
            "policy_label": entry["label"], "policy_kwargs": entry["kwargs"], "mode": entry["mode"], "budget": budget,
            "protocol": STORED_NAMES[entry.get("protocol", "agnostic")], **values}


def evaluate_run_policies(store: Store, row: dict, policies: list[dict], *, owner: str | None = None,
                          threads: int | None = None, on_policy: Callable | None = None) -> dict:
    """Evaluate a done run under every (policy, budget) pair it still lacks, from its final checkpoint.

    Returns ``{"evaluated": n, "skipped_reason": str | None, "busy": bool}``: ``busy`` when another
    live worker holds the run's policy evaluations; ``skipped_reason`` when the checkpoint is
    missing (nothing is stored then: the run is never retrained for this).
    """
    from ..evaluate import evaluate, evaluate_policy
    from ..registry import POLICIES
    from ..train import eval_batches

    owner = owner or default_owner()
    result = {"evaluated": 0, "skipped_reason": None, "busy": False}
    if not missing_policy_pairs(store, row, policies):
        return result
    problem = checkpoint_problem(store, row)
    if problem is not None:
        result["skipped_reason"] = problem
        return result
    if not store.claim_policy_job(row["id"], owner):
        result["busy"] = True
        return result
    try:
        missing = missing_policy_pairs(store, row, policies)  # again, under the claim
        if not missing:
            return result
        model, config = load_run_model(store, row, threads=threads)
        checkpoint_step = row.get("steps")  # checkpoint_problem checked the checkpoint is at this step
        batch = eval_batches(config)[0]  # the training task's held-out batch at the run's length
        eval_batch = max(config.batch_size, 256)  # decoding token by token: fewer, larger batches are faster
        reference = evaluate(model, batch, batch_size=eval_batch)["accuracy"]
        context_len = batch.inputs.shape[1]
        for entry, budget in missing:
            tick = time.perf_counter()
            common = {"context_len": context_len, "checkpoint_step": checkpoint_step, "owner": owner}
            try:
                policy = POLICIES.get(entry["name"])(budget=budget, mode=entry["mode"], **entry["kwargs"])
                model.set_kv_policy(policy, context_len=context_len)  # an unusable budget raises here
            except ValueError as error:  # e.g. fewer tokens than the policy's sinks at this length
                record = _policy_record(row, entry, budget, status="skipped", error=str(error), **common)
            except Exception as error:  # a broken policy fails its evaluations only
                record = _policy_record(row, entry, budget, status="failed", error=_error_text(error), **common)
            else:
                try:
                    out = evaluate_policy(model, batch, policy, context_len=context_len, batch_size=eval_batch,
                                          protocol=entry.get("protocol", "agnostic"),
                                          decode_tokens=entry.get("decode_tokens", 32))
                except Exception as error:  # a failed evaluation fails this record only
                    record = _policy_record(row, entry, budget, status="failed", error=_error_text(error), **common)
                else:
                    metrics = {k: v for k, v in out.items() if k not in ("by_distance", "by_slice")}
                    metrics["reference_accuracy"] = reference
                    record = _policy_record(
                        row, entry, budget, status="done", metrics=metrics, by_distance=out["by_distance"],
                        by_slice=out["by_slice"], budget_tokens=out["budget_tokens"], state_bytes=out["state_bytes"],
                        state_bytes_end=out["state_bytes_end"], resident_bytes=out["resident_bytes"],
                        resident_bytes_end=out["resident_bytes_end"], protocol=out["protocol"], **common)
            finally:
                model.set_kv_policy(None)
            record["eval_seconds"] = time.perf_counter() - tick
            if record.get("budget_tokens") is None and budget is not None:
                try:
                    record["budget_tokens"] = POLICIES.get(entry["name"])(
                        budget=budget, mode=entry["mode"], **entry["kwargs"]).resolve_budget(context_len)
                except Exception:  # the budget stays unrecorded; the record is still stored
                    pass
            if store.add_policy_eval(record):
                result["evaluated"] += 1
                if on_policy is not None:
                    on_policy(record)
    finally:
        store.release_policy_job(row["id"], owner)
    return result


def _error_text(error: BaseException) -> str:
    detail = "".join(traceback.format_exception_only(type(error), error)).strip()
    return f"{detail}\n\n{traceback.format_exc()}"


def evaluate_pending_policies(store: Store, policies: list[dict], *, run_ids=None, owner: str | None = None,
                              threads: int | None = None, on_policy: Callable | None = None,
                              keep_going: Callable | None = None) -> dict:
    """Evaluate every done run (of ``run_ids``) still missing policy evaluations. Returns
    ``{"evaluated": n, "skipped": {run_id: reason}}`` (skipped: runs without a usable checkpoint)."""
    summary = {"evaluated": 0, "skipped": {}}
    wanted = None if run_ids is None else set(run_ids)
    for row in store.runs("done"):
        if wanted is not None and row["id"] not in wanted:
            continue
        if keep_going is not None and not keep_going():
            break
        out = evaluate_run_policies(store, row, policies, owner=owner, threads=threads, on_policy=on_policy)
        summary["evaluated"] += out["evaluated"]
        if out["skipped_reason"]:
            summary["skipped"][row["id"]] = out["skipped_reason"]
    return summary


def policy_status(store: Store, run_ids, policies: list[dict]) -> dict:
    """What the plan expects of the done runs of ``run_ids`` and where it stands: ``expected``,
    the stored ``done`` / ``skipped`` / ``failed`` counts, ``missing`` (not stored) and
    ``unavailable`` ({run_id: reason} for runs whose checkpoint cannot be used)."""
    wanted = set(run_ids)
    status = {"expected": 0, "done": 0, "skipped": 0, "failed": 0, "missing": 0, "unavailable": {}}
    if not policies:
        return status
    keys = {(entry["key"], budget_key(budget)) for entry, budget in policy_pairs(policies)}
    for row in store.runs("done"):
        if row["id"] not in wanted or not policy_applies(row["config"]):
            continue
        stored = store.policy_eval_keys(row["id"])
        status["expected"] += len(keys)
        for key in keys:
            if key in stored:
                status[stored[key]] += 1
            else:
                status["missing"] += 1
        if any(key not in stored for key in keys):
            problem = checkpoint_problem(store, row)
            if problem:
                status["unavailable"][row["id"]] = problem
    return status

