"""Memorizing Transformer layer: parallel form == step loop, retrieval == brute-force top-k, the store's rules."""

import pytest
import torch

from longrecall.contract import run_contract
from longrecall.mixers.memorizing import Memorizing, MemorizingState, retrieve
from longrecall.ops.rotary import apply_rotary, rotary_angles
from longrecall.protocol import state_leaves, state_map

import mixer_helpers as mh
from mixer_helpers import F64, random_inputs, seeded

D = 8


def make(seed=0, **kw):
    m = seeded(Memorizing, D, seed=seed, **{"window": 3, "top_k": 2, "block_size": 4, **kw})
    with torch.no_grad():  # move the gate and temperature off their init
        m.gate_bias.copy_(torch.tensor([0.3, -0.7]))
        m.log_tau.copy_(torch.tensor([1.0, 2.0]))
    return m


def carried(m, B, seed=9, T=7):
    with torch.no_grad():
        return m.step_loop(random_inputs(B, T, D, seed=seed), m.init_state(B))[1]


CONFIGS = [{}, {"memory_size": 2}, {"memory_size": 5, "top_k": 3, "block_size": 2}, {"window": 1, "top_k": 4},
           {"top_k": 10, "block_size": 64}]


@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("start", ["initial", "carried"])
def test_parallel_equals_step_loop(kw, start):
    m = make(**kw)
    s0 = None if start == "initial" else carried(m, 2)
    mh.assert_parallel_equals_step_loop(m, random_inputs(2, 17, D, seed=2), s0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", CONFIGS[:3])
def test_chunked_equals_whole(kw):
    mh.assert_chunked_equals_whole(make(**kw), random_inputs(2, 19, D, seed=3), (1, 2, 7, 8, 15),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", CONFIGS[:3])
def test_gradients_equal_step_loop(kw):
    """Parameters, inputs and the carried state's float tensors: the stop-gradient into the store is the same
    in both forms (keys detached when they leave the window), so the gradients agree by construction."""
    m = make(**kw)
    x = random_inputs(2, 11, D, seed=4).requires_grad_()
    s0 = state_map(lambda t: t.detach().requires_grad_() if t.is_floating_point() else t, carried(m, 2))
    floats = [t for t in state_leaves(s0) if t.is_floating_point()]
    w = random_inputs(2, 11, D, seed=5)

    def grads(run):
        y, s = run(x, s0)
        loss = (y * w).sum() + sum(t.sum() for t in state_leaves(s) if t.is_floating_point())
        return torch.autograd.grad(loss, [*m.parameters(), x, *floats], allow_unused=True)

    for a, b in zip(grads(m.forward), grads(m.step_loop), strict=True):
        assert a is not None and b is not None and a.abs().max() > 0
        # the contract's tolerance: ops.rotary rotates in float32, whose backward sums in another order per form
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_retrieve_equals_brute_force_top_k():
    B, H, Tq, N, K, top_k = 2, 2, 5, 9, 4, 3
    q, mk, mv = (torch.randn(B, H, n, K, generator=torch.Generator().manual_seed(i), dtype=F64)
                 for i, n in enumerate((Tq, N, N)))
    visible = torch.rand(Tq, N, generator=torch.Generator().manual_seed(7)) < 0.5
    visible[0] = False  # a query that sees nothing retrieves 0
    visible[1, :2], visible[1, 2:] = True, False  # fewer visible keys than top_k
    scale = torch.tensor([3.0, 0.5], dtype=F64)[:, None, None]
    got = retrieve(q, mk, mv, top_k, scale, visible)
    want = torch.zeros_like(got)
    for b in range(B):
        for h in range(H):
            for t in range(Tq):
                cands = [j for j in range(N) if visible[t, j]]
                dots = {j: float(q[b, h, t] @ mk[b, h, j]) for j in cands}
                best = sorted(cands, key=lambda j: -dots[j])[:top_k]
                if best:
                    p = torch.softmax(torch.tensor([scale[h, 0, 0] * dots[j] for j in best], dtype=F64), 0)
                    want[b, h, t] = sum(p[i] * mv[b, h, j] for i, j in enumerate(best))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got[:, :, 0].abs().max() == 0


def _reference(m, x):
    """The layer by definition, one (b, h, t) at a time: rotary local softmax over positions t-W+1..t, and
    softmax over the brute-force top-k of the store {t-W-cap < j <= t-W}."""
    B, T, _ = x.shape
    with torch.no_grad():
        q, k, v = m._qkv(x, F64)  # (B, H, T, K)
        pos = torch.arange(T)[None].expand(B, T)
        cos, sin = rotary_angles(pos, m.head_dim, m.rope_base)
        qr, kr = apply_rotary(q, cos[:, None], sin[:, None]), apply_rotary(k, cos[:, None], sin[:, None])
        tau, g = m.log_tau.exp(), torch.sigmoid(m.gate_bias)
        cap = m.memory_size or T
        out = torch.zeros_like(q)
        for b in range(B):
            for h in range(m.n_heads):
                for t in range(T):
                    loc = list(range(max(0, t - m.window + 1), t + 1))
                    p = torch.softmax(torch.stack([tau[h] * qr[b, h, t] @ kr[b, h, j] for j in loc]), 0)
                    local = sum(p[i] * v[b, h, j] for i, j in enumerate(loc))
                    store = [j for j in range(T) if t - m.window - cap < j <= t - m.window]
                    best = sorted(store, key=lambda j: -float(q[b, h, t] @ k[b, h, j]))[: m.top_k]
                    mem = torch.zeros_like(local)
                    if best:
                        p = torch.softmax(torch.stack([tau[h] * q[b, h, t] @ k[b, h, j] for j in best]), 0)
                        mem = sum(p[i] * v[b, h, j] for i, j in enumerate(best))
                    out[b, h, t] = g[h] * mem + (1 - g[h]) * local
        return m.out_proj(out.transpose(1, 2).reshape(B, T, -1))


@pytest.mark.parametrize("kw", [{}, {"memory_size": 3}])
def test_layer_equals_definition(kw):
    m = make(**kw)
    x = random_inputs(2, 12, D, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], _reference(m, x), rtol=1e-10, atol=1e-12)


def test_old_key_reaches_output_only_through_retrieval():
    """Token 0 leaves the window at t = W: later outputs depend on it, with g = 0 they do not, and no gradient
    flows back to it from them (the store is detached)."""
    m, T = make(window=3, top_k=1), 12
    x = random_inputs(1, T, D, seed=7)
    x2 = x.clone()
    x2[:, 0] = 3 * x[:, 1]
    with torch.no_grad():
        y, y2 = m(x)[0], m(x2)[0]
        assert (y[:, 3:] - y2[:, 3:]).abs().max() > 1e-6
        m.gate_bias.fill_(-1e4)  # sigmoid underflows to exactly 0: the memory read is switched off
        torch.testing.assert_close(m(x)[0][:, 3:], m(x2)[0][:, 3:], rtol=0, atol=0)
    m.gate_bias.data.fill_(0.0)
    for run in (m.forward, m.step_loop):
        xg = x.clone().requires_grad_()
        y = run(xg, m.init_state(1))[0]
        (grad,) = torch.autograd.grad(y[:, 3:].sum(), [xg])
        assert grad[:, 0].abs().max() == 0 and grad[:, 3].abs().max() > 0


def test_fifo_cap_evicts_oldest_first():
    m, T = make(window=3, memory_size=4), 15
    x = random_inputs(2, T, D, seed=8)
    with torch.no_grad():
        _, k, v = m._qkv(x, F64)
        s = m.init_state(2)
        for t in range(T):
            s = m.step(x[:, t], s)[1]
            n = t + 1 - (m.window - 1)  # tokens that have left the window
            lo = max(n - 4, 0)
            torch.testing.assert_close(s.mem_k, k[:, :, lo:max(n, 0)], rtol=0, atol=1e-15)
            torch.testing.assert_close(s.mem_v, v[:, :, lo:max(n, 0)], rtol=0, atol=1e-15)
            torch.testing.assert_close(s.k, k[:, :, max(t - 1, 0):t + 1], rtol=0, atol=1e-15)
        _, s_par = m(x)
        mh.assert_states_close(s_par, s, rtol=0, atol=1e-14)


def test_stored_keys_are_unit_norm_and_detached():
    m = make()
    x = random_inputs(2, 10, D, seed=10).requires_grad_()
    s = m(x)[1]
    assert not s.mem_k.requires_grad and not s.mem_v.requires_grad and s.k.requires_grad
    torch.testing.assert_close(s.mem_k.norm(dim=-1), torch.ones(2, 2, 8, dtype=F64), rtol=0, atol=1e-4)  # l2norm eps


def test_init_and_declared_growth():
    m = Memorizing(16)
    assert (m.n_heads, m.window, m.top_k, m.memory_size) == (2, 64, 32, None)
    torch.testing.assert_close(torch.sigmoid(m.gate_bias), torch.full((2,), 0.5))
    torch.testing.assert_close(m.log_tau.exp(), torch.full((2,), 20.0))
    assert m.state_growth == "linear" and Memorizing.state_growth == "linear"
    capped = Memorizing(16, window=8, memory_size=100)
    assert capped.state_growth == "bounded" and capped.state_capacity == 107
    assert Memorizing.state_growth == "linear"  # the instance's declaration does not leak into the class


def test_state_bytes_count_the_store():
    m = make(memory_size=5)
    for T, held in ((1, 1), (4, 4), (20, 2 + 5)):
        s = m(random_inputs(2, T, D, seed=11))[1]
        assert isinstance(s, MemorizingState)
        assert m.state_bytes(s) == 2 * (2 * 2 * 4 * 8 * held + 8)  # B=2: k, v of H=2 x K=4 float64, + length


def test_capped_variant_passes_contract():
    results = run_contract("memorizing", memory_size=3)
    assert all(r.passed for r in results), [(r.check, r.message) for r in results if not r.passed]


def test_bad_arguments():
    mh.assert_bad_arguments(Memorizing, [
        ({"window": 0}, "window"),
        ({"top_k": 0}, "top_k"),
        ({"memory_size": 0}, "memory_size"),
        ({"memory_size": 2.5}, "memory_size"),
        ({"n_heads": 3}, "n_heads"),
        ({"block_size": -1}, "block_size"),
        ({"rope_base": 0}, "rope_base"),
    ], d_model=8)
