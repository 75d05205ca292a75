"""The Compressive Transformer layer: segment attention over a FIFO memory plus a compressed memory of older keys."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from ..ops.rotary import apply_rotary, rotary_angles
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_choice, check_divisor, check_int, check_positive


class CompressiveState(NamedTuple):
    k: Tensor  # (B, H, S, K) the current segment's keys so far (length % S of them), zero-padded, not rotated
    v: Tensor  # (B, H, S, K)
    mem_k: Tensor  # (B, H, M, K) FIFO memory, oldest first, detached, not rotated; M <= mem_len
    mem_v: Tensor  # (B, H, M, K)
    cmem_k: Tensor  # (B, H, C, K) compressed memory, oldest first, detached; C <= cmem_len
    cmem_v: Tensor  # (B, H, C, K)
    length: Tensor  # (B,) int64, tokens seen (every position above is a function of it)


@register_mixer("compressive")
class Compressive(Mixer):
    """Compressive Transformer layer: attention over [compressed memory ; FIFO memory ; current segment].

    Rae, Potapenko, Jayakumar, Lillicrap 2020, "Compressive Transformers for Long-Range Sequence Modelling"
    (arXiv 1911.05507).  Tokens form segments of S = ``segment_len`` by absolute position.  Per head, with
    q, k, v = W_{q,k,v} x and R_p the rotary phase of position p, the query at t in segment s sees

        y_t = W_o concat_h softmax_j(<R_t q_t, R_{p_j} k_j> / sqrt(K)) v_j,   j in [cm ; m ; segment s up to t]

    and at the end of segment s:  m <- [m ; sg(k, v of segment s)];  old = the oldest |m| - n_m rows of m;
    m <- m[-n_m:];  cm <- [cm ; sg(f_c(old))][-n_cm:],  with f_c mapping c consecutive rows to one:
    ``"conv"``: a depthwise 1-D convolution with kernel = stride = c (separate weights for keys and values,
    no bias), ``"mean"``: mean pooling.  sg is stop-gradient: no gradient reaches memories (Transformer-XL),
    so the conv's weights learn only from :meth:`reconstruction_loss`, the paper's attention-reconstruction
    loss ||attn(q, old) - attn(q, f_c(old))||^2, which is exposed here but not wired into any training loop.

    Departures and choices: memories hold keys/values (rotated at use), not the paper's layer inputs h, so
    f_c compresses k and v rather than h; positions are rotary by absolute position instead of the paper's
    Transformer-XL relative encoding, and a compressed slot takes the position of the last token it
    summarises.  The conv starts as mean pooling (weights 1/c): the paper's initialisation was not
    available to me.  Defaults are scaled down from the paper's (n_s = n_m = n_cm = 512, c = 3 or 4).

    Args:
        d_model: width D.
        n_heads: heads H; must divide ``d_model`` with an even head width (2).
        segment_len: S, tokens per segment; a multiple of c (32).
        mem_len: n_m, FIFO memory in tokens; a multiple of c (64).
        cmem_len: n_cm, compressed-memory slots (32).
        compression_rate: c, tokens per compressed slot (4).
        compression: f_c, ``"conv"`` or ``"mean"`` (``"conv"``, the paper's best).
        rope_base: rotary frequency base (10,000).

    State (:class:`CompressiveState`): bounded; it stops growing after n_m + c n_cm + S tokens (when both
    memories are full), at ``(S + n_m + n_cm) * H * 2K * elem + 8`` bytes per sequence.  The rows of a
    batch must have the same length (as any state that ``forward`` builds on a batch has).
    """

    state_growth = "bounded"
    contract_kwargs = {"segment_len": 4, "mem_len": 4, "cmem_len": 2, "compression_rate": 2, "compression": "mean"}

    def __init__(self, d_model: int, *, n_heads: int = 2, segment_len: int = 32, mem_len: int = 64,
                 cmem_len: int = 32, compression_rate: int = 4, compression: str = "conv",
                 rope_base: float = 10000.0):
        super().__init__(d_model)
        check_int(segment_len=segment_len, mem_len=mem_len, cmem_len=cmem_len, compression_rate=compression_rate)
        check_choice("compression", compression, ("conv", "mean"))
        check_positive(rope_base=rope_base)
        check_divisor("n_heads", n_heads, d_model, "d_model")
        if (d_model // n_heads) % 2:
            raise ArgumentError("n_heads", "such that d_model / n_heads is even (rotary embeddings rotate pairs)",
                                f"{d_model}/{n_heads}={d_model // n_heads}")
        for name, value in (("segment_len", segment_len), ("mem_len", mem_len)):
            if value % compression_rate:
                raise ArgumentError(name, f"a multiple of compression_rate={compression_rate} "
                                    "(evictions are then whole groups of c)", repr(value))
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.segment_len, self.mem_len, self.cmem_len = segment_len, mem_len, cmem_len
        self.rate, self.compression, self.rope_base = compression_rate, compression, float(rope_base)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        if compression == "conv":  # [keys, values] x depthwise kernels over the c rows of a group
            self.compress_weight = nn.Parameter(torch.full((2, n_heads, self.head_dim, compression_rate),
                                                           1.0 / compression_rate))

    @property
    def state_capacity(self) -> int:
        return self.mem_len + self.rate * self.cmem_len + self.segment_len

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> CompressiveState:
        check_positive(batch_size=batch_size)
        dtype = dtype or self.qkv.weight.dtype

        def zeros(n):
            return torch.zeros(batch_size, self.n_heads, n, self.head_dim, device=device, dtype=dtype)

        return CompressiveState(zeros(self.segment_len), zeros(self.segment_len), zeros(0), zeros(0), zeros(0),
                                zeros(0), torch.zeros(batch_size, device=device, dtype=torch.int64))

    # -- pieces ---------------------------------------------------------------------------

    def compress(self, old: Tensor, which: int) -> Tensor:
        """f_c: (B, H, n, K) -> (B, H, n / c, K); ``which`` 0 for keys, 1 for values (conv weights)."""
        groups = rearrange(old, "b h (n c) k -> b h n c k", c=self.rate)
        if self.compression == "mean":
            return groups.mean(3)
        return torch.einsum("bhnck,hkc->bhnk", groups, self.compress_weight[which].to(old.dtype))

    def _rotate(self, t: Tensor, positions: Tensor) -> Tensor:
        cos, sin = rotary_angles(positions, self.head_dim, self.rope_base)  # (B, n, K/2)
        return apply_rotary(t, cos[:, None], sin[:, None])

    def _memory_positions(self, seg_start: Tensor, M: int, C: int) -> tuple[Tensor, Tensor]:
        """Positions (B, M) of the FIFO and (B, C) of the compressed slots (the last token each summarises)."""
        ar = torch.arange(max(M, C), device=seg_start.device)
        mem = seg_start[:, None] - M + ar[:M]
        cmem = seg_start[:, None] - M - 1 - self.rate * (C - 1 - ar[:C])
        return mem, cmem

    def _attend(self, q, q_pos, seg_k, seg_v, seg_pos, mem_k, mem_v, cmem_k, cmem_v) -> Tensor:
        """Queries (B, H, Tq, K) at q_pos (B, Tq) over [cm ; m ; segment keys at or before each query]."""
        mem_pos, cmem_pos = self._memory_positions(seg_pos[:, 0], mem_k.shape[2], cmem_k.shape[2])
        keys = torch.cat([self._rotate(cmem_k, cmem_pos), self._rotate(mem_k, mem_pos),
                          self._rotate(seg_k, seg_pos)], dim=2)  # (B, H, C + M + n, K)
        values = torch.cat([cmem_v, mem_v, seg_v], dim=2)
        scores = self._rotate(q, q_pos) @ keys.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, Tq, C+M+n)
        n_mem = cmem_k.shape[2] + mem_k.shape[2]
        hidden = seg_pos[:, None, None, :] > q_pos[:, None, :, None]  # (B, 1, Tq, n): later segment tokens
        scores = torch.cat([scores[..., :n_mem], scores[..., n_mem:].masked_fill(hidden, float("-inf"))], dim=-1)
        return scores.softmax(-1) @ values  # (B, H, Tq, K)

    def _write(self, seg_k, seg_v, mem_k, mem_v, cmem_k, cmem_v):
        """End of a segment: append it to the FIFO, compress what overflows; returns the memories and the evicted."""
        mem_k, mem_v = torch.cat([mem_k, seg_k.detach()], 2), torch.cat([mem_v, seg_v.detach()], 2)
        n = mem_k.shape[2] - self.mem_len
        if n <= 0:
            return mem_k, mem_v, cmem_k, cmem_v, None
        old_k, old_v = mem_k[:, :, :n], mem_v[:, :, :n]
        with torch.no_grad():  # sg(f_c(old)): the conv learns only from reconstruction_loss
            cmem_k = torch.cat([cmem_k, self.compress(old_k, 0)], 2)[:, :, -self.cmem_len :].clone()
            cmem_v = torch.cat([cmem_v, self.compress(old_v, 1)], 2)[:, :, -self.cmem_len :].clone()
        return mem_k[:, :, n:].clone(), mem_v[:, :, n:].clone(), cmem_k, cmem_v, (old_k, old_v)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return rearrange(self.qkv(x), "b t (three h k) -> three b h t k", three=3, h=self.n_heads).unbind(0)

    # -- forms ----------------------------------------------------------------------------

    def _run(self, x: Tensor, state: CompressiveState, record: list | None = None):
        S, T = self.segment_len, x.shape[1]
        length = state.length
        P = int(length[0]) % S
        q, k, v = self._project(x)  # (B, H, T, K) each
        seg_k, seg_v = torch.cat([state.k[:, :, :P], k], 2), torch.cat([state.v[:, :, :P], v], 2)  # (B, H, P+T, K)
        base = length[:, None] - P  # (B, 1) position of the first segment's start
        mem_k, mem_v, cmem_k, cmem_v = state[2:6]
        ys = []
        for a in range(0, P + T, S):
            b = min(a + S, P + T)
            lo = max(a, P)
            q_pos = base + torch.arange(lo, b, device=x.device)  # (B, Tq)
            seg_pos = base + torch.arange(a, b, device=x.device)  # (B, n)
            q_seg = q[:, :, lo - P : b - P]
            ys.append(self._attend(q_seg, q_pos, seg_k[:, :, a:b], seg_v[:, :, a:b], seg_pos,
                                   mem_k, mem_v, cmem_k, cmem_v))
            if b - a == S:
                first = seg_pos[:, 0] - mem_k.shape[2]  # (B,) position of the FIFO's oldest row
                mem_k, mem_v, cmem_k, cmem_v, old = self._write(seg_k[:, :, a:b], seg_v[:, :, a:b],
                                                                mem_k, mem_v, cmem_k, cmem_v)
                if record is not None and old is not None:
                    record.append((q_seg.detach(), q_pos, old[0], old[1], first))
        rem = (P + T) % S
        pad = seg_k.new_zeros(*seg_k.shape[:2], S - rem, self.head_dim)
        tail_k = torch.cat([seg_k[:, :, P + T - rem :], pad], 2)
        tail_v = torch.cat([seg_v[:, :, P + T - rem :], pad], 2)
        y = self.out_proj(rearrange(torch.cat(ys, 2), "b h t k -> b t (h k)"))
        return y, CompressiveState(tail_k, tail_v, mem_k, mem_v, cmem_k, cmem_v, length + T)

    def _forward(self, x: Tensor, state: CompressiveState) -> tuple[Tensor, CompressiveState]:
        return self._run(x, state)

    def step(self, x: Tensor, state: CompressiveState) -> tuple[Tensor, CompressiveState]:
        self.check_input(x, step=True)
        S, P = self.segment_len, int(state.length[0]) % self.segment_len
        q, k, v = self._project(x[:, None])  # (B, H, 1, K)
        seg_k = torch.cat([state.k[:, :, :P], k, state.k[:, :, P + 1 :]], 2)  # (B, H, S, K), a new tensor
        seg_v = torch.cat([state.v[:, :, :P], v, state.v[:, :, P + 1 :]], 2)
        pos = state.length[:, None] - P + torch.arange(P + 1, device=x.device)  # (B, P+1)
        mems = state[2:6]
        y = self._attend(q, pos[:, -1:], seg_k[:, :, : P + 1], seg_v[:, :, : P + 1], pos, *mems)
        if P + 1 == S:
            mems = self._write(seg_k, seg_v, *mems)[:4]
            seg_k, seg_v = torch.zeros_like(seg_k), torch.zeros_like(seg_v)
        y = self.out_proj(rearrange(y, "b h t k -> b t (h k)"))[:, 0]
        return y, CompressiveState(seg_k, seg_v, *mems, state.length + 1)

    def reconstruction_loss(self, x: Tensor, state: CompressiveState | None = None) -> Tensor:
        """The paper's auxiliary loss for f_c over the evictions that ``forward(x, state)`` makes.

        For each segment end in x that evicts rows ``old`` from the FIFO, with the detached queries q of that
        segment's tokens in x: mean((attn(q, old) - attn(q, f_c(old)))^2), the attention being unmasked softmax
        attention over all of ``old`` (rotated at its positions) or over its compression (each slot at the
        position of its last token).  Averaged over the evictions; 0 when there are none.  Only f_c's weights
        get gradients (q and ``old`` are detached), as in the paper.  Training adds it with ``aux_loss_weight``.
        """
        self.check_input(x)
        state = state if state is not None else self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        record: list = []
        with torch.no_grad():
            self._run(x, state, record)
        losses = []
        for q, q_pos, old_k, old_v, first in record:
            n = old_k.shape[2]
            old_pos = first[:, None] + torch.arange(n, device=x.device)  # (B, n)
            rq = self._rotate(q, q_pos) / math.sqrt(self.head_dim)
            exact = (rq @ self._rotate(old_k, old_pos).transpose(-1, -2)).softmax(-1) @ old_v
            ck, cv = self.compress(old_k, 0), self.compress(old_v, 1)  # (B, H, n / c, K)
            approx = (rq @ self._rotate(ck, old_pos[:, self.rate - 1 :: self.rate]).transpose(-1, -2)).softmax(-1) @ cv
            losses.append((exact - approx).pow(2).mean())
        return torch.stack(losses).mean() if losses else x.new_zeros(())

    def auxiliary_loss(self, x: Tensor) -> Tensor:
        """The training loop's hook (``aux_loss_weight``): the reconstruction loss from the initial state."""
        return self.reconstruction_loss(x)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, segment_len={self.segment_len}, "
                f"mem_len={self.mem_len}, cmem_len={self.cmem_len}, compression_rate={self.rate}, "
                f"compression={self.compression!r}, state_growth='bounded'")
