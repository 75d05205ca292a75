"""The frontier preset as one table for docs/results.md: a row per mixer, a cell per width.

    python configs/frontier_table.py runs/frontier.db

Each cell: held-out accuracy at the best learning rate of the sweep (Zoology's protocol), the rate,
the convergence status (C converged at the target, L still learning when its step cap ended, P plateau,
D diverged) and the steps run; the last column is the state each model carries per sequence at T=64
(both layers) for widths 32 / 64 / 128. Runs not finished yet leave an empty cell.
"""

from __future__ import annotations

import sys

from longrecall.arena.store import Store
from longrecall.report import leaderboard
from longrecall.report.tables import fmt_bytes

LETTER = {"converged": "C", "learning": "L", "plateau": "P", "diverged": "D"}


def main(path: str) -> None:
    with Store.open(path, create=False) as store:
        rows = leaderboard(store.runs())
    widths = sorted({r["d_model"] for r in rows})
    order = list(dict.fromkeys(r["mixer"] for r in sorted(rows, key=lambda r: r["state_bytes"] or 0)))
    cell, state = {}, {}
    for r in rows:
        status = LETTER.get(r["convergence"], r["convergence"])
        cell[(r["mixer"], r["d_model"])] = f"{r['accuracy']:.3f} {status} ({r['lr']:.0e}, {r['steps']:,.0f})"
        state[(r["mixer"], r["d_model"])] = fmt_bytes(r["state_bytes"])
    head = ["mixer", *[f"D={w}" for w in widths], "state per sequence (" + " / ".join(f"D={w}" for w in widths) + ")"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(widths) + "---:|")
    for mixer in order:
        print("| " + " | ".join([mixer, *[cell.get((mixer, w), "") for w in widths],
                                  " / ".join(state.get((mixer, w), "—") for w in widths)]) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
