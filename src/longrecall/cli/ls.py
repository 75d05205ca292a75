"""``longrecall ls [mixers|tasks|policies]``: what is registered, with a one-line description."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from ..registry import MIXERS, POLICIES, TASKS

KINDS = {"mixers": MIXERS, "tasks": TASKS, "policies": POLICIES}


def first_line(cls) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def rows(kind: str) -> list[dict]:
    out = []
    for name, cls in KINDS[kind].items():
        row = {"name": name, "description": first_line(cls)}
        if kind == "mixers":
            row["state_growth"] = cls.state_growth
            module_doc = (__import__(cls.__module__, fromlist=["_"]).__doc__ or "").strip()
            row["description"] = module_doc.splitlines()[0] if module_doc else row["description"]
        if kind == "tasks":
            row["version"] = cls.version
        out.append(row)
    return out


def run(args) -> int:
    kinds = [args.kind] if args.kind else list(KINDS)
    data = {kind: rows(kind) for kind in kinds}
    if args.json:
        print(json.dumps(data if len(kinds) > 1 else data[kinds[0]], indent=2))
        return 0
    console = Console()
    for kind in kinds:
        table = Table(title=kind)
        columns = ["name"] + (["state_growth"] if kind == "mixers" else []) + (["version"] if kind == "tasks" else []) + ["description"]
        for column in columns:
            table.add_column(column)
        for row in data[kind]:
            table.add_row(*(str(row[c]) for c in columns))
        if not data[kind]:
            table.add_row(*(["(none yet)"] + [""] * (len(columns) - 1)))
        console.print(table)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ls",
        help="list registered mixers, tasks and policies",
        description="List what is registered.",
        epilog="examples:\n  longrecall ls\n  longrecall ls mixers\n  longrecall ls tasks --json",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", nargs="?", choices=list(KINDS), help="what to list (default: everything)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)
