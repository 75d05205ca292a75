"""``longrecall export STORE --format csv|jsonl``: the store's runs for pandas and friends."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run(args) -> int:
    from ..arena.store import Store, StoreError

    out = Path(args.out or Path(args.store).with_suffix(f".{args.format}").name)
    policies_out = Path(args.policies_out) if args.policies_out else out.with_name(f"{out.stem}.policies{out.suffix}")
    try:
        with Store.open(args.store, create=False) as store:
            path = store.export(out, format=args.format)
            has_policies = sum(store.policy_counts().values()) > 0
            policy_path = store.export_policy_evals(policies_out, format=args.format) if has_policies else None
            evaluations_out = out.with_name(f"{out.stem}.evaluations{out.suffix}")
            evaluations_path = store.export_evaluations(evaluations_out, format=args.format) \
                if store.evaluations() else None
    except (StoreError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    if policy_path is not None:
        print(f"wrote {policy_path} (KV-cache policy evaluations)")
    if evaluations_path is not None:
        print(f"wrote {evaluations_path} (kv-eval and memory-eval results)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a results store as CSV or JSON lines",
        description="One row per run: id, status, labels, accuracy, state bytes, params, timings, versions "
        "(CSV), or every stored column including per-distance accuracy and training curves (JSON lines). "
        "When the store holds KV-cache policy evaluations they go to a second file, OUT's name with "
        "'.policies' before the suffix (or --policies-out): one row per (run, policy, budget) with the "
        "run's labels, budget (as given, as a fraction, in tokens), accuracy, the full-cache reference, "
        "state bytes after the context and at the end, resident bytes and timings. Results of `kv-eval` and "
        "`memory-eval` written to the store go to a third file, OUT's name with '.evaluations' before the suffix.",
        epilog="examples:\n  longrecall export arena.db --format csv     # arena.csv (+ arena.policies.csv)\n"
        "  longrecall export arena.db --format jsonl -o runs.jsonl   # + runs.policies.jsonl\n"
        "  python -c \"import pandas as pd; print(pd.read_json('runs.jsonl', lines=True))\"",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store")
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    p.add_argument("-o", "--out", help="output file (default: STORE name with the format's suffix)")
    p.add_argument("--policies-out", help="file for the KV-cache policy evaluations (default: OUT with .policies "
                   "before the suffix); written only when the store has some")
    p.set_defaults(run=run)
