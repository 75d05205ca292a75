"""``em_llm``: episodic memory, the evicted stream cut into events where surprise peaks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import register_policy
from ..validation import ArgumentError, check_int, check_number
from .base import PolicyKVState
from .infllm import BIG, UnitRetrieval, split_budget
from .sirllm import SurprisalSignal


@register_policy("em_llm")
@dataclass
class EMLLM(SurprisalSignal, UnitRetrieval):
    """EM-LLM (Fountas et al. 2024): surprise-cut episodic events, retrieved by similarity + contiguity.

    "Human-like Episodic Memory for Infinite Context LLMs" (arXiv 2407.09450); reference
    ``em-llm/EM-LLM-model`` (on InfLLM's ``context_manager.py``).  ``infllm``'s layout with *events* as
    memory units.  Surprise ``s_t = -log p(x_t | x_<t)`` is handed in by ``LanguageModel`` as for
    ``sirllm``.  An event starts at ``n_init`` and wherever ``s_t > mean + gamma * std`` of the ``tau``
    tokens before t (std unbiased, at least 2 tokens); events reaching ``max_event`` are split.  An event
    is in memory once it has left the local window (the one being formed is read as local).  A query
    reads the ``k_sim`` formed events with the highest ``sum_h q_h . mean_r k_{h,r}`` over their
    representatives (InfLLM's rule; one selection per layer), then ``k_contig`` neighbours of those (in
    rank order the next, then the previous, skipping those taken).

    Deviations from the paper: no boundary refinement by graph modularity / conductance (its optional
    "S" variant), no minimum event size (``min_block_size``), a contiguity buffer rebuilt per query (the
    reference keeps a FIFO across execution blocks), retrieval per query rather than per execution
    block, absolute rotary positions.  Without the model every surprisal is 0: events are InfLLM blocks.

    Args:
        budget: tokens a query attends to, ``n_init + n_local + (k_sim + k_contig) * max_event``; unset
            fields split it as InfLLM (``max(1, (budget // 3) // max_event)`` events, 30% of them
            contiguous, rounded down); None: full attention.
        mode: "step" (retrieve for every query) or "prefill" (dense prompt, retrieve when decoding).
        n_init: initial tokens always attended (paper 128; 4 at our scale).
        n_local: local window; None: what the budget leaves.
        n_repr: representative tokens per event (paper ``repr_topk``: 4).
        gamma: boundary threshold in standard deviations above the mean surprise (paper 1).
        tau: surprise history window in tokens; None: n_local (the reference's history window).
        max_event: longest event (paper ``max_block_size`` 128; 16 at our scale).
        k_sim: events retrieved by similarity; None: from the budget.
        k_contig: contiguous neighbour events (reference: 0.3 of ``n_mem``); None: from the budget (0 if
            k_sim is set).
    """

    gamma: float = 1.0
    tau: int | None = None
    max_event: int = 16
    k_sim: int | None = None
    k_contig: int | None = None

    def validate(self) -> None:
        super().validate()
        check_number("gamma", self.gamma, 0.0, math.inf)
        check_int(tau=self.tau, minimum=2, allow_none=True)
        check_int(max_event=self.max_event)
        check_int(k_sim=self.k_sim, allow_none=True)
        check_int(k_contig=self.k_contig, minimum=0, allow_none=True)
        if self.budget is None and any(v is not None for v in (self.n_local, self.k_sim, self.k_contig)):
            raise ArgumentError("budget", "set when n_local, k_sim and k_contig split a budget (with budget=None "
                                "attention is full)", "None")

    def layout(self, budget: int) -> tuple[int, int, int]:
        if self.k_sim is None and self.k_contig is None:
            k = None
        else:
            k = (1 if self.k_sim is None else self.k_sim) + (self.k_contig or 0)
        n_local, k = split_budget(budget, self.n_init, self.n_local, k, self.max_event, "k_sim + k_contig")
        if self.k_sim is None and self.k_contig is None:
            k_contig = math.floor(0.3 * k + 1e-9)
            return n_local, k - k_contig, k_contig
        k_contig = self.k_contig or 0
        return n_local, k - k_contig, k_contig

    def new_extra(self, batch: int, n_heads: int, n_tokens: int, *, device=None, dtype=None) -> tuple:
        zeros = torch.zeros(batch, n_heads, n_tokens, device=device, dtype=dtype)
        return (zeros, zeros.clone())  # surprisal, local score

    def surprise(self, state: PolicyKVState) -> Tensor:
        """(B, L) surprisal by position (every token is stored; heads hold the same values)."""
        B, L = state.length.shape[0], int(state.length.max())
        dense = state.extra[0].new_zeros(B, L + 1)
        index = torch.where(state.pos[:, 0] >= 0, state.pos[:, 0].long(), L)
        return dense.scatter(1, index, state.extra[0][:, 0].detach())[:, :L]

    def boundaries(self, state: PolicyKVState) -> Tensor:
        """(B, L) True where an event starts."""
        s = self.surprise(state).double()
        B, L = s.shape
        tau = self.tau if self.tau is not None else self.layout(self.span())[0]
        p = torch.arange(L, device=s.device)
        zero = s.new_zeros(B, 1)
        c1, c2 = torch.cat([zero, s.cumsum(1)], 1), torch.cat([zero, (s * s).cumsum(1)], 1)
        lo = (p - tau).clamp_min(0)
        n = (p - lo).to(s.dtype)  # tokens in the window [t - tau, t)
        total, squares = c1[:, p] - c1[:, lo], c2[:, p] - c2[:, lo]
        mean = total / n.clamp_min(1)
        std = ((squares - n * mean * mean) / (n - 1).clamp_min(1)).clamp_min(0).sqrt()
        cut = ((n >= 2) & (s > mean + self.gamma * std) & (p > self.n_init)) | (p == self.n_init)
        last = torch.where(cut, p, -1).cummax(1).values
        return (p >= self.n_init) & ((p - last) % self.max_event == 0)

    def units(self, state: PolicyKVState) -> tuple[Tensor, Tensor]:
        starts = self.boundaries(state)
        B, L = starts.shape
        unit_of_pos = torch.where(torch.arange(L, device=starts.device) >= self.n_init, starts.long().cumsum(1) - 1, -1)
        n_units = int(starts.sum(1).max()) if L else 0
        unit_end = torch.full((B, n_units + 1), BIG, dtype=torch.int64, device=starts.device)
        p = torch.arange(L, device=starts.device).expand(B, L)
        index = torch.where(starts & (unit_of_pos >= 1), unit_of_pos - 1, n_units)
        unit_end = unit_end.scatter(1, index, torch.where(starts, p, BIG))
        return unit_of_pos, unit_end[:, :n_units]
