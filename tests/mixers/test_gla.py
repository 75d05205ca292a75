"""GLA: the decay law, the layer written out by hand, numerics, arguments and state size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longrecall.mixers.gla import GLA, GLAState
from longrecall.protocol import state_clone
from longrecall.registry import get_mixer

from mixer_helpers import rand_x_for, seeded

D_MODEL, N_HEADS = 16, 2


def make(impl="chunked", dtype=torch.float64, seed=0, **kwargs):
    model = seeded(GLA, D_MODEL, dtype=dtype, seed=seed, n_heads=N_HEADS, impl=impl,
                   chunk_size=kwargs.pop("chunk_size", 4), **kwargs)
    with torch.no_grad():  # move the norm weight and gate bias off their init so every path shows
        model.g_norm.weight.add_(0.3 * torch.randn_like(model.g_norm.weight))
        model.gk_proj[1].bias.add_(torch.randn_like(model.gk_proj[1].bias))
    return model


rand_x = rand_x_for(D_MODEL, T=11)


def test_registered_and_shapes():
    assert get_mixer("gla") is GLA and GLA.state_growth == "constant"
    model = GLA(64)
    assert (model.key_dim, model.value_dim, model.n_heads) == (32, 64, 4)
    assert (model.head_k_dim, model.head_v_dim) == (8, 16)
    assert (model.gate_low_rank_dim, model.gate_logit_normalizer) == (16, 16.0)
    assert model.gk_proj[0].weight.shape == (16, 64) and model.gk_proj[1].weight.shape == (32, 16)


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_forward_equals_step_loop_from_a_carried_state(impl):
    model, x = make(impl), rand_x()
    _, start = model.step_loop(rand_x(T=5, seed=3), model.init_state(2, dtype=torch.float64))
    y, state = model(x, start)
    y_loop, state_loop = model.step_loop(x, start)
    torch.testing.assert_close(y, y_loop, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.S, state_loop.S, rtol=1e-10, atol=1e-10)


def test_decays_in_unit_interval_and_follow_the_one_over_tau_law():
    model, x = make(), rand_x(T=7)
    z = model.gk_proj(x).unflatten(-1, (N_HEADS, -1))  # the gate logits x W_a1 W_a2 + b
    *_, log_decay = model._projections(x, torch.float64)
    alpha = log_decay.exp()
    assert ((alpha > 0) & (alpha < 1)).all()
    torch.testing.assert_close(alpha, torch.sigmoid(z) ** (1 / 16), rtol=1e-12, atol=0)  # alpha = sigmoid^(1/tau)
    # same weights, another tau: log alpha scales as 1/tau
    model_tau1 = make(gate_logit_normalizer=1.0)
    *_, log_decay_1 = model_tau1._projections(x, torch.float64)
    torch.testing.assert_close(log_decay_1, 16 * log_decay, rtol=1e-12, atol=0)
    # log space: gate logits far beyond sigmoid's float range still give finite log decays
    with torch.no_grad():
        model.gk_proj[1].bias.fill_(-1e4)
    *_, log_decay = model._projections(x, torch.float32)
    assert torch.isfinite(log_decay).all() and (log_decay < -600).all()


def test_matches_the_layer_written_out():
    """S_t = diag(alpha_t) S_{t-1} + k^T v; o = q S / sqrt(K); y = W_o(RMSNorm(o) * swish(x W_r))."""
    model, x = make(), rand_x(batch=2, T=6)
    H, K, V, tau = N_HEADS, model.head_k_dim, model.head_v_dim, 16.0
    W_q, W_k, W_v, W_r = (m.weight for m in (model.q_proj, model.k_proj, model.v_proj, model.g_proj))
    W_a1, W_a2, b_a = model.gk_proj[0].weight, model.gk_proj[1].weight, model.gk_proj[1].bias
    S = torch.zeros(2, H, K, V, dtype=torch.float64)
    ys = []
    for x_t in x.unbind(1):
        q, k, v = ((x_t @ W.T).view(2, H, -1) for W in (W_q, W_k, W_v))
        alpha = torch.sigmoid(x_t @ W_a1.T @ W_a2.T + b_a).view(2, H, K) ** (1 / tau)
        S = alpha[..., None] * S + k[..., None] * v[..., None, :]
        o = torch.einsum("bhk,bhkv->bhv", q, S) / K**0.5
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * model.g_norm.weight  # per-head RMSNorm
        ys.append((o.reshape(2, -1) * F.silu(x_t @ W_r.T)) @ model.o_proj.weight.T)
    y, state = model(x)
    torch.testing.assert_close(y, torch.stack(ys, 1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.S, S, rtol=1e-10, atol=1e-12)


def test_long_float32_sequence_with_large_gates_is_finite():
    model = make(dtype=torch.float32, chunk_size=64)
    with torch.no_grad():  # gate logits of +-60: decays of exactly 1 and of exp(-60/16) side by side
        model.gk_proj[1].bias.copy_(60 * torch.sign(torch.randn_like(model.gk_proj[1].bias)))
    x = rand_x(batch=1, T=2000, dtype=torch.float32, scale=5.0)
    y, state = model(x)
    assert torch.isfinite(y).all() and torch.isfinite(state.S).all()
    assert state.S.dtype == torch.float32


def test_step_does_not_mutate_state():
    model, x = make(), rand_x()
    _, state = model(x)
    before = state_clone(state)
    model.step(x[:, 0], state)
    model(x, state)
    torch.testing.assert_close(state.S, before.S, rtol=0, atol=0)


@pytest.mark.parametrize("d_model", [32, 64, 128, 256])
def test_state_bytes_and_defaults(d_model):
    model = GLA(d_model)
    state = model.init_state(3)
    H, K, V = 4, d_model // 2 // 4, d_model // 4
    assert isinstance(state, GLAState) and state.S.shape == (3, H, K, V)
    assert model.state_bytes(state) == 3 * H * K * V * 4 == 3 * d_model**2 // 2
    y, s = model(torch.randn(3, 5, d_model))
    assert y.shape == (3, 5, d_model) and model.state_bytes(s) == model.state_bytes(state)
    assert GLA(8, n_heads=2).double().state_bytes(GLA(8, n_heads=2).double().init_state(1)) == 2 * 2 * 4 * 8


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_heads": 0}, "n_heads"),
        ({"n_heads": 3}, "n_heads"),
        ({"n_heads": 2.0}, "n_heads"),
        ({"expand_k": 0}, "expand_k"),
        ({"expand_v": -1.0}, "expand_v"),
        ({"expand_k": 0.01}, "key_dim"),
        ({"gate_low_rank_dim": 0}, "gate_low_rank_dim"),
        ({"gate_logit_normalizer": 0.0}, "gate_logit_normalizer"),
        ({"norm_eps": -1e-5}, "norm_eps"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"impl": "fused"}, "impl"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GLA(32, **kwargs)
