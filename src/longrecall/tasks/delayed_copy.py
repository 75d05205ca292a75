"""The copying-memory problem: remember a few symbols across a long blank delay.

Hochreiter & Schmidhuber 1997, "Long Short-Term Memory" (Neural Computation 9(8), experiment 2);
in the form of Arjovsky, Shah & Bengio 2016, "Unitary Evolution Recurrent Neural Networks" (arXiv
1511.06464, section 4.1), the benchmark of later recurrent and state-space work (Gu et al.
2020 HiPPO and 2021 LSSL/S4; Rusch et al. 2022, LEM).  A few random symbols are shown, then a long
stretch of blanks, then a recall marker, after which the symbols must be reproduced in order.  It
measures *retention over a long delay*: the memory must carry ``n_symbols`` arbitrary symbols
unchanged through ``delay`` uninformative steps, neither forgetting them nor letting the blanks
overwrite them.  Unlike ``copy`` the content is small and the gap long.

Worked example (``n_symbols=3, delay=4, alphabet_size=8``; symbols are tokens 1-8)::

    pos:       0    1    2    3    4    5    6    7    8    9   10
    token:     s1   s2   s3   _    _    _    _   GO   s1   s2   s3
    inputs:    6    2    8    0    0    0    0    9    6    2    8
    targets: -100 -100 -100 -100 -100 -100 -100    6    2    8  -100
    distance:  -1   -1   -1   -1   -1   -1   -1    7    7    7   -1

* vocabulary as in Arjovsky et al.: 0 the blank, 1 .. alphabet_size the symbols,
  ``alphabet_size + 1`` the recall marker (their delimiter), so ``vocab_size = alphabet_size + 2``;
* layout ``s_1 .. s_n  blank x delay  GO  s_1 .. s_n``, so
  ``seq_len = n_symbols + delay + 1 + n_symbols`` (derived, not a field);
* the symbols are uniform over the alphabet, with replacement;
* teacher forcing: where Arjovsky et al. output blanks and then the symbols while the input is
  blank, here the recalled symbols are fed back: the target at GO is s_1 and at recalled symbol
  i it is s_{i+1} (the last is not scored), so all n symbols are scored and nothing else;
* ``distance`` = scored position minus the source symbol's position, ``n_symbols + delay`` for
  every symbol (s_i sits at i - 1 and is predicted at n + delay + i - 1);
* slices: ``delay`` and ``seq_len``.

Chance is ``1 / alphabet_size`` per symbol.  The uRNN paper uses ``alphabet_size=8, n_symbols=10``
and delays of 100-2000 (its T, with T - 1 blanks before the delimiter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import register_task
from ..validation import ArgumentError, check_int, check_positive, is_int
from .base import IGNORE_INDEX, Batch, Task

BLANK = 0
SYMBOL0 = 1  # symbols are 1 .. alphabet_size; the recall marker is alphabet_size + 1

# Arjovsky et al. 2016 (Figure 1 sweeps T = 100, 200, 300, 500); CPU_SCALE trains in minutes.
URNN_SCALE = dict(n_symbols=10, delay=500, alphabet_size=8)
CPU_SCALE = dict(n_symbols=10, delay=100, alphabet_size=8)


@register_task("delayed_copy")
@dataclass
class DelayedCopy(Task):
    """Copying memory: n symbols, a blank delay, a recall marker, then the n symbols.

    Args:
        n_symbols: symbols to remember (1-10000).
        delay: blank tokens between the symbols and the recall marker (0-1000000).
        alphabet_size: symbol categories (2-100000).

    ``seq_len = 2 * n_symbols + delay + 1`` and ``vocab_size = alphabet_size + 2`` are derived.
    """

    n_symbols: int = 10
    delay: int = 100
    alphabet_size: int = 8
    version = 1

    def __post_init__(self):
        check_int(n_symbols=self.n_symbols, maximum=10_000)
        check_int(delay=self.delay, minimum=0, maximum=1_000_000)
        check_int(alphabet_size=self.alphabet_size, minimum=2, maximum=100_000)

    @property
    def seq_len(self) -> int:
        return self.n_symbols + self.delay + 1 + self.n_symbols

    @classmethod
    def length_kwargs(cls, seq_len: int, kwargs: dict) -> dict:
        """The delay that makes ``2 * n_symbols + delay + 1 == seq_len`` (n_symbols is kept)."""
        n = kwargs.get("n_symbols", cls.n_symbols)
        if not is_int(seq_len) or seq_len < 2 * n + 1:
            raise ArgumentError("seq_len", f"an int >= 2 * n_symbols + 1 = {2 * n + 1} for delayed_copy", repr(seq_len))
        return {"delay": seq_len - 2 * n - 1}

    @property
    def vocab_size(self) -> int:
        return self.alphabet_size + 2

    @property
    def recall_token(self) -> int:
        return self.alphabet_size + 1

    def chance_accuracy(self) -> float:
        """A uniform guess among the symbols (the memoryless baseline of Arjovsky et al. guesses the same way)."""
        return 1.0 / self.alphabet_size

    def build(self, n: int, seed: int) -> Batch:
        check_positive(n=n)
        g = self.generator(seed)
        S, D, T = self.n_symbols, self.delay, self.seq_len
        go = S + D  # position of the recall marker
        symbols = SYMBOL0 + torch.randint(self.alphabet_size, (n, S), generator=g)  # (n, S)

        inputs = torch.full((n, T), BLANK, dtype=torch.long)
        inputs[:, :S] = symbols  # s_i at i - 1
        inputs[:, go] = self.recall_token
        inputs[:, go + 1 :] = symbols  # recalled s_i at go + i

        targets = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        targets[:, go : go + S] = symbols  # s_i predicted at go + i - 1
        distance = torch.full((n, T), -1, dtype=torch.long)
        distance[:, go : go + S] = S + D

        slices = {
            "delay": torch.full((n,), D, dtype=torch.long),
            "seq_len": torch.full((n,), T, dtype=torch.long),
        }
        return Batch(inputs, targets, distance, slices)
