"""Mamba-2 / SSD block: reference parameter layout and maths, initialisation, state size, arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longrecall.contract import assert_close
from longrecall.mixers.mamba2 import Mamba2
from longrecall.protocol import state_clone
from longrecall.registry import get_mixer

from mixer_helpers import rand_x_for, seeded

D_MODEL, D_STATE, D_CONV, HEADDIM = 8, 4, 4, 4  # E = 16 inner channels, H = 4 heads


def make(impl="chunked", dtype=torch.float64, seed=0, **kwargs):
    kwargs = {"d_state": D_STATE, "d_conv": D_CONV, "headdim": HEADDIM, "chunk_size": 4, **kwargs}
    model = seeded(Mamba2, D_MODEL, dtype=dtype, seed=seed, impl=impl, **kwargs)
    with torch.no_grad():  # move D, the norm and the conv bias off their init so every path is exercised
        model.D.add_(0.3 * torch.randn_like(model.D))
        model.norm.weight.add_(0.3 * torch.randn_like(model.norm.weight))
        model.conv1d.bias.add_(0.1 * torch.randn_like(model.conv1d.bias))
    return model


rand_x = rand_x_for(D_MODEL, T=13)


def test_registered():
    assert get_mixer("mamba2") is Mamba2
    assert Mamba2.state_growth == "constant"


@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("k", [0, 1, 2, 6])  # k < d_conv - 1 checks the conv buffer's carry-over
def test_step_loop_and_split_forward_equal_forward(impl, k):
    model, x = make(impl), rand_x()
    y, state = model(x)
    y_loop, state_loop = model.step_loop(x, model.init_state(x.shape[0], dtype=x.dtype))
    torch.testing.assert_close(y, y_loop, rtol=1e-10, atol=1e-10)
    assert_close(state, state_loop, "state", atol=1e-10, rtol=1e-10)
    y1, s1 = model(x[:, :k])
    y2, s2 = model(x[:, k:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, rtol=1e-10, atol=1e-10)
    assert_close(s2, state, "state", atol=1e-10, rtol=1e-10)


# ----------------------------------------------------------------------------- reference maths


def reference_state_dict(d_model, d_inner, d_state, d_conv, nheads, seed=0):
    """Names and shapes of mamba_ssm.modules.mamba2_simple.Mamba2Simple (ngroups=1, bias=False, conv_bias=True)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    conv_dim = d_inner + 2 * d_state
    return {
        "dt_bias": r(nheads) - 2.0,
        "A_log": torch.log(torch.rand(nheads, generator=g, dtype=torch.float64) * 15 + 1),
        "D": r(nheads, scale=1.0),
        "in_proj.weight": r(2 * d_inner + 2 * d_state + nheads, d_model),
        "conv1d.weight": r(conv_dim, 1, d_conv),
        "conv1d.bias": r(conv_dim),
        "norm.weight": 1 + r(d_inner),
        "out_proj.weight": r(d_model, d_inner),
    }


def reference_block(sd, u, d_state, d_conv, headdim, eps=1e-5):
    """Mamba2Simple's non-fused path, with the SSD written as the paper's per-head recurrence:

    h_t = exp(dt_t A_h) h_{t-1} + (dt_t x_t) ⊗ B_t   (P, N) per head, reference layout
    y_t = h_t C_t + D_h x_t
    """
    batch, L, _ = u.shape
    nheads = sd["A_log"].shape[0]
    d_inner = nheads * headdim
    zxbcdt = u @ sd["in_proj.weight"].T
    z, xBC, dt = torch.split(zxbcdt, [d_inner, d_inner + 2 * d_state, nheads], dim=-1)
    dt = F.softplus(dt + sd["dt_bias"])  # (b, l, h)
    conv = F.conv1d(xBC.transpose(1, 2), sd["conv1d.weight"], sd["conv1d.bias"], padding=d_conv - 1,
                    groups=xBC.shape[-1])
    xBC = F.silu(conv[..., :L]).transpose(1, 2)
    x, B, C = torch.split(xBC, [d_inner, d_state, d_state], dim=-1)
    x = x.reshape(batch, L, nheads, headdim)
    A = -torch.exp(sd["A_log"])
    h = u.new_zeros(batch, nheads, headdim, d_state)
    ys = []
    for t in range(L):
        a = torch.exp(dt[:, t] * A)  # (b, h): one scalar decay per head
        h = a[..., None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, None, None, :]
        ys.append(torch.einsum("bhpn,bn->bhp", h, C[:, t]) + sd["D"][:, None] * x[:, t])
    y = torch.stack(ys, dim=1).reshape(batch, L, d_inner)
    g = y * F.silu(z)  # RMSNormGated(norm_before_gate=False)
    y = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps) * sd["norm.weight"]
    return y @ sd["out_proj.weight"].T, h, xBC


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_reference_state_dict_loads_and_matches_the_recurrence(impl):
    d_model, d_state, d_conv, headdim = 12, 5, 3, 6  # E = 24, H = 4
    model = Mamba2(d_model, d_state=d_state, d_conv=d_conv, headdim=headdim, chunk_size=4, impl=impl).double()
    sd = reference_state_dict(d_model, 24, d_state, d_conv, 4)
    model.load_state_dict(sd, strict=True)
    u = rand_x(T=11, d=d_model)
    y_ref, h_ref, _ = reference_block(sd, u, d_state, d_conv, headdim)
    y, state = model(u)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    # our state is the kernel's (K, V) = (N, P) layout; the reference's is (P, N)
    torch.testing.assert_close(state.ssm, h_ref.transpose(-1, -2), rtol=1e-10, atol=1e-10)
    xBC_in = (u @ sd["in_proj.weight"].T)[..., 24 : 24 + 24 + 2 * d_state]  # conv inputs (before the conv)
    torch.testing.assert_close(state.conv, xBC_in[:, -(d_conv - 1) :].transpose(1, 2), rtol=0, atol=0)


