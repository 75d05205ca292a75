"""``streaming``: StreamingLLM's attention sinks plus a recent window.

Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks" (arXiv 2309.17453,
ICLR 2024); reference ``mit-han-lab/streaming-llm:streaming_llm/kv_cache.py``
(``StartRecentKVCache(start_size=4, recent_size=512)``).

Rule: keep the first ``n_sink`` tokens of the sequence (default 4, as in the paper) and the most
recent ``budget - n_sink``; drop the middle.  Same selection for every layer and head.  In step
mode token t attends to positions ``< n_sink`` and ``max(0, t - (budget - n_sink)) .. t``.

Positions: our keys are stored rotated at their *original absolute* positions, so a kept token
keeps its true distance to later queries (kvpress's ``StreamingLLMPress`` convention).  The paper
instead caches keys before RoPE and re-rotates them at their index *within the cache*
(``pos_shift``), which keeps every distance below the cache size and is what lets a pretrained
model run past its training length.  For models trained here at the evaluated lengths the two
coincide until the first eviction and differ only in the distances sinks are seen at afterwards.
"""

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

    Args:
        budget: tokens kept per layer per head, sinks included (>= n_sink); None: unlimited.
        mode: "step" (evict at every token, as the paper) or "prefill".
        n_sink: number of initial tokens always kept (paper: 4).
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
