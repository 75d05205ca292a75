"""Causal long convolution, the direct O(T * L) spec that the fast forms are tested against.

Shapes: ``u (B, H, T)`` one signal per channel, ``k (H, L)`` one kernel per channel.
Output ``y (B, H, T)`` with ``y[b, h, t] = sum_{0 <= s <= t} k[h, t - s] * u[b, h, s]``, taps
``k[h, j]`` for ``j >= L`` taken as zero.  A kernel longer than ``T`` is truncated to ``T`` taps,
which is exact: a tap at lag ``j >= T`` never meets an input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_conv_naive", "check_conv_args"]


def check_conv_args(u: Tensor, k: Tensor) -> None:
    """Clear errors for the wrong ranks or channel counts (shared by every conv form)."""
    if not isinstance(u, Tensor) or u.dim() != 3:
        raise ValueError(f"u must have shape (B, H, T), got {tuple(getattr(u, 'shape', ()))}")
    if not isinstance(k, Tensor) or k.dim() != 2:
        raise ValueError(f"k must have shape (H, L), got {tuple(getattr(k, 'shape', ()))}")
    if k.shape[0] != u.shape[1]:
        raise ValueError(f"k has {k.shape[0]} channels but u has H={u.shape[1]}")


def causal_conv_naive(u: Tensor, k: Tensor) -> Tensor:
    """Direct causal convolution: one shifted multiply-add per kernel tap (the reference).

    Args:
        u: input ``(B, H, T)``.
        k: kernel ``(H, L)``; ``k[:, 0]`` multiplies the current input.

    Returns:
        ``y (B, H, T)``.
    """
    check_conv_args(u, k)
    T = u.shape[-1]
    y = u.new_zeros(u.shape, dtype=torch.result_type(u, k))  # (B, H, T)
    for j in range(min(k.shape[-1], T)):
        # lag j: y[..., t] += k[:, j] * u[..., t - j] for t >= j (out of place: autograd-safe)
        y = y + F.pad(k[:, j, None] * u[..., : T - j], (j, 0))
    return y
