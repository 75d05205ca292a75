"""Sequence order recall (SORT): which of two excerpts came first in the context?

Pink et al. 2024, "Assessing Episodic Memory in LLMs with Sequence Order Recall Tasks" (SORT, arXiv
2410.08133). A model reads a context, is then shown two excerpts of it in random order, and must say
which excerpt appeared earlier. Unlike associative recall, knowing *that* a span was seen is not
enough: the memory must keep *when* it was seen, relative to another span. It measures *order*
(temporal / episodic memory).

Worked example (``vocab_size=16, seq_len=18, excerpt_length=2, min_separation=2``)::

    position:  0   1   2   3   4   5   6   7   8   9   10  11  12  13  14  15  16  17
               -------------- context (C = 11) ------------  MARK  X1  X2 SEP  Y1  Y2 QUERY
    inputs:    9   6  [13  7]  5  12   8  [11 14]  6  10   0   11  14  1   13  7   2
    targets:  -100 ...                                                            4 (SECOND)
    distance: -1   ...                                                            15

  Shown first is ``11 14`` (context position 7), shown second ``13 7`` (position 2): the second
  shown excerpt came earlier, so the answer is SECOND and distance = 17 - 2 = 15.

* tokens: 0 MARK, 1 SEP, 2 QUERY, 3 FIRST, 4 SECOND; context tokens uniform in ``[5, vocab_size)``;
* layout: ``context (C) MARK excerpt SEP excerpt QUERY`` with ``C = seq_len - 2 * excerpt_length - 3``;
* the two excerpts are ``excerpt_length`` consecutive context tokens, non-overlapping, the later one
  starting at least ``min_separation`` tokens after the earlier one ends; the pair of start
  positions is uniform over all pairs that satisfy this;
* they are shown in random order, exactly balanced within a batch (up to one example for odd
  ``n``); the only scored position is QUERY, whose target is FIRST when the excerpt shown first
  appeared earlier in the context, SECOND otherwise;
* ``distance`` = QUERY position minus the context position of the earlier excerpt's first token.

Slice: ``separation``, the tokens between the end of the earlier excerpt and the start of the
later one, as the lower end of its power-of-two bucket (0, 1, 2, 4, 8, ...; 8 means 8-15).
Differences from SORT: SORT uses book text and evaluates pretrained LLMs with a prompt; here the
context is random tokens (so only the model's memory can tell the order) and the answer is a
two-way class.  Excerpts are not forced to be unique: with ``V' = vocab_size - 5`` content tokens a
given excerpt recurs by chance somewhere in the context with probability about ``C / V'**L``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import register_task
from ..validation import ArgumentError, check_int, check_positive
from .base import IGNORE_INDEX, Batch, Task

MARK, SEP, QUERY, FIRST, SECOND = 0, 1, 2, 3, 4
FIRST_CONTENT = 5  # context tokens are uniform in [FIRST_CONTENT, vocab_size)

# Measured with 2-layer width-32 RoPE attention (short conv 4, batch 32, lr 3e-3): this CPU scale
# stays at chance for 300 steps and reaches 82-85% after 1,500 (three seeds).  Position is not in
# the residual stream of a RoPE model, so comparing *where* two spans were seen is slow to learn.
CPU_SCALE = dict(vocab_size=64, seq_len=20, excerpt_length=2, min_separation=4)


def power_of_two_floor(x: torch.Tensor) -> torch.Tensor:
    """0 -> 0, 1 -> 1, 2-3 -> 2, 4-7 -> 4, ... elementwise on a non-negative int64 tensor."""
    out = torch.zeros_like(x)
    positive = x > 0
    out[positive] = 2 ** torch.floor(torch.log2(x[positive].double())).long()
    return out


@register_task("order_recall")
@dataclass
class OrderRecall(Task):
    """Sequence order recall (SORT): did the first shown excerpt come FIRST or SECOND in the context?

    Args:
        vocab_size: V; context tokens from ``[5, V)`` (V >= 7).
        seq_len: T; the context has ``T - 2 * excerpt_length - 3`` tokens.
        excerpt_length: L, tokens per excerpt (>= 1).
        min_separation: least number of context tokens between the two excerpts (>= 0).
    """

    vocab_size: int = 64
    seq_len: int = 256
    excerpt_length: int = 4
    min_separation: int = 8
    version = 1

    def __post_init__(self):
        check_int(vocab_size=self.vocab_size, seq_len=self.seq_len, excerpt_length=self.excerpt_length)
        check_int(min_separation=self.min_separation, minimum=0)
        if self.vocab_size < FIRST_CONTENT + 2:
            raise ArgumentError("vocab_size", f"at least {FIRST_CONTENT + 2} (5 special tokens and 2 or more context "
                                "tokens)", repr(self.vocab_size))
        needed = 4 * self.excerpt_length + self.min_separation + 3
        if self.seq_len < needed:
            raise ArgumentError("seq_len", f"at least 4 * excerpt_length + min_separation + 3 = {needed} (a context "
                                "holding both excerpts and their separation, then MARK, the excerpts, SEP and QUERY)",
                                repr(self.seq_len))

    @property
    def context_len(self) -> int:
        return self.seq_len - 2 * self.excerpt_length - 3

    def chance_accuracy(self) -> float:
        """FIRST or SECOND: a coin flip."""
        return 0.5

    def build(self, n: int, seed: int) -> Batch:
        check_positive(n=n)
        g = self.generator(seed)
        V, T, L, M, C = self.vocab_size, self.seq_len, self.excerpt_length, self.min_separation, self.context_len
        context = torch.randint(FIRST_CONTENT, V, (n, C), generator=g)  # (n, C)

        # start positions (early, late) uniform over {late >= early + L + M, late + L <= C}: with
        # late' = late - L - M that is 0 <= early <= late' <= slack, i.e. a distinct pair x < y of
        # {0, ..., slack + 1} mapped to (x, y - 1)
        slack = C - 2 * L - M
        x = torch.randint(slack + 2, (n,), generator=g)
        y = torch.randint(slack + 1, (n,), generator=g)
        y = y + (y >= x).long()  # (n,) distinct from x, uniform over the rest
        early = torch.minimum(x, y)  # (n,)
        late = torch.maximum(x, y) - 1 + L + M  # (n,)

        offsets = torch.arange(L)
        early_tokens = context.gather(1, early[:, None] + offsets)  # (n, L)
        late_tokens = context.gather(1, late[:, None] + offsets)  # (n, L)

        # exactly balanced: the earlier excerpt is shown first in half the examples
        early_shown_first = (torch.randperm(n, generator=g) + torch.randint(2, (1,), generator=g)) % 2 == 1
        shown_a = torch.where(early_shown_first[:, None], early_tokens, late_tokens)  # (n, L)
        shown_b = torch.where(early_shown_first[:, None], late_tokens, early_tokens)  # (n, L)

        q = T - 1
        inputs = torch.empty(n, T, dtype=torch.long)
        inputs[:, :C] = context
        inputs[:, C] = MARK
        inputs[:, C + 1 : C + 1 + L] = shown_a
        inputs[:, C + 1 + L] = SEP
        inputs[:, C + 2 + L : q] = shown_b
        inputs[:, q] = QUERY

        targets = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        targets[:, q] = torch.where(early_shown_first, FIRST, SECOND)
        distance = torch.full((n, T), -1, dtype=torch.long)
        distance[:, q] = q - early

        separation = late - (early + L)  # (n,) >= min_separation
        return Batch(inputs, targets, distance, {"separation": power_of_two_floor(separation)})
