"""LRU: Appendix A's initialisation, parallel scan == step loop == a dense complex kernel, long-T decay."""

import math

import pytest
import torch

from longrecall.mixers.lru import LRU, LRUState
from longrecall.ops.diag_scan import diag_scan
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import F64, random_inputs, seeded

D_MODEL = 5


def _model(d_state=7, seed=0, **kw):
    m = seeded(LRU, D_MODEL, seed=seed, d_state=d_state, **kw)
    with torch.no_grad():  # off the ring init: faster decays and larger gamma exercise more of the maths
        m.nu_log.add_(torch.rand(m.nu_log.shape, dtype=F64) * 3)
        m.gamma_log.add_(torch.randn(m.gamma_log.shape, dtype=F64) * 0.3)
    return m


def _random_state(m, B, seed=1):
    return LRUState(torch.randn(m.init_state(B).h.shape, generator=torch.Generator().manual_seed(seed), dtype=F64))


def _x(B, T, seed=2, dtype=F64):
    return random_inputs(B, T, D_MODEL, dtype=dtype, seed=seed)


def _dense_reference(m, x, h0):
    """y_k = sum_j Re(C diag(lambda^(k-j)) Bbar) u_j + D u_k + Re(C diag(lambda^(k+1)) h0), with
    Bbar = diag(gamma) (B_re + i B_im): the LTI kernel from complex powers, a direct convolution."""
    with torch.no_grad():
        lam = torch.exp(torch.complex(-torch.exp(m.nu_log), torch.exp(m.theta_log)))  # (N,)
        Bbar = torch.exp(m.gamma_log)[:, None] * torch.complex(m.B_re, m.B_im)  # (N, H)
        C = torch.complex(m.C_re, m.C_im)  # (H, N)
        T = x.shape[1]
        k = torch.arange(T, dtype=F64)
        lag = (k[:, None] - k[None, :]).clamp(min=0)  # (T, T)
        powers = lam ** lag[..., None] * (k[:, None] >= k[None, :])[..., None]  # (T, T, N)
        K = torch.einsum("hn,tjn,nd->tjhd", C, powers, Bbar).real  # (T, T, H, H)
        y = torch.einsum("tjhd,bjd->bth", K, x) + m.D * x
        carry = lam ** (k[:, None] + 1) * torch.view_as_complex(h0.h)[:, None]  # (B, T, N)
        return y + torch.einsum("hn,btn->bth", C, carry).real


def test_registered_and_attributes():
    assert get_mixer("lru") is LRU
    assert LRU.state_growth == "constant"
    assert LRU(8).d_state == 16  # default N = 2 * d_model
    names = {n for n, _ in LRU(4).named_parameters()}
    assert names == {"nu_log", "theta_log", "gamma_log", "B_re", "B_im", "C_re", "C_im", "D"}


def test_ring_initialisation():
    """|lambda| in [r_min, r_max], phases in [0, max_phase], gamma = sqrt(1 - |lambda|^2) (Appendix A)."""
    torch.manual_seed(0)
    m = LRU(4, d_state=4000, r_min=0.4, r_max=0.95, max_phase=math.pi / 10)
    lam = m.eigenvalues().detach().to(torch.complex128)
    r, phase = lam.abs(), lam.angle()
    assert r.min() >= 0.4 - 1e-6 and r.max() <= 0.95 + 1e-6
    assert phase.min() >= 0 and phase.max() <= math.pi / 10 + 1e-6
    assert abs(phase.mean().item() - math.pi / 20) < 0.01
    torch.testing.assert_close(torch.exp(m.gamma_log).detach().double(), torch.sqrt(1 - r**2), rtol=1e-5, atol=1e-6)
    # Appendix A draws |lambda|^2 uniform in [r_min^2, r_max^2] (uniform over the ring's area), not |lambda|
    r2 = r**2
    assert abs(r2.mean().item() - (0.4**2 + 0.95**2) / 2) < 0.01
    assert abs(r.mean().item() - (0.4 + 0.95) / 2) > 0.02  # what |lambda| ~ U[r_min, r_max] would give
    half = (0.4**2 + 0.95**2) / 2
    assert abs((r2 < half).double().mean().item() - 0.5) < 0.03


