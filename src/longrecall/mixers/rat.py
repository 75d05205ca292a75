"""RAT: a gated linear recurrence inside fixed chunks, softmax attention over the chunk summaries."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..ops.rotary import apply_rotary, rotary_angles
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_bool, check_divisor, check_int, check_positive

__all__ = ["RAT", "RATState"]


class RATState(NamedTuple):
    k: Tensor  # (B, H, C, K) final key summaries of the C finished chunks, rotated by chunk index
    v: Tensor  # (B, H, C, K) final value summaries
    run: Tensor  # (B, H, 2K) running [key; value] summary of the current chunk (zeros at a chunk start)
    length: Tensor  # (B,) int64 tokens seen (equal across the batch)


@register_mixer("rat")
class RAT(Mixer):
    """RAT (Wei et al. 2025, arXiv 2507.04416): recurrence within chunks of L tokens, attention across chunks.

    "RAT: Bridging RNN Efficiency and Attention Accuracy in Language Modeling" (X. Wei, A. Yadav,
    R. Pascanu, C. Gulcehre).  Chunks are fixed by absolute position (chunk c = positions cL .. cL+L-1),
    so any split of the input gives the same result.  Per head (K = D / H), for token l of chunk c::

        q, k, v = qkv(x);   g = sigmoid(g_proj(x))                             # (H, K) each
        k~_{c,l} = g * k~_{c,l-1} + (1 - g) * k_{c,l};   v~ likewise, k~_{c,-1} = v~_{c,-1} = 0
        o = softmax_j(q . k~_j / sqrt(K)) v~_j  over j in {k~_{c',L-1} : c' < c} U {k~_{c,l}}
        y = o_proj(o * sigmoid(z_proj(x)))

    L = 1 is softmax attention over the per-token states (1 - g) k, (1 - g) v; L >= T is a gated RNN.
    With ``rope`` queries and keys are rotated by their chunk index (RoPE at chunk level), so a query
    and its own running summary are at relative position 0.

    Unsure (from the paper's description, not its code at github.com/CLAIRE-Labo/RAT): the exact gate
    parameterisation (here one sigmoid forget gate per channel shared by keys and values, torch's
    default Linear init), the output gate (sigmoid here), and the positional scheme (chunk-level RoPE
    here; ``rope=False`` is NoPE).

    Args:
        d_model: width D.
        n_heads: heads H; must divide ``d_model`` (and give an even head width when ``rope``) (2).
        chunk_size: chunk length L (16, the paper's main setting).
        rope: rotate queries and summary keys by chunk index (True).
        rope_base: rotary frequency base (10,000).

    State (:class:`RATState`): the finished chunks' key and value summaries (grows as T / L: "linear"),
    the current chunk's running summary and the position: ``B * H * (2 C K + 2 K) * elem + 8 B`` bytes.
    """

    state_growth = "linear"
    contract_kwargs = {"chunk_size": 4}  # T = 13 crosses 3 chunk boundaries; T = 4, 8, 16 give 1, 2, 4 chunks

    def __init__(self, d_model: int, *, n_heads: int = 2, chunk_size: int = 16, rope: bool = True,
                 rope_base: float = 10000.0):
        super().__init__(d_model)
        check_int(chunk_size=chunk_size)
        check_bool(rope=rope)
        check_positive(rope_base=rope_base)
        check_divisor("n_heads", n_heads, d_model, "d_model")
        if rope and (d_model // n_heads) % 2:
            raise ArgumentError("n_heads", "such that d_model / n_heads is even when rope=True (rotary pairs)",
                                f"{d_model}/{n_heads}={d_model // n_heads}")
        self.n_heads, self.head_dim = int(n_heads), d_model // n_heads
        self.chunk_size, self.rope, self.rope_base = int(chunk_size), bool(rope), float(rope_base)
        D = self.d_model
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.g_proj = nn.Linear(D, D)
        self.z_proj = nn.Linear(D, D)
        self.o_proj = nn.Linear(D, D, bias=False)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> RATState:
        check_positive(batch_size=batch_size)
        device = self.qkv.weight.device if device is None else device
        dtype = self.qkv.weight.dtype if dtype is None else dtype
        H, K = self.n_heads, self.head_dim
        empty = torch.zeros(batch_size, H, 0, K, device=device, dtype=dtype)
        return RATState(empty, empty.clone(), torch.zeros(batch_size, H, 2 * K, device=device, dtype=dtype),
                        torch.zeros(batch_size, device=device, dtype=torch.int64))

    # -- shared pieces ----------------------------------------------------------------------

    def _position(self, state: RATState) -> int:
        if not isinstance(state, RATState):
            raise ValueError(f"state must be a RATState (from init_state or forward), got {type(state).__name__}")
        n = int(state.length[0])
        if (state.length != n).any() or state.k.shape[2] != n // self.chunk_size:
            raise ValueError("state must hold equal lengths across the batch and one summary per finished chunk, "
                             f"got lengths {state.length.tolist()} with {state.k.shape[2]} summaries")
        return n

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (..., H, K); u = [k; v] (..., H, 2K); the forget gate g (..., H, 2K), shared by k and v."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, self.head_dim)).unbind(-3)
        g = torch.sigmoid(self.g_proj(x)).unflatten(-1, (self.n_heads, self.head_dim))
        return q, torch.cat([k, v], -1), torch.cat([g, g], -1)

    def _rotate(self, t: Tensor, chunk: Tensor) -> Tensor:
        """t (B, H, N, K) rotated by the chunk indices ``chunk`` (N,) (identity without rope)."""
        if not self.rope:
            return t
        cos, sin = rotary_angles(chunk, self.head_dim, self.rope_base)  # (N, K/2)
        return apply_rotary(t, cos, sin)

    def _attend(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, k_self: Tensor,
                v_self: Tensor) -> Tensor:
        """One softmax over the summaries (B, H, C, K) (``mask`` (T, C): visible) and each query's own summary."""
        scale = self.head_dim**-0.5
        scores = q @ keys.transpose(-1, -2) * scale  # (B, H, T, C)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        own = (q * k_self).sum(-1, keepdim=True) * scale  # (B, H, T, 1): always visible, so no empty row
        w = torch.softmax(torch.cat([scores, own], -1), -1)
        return w[..., :-1] @ values + w[..., -1:] * v_self  # (B, H, T, K)

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        """o (B, H, T, K) -> y (B, T, D) through the output gate and projection."""
        return self.o_proj(o.transpose(1, 2).flatten(-2) * torch.sigmoid(self.z_proj(x)))

    # -- the two forms --------------------------------------------------------------------------

    def step(self, x: Tensor, state: RATState) -> tuple[Tensor, RATState]:
        """One token: update the running summary, attend over the finished summaries and it."""
        self.check_input(x, step=True)
        n, L, K = self._position(state), self.chunk_size, self.head_dim
        q, u, g = self._project(x)  # (B, H, K), (B, H, 2K), (B, H, 2K)
        run = state.run if n % L else torch.zeros_like(state.run)  # reset at a chunk start
        h = g * run + (1 - g) * u  # (B, H, 2K)
        chunk = torch.tensor([n // L], device=x.device)
        q_r, k_r = self._rotate(q[:, :, None], chunk), self._rotate(h[:, :, None, :K], chunk)  # (B, H, 1, K)
        o = self._attend(q_r, state.k, state.v, None, k_r, h[:, :, None, K:])
        if n % L == L - 1:  # the chunk is finished: its summary joins the cache, the recurrence restarts
            new = RATState(torch.cat([state.k, k_r], 2), torch.cat([state.v, h[:, :, None, K:]], 2),
                           torch.zeros_like(h), state.length + 1)
        else:
            new = RATState(state.k, state.v, h, state.length + 1)
        return self._output(o, x[:, None])[:, 0], new

    def _forward(self, x: Tensor, state: RATState) -> tuple[Tensor, RATState]:
        B, T, _ = x.shape
        n, L, K = self._position(state), self.chunk_size, self.head_dim
        q, u, g = (t.transpose(1, 2) for t in self._project(x))  # (B, H, T, K|2K)
        # Align the tokens to chunk boundaries: r0 slots before the first token (the last one carrying
        # the running summary in), padding after the last; padded slots have g = 1 and input 0.
        r0 = n % L
        P = -(-(r0 + T) // L) * L
        ones = g.new_ones(B, self.n_heads, 1, 2 * K)
        before = [torch.zeros_like(ones).expand(-1, -1, r0 - 1, -1), state.run[:, :, None]] if r0 else []
        after = [torch.zeros_like(ones).expand(-1, -1, P - r0 - T, -1)]
        a = torch.cat([ones.expand(-1, -1, r0, -1), g, ones.expand(-1, -1, P - r0 - T, -1)], 2)  # (B, H, P, 2K)
        b = torch.cat([*before, (1 - g) * u, *after], 2)  # (B, H, P, 2K)
        a, b = (t.unflatten(2, (P // L, L)) for t in (a, b))  # (B, H, P/L, L, 2K)
        h, hs = b.new_zeros(B, self.n_heads, P // L, 2 * K), []
        for a_l, b_l in zip(a.unbind(3), b.unbind(3), strict=True):  # L steps, all chunks at once
            h = a_l * h + b_l
            hs.append(h)
        hs = torch.stack(hs, 3).flatten(2, 3)[:, :, r0:r0 + T]  # (B, H, T, 2K) running summaries

        pos = n + torch.arange(T, device=x.device)
        chunk = pos // L  # (T,)
        done = (pos % L == L - 1).nonzero()[:, 0]  # tokens that finish a chunk
        k_new = self._rotate(hs[:, :, done, :K], chunk[done])  # (B, H, Cn, K)
        keys, values = torch.cat([state.k, k_new], 2), torch.cat([state.v, hs[:, :, done, K:]], 2)
        mask = torch.arange(keys.shape[2], device=x.device)[None, :] < chunk[:, None]  # (T, C)
        o = self._attend(self._rotate(q, chunk), keys, values, mask, self._rotate(hs[..., :K], chunk), hs[..., K:])
        run = hs[:, :, -1].clone() if (n + T) % L else torch.zeros_like(state.run)
        return self._output(o, x), RATState(keys, values, run, state.length + T)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_heads={self.n_heads}, chunk_size={self.chunk_size}, rope={self.rope}, "
                f"rope_base={self.rope_base:g}")
