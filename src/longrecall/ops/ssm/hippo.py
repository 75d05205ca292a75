"""HiPPO-LegS and its normal-plus-low-rank (NPLR) form, shared by LSSL (dense A) and S4 (diagonal plus rank 1).

Gu et al. 2020 (HiPPO, arXiv 2008.07669) and Gu, Goel, Re 2022 (S4, arXiv 2111.00396), section 3 and
appendix C.1.  With ``p_n = sqrt(n + 1/2)``, ``A + p p^T = S`` is ``-I/2`` plus a skew-symmetric matrix, hence
normal: ``S = V diag(Lambda) V^*`` with ``V`` unitary and ``Lambda = -1/2 + i w``.  In that basis
``A = Lambda - P P^*``, ``P = V^* p``, ``B = V^* B_legs``.  The eigenvalues come in conjugate pairs with
conjugate eigenvectors, so a real system keeps one of each pair: ``M = N/2`` modes ``s`` stand for the
full conjugate-symmetric state ``[s, conj(s)]``, and every full sum is ``2 Re`` of a sum over the kept half.

The *real representation* ``r = (Re s_0, Im s_0, Re s_1, Im s_1, ...)`` (the interleaved layout of
``torch.view_as_real``) turns that half-complex system into an ordinary real ``N``-dimensional one,
``dplr_to_real``: the dense system the LSSL-style reference kernels and the carried-state terms run on.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["NPLR", "hippo_legs", "legs_nplr", "dplr_to_real", "output_from_real"]


class NPLR(NamedTuple):
    """``A_legs = V_full (diag(Lambda_full) - P_full P_full^*) V_full^*`` with ``V_full = [V, conj V]``."""

    Lambda: Tensor  # (N/2,) complex, Re = -1/2, Im < 0 (the kept half, as the S4 reference keeps it)
    P: Tensor  # (N/2,) complex: V^* p
    B: Tensor  # (N/2,) complex: V^* B_legs
    V: Tensor  # (N, N/2) complex: orthonormal eigenvectors of the kept half


def hippo_legs(N: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """HiPPO-LegS ``A (N, N)`` and ``B (N,)``: ``A_nk = -sqrt(2n+1) sqrt(2k+1)`` (n > k), ``-(n+1)`` (n = k), 0."""
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(n + 1)
    return A.to(dtype), r.to(dtype)


def legs_nplr(N: int) -> NPLR:
    """The NPLR diagonalisation of HiPPO-LegS in float64 / complex128, N even."""
    if N < 2 or N % 2:
        raise ValueError(f"N must be a positive even int, got {N!r}")
    A, B = hippo_legs(N)
    p = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    skew = A + p[:, None] * p[None, :] + 0.5 * torch.eye(N, dtype=torch.float64)
    # -i * skew is Hermitian: eigh gives real w and a unitary V, skew = V diag(i w) V^*
    w, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # ascending: the first N/2 have w < 0
    V = V[:, : N // 2]
    Lambda = torch.complex(torch.full((N // 2,), -0.5, dtype=torch.float64), w[: N // 2])
    Vh = V.conj().T
    return NPLR(Lambda, Vh @ p.to(V.dtype), Vh @ B.to(V.dtype), V)


def dplr_to_real(Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The half-complex DPLR system ``A = Lambda - P P^*`` as a real one in the interleaved representation.

    Args (complex, ``(..., M)``): ``Lambda``, ``P``, ``B``, and ``C`` with ``y = 2 Re(sum_m C_m s_m)``.

    Returns:
        ``A (..., 2M, 2M)``, ``B (..., 2M)``, ``C (..., 2M)`` real: ``r' = A r + B u``, ``y = C . r``.
    """
    a, b = Lambda.real, Lambda.imag  # (..., M)
    block = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # (..., M, 2, 2)
    M = a.shape[-1]
    eye = torch.eye(M, dtype=a.dtype, device=a.device)
    A = torch.einsum("...mij,mn->...minj", block, eye).reshape(*a.shape[:-1], 2 * M, 2 * M)
    # (P P^* x)_half = P 2 Re(sum conj(P) s) = p_r (2 p_r . r): rank one, symmetric
    p = _interleave(P)  # (..., 2M)
    A = A - 2 * p[..., :, None] * p[..., None, :]
    return A, _interleave(B), 2 * _interleave(C.conj())


def _interleave(z: Tensor) -> Tensor:
    return torch.stack([z.real, z.imag], -1).flatten(-2)  # (..., M) complex -> (..., 2M): view_as_real's layout


def output_from_real(C_real: Tensor) -> Tensor:
    """Inverse of ``dplr_to_real``'s C map: ``(..., 2M)`` real -> ``(..., M)`` complex."""
    return torch.complex(C_real[..., 0::2], -C_real[..., 1::2]) / 2