def test_default_ring_and_glorot_projections():
    torch.manual_seed(0)
    H, N = 32, 512
    m = LRU(H, d_state=N)
    lam = m.eigenvalues().detach().to(torch.complex128)
    assert lam.abs().min() >= 0.9 - 1e-6 and lam.abs().max() <= 0.999 + 1e-6 and (lam.abs() < 1).all()
    assert (lam / lam.abs()).mean().abs() < 0.1  # phases spread over the whole circle
    theta = torch.exp(m.theta_log).detach()
    assert theta.min() >= 0 and theta.max() <= 2 * math.pi and abs(theta.mean().item() - math.pi) < 0.3
    for name, std in (("B_re", 1 / math.sqrt(2 * H)), ("B_im", 1 / math.sqrt(2 * H)), ("C_re", 1 / math.sqrt(N)),
                      ("C_im", 1 / math.sqrt(N)), ("D", 1.0)):
        p = getattr(m, name).detach()
        tol = 0.3 if name == "D" else 0.03  # D has only H samples
        assert abs(p.std().item() / std - 1) < tol, name
        assert abs(p.mean().item()) < 3 * std / math.sqrt(p.numel()) + 1e-3, name


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 64])
@pytest.mark.parametrize("T", [1, 2, 7, 16, 31])
def test_parallel_equals_step_loop_and_dense_kernel(T, chunk_size):
    m = _model(chunk_size=chunk_size)
    x, s0 = _x(3, T), _random_state(m, 3)
    y_par, _ = mh.assert_parallel_equals_step_loop(m, x, s0, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(y_par, _dense_reference(m, x, s0), rtol=1e-10, atol=1e-10)
    y0, _ = m(x)  # zero initial state
    torch.testing.assert_close(y0, _dense_reference(m, x, m.init_state(3)), rtol=1e-10, atol=1e-10)


def test_chunked_forward_equals_whole():
    mh.assert_chunked_equals_whole(_model(chunk_size=4), _x(2, 23), (9,), rtol=1e-11, atol=1e-11)


def test_gradients_parallel_equal_step_loop():
    m = _model(chunk_size=3)
    g_par = mh.assert_grads_match(m, _x(2, 13), _random_state(m, 2), rtol=1e-9, atol=1e-10, nonzero=True)
    assert set(g_par) == {n for n, _ in m.named_parameters()} | {"x", "s0"}


def test_float32_long_sequence_parity():
    torch.manual_seed(0)
    m = LRU(8, d_state=16)
    x = random_inputs(1, 600, 8, dtype=torch.float32, seed=3)
    y_par, s_par = mh.assert_parallel_equals_step_loop(m, x, LRUState(torch.randn(m.init_state(1).h.shape)),
                                                    rtol=1e-4, atol=1e-4)
    assert y_par.dtype == torch.float32 and s_par.h.dtype == torch.float32


def test_long_impulse_response_finite_and_decaying():
    """T = 65,536 in float32: each mode decays exactly as |lambda|^k, the output is finite and dies out."""
    torch.manual_seed(0)
    T = 65_536
    m = LRU(4, d_state=8)  # default ring [0.9, 0.999]: 0.999^65536 ~ 3e-29
    x = torch.zeros(1, T, 4)
    x[0, 0] = 1.0
    with torch.no_grad():
        b = m._drive(x)  # (1, T, N) complex: only step 0 is nonzero
        hs, h = diag_scan(m.log_lambda(), b, None)
        y, s = m(x)
    assert torch.isfinite(torch.view_as_real(hs)).all() and torch.isfinite(y).all() and torch.isfinite(s.h).all()
    k = torch.arange(T, dtype=F64)[:, None]
    want = (torch.exp(k * m.log_lambda().real.double()) * b[0, 0].abs().double())  # (T, N): |lambda|^k |b_0|
    got = hs[0].abs().double()
    assert ((got - want).abs() <= 1e-4 * want[0] + 1e-3 * want).all()
    head, tail = y[0, 1:100].abs().max(), y[0, -100:].abs().max()
    assert head > 1e-3 and tail < 1e-12 * head


def test_step_does_not_mutate_state_and_state_bytes():
    m = LRU(5, d_state=6)
    s = LRUState(torch.randn(m.init_state(3).h.shape))
    mh.assert_step_and_forward_keep_state(m, s, torch.randn(3, 5), torch.randn(3, 4, 5))
    assert s.h.shape == (3, 6, 2) and s.h.dtype == torch.float32
    _, out = m(torch.randn(3, 4, 5), s)
    assert m.state_bytes(out) == 3 * 6 * 2 * 4
    assert out.h.untyped_storage().nbytes() == 3 * 6 * 2 * 4  # owns its memory: no view of the (B, T, N) states
    assert LRU(64).state_bytes(LRU(64).init_state(1)) == 1024  # default N = 128 at D = 64


def test_bad_arguments():
    mh.assert_bad_arguments(LRU, [({"d_state": 0}, "d_state"), ({"d_state": 2.5}, "d_state"),
                                  ({"r_min": -0.1}, "r_min"), ({"r_max": 1.0}, "r_max"),
                                  ({"r_min": 0.99, "r_max": 0.9}, "r_min"), ({"max_phase": 0.0}, "max_phase"),
                                  ({"chunk_size": 0}, "chunk_size"), ({"d_model": 0}, "d_model")])
    m = LRU(4, d_state=4)
    with pytest.raises(ValueError, match="d_model"):
        m(torch.zeros(1, 3, 5))
    mh.assert_wrong_states_rejected(m, m.init_state(3), LRUState(torch.zeros(2, 5, 2)))


def test_empty_sequence_and_r_min_zero():
    m = LRU(4, d_state=4)
    s0 = LRUState(torch.randn(2, 4, 2))
    y, s = m(torch.zeros(2, 0, 4), s0)
    assert y.shape == (2, 0, 4)
    torch.testing.assert_close(s.h, s0.h)
    torch.manual_seed(0)
    m = LRU(4, d_state=256, r_min=0.0, r_max=0.5)  # the paper's Appendix A default r_min = 0
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert m.eigenvalues().abs().max() <= 0.5 + 1e-6
