"""H3 (Hungry Hungry Hippos): a shift SSM and a diagonal SSM with multiplicative q, k, v gating."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..modules import ShortConvolution
from ..ops.ssm import ParamCache, diagonal
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_int

__all__ = ["H3", "H3State"]


class H3State(NamedTuple):
    shift: Tensor  # (B, D, N - 1): the shift SSM's state, the last N - 1 keys before the shift
    ssm: Tensor  # (B, H, d, d, N/2, 2): the diagonal SSM's complex modes per head entry, as (re, im)


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
    D kv_t`` (s: (B, H, d, d, N/2) complex).  The diagonal SSM has S4D's parameterisation and init
    (``diag_log_dt``, ``diag_log_A_real``, ``diag_A_imag``, ``diag_C``, ``diag_D``: ZOH, S4D-Lin/-Inv, dt
    log-uniform in [dt_min, dt_max], C complex normal, D ~ N(0, 1), no weight decay on the dynamics) and runs
    on :mod:`~longrecall.ops.ssm.diagonal` (FFT convolution, the carried state's response and the final state
    on factorised powers; the kernel memoised at inference); the shift SSM is a ``ShortConvolution``.

    Kept from the reference: one shift and one diagonal SSM of the same N = ``d_state`` (64), the shift SSM
    per channel and the diagonal SSM per head (shared by the head's d x d entries), ``C_shift`` and ``D_k``
    ~ N(0, 1) (our reading of the code's ``torch.randn`` init), ``head_dim`` 1 by default (the reference's
    default; then kv is the product k_bar * v), ``nn.Linear`` projections with bias.
    Departures: the shift SSM's ``B`` is fixed at e_1 as in the paper (the code also lets it train); the
    output channel order is (head, entry) rather than the code's (entry, head), a permutation of ``W_o``'s
    inputs; no dropout.  Not yet compared line by line with the reference code.

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
        check_int(head_dim=head_dim)
        diagonal.check_args(d_state=d_state, dt_min=dt_min, dt_max=dt_max, init=init)
        if self.d_model % head_dim:
            raise ArgumentError("head_dim", f"an int dividing d_model={self.d_model}", repr(head_dim))
        D, N = self.d_model, int(d_state)
        self.d_state, self.head_dim, self.n_heads = N, int(head_dim), D // head_dim
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.shift = ShortConvolution(D, N, bias=False, activation=None)  # weight (D, 1, N): C flipped in time
        nn.init.normal_(self.shift.weight)
        self.k_D = nn.Parameter(torch.randn(D))
        log_dt, log_A_real, A_imag, C = diagonal.s4d_init(self.n_heads, N, init, dt_min, dt_max)  # one per head
        self.diag_log_dt = nn.Parameter(log_dt)  # (H,)
        self.diag_log_A_real = nn.Parameter(log_A_real)  # (H, M)
        self.diag_A_imag = nn.Parameter(A_imag)  # (H, M)
        self.diag_C = nn.Parameter(C)  # (H, M, 2): complex as (re, im)
        self.diag_D = nn.Parameter(torch.randn(self.n_heads))
        for param in (self.diag_log_dt, self.diag_log_A_real, self.diag_A_imag):
            param._no_weight_decay = True
        self.out_proj = nn.Linear(D, D)
        self._cache_kernels = ParamCache(size=5)  # the discretisation and 4 lengths' plans

    def _kernel_params(self) -> tuple[Tensor, ...]:
        return (self.diag_log_dt, self.diag_log_A_real, self.diag_A_imag, self.diag_C)

    def _get(self, T: int | None) -> tuple[diagonal.Disc, diagonal.Plan | None]:
        """The diagonal SSM's discretisation and (for ``T``) plan: cached at inference, fresh otherwise."""
        params, cache = self._kernel_params(), self._cache_kernels
        d = cache.get(params, lambda: diagonal.s4d_discretize(*params), "disc")
        return d, (None if T is None else cache.get(params, lambda: diagonal.plan(d, T), T))

    def kernel(self, T: int) -> Tensor:
        """The diagonal SSM's convolution kernel ``K (H, T)`` (for tests and inspection)."""
        return diagonal.kernel(diagonal.s4d_discretize(*self._kernel_params()), T)

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
        # the core's layout, heads last before the modes: (B, d, d, H, M); a view, never written
        return torch.view_as_complex(state.ssm.contiguous()).movedim(1, -2)

    def _heads(self, t: Tensor) -> Tensor:
        """(..., D) -> (..., H, d)."""
        return t.unflatten(-1, (self.n_heads, self.head_dim))

    def _kv(self, x: Tensor, buffer: Tensor, step: bool) -> tuple[Tensor, Tensor, Tensor]:
        """q (..., H, d), the outer products kv (..., H, d, d) and the new shift buffer, for x (B, [T,] D)."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        k_bar, buffer = (self.shift.step if step else self.shift)(k, buffer)
        k_bar = self._heads(k_bar + self.k_D * k)
        return self._heads(q), k_bar.unsqueeze(-1) * self._heads(v).unsqueeze(-2), buffer

    def _output(self, q: Tensor, S: Tensor) -> Tensor:
        """o^h = (q^h)^T S^h for q (..., H, d), S (..., H, d, d); concatenated and projected: (..., D)."""
        return self.out_proj((q.unsqueeze(-1) * S).sum(-2).flatten(-2))

    @staticmethod
    def _state(shift: Tensor, s: Tensor) -> H3State:
        """The state from the shift buffer and the modes ``s (B, d, d, H, M)`` in the core's layout."""
        return H3State(shift, torch.view_as_real(s.movedim(-2, 1).contiguous()))

    def step(self, x: Tensor, state: H3State) -> tuple[Tensor, H3State]:
        self.check_input(x, step=True)
        s = self._check_state(state, x.shape[0])  # (B, d, d, H, M) complex
        q, kv, shift = self._kv(x, state.shift, step=True)  # (B, H, d), (B, H, d, d)
        S, s = diagonal.step(self._get(None)[0], self.diag_D, kv.movedim(1, -1), s)  # (B, d, d, H), new modes
        return self._output(q, S.movedim(-1, 1)), self._state(shift, s)

    def _forward(self, x: Tensor, state: H3State) -> tuple[Tensor, H3State]:
        s0 = self._check_state(state, x.shape[0])  # (B, d, d, H, M) complex
        q, kv, shift = self._kv(x, state.shift, step=False)  # (B, T, H, d), (B, T, H, d, d)
        u = kv.permute(0, 3, 4, 2, 1).contiguous()  # (B, d, d, H, T); time contiguous for the FFT and the matmuls
        d, p = self._get(x.shape[1])
        S, s = diagonal.apply(d, p, self.diag_D, u, s0)  # (B, d, d, H, T), (B, d, d, H, M)
        return self._output(q, S.permute(0, 4, 3, 1, 2)), self._state(shift, s)  # S: (B, T, H, d, d)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_state={self.d_state}, head_dim={self.head_dim}, n_heads={self.n_heads}"
