"""``sirllm``: keep the sinks and the most surprising tokens, with decaying scores, plus a recent window."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import register_policy
from ..validation import ArgumentError, check_int, check_ratio
from .base import Observation, Policy, PolicyKVState, keep_mask, recent_mask, sink_mask


class SurprisalSignal:
    """Mixin for policies reading the model's per-token surprisal (``extra[0]``), see models/lm.py."""

    needs_surprisal = True

    def with_surprisal(self, state, surprisal: Tensor) -> PolicyKVState:
        """The state, ready to read ``surprisal.shape[1]`` tokens with these (B, T) surprisals (NaN: later)."""
        return self.adopt(state)._replace(aux=(surprisal.detach(),))

    def append(self, state: PolicyKVState, kv) -> PolicyKVState:
        pending = state.aux[0] if state.aux else None
        new = super().append(state._replace(aux=()), kv)
        B, H, T = new.pos.shape[0], new.pos.shape[1], new.pos.shape[2] - state.pos.shape[2]
        if pending is None:
            pending = new.k.new_zeros(B, T)  # no model: no signal
        elif pending.shape[0] != B or pending.shape[1] < T:
            raise ValueError(f"surprisal was handed for {tuple(pending.shape)} (B, T) tokens, the layer read {(B, T)}")
        # a layer may read the handed tokens in pieces (an unbudgeted step-mode forward is a step
        # loop): each append consumes its tokens' values and leaves the rest pending
        rest = pending[:, T:]
        fresh = pending[:, :T].to(new.k.dtype)[:, None, :].expand(B, H, T)
        return new._replace(extra=(torch.cat([state.extra[0], fresh], 2), *new.extra[1:]),
                            aux=(rest,) if rest.shape[1] else ())

    def fill_surprisal(self, state: PolicyKVState, surprisal: Tensor) -> PolicyKVState:
        """Set the surprisal of the last T = ``surprisal.shape[1]`` positions read (a prefill pass)."""
        offset = state.pos.long() - (state.length[:, None, None] - surprisal.shape[1])  # (B, H, S)
        inside = (offset >= 0) & (state.pos >= 0)
        values = surprisal.detach().to(state.extra[0].dtype)[:, None, :].expand(*state.pos.shape[:2], -1)
        filled = values.gather(2, offset.clamp(0, surprisal.shape[1] - 1))
        return state._replace(extra=(torch.where(inside, filled, state.extra[0]), *state.extra[1:]))


@register_policy("sirllm")
@dataclass
class SirLLM(SurprisalSignal, Policy):
    """SirLLM (Yao et al. 2024): keep sinks, the highest decayed surprisal tokens and a recent window.

    "SirLLM: Streaming Infinite Retentive LLM" (arXiv 2405.12528, ACL 2024); reference
    ``Zoeyyao27/SirLLM:sir_llm/kv_cache.py`` (``evict_for_space_token_entropy``), ``eval_utils.py``
    (``_cal_selfinfo``).  Score: the surprisal ("token entropy") ``s_i = -log p(x_i | x_<i)``, handed in by
    ``LanguageModel`` (``with_surprisal`` before each call; after a prefill pass ``fill_surprisal``, and
    ``compress`` waits while any is NaN) and stored in ``extra[0]``; the first token gets ``log(vocab_size)``
    (the reference: the turn's maximum).  Over budget keep the sinks, the recent window and the highest
    ``s_i * decay ** age`` (in log space; ties: the more recent), one selection for every head and layer.
    Deviations: the paper decays per dialogue turn (0.7 on DailyDialog, 0.9 on Rock-Paper-Scissors);
    with no turns here a per-step d acts like ``d ** turn_length``; keys keep their absolute rotary
    positions (the reference re-rotates them).  Without the model every score is 0: StreamingLLM.

    Args:
        budget: tokens kept per layer per head (sinks + recent + surprising); None: unlimited.
        mode: "step" (evict at every token) or "prefill" (compress once after the prompt).
        n_sink: initial tokens always kept (paper ``start_size``: 4).
        recent: most recent tokens always kept (paper ``recent_size``: 0).
        decay: factor applied to every stored surprisal at each step, in (0, 1] (1, the reference's
            default and its Grocery-Shopping setting).
    """

    n_sink: int = 4
    recent: int = 0
    decay: float = 1.0

    def validate(self) -> None:
        super().validate()
        check_int(n_sink=self.n_sink, recent=self.recent, minimum=0)
        check_ratio("decay", self.decay, low_open=True)

    def check_budget(self, budget: int) -> None:
        if budget < self.n_sink + self.recent:
            raise ArgumentError("budget", f">= n_sink + recent = {self.n_sink + self.recent}", repr(budget))

    def new_extra(self, batch: int, n_heads: int, n_tokens: int, *, device=None, dtype=None) -> tuple:
        return (torch.zeros(batch, n_heads, n_tokens, device=device, dtype=dtype),)

    def score(self, state: PolicyKVState, obs: Observation | None) -> Tensor:
        """log of the decayed surprisal ``s * decay ** age`` (B, H, S); -inf for 0."""
        s = state.extra[0].detach().double().clamp_min(0)
        age = (state.length[:, None, None] - 1 - state.pos).double()
        return s.log() + age * math.log(self.decay)

    def protected(self, state: PolicyKVState, budget: Tensor) -> Tensor:
        return sink_mask(state, self.n_sink) | recent_mask(state, self.recent)

    def compress(self, state: PolicyKVState, obs: Observation | None, budget: Tensor) -> PolicyKVState:
        if state.pos.shape[2] <= int(budget.min()) or state.extra[0].isnan().any():
            return state  # within budget, or surprisal still pending (LanguageModel fills it in, then compresses)
        valid = state.pos >= 0
        key = self.score(state, obs).masked_fill(self.protected(state, budget) & valid, math.inf)
        key = key.masked_fill(~valid, -math.inf)
        newest = torch.sort(state.pos, dim=-1, descending=True, stable=True).indices  # ties: the more recent
        order = newest.gather(-1, torch.sort(key.gather(-1, newest), dim=-1, descending=True, stable=True).indices)
        return keep_mask(state, valid & (order.argsort(dim=-1) < budget))
