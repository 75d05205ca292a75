"""The frontier preset as tables for docs/results.md: a row per mixer, a cell per width; then the KV-cache
policies on the attention models, a row per policy, a cell per budget.

    python configs/frontier_table.py runs/frontier.db [--width 64]

Each cell: held-out accuracy at the best learning rate of the sweep (Zoology's protocol), the rate,
the convergence status (C converged at the target, L still learning when its step cap ended, P plateau,
D diverged) and the steps run; the last column is the state each model carries per sequence at T=64
(both layers) for widths 32 / 64 / 128. Runs not finished yet leave an empty cell. In the policy table
(the attention model of one width), each cell is the accuracy under the policy and, in brackets, the bytes
the cache holds at the end of the sequence; "skip" where the policy refuses the budget.
"""

from __future__ import annotations

import argparse

from table_cells import cell as cell_text

from longrecall.arena.store import Store
from longrecall.report import leaderboard, policy_leaderboard
from longrecall.report.tables import fmt_bytes


def main(path: str, width: int) -> None:
    with Store.open(path, create=False) as store:
        records, policy_evals = store.runs(), store.policy_evals()
    rows = leaderboard(records)
    widths = sorted({r["d_model"] for r in rows})
    order = list(dict.fromkeys(r["mixer"] for r in sorted(rows, key=lambda r: r["state_bytes"] or 0)))
    cell, state = {}, {}
    for r in rows:
        cell[(r["mixer"], r["d_model"])] = cell_text(r, f"{r['lr']:.0e}, {r['steps']:,.0f}")
        state[(r["mixer"], r["d_model"])] = fmt_bytes(r["state_bytes"])
    head = ["mixer", *[f"D={w}" for w in widths], "state per sequence (" + " / ".join(f"D={w}" for w in widths) + ")"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(widths) + "---:|")
    for mixer in order:
        print("| " + " | ".join([mixer, *[cell.get((mixer, w), "") for w in widths],
                                  " / ".join(state.get((mixer, w), "—") for w in widths)]) + " |")
    policies = [r for r in policy_leaderboard(records, policy_evals)
                if r["model"].endswith(f" d={width}") and r["protocol"] == "agnostic"]
    for task, seq_len in dict.fromkeys((r["task"], r["seq_len"]) for r in policies):
        mine = [r for r in policies if (r["task"], r["seq_len"]) == (task, seq_len)]
        budgets = sorted({r["fraction"] for r in mine}, key=lambda f: -1.0 if f is None else f, reverse=True)
        found = {(r["policy_name"], r["fraction"]): "skip" if r["skipped"] and not r["seeds"]
                 else f"{r['accuracy']:.3f} ({fmt_bytes(r['state_bytes_end'])})" for r in mine}
        print(f"\n| policy ({task}, T={seq_len}, attention D={width}) | "
              + " | ".join("no budget" if b is None else f"{b:g} of T" for b in budgets) + " |")
        print("|---|" + "---:|" * len(budgets))
        for name in dict.fromkeys(r["policy_name"] for r in mine):
            print("| " + " | ".join([name, *[found.get((name, b), "") for b in budgets]]) + " |")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--width", type=int, default=64, help="the attention model whose policies are tabled")
    args = parser.parse_args()
    main(args.store, args.width)
