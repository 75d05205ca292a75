"""MoM: Mixture-of-Memories, several gated-delta-rule memories behind a top-k token router."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules import RMSNorm, ShortConvolution, decay_init, delta_rule_step, gated_log_decay, head_dims, l2norm, own
from ..ops.linear_attn import IMPLS, delta_rule, state_dtype
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_bool, check_choice, check_int, check_positive

__all__ = ["MoM", "MoMState", "Routing", "ShiftedProducts", "routed_short_conv", "routed_short_conv_step",
           "shifted_products"]


class MoMState(NamedTuple):
    """Recurrent memory of one MoM layer; Mt = M routed memories (+1 shared, last, when enabled).

    conv_q (B, H*K, conv_size-1): the last inputs of the query convolution; conv_k (B, Mt, H*K, conv_size-1)
    and conv_v (B, Mt, H*V, conv_size-1): per memory, the last inputs routed to it (activation dtype).
    memory: (B, Mt, H, K, V), float32 at least.
    """

    conv_q: Tensor
    conv_k: Tensor
    conv_v: Tensor
    memory: Tensor


class Routing(NamedTuple):
    """The router's decision for tokens x (..., D).

    probs: softmax(x W_g) over the M routed memories, (..., M) (what a load-balancing loss uses).
    weights: renormalised top-k weight per memory, 0 where not selected, 1 for the shared memory, (..., Mt).
    mask: whether each memory is written at that token, (..., Mt) bool.
    """

    probs: Tensor
    weights: Tensor
    mask: Tensor


def routed_short_conv(u: Tensor, mask: Tensor, buffer: Tensor, conv: ShortConvolution) -> tuple[Tensor, Tensor]:
    """SiLU(causal depthwise conv) of each memory over only the tokens routed to it.

    u (B, M, T, C) inputs at every token; mask (B, M, T) bool; buffer (B, M, C, W-1) the last W-1
    inputs each memory received.  Returns (B, M, T, C), zero at unrouted tokens, and the new buffer.
    """
    B, M, T, C = u.shape
    W1 = buffer.shape[-1]
    rank = mask.long().cumsum(-1) - 1  # (B, M, T): index of each routed token in its memory's subsequence
    slot = torch.where(mask, rank, T)[..., None].expand(-1, -1, -1, C)  # unrouted tokens -> spare slot T
    compact = u.new_zeros(B, M, T + 1, C).scatter_add(2, slot, u.masked_fill(~mask[..., None], 0))
    padded = torch.cat([buffer.to(u.dtype), compact[:, :, :T].transpose(-1, -2)], dim=-1)  # (B, M, C, W1+T)
    y = F.conv1d(padded.reshape(B * M, C, W1 + T), conv.weight, conv.bias, groups=C)  # (B*M, C, T)
    y = F.silu(y).reshape(B, M, C, T).transpose(-1, -2)  # (B, M, T, C): i-th routed token at i
    y = y.gather(2, rank.clamp(min=0)[..., None].expand(-1, -1, -1, C))  # back to token positions
    y = y.masked_fill(~mask[..., None], 0)
    count = mask.sum(-1)  # (B, M): routed tokens this segment
    last = (count[..., None] + torch.arange(W1, device=u.device))[:, :, None, :]  # (B, M, 1, W1)
    return y, padded.gather(3, last.expand(-1, -1, C, -1))  # the last W1 routed inputs (own memory)


def routed_short_conv_step(u: Tensor, mask: Tensor, buffer: Tensor, conv: ShortConvolution) -> tuple[Tensor, Tensor]:
    """One token of :func:`routed_short_conv`: u (B, M, C), mask (B, M); unselected buffers are kept as is."""
    window = torch.cat([buffer.to(u.dtype), u.unsqueeze(-1)], dim=-1)  # (B, M, C, W)
    return conv.last(window), torch.where(mask[..., None, None], window[..., 1:], buffer.to(u.dtype))


def route_index(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Each memory's routed tokens, in order: mask (B, G, T) bool -> index (G, B, L), count (G, B).

    L is the largest count; ``index[m, b, :count[m, b]]`` are the positions of the tokens routed to
    memory m in row b, the rest (pads) are 0.
    """
    B, G, T = mask.shape
    count = mask.sum(-1)  # (B, G)
    L = int(count.max())
    slot = torch.where(mask, mask.long().cumsum(-1) - 1, L)  # unrouted tokens -> spare slot L, dropped
    index = mask.new_zeros(B, G, L + 1, dtype=torch.long)
    index = index.scatter(-1, slot, torch.arange(T, device=mask.device).expand(B, G, T))[..., :L]
    return index.transpose(0, 1), count.transpose(0, 1)


