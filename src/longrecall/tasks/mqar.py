"""Multi-query associative recall (MQAR), exactly as Zoology defines it.

Arora, Eyuboglu et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language
Models" (arXiv 2312.04927), generator ``zoology/data/multiquery_ar.py``.  The sequence opens with
``num_kv_pairs`` key-value pairs; every key is then asked once, later, at a gap drawn from a power
law, and the model must answer with its value.  It measures *recall capacity*: how many distinct
associations a memory can hold and retrieve.

Worked example (``vocab_size=12, seq_len=16, num_kv_pairs=2, random_non_queries=False``)::

              Key   Val  Key  Val            Query                         Query
    inputs:   2     8    4    7    0    0    4    0    0    0    0    0    2    0    0    0
    targets: -100 -100 -100 -100 -100 -100   7  -100 -100 -100 -100 -100   8  -100 -100 -100
    distance: -1   -1   -1   -1   -1   -1    4   -1   -1   -1   -1   -1   12   -1   -1   -1

* keys come from [1, V/2) and values from [V/2, V), each key at most once per example;
* the context is k1 v1 ... kN vN (repeated ``num_passes`` times, JRT-style); query i sits at
  ``context + 2 * gap_i`` with gaps drawn without replacement from {0, ..., space - 1},
  ``space = (seq_len - context) // 2``, with P(gap = g) proportional to ``a * (g + 1) ** (a - 1)``
  (``power_a`` = a; a = 1 is uniform, small a favours short gaps);
* the target *at the query key's position* is its value (next-token prediction), -100 elsewhere;
* with ``random_non_queries`` every filler 0 is replaced by a uniformly random token, as Zoology
  does (so filler may repeat a key: the model must use the first, paired occurrence);
* ``distance`` is the query position minus the position of the key's first occurrence.

Zoology's Figure 2 sweeps ``vocab_size=8192``, ``seq_len`` 64-512, ``num_kv_pairs`` 4-64.  That
scale does not train within minutes on a 2-core CPU (``docs/results.md``), so ``CPU_SCALE`` keeps
the same structure with a small vocabulary.  Differences from Zoology: generation uses a local
``torch.Generator`` (Zoology seeds numpy's global state), so the exact tokens differ for the same
seed while the distribution is the same; and Zoology's generator asserts ``vocab_size > seq_len``,
which the task does not need (its own docstring example breaks it) and which would forbid the
small-vocabulary CPU configuration, so it is not enforced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import register_task
from ..validation import ArgumentError, check_int, check_positive, check_ratio
from .base import IGNORE_INDEX, Batch, Task

# Zoology's default MQAR configuration (Figure 2 sweeps seq_len 64-512 and num_kv_pairs 4-64).
ZOOLOGY_SCALE = dict(vocab_size=8192, seq_len=256, num_kv_pairs=16, power_a=0.01)
# Same structure at CPU scale: a 2-layer width-64 attention model learns it in minutes on 2 cores.
CPU_SCALE = dict(vocab_size=512, seq_len=256, num_kv_pairs=16, power_a=0.01)


@register_task("mqar")
@dataclass
class MQAR(Task):
    """Multi-query associative recall (Zoology).

    Args:
        vocab_size: V; keys from [1, V/2), values from [V/2, V).
        seq_len: T, even.
        num_kv_pairs: pairs written in the context and queried afterwards.
        power_a: power-law exponent of the key-to-query gap (0 < a <= 1; 1 is uniform).
        num_passes: times the context is repeated before the queries (JRT prompting).
        random_non_queries: replace filler 0s by random tokens (Zoology's default).
    """

    vocab_size: int = 8192
    seq_len: int = 256
    num_kv_pairs: int = 16
    power_a: float = 0.01
    num_passes: int = 1
    random_non_queries: bool = True
    version = 1

    def __post_init__(self):
        check_int(vocab_size=self.vocab_size, seq_len=self.seq_len, num_kv_pairs=self.num_kv_pairs,
                  num_passes=self.num_passes)
        check_ratio("power_a", self.power_a, low_open=True)
        if self.seq_len % 2:
            raise ArgumentError("seq_len", "even", repr(self.seq_len))
        if self.num_kv_pairs > self.vocab_size // 2 - 1:
            raise ArgumentError("num_kv_pairs", f"at most vocab_size // 2 - 1 = {self.vocab_size // 2 - 1} "
                                "(keys are distinct tokens from [1, vocab_size / 2))", repr(self.num_kv_pairs))
        needed = 2 * self.num_kv_pairs * (self.num_passes + 1)
        if needed > self.seq_len:
            raise ArgumentError("seq_len", f"at least 2 * num_kv_pairs * (num_passes + 1) = {needed} for "
                                f"num_kv_pairs={self.num_kv_pairs}, num_passes={self.num_passes}", repr(self.seq_len))

    def chance_accuracy(self) -> float:
        """A uniform guess among the values (drawn from [V/2, V))."""
        return 1.0 / (self.vocab_size - self.vocab_size // 2)

    def build(self, n: int, seed: int) -> Batch:
        check_positive(n=n)
        g = self.generator(seed)
        V, T, P = self.vocab_size, self.seq_len, self.num_kv_pairs
        context = 2 * P * self.num_passes

        # P distinct keys and P distinct values per example (random permutations, truncated)
        keys = torch.rand(n, V // 2 - 1, generator=g).argsort(dim=1)[:, :P] + 1  # (n, P) in [1, V/2)
        values = torch.rand(n, V - V // 2, generator=g).argsort(dim=1)[:, :P] + V // 2  # (n, P) in [V/2, V)

        inputs = torch.zeros(n, T, dtype=torch.long)
        for p in range(self.num_passes):
            inputs[:, 2 * P * p : 2 * P * (p + 1) : 2] = keys
            inputs[:, 2 * P * p + 1 : 2 * P * (p + 1) : 2] = values

        # power-law gaps, distinct within an example (Zoology: np.random.choice without replacement)
        space = (T - context) // 2
        weights = self.power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (self.power_a - 1)
        gaps = torch.multinomial(weights.expand(n, space), P, replacement=False, generator=g)  # (n, P)
        query_pos = context + 2 * gaps  # (n, P)
        inputs.scatter_(1, query_pos, keys)

        targets = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        targets.scatter_(1, query_pos, values)
        distance = torch.full((n, T), -1, dtype=torch.long)
        key_pos = 2 * torch.arange(P).expand(n, P)  # first occurrence of key i
        distance.scatter_(1, query_pos, query_pos - key_pos)

        if self.random_non_queries:
            filler = inputs == 0
            noise = torch.randint(V, (n, T), generator=g)
            inputs = torch.where(filler, noise, inputs)

        slices = {
            "num_kv_pairs": torch.full((n,), P, dtype=torch.long),
            "seq_len": torch.full((n,), T, dtype=torch.long),
        }
        return Batch(inputs, targets, distance, slices)
