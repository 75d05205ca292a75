"""Memformer: memory slots read by cross-attention in every layer and rewritten by a slot-attention writer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..modules import RMSNorm
from ..validation import check_divisor
from .segment_memory import SegmentMemoryModel

__all__ = ["Memformer"]


class Memformer(SegmentMemoryModel):
    """Memformer (Wu et al. 2022, arXiv 2010.06891), decoder-only: K memory slots M_t (K x D).

    Read, in every layer l before its block: the segment's tokens cross-attend to the slots::

        x <- x + W_o^l MHA(q = RMSNorm(x) W_q^l, k = M_t W_k^l, v = M_t W_v^l)      # no mask: M_t is past

    Write, once per segment, from the final hidden states H (S x D): slot i attends to itself and to
    the segment only (section 2.3, "each slot attends to itself and the encoder outputs", which keeps
    slots from merging)::

        a_i      = softmax_j([q_i . k(m_i), q_i . k(h_1), ..., q_i . k(h_S)] / sqrt(d)),  q_i = m_i W_q
        m~_i     = W_o (a_i0 v(m_i) + sum_j a_ij v(h_j))
        m_{t+1,i} = sqrt(D) * (m~_i + b_i) / |m~_i + b_i|            # biased memory normalisation

    The normalisation with a learned per-slot bias b is the paper's forgetting mechanism: a slot that
    is not refreshed drifts towards the terminal direction b_i.

    Departures: the paper's encoder-decoder reads the memory in the encoder; here the causal stack is
    both (the write reads the final states of the segment's own tokens).  Memory-replay
    back-propagation (MRBP) is a memory-saving way to compute the same gradients as BPTT; the training
    loop's ``segment_len`` / ``bptt_segments`` give BPTT through k segments directly.  Normalised
    slots have RMS 1 (the paper's unit L2 norm scaled by sqrt(D), the scale of normalised hidden states).

    Args: ``LanguageModel``'s, plus ``segment_len`` S (32), ``num_memory`` K slots (8) and
    ``n_heads`` for the read and write attentions (4; must divide d_model).
    State (``SegmentMemoryState``): K * D floats plus the ids of the unfinished segment.
    """

    def __init__(self, vocab_size: int, d_model: int, layers=("attention", "attention"), *, n_heads: int = 4,
                 **kwargs):
        check_divisor("n_heads", n_heads, d_model, "d_model")
        super().__init__(vocab_size, d_model, layers, **kwargs)
        self.n_heads = n_heads
        self.config.update(n_heads=n_heads)
        D, L = d_model, len(self.blocks)
        self.read_norms = nn.ModuleList(RMSNorm(D, eps=1e-6, upcast=torch.float32) for _ in range(L))
        self.read_q = nn.ModuleList(nn.Linear(D, D, bias=False) for _ in range(L))
        self.read_kv = nn.ModuleList(nn.Linear(D, 2 * D, bias=False) for _ in range(L))
        self.read_o = nn.ModuleList(nn.Linear(D, D, bias=False) for _ in range(L))
        self.write_q = nn.Linear(D, D, bias=False)
        self.write_kv = nn.Linear(D, 2 * D, bias=False)
        self.write_o = nn.Linear(D, D, bias=False)
        self.write_bias = nn.Parameter(torch.zeros(self.num_memory, D))  # (K, D): the slots' terminal directions
        nn.init.normal_(self.memory_init, std=1.0)  # M_0 at the RMS of the written (normalised) slots

    @classmethod
    def extra_arguments(cls) -> tuple[str, ...]:
        return (*super().extra_arguments(), "n_heads")

    def _heads(self, x: Tensor) -> Tensor:
        return rearrange(x, "b n (h d) -> b h n d", h=self.n_heads)

    def _read(self, layer: int, x: Tensor, memory: Tensor) -> Tensor:
        """x (B, S, D) attending to the slots memory (B, K, D) -> the residual update (B, S, D)."""
        q = self._heads(self.read_q[layer](self.read_norms[layer](x)))  # (B, H, S, d)
        k, v = (self._heads(t) for t in self.read_kv[layer](memory.to(x.dtype)).chunk(2, dim=-1))  # (B, H, K, d)
        out = F.scaled_dot_product_attention(q, k, v)  # every token sees every slot (the memory is past)
        return self.read_o[layer](rearrange(out, "b h n d -> b n (h d)"))

    def _write(self, memory: Tensor, h: Tensor) -> Tensor:
        """Slot attention over [own slot ; segment]: memory (B, K, D), h (B, S, D) -> new memory (B, K, D)."""
        memory = memory.to(h.dtype)
        q = self._heads(self.write_q(memory))  # (B, H, K, d)
        k_self, v_self = (self._heads(t) for t in self.write_kv(memory).chunk(2, dim=-1))  # (B, H, K, d)
        k_seg, v_seg = (self._heads(t) for t in self.write_kv(h).chunk(2, dim=-1))  # (B, H, S, d)
        scale = 1.0 / math.sqrt(q.shape[-1])
        own_score = (q * k_self).sum(-1, keepdim=True) * scale  # (B, H, K, 1): slot i with itself only
        seg_scores = q @ k_seg.transpose(-1, -2) * scale  # (B, H, K, S)
        weights = torch.softmax(torch.cat([own_score, seg_scores], dim=-1).float(), dim=-1).to(h.dtype)
        out = weights[..., :1] * v_self + weights[..., 1:] @ v_seg  # (B, H, K, d)
        new = self.write_o(rearrange(out, "b h k d -> b k (h d)")) + self.write_bias  # (B, K, D)
        return F.normalize(new, dim=-1) * math.sqrt(self.d_model)

    def _segment(self, memory: Tensor, ids: Tensor, write: bool) -> tuple[Tensor, Tensor]:
        x = self.embedding(ids)  # (B, S, D)
        state = self._backbone_state(ids.shape[0])
        convs = state.convs or (None,) * len(self.blocks)
        for layer, (block, layer_state, conv_state) in enumerate(zip(self.blocks, state.layers, convs, strict=True)):
            x = x + self._read(layer, x, memory)
            x, _, _ = block(x, layer_state, conv_state)
        h = self.norm(x)
        return h, (self._write(memory, h) if write else memory)
