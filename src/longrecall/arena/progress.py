"""Where an arena stands (``longrecall arena SPEC --status``): every run of the spec, done or not.

A preset of many runs takes hours and several sessions; between them the store says which runs are
done, but a run in progress lives in its checkpoint (``<store>.runs/<id>/checkpoint.json``). This
module reads both, without running anything (opening a store written by an older schema migrates it, as
every command does): per run its state (``done``, ``failed``,
``running`` under a live process, ``interrupted`` when its process is gone, ``pending``), the steps
trained (the checkpoint's for an unfinished run) against the run's cap (``max_steps`` or ``steps``),
its median training seconds per step so far (measured while whatever else ran on the machine ran), its
last held-out accuracy and, when done, its convergence status; then totals. It makes no
estimate of the time left: runs stop early (converged, plateau), so the steps still possible are an
upper bound and are reported as such.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..checkpoint import read_manifest
from ..report.records import mixer_name
from .owners import owner_alive
from .runner import checkpoint_root, policy_status
from .store import Store

__all__ = ["arena_progress", "format_progress"]

STATES = ("done", "failed", "running", "interrupted", "pending")


def _state(row: dict) -> str:
    if row["status"] == "running":
        return "running" if owner_alive(row.get("owner")) else "interrupted"
    return row["status"]


def arena_progress(store_path: str | Path, run_ids: list[str], policies: list[dict] | None = None) -> dict:
    """``{"runs": [...], "totals": {...}, "policies": {...}}`` for the runs ``run_ids`` of the store (see the
    module docstring).

    Each run: ``id, mixer, task, seq_len, d_model, lr, state, steps, cap, accuracy, convergence,
    train_seconds, median_step_seconds``. Totals: the count per state, ``steps`` trained and ``cap``
    (their sum over runs), and ``train_seconds`` (worker time so far, checkpoints included).
    ``policies`` (the spec's KV-cache policy plan, when it has one): the evaluations the done runs
    call for and how many are stored (``runner.policy_status``).
    """
    wanted = list(dict.fromkeys(run_ids))
    with Store.open(store_path, create=False) as store:
        rows = {r["id"]: r for r in store.runs() if r["id"] in set(wanted)}
        policy = policy_status(store, wanted, policies) if policies else None
    root = checkpoint_root(store_path)
    runs = []
    for run_id in wanted:
        row = rows.get(run_id)
        if row is None:  # not added yet (the arena adds a spec's runs when it starts)
            continue
        config, labels = row.get("config") or {}, row.get("labels") or {}
        cap = config.get("max_steps") or config.get("steps")
        state = _state(row)
        steps, seconds, history = row.get("steps"), row.get("train_seconds"), row.get("history") or []
        accuracy = (row.get("metrics") or {}).get("accuracy")
        if state != "done":
            manifest = read_manifest(root / run_id) if (root / run_id).exists() else None
            history = (manifest or {}).get("history") or []
            evals = (manifest or {}).get("evals") or []
            steps = (manifest or {}).get("step", 0)
            accuracy = evals[-1].get("accuracy") if evals else None
            seconds = sum(h.get("seconds", 0.0) for h in history)
        step_times = [h["seconds"] for h in history if isinstance(h.get("seconds"), (int, float))]
        runs.append({"id": run_id, "mixer": mixer_name(labels), "task": labels.get("task"),
                     "seq_len": labels.get("seq_len"), "d_model": labels.get("d_model"), "lr": labels.get("lr"),
                     "state": state, "steps": steps or 0, "cap": cap, "accuracy": accuracy,
                     "convergence": row.get("convergence") if state == "done" else None,
                     "train_seconds": seconds or 0.0,
                     # the median, not the mean: a paused or suspended process puts its pause into one step
                     "median_step_seconds": statistics.median(step_times) if step_times else None})
    totals = {state: sum(r["state"] == state for r in runs) for state in STATES}
    totals.update(runs=len(runs), steps=sum(r["steps"] for r in runs), cap=sum(r["cap"] or 0 for r in runs),
                  train_seconds=sum(r["train_seconds"] for r in runs))
    return {"runs": runs, "totals": totals, "policies": policy}


def format_progress(progress: dict) -> str:
    """A markdown table of the unfinished and finished runs, and a summary line."""
    t = progress["totals"]
    lines = ["| state | mixer | task | T | D | lr | steps / cap | s / step | accuracy | convergence |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    order = {state: i for i, state in enumerate(("running", "interrupted", "pending", "failed", "done"))}
    for r in sorted(progress["runs"], key=lambda r: order[r["state"]]):
        accuracy = "" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lr = "" if r["lr"] is None else f"{r['lr']:g}"
        rate = "" if r["median_step_seconds"] is None else f"{r['median_step_seconds']:.2f}"
        lines.append(f"| {r['state']} | {r['mixer']} | {r['task']} | {r['seq_len']} | {r['d_model']} | {lr} | "
                     f"{r['steps']:,} / {r['cap']:,} | {rate} | {accuracy} | {r['convergence'] or ''} |")
    counts = ", ".join(f"{t[state]} {state}" for state in STATES if t[state])
    lines.append(f"\n{t['runs']} runs: {counts}. Steps trained {t['steps']:,} of at most {t['cap']:,} (runs may "
                 f"stop before their cap); {t['train_seconds'] / 3600:.1f} worker-hours of training so far.")
    p = progress.get("policies")
    if p:
        lines.append(f"KV-cache policy evaluations of the done attention runs: {p['done']} done, {p['skipped']} "
                     f"skipped, {p['failed']} failed, {p['missing']} to do, of {p['expected']}.")
    return "\n".join(lines)
