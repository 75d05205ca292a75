"""``scope``: separate budgets for the prompt (compressed once) and for the tokens decoded after it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import register_policy
from ..validation import ArgumentError, check_choice, check_int, check_ratio, is_int
from .base import BoundPolicy, Observation, PolicyKVState, attention_probs, keep_topk, recent_mask
from .snapkv import SnapKV

PREFILL_RULES = ("snapkv", "all")


@register_policy("scope")
@dataclass
class SCOPE(SnapKV):
    """SCOPE (Wu et al. 2025): the prompt compressed once to its budget, decoded tokens under their own.

    "SCOPE: Optimizing Key-Value Cache Compression in Long-context Generation" (arXiv 2412.13649, ACL
    2025); reference ``Linking-ai/SCOPE:model/kv_utils.py`` (``update_kv`` for the prompt,
    ``update_kv_in_decoding`` with ``decoding_metric="slide"``).  Prefill mode (the paper's, default):
    the prompt's cache is compressed once by the ``prefill`` rule to ``budget`` tokens per head and is
    then frozen; the decoded tokens are managed apart: when a head holds more than ``D = decode_budget``
    of them, it keeps the ``r`` most recent plus the ``D - r`` others with the highest attention of the
    current query (softmax over the whole cache, prompt included; ties: the earlier token).  The two
    parts never compete for slots, so a head holds at most ``budget + D`` tokens.

    Which tokens are the prompt: positions below the row's prompt length ``aux[0]`` ((B,) int64, -1 until
    set), recorded at the end of the first call on a fresh state, i.e. the first ``forward`` (or the
    first ``step``'s single token when a sequence starts with ``step``).  Every later token, fed by
    ``step`` or by another ``forward``, is decoded; a multi-token call past the prompt is trimmed once at
    its end, scored by its last query.  The cycle calls ``compress`` only after a prompt pass in
    prefill mode, so the decoded part is trimmed in ``observe``, after the new token's attention, as the
    reference (it attends over the whole cache, then stores the trimmed one).

    Step mode (not in the paper): eviction may not depend on where a prompt ends (``forward`` equals the
    step loop), so every token is a decoded token and ``budget`` is the decoding budget: the ``r`` most
    recent plus the ``budget - r`` tokens the current query attends to most (``prefill`` unused,
    ``decode_budget`` must be None).  State bytes: the cache plus ``aux[0]``, 8 bytes per row.

    Departures from the reference: only the fixed decoding budget (``slide``), not ``adaptive`` (a budget
    growing with the steps) nor ``discontinuous`` (re-selecting every delta steps); prefill rules are
    SnapKV (this library's ``snapkv``: its window, kernel and pooling, with its own departures) or
    none, not H2O / PyramidKV / StreamingLLM.  The paper's main setting keeps the whole prompt
    (``prefill="all"``); the default here is its plug-in setting with SnapKV, so that ``budget`` bounds
    the prompt as for every other policy.  The decoded count is measured per head (the reference infers
    it from the cache length minus a fixed prompt size); a prompt shorter than ``budget`` lends nothing
    to the decoded part.

    Args:
        budget: prompt tokens kept per layer per head (the reference's ``max_capacity_prompt``); in step
            mode the whole cache's; None: the whole prompt.
        mode: "prefill" (default) or "step" (see above).
        window, kernel, pooling: the SnapKV prompt rule's (``snapkv``'s defaults: 32, 7, "avg").
        prefill: the prompt rule, "snapkv" (observation-window votes, pooled) or "all" (keep the whole
            prompt; ``budget`` then only sets the decoding budget when ``decode_budget`` is None).
        decode_budget: decoded tokens kept per layer per head (``decoding_window_size``, 512 or 1024 in
            the paper); None: the resolved ``budget``.  Prefill mode only.
        decode_recent: the decoded recent window r (``decoding_recent_size``, 256 in the paper); None:
            ``floor(decode_recent_ratio * D)``.
        decode_recent_ratio: r's share of the decoding budget when ``decode_recent`` is None (0.25: the
            paper's 256 of 1024).
    """

    prefill: str = "snapkv"
    decode_budget: int | None = None
    decode_recent: int | None = None
    decode_recent_ratio: float = 0.25

    def validate(self) -> None:
        super().validate()
        check_choice("prefill", self.prefill, PREFILL_RULES)
        check_int(decode_budget=self.decode_budget, allow_none=True)
        check_int(decode_recent=self.decode_recent, minimum=0, allow_none=True)
        check_ratio("decode_recent_ratio", self.decode_recent_ratio)
        if self.mode == "step" and self.decode_budget is not None:
            raise ArgumentError("decode_budget", "None in step mode (every token is decoded: budget is the decoding "
                                "budget)", repr(self.decode_budget))
        if None not in (self.decode_budget, self.decode_recent) and self.decode_recent > self.decode_budget:
            raise ArgumentError("decode_recent", f"<= decode_budget={self.decode_budget}", repr(self.decode_recent))

    def check_budget(self, budget: int) -> None:
        if self.decode_budget is None and self.decode_recent is not None and self.decode_recent > budget:
            raise ArgumentError("decode_recent", "<= budget (the decoding budget when decode_budget is None)",
                                f"decode_recent={self.decode_recent}, budget={budget}")

    def bind(self, **kwargs) -> BoundPolicy:
        # observe trims the decoded part without seeing the bound budgets: the bound copy carries them
        bound = super().bind(**kwargs)
        applied = dataclasses.replace(self)
        applied._applied_budget = bound.budget  # not a field: config, equality and repr are unchanged
        return dataclasses.replace(bound, policy=applied)

    def decode_cap(self) -> int | None:
        """D, decoded tokens kept per head (None: unlimited)."""
        if self.decode_budget is not None:
            return self.decode_budget
        if hasattr(self, "_applied_budget"):
            return self._applied_budget
        if self.budget is None or is_int(self.budget):
            return self.budget
        raise ValueError(f"a ratio or byte budget ({self.budget!r}) is resolved when the policy is applied "
                         "(set_policy)")

    def n_recent(self, cap: Tensor | int) -> Tensor | int:
        if self.decode_recent is not None:
            return self.decode_recent
        if isinstance(cap, Tensor):
            return torch.floor(cap * self.decode_recent_ratio + 1e-9).to(cap.dtype)
        return math.floor(cap * self.decode_recent_ratio + 1e-9)

    # -- state: the prompt length in aux --------------------------------------------------------

    def adopt(self, state) -> PolicyKVState:
        state = super().adopt(state)
        if not state.aux:
            unset = torch.full((state.pos.shape[0],), -1, dtype=torch.int64, device=state.pos.device)  # (B,)
            state = state._replace(aux=(unset,))
        return state

    def prompt_length(self, state: PolicyKVState) -> Tensor:
        """(B,) the recorded prompt length; a row not yet recorded takes everything read so far."""
        recorded = state.aux[0]
        return torch.where(recorded < 0, state.length, recorded)

    # -- the two rules -------------------------------------------------------------------------

    def last_query_probs(self, state: PolicyKVState, obs: Observation) -> Tensor:
        """(B, H, S) attention of the call's last query over the cache (ranking only: no gradient)."""
        q, q_pos = obs.q[:, :, -1:].detach(), obs.q_pos[:, -1:]
        return attention_probs(q, q_pos, state.k.detach(), state.pos)[:, :, 0]

    def observe(self, state: PolicyKVState, obs: Observation) -> PolicyKVState:
        if self.mode == "step":
            return state  # the prompt is not tracked: compress applies the decoding rule to every token
        prompt_len = self.prompt_length(state)  # (B,) recorded now if this is the first call
        state = state._replace(aux=(prompt_len,))
        cap = self.decode_cap()
        if cap is None:
            return state
        valid = state.pos >= 0  # (B, H, S)
        decoded = valid & (state.pos >= prompt_len[:, None, None])
        n_decoded = decoded.sum(-1, keepdim=True)  # (B, H, 1)
        if not bool((n_decoded > cap).any()):
            return state
        recent = decoded & (state.pos >= state.length[:, None, None] - self.n_recent(cap))
        prompt = valid & ~decoded  # frozen: never competes with decoded tokens
        return keep_topk(state, self.last_query_probs(state, obs), prompt.sum(-1, keepdim=True) + cap, prompt | recent)

    def compress(self, state: PolicyKVState, obs: Observation | None, budget: Tensor) -> PolicyKVState:
        if self.mode == "step":
            if state.pos.shape[2] <= int(budget.min()):
                return state
            return keep_topk(state, self.last_query_probs(state, obs), budget,
                             recent_mask(state, self.n_recent(budget)))
        if self.prefill == "all":
            return state
        prompt_len = self.prompt_length(state)[:, None, None]  # (B, 1, 1)
        valid = state.pos >= 0
        prompt = valid & (state.pos < prompt_len)  # (B, H, S)
        if not bool((prompt.sum(-1, keepdim=True) > budget).any()):
            return state
        # SnapKV on the prompt: the call's last w queries vote, the prompt's last w tokens are kept
        w = min(self.window, obs.q.shape[2])
        n_window = torch.clamp(budget, max=w)  # (1, H, 1)
        probs = attention_probs(obs.q[:, :, -w:], obs.q_pos[:, -w:], state.k, state.pos)  # (B, H, w, S)
        window = prompt & (state.pos >= prompt_len - n_window)
        scores = self.pool(probs.sum(dim=2), prompt & ~window)
        decoded = valid & ~prompt  # only after a prompt recorded by an earlier call: kept apart
        return keep_topk(state, scores, budget + decoded.sum(-1, keepdim=True), window | decoded)
