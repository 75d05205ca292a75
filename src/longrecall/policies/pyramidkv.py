"""``pyramidkv``: SnapKV's selection with per-layer budgets decreasing linearly with depth."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from ..registry import register_policy
from ..validation import check_number
from .snapkv import SnapKV


@register_policy("pyramidkv")
@dataclass
class PyramidKV(SnapKV):
    """PyramidKV (Cai et al. 2024): SnapKV with layer budgets shrinking linearly from bottom to top.

    "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling" (arXiv
    2406.02069, COLM 2025); reference ``Zefan-Cai/KVCache-Factory:pyramidkv/pyramidkv_utils.py``
    (``PyramidKVCluster``) and kvpress's ``PyramidKVPress``.  With average budget C, ``w = min(window,
    C)`` and L layers, ``budget(l) = w + round(max_num - l (max_num - min_num) / (L - 1))``, ``min_num =
    (C - w) / beta``, ``max_num = 2 (C - w) - min_num``; exact rationals and round-half-to-even make
    the budgets sum to ``L * C`` (one layer: SnapKV).  Deviations from the references: they clip
    ``max_num`` to ``L_prompt - w`` and shift ``min_num``; budgets here are fixed before any prompt, so
    a layer whose budget exceeds its prompt keeps it whole (total below ``L * C``).  KVCache-Factory
    floors ``min_num`` and the step (its total falls short); kvpress rounds like here.

    Args:
        budget: average tokens kept per layer per head (the sum over layers is n_layers * budget).
        mode, window, kernel, pooling: as SnapKV (prefill mode by default).
        beta: pyramid steepness; the top layer's prefix share is (budget - window) / beta (20, the paper's).
    """

    beta: int | float = 20

    def validate(self) -> None:
        super().validate()
        check_number("beta", self.beta, 1, math.inf, high_open=True)

    def layer_budget(self, budget: int, layer: int, n_layers: int) -> int:
        if n_layers == 1:
            return budget
        w = min(self.window, budget)
        lowest = Fraction(budget - w) / Fraction(self.beta)  # the top layer's prefix share
        highest = 2 * (budget - w) - lowest
        return w + round(highest - layer * (highest - lowest) / (n_layers - 1))
