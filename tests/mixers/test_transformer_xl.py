"""Transformer-XL: segment-parallel form == step loop (outputs, state, gradients), segments fixed by absolute
position, the memory under a stop-gradient with a one-layer horizon of M + S - 1 tokens, TRAMS selection
against a dense brute-force reference."""

import pytest
import torch

from longrecall.contract import run_contract
from longrecall.mixers.transformer_xl import TransformerXL, TransformerXLState
from longrecall.ops.rotary import apply_rotary, rotary_angles
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import random_inputs, seeded

D = 8
TOL = 1e-10  # both forms use the same float32 rotary angles; only the softmax summation order differs
GRAD = {"rtol": 1e-5, "atol": 1e-7}  # the contract's: apply_rotary rounds through float32

CONFIGS = [
    {"segment_len": 4, "mem_len": 3},
    {"segment_len": 3, "mem_len": 5},
    {"segment_len": 1, "mem_len": 2},
    {"segment_len": 4, "mem_len": 4, "trams_keep": 2},
    {"segment_len": 3, "mem_len": 6, "trams_keep": 2, "trams_recent": 2},
]


def make(seed=0, **kwargs):
    return seeded(TransformerXL, D, seed=seed, **kwargs)


def warm_state(m, B, T, seed=9):
    """The state after T random tokens through the step loop."""
    with torch.no_grad():
        return m.step_loop(random_inputs(B, T, D, seed=seed), m.init_state(B))[1]


def test_registered_and_attributes():
    assert get_mixer("transformer_xl") is TransformerXL
    m = make(segment_len=5, mem_len=3)
    assert m.state_growth == "bounded" and m.state_capacity == 7
    _, s = m(random_inputs(2, 30, D))
    assert s.k.shape == (2, 2, 7, 4) and s.score is None and s.length.tolist() == [30, 30]
    assert m.state_bytes(s) == 2 * (2 * 2 * 7 * 4 * 8 + 8)  # k and v float64, length int64, per sequence
    assert make(trams_keep=2)(random_inputs(1, 3, D))[1].score.shape == (1, 2, 3)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("T", [1, 6, 13])
