"""LEM: the paper's equations (z first, y from the new z), forward == step loop (the Python loop and the
fused C++ kernel), init, bounded states."""

import math
import subprocess
import sys

import pytest
import torch

from longrecall.mixers.lem import LEM, LEMState
from longrecall.ops.cpp import kernel_status
from longrecall.ops.lem import fused_lem_available
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import F64, random_inputs, seeded

D = 6
# every forward test runs both recurrences; the kernel's only where it builds (its fallback is tested below)
IMPL = pytest.mark.parametrize("impl", [
    "loop", pytest.param("fused", marks=pytest.mark.skipif(not fused_lem_available(),
                                                           reason=f"C++ kernel not built here: {kernel_status()}"))])


def _model(d_hidden=None, dt=0.7, seed=0, d_model=D, impl="auto"):
    return seeded(LEM, d_model, seed=seed, d_hidden=d_hidden, dt=dt, impl=impl)


def _random_state(m, B, seed=3):
    g = torch.Generator().manual_seed(seed)
    return LEMState(*(torch.rand(B, m.d_hidden, generator=g, dtype=F64) * 2 - 1 for _ in range(2)))


def _paper_equations(m, x, state, *, explicit_y=False):
    """Eq. 3 of the paper written out with named blocks of the weights; ``explicit_y`` feeds y the old z."""
    N = m.d_hidden
    V1, V2, Vz, Vy = m.inp2hid.weight.split(N)  # (N, D) each
    c1, c2, cz, cy = m.inp2hid.bias.split(N)
    W1, W2, Wz = m.hid2hid.weight.split(N)  # (N, N) each
    d1, d2, dz = m.hid2hid.bias.split(N)
    Wy, by = m.transform_z.weight, m.transform_z.bias
    y, z = state
    ys = []
    for u in x.unbind(1):
        dt1 = m.dt * torch.sigmoid(y @ W1.T + u @ V1.T + c1 + d1)
        dt2 = m.dt * torch.sigmoid(y @ W2.T + u @ V2.T + c2 + d2)
        z_new = (1 - dt1) * z + dt1 * torch.tanh(y @ Wz.T + u @ Vz.T + cz + dz)
        y = (1 - dt2) * y + dt2 * torch.tanh((z if explicit_y else z_new) @ Wy.T + by + u @ Vy.T + cy)
        z = z_new
        ys.append(y)
    return torch.stack(ys, 1), LEMState(y, z)


def test_registered_and_attributes():
    assert get_mixer("lem") is LEM
    assert LEM.state_growth == "constant"
    m = LEM(8)
    assert m.d_hidden == 8 and m.out_proj is None and m.dt == 1.0
    assert LEM(8, d_hidden=12).out_proj.weight.shape == (8, 12)


def test_init_as_the_reference():
    torch.manual_seed(0)
    m = LEM(32, d_hidden=128)
    bound = 1 / math.sqrt(128)
    cell = [m.inp2hid.weight, m.inp2hid.bias, m.hid2hid.weight, m.hid2hid.bias, m.transform_z.weight,
            m.transform_z.bias]
    for p in cell:  # every weight and bias ~ U(-1/sqrt(N), 1/sqrt(N)), N the hidden width (not fan-in)
        assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound
    w = m.inp2hid.weight  # fan-in 32: PyTorch's default would be U(-1/sqrt(32), 1/sqrt(32))
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    s = m.init_state(2)
    assert s.y.shape == s.z.shape == (2, 128) and not s.y.any() and not s.z.any()


@pytest.mark.parametrize("d_hidden", [None, 4, 9])
def test_step_equals_the_paper_equations(d_hidden):
    m = _model(d_hidden)
    x, s0 = random_inputs(2, 9, D, seed=2), _random_state(m, 2)
    with torch.no_grad():
        y_ref, s_ref = _paper_equations(m, x, s0)
        y, s = m.step_loop(x, s0)
        if m.out_proj is not None:
            y_ref = m.out_proj(y_ref)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=1e-12)
        # the update order matters: y read from the old z is a different model
        y_exp, _ = _paper_equations(m, x, s0, explicit_y=True)
        assert (y_exp - _paper_equations(m, x, s0)[0]).abs().max() > 1e-3


