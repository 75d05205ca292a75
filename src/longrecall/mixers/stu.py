"""STU: the Spectral Transform Unit of Agarwal, Suo, Chen, Hazan 2023 (arXiv 2312.06837); see ``STU``."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_bool, check_int

__all__ = ["STU", "STUState", "hankel_matrix", "hankel_matvec", "hankel_eigh", "hankel_eigh_dense"]

F64 = torch.float64


# ----------------------------------------------------------------------------- the fixed filters


def _hankel_entries(L: int) -> Tensor:
    """``g[s] = 2 / ((s + 2)^3 - (s + 2))`` for s = 0..2L-2: Z_ij = g[i + j] (0-indexed), float64."""
    s = torch.arange(2, 2 * L + 1, dtype=F64)
    return 2 / (s**3 - s)


def hankel_matrix(L: int) -> Tensor:
    """The dense ``(L, L)`` Hankel matrix ``Z_ij = 2 / ((i + j)^3 - (i + j))``, i, j = 1..L (float64)."""
    i = torch.arange(L)
    return _hankel_entries(L)[i[:, None] + i]


def hankel_matvec(v: Tensor) -> Tensor:
    """``Z v`` for ``v (L, p)`` by FFT in O(p L log L): a correlation of ``v`` with the entries ``g``."""
    L = v.shape[0]
    # (Z v)_i = sum_j g[i + j] v_j = (g * flip(v))[i + L - 1]; the linear convolution spans 0..3L-3, so a
    # circular one of size 2L wraps only indices >= 2L, never the ones read (L-1..2L-2)
    g_f = torch.fft.rfft(_hankel_entries(L), n=2 * L)  # (L + 1,)
    out = torch.fft.irfft(g_f[:, None] * torch.fft.rfft(v.flip(0), n=2 * L, dim=0), n=2 * L, dim=0)  # (2L, p)
    return out[L - 1 : 2 * L - 1]


def _sign_fixed(phi: Tensor) -> Tensor:
    """Each eigenvector's sign chosen so that its entry of largest magnitude is positive."""
    peak = phi.gather(0, phi.abs().argmax(0, keepdim=True))  # (1, K)
    return phi * torch.where(peak < 0, -1.0, 1.0)


def hankel_eigh_dense(L: int, K: int) -> tuple[Tensor, Tensor]:
    """The reference: top-K eigenpairs of the dense Z by ``torch.linalg.eigh``, O(L^3) (float64).

    Returns ``sigma (K,)`` descending and ``phi (L, K)`` orthonormal columns, signs as ``_sign_fixed``.
    """
    sigma, phi = torch.linalg.eigh(hankel_matrix(L))  # ascending
    return sigma.flip(0)[:K], _sign_fixed(phi.flip(1)[:, :K])


@functools.lru_cache(maxsize=8)
def _hankel_eigh_cached(L: int, K: int, iters: int, oversample: int) -> tuple[Tensor, Tensor]:
    p = min(L, K + oversample)
    q = torch.randn(L, p, generator=torch.Generator().manual_seed(0), dtype=F64)
    for _ in range(iters):
        q, _ = torch.linalg.qr(hankel_matvec(q))  # (L, p): converges to Z's top-p eigenspace
    s = q.T @ hankel_matvec(q)  # (p, p) Rayleigh-Ritz
    sigma, v = torch.linalg.eigh((s + s.T) / 2)
    return sigma.flip(0)[:K], _sign_fixed(q @ v.flip(1)[:, :K])


def hankel_eigh(L: int, K: int, *, iters: int = 4, oversample: int = 16) -> tuple[Tensor, Tensor]:
    """Top-K eigenpairs of Z by subspace iteration with FFT products: O(iters (K + oversample) L log L).

    Z's spectrum falls geometrically (2-16x per index; sigma_1 = 0.36, sigma_24 = 3e-12 at L = 65,536), so
    a block of K + 16 vectors reaches float64 precision in two or three iterations; equal to
    ``hankel_eigh_dense`` up to the conditioning both share (eigenvector error ~ eps sigma_1 / gap).
    Deterministic (seeded start), memoised; returns fresh ``sigma (K,)`` descending, ``phi (L, K)``.
    """
    sigma, phi = _hankel_eigh_cached(L, K, iters, oversample)
    return sigma.clone(), phi.clone()


