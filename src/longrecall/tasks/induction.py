"""Induction heads: after a trigger token, say the token that followed its earlier occurrence.

Olsson et al. 2022, "In-context Learning and Induction Heads" (Transformer Circuits) named the
mechanism (``[A][B] ... [A] -> [B]``); the synthetic task with one special trigger token is the
H3 / Mamba version (Fu et al. 2023, "Hungry Hungry Hippos", arXiv 2212.14052; Gu & Dao 2023,
arXiv 2312.00752, section 4.1.2: vocabulary 16, trained at length 256).  It measures *associative recall of one
pair at an arbitrary distance*, in random context: the model must find the earlier trigger and
copy its successor, however far back it was.

Worked example (``vocab_size=6, seq_len=10, min_distance=1``; trigger 5, ordinary tokens 0..4)::

    position:  0    1    2    3    4    5    6    7    8    9
    inputs:    3    0    5    2    4    4    1    0    3    5
    targets: -100 -100 -100 -100 -100 -100 -100 -100 -100   2
    distance: -1   -1   -1   -1   -1   -1   -1   -1   -1    6

* every position holds a uniformly random ordinary token from ``[0, vocab_size - 1)`` except the
  trigger ``vocab_size - 1``, which appears exactly twice: once at a random position ``a - 1``,
  and again at the last position ``T - 1``;
* the answer is the token at ``a`` (right after the first trigger), the target at ``T - 1``; only
  that position is scored (chance ``1 / (vocab_size - 1)``);
* ``distance`` is ``T - 1 - a``, the final position minus the answer's position (one less than
  the distance to the trigger, the first token of the pair);
* ``a`` is uniform over ``[1, T - 1 - min_distance]``, so the distance is uniform over
  ``[min_distance, T - 2]``; raise ``min_distance`` to take away the short-range cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import register_task
from ..validation import ArgumentError, check_int, check_positive
from .base import IGNORE_INDEX, Batch, Task

# Mamba section 4.1.2: vocabulary 16, training length 256.
MAMBA_SCALE = dict(vocab_size=16, seq_len=256, min_distance=1)
CPU_SCALE = dict(vocab_size=16, seq_len=64, min_distance=1)


@register_task("induction")
@dataclass
class Induction(Task):
    """Induction heads (Olsson et al. 2022; H3 / Mamba synthetic): recall the trigger's successor.

    Args:
        vocab_size: V; ordinary tokens ``0..V-2``, trigger ``V-1``.
        seq_len: T, the whole sequence; the last token is the second trigger.
        min_distance: smallest final-position-to-answer distance (1..T-2).
    """

    vocab_size: int = 16
    seq_len: int = 256
    min_distance: int = 1
    version = 1

    def __post_init__(self):
        check_int(vocab_size=self.vocab_size, seq_len=self.seq_len, min_distance=self.min_distance)
        if self.vocab_size < 3:
            raise ArgumentError("vocab_size", "at least 3 (two ordinary tokens and the trigger)", repr(self.vocab_size))
        if self.seq_len < 3:
            raise ArgumentError("seq_len", "at least 3 (trigger, answer, trigger)", repr(self.seq_len))
        if self.min_distance > self.seq_len - 2:
            raise ArgumentError("min_distance", f"in [1, seq_len - 2] = [1, {self.seq_len - 2}] (the answer sits at "
                                "position 1 at the earliest)", repr(self.min_distance))

    @property
    def trigger(self) -> int:
        return self.vocab_size - 1

    def chance_accuracy(self) -> float:
        """A uniform guess among the ordinary tokens."""
        return 1.0 / (self.vocab_size - 1)

    def build(self, n: int, seed: int) -> Batch:
        check_positive(n=n)
        g = self.generator(seed)
        V, T = self.vocab_size, self.seq_len

        inputs = torch.randint(0, V - 1, (n, T), generator=g)  # (n, T) ordinary tokens only
        # answer position a uniform in [1, T - 1 - min_distance]; first trigger at a - 1
        answer_pos = torch.randint(1, T - self.min_distance, (n, 1), generator=g)  # (n, 1)
        inputs.scatter_(1, answer_pos - 1, self.trigger)
        inputs[:, T - 1] = self.trigger
        answer = inputs.gather(1, answer_pos)  # (n, 1) the token after the first trigger

        targets = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        targets[:, T - 1] = answer[:, 0]
        distance = torch.full((n, T), -1, dtype=torch.long)
        distance[:, T - 1] = T - 1 - answer_pos[:, 0]

        slices = {
            "min_distance": torch.full((n,), self.min_distance, dtype=torch.long),
            "seq_len": torch.full((n,), T, dtype=torch.long),
        }
        return Batch(inputs, targets, distance, slices)
