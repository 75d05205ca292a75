"""KV-cache policies under several protocols, side by side (the report's "Protocols compared").

A policy's accuracy depends on when the question is read (``policy_protocols``): ``agnostic`` compresses
the context before the question, ``aware`` with the question in view (SnapKV's and Finch's setting),
``reuse`` answers several questions from one compressed cache, ``decode`` keeps evicting through a long
generation. kvpress and cold-compress users ask for these side by side, because a ranking under one
protocol does not carry over to another (cold-compress #42, kvpress #262). Built from the rows of
``policy_tables.policy_leaderboard``: for each (task, length, model) whose evaluations use more than one
protocol, one row per (policy, budget) and one accuracy column per protocol, plus the spread between
the best and the worst protocol, largest first, after the full cache's row: a protocol can move the full
cache's accuracy too, and each column is read against it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

from ..policy_protocols import PROTOCOLS
from .policy_tables import fmt_budget, titled_tables_html, titled_tables_markdown
from .records import _sort_int, fmt_pct

__all__ = ["PROTOCOLS_HOW_TO_READ", "base_label", "protocol_pivots", "protocols_to_markdown", "protocols_to_html"]

PROTOCOLS_HOW_TO_READ = (
    "The same policies and budgets evaluated under each protocol: agnostic (the context compressed before "
    "the question is read, as kvpress), aware (the question in view when compressing, as SnapKV and Finch), "
    "reuse (one compressed cache answers several questions) and decode (the policy keeps evicting through a "
    "long generation before the question). The first row is the full cache under each protocol: a protocol "
    "moves it too, and each column reads against it. 'spread' is the best protocol's accuracy minus the "
    "worst's, in points; the other rows are sorted by it, so the policies whose verdict depends most on the "
    "protocol come first."
)


def base_label(label: str) -> str:
    """A policy label without its ``@protocol`` suffix (``policy_plan`` appends it for non-agnostic ones)."""
    return label.split("@", 1)[0]


def protocol_pivots(policy_rows: Sequence[dict]) -> list[dict]:
    """``[{"task", "seq_len", "model", "protocols": [...], "rows": [{"policy", "budget", "cells", "spread"}]}]``
    for every (task, seq_len, model) evaluated under at least two protocols; ``cells`` maps a protocol to
    its accuracy (NaN where the policy was not evaluated under it)."""
    panels: dict[tuple, dict[tuple, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    used: dict[tuple, set[str]] = defaultdict(set)
    for row in policy_rows:
        panel = (row["task"], row["seq_len"], row["model"])
        protocol = row.get("protocol") or "agnostic"
        panels[panel][(base_label(row["policy"]), fmt_budget(row.get("budget")))][protocol] = row["accuracy"]
        used[panel].add(protocol)
    out = []
    for panel, by_policy in panels.items():
        protocols = [p for p in PROTOCOLS if p in used[panel]]
        if len(protocols) < 2:
            continue
        rows = []
        for (policy, budget), cells in by_policy.items():
            finite = [v for v in cells.values() if math.isfinite(v)]
            spread = max(finite) - min(finite) if len(finite) > 1 else float("nan")
            rows.append({"policy": policy, "budget": budget, "spread": spread,
                         "cells": {p: cells.get(p, float("nan")) for p in protocols}})
        # the full cache first: each protocol's own reference (a protocol moves it too)
        rows.sort(key=lambda r: (r["policy"] != "full", not math.isfinite(r["spread"]),
                                 -r["spread"] if math.isfinite(r["spread"]) else 0, r["policy"], r["budget"]))
        out.append({"task": panel[0], "seq_len": panel[1], "model": panel[2], "protocols": protocols, "rows": rows})
    out.sort(key=lambda p: (p["task"], _sort_int(p["seq_len"]), p["model"]))
    return out


def _table(pivot: dict) -> tuple[list[str], list[list[str]], set[int]]:
    headers = ["policy", "budget", *pivot["protocols"], "spread"]
    body = [[r["policy"], r["budget"], *[fmt_pct(r["cells"][p]) if math.isfinite(r["cells"][p]) else "—"
                                         for p in pivot["protocols"]],
             f"{100 * r['spread']:.1f}" if math.isfinite(r["spread"]) else "—"] for r in pivot["rows"]]
    return headers, body, set(range(2, len(headers)))


def _title(pivot: dict) -> str:
    return f"{pivot['task']}, seq_len={pivot['seq_len']}, {pivot['model']}"


def protocols_to_markdown(pivots: Sequence[dict]) -> str:
    return titled_tables_markdown(pivots, _table, _title)


def protocols_to_html(pivots: Sequence[dict]) -> str:
    return titled_tables_html(pivots, _table, _title, "protocols")
