"""``longrecall report STORE -o DIR``: leaderboard and plots from a results store."""

from __future__ import annotations

import argparse
import sys


def run(args) -> int:
    from ..arena.store import Store, StoreError
    from ..report import write_report

    try:
        with Store.open(args.store, create=False) as store:
            records = store.runs()
            policy_evals = store.policy_evals()
            evaluations = store.evaluations()
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
        "on the frontier, in panels of their own.",
        epilog="examples:\n  longrecall report arena.db -o report/\n"
        "  longrecall report runs.db -o out --title 'MQAR sweep'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="the SQLite results store written by `longrecall arena`")
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.add_argument("--title", default="longrecall report")
    p.add_argument("--all-lrs", action="store_true",
                   help="show every learning rate of a sweep "
                        "(default: each group at its best rate, Zoology's protocol)")
    p.set_defaults(run=run)
