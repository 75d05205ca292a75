"""``finch``: the prompt's question picks the context tokens to keep, chunk by chunk of the prompt."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import register_policy
from ..validation import check_bool, check_choice, check_int
from .base import Observation, Policy, PolicyKVState, keep_mask

SCHEDULES = ("proportional", "fill")


def top_r(scores: Tensor, candidates: Tensor, r: Tensor) -> Tensor:
    """(B, H, S) mask of the ``r`` ((B or 1, H, 1)) best-scoring ``candidates`` per row and head; ties go to
    the earlier slot (a stable sort), so to the earlier position."""
    order = torch.sort(scores.masked_fill(~candidates, -math.inf), dim=-1, descending=True, stable=True).indices
    return candidates & (order.argsort(dim=-1) < r)


@dataclass
class ChunkedQuestionPolicy(Policy):
    """Base of ``finch`` and ``citrus``: a call's context is read in chunks, each cut back by the question.

    In a call of T tokens the question is the last ``w = min(question_len(), T)`` of them; the context is
    the carried cache plus the call's other tokens, which are taken ``chunk`` at a time in position
    order.  After each chunk the context slots held (the carried cache, or what the previous chunk kept,
    plus this chunk) are cut to ``context_budget`` by ``question_scores`` of the question's attention: a
    softmax of the question's queries over exactly those slots and the question's own (causal), as when
    the model reads [kept cache; chunk; question].  At the end the last ``min(w, budget)`` question tokens are added, so
    a head never holds more than ``budget`` tokens after any chunk.  A call without new context tokens
    (a step) is one cut of the carried cache.  Subclasses give ``question_len``, ``question_scores`` and
    ``context_budget``.
    """

    mode: str = "prefill"
    chunk: int = 256

    def validate(self) -> None:
        super().validate()
        check_int(chunk=self.chunk)

    def question_len(self) -> int:
        raise NotImplementedError

    def question_scores(self, probs: Tensor, visible: Tensor) -> Tensor:
        """(B, H, S) importance of each slot from the question's attention ``probs`` (B, H, w, S) over the
        slots it sees (``visible``, same shape)."""
        raise NotImplementedError

    def context_budget(self, k: Tensor, seen: Tensor, total: Tensor) -> Tensor:
        """Context slots kept after a chunk: ``k`` (1, H, 1) at the end of the call; ``seen`` and ``total``
        (B, 1, 1) the context tokens read by then and by the end of the call, earlier calls' included."""
        return k

    def chunk_steps(self, state: PolicyKVState, obs: Observation, budget: Tensor) -> Iterator[Tensor]:
        """The context slots (B, H, S) held after each chunk of this call, ``state`` holding the call's
        tokens in its last T slots; the question's slots are never among them."""
        S, T = state.pos.shape[2], obs.q.shape[2]
        w = min(self.question_len(), T)
        k = budget - torch.clamp(budget, max=w)  # (1, H, 1) context slots beside the kept question
        slot = torch.arange(S, device=state.pos.device)
        question = slot >= S - w  # (S,)
        held = (state.pos >= 0) & (slot < S - T)  # (B, H, S) the carried cache
        q, q_pos = obs.q[:, :, -w:].detach(), obs.q_pos[:, -w:]  # (B, H, w, K), (B, w)
        logits = (q @ state.k.detach().transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, w, S)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        causal = (state.pos >= 0)[:, :, None, :] & (state.pos[:, :, None, :] <= q_pos[:, None, :, None])
        read_before = (state.length - T)[:, None, None]  # (B, 1, 1) context tokens read before this call
        total = (state.length - w)[:, None, None]
        first = S - T  # the call's first slot
        for start in list(range(first, S - w, self.chunk)) or [S - w]:
            end = min(start + self.chunk, S - w)
            candidates = held | ((slot >= start) & (slot < end))  # (B, H, S)
            visible = causal & (candidates | question)[:, :, None, :]  # (B, H, w, S)
            probs = torch.softmax(logits.masked_fill(~visible, -math.inf), dim=-1)
            r = self.context_budget(k, read_before + (end - first), total)
            held = top_r(self.question_scores(probs, visible), candidates, r)
            yield held

    def compress(self, state: PolicyKVState, obs: Observation | None, budget: Tensor) -> PolicyKVState:
        if state.pos.shape[2] <= int(budget.min()):
            return state
        S, w = state.pos.shape[2], min(self.question_len(), obs.q.shape[2])
        *_, held = self.chunk_steps(state, obs, budget)  # the last chunk's selection
        question = torch.arange(S, device=state.pos.device) >= S - torch.clamp(budget, max=w)  # (1, H, S)
        return keep_mask(state, held | question)


