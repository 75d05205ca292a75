"""Fact update: keys are assigned values, some are re-assigned later; recall the LATEST value.

Knowledge-update / state-tracking probe in the spirit of the fact-updating task of Rakotonirina &
Baroni 2024, "MemoryPrompt: A Light Wrapper to Improve Context Tracking in Pre-trained Language
Models" (arXiv 2402.15268; LREC-COLING 2024), which tracks facts about entities as they are
updated, reduced to associative recall with overwrites.  It measures *update and forgetting*: a memory that keeps
the first value it saw, or averages every value a key ever had, answers wrongly.  Every value a
key takes is distinct, so "answer the first value" scores 0 on updated keys (below chance), and
the only correct answer for every key is its most recent assignment.

Worked example (``vocab_size=12, seq_len=24, n_keys=2, n_updated_keys=1, n_updates=1``;
filler 0, query marker 1, keys from [2, 6), values from [6, 12))::

    position:   0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16 17 18 19 20 21 22 23
    inputs:     0  4  9  0  3  7  0  0  0  4 11  0  0  0  0  0  0  0  1  3  7  1  4 11
    targets:    .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  7  .  . 11  .
    distance:   .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  . 15  .  . 13  .

  (``.`` is -100 in targets and -1 in distance.)  Key 4 is set to 9 at position 1 and updated to
  11 at position 9: the query at 22 must answer 11, not 9; its distance counts from position 9.

* keys are ``n_keys`` distinct tokens from ``[2, V/2)``; each key gets ``1 + u`` distinct values
  from ``[V/2, V)`` (``u = n_updates`` for the first ``n_updated_keys`` keys, 0 for the rest;
  which keys are updated is random because the key tokens are);
* the stream (the first ``S = seq_len - 3 * n_keys`` positions) holds ``E = n_keys +
  n_updated_keys * n_updates`` assignments ``key value`` in random order at random, non-overlapping
  positions, the rest filler 0; a key's assignments take its values in order, so the latest
  assignment (the last in the stream) holds its last value;
* then every key is queried once, in random order, as ``? key value``: the target at the key's
  position is the key's latest value, and that value is fed next (teacher forcing);
* ``distance`` is the query key's position minus the position of the key's LATEST assignment
  (its key token); stale assignments are further back and are not the fact needed.

Slices: ``num_updates`` (= n_updates), ``n_updated_keys``, ``n_keys``, ``seq_len`` (constant per
configuration, like MQAR's).  Queries on updated and never-updated keys are mixed in every
example; to score updated keys alone, add an evaluation variant with ``n_updated_keys = n_keys``
(``eval_task_kwargs``) and read its ``n_updated_keys`` slice, where answering the first value
scores 0; ``n_updates = 0`` is plain recall, the control.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import register_task
from ..validation import ArgumentError, check_int, check_positive
from .base import IGNORE_INDEX, Batch, Task

FILLER, QUERY = 0, 1

CPU_SCALE = dict(vocab_size=256, seq_len=128, n_keys=8, n_updated_keys=4, n_updates=2)


@register_task("fact_update")
@dataclass
class FactUpdate(Task):
    """Fact update: re-assigned keys must be recalled with their latest value.

    Args:
        vocab_size: V; keys from [2, V/2), values from [V/2, V).
        seq_len: T; the stream is the first ``T - 3 * n_keys`` positions, then the queries.
        n_keys: keys assigned (and each queried once).
        n_updated_keys: how many of the keys are re-assigned (0..n_keys).
        n_updates: re-assignments of each updated key (0 = plain recall).
    """

    vocab_size: int = 256
    seq_len: int = 128
    n_keys: int = 8
    n_updated_keys: int = 4
    n_updates: int = 2
    version = 1

    def __post_init__(self):
        check_int(vocab_size=self.vocab_size, seq_len=self.seq_len, n_keys=self.n_keys)
        check_int(n_updated_keys=self.n_updated_keys, n_updates=self.n_updates, minimum=0)
        if self.vocab_size < 6:
            raise ArgumentError("vocab_size", "at least 6 (filler, query, keys, values)", repr(self.vocab_size))
        if self.n_keys > self.vocab_size // 2 - 2:
            raise ArgumentError("n_keys", f"at most vocab_size // 2 - 2 = {self.vocab_size // 2 - 2} "
                                "(distinct keys from [2, vocab_size / 2))", repr(self.n_keys))
        if self.n_updated_keys > self.n_keys:
            raise ArgumentError("n_updated_keys", f"in [0, n_keys] = [0, {self.n_keys}]", repr(self.n_updated_keys))
        n_values = self.vocab_size - self.vocab_size // 2
        if self.n_updates + 1 > n_values:
            raise ArgumentError("n_updates", f"at most {n_values - 1} (each key's values are distinct tokens "
                                "from [vocab_size / 2, vocab_size))", repr(self.n_updates))
        needed = 2 * self.n_events + 3 * self.n_keys
        if self.seq_len < needed:
            raise ArgumentError("seq_len", "at least 2 * (n_keys + n_updated_keys * n_updates) + 3 * n_keys "
                                f"= {needed}", repr(self.seq_len))

    @property
    def n_events(self) -> int:
        return self.n_keys + self.n_updated_keys * self.n_updates

    def chance_accuracy(self) -> float:
        """A uniform guess among the values (drawn from [V/2, V))."""
        return 1.0 / (self.vocab_size - self.vocab_size // 2)

    def build(self, n: int, seed: int) -> Batch:
        check_positive(n=n)
        g = self.generator(seed)
        V, T, K, U = self.vocab_size, self.seq_len, self.n_keys, self.n_updates
        E, S = self.n_events, T - 3 * self.n_keys
        rows = torch.arange(n).unsqueeze(1)  # (n, 1)

        keys = torch.rand(n, V // 2 - 2, generator=g).argsort(dim=1)[:, :K] + 2  # (n, K) distinct
        # U + 1 distinct values per key: column j is the value after j updates
        # (top-k of i.i.d. uniforms: a uniformly random ordered tuple of distinct indices)
        values = torch.rand(n, K, V - V // 2, generator=g).topk(U + 1, dim=2).indices + V // 2  # (n, K, U+1)

        # events: every key once, the first n_updated_keys keys U more times, shuffled per example
        events = torch.cat([torch.arange(K), torch.arange(self.n_updated_keys).repeat(U)])  # (E,)
        order = torch.rand(n, E, generator=g).argsort(dim=1)
        event_key = events[order]  # (n, E) key index of each event, in stream order
        onehot = torch.nn.functional.one_hot(event_key, K)  # (n, E, K)
        occurrence = (onehot.cumsum(1) * onehot).sum(2) - 1  # (n, E) 0 = first assignment
        event_value = values[rows, event_key, occurrence]  # (n, E)

        # E non-overlapping 2-token slots among S positions: choose E of S - E, shift by index
        starts = torch.rand(n, S - E, generator=g).argsort(dim=1)[:, :E].sort(dim=1).values + torch.arange(E)  # (n, E)

        inputs = torch.full((n, T), FILLER, dtype=torch.long)
        inputs.scatter_(1, starts, keys.gather(1, event_key))
        inputs.scatter_(1, starts + 1, event_value)

        # position of each key's latest assignment: events are in stream order, so the last wins
        latest_pos = torch.zeros(n, K, dtype=torch.long)
        latest_pos.scatter_reduce_(1, event_key, starts, reduce="amax", include_self=False)  # (n, K)
        n_values = torch.where(torch.arange(K) < self.n_updated_keys, U, 0)  # (K,) updates per key
        latest_value = values[rows, torch.arange(K), n_values]  # (n, K)

        # queries: "? key value" for every key, in random order
        query_key = torch.rand(n, K, generator=g).argsort(dim=1)  # (n, K) key index per query
        query_pos = S + 3 * torch.arange(K) + 1  # (K,) position of the queried key
        answer = latest_value.gather(1, query_key)  # (n, K)
        inputs[:, query_pos - 1] = QUERY
        inputs[:, query_pos] = keys.gather(1, query_key)
        inputs[:, query_pos + 1] = answer

        targets = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        targets[:, query_pos] = answer
        distance = torch.full((n, T), -1, dtype=torch.long)
        distance[:, query_pos] = query_pos - latest_pos.gather(1, query_key)

        slices = {
            "num_updates": torch.full((n,), U, dtype=torch.long),
            "n_updated_keys": torch.full((n,), self.n_updated_keys, dtype=torch.long),
            "n_keys": torch.full((n,), K, dtype=torch.long),
            "seq_len": torch.full((n,), T, dtype=torch.long),
        }
        return Batch(inputs, targets, distance, slices)
