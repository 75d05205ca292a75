"""``tova``: Token Omission Via Attention, evict the token the current query attends to least.

Oren et al. 2024, "Transformers are Multi-State RNNs" (arXiv 2401.06104, EMNLP 2024); reference
``schwartz-lab-NLP/TOVA:src/tova_cache.py`` (``TOVACache.reduce(layer_idx, attn_weights)``).

Rule: whenever a layer holds more than ``budget`` tokens, average the *last* query's attention
probabilities over all heads of the layer and keep the ``budget`` highest (order preserved).  The
selection is shared by every head, as in the paper (one multi-state per layer); the current token
is a candidate like any other (the reference code can evict it; kvpress's ``TOVAPress`` forces it
kept).  In step mode exactly one token, the argmin of the head-averaged attention, leaves per
step; in prefill mode the last prompt query decides once (kvpress's ``TOVAPress``).

Budget: a fixed number of tokens per layer ("multi-state size", e.g. 512 in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..registry import register_policy
from .base import Observation, Policy, PolicyKVState


@register_policy("tova")
@dataclass
class TOVA(Policy):
    """TOVA (Oren et al. 2024): drop the lowest head-averaged attention of the current query.

    Args:
        budget: tokens kept per layer (shared by all heads); None: unlimited.
        mode: "step" (evict at every token, as the paper) or "prefill".
    """

    needs_attention = True

    def score(self, state: PolicyKVState, obs: Observation | None) -> Tensor:
        last = obs.probs[:, :, -1, :]  # (B, H, S): the current (last) query's attention
        # every head holds the same tokens slot by slot (one shared selection, equal head budgets),
        # so the head average is aligned and each head keeps the same top tokens
        return last.mean(dim=1, keepdim=True).expand_as(last)
