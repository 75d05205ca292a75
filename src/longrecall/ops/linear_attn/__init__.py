"""Matrix-memory kernels shared by the linear-attention family (DESIGN: one op, a naive reference
beside the fast form).

``linear_attn``: decayed / gated linear attention (RetNet, GLA, Mamba-2/SSD, RWKV-6 with ``bonus``,
mLSTM's numerator). ``delta_rule``: DeltaNet and Gated DeltaNet. Both take ``impl="chunked"``
(default; chunk size a parameter) or ``impl="naive"`` (the sequential spec in ``naive.py``).
"""

from __future__ import annotations

from torch import Tensor

from ...protocol import check_choice, check_positive
from .chunked import delta_rule_chunked, linear_attn_chunked
from .naive import delta_rule_naive, linear_attn_naive, state_dtype

__all__ = ["linear_attn", "delta_rule", "linear_attn_naive", "delta_rule_naive", "linear_attn_chunked",
           "delta_rule_chunked", "state_dtype", "IMPLS"]

IMPLS: tuple[str, ...] = ("chunked", "naive")


def linear_attn(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None,
                initial_state: Tensor | None = None, *, bonus: Tensor | None = None,
                impl: str = "chunked", chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """Decayed linear attention; see ``naive.linear_attn_naive`` for the recurrence and shapes."""
    check_choice("impl", impl, IMPLS)
    if impl == "naive":
        return linear_attn_naive(q, k, v, log_decay, initial_state, bonus=bonus)
    check_positive(chunk_size=chunk_size)
    return linear_attn_chunked(q, k, v, log_decay, initial_state, bonus=bonus, chunk_size=chunk_size)


def delta_rule(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_decay: Tensor | None = None,
               initial_state: Tensor | None = None, *, impl: str = "chunked",
               chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """(Gated) delta rule; see ``naive.delta_rule_naive`` for the recurrence and shapes."""
    check_choice("impl", impl, IMPLS)
    if impl == "naive":
        return delta_rule_naive(q, k, v, beta, log_decay, initial_state)
    check_positive(chunk_size=chunk_size)
    return delta_rule_chunked(q, k, v, beta, log_decay, initial_state, chunk_size=chunk_size)
