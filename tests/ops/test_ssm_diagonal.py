"""ops.ssm.diagonal (the core of S4D, DSS and H3) against the spec: the dense real system, run step by step."""

import math

import pytest
import torch

from longrecall.ops.conv import causal_conv_naive
from longrecall.ops.ssm import diagonal, dplr_to_real, krylov_kernel_naive, ssm_recurrence_naive

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _params(H=3, M=4, seed=0):
    """S4D parameters moved off their init: decays and phases over a wide range, steps over [1e-3, 0.5]."""
    g = _gen(seed)
    log_dt = torch.empty(H, dtype=F64).uniform_(math.log(1e-3), math.log(0.5), generator=g)
    log_A_real = math.log(0.5) + 0.5 * torch.randn(H, M, generator=g, dtype=F64)
    A_imag = math.pi * torch.arange(M, dtype=F64) + torch.randn(H, M, generator=g, dtype=F64)
    C = torch.randn(H, M, 2, generator=g, dtype=F64)
    D = torch.randn(H, generator=g, dtype=F64)
    return log_dt, log_A_real, A_imag, C, D


def _dense(d):
    """The discretised system as a dense real one on (Re s, Im s) per mode: ``Abar``, ``Bbar = (1, 0)``, ``C``."""
    return dplr_to_real(d.dA, torch.zeros_like(d.dA), torch.ones_like(d.dA), d.W)


def _reference(d, D, u, s0):
    """y and the final modes by the dense recurrence, one step per token (``ops.ssm.naive``)."""
    if s0 is None:
        s0 = torch.zeros(*u.shape[:-1], d.dA.shape[-1], dtype=d.dA.dtype)
    r0 = torch.view_as_real(s0).flatten(-2)  # interleaved (Re, Im)
    y, r = ssm_recurrence_naive(*_dense(d), u, r0)
    return y + D[:, None] * u, torch.view_as_complex(r.unflatten(-1, (-1, 2)).contiguous())


def test_exp_em1_exact_for_small_and_large_arguments():
    a = torch.tensor([-1e-9, -3e-7, -1e-4, -0.3, -2.0, 0.5], dtype=F64)
    b = torch.tensor([2e-9, 0.0, 5e-5, 1.0, -3.0, 2.5], dtype=F64)
    z = torch.complex(a, b)
    e, em1 = diagonal.exp_em1(a, b)
    torch.testing.assert_close(e, torch.exp(z), rtol=1e-15, atol=0)
    series = z + z**2 / 2 + z**3 / 6 + z**4 / 24 + z**5 / 120 + z**6 / 720  # exact to 1e-16 for |z| <= 1e-4
    small = z.abs() < 1e-3
    torch.testing.assert_close(em1[small], series[small], rtol=1e-14, atol=0)  # exp(z) - 1 loses all digits there
    torch.testing.assert_close(em1[~small], torch.exp(z[~small]) - 1, rtol=1e-14, atol=0)


def test_s4d_discretisation_is_the_zero_order_hold():
    log_dt, log_A_real, A_imag, C, _ = _params()
    d = diagonal.s4d_discretize(log_dt, log_A_real, A_imag, C)
    A = torch.complex(-torch.exp(log_A_real), A_imag)
    dtA = torch.exp(log_dt)[:, None] * A
    torch.testing.assert_close(d.dA, torch.exp(dtA), rtol=1e-14, atol=0)
    torch.testing.assert_close(d.W, torch.view_as_complex(C) * (torch.exp(dtA) - 1) / A, rtol=1e-10, atol=0)
    torch.testing.assert_close(torch.complex(d.dtA_re, d.dtA_im), dtA, rtol=1e-15, atol=0)


@pytest.mark.parametrize("init", diagonal.INITS)
def test_s4d_init_values_and_draw_order(init):
    torch.manual_seed(0)
    log_dt, log_A_real, A_imag, C = diagonal.s4d_init(5, 8, init, 1e-3, 1e-1)
    torch.manual_seed(0)
    want_dt = torch.rand(5) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3)  # drawn first, then C
    want_C = torch.randn(5, 4, 2) * math.sqrt(0.5)
    n = torch.arange(4.0)
    want_imag = math.pi * n if init == "lin" else (8 / math.pi) * (8 / (2 * n + 1) - 1)
    assert torch.equal(log_dt, want_dt) and torch.equal(C, want_C)
    assert torch.equal(log_A_real, torch.full((5, 4), math.log(0.5))) and torch.equal(A_imag, want_imag.repeat(5, 1))


