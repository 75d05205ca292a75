"""S4's kernel: the truncated generating function of a DPLR system at the roots of unity, by Cauchy sums.

Gu, Goel, Re 2022 (arXiv 2111.00396), section 3.3, Algorithm 1 and appendix C.3.  For the bilinear
discretisation of ``A = Lambda - P P^*`` (full, conjugate-symmetric) with step ``dt`` and ``C~ = C (I - Abar^L)``::

    Khat(z) = sum_{j < L} C Abar^j Bbar z^j = C~ (I - Abar z)^{-1} Bbar            (z^L = 1)
            = 2/(1+z) C~ (g(z) - A)^{-1} B,   g(z) = (2/dt) (1-z)/(1+z)
            = 2 [k00 - (1+z) k01 k10 / (1 + (1+z) k11)]                          (Woodbury, rank 1)
    k_uv(z) = sum_full v_n / ((2/dt)(1-z) - Lambda_n (1+z)),  v = C~ B, C~ P, P^* B, P^* P
    K = irfft(Khat at z_k = exp(-2 pi i k / L), k = 0..L/2)

The Cauchy sums are written in homogeneous form, ``1/(a - Lambda b)`` with ``a = (2/dt)(1-z)``,
``b = 1+z`` (the paper's ``(2/(1+z)) / (g - Lambda)``): the Nyquist node ``z = -1`` is then no pole, where
the paper's form divides 0 by 0.  Each full sum is the kept half plus its conjugate pair.
Cost ``O(H N L)`` (the naive Cauchy sum); ``naive.krylov_kernel_naive`` on ``hippo.dplr_to_real`` is the spec.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["cauchy", "dplr_kernel", "roots_of_unity"]


def roots_of_unity(L: int, dtype: torch.dtype = torch.complex128, device=None) -> Tensor:
    """``z_k = exp(-2 pi i k / L)`` for ``k = 0..L//2`` (the rfft nodes): ``(L//2 + 1,)``."""
    angle = torch.arange(L // 2 + 1, dtype=torch.float64, device=device) * (-2 * math.pi / L)
    return torch.polar(torch.ones_like(angle), angle).to(dtype)  # angles in float64, then cast


def cauchy(v: Tensor, a: Tensor, b: Tensor, Lambda: Tensor) -> Tensor:
    """``sum_n v_n / (a - Lambda_n b) + conj(v_n) / (a - conj(Lambda_n) b)`` over the kept half.

    Args:
        v: ``(..., R, M)`` numerators (R of them share the denominators); ``Lambda (..., M)``.
        a, b: ``(..., Z)`` and ``(Z,)`` homogeneous coordinates of the nodes.

    Returns:
        ``(..., R, Z)``.
    """
    a = a[..., None, :]
    # addcmul and reciprocal: 3-5x faster than the spelled-out complex expression on CPU
    r = torch.addcmul(a, Lambda[..., None], b, value=-1).reciprocal()  # (..., M, Z)
    r_conj = torch.addcmul(a, Lambda.conj()[..., None], b, value=-1).reciprocal()
    return v @ r + v.conj() @ r_conj


def dplr_kernel(Lambda: Tensor, P: Tensor, B: Tensor, Ct: Tensor, dt: Tensor, L: int) -> Tensor:
    """The length-``L`` kernel ``K_j = C Abar^j Bbar`` of ``A = Lambda - P P^*`` from ``C~ = C (I - Abar^L)``.

    Args:
        Lambda, P, B, Ct: ``(H, M)`` complex, the kept half of each conjugate pair.
        dt: ``(H,)`` real steps.
        L: kernel length (the number of roots of unity).

    Returns:
        ``K (H, L)`` real.
    """
    z = roots_of_unity(L, Lambda.dtype, Lambda.device)  # (L//2 + 1,)
    a, b = (2 / dt)[:, None] * (1 - z), 1 + z  # (H, Z), (Z,)
    v = torch.stack([Ct * B, Ct * P, P.conj() * B, P.conj() * P], dim=-2)  # (H, 4, M)
    k00, k01, k10, k11 = cauchy(v, a, b, Lambda).unbind(-2)  # (H, Z) each
    khat = 2 * (k00 - b * k01 * k10 / (1 + b * k11))
    return torch.fft.irfft(khat, n=L)
