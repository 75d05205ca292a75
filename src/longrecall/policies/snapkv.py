"""``snapkv``: the prompt's last queries vote for the prefix tokens to keep (observation window).

Li et al. 2024, "SnapKV: LLM Knows What You are Looking for Before Generation" (arXiv 2404.14469,
NeurIPS 2024); reference ``FasterDecoding/SnapKV:snapkv/monkeypatch/snapkv_utils.py``
(``SnapKVCluster.update_kv``).

Rule (applied at the end of a call; in prefill mode, the paper's protocol and the default, once
after the prompt pass): the observation window is the call's last ``w = min(window, T)`` queries.
Their softmax attention over the whole cache (causal, 1/sqrt(K), fp32 softmax for half inputs) is
summed over the window's queries, per batch row and head; the votes of the prefix (every cached
token outside the kept window) are 1-D pooled along the prefix in position order (``pooling``
"avg" or "max", kernel ``kernel``, stride 1, zero / -inf padding of ``kernel // 2``, as
``F.avg_pool1d`` / ``F.max_pool1d`` in the reference) so that the neighbours of a voted token come
with it; the ``budget - w`` best prefix tokens and the ``w`` window tokens are kept.  Decoding then
appends (no further eviction, SnapKV issue #23).

Step mode (not in the paper): the same rule after every step once the cache exceeds ``budget``;
the call is then one token, so the observation window is the current query alone and only the
current token is protected (TOVA-like, per head, with pooling).  No query is stored: buffering the
last ``window`` queries would cost as much memory as that many cached keys.

Defaults: ``window=32`` (the reference's ``init_snapkv``; its class default is 64), ``kernel=7``
(the paper's setting; the reference code and kvpress use 5), ``pooling="avg"`` (the reference's
default).  Differences from the reference: the kept window is clipped to the budget (the
reference asserts ``budget > window``), so a budget <= w keeps only the most recent tokens; no GQA
(one key head per query head here); ties go to the earlier token.
"""

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

    Args:
        budget: tokens kept per layer per head, the observation window included; None: unlimited.
        mode: "prefill" (compress once after the prompt, as the paper; default) or "step" (the same
            rule after every step, the current query being the observation window).
        window: observation window w: the call's last queries vote, and their tokens are kept
            (clipped to the budget).
        kernel: odd 1-D pooling kernel size (paper: 7).
        pooling: "avg" or "max".
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