@IMPL
@pytest.mark.parametrize("d_hidden", [None, 4])
@pytest.mark.parametrize("T", [1, 5, 16])
def test_forward_equals_step_loop(d_hidden, T, impl):
    m = _model(d_hidden, impl=impl)
    x = random_inputs(3, T, D, seed=4)
    for s0 in (m.init_state(3, dtype=F64), _random_state(m, 3)):
        with torch.no_grad():
            mh.assert_parallel_equals_step_loop(m, x, s0, rtol=1e-12, atol=1e-12)


@IMPL
@pytest.mark.parametrize("d_hidden", [None, 5])
def test_gradients_forward_equal_step_loop(d_hidden, impl):
    """Outputs' and final state's gradients in every parameter, the input and both initial states: the
    kernel's hand-written adjoint recurrence against autograd through ``step``."""
    m = _model(d_hidden, impl=impl)
    x, s0 = random_inputs(2, 8, D, seed=5), _random_state(m, 2)
    mh.assert_grads_match(m, x, s0, seed=6, rtol=1e-10, atol=1e-12, nonzero=True)


@pytest.mark.skipif(not fused_lem_available(), reason=f"C++ kernel not built here: {kernel_status()}")
def test_fused_float32_long_sequence_and_only_the_final_state_used():
    """float32 over 500 tokens against the loop; a loss on the final z alone (y's outputs unused) still
    reaches every parameter through the kernel's backward."""
    torch.manual_seed(0)
    fused, loop = LEM(8, d_hidden=16, dt=0.5, impl="fused"), LEM(8, d_hidden=16, dt=0.5, impl="loop")
    loop.load_state_dict(fused.state_dict())
    x = torch.randn(3, 500, 8)
    (y_f, s_f), (y_l, s_l) = fused(x), loop(x)
    torch.testing.assert_close(y_f, y_l, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s_f.z, s_l.z, rtol=1e-4, atol=1e-5)
    cell = ("inp2hid", "hid2hid", "transform_z")  # out_proj reads y's outputs only
    g_f = torch.autograd.grad(s_f.z.sum(), [p for n, p in fused.named_parameters() if n.startswith(cell)])
    g_l = torch.autograd.grad(s_l.z.sum(), [p for n, p in loop.named_parameters() if n.startswith(cell)])
    for a, b in zip(g_f, g_l, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert fused(x.bfloat16().float())[0].dtype == torch.float32


def test_disabled_kernel_falls_back_to_the_loop():
    """With LONGRECALL_CPP_KERNELS=0 the default ("auto") runs the step loop, the same function, and
    impl="fused" says the kernel is unavailable."""
    code = (
        "import torch, warnings\n"
        "warnings.simplefilter('error')\n"
        "from longrecall.mixers.lem import LEM\n"
        "torch.manual_seed(0)\n"
        "m = LEM(6).double(); x = torch.randn(2, 9, 6, dtype=torch.float64)\n"
        "y, _ = m(x)\n"
        "torch.testing.assert_close(y, m.step_loop(x, m.init_state(2, dtype=torch.float64))[0])\n"
        "m.impl = 'fused'\n"
        "try:\n"
        "    m(x)\n"
        "except RuntimeError as error:\n"
        "    assert 'unavailable' in str(error)\n"
        "else:\n"
        "    raise AssertionError('impl=fused ran without its kernel')\n"
    )
    env = {**__import__("os").environ, "LONGRECALL_CPP_KERNELS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


@IMPL
def test_chunked_forward_equals_whole(impl):
    with torch.no_grad():
        mh.assert_chunked_equals_whole(_model(impl=impl), random_inputs(2, 17, D, seed=7), (6,), rtol=1e-12,
                                       atol=1e-12)


@pytest.mark.parametrize("dt", [1.0, 0.3])
def test_states_stay_in_the_unit_box_for_any_input(dt):
    # dt <= 1: each update is a convex combination of the old state and a tanh, so |y|, |z| <= 1 (paper, sec. 4)
    m = _model(dt=dt)
    x = random_inputs(2, 300, D, seed=8, scale=50.0)
    with torch.no_grad():
        _, s = m(x, _random_state(m, 2))
        ys, _ = m(x)
    assert ys.abs().max() <= 1 and s.y.abs().max() <= 1 and s.z.abs().max() <= 1
    assert ys.abs().max() > 0.9  # large inputs saturate the tanh: the bound is tight, not vacuous


def test_time_step_scales_the_update():
    m_small, m_big = _model(dt=0.01), _model(dt=1.0)  # same weights: same seed
    x, s0 = random_inputs(2, 1, D, seed=9), _random_state(m_small, 2)
    with torch.no_grad():
        small = (m_small(x, s0)[1].y - s0.y).abs().max()
        big = (m_big(x, s0)[1].y - s0.y).abs().max()
    assert small <= 0.01 * 2 and big > 10 * small  # |y_n - y_{n-1}| <= dt2 |tanh - y| <= 2 dt


def test_step_does_not_mutate_state_and_state_bytes():
    m = LEM(5, d_hidden=7)
    s = LEMState(torch.randn(3, 7), torch.randn(3, 7))
    mh.assert_step_and_forward_keep_state(m, s, torch.randn(3, 5), torch.randn(3, 4, 5))
    assert m.state_bytes(m.init_state(3)) == 3 * 2 * 7 * 4


def test_bad_arguments():
    mh.assert_bad_arguments(LEM, [*(({"dt": dt}, "dt") for dt in (0.0, -0.5, 1.5, float("nan"))),
                                  *(({"d_hidden": d_hidden}, "d_hidden") for d_hidden in (0, -3, 2.5)),
                                  ({"d_model": 0}, "d_model"), ({"impl": "cuda"}, "impl")])
    m = LEM(4, d_hidden=3)
    with pytest.raises(ValueError, match="d_model"):
        m(torch.zeros(1, 3, 5))
    mh.assert_wrong_states_rejected(m, m.init_state(3), LEM(4).init_state(2))


def test_empty_sequence():
    m = LEM(4)
    y, s = m(torch.zeros(2, 0, 4))
    assert y.shape == (2, 0, 4) and s.y.shape == s.z.shape == (2, 4)


@pytest.mark.skipif(not fused_lem_available(), reason=f"C++ kernel not built here: {kernel_status()}")
def test_fused_kernel_refuses_what_it_cannot_do():
    """Its backward has no graph, so a second derivative raises instead of being silently wrong; shapes
    that do not fit N (from W_y) are named before the kernel reads a byte."""
    from longrecall.ops.lem import lem_recurrence_fused

    m = _model(impl="fused")
    x = random_inputs(2, 4, D, seed=10).requires_grad_()
    y, _ = m(x)
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        g.sum().backward()
    N = m.d_hidden
    inp = m.inp2hid(x).detach()
    args = [m.hid2hid.weight, m.hid2hid.bias, m.transform_z.weight, m.transform_z.bias]
    with pytest.raises(ValueError, match=r"inp must have shape \(2, 4, 24\)"):
        lem_recurrence_fused(inp[..., : 2 * N], *args, torch.zeros(2, N, dtype=F64), torch.zeros(2, N, dtype=F64), 0.7)
    with pytest.raises(ValueError, match=r"y0 must have shape \(2, 6\)"):
        lem_recurrence_fused(inp, *args, torch.zeros(1, N, dtype=F64), torch.zeros(2, N, dtype=F64), 0.7)
