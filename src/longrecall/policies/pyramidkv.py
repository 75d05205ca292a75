"""``pyramidkv``: SnapKV's selection with per-layer budgets decreasing linearly with depth.

Cai et al. 2024, "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information
Funneling" (arXiv 2406.02069, COLM 2025); reference ``Zefan-Cai/KVCache-Factory:pyramidkv/
pyramidkv_utils.py`` (``PyramidKVCluster(beta=20)``) and kvpress's ``PyramidKVPress``.

Observation: lower layers attend broadly, upper layers focus on few tokens ("pyramidal information
funnelling"), so lower layers get more cache.  With average budget C, observation window
``w = min(window, C)`` and L attention layers (the reference formula)::

    min_num = (C - w) / beta          max_num = 2 (C - w) - min_num
    budget(layer l) = w + round(max_num - l (max_num - min_num) / (L - 1))

so layer 0 keeps ``w + max_num`` and the top layer ``w + (C - w) / beta``; the prefix shares are an
arithmetic sequence whose mean is ``C - w``.  Exact rational arithmetic and round-half-to-even make
the rounding errors of layers l and L-1-l cancel, so the budgets sum to exactly ``L * C``.  One
layer (``n_layers=1``) keeps C: PyramidKV is then SnapKV.  Selection within a layer is SnapKV's
(see ``snapkv.py``: pooled votes of the last ``w`` queries, prefill mode by default).

Differences from the references: they clip ``max_num`` to the prompt length (``L_prompt - w``) and
shift ``min_num`` so the total still matches; budgets here are fixed when the policy is applied,
before any prompt is seen, so there is no such clip (a layer whose budget exceeds its prompt keeps
the whole prompt and the total kept is then below ``L * C``).  KVCache-Factory uses floor division
for ``min_num`` and the step (its total falls short of ``L * C``); kvpress rounds like here.
"""

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

    Args:
        budget: average tokens kept per layer per head (the sum over layers is n_layers * budget).
        mode, window, kernel, pooling: as SnapKV (prefill mode by default).
        beta: pyramid steepness; the top layer's prefix share is (budget - window) / beta (paper: 20).
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
