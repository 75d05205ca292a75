"""``quest``: query-aware page selection over a cache that keeps every token."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..protocol import state_nbytes
from ..registry import register_policy
from ..validation import ArgumentError, check_int
from .base import BoundPolicy, Policy, PolicyKVState


@dataclass
class RetrievalPolicy(Policy):
    """Base of ``quest``, ``infllm`` and ``em_llm``: keep every token, restrict what each query reads."""

    bounded = False  # storage is unbounded; ``budget`` bounds the attention span

    def bind(self, **kwargs) -> BoundPolicy:
        # attend_mask / resident_bytes see only the state, so the bound policy carries the resolved budget
        # (a ratio becomes its per-layer int in a copy); this object remembers its last application's
        bound = super().bind(**kwargs)
        if bound.budget is None or bound.budget == self.budget:
            return bound
        self._applied_span = bound.budget  # not a field: config, equality and repr are unchanged
        return dataclasses.replace(bound, policy=dataclasses.replace(self, budget=bound.budget))

    def span(self) -> int | None:
        """The resolved budget (tokens a query attends to); None: full attention."""
        if self.budget is None or isinstance(self.budget, int):
            return self.budget
        applied = getattr(self, "_applied_span", None)
        if applied is None:
            raise ValueError(f"a ratio budget ({self.budget!r}) is resolved when the policy is applied (set_policy)")
        return applied

    def attends_all(self, q: Tensor) -> bool:
        """Full attention: no budget, or a prompt pass in prefill mode."""
        return self.span() is None or (self.mode == "prefill" and q.shape[2] > 1)

    def compress(self, state: PolicyKVState, obs, budget: Tensor) -> PolicyKVState:
        return state  # nothing is evicted

    def resident(self, state: PolicyKVState, tokens: Tensor, keys: Tensor | int = 0) -> int:
        """Bytes on device when each row keeps ``tokens`` (B,) tokens and ``keys`` (B,) extra keys
        per head resident, plus ``aux`` and ``length``; the rest of the cache could be offloaded."""
        H, K = state.k.shape[1], state.k.shape[3]
        per_token = sum(math.prod(t.shape[3:]) * t.element_size() for t in (state.k, state.v, state.pos, *state.extra))
        total = H * (tokens.clamp_min(0) * per_token + torch.as_tensor(keys) * K * state.k.element_size()).sum()
        return int(total) + state_nbytes(state.aux) + state_nbytes(state.length)


@register_policy("quest")
@dataclass
class Quest(RetrievalPolicy):
    """Quest (Tang et al. 2024): keep every token, attend to the pages with the top q.k upper bound.

    "Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference" (arXiv 2406.10774, ICML 2024);
    reference ``mit-han-lab/Quest:evaluation/quest_attention.py``.  Page p holds positions ``[p *
    page_size, (p + 1) * page_size)``; ``aux`` keeps each page's elementwise key min m and max M per head
    ((B, H, n_pages, K), +-inf before it starts).  ``u(p) = sum_c max(q_c m_c, q_c M_c)`` bounds ``q . k``
    over the page; a query reads the ``budget // page_size`` complete pages with the highest bound (ties:
    earlier) and its own.  Nothing is evicted: ``resident_bytes`` (read pages and every summary) is
    reported next to ``state_bytes``.  Deviations from the reference: the current page is always read
    and the others are chosen among complete pages (it ranks every page and takes at least 3); every
    layer is sparse (it keeps the first two dense); bounds computed as ``q+ . M + q- . m`` (equal).

    Args:
        budget: tokens a query attends to besides its current page, in whole pages (>= page_size); None:
            full attention.
        mode: "step" (sparse for every query, a closed-form mask equal to the step loop) or "prefill"
            (dense prompt, sparse decoding, as the reference's ``q_len > 1``).
        page_size: tokens per page (16, the paper's ``chunk_size``).
    """

    page_size: int = 16

    position_only = True  # every token is kept: the closed-form forward applies

    def validate(self) -> None:
        super().validate()
        check_int(page_size=self.page_size)

    def check_budget(self, budget: int) -> None:
        if budget < self.page_size:
            raise ArgumentError("budget", f">= page_size={self.page_size} (it counts whole pages)", repr(budget))

    def keep_position(self, pos: Tensor, length: Tensor, budget: Tensor) -> Tensor:
        return pos >= 0

    def append(self, state: PolicyKVState, kv) -> PolicyKVState:
        new = super().append(state, kv)
        if self.span() is None:
            return new._replace(aux=())
        return new._replace(aux=self.summaries(new, state))

    def summaries(self, state: PolicyKVState, old: PolicyKVState | None = None) -> tuple[Tensor, Tensor]:
        """(kmin, kmax), each (B, H, n_pages, K); incremental from ``old``'s when they are valid."""
        B, H, S, K = state.k.shape
        n_pages = -(-int(state.length.max()) // self.page_size) if B else 0
        start, kmin, kmax = 0, state.k.new_full((B, H, 0, K), math.inf), state.k.new_full((B, H, 0, K), -math.inf)
        if old is not None and self._valid(old):
            start, (kmin, kmax) = old.pos.shape[2], old.aux
            # pages a row had not started (cat_states pads aux with zeros) start afresh
            begun = (torch.arange(kmin.shape[2], device=kmin.device) * self.page_size < old.length[:, None])
            begun = begun[:, None, :, None]
            kmin, kmax = kmin.masked_fill(~begun, math.inf), kmax.masked_fill(~begun, -math.inf)
        grow = n_pages - kmin.shape[2]
        kmin = torch.cat([kmin, kmin.new_full((B, H, grow, K), math.inf)], 2)
        kmax = torch.cat([kmax, kmax.new_full((B, H, grow, K), -math.inf)], 2)
        k, pos = state.k[:, :, start:].detach(), state.pos[:, :, start:]
        empty = (pos < 0)[..., None]
        index = (pos.clamp_min(0) // self.page_size).long()[..., None].expand_as(k)
        kmin = kmin.scatter_reduce(2, index, k.masked_fill(empty, math.inf), "amin")
        kmax = kmax.scatter_reduce(2, index, k.masked_fill(empty, -math.inf), "amax")
        return kmin, kmax

    def _valid(self, state: PolicyKVState) -> bool:
        n_pages = -(-int(state.length.max()) // self.page_size) if state.length.numel() else 0
        aux = state.aux
        return len(aux) == 2 and aux[0].dim() == 4 and tuple(aux[0].shape[2:]) == (n_pages, state.k.shape[3])

    def page_bounds(self, state: PolicyKVState, q: Tensor) -> Tensor:
        """(B, H, Tq, n_pages) upper bounds ``sum_c max(q_c m_c, q_c M_c)`` (empty pages: 0)."""
        kmin, kmax = state.aux if self._valid(state) else self.summaries(state)
        kmin, kmax = kmin.masked_fill(kmin.isinf(), 0), kmax.masked_fill(kmax.isinf(), 0)
        q = q.detach().to(kmin.dtype)
        return q.clamp_min(0) @ kmax.transpose(-1, -2) + q.clamp_max(0) @ kmin.transpose(-1, -2)

    def attend_mask(self, state: PolicyKVState, q: Tensor, q_pos: Tensor) -> Tensor | None:
        if self.attends_all(q):
            return None
        bounds = self.page_bounds(state, q)  # (B, H, Tq, n_pages)
        current = (q_pos // self.page_size)[:, None, :, None]  # (B, 1, Tq, 1)
        pages = torch.arange(bounds.shape[-1], device=q.device)
        candidate = pages < current  # complete pages before the query's own
        scores = bounds.masked_fill(~candidate, -math.inf)
        rank = torch.sort(scores, dim=-1, descending=True, stable=True).indices.argsort(dim=-1)
        chosen = candidate & (rank < self.span() // self.page_size)  # (B, H, Tq, n_pages)
        page = (state.pos.clamp_min(0) // self.page_size).long()[:, :, None, :]  # (B, H, 1, S)
        picked = chosen.gather(-1, page.expand(*chosen.shape[:3], -1))
        return (picked | (page == current)) & (state.pos >= 0)[:, :, None, :]

    def resident_bytes(self, state: PolicyKVState) -> int:
        """The pages the last query read (selected + current) and every page summary."""
        if self.span() is None:
            return state_nbytes(state)
        t = state.length - 1
        current = t.div(self.page_size, rounding_mode="floor")
        chosen = current.clamp_max(self.span() // self.page_size)
        read = chosen * self.page_size + t - current * self.page_size + 1
        return self.resident(state, torch.where(t >= 0, read, 0))