def test_ssd_is_matrix_form_of_linear_attention():
    """y = (L ∘ C Bᵀ)(dt x) with L_ts = prod_{r=s+1..t} a_r (the SSD 'attention' form, paper eq. 16)."""
    model, x = make(), rand_x(batch=1, T=9)
    z, xBC, dt = model._split(model.in_proj(x))
    xBC = F.silu(F.conv1d(xBC.transpose(1, 2), model.conv1d.weight, model.conv1d.bias,
                          padding=D_CONV - 1, groups=model.conv_dim)[..., :9]).transpose(1, 2)
    xh, Bm, Cm, dt, log_a = model._ssm_inputs(xBC, dt, torch.float64)  # (1,T,H,P) (1,T,N) (1,T,N) (1,T,H)
    cum = log_a[0].cumsum(0)  # (T, H)
    seg = cum[:, None, :] - cum[None, :, :]  # (t, s, H): sum_{r=s+1..t} log a_r
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    Lmat = torch.where(causal[..., None], seg.exp(), torch.zeros(()))  # (t, s, H)
    scores = (Cm[0] @ Bm[0].T)[..., None] * Lmat  # (t, s, H)
    y_ssd = torch.einsum("tsh,shp->thp", scores, dt[0, ..., None] * xh[0]) + model.D[:, None] * xh[0]
    y_ref = model.out_proj(model.norm(y_ssd.reshape(1, 9, -1), z))
    torch.testing.assert_close(model(x)[0], y_ref, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- initialisation


def test_init_matches_reference_and_decays_are_in_unit_interval():
    torch.manual_seed(0)
    model = Mamba2(64, dt_min=0.01, dt_max=0.05)
    assert (model.d_inner, model.nheads, model.headdim, model.d_state) == (128, 8, 16, 16)
    assert model.in_proj.weight.shape == (2 * 128 + 2 * 16 + 8, 64)
    assert model.conv1d.weight.shape == (128 + 32, 1, 4)
    dt = F.softplus(model.dt_bias)
    assert (dt >= 0.01 * (1 - 1e-5)).all() and (dt <= 0.05 * (1 + 1e-5)).all()
    A = torch.exp(model.A_log)  # -A
    assert (A >= 1 - 1e-5).all() and (A <= 16 + 1e-4).all() and A.std() > 0
    assert torch.equal(model.D, torch.ones(8)) and torch.equal(model.norm.weight, torch.ones(128))
    # decays a_t = exp(dt_t A) lie in (0, 1): log a_t = dt_t A is finite and < 0 (kept in log space)
    _, _, dt_raw = model._split(model.in_proj(torch.randn(2, 5, 64)))
    *_, log_a = model._ssm_inputs(torch.randn(2, 5, model.conv_dim), dt_raw, torch.float64)
    assert torch.isfinite(log_a).all() and (log_a < 0).all()
    a = log_a.exp()
    assert (a > 0).all() and (a < 1).all()


def test_default_init_dt_range():
    dt = F.softplus(Mamba2(32).dt_bias)
    assert (dt >= 1e-3 * (1 - 1e-5)).all() and (dt <= 0.1 * (1 + 1e-5)).all()


@pytest.mark.parametrize("d_model", [32, 64, 128, 256])
def test_defaults_work_for_arena_widths(d_model):
    model = Mamba2(d_model)
    y, state = model(torch.randn(1, 3, d_model))
    assert y.shape == (1, 3, d_model) and torch.isfinite(y).all()
    E, N, H, P = 2 * d_model, 16, 2 * d_model // 16, 16
    assert model.state_bytes(state) == (H * N * P + (E + 2 * N) * 3) * 4


# ----------------------------------------------------------------------------- state


def test_step_does_not_mutate_state_and_state_bytes():
    model, x = make(), rand_x(batch=3)
    _, state = model(x)
    before = state_clone(state)
    model.step(x[:, 0], state)
    assert_close(state, before, "state", atol=0, rtol=0)
    E, H = 2 * D_MODEL, 2 * D_MODEL // HEADDIM
    ssm, conv = H * D_STATE * HEADDIM, (E + 2 * D_STATE) * (D_CONV - 1)
    assert state.ssm.shape == (3, H, D_STATE, HEADDIM)
    assert model.state_bytes(state) == 3 * (ssm + conv) * 8  # float64 model: float64 everything
    m32 = make(dtype=torch.float32)
    s32 = m32.init_state(3)
    assert s32.ssm.dtype == torch.float32 and m32.state_bytes(s32) == 3 * (ssm + conv) * 4
    s16 = m32.init_state(3, dtype=torch.bfloat16)  # low-precision activations: the ssm state stays float32
    assert s16.ssm.dtype == torch.float32 and s16.conv.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"d_state": 0}, "d_state"),
        ({"d_conv": -1}, "d_conv"),
        ({"d_conv": 2.5}, "d_conv"),
        ({"expand": 0}, "expand"),
        ({"headdim": 0}, "headdim"),
        ({"headdim": 5}, "headdim"),  # does not divide E = 16
        ({"A_init_range": (0.0, 4.0)}, "A_init_range"),
        ({"A_init_range": (4.0, 2.0)}, "A_init_range"),
        ({"A_init_range": 3.0}, "A_init_range"),
        ({"dt_min": 0.0}, "dt_min"),
        ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min"),
        ({"dt_init_floor": -1e-4}, "dt_init_floor"),
        ({"norm_eps": 0}, "norm_eps"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"impl": "fused"}, "impl"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Mamba2(8, **kwargs)
