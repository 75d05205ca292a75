"""RAT: chunked parallel form == step loop, chunks fixed by absolute position, L = 1 is attention over
per-token states, information crosses chunks only through the finished summaries."""

import pytest
import torch

from longrecall.mixers.rat import RAT, RATState
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import random_inputs, seeded

D = 8


def make(chunk_size=4, rope=True, n_heads=2, seed=0):
    m = seeded(RAT, D, seed=seed, n_heads=n_heads, chunk_size=chunk_size, rope=rope)
    with torch.no_grad():  # move the gate biases off torch's init so gates vary across channels
        m.g_proj.bias.uniform_(-2.0, 2.0)
    return m


def warm_state(m, B, T, seed=9):
    """The state after T random tokens through the step loop (a carried state mid-chunk when T % L != 0)."""
    with torch.no_grad():
        return m.step_loop(random_inputs(B, T, D, seed=seed), m.init_state(B))[1]


def test_registered_and_attributes():
    assert get_mixer("rat") is RAT
    assert RAT.state_growth == "linear"


@pytest.mark.parametrize("rope,tol", [(False, 1e-12), (True, 1e-6)])  # rotary angles are computed in float32
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 32])
@pytest.mark.parametrize("T", [1, 5, 12, 17])
def test_forward_equals_step_loop(chunk_size, T, rope, tol):
    m = make(chunk_size, rope)
    x = random_inputs(2, T, D, seed=2)
    for s0 in (None, warm_state(m, 2, 5), warm_state(m, 2, 8)):  # from zero, mid-chunk, at a boundary
        mh.assert_parallel_equals_step_loop(m, x, s0, rtol=tol, atol=tol)


@pytest.mark.parametrize("rope", [False, True])
def test_gradients_forward_equal_step_loop(rope):
    m = make(3, rope)
    x = random_inputs(2, 11, D, seed=4).requires_grad_()
    s0 = warm_state(m, 2, 4)
    k0, v0, run0 = (t.detach().requires_grad_() for t in s0[:3])
    start = RATState(k0, v0, run0, s0.length)
    w = mh.random_weights((2, 11, D), (2, 2, 5, 4), (2, 2, 8), seed=5)
    inputs = [x, k0, v0, run0, *m.parameters()]

    def grads(run):
        y, s = run(x, start)
        loss = (y * w[0]).sum() + (s.k * w[1]).sum() + (s.run * w[2]).sum()
        return torch.autograd.grad(loss, inputs)

    tol = 1e-12 if not rope else 1e-6
    for gp, gs in zip(grads(m.forward), grads(m.step_loop), strict=True):
        assert gp.abs().max() > 0
        torch.testing.assert_close(gp, gs, rtol=tol, atol=tol)


@pytest.mark.parametrize("cuts", [(1,), (5,), (2, 3, 9), (6, 7, 13, 14)])
def test_chunked_carry_at_unaligned_splits(cuts):
    m = make(4)
    mh.assert_chunked_equals_whole(m, random_inputs(2, 19, D, seed=6), cuts, rtol=1e-6, atol=1e-6)


def test_chunks_fixed_by_absolute_position():
    """A call starting mid-chunk continues that chunk: state after 6 tokens = 1 summary + a running state."""
    m = make(4, rope=False)
    _, s = m(random_inputs(2, 6, D, seed=7))
    assert s.k.shape[2] == 1 and s.length.tolist() == [6, 6] and s.run.abs().max() > 0
    _, s8 = m(random_inputs(2, 2, D, seed=8), s)
    assert s8.k.shape[2] == 2 and s8.run.abs().max() == 0  # the second chunk finished and reset


@pytest.mark.parametrize("rope", [False, True])
def test_chunk_size_one_is_attention_over_per_token_states(rope):
    m = make(1, rope)
    x = random_inputs(2, 9, D, seed=10)
    with torch.no_grad():
        y, _ = m(x)
        q, k, v = m.qkv(x).unflatten(-1, (3, 2, 4)).unbind(-3)  # (B, T, H, K)
        keep = 1 - torch.sigmoid(m.g_proj(x)).unflatten(-1, (2, 4))  # each state is (1 - g) times its token
        q, k, v = (t.transpose(1, 2) for t in (q, keep * k, keep * v))  # (B, H, T, K)
        if rope:
            pos = torch.arange(9)
            q, k = m._rotate(q, pos), m._rotate(k, pos)
        scores = (q @ k.transpose(-1, -2)) / 2.0  # sqrt(K) = 2
        scores = scores.masked_fill(~torch.ones(9, 9, dtype=torch.bool).tril(), float("-inf"))
        o = torch.softmax(scores, -1) @ v
        want = m.o_proj(o.transpose(1, 2).flatten(-2) * torch.sigmoid(m.z_proj(x)))
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


