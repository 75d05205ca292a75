"""``run_arena``: a spec in, every run trained once and stored, a leaderboard and report out.

    from longrecall.arena import run_arena
    summary = run_arena("quick", store="arena.db", report_dir="report")   # a preset, a file or a dict
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from ..train import progress_columns
from . import executors
from .presets import PRESETS, get_preset
from .runner import policy_status
from .spec import ArenaSpec, load_spec, longest_first, policy_applies
from .store import Store


def resolve_spec(spec: str | Path | dict | ArenaSpec) -> ArenaSpec:
    """A preset name, a TOML/Python spec file, a dict or an ArenaSpec; validated before anything runs."""
    if isinstance(spec, str) and spec in PRESETS and not Path(spec).exists():
        return load_spec(get_preset(spec))
    return load_spec(spec)


def run_arena(
    spec: str | Path | dict | ArenaSpec,
    *,
    store: str | Path = "arena.db",
    executor: str = "local",
    workers: int = 2,
    ray_address: str | None = None,
    report_dir: str | Path | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    reassess: bool = False,
    console: Console | None = None,
) -> dict:
    """Add the spec's runs to the store, run every unfinished one, and optionally write the report.

    Finished runs are skipped; runs left ``running`` by a dead process are resumed from their last
    checkpoint; failed runs are retried only with ``retry_failed``. Only this spec's runs are
    executed: other rows of the store (another spec's, or an earlier version of this spec's) are
    left as they are.

    With ``policies`` in the spec, every done run with an attention layer is then evaluated under
    each (policy, budget) pair it lacks, from its final checkpoint (never retrained); the summary
    gains ``policy_evals`` (counts: expected, done, skipped, failed, missing, new),
    ``policy_unavailable`` ({run id: why its checkpoint cannot be used}) and ``policy_records``.
    ``retry_failed`` also re-runs failed and skipped policy evaluations.

    ``reassess``: first recompute the convergence status of the spec's finished runs under the current
    rule (``Store.reassess``) and continue, from their checkpoints, those an earlier rule stopped on a
    plateau that the current one finds still learning.
    """
    console = console or Console()
    arena_spec = resolve_spec(spec)
    runs = arena_spec.expand()
    ids = {run.id for run in runs}
    plan = arena_spec.policy_plan
    with Store.open(store) as db:
        added = db.add_runs(longest_first(runs))  # workers claim in insertion order
        # runs an earlier, killed arena left half-trained go back to the queue at their place (they were
        # claimed first, so they resume first, from their checkpoints); within this arena, a run whose
        # worker dies is retried only after every pending run (a run that kills its worker cannot
        # block the rest)
        interrupted = db.reset_stale(ids)
        if interrupted:
            console.print(f"{interrupted} run(s) interrupted by an earlier arena resume first, from their checkpoints")
        if reassess:
            for change in db.reassess(ids, reopen=True):
                what = "continued from its checkpoint" if change["reopened"] else "relabelled"
                console.print(f"reassess: {_run_name(change['labels'])} at step {change['steps']}: {change['was']} -> "
                              f"{change['now']} ({what})")
        if retry_failed:
            db.requeue_failed()
            if plan:
                db.requeue_failed_policy_evals(ids)
        rows = [r for r in db.runs() if r["id"] in ids]
        before = policy_status(db, ids, plan)
    already = sum(r["status"] in ("done", "failed") for r in rows)
    console.print(f"arena {arena_spec.name!r}: {len(runs)} runs ({added} new, {already} already finished) in {store}")
    n_pairs = sum(len(entry["budgets"]) for entry in plan)
    n_attn = sum(policy_applies(run.config) for run in runs)
    stored = before["done"] + before["skipped"] + before["failed"]
    if plan:
        console.print(f"KV-cache policies: {len(plan)} policies, {n_pairs} (policy, budget) evaluations for each of "
                      f"{n_attn} run(s) with an attention layer ({stored} already stored)")

    with Progress(*progress_columns(), console=console, disable=not progress) as bar:
        grid = bar.add_task("grid", total=len(runs), completed=already, info="")
        kv = bar.add_task("policies", total=n_pairs * n_attn, completed=stored, info="", visible=bool(plan))

        def on_done(row: dict) -> None:
            if row["id"] not in ids:
                return
            labels = row.get("labels") or {}
            accuracy = (row.get("metrics") or {}).get("accuracy")
            outcome = f"acc {accuracy:.3f}" if row["status"] == "done" and accuracy is not None else row["status"]
            bar.update(grid, advance=1, info=f"last: {labels.get('mixer')} T={labels.get('seq_len')} "
                                              f"D={labels.get('d_model')} {outcome}")

        def on_policy(record: dict) -> None:
            if record["run_id"] not in ids:
                return
            accuracy = (record.get("metrics") or {}).get("accuracy")
            outcome = f"acc {accuracy:.3f}" if record["status"] == "done" and accuracy is not None else record["status"]
            bar.update(kv, advance=1, info=f"last: {record['policy_label']} budget {record['budget']} {outcome}")

        executors.run(executor, store, progress=bar if progress else False, on_done=on_done, workers=workers,
                      ray_address=ray_address, run_ids=ids, policies=plan, on_policy=on_policy)

    with Store.open(store, create=False) as db:
        records = [r for r in db.runs() if r["id"] in ids]
        policy_records = db.policy_evals(ids) if plan else []
        evaluations = db.evaluations()  # kv-eval / memory-eval rows written to this store
        after = policy_status(db, ids, plan)
    summary = {"spec": arena_spec.name, "store": str(store), "runs": len(runs),
               "counts": {s: sum(r["status"] == s for r in records) for s in ("pending", "running", "done", "failed")},
               "records": records}
    if plan:
        summary["policy_evals"] = {k: after[k] for k in ("expected", "done", "skipped", "failed", "missing")}
        summary["policy_evals"]["new"] = (after["done"] + after["skipped"] + after["failed"]
                                          - before["done"] - before["skipped"] - before["failed"])
        summary["policy_unavailable"] = after["unavailable"]
        summary["policy_records"] = policy_records
    print_leaderboard(records, console)
    if plan:
        print_policy_leaderboard(records, policy_records, console)
        pe = summary["policy_evals"]
        console.print(f"policy evaluations: {pe['done']} done, {pe['skipped']} skipped, {pe['failed']} failed, "
                      f"{pe['missing']} missing of {pe['expected']} ({pe['new']} new)")
        for run_id, reason in after["unavailable"].items():
            console.print(f"  skipped run {run_id}: {reason}")
    if report_dir is not None:
        from ..report import write_report

        summary["report"] = {k: str(v) for k, v in write_report(
            records, report_dir, title=f"longrecall arena: {arena_spec.name}",
            policy_evals=policy_records if plan else None, evaluations=evaluations).items()}
        console.print(f"report written to {report_dir}")
    return summary


def _run_name(labels: dict) -> str:
    """``mamba d=64 lr=1e-03 mqar T=64``: enough of a run's labels to find it in the leaderboard."""
    from ..report.records import mixer_name

    lr = labels.get("lr")
    return " ".join(str(part) for part in (
        mixer_name(labels), f"d={labels.get('d_model')}", f"lr={lr:.0e}" if isinstance(lr, float) else None,
        labels.get("task"), f"T={labels.get('seq_len')}") if part is not None)


