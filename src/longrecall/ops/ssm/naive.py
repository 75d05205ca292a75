"""The step-by-step spec of the linear state-space kernels: dense matrix powers and the recurrence.

``dense.py`` (blocked Krylov) and ``cauchy.py`` (S4's generating function) are tested against these.
Shapes: ``Abar (H, N, N)``, ``Bbar (H, N)``, ``C (H, N)``, ``u (B, H, T)``, state ``(B, H, N)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["krylov_kernel_naive", "ssm_recurrence_naive"]


def krylov_kernel_naive(Abar: Tensor, Bbar: Tensor, C: Tensor, T: int) -> Tensor:
    """``K_j = C Abar^j Bbar`` by one matrix-vector product per tap: ``(H, T)``."""
    x, taps = Bbar, []
    for _ in range(T):
        taps.append((C * x).sum(-1))
        x = (Abar @ x[..., None])[..., 0]
    return torch.stack(taps, -1)


def ssm_recurrence_naive(Abar: Tensor, Bbar: Tensor, C: Tensor, u: Tensor,
                         s0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``x_k = Abar x_{k-1} + Bbar u_k``, ``y_k = C . x_k`` from ``x_{-1} = s0``: ``(y (B, H, T), x_{T-1})``."""
    x = s0 if s0 is not None else u.new_zeros(*u.shape[:2], Abar.shape[-1])
    ys = []
    for u_k in u.unbind(-1):
        x = (Abar @ x[..., None])[..., 0] + Bbar * u_k[..., None]
        ys.append((C * x).sum(-1))
    return torch.stack(ys, -1), x
