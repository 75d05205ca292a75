"""``longrecall reproduce STORE RUN``: train a stored run again from its config and compare the histories.

A result row is only as good as the claim that its command produces it. Each stored run carries its
whole config (its id is the config's hash), the code and torch versions and the device; this command
trains that config again from scratch here and compares, step by step, the training loss and every
held-out evaluation with what the store holds. ``--steps N`` stops after step N: the schedule's
horizon is the config's ``max_steps`` (``train.lr_lambda``), so the first N steps are those of the
whole run and a long run is checked in seconds. Exit status 0 when every compared value agrees within
``--atol`` (0: bit for bit, which the same code, torch build and CPU give, as the resume tests check),
1 when one does not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import math
import sys


def _match_run(records: list[dict], wanted: str) -> dict:
    """The run whose id is ``wanted`` or starts with it (one only)."""
    hits = [r for r in records if str(r["id"]) == wanted] or [r for r in records if str(r["id"]).startswith(wanted)]
    if len(hits) != 1:
        known = ", ".join(sorted(str(r["id"]) for r in records)[:8])
        what = "no run" if not hits else f"{len(hits)} runs"
        raise ValueError(f"RUN {wanted!r}: {what} of the store match it (ids such as {known})")
    return hits[0]


def compare(stored: dict, fresh: dict, steps: int, atol: float) -> dict:
    """Per-step training losses and the held-out accuracies at the steps both runs evaluated, up to ``steps``.

    Returns ``{"steps", "losses_compared", "first_loss_difference", "max_loss_difference",
    "evals_compared", "max_accuracy_difference", "agree"}`` (a difference's step is None when none).
    """
    want = {h["step"]: h["loss"] for h in stored.get("history") or [] if h["step"] <= steps}
    got = {h["step"]: h["loss"] for h in fresh.get("history") or [] if h["step"] <= steps}
    first, worst = None, 0.0
    for step in sorted(want):
        a, b = want[step], got.get(step)
        diff = math.inf if b is None else abs(a - b) if math.isfinite(a) and math.isfinite(b) else \
            (0.0 if repr(a) == repr(b) else math.inf)
        worst = max(worst, diff)
        if diff > atol and first is None:
            first = step
    stored_evals = {e["step"]: e.get("accuracy") for e in stored.get("evals") or [] if e["step"] <= steps}
    fresh_evals = {e["step"]: e.get("accuracy") for e in fresh.get("evals") or []}
    common = sorted(set(stored_evals) & set(fresh_evals))
    acc_worst = max((abs(stored_evals[s] - fresh_evals[s]) for s in common), default=0.0)
    agree = bool(want) and len(got) >= len(want) and first is None and acc_worst <= atol
    return {"steps": steps, "losses_compared": len(want), "first_loss_difference": first,
            "max_loss_difference": worst, "evals_compared": len(common), "max_accuracy_difference": acc_worst,
            "agree": agree}


def run(args) -> int:
    import torch

    from .. import __version__
    from ..arena.owners import code_version
    from ..arena.store import Store, StoreError
    from ..config import TrainConfig
    from ..train import TrainingDiverged, train

    try:
        with Store.open(args.store, create=False) as store:
            record = _match_run([r for r in store.runs() if r.get("status") == "done"], args.run_id)
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps must be a positive int, got {args.steps}")
        config = TrainConfig(**{**record["config"], "out_dir": None,
                                **({"device": args.device} if args.device else {})})
    except (StoreError, FileNotFoundError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stored_steps = int(record.get("steps") or 0)
    steps = min(args.steps, stored_steps) if args.steps is not None else stored_steps
    labels = record.get("labels") or {}
    print(f"run {record['id']}: {labels.get('mixer', '?')} on {labels.get('task', '?')} T={labels.get('seq_len', '?')}"
          f" d={labels.get('d_model', '?')} lr={config.lr:g}; stored: {stored_steps:,} steps, code "
          f"{record.get('code_version')}, torch {record.get('torch_version')}, device {record.get('device')}")
    print(f"here: code {code_version()} (longrecall {__version__}), torch {torch.__version__}, device {config.device}; "
          f"training {steps:,} steps")
    # never past the stored run, even where today's convergence rule would train on; a diverged run's
    # history ends at its last good step, so the whole-run check trains one more, where it blew up
    diverged = record.get("convergence") == "diverged" and args.steps is None
    diverged_again = False
    try:
        fresh = train(config, progress=not args.no_progress, resume=False, log=lambda *_: None,
                      until_step=max(steps + diverged, 1))
    except TrainingDiverged as error:
        fresh, diverged_again = error.metrics or {}, True
        print(f"diverged again: {error}")
    result = compare(record, fresh, steps, args.atol)
    if diverged and not diverged_again:
        print(f"the stored run diverged after step {steps:,}; this one did not")
        result["agree"] = False
    print(f"training loss: {result['losses_compared']:,} steps compared, largest difference "
          f"{result['max_loss_difference']:.3g}" + ("" if result["first_loss_difference"] is None else
                                                    f", first beyond {args.atol:g} at step "
                                                    f"{result['first_loss_difference']:,}"))
    print(f"held-out accuracy: {result['evals_compared']} evaluations compared, largest difference "
          f"{result['max_accuracy_difference']:.3g}")
    print("reproduced" if result["agree"] else "NOT reproduced")
    return 0 if result["agree"] else 1


def add_parser(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="train a stored run again from its config and compare the histories",
        description=__doc__.split("\n\n", 1)[1].replace("``", "'"),
        epilog="examples:\n"
        "  longrecall reproduce runs/frontier.db 3f2a --steps 200   (the first 200 steps of run 3f2a...)\n"
        "  longrecall reproduce arena.db 3f2a9c0d11e4b7a5            (the whole run, final accuracy included)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", help="the results store (an arena's SQLite file)")
    p.add_argument("run_id", metavar="RUN",
                   help="a run id of the store, or the start of one (as `longrecall export` lists them)")
    p.add_argument("--steps", type=int, help="compare the first N steps only (default: the whole stored run)")
    p.add_argument("--atol", type=float, default=0.0,
                   help="largest difference that counts as equal (default 0: bit for bit)")
    p.add_argument("--device", help="train on this device instead of the stored run's (e.g. cpu for a run trained "
                   "on cuda; then expect differences and set --atol)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)