def print_leaderboard(records: list[dict], console: Console) -> None:
    from rich.table import Table

    from ..report.tables import fmt_bytes, fmt_lr, leaderboard, lower_bounds

    rows = leaderboard(records)
    table = Table(title="leaderboard (best learning rate per row; accuracy of a run that did not converge "
                        "is a lower bound)")
    for column in ("task", "T", "mixer", "D", "accuracy", "convergence", "lr", "steps", "state bytes", "params",
                   "tokens/s", "seeds"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row.get("task")), str(row.get("seq_len")), str(row.get("mixer")), str(row.get("d_model")),
                      f"{row['accuracy']:.3f}" if row.get("accuracy") is not None else "—",
                      str(row.get("convergence")), fmt_lr(row),
                      f"{row['steps']:.0f}" if row.get("steps") is not None else "",
                      fmt_bytes(row.get("state_bytes")), f"{row.get('params') or 0:,}",
                      f"{row.get('tokens_per_s') or 0:,.0f}", str(row.get("seeds")))
    # a pipe or a CI log is not a terminal: give the table room instead of 80 truncated columns
    wide = console if console.is_terminal else Console(width=max(console.width, 160))
    wide.print(table)
    if rows:
        bounds = lower_bounds(rows)
        wide.print(f"{len(rows) - len(bounds)} of {len(rows)} points converged; {len(bounds)} "
                   f"{'is a lower bound' if len(bounds) == 1 else 'are lower bounds'} (not converged)")


def print_policy_leaderboard(records: list[dict], policy_records: list[dict], console: Console) -> None:
    """One table per (task, length, model): a row per policy, its accuracy at each budget."""
    from rich.table import Table

    from ..report.tables import fmt_pct, pivot_title, policy_pivots

    wide = console if console.is_terminal else Console(width=max(console.width, 140))
    for pivot in policy_pivots(records, policy_records):
        table = Table(title=f"KV-cache policies: {pivot_title(pivot)}")
        for column in ("rank", "policy", "mean", *pivot["budget_labels"]):
            table.add_column(column)
        for row in pivot["rows"]:
            table.add_row(str(row["rank"]), row["policy"], fmt_pct(row["mean"]),
                          *[row["cells"].get(b, "—") for b in pivot["budget_labels"]])
        wide.print(table)
