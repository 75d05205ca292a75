"""Mamba-1 block: recurrent form == parallel form, reference parameter layout and maths, arguments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longrecall.contract import assert_close
from longrecall.mixers.mamba import Mamba
from longrecall.protocol import state_clone
from longrecall.registry import get_mixer

from mixer_helpers import rand_x_for, seeded

D_MODEL, D_STATE, D_CONV, EXPAND = 8, 4, 4, 2


def make(scan="chunked", dtype=torch.float64, seed=0, **kwargs):
    kwargs = {"d_state": D_STATE, "d_conv": D_CONV, "expand": EXPAND, "chunk_size": 4, **kwargs}
    model = seeded(Mamba, D_MODEL, dtype=dtype, seed=seed, scan=scan, **kwargs)
    with torch.no_grad():  # move D and the biases off their init so every path is exercised
        model.D.add_(0.3 * torch.randn_like(model.D))
        model.conv1d.bias.add_(0.1 * torch.randn_like(model.conv1d.bias))
    return model


rand_x = rand_x_for(D_MODEL, T=13)


def test_registered():
    assert get_mixer("mamba") is Mamba
    assert Mamba.state_growth == "constant"


@pytest.mark.parametrize("scan", ["auto", "chunked", "naive"])
def test_step_loop_equals_forward(scan):
    model, x = make(scan), rand_x()
    y, state = model(x)
    y_loop, state_loop = model.step_loop(x, model.init_state(x.shape[0], dtype=x.dtype))
    torch.testing.assert_close(y, y_loop, rtol=1e-10, atol=1e-10)
    assert_close(state, state_loop, "state", atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("scan", ["auto", "chunked", "naive"])
@pytest.mark.parametrize("k", [1, 2, 5, 8])  # k < d_conv - 1 checks the conv buffer's carry-over
def test_split_forward_equals_whole(scan, k):
    model, x = make(scan), rand_x()
    y, state = model(x)
    y1, s1 = model(x[:, :k])
    y2, s2 = model(x[:, k:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, rtol=1e-10, atol=1e-10)
    assert_close(s2, state, "state", atol=1e-10, rtol=1e-10)


def test_step_does_not_mutate_state_and_state_bytes():
    model, x = make(), rand_x(batch=3)
    _, state = model(x)
    before = state_clone(state)
    model.step(x[:, 0], state)
    assert_close(state, before, "state", atol=0, rtol=0)
    E = EXPAND * D_MODEL
    # float64 activations: ssm state float64 too (scan dtype), conv buffer float64
    assert model.state_bytes(state) == 3 * (E * D_STATE * 8 + E * (D_CONV - 1) * 8)
    s32 = make(dtype=torch.float32).init_state(3)
    assert s32.ssm.dtype == torch.float32
    assert make(dtype=torch.float32).state_bytes(s32) == 3 * (E * D_STATE * 4 + E * (D_CONV - 1) * 4)


def test_every_scan_trains_alike():
    x = rand_x()
    grads = []
    for scan in ("naive", "chunked", "auto"):  # auto: the fused C++ kernel where it builds
        model = make(scan)
        y, state = model(x)
        (y.square().sum() + state.ssm.sum()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for other in grads[1:]:
        for name in grads[0]:
            torch.testing.assert_close(other[name], grads[0][name], rtol=1e-9, atol=1e-10, msg=name)


def test_init_matches_reference():
    model = Mamba(32, dt_min=0.01, dt_max=0.05)
    assert model.dt_rank == 2 and model.d_inner == 64 and model.d_state == 16
    torch.testing.assert_close(model.A_log, torch.log(torch.arange(1, 17.0)).repeat(64, 1))
    dt = F.softplus(model.dt_proj.bias)
    assert (dt >= 0.01 * (1 - 1e-5)).all() and (dt <= 0.05 * (1 + 1e-5)).all()
    assert model.dt_proj.weight.abs().max() <= model.dt_rank**-0.5
    assert torch.equal(model.D, torch.ones(64))


# ----------------------------------------------------------------------------- reference layout


def reference_state_dict(d_model, d_inner, d_state, d_conv, dt_rank, seed=0):
    """Parameter names and shapes of mamba_ssm.modules.mamba_simple.Mamba (bias=False, conv_bias=True)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    return {
        "A_log": torch.log(torch.rand(d_inner, d_state, generator=g, dtype=torch.float64) * 4 + 0.5),
        "D": r(d_inner, scale=1.0),
        "in_proj.weight": r(2 * d_inner, d_model),
        "conv1d.weight": r(d_inner, 1, d_conv),
        "conv1d.bias": r(d_inner),
        "x_proj.weight": r(dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": r(d_inner, dt_rank),
        "dt_proj.bias": r(d_inner) - 2.0,
        "out_proj.weight": r(d_model, d_inner),
    }


def reference_slow_path(sd, x, d_state, d_conv, dt_rank):
    """mamba_simple.Mamba.forward without causal_conv1d, with selective_scan_ref, transcribed (B, D, L layout)."""
    L = x.shape[1]
    xz = (sd["in_proj.weight"] @ x.transpose(1, 2).transpose(0, 1).reshape(x.shape[2], -1))  # (2E, B*L)
    xz = xz.reshape(-1, x.shape[0], L).transpose(0, 1)  # b d l
    xs, z = xz.chunk(2, dim=1)
    xs = F.silu(F.conv1d(xs, sd["conv1d.weight"], sd["conv1d.bias"], padding=d_conv - 1, groups=xs.shape[1])[..., :L])
    x_dbl = xs.transpose(1, 2).reshape(-1, xs.shape[1]) @ sd["x_proj.weight"].t()  # (b l) d
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    dt = (sd["dt_proj.weight"] @ dt.t()).reshape(-1, x.shape[0], L).transpose(0, 1)  # b d l
    B = B.reshape(x.shape[0], L, d_state).transpose(1, 2)  # b n l
    C = C.reshape(x.shape[0], L, d_state).transpose(1, 2)
    A = -torch.exp(sd["A_log"])
    # selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)
    delta = F.softplus(dt + sd["dt_proj.bias"][..., None])
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, xs)
    h = A.new_zeros(x.shape[0], A.shape[0], d_state)
    ys = []
    for i in range(L):
        h = deltaA[:, :, i] * h + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    out = (y + xs * sd["D"][:, None]) * F.silu(z)
    return out.transpose(1, 2) @ sd["out_proj.weight"].t(), h


