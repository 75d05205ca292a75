"""LSSL: HiPPO-LegS init, Krylov kernel == explicit matrix powers, FFT path == step loop == direct convolution,
learnable-A variant, long kernels, bad arguments."""

import math

import pytest
import torch

from longrecall.mixers.lssl import LSSL, LSSLState
from longrecall.ops.ssm import hippo_legs
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import F64, random_inputs, seeded


def _model(d_model=4, d_state=8, seed=0, **kw):
    m = seeded(LSSL, d_model, seed=seed, d_state=d_state, **kw)
    with torch.no_grad():
        m.log_dt.uniform_(math.log(1e-3), math.log(0.5), generator=torch.Generator().manual_seed(seed + 10))
        if m.learn_A:  # off the HiPPO init, so the test sees A and B matter
            m.A.add_(0.2 * torch.randn(m.A.shape, dtype=F64))
            m.B.add_(0.2 * torch.randn(m.B.shape, dtype=F64))
    return m


def _reference_kernel(m, T):
    """K_j = C Abar^j Bbar with Abar, Bbar from an explicit inverse and matrix_power (independent of ops.ssm)."""
    with torch.no_grad():
        dt = torch.exp(m.log_dt)[:, None, None]
        eye = torch.eye(m.d_state, dtype=F64)
        inv = torch.linalg.inv(eye - dt / 2 * m.A)
        Abar, Bbar = inv @ (eye + dt / 2 * m.A), inv @ (dt * m.B[:, None])
        return torch.stack([(m.C[:, None, :] @ torch.linalg.matrix_power(Abar, j) @ Bbar)[:, 0, 0]
                            for j in range(T)], -1)


def test_registered_and_attributes():
    assert get_mixer("lssl") is LSSL
    assert LSSL.state_growth == "constant"


def test_init_is_hippo_legs():
    m = LSSL(3, d_state=10, dt_min=2e-3, dt_max=5e-2)
    A, B = hippo_legs(10, torch.float32)
    torch.testing.assert_close(m.A, A, rtol=0, atol=0)
    torch.testing.assert_close(m.B, B, rtol=0, atol=0)
    assert "A" in dict(m.named_buffers()) and "A" not in dict(m.named_parameters())  # fixed-A: not trained
    dt = torch.exp(m.log_dt)
    assert torch.all(dt >= 2e-3 * (1 - 1e-6)) and torch.all(dt <= 5e-2 * (1 + 1e-6))
    learned = LSSL(3, d_state=10, learn_A=True)
    assert {"A", "B"} <= set(dict(learned.named_parameters()))
    torch.testing.assert_close(learned.A.detach(), A, rtol=0, atol=0)


@pytest.mark.parametrize("learn_A", [False, True])
@pytest.mark.parametrize("T", [1, 5, 16, 37])
def test_kernel_equals_matrix_powers(learn_A, T):
    m = _model(learn_A=learn_A)
    torch.testing.assert_close(m.kernel(T), _reference_kernel(m, T), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("learn_A", [False, True])
@pytest.mark.parametrize("T", [1, 7, 16, 33])
def test_fft_forward_equals_step_loop(learn_A, T):
    m = _model(learn_A=learn_A)
    x = random_inputs(3, T, 4, seed=2)
    s0 = LSSLState(torch.randn(3, 4, 8, dtype=F64, generator=torch.Generator().manual_seed(1)))
    for start in (s0, m.init_state(3, dtype=F64)):
        mh.assert_parallel_equals_step_loop(m, x, start, rtol=1e-9, atol=1e-10)


def test_fft_forward_equals_direct_convolution():
    mh.assert_fft_equals_direct_convolution(_model(), random_inputs(2, 19, 4, seed=3), _reference_kernel, rtol=1e-9,
                                            atol=1e-10)


@pytest.mark.parametrize("learn_A", [False, True])
def test_gradients_fft_path_equal_step_loop(learn_A):
    m = _model(learn_A=learn_A)
    x, s0 = random_inputs(2, 11, 4, seed=5), LSSLState(torch.randn(2, 4, 8, dtype=F64))
    g_par = mh.assert_grads_match(m, x, s0, rtol=1e-8, atol=1e-10, nonzero=True)  # weights from the global RNG
    assert set(g_par) == {"x", "s0"} | {n for n, _ in m.named_parameters()}
    assert ("A" in g_par) == learn_A


def test_long_kernel_finite_and_decaying():
    """T = 65,536 at the slowest default step: LegS's eigenvalues are -1..-N, so |K_j| <~ exp(-dt j)."""
    torch.manual_seed(0)
    m = LSSL(2, d_state=16)
    with torch.no_grad():
        m.log_dt.fill_(math.log(1e-3))
    mh.assert_long_kernel_decays(m, 65536)


def test_float32_parity():
    torch.manual_seed(0)
    m = LSSL(4, d_state=16)
    x = random_inputs(1, 150, 4, dtype=torch.float32, seed=6)
    mh.assert_parallel_equals_step_loop(m, x, LSSLState(torch.randn(1, 4, 16)), rtol=1e-4, atol=1e-4)


def test_step_does_not_mutate_state_and_state_bytes():
    m = LSSL(5, d_state=6)
    mh.assert_step_and_forward_keep_state(m, LSSLState(torch.randn(3, 5, 6)), torch.randn(3, 5), torch.randn(3, 4, 5))
    assert m.state_bytes(m.init_state(3)) == 3 * 5 * 6 * 4


def test_discretisation_cache_follows_parameters():
    torch.manual_seed(0)
    m = LSSL(4, d_state=8).eval()
    x = random_inputs(2, 12, 4, dtype=torch.float32, seed=7)
    with torch.inference_mode():
        y1 = m(x)[0]
    assert (12, False) in m._cache._values
    m.log_dt.data.add_(0.3)
    with torch.no_grad():
        y2 = m(x)[0]
        torch.testing.assert_close(y2, mh.fresh_cache_copy(m)(x)[0], rtol=0, atol=0)
    assert not torch.allclose(y1, y2)


def test_bad_arguments():
    mh.assert_bad_arguments(LSSL, [({"d_state": 0}, "d_state"), ({"d_state": 2.5}, "d_state"),
                                   ({"learn_A": 1}, "learn_A"), ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min"),
                                   ({"dt_max": -1.0}, "dt_max")])
    m = LSSL(4, d_state=4)
    mh.assert_wrong_states_rejected(m, m.init_state(3), LSSLState(torch.zeros(2, 4, 5)))
