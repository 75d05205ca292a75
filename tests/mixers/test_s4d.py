"""S4D: parallel (FFT) form == recurrent step loop, kernel == complex-exp reference, cache safety."""

import copy
import math

import pytest
import torch

from longrecall.mixers.s4d import S4D, S4DState
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import F64, random_inputs, seeded


def _model(init="lin", d_model=6, d_state=8, seed=0, **kw):
    return seeded(S4D, d_model, seed=seed, d_state=d_state, init=init, **kw)


def _random_state(m, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return S4DState(torch.randn(m.init_state(B).ssm.shape, generator=g, dtype=F64))


def _x(B, T, D, seed=2, dtype=F64):
    return random_inputs(B, T, D, dtype=dtype, seed=seed)


def _reference_kernel(m, T):
    """Independent complex arithmetic: K_j = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n exp(dt A_n)^j)."""
    with torch.no_grad():
        p = {k: v.to(F64) for k, v in m.named_parameters()}
        A = torch.complex(-torch.exp(p["log_A_real"]), p["A_imag"])  # (H, M)
        dtA = torch.exp(p["log_dt"])[:, None] * A
        C = torch.view_as_complex(p["C"].contiguous())
        W = C * (torch.exp(dtA) - 1) / A
        j = torch.arange(T, dtype=F64)
        V = torch.exp(dtA[..., None] * j)  # complex exp, the slow obvious way
        return 2 * torch.einsum("hm,hmt->ht", W, V).real


def test_registered_and_attributes():
    assert get_mixer("s4d") is S4D
    assert S4D.state_growth == "constant"


@pytest.mark.parametrize("init", ["lin", "inv"])
@pytest.mark.parametrize("T", [1, 2, 7, 16, 50])
def test_fft_forward_equals_step_loop(init, T):
    m = _model(init)
    x, s0 = _x(3, T, 6), _random_state(m, 3)
    for start in (s0, None):  # None: the zero initial state
        mh.assert_parallel_equals_step_loop(m, x, start, rtol=1e-10, atol=1e-10)


def test_float32_long_sequence_parity():
    torch.manual_seed(0)
    m = S4D(8, d_state=16, init="inv")
    x = _x(1, 700, 8, dtype=torch.float32)
    mh.assert_parallel_equals_step_loop(m, x, S4DState(torch.randn(m.init_state(1).ssm.shape)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_chunked_forward_equals_whole(init):
    mh.assert_chunked_equals_whole(_model(init), _x(2, 23, 6), (9,), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("init", ["lin", "inv"])
@pytest.mark.parametrize("T", [1, 10, 37])
def test_kernel_equals_complex_exp_reference(init, T):
    m = _model(init, d_state=16)
    with torch.no_grad():
        m.log_dt.uniform_(math.log(1e-3), math.log(0.5))  # a wide range of decays and phases
    torch.testing.assert_close(m.kernel(T), _reference_kernel(m, T), rtol=1e-10, atol=1e-10)


def test_kernel_float32_long():
    torch.manual_seed(3)
    m = S4D(4, d_state=64, init="lin")
    torch.testing.assert_close(m.kernel(4096).double(), _reference_kernel(m, 4096), rtol=0, atol=2e-4)


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_gradients_fft_path_equal_step_loop(init):
    m = _model(init)
    g_par = mh.assert_grads_match(m, _x(2, 13, 6), _random_state(m, 2), rtol=1e-9, atol=1e-10)
    assert set(g_par) == {n for n, _ in m.named_parameters()} | {"x", "s0"}


def test_step_does_not_mutate_state_and_state_bytes():
    m = S4D(5, d_state=6)
    s = S4DState(torch.randn(m.init_state(3).ssm.shape))
    mh.assert_step_and_forward_keep_state(m, s, torch.randn(3, 5), torch.randn(3, 4, 5))
    assert s.ssm.shape == (3, 5, 3, 2) and s.ssm.dtype == torch.float32
    assert m.state_bytes(m.init_state(3)) == 3 * 5 * 6 * 4


def _fresh(m, x):
    """Same parameters, no cache: the ground truth for the cached path."""
    ref = copy.deepcopy(m)
    ref.kernel_cache = False
    with torch.no_grad():
        return ref(x)[0], ref.step(x[:, 0], ref.init_state(x.shape[0]))[0]


def test_kernel_cache_used_and_invalidated():
    torch.manual_seed(0)
    m = S4D(6, d_state=8).eval()
    x = _x(2, 31, 6, dtype=torch.float32)
    with torch.inference_mode():
        y1 = m(x)[0]
    assert 31 in m._cache_kernels  # the cache was filled ...
    cached = [t for k in m._cache_kernels.values() for t in k if torch.is_tensor(t)]
    assert all(t.grad_fn is None and not t.requires_grad and not t.is_inference() for t in cached)
    torch.testing.assert_close(y1, _fresh(m, x)[0], rtol=0, atol=0)  # ... and changes nothing

    m.log_dt.data.add_(0.3)  # does not bump p._version: the cache must still notice
    with torch.no_grad():
        y2, y2_step = m(x)[0], m.step(x[:, 0], m.init_state(2))[0]
    assert not torch.allclose(y1, y2)
    want, want_step = _fresh(m, x)
    torch.testing.assert_close(y2, want, rtol=0, atol=0)
    torch.testing.assert_close(y2_step, want_step, rtol=0, atol=0)

    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.train()
    loss = m(x)[0].pow(2).sum()  # grad enabled + training: fresh kernel, graph to the parameters
    loss.backward()
    assert all(p.grad is not None for p in m._kernel_params())
    opt.step()
    m.eval()
    with torch.no_grad():
        y3 = m(x)[0]
    torch.testing.assert_close(y3, _fresh(m, x)[0], rtol=0, atol=0)
    assert not torch.allclose(y2, y3)


def test_cache_does_not_affect_training():
    torch.manual_seed(0)
    a = S4D(6, d_state=8)
    b = copy.deepcopy(a)
    b.kernel_cache = False
    x = _x(2, 20, 6, dtype=torch.float32)
    with torch.no_grad():
        a(x)  # fill a's cache
    for m in (a, b):
        m(x)[0].pow(2).sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=0, msg=n)


def test_bad_arguments():
    mh.assert_bad_arguments(S4D, [*(({"d_state": bad}, "d_state") for bad in (7, 0, -2)),
                                  ({"init": "legs"}, "init.*'lin'.*'inv'"), ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min"),
                                  ({"dt_min": 0.0}, "dt_min"), ({"d_model": 0}, "d_model")])
    m = S4D(4, d_state=4)
    with pytest.raises(ValueError, match="d_model"):
        m(torch.zeros(1, 3, 5))
    mh.assert_wrong_states_rejected(m, m.init_state(3))


def test_empty_sequence():
    m = S4D(4, d_state=4)
    y, s = m(torch.zeros(2, 0, 4))
    assert y.shape == (2, 0, 4) and s.ssm.shape == (2, 4, 2, 2)