@register_policy("finch")
@dataclass
class Finch(ChunkedQuestionPolicy):
    """Finch (Corallo & Papotti 2024): question-attention top-r over each prompt chunk and the kept cache.

    "FINCH: Prompt-guided Key-Value Cache Compression for Large Language Models" (TACL 12, 2024,
    doi:10.1162/tacl_a_00716; arXiv 2408.00167); reference kvpress ``kvpress/presses/finch_press.py``
    (``FinchPress``, validated against the authors' code; its chunked predecessor, with ``split_size``
    and ``condition_len``, has the per-chunk rule).  The question is a call's last ``w = min(window, T)``
    tokens (kvpress's dynamic window, found there by a delimiter token: set ``window`` to each example's
    question length).  The context is read ``chunk`` tokens at a time; after chunk i, with A the
    question's causal softmax attention over [kept cache; chunk; question] and n_p the number of slots
    question token p sees, each cached or chunk token j scores ``s_j = sum_p n_p A_pj`` (the paper's
    normalisation against the positional bias of causal attention; ``normalize=False``: ``sum_p A_pj``)
    and the top ``r_i`` stay.  ``r_i = floor(k * seen_i / n_ctx)`` ("proportional", the paper's ``r = m /
    sigma + c``), seen_i and n_ctx the context tokens read through chunk i and by the end of the call
    (earlier calls included): the kept context grows with the text read and is ``k = budget - min(w,
    budget)`` after the last chunk, when the question's tokens are added.  ``schedule="fill"`` cuts to k
    after every chunk instead.

    Departures: (1) one selection per head (as kvpress; the paper sums the attention over a layer's
    heads); (2) no key re-rotation: the paper (and kvpress's ``rerotate_keys``) move kept keys to
    contiguous positions so a document longer than the context window fits inside it, but this cache
    stores each slot's absolute position with its key rotated there, and the next token's position is
    the count of tokens read (``length``), so kept keys keep their true distance to later queries;
    (3) a call reads its whole prompt with full attention (every prefill policy here) and the chunk
    loop replays the selection on this layer's keys with the question's queries of that pass, where
    Finch re-encodes each chunk and the question against the compressed cache (in a deep model, later
    layers' keys differ) and never holds the whole prompt; (4) ``n_p`` counts every key question token p
    sees (kvpress's ``arange`` is that count minus one) and the paper's constant ``1 / (m + c)`` is
    dropped (it does not change a ranking); ``r_i`` is floored on the cumulative count (the authors' code
    floors each chunk's share); (5) ties go to the earlier token.

    Args:
        budget: tokens kept per layer per head, the question's included; a budget <= w keeps the last
            ``budget`` tokens.  None: unlimited.
        mode: "prefill" (after each forward call, as the paper; default) or "step" (not in the paper:
            after every step over budget the current query is the question, w = 1, and only the
            current token is protected; no queries are stored).
        chunk: context tokens read per step, m (256, the chunk of the paper's lost-in-the-middle runs).
        window: question length w (32; kvpress derives it per example from a delimiter token).
        schedule: "proportional" (the paper's growing r_i) or "fill" (cut to k after every chunk).
        normalize: weight each question token's attention by the keys it sees (True, kvpress's default).
    """

    window: int = 32
    schedule: str = "proportional"
    normalize: bool = True

    def validate(self) -> None:
        super().validate()
        check_int(window=self.window)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_bool(normalize=self.normalize)

    def question_len(self) -> int:
        return self.window

    def question_scores(self, probs: Tensor, visible: Tensor) -> Tensor:
        if self.normalize:
            probs = probs * visible.sum(dim=-1, keepdim=True)  # (B, H, w, S) x (B, H, w, 1) keys seen
        return probs.sum(dim=2)

    def context_budget(self, k: Tensor, seen: Tensor, total: Tensor) -> Tensor:
        if self.schedule == "fill":
            return k
        return k * seen // total.clamp_min(1)  # (B, H, 1); = k once the call's context is read
