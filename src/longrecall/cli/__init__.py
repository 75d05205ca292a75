"""The ``longrecall`` command, one file per subcommand: ``ls | check | train | arena | report | export |
reproduce | bench | kv-eval | memory-eval``."""

from __future__ import annotations

import argparse
import sys

from . import arena, bench, check, export, kv_eval, ls, memory_eval, report, reproduce, train

SUBCOMMANDS = {"ls": ls, "check": check, "train": train, "arena": arena, "report": report, "export": export,
               "reproduce": reproduce, "bench": bench, "kv-eval": kv_eval, "memory-eval": memory_eval}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longrecall",
        description="Long-range memory in sequence models: contract checks, training, arena, benchmarks.",
        epilog="Run 'longrecall COMMAND --help' for worked examples of each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import longrecall.mixers  # registers every mixer
    import longrecall.tasks  # noqa: F401 - registers every task

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    from ..checkpoint import UnsafeCheckpointError
    from ..report.plots import PlotDependencyError

    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (PlotDependencyError, UnsafeCheckpointError) as error:  # a clear one-line error, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
