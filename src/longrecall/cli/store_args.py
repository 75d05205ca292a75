"""``--store`` / ``--report`` for the commands that measure a memory outside the arena (``kv-eval``,
``memory-eval``): their rows go to a results store's ``evaluations`` table, and the store's report is
written from everything it holds."""

from __future__ import annotations

from pathlib import Path


def store_and_report(rows: list[dict], args) -> str:
    """With ``--store``: add ``rows`` to the results store's ``evaluations`` table; with ``--report`` too:
    write the store's report (its runs, policy evaluations and evaluations). Returns what was written."""
    if not args.store:
        return ""
    from ..arena.store import Store

    with Store.open(args.store) as store:
        store.add_evaluations(rows)
        if not args.report:
            return f"\nadded {len(rows)} evaluations to {args.store}"
        from ..report import write_report

        write_report(store.runs(), args.report, title=f"longrecall report: {args.store}",
                     policy_evals=store.policy_evals(), evaluations=store.evaluations())
    return f"\nadded {len(rows)} evaluations to {args.store}; report in {args.report}"


def check_store_args(args) -> str | None:
    """The error for ``--report`` without ``--store``, or for a store file that is not a results store."""
    if args.report and not args.store:
        return "--report writes the report of a results store: give --store too"
    if args.store:
        from ..arena.store import StoreError
        from ..arena.store_schema import check_store_file

        try:
            check_store_file(Path(args.store), create=True)
        except StoreError as error:
            return f"--store: {error}"
    return None


def add_store_arguments(p) -> None:
    p.add_argument("--store", default=None,
                   help="also add the results to this results store (SQLite; created if missing), beside arena runs")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="with --store: write the store's report (report.md, report.html, the frontier) to DIR")
