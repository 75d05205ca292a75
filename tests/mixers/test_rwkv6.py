"""RWKV-6 time mixing: the paper's per-token equations written out, token shift, numerics, arguments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longrecall.mixers.rwkv6 import MAX_DECAY_EXPONENT, RWKV6, RWKV6State
from longrecall.protocol import state_clone
from longrecall.registry import get_mixer

from mixer_helpers import rand_x_for, seeded

D_MODEL, HEAD_SIZE = 8, 4


def make(impl="chunked", dtype=torch.float64, seed=0, **kwargs):
    kwargs = {"head_size": HEAD_SIZE, "mix_rank": 3, "decay_rank": 5, "chunk_size": 3, **kwargs}
    model = seeded(RWKV6, D_MODEL, dtype=dtype, seed=seed, impl=impl, **kwargs)
    with torch.no_grad():  # LoRAs, norm and bonus off their init so every term of the equations shows
        for p in (model.time_maa_w1, model.time_maa_w2, model.time_decay_w1, model.time_decay_w2):
            p.copy_(0.5 * torch.randn_like(p))
        model.ln_x.weight.add_(0.3 * torch.randn_like(model.ln_x.weight))
        model.ln_x.bias.add_(0.3 * torch.randn_like(model.ln_x.bias))
        model.time_faaaa.add_(0.5 * torch.randn_like(model.time_faaaa))
    return model


rand_x = rand_x_for(D_MODEL, T=7)


def paper_recurrence(model: RWKV6, x, x_prev0=None, S0=None):
    """Peng et al. 2024 (arXiv 2404.05892) eq. 13-21, one token and one key/value channel at a time."""
    B, T, D = x.shape
    H, N = D // HEAD_SIZE, HEAD_SIZE
    p = {name: t.detach() for name, t in model.named_parameters()}

    def lora(y, A, Bm):
        return torch.tanh(y @ A) @ Bm

    x_prev = torch.zeros(B, D, dtype=x.dtype) if x_prev0 is None else x_prev0
    S = torch.zeros(B, H, N, N, dtype=x.dtype) if S0 is None else S0.clone()  # S[b, h, j (key), i (value)]
    R = p["time_maa_w1"].shape[1] // 5
    ys = []
    for t in range(T):
        x_t = x[:, t]
        xx = x_prev - x_t
        x_star = x_t + xx * p["time_maa_x"].view(D)  # eq. 13-14: ddlerp
        offsets = [lora(x_star, p["time_maa_w1"][:, f * R:(f + 1) * R], p["time_maa_w2"][f]) for f in range(5)]
        mixed = {}
        for f, name in enumerate("wkvrg"):
            mixed[name] = x_t + xx * (p[f"time_maa_{name}"].view(D) + offsets[f])
        r = mixed["r"] @ p["receptance.weight"].T
        k = mixed["k"] @ p["key.weight"].T
        v = mixed["v"] @ p["value.weight"].T
        g = F.silu(mixed["g"] @ p["gate.weight"].T)
        d = p["time_decay"].view(D) + lora(mixed["w"], p["time_decay_w1"], p["time_decay_w2"])  # eq. 15-16
        w = torch.exp(-torch.exp(d))  # eq. 17
        u = p["time_faaaa"].reshape(D)
        wkv = torch.zeros(B, D, dtype=x.dtype)
        for h in range(H):
            for i in range(N):  # value channel
                c_i = h * N + i
                for j in range(N):  # key channel
                    c_j = h * N + j
                    kv = k[:, c_j] * v[:, c_i]
                    wkv[:, c_i] += r[:, c_j] * (u[c_j] * kv + S[:, h, j, i])  # eq. 18: read before write
                    S[:, h, j, i] = w[:, c_j] * S[:, h, j, i] + kv  # eq. 19
        groups = wkv.view(B, H, N)  # GroupNorm per head, eq. 20-21
        centred = groups - groups.mean(-1, keepdim=True)
        normed = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + 64e-5)
        normed = normed.reshape(B, D) * p["ln_x.weight"] + p["ln_x.bias"]
        ys.append((normed * g) @ p["output.weight"].T)
        x_prev = x_t
    return torch.stack(ys, 1), x_prev, S


def test_registered_and_reference_parameters():
    assert get_mixer("rwkv6") is RWKV6 and RWKV6.state_growth == "constant"
    model = RWKV6(64)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        **{f"time_maa_{c}": (1, 1, 64) for c in "xwkvrg"},
        "time_maa_w1": (64, 5 * 32), "time_maa_w2": (5, 32, 64),
        "time_decay": (1, 1, 64), "time_decay_w1": (64, 64), "time_decay_w2": (64, 64),
        "time_faaaa": (4, 16),
        **{f"{name}.weight": (64, 64) for name in ("receptance", "key", "value", "gate", "output")},
        "ln_x.weight": (64,), "ln_x.bias": (64,),
    }
    w = torch.exp(-torch.exp(model.time_decay))
    assert ((w > 0.6) & (w < 1)).all()  # the reference's decay_speed in [-6, -1]
    assert model.ln_x.eps == pytest.approx(64e-5) and model.ln_x.num_groups == 4
    no_decay = {name for name, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert no_decay == {name for name in shapes if name.startswith("time_")}


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_matches_the_paper_recurrence(impl):
    model, x = make(impl), rand_x()
    y_ref, shift_ref, S_ref = paper_recurrence(model, x)
    y, state = model(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.wkv, S_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.shift, shift_ref, rtol=0, atol=0)
    y_loop, state_loop = model.step_loop(x, model.init_state(2, dtype=torch.float64))
    torch.testing.assert_close(y_loop, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state_loop.wkv, S_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_token_shift_reads_the_previous_token_across_a_carried_state(k):
    model, x = make(), rand_x()
    y, state = model(x)
    y1, s1 = model(x[:, :k])
    torch.testing.assert_close(s1.shift, x[:, k - 1], rtol=0, atol=0)
    y2, s2 = model(x[:, k:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s2.wkv, state.wkv, rtol=1e-10, atol=1e-12)
    # the carried token is what the first new token is shifted against: the paper's equations agree ...
    y_ref, _, _ = paper_recurrence(model, x[:, k:], x_prev0=s1.shift, S0=s1.wkv)
    torch.testing.assert_close(y2, y_ref, rtol=1e-10, atol=1e-12)
    # ... and forgetting it (a zero shift) changes the first output of the second segment
    y_zero, _ = model(x[:, k:], RWKV6State(torch.zeros_like(s1.shift), s1.wkv))
    assert not torch.allclose(y_zero[:, 0], y2[:, 0])
    # step keeps the current token as the next shift
    _, s_step = model.step(x[:, k], s1)
    torch.testing.assert_close(s_step.shift, x[:, k], rtol=0, atol=0)


def test_decay_is_clamped_to_stay_finite():
    model, x = make(dtype=torch.float32), rand_x(T=3, dtype=torch.float32)
    with torch.no_grad():
        model.time_decay.fill_(200.0)  # exp(200) overflows float32
    *_, log_decay, _ = model._mix(x, torch.zeros_like(x), torch.float32)
    assert torch.isfinite(log_decay).all()
    assert torch.allclose(log_decay, torch.full_like(log_decay, -math.exp(MAX_DECAY_EXPONENT)))


def test_long_float32_sequence_with_large_gates_is_finite():
    model = make(dtype=torch.float32, chunk_size=64)
    with torch.no_grad():  # decays from ~1 (d = -30) to clamped (d = +30), large LoRA pre-activations
        model.time_decay.copy_(30 * torch.sign(torch.randn_like(model.time_decay)))
        model.time_maa_w1.mul_(20)
        model.time_decay_w1.mul_(20)
    x = rand_x(batch=1, T=2000, dtype=torch.float32, scale=5.0)
    y, state = model(x)
    assert torch.isfinite(y).all() and torch.isfinite(state.wkv).all()
    assert state.wkv.dtype == torch.float32 and state.shift.dtype == torch.float32


def test_step_does_not_mutate_state():
    model, x = make(), rand_x()
    _, state = model(x)
    before = state_clone(state)
    model.step(x[:, 0], state)
    model(x, state)
    torch.testing.assert_close(state.wkv, before.wkv, rtol=0, atol=0)
    torch.testing.assert_close(state.shift, before.shift, rtol=0, atol=0)


@pytest.mark.parametrize("d_model", [32, 64, 128, 256])
def test_state_bytes_and_defaults(d_model):
    model = RWKV6(d_model)
    state = model.init_state(3)
    H = d_model // 16
    assert state.shift.shape == (3, d_model) and state.wkv.shape == (3, H, 16, 16)
    assert model.state_bytes(state) == 3 * (d_model * 4 + H * 16 * 16 * 4)
    y, s = model(torch.randn(3, 5, d_model))
    assert y.shape == (3, 5, d_model) and model.state_bytes(s) == model.state_bytes(state)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"head_size": 0}, "head_size"),
        ({"head_size": 5}, "head_size"),
        ({"head_size": 8.0}, "head_size"),
        ({"mix_rank": 0}, "mix_rank"),
        ({"decay_rank": -2}, "decay_rank"),
        ({"init_depth": 1.5}, "init_depth"),
        ({"init_depth": "deep"}, "init_depth"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"impl": "cuda"}, "impl"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RWKV6(32, **kwargs)
