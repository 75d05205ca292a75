"""``h2o``: Heavy-Hitter Oracle, the accumulated attention each token received, plus a recent window."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import register_policy
from ..validation import ArgumentError, check_int, check_ratio
from .base import Observation, Policy, PolicyKVState, recent_mask


@register_policy("h2o")
@dataclass
class H2O(Policy):
    """H2O (Zhang et al. 2023): keep heavy hitters of accumulated attention plus a recent window.

    "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models" (arXiv
    2306.14048, NeurIPS 2023); reference ``FMInference/H2O:h2o_hf/utils_real_drop/modify_llama.py``
    (``H2OKVCache_LayerWise``).  Score per row and head: the attention each token received from every
    query so far (``extra[0]``; a new token starts at 0 and first receives its own query's).  Keep the
    ``recent`` newest tokens and the ``budget - recent`` highest-scoring others.  In prefill mode the
    scores are the prompt attention's column sums (kvpress's ``ObservedAttentionPress`` without its
    ``n - i`` normalisation).  Deviations from the reference: scores are per batch row (it sums over
    the batch, right only at batch 1); attention probabilities are computed explicitly.

    Args:
        budget: tokens kept per layer per head (heavy hitters + recent); None: unlimited.
        mode: "step" (evict at every token, as the paper) or "prefill".
        recent: recent-window size in tokens; None: ``floor(recent_ratio * budget)``.
        recent_ratio: share of the budget given to the recent window when ``recent`` is None (0.5: the
            paper's equal heavy-hitter and recent budgets, ``--heavy_ratio 0.1 --recent_ratio 0.1``).
    """

    recent: int | None = None
    recent_ratio: float = 0.5

    needs_attention = True

    def validate(self) -> None:
        super().validate()
        check_int(recent=self.recent, minimum=0, allow_none=True)
        check_ratio("recent_ratio", self.recent_ratio)

    def check_budget(self, budget: int) -> None:
        if self.recent is not None and self.recent > budget:
            raise ArgumentError("recent", "<= budget", f"recent={self.recent}, budget={budget}")

    def n_recent(self, budget: Tensor) -> Tensor:
        if self.recent is not None:
            return torch.full_like(budget, self.recent)
        return torch.floor(budget * self.recent_ratio + 1e-9).to(budget.dtype)

    def new_extra(self, batch: int, n_heads: int, n_tokens: int, *, device=None, dtype=None) -> tuple:
        return (torch.zeros(batch, n_heads, n_tokens, device=device, dtype=dtype),)

    def observe(self, state: PolicyKVState, obs: Observation) -> PolicyKVState:
        received = obs.probs.sum(dim=2).to(state.extra[0].dtype)  # (B, H, S): summed over this call's queries
        return state._replace(extra=(state.extra[0] + received,))

    def score(self, state: PolicyKVState, obs: Observation | None) -> Tensor:
        return state.extra[0]

    def protected(self, state: PolicyKVState, budget: Tensor) -> Tensor:
        return recent_mask(state, self.n_recent(budget))
