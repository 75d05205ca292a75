"""Titans' neural long-term memory (LMM): an MLP whose weights are the state, trained at test time."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..modules import rms_norm
from ..ops.linear_attn import state_dtype
from ..protocol import Mixer
from ..registry import register_mixer
from ..validation import ArgumentError, check_bool, check_divisor, check_int, check_positive

__all__ = ["Titans", "TitansState", "memory_apply", "memory_backward", "memory_grads"]

Weights = tuple[Tensor, ...]  # per memory layer l: (B, H, in_l, out_l)


class TitansState(NamedTuple):
    """Memory of one Titans layer: per layer (B, H, in_l, out_l), float32 or wider, the weights at the
    current chunk's start (where gradients are taken), the current weights theta_t and the momentum S_t;
    ``position`` (B,) int64, tokens already read in the current chunk (0 <= position < chunk_size).
    """

    start: Weights
    weights: Weights
    momentum: Weights
    position: Tensor


def memory_apply(weights: Weights, x: Tensor) -> Tensor:
    """M_theta(x): ``x (B, H, n, in)`` through the layers (weights (B, H, in, out)), SiLU between them."""
    for i, W in enumerate(weights):
        x = torch.matmul(x, W)
        if i < len(weights) - 1:
            x = F.silu(x)
    return x


def memory_backward(weights: Weights, k: Tensor, v: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Hand-written backward of ``||M(k_s) - v_s||^2``: weights per layer (B, H, in_l, out_l), k, v (B, H, n, d)
    -> inputs x_l (B, H, n, in_l) and errors delta_l (B, H, n, out_l), grad_{W_l} loss_s = x_{l,s}^T delta_{l,s}."""
    return _backward_through(lambda h, i: h @ weights[i], lambda g, i: g @ weights[i].transpose(-1, -2),
                             len(weights), k, v)


def _scaled_product(c: Tensor, h: Tensor, W: Tensor) -> Tensor:
    """``c * (h @ W)`` with c (B, H, n or 1, 1) a scale per row of h: applied to the narrower of h and h @ W."""
    return (c * h) @ W if h.shape[-1] < W.shape[-1] else c * (h @ W)


