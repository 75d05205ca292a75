"""``longrecall export STORE --format csv|jsonl``: the store's runs for pandas and friends."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run(args) -> int:
    from ..arena.store import Store, StoreError

    out = Path(args.out or Path(args.store).with_suffix(f".{args.format}").name)
    try:
        with Store.open(args.store, create=False) as store:
            path = store.export(out, format=args.format)
    except (StoreError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a results store as CSV or JSON lines",
        description="One row per run: id, status, labels, accuracy, state bytes, params, timings, versions "
        "(CSV), or every stored column including per-distance accuracy and training curves (JSON lines).",
        epilog="examples:\n  longrecall export arena.db --format csv\n  longrecall export arena.db --format jsonl -o runs.jsonl\n"
        "  python -c \"import pandas as pd; print(pd.read_json('runs.jsonl', lines=True))\"",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store")
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    p.add_argument("-o", "--out", help="output file (default: STORE name with the format's suffix)")
    p.set_defaults(run=run)