def shifted_products(padded: Tensor, w: Tensor) -> Tensor:
    """``sum_i padded[..., i : i + L, :] * w[:, i]``: padded (..., W-1+L, C), w (C, W) -> (..., L, C), a causal
    depthwise convolution, channels last.  Plain autograd: the spec :class:`ShiftedProducts` is tested against."""
    W1, L = w.shape[-1] - 1, padded.shape[-2] - w.shape[-1] + 1
    y = padded[..., W1:, :] * w[:, W1]
    for i in range(W1):
        y = y + padded[..., i : i + L, :] * w[:, i]
    return y


class ShiftedProducts(torch.autograd.Function):
    """:func:`shifted_products` with a hand-written backward: the input's gradient is built in one buffer
    (autograd zero-fills a full-size copy for every shifted slice, then sums them) and the weight's is one
    product-sum per tap; the forward accumulates in place."""

    @staticmethod
    def forward(ctx, padded: Tensor, w: Tensor) -> Tensor:
        W1, L = w.shape[-1] - 1, padded.shape[-2] - w.shape[-1] + 1
        y = padded[..., W1:, :] * w[:, W1]
        for i in range(W1):
            y.addcmul_(padded[..., i : i + L, :], w[:, i])
        ctx.save_for_backward(padded, w)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        padded, w = ctx.saved_tensors
        W1, L = w.shape[-1] - 1, grad.shape[-2]
        g_padded = torch.empty_like(padded)
        g_padded[..., :W1, :] = 0
        torch.mul(grad, w[:, W1], out=g_padded[..., W1:, :])
        for i in range(W1):
            g_padded[..., i : i + L, :].addcmul_(grad, w[:, i])
        rows = tuple(range(grad.dim() - 1))
        g_w = torch.stack([(grad * padded[..., i : i + L, :]).sum(rows) for i in range(W1 + 1)], dim=-1)  # (C, W)
        return g_padded, g_w.to(w.dtype)


def gathered_short_conv(u: Tensor, count: Tensor, buffer: Tensor, conv: ShortConvolution) -> tuple[Tensor, Tensor]:
    """:func:`routed_short_conv` on gathered inputs: u (G, B, L, C), each memory's routed tokens first,
    count (G, B) of them real; buffer (B, G, C, W-1).  Returns (G, B, L, C) (garbage past the count)
    and the new buffer (B, G, C, W-1).  Channels last, as a sum of shifted products (no transposes)."""
    G, B, L, C = u.shape
    W1 = buffer.shape[-1]
    padded = torch.cat([buffer.permute(1, 0, 3, 2).to(u.dtype), u], dim=2)  # (G, B, W1+L, C)
    y = ShiftedProducts.apply(padded, conv.weight[:, 0])  # (G, B, L, C)
    if conv.bias is not None:
        y = y + conv.bias
    last = (count[..., None] + torch.arange(W1, device=u.device))[..., None]  # (G, B, W1, 1)
    return F.silu(y), padded.gather(2, last.expand(-1, -1, -1, C)).permute(1, 0, 3, 2)


