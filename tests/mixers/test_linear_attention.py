"""Causal linear attention: the paper's quadratic (masked) form, the normaliser, state, arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longrecall.mixers.linear_attention import LinearAttention, LinearAttentionState, elu_feature_map
from longrecall.protocol import state_clone
from longrecall.registry import get_mixer

from mixer_helpers import rand_x_for, seeded

D_MODEL, N_HEADS = 12, 3  # head width 4


def make(impl="chunked", dtype=torch.float64, seed=0, **kwargs):
    return seeded(LinearAttention, D_MODEL, dtype=dtype, seed=seed,
                  n_heads=N_HEADS, chunk_size=4, impl=impl, **kwargs)


rand_x = rand_x_for(D_MODEL, T=11)


def test_registered():
    assert get_mixer("linear_attention") is LinearAttention
    assert LinearAttention.state_growth == "constant"


def quadratic_form(model: LinearAttention, x):
    """Eq. 9 of the paper, masked: V'_i = sum_{j<=i} φ(Q_i)·φ(K_j) V_j / sum_{j<=i} φ(Q_i)·φ(K_j)."""
    B, T, D = x.shape
    H = model.n_heads
    q, k, v = model.qkv(x).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)  # (B, H, T, K) each
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    A = (phi_q @ phi_k.transpose(-1, -2)).tril()  # (B, H, T, T), causal mask
    y = (A @ v) / (A.sum(-1, keepdim=True) + model.eps)
    return model.out_proj(y.transpose(1, 2).reshape(B, T, D)), phi_k, v


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_parallel_and_recurrent_forms_equal_the_quadratic_form(impl):
    model, x = make(impl), rand_x()
    expected, phi_k, v = quadratic_form(model, x)
    y, state = model(x)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    y_loop, state_loop = model.step_loop(x, model.init_state(2, dtype=torch.float64))
    torch.testing.assert_close(y_loop, expected, rtol=1e-10, atol=1e-10)
    # the state is the sums the paper's RNN keeps: S = sum φ(k)ᵀ v, z = sum φ(k)
    torch.testing.assert_close(state.memory, phi_k.transpose(-1, -2) @ v, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.normalizer, phi_k.sum(2), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state_loop.memory, state.memory, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state_loop.normalizer, state.normalizer, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k", [1, 4, 7])
def test_carried_state_continues_the_quadratic_form(k):
    model, x = make(), rand_x()
    expected, *_ = quadratic_form(model, x)
    _, s1 = model(x[:, :k])
    y2, _ = model(x[:, k:], s1)
    torch.testing.assert_close(y2, expected[:, k:], rtol=1e-10, atol=1e-10)


def test_feature_map_is_positive_so_the_normaliser_is():
    z = torch.linspace(-50, 50, 101, dtype=torch.float64)
    assert (elu_feature_map(z) > 0).all()
    torch.testing.assert_close(elu_feature_map(z), F.elu(z) + 1, rtol=0, atol=1e-15)  # the paper's φ
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(elu_feature_map(x).sum(), x)
    torch.testing.assert_close(g, torch.autograd.grad((F.elu(x) + 1).sum(), x)[0])
    _, state = make()(rand_x())
    assert (state.normalizer > 0).all()


def test_step_does_not_mutate_state_and_state_bytes():
    model, x = make(), rand_x(batch=3)
    _, state = model(x)
    before = state_clone(state)
    model.step(x[:, 0], state)
    model(x, state)
    torch.testing.assert_close(state, before, rtol=0, atol=0)
    K = D_MODEL // N_HEADS
    assert isinstance(state, LinearAttentionState)
    assert state.memory.shape == (3, N_HEADS, K, K) and state.normalizer.shape == (3, N_HEADS, K)
    assert model.state_bytes(state) == 3 * N_HEADS * K * (K + 1) * 8
    m32 = make(dtype=torch.float32)
    assert m32.state_bytes(m32.init_state(3)) == 3 * N_HEADS * K * (K + 1) * 4
    assert m32.init_state(1, dtype=torch.bfloat16).memory.dtype == torch.float32


@pytest.mark.parametrize("d_model", [32, 64, 128, 256])
def test_defaults_work_for_arena_widths(d_model):
    model = LinearAttention(d_model)
    y, state = model(torch.randn(1, 3, d_model))
    assert y.shape == (1, 3, d_model) and torch.isfinite(y).all()
    assert model.state_bytes(state) == (d_model * d_model // 2 + d_model) * 4


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_heads": 0}, "n_heads"),
        ({"n_heads": 5}, "n_heads"),  # does not divide 12
        ({"n_heads": 2.0}, "n_heads"),
        ({"eps": 0.0}, "eps"),
        ({"chunk_size": -4}, "chunk_size"),
        ({"impl": "fused"}, "impl"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LinearAttention(12, **kwargs)
