"""``longrecall arena SPEC|--preset NAME``: train and evaluate a grid durably, then report."""

from __future__ import annotations

import argparse
import json
import sys

from ..config import ConfigError


def run(args) -> int:
    from ..arena.arena import run_arena
    from ..arena.executors import EXECUTORS
    from ..arena.presets import PRESETS
    from ..arena.store import StoreError

    if args.list_presets:
        if args.json:
            print(json.dumps({name: p["description"] for name, p in PRESETS.items()}, indent=2))
        else:
            for name, preset in PRESETS.items():
                print(f"{name:14s} {preset['description']}")
        return 0
    if (args.spec is None) == (args.preset is None):
        print("error: give exactly one of SPEC (a .toml or .py file) or --preset NAME "
              f"(presets: {', '.join(PRESETS)})", file=sys.stderr)
        return 2
    if args.preset is not None and args.preset not in PRESETS:
        print(f"error: --preset: unknown preset {args.preset!r}; available: {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    if args.status:
        return _status(args)
    if args.executor not in EXECUTORS:
        print(f"error: --executor must be one of {', '.join(EXECUTORS)}", file=sys.stderr)
        return 2
    try:
        summary = run_arena(args.preset or args.spec, store=args.store, executor=args.executor, workers=args.workers,
                            ray_address=args.ray_address, report_dir=args.report, progress=not args.no_progress,
                            retry_failed=args.retry_failed, reassess=args.reassess)
    except (ConfigError, KeyError, FileNotFoundError) as error:
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    except (StoreError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k not in ("records", "policy_records")}, indent=2))
    return 0 if summary["counts"]["failed"] == 0 else 1


def _status(args) -> int:
    """``--status``: where the spec's runs stand in the store (arena.progress); runs nothing."""
    from pathlib import Path

    from ..arena.arena import resolve_spec
    from ..arena.progress import arena_progress, format_progress
    from ..arena.store import StoreError

    if not Path(args.store).exists():
        print(f"error: --store {args.store!r} does not exist (the arena creates it when it starts)", file=sys.stderr)
        return 2
    try:
        spec = resolve_spec(args.preset or args.spec)
        progress = arena_progress(args.store, [run.id for run in spec.expand()], spec.policy_plan)
    except (ConfigError, StoreError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(progress, indent=2) if args.json else format_progress(progress))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "arena",
        help="train and evaluate a grid of mechanisms x tasks x lengths x widths, durably",
        description="Expand a spec into runs, store them in one SQLite file, run every unfinished run "
        "(resuming killed ones from their checkpoints), evaluate the spec's KV-cache policies x budgets on "
        "the trained attention runs, print the leaderboards and write the report.",
        epilog=(
            "examples:\n"
            "  longrecall arena --preset quick --store arena.db --report report/\n"
            "  longrecall arena my_grid.toml --executor process --workers 2\n"
            "  longrecall arena my_grid.toml --executor ray --ray-address auto\n"
            "  longrecall arena --list-presets\n"
            "  longrecall arena --preset gated-convs --store runs/gated-convs.db --status   (where its runs stand)\n"
            "\na spec file (TOML):\n"
            '  name = "mine"\n  mixers = ["attention", {name = "mamba", kwargs = {d_state = 8}}]\n'
            '  tasks = [{task = "mqar", kwargs = {vocab_size = 256, num_kv_pairs = 8}}]\n'
            "  lengths = [64, 128]\n  widths = [32, 64]\n  seeds = [0, 1]\n"
            "  [train]\n  steps = 300\n  short_conv = 4\n"
            "\nKV-cache policies (every run with an attention layer is re-evaluated from its checkpoint, never\n"
            "retrained; a policy x budget leaderboard is printed after the runs' leaderboard):\n"
            '  policies = ["window", {name = "h2o", kwargs = {recent_ratio = 0.5}}, '
            '{name = "snapkv", mode = "prefill"}]\n'
            "  budgets = [0.5, 0.25, 16]        # fractions of the sequence length, or tokens per layer and head\n"
            "  longrecall arena --preset kv-budget --report report/\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", nargs="?", help="a .toml spec, or a .py file exporting `spec` or `configs`")
    p.add_argument("--preset", help="a named spec (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="list the presets with a description each")
    p.add_argument("--store", default="arena.db", help="the results store, one SQLite file (default arena.db)")
    p.add_argument("--executor", default="local", help="local (default), process or ray")
    p.add_argument("--workers", type=int, default=2, help="worker processes (process) or CPUs (local ray)")
    p.add_argument("--ray-address", help="address of an existing Ray cluster (default: start a local one)")
    p.add_argument("--report", metavar="DIR", help="write report.md, report.html and plots to DIR")
    p.add_argument("--retry-failed", action="store_true",
                   help="run failed runs again (and failed or skipped policy evaluations)")
    p.add_argument("--reassess", action="store_true",
                   help="recompute the convergence status of finished runs under the current rule and continue, "
                        "from their checkpoints, those an earlier rule stopped on a plateau where it would not "
                        "stop them: still learning, or near chance (convergence.RULE_VERSION)")
    p.add_argument("--status", action="store_true",
                   help="run nothing: print where the spec's runs stand in the store (done, running, interrupted, "
                        "pending; steps trained from their checkpoints; accuracy; convergence)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(run=run)
