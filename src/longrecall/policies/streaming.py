"""``streaming``: StreamingLLM's attention sinks plus a recent window."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..registry import register_policy
from ..validation import ArgumentError, check_int
from .base import Policy


@register_policy("streaming")
@dataclass
class StreamingLLM(Policy):
    """StreamingLLM (Xiao et al. 2023): the first n_sink tokens (attention sinks) plus the most recent.

    "Efficient Streaming Language Models with Attention Sinks" (arXiv 2309.17453, ICLR 2024); reference
    ``mit-han-lab/streaming-llm:streaming_llm/kv_cache.py`` (``StartRecentKVCache(start_size=4,
    recent_size=512)``).  Keep positions ``< n_sink`` and the ``budget - n_sink`` most recent, the same
    for every layer and head.  Deviation from the paper: keys stay rotated at their absolute positions
    (kvpress's ``StreamingLLMPress``); the paper re-rotates them at their index in the cache
    (``pos_shift``), which lets a pretrained model run past its training length.  For models trained
    here at the evaluated lengths the two differ only after the first eviction, in the sinks' distance.

    Args:
        budget: tokens kept per layer per head, sinks included (>= n_sink); None: unlimited.
        mode: "step" (evict at every token, as the paper) or "prefill".
        n_sink: number of initial tokens always kept (4, the paper's).
    """

    n_sink: int = 4

    position_only = True

    def validate(self) -> None:
        super().validate()
        check_int(n_sink=self.n_sink, minimum=0)

    def check_budget(self, budget: int) -> None:
        if budget < self.n_sink:
            raise ArgumentError("budget", f">= n_sink={self.n_sink} (the sinks are part of the budget)", repr(budget))

    def keep_position(self, pos: Tensor, length: Tensor, budget: Tensor) -> Tensor:
        return (pos < self.n_sink) | (pos >= length - (budget - self.n_sink))