@register_mixer("mom")
class MoM(Mixer):
    """MoM: Mixture-of-Memories, top-k routed gated-delta-rule memories (Du et al. 2025, arXiv 2502.13685).

    "MoM: Linear Sequence Modeling with Mixture-of-Memories".  The layer follows the authors' fla
    ``fla/layers/mom.py`` ``MomAttention`` with the paper's best update rule, Gated DeltaNet's.  Per
    token, with M routed memories and one shared memory, per head (row vectors)::

        p_t = softmax(x_t W_g) (M,),   sel_t = top-k(p_t),   w_t,m = p_t,m / sum_{j in sel_t} p_t,j
        q_t = l2norm(SiLU(conv_q(x W_q))) / sqrt(K)                    # one query for all memories
        for m in sel_t and the shared memory (the others, and their conv buffers, are untouched):
            k^m_t, v^m_t, beta^m_t, g^m_t: as Gated DeltaNet's, from the memory's own W_k^m, W_v^m, W_beta^m, W_a^m
            S^m_t = exp(g^m_t) (I - beta^m_t k^m_t^T k^m_t) S^m_{t-1} + beta^m_t k^m_t^T v^m_t
        o_t = q_t (sum_{m in sel_t} w_t,m S^m_t + S^shared_t)     y_t = concat_h(RMSNorm(o_t) * SiLU(x_t W_g')) W_o

    A memory's short convolutions run over only its routed tokens (as fla).  ``forward`` gathers each
    memory's tokens, padded per row to the longest with tokens that change nothing (beta = g = k = v =
    0), and runs the kernel once per memory; :meth:`forward_masked` is the simple form it is tested
    against (M / top_k times the projection, about (M + 1) / (top_k + 1) times the kernel work).

    Deviations from fla's code: the query is convolved once over every token and read against the
    mixed memory, as the paper's equations (fla convolves ``q_proj(x)`` over each memory's routed
    tokens, reading each memory with its own q^m_t); the per-memory projections are stacked into one
    ``Linear`` each; Linear layers keep PyTorch's default init (fla: Xavier-uniform, gain 2^-2.5).
    Not implemented: the MoE load-balancing auxiliary loss (not part of the mixer contract); ``route(x)``
    returns the router probabilities and choices it is computed from.

    Args:
        d_model: width D.
        num_memories: routed memories M (4).
        topk: memories each token writes to and reads from (2); at most ``num_memories``.
        shared_memory: add a memory every token writes and reads with weight 1 (True).
        n_heads: heads H (2).
        head_dim: key width K per head; None is ``(d_model // 2) // n_heads`` (MomAttention's
            ``num_heads * head_dim = hidden_size / 2``).
        expand_v: value width V = expand_v * K (2, as MomAttention).
        use_gate: SiLU output gate with the gated RMSNorm (True, MomAttention's ``use_output_gate``).
        conv_size, conv_bias, norm_eps, chunk_size, impl: as DeltaNet (4, False, 1e-5, 64, "chunked").

    State (:class:`MoMState`), constant in T: ``Mt*H*K*V*4 + (H*K + Mt*H*K + Mt*H*V) * (conv_size - 1) *
    elem_bytes`` bytes per batch row, Mt = M + shared_memory.
    """

    state_growth = "constant"
    contract_kwargs = {"chunk_size": 4}  # 13-token contract sequences cross several chunks

    def __init__(self, d_model: int, *, num_memories: int = 4, topk: int = 2, shared_memory: bool = True,
                 n_heads: int = 2, head_dim: int | None = None, expand_v: int | float = 2, use_gate: bool = True,
                 conv_size: int = 4, conv_bias: bool = False, norm_eps: float = 1e-5, chunk_size: int = 64,
                 impl: str = "chunked"):
        super().__init__(d_model)
        check_int(num_memories=num_memories, topk=topk, n_heads=n_heads, conv_size=conv_size, chunk_size=chunk_size)
        check_positive(expand_v=expand_v, norm_eps=norm_eps)
        check_bool(shared_memory=shared_memory, use_gate=use_gate, conv_bias=conv_bias)
        check_choice("impl", impl, IMPLS)
        if topk > num_memories:
            raise ArgumentError("topk", f"<= num_memories={num_memories}", repr(topk))
        head_dim, head_v = head_dims(d_model, n_heads, head_dim, (self.d_model // 2) // n_heads, expand_v)
        self.num_memories, self.topk, self.shared_memory = num_memories, topk, shared_memory
        self.n_mem = num_memories + int(shared_memory)  # Mt, the memories held in the state
        self.n_heads, self.head_k_dim, self.head_v_dim = n_heads, head_dim, head_v
        self.expand_v, self.use_gate, self.conv_size = expand_v, use_gate, conv_size
        self.chunk_size, self.impl = chunk_size, impl
        D, Mt, H, K, V = self.d_model, self.n_mem, n_heads, head_dim, self.head_v_dim

        self.gate = nn.Linear(D, num_memories, bias=False)
        self.q_proj = nn.Linear(D, H * K, bias=False)
        # [memory 0 | ... | shared] along the output: fla's ModuleLists k_proj[m], ..., shared_k, ...
        self.k_proj = nn.Linear(D, Mt * H * K, bias=False)
        self.v_proj = nn.Linear(D, Mt * H * V, bias=False)
        self.b_proj = nn.Linear(D, Mt * H, bias=False)
        self.a_proj = nn.Linear(D, Mt * H, bias=False)
        self.A_log, self.dt_bias = decay_init(H)  # per head, shared by the memories (as the reference)
        self.q_conv1d = ShortConvolution(H * K, conv_size, bias=conv_bias)
        self.k_conv1d = ShortConvolution(H * K, conv_size, bias=conv_bias)  # weights shared by the memories
        self.v_conv1d = ShortConvolution(H * V, conv_size, bias=conv_bias)
        if use_gate:
            self.g_proj = nn.Linear(D, H * V, bias=False)
        self.o_norm = RMSNorm(V, eps=norm_eps)
        self.o_proj = nn.Linear(H * V, D, bias=False)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> MoMState:
        check_int(batch_size=batch_size)
        device = self.q_proj.weight.device if device is None else device
        dtype = self.q_proj.weight.dtype if dtype is None else dtype
        B, Mt, H, K, V, W1 = batch_size, self.n_mem, self.n_heads, self.head_k_dim, self.head_v_dim, self.conv_size - 1
        return MoMState(
            conv_q=self.q_conv1d.init_state(B, device=device, dtype=dtype),
            conv_k=torch.zeros(B, Mt, H * K, W1, device=device, dtype=dtype),
            conv_v=torch.zeros(B, Mt, H * V, W1, device=device, dtype=dtype),
            memory=torch.zeros(B, Mt, H, K, V, device=device, dtype=state_dtype(dtype)),
        )

    def route(self, x: Tensor) -> Routing:
        """Router for tokens x (..., D): softmax, deterministic ``torch.topk``, renormalised weights."""
        probs = torch.softmax(self.gate(x).to(state_dtype(x.dtype)), dim=-1)  # (..., M)
        top, index = torch.topk(probs, self.topk, dim=-1)  # (..., k)
        weights = torch.zeros_like(probs).scatter(-1, index, top / top.sum(-1, keepdim=True))
        mask = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, index, True)
        if self.shared_memory:
            weights = torch.cat([weights, torch.ones_like(weights[..., :1])], dim=-1)  # (..., Mt)
            mask = torch.cat([mask, torch.ones_like(mask[..., :1])], dim=-1)
        return Routing(probs, weights, mask)

    def _memory_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-memory conv inputs and gates: x (..., D) -> k (..., Mt, H*K), v (..., Mt, H*V), beta, g (..., Mt, H)."""
        Mt, H = self.n_mem, self.n_heads
        k = self.k_proj(x).unflatten(-1, (Mt, -1))
        v = self.v_proj(x).unflatten(-1, (Mt, -1))
        beta = torch.sigmoid(self.b_proj(x)).unflatten(-1, (Mt, H))
        g = gated_log_decay(self.a_proj(x).unflatten(-1, (Mt, H)), self.A_log, self.dt_bias)
        return k, v, beta, g

    def _query(self, q: Tensor) -> Tensor:
        """(..., H*K) after the conv -> l2-normalised, K^-1/2-scaled per-head query (..., H, K)."""
        return l2norm(q.unflatten(-1, (self.n_heads, self.head_k_dim))) * self.head_k_dim**-0.5

    def read_out(self, o: Tensor, x: Tensor) -> Tensor:
        """Per-head norm (gated when ``use_gate``) and output projection: o (..., H, V), x (..., D) -> (..., D)."""
        gate = self.g_proj(x).unflatten(-1, (self.n_heads, self.head_v_dim)) if self.use_gate else None
        return self.o_proj(self.o_norm(o, gate).flatten(-2))

    def _projections(self) -> Tensor:
        """Each memory's k, v, beta and decay projections stacked: (Mt, H*K + H*V + 2H, D)."""
        return torch.cat([p.weight.view(self.n_mem, -1, self.d_model)
                          for p in (self.k_proj, self.v_proj, self.b_proj, self.a_proj)], dim=1)

    def _memories(self, out: Tensor, x: Tensor, q: Tensor, index: Tensor | None, count: Tensor, weights: Tensor | None,
                  W: Tensor, conv_k: Tensor, conv_v: Tensor, memory: Tensor) -> tuple[Tensor, ...]:
        """G memories, each run over only the tokens routed to it; their weighted outputs added to ``out``.

        out (B*T, H*V): the mixed read-out so far.  x (B*T, D), q (B*T, H, K): every token.  index (G, B, L):
        positions in B*T of each memory's routed tokens, in order, the first count (G, B) real, the rest
        pads (None: every token, L = T); weights (G, B, L): router weights, 0 at pads (None: 1); W (G,
        H*K + H*V + 2H, D): their projections; conv_k, conv_v (B, G, C, W-1), memory (B, G, H, K, V).  A
        pad has beta = 0, g = 0 and k = v = 0, so it leaves its memory exactly as it is.  Returns out and
        the G memories' new conv_k, conv_v and memory.
        """
        G, B = count.shape
        H, K, V = self.n_heads, self.head_k_dim, self.head_v_dim
        if index is not None:  # each memory's routed tokens, (G*B*L, .)
            x, q = x.index_select(0, index.flatten()), q.index_select(0, index.flatten())
        L = x.shape[0] // (G * B)
        proj = torch.bmm(x.reshape(G, B * L, -1), W.transpose(1, 2)).view(G, B, L, -1)  # projections at once
        k, v, beta, g = proj.split([H * K, H * V, H, H], dim=-1)
        k, conv_k = gathered_short_conv(k, count, conv_k, self.k_conv1d)  # (G, B, L, H*K)
        v, conv_v = gathered_short_conv(v, count, conv_v, self.v_conv1d)  # (G, B, L, H*V)
        beta, g = torch.sigmoid(beta), gated_log_decay(g, self.A_log, self.dt_bias)  # (G, B, L, H)
        if index is not None:
            valid = (torch.arange(L, device=x.device) < count[..., None])[..., None]  # (G, B, L, 1)
            k, v, beta, g = k * valid, v * valid, beta * valid, g * valid
        k = l2norm(k.unflatten(-1, (H, K)))
        q, k, v, beta, g = (t.reshape(G, B, L, H, -1).transpose(2, 3) for t in (q, k, v, beta, g))  # (G, B, H, L, .)
        lengths = [L] * G if index is None else count.amax(1).tolist()
        memories = []
        # a call per memory over its own length (small tensors stay in cache); unbind, not [i]: indexing in a
        # loop makes each backward zero-fill the whole (G, ...) gradient
        per_memory = zip(lengths, *(t.unbind(0) for t in (q, k, v, beta, g)), memory.unbind(1), strict=True)
        for i, (n, q_i, k_i, v_i, beta_i, g_i, memory_i) in enumerate(per_memory):
            if n < L:
                q_i, k_i, v_i, beta_i, g_i = (t[:, :, :n] for t in (q_i, k_i, v_i, beta_i, g_i))
            o, S = delta_rule(q_i, k_i, v_i, beta_i[..., 0], g_i[..., 0], memory_i, impl=self.impl,
                              chunk_size=self.chunk_size)
            o = o.transpose(1, 2).reshape(B * n, H * V)  # (B*n, H*V)
            if index is None:
                out = out + o
            else:
                out = out.index_add(0, index[i, :, :n].flatten(), o * weights[i, :, :n].reshape(-1, 1).to(o.dtype))
            memories.append(S)
        return out, conv_k, conv_v, torch.stack(memories, dim=1)

    def _forward(self, x: Tensor, state: MoMState) -> tuple[Tensor, MoMState]:
        """Each memory over its gathered routed tokens; the same numbers as :meth:`forward_masked`."""
        B, T, D = x.shape
        M, H, K, V = self.num_memories, self.n_heads, self.head_k_dim, self.head_v_dim
        route = self.route(x)  # weights, mask (B, T, Mt)
        q, conv_q = self.q_conv1d(self.q_proj(x), state.conv_q)  # (B, T, H*K), every token
        q, x_flat, W = self._query(q).reshape(B * T, H, K), x.reshape(B * T, D), self._projections()
        index, count = route_index(route.mask[..., :M].transpose(1, 2))  # (M, B, L), (M, B)
        L = index.shape[-1]
        index = index + torch.arange(B, device=x.device)[:, None] * T  # positions in B*T
        weights = route.weights[..., :M].reshape(B * T, M).T.gather(1, index.reshape(M, B * L)).view(M, B, L)
        weights = weights * (torch.arange(L, device=x.device) < count[..., None])  # pads: 0
        o, *routed = self._memories(x.new_zeros(B * T, H * V), x_flat, q, index, count, weights, W[:M],
                                    state.conv_k[:, :M], state.conv_v[:, :M], state.memory[:, :M])
        states = [routed]
        if self.shared_memory:
            o, *shared = self._memories(o, x_flat, q, None, count.new_full((1, B), T), None, W[M:],
                                        state.conv_k[:, M:], state.conv_v[:, M:], state.memory[:, M:])
            states.append(shared)
        conv_k, conv_v, memory = (torch.cat(s, dim=1) for s in zip(*states, strict=True))
        return self.read_out(o.view(B, T, H, V), x), MoMState(conv_q, conv_k, conv_v, memory)

    def forward_masked(self, x: Tensor, state: MoMState | None = None) -> tuple[Tensor, MoMState]:
        """:meth:`forward` the simple way: every memory at every token, beta = g = 0 where not selected."""
        self.check_input(x)
        B, T, _ = x.shape
        if state is None:
            state = self.init_state(B, device=x.device, dtype=x.dtype)
        if T == 0:
            return torch.zeros_like(x), state
        Mt, H, K, V = self.n_mem, self.n_heads, self.head_k_dim, self.head_v_dim
        route = self.route(x)  # weights, mask (B, T, Mt)
        mask = route.mask.transpose(1, 2)  # (B, Mt, T)
        q, conv_q = self.q_conv1d(self.q_proj(x), state.conv_q)  # (B, T, H*K), every token
        q = self._query(q)  # (B, T, H, K)
        k, v, beta, g = self._memory_inputs(x)  # (B, T, Mt, H*K), (B, T, Mt, H*V), (B, T, Mt, H) x2
        k, conv_k = routed_short_conv(k.transpose(1, 2), mask, state.conv_k, self.k_conv1d)  # (B, Mt, T, H*K)
        v, conv_v = routed_short_conv(v.transpose(1, 2), mask, state.conv_v, self.v_conv1d)  # (B, Mt, T, H*V)
        k = l2norm(k.unflatten(-1, (H, K)))  # (B, Mt, T, H, K); zero where not routed

        # memories stacked into the head dimension: (B, Mt*H, T, .); not selected -> beta = 0, g = 0
        def heads(t: Tensor) -> Tensor:  # (B, Mt, T, H, X) -> (B, Mt*H, T, X)
            return t.transpose(2, 3).reshape(B, Mt * H, T, t.shape[-1])

        unrouted = ~route.mask[..., None]  # (B, T, Mt, 1)
        beta = beta.masked_fill(unrouted, 0).permute(0, 2, 3, 1).reshape(B, Mt * H, T)
        g = g.masked_fill(unrouted, 0).permute(0, 2, 3, 1).reshape(B, Mt * H, T)
        q_all = q.unsqueeze(1).expand(B, Mt, T, H, K)
        o, memory = delta_rule(heads(q_all), heads(k), heads(v.unflatten(-1, (H, V))), beta, g,
                               state.memory.reshape(B, Mt * H, K, V), impl=self.impl, chunk_size=self.chunk_size)
        o = torch.einsum("bmhtv,btm->bthv", o.reshape(B, Mt, H, T, V), route.weights.to(o.dtype))  # (B, T, H, V)
        new_state = MoMState(conv_q, conv_k, conv_v, own(memory.reshape(B, Mt, H, K, V)))
        return self.read_out(o, x), new_state

    def step(self, x: Tensor, state: MoMState) -> tuple[Tensor, MoMState]:
        """One token ``x (B, D)``: selected memories take a gated delta-rule write, the others are kept as is."""
        self.check_input(x, step=True)
        B = x.shape[0]
        Mt, H, K, V = self.n_mem, self.n_heads, self.head_k_dim, self.head_v_dim
        route = self.route(x)  # weights, mask (B, Mt)
        q, conv_q = self.q_conv1d.step(self.q_proj(x), state.conv_q)  # (B, H*K)
        q = self._query(q)  # (B, H, K)
        k, v, beta, g = self._memory_inputs(x)  # (B, Mt, H*K), (B, Mt, H*V), (B, Mt, H) x2
        k, conv_k = routed_short_conv_step(k, route.mask, state.conv_k, self.k_conv1d)
        v, conv_v = routed_short_conv_step(v, route.mask, state.conv_v, self.v_conv1d)
        k = l2norm(k.unflatten(-1, (H, K)))  # (B, Mt, H, K)
        q_all = q.unsqueeze(1).expand(B, Mt, H, K)
        o, written = delta_rule_step(q_all.reshape(B, Mt * H, K), k.reshape(B, Mt * H, K),
                                     v.reshape(B, Mt * H, V), beta.reshape(B, Mt * H), g.reshape(B, Mt * H),
                                     state.memory.reshape(B, Mt * H, K, V))
        memory = torch.where(route.mask[:, :, None, None, None], written.reshape(B, Mt, H, K, V), state.memory)
        o = torch.einsum("bmhv,bm->bhv", o.to(x.dtype).reshape(B, Mt, H, V), route.weights.to(x.dtype))
        return self.read_out(o, x), MoMState(conv_q, conv_k, conv_v, memory)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_memories={self.num_memories}, topk={self.topk}, "
                f"shared_memory={self.shared_memory}, n_heads={self.n_heads}, head_k_dim={self.head_k_dim}, "
                f"head_v_dim={self.head_v_dim}, use_gate={self.use_gate}, conv_size={self.conv_size}, "
                f"impl={self.impl!r}, chunk_size={self.chunk_size}")
