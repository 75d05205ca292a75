"""S4: init from the LegS NPLR, Cauchy kernel == dense Krylov reference, FFT path == step loop == direct
convolution, carried state, long kernels, cache safety, bad arguments."""

import math

import pytest
import torch

from longrecall.mixers.s4 import S4, S4State
from longrecall.ops.ssm import bilinear, dplr_to_real, hippo_legs, krylov_kernel_naive, legs_nplr
from longrecall.protocol import state_leaves
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import F64, random_inputs, seeded


def _model(d_model=4, d_state=8, l_max=8, seed=0, **kw):
    """A float64 S4 moved off its init, so every parameter matters."""
    m = seeded(S4, d_model, seed=seed, d_state=d_state, l_max=l_max, **kw)
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        for p in (m.P, m.B, m.lambda_im):
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=F64))
        m.log_lambda_re.add_(0.5 * torch.randn(m.log_lambda_re.shape, generator=g, dtype=F64))
        m.log_dt.uniform_(math.log(1e-3), math.log(0.5), generator=g)  # a wide range of decays
    return m


def _random_state(m, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return S4State(torch.randn(m.init_state(B).ssm.shape, generator=g, dtype=F64))


def _reference_kernel(m, T):
    """Dense, step by step, from the same (Lambda, P, B, C~, dt): C = C~ (I - Abar^l_max)^{-1}, K_j = C Abar^j Bbar."""
    with torch.no_grad():
        Lambda = torch.complex(-torch.exp(m.log_lambda_re), m.lambda_im)
        P, B, Ct = (torch.view_as_complex(p.contiguous()) for p in (m.P, m.B, m.C))
        A_r, B_r, Ct_r = dplr_to_real(Lambda, P, B, Ct)
        Abar, Bbar = bilinear(A_r, B_r, torch.exp(m.log_dt))
        eye = torch.eye(A_r.shape[-1], dtype=F64)
        power = eye.expand_as(Abar)
        for _ in range(m.l_max):
            power = power @ Abar
        C = torch.linalg.solve((eye - power).mT, Ct_r)
        return krylov_kernel_naive(Abar, Bbar, C, T)


def test_registered_and_attributes():
    assert get_mixer("s4") is S4
    assert S4.state_growth == "constant"


def test_init_is_the_legs_nplr():
    m = S4(3, d_state=16, dt_min=2e-3, dt_max=5e-2)
    nplr = legs_nplr(16)
    for h in range(3):
        torch.testing.assert_close(-torch.exp(m.log_lambda_re[h]), torch.full((8,), -0.5))
        torch.testing.assert_close(m.lambda_im[h], nplr.Lambda.imag.float())
        torch.testing.assert_close(torch.view_as_complex(m.P[h].contiguous()), nplr.P.to(torch.complex64))
        torch.testing.assert_close(torch.view_as_complex(m.B[h].contiguous()), nplr.B.to(torch.complex64))
    dt = torch.exp(m.log_dt)
    assert torch.all(dt >= 2e-3 * (1 - 1e-6)) and torch.all(dt <= 5e-2 * (1 + 1e-6))
    # the initial continuous system is HiPPO-LegS (compared as matrices: its eigenvalues are too
    # ill-conditioned to survive float32 rounding of P, which is why S4 never forms them)
    with torch.no_grad():
        Lambda = torch.complex(-torch.exp(m.log_lambda_re[0]), m.lambda_im[0]).to(torch.complex128)
        P = torch.view_as_complex(m.P[0].contiguous()).to(torch.complex128)
        V, Lam, P = (torch.cat([t, t.conj()], -1) for t in (nplr.V, Lambda, P))
        A = V @ (torch.diag(Lam) - P[:, None] * P.conj()[None, :]) @ V.conj().T
    torch.testing.assert_close(A.real, hippo_legs(16)[0], rtol=0, atol=1e-5)
    assert all(getattr(p, "_no_weight_decay", False) for p in (m.log_dt, m.log_lambda_re, m.lambda_im, m.P, m.B))


@pytest.mark.parametrize("T", [1, 5, 8, 9, 20, 33])
def test_kernel_equals_dense_krylov_reference(T):
    m = _model()  # l_max = 8: T > 8 runs the doubled C~
    torch.testing.assert_close(m.kernel(T), _reference_kernel(m, T), rtol=1e-9, atol=1e-10)


def test_kernel_prefix_is_independent_of_length():
    m = _model()
    torch.testing.assert_close(m.kernel(40)[:, :5], m.kernel(5), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("T", [1, 7, 8, 9, 20, 33])
def test_fft_forward_equals_step_loop(T):
    m = _model()
    x, s0 = random_inputs(3, T, 4, seed=2), _random_state(m, 3)
    for start in (s0, m.init_state(3, dtype=F64)):
        mh.assert_parallel_equals_step_loop(m, x, start, rtol=1e-9, atol=1e-10)


def test_fft_forward_equals_direct_convolution():
    mh.assert_fft_equals_direct_convolution(_model(), random_inputs(2, 19, 4, seed=3), _reference_kernel, rtol=1e-9,
                                            atol=1e-10)


@pytest.mark.parametrize("split", [1, 6, 9, 15])
def test_chunked_forward_equals_whole(split):
    mh.assert_chunked_equals_whole(_model(), random_inputs(2, 23, 4, seed=4), (split,), rtol=1e-9, atol=1e-10)


def test_gradients_fft_path_equal_step_loop():
    m = _model()
    x, s0 = random_inputs(2, 11, 4, seed=5), _random_state(m, 2)
    mh.assert_grads_match(m, x, s0, rtol=1e-8, atol=1e-10, nonzero=True)  # weights from the global RNG


def test_long_kernel_finite_and_decaying():
    """T = 65,536 at the slowest default step (dt = 1e-3): every mode decays like exp(-n dt j), n >= 1."""
    torch.manual_seed(0)
    m = S4(2, d_state=16)  # float32, l_max = 1024: six doublings of C~
    with torch.no_grad():
        m.log_dt.fill_(math.log(1e-3))
    mh.assert_long_kernel_decays(m, 65536)  # at 8192-16384: exp(-8) ~ 3e-4, with the float32 noise floor


def test_float32_parity():
    torch.manual_seed(0)
    m = S4(4, d_state=16, l_max=64)
    x = random_inputs(1, 150, 4, dtype=torch.float32, seed=6)
    mh.assert_parallel_equals_step_loop(m, x, S4State(torch.randn(m.init_state(1).ssm.shape)), rtol=1e-4, atol=1e-4)


def test_step_does_not_mutate_state_and_state_bytes():
    m = S4(5, d_state=6, l_max=4)
    s = S4State(torch.randn(m.init_state(3).ssm.shape))
    mh.assert_step_and_forward_keep_state(m, s, torch.randn(3, 5), torch.randn(3, 6, 5))
    assert s.ssm.shape == (3, 5, 3, 2) and s.ssm.dtype == torch.float32
    assert m.state_bytes(m.init_state(3)) == 3 * 5 * 6 * 4


def test_discretisation_cache_used_and_invalidated():
    torch.manual_seed(0)
    m = S4(4, d_state=8, l_max=8).eval()
    x = random_inputs(2, 12, 4, dtype=torch.float32, seed=7)
    with torch.inference_mode():
        y1 = m(x)[0]
    cached = state_leaves(list(m._cache._values.values()))
    assert ("K", 12) in m._cache._values and all(not t.is_inference() and t.grad_fn is None for t in cached)
    fresh = mh.fresh_cache_copy(m)
    m.log_dt.data.add_(0.3)  # no version bump: the cache must notice the values
    with torch.no_grad():
        y2 = m(x)[0]
        torch.testing.assert_close(y2, mh.fresh_cache_copy(m)(x)[0], rtol=0, atol=0)
        torch.testing.assert_close(y1, fresh(x)[0], rtol=0, atol=0)
    assert not torch.allclose(y1, y2)
    m.train()
    m(x)[0].pow(2).sum().backward()  # training: a fresh discretisation with a graph to every parameter
    assert all(p.grad is not None for p in m._kernel_params())


def test_bad_arguments():
    mh.assert_bad_arguments(S4, [({"d_state": 7}, "d_state"), ({"d_state": 0}, "d_state"), ({"l_max": 0}, "l_max"),
                                 ({"l_max": 2.0}, "l_max"), ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min"),
                                 ({"dt_min": 0.0}, "dt_min")])
    m = S4(4, d_state=4)
    mh.assert_wrong_states_rejected(m, m.init_state(3), S4State(torch.zeros(2, 4, 4, 2)))
