"""Copying: repeat a random string after a separator.

Jelassi, Brandfonbrener, Kakade & Malach 2024, "Repeat After Me: Transformers are Better than
State Space Models at Copying" (arXiv 2402.01032), section 4.  A random string is followed by a
separator and must be reproduced token by token.  Every token of the string must be kept until
its turn comes, so it measures *copying*: how many arbitrary tokens a memory holds verbatim.  The
paper proves that a model with a fixed-size state cannot copy strings whose information exceeds
its state (about ``string_length * log2(alphabet_size)`` bits), while a two-layer transformer can
copy strings exponentially long in its size, and shows both regimes in training.

Worked example (``string_length=3, alphabet_size=4``; letters a-d are tokens 2-5)::

    pos:       0    1    2    3    4    5    6    7
    token:    BOS   c    a    d   SEP   c    a    d
    inputs:    0    4    2    5    1    4    2    5
    targets: -100 -100 -100 -100   4    2    5  -100
    distance:  -1   -1   -1   -1    3    3    3   -1

* vocabulary: 0 BOS, 1 SEP (Jelassi's copy token), 2 .. alphabet_size + 1 the letters, so
  ``vocab_size = alphabet_size + 2``;
* the string is ``string_length`` letters drawn uniformly with replacement (the paper's uniform
  strings); layout ``BOS  s_1 .. s_L  SEP  s_1 .. s_L``, so ``seq_len = 2 * string_length + 2``
  (derived, not a field);
* teacher forcing: the target at SEP is s_1 and at copied letter i it is s_{i+1}; the last copied
  letter is not scored, so every one of the L letters is scored once;
* ``distance`` = scored position minus the source position of the letter it predicts.  Letter
  s_i sits at i in the source and at L + 1 + i in the copy, so it is predicted at L + i and its
  distance is exactly ``string_length`` for every letter.  (The copy's own position minus the
  source's is ``string_length + 1``; longrecall counts from the scored position, as MQAR does.)
* slices: ``string_length`` and ``seq_len``.

Chance is ``1 / alphabet_size`` per letter.  Differences from the paper: Jelassi et al. use a
26-letter alphabet plus BOS, EOS and the copy token and also natural-text strings; here only the
uniform strings, no EOS (the string length is fixed per configuration).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import register_task
from ..validation import ArgumentError, check_int, check_positive, is_int
from .base import IGNORE_INDEX, Batch, Task

BOS, SEP = 0, 1
LETTER0 = 2  # letters are LETTER0 .. LETTER0 + alphabet_size - 1

# The paper's alphabet; string lengths up to a few hundred train in its Figure 2.
PAPER_SCALE = dict(string_length=300, alphabet_size=26)
CPU_SCALE = dict(string_length=64, alphabet_size=26)


@register_task("copy")
@dataclass
class Copy(Task):
    """Copy a random string after a separator ("Repeat After Me").

    Args:
        string_length: L, letters in the string (1-100000).
        alphabet_size: letters to draw from (2-100000).

    ``seq_len = 2 * string_length + 2`` and ``vocab_size = alphabet_size + 2`` are derived.
    """

    string_length: int = 64
    alphabet_size: int = 26
    version = 1

    def __post_init__(self):
        check_int(string_length=self.string_length, maximum=100_000)
        check_int(alphabet_size=self.alphabet_size, minimum=2, maximum=100_000)

    @property
    def seq_len(self) -> int:
        return 2 * self.string_length + 2

    @classmethod
    def length_kwargs(cls, seq_len: int, kwargs: dict) -> dict:
        """``string_length = (seq_len - 2) / 2``: seq_len must be even and at least 4."""
        if not is_int(seq_len) or seq_len < 4 or seq_len % 2:
            raise ArgumentError("seq_len", "an even int >= 4 for copy (seq_len = 2 * string_length + 2)", repr(seq_len))
        return {"string_length": (seq_len - 2) // 2}

    @property
    def vocab_size(self) -> int:
        return self.alphabet_size + 2

    def chance_accuracy(self) -> float:
        """A uniform guess among the letters."""
        return 1.0 / self.alphabet_size

    def build(self, n: int, seed: int) -> Batch:
        check_positive(n=n)
        g = self.generator(seed)
        L, T = self.string_length, self.seq_len
        string = LETTER0 + torch.randint(self.alphabet_size, (n, L), generator=g)  # (n, L)

        inputs = torch.empty(n, T, dtype=torch.long)
        inputs[:, 0] = BOS
        inputs[:, 1 : L + 1] = string  # source: s_i at position i
        inputs[:, L + 1] = SEP
        inputs[:, L + 2 :] = string  # copy: s_i at position L + 1 + i

        targets = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        targets[:, L + 1 : 2 * L + 1] = string  # s_i predicted at L + i
        distance = torch.full((n, T), -1, dtype=torch.long)
        distance[:, L + 1 : 2 * L + 1] = L

        slices = {
            "string_length": torch.full((n,), L, dtype=torch.long),
            "seq_len": torch.full((n,), T, dtype=torch.long),
        }
        return Batch(inputs, targets, distance, slices)
