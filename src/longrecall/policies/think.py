"""``think``: query-driven pruning of key channels; every token is kept, keys are stored narrower."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import register_policy
from ..validation import ArgumentError, check_int, check_ratio
from .base import Observation, Policy, PolicyKVState, keep_mask


@register_policy("think")
@dataclass
class ThinK(Policy):
    """ThinK (Xu et al. 2024): drop the key channels the last queries use least; tokens all kept.

    "ThinK: Thinner Key Cache by Query-Driven Pruning" (arXiv 2407.21018, ICLR 2025); reference
    ``SalesforceAIResearch/ThinK:ThinK_flash/src/kv_pruning_utils.py`` (``key_pruner_query_driven``),
    ``llama_model.py``.  Per row and head, channel score ``mean_t q_{t,c}^2 * mean_j k_{j,c}^2`` (the
    reference's proxy for ``||Q_c K_c^T||_F``) over the last ``window`` queries and the cached keys; the
    ``floor(pruning_ratio * K)`` lowest channels are dropped, chosen at a row's first pruning.  Keys but
    the ``recent`` newest are stored with the kept channels only (post-rotary, as ThinK: a rotary pair
    may lose one half), in ``aux = (k (B, H, N, K'), v (B, H, N, K), pos (B, H, N) int32, channels
    (B, H, K') int64, -1 until chosen)``, so ``state_bytes`` counts narrower keys; ``attend_view``
    scatters them into zero keys (ThinK's ``recover_cache``; softmax scale 1/sqrt(K)).

    Args:
        budget: must be None (no token is evicted; the keys are made narrower).
        mode: "prefill" (prune at the end of each prompt pass, as the paper; decoded keys keep every
            channel, as ``ThinK_flash``; default) or "step" (not in the paper: prune each token as it
            leaves the recent window, channels chosen by the current query alone, a much weaker choice).
        pruning_ratio: share of key channels dropped, floor(ratio * K) of them (0.4; paper: 0.4-0.5).
        recent: most recent tokens whose keys keep every channel (32, the reference's).
        window: last queries scoring the channels (32, the reference's).
    """

    mode: str = "prefill"
    pruning_ratio: float = 0.4
    recent: int = 32
    window: int = 32

    bounded = False
    compress_unbounded = True

    def validate(self) -> None:
        super().validate()
        if self.budget is not None:
            raise ArgumentError("budget", "None for think (it keeps every token, with narrower keys)",
                                repr(self.budget))
        check_ratio("pruning_ratio", self.pruning_ratio, high_open=True)
        check_int(recent=self.recent, minimum=0)
        check_int(window=self.window)

    def kept_channels(self, head_dim: int) -> int:
        return head_dim - int(self.pruning_ratio * head_dim + 1e-9)

    def adopt(self, state) -> PolicyKVState:
        state = super().adopt(state)
        if not state.aux:
            B, H, _, K = state.k.shape
            kc = self.kept_channels(K)
            state = state._replace(aux=(
                state.k.new_zeros(B, H, 0, kc), state.v.new_zeros(B, H, 0, K), state.pos.new_zeros(B, H, 0),
                torch.full((B, H, kc), -1, dtype=torch.int64, device=state.k.device)))
        return state

    def channel_scores(self, state: PolicyKVState, q: Tensor) -> Tensor:
        """(B, H, K) ThinK's ``mean_t q_c^2 * mean_j k_c^2`` over the queries q and the full-width keys."""
        valid = (state.pos >= 0)[..., None]
        return q.square().mean(2) * (state.k.square() * valid).sum(2) / valid.sum(2).clamp(min=1)

    def compress(self, state: PolicyKVState, obs: Observation | None, budget: Tensor | None) -> PolicyKVState:
        valid = state.pos >= 0
        newer = valid.flip(-1).cumsum(-1).flip(-1) - 1  # valid tokens after each slot
        prune = valid & (newer >= self.recent)
        n = prune.sum(-1)  # (B, H)
        m = int(n.max()) if n.numel() else 0
        if m == 0:
            return state
        pk, pv, ppos, channels = state.aux
        choose = (n > 0) & (channels[..., 0] < 0)  # (B, H): first pruning of this row
        if bool(choose.any()):
            scores = self.channel_scores(state, obs.q[:, :, -self.window :])  # the call's last queries
            top = scores.topk(channels.shape[-1], dim=-1).indices.sort(-1).values
            channels = torch.where(choose[..., None], top, channels)
        order = torch.sort((~prune).to(torch.int8), dim=-1, stable=True).indices[..., :m]  # pruned first
        ok = (torch.arange(m, device=n.device) < n[..., None])[..., None]  # (B, H, m, 1)
        k = torch.gather(state.k, 2, order[..., None].expand(-1, -1, -1, state.k.shape[3]))
        k = torch.gather(k, 3, channels.clamp(min=0)[:, :, None, :].expand(-1, -1, m, -1)) * ok
        v = torch.gather(state.v, 2, order[..., None].expand(-1, -1, -1, state.v.shape[3])) * ok
        pos = torch.gather(state.pos, 2, order).masked_fill(~ok[..., 0], -1)
        aux = (torch.cat([pk, k], 2), torch.cat([pv, v], 2), torch.cat([ppos, pos], 2), channels)
        return keep_mask(state, valid & ~prune)._replace(aux=aux)

    def attend_view(self, state: PolicyKVState) -> tuple[Tensor, Tensor, Tensor]:
        pk, pv, ppos, channels = state.aux
        if pk.shape[2] == 0:
            return state.k, state.v, state.pos
        index = channels.clamp(min=0)[:, :, None, :].expand(-1, -1, pk.shape[2], -1)
        k = pk.new_zeros(*pk.shape[:3], state.k.shape[3]).scatter(3, index, pk)
        return torch.cat([k, state.k], 2), torch.cat([pv, state.v], 2), torch.cat([ppos, state.pos], 2)
