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
from .spec import ArenaSpec, load_spec
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
    console: Console | None = None,
) -> dict:
    """Add the spec's runs to the store, run every unfinished one, and optionally write the report.

    Finished runs are skipped; runs left ``running`` by a dead process are resumed from their last
    checkpoint; failed runs are retried only with ``retry_failed``. Only this spec's runs are
    executed: other rows of the store (another spec's, or an earlier version of this spec's) are
    left as they are.
    """
    console = console or Console()
    arena_spec = resolve_spec(spec)
    runs = arena_spec.expand()
    ids = {run.id for run in runs}
    with Store.open(store) as db:
        added = db.add_runs(runs)
        if retry_failed:
            db.requeue_failed()
        rows = [r for r in db.runs() if r["id"] in ids]
    already = sum(r["status"] in ("done", "failed") for r in rows)
    console.print(f"arena {arena_spec.name!r}: {len(runs)} runs ({added} new, {already} already finished) in {store}")

    with Progress(*progress_columns(), console=console, disable=not progress) as bar:
        grid = bar.add_task("grid", total=len(runs), completed=already, info="")

        def on_done(row: dict) -> None:
            if row["id"] not in ids:
                return
            labels = row.get("labels") or {}
            accuracy = (row.get("metrics") or {}).get("accuracy")
            outcome = f"acc {accuracy:.3f}" if row["status"] == "done" and accuracy is not None else row["status"]
            bar.update(grid, advance=1, info=f"last: {labels.get('mixer')} T={labels.get('seq_len')} "
                                              f"D={labels.get('d_model')} {outcome}")

        executors.run(executor, store, progress=bar if progress else False, on_done=on_done, workers=workers,
                      ray_address=ray_address, run_ids=ids)

    with Store.open(store, create=False) as db:
        records = [r for r in db.runs() if r["id"] in ids]
    summary = {"spec": arena_spec.name, "store": str(store), "runs": len(runs),
               "counts": {s: sum(r["status"] == s for r in records) for s in ("pending", "running", "done", "failed")},
               "records": records}
    print_leaderboard(records, console)
    if report_dir is not None:
        from ..report import write_report

        summary["report"] = {k: str(v) for k, v in write_report(records, report_dir, title=f"longrecall arena: {arena_spec.name}").items()}
        console.print(f"report written to {report_dir}")
    return summary


def print_leaderboard(records: list[dict], console: Console) -> None:
    from rich.table import Table

    from ..report.tables import fmt_bytes, leaderboard

    rows = leaderboard(records)
    table = Table(title="leaderboard")
    for column in ("task", "T", "mixer", "D", "accuracy", "state bytes", "params", "tokens/s", "seeds"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row.get("task")), str(row.get("seq_len")), str(row.get("mixer")), str(row.get("d_model")),
                      f"{row['accuracy']:.3f}" if row.get("accuracy") is not None else "—",
                      fmt_bytes(row.get("state_bytes")), f"{row.get('params') or 0:,}",
                      f"{row.get('tokens_per_s') or 0:,.0f}", str(row.get("seeds")))
    # a pipe or a CI log is not a terminal: give the table room instead of 80 truncated columns
    (console if console.is_terminal else Console(width=max(console.width, 140))).print(table)