# ----------------------------------------------------------------------------- the mixer


class STUState(NamedTuple):
    inputs: Tensor  # (B, t, D): every input so far, the filters span the whole history
    outputs: Tensor  # (B, k_y, D): the last k_y outputs, oldest first (output autoregression)


@register_mixer("stu")
class STU(Mixer):
    """STU: spectral state-space layer, fixed Hankel-eigenvector filters (Agarwal, Suo, Chen, Hazan 2023,
    "Spectral State Space Models", arXiv 2312.06837).

    Fixed filters (never learned): the top-K eigenpairs ``(sigma_k, phi_k)`` of the ``L x L`` Hankel
    matrix ``Z_ij = 2 / ((i + j)^3 - (i + j))`` (i, j = 1..L, L = ``max_len``), scaled by sigma_k^(1/4),
    with the alternating-sign ("negative") copies.  Per token t, with row vectors of width D::

        f+_k[j] = sigma_k^(1/4) phi_k(j + 1),   f-_k[j] = (-1)^j f+_k[j]          # lag j = 0..L-1
        U+-_{t,k} = sum_{j=0..t} f+-_k[j] u_{t-j}                                 # (D,) spectral features
        delta_t = sum_k (U+_{t,k} M+_k + U-_{t,k} M-_k) + sum_{i=0..k_u-1} u_{t-i} Mu_i
        y_t     = delta_t + sum_{i=1..k_y} y_{t-i} My_i                           # every M: (D, D), learned

    Forms: ``step`` is a direct dot product of the filters with the kept input history (O(t K D) per
    token); ``forward`` convolves by FFT over the carried history and the new inputs (zero-padded to
    2N, N = history + T), contracting features with M+- in frequency space, so a chunk after t0 carried
    tokens costs O((t0 + T) log(t0 + T) K D + (t0 + T) K D^2); the output AR terms run as a scan over time
    in both (as in the authors' code).  The state is the input history, so it grows linearly, and a
    sequence longer than ``max_len`` (carried + new tokens) raises an ``ArgumentError`` naming ``max_len``.

    Departures and doubts:
    - Index shift: the paper writes the features as U_{t-2} with U_{t,k} = sum_{i>=1} u_{t-i} phi_k(i)
      (spectral part from lag 3) beside a fixed y_{t-2} term.  We pair lag j with phi_k(j + 1) from lag
      0 and learn all k_y output coefficients (the card's general form; the paper's fixed-y_{t-2}
      variant is My_1 = 0, My_2 = I), as we recall the authors' released code doing, which dropped
      the two-step shift as incorrect (from memory, unverified).
    - Init (the paper gives none): M+- ~ N(0, 1/D), Mu ~ N(0, 1/(k_u D)), My = 0.  We recall the
      authors' code starting M+ at zero; we do not, so the long filters act from the first step.
    - Filters by subspace iteration with FFT Hankel products (``hankel_eigh``), not a dense eigh:
      equal to it in float64 (tested), and cheap at L = 65,536.  Held as a buffer in the module's dtype.
    - My is unconstrained, as in the paper: a learned output recurrence can become unstable.
    - No normalisation, nonlinearity or gating inside the mixer (the block around it supplies them).
    - Numerics: at short L sigma_k reaches float64 rounding (~1e-16 against sigma_1 = 0.36) past k ~ 17
      (L = 64) or k ~ 22 (L = 256); those filters are deterministic but meaningless: keep K small there.
    - The default ``max_len`` (8192) is ours; the paper sets L to the task's length, as callers should
      (the eigenvectors depend on L).  Filters are computed once per (L, K) and memoised.

    Args:
        d_model: width D (input and output).
        max_len: L, the Hankel size and the longest sequence (carried history + new tokens) (8192).
        num_filters: K, eigenvectors kept, <= max_len (24, the top of the card's 16-24).
        k_u: input autoregressive terms, lags 0..k_u-1 (3, the paper's); 0 disables.
        k_y: output autoregressive terms, lags 1..k_y (2; the card gives k_y in {0, 2}); 0 disables.
        negative_features: also use the alternating-sign filters f- (True).

    State (:class:`STUState`): linear in T, ``inputs (B, t, D)`` and ``outputs (B, k_y, D)``: ``(t + k_y) D``
    numbers per sequence (``4 (t + 2) D`` bytes in float32 with the defaults).
    """

    state_growth = "linear"
    contract_kwargs = {"max_len": 32, "num_filters": 8}

    def __init__(
        self,
        d_model: int,
        *,
        max_len: int = 8192,
        num_filters: int = 24,
        k_u: int = 3,
        k_y: int = 2,
        negative_features: bool = True,
    ):
        super().__init__(d_model)
        check_int(max_len=max_len, num_filters=num_filters)
        check_int(minimum=0, k_u=k_u, k_y=k_y)
        check_bool(negative_features=negative_features)
        if num_filters > max_len:
            raise ArgumentError("num_filters", f"<= max_len={max_len}", repr(num_filters))
        D, K = self.d_model, num_filters
        self.max_len, self.num_filters, self.k_u, self.k_y = max_len, K, k_u, k_y
        self.negative_features = negative_features

        sigma, phi = hankel_eigh(max_len, K)
        f = phi * sigma.clamp(min=0) ** 0.25  # (L, K); the clamp only guards rounding below zero
        if negative_features:
            sign = 1 - 2 * (torch.arange(max_len) % 2)  # (-1)^j
            f = torch.cat([f, f * sign[:, None]], dim=1)  # (L, 2K)
        self.register_buffer("filters", f.to(torch.get_default_dtype()), persistent=False)  # recomputed at init
        self.m_phi_plus = nn.Parameter(torch.randn(K, D, D) / D**0.5)
        self.m_phi_minus = nn.Parameter(torch.randn(K, D, D) / D**0.5) if negative_features else None
        self.m_u = nn.Parameter(torch.randn(k_u, D, D) / (k_u * D) ** 0.5) if k_u else None
        self.m_y = nn.Parameter(torch.zeros(k_y, D, D)) if k_y else None

    def _m_phi(self) -> Tensor:
        """``(2K or K, D, D)``: M+ then M- stacked, matching the columns of ``filters``."""
        if self.m_phi_minus is None:
            return self.m_phi_plus
        return torch.cat([self.m_phi_plus, self.m_phi_minus])

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> STUState:
        p = self.m_phi_plus
        kw = dict(device=device or p.device, dtype=dtype or p.dtype)
        D = self.d_model
        return STUState(torch.zeros(batch_size, 0, D, **kw), torch.zeros(batch_size, self.k_y, D, **kw))

    def _check_state(self, state: STUState, batch: int, new: int) -> None:
        ok = isinstance(state, STUState) and state.inputs.dim() == 3 and state.inputs.shape[0] == batch
        ok = ok and state.inputs.shape[2] == self.d_model
        ok = ok and tuple(state.outputs.shape) == (batch, self.k_y, self.d_model)
        if not ok:
            got = tuple(map(tuple, (s.shape for s in state))) if isinstance(state, STUState) else type(state).__name__
            want = f"inputs (B={batch}, t, {self.d_model}) and outputs ({batch}, {self.k_y}, {self.d_model})"
            raise ValueError(f"state must be STUState with {want}, got {got}")
        if state.inputs.shape[1] + new > self.max_len:
            length = f"{state.inputs.shape[1]} carried + {new} new = {state.inputs.shape[1] + new} tokens"
            raise ArgumentError("max_len", "at least the sequence length (the Hankel filters' length)",
                                f"max_len={self.max_len} for {length}")

    def _ar_outputs(self, delta: Tensor, outputs: Tensor) -> tuple[Tensor, Tensor]:
        """Output autoregression ``y_t = delta_t + sum_i y_{t-i} My_i`` over ``delta (B, T, D)``, a scan."""
        if self.m_y is None:
            return delta, outputs
        m_y = self.m_y.flatten(0, 1)  # (k_y D, D): rows for y_{t-1} first
        window = list(outputs.unbind(1))  # oldest first
        ys = []
        for d_t in delta.unbind(1):
            ys.append(d_t + torch.cat(window[::-1], dim=-1) @ m_y)  # (B, D)
            window = window[1:] + ys[-1:]
        return torch.stack(ys, 1), torch.stack(window, 1)  # stack: fresh (B, k_y, D), not a view

    def step(self, x: Tensor, state: STUState) -> tuple[Tensor, STUState]:
        self.check_input(x, step=True)
        self._check_state(state, x.shape[0], 1)
        inputs = torch.cat([state.inputs, x[:, None]], 1)  # (B, t + 1, D): new tensor, state untouched
        rev = inputs.flip(1)  # (B, t + 1, D): rev[:, j] = u_{t-j}
        feats = torch.einsum("bjd,jk->bkd", rev, self.filters[: rev.shape[1]])  # (B, 2K, D)
        delta = torch.einsum("bkd,kde->be", feats, self._m_phi())  # (B, D)
        if self.m_u is not None:
            lags = min(self.k_u, rev.shape[1])
            delta = delta + torch.einsum("bjd,jde->be", rev[:, :lags], self.m_u[:lags])
        y, outputs = self._ar_outputs(delta[:, None], state.outputs)
        return y[:, 0], STUState(inputs, outputs)

    def _forward(self, x: Tensor, state: STUState) -> tuple[Tensor, STUState]:
        B, T, D = x.shape
        self._check_state(state, B, T)
        z = torch.cat([state.inputs, x], 1)  # (B, N, D): history + new inputs, the new state
        N = z.shape[1]
        work = torch.promote_types(z.dtype, torch.float32)  # pocketfft has no half-precision kernels
        u_f = torch.fft.rfft(z.to(work).transpose(1, 2).contiguous(), n=2 * N)  # (B, D, N + 1)
        k_f = torch.fft.rfft(self.filters[:N].to(work).T, n=2 * N)  # (2K, N + 1)
        feats = u_f.transpose(1, 2)[:, :, None, :] * k_f.T[None, :, :, None]  # (B, N + 1, 2K, D)
        # real matmuls on [Re; Im]: (B, N + 1, 2, 2K D) @ (2K D, D)
        parts = torch.view_as_real(feats).movedim(-1, 2).reshape(B, N + 1, 2, -1)
        y_f = (parts @ self._m_phi().to(work).flatten(0, 1)).movedim(2, -1).contiguous()  # (B, N + 1, D, 2)
        y = torch.fft.irfft(torch.view_as_complex(y_f).transpose(1, 2), n=2 * N)[..., N - T : N]  # (B, D, T)
        delta = y.transpose(1, 2).to(x.dtype)  # (B, T, D)
        if self.m_u is not None:
            zp = F.pad(z, (0, 0, self.k_u - 1, 0))  # (B, N + k_u - 1, D): zeros before the first token
            end = N + self.k_u - 1
            for i in range(self.k_u):
                delta = delta + zp[:, end - T - i : end - i] @ self.m_u[i]
        y, outputs = self._ar_outputs(delta, state.outputs)
        return y, STUState(z, outputs)

    def extra_repr(self) -> str:
        extra = f"max_len={self.max_len}, num_filters={self.num_filters}, k_u={self.k_u}, k_y={self.k_y}"
        return f"{super().extra_repr()}, {extra}, negative_features={self.negative_features}"
