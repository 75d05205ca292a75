"""``citrus``: chunked state eviction ranked by the attention of the final instruction tokens."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..registry import register_policy
from ..validation import check_int
from .finch import ChunkedQuestionPolicy


@register_policy("citrus")
@dataclass
class CItruS(ChunkedQuestionPolicy):
    """CItruS (Bai et al. 2024): after each context chunk, keep what the instruction attends to most.

    "CItruS: Chunked Instruction-aware State Eviction for Long Sequence Modeling" (arXiv 2406.12018,
    EMNLP 2024); reference ``ybai-nlp/CItruS:src/citrus_methods.py``
    (``get_past_key_values_instruction_aware_single``, ``generate_with_citrus``).  The instruction is a
    call's last ``w = min(instruction_len, T)`` tokens; the rest of the call, after the carried cache,
    is the context, read ``chunk`` tokens at a time.  After chunk i, with A the instruction's causal
    softmax attention over [cache; chunk i; instruction], each cached or chunk token j scores ``s_j =
    mean_p A_pj`` and the ``k = budget - min(w, budget)`` best stay (all while there are at most k); the
    instruction's tokens join the cache at the end.  This is the paper's single instruction-aware cache
    (``cache_type="instruction_aware_single"``): the reference reads chunk i + 1 against the cache of k
    kept tokens plus chunk i, then ranks that cache by the instruction's attention and keeps k plus
    chunk i + 1 (so the same tokens are kept as here, cut one chunk later; it holds up to k + 2 chunks
    while reading), and its final instruction pass cuts the last k + chunk to k.

    Departures: (1) one selection per head (the reference averages the attention over a layer's heads
    and keeps the same tokens in all of them); (2) no position shift: the reference re-rotates keys to
    their cache index (StreamingLLM's pos-shift attention), this cache keeps each key at its absolute
    position; (3) a call reads its whole prompt with full attention (every prefill policy here) and the
    chunk loop replays the evictions on this layer's keys with the instruction's queries of that pass,
    where the reference encodes each chunk, and the instruction at every chunk, against the evicted
    cache (in a deep model, later layers' keys differ); (4) ties go to the earlier token.

    Not implemented: the standard chunked state eviction (CSE: the next chunk's queries rank the cache)
    and the two-cache variant (``instruction_aware_double``), which keeps a context cache evicted by
    CSE, used to encode the following chunks, beside the instruction cache used to answer.  Within one
    forward call here both caches would select the same tokens as this single cache (the call is read
    with full attention, and the instruction ranks the same keys); the variant needs the chunk tokens'
    attention restricted to the context cache (an ``attend_mask`` over the call, breaking full-attention
    prefill outputs) and a second selection in the state (a per-slot membership flag in ``extra``,
    counted by ``state_bytes``, up to twice the slots).

    Args:
        budget: tokens kept per layer per head, the instruction's included (the reference's ``k`` is the
            context part); a budget <= w keeps the last ``budget`` tokens.  None: unlimited.
        mode: "prefill" (after each forward call, as the paper; default) or "step" (not in the paper:
            after every step over budget the current query is the instruction, w = 1, and only the
            current token is protected; no queries are stored).
        chunk: context tokens read per step (256, the reference's ``chunk_size``).
        instruction_len: instruction length w (32; set it to each example's instruction length).
    """

    instruction_len: int = 32

    def validate(self) -> None:
        super().validate()
        check_int(instruction_len=self.instruction_len)

    def question_len(self) -> int:
        return self.instruction_len

    def question_scores(self, probs: Tensor, visible: Tensor) -> Tensor:
        return probs.mean(dim=2)  # (B, H, S): averaged over the instruction's tokens