@pytest.mark.parametrize("T", [1, 2, 3, 4, 7, 16, 17, 50])
def test_kernel_matches_dense_powers(T):
    d = diagonal.s4d_discretize(*_params(seed=T)[:4])
    torch.testing.assert_close(diagonal.kernel(d, T), krylov_kernel_naive(*_dense(d), T), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T", [1, 2, 7, 16, 23])
@pytest.mark.parametrize("carried", [False, True])
@pytest.mark.parametrize("batch", [(2,), (2, 3)])  # (B,) as S4D and DSS; (B, d, d) as H3's head entries
def test_apply_matches_recurrence_outputs_state_and_grads(T, carried, batch):
    params = tuple(t.requires_grad_() for t in _params(seed=T))
    u = torch.randn(*batch, 3, T, dtype=F64, generator=_gen(1), requires_grad=True)
    s0 = None
    if carried:
        s0 = torch.randn(*batch, 3, 4, dtype=torch.complex128, generator=_gen(2)).requires_grad_()

    def run(fn):
        d = diagonal.s4d_discretize(*params[:4])
        return fn(d, params[4], u, s0)

    y, s = run(lambda d, D, u, s0: diagonal.apply(d, diagonal.plan(d, T), D, u, s0))
    y_ref, s_ref = run(_reference)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-11)
    inputs = params + (u,) + ((s0,) if carried else ())
    wy = torch.randn(y.shape, dtype=F64, generator=_gen(3))
    ws = torch.randn(s.shape, dtype=torch.complex128, generator=_gen(4))
    g, g_ref = (torch.autograd.grad((a * wy).sum() + (b * ws).real.sum(), inputs)
                for a, b in ((y, s), (y_ref, s_ref)))
    for name, a, b in zip(["log_dt", "log_A_real", "A_imag", "C", "D", "u", "s0"], g, g_ref, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


def test_step_loop_equals_apply_and_keeps_its_input():
    log_dt, log_A_real, A_imag, C, D = _params()
    d = diagonal.s4d_discretize(log_dt, log_A_real, A_imag, C)
    u = torch.randn(2, 3, 9, dtype=F64, generator=_gen(1))
    s0 = torch.randn(2, 3, 4, dtype=torch.complex128, generator=_gen(2))
    before = s0.clone()
    s, ys = s0, []
    for u_t in u.unbind(-1):
        y_t, s = diagonal.step(d, D, u_t, s)
        ys.append(y_t)
    assert torch.equal(s0, before)
    y, s_par = diagonal.apply(d, diagonal.plan(d, 9), D, u, s0)
    torch.testing.assert_close(torch.stack(ys, -1), y, rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(s, s_par, rtol=1e-10, atol=1e-11)


def test_plan_with_a_given_kernel_convolves_with_it_and_keeps_the_state():
    log_dt, log_A_real, A_imag, C, D = _params()
    d = diagonal.s4d_discretize(log_dt, log_A_real, A_imag, C)
    u = torch.randn(2, 3, 11, dtype=F64, generator=_gen(1))
    s0 = torch.randn(2, 3, 4, dtype=torch.complex128, generator=_gen(2))
    K = torch.randn(3, 11, dtype=F64, generator=_gen(3))
    y, s = diagonal.apply(d, diagonal.plan(d, 11, K), D, u, s0)
    y_ref, s_ref = _reference(d, D, u, s0)
    torch.testing.assert_close(y - y_ref, causal_conv_naive(u, K - diagonal.kernel(d, 11)), rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-11)


def test_float32_long_sequence_close_to_float64():
    params = _params(H=4, M=8)
    d64 = diagonal.s4d_discretize(*params[:4])
    d32 = diagonal.s4d_discretize(*(t.float() for t in params[:4]))
    u = torch.randn(1, 4, 700, dtype=F64, generator=_gen(1))
    s0 = torch.randn(1, 4, 8, dtype=torch.complex128, generator=_gen(2))
    y64, s64 = diagonal.apply(d64, diagonal.plan(d64, 700), params[4], u, s0)
    y32, s32 = diagonal.apply(d32, diagonal.plan(d32, 700), params[4].float(), u.float(), s0.to(torch.complex64))
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s32.to(torch.complex128), s64, rtol=1e-4, atol=1e-4)


def test_errors_name_the_argument():
    d = diagonal.s4d_discretize(*_params()[:4])
    with pytest.raises(ValueError, match="T=5"):  # a plan is for one length
        diagonal.apply(d, diagonal.plan(d, 5), torch.ones(3, dtype=F64), torch.zeros(2, 3, 6, dtype=F64))
    with pytest.raises(ValueError, match="d_state"):
        diagonal.check_args(d_state=7, dt_min=1e-3, dt_max=1e-1)
    with pytest.raises(ValueError, match="dt_min"):
        diagonal.check_args(d_state=8, dt_min=0.2, dt_max=0.1)
    with pytest.raises(ValueError, match="init.*'lin'.*'inv'"):
        diagonal.check_args(d_state=8, dt_min=1e-3, dt_max=1e-1, init="legs")


def test_a_zero_carried_state_is_skipped_with_the_same_result():
    """A zero s0 (every training batch) takes the no-state path, bit for bit the same outputs and final
    modes; a zero s0 that requires grad is kept, so its gradient is still computed."""
    log_dt, log_A_real, A_imag, C, D = _params()
    d = diagonal.s4d_discretize(log_dt, log_A_real, A_imag, C)
    u = torch.randn(2, 3, 17, generator=_gen(1), dtype=F64)
    p = diagonal.plan(d, 17)
    zero = torch.zeros(2, 3, 4, dtype=torch.complex128)
    y_none, s_none = diagonal.apply(d, p, D, u, None)
    y_zero, s_zero = diagonal.apply(d, p, D, u, zero)
    assert torch.equal(y_none, y_zero) and torch.equal(s_none, s_zero)
    wanted = zero.clone().requires_grad_()
    y, s = diagonal.apply(d, p, D, u, wanted)
    (y.sum() + s.abs().sum()).backward()
    assert wanted.grad is not None and wanted.grad.abs().max() > 0
