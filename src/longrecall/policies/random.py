"""``random``: a seeded random eviction baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import register_policy
from ..validation import check_int
from .base import Observation, Policy, PolicyKVState

_MASK = 0xFFFFFFFF


def hash_scores(pos: Tensor, seed: int) -> Tensor:
    """(B, H, S) float64 scores in [0, 2^32) from (seed, position, head); every step stays in int64."""
    head = torch.arange(pos.shape[1], device=pos.device, dtype=torch.int64)[None, :, None]
    x = ((pos.to(torch.int64) * 2654435761) & _MASK) ^ ((head * 2246822519) & _MASK)
    x = x ^ (((seed % 2**31) * 3266489917) & _MASK)
    for _ in range(2):  # "lowbias32"-style avalanche
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK
    return ((x >> 16) ^ x).to(torch.float64)


@register_policy("random")
@dataclass
class Random(Policy):
    """Random baseline: each head keeps a seeded pseudo-random subset of budget tokens.

    kvpress's ``RandomPress``, the floor informed policies must beat (about 7 against 95 uncompressed on
    RULER-4k with Llama-3.1-8B at a 50% budget, kv_cache_policies.md section 1.5).  A token's score is
    a 32-bit hash of ``(seed, position, head)``, so the step loop keeps the ``budget`` highest seen so
    far, results reproduce exactly and batch rows are independent.

    Args:
        budget: tokens kept per layer per head; None: unlimited.
        mode: "step" or "prefill".
        seed: the hash seed (a non-negative int); the selection is a pure function of it.
    """

    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_int(seed=self.seed, minimum=0)

    def score(self, state: PolicyKVState, obs: Observation | None) -> Tensor:
        return hash_scores(state.pos, self.seed)
