"""``tova``: Token Omission Via Attention, evict the token the current query attends to least."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..registry import register_policy
from .base import Observation, Policy, PolicyKVState


@register_policy("tova")
@dataclass
class TOVA(Policy):
    """TOVA (Oren et al. 2024): drop the lowest head-averaged attention of the current query.

    "Transformers are Multi-State RNNs" (arXiv 2401.06104, EMNLP 2024); reference
    ``schwartz-lab-NLP/TOVA:src/tova_cache.py`` (``TOVACache.reduce``).  Keep the ``budget`` tokens with
    the highest last-query attention averaged over the layer's heads: one selection per layer (one
    multi-state), the current token a candidate too (the reference can evict it; kvpress's
    ``TOVAPress`` keeps it).  Step mode drops one token per step; prefill mode lets the last prompt
    query decide once (as ``TOVAPress``).

    Args:
        budget: tokens kept per layer, shared by all heads ("multi-state size", 512 in the paper);
            None: unlimited.
        mode: "step" (evict at every token, as the paper) or "prefill".
    """

    needs_attention = True

    def score(self, state: PolicyKVState, obs: Observation | None) -> Tensor:
        last = obs.probs[:, :, -1, :]  # (B, H, S)
        # every head holds the same tokens slot by slot (one shared selection), so the average is aligned
        return last.mean(dim=1, keepdim=True).expand_as(last)
