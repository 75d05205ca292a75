"""The recipe study as one table: a row per mixer, a cell per (loss, learning rate).

    python configs/recipe_pivot.py runs/recipe.db [--bench docs/bench/train-steps-2026-12-07/after_1_1t.json]

Each cell: final held-out accuracy, the first evaluation step at which it reached 0.9 (in brackets,
when it did) and the convergence status (C converged, L learning, P plateau, D diverged). The last
column estimates each mixer's seconds per 1,000 steps from the idle-machine training-step bench at
1 thread (the recorded train seconds of the study's runs include other jobs and pauses).
"""

from __future__ import annotations

import argparse
import json

from table_cells import LETTER

from longrecall.arena.store import Store
from longrecall.report.recipes import recipe_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("--bench", default="docs/bench/train-steps-2026-12-07/after_1_1t.json")
    p.add_argument("--threshold", type=float, default=0.9)
    args = p.parse_args()
    with Store.open(args.store, create=False) as store:
        rows = recipe_table(store.runs(), threshold=args.threshold)
    ms = {r["mixer"]: r["ms_per_step"] for r in json.load(open(args.bench))["results"]}
    lrs = sorted({r["lr"] for r in rows})
    losses = ["answers", "all"]
    cols = [(loss, lr) for loss in losses for lr in lrs]
    order, cells = [], {}
    for r in rows:
        if r["mixer"] not in order:
            order.append(r["mixer"])
        to = f" ({r['steps_to']:,.0f})" if r["steps_to"] is not None else ""
        letter = LETTER.get(r["convergence"], r["convergence"])
        cells[(r["mixer"], r["loss_on"], r["lr"])] = f"{r['accuracy']:.3f}{to} {letter}, {r['steps']:,.0f}"
    head = ["mixer"] + [f"{loss} {lr:.0e}" for loss, lr in cols] + ["s / 1k steps"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for mixer in order:
        base = mixer.split("(")[0]
        sec = f"{ms[base]:.0f}" if base in ms else ""
        print("| " + " | ".join([mixer] + [cells.get((mixer, loss, lr), "") for loss, lr in cols] + [sec]) + " |")


if __name__ == "__main__":
    main()
