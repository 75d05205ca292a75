"""DeltaNet: the delta rule overwrites, parallel == step, fla's parameter layout, arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longrecall.contract import assert_close
from longrecall.mixers.deltanet import DeltaNet, DeltaNetState
from longrecall.modules import delta_rule_step, l2norm
from longrecall.ops.linear_attn import delta_rule, linear_attn
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import F64, rand_x_for, seeded

D_MODEL = 16


def make(impl="chunked", dtype=F64, seed=0, **kwargs):
    return seeded(DeltaNet, D_MODEL, dtype=dtype, seed=seed, impl=impl, **{"chunk_size": 4, **kwargs})


rand_x = rand_x_for(D_MODEL, T=13)


def test_registered():
    assert get_mixer("deltanet") is DeltaNet
    assert DeltaNet.state_growth == "constant"
    assert DeltaNet.__doc__.splitlines()[0].startswith("DeltaNet:")


# ----------------------------------------------------------------------------- the delta rule


def unit(*shape, seed):
    return l2norm(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64), eps=0.0)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_delta_rule_overwrites_with_beta_one(impl):
    """Write (k, v1) then (k, v2) with beta = 1: reading k recalls v2 (plain linear attention: v1 + v2)."""
    B, H, K, V = 2, 3, 8, 5
    k = unit(B, H, 1, K, seed=0).expand(B, H, 2, K)  # the same unit key twice
    v = torch.randn(B, H, 2, V, dtype=F64)
    beta = torch.ones(B, H, 2, dtype=F64)
    _, S = delta_rule(k, k, v, beta, impl=impl, chunk_size=1)
    recalled = torch.einsum("bhk,bhkv->bhv", k[:, :, 0], S)
    torch.testing.assert_close(recalled, v[:, :, 1], rtol=0, atol=1e-12)
    _, S_add = linear_attn(k, k, v, impl="naive")
    torch.testing.assert_close(torch.einsum("bhk,bhkv->bhv", k[:, :, 0], S_add), v.sum(2))


def test_delta_rule_step_overwrites_and_spares_orthogonal_keys():
    B, H, K, V = 1, 2, 6, 4
    basis = torch.linalg.qr(torch.randn(K, K, dtype=F64))[0]  # orthonormal rows
    k1, k2 = basis[0].expand(B, H, K), basis[1].expand(B, H, K)
    v1, v2, v3 = (torch.randn(B, H, V, dtype=F64) for _ in range(3))
    ones = torch.ones(B, H, dtype=F64)
    S = torch.zeros(B, H, K, V, dtype=F64)
    o, S = delta_rule_step(k1, k1, v1, ones, None, S)
    torch.testing.assert_close(o, v1, rtol=0, atol=1e-12)  # read after write returns the value
    _, S = delta_rule_step(k2, k2, v2, ones, None, S)
    o, S = delta_rule_step(k1, k1, v3, ones, None, S)  # overwrite k1
    torch.testing.assert_close(o, v3, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.einsum("bhk,bhkv->bhv", k2, S), v2, rtol=0, atol=1e-12)  # k2 untouched
    # beta = 1/2 moves the recall half-way from the old value to the new one
    _, S_half = delta_rule_step(k1, k1, v1, ones / 2, None, S)
    torch.testing.assert_close(torch.einsum("bhk,bhkv->bhv", k1, S_half), (v1 + v3) / 2, rtol=0, atol=1e-12)


def test_step_matches_kernel_spec():
    B, H, T, K, V = 2, 2, 7, 4, 3
    g = torch.Generator().manual_seed(3)
    q, k = (l2norm(torch.randn(B, H, T, K, generator=g, dtype=F64)) for _ in range(2))
    v = torch.randn(B, H, T, V, generator=g, dtype=F64)
    beta, log_decay = torch.rand(B, H, T, generator=g, dtype=F64), -torch.rand(B, H, T, generator=g, dtype=F64)
    S0 = torch.randn(B, H, K, V, generator=g, dtype=F64)
    o_ref, S_ref = delta_rule(q, k, v, beta, log_decay, S0, impl="naive")
    S, outs = S0, []
    for t in range(T):
        o, S = delta_rule_step(q[:, :, t], k[:, :, t], v[:, :, t], beta[:, :, t], log_decay[:, :, t], S)
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 2), o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(S, S_ref, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- the layer


@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("use_gate", [False, True])
def test_step_loop_equals_forward(impl, use_gate):
    model, x = make(impl, use_gate=use_gate), rand_x()
    y, state = model(x)
    y_loop, state_loop = model.step_loop(x, model.init_state(2, dtype=F64))
    torch.testing.assert_close(y, y_loop, rtol=1e-10, atol=1e-10)
    assert_close(state, state_loop, "state", atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("k", [1, 2, 5, 8])  # k < conv_size - 1 checks the conv buffers' carry-over
def test_split_forward_equals_whole(k):
    mh.assert_chunked_equals_whole(make(), rand_x(), (k,), rtol=1e-10, atol=1e-10)


def test_matches_a_transcription_of_the_reference_layer():
    """fla's DeltaNet.forward (silu q/k/v convs with zero left padding, l2 q/k, scale K^-1/2, RMSNorm)."""
    model, x = make("naive", use_gate=True), rand_x()
    H, K, V = model.n_heads, model.head_k_dim, model.head_v_dim
    B, T, _ = x.shape

    def conv(proj, conv1d):
        return F.silu(F.conv1d(proj(x).transpose(1, 2), conv1d.weight, padding=3, groups=conv1d.groups)[..., :T])

    def fla_l2norm(t):  # fla.modules.l2norm: x / sqrt(sum(x^2) + 1e-6)
        return t / torch.sqrt(t.pow(2).sum(-1, keepdim=True) + 1e-6)

    q = fla_l2norm(conv(model.q_proj, model.q_conv1d).transpose(1, 2).reshape(B, T, H, K)) * K**-0.5
    k = fla_l2norm(conv(model.k_proj, model.k_conv1d).transpose(1, 2).reshape(B, T, H, K))
    v = conv(model.v_proj, model.v_conv1d).transpose(1, 2).reshape(B, T, H, V)
    beta = model.b_proj(x).sigmoid()
    S, outs = torch.zeros(B, H, K, V, dtype=F64), []
    for t in range(T):
        S = S - beta[:, t, :, None, None] * k[:, t, :, :, None] * (k[:, t, :, :, None] * S).sum(2, keepdim=True)
        S = S + beta[:, t, :, None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = torch.stack(outs, 1)  # (B, T, H, V)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * model.o_norm.weight
    o = o * F.silu(model.g_proj(x).reshape(B, T, H, V))
    y_ref = model.o_proj(o.reshape(B, T, H * V))
    y, state = model(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.memory, S, rtol=1e-10, atol=1e-10)


def test_parameter_layout_is_fla():
    model = DeltaNet(64, n_heads=4, use_gate=True)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "q_proj.weight": (64, 64), "k_proj.weight": (64, 64), "v_proj.weight": (64, 64), "b_proj.weight": (4, 64),
        "q_conv1d.weight": (64, 1, 4), "k_conv1d.weight": (64, 1, 4), "v_conv1d.weight": (64, 1, 4),
        "g_proj.weight": (64, 64), "o_norm.weight": (16,), "o_proj.weight": (64, 64),
    }


