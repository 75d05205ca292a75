"""RWKV-6 "Finch" time mixing: a matrix-valued linear RNN with data-dependent decay and token shift."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.linear_attn import IMPLS, linear_attn, state_dtype
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import check_choice, check_divisor, check_positive, check_ratio

__all__ = ["RWKV6", "RWKV6State"]

# log w_t = -exp(d_t) >= -e^4 ~ -54.6: finite in any precision (exp(-54.6) ~ 2e-24 already forgets
# everything), and cumulative sums inside a chunk stay moderate
MAX_DECAY_EXPONENT = 4.0
HEAD_SIZE_DIVISOR = 8  # the reference's ln_x eps is 1e-5 * head_size_divisor ** 2


class RWKV6State(NamedTuple):
    """Recurrent memory of one RWKV-6 layer: shift, the previous input x_{t-1} (B, D), activation dtype;
    wkv, the matrix memory (B, H, K, K), float32 or wider."""

    shift: Tensor
    wkv: Tensor


@register_mixer("rwkv6")
class RWKV6(Mixer):
    """RWKV-6 "Finch" time mixing (Peng et al. 2024, arXiv 2404.05892): ddlerp token shift, dynamic decay.

    "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence", section 4.  Per token,
    with ``xx = x_{t-1} - x_t`` (token shift) and H = D / head_size heads of K = V = head_size::

        ddlerp_*   = x_t + xx * (mu_* + tanh((x_t + xx * mu_x) A_*) B_*)    # eq. 13-14, * in {w, k, v, r, g}
        w_t        = exp(-exp(time_decay + tanh(ddlerp_w W_1) W_2))          # eq. 15-16, (D,) in (0, 1)
        r, k, v, g = ddlerp_* W_r, W_k, W_v, W_g
        wkv_t      = r_t (S_{t-1} + diag(u) k_t^T v_t)                       # eq. 18: read before write, bonus u
        S_t        = diag(w_t) S_{t-1} + k_t^T v_t                           # eq. 19, S: (K, V) per head
        o_t        = W_o (GroupNorm_heads(wkv_t) * silu(g_t))                # eq. 20-21

    i.e. ``ops.linear_attn`` with r as the query and ``bonus=time_faaaa`` (u).  Parameter names, shapes
    and init are the reference ``RWKV_Tmix_x060``'s (RWKV-LM, ``RWKV-v5/src/model.py``).

    Args:
        d_model: width D (the attention width ``dim_att`` equals D, as in the reference).
        head_size: K = V per head; must divide d_model (16 at CPU scale; the paper uses 64).
        mix_rank: rank of the ddlerp LoRA, one per w, k, v, r, g (32, ``D_MIX_LORA``).
        decay_rank: rank of the decay LoRA (64, ``D_DECAY_LORA``).
        init_depth: the layer's relative depth in [0, 1] used by the reference's depth-dependent
            init (``layer_id / (n_layer - 1)``); 0.5 = a middle layer.
        impl: "chunked" (parallel form) or "naive" (the sequential kernel) for ``forward``.
        chunk_size: chunk length of the chunked kernel (64).

    Deviations from the reference: (1) ``time_maa_w1`` and ``time_decay_w1`` start at
    U(-1e-4, 1e-4) instead of 0 (the reference's zeros leave ``time_maa_w2``/``time_decay_w2``
    without gradient at step 0); (2) the projections keep PyTorch's default init (the reference
    zeroes ``output``, which would leave every other parameter without gradient at step 0);
    (3) the decay exponent d_t is clamped at ``MAX_DECAY_EXPONENT`` (4).

    State (:class:`RWKV6State`): constant in T, ``D * elem + H * K * K * 4 = D * (elem + 4 * head_size)``
    bytes per sequence in float32 (``elem`` = activation size, 4 for float32): 4,352 B at D = 64.
    """

    state_growth = "constant"
    # small chunks and LoRAs so the contract's short sequences (T ~ 13) cross several chunks
    contract_kwargs = {"head_size": 4, "mix_rank": 4, "decay_rank": 4, "chunk_size": 4}

    def __init__(
        self,
        d_model: int,
        *,
        head_size: int = 16,
        mix_rank: int = 32,
        decay_rank: int = 64,
        init_depth: float = 0.5,
        impl: str = "chunked",
        chunk_size: int = 64,
    ):
        super().__init__(d_model)
        check_positive(mix_rank=mix_rank, decay_rank=decay_rank, chunk_size=chunk_size)
        check_choice("impl", impl, IMPLS)
        check_divisor("head_size", head_size, self.d_model, "d_model")
        check_ratio("init_depth", init_depth)
        self.head_size, self.n_heads = int(head_size), self.d_model // int(head_size)
        self.mix_rank, self.decay_rank, self.init_depth = int(mix_rank), int(decay_rank), float(init_depth)
        self.impl, self.chunk_size = impl, int(chunk_size)
        D, H, K = self.d_model, self.n_heads, self.head_size

        # the reference init, with ratio_0_to_1 = init_depth and ratio_1_to_almost0 = 1 - init_depth
        ratio_0_to_1, ratio_1_to_almost0 = self.init_depth, 1.0 - self.init_depth
        ddd = (torch.arange(D, dtype=torch.float32) / D).view(1, 1, D)
        self.time_maa_x = nn.Parameter(1.0 - torch.pow(ddd, ratio_1_to_almost0))
        self.time_maa_w = nn.Parameter(1.0 - torch.pow(ddd, ratio_1_to_almost0))
        self.time_maa_k = nn.Parameter(1.0 - torch.pow(ddd, ratio_1_to_almost0))
        self.time_maa_v = nn.Parameter(1.0 - (torch.pow(ddd, ratio_1_to_almost0) + 0.3 * ratio_0_to_1))
        self.time_maa_r = nn.Parameter(1.0 - torch.pow(ddd, 0.5 * ratio_1_to_almost0))
        self.time_maa_g = nn.Parameter(1.0 - torch.pow(ddd, 0.5 * ratio_1_to_almost0))
        self.time_maa_w1 = nn.Parameter(torch.empty(D, 5 * self.mix_rank).uniform_(-1e-4, 1e-4))  # ref: zeros
        self.time_maa_w2 = nn.Parameter(torch.empty(5, self.mix_rank, D).uniform_(-0.01, 0.01))

        n = torch.arange(D, dtype=torch.float32) / max(D - 1, 1)
        decay_speed = -6 + 5 * n ** (0.7 + 1.3 * ratio_0_to_1)  # d in [-6, -1]: w = exp(-exp(d)) in (0.69, 0.998)
        self.time_decay = nn.Parameter(decay_speed.view(1, 1, D))
        self.time_decay_w1 = nn.Parameter(torch.empty(D, self.decay_rank).uniform_(-1e-4, 1e-4))  # ref: zeros
        self.time_decay_w2 = nn.Parameter(torch.empty(self.decay_rank, D).uniform_(-0.01, 0.01))

        zigzag = ((torch.arange(D) + 1) % 3 - 1).float() * 0.1
        self.time_faaaa = nn.Parameter((ratio_0_to_1 * (1 - n) + zigzag).view(H, K))  # bonus u, (H, K)

        self.receptance = nn.Linear(D, D, bias=False)
        self.key = nn.Linear(D, D, bias=False)
        self.value = nn.Linear(D, D, bias=False)
        self.gate = nn.Linear(D, D, bias=False)
        self.output = nn.Linear(D, D, bias=False)
        self.ln_x = nn.GroupNorm(H, D, eps=1e-5 * HEAD_SIZE_DIVISOR**2)
        for name, param in self.named_parameters():  # the reference puts every time_* tensor in its no-decay groups
            if name.startswith("time_"):
                param._no_weight_decay = True

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> RWKV6State:
        device = self.time_decay.device if device is None else device
        dtype = self.receptance.weight.dtype if dtype is None else dtype
        H, K = self.n_heads, self.head_size
        shift = torch.zeros(batch_size, self.d_model, device=device, dtype=dtype)  # the reference pads with 0
        wkv = torch.zeros(batch_size, H, K, K, device=device, dtype=state_dtype(dtype))
        return RWKV6State(shift, wkv)

    def _mix(self, x: Tensor, x_prev: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """ddlerp and projections for x, x_prev (..., D): r, k, v (..., H, K), log decay (..., H, K), g (..., D)."""
        xx = x_prev - x
        xxx = torch.tanh((x + xx * self.time_maa_x.view(-1)) @ self.time_maa_w1)  # (..., 5 R)
        xxx = xxx.unflatten(-1, (5, self.mix_rank))  # (..., 5, R)
        mw, mk, mv, mr, mg = torch.einsum("...fr,frd->f...d", xxx, self.time_maa_w2).unbind(0)  # 5 x (..., D)
        mu = self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g  # (1, 1, D)
        xw, xk, xv, xr, xg = (x + xx * (m.view(-1) + dm) for m, dm in zip(mu, (mw, mk, mv, mr, mg), strict=True))

        r, k, v = (self._heads(proj(y)) for proj, y in ((self.receptance, xr), (self.key, xk), (self.value, xv)))
        d = self.time_decay.view(-1) + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2  # (..., D)
        log_decay = -torch.exp(d.to(dtype).clamp(max=MAX_DECAY_EXPONENT))  # log w_t, finite and < 0
        return r, k, v, self._heads(log_decay), F.silu(self.gate(xg))

    def _heads(self, t: Tensor) -> Tensor:
        """(..., D) -> (..., H, K)."""
        return t.unflatten(-1, (self.n_heads, self.head_size))

    def _output(self, wkv: Tensor, g: Tensor) -> Tensor:
        """Per-head GroupNorm of wkv (N, D) (rows are tokens), the silu gate g (N, D), output projection."""
        return self.output(self.ln_x(wkv) * g)

    def _forward(self, x: Tensor, state: RWKV6State) -> tuple[Tensor, RWKV6State]:
        batch, T, D = x.shape
        # token shift: x_{t-1}, the carried last token for t = 0 (zeros at the start of a sequence)
        x_prev = torch.cat([state.shift.to(x.dtype).unsqueeze(1), x[:, :-1]], dim=1)  # (B, T, D)
        r, k, v, log_decay, g = self._mix(x, x_prev, state.wkv.dtype)  # (B, T, H, K) x 4, (B, T, D)
        r, k, v, log_decay = (t.transpose(1, 2) for t in (r, k, v, log_decay))  # (B, H, T, K)
        wkv, S = linear_attn(
            r, k, v, log_decay, state.wkv, bonus=self.time_faaaa, impl=self.impl, chunk_size=self.chunk_size
        )  # (B, H, T, K), (B, H, K, K)
        wkv = wkv.transpose(1, 2).reshape(batch * T, D).to(x.dtype)  # GroupNorm wants (N, C)
        y = self._output(wkv, g.reshape(batch * T, D)).view(batch, T, D)
        return y, RWKV6State(x[:, -1].clone(), S)  # clone: don't pin x

    def step(self, x: Tensor, state: RWKV6State) -> tuple[Tensor, RWKV6State]:
        """One token ``x (B, D)``: the recurrence."""
        self.check_input(x, step=True)
        dtype = state.wkv.dtype  # float32 state even for low-precision activations
        r, k, v, log_decay, g = self._mix(x, state.shift.to(x.dtype), dtype)  # (B, H, K) x 4, (B, D)
        r, k, v = r.to(dtype), k.to(dtype), v.to(dtype)
        write = k.unsqueeze(-1) * v.unsqueeze(-2)  # (B, H, K, K): k^T v
        u = self.time_faaaa.to(dtype).unsqueeze(-1)  # (H, K, 1)
        wkv = torch.einsum("bhk,bhkv->bhv", r, state.wkv + u * write)  # (B, H, K): read before write
        S = log_decay.exp().unsqueeze(-1) * state.wkv + write  # new tensor; the given state is untouched
        y = self._output(wkv.flatten(-2).to(x.dtype), g)
        return y, RWKV6State(x.clone(), S)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, head_size={self.head_size}, mix_rank={self.mix_rank}, "
            f"decay_rank={self.decay_rank}, impl={self.impl!r}, chunk_size={self.chunk_size}"
        )
