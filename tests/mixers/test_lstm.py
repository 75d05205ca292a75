"""LSTM: torch's fused kernel (forward) == the written-out equations (step), init, chunked carry, arguments."""

import math

import pytest
import torch

from longrecall.mixers.lstm import LSTM, LSTMState
from longrecall.registry import get_mixer

from mixer_helpers import F64, random_inputs, seeded

D = 6


def _model(hidden_size=None, seed=0, **kw):
    return seeded(LSTM, D, seed=seed, hidden_size=hidden_size, **kw)


def _random_state(m, B, seed=3, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return LSTMState(*(torch.randn(B, m.hidden_size, generator=g, dtype=dtype) for _ in range(2)))


def test_registered_and_attributes():
    assert get_mixer("lstm") is LSTM
    assert LSTM.state_growth == "constant"


@pytest.mark.parametrize("hidden_size", [None, 4, 9])
def test_init_is_pytorch_uniform_with_forget_bias(hidden_size):
    torch.manual_seed(0)
    m = LSTM(16, hidden_size=hidden_size)
    N = m.hidden_size
    bound = 1 / math.sqrt(N)
    for name, p in m.rnn.named_parameters():
        free = p if "bias" not in name else torch.cat([p[:N], p[2 * N :]])  # the forget slice is set below
        assert free.abs().max() <= bound and free.abs().max() > 0.8 * bound, name
    torch.testing.assert_close(m.rnn.bias_ih_l0[N : 2 * N], torch.ones(N), rtol=0, atol=0)
    torch.testing.assert_close(m.rnn.bias_hh_l0[N : 2 * N], torch.zeros(N), rtol=0, atol=0)
    assert isinstance(m.out_proj, torch.nn.Identity) == (N == 16)


def test_forget_bias_option():
    torch.manual_seed(0)
    N = 8
    b = LSTM(N, forget_bias=2.5).rnn
    assert torch.all(b.bias_ih_l0[N : 2 * N] + b.bias_hh_l0[N : 2 * N] == 2.5)
    plain = seeded(LSTM, N, dtype=torch.float32, forget_bias=None).rnn
    torch.manual_seed(0)
    ref = torch.nn.LSTM(N, N, batch_first=True)
    for (name, p), q in zip(plain.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)  # exactly torch's init


@pytest.mark.parametrize("hidden_size", [None, 4, 9])
@pytest.mark.parametrize("T", [1, 7, 33])
def test_torch_kernel_equals_step_equations(hidden_size, T):
    m = _model(hidden_size)
    x, s0 = random_inputs(3, T, D, seed=2), _random_state(m, 3)
    y_par, s_par = m(x, s0)
    y_rec, s_rec = m.step_loop(x, s0)
    torch.testing.assert_close(y_par, y_rec, rtol=1e-12, atol=1e-12)
    for a, b in zip(s_par, s_rec, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hidden_size", [None, 4])
def test_gradients_torch_kernel_equal_step_loop(hidden_size):
    m = _model(hidden_size)
    T, B = 11, 2
    x = random_inputs(B, T, D, seed=4).requires_grad_()
    s0 = LSTMState(*(t.requires_grad_() for t in _random_state(m, B)))
    g = torch.Generator().manual_seed(5)
    w_y, w_h, w_c = (torch.randn(shape, generator=g, dtype=F64) for shape in ((B, T, D), s0.h.shape, s0.c.shape))

    def grads(run):
        y, s = run(x, s0)
        loss = (y * w_y).sum() + (s.h * w_h).sum() + (s.c * w_c).sum()
        names, params = zip(*m.named_parameters(), strict=True)
        return dict(zip([*names, "x", "h0", "c0"], torch.autograd.grad(loss, [*params, x, *s0]), strict=True))

    g_par, g_rec = grads(m.forward), grads(m.step_loop)
    for name, gp in g_par.items():
        assert gp.abs().max() > 0, name
        torch.testing.assert_close(gp, g_rec[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (torch.float32, 1e-5)])
def test_chunked_carry_equals_one_kernel_call(dtype, tol):
    m = _model(hidden_size=5).to(dtype)
    x = random_inputs(2, 64, D, seed=6, dtype=dtype)
    with torch.no_grad():
        h, (h_n, c_n) = m.rnn(x)  # one long call through torch's kernel, zero initial state
        y_full = m.out_proj(h)
        s, ys = None, []
        for a, b in ((0, 1), (1, 11), (11, 31), (31, 64)):
            y, s = m(x[:, a:b], s)
            ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), y_full, rtol=tol, atol=tol)
    torch.testing.assert_close(s.h, h_n[0], rtol=tol, atol=tol)
    torch.testing.assert_close(s.c, c_n[0], rtol=tol, atol=tol)


def test_saturated_gates_hold_the_cell():
    """Forget gate open and input gate shut: c_t = c_{t-1} exactly as the equations say (sigmoid -> 1, 0)."""
    m = _model()
    with torch.no_grad():
        m.rnn.bias_ih_l0[:D].fill_(-1e3)  # input gate
        m.rnn.bias_ih_l0[D : 2 * D].fill_(1e3)  # forget gate
    s0 = _random_state(m, 2)
    _, s = m(random_inputs(2, 9, D, seed=7), s0)
    torch.testing.assert_close(s.c, s0.c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("hidden_size,N", [(None, 64), (24, 24)])
def test_state_bytes(hidden_size, N):
    m = LSTM(64, hidden_size=hidden_size)
    _, s = m(torch.randn(3, 5, 64))
    assert s.h.dtype == s.c.dtype == torch.float32 and s.h.shape == s.c.shape == (3, N)
    assert m.state_bytes(s) == 2 * 3 * N * 4


def test_bad_arguments():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="hidden_size"):
            LSTM(4, hidden_size=bad)
    for bad in (float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="forget_bias"):
            LSTM(4, forget_bias=bad)
    with pytest.raises(ValueError, match="d_model"):
        LSTM(0)
    m = LSTM(4, hidden_size=3)
    with pytest.raises(ValueError, match="state"):
        m(torch.zeros(2, 3, 4), LSTMState(torch.zeros(2, 4), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="state"):
        m.step(torch.zeros(2, 4), m.init_state(3))


def test_empty_sequence():
    m = LSTM(4)
    y, s = m(torch.zeros(2, 0, 4))
    assert y.shape == (2, 0, 4) and s.h.shape == s.c.shape == (2, 4)


@pytest.mark.gpu
def test_cudnn_kernel_equals_step_equations():
    torch.manual_seed(0)
    m = LSTM(32, hidden_size=48).cuda()
    x = torch.randn(2, 200, 32, device="cuda")
    s0 = LSTMState(*(torch.randn(2, 48, device="cuda") for _ in range(2)))
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
    torch.testing.assert_close(torch.cat([ya, yb], 1), y_par, rtol=1e-5, atol=1e-5)
    for a, b, c in zip(s_par, s_rec, sb, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)
        assert a.untyped_storage().nbytes() == a.numel() * a.element_size()  # owns its memory
