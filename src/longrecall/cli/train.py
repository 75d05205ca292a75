"""``longrecall train``: train a model on a task and print its held-out accuracy."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from ..config import ConfigError, TrainConfig, load_config


def run(args) -> int:
    from ..train import TrainingDiverged, train

    shorthand = {}
    if args.mixer:
        shorthand["layers"] = [args.mixer] * args.n_layers
    if args.task:
        shorthand["task"] = args.task
    try:
        config = load_config(TrainConfig, args.config, args.overrides, **shorthand)
    except (ConfigError, KeyError, TypeError) as error:
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    if not args.json:
        print("config:", json.dumps(dataclasses.asdict(config), sort_keys=True))
    try:
        metrics = train(config, progress=not args.no_progress and not args.json)
    except TrainingDiverged as error:
        print(f"error: training diverged: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    final = metrics["final_eval"]
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
        return 0
    print(f"steps {metrics['steps']}  train {metrics['train_seconds']:.1f}s  "
          f"({metrics['train_tokens_per_second']:.0f} tokens/s)  parameters {metrics['parameters']:,}")
    print(f"held-out accuracy {final['accuracy']:.4f} (loss {final['loss']:.3f}, {final['scored']} scored positions)")
    for name, groups in final["by_slice"].items():
        print(f"  by {name}: " + ", ".join(f"{k}: {v['accuracy']:.3f}" for k, v in groups.items()))
    print("  by distance: " + ", ".join(f"{k}: {v['accuracy']:.3f}" for k, v in final["by_distance"].items()))
    print("  state bytes per sequence: " + ", ".join(f"T={k}: {v:,}" for k, v in final["state_bytes"].items()))
    if config.out_dir:
        print(f"checkpoint and metrics.json in {config.out_dir}")
    return 0


def add_parser(sub) -> None:
    fields = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
    p = sub.add_parser(
        "train",
        help="train a model on a task",
        description="Train a LanguageModel. Configuration layers: defaults < --config FILE < --key=value.",
        epilog=(
            "examples:\n"
            "  longrecall train --mixer attention --steps=600\n"
            "  longrecall train --mixer mamba --d_model=64 --out_dir=runs/mamba\n"
            "  longrecall train --config run.toml --mixer_kwargs.n_heads=4 --lr=1e-3\n"
            "  longrecall train --layers=\"['mamba','attention']\" --task_kwargs.num_kv_pairs=8\n"
            f"\nconfig keys: {fields}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --task_kwargs.x=1 must never be read as an abbreviation of --task
    )
    p.add_argument("--config", help="TOML or JSON file of config keys")
    p.add_argument("--mixer", help="shorthand: use this mixer in every layer")
    p.add_argument("--n-layers", type=int, default=2, help="layers when --mixer is given (default 2)")
    p.add_argument("--task", help="shorthand for --task=NAME")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(run=run, accepts_overrides=True)
