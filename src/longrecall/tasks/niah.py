"""Needle in a haystack, in RULER's four synthetic variants.

Hsieh et al. 2024, "RULER: What's the Real Context Size of Your Long-Context Language Models?"
(arXiv 2404.06654), section 3.1, after Kamradt's 2023 "needle in a haystack" test.  Needles
("One of the special magic numbers for <key> is: <value>.") are inserted at random depths in a
long distracting haystack, and the model is asked for the value of a key.  The variants measure
different things:

* ``single`` (S-NIAH): one needle, one question: *retrieval over distance*;
* ``multikey`` (MK-NIAH): ``num_needles`` needles with different keys, one of them asked: *precision
  under distractors* (the other needles look alike);
* ``multivalue`` (MV-NIAH): ``num_needles`` needles share one key; all values must be returned in
  insertion order: *capacity and order* of what is stored under one key;
* ``multiquery`` (MQ-NIAH): ``num_needles`` needles with different keys, every key asked (in a
  random order): *capacity*, several associations kept at once.

Worked example (``variant="single", haystack="repeat", vocab_size=24, seq_len=14, key_len=2,
value_len=2``; keys from [3, 10), values from [10, 17), filler from [17, 24))::

    pos:       0    1    2    3    4    5    6    7    8    9   10   11   12   13
    token:    BOS  f0   f1  NDL   k1   k2   v1   v2   f2  QRY   k1   k2   v1   v2
    inputs:    0   17   18    1    4    8   12   15   19    2    4    8   12   15
    targets: -100 -100 -100 -100 -100 -100 -100 -100 -100 -100 -100   12   15 -100
    distance:  -1   -1   -1   -1   -1   -1   -1   -1   -1   -1   -1    5    5   -1

Layout: ``BOS  context  queries`` where the context is the haystack with the needles
``NEEDLE key value`` inserted whole at random depths (sorted insertion points drawn uniformly in
[0, H], H the haystack's length), and the queries are

* single / multikey: ``QUERY key value`` for the asked needle;
* multivalue: ``QUERY key value_1 .. value_m`` (values in insertion order);
* multiquery: ``QUERY key_j value_j`` for every needle, in a random order.

* vocabulary: 0 BOS, 1 NEEDLE, 2 QUERY; the other ``vocab_size - 3`` tokens are split into thirds:
  key tokens, value tokens, filler tokens (the filler takes the remainder);
* keys: every needle's key is ``key_len`` tokens, all distinct within an example (and equal across
  needles for multivalue); values: ``value_len`` tokens drawn uniformly with replacement;
* haystack ``noise``: every haystack token uniform over the filler tokens; ``repeat``: a fixed
  sentence of ``min(10, filler tokens)`` filler tokens tiled over the haystack, its period continuing
  across needles.  (RULER's "noise" haystack is the repeated "The grass is green..." sentence, here
  ``repeat``; its "essay" haystack is natural text, here approximated by ``noise``.)
* teacher forcing: the value tokens follow the key in the query; the target at the key's last token
  is the first value token and at each value token the next one, so every value token asked is
  scored (``value_len`` per value);
* ``distance`` = scored position minus the position, in its needle, of the value token it predicts;
* slices: ``variant`` (0 single, 1 multikey, 2 multivalue, 3 multiquery), ``num_needles``, ``seq_len``.

Chance is one over the number of value tokens, ``(vocab_size - 3) // 3``, per scored token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import register_task
from ..validation import ArgumentError, check_choice, check_int, check_positive
from .base import IGNORE_INDEX, Batch, Task

BOS, NEEDLE, QUERY = 0, 1, 2
SPECIAL = 3
VARIANTS = ("single", "multikey", "multivalue", "multiquery")  # slice code = index
HAYSTACKS = ("noise", "repeat")
REPEAT_PERIOD = 10  # tokens in the "repeat" haystack's sentence

CPU_SCALE = dict(vocab_size=256, seq_len=256, variant="multikey", haystack="noise", num_needles=4,
                 key_len=2, value_len=2)


@register_task("niah")
@dataclass
class NIAH(Task):
    """Needle in a haystack (RULER S-/MK-/MV-/MQ-NIAH).

    Args:
        vocab_size: V, at least 12; keys, values and filler each get about (V - 3) / 3 tokens.
        seq_len: T, long enough for BOS, the needles and the queries (haystack may be empty).
        variant: "single", "multikey", "multivalue" or "multiquery".
        haystack: "noise" (random filler tokens) or "repeat" (a repeated filler sentence).
        num_needles: needles inserted; 1 for "single", at least 2 for the others.
        key_len: tokens per key (num_needles * key_len distinct key tokens must exist).
        value_len: tokens per value.
    """

    vocab_size: int = 256
    seq_len: int = 256
    variant: str = "single"
    haystack: str = "noise"
    num_needles: int = 1
    key_len: int = 2
    value_len: int = 2
    version = 1

    def __post_init__(self):
        check_int(vocab_size=self.vocab_size, seq_len=self.seq_len, num_needles=self.num_needles, key_len=self.key_len,
                  value_len=self.value_len)
        check_choice("variant", self.variant, VARIANTS)
        check_choice("haystack", self.haystack, HAYSTACKS)
        if self.vocab_size < SPECIAL + 9:
            raise ArgumentError("vocab_size", f"at least {SPECIAL + 9} (3 special + 3 per range)",
                                repr(self.vocab_size))
        if self.variant == "single" and self.num_needles != 1:
            raise ArgumentError("num_needles", "1 for variant='single'", repr(self.num_needles))
        if self.variant != "single" and self.num_needles < 2:
            raise ArgumentError("num_needles", f"at least 2 for variant={self.variant!r}", repr(self.num_needles))
        distinct = 1 if self.variant == "multivalue" else self.num_needles
        if self.key_len * distinct > self.n_key_tokens:
            raise ArgumentError("key_len", "such that key_len * (distinct keys) is at most the "
                                f"{self.n_key_tokens} key tokens of vocab_size={self.vocab_size} (distinct key tokens "
                                "per example)",
                                f"{self.key_len} * {distinct} = {self.key_len * distinct}")
        needed = 1 + self.context_needles + self.query_len
        if self.seq_len < needed:
            raise ArgumentError("seq_len", f"at least {needed} (BOS, {self.num_needles} needle(s) and the queries) "
                                "for this variant, num_needles, key_len and value_len", repr(self.seq_len))

    # ------------------------------------------------------------------ derived sizes
    @property
    def n_key_tokens(self) -> int:
        return (self.vocab_size - SPECIAL) // 3

    @property
    def n_value_tokens(self) -> int:
        return (self.vocab_size - SPECIAL) // 3

    @property
    def n_filler_tokens(self) -> int:
        return self.vocab_size - SPECIAL - 2 * self.n_key_tokens

    @property
    def needle_len(self) -> int:
        return 1 + self.key_len + self.value_len

    @property
    def context_needles(self) -> int:
        return self.num_needles * self.needle_len

    @property
    def query_len(self) -> int:
        if self.variant == "multiquery":
            return self.num_needles * self.needle_len
        if self.variant == "multivalue":
            return 1 + self.key_len + self.num_needles * self.value_len
        return self.needle_len

    # ------------------------------------------------------------------ generation
    def chance_accuracy(self) -> float:
        """A uniform guess among the value tokens, per scored token."""
        return 1.0 / self.n_value_tokens

    def build(self, n: int, seed: int) -> Batch:
        check_positive(n=n)
        g = self.generator(seed)
        T, m, K, L, NL = self.seq_len, self.num_needles, self.key_len, self.value_len, self.needle_len
        key0, value0 = SPECIAL, SPECIAL + self.n_key_tokens
        filler0 = value0 + self.n_value_tokens
        H = T - 1 - self.context_needles - self.query_len  # haystack tokens
        context_end = T - self.query_len  # first query position

        # keys: distinct tokens per example; needle j's key is keys[:, j]
        n_keys = 1 if self.variant == "multivalue" else m
        perm = torch.rand(n, self.n_key_tokens, generator=g).argsort(dim=1)[:, : n_keys * K]
        keys = (key0 + perm).view(n, n_keys, K).expand(n, m, K) if n_keys == 1 else (key0 + perm).view(n, m, K)
        values = value0 + torch.randint(self.n_value_tokens, (n, m, L), generator=g)  # (n, m, L)

        # needle j (insertion order) starts at 1 + u_j + j * NL, u sorted uniform in [0, H]
        u = torch.randint(H + 1, (n, m), generator=g).sort(dim=1).values  # (n, m)
        start = 1 + u + torch.arange(m) * NL  # (n, m) position of NEEDLE
        needle = torch.cat([torch.full((n, m, 1), NEEDLE), keys, values], dim=2)  # (n, m, NL)
        needle_pos = start[:, :, None] + torch.arange(NL)  # (n, m, NL)

        inputs = torch.empty(n, T, dtype=torch.long)
        is_needle = torch.zeros(n, T, dtype=torch.bool)
        is_needle.scatter_(1, needle_pos.view(n, -1), True)
        if self.haystack == "noise":
            inputs[:] = filler0 + torch.randint(self.n_filler_tokens, (n, T), generator=g)
        else:  # the haystack index of a position is how many haystack tokens precede it
            hay_index = torch.cumsum(~is_needle, dim=1) - 2  # BOS counts as one
            inputs[:] = filler0 + hay_index.clamp(min=0) % min(REPEAT_PERIOD, self.n_filler_tokens)
        inputs.scatter_(1, needle_pos.view(n, -1), needle.view(n, -1))
        inputs[:, 0] = BOS

        targets = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        distance = torch.full((n, T), -1, dtype=torch.long)
        value_pos = needle_pos[:, :, 1 + K :]  # (n, m, L) where each needle's value tokens sit
        rows = torch.arange(n)[:, None]

        def ask(pos: int, asked, answer_needles) -> None:
            """Write ``QUERY key values`` at ``pos``: asked (n,) needle whose key is asked,
            answer_needles (n, a) needles whose values follow, in order."""
            inputs[:, pos] = QUERY
            inputs[:, pos + 1 : pos + 1 + K] = keys[rows[:, 0], asked]
            answer = values[rows, answer_needles].reshape(n, -1)  # (n, a * L)
            sources = value_pos[rows, answer_needles].reshape(n, -1)  # (n, a * L)
            first = pos + K  # the key's last token predicts the first value token
            span = slice(first, first + answer.shape[1])
            inputs[:, first + 1 : first + 1 + answer.shape[1]] = answer
            targets[:, span] = answer
            distance[:, span] = torch.arange(first, first + answer.shape[1]) - sources

        if self.variant in ("single", "multikey"):
            asked = torch.randint(m, (n,), generator=g)  # single: always 0
            ask(context_end, asked, asked[:, None])
        elif self.variant == "multivalue":
            ask(context_end, torch.zeros(n, dtype=torch.long), torch.arange(m).expand(n, m))
        else:  # multiquery: every key, in a random order
            order = torch.rand(n, m, generator=g).argsort(dim=1)  # (n, m)
            for i in range(m):
                ask(context_end + i * NL, order[:, i], order[:, i : i + 1])

        slices = {
            "variant": torch.full((n,), VARIANTS.index(self.variant), dtype=torch.long),
            "num_needles": torch.full((n,), m, dtype=torch.long),
            "seq_len": torch.full((n,), T, dtype=torch.long),
        }
        return Batch(inputs, targets, distance, slices)
