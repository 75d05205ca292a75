"""``longrecall check MIXER``: run the contract suite on one mixer; non-zero exit on failure."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from ..contract import CHECKS, run_contract
from ..registry import MIXERS


def run(args) -> int:
    names = MIXERS.names() if args.mixer == "all" else [args.mixer]
    try:
        for name in names:
            MIXERS.get(name)
    except KeyError as error:
        print(error.args[0])
        return 2
    results = [r for name in names for r in run_contract(name, d_model=args.d_model, checks=args.checks)]
    failed = [r for r in results if r.passed is False]
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        table = Table(title="contract")
        for column in ("mixer", "check", "result", "seconds", "detail"):
            table.add_column(column)
        for r in results:
            mark = "[green]pass" if r.passed else ("[yellow]known gap" if r.passed is None else "[red]FAIL")
            table.add_row(r.mixer, r.check, mark, f"{r.seconds:.2f}", "" if r.passed else r.message)
        Console().print(table)
        print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "check",
        help="run the memory contract on a mixer",
        description="Check a mixer against the contract every memory must satisfy: "
        + ", ".join(CHECKS) + ".",
        epilog="examples:\n  longrecall check mamba\n  longrecall check all --json\n"
        "  longrecall check sliding_window --checks parallel_equals_step chunked_carry",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mixer", help="registry key of the mixer, or 'all'")
    p.add_argument("--d-model", type=int, default=16, help="width of the test instance (default 16)")
    p.add_argument("--checks", nargs="+", choices=list(CHECKS), help="run only these checks")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)
