"""mLSTM: the paper's stabilised recurrence and its parallel D-matrix form, numerics, arguments."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from longrecall.mixers.mlstm import MLSTM, MLSTMState
from longrecall.protocol import state_clone
from longrecall.registry import get_mixer

from mixer_helpers import rand_x_for, seeded

D_MODEL, N_HEADS = 8, 2
DH = D_MODEL // N_HEADS


def make(impl="chunked", dtype=torch.float64, seed=0, chunk_size=3, gate_scale=1.0, **kwargs):
    model = seeded(MLSTM, D_MODEL, dtype=dtype, seed=seed, n_heads=N_HEADS, impl=impl, chunk_size=chunk_size, **kwargs)
    with torch.no_grad():  # data-dependent gates (their weights start at 0) and a non-trivial norm
        for gate in (model.igate, model.fgate):
            gate.weight.copy_(gate_scale * torch.randn_like(gate.weight))
        model.fgate.bias.copy_(gate_scale * torch.randn_like(model.fgate.bias))
        model.igate.bias.copy_(gate_scale * torch.randn_like(model.igate.bias))
        model.out_norm.weight.add_(0.3 * torch.randn_like(model.out_norm.weight))
    return model


rand_x = rand_x_for(D_MODEL, T=10)


def projections(model: MLSTM, x):
    """Per head, the paper's orientation: q, k / sqrt(d), v (B, T, H, d); i~, f~ (B, T, H)."""

    def heads(t):
        return t.view(*t.shape[:-1], N_HEADS, DH)

    q, k, v = heads(model.q_proj(x)), heads(model.k_proj(x)) / DH**0.5, heads(model.v_proj(x))
    return q, k, v, model.igate(x), model.fgate(x)


def finish(model: MLSTM, h, x):
    """GroupNorm per head on h~ (B, T, H, d), then o_t = sigmoid(W_o x + b_o) and the out projection."""
    groups = h - h.mean(-1, keepdim=True)
    normed = groups / torch.sqrt(groups.pow(2).mean(-1, keepdim=True) + model.out_norm.eps)
    normed = normed.reshape(*h.shape[:2], D_MODEL) * model.out_norm.weight + model.out_norm.bias
    return model.out_proj(torch.sigmoid(model.ogate(x)) * normed)


def paper_recurrence(model: MLSTM, x):
    """Beck et al. 2024 (arXiv 2405.04517) eq. 19-27 with the stabiliser of appendix A.3, C = v k^T."""
    q, k, v, i_pre, f_pre = projections(model, x)
    B, T = x.shape[:2]
    C = torch.zeros(B, N_HEADS, DH, DH, dtype=x.dtype)  # C[b, h, value, key]
    n = torch.zeros(B, N_HEADS, DH, dtype=x.dtype)
    m = torch.zeros(B, N_HEADS, dtype=x.dtype)
    hs = []
    for t in range(T):
        log_f = F.logsigmoid(f_pre[:, t])
        m_new = torch.maximum(log_f + m, i_pre[:, t])
        i_act, f_act = torch.exp(i_pre[:, t] - m_new), torch.exp(log_f + m - m_new)
        C = f_act[..., None, None] * C + i_act[..., None, None] * torch.einsum("bhv,bhk->bhvk", v[:, t], k[:, t])
        n = f_act[..., None] * n + i_act[..., None] * k[:, t]
        num = torch.einsum("bhvk,bhk->bhv", C, q[:, t])
        den = torch.maximum(torch.einsum("bhk,bhk->bh", n, q[:, t]).abs(), torch.exp(-m_new))
        hs.append(num / den[..., None])
        m = m_new
    return finish(model, torch.stack(hs, 1), x), MLSTMState(C.transpose(-1, -2), n, m)


