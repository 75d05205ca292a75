"""Transformer-XL: softmax attention within fixed segments plus a stop-gradient memory of the previous tokens."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..ops.rotary import apply_rotary, rotary_angles
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_divisor, check_int, check_positive

__all__ = ["TransformerXL", "TransformerXLState"]


class TransformerXLState(NamedTuple):
    k: Tensor  # (B, H, W, K) rotated keys of the last W <= mem_len + segment_len - 1 tokens
    v: Tensor  # (B, H, W, K) their values
    score: Tensor | None  # (B, H, W) their TRAMS scores (None without trams_keep)
    length: Tensor  # (B,) int64 tokens seen (equal across the batch)


@register_mixer("transformer_xl")
class TransformerXL(Mixer):
    """Transformer-XL segment recurrence (Dai et al. 2019, arXiv 1901.02860), optionally with TRAMS selection.

    "Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context" (Z. Dai, Z. Yang, Y. Yang,
    J. Carbonell, Q. Le, R. Salakhutdinov).  The sequence is cut into segments of S tokens by absolute
    position (segment s = positions sS .. sS+S-1), so any split of the input gives the same result.  Per
    head (K = D / H), a query at position p of segment s attends to the memory, the keys/values of the M
    tokens before the segment, under a stop-gradient SG, and causally to its own segment::

        q, k, v = qkv(x)   (k, q rotated by absolute position)
        mem_s = SG(k, v at positions sS - M .. sS - 1)            # cached once per segment
        y_p = out_proj(softmax(q_p . [mem_s ; k_{sS..p}] / sqrt(K)) [mem_s ; v_{sS..p}])

    One layer's receptive field is therefore M + S - 1 tokens; information older than that reaches a
    query only through deeper layers (the paper's L x M horizon).  The parallel form loops over the
    segments and attends within each at once, as the paper trains; the step loop is the spec.

    TRAMS (Yu et al. 2023, "TRAMS: Training-free Memory Selection for Long-range Language Modeling",
    arXiv 2310.15494, EMNLP 2023 Findings), with ``trams_keep`` = k: each memory key gets the
    query-independent score ``score_j = ||K~_j||_2 * |sum_e K~_{j,e}|`` (the authors' code as the
    project's mechanism card transcribes it; the paper writes its metric as cos<K~, 1> ||K~||) with
    ``K~_j = W_{Q,h}^T k_j`` (k_j the head's key before rotation, W_{Q,h} (K, D) the head's rows of the
    query projection), so that q_i . k_j = x_i . K~_j.
    The R = ``trams_recent`` most recent memory tokens are always kept; of the older ones only the k with
    the highest score are attended (all of them while the memory holds <= k + R tokens).  Selection is
    per head and per segment.

    Departures: rotary position embeddings by absolute position (RoPE, Su et al. 2021) instead of the
    paper's relative encoding with the u, v biases (so TRAMS's re-indexing of relative positions is
    not needed: a kept key keeps its own rotation); the memory caches this layer's keys/values of the
    previous tokens, not the previous layer's hidden states re-projected by the current weights (the
    same values within one forward pass; cached K/V as in the paper's fast evaluation); TRAMS scores
    are computed from the un-rotated keys and without the projections' biases (the authors' code
    has no RoPE; whether their score includes biases we could not check), and the score is detached
    (it only ranks).  Memory of the first segment is empty (the paper's zero-length initial memory).

    Args:
        d_model: width D.
        segment_len: S, tokens per segment (64; the paper uses 150-512 with M = S).
        mem_len: M, memory tokens cached from before each segment (64).
        n_heads: number of heads H; must divide ``d_model`` with an even head width (2).
        trams_keep: k, older memory tokens kept by TRAMS score; None (default) attends the whole memory.
        trams_recent: R, most recent memory tokens always kept with TRAMS (0; the paper's run: M = 400,
            R = 150, k = 50).
        rope_base: rotary frequency base (10,000).
        bias: biases in the q/k/v and output projections (False).

    State (:class:`TransformerXLState`): the rotated keys and values (and TRAMS scores) of the last
    min(T, M + S - 1) tokens: the memory of the current segment plus the segment so far (older
    tokens of the window are held but not attended).  Tokens before the current segment are detached.
    Bounded: ``state_capacity = M + S - 1``.
    """

    state_growth = "bounded"
    contract_kwargs = {"segment_len": 4, "mem_len": 3}

    def __init__(
        self,
        d_model: int,
        *,
        segment_len: int = 64,
        mem_len: int = 64,
        n_heads: int = 2,
        trams_keep: int | None = None,
        trams_recent: int = 0,
        rope_base: float = 10000.0,
        bias: bool = False,
    ):
        super().__init__(d_model)
        check_int(segment_len=segment_len, mem_len=mem_len)
        check_int(trams_keep=trams_keep, allow_none=True)
        check_int(trams_recent=trams_recent, minimum=0)
        check_positive(rope_base=rope_base)
        check_divisor("n_heads", n_heads, d_model, "d_model")
        if (d_model // n_heads) % 2:
            raise ArgumentError("n_heads", "such that d_model / n_heads is even (rotary embeddings rotate pairs)",
                                f"{d_model}/{n_heads}={d_model // n_heads}")
        if trams_keep is None and trams_recent:
            raise ArgumentError("trams_recent", "0 unless trams_keep is set", repr(trams_recent))
        if trams_keep is not None and trams_keep + trams_recent > mem_len:
            raise ArgumentError("trams_keep", f"at most mem_len - trams_recent = {mem_len - trams_recent}",
                                repr(trams_keep))
        self.segment_len, self.mem_len = int(segment_len), int(mem_len)
        self.trams_keep, self.trams_recent = trams_keep, int(trams_recent)
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.rope_base = float(rope_base)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    @property
    def state_capacity(self) -> int:
        return self.mem_len + self.segment_len - 1

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> TransformerXLState:
        check_positive(batch_size=batch_size)
        dtype = dtype or self.qkv.weight.dtype
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        score = None if self.trams_keep is None else empty.new_zeros(batch_size, self.n_heads, 0)
        length = torch.zeros(batch_size, device=device, dtype=torch.int64)
        return TransformerXLState(empty, empty.clone(), score, length)

    # -- shared pieces ------------------------------------------------------------------------

    def _project(self, x: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """q, k, v (B, H, T, K), rotated at positions start.., and TRAMS scores (B, H, T) or None."""
        B, T, _ = x.shape
        q, k, v = rearrange(self.qkv(x), "b t (three h k) -> three b h t k", three=3, h=self.n_heads)
        score = None
        if self.trams_keep is not None:
            w_q = self.qkv.weight[: self.d_model].detach().view(self.n_heads, self.head_dim, self.d_model)
            k_tilde = torch.einsum("bhtk,hkd->bhtd", k.detach(), w_q.to(k.dtype))  # (B, H, T, D)
            score = k_tilde.norm(dim=-1) * k_tilde.sum(-1).abs()
        positions = start + torch.arange(T, device=x.device)  # (T,)
        cos, sin = rotary_angles(positions, self.head_dim, self.rope_base)  # (T, K/2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, score

    def _memory(self, k: Tensor, v: Tensor, score: Tensor | None, stop: int) -> tuple[Tensor, Tensor]:
        """SG of the memory: window indices [stop - M, stop), TRAMS-selected in temporal order. (B, H, M', K)."""
        start = max(0, stop - self.mem_len)
        mem_k, mem_v = k[:, :, start:stop].detach(), v[:, :, start:stop].detach()
        if self.trams_keep is None or stop - start <= self.trams_keep + self.trams_recent:
            return mem_k, mem_v
        ranked = score[:, :, start:stop].clone()  # (B, H, M)
        if self.trams_recent:
            ranked[..., -self.trams_recent:] = float("inf")  # the recent R are always kept
        idx = ranked.topk(self.trams_keep + self.trams_recent, dim=-1).indices.sort(dim=-1).values
        idx = idx[..., None].expand(-1, -1, -1, self.head_dim)  # (B, H, k + R, K)
        return mem_k.gather(2, idx), mem_v.gather(2, idx)

    def _window(self, k: Tensor, v: Tensor, score: Tensor | None, end: int) -> TransformerXLState:
        """The state after ``end`` tokens from a window whose last index is position end - 1.

        Keeps the last M + S - 1 tokens; those before the current segment are the cached memory and
        are detached (the paper's SG), the segment so far keeps its graph.  torch.cat copies, so the
        state never views a larger buffer.
        """
        n = min(k.shape[2], self.state_capacity)
        cached = min(n, end % self.segment_len)  # tokens of the current segment
        parts = (k, v) if score is None else (k, v, score)
        k, v, *s = (torch.cat([t[:, :, -n : t.shape[2] - cached].detach(), t[:, :, t.shape[2] - cached :]], 2)
                    for t in parts)
        length = torch.full((k.shape[0],), end, device=k.device, dtype=torch.int64)
        return TransformerXLState(k, v, s[0] if s else None, length)

    def _length(self, state: TransformerXLState) -> int:
        length = state.length
        if length.numel() > 1 and not bool((length == length[0]).all()):
            raise ValueError("transformer_xl needs the same length for every batch row (segments are shared)")
        return int(length[0])

    def _cat(self, state: TransformerXLState, k: Tensor, v: Tensor, score: Tensor | None):
        s = None if score is None else torch.cat([state.score, score], 2)
        return torch.cat([state.k, k.to(state.k.dtype)], 2), torch.cat([state.v, v.to(state.v.dtype)], 2), s

    # -- the two forms ------------------------------------------------------------------------

    def _forward(self, x: Tensor, state: TransformerXLState) -> tuple[Tensor, TransformerXLState]:
        L, T, S = self._length(state), x.shape[1], self.segment_len
        q, k, v, score = self._project(x, L)  # (B, H, T, K)
        full_k, full_v, full_s = self._cat(state, k, v, score)  # window + T new tokens
        base = L - state.k.shape[2]  # absolute position of window index 0
        outputs, t = [], 0
        while t < T:  # one piece per segment the input touches
            seg_start = L + t - (L + t) % S
            end = min(T, seg_start + S - L)  # input index after the piece
            mem_k, mem_v = self._memory(full_k, full_v, full_s, seg_start - base)  # (B, H, M', K)
            seg = slice(seg_start - base, L + end - base)
            keys, values = torch.cat([mem_k, full_k[:, :, seg]], 2), torch.cat([mem_v, full_v[:, :, seg]], 2)
            q_pos = torch.arange(L + t, L + end, device=x.device)[:, None]  # (T_piece, 1)
            k_pos = torch.arange(seg_start, L + end, device=x.device)[None]  # (1, S_piece)
            visible = torch.cat([q_pos.new_ones(end - t, mem_k.shape[2], dtype=torch.bool), k_pos <= q_pos], 1)
            outputs.append(F.scaled_dot_product_attention(q[:, :, t:end], keys, values, attn_mask=visible))
            t = end
        y = self.out_proj(rearrange(torch.cat(outputs, 2), "b h t k -> b t (h k)"))
        return y, self._window(full_k, full_v, full_s, L + T)

    def step(self, x: Tensor, state: TransformerXLState) -> tuple[Tensor, TransformerXLState]:
        self.check_input(x, step=True)
        L = self._length(state)
        q, k, v, score = self._project(x[:, None], L)  # (B, H, 1, K)
        full_k, full_v, full_s = self._cat(state, k, v, score)
        seg_start = L - L % self.segment_len - (L - state.k.shape[2])  # window index of the segment start
        mem_k, mem_v = self._memory(full_k, full_v, full_s, seg_start)
        keys = torch.cat([mem_k, full_k[:, :, seg_start:]], 2)  # memory + segment so far + this token
        values = torch.cat([mem_v, full_v[:, :, seg_start:]], 2)
        y = F.scaled_dot_product_attention(q, keys, values)
        return self.out_proj(rearrange(y, "b h t k -> b t (h k)"))[:, 0], self._window(full_k, full_v, full_s, L + 1)

    def extra_repr(self) -> str:
        trams = "" if self.trams_keep is None else f", trams_keep={self.trams_keep}, trams_recent={self.trams_recent}"
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, segment_len={self.segment_len}, "
                f"mem_len={self.mem_len}{trams}, state_growth='bounded'")