@pytest.mark.parametrize("scan", ["auto", "chunked", "naive"])
def test_reference_state_dict_loads_and_matches_slow_path(scan):
    d_model, d_state, d_conv = 20, 5, 3
    d_inner, dt_rank = 40, math.ceil(d_model / 16)
    model = Mamba(d_model, d_state=d_state, d_conv=d_conv, chunk_size=8, scan=scan).double()
    sd = reference_state_dict(d_model, d_inner, d_state, d_conv, dt_rank)
    model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 19, d_model, dtype=torch.float64)
    y_ref, h_ref = reference_slow_path(sd, x, d_state, d_conv, dt_rank)
    y, state = model(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.ssm, h_ref, rtol=1e-10, atol=1e-10)


def test_matches_mambapy():
    mambapy = pytest.importorskip("mambapy.mamba")
    torch.manual_seed(0)
    d_model = 16
    for pscan in (True, False):
        config = mambapy.MambaConfig(d_model=d_model, n_layers=1, d_state=D_STATE, d_conv=D_CONV, pscan=pscan)
        block = mambapy.MambaBlock(config)
        model = Mamba(d_model, d_state=D_STATE, d_conv=D_CONV, chunk_size=8)
        model.load_state_dict(block.state_dict(), strict=True)
        x = torch.randn(2, 16, d_model)
        y, state = model(x)
        torch.testing.assert_close(y, block(x), rtol=1e-4, atol=1e-5)
    # recurrent form: mambapy's cache is (h, last d_conv-1 conv inputs), the same memory as ours
    cache = (None, torch.zeros(2, model.d_inner, D_CONV - 1))
    for x_t in x.unbind(1):
        y_t, cache = block.step(x_t, cache)
    torch.testing.assert_close(cache[0], state.ssm, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cache[1], state.conv, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"d_state": 0}, "d_state"),
        ({"d_conv": -1}, "d_conv"),
        ({"expand": 0}, "expand"),
        ({"dt_rank": 0}, "dt_rank"),
        ({"dt_rank": "full"}, "dt_rank"),
        ({"dt_min": 0.0}, "dt_min"),
        ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min"),
        ({"dt_init_floor": -1e-4}, "dt_init_floor"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"scan": "pscan"}, "scan"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Mamba(8, **kwargs)


def test_bad_input_shapes():
    model = make()
    with pytest.raises(ValueError, match="d_model"):
        model(torch.zeros(1, 3, D_MODEL + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        model.step(torch.zeros(1, 3, D_MODEL, dtype=torch.float64), model.init_state(1))
