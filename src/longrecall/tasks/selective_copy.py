"""Selective copying (Gu & Dao 2023, Mamba), on the layout of the S4 copying generator.

Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (arXiv
2312.00752), sections 3.1 and 4.1.1 and Appendix E.1.  ``n_tokens`` data tokens sit at random
positions among noise tokens; after a recall marker the model must reproduce the data tokens in
their order.  It measures *selective copying*: keeping the relevant tokens and ignoring the noise,
whose amount and placement vary, so a fixed time-invariant filter cannot do it.

Worked example (``alphabet_size=3, n_tokens=3, seq_len=10``; noise 0, data 1..3, marker 4)::

    position:  0    1    2    3    4    5    6    7    8    9
    inputs:    0    3    0    1    0    0    2    4    3    1
    targets: -100 -100 -100 -100 -100 -100 -100   3    1    2
    distance: -1   -1   -1   -1   -1   -1   -1    6    5    3

* the prefix is the first ``P = seq_len - n_tokens`` positions: ``n_tokens`` data tokens drawn
  uniformly (with repetition) from ``[1, alphabet_size]`` at sorted random distinct positions, the
  other ``P - n_tokens = seq_len - 2 * n_tokens`` positions hold the single noise token 0;
* position ``P`` holds the marker ``alphabet_size + 1``; data token ``j`` is the target at ``P + j``;
* teacher forcing (default): data token ``j`` is also the input at ``P + 1 + j``, so after the
  first answer the model sees what it should have said.  Because data tokens may repeat, knowing
  the previous data token is not enough: the model must keep track of how far it has copied.
  With ``teacher_forcing=False`` positions ``P..T-1`` all hold the marker, exactly as S4/Mamba;
* ``distance`` is the scored position minus the data token's position in the prefix.

Mamba's setting (Appendix E.1: 4096 noise tokens, 16 data tokens, vocabulary 16 including the
noise and marker tokens) is ``MAMBA_SCALE``; S4's ``torch_copying_data(L, M, A, variable=True)``
maps to ``seq_len = L + 2 M``, ``n_tokens = M``, ``alphabet_size = A - 2`` with the same token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import register_task
from ..validation import ArgumentError, check_bool, check_int, check_positive
from .base import IGNORE_INDEX, Batch, Task

NOISE = 0  # the blank token; data tokens are 1..alphabet_size, the marker alphabet_size + 1

# Mamba Appendix E.1: L = 4096 noise tokens, 16 data tokens, 16-token vocabulary.
MAMBA_SCALE = dict(alphabet_size=14, n_tokens=16, seq_len=4096 + 2 * 16)
# Same structure, CPU scale.
CPU_SCALE = dict(alphabet_size=14, n_tokens=8, seq_len=128)


@register_task("selective_copy")
@dataclass
class SelectiveCopy(Task):
    """Selective copying (Mamba): copy the scattered data tokens, in order, after a marker.

    Args:
        alphabet_size: data tokens are ``1..alphabet_size`` (vocab_size = alphabet_size + 2).
        n_tokens: data tokens per example, all scored.
        seq_len: T, the whole sequence; ``seq_len - 2 * n_tokens`` noise tokens.
        teacher_forcing: feed the previous data token after the marker (else repeat the marker).
    """

    alphabet_size: int = 14
    n_tokens: int = 16
    seq_len: int = 4096 + 2 * 16
    teacher_forcing: bool = True
    version = 1

    def __post_init__(self):
        check_int(alphabet_size=self.alphabet_size, n_tokens=self.n_tokens, seq_len=self.seq_len)
        if self.seq_len < 2 * self.n_tokens:
            raise ArgumentError("seq_len", f"at least 2 * n_tokens = {2 * self.n_tokens} (a prefix holding the "
                                "n_tokens data tokens, then n_tokens answer positions)", repr(self.seq_len))
        check_bool(teacher_forcing=self.teacher_forcing)

    @property
    def vocab_size(self) -> int:
        return self.alphabet_size + 2  # noise, data tokens, marker

    @property
    def marker(self) -> int:
        return self.alphabet_size + 1

    def chance_accuracy(self) -> float:
        """A uniform guess among the data tokens."""
        return 1.0 / self.alphabet_size

    def build(self, n: int, seed: int) -> Batch:
        check_positive(n=n)
        g = self.generator(seed)
        T, M = self.seq_len, self.n_tokens
        P = T - M  # prefix length: data tokens and noise

        data = torch.randint(1, self.alphabet_size + 1, (n, M), generator=g)  # (n, M)
        source = torch.rand(n, P, generator=g).argsort(dim=1)[:, :M].sort(dim=1).values  # (n, M) sorted

        inputs = torch.full((n, T), NOISE, dtype=torch.long)  # (n, T)
        inputs.scatter_(1, source, data)
        if self.teacher_forcing:
            inputs[:, P] = self.marker
            inputs[:, P + 1 :] = data[:, :-1]
        else:
            inputs[:, P:] = self.marker

        targets = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        targets[:, P:] = data
        distance = torch.full((n, T), -1, dtype=torch.long)
        distance[:, P:] = torch.arange(P, T) - source  # (n, M) scored position minus source

        slices = {
            "n_tokens": torch.full((n,), M, dtype=torch.long),
            "seq_len": torch.full((n,), T, dtype=torch.long),
        }
        return Batch(inputs, targets, distance, slices)
