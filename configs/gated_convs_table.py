"""The gated-convs preset (Zoology Figure 2 at CPU scale) as a table for docs/results.md, beside the
published numbers.

    python configs/gated_convs_table.py runs/gated-convs.db

A row per mixer, a cell per (T, kv pairs) and width. Each cell: held-out MQAR accuracy at the better of
the preset's two learning rates (Zoology's protocol: the best rate per point), the convergence status (C
converged at 0.99, L still learning when the step cap ended, P plateau, D diverged), the rate and the
steps run; "1 of 2 rates" marks a cell whose second rate has not finished yet, and an empty cell one
with no finished run. The "Zoology" columns are Figure 2's accuracies at widths 64 -> 512, read from
its plot (../shared/reference/small_scale_training.md): vocab 8,192 against 512 here, up to 25k steps at
batch 256-512 against at most 3,000 at batch 32, the best of 4 rates against 2. They give the direction
(what needs width, what does not), not a number to match.
"""

from __future__ import annotations

import argparse

from table_cells import base_name, cell, leaderboard_of

SHAPES = [(64, 4), (128, 8), (256, 16)]
ORDER = ["attention", "base_conv", "h3", "hyena", "rwkv6", "s4d"]
# Zoology Figure 2, widths 64 -> 512 (read from the plot; "~1.0": attention at every width)
ZOOLOGY = {
    (64, 4): {"attention": "~1.0", "h3": ".91 -> .96", "hyena": ".51 -> .85", "rwkv6": ".74 -> .97"},
    (256, 16): {"attention": "~1.0", "base_conv": ".15 -> .92", "h3": ".08 -> .66", "hyena": ".05 -> .68",
                "rwkv6": ".06 -> .78"},
}
RATES = 2


def main(path: str) -> None:
    rows = leaderboard_of(path)
    widths = sorted({r["d_model"] for r in rows}) or [64, 128]
    cells = {}
    for r in rows:
        partial = "" if len(r["lrs"]) >= RATES else ", 1 of 2 rates"
        details = f"{r['lr']:.0e}, {r['steps']:,.0f}{partial}"
        cells[(base_name(r["mixer"]), r["seq_len"], r["d_model"])] = cell(r, details)
    head = ["mixer"]
    for seq_len, pairs in SHAPES:
        head += [f"({seq_len}, {pairs}) D={w}" for w in widths]
        if (seq_len, pairs) in ZOOLOGY:
            head.append(f"({seq_len}, {pairs}) Zoology")
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for mixer in ORDER:
        line = [mixer]
        for seq_len, pairs in SHAPES:
            line += [cells.get((mixer, seq_len, w), "") for w in widths]
            if (seq_len, pairs) in ZOOLOGY:
                line.append(ZOOLOGY[(seq_len, pairs)].get(mixer, "-"))
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="the preset's store (runs/gated-convs.db)")
    main(parser.parse_args().store)
