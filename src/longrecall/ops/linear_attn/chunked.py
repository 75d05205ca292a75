"""Chunked (parallel) forms of the linear-attention kernels. PLACEHOLDER: calls the naive references
until the chunked algorithms land; the API below is final."""

from __future__ import annotations

from torch import Tensor

from .naive import delta_rule_naive, linear_attn_naive

__all__ = ["linear_attn_chunked", "delta_rule_chunked"]


def linear_attn_chunked(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None,
                        initial_state: Tensor | None = None, *, bonus: Tensor | None = None,
                        chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    return linear_attn_naive(q, k, v, log_decay, initial_state, bonus=bonus)


def delta_rule_chunked(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_decay: Tensor | None = None,
                       initial_state: Tensor | None = None, *, chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    return delta_rule_naive(q, k, v, beta, log_decay, initial_state)
