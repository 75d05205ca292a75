"""Dense linear state-space layers: bilinear discretisation, Krylov kernels and the carried-state terms.

For ``H`` independent SISO systems with dense ``Abar (H, N, N)``, ``Bbar (H, N)``, ``C (H, N)`` and an
input ``u (B, H, T)`` from the state ``x_{-1} = s0 (B, H, N)``::

    x_k = Abar x_{k-1} + Bbar u_k,   y_k = C . x_k
    y_k = sum_{j <= k} K_j u_{k-j} + C Abar^{k+1} s0,   K_j = C Abar^j Bbar        (the LSSL kernel)
    x_{T-1} = sum_{m < T} Abar^m Bbar u_{T-1-m} + Abar^T s0

Every power is blocked as ``j = i c + r`` with ``c`` a power of two near ``sqrt(T)``: the right Krylov
block ``[Abar^r Bbar]_{r < c}`` and the left one ``[C Abar^{ic}]_i`` come from ``log2`` doublings
(``X -> [X, Abar^m X]``, ``Abar^m -> Abar^{2m}``), so a kernel costs ``O(H N^3 log T + H N T)`` and the
sums over time are matmuls.  The parameter-only pieces for one length (``ssm_blocks``) are separate
from the input-dependent ones (``dense_ssm``), so a module can cache them at inference.
``naive.py`` holds the step-by-step spec.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..conv import causal_conv_fft

__all__ = ["bilinear", "krylov", "Blocks", "ssm_blocks", "krylov_kernel", "dense_ssm"]


def bilinear(A: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """``Abar = (I - dt/2 A)^{-1} (I + dt/2 A)``, ``Bbar = (I - dt/2 A)^{-1} dt B`` for steps ``dt (H,)``.

    ``A (N, N)`` or ``(H, N, N)``, ``B (N,)`` or ``(H, N)``; returns ``(H, N, N)`` and ``(H, N)``.
    """
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    half = (dt / 2)[:, None, None] * A  # (H, N, N)
    lhs = eye - half
    rhs = torch.cat([eye + half, (dt[:, None] * B)[..., None]], dim=-1)  # one solve for both
    sol = torch.linalg.solve(lhs, rhs)  # (H, N, N + 1)
    return sol[..., :-1], sol[..., -1]


def _doublings(A: Tensor, n: int) -> tuple[list[Tensor], Tensor]:
    """``[A, A^2, A^4, ..., A^{n/2}]`` and ``A^n`` for ``n`` a power of two."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"n must be a power of two, got {n!r}")
    powers, power = [], A
    for _ in range(n.bit_length() - 1):
        powers.append(power)
        power = power @ power
    return powers, power


def _krylov(v: Tensor, powers: list[Tensor]) -> Tensor:
    """``[v, A v, ..., A^{n-1} v]`` ``(..., N, n)`` from ``_doublings(A, n)[0]``: ``X -> [X, A^m X]``."""
    X = v[..., None]
    for power in powers:
        X = torch.cat([X, power @ X], dim=-1)
    return X


