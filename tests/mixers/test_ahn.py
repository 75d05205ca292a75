"""AHN: parallel == step loop (outputs, state, gradients), the delay of W, far tokens only via the compressor,
carry across window boundaries, the window alone is sliding_window, state bytes, arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longrecall.mixers.ahn import AHN, AHNState
from longrecall.mixers.sliding_window import SlidingWindowAttention
from longrecall.modules import l2norm
from longrecall.ops.linear_attn import delta_rule_naive
from longrecall.protocol import state_leaves
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import F64, rand_x_for, seeded

D_MODEL, W = 16, 4


def make(impl="chunked", dtype=F64, seed=0, **kwargs):
    m = seeded(AHN, D_MODEL, dtype=dtype, seed=seed, impl=impl, **{"window": W, "block_size": 3, "chunk_size": 4,
                                                                    **kwargs})
    with torch.no_grad():  # slower decay and stronger writes than at init, so the memory matters
        m.A_log.fill_(-1.0)
        m.o_norm.weight.normal_(1.0, 0.3, generator=torch.Generator().manual_seed(seed))
    return m


rand_x = rand_x_for(D_MODEL, T=13)


def carried(m, n, batch=2):
    """The state after n random tokens by the step loop (n < W: a partly filled window)."""
    with torch.no_grad():
        return m.step_loop(rand_x(batch=batch, T=n, seed=9), m.init_state(batch))[1]


def test_registered_and_bounded():
    assert get_mixer("ahn") is AHN
    assert AHN.state_growth == "bounded" and AHN(16, window=7).state_capacity == 7
    assert AHN.__doc__.splitlines()[0].startswith("AHN:")


def test_gates_init_as_gated_deltanet():
    torch.manual_seed(0)
    m = AHN(64, n_heads=4)
    A, dt = torch.exp(m.A_log), F.softplus(m.dt_bias)
    assert ((A > 0) & (A < 16)).all() and (dt >= 1e-3 * (1 - 1e-5)).all() and (dt <= 0.1 * (1 + 1e-5)).all()
    _, full = m._tokens(torch.randn(2, 5, 64), m.init_state(2))
    assert ((full.log_decay < 0) & (full.beta > 0) & (full.beta < 1)).all()
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {"qkv.weight": (192, 64), "out_proj.weight": (64, 64), "b_proj.weight": (4, 64),
                      "a_proj.weight": (4, 64), "A_log": (4,), "dt_bias": (4,), "o_norm.weight": (16,),
                      "mem_proj.weight": (64, 64)}


@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("T", [1, 3, 13, 21])
@pytest.mark.parametrize("n0", [None, 2, 7])  # no state, a partly filled window, a full one
def test_forward_equals_step_loop(impl, T, n0):
    m = make(impl)
    s0 = None if n0 is None else carried(m, n0)
    mh.assert_parallel_equals_step_loop(m, rand_x(T=T), s0, rtol=1e-11, atol=1e-12)


def rotary_f64(x, cos, sin):
    """ops.rotary.apply_rotary's formula in x's dtype: its float32 arithmetic rounds the key gradients, which the
    two forms sum in different orders (a 1e-7 difference the contract's tolerance allows)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


@pytest.mark.parametrize("n0", [2, 7])
def test_gradients_forward_equal_step_loop(n0, monkeypatch):
    """Gradients of outputs and final state w.r.t. parameters, x and every float tensor of the carried state."""
    monkeypatch.setattr("longrecall.mixers.ahn.apply_rotary", rotary_f64)
    m, x = make(), rand_x(T=11).requires_grad_()
    s0 = carried(m, n0)
    s0 = AHNState(*(t.clone().requires_grad_() for t in s0[:5]), s0.length)
    with torch.no_grad():
        final = m(x, s0)[1]
    weights = mh.random_weights(x.shape, *(t.shape for t in state_leaves(final)[:5]), seed=3)
    leaves = [*m.parameters(), x, *s0[:5]]

    def grads(run):
        y, s = run(x, s0)
        loss = (y * weights[0]).sum() + sum((a * w).sum() for a, w in zip(s[:5], weights[1:], strict=True))
        return torch.autograd.grad(loss, leaves)

    for g_par, g_rec in zip(grads(m.forward), grads(m.step_loop), strict=True):
        assert g_par.abs().max() > 0
        torch.testing.assert_close(g_par, g_rec, rtol=1e-10, atol=1e-12)


def test_memory_holds_exactly_the_tokens_that_left():
    """After T tokens the compressor is the gated delta rule over tokens 0..T-W-1; the window is the last W."""
    m, x, T = make(), rand_x(T=13), 13
    _, s = m(x)
    _, full = m._tokens(x, m.init_state(2))
    first = slice(0, T - W)
    _, memory = delta_rule_naive(torch.zeros_like(full.k[:, :, first]), l2norm(full.k[:, :, first]),
                                 full.v[:, :, first], full.beta[..., first], full.log_decay[..., first])
    torch.testing.assert_close(s.memory, memory, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(s.k, full.k[:, :, -W:], rtol=0, atol=0)
    assert s.length.tolist() == [T, T]


def test_far_token_acts_only_through_the_compressor():
    m, x = make(), rand_x(T=3 * W + 2)
    x2 = x.clone()
    x2[:, 0] += 3.0
    with torch.no_grad():
        diff = (m(x2)[0] - m(x)[0]).abs().amax(dim=(0, 2))  # (T,)
        assert (diff[W:] > 1e-6).all()  # token 0 left at t = W but is still recalled
        m.mem_proj.weight.zero_()
        diff_off = (m(x2)[0] - m(x)[0]).abs().amax(dim=(0, 2))
    assert (diff_off[:W] > 1e-6).all()
    assert diff_off[W:].max() < 1e-13


def test_window_alone_is_sliding_window():
    m = make()
    swa = SlidingWindowAttention(D_MODEL, window=W, block_size=5).to(F64)
    swa.load_state_dict({"qkv.weight": m.qkv.weight, "out_proj.weight": m.out_proj.weight})
    with torch.no_grad():
        m.mem_proj.weight.zero_()
        x = rand_x(T=13)
        torch.testing.assert_close(m(x)[0], swa(x)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cuts", [(W - 1, W, W + 1), (1, 2 * W), (W, 2 * W, 3 * W), (3, 5, 6, 11), tuple(range(1, 17))])
def test_chunked_carry_across_window_boundaries(cuts):
    with torch.no_grad():
        mh.assert_chunked_equals_whole(make(), rand_x(T=3 * W + 5), cuts, rtol=1e-11, atol=1e-12)


def test_no_state_mutation_and_state_bytes():
    m = make()
    s = carried(m, 6)
    mh.assert_step_and_forward_keep_state(m, s, rand_x()[:, 0], rand_x(T=5))
    H, K = 2, D_MODEL // 2
    for T, S in ((1, 1), (W, W), (3 * W + 1, W)):
        _, s = m(rand_x(batch=3, T=T))
        assert m.state_bytes(s) == 3 * (S * H * (2 * K * 8 + 2 * 8) + H * K * K * 8 + 8)
    m32 = AHN(64, window=8)
    _, s32 = m32(torch.randn(1, 20, 64))
    assert s32.memory.dtype == s32.beta.dtype == torch.float32
    assert m32.state_bytes(s32) == 8 * 2 * (2 * 32 * 4 + 2 * 4) + 2 * 32 * 32 * 4 + 8


@pytest.mark.parametrize(
    "kwargs, name",
    [({"window": 0}, "window"), ({"window": 2.5}, "window"), ({"n_heads": 3}, "n_heads"), ({"n_heads": 16}, "n_heads"),
     ({"block_size": 0}, "block_size"), ({"chunk_size": -1}, "chunk_size"), ({"impl": "triton"}, "impl"),
     ({"rope_base": 0}, "rope_base"), ({"norm_eps": -1.0}, "norm_eps")],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AHN(16, **kwargs)