def test_forward_equals_step_loop(cfg, T):
    m = make(**cfg)
    x = random_inputs(2, T, D, seed=2)
    for s0 in (None, warm_state(m, 2, 5), warm_state(m, 2, 12)):  # empty, mid-segment, at a boundary (S=3, 4)
        mh.assert_parallel_equals_step_loop(m, x, s0, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_gradients_forward_equal_step_loop(cfg):
    m = make(**cfg)
    x = random_inputs(2, 11, D, seed=4).requires_grad_()
    s0 = warm_state(m, 2, 5)
    k0, v0 = (t.detach().requires_grad_() for t in s0[:2])
    start = TransformerXLState(k0, v0, s0.score, s0.length)
    w = mh.random_weights((2, 11, D), (2, 2, m.state_capacity, 4), (2, 2, m.state_capacity, 4), seed=5)
    inputs = [x, k0, v0, *m.parameters()]

    def grads(run):
        y, s = run(x, start)
        loss = (y * w[0]).sum() + (s.k * w[1]).sum() + (s.v * w[2]).sum()
        return torch.autograd.grad(loss, inputs, allow_unused=True)

    for gp, gs in zip(grads(m.forward), grads(m.step_loop), strict=True):
        assert (gp is None) == (gs is None)
        if gp is not None:
            torch.testing.assert_close(gp, gs, **GRAD)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("cuts", [(1,), (5,), (2, 3, 9), (6, 7, 11)])
def test_chunked_carry_at_unaligned_splits(cfg, cuts):
    mh.assert_chunked_equals_whole(make(**cfg), random_inputs(2, 14, D, seed=3), cuts, rtol=TOL, atol=TOL)


def outputs_after_perturbing(m, T, p):
    x = random_inputs(1, T, D, seed=6)
    x2 = x.clone()
    x2[:, p] += 1.0
    with torch.no_grad():
        return (m(x2)[0] - m(x)[0]).abs().amax(-1)[0]  # (T,) change at each position


@pytest.mark.parametrize("mem_len", [1, 4])
def test_memory_horizon_is_one_segment_when_mem_len_le_segment_len(mem_len):
    S = 4
    change = outputs_after_perturbing(make(segment_len=S, mem_len=mem_len), 3 * S, S - 1)  # last token of seg 0
    assert (change[: S - 1] == 0).all()  # causal
    assert (change[S - 1 : 2 * S] > 1e-6).all()  # its own segment, and segment 1 through the memory
    assert (change[2 * S :] == 0).all()  # segment 2's memory holds segment 1 only


def test_memory_reaches_further_when_mem_len_exceeds_segment_len():
    S = 4
    change = outputs_after_perturbing(make(segment_len=S, mem_len=S + 2), 3 * S, S - 2)
    assert (change[2 * S :] > 1e-6).all()  # position S - 2 is in segment 2's memory (the M = S + 2 before it)
    change = outputs_after_perturbing(make(segment_len=S, mem_len=S + 2), 3 * S, S - 3)
    assert (change[2 * S :] == 0).all()  # one further back it is not


@pytest.mark.parametrize("cfg", [{"segment_len": 4, "mem_len": 4}, {"segment_len": 3, "mem_len": 6, "trams_keep": 2}])
def test_no_gradient_flows_into_the_memory(cfg):
    m = make(**cfg)
    S = cfg["segment_len"]
    x = random_inputs(1, 3 * S, D, seed=7).requires_grad_()
    y, _ = m(x)
    g_next = torch.autograd.grad(y[:, S : 2 * S].sum(), x)[0][0]  # segment 1's outputs
    assert g_next[:S].abs().max() == 0  # segment 0 is read only through the stop-gradient memory
    assert (g_next[S : 2 * S].abs().amax(-1) > 0).all()  # within the segment gradients flow
    change = outputs_after_perturbing(m, 3 * S, S - 1)
    assert change[S : 2 * S].max() > 1e-6  # ... although segment 0 does change segment 1's outputs
    g_loop = torch.autograd.grad(m.step_loop(x, m.init_state(1))[0][:, S : 2 * S].sum(), x)[0][0]
    assert g_loop[:S].abs().max() == 0


def test_trams_score_maps_keys_into_input_space():
    """q_i . k_j = x_i . K~_j with K~_j = W_Q,h^T k_j (before rotary, no bias): the score's premise."""
    m = make(trams_keep=1)
    x = random_inputs(1, 5, D, seed=8)[0]
    Wq, Wk = m.qkv.weight[:D].view(2, 4, D), m.qkv.weight[D : 2 * D].view(2, 4, D)
    for h in range(2):
        q, k = x @ Wq[h].T, x @ Wk[h].T  # (T, K)
        torch.testing.assert_close(q @ k.T, x @ (k @ Wq[h]).T)


def brute_force(m, x):
    """Dense reference: every query's visible set written out, TRAMS picked by Python sorting. x (T, D) -> (T, D)."""
    T, H, K, S, M = x.shape[0], m.n_heads, m.head_dim, m.segment_len, m.mem_len
    keep, recent = m.trams_keep, m.trams_recent
    Wq, Wk, Wv = (m.qkv.weight[i * D : (i + 1) * D].view(H, K, D) for i in range(3))
    cos, sin = rotary_angles(torch.arange(T), K, m.rope_base)
    out = torch.zeros(T, H, K, dtype=x.dtype)
    for h in range(H):
        q_raw, k_raw, v = x @ Wq[h].T, x @ Wk[h].T, x @ Wv[h].T  # (T, K)
        q, k = apply_rotary(q_raw, cos, sin), apply_rotary(k_raw, cos, sin)
        score = [float((k_raw[j] @ Wq[h]).norm() * (k_raw[j] @ Wq[h]).sum().abs()) for j in range(T)]
        for p in range(T):
            s0 = p - p % S
            pool = list(range(max(0, s0 - M), s0))
            if keep is not None and len(pool) > keep + recent:
                older, newest = pool[: len(pool) - recent], pool[len(pool) - recent :]
                pool = sorted(sorted(older, key=lambda j: -score[j])[:keep] + newest)
            visible = pool + list(range(s0, p + 1))
            att = torch.softmax(torch.stack([q[p] @ k[j] for j in visible]) / K**0.5, 0)
            out[p, h] = sum(a * v[j] for a, j in zip(att, visible, strict=True))
    return m.out_proj(out.reshape(T, D))


@pytest.mark.parametrize("cfg", [
    {"segment_len": 3, "mem_len": 4},
    {"segment_len": 3, "mem_len": 5, "trams_keep": 2},
    {"segment_len": 2, "mem_len": 6, "trams_keep": 1, "trams_recent": 2},
])
def test_against_dense_brute_force_with_trams_selection(cfg):
    m = make(**cfg)
    x = random_inputs(1, 14, D, seed=10)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0][0], brute_force(m, x[0]), rtol=TOL, atol=TOL)


def test_trams_changes_the_output_only_where_the_memory_overflows():
    x = random_inputs(1, 12, D, seed=11)
    with torch.no_grad():
        y_full, y_trams = make(segment_len=4, mem_len=4)(x)[0], make(segment_len=4, mem_len=4, trams_keep=2)(x)[0]
    torch.testing.assert_close(y_trams[:, :4], y_full[:, :4])  # segment 0: no memory yet
    assert (y_trams[:, 4:] - y_full[:, 4:]).abs().amax(-1).min() > 1e-6  # 4 memory tokens, 2 kept


@pytest.mark.parametrize("extra", [
    {"trams_keep": 1, "trams_recent": 1},
    {"segment_len": 3, "mem_len": 5, "trams_keep": 3},
])
def test_contract_with_trams(extra):
    results = run_contract("transformer_xl", **{**TransformerXL.contract_kwargs, **extra})
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_bad_arguments():
    mh.assert_bad_arguments(TransformerXL, [
        ({"segment_len": 0}, "segment_len"),
        ({"mem_len": 2.5}, "mem_len"),
        ({"n_heads": 3}, "n_heads"),
        ({"n_heads": 4}, "n_heads"),  # head width 1 is odd: rotary rotates pairs
        ({"trams_keep": 0}, "trams_keep"),
        ({"mem_len": 4, "trams_keep": 5}, "trams_keep"),
        ({"mem_len": 4, "trams_keep": 2, "trams_recent": 3}, "trams_keep"),
        ({"trams_recent": -1, "trams_keep": 1}, "trams_recent"),
        ({"trams_recent": 1}, "trams_recent"),  # without trams_keep
        ({"rope_base": 0}, "rope_base"),
    ])
    m = make(segment_len=2, mem_len=2)
    s = m.init_state(2)
    with pytest.raises(ValueError, match="length"):
        m(random_inputs(2, 3, D), s._replace(length=torch.tensor([0, 1])))
