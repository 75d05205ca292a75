"""The chunked linear-attention kernels equal the sequential specs: outputs, final state, every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from longrecall.ops.linear_attn import (
    IMPLS,
    chunked,
    delta_rule,
    delta_rule_chunked,
    delta_rule_naive,
    linear_attn,
    linear_attn_chunked,
    linear_attn_naive,
)

# variant -> (op, decay: None | "head" | "channel", bonus?)
VARIANTS = {
    "plain": ("attn", None, False),
    "head-decay": ("attn", "head", False),
    "channel-decay": ("attn", "channel", False),
    "rwkv6": ("attn", "channel", True),  # per-channel decay + bonus
    "bonus-head-decay": ("attn", "head", True),
    "bonus-no-decay": ("attn", None, True),
    "deltanet": ("delta", None, False),
    "gated-deltanet": ("delta", "head", False),
}

SHAPES = [
    # B, H, T, K, V, chunk_size
    (2, 3, 37, 5, 4, 8),  # T not divisible by the chunk size
    (1, 2, 7, 3, 6, 16),  # T < chunk_size: one short chunk
    (2, 1, 16, 4, 4, 4),  # T a multiple of the chunk size
    (1, 1, 1, 3, 2, 8),  # T == 1
    (1, 2, 37, 4, 3, 32),  # per-channel: two sub-chunks of 16 (blocks below the diagonal)
]


def make_inputs(variant, B, H, T, K, V, *, dtype=torch.float64, seed=0, h0=True):
    """Named inputs of one variant: random q, k, v, negative log decays, beta in (0, 1), unit delta-rule keys."""
    op, decay, bonus = VARIANTS[variant]
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    x = {"q": randn(B, H, T, K), "k": randn(B, H, T, K), "v": randn(B, H, T, V)}  # (B, H, T, K|V)
    if op == "delta":
        x["k"] = F.normalize(x["k"], dim=-1)
        x["beta"] = torch.sigmoid(randn(B, H, T))  # (B, H, T)
    if decay is not None:
        x["log_decay"] = -F.softplus(randn(B, H, T) if decay == "head" else randn(B, H, T, K))
    x["initial_state"] = randn(B, H, K, V) if h0 else None
    if bonus:
        x["bonus"] = randn(H, K)
    return x


def call(variant, impl, x, chunk_size=64):
    op, _, _ = VARIANTS[variant]
    if op == "delta":
        fn = delta_rule_naive if impl == "naive" else delta_rule_chunked
        kwargs = {} if impl == "naive" else {"chunk_size": chunk_size}
        return fn(x["q"], x["k"], x["v"], x["beta"], x.get("log_decay"), x["initial_state"], **kwargs)
    fn = linear_attn_naive if impl == "naive" else linear_attn_chunked
    kwargs = {} if impl == "naive" else {"chunk_size": chunk_size}
    return fn(x["q"], x["k"], x["v"], x.get("log_decay"), x["initial_state"], bonus=x.get("bonus"), **kwargs)


def grads(variant, impl, x, chunk_size=64, seed=1):
    """Outputs, final state and the gradients of a random projection of both w.r.t. every input."""
    leaves = {n: t.clone().requires_grad_() for n, t in x.items() if t is not None}
    o, S = call(variant, impl, {**x, **leaves}, chunk_size)
    g = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=g, dtype=o.dtype)
    dS = torch.randn(S.shape, generator=g, dtype=S.dtype)
    got = torch.autograd.grad((o, S), list(leaves.values()), (do, dS))
    return o.detach(), S.detach(), dict(zip(leaves, got, strict=True))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-H{}-T{}-K{}-V{}-C{}".format(*s))
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zeros"])
def test_chunked_matches_naive(variant, shape, with_h0):
    *dims, C = shape
    x = make_inputs(variant, *dims, h0=with_h0)
    o_ref, S_ref, g_ref = grads(variant, "naive", x)
    o, S, g = grads(variant, "chunked", x, chunk_size=C)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S, S_ref, rtol=1e-10, atol=1e-10)
    assert g.keys() == g_ref.keys()
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-9, msg=f"gradient w.r.t. {name}")


@pytest.mark.parametrize("variant", ["channel-decay", "rwkv6"])
@pytest.mark.parametrize("sub, C", [(4, 12), (3, 8), (16, 37)], ids=["c4-C12", "c2-C8", "c1-C37"])
def test_per_channel_subchunks(variant, sub, C, monkeypatch):
    """The per-channel intra-chunk term at any sub-chunk size (c = largest divisor of C <= SUBCHUNK)."""
    monkeypatch.setattr(chunked, "SUBCHUNK", sub)
    x = make_inputs(variant, 2, 2, 41, 4, 3, seed=3)
    o_ref, S_ref, g_ref = grads(variant, "naive", x)
    o, S, g = grads(variant, "chunked", x, chunk_size=C)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S, S_ref, rtol=1e-10, atol=1e-10)
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-9, msg=f"gradient w.r.t. {name}")


@pytest.mark.parametrize("variant", ["channel-decay", "rwkv6"])
@pytest.mark.parametrize("path", ["whole-chunk", "sub-chunks", "offsets"])
@pytest.mark.parametrize("sub, C", [(4, 12), (16, 37), (16, 64)], ids=["c4-C12", "c1-C37", "c16-C64"])
def test_per_channel_intra_paths(variant, path, sub, C, monkeypatch):
    """Each way of forming the per-channel intra-chunk term: one factored matmul per chunk, factored
    diagonal sub-chunk blocks, or the offset-by-offset products (``_factorable`` decides by the decays)."""
    monkeypatch.setattr(chunked, "SUBCHUNK", sub)
    choose = {"whole-chunk": lambda G: True, "sub-chunks": lambda G: G.dim() == 6, "offsets": lambda G: False}
    monkeypatch.setattr(chunked, "_factorable", choose[path])
    x = make_inputs(variant, 2, 2, 75, 4, 3, seed=4)
    o_ref, S_ref, g_ref = grads(variant, "naive", x)
    o, S, g = grads(variant, "chunked", x, chunk_size=C)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S, S_ref, rtol=1e-10, atol=1e-10)
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-9, msg=f"gradient w.r.t. {name}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("T, C", [(7, 16), (16, 16), (37, 8)], ids=["one-short-chunk", "one-chunk", "five-chunks"])
def test_zero_initial_state_with_and_without_its_gradient(variant, T, C):
    """A zero initial state that wants no gradient lets one chunk skip the state terms; one that wants a
    gradient (or several chunks) takes the general path. Both equal the spec, gradients included."""
    x = make_inputs(variant, 2, 2, T, 4, 3, seed=11, h0=False)
    x["initial_state"] = torch.zeros(2, 2, 4, 3, dtype=torch.float64)
    o_ref, S_ref, g_ref = grads(variant, "naive", x)  # every input, the zero state included, wants a gradient
    o, S, g = grads(variant, "chunked", x, chunk_size=C)
    for a, b in [(o, o_ref), (S, S_ref), *((g[n], g_ref[n]) for n in g_ref)]:
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    o2, S2 = call(variant, "chunked", x, chunk_size=C)  # no gradient wanted anywhere
    torch.testing.assert_close(o2, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S2, S_ref, rtol=1e-10, atol=1e-10)
    assert S2.untyped_storage().nbytes() == S2.numel() * S2.element_size()  # owns its bytes (a state)


def test_factorable_is_a_bound_on_the_decay_inside_each_block():
    G = torch.zeros(2, 3, 8, 4)  # (..., c, K), cumulative log decays from each block's start
    G[1, 2, -1, 3] = -chunked.FACTOR_SPAN
    assert chunked._factorable(G)
    G[0, 1, -1, 0] = -chunked.FACTOR_SPAN - 1e-3
    assert not chunked._factorable(G)
    assert not chunked._factorable(torch.full((1, 4, 2), float("nan")))


@pytest.mark.parametrize("max_step", [0.3, 1.2])
def test_per_channel_float32_accuracy_either_path(max_step):
    """float32 chunked vs the float64 spec at C = 64 with moderate per-channel decays: whole chunks
    factored (64-step spans about 11 nats) or, past FACTOR_SPAN (about 46 nats), sub-chunks."""
    x64 = make_inputs("rwkv6", 2, 2, 256, 16, 16, seed=6)
    x64["log_decay"] = -max_step * torch.rand(x64["log_decay"].shape, generator=torch.Generator().manual_seed(9),
                                              dtype=torch.float64)
    o_ref, S_ref = call("rwkv6", "naive", x64)
    o, S = call("rwkv6", "chunked", {n: t.float() if t is not None else None for n, t in x64.items()})
    torch.testing.assert_close(o.double(), o_ref, rtol=0, atol=2e-6 * o_ref.abs().max().item())
    torch.testing.assert_close(S.double(), S_ref, rtol=0, atol=2e-6 * S_ref.abs().max().item())


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_agrees(variant):
    """float32 chunked vs the float64 spec, with the default chunk size and T spanning several chunks."""
    x64 = make_inputs(variant, 2, 2, 200, 16, 8, seed=5)
    x32 = {n: t.float() if t is not None else None for n, t in x64.items()}
    o_ref, S_ref = call(variant, "naive", x64)
    o, S = call(variant, "chunked", x32)
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    scale = o_ref.abs().max().item()
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(S.double(), S_ref, rtol=1e-4, atol=1e-5 * S_ref.abs().max().item())


def strong_log_decay(shape, g):
    """Log decays in [-20, -5] with about one in four exactly 0 (no decay at that step)."""
    ld = -5.0 - 15.0 * torch.rand(shape, generator=g)
    return torch.where(torch.rand(shape, generator=g) < 0.25, torch.zeros(()), ld)


@pytest.mark.parametrize("variant", ["head-decay", "channel-decay", "rwkv6", "gated-deltanet"])
def test_strong_decays_parity_float32(variant):
    """Very negative cumulative log decays (down to about -1000 over a chunk) stay exact in float32."""
    x = make_inputs(variant, 1, 2, 150, 8, 8, dtype=torch.float32, seed=7)
    g = torch.Generator().manual_seed(8)
    x["log_decay"] = strong_log_decay(x["log_decay"].shape, g)
    x64 = {n: t.double() for n, t in x.items() if t is not None}
    o_ref, S_ref = call(variant, "naive", x64)
    o, S = call(variant, "chunked", x)
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(S.double(), S_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["head-decay", "channel-decay", "rwkv6", "gated-deltanet"])
def test_long_sequence_strong_decays_finite(variant):
    """16384 float32 tokens with log decays in [-20, -5] and some 0: no NaN/Inf in outputs, state, gradients."""
    x = make_inputs(variant, 1, 2, 16384, 16, 16, dtype=torch.float32, seed=11)
    g = torch.Generator().manual_seed(12)
    x["log_decay"] = strong_log_decay(x["log_decay"].shape, g)
    o, S, grad = grads(variant, "chunked", x, chunk_size=64)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    for name, t in grad.items():
        assert torch.isfinite(t).all(), f"gradient w.r.t. {name}"


@settings(max_examples=15, deadline=None)
@given(T=st.integers(1, 40), C1=st.integers(1, 20), C2=st.integers(1, 20), seed=st.integers(0, 2**16),
       variant=st.sampled_from(sorted(VARIANTS)))
def test_chunk_size_does_not_matter(T, C1, C2, seed, variant):
    """Outputs and final state are the same for any two chunk sizes (padding never leaks into the state)."""
    x = make_inputs(variant, 1, 2, T, 3, 2, seed=seed)
    o1, S1 = call(variant, "chunked", x, C1)
    o2, S2 = call(variant, "chunked", x, C2)
    torch.testing.assert_close(o1, o2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S1, S2, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", ["rwkv6", "gated-deltanet"])
def test_gradient_of_a_subset(variant):
    """Only q needs grad: q never reaches the final state."""
    x = make_inputs(variant, 1, 2, 19, 3, 2)

    def subset(impl):
        q = x["q"].clone().requires_grad_()
        o, S = call(variant, impl, {**x, "q": q}, chunk_size=8)
        return torch.autograd.grad(o.square().sum() + S.sum(), q)[0]

    torch.testing.assert_close(subset("chunked"), subset("naive"), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", ["rwkv6", "gated-deltanet"])
def test_dtypes_and_state_carry(variant):
    """bfloat16 in, bfloat16 out, float32 state; running two halves with the carried state equals one run."""
    x = make_inputs(variant, 1, 2, 30, 4, 4, dtype=torch.float32, seed=2)
    xb = {n: t.bfloat16() if n != "initial_state" else t for n, t in x.items() if t is not None}
    o, S = call(variant, "chunked", xb, chunk_size=8)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32

    o_all, S_all = call(variant, "chunked", x, chunk_size=8)
    first = {n: t[:, :, :13] if t.dim() >= 3 and n != "initial_state" else t for n, t in x.items() if t is not None}
    second = {n: t[:, :, 13:] if t.dim() >= 3 and n != "initial_state" else t for n, t in x.items() if t is not None}
    o1, S1 = call(variant, "chunked", first, chunk_size=8)
    o2, S2 = call(variant, "chunked", {**second, "initial_state": S1}, chunk_size=8)
    torch.testing.assert_close(torch.cat([o1, o2], dim=2), o_all, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(S2, S_all, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["plain", "rwkv6", "deltanet"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zeros"])
def test_empty_sequence(variant, with_h0):
    x = make_inputs(variant, 2, 3, 0, 4, 5, h0=with_h0)
    o, S = call(variant, "chunked", x)
    assert o.shape == (2, 3, 0, 5) and o.dtype == x["v"].dtype
    expected = x["initial_state"] if with_h0 else torch.zeros(2, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(S, expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_dispatcher(impl):
    x = make_inputs("rwkv6", 1, 2, 9, 3, 2)
    o, S = linear_attn(x["q"], x["k"], x["v"], x["log_decay"], x["initial_state"], bonus=x["bonus"], impl=impl,
                       chunk_size=4)
    o_ref, S_ref = linear_attn_naive(x["q"], x["k"], x["v"], x["log_decay"], x["initial_state"], bonus=x["bonus"])
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(S, S_ref)
    y = make_inputs("gated-deltanet", 1, 2, 9, 3, 2)
    o, S = delta_rule(y["q"], y["k"], y["v"], y["beta"], y["log_decay"], y["initial_state"], impl=impl, chunk_size=4)
    o_ref, S_ref = delta_rule_naive(y["q"], y["k"], y["v"], y["beta"], y["log_decay"], y["initial_state"])
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(S, S_ref)


def test_bad_arguments_raise_naming_the_argument():
    x = make_inputs("rwkv6", 1, 2, 9, 3, 2)
    q, k, v, ld, S0, u = (x[n] for n in ("q", "k", "v", "log_decay", "initial_state", "bonus"))
    beta = torch.rand(1, 2, 9, dtype=torch.float64)
    with pytest.raises(ValueError, match="impl"):
        linear_attn(q, k, v, impl="bogus")
    with pytest.raises(ValueError, match="impl"):
        delta_rule(q, k, v, beta, impl="bogus")
    for fn in (linear_attn, linear_attn_chunked):
        for bad in (0, -3, 2.5):
            with pytest.raises(ValueError, match="chunk_size"):
                fn(q, k, v, chunk_size=bad)
    for fn in (delta_rule, delta_rule_chunked):
        with pytest.raises(ValueError, match="chunk_size"):
            fn(q, k, v, beta, chunk_size=0)
    for impl in IMPLS:
        with pytest.raises(ValueError, match="q must"):
            linear_attn(q[0], k, v, impl=impl)
        with pytest.raises(ValueError, match="k must"):
            linear_attn(q, k[..., :2], v, impl=impl)
        with pytest.raises(ValueError, match="v must"):
            linear_attn(q, k, v[:, :, :5], impl=impl)
        with pytest.raises(ValueError, match="log_decay must"):
            linear_attn(q, k, v, ld[..., :2], impl=impl)
        with pytest.raises(ValueError, match="initial_state must"):
            linear_attn(q, k, v, ld, S0.transpose(-1, -2), impl=impl)
        with pytest.raises(ValueError, match="bonus must"):
            linear_attn(q, k, v, ld, bonus=u[0], impl=impl)
        with pytest.raises(ValueError, match="beta must"):
            delta_rule(q, k, v, beta[..., :4], impl=impl)
        with pytest.raises(ValueError, match="log_decay"):
            delta_rule(q, k, v, beta, ld, impl=impl)  # per-channel decay is not a delta-rule option
