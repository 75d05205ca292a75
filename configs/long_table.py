"""The long-sequence presets (lra-listops, delayed-copy) as tables for docs/results.md.

    python configs/long_table.py runs/lra-listops.db
    python configs/long_table.py runs/delayed-copy.db

A row per mixer (ordered by accuracy at the longest length), a cell per length: held-out accuracy, the
convergence status (C converged at 0.99, L still learning when the step cap ended, P plateau, D
diverged) and the steps run; an empty cell is a run not finished yet. The last columns are the state
each model carries per sequence at the longest length (both layers) and, for ListOps, the accuracy
the field reports on Long Range Arena's ListOps (../shared/reference/libraries_and_benchmarks.md section
4.4; "-" where that table has no row: Mamba's authors never ran LRA): 96,000 training sequences of up
to 2,000 tokens, tens of epochs, tuned models, against at most 2,000 steps of batch 16 at 512 and 1,024
tokens here. They give the ranking the field reports, not a number to match.
"""

from __future__ import annotations

import argparse
import math

from table_cells import base_name, cell, leaderboard_of

from longrecall.report.tables import fmt_bytes

# LRA ListOps test accuracy (%), as published (- : not reported on LRA by its authors)
LISTOPS_PUBLISHED = {"attention": "36.37 (Transformer)", "s4": "59.60 (S4-LegS)", "s4d": "60.47 (S4D-LegS)",
                     "lru": "60.2"}


def main(path: str) -> None:
    rows = leaderboard_of(path)
    if not rows:
        print("no finished runs in", path)
        return
    tasks = sorted({r["task"] for r in rows})
    lengths = sorted({r["seq_len"] for r in rows})
    longest = lengths[-1]
    cells, state, score = {}, {}, {}
    for r in rows:
        mixer = base_name(r["mixer"])
        cells[(mixer, r["seq_len"])] = cell(r, f"{r['steps']:,.0f}")
        if r["seq_len"] == longest:
            state[mixer] = fmt_bytes(r["state_bytes"])
            score[mixer] = r["accuracy"] if math.isfinite(r["accuracy"]) else -1.0
    mixers = sorted({base_name(r["mixer"]) for r in rows}, key=lambda m: -score.get(m, -2.0))
    published = tasks == ["listops"]
    head = ["mixer", *[f"T={t:,}" for t in lengths], f"state at T={longest:,}"]
    head += ["LRA ListOps (published, %)"] if published else []
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for mixer in mixers:
        line = [mixer, *[cells.get((mixer, t), "") for t in lengths], state.get(mixer, "")]
        line += [LISTOPS_PUBLISHED.get(mixer, "-")] if published else []
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="the preset's store (runs/lra-listops.db or runs/delayed-copy.db)")
    main(parser.parse_args().store)
