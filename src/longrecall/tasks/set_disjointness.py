"""Set disjointness (SD): do two sets, streamed one after the other, share an element?

Arora et al. 2024, "Just read twice: closing the recall gap for recurrent language models" (JRT,
arXiv 2407.05483). JRT reduces in-context recall by a recurrent model to set disjointness: after
reading set A and then set B, say whether A and B intersect. A model with a fixed-size state must
remember the *first* set while it reads the second, so the memory needed depends on the order: short
set first needs memory for ``short_size`` elements, long set first for ``long_size`` (JRT's lower
bound; attention, which keeps every token, is indifferent to order). It measures *capacity* and its
dependence on data order.

Worked example (``universe_size=10, short_size=2, long_size=4, order="short_first"``)::

              SEP  A1   A2   SEP  B1   B2   B3   B4   QUERY
    inputs:   1    7    12   1    9    5    12   14   2
    targets: -100 -100 -100 -100 -100 -100 -100 -100  4 (YES)
    distance: -1   -1   -1   -1   -1   -1   -1   -1   6

* tokens: 0 PAD (unused), 1 SEP, 2 QUERY, 3 NO, 4 YES; set elements are ``5 + u`` for ``u`` in
  ``[0, universe_size)``, so ``vocab_size = universe_size + 5``;
* layout: ``SEP first-set SEP second-set QUERY``, ``seq_len = short_size + long_size + 3``; the
  first set is the short one for ``order="short_first"`` and the long one for ``"long_first"``;
* elements are distinct within each set; exactly half of a batch (up to one example for odd ``n``)
  intersects, in exactly one element placed at a uniformly random position of each set;
* the only scored position is QUERY, whose target is YES (intersect) or NO (disjoint);
* ``distance`` = QUERY position minus the shared element's first occurrence (in the first set)
  when the sets intersect, and minus the first set's first element (position 1) when disjoint:
  the whole first set is then the fact that must be remembered.

Slices: ``order`` (0 short_first, 1 long_first) and ``intersect`` (0 / 1).  The same seed gives
the same sets and labels in both orders (only which set is written first changes), so the two
orders can be compared example by example.  Differences from JRT:
JRT's synthetic SD asks for the shared element; here the answer is a YES/NO class, balanced, so
chance is exactly 50% and accuracy reads directly as a memory score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import register_task
from ..validation import ArgumentError, check_choice, check_int, check_positive, is_int
from .base import IGNORE_INDEX, Batch, Task

PAD, SEP, QUERY, NO, YES = 0, 1, 2, 3, 4
FIRST_ELEMENT = 5  # element u of the universe is token FIRST_ELEMENT + u
ORDERS = ("short_first", "long_first")

# Measured with 2-layer width-32 attention (short conv 4, batch 32, lr 3e-3): this CPU scale
# reaches >= 96% in 300 steps in either order; (64, 4, 16) stayed at chance after 3,000 steps and
# (16, 2, 6) reached 68%, so duplicate detection is slow to learn at small width.
CPU_SCALE = dict(universe_size=6, short_size=1, long_size=3)


@register_task("set_disjointness")
@dataclass
class SetDisjointness(Task):
    """Set disjointness (JRT): YES if the two streamed sets share an element, else NO.

    Args:
        universe_size: number of distinct elements the sets are drawn from (>= short + long).
        short_size: elements in the short set (>= 1).
        long_size: elements in the long set (>= short_size).
        order: ``"short_first"`` or ``"long_first"``: which set is written first.
    """

    universe_size: int = 64
    short_size: int = 4
    long_size: int = 16
    order: str = "short_first"
    version = 1

    def __post_init__(self):
        check_int(universe_size=self.universe_size, short_size=self.short_size, long_size=self.long_size)
        if self.long_size < self.short_size:
            raise ArgumentError("long_size", f"at least short_size={self.short_size}", repr(self.long_size))
        if self.universe_size < self.short_size + self.long_size:
            raise ArgumentError("universe_size", "at least short_size + long_size = "
                                f"{self.short_size + self.long_size} (disjoint sets need that many distinct elements)",
                                repr(self.universe_size))
        check_choice("order", self.order, ORDERS)

    @property
    def vocab_size(self) -> int:
        return FIRST_ELEMENT + self.universe_size

    @property
    def seq_len(self) -> int:
        return self.short_size + self.long_size + 3  # SEP first SEP second QUERY

    @classmethod
    def length_kwargs(cls, seq_len: int, kwargs: dict) -> dict:
        """The long set that makes ``short_size + long_size + 3 == seq_len`` (short_size is kept)."""
        short = kwargs.get("short_size", cls.short_size)
        if not is_int(seq_len) or seq_len < 2 * short + 3:
            raise ArgumentError("seq_len", f"an int >= 2 * short_size + 3 = {2 * short + 3} for set_disjointness "
                                "(seq_len = short_size + long_size + 3, long_size >= short_size)", repr(seq_len))
        return {"long_size": seq_len - short - 3}

    def chance_accuracy(self) -> float:
        """YES or NO, balanced: a coin flip."""
        return 0.5

    def build(self, n: int, seed: int) -> Batch:
        check_positive(n=n)
        g = self.generator(seed)
        U, S, L, T = self.universe_size, self.short_size, self.long_size, self.seq_len
        rows = torch.arange(n)

        # distinct elements: a random permutation of the universe per example, truncated
        perm = torch.rand(n, U, generator=g).argsort(dim=1)[:, : S + L] + FIRST_ELEMENT  # (n, S+L)
        short, long = perm[:, :S].clone(), perm[:, S:].clone()  # (n, S), (n, L), disjoint

        # exactly balanced labels: a random permutation's parity (a coin decides odd n's extra one)
        intersect = (torch.randperm(n, generator=g) + torch.randint(2, (1,), generator=g)) % 2 == 1  # (n,)
        i = torch.randint(S, (n,), generator=g)  # shared element's index in the short set
        j = torch.randint(L, (n,), generator=g)  # ... and its index in the long set
        long[rows[intersect], j[intersect]] = short[rows[intersect], i[intersect]]

        first, second = (short, long) if self.order == "short_first" else (long, short)
        F = first.shape[1]
        inputs = torch.full((n, T), SEP, dtype=torch.long)
        inputs[:, 1 : 1 + F] = first
        inputs[:, 2 + F : T - 1] = second
        inputs[:, T - 1] = QUERY

        q = T - 1
        shared_in_first = i if self.order == "short_first" else j  # (n,) index in the first set
        fact_pos = torch.where(intersect, 1 + shared_in_first, torch.ones_like(i))  # (n,)
        targets = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        targets[:, q] = torch.where(intersect, YES, NO)
        distance = torch.full((n, T), -1, dtype=torch.long)
        distance[:, q] = q - fact_pos

        slices = {
            "order": torch.full((n,), ORDERS.index(self.order), dtype=torch.long),
            "intersect": intersect.long(),
        }
        return Batch(inputs, targets, distance, slices)
