"""What the configs/*_table.py scripts share: a store's leaderboard rows and a cell's text.

A cell reads ``accuracy status (details)``, the status as one letter: C converged at the target, L still
learning when its step cap ended, P plateau, D diverged (``longrecall.convergence``).
"""

from __future__ import annotations

from longrecall.arena.store import Store
from longrecall.report import leaderboard

LETTER = {"converged": "C", "learning": "L", "plateau": "P", "diverged": "D"}


def leaderboard_of(path: str) -> list[dict]:
    """The store's leaderboard rows (``longrecall.report.leaderboard``: each point at its best rate)."""
    with Store.open(path, create=False) as store:
        return leaderboard(store.runs())


def base_name(mixer: str) -> str:
    """``s4(l_max=seq_len)`` -> ``s4``."""
    return mixer.split("(")[0]


def cell(row: dict, details: str) -> str:
    return f"{row['accuracy']:.3f} {LETTER.get(row['convergence'], row['convergence'])} ({details})"
