"""``knorm``: keep the keys with the lowest L2 norm.

Devoto et al. 2024, "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression"
(arXiv 2406.11430); kvpress's ``KnormPress`` (score ``-||k||_2``).  The observation: keys with a
low norm tend to receive high attention, so the norm is a query-free, zero-cost proxy for
importance.

Rule: per layer and head, keep the ``budget`` cached keys with the smallest L2 norm, optionally
always keeping the ``recent`` most recent tokens (default 0, as kvpress).  Our keys are stored
rotated; RoPE is a rotation, so their norms equal the pre-RoPE norms.  In step mode the score is
static per token, so the cache after any step is the ``budget`` lowest-norm keys seen so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import register_policy
from ..validation import ArgumentError, check_int
from .base import Observation, Policy, PolicyKVState, recent_mask


@register_policy("knorm")
@dataclass
class KNorm(Policy):
    """Knorm (Devoto et al. 2024): keep the keys with the lowest L2 norm, optionally a recent window.

    Args:
        budget: tokens kept per layer per head; None: unlimited.
        mode: "step" or "prefill" (the kvpress protocol).
        recent: most recent tokens always kept (0: none).
    """

    recent: int = 0

    def validate(self) -> None:
        super().validate()
        check_int(recent=self.recent, minimum=0)

    def check_budget(self, budget: int) -> None:
        if self.recent > budget:
            raise ArgumentError("recent", "<= budget", f"recent={self.recent}, budget={budget}")

    def score(self, state: PolicyKVState, obs: Observation | None) -> Tensor:
        k = state.k.float() if state.k.dtype in (torch.float16, torch.bfloat16) else state.k
        return -k.norm(dim=-1)  # (B, H, S)

    def protected(self, state: PolicyKVState, budget: Tensor) -> Tensor | None:
        return recent_mask(state, self.recent) if self.recent else None
