"""Gated DeltaNet: decays in (0, 1) at init, alpha = 1 is DeltaNet, parallel == step, arguments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longrecall.contract import assert_close
from longrecall.mixers.deltanet import DeltaNet
from longrecall.mixers.gated_deltanet import GatedDeltaNet, GatedDeltaNetState
from longrecall.modules import delta_rule_step
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import F64, rand_x_for, seeded

D_MODEL = 16


def make(impl="chunked", dtype=F64, seed=0, **kwargs):
    return seeded(GatedDeltaNet, D_MODEL, dtype=dtype, seed=seed, impl=impl, **{"chunk_size": 4, **kwargs})


rand_x = rand_x_for(D_MODEL, T=13)


def test_registered():
    assert get_mixer("gated_deltanet") is GatedDeltaNet
    assert GatedDeltaNet.state_growth == "constant"
    assert GatedDeltaNet.__doc__.splitlines()[0].startswith("Gated DeltaNet:")


def test_decay_init_is_mamba2_style_and_in_unit_interval():
    torch.manual_seed(0)
    model = GatedDeltaNet(64, n_heads=8)
    A = torch.exp(model.A_log)
    assert ((A > 0) & (A < 16)).all()
    dt = F.softplus(model.dt_bias)
    assert (dt >= 1e-3 * (1 - 1e-5)).all() and (dt <= 0.1 * (1 + 1e-5)).all()
    alpha = torch.exp(model.log_decay(3 * torch.randn(4, 50, 64)))  # (B, T, H)
    assert alpha.shape == (4, 50, 8) and alpha.dtype == torch.float32
    assert ((alpha > 0) & (alpha < 1)).all()
    assert model.A_log._no_weight_decay and model.dt_bias._no_weight_decay


def test_decay_scales_the_memory():
    """beta = 0: one step multiplies the memory by alpha_t = exp(g_t), nothing else."""
    S = torch.randn(2, 3, 4, 5, dtype=F64)
    g = -torch.rand(2, 3, dtype=F64)
    k = torch.randn(2, 3, 4, dtype=F64)
    _, S1 = delta_rule_step(k, k, torch.randn(2, 3, 5, dtype=F64), torch.zeros(2, 3, dtype=F64), g, S)
    torch.testing.assert_close(S1, g.exp()[..., None, None] * S, rtol=1e-14, atol=0)


def test_no_decay_is_deltanet():
    """A -> 0 (A_log -> -inf) makes alpha_t = 1: the layer is then DeltaNet with the same weights."""
    gated = make(expand_v=1, use_gate=True)
    with torch.no_grad():
        gated.A_log.fill_(-1e4)
    plain = DeltaNet(D_MODEL, head_dim=gated.head_k_dim, expand_v=1, use_gate=True, chunk_size=4).to(F64)
    missing, unexpected = plain.load_state_dict(gated.state_dict(), strict=False)
    assert not missing and set(unexpected) == {"a_proj.weight", "A_log", "dt_bias"}
    x = rand_x()
    y_g, s_g = gated(x)
    y_p, s_p = plain(x)
    torch.testing.assert_close(y_g, y_p, rtol=1e-12, atol=1e-12)
    assert_close(s_g, s_p, "state", atol=1e-12, rtol=1e-12)


def test_strong_decay_forgets():
    """With alpha ~ 0 the memory holds only the last write beta k^T v: rank one per head."""
    model = make()
    with torch.no_grad():
        model.A_log.fill_(math.log(1e4))
        model.dt_bias.fill_(5.0)
    _, state = model(rand_x())
    sv = torch.linalg.svdvals(state.memory)  # (B, H, min(K, V))
    assert (sv[..., 0] > 0).all() and (sv[..., 1:] < 1e-8 * sv[..., :1]).all()


@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("use_gate", [True, False])
def test_step_loop_equals_forward(impl, use_gate):
    model, x = make(impl, use_gate=use_gate), rand_x()
    for start in (None, model.step_loop(rand_x(seed=5)[:, :4], model.init_state(2, dtype=F64))[1]):
        init = start if start is not None else model.init_state(2, dtype=F64)
        y, state = model(x, start)
        y_loop, state_loop = model.step_loop(x, init)
        torch.testing.assert_close(y, y_loop, rtol=1e-10, atol=1e-10)
        assert_close(state, state_loop, "state", atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_split_forward_equals_whole(k):
    mh.assert_chunked_equals_whole(make(), rand_x(), (k,), rtol=1e-10, atol=1e-10)


def test_parameter_layout_is_fla():
    model = GatedDeltaNet(64, n_heads=2)  # K = 0.75 * 64 / 2 = 24, V = 48
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "q_proj.weight": (48, 64), "k_proj.weight": (48, 64), "v_proj.weight": (96, 64), "b_proj.weight": (2, 64),
        "q_conv1d.weight": (48, 1, 4), "k_conv1d.weight": (48, 1, 4), "v_conv1d.weight": (96, 1, 4),
        "g_proj.weight": (96, 64), "o_norm.weight": (48,), "o_proj.weight": (64, 96),
        "a_proj.weight": (2, 64), "A_log": (2,), "dt_bias": (2,),
    }


def test_no_state_mutation_and_state_bytes():
    model, x = make(), rand_x(batch=3)
    _, state = model(x)
    mh.assert_step_and_forward_keep_state(model, state, x[:, 0], x)
    assert isinstance(state, GatedDeltaNetState)
    H, K, V, W1 = 2, 6, 12, 3  # K = int(0.75 * 16) // 2
    assert model.state_bytes(state) == 3 * (H * K * V * 8 + (2 * H * K + H * V) * W1 * 8)
    m32 = GatedDeltaNet(64)
    s32 = m32.init_state(1)
    assert s32.memory.dtype == torch.float32
    assert m32.state_bytes(s32) == 2 * 24 * 48 * 4 + (48 + 48 + 96) * 3 * 4


def test_gradients_reach_the_decay_and_match_across_impls():
    x, grads = rand_x(), []
    for impl in ("chunked", "naive"):
        model = make(impl)
        y, state = model(x)
        (y.square().sum() + state.memory.sum()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0]["A_log"].abs().min() > 0 and grads[0]["dt_bias"].abs().min() > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("d_model", [32, 64, 128, 256])
def test_defaults_valid(d_model):
    model = GatedDeltaNet(d_model)
    y, _ = model(torch.randn(1, 3, d_model))
    assert y.shape == (1, 3, d_model) and torch.isfinite(y).all()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_heads": 0}, "n_heads"),
        ({"n_heads": 13}, "head_dim"),  # default head_dim int(0.75 * 16) // 13 = 0
        ({"head_dim": -2}, "head_dim"),
        ({"expand_v": -1}, "expand_v"),
        ({"head_dim": 3, "expand_v": 1.5}, "expand_v"),
        ({"use_gate": None}, "use_gate"),
        ({"conv_size": 1.5}, "conv_size"),
        ({"norm_eps": -1e-5}, "norm_eps"),
        ({"chunk_size": -4}, "chunk_size"),
        ({"impl": "triton"}, "impl"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GatedDeltaNet(16, **kwargs)
