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


def state_bytes_table(widths: list[int], length: int, names: list[str] | None = None) -> list[dict]:
    """Measured state bytes per layer (batch 1, float32, default arguments) after ``length`` tokens.

    The state is the one ``forward`` returns after reading ``length`` random tokens, so a growing
    cache (attention) or a filling window is counted as it really is at that length.
    """
    import torch

    rows_out = []
    for name in names or MIXERS.names():
        cls = MIXERS.get(name)
        row = {"name": name, "state_growth": cls.state_growth}
        for width in widths:
            torch.manual_seed(0)
            mixer = cls(width).eval()
            with torch.no_grad():
                _, state = mixer(torch.randn(1, length, width))
            row[f"D={width}"] = mixer.state_bytes(state)
        rows_out.append(row)
    return rows_out


def _state_bytes(args) -> int:
    try:
        widths = [int(w) for w in args.widths.split(",")]
        if not widths or min(widths) <= 0:
            raise ValueError
    except ValueError:
        raise SystemExit("--widths must be comma-separated positive ints (e.g. 64,128,256), "
                         f"got {args.widths!r}") from None
    if args.length <= 0:
        raise SystemExit(f"--length must be a positive int, got {args.length}")
    table = state_bytes_table(widths, args.length, args.mixers.split(",") if args.mixers else None)
    if args.json:
        print(json.dumps({"length": args.length, "batch": 1, "dtype": "float32", "rows": table}, indent=2))
        return 0
    columns = ["name", "state_growth"] + [f"D={w}" for w in widths]
    print(f"State bytes per layer after T={args.length} tokens (batch 1, float32, default arguments):\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in table:
        print("| " + " | ".join(f"{row[c]:,}" if isinstance(row[c], int) else f"`{row[c]}`" if c == "name"
                                 else str(row[c]) for c in columns) + " |")
    return 0


def run(args) -> int:
    if args.state_bytes:
        if args.kind not in (None, "mixers"):
            raise SystemExit("--state-bytes applies to mixers only: longrecall ls mixers --state-bytes")
        return _state_bytes(args)
    kinds = [args.kind] if args.kind else list(KINDS)
    data = {kind: rows(kind) for kind in kinds}
    if args.json:
        print(json.dumps(data if len(kinds) > 1 else data[kinds[0]], indent=2))
        return 0
    console = Console()
    for kind in kinds:
        table = Table(title=kind)
        columns = (["name"] + (["state_growth"] if kind == "mixers" else []) + (["version"] if kind == "tasks" else [])
                   + ["description"])
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
        epilog="examples:\n  longrecall ls\n  longrecall ls mixers\n  longrecall ls tasks --json\n"
               "  longrecall ls mixers --state-bytes --widths 64,128,256 --length 1024",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", nargs="?", choices=list(KINDS), help="what to list (default: everything)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--state-bytes", action="store_true",
                   help="measure each mixer's state bytes per layer (batch 1, float32) and print a markdown table")
    p.add_argument("--widths", default="64,128,256", help="d_model values for --state-bytes (default 64,128,256)")
    p.add_argument("--length", type=int, default=1024,
                   help="tokens read before measuring, for --state-bytes (default 1024)")
    p.add_argument("--mixers", default=None, help="comma-separated mixers for --state-bytes (default: all)")
    p.set_defaults(run=run)
