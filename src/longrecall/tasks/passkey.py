"""Pass-key retrieval: a few digits hidden at a chosen depth in long repetitive filler.

Mohtashami & Jaggi 2023, "Landmark Attention: Random-Access Infinite Context Length for
Transformers" (arXiv 2305.16300), section 4.2; used again by Munkhdalai et al. 2024, "Leave No
Context Behind: Efficient Infinite Context Transformers with Infini-attention" (arXiv 2404.07143),
and by most long-context papers since.  The prompt repeats a filler sentence ("The grass is green.
The sky is blue. The sun is yellow. Here we go. There and back again.") many times, with "The pass
key is 71432. Remember it." hidden somewhere inside; at the end the model is asked for the key.
The filler carries no information, so the task measures *precision of retrieval over distance*:
whether one small fact survives a long, easily compressed stretch of text, as a function of where
(``depth``) it was written.  A fixed-state memory must keep the digits the whole way; attention
can look them up.

Worked example (``seq_len=15, key_digits=2, depth=0.5, filler_len=3``; key "47")::

    pos:       0    1    2    3    4    5    6    7    8    9   10   11   12   13   14
    token:    BOS  f0   f1   f2  PASS KEY  IS   '4'  '7'  f0   f1   f2  QRY  '4'  '7'
    inputs:    0   15   16   17   11   12   13    5    8   15   16   17   14    5    8
    targets: -100 -100 -100 -100 -100 -100 -100 -100 -100 -100 -100 -100   5    8  -100
    distance:  -1   -1   -1   -1   -1   -1   -1   -1   -1   -1   -1   -1    5    5   -1

Layout, in general::

    BOS  filler[:a]  PASS KEY IS  d_1 .. d_k  filler[a:]  QUERY  d_1 .. d_k

* vocabulary: 0 BOS, 1-10 the digits 0-9, 11-13 the key intro "The pass key is", 14 the query
  marker ("What is the pass key? The pass key is"), then ``filler_len`` filler tokens, so
  ``vocab_size = 15 + filler_len``;
* the filler is the fixed "sentence" ``15, 16, ..., 15 + filler_len - 1`` tiled over
  ``F = seq_len - 2 * key_digits - 5`` positions (continuing its period across the key);
* the key sits after ``a = round(depth * F)`` filler tokens: depth 0 is right after BOS, depth 1
  right before the query; ``depth`` is one number or a list from which each example draws one;
* the digits are uniform over 0-9 (leading zeros allowed); teacher forcing: the answer digits
  follow QUERY in the inputs, the target at QUERY is d_1 and at answer digit i it is d_{i+1}
  (the last answer digit is not scored), so ``key_digits`` positions are scored;
* ``distance`` = scored position minus the position of the same digit in the hidden key (the same
  for every digit of an example: QUERY's position minus d_1's);
* slices: ``depth_tenths`` (round(10 * depth), 0-10) and ``seq_len``.

Chance is 1/10 per digit (a model that knows an answer is a digit).  Differences from the paper:
tokens are symbols, not words; the key is any ``key_digits`` digits rather than an integer in
[1, 50000]; "Remember it. 71432 is the pass key." is dropped (one copy of the key, no repetition).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..registry import register_task
from ..validation import ArgumentError, check_int, check_positive, is_number
from .base import IGNORE_INDEX, Batch, Task

BOS = 0
DIGIT0 = 1  # digits 0-9 are tokens 1-10
INTRO = (11, 12, 13)  # "The pass key is"
QUERY = 14  # "What is the pass key? The pass key is"
FILLER0 = 15  # the filler sentence's tokens are FILLER0 .. FILLER0 + filler_len - 1

# Depth sweep as in the needle/passkey plots: 0%, 10%, ..., 100%.
TENTHS = [i / 10 for i in range(11)]
CPU_SCALE = dict(seq_len=256, key_digits=5, depth=TENTHS, filler_len=10)


def _is_depth(value) -> bool:
    return is_number(value) and 0 <= value <= 1


@register_task("passkey")
@dataclass
class Passkey(Task):
    """Pass-key retrieval (Landmark Attention, Infini-attention).

    Args:
        seq_len: T, at least ``2 * key_digits + 5`` (room for BOS, intro, key, query, answer).
        key_digits: k, digits in the pass key (1-32).
        depth: where the key sits in the filler, a fraction in [0, 1], or a non-empty list of them
            from which each example draws one uniformly.
        filler_len: tokens in the repeated filler sentence (1-1000).

    ``vocab_size = 15 + filler_len`` is derived.
    """

    seq_len: int = 256
    key_digits: int = 5
    depth: float | list = field(default_factory=lambda: list(TENTHS))
    filler_len: int = 10
    version = 1

    def __post_init__(self):
        check_int(seq_len=self.seq_len)
        check_int(key_digits=self.key_digits, maximum=32)
        check_int(filler_len=self.filler_len, maximum=1000)
        depths = self.depth if isinstance(self.depth, (list, tuple)) else [self.depth]
        if not depths or not all(_is_depth(d) for d in depths):
            raise ArgumentError("depth", "a number in [0, 1] or a non-empty list of them", repr(self.depth))
        needed = 2 * self.key_digits + 5
        if self.seq_len < needed:
            raise ArgumentError("seq_len", f"at least 2 * key_digits + 5 = {needed} for key_digits={self.key_digits}",
                                repr(self.seq_len))

    @property
    def vocab_size(self) -> int:
        return FILLER0 + self.filler_len

    @property
    def depths(self) -> list[float]:
        return [float(d) for d in (self.depth if isinstance(self.depth, (list, tuple)) else [self.depth])]

    def chance_accuracy(self) -> float:
        """A uniform guess among the ten digits, per scored digit."""
        return 0.1

    def build(self, n: int, seed: int) -> Batch:
        check_positive(n=n)
        g = self.generator(seed)
        T, k = self.seq_len, self.key_digits
        F = T - 2 * k - 5  # filler tokens
        query = T - k - 1  # position of QUERY

        depths = torch.tensor(self.depths, dtype=torch.float64)
        depth = depths[torch.randint(len(depths), (n,), generator=g)]  # (n,)
        before = torch.floor(depth * F + 0.5).long()  # (n,) filler tokens before the key
        digits = torch.randint(10, (n, k), generator=g)  # (n, k)

        # context positions 1 .. query-1: filler, with the intro + key (3 + k tokens) at 1 + before
        pos = torch.arange(T).expand(n, T)  # (n, T)
        key_start = 1 + before + len(INTRO)  # (n,) position of d_1
        offset = pos - (1 + before)[:, None]  # (n, T) offset into the intro + key block
        in_block = (offset >= 0) & (offset < len(INTRO) + k)
        filler_index = torch.where(offset < 0, pos - 1, pos - 1 - len(INTRO) - k)  # (n, T)
        inputs = FILLER0 + filler_index.clamp(min=0) % self.filler_len  # (n, T)
        intro = torch.tensor(INTRO)
        block = torch.cat([intro.expand(n, -1), DIGIT0 + digits], dim=1)  # (n, 3 + k)
        inputs = torch.where(in_block, block.gather(1, offset.clamp(0, len(INTRO) + k - 1)), inputs)
        inputs[:, 0] = BOS
        inputs[:, query] = QUERY
        inputs[:, query + 1 :] = DIGIT0 + digits

        targets = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        targets[:, query : query + k] = DIGIT0 + digits  # at QUERY and answer digits 1..k-1
        distance = torch.full((n, T), -1, dtype=torch.long)
        distance[:, query : query + k] = (query - key_start)[:, None]

        slices = {
            "depth_tenths": torch.floor(depth * 10 + 0.5).long(),
            "seq_len": torch.full((n,), T, dtype=torch.long),
        }
        return Batch(inputs, targets, distance, slices)
