"""``longrecall report STORE [STORE ...] -o DIR``: leaderboard and plots from one or more results stores."""

from __future__ import annotations

import argparse
import sys


def read_stores(paths) -> tuple[list[dict], list[dict], list[dict]]:
    """(runs, policy evaluations, evaluations) of several stores as one: the memories of separate presets
    (the frontier's recurrent states, a kv-budget arena's policies, memory-eval's retrievers) on one report.
    A row in more than one store (the same run id, the same policy evaluation, the same evaluation key) is
    kept once, from the first store that has it, except that a finished run replaces an unfinished copy."""
    from ..arena.store import Store

    runs: dict[str, dict] = {}
    policy_evals: dict[tuple, dict] = {}
    evaluations: dict[str, dict] = {}
    for path in paths:
        with Store.open(path, create=False) as store:
            for row in store.runs():
                kept = runs.get(row["id"])
                if kept is None or (kept.get("status") != "done" and row.get("status") == "done"):
                    runs[row["id"]] = row
            for row in store.policy_evals():
                policy_evals.setdefault((row["run_id"], row["policy_key"], row["budget_key"]), row)
            for row in store.evaluations():
                evaluations.setdefault(row["key"], row)
    return list(runs.values()), list(policy_evals.values()), list(evaluations.values())


def run(args) -> int:
    from ..arena.store import StoreError
    from ..report import write_report

    try:
        records, policy_evals, evaluations = read_stores(args.stores)
    except (StoreError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paths = write_report(records, args.out, title=args.title, policy_evals=policy_evals, all_lrs=args.all_lrs,
                         evaluations=evaluations)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write report.md, report.html and plots from a results store",
        description="Leaderboard (mechanism x task x length), accuracy vs length, accuracy vs state bytes "
        "(the memory frontier), accuracy vs key-query distance and training curves, each point with its "
        "convergence status (hollow when not converged) and, for learning-rate sweeps, at its best rate; "
        "when the store holds "
        "KV-cache policy evaluations, a policy x budget leaderboard, accuracy vs budget, and the policies' "
        "points on the frontier; when it holds `kv-eval` or `memory-eval` results, their tables and their points "
        "on the frontier, in panels of their own. Several stores are read as one (a row in two of them is kept "
        "once), so separate presets share one report and one frontier.",
        epilog="examples:\n  longrecall report arena.db -o report/\n"
        "  longrecall report runs.db -o out --title 'MQAR sweep'\n"
        "  longrecall report runs/frontier.db runs/kv_next_token.db -o report/all",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("stores", nargs="+", metavar="store",
                   help="a SQLite results store written by `longrecall arena`, `kv-eval --store` or "
                        "`memory-eval --store`; several are read as one")
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.add_argument("--title", default="longrecall report")
    p.add_argument("--all-lrs", action="store_true",
                   help="show every learning rate of a sweep "
                        "(default: each group at its best rate, Zoology's protocol)")
    p.set_defaults(run=run)
