"""``window``: keep the most recent ``budget`` tokens (a sliding window over the cache).

Rule: once ``length`` tokens were seen, the cache holds positions ``[length - budget, length)``.
In step mode token t therefore attends to positions ``max(0, t - budget) .. t`` (``budget + 1``
tokens: the cache plus itself), which is the closed-form mask of the parallel form.

Compared with the ``sliding_window`` mixer (window W = keys each query sees, itself included),
``window`` with budget B equals ``sliding_window`` with W = B + 1 at every query; its state
between steps holds B tokens rather than W.  It is the "window attention" baseline of
StreamingLLM (Xiao et al. 2023), which fails once the first tokens leave the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..registry import register_policy
from .base import Policy


@register_policy("window")
@dataclass
class Window(Policy):
    """Sliding-window baseline: keep the most recent budget tokens.

    Args:
        budget: tokens kept per layer per head (None: unlimited, i.e. full attention).
        mode: "step" (slide at every token) or "prefill" (cut the prompt's cache once).
    """

    position_only = True

    def keep_position(self, pos: Tensor, length: Tensor, budget: Tensor) -> Tensor:
        return pos >= length - budget