def _add_product(M: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``M + a @ b`` over the batch dimensions (B, H): one ``baddbmm`` (no separate product and sum)."""
    return torch.baddbmm(M.flatten(0, 1), a.flatten(0, 1), b.flatten(0, 1)).view(M.shape)


def _backward_through(times, times_t, n_layers: int, k: Tensor, v: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """:func:`memory_backward` with the weights given as products: ``times(h, l) = h W_l``,
    ``times_t(g, l) = g W_l^T`` (so the parallel form can apply weights it never materialises)."""
    inputs, pre = [], []
    h = k
    for i in range(n_layers):
        inputs.append(h)
        a = times(h, i)  # (B, H, n, out_l)
        pre.append(a)
        h = F.silu(a) if i < n_layers - 1 else a
    deltas = [2 * (h - v)]  # d loss / d output
    for i in range(n_layers - 1, 0, -1):
        back = times_t(deltas[0], i)  # (B, H, n, in_i)
        s = torch.sigmoid(pre[i - 1])  # SiLU'(a) = s (1 + a (1 - s)) = s + SiLU(a) (1 - s), SiLU(a) = inputs[i]
        deltas.insert(0, back * torch.addcmul(s, inputs[i], 1 - s))
    return inputs, deltas


def memory_grads(weights: Weights, k: Tensor, v: Tensor) -> Weights:
    """Dense per-token gradients, each (B, H, n, in_l, out_l) (the step and tests use these)."""
    inputs, deltas = memory_backward(weights, k, v)
    return tuple(x.unsqueeze(-1) * d.unsqueeze(-2) for x, d in zip(inputs, deltas, strict=True))


def _segment_products(g: Tensor) -> Tensor:
    """``g (..., n) -> M (..., n+1, n+1)``, ``M[t, s] = prod_{s<i<=t} g_i`` (g_0 unused) for t >= s, else 0.

    A masked cumprod, not exp(cumsum(log g)): gates may be exactly 0 (no division, no log(0)).
    """
    n = g.shape[-1]
    g = torch.cat([torch.ones_like(g[..., :1]), g], dim=-1)  # (..., n+1)
    idx = torch.arange(n + 1, device=g.device)
    after = idx[None, :] > idx[:, None]  # [s, i]: i > s
    X = torch.where(after, g.unsqueeze(-2), torch.ones_like(g).unsqueeze(-2))  # (..., n+1 (s), n+1 (i))
    C = torch.cumprod(X, dim=-1)  # C[s, t] = prod_{s<i<=t} g_i
    return torch.tril(C.transpose(-1, -2))  # [t, s]


def decay_shares_reference(eta: Tensor, keep: Tensor, lr: Tensor) -> tuple[Tensor, ...]:
    """How much of the window-start memory and of each token's gradient a window of n tokens keeps.

    eta, keep = 1 - alpha, lr: (..., n), tokens t = 1 .. n; E, P the segment products of eta, keep; A = P @ E::

        theta_t = c_w[t] theta_w + c_m[t] S_w + sum_{s<=t} neg_A_lr[t, s] x_s^T delta_s
        S_n     = decay S_w + sum_s neg_m[s] x_s^T delta_s

    Returns c_w = P[t, 0], c_m = A[t, 0], neg_m = -E[n, s] lr_s (..., n, 1), neg_A_lr = -A[t, s] lr_s
    (..., n, n), decay = E[n, 0] (..., 1, 1).  Plain autograd: the spec :class:`DecayShares` is tested against.
    """
    E, P = _segment_products(eta), _segment_products(keep)  # (..., n+1, n+1)
    A = P[..., 1:, 1:] @ E[..., 1:, :]  # (..., n, n+1)
    return (P[..., 1:, 0, None], A[..., 0, None], (E[..., -1, 1:] * -lr).unsqueeze(-1),
            A[..., 1:] * -lr.unsqueeze(-2), E[..., -1, 0, None, None])


def _segment_products_backward(M: Tensor, G: Tensor) -> Tensor:
    """Gradient of the n gates of ``M = _segment_products(g)`` given ``dL/dM`` rows 1 .. n, ``G (..., n, n+1)``
    (row 0 of M does not depend on g).  Products only, so zero gates are fine::

        dL/dg_i = sum_{s < i <= t} G[t, s] M[i-1, s] M[t, i] = sum_s M[i-1, s] (G^T M)[s, i]
    """
    Z = M[..., 1:, :].transpose(-1, -2) @ G  # (..., n+1, n+1): Z[i, s] = (G^T M)[s, i] = sum_t M[t, i] G[t, s]
    return (M[..., :-1, :] * Z[..., 1:, :]).sum(-1)  # (..., n): row i-1 of M with row i of Z


class DecayShares(torch.autograd.Function):
    """:func:`decay_shares_reference` with a hand-written backward: four (n+1)^3 matmuls and a few
    passes, where autograd through where / cumprod / tril / slices makes about thirty passes over
    (n+1)^2 tensors (cumprod's own backward checks for zeros and divides; each slice zero-fills)."""

    @staticmethod
    def forward(ctx, eta: Tensor, keep: Tensor, lr: Tensor) -> tuple[Tensor, ...]:
        E, P = _segment_products(eta), _segment_products(keep)  # (..., n+1, n+1)
        A = P[..., 1:, 1:] @ E[..., 1:, :]  # (..., n, n+1)
        ctx.save_for_backward(E, P, A, lr)
        return (P[..., 1:, 0, None].contiguous(), A[..., 0, None].contiguous(), (E[..., -1, 1:] * -lr).unsqueeze(-1),
                A[..., 1:] * -lr.unsqueeze(-2), E[..., -1, 0, None, None].contiguous())

    @staticmethod
    def backward(ctx, g_cw: Tensor, g_cm: Tensor, g_m: Tensor, g_A_lr: Tensor, g_decay: Tensor):
        E, P, A, lr = ctx.saved_tensors
        g_m = g_m.squeeze(-1)  # (..., n)
        gA = torch.cat([g_cm, g_A_lr * -lr.unsqueeze(-2)], dim=-1)  # (..., n, n+1): dL/dA
        g_lr = -(g_A_lr * A[..., 1:]).sum(-2) - g_m * E[..., -1, 1:]
        gE = P[..., 1:, 1:].transpose(-1, -2) @ gA  # (..., n, n+1): dL/dE, rows 1 .. n
        gE[..., -1, :] += torch.cat([g_decay[..., 0], g_m * -lr], dim=-1)
        gP = torch.cat([g_cw, gA @ E[..., 1:, :].transpose(-1, -2)], dim=-1)  # (..., n, n+1): dL/dP, rows 1 .. n
        return _segment_products_backward(E, gE), _segment_products_backward(P, gP), g_lr


@register_mixer("titans")
class Titans(Mixer):
    """Titans neural long-term memory: an MLP trained online by momentum SGD with decay (Behrouz et al. 2024).

    "Titans: Learning to Memorize at Test Time", arXiv 2501.00663, sections 3.1-3.2: the memory module
    alone (MAC / MAG / MAL are layer stacks: ``["titans", "attention"]`` is MAL-like).  Per head (d = D /
    H), M_theta an MLP of ``memory_depth`` layers (2: ``SiLU(x W1) W2``, W1 (d, E d), W2 (E d, d); 1: ``x W``)::

        q_t, k_t, v_t = L2norm(SiLU(x_t W_Q)), L2norm(SiLU(x_t W_K)), L2norm(SiLU(x_t W_V))
        eta_t, alpha_t, lr_t = sigmoid(x_t w_eta + b), sigmoid(x_t w_alpha + b), max_lr * sigmoid(x_t w_lr + b)
        S_t     = eta_t S_{t-1} - lr_t grad_theta ||M_theta(k_t) - v_t||^2 at theta_0   # momentum, "surprise"
        theta_t = (1 - alpha_t) theta_{t-1} + S_t                                       # forgetting
        out_t   = out_proj(RMSNorm(M_{theta_t}(q_t)) * SiLU(x_t W_g))                   # read, optional gate

    theta_0: the chunk-start weights (the paper's mini-batch gradient descent over chunks of b =
    ``chunk_size``); momentum and decay recur per token.  A linear memory with eta = 0, b = 1 is the
    delta rule with beta = 2 lr (DeltaNet when alpha = 0).

    Deviations from the paper: v is L2-normalised by default (``value_norm``); no depthwise convolutions
    after the q/k/v projections and no persistent memory tokens (other layers here provide both); what
    the paper leaves open is fixed here (SiLU in the MLP, no biases, Xavier-uniform learned initial
    theta, gate biases giving eta ~ 0.88, alpha ~ 0.0025, lr ~ 0.012 at init).  The inner loop is not
    stable for every gate value: its step is about b * lr / (1 - eta) summed gradients on correlated
    keys, so keep ``max_lr`` small.  A bias-free MLP memory has a dead point at theta = 0 (every
    gradient vanishes there), which strong forgetting (alpha -> 1 with eta -> 0) can approach.

    Args:
        d_model: width D.
        n_heads: heads H, each with its own memory of width d = D / H; must divide D.
        memory_depth: layers of the memory MLP (2; 1 is a linear memory).
        memory_expansion: hidden width E * d of the MLP (4); unused when ``memory_depth == 1``.
        chunk_size: b, tokens whose gradients share the chunk-start weights (16).
        max_lr: upper bound of the data-dependent inner learning rate lr_t (0.1).
        output_gate: multiply the normalised read-out by SiLU(x W_g) before out_proj (True).
        value_norm: L2-normalise v like q and k (True; the paper does not). The MLP memory's
            curvature grows with its weights, which grow with the targets' scale, so without it the
            stable range of lr depends on the activation scale; False is the paper's v = SiLU(x W_V).

    State (:class:`TitansState`), float32: three copies of the memory weights (chunk start, current,
    momentum; the chunk-start one only for the chunked training), ``H * sum_l in_l * out_l`` numbers each,
    and an int64 position: ``3 * 2 H E d^2 * 4 + 8`` bytes per sequence (786,440 at D = 128, H = 2, E = 4).
    """

    state_growth = "constant"
    contract_kwargs = {"chunk_size": 4, "memory_expansion": 2}
    # tokens the parallel form handles at once (whole chunks, at least one); the state is materialised
    # only between windows, and any value gives the same numbers.  Measured (2-core CPU, 2-layer D = 64,
    # MQAR T = 64, batch 32): 166 ms per AdamW step, 207 ms materialising every chunk (attention: 42 ms)
    window: int = 64

    def __init__(
        self,
        d_model: int,
        *,
        n_heads: int = 2,
        memory_depth: int = 2,
        memory_expansion: int | float = 4,
        chunk_size: int = 16,
        max_lr: float = 0.1,
        output_gate: bool = True,
        value_norm: bool = True,
    ):
        super().__init__(d_model)
        check_int(n_heads=n_heads, memory_depth=memory_depth, chunk_size=chunk_size)
        check_positive(memory_expansion=memory_expansion, max_lr=max_lr)
        check_bool(output_gate=output_gate, value_norm=value_norm)
        check_divisor("n_heads", n_heads, self.d_model, "d_model")
        self.n_heads, self.head_dim = n_heads, self.d_model // n_heads
        hidden = int(memory_expansion * self.head_dim)
        if memory_depth > 1 and hidden < 1:
            raise ArgumentError("memory_expansion", "large enough that int(memory_expansion * d_model / n_heads) >= 1",
                                repr(memory_expansion))
        self.memory_depth, self.memory_expansion, self.hidden = memory_depth, memory_expansion, hidden
        self.chunk_size, self.max_lr = chunk_size, float(max_lr)
        self.output_gate, self.value_norm = output_gate, value_norm

        D, H, d = self.d_model, n_heads, self.head_dim
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.gates = nn.Linear(D, 3 * H, bias=True)  # eta, alpha, lr logits per head
        with torch.no_grad():  # start at eta ~ 0.88, alpha ~ 0.0025 (half-life ~280 tokens), lr ~ 0.12 max_lr
            self.gates.bias.copy_(torch.tensor([2.0, -6.0, -2.0]).repeat_interleave(H))
        dims = [d] + [hidden] * (memory_depth - 1) + [d]
        self.memory_init = nn.ParameterList()  # theta before the first token, learned; per layer (H, in, out)
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            W = torch.empty(H, d_in, d_out)
            for h in range(H):
                nn.init.xavier_uniform_(W[h])
            self.memory_init.append(nn.Parameter(W))
        self.norm_weight = nn.Parameter(torch.ones(D))
        self.gate_proj = nn.Linear(D, D, bias=False) if output_gate else None
        self.out_proj = nn.Linear(D, D, bias=False)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> TitansState:
        check_positive(batch_size=batch_size)
        dtype = state_dtype(self.qkv.weight.dtype if dtype is None else dtype)
        device = self.qkv.weight.device if device is None else device

        def expanded(W: Tensor) -> Tensor:  # (B, H, in, out); a copy: the state owns its memory
            W = W.to(device=device, dtype=dtype).unsqueeze(0).expand(batch_size, *W.shape)
            return W.clone(memory_format=torch.contiguous_format)

        return TitansState(
            start=tuple(expanded(W) for W in self.memory_init),
            weights=tuple(expanded(W) for W in self.memory_init),
            momentum=tuple(torch.zeros(batch_size, *W.shape, device=device, dtype=dtype) for W in self.memory_init),
            position=torch.zeros(batch_size, device=device, dtype=torch.int64),
        )

    def project(self, x: Tensor) -> tuple[Tensor, ...]:
        """q, k, v (B, H, T, d) and eta, lr, alpha (B, H, T) for ``x (B, T, D)``, in the state dtype."""
        dtype = state_dtype(x.dtype)
        qkv = F.silu(self.qkv(x).to(dtype)).unflatten(-1, (3, self.n_heads, self.head_dim))  # (..., T, 3, H, d)
        unit = qkv if self.value_norm else qkv[..., :2, :, :]  # L2-normalised together (F.normalize, eps 1e-6)
        unit = unit * unit.norm(dim=-1, keepdim=True).clamp_min(1e-6).reciprocal()
        qkv = unit if self.value_norm else torch.cat([unit, qkv[..., 2:, :, :]], dim=-3)
        q, k, v = rearrange(qkv, "b t three h d -> three b h t d")
        gates = torch.sigmoid(self.gates(x).to(dtype))
        eta, alpha, lr = rearrange(gates, "b t (three h) -> three b h t", three=3)
        return q, k, v, eta, self.max_lr * lr, alpha

    def output(self, o: Tensor, x: Tensor) -> Tensor:
        """Per-head RMSNorm of the read-out ``o (B, H, T, d)``, optional gate, out_proj -> (B, T, D)."""
        o = rms_norm(o, 1e-6)
        o = rearrange(o, "b h t d -> b t (h d)").to(x.dtype) * self.norm_weight
        if self.gate_proj is not None:
            o = o * F.silu(self.gate_proj(x))
        return self.out_proj(o)

    def _window(self, q, k, v, eta, lr, alpha, pos: int, start: Weights, weights: Weights,
                momentum: Weights | None) -> tuple[Tensor, Weights, Weights, Weights, int]:
        """L tokens at once, the first ``pos`` into a chunk, as matmuls (no autograd inside).

        With a layer's token-s gradient ``x_s^T delta_s`` (input, backpropagated error) and ``A = P @ E``
        (:func:`decay_shares_reference`), each layer is linear attention with a decay mask::

            h_t W_t = P[t, 0] h_t W_w + A[t, 0] h_t S_w - sum_{s<=t} A[t, s] lr_s (h_t · x_s) delta_s

        x_s, delta_s come from it at each chunk's start (the first chunk's at theta_s); then every token
        reads at once.  q, k, v (B, H, L, d); eta, lr, alpha (B, H, L); start, weights, momentum: theta_s,
        theta_w, S_w per layer (B, H, in, out), momentum None when zero.  Returns the read-out (B, H, L, d),
        the new start, weights, momentum and position.
        """
        n_layers, L, b = len(weights), q.shape[2], self.chunk_size
        # (B, H, L, 1) x3, (B, H, L, L), (B, H, 1, 1): shares of theta_w, S_w and the gradients (decay_shares_reference)
        c_w, c_m, neg_m, neg_A_lr, decay = DecayShares.apply(eta, 1 - alpha, lr)

        def read(h: Tensor, i: int, c_w, c_m, neg_coef, transpose: bool = False) -> Tensor:
            """``h theta_l(t)`` (or ``h theta_l(t)^T``), theta_l(t) from theta_w, S_w and the gradient factors
            X, D so far: c_w (n or 1, 1), c_m and neg_coef (n or 1, tokens so far) the shares of each."""
            W, Xi, Di = weights[i], X[i], D[i]
            if transpose:
                W, Xi, Di = W.transpose(-1, -2), Di, Xi
            out = _add_product(_scaled_product(c_w, h, W), (h @ Xi.transpose(-1, -2)) * neg_coef, Di)
            if momentum is not None:
                M = momentum[i].transpose(-1, -2) if transpose else momentum[i]
                out = _add_product(out, c_m * h, M)
            return out

        # gradient factors chunk by chunk: the first chunk's at theta_s, each later one's at theta(t0 - 1)
        cuts = [0, *range(min(L, b - pos), L, b), L]
        sizes = [t1 - t0 for t0, t1 in zip(cuts[:-1], cuts[1:], strict=True)]
        if len(sizes) > 1:  # the rows t0 - 1 the later chunks read, taken once (slices would each zero-fill (L, L))
            ends = torch.tensor(cuts[1:-1], device=q.device) - 1
            rows = [t.index_select(-2, ends) for t in (c_w, c_m, neg_A_lr)]  # (B, H, chunks - 1, 1 | 1 | L)
        xs, ds = [[] for _ in range(n_layers)], [[] for _ in range(n_layers)]
        for j, (t0, k_j, v_j) in enumerate(zip(cuts, k.split(sizes, dim=2), v.split(sizes, dim=2), strict=False)):
            if j == 0:
                inputs, deltas = memory_backward(start, k_j, v_j)
            else:
                X, D = [torch.cat(x, dim=2) for x in xs], [torch.cat(d, dim=2) for d in ds]  # (B, H, t0, in|out)
                at = (rows[0][..., j - 1, None, :], rows[1][..., j - 1, None, :], rows[2][..., j - 1, None, :t0])
                inputs, deltas = _backward_through(lambda h, i, at=at: read(h, i, *at),
                                                   lambda g, i, at=at: read(g, i, *at, True), n_layers, k_j, v_j)
            for i in range(n_layers):
                xs[i].append(inputs[i])
                ds[i].append(deltas[i])
        X, D = [torch.cat(x, dim=2) for x in xs], [torch.cat(d, dim=2) for d in ds]  # (B, H, L, in|out)

        h = q  # the read: h_t theta_t, every t at once
        for i in range(n_layers):
            a = read(h, i, c_w, c_m, neg_A_lr)
            h = F.silu(a) if i < n_layers - 1 else a

        def accumulate(M: Tensor | None, coef: Tensor, Xi: Tensor, Di: Tensor) -> Tensor:
            """``M + sum_s coef_s x_s^T delta_s`` (coef (B, H, n, 1)), scaling the narrower factor."""
            if Xi.shape[-1] <= Di.shape[-1]:
                a, b = (coef * Xi).transpose(-1, -2), Di
            else:
                a, b = Xi.transpose(-1, -2), coef * Di
            return a @ b if M is None else _add_product(M, a, b)

        def materialise(t: int) -> Weights:  # theta(t) per layer, from the tokens up to t
            out = []
            for i, W in enumerate(weights):
                base = c_w[..., t, :, None] * W  # (B, H, in, out)
                if momentum is not None:
                    base = torch.addcmul(base, c_m[..., t, :, None], momentum[i])
                if t == L - 1:  # every token (no slices: their backward zero-fills whole copies)
                    out.append(accumulate(base, neg_A_lr[..., t, :, None], X[i], D[i]))
                else:
                    out.append(accumulate(base, neg_A_lr[..., t, : t + 1, None], X[i][:, :, : t + 1],
                                          D[i][:, :, : t + 1]))
            return tuple(out)

        new_w = materialise(L - 1)
        new_m = tuple(accumulate(None if momentum is None else decay * momentum[i], neg_m, X[i], D[i])
                      for i in range(n_layers))
        pos = (pos + L) % b
        if pos == 0:  # ends on a chunk boundary: the next chunk's gradients are taken at theta_L
            new_start = tuple(W.clone() for W in new_w)
        elif cuts[-2] == 0:  # still in the chunk it started in
            new_start = start
        else:
            new_start = materialise(cuts[-2] - 1)
        return h, new_start, new_w, new_m, pos

    def _forward(self, x: Tensor, state: TitansState) -> tuple[Tensor, TitansState]:
        """A loop over windows of whole chunks."""
        T = x.shape[1]
        if not bool((state.position == state.position[0]).all()):
            return self.step_loop(x, state)  # rows at different chunk positions: the recurrent form
        q, k, v, eta, lr, alpha = (t.contiguous() for t in self.project(x))  # (B, H, T, d), (B, H, T)
        start, weights, momentum, pos = state.start, state.weights, state.momentum, int(state.position[0])
        if not any(M.requires_grad or bool(M.any()) for M in momentum):
            momentum = None  # a fresh state's: its terms are exactly zero, skip them
        span = max(1, self.window // self.chunk_size) * self.chunk_size  # tokens per window
        outs, t0 = [], 0
        while t0 < T:
            t1 = min(T, t0 + span - pos)  # windows end on chunk boundaries
            sl = slice(t0, t1)
            o, start, weights, momentum, pos = self._window(q[:, :, sl], k[:, :, sl], v[:, :, sl], eta[:, :, sl],
                                                            lr[:, :, sl], alpha[:, :, sl], pos, start, weights,
                                                            momentum)
            outs.append(o)
            t0 = t1
        position = torch.full_like(state.position, pos)
        return self.output(torch.cat(outs, dim=2), x), TitansState(start, weights, momentum, position)

    def step(self, x: Tensor, state: TitansState) -> tuple[Tensor, TitansState]:
        """One token ``x (B, D)``: gradient at the chunk-start weights, momentum, decay, read."""
        self.check_input(x, step=True)
        q, k, v, eta, lr, alpha = self.project(x.unsqueeze(1))  # (B, H, 1, d), (B, H, 1)
        grads = memory_grads(state.start, k, v)  # per layer (B, H, 1, in, out)
        eta, lr, alpha = (g[..., None, None] for g in (eta[..., 0], lr[..., 0], alpha[..., 0]))  # (B, H, 1, 1)
        momentum = tuple(eta * M - lr * G[:, :, 0] for M, G in zip(state.momentum, grads, strict=True))
        weights = tuple((1 - alpha) * W + M for W, M in zip(state.weights, momentum, strict=True))
        o = memory_apply(weights, q)  # (B, H, 1, d)
        position = state.position + 1
        done = position == self.chunk_size  # (B,): this token closed the chunk
        start = tuple(torch.where(done[:, None, None, None], W, S) for W, S in zip(weights, state.start, strict=True))
        position = torch.where(done, torch.zeros_like(position), position)
        return self.output(o, x.unsqueeze(1))[:, 0], TitansState(start, weights, momentum, position)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_heads={self.n_heads}, memory_depth={self.memory_depth}, "
            f"hidden={self.hidden}, chunk_size={self.chunk_size}, max_lr={self.max_lr}, output_gate={self.output_gate}"
        )