def krylov(A: Tensor, v: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``[v, A v, ..., A^{n-1} v]`` as ``(..., N, n)`` and ``A^n``, for ``n`` a power of two.

    ``A (H, N, N)``; ``v (..., H, N)`` broadcasts over leading batch dimensions.
    """
    powers, An = _doublings(A, n)
    return _krylov(v, powers), An


def _split(T: int) -> tuple[int, int, int]:
    """Inner block ``c`` (a power of two >= sqrt(T)), block count ``nc`` and ``nc`` rounded up to a power of two."""
    c = 1 << math.ceil(math.log2(math.sqrt(T))) if T > 1 else 1
    nc = -(-T // c)
    return c, nc, 1 << math.ceil(math.log2(nc)) if nc > 1 else 1


class Blocks(NamedTuple):
    """The parameter-only pieces of the blocked powers for one length ``T``."""

    T: int
    Abar: Tensor  # (H, N, N)
    c: int  # inner block length
    nc: int  # blocks, nc * c >= T
    right: Tensor  # (H, N, c): Abar^r Bbar
    folds: list[Tensor]  # Abar^{c 2^k}: the power-sum folds (and the left Krylov doublings)
    K: Tensor | None  # (H, T): C Abar^j Bbar; None without C
    left: Tensor | None  # (H, nc, N): C Abar^{ic}; None without C
    steps: list[Tensor] | None  # Abar^{2^k}, 2^k < c: Krylov doublings for the carried state; None unless carry
    A_T: Tensor | None  # (H, N, N): Abar^T; None unless carry

    def to(self, dtype: torch.dtype) -> Blocks:
        """Cast every tensor, e.g. blocks built in float64 (each power doubles the relative error of the last:
        float32 powers lose ~1e-4 by T = 4096, float64 ones cast down ~1e-6) for a float32 model."""

        def cast(v):
            if isinstance(v, list):
                return [t.to(dtype) for t in v]
            return v.to(dtype) if isinstance(v, Tensor) else v

        return Blocks(*(cast(v) for v in self))


def ssm_blocks(Abar: Tensor, Bbar: Tensor, C: Tensor | None, T: int, *, carry: bool = False) -> Blocks:
    """The pieces ``dense_ssm`` needs for length ``T >= 1``; with ``C`` also the kernel, with ``carry`` what a
    carried state needs (that also wants ``C``)."""
    c, nc, nc2 = _split(T)
    steps, Ac = _doublings(Abar, c)
    right = _krylov(Bbar, steps)  # (H, N, c)
    folds, _ = _doublings(Ac, nc2)  # Ac^{2^k}, k < log2(nc2)
    K = left = None
    if C is not None:
        left = _krylov(C, [f.mT for f in folds]).mT[..., :nc, :]  # (H, nc, N)
        K = (left @ right).flatten(-2)[..., :T]
    A_T = torch.linalg.matrix_power(Abar, T) if carry else None
    return Blocks(T, Abar, c, nc, right, folds, K, left, steps if carry else None, A_T)


def krylov_kernel(Abar: Tensor, Bbar: Tensor, C: Tensor, T: int) -> Tensor:
    """``K_j = C Abar^j Bbar`` for ``j < T``: ``(H, T)``."""
    if T == 0:
        return C.new_zeros(C.shape[:-1] + (0,))
    return ssm_blocks(Abar, Bbar, C, T).K


def _rows_times(w: Tensor, M: Tensor) -> Tensor:
    """``w (B, H, n, N) @ M (H, N, K)`` as one bmm per channel (``@`` would copy M out to (B, H, N, K))."""
    return torch.einsum("bhnk,hkm->bhnm", w, M)


def dense_ssm(blocks: Blocks, u: Tensor, K: Tensor, s0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The parallel form of the dense SSM from a carried state: ``(y (B, H, T), x_{T-1} (B, H, N))``.

    Args:
        blocks: ``ssm_blocks(Abar, Bbar, C, T, carry=s0 is not None)``.
        u: input ``(B, H, T)``.
        K: the kernel ``(H, >= T)``: ``blocks.K``, or one the caller computed otherwise (S4's Cauchy kernel).
        s0: the state before ``u[..., 0]`` ``(B, H, N)``, or None for zeros (its terms are skipped).

    ``y`` excludes the skip term ``D u``.
    """
    T, c = blocks.T, blocks.c
    if u.shape[-1] != T:
        raise ValueError(f"blocks were made for T={T}, got u of length {u.shape[-1]}")
    y = causal_conv_fft(u, K[..., :T])  # (B, H, T)
    # final state: m = i c + r over the reversed input, zero-padded to a power of two of blocks
    nc2 = 1 << len(blocks.folds)
    w = _rows_times(F.pad(u.flip(-1), (0, nc2 * c - T)).unflatten(-1, (nc2, c)), blocks.right.mT)  # (B, H, nc2, N)
    for fold in blocks.folds:  # sum_i Ac^i w_i: pairs fold as w_2i + Ac^{2^k} w_2i+1
        w = w[..., 0::2, :] + _rows_times(w[..., 1::2, :], fold.mT)
    x = w[..., 0, :]  # (B, H, N)
    if s0 is not None:
        if blocks.A_T is None or blocks.left is None:
            raise ValueError("a carried state needs ssm_blocks(..., C, T, carry=True)")
        # y_{ic+r} += (C Abar^{ic}) (Abar^{r+1} s0)
        V = _krylov((blocks.Abar @ s0[..., None])[..., 0], blocks.steps)  # (B, H, N, c)
        y = y + (blocks.left @ V).flatten(-2)[..., :T]
        x = x + (blocks.A_T @ s0[..., None])[..., 0]
    return y, x
