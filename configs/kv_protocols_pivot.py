"""Tables of the kv-budget-next-token store for docs/results.md.

    python configs/kv_protocols_pivot.py runs/kv_next_token.db [budget]

Prints, per task, one markdown table: a row per policy, a column per protocol at one budget (default 1/4
of the context; unbudgeted policies at their only setting), the full cache's row first. Each cell is the
accuracy and, in brackets, its change from the full cache under the same protocol (points).
"""

from __future__ import annotations

import math
import sys

from longrecall.arena.store import Store
from longrecall.policy_protocols import PROTOCOLS
from longrecall.report import policy_leaderboard
from longrecall.report.protocol_tables import base_label


def main(path: str, budget: float = 0.25) -> None:
    with Store.open(path, create=False) as store:
        rows = policy_leaderboard(store.runs(), store.policy_evals())
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task and (r["budget"] is None or r["budget"] == budget)]
        cells: dict[str, dict[str, str]] = {}
        for r in mine:
            if not math.isfinite(r["accuracy"]):
                continue
            delta = "" if r["delta"] is None else f" ({100 * r['delta']:+.0f})"
            cells.setdefault(base_label(r["policy"]), {})[r["protocol"]] = f"{100 * r['accuracy']:.0f}{delta}"
        protocols = [p for p in PROTOCOLS if any(p in c for c in cells.values())]
        print(f"\n{task} (budget {budget:g} of the context; accuracy %, change from the full cache under the same "
              "protocol in brackets)\n")
        print("| policy | " + " | ".join(protocols) + " |")
        print("|---|" + "---:|" * len(protocols))
        for policy in sorted(cells, key=lambda p: (p != "full", p)):
            print(f"| {policy} | " + " | ".join(cells[policy].get(p, "—") for p in protocols) + " |")


if __name__ == "__main__":
    main(sys.argv[1], *(float(v) for v in sys.argv[2:3]))
