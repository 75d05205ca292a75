"""``infllm``: initial tokens + local window + retrieval of memory blocks by representative keys."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..protocol import state_nbytes
from ..registry import register_policy
from ..validation import ArgumentError, check_int
from .base import Observation, PolicyKVState
from .quest import RetrievalPolicy

BIG = 2**62  # end of a unit that is still open


def split_budget(budget: int, n_init: int, n_local: int | None, k: int | None, unit: int, name: str) -> tuple[int, int]:
    """(n_local, k units) from a budget: explicit values win, else a third of it goes to memory."""
    if k is None and n_local is None:
        k = max(1, (budget // 3) // unit)
    if n_local is None:
        n_local = budget - n_init - k * unit
    elif k is None:
        k = (budget - n_init - n_local) // unit
    if n_local < 1 or k < 1 or n_init + n_local + k * unit > budget:
        raise ValueError(
            f"budget={budget} cannot hold n_init={n_init} + n_local={n_local} + {name}={k} x {unit} tokens "
            "(n_local and the retrieved units need at least 1 each)"
        )
    return n_local, k


@dataclass
class UnitRetrieval(RetrievalPolicy):
    """Shared by ``infllm`` (fixed blocks) and ``em_llm`` (surprise-cut events)."""

    n_init: int = 4
    n_local: int | None = None
    n_repr: int = 4

    needs_attention = True  # representative scores: attention received within the local window

    def validate(self) -> None:
        super().validate()
        check_int(n_init=self.n_init, minimum=0)
        check_int(n_local=self.n_local, allow_none=True)
        check_int(n_repr=self.n_repr)

    def check_budget(self, budget: int) -> None:
        self.layout(budget)

    def layout(self, budget: int) -> tuple[int, int, int]:
        """(n_local, units by similarity, contiguous neighbour units)."""
        raise NotImplementedError

    def units(self, state: PolicyKVState) -> tuple[Tensor, Tensor]:
        """unit_of_pos (B, L) (-1: a sink) and unit_end (B, n_units) (first position after it; BIG: open)."""
        raise NotImplementedError

    def new_extra(self, batch: int, n_heads: int, n_tokens: int, *, device=None, dtype=None) -> tuple:
        return (torch.zeros(batch, n_heads, n_tokens, device=device, dtype=dtype),)

    def observe(self, state: PolicyKVState, obs: Observation) -> PolicyKVState:
        if self.span() is None:
            return state
        n_local = self.layout(self.span())[0]
        window = state.pos[:, :, None, :] > obs.q_pos[:, None, :, None] - n_local  # (B, H, Tq, S)
        received = (obs.probs.detach() * window).sum(2).to(state.extra[-1].dtype)
        return state._replace(extra=(*state.extra[:-1], state.extra[-1] + received))

    def slot_units(self, state: PolicyKVState, unit_of_pos: Tensor) -> Tensor:
        B, H, S = state.pos.shape
        units = unit_of_pos.gather(1, state.pos.clamp_min(0).reshape(B, -1).long()).reshape(B, H, S)
        return units.masked_fill(state.pos < 0, -1)

    def selection(self, state, q, q_pos, unit_of_pos, unit_end):
        """complete (B, Tq, U) and selected (B, Tq, U) units for queries q at q_pos."""
        n_local, k_sim, k_contig = self.layout(self.span())
        B, H, S, K = state.k.shape
        local_start = torch.clamp(q_pos + 1 - n_local, min=self.n_init)  # (B, Tq)
        complete = unit_end[:, None, :] <= local_start[:, :, None]  # (B, Tq, U)
        unit = self.slot_units(state, unit_of_pos)[:, 0]  # (B, S): every head holds the same slots
        U = unit_end.shape[1]
        # representatives: per unit, the n_repr tokens with the largest head-summed local score
        score = state.extra[-1].detach().sum(1).masked_fill(unit < 0, -math.inf)
        order = torch.sort(score, dim=-1, descending=True, stable=True).indices
        order = order.gather(1, torch.sort(unit.gather(1, order), dim=-1, stable=True).indices)
        sorted_unit = unit.gather(1, order)
        idx = torch.arange(S, device=q.device).expand(B, S)
        start = torch.where(sorted_unit != torch.cat([sorted_unit[:, :1] - 1, sorted_unit[:, :-1]], 1), idx, 0)
        is_rep = torch.zeros_like(unit, dtype=torch.bool).scatter(
            1, order, (idx - start.cummax(1).values < self.n_repr) & (sorted_unit >= 0))
        weight = is_rep.to(state.k.dtype)
        target = unit.clamp_min(0)
        rep = state.k.new_zeros(B, H, U, K).scatter_add(
            2, target[:, None, :, None].expand(B, H, S, K), state.k.detach() * weight[:, None, :, None])
        rep = rep / state.k.new_zeros(B, U).scatter_add(1, target, weight).clamp_min(1)[:, None, :, None]
        sim = torch.einsum("bhtk,bhuk->btu", q.detach().to(rep.dtype), rep).masked_fill(~complete, -math.inf)
        rank = torch.sort(sim, dim=-1, descending=True, stable=True).indices.argsort(dim=-1)
        selected = complete & (rank < k_sim)
        if k_contig:  # neighbours of the retrieved units, best-ranked first, the next unit before the previous
            r = rank.to(torch.float64).masked_fill(~selected, math.inf)
            inf = r.new_full((*r.shape[:2], 1), math.inf)
            after = 2 * torch.cat([inf, r[..., :-1]], -1)  # unit u - 1 was retrieved
            before = 2 * torch.cat([r[..., 1:], inf], -1) + 1  # unit u + 1 was retrieved
            prio = torch.minimum(after, before).masked_fill(selected | ~complete, math.inf)
            crank = torch.sort(prio, dim=-1, stable=True).indices.argsort(dim=-1)
            selected = selected | (prio.isfinite() & (crank < k_contig))
        return complete, selected

    def attend_mask(self, state: PolicyKVState, q: Tensor, q_pos: Tensor) -> Tensor | None:
        if self.attends_all(q):
            return None
        unit_of_pos, unit_end = self.units(state)
        if unit_end.shape[1] == 0:
            return None  # only sinks so far
        complete, selected = self.selection(state, q, q_pos, unit_of_pos, unit_end)
        B, H, S = state.pos.shape
        unit = self.slot_units(state, unit_of_pos)  # (B, H, S)
        index = unit.clamp_min(0)[:, :, None, :].expand(B, H, q.shape[2], S)
        memory = complete[:, None].expand(B, H, -1, -1).gather(-1, index)
        chosen = selected[:, None].expand(B, H, -1, -1).gather(-1, index)
        sink = ((state.pos >= 0) & (state.pos < self.n_init))[:, :, None, :]
        return sink | ((unit >= 0)[:, :, None, :] & (~memory | chosen))

    def resident_bytes(self, state: PolicyKVState) -> int:
        """Sinks + local + remainder + the largest retrievable units (an upper bound of what the last
        query read; exact for equal blocks) + the representative keys of the other formed units."""
        if self.span() is None:
            return state_nbytes(state)
        if state.length.numel() == 0 or int(state.length.max()) == 0:
            return self.resident(state, state.length.clone())
        n_local, k_sim, k_contig = self.layout(self.span())
        unit_of_pos, unit_end = self.units(state)
        L, B = unit_of_pos.shape[1], unit_of_pos.shape[0]
        U = unit_end.shape[1]
        inside = (torch.arange(L, device=unit_of_pos.device) < state.length[:, None]) & (unit_of_pos >= 0)
        size = torch.zeros(B, U + 1, dtype=torch.int64, device=inside.device).scatter_add(
            1, torch.where(inside, unit_of_pos, U), inside.long())[:, :U]
        local_start = torch.clamp(state.length - n_local, min=self.n_init)
        complete = unit_end <= local_start[:, None]
        formed = torch.where(complete, size, 0)
        top = torch.sort(formed, dim=-1, descending=True).values[:, : k_sim + k_contig]
        read = state.length - formed.sum(1) + top.sum(1)
        reps = torch.where(complete, size.clamp_max(self.n_repr), 0).sum(1) - top.clamp_max(self.n_repr).sum(1)
        return self.resident(state, read, reps)


@register_policy("infllm")
@dataclass
class InfLLM(UnitRetrieval):
    """InfLLM (Xiao et al. 2024): sinks + local window + top-k memory blocks by representative keys.

    "InfLLM: Training-Free Long-Context Extrapolation for LLMs with an Efficient Context Memory" (arXiv
    2402.04617, NeurIPS 2024); reference ``thunlp/InfLLM:inf_llm/attention/context_manager.py``.  A query
    reads the ``n_init`` sinks, the ``n_local`` most recent tokens, and the best of the middle's blocks
    of ``block_size`` by position, each formed once it has left the local window (the remainder is read
    as local).  Each token sums the attention it receives while in local windows (``extra[-1]``, over
    heads); a block's ``n_repr`` highest are its representatives, its score ``sum_h q_h . mean_r
    k_{h,r}`` (one selection per layer; ties: earlier).  Every token stays stored (the blocks are the
    offloaded memory): ``resident_bytes`` (sinks, local, remainder, selected blocks, the others'
    representatives) is reported next to ``state_bytes``.

    Deviations from the paper: retrieval per query rather than per 512-token execution block; keys keep
    their absolute rotary positions (the paper gives memory tokens one fixed distance ``n_local``); no
    GPU block cache (LRU): the selection is exact.

    Args:
        budget: tokens a query attends to, ``n_init + n_local + topk * block_size`` (plus the remainder,
            as the paper): explicit fields win, else a third goes to memory as the paper (2048 of
            128 + 4096 + 2048), ``topk = max(1, (budget // 3) // block_size)``; None: full attention.
        mode: "step" (retrieve for every query) or "prefill" (dense prompt, retrieve when decoding).
        n_init: initial tokens always attended (paper 128; 4 at our scale).
        n_local: local window; None: what the budget leaves.
        n_repr: representative tokens per block (paper ``repr_topk``: 4).
        block_size: tokens per memory block (paper 128; 16 at our scale).
        topk: blocks retrieved per query; None: from the budget (a third of it).
    """

    block_size: int = 16
    topk: int | None = None

    def validate(self) -> None:
        super().validate()
        check_int(block_size=self.block_size)
        check_int(topk=self.topk, allow_none=True)
        if self.budget is None and (self.n_local is not None or self.topk is not None):
            raise ArgumentError("budget", "set when n_local and topk split a budget (with budget=None attention "
                                "is full)", "None")

    def layout(self, budget: int) -> tuple[int, int, int]:
        n_local, topk = split_budget(budget, self.n_init, self.n_local, self.topk, self.block_size, "topk")
        return n_local, topk, 0

    def units(self, state: PolicyKVState) -> tuple[Tensor, Tensor]:
        B, L = state.length.shape[0], int(state.length.max())
        p = torch.arange(L, device=state.pos.device)
        unit_of_pos = torch.where(p >= self.n_init, (p - self.n_init).div(self.block_size, rounding_mode="floor"), -1)
        n_units = -(-max(L - self.n_init, 0) // self.block_size)
        unit_end = self.n_init + (torch.arange(n_units, device=p.device) + 1) * self.block_size
        return unit_of_pos.expand(B, L), unit_end.expand(B, n_units)
