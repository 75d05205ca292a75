"""``snapkv``: the prompt's last queries vote for the prefix tokens to keep (observation window)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import register_policy
from ..validation import ArgumentError, check_choice, check_int
from .base import Observation, Policy, PolicyKVState, attention_probs, keep_topk, recent_mask

POOLINGS = ("avg", "max")


@register_policy("snapkv")
@dataclass
class SnapKV(Policy):
    """SnapKV (Li et al. 2024): last prompt queries' pooled attention picks the prefix tokens to keep.

    "SnapKV: LLM Knows What You are Looking for Before Generation" (arXiv 2404.14469, NeurIPS 2024);
    reference ``FasterDecoding/SnapKV:snapkv/monkeypatch/snapkv_utils.py`` (``SnapKVCluster.update_kv``).
    At the end of a call the last ``w = min(window, T)`` queries' attention over the cache (causal, fp32
    softmax for half inputs) is summed per row and head; the prefix's votes (tokens outside the kept
    window) are 1-D pooled in position order (stride 1, zero / -inf padding of ``kernel // 2``, as the
    reference's ``F.avg_pool1d`` / ``F.max_pool1d``) so a voted token brings its neighbours; the
    ``budget - w`` best prefix tokens and the ``w`` window tokens are kept.  Decoding then appends (no
    further eviction, SnapKV issue #23).  Deviations from the reference: the window is clipped to the
    budget (it asserts ``budget > window``), so a budget <= w keeps only the most recent tokens; no GQA
    (one key head per query head); ties go to the earlier token.

    Args:
        budget: tokens kept per layer per head, the observation window included; None: unlimited.
        mode: "prefill" (once after the prompt, as the paper; default) or "step" (not in the paper: after
            every step over budget, the current query alone voting and only the current token protected,
            TOVA-like per head; storing queries would cost as much as cached keys).
        window: observation window w (32, the reference's ``init_snapkv``; its class default is 64).
        kernel: odd pooling kernel size (7, the paper's; the reference code and kvpress use 5).
        pooling: "avg" (the reference's default) or "max".
    """

    mode: str = "prefill"
    window: int = 32
    kernel: int = 7
    pooling: str = "avg"

    def validate(self) -> None:
        super().validate()
        check_int(window=self.window, kernel=self.kernel)
        if self.kernel % 2 == 0:
            raise ArgumentError("kernel", "an odd int >= 1 (same-length pooling)", repr(self.kernel))
        check_choice("pooling", self.pooling, POOLINGS)

    def pool(self, votes: Tensor, prefix: Tensor) -> Tensor:
        """1-D pooling of the prefix slots' votes along the prefix in position order (others: padding)."""
        B, H, S = votes.shape
        fill = 0.0 if self.pooling == "avg" else -math.inf
        order = torch.sort((~prefix).to(torch.int8), dim=-1, stable=True).indices  # prefix slots first
        packed = torch.gather(votes.masked_fill(~prefix, fill), -1, order).reshape(B * H, 1, S)
        pool = F.avg_pool1d if self.pooling == "avg" else F.max_pool1d
        pooled = pool(packed, kernel_size=self.kernel, stride=1, padding=self.kernel // 2).reshape(B, H, S)
        return torch.empty_like(pooled).scatter(-1, order, pooled)

    def compress(self, state: PolicyKVState, obs: Observation | None, budget: Tensor) -> PolicyKVState:
        if state.pos.shape[2] <= int(budget.min()):
            return state
        w = min(self.window, obs.q.shape[2])  # the observation window: this call's last queries
        n_window = torch.clamp(budget, max=w)  # (1, H, 1): their tokens are kept
        probs = attention_probs(obs.q[:, :, -w:], obs.q_pos[:, -w:], state.k, state.pos)  # (B, H, w, S)
        window = recent_mask(state, n_window)
        scores = self.pool(probs.sum(dim=2), (state.pos >= 0) & ~window)
        return keep_topk(state, scores, budget, window)
