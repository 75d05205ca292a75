"""Multi-hop recall: follow a chain of associations ``a -> b``, ``b -> c``, ... to its end.

Chained associative recall, the synthetic core of multi-hop question answering (e.g. Yang et al.
2018, "HotpotQA", EMNLP) and of pointer-chasing / variable-binding probes; no single paper fixes
this layout, so it is defined here: the facts are written as ``x -> y`` triples shuffled among
distractor chains, and the query ``a ->?`` asks for the entity reached from ``a`` after
``n_hops`` hops.  It measures *multi-step reasoning over memory*: each hop is a recall whose key
is the previous hop's answer, so the facts must stay addressable by their content, not only by
the query.

Worked example (``vocab_size=12, seq_len=16, n_hops=2, n_chains=2, min_gap=0``; filler 0,
``->`` 1, ``->?`` 2, entities 3..11; chain 5 -> 9 -> 4 is asked, 7 -> 3 -> 10 distracts)::

    position:   0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15
    inputs:     9  1  4  7  1  3  0  5  1  9  3  1 10  0  5  2
    targets:    .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  4
    distance:   .  .  .  .  .  .  .  .  .  .  .  .  .  .  . 15

  (``.`` is -100 in targets and -1 in distance.)  The answer 4 needs ``5 -> 9`` (position 7)
  and ``9 -> 4`` (position 0); the distance counts from the earliest of them, position 0.

* every example has ``n_chains`` chains of ``n_hops`` facts over distinct entities (``n_chains *
  (n_hops + 1)`` distinct tokens from ``[3, V)``); chain 0 is queried, the rest are distractors
  of the same shape, so every entity has at most one outgoing fact and the queried chain's end has
  none: the answer is also "where the chain stops", independent of ``n_hops``;
* the ``F = n_chains * n_hops`` facts ``x -> y`` (3 tokens each) are shuffled (chain order is not
  position order) into the first ``S = T - 2`` positions at random non-overlapping places, the
  rest filler; ``min_gap`` forces at least that many tokens between consecutive facts of the
  queried chain (counted in position order, end of one to start of the next);
* the query is ``a ->?`` at positions ``T - 2, T - 1``; the target at ``T - 1`` is the chain's
  end (chance: ``1 / (V - 3)`` over all entities, ``1 / n_chains`` for a guess among the chain ends);
* ``distance`` is ``T - 1`` minus the position (first token) of the chain's EARLIEST-WRITTEN fact,
  the oldest fact the answer needs (not necessarily the first hop, because facts are shuffled).

Slices: ``n_hops``, ``n_chains``, ``seq_len`` and ``chain_span``: the position of the queried
chain's last-written fact minus that of its first-written one, rounded down to a power of two
(0, 1, 2, 4, ...) so that the groups stay few; 0 for a single hop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import register_task
from ..validation import ArgumentError, check_int, check_positive
from .base import IGNORE_INDEX, Batch, Task

FILLER, ARROW, QUERY_ARROW = 0, 1, 2
FIRST_ENTITY = 3

CPU_SCALE = dict(vocab_size=64, seq_len=96, n_hops=2, n_chains=4, min_gap=0)


@register_task("multi_hop")
@dataclass
class MultiHop(Task):
    """Multi-hop recall: answer the end of the chain that starts at the queried entity.

    Args:
        vocab_size: V; entities are ``3..V-1``.
        seq_len: T; facts in the first ``T - 2`` positions, then the query ``a ->?``.
        n_hops: facts in each chain (1..4).
        n_chains: chains per example (1 queried, ``n_chains - 1`` distractors).
        min_gap: least number of tokens between consecutive facts of the queried chain.
    """

    vocab_size: int = 64
    seq_len: int = 96
    n_hops: int = 2
    n_chains: int = 4
    min_gap: int = 0
    version = 1

    def __post_init__(self):
        check_int(vocab_size=self.vocab_size, seq_len=self.seq_len, n_chains=self.n_chains)
        check_int(n_hops=self.n_hops, maximum=4)
        check_int(min_gap=self.min_gap, minimum=0)
        entities = self.n_chains * (self.n_hops + 1)
        if self.vocab_size < FIRST_ENTITY + entities:
            raise ArgumentError("vocab_size", f"at least 3 + n_chains * (n_hops + 1) = {FIRST_ENTITY + entities} "
                                "(distinct entities)", repr(self.vocab_size))
        needed = 3 * self.n_facts + (self.n_hops - 1) * self.min_gap + 2
        if self.seq_len < needed:
            raise ArgumentError("seq_len", f"at least 3 * n_chains * n_hops + (n_hops - 1) * min_gap + 2 = {needed}",
                                repr(self.seq_len))

    @property
    def n_facts(self) -> int:
        return self.n_chains * self.n_hops

    def chance_accuracy(self) -> float:
        """A uniform guess among all entities (a guess among the chain ends does better: 1 / n_chains)."""
        return 1.0 / (self.vocab_size - 3)

    def build(self, n: int, seed: int) -> Batch:
        check_positive(n=n)
        g = self.generator(seed)
        V, T, H, C, F = self.vocab_size, self.seq_len, self.n_hops, self.n_chains, self.n_facts
        S = T - 2  # the fact stream

        entity = torch.rand(n, V - FIRST_ENTITY, generator=g).argsort(dim=1)[:, : C * (H + 1)] + FIRST_ENTITY
        entity = entity.view(n, C, H + 1)  # (n, C, H+1) chain c is entity[c, 0] -> ... -> entity[c, H]
        left = entity[:, :, :-1].reshape(n, F)  # (n, F) fact f = c * H + j: entity[c, j] -> entity[c, j+1]
        right = entity[:, :, 1:].reshape(n, F)

        order = torch.rand(n, F, generator=g).argsort(dim=1)  # (n, F) fact written in slot i
        in_chain = order < H  # (n, F) slot i holds a fact of the queried chain 0

        # F non-overlapping 3-token slots: choose F of the free + F compressed places, expand by 2 per
        # earlier slot, and push every queried-chain fact after its chain's first by min_gap more
        free = S - 3 * F - (H - 1) * self.min_gap
        place = torch.rand(n, free + F, generator=g).argsort(dim=1)[:, :F].sort(dim=1).values  # (n, F)
        extra = (in_chain.cumsum(1) - 1).clamp(min=0) * self.min_gap  # (n, F)
        starts = place + 2 * torch.arange(F) + extra  # (n, F) start of slot i

        inputs = torch.full((n, T), FILLER, dtype=torch.long)
        inputs.scatter_(1, starts, left.gather(1, order))
        inputs.scatter_(1, starts + 1, torch.full((n, F), ARROW, dtype=torch.long))
        inputs.scatter_(1, starts + 2, right.gather(1, order))
        inputs[:, T - 2] = entity[:, 0, 0]
        inputs[:, T - 1] = QUERY_ARROW

        # earliest and latest start of the queried chain's facts (slots are in position order)
        chain_starts = torch.where(in_chain, starts, T)
        first = chain_starts.min(1).values  # (n,)
        last = torch.where(in_chain, starts, -1).max(1).values  # (n,)

        targets = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        targets[:, T - 1] = entity[:, 0, H]
        distance = torch.full((n, T), -1, dtype=torch.long)
        distance[:, T - 1] = T - 1 - first

        span = last - first  # (n,)
        span_bucket = torch.where(span > 0, 2 ** torch.log2(span.clamp(min=1).double()).floor().long(), 0)
        slices = {
            "n_hops": torch.full((n,), H, dtype=torch.long),
            "n_chains": torch.full((n,), C, dtype=torch.long),
            "seq_len": torch.full((n,), T, dtype=torch.long),
            "chain_span": span_bucket,
        }
        return Batch(inputs, targets, distance, slices)