def test_single_chunk_is_a_gated_rnn_readout():
    """L >= T: no finished summary, the softmax has one entry, so o_t = v~_t (the running value summary)."""
    m = make(32, rope=False)
    x = random_inputs(1, 7, D, seed=11)
    with torch.no_grad():
        y, s = m(x)
        _, u, g = m._project(x)  # (B, T, H, 2K)
        h, vs = torch.zeros_like(u[:, 0]), []
        for u_t, g_t in zip(u.unbind(1), g.unbind(1), strict=True):
            h = g_t * h + (1 - g_t) * u_t
            vs.append(h[..., 4:])
        o = torch.stack(vs, 1).flatten(-2)  # (B, T, D)
        want = m.o_proj(o * torch.sigmoid(m.z_proj(x)))
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.run, h, rtol=1e-12, atol=1e-12)
    assert s.k.shape[2] == 0


def test_chunk_one_reaches_chunk_three_only_through_its_summary():
    m = make(4)
    x = random_inputs(1, 12, D, seed=12)
    x2 = x.clone()
    x2[:, :4] += random_inputs(1, 4, D, seed=13)  # change chunk 1 only
    with torch.no_grad():
        y, _ = m(x)
        y2, _ = m(x2)
        _, s = m(x[:, :8])
        _, s2 = m(x2[:, :8])
        # the recurrence restarts each chunk: the states differ only in chunk 1's summary
        torch.testing.assert_close(s.k[:, :, 1:], s2.k[:, :, 1:], rtol=0, atol=0)
        torch.testing.assert_close(s.v[:, :, 1:], s2.v[:, :, 1:], rtol=0, atol=0)
        torch.testing.assert_close(s.run, s2.run, rtol=0, atol=0)
        assert (s.k[:, :, 0] - s2.k[:, :, 0]).abs().max() > 1e-3
        # chunk 3 sees the change, and splicing in chunk 1's other summary reproduces it exactly
        assert (y[:, 8:] - y2[:, 8:]).abs().min() > 0
        spliced = RATState(torch.cat([s2.k[:, :, :1], s.k[:, :, 1:]], 2),
                           torch.cat([s2.v[:, :, :1], s.v[:, :, 1:]], 2), s.run, s.length)
        y3, _ = m(x[:, 8:], spliced)
    torch.testing.assert_close(y3, y2[:, 8:], rtol=1e-12, atol=1e-12)


def test_state_bytes_and_no_mutation():
    m = make(4)
    for T, chunks in ((3, 0), (4, 1), (13, 3)):
        with torch.no_grad():
            _, s = m(random_inputs(2, T, D, seed=14))
        assert m.state_bytes(s) == 2 * 2 * (2 * chunks * 4 + 2 * 4) * 8 + 2 * 8
    s = warm_state(m, 2, 7)
    mh.assert_step_and_forward_keep_state(m, s, random_inputs(2, 1, D)[:, 0], random_inputs(2, 5, D))


def test_bad_arguments_and_states():
    mh.assert_bad_arguments(RAT, [
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 2.5}, "chunk_size"),
        ({"n_heads": 3}, "n_heads"),
        ({"n_heads": 4}, "n_heads"),  # head width 1 is odd: rope rotates pairs
        ({"rope": "yes"}, "rope"),
        ({"rope_base": 0}, "rope_base"),
    ])
    RAT(4, n_heads=4, rope=False)  # an odd head width is fine without rope
    m = make(4).float()
    _, s = m(torch.zeros(2, 5, D))
    unequal = s._replace(length=torch.tensor([5, 6]))
    missing = s._replace(k=s.k[:, :, :0], v=s.v[:, :, :0])
    mh.assert_wrong_states_rejected(m, unequal, missing)
    with pytest.raises(ValueError, match="state"):
        m(torch.zeros(2, 3, D), (s.k, s.v, s.run, s.length))