def test_chunked_and_naive_train_alike():
    x, grads = rand_x(), []
    for impl in ("chunked", "naive"):
        model = make(impl)
        y, state = model(x)
        (y.square().sum() + state.memory.sum()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-10, msg=name)


def test_no_state_mutation_and_state_bytes():
    model, x = make(), rand_x(batch=3)
    _, state = model(x)
    mh.assert_step_and_forward_keep_state(model, state, x[:, 0], x)
    assert isinstance(state, DeltaNetState)
    H, K, V, W1 = 2, 8, 8, 3
    assert model.state_bytes(state) == 3 * (H * K * V * 8 + (2 * H * K + H * V) * W1 * 8)
    m32 = DeltaNet(64)  # defaults: H = 2, K = V = 32, conv 4
    s32 = m32.init_state(1)
    assert s32.memory.dtype == torch.float32 and s32.conv_q.shape == (1, 64, 3)
    assert m32.state_bytes(s32) == 2 * 32 * 32 * 4 + (64 + 64 + 64) * 3 * 4
    assert make(dtype=torch.bfloat16).init_state(1).memory.dtype == torch.float32


def test_float32_forward_runs_and_matches_step():
    model, x = make(dtype=torch.float32), rand_x(dtype=torch.float32)
    y, state = model(x)
    y_loop, state_loop = model.step_loop(x, model.init_state(2))
    torch.testing.assert_close(y, y_loop, rtol=1e-4, atol=1e-5)
    assert y.dtype == torch.float32 and state.memory.dtype == torch.float32


@pytest.mark.parametrize("d_model", [32, 64, 128, 256])
def test_defaults_valid(d_model):
    model = DeltaNet(d_model)
    y, _ = model(torch.randn(1, 3, d_model))
    assert y.shape == (1, 3, d_model)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_heads": 0}, "n_heads"),
        ({"n_heads": 2.0}, "n_heads"),
        ({"head_dim": 0}, "head_dim"),
        ({"n_heads": 32}, "head_dim"),  # default head_dim 16 // 32 = 0
        ({"expand_v": 0}, "expand_v"),
        ({"head_dim": 3, "expand_v": 0.5}, "expand_v"),  # V = 1.5
        ({"use_gate": "yes"}, "use_gate"),
        ({"conv_size": 0}, "conv_size"),
        ({"conv_bias": 1}, "conv_bias"),
        ({"norm_eps": 0.0}, "norm_eps"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"impl": "fused"}, "impl"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DeltaNet(16, **kwargs)
