"""Sequential references for matrix-valued linear-recurrent memories: the spec every chunked form
is tested against.

Row-vector convention (Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient
Training", arXiv 2312.06635, section 2; Yang et al. 2024, "Parallelizing Linear Transformers with the
Delta Rule over Sequence Length", arXiv 2406.06484; Yang et al. 2025, "Gated Delta Networks",
arXiv 2412.06464). Per batch and head, the state ``S`` is a (K, V) matrix; ``q_t, k_t`` are K-vectors,
``v_t`` a V-vector, and ``g_t = log(decay) <= 0`` is given in log space so long products of decays
are sums (no underflow to 0 followed by 0 * inf).

Decayed / gated linear attention (``linear_attn_naive``)::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t          g_t: scalar per head (RetNet, Mamba-2,
    o_t = q_t S_t                                          mLSTM) or per key channel (GLA, RWKV-6)

with the RWKV-6 variant (``bonus`` u, Peng et al. 2024, arXiv 2404.05892, eq. 18-19) that reads the
state *before* the write and adds the current token through u::

    o_t = q_t (S_{t-1} + diag(u) k_t^T v_t)

Delta rule, optionally gated (``delta_rule_naive``)::

    S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t      g_t, beta_t: scalars per head
    o_t = q_t S_t

No feature maps, normalisers or scales are applied here: mixers do that before calling. The state
is carried in float32 at least (float64 stays float64); outputs come back in ``v``'s dtype.

Shapes: B batch, H heads, T time, K key dim, V value dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["linear_attn_naive", "delta_rule_naive", "state_dtype", "check_shapes"]


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a state is carried in: at least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def check_shapes(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None, initial_state: Tensor | None,
                 beta: Tensor | None = None, bonus: Tensor | None = None) -> None:
    """Raise a ValueError naming the argument whose shape does not fit (B, H, T, K) / (B, H, T, V)."""
    if q.dim() != 4:
        raise ValueError(f"q must be (B, H, T, K), got shape {tuple(q.shape)}")
    B, H, T, K = q.shape
    if tuple(k.shape) != (B, H, T, K):
        raise ValueError(f"k must have q's shape {(B, H, T, K)}, got {tuple(k.shape)}")
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, H, T):
        raise ValueError(f"v must be (B, H, T, V) = ({B}, {H}, {T}, V), got {tuple(v.shape)}")
    V = v.shape[-1]
    if log_decay is not None and tuple(log_decay.shape) not in ((B, H, T), (B, H, T, K)):
        raise ValueError(f"log_decay must be (B, H, T) or (B, H, T, K) = {(B, H, T)} or {(B, H, T, K)}, "
                         f"got {tuple(log_decay.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (B, H, K, V):
        raise ValueError(f"initial_state must be (B, H, K, V) = {(B, H, K, V)}, got {tuple(initial_state.shape)}")
    if beta is not None and tuple(beta.shape) != (B, H, T):
        raise ValueError(f"beta must be (B, H, T) = {(B, H, T)}, got {tuple(beta.shape)}")
    if bonus is not None and tuple(bonus.shape) != (H, K):
        raise ValueError(f"bonus must be (H, K) = {(H, K)}, got {tuple(bonus.shape)}")


def _start(q: Tensor, v: Tensor, initial_state: Tensor | None, dtype: torch.dtype) -> Tensor:
    B, H, _, K = q.shape
    if initial_state is None:
        return q.new_zeros(B, H, K, v.shape[-1], dtype=dtype)  # (B, H, K, V)
    return initial_state.to(dtype)


def linear_attn_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor | None = None,
    initial_state: Tensor | None = None,
    *,
    bonus: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(Decayed) linear attention, one token at a time.

    Args:
        q, k: (B, H, T, K). v: (B, H, T, V).
        log_decay: None (no decay), (B, H, T) one decay per head, or (B, H, T, K) one per key channel;
            values <= 0 (log of a decay in (0, 1]).
        initial_state: (B, H, K, V) or None for zeros.
        bonus: RWKV-6's u, (H, K): read the state before writing and add ``q_t diag(u) k_t^T v_t``.

    Returns:
        o: (B, H, T, V) in v's dtype; the state after the last token, (B, H, K, V), float32 or wider.
    """
    check_shapes(q, k, v, log_decay, initial_state, bonus=bonus)
    dtype = state_dtype(v.dtype)
    S = _start(q, v, initial_state, dtype)
    T = q.shape[2]
    q_, k_, v_ = (t.to(dtype).unbind(2) for t in (q, k, v))  # unbind: see ops/scan/naive.py
    g_ = log_decay.to(dtype).unbind(2) if log_decay is not None else [None] * T
    u = bonus.to(dtype) if bonus is not None else None
    outs = []
    for q_t, k_t, v_t, g_t in zip(q_, k_, v_, g_, strict=True):
        # q_t, k_t: (B, H, K); v_t: (B, H, V); g_t: (B, H) or (B, H, K)
        write = k_t.unsqueeze(-1) * v_t.unsqueeze(-2)  # (B, H, K, V)
        if u is not None:  # RWKV-6: o_t = q_t (S_{t-1} + diag(u) k_t^T v_t)
            outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S + u.unsqueeze(-1) * write))
        if g_t is not None:
            decay = g_t.exp()
            S = (decay[..., None, None] if decay.dim() == 2 else decay.unsqueeze(-1)) * S
        S = S + write
        if u is None:
            outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S))  # (B, H, V)
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(v.shape).to(dtype)
    return o.to(v.dtype), S


def delta_rule_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_decay: Tensor | None = None,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The (gated) delta rule, one token at a time.

    ``S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t``; ``o_t = q_t S_t``. With
    L2-normalised keys and beta in (0, 1) this is one step of online gradient descent on
    ``||k_t S - v_t||^2 / 2`` with learning rate beta_t (Schlag et al. 2021, arXiv 2102.11174).

    Args:
        q, k: (B, H, T, K) (the caller normalises k). v: (B, H, T, V).
        beta: write strength per token and head, (B, H, T).
        log_decay: None (DeltaNet) or (B, H, T) (Gated DeltaNet's alpha_t = exp(g_t)).
        initial_state: (B, H, K, V) or None for zeros.

    Returns:
        o: (B, H, T, V) in v's dtype; the final state (B, H, K, V), float32 or wider.
    """
    check_shapes(q, k, v, log_decay, initial_state, beta=beta)
    if log_decay is not None and log_decay.dim() != 3:
        raise ValueError("delta_rule takes one decay per head: log_decay must be (B, H, T), "
                         f"got {tuple(log_decay.shape)}")
    dtype = state_dtype(v.dtype)
    S = _start(q, v, initial_state, dtype)
    T = q.shape[2]
    q_, k_, v_, b_ = (t.to(dtype).unbind(2) for t in (q, k, v, beta))
    g_ = log_decay.to(dtype).unbind(2) if log_decay is not None else [None] * T
    outs = []
    for q_t, k_t, v_t, b_t, g_t in zip(q_, k_, v_, b_, g_, strict=True):
        if g_t is not None:
            S = g_t.exp()[..., None, None] * S  # (B, H, K, V)
        # S (I - beta k^T k) form written as a correction of the current read-out k_t S
        predicted = torch.einsum("bhk,bhkv->bhv", k_t, S)  # (B, H, V): what the memory recalls for k_t
        correction = b_t.unsqueeze(-1) * (v_t - predicted)  # (B, H, V)
        S = S + k_t.unsqueeze(-1) * correction.unsqueeze(-2)
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S))
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(v.shape).to(dtype)
    return o.to(v.dtype), S
