"""Sequential reference of the diagonal linear scan: the spec :func:`diag_scan` is tested against.

One step at a time, with the decay ``a = exp(log_decay)`` multiplied in at every step::

    x_t = a ⊙ x_{t-1} + b_t,     x_{-1} = h0 (zeros if None)          x: (B, N)

Real or complex: LRU runs it on complex modes (Orvieto et al. 2023, arXiv 2303.06349).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["diag_scan_naive", "check_scan_args"]


def check_scan_args(log_decay: Tensor, b: Tensor, h0: Tensor | None) -> None:
    """Shapes and dtypes, with errors naming the argument (shared by both forms)."""
    if not isinstance(b, Tensor) or b.dim() != 3:
        raise ValueError(f"b must be a tensor of shape (B, T, N), got {getattr(b, 'shape', type(b).__name__)}")
    N = b.shape[-1]
    if not isinstance(log_decay, Tensor) or tuple(log_decay.shape) != (N,):
        raise ValueError(f"log_decay must have shape (N,) = ({N},), got {getattr(log_decay, 'shape', log_decay)}")
    if log_decay.dtype != b.dtype:
        raise ValueError(f"log_decay must have b's dtype {b.dtype}, got {log_decay.dtype}")
    if h0 is not None and (tuple(h0.shape) != (b.shape[0], N) or h0.dtype != b.dtype):
        raise ValueError(f"h0 must be None or a {b.dtype} tensor of shape {(b.shape[0], N)}, "
                         f"got {h0.dtype} {tuple(h0.shape)}")


def diag_scan_naive(log_decay: Tensor, b: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Diagonal linear recurrence, one step at a time.

    Args:
        log_decay: (N,) log of the per-mode decay, real part <= 0 for a stable scan; b's dtype.
        b: (B, T, N) inputs (real or complex).
        h0: (B, N) state before the first step, or None for zeros.

    Returns:
        xs (B, T, N), every state; h_T (B, N), the state after the last step (h0 when T = 0).
    """
    check_scan_args(log_decay, b, h0)
    a = torch.exp(log_decay)  # (N,)
    h = b.new_zeros(b.shape[0], b.shape[-1]) if h0 is None else h0  # (B, N)
    xs = []
    for b_t in b.unbind(1):  # unbind, never b[:, t]: indexing makes backward O(T^2) in memory
        h = a * h + b_t
        xs.append(h)
    return (torch.stack(xs, dim=1) if xs else b.new_zeros(b.shape)), h
