"""``window``: keep the most recent ``budget`` tokens (a sliding window over the cache)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..registry import register_policy
from .base import Policy


@register_policy("window")
@dataclass
class Window(Policy):
    """Sliding-window baseline: keep the most recent budget tokens.

    The cache holds positions ``[length - budget, length)``: in step mode token t attends to ``max(0,
    t - budget) .. t`` (a closed-form mask), as the ``sliding_window`` mixer with W = budget + 1, whose
    state holds W tokens rather than budget.  StreamingLLM's "window attention" baseline (Xiao et al.
    2023, arXiv 2309.17453), which fails once the first tokens leave the cache.

    Args:
        budget: tokens kept per layer per head (None: unlimited, i.e. full attention).
        mode: "step" (slide at every token) or "prefill" (cut the prompt's cache once).
    """

    position_only = True

    def keep_position(self, pos: Tensor, length: Tensor, budget: Tensor) -> Tensor:
        return pos >= length - budget
