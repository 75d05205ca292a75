"""RetNet multi-scale retention: the paper's decays, the parallel (matrix) form, positions, state, arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longrecall.mixers.retnet import RetNet, RetNetState, retnet_gammas
from longrecall.protocol import state_clone
from longrecall.registry import get_mixer

from mixer_helpers import rand_x_for, seeded

D_MODEL, N_HEADS = 16, 4  # key width 4, value width 8


def make(impl="chunked", dtype=torch.float64, seed=0, **kwargs):
    model = seeded(RetNet, D_MODEL, dtype=dtype, seed=seed, n_heads=N_HEADS, chunk_size=4, impl=impl, **kwargs)
    with torch.no_grad():  # GroupNorm's affine off its init so it is exercised
        model.group_norm.weight.add_(0.3 * torch.randn_like(model.group_norm.weight))
        model.group_norm.bias.add_(0.3 * torch.randn_like(model.group_norm.bias))
    return model


rand_x = rand_x_for(D_MODEL, T=11)


def test_registered():
    assert get_mixer("retnet") is RetNet
    assert RetNet.state_growth == "constant"


def test_decays_are_the_papers_gammas():
    # gamma = 1 - 2^(-5 - arange(0, h)) (paper section 2.2)
    torch.testing.assert_close(retnet_gammas(4), torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128, 1 - 1 / 256],
                                                              dtype=torch.float64))
    model = RetNet(64, n_heads=8)
    torch.testing.assert_close(model.log_gamma.double().exp(), 1 - 2.0 ** (-5 - torch.arange(8.0, dtype=torch.float64)))
    assert "log_gamma" not in model.state_dict() and not any("gamma" in n for n, _ in model.named_parameters())


def retention_matrix_form(model: RetNet, x, start: int = 0):
    """The paper's parallel form (eq. 5, 8), written out: rotations as complex numbers, explicit D."""
    B, T, _ = x.shape
    H, K, V = model.n_heads, model.key_dim, model.value_dim
    q = model.q_proj(x).view(B, T, H, K).transpose(1, 2)  # (B, H, T, K)
    k = model.k_proj(x).view(B, T, H, K).transpose(1, 2)
    v = model.v_proj(x).view(B, T, H, V).transpose(1, 2)
    n = torch.arange(start, start + T, dtype=torch.float64)
    theta = model.rope_base ** (-torch.arange(0, K, 2, dtype=torch.float64) / K)  # (K/2,)
    rot = torch.polar(torch.ones(T, K // 2, dtype=torch.float64), n[:, None] * theta)  # e^{i n θ}, (T, K/2)
    qc = torch.complex(q[..., : K // 2], q[..., K // 2 :]) * rot  # Q ⊙ Θ  (rotate-half pairs as complex)
    kc = torch.complex(k[..., : K // 2], k[..., K // 2 :]) * rot
    scores = torch.einsum("bhnk,bhmk->bhnm", qc, kc.conj()).real / K**0.5  # Re(Q Kᴴ): relative rotation
    gamma = retnet_gammas(H)
    dist = (n[:, None] - n[None, :])  # n - m
    Dmat = torch.where(dist >= 0, gamma[:, None, None] ** dist.clamp(min=0), torch.zeros(()))  # (H, T, T)
    o = (scores * Dmat) @ v  # (B, H, T, V)
    # GroupNorm_h: normalise each head's V channels, then the per-channel affine
    mean, var = o.mean(-1, keepdim=True), o.var(-1, unbiased=False, keepdim=True)
    y = ((o - mean) / torch.sqrt(var + model.norm_eps)).transpose(1, 2).reshape(B, T, H * V)
    y = y * model.group_norm.weight + model.group_norm.bias
    return model.out_proj(F.silu(model.g_proj(x)) * y)


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_parallel_and_recurrent_forms_equal_the_retention_matrix(impl):
    model, x = make(impl), rand_x()
    expected = retention_matrix_form(model, x)
    y, state = model(x)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    y_loop, state_loop = model.step_loop(x, model.init_state(2, dtype=torch.float64))
    torch.testing.assert_close(y_loop, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.memory, state_loop.memory, rtol=1e-10, atol=1e-10)
    assert torch.equal(state.length, torch.tensor([11, 11])) and torch.equal(state_loop.length, state.length)


def test_retention_depends_on_relative_position_only():
    """From an empty memory, starting at position 100 gives the same outputs as starting at 0."""
    model, x = make(), rand_x()
    shifted = RetNetState(model.init_state(2, dtype=torch.float64).memory, torch.tensor([100, 37]))
    y0, _ = model(x)
    y1, s1 = model(x, shifted)
    torch.testing.assert_close(y1, y0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model(x[:, 5:], model(x[:, :5])[1])[0], retention_matrix_form(model, x)[:, 5:],
                               rtol=1e-10, atol=1e-10)
    assert torch.equal(s1.length, torch.tensor([111, 48]))


def test_step_does_not_mutate_state_and_state_bytes():
    model, x = make(), rand_x(batch=3)
    _, state = model(x)
    before = state_clone(state)
    model.step(x[:, 0], state)
    model(x, state)
    torch.testing.assert_close(state.memory, before.memory, rtol=0, atol=0)
    assert torch.equal(state.length, before.length)
    K, V = D_MODEL // N_HEADS, 2 * D_MODEL // N_HEADS
    assert state.memory.shape == (3, N_HEADS, K, V) and state.length.dtype == torch.int64
    assert model.state_bytes(state) == 3 * (N_HEADS * K * V * 8 + 8)
    m32 = make(dtype=torch.float32)
    assert m32.state_bytes(m32.init_state(3)) == 3 * (N_HEADS * K * V * 4 + 8)
    assert m32.init_state(1, dtype=torch.bfloat16).memory.dtype == torch.float32


@pytest.mark.parametrize("d_model", [32, 64, 128, 256])
def test_defaults_work_for_arena_widths(d_model):
    model = RetNet(d_model)
    y, state = model(torch.randn(1, 3, d_model))
    assert y.shape == (1, 3, d_model) and torch.isfinite(y).all()
    assert model.state_bytes(state) == 4 * (d_model // 4) * (2 * d_model // 4) * 4 + 8


def test_value_factor():
    model = RetNet(16, n_heads=2, value_factor=1)
    assert (model.key_dim, model.value_dim) == (8, 8) and model.v_proj.out_features == 16


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_heads": 0}, "n_heads"),
        ({"n_heads": 3}, "n_heads"),  # does not divide 16
        ({"n_heads": 16}, "even"),  # key width 1 cannot carry rotary pairs
        ({"value_factor": 0}, "value_factor"),
        ({"value_factor": 0.3}, "value_factor"),
        ({"rope_base": -1.0}, "rope_base"),
        ({"norm_eps": 0.0}, "norm_eps"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"impl": "fused"}, "impl"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RetNet(16, **kwargs)