def paper_parallel(model: MLSTM, x):
    """Appendix A.3's stabilised parallel form: log D_ts = sum_{r=s+1..t} log f_r + i~_s, row-max stabilised."""
    q, k, v, i_pre, f_pre = (t.transpose(1, 2) for t in projections(model, x))  # (B, H, T, ...)
    T = x.shape[1]
    log_f_cum = F.logsigmoid(f_pre).cumsum(-1)  # (B, H, T)
    log_D = log_f_cum[..., :, None] - log_f_cum[..., None, :] + i_pre[..., None, :]
    log_D = log_D.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    m = log_D.amax(-1, keepdim=True)  # row-wise max
    C = (q @ k.transpose(-1, -2)) * torch.exp(log_D - m)
    normaliser = torch.maximum(C.sum(-1, keepdim=True).abs(), torch.exp(-m))
    h = (C / normaliser) @ v  # (B, H, T, d)
    return finish(model, h.transpose(1, 2), x)


def test_registered_and_init():
    assert get_mixer("mlstm") is MLSTM and MLSTM.state_growth == "constant"
    model = MLSTM(64)
    assert (model.n_heads, model.head_dim) == (4, 16)
    torch.testing.assert_close(model.fgate.bias.detach(), torch.linspace(3.0, 6.0, 4))
    assert (model.fgate.weight == 0).all() and (model.igate.weight == 0).all()


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_step_equals_the_paper_stabilised_recurrence(impl):
    model, x = make(impl, gate_scale=3.0), rand_x()
    y_ref, state_ref = paper_recurrence(model, x)
    for y, state in (model.step_loop(x, model.init_state(2, dtype=torch.float64)), model(x)):
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
        for got, want in zip(state, state_ref, strict=True):  # the very same (C, n, m), not a rescaling
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [3, 4, 64])
def test_parallel_form_equals_the_appendix_d_matrix_formula(chunk_size):
    model, x = make(chunk_size=chunk_size, gate_scale=3.0), rand_x(T=9)
    y, _ = model(x)
    torch.testing.assert_close(y, paper_parallel(model, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_chunked_carry_keeps_the_stabilised_state(k):
    model, x = make(gate_scale=3.0), rand_x()
    y, state = model(x)
    y1, s1 = model(x[:, :k])
    y2, s2 = model(x[:, k:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-10, atol=1e-12)
    for got, want in zip(s2, state, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_long_float32_sequence_with_large_gates():
    model = make(dtype=torch.float32, chunk_size=64, gate_scale=30.0)  # gate pre-activations in the hundreds
    x = rand_x(batch=1, T=2000, dtype=torch.float32)
    y, state = model(x)
    assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in state)
    assert model.igate(x).abs().max() > 100 and model.fgate(x).abs().max() > 100  # exp(100) overflows float32
    # and the float32 chunkwise form stays close to the float64 recurrence
    model64 = copy.deepcopy(model).double()
    y64, _ = model64.step_loop(x[:, :300].double(), model64.init_state(1, dtype=torch.float64))
    torch.testing.assert_close(y[:, :300].double(), y64, rtol=1e-3, atol=1e-3)


def test_step_does_not_mutate_state():
    model, x = make(), rand_x()
    _, state = model(x)
    before = state_clone(state)
    model.step(x[:, 0], state)
    model(x, state)
    for got, want in zip(state, before, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("d_model", [32, 64, 128, 256])
def test_state_bytes_and_defaults(d_model):
    model = MLSTM(d_model)
    state = model.init_state(3)
    H, d = 4, d_model // 4
    assert state.C.shape == (3, H, d, d) and state.n.shape == (3, H, d) and state.m.shape == (3, H)
    assert model.state_bytes(state) == 3 * H * (d * d + d + 1) * 4
    y, s = model(torch.randn(3, 5, d_model))
    assert y.shape == (3, 5, d_model) and model.state_bytes(s) == model.state_bytes(state)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_heads": 0}, "n_heads"),
        ({"n_heads": 5}, "n_heads"),
        ({"n_heads": 2.0}, "n_heads"),
        ({"norm_eps": 0.0}, "norm_eps"),
        ({"chunk_size": -1}, "chunk_size"),
        ({"impl": "parallel"}, "impl"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MLSTM(32, **kwargs)
