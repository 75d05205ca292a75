"""Infini-attention: the paper's equations written out by hand, the memory pathway, forms, arguments and state size."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longrecall.mixers.attention import Attention
from longrecall.mixers.infini import InfiniAttention, InfiniState
from longrecall.ops.rotary import apply_rotary, rotary_angles
from longrecall.protocol import state_leaves
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import rand_x_for, seeded

D_MODEL, N_HEADS, SEG = 8, 2, 4
rand_x = rand_x_for(D_MODEL, T=13)


def make(update="linear", seed=0, **kwargs):
    model = seeded(InfiniAttention, D_MODEL, seed=seed, n_heads=N_HEADS, segment_len=SEG, update=update, **kwargs)
    with torch.no_grad():  # distinct gates per head, away from 1/2, so both pathways show in every test
        model.beta.copy_(torch.tensor([0.7, -1.1], dtype=model.beta.dtype))
    return model


def carried_state(model, T=6, seed=3):
    """A state mid-segment (T % SEG != 0) with a nonzero memory."""
    return model.step_loop(rand_x(T=T, seed=seed), model.init_state(2))[1]


def paper_reference(model, x):
    """Section 2.1 of arXiv 2404.07143, one head and one segment at a time, from an empty memory."""
    B, T, D = x.shape
    H, K, S = model.n_heads, model.head_dim, model.segment_len
    q, k, v = (x @ model.qkv.weight.T).split(D, -1)  # (B, T, D)
    sigma = lambda t: F.elu(t) + 1  # noqa: E731
    heads = []
    for h in range(H):
        cols = slice(h * K, (h + 1) * K)
        M, z = torch.zeros(B, K, K, dtype=x.dtype), torch.zeros(B, K, dtype=x.dtype)
        gate, out = torch.sigmoid(model.beta[h]), []
        for s in range(math.ceil(T / S)):
            Q, Kt, V = (t[:, s * S : (s + 1) * S, cols] for t in (q, k, v))  # (B, n, K)
            n = Q.shape[1]
            cos, sin = rotary_angles(torch.arange(n), K, model.rope_base)
            scores = apply_rotary(Q, cos, sin) @ apply_rotary(Kt, cos, sin).transpose(1, 2) / math.sqrt(K)
            scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
            A_dot = scores.softmax(-1) @ V
            empty = s == 0  # M_0 = 0, z_0 = 0: the empty memory reads 0
            A_mem = torch.zeros_like(A_dot) if empty else (sigma(Q) @ M) / (sigma(Q) @ z[..., None])
            out.append(gate * A_mem + (1 - gate) * A_dot)
            if n == S:
                if model.update == "linear" or empty:
                    M = M + sigma(Kt).transpose(1, 2) @ V
                else:
                    M = M + sigma(Kt).transpose(1, 2) @ (V - (sigma(Kt) @ M) / (sigma(Kt) @ z[..., None]))
                z = z + sigma(Kt).sum(1)
        heads.append(torch.cat(out, 1))
    return torch.cat(heads, -1) @ model.out_proj.weight.T, (M, z)


def test_registered_init_and_state_size():
    assert get_mixer("infini") is InfiniAttention and InfiniAttention.state_growth == "constant"
    model = InfiniAttention(64)
    assert (model.n_heads, model.head_dim, model.segment_len, model.update) == (2, 32, 64, "linear")
    assert torch.equal(model.beta, torch.zeros(2))  # gate sigmoid(0) = 1/2: both pathways equally at the start
    state = model.init_state(1)
    assert all(t.abs().sum() == 0 for t in state_leaves(state))
    assert model.state_bytes(state) == 2 * (32 * 32 + 32 + 2 * 64 * 32) * 4 + 8 == 41224
    _, after = model(torch.randn(1, 150, 64))
    assert model.state_bytes(after) == 41224 and after.length.item() == 150


@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("T", [3, 13])
def test_forward_equals_paper_equations(update, T):
    model, x = make(update), rand_x(T=T)
    y, state = model(x)
    y_ref, (M, z) = paper_reference(model, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-9)
    H = model.n_heads  # the reference's memory is the last head's
    torch.testing.assert_close(state.M[:, H - 1], M, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(state.z[:, H - 1], z, rtol=1e-12, atol=1e-12)


def test_linear_and_delta_differ_only_once_the_memory_holds_a_segment():
    x = rand_x(T=13)
    (y_lin, s_lin), (y_del, s_del) = make("linear")(x), make("delta")(x)
    torch.testing.assert_close(y_del[:, : 2 * SEG], y_lin[:, : 2 * SEG], rtol=0, atol=0)  # same first write
    assert (y_del[:, 2 * SEG :] - y_lin[:, 2 * SEG :]).abs().min() > 1e-6
    torch.testing.assert_close(s_del.z, s_lin.z, rtol=1e-12, atol=0)
    assert (s_del.M - s_lin.M).abs().max() > 1e-3


@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("carried", [False, True])
def test_forward_equals_step_loop(update, carried):
    model, x = make(update), rand_x()
    mh.assert_parallel_equals_step_loop(model, x, carried_state(model) if carried else None, rtol=1e-9, atol=1e-10)
    mh.assert_chunked_equals_whole(model, x, (1, 2, 7, 8, 11), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_gradients_forward_equal_step_loop(update):
    model, x = make(update), rand_x(T=11, seed=4).requires_grad_()
    s0 = carried_state(model)._replace(length=torch.full((2,), 5))
    floats = [t.detach().requires_grad_() for t in s0[:4]]
    s0 = InfiniState(*floats, s0.length)
    weights = mh.random_weights(x.shape, *(t.shape for t in floats), seed=5)
    params = list(model.parameters())

    def grads(run):
        y, s = run(x, s0)
        loss = (y * weights[0]).sum() + sum((a * w).sum() for a, w in zip(s[:4], weights[1:], strict=True))
        return torch.autograd.grad(loss, [*params, x, *floats])

    for g, g_ref in zip(grads(model.forward), grads(model.step_loop), strict=True):
        assert g.abs().max() > 0
        # apply_rotary (ops/rotary.py) rotates, and so back-propagates, in float32 even in float64 models
        torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-8)


def test_segment_one_reaches_segment_three_only_through_the_memory():
    model, x = make("delta"), rand_x(T=3 * SEG)
    x2 = x.clone()
    x2[:, :SEG] += rand_x(T=SEG, seed=9)  # change segment 1 only
    y, y2 = model(x)[0], model(x2)[0]
    assert (y2[:, 2 * SEG :] - y[:, 2 * SEG :]).abs().min() > 1e-6
    (_, s), (_, s2) = model(x[:, : 2 * SEG]), model(x2[:, : 2 * SEG])
    assert s.k.abs().max() == 0 and s2.k.abs().max() == 0  # two whole segments: nothing buffered
    torch.testing.assert_close(model(x[:, 2 * SEG :], s)[0], y[:, 2 * SEG :], rtol=1e-9, atol=1e-10)
    forget = lambda st: st._replace(M=torch.zeros_like(st.M), z=torch.zeros_like(st.z))  # noqa: E731
    y3, y3_changed = model(x[:, 2 * SEG :], forget(s))[0], model(x2[:, 2 * SEG :], forget(s2))[0]
    torch.testing.assert_close(y3_changed, y3, rtol=0, atol=0)


def test_first_segment_with_a_closed_gate_is_plain_causal_attention():
    model = make()
    with torch.no_grad():
        model.beta.fill_(-50.0)  # sigmoid(-50) ~ 2e-22: the local pathway only
    attention = Attention(D_MODEL, n_heads=N_HEADS).double()
    attention.load_state_dict({k: v for k, v in model.state_dict().items() if k != "beta"})
    x = rand_x(T=SEG)
    torch.testing.assert_close(model(x)[0], attention(x)[0], rtol=1e-12, atol=1e-12)
    # the open gate reads the empty memory: zero before the first segment is written
    with torch.no_grad():
        model.beta.fill_(50.0)
    y = model(rand_x(T=SEG + 2))[0]
    assert y[:, :SEG].abs().max() == 0 and y[:, SEG:].abs().min() > 0


def test_rows_at_different_positions_fall_back_to_the_step_loop():
    model = make()
    _, s_a = model.step_loop(rand_x(batch=1, T=3), model.init_state(1))
    _, s_b = model.step_loop(rand_x(batch=1, T=6, seed=2), model.init_state(1))
    s0 = InfiniState(*(torch.cat(pair) for pair in zip(s_a, s_b, strict=True)))
    mh.assert_parallel_equals_step_loop(model, rand_x(T=9, seed=7), s0, rtol=1e-12, atol=1e-12)


def test_step_and_forward_leave_the_state_alone():
    model = make("delta")
    mh.assert_step_and_forward_keep_state(model, carried_state(model, T=3), rand_x(T=1)[:, 0], rand_x(T=6))


def test_bad_arguments():
    mh.assert_bad_arguments(InfiniAttention, [
        ({"segment_len": 0}, "segment_len"),
        ({"segment_len": 2.5}, "segment_len"),
        ({"update": "gated"}, "update"),
        ({"n_heads": 3}, "n_heads"),
        ({"n_heads": 4}, "n_heads"),  # head width 1 is odd: rotary needs pairs
        ({"eps": 0.0}, "eps"),
        ({"rope_base": -1.0}, "rope_base"),
    ], d_model=4)
