"""H3: init, the layer by explicit sums and complex exponentials, FFT == step loop, kernel at long T."""

import math

import pytest
import torch

from longrecall.mixers.h3 import H3, H3State
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import F64, rand_x_for, seeded

D = 4
rand_x = rand_x_for(D, T=13)


def make(**kw):
    return seeded(H3, D, **{"d_state": 6, "head_dim": 2, **kw})


def _random_state(m, B=2, seed=5):
    g = torch.Generator().manual_seed(seed)
    s = m.init_state(B, dtype=F64)
    return H3State(*(torch.randn(t.shape, generator=g, dtype=F64) for t in s))


def _reference(m, x, s0):
    """Algorithm 1 by explicit sums: shift FIR, outer products, the diagonal SSM by complex exponentials."""
    B, T, _ = x.shape
    H, d, N = m.n_heads, m.head_dim, m.d_state
    A = torch.complex(-torch.exp(m.diag_log_A_real), m.diag_A_imag)  # (H, M)
    dtA = torch.exp(m.diag_log_dt)[:, None] * A
    W = torch.view_as_complex(m.diag_C.contiguous()) * (torch.exp(dtA) - 1) / A
    q, k, v = m.q_proj(x), m.k_proj(x), m.v_proj(x)
    C = m.shift.weight[:, 0].flip(-1)  # (D, N): the shift SSM's kernel, C_j meets k_{t-j}
    k_all = torch.cat([s0.shift.transpose(1, 2), k], 1)  # the carried keys come first
    P = N - 1
    k_bar = torch.stack([sum(C[:, j] * k_all[:, P + t - j] for j in range(N)) for t in range(T)], 1) + m.k_D * k
    kv = k_bar.view(B, T, H, d, 1) * v.view(B, T, H, 1, d)  # (B, T, H, d, d)
    s0c = torch.view_as_complex(s0.ssm.contiguous())  # (B, H, d, d, M)
    ys = []
    for t in range(T):
        conv = sum(2 * (W * torch.exp(dtA * j)).real.sum(-1)[:, None, None] * kv[:, t - j] for j in range(t + 1))
        carried = 2 * (W[:, None, None] * torch.exp(dtA * (t + 1))[:, None, None] * s0c).real.sum(-1)
        S = conv + carried + m.diag_D[:, None, None] * kv[:, t]  # (B, H, d, d)
        ys.append((q[:, t].view(B, H, d, 1) * S).sum(-2).flatten(-2))
    s_T = (torch.exp(dtA * T)[:, None, None] * s0c
           + sum(torch.exp(dtA * (T - 1 - j))[:, None, None] * kv[:, j, ..., None] for j in range(T)))
    return m.out_proj(torch.stack(ys, 1)), s_T


def test_registered_and_init():
    assert get_mixer("h3") is H3 and H3.state_growth == "constant"
    torch.manual_seed(0)
    m = H3(64)  # the reference defaults: d_state 64, head_dim 1
    assert m.n_heads == 64 and m.shift.weight.shape == (64, 1, 64)
    w = m.shift.weight
    assert abs(w.mean().item()) < 0.05 and abs(w.std().item() - 1) < 0.05  # C_shift ~ N(0, 1)
    torch.testing.assert_close(m.diag_A_imag[0], math.pi * torch.arange(32.0))  # S4D-Lin
    torch.testing.assert_close(m.diag_log_A_real, torch.full((64, 32), math.log(0.5)))
    dt = m.diag_log_dt.exp()
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1
    assert all(p._no_weight_decay for p in (m.diag_log_dt, m.diag_log_A_real, m.diag_A_imag))
    assert m.state_bytes(m.init_state(1)) == (64 * 63 + 64 * 32 * 2) * 4 == 32512


@pytest.mark.parametrize("kw", [{}, {"head_dim": 1}, {"head_dim": 4, "d_state": 2}])
@pytest.mark.parametrize("T", [1, 9])
def test_forward_and_step_equal_reference(kw, T):
    m = make(**kw)
    x, s0 = rand_x(T=T), _random_state(m)
    with torch.no_grad():
        y_ref, s_ref = _reference(m, x, s0)
        for y, s in (m(x, s0), m.step_loop(x, s0)):
            torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(torch.view_as_complex(s.ssm.contiguous()), s_ref, rtol=1e-9, atol=1e-10)
            keys = torch.cat([s0.shift, m.k_proj(x).transpose(1, 2)], -1)  # the shift SSM keeps the last N - 1
            torch.testing.assert_close(s.shift, keys[..., keys.shape[-1] - (m.d_state - 1) :], rtol=0, atol=1e-12)


def test_fft_gradients_equal_step_loop():
    m = make()
    x = rand_x(T=11).requires_grad_()
    s0 = H3State(*(t.requires_grad_() for t in _random_state(m)))
    w_y = rand_x(T=11, seed=4)

    def grads(run):
        y, s = run(x, s0)
        loss = (y * w_y).sum() + (s.ssm ** 2).sum() + (s.shift ** 2).sum()
        return torch.autograd.grad(loss, [x, *s0, *m.parameters()])

    names = ["x", "s0.shift", "s0.ssm"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, grads(m.forward), grads(m.step_loop), strict=True):
        assert a.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


def test_chunked_and_cached_inference():
    with torch.no_grad():  # the kernel cache serves both chunk lengths
        mh.assert_chunked_equals_whole(make(), rand_x(T=17), (6,), rtol=1e-10, atol=1e-10)


def test_kernel_finite_and_decaying_at_long_T():
    torch.manual_seed(0)
    m = H3(8, d_state=16)
    T = 65536
    with torch.no_grad():
        K = m.kernel(T)  # (H, T), float32
        dt_re = -torch.exp(m.diag_log_dt)[:, None] * torch.exp(m.diag_log_A_real)  # (H, M), dt Re A < 0
        W_abs = (2 * torch.view_as_complex(m.diag_C.contiguous()).abs()
                 * torch.expm1(torch.complex(dt_re, torch.exp(m.diag_log_dt)[:, None] * m.diag_A_imag)).abs()
                 / torch.complex(-torch.exp(m.diag_log_A_real), m.diag_A_imag).abs())
        j = torch.arange(T, dtype=torch.float32)
        envelope = (W_abs[..., None] * torch.exp(dt_re[..., None] * j)).sum(1)  # (H, T): |K_j| <= this
    assert torch.isfinite(K).all()
    assert (K.abs() <= envelope * (1 + 1e-4) + 1e-6).all()
    assert (envelope[:, -1] < 1e-3 * envelope[:, 0]).all()  # every head forgets: dt Re A <= -5e-4


def test_step_does_not_mutate_state():
    m = make()
    mh.assert_step_and_forward_keep_state(m, _random_state(m), rand_x(T=1)[:, 0], rand_x(T=4))


def test_bad_arguments():
    mh.assert_bad_arguments(H3, [({"d_model": 6, "head_dim": 4}, "head_dim"), ({"d_state": 5}, "d_state"),
                                 ({"init": "legs"}, "init"), ({"dt_min": 0.5, "dt_max": 0.1}, "dt_min")])
    m = H3(4, d_state=4)
    mh.assert_wrong_states_rejected(m, m.init_state(3))
