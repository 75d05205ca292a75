"""Infini-attention: segment-local softmax attention plus a compressive linear-attention memory per head."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..ops.rotary import apply_rotary, rotary_angles
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_choice, check_divisor, check_int, check_positive

__all__ = ["InfiniAttention", "InfiniState", "UPDATES"]

UPDATES = ("linear", "delta")


class InfiniState(NamedTuple):
    M: Tensor  # (B, H, K, V) compressive memory after the last complete segment
    z: Tensor  # (B, H, K) its normaliser
    k: Tensor  # (B, H, S, K) keys of the current segment so far (unrotated), zeros in the free slots
    v: Tensor  # (B, H, S, V) their values
    length: Tensor  # (B,) int64, tokens seen: the segment boundaries are absolute positions


@register_mixer("infini")
class InfiniAttention(Mixer):
    """Infini-attention (Munkhdalai, Faruqui, Gopal 2024, arXiv 2404.07143): local attention + compressive memory.

    "Leave No Context Behind: Efficient Infinite Context Transformers with Infini-attention", section 2.1.
    The sequence is cut into segments of S tokens at absolute positions 0, S, 2S, ...  Per head, with
    sigma = ELU + 1 and q, k, v = qkv_proj(x) (K = V = D / H), for the queries of segment s::

        A_dot = softmax(rope(Q) rope(K)^T / sqrt(K) + causal mask) V      # within segment s only
        A_mem = sigma(Q) M_{s-1} / (sigma(Q) z_{s-1})                       # eq. 3, memory of segments < s
        A     = sigmoid(beta) A_mem + (1 - sigmoid(beta)) A_dot            # eq. 6, beta a learned scalar per head
        y     = out_proj(concat_heads(A))

    and, once segment s is complete (eq. 4 "linear", eq. 5 "delta")::

        M_s = M_{s-1} + sigma(K)^T V                                        # linear
        M_s = M_{s-1} + sigma(K)^T (V - sigma(K) M_{s-1} / (sigma(K) z_{s-1}))   # delta
        z_s = z_{s-1} + sum_t sigma(K_t)                                    # both

    Parallel within a segment, recurrent across segments, as in the paper.  Departures and choices
    (the paper leaves them open): M_0 = 0, z_0 = 0, and both retrievals divide by max(sigma(.) z, eps), so
    the empty memory reads 0 (and the first delta write equals the linear one); beta starts at 0 (gate
    1/2); rotary positions (RoFormer) are applied to the local attention only, at the position within the
    segment (the same relative phases as absolute positions, without the float32 phase error of large
    positions), while the memory reads and writes the unrotated q, k; the z update of the delta variant
    is the linear one (the paper states only M's).  S defaults to 64 here, not the paper's 2,048.

    Args:
        d_model: width D.
        n_heads: heads H; must divide ``d_model`` with an even head width (2).
        segment_len: S, tokens per segment (64).
        update: "linear" or "delta", the memory write ("linear").
        rope_base: rotary frequency base (10,000).
        eps: floor of the retrieval denominators (1e-6).
        bias: biases in the q/k/v and output projections (False).

    State (:class:`InfiniState`): M, z, and a fixed S-slot buffer for the current segment's keys/values
    (free slots zero), so its bytes do not depend on T: ``H (K V + K + 2 S K) * elem + 8`` per sequence
    (41,224 bytes at D = 64, H = 2, S = 64, float32).
    """

    state_growth = "constant"
    contract_kwargs = {"segment_len": 4}  # the contract's T ~ 13 crosses three segment boundaries

    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int = 2,
        segment_len: int = 64,
        update: str = "linear",
        rope_base: float = 10000.0,
        eps: float = 1e-6,
        bias: bool = False,
    ):
        super().__init__(d_model)
        check_int(segment_len=segment_len)
        check_choice("update", update, UPDATES)
        check_positive(rope_base=rope_base, eps=eps)
        check_divisor("n_heads", n_heads, d_model, "d_model")
        if (d_model // n_heads) % 2:
            raise ArgumentError("n_heads", "such that d_model / n_heads is even (rotary embeddings rotate pairs)",
                                f"{d_model}/{n_heads}={d_model // n_heads}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.segment_len, self.update, self.rope_base, self.eps = segment_len, update, float(rope_base), float(eps)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.beta = nn.Parameter(torch.zeros(n_heads))  # (H,)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> InfiniState:
        check_positive(batch_size=batch_size)
        dtype = dtype or self.qkv.weight.dtype
        H, K, S = self.n_heads, self.head_dim, self.segment_len
        zeros = lambda *shape: torch.zeros(batch_size, H, *shape, device=device, dtype=dtype)  # noqa: E731
        length = torch.zeros(batch_size, device=device, dtype=torch.int64)
        return InfiniState(zeros(K, K), zeros(K), zeros(S, K), zeros(S, K), length)

    # -- the pieces both forms share ----------------------------------------------------------

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return rearrange(self.qkv(x), "b t (three h k) -> three b h t k", three=3, h=self.n_heads)  # (B, H, T, K)

    def _angles(self, device) -> tuple[Tensor, Tensor]:
        return rotary_angles(torch.arange(self.segment_len, device=device), self.head_dim, self.rope_base)  # (S, K/2)

    def _read(self, q: Tensor, M: Tensor, z: Tensor) -> Tensor:
        """sigma(q) M / (sigma(q) z): q (..., T, K), M (..., K, V), z (..., K) -> (..., T, V)."""
        sq = F.elu(q) + 1
        return (sq @ M) / (sq @ z[..., None]).clamp_min(self.eps)

    def _write(self, M: Tensor, z: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Memory after one complete segment: k (B, H, S, K), v (B, H, S, V) unrotated."""
        sk = F.elu(k) + 1
        if self.update == "delta":
            v = v - self._read(k, M, z)
        return M + sk.transpose(-1, -2) @ v, z + sk.sum(-2)

    def _combine(self, a_mem: Tensor, a_dot: Tensor) -> Tensor:
        g = torch.sigmoid(self.beta).to(a_mem.dtype).view(-1, *[1] * (a_mem.dim() - 2))  # (H, 1, ..., 1)
        return g * a_mem + (1 - g) * a_dot

    def _output(self, a: Tensor) -> Tensor:
        return self.out_proj(rearrange(a, "b h t v -> b t (h v)"))

    # -- the two forms ------------------------------------------------------------------------

    def step(self, x: Tensor, state: InfiniState) -> tuple[Tensor, InfiniState]:
        self.check_input(x, step=True)
        S, dtype = self.segment_len, state.M.dtype
        q, k, v = (t.to(dtype) for t in self._qkv(x[:, None]))  # (B, H, 1, K)
        r = state.length % S  # (B,) slot of this token in its segment
        slots = torch.arange(S, device=x.device)
        here = (slots == r[:, None])[:, None, :, None]  # (B, 1, S, 1)
        kb, vb = torch.where(here, k, state.k), torch.where(here, v, state.v)  # (B, H, S, K)
        cos, sin = self._angles(x.device)
        q_rot = apply_rotary(q, cos[r][:, None, None], sin[r][:, None, None])
        visible = (slots <= r[:, None])[:, None, None, :]  # (B, 1, 1, S)
        a_dot = F.scaled_dot_product_attention(q_rot, apply_rotary(kb, cos, sin), vb, attn_mask=visible)
        a = self._combine(self._read(q, state.M, state.z), a_dot)  # (B, H, 1, V)
        M, z, end = state.M, state.z, r == S - 1
        if bool(end.any()):  # the segment is complete: write it to memory, empty the buffer
            M_new, z_new = self._write(M, z, kb, vb)
            M = torch.where(end[:, None, None, None], M_new, M)
            z = torch.where(end[:, None, None], z_new, z)
            kb, vb = (torch.where(end[:, None, None, None], 0.0, t) for t in (kb, vb))
        return self._output(a)[:, 0], InfiniState(M, z, kb, vb, state.length + 1)

    def _forward(self, x: Tensor, state: InfiniState) -> tuple[Tensor, InfiniState]:
        if (state.length != state.length[:1]).any():
            return self.step_loop(x, state)  # rows at different positions have different segment boundaries
        S, dtype, T = self.segment_len, state.M.dtype, x.shape[1]
        r0 = int(state.length[0]) % S  # tokens of the current segment already in the buffer
        q, k, v = (t.to(dtype) for t in self._qkv(x))  # (B, H, T, K)
        L = r0 + T
        n, full = math.ceil(L / S), L // S
        # prepend the buffered tokens so segments start at multiples of S; pad the last segment with zeros
        k, v = torch.cat([state.k[:, :, :r0], k], 2), torch.cat([state.v[:, :, :r0], v], 2)  # (B, H, L, K)
        q = F.pad(q, (0, 0, r0, n * S - L))
        k, v = (F.pad(t, (0, 0, 0, n * S - L)) for t in (k, v))
        q, k, v = (t.unflatten(2, (n, S)) for t in (q, k, v))  # (B, H, n, S, K)
        cos, sin = self._angles(x.device)
        a_dot = F.scaled_dot_product_attention(
            *(apply_rotary(t, cos, sin).flatten(1, 2) for t in (q, k)), v.flatten(1, 2), is_causal=True
        ).unflatten(1, (self.n_heads, n))  # (B, H, n, S, V); padding keys come after every real query
        Ms, zs, M, z = [], [], state.M, state.z
        for j in range(n):
            Ms.append(M)
            zs.append(z)
            if j < full:
                M, z = self._write(M, z, k[:, :, j], v[:, :, j])
        a = self._combine(self._read(q, torch.stack(Ms, 2), torch.stack(zs, 2)), a_dot)  # (B, H, n, S, V)
        a = a.flatten(2, 3)[:, :, r0:L]  # (B, H, T, V)
        kb, vb = (t[:, :, -1].clone() if full < n else torch.zeros_like(t[:, :, -1]) for t in (k, v))
        return self._output(a), InfiniState(M, z, kb, vb, state.length + T)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, segment_len={self.segment_len}, "
                f"update={self.update!r}, state_growth='constant'")
