"""H3 (Hungry Hungry Hippos): a shift SSM and a diagonal SSM with multiplicative q, k, v gating."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules import ShortConvolution
from ..ops.conv import causal_conv_fft_freq
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_choice, check_int, check_positive
from .s4d import INITS, S4D

__all__ = ["H3", "H3State"]


class H3State(NamedTuple):
    shift: Tensor  # (B, D, N - 1): the shift SSM's state, the last N - 1 keys before the shift
    ssm: Tensor  # (B, H, d, d, N/2, 2): the diagonal SSM's complex modes per head entry, as (re, im)


def _hd(t: Tensor) -> Tensor:
    """A per-head tensor (H, ...) broadcast over a head's (d, d) entries: (H, 1, 1, ...)."""
    return t[:, None, None]


@register_mixer("h3")
class H3(Mixer):
    """H3 (Fu, Dao, Saab, Thomas, Rudra, Re 2023, "Hungry Hungry Hippos: Towards Language Modeling with State
    Space Models", arXiv 2212.14052, Algorithm 1), the layer of the authors' ``safari``/``H3`` code that
    Zoology runs as a baseline.  With heads of width d (``head_dim``) and H = D / d heads::

        q, k, v = x W_q + b_q, x W_k + b_k, x W_v + b_v         # (B, T, D) each, then split into H heads of d
        k_bar_t = sum_{j < N} C_j k_{t-j} + D_k k_t                # shift SSM: A the shift matrix, B = e_1, so its
                                                                   # kernel is C (D, N); a per-channel FIR
        S_t = sum_{j <= t} K_j kv_{t-j} + D kv_t,  kv_t = k_bar_t^h (v_t^h)^T   # diagonal SSM per head, (d, d)
        K_j = 2 Re(sum_n W_n exp(dt A_n)^j)                        # S4D-Lin kernel of N/2 complex modes per head
        o_t^h = (q_t^h)^T S_t^h,   y = concat_h(o^h) W_o + b_o      # (B, T, D)

    Recurrent form of the diagonal SSM: ``s_t = exp(dt A) s_{t-1} + kv_t``, ``S_t = 2 Re(sum_n W_n s_t,n) +
    D kv_t`` (s: (B, H, d, d, N/2) complex).  The diagonal SSM is an :class:`~longrecall.mixers.s4d.S4D`
    module used for its discretisation, kernel and kernel cache (ZOH, S4D-Lin/-Inv init, dt log-uniform in
    [dt_min, dt_max], C complex normal, D ~ N(0, 1), no weight decay on the dynamics); its own GELU/GLU
    output stage is removed, since H3 has ``W_o``.  The parallel form convolves by FFT with that kernel and
    adds the carried state's response on S4D's factorised powers; the shift SSM is a ``ShortConvolution``.

    Kept from the reference: one shift and one diagonal SSM of the same N = ``d_state`` (64), the shift SSM
    per channel and the diagonal SSM per head (shared by the head's d x d entries), ``C_shift`` and ``D_k``
    ~ N(0, 1) (our reading of the code's ``torch.randn`` init), ``head_dim`` 1 by default (the reference's
    default; then kv is the product k_bar * v), ``nn.Linear`` projections with bias.
    Departures: the shift SSM's ``B`` is fixed at e_1 as in the paper (the code also lets it train); the
    output channel order is (head, entry) rather than the code's (entry, head), a permutation of ``W_o``'s
    inputs; no dropout.  Written from memory of the reference (the search tools were not available).

    Args:
        d_model: width D.
        d_state: N, the shift SSM's taps and the diagonal SSM's real state size (even) (64).
        head_dim: d, dividing D (1).
        init, dt_min, dt_max: the diagonal SSM's S4D init ("lin"), step-size range (1e-3, 1e-1).

    State (:class:`H3State`): constant in T: the last N - 1 keys per channel and N/2 complex modes per head
    entry, ``(D (N - 1) + H d^2 N) * 4 = D (N - 1 + d N) * 4`` bytes per sequence in float32
    (32,512 bytes at D = 64 with the defaults).
    """

    state_growth = "constant"
    contract_kwargs = {"d_state": 4, "head_dim": 2}  # a shift shorter than the test sequences, 2 x 2 heads

    def __init__(self, d_model: int, *, d_state: int = 64, head_dim: int = 1, init: str = "lin",
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__(d_model)
        check_int(d_state=d_state, head_dim=head_dim)
        if d_state % 2:
            raise ArgumentError("d_state", "a positive even int (N/2 complex modes)", repr(d_state))
        if self.d_model % head_dim:
            raise ArgumentError("head_dim", f"an int dividing d_model={self.d_model}", repr(head_dim))
        check_choice("init", init, INITS)
        check_positive(dt_min=dt_min, dt_max=dt_max)
        D, N = self.d_model, int(d_state)
        self.d_state, self.head_dim, self.n_heads = N, int(head_dim), D // head_dim
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.shift = ShortConvolution(D, N, bias=False, activation=None)  # weight (D, 1, N): C flipped in time
        nn.init.normal_(self.shift.weight)
        self.k_D = nn.Parameter(torch.randn(D))
        self.ssm = S4D(self.n_heads, d_state=N, init=init, dt_min=dt_min, dt_max=dt_max)  # checks dt_min <= dt_max
        del self.ssm.out  # H3 has its own output projection
        self.out_proj = nn.Linear(D, D)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> H3State:
        p = self.k_D
        device, dtype = device or p.device, dtype or p.dtype
        H, d, M = self.n_heads, self.head_dim, self.d_state // 2
        shift = self.shift.init_state(batch_size, device=device, dtype=dtype)
        return H3State(shift, torch.zeros(batch_size, H, d, d, M, 2, device=device, dtype=dtype))

    def _check_state(self, state: H3State, batch: int) -> Tensor:
        H, d, M = self.n_heads, self.head_dim, self.d_state // 2
        want = ((batch, self.d_model, self.d_state - 1), (batch, H, d, d, M, 2))
        got = tuple(tuple(t.shape) for t in state) if isinstance(state, H3State) else type(state).__name__
        if got != want:
            raise ValueError(f"state must be H3State with shapes {want}, got {got}")
        return torch.view_as_complex(state.ssm.contiguous())  # (B, H, d, d, M); a view, never written

    def _heads(self, t: Tensor) -> Tensor:
        """(..., D) -> (..., H, d)."""
        return t.unflatten(-1, (self.n_heads, self.head_dim))

    def _kv(self, x: Tensor, buffer: Tensor, step: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q (..., H, d), the outer products kv (..., H, d, d) and the new shift buffer, for x (B, [T,] D)."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        k_bar, buffer = (self.shift.step if step else self.shift)(k, buffer)
        k_bar = self._heads(k_bar + self.k_D * k)
        return self._heads(q), k_bar.unsqueeze(-1) * self._heads(v).unsqueeze(-2), buffer

    def _output(self, q: Tensor, S: Tensor) -> Tensor:
        """o^h = (q^h)^T S^h for q (..., H, d), S (..., H, d, d); concatenated and projected: (..., D)."""
        return self.out_proj((q.unsqueeze(-1) * S).sum(-2).flatten(-2))

    def step(self, x: Tensor, state: H3State) -> tuple[Tensor, H3State]:
        self.check_input(x, step=True)
        s = self._check_state(state, x.shape[0])  # (B, H, d, d, M) complex
        q, kv, shift = self._kv(x, state.shift, step=True)  # (B, H, d), (B, H, d, d)
        disc, _ = self.ssm._get(None)
        s = _hd(disc.dA) * s + kv[..., None]  # a new tensor: the input state is untouched
        S = 2 * (_hd(disc.W) * s).real.sum(-1) + _hd(self.ssm.D) * kv  # (B, H, d, d)
        return self._output(q, S), H3State(shift, torch.view_as_real(s))

    def _forward(self, x: Tensor, state: H3State) -> tuple[Tensor, H3State]:
        B, T, _ = x.shape
        s0 = self._check_state(state, B)  # (B, H, d, d, M) complex
        q, kv, shift = self._kv(x, state.shift, step=False)  # (B, T, H, d), (B, T, H, d, d)
        u = kv.permute(0, 2, 3, 4, 1).contiguous()  # (B, H, d, d, T); time contiguous for the FFT and the matmuls
        disc, ker = self.ssm._get(T)
        c, nc, M = ker.c, ker.nc, disc.dA.shape[1]
        S = causal_conv_fft_freq(u, _hd(ker.k_f)) + _hd(self.ssm.D)[..., None] * u  # (B, H, d, d, T)
        # the carried state's response, 2 Re(sum_n W_n dA_n^{t+1} s0_n), on S4D's factorisation t = i c + r
        g = (_hd(disc.W * disc.dA) * s0)[..., None, :] * _hd(ker.hi)  # (B, H, d, d, nc, M)
        S0 = 2 * (torch.cat([g.real, -g.imag], dim=-1) @ _hd(ker.lo))  # (B, H, d, d, nc, c)
        S = S + S0.flatten(-2)[..., :T]
        # final state sum_m dA^m u_{T-1-m} + dA^T s0, m = i c + r, zero-padded past T
        w = F.pad(u.flip(-1), (0, nc * c - T)).unflatten(-1, (nc, c))  # (B, H, d, d, nc, c)
        inner = w @ _hd(ker.lo_t)  # (B, H, d, d, nc, 2M)
        s = (torch.complex(inner[..., :M], inner[..., M:]) * _hd(ker.hi)).sum(-2) + _hd(ker.dA_T) * s0
        return self._output(q, S.permute(0, 4, 1, 2, 3)), H3State(shift, torch.view_as_real(s))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_state={self.d_state}, head_dim={self.head_dim}, n_heads={self.n_heads}"
