"""GRU: torch's fused kernel (forward) == the written-out equations (step), init, chunked carry, arguments."""

import math

import pytest
import torch
import torch.nn.functional as F

from longrecall.mixers.gru import GRU, GRUState
from longrecall.registry import get_mixer

from mixer_helpers import F64, random_inputs, seeded

D = 6


def _model(hidden_size=None, seed=0):
    return seeded(GRU, D, seed=seed, hidden_size=hidden_size)


def _random_state(m, B, seed=3, dtype=F64):
    return GRUState(torch.randn(B, m.hidden_size, generator=torch.Generator().manual_seed(seed), dtype=dtype))


def test_registered_and_attributes():
    assert get_mixer("gru") is GRU
    assert GRU.state_growth == "constant"


@pytest.mark.parametrize("hidden_size", [None, 4, 9])
def test_init_is_exactly_pytorch(hidden_size):
    m = seeded(GRU, 16, dtype=torch.float32, hidden_size=hidden_size)
    N = m.hidden_size
    torch.manual_seed(0)
    ref = torch.nn.GRU(16, N, batch_first=True)
    for (name, p), q in zip(m.rnn.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
        assert p.abs().max() <= 1 / math.sqrt(N), name  # U(-1/sqrt(N), 1/sqrt(N))
    assert isinstance(m.out_proj, torch.nn.Identity) == (N == 16)


@pytest.mark.parametrize("hidden_size", [None, 4, 9])
@pytest.mark.parametrize("T", [1, 7, 33])
def test_torch_kernel_equals_step_equations(hidden_size, T):
    m = _model(hidden_size)
    x, s0 = random_inputs(3, T, D, seed=2), _random_state(m, 3)
    y_par, s_par = m(x, s0)
    y_rec, s_rec = m.step_loop(x, s0)
    torch.testing.assert_close(y_par, y_rec, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s_par.h, s_rec.h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hidden_size", [None, 4])
def test_gradients_torch_kernel_equal_step_loop(hidden_size):
    m = _model(hidden_size)
    T, B = 11, 2
    x = random_inputs(B, T, D, seed=4).requires_grad_()
    s0 = GRUState(_random_state(m, B).h.requires_grad_())
    g = torch.Generator().manual_seed(5)
    w_y, w_h = torch.randn(B, T, D, generator=g, dtype=F64), torch.randn(s0.h.shape, generator=g, dtype=F64)

    def grads(run):
        y, s = run(x, s0)
        loss = (y * w_y).sum() + (s.h * w_h).sum()
        names, params = zip(*m.named_parameters(), strict=True)
        return dict(zip([*names, "x", "h0"], torch.autograd.grad(loss, [*params, x, s0.h]), strict=True))

    g_par, g_rec = grads(m.forward), grads(m.step_loop)
    for name, gp in g_par.items():
        assert gp.abs().max() > 0, name
        torch.testing.assert_close(gp, g_rec[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (torch.float32, 1e-5)])
def test_chunked_carry_equals_one_kernel_call(dtype, tol):
    m = _model(hidden_size=5).to(dtype)
    x = random_inputs(2, 64, D, seed=6, dtype=dtype)
    with torch.no_grad():
        h, h_n = m.rnn(x)  # one long call through torch's kernel, zero initial state
        y_full = m.out_proj(h)
        s, ys = None, []
        for a, b in ((0, 1), (1, 11), (11, 31), (31, 64)):
            y, s = m(x[:, a:b], s)
            ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), y_full, rtol=tol, atol=tol)
    torch.testing.assert_close(s.h, h_n[0], rtol=tol, atol=tol)


def test_reset_gate_after_the_recurrent_matrix():
    """The documented departure: n = tanh(W x + r * (U h + b)), not Cho et al.'s tanh(W x + U (r * h))."""
    m = _model()
    p = m.rnn
    x, h = random_inputs(1, 1, D, seed=8)[:, 0], _random_state(m, 1).h
    a_r, a_z, a_n = F.linear(x, p.weight_ih_l0, p.bias_ih_l0).chunk(3, -1)
    W_hr, W_hz, W_hn = p.weight_hh_l0.chunk(3, 0)
    b_hr, b_hz, b_hn = p.bias_hh_l0.chunk(3, 0)
    r, z = torch.sigmoid(a_r + h @ W_hr.T + b_hr), torch.sigmoid(a_z + h @ W_hz.T + b_hz)
    after = (1 - z) * torch.tanh(a_n + r * (h @ W_hn.T + b_hn)) + z * h
    before = (1 - z) * torch.tanh(a_n + (r * h) @ W_hn.T + b_hn) + z * h
    got = m.step(x, GRUState(h))[1].h
    torch.testing.assert_close(got, after, rtol=1e-12, atol=1e-12)
    assert (got - before).abs().max() > 1e-3


def test_saturated_update_gate_holds_the_state():
    """z -> 1 keeps h_{t-1} (the paper's convention for z)."""
    m = _model()
    with torch.no_grad():
        m.rnn.bias_ih_l0[D : 2 * D].fill_(1e3)
    s0 = _random_state(m, 2)
    _, s = m(random_inputs(2, 9, D, seed=7), s0)
    torch.testing.assert_close(s.h, s0.h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("hidden_size,N", [(None, 64), (24, 24)])
def test_state_bytes(hidden_size, N):
    m = GRU(64, hidden_size=hidden_size)
    _, s = m(torch.randn(3, 5, 64))
    assert s.h.dtype == torch.float32 and s.h.shape == (3, N)
    assert m.state_bytes(s) == 3 * N * 4


def test_bad_arguments():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="hidden_size"):
            GRU(4, hidden_size=bad)
    with pytest.raises(ValueError, match="d_model"):
        GRU(0)
    m = GRU(4, hidden_size=3)
    with pytest.raises(ValueError, match="state"):
        m(torch.zeros(2, 3, 4), GRUState(torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="state"):
        m.step(torch.zeros(2, 4), m.init_state(3))


def test_empty_sequence():
    m = GRU(4)
    y, s = m(torch.zeros(2, 0, 4))
    assert y.shape == (2, 0, 4) and s.h.shape == (2, 4)


@pytest.mark.gpu
def test_cudnn_kernel_equals_step_equations():
    torch.manual_seed(0)
    m = GRU(32, hidden_size=48).cuda()
    x = torch.randn(2, 200, 32, device="cuda")
    s0 = GRUState(torch.randn(2, 48, device="cuda"))
    torch.backends.cudnn.allow_tf32 = False  # compare float32 arithmetic, not TF32
    try:
        with torch.no_grad():
            y_par, s_par = m(x, s0)
            y_rec, s_rec = m.step_loop(x, s0)
            ya, sa = m(x[:, :77], s0)
            yb, sb = m(x[:, 77:], sa)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    torch.testing.assert_close(y_par, y_rec, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s_par.h, s_rec.h, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.cat([ya, yb], 1), y_par, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sb.h, s_par.h, rtol=1e-5, atol=1e-5)
    assert s_par.h.untyped_storage().nbytes() == s_par.h.numel() * s_par.h.element_size()  # owns its memory
