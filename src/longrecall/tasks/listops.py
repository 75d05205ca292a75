"""ListOps: the value of a nested expression of MAX, MIN, MED and SM over digits.

Nangia and Bowman 2018, "ListOps: A Diagnostic Dataset for Latent Tree Learning" (arXiv
1804.06028), in the Long Range Arena version (Tay et al. 2021, "Long Range Arena: A Benchmark for
Efficient Transformers", generator ``lra_benchmarks/data/listops.py``).  The model reads a prefix
expression such as ``[MAX 2 9 [MIN 4 7 ] 0 ]`` and must output its value, a digit.  Every operator's
result depends on arguments spread over the whole sequence and on the bracket structure, so it
measures hierarchical *reasoning* over long range rather than recall of one fact.

Worked example (``seq_len=12, max_depth=2, max_args=4``)::

    position:  0    1    2     3   4   5     6   7   8   9   10   11
               PAD  PAD  [MAX  2   9   [MIN  4   7   ]   0   ]    QUERY
    inputs:    0    0    4     9   16  3     11  14  2   7   2    1
    targets:  -100 -100 -100  ...                                 16 (digit 9)
    distance:  -1   -1   -1   ...                                 9

* tokens: 0 PAD, 1 QUERY, 2 ``]``, 3 ``[MIN``, 4 ``[MAX``, 5 ``[MED``, 6 ``[SM``, digit d is
  ``7 + d``; ``vocab_size = 17``;
* operators: MIN, MAX, MED (median; for an even count the *lower* median, ``sorted(xs)[(k-1)//2]``),
  SM (sum modulo 10); each takes 2 to ``max_args`` arguments, digits or nested expressions;
* layout: ``PAD... expression QUERY``: padding comes *first*, so QUERY is always the last
  position (a causal model sees the whole expression there); the expression has between
  ``min_length`` and ``seq_len - 1`` tokens;
* the only scored position is QUERY, whose target is the digit token of the expression's value;
* ``distance`` = QUERY position minus the position of the expression's first token.

Generation follows LRA's recursion: the root is an operator; below it a node is an operator with
probability 0.25 (LRA's ``VALUE_P``) while its depth is below ``max_depth``, else a uniform digit;
an operator draws its argument count uniformly from 2 to ``max_args`` and its symbol uniformly.
To never exceed ``seq_len - 1`` tokens, every node gets a token budget (what is left of its
parent's budget, keeping one token for each later sibling): a node becomes a digit when fewer than
4 tokens remain and draws at most ``budget - 2`` arguments.  Expressions shorter than ``min_length``
are redrawn, as LRA keeps only lengths in (500, 2000); after 1000 draws for one example ``build``
raises ``RuntimeError``.  Long expressions need wide operators: a node has on average
``0.25 * (2 + max_args) / 2`` operator children, below 1 for ``max_args < 6``, so such trees stay
small (measured at ``seq_len=512, max_depth=8``: P(length >= 128) is 0.001 for ``max_args=4``, 0.09
for 6 and 0.54 for 10); lower ``min_length`` for narrow operators.  Slices: ``depth`` (the deepest operator
nesting; ``[SM 5 6 7 ]`` has depth 1) and ``root_op`` (0 MIN, 1 MAX, 2 MED, 3 SM).

Differences from LRA: LRA's ``max_depth=10`` counts the digit level, i.e. nine nested operators,
which is ``max_depth=9`` here (``LRA_SCALE``); LRA's MED is ``int(np.median(xs))``, the floor of the
mean of the two middle values for an even count, where this task uses the lower median (a member
of the list, like the other operators' results); LRA pads at the end and classifies from a pooled
encoding, while a causal model needs the answer position last; the tokens come from Python's
``random.Random`` seeded by ``seed`` (LRA's generator is unseeded).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from ..registry import register_task
from ..validation import ArgumentError, check_int, check_positive, is_int
from .base import IGNORE_INDEX, Batch, Task

PAD, QUERY, CLOSE, MIN, MAX, MED, SM = 0, 1, 2, 3, 4, 5, 6
DIGIT0 = 7  # digit d is token DIGIT0 + d
OPERATORS = (MIN, MAX, MED, SM)
NAMES = {MIN: "[MIN", MAX: "[MAX", MED: "[MED", SM: "[SM", CLOSE: "]", PAD: "PAD", QUERY: "QUERY"}
OP_PROBABILITY = 0.25  # LRA's VALUE_P: a non-root node below max_depth is an operator this often
CHANCE_EXAMPLES, CHANCE_SEED = 4000, 2**31 - 1  # the sample that measures the most frequent value's share
MAX_TRIES = 1000  # redraws per example before giving up on reaching min_length

# LRA's ListOps (generator defaults: max_length 2000, min_length 500 exclusive, max_depth 10, max_args 10)
LRA_SCALE = dict(seq_len=2000, max_depth=9, max_args=10, min_length=501)
# One operator over 2-4 digits: 2-layer width-32 attention (short conv 4, batch 32, lr 3e-3) reaches
# 73-76% in 300 steps (the most frequent value is 11.5%); SM, a sum mod 10, stays near chance.
CPU_SCALE = dict(seq_len=16, max_depth=1, max_args=4, min_length=4)


def apply_operator(op: int, args: Sequence[int]) -> int:
    """The value of one operator on its argument values (digits 0-9)."""
    if op == MIN:
        return min(args)
    if op == MAX:
        return max(args)
    if op == MED:
        return sorted(args)[(len(args) - 1) // 2]  # lower median for an even count
    if op == SM:
        return sum(args) % 10
    raise ValueError(f"not an operator token: {op}")


def evaluate(tokens: Sequence[int]) -> int:
    """Exact value of a complete expression given as token ids (no PAD or QUERY); ValueError if malformed."""
    stack: list[tuple[int, list[int]]] = []  # open operators and their argument values so far
    result = None
    for token in (int(t) for t in tokens):
        if result is not None:
            raise ValueError("tokens continue after the expression is complete")
        if token in OPERATORS:
            stack.append((token, []))
        elif DIGIT0 <= token < DIGIT0 + 10 or token == CLOSE:
            if token == CLOSE:
                if not stack:
                    raise ValueError("']' without an open operator")
                op, args = stack.pop()
                if len(args) < 2:
                    raise ValueError(f"{NAMES[op]} needs at least 2 arguments, got {len(args)}")
                value = apply_operator(op, args)
            else:
                value = token - DIGIT0
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        else:
            raise ValueError(f"unexpected token {token} in an expression")
    if result is None:
        raise ValueError("incomplete expression" if stack else "empty expression")
    return result


def nesting_depth(tokens: Sequence[int]) -> int:
    """Deepest operator nesting: 0 for a digit, 1 for ``[SM 5 6 7 ]``."""
    depth = deepest = 0
    for token in (int(t) for t in tokens):
        depth += token in OPERATORS
        deepest = max(deepest, depth)
        depth -= token == CLOSE
    return deepest


def tokenize(text: str) -> list[int]:
    """``"[MAX 2 9 [MIN 4 7 ] 0 ]"`` -> token ids (digits are single characters)."""
    ids = {"[MIN": MIN, "[MAX": MAX, "[MED": MED, "[SM": SM, "]": CLOSE}
    out = []
    for piece in re.findall(r"\[[A-Z]+|\]|\S", text):
        if piece in ids:
            out.append(ids[piece])
        elif piece.isdigit():
            out.append(DIGIT0 + int(piece))
        else:
            raise ValueError(f"unknown ListOps symbol {piece!r} in {text!r}")
    return out


def detokenize(tokens: Sequence[int]) -> str:
    return " ".join(NAMES.get(int(t), str(int(t) - DIGIT0)) for t in tokens)


def max_length(max_depth: int, max_args: int) -> int:
    """Longest expression with operators nested at most ``max_depth`` deep: f(d) = 2 + a * f(d - 1)."""
    length = 1
    for _ in range(max_depth):
        length = 2 + max_args * length
    return length


_MOST_FREQUENT_SHARE: dict[tuple, float] = {}  # chance_accuracy per configuration, measured once


@register_task("listops")
@dataclass
class ListOps(Task):
    """ListOps (LRA): the digit value of a nested MAX / MIN / MED / SM expression.

    Args:
        seq_len: T; expressions have at most ``T - 1`` tokens, left-padded, QUERY last (T >= 5).
        max_depth: most operators nested inside one another (>= 1).
        max_args: most arguments of one operator (>= 2).
        min_length: fewest expression tokens (>= 4); ``None`` means ``seq_len // 4`` (LRA's
            500 of 2000), capped at the longest expression ``max_depth`` and ``max_args`` allow.
    """

    seq_len: int = 2000
    max_depth: int = 9
    max_args: int = 10
    min_length: int | None = None
    vocab_size: ClassVar[int] = DIGIT0 + 10
    version = 1

    def __post_init__(self):
        check_int(seq_len=self.seq_len, minimum=5)
        check_int(max_depth=self.max_depth)
        check_int(max_args=self.max_args, minimum=2)
        longest = min(self.seq_len - 1, max_length(self.max_depth, self.max_args))
        value = self.min_length
        if value is not None and (not is_int(value) or not 4 <= value <= longest):
            raise ArgumentError("min_length", f"an int in [4, {longest}] (4 is the shortest operator expression; "
                                f"{longest} the longest that fits seq_len - 1 = {self.seq_len - 1} and max_depth, "
                                "max_args)", repr(value))

    @property
    def min_tokens(self) -> int:
        """The resolved ``min_length``."""
        if self.min_length is not None:
            return self.min_length
        return max(4, min(self.seq_len // 4, self.seq_len - 1, max_length(self.max_depth, self.max_args)))

    def _node(self, rng: random.Random, depth: int, budget: int) -> list[int]:
        """Tokens of one node at ``depth`` (root 1) using at most ``budget`` tokens."""
        is_op = depth <= self.max_depth and budget >= 4 and (depth == 1 or rng.random() < OP_PROBABILITY)
        if not is_op:
            return [DIGIT0 + rng.randrange(10)]
        count = rng.randint(2, min(self.max_args, budget - 2))
        tokens, left = [rng.choice(OPERATORS)], budget - 2  # the operator and its ']'
        for k in range(count):
            child = self._node(rng, depth + 1, left - (count - k - 1))  # keep 1 token per later sibling
            tokens += child
            left -= len(child)
        tokens.append(CLOSE)
        return tokens

    def expression(self, rng: random.Random) -> list[int]:
        """One expression of ``min_length`` to ``seq_len - 1`` tokens."""
        for _ in range(MAX_TRIES):
            tokens = self._node(rng, 1, self.seq_len - 1)
            if len(tokens) >= self.min_tokens:
                return tokens
        raise RuntimeError(
            f"no expression of at least min_length={self.min_tokens} tokens in {MAX_TRIES} draws "
            f"(max_depth={self.max_depth}, max_args={self.max_args}); lower min_length or raise max_depth/max_args"
        )

    def chance_accuracy(self) -> float:
        """The best guess that does not read the expression: always the most frequent value. The values
        are far from uniform (MIN, MAX, MED and SM of random digits pile up on some), so a model that
        learned only the answers' distribution scores this share, not 1/10: measured on a fixed sample
        of ``CHANCE_EXAMPLES`` expressions (about 0.17 at the lra-listops preset's settings)."""
        key = (self.seq_len, self.max_depth, self.max_args, self.min_length)
        if key not in _MOST_FREQUENT_SHARE:
            rng = random.Random(CHANCE_SEED)
            counts = [0] * 10
            for _ in range(CHANCE_EXAMPLES):
                counts[evaluate(self.expression(rng))] += 1
            _MOST_FREQUENT_SHARE[key] = max(counts) / CHANCE_EXAMPLES
        return _MOST_FREQUENT_SHARE[key]

    def build(self, n: int, seed: int) -> Batch:
        check_positive(n=n)
        self.generator(seed)  # validates the seed; generation uses its own local random.Random
        rng = random.Random(seed)
        T, q = self.seq_len, self.seq_len - 1
        inputs = torch.full((n, T), PAD, dtype=torch.long)  # (n, T)
        inputs[:, q] = QUERY
        targets = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)
        distance = torch.full((n, T), -1, dtype=torch.long)
        depth = torch.empty(n, dtype=torch.long)
        root_op = torch.empty(n, dtype=torch.long)
        for row in range(n):
            tokens = self.expression(rng)
            start = q - len(tokens)
            inputs[row, start:q] = torch.tensor(tokens)
            targets[row, q] = DIGIT0 + evaluate(tokens)
            distance[row, q] = q - start
            depth[row] = nesting_depth(tokens)
            root_op[row] = OPERATORS.index(tokens[0])
        return Batch(inputs, targets, distance, {"depth": depth, "root_op": root_op})
