"""Sequential reference of the Mamba-1 selective scan: the spec every faster scan is tested against.

Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"
(arXiv 2312.00752), Algorithm 2 (SSM + Selection, S6), with the zero-order-hold discretisation of
``A`` and the simplified Euler discretisation of ``B`` that the reference ``selective_scan_ref``
uses::

    h_t = exp(delta_t ⊗ A) ⊙ h_{t-1} + (delta_t ⊙ u_t) ⊗ B_t        h: (B, E, N)
    y_t = sum_n h_t[..., n] C_t[n] + D ⊙ u_t                          y: (B, E)

Shapes: B batch, T time, E channels (the block's inner width), N state size per channel.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["selective_scan_naive", "scan_dtype"]


def scan_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the state is carried in: at least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def selective_scan_naive(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    h0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Selective scan, one time step at a time.

    Args:
        u: input, (B, T, E).
        delta: positive step sizes (already softplus-ed), (B, T, E).
        A: state matrix diagonal, (E, N); negative for a decaying state.
        B: input projection per step, (B, T, N).
        C: output projection per step, (B, T, N).
        D: skip connection, (E,), or None for no skip.
        h0: state before the first step, (B, E, N), or None for zeros.

    Returns:
        y: (B, T, E) in ``u``'s dtype, and h_T: the state after the last step, (B, E, N), in
        float32 (float64 if the inputs are float64).
    """
    dtype = scan_dtype(u.dtype)
    batch, _, channels = u.shape
    u_, delta_, B_, C_ = (t.to(dtype) for t in (u, delta, B, C))
    A_ = A.to(dtype)
    if h0 is None:
        h = u.new_zeros(batch, channels, A.shape[-1], dtype=dtype)  # (B, E, N)
    else:
        h = h0.to(dtype)

    ys = []
    # unbind, never u[:, t]: indexing inside the loop makes backward zero-fill a full
    # (B, T, ...) gradient per step (O(T^2) memory traffic).
    for u_t, d_t, b_t, c_t in zip(u_.unbind(1), delta_.unbind(1), B_.unbind(1), C_.unbind(1), strict=True):
        # u_t, d_t: (B, E); b_t, c_t: (B, N)
        decay = torch.exp(d_t.unsqueeze(-1) * A_)  # (B, E, N), in (0, 1] for A <= 0
        drive = (d_t * u_t).unsqueeze(-1) * b_t.unsqueeze(1)  # (B, E, N)
        h = decay * h + drive  # (B, E, N)
        ys.append(torch.einsum("ben,bn->be", h, c_t))  # (B, E)

    if ys:
        y = torch.stack(ys, dim=1)  # (B, T, E)
    else:
        y = u_.new_zeros(u_.shape)
    if D is not None:
        y = y + D.to(dtype) * u_
    return y.to(u.dtype), h
