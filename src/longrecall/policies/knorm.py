"""``knorm``: keep the keys with the lowest L2 norm."""

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

    "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression" (arXiv 2406.11430);
    kvpress's ``KnormPress`` (score ``-||k||_2``): low-norm keys tend to get high attention, a query-free
    proxy.  Stored keys are rotated, which keeps their norms.  The score is static, so after any step
    the cache holds the ``budget`` lowest-norm keys seen so far.

    Args:
        budget: tokens kept per layer per head; None: unlimited.
        mode: "step" or "prefill" (the kvpress protocol).
        recent: most recent tokens always kept (0: none, as kvpress).
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
