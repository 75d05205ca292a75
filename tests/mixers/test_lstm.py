"""LSTM: torch's fused kernel (forward) == the written-out equations (step), init, chunked carry, arguments."""

import math

import pytest
import torch

from longrecall.mixers.lstm import LSTM, LSTMState
from longrecall.registry import get_mixer

import mixer_helpers as mh
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


# torch's kernel == the step loop (outputs and state), its gradients, a chunked carry: written once for GRU and LSTM
(test_torch_kernel_equals_step_equations, test_gradients_torch_kernel_equal_step_loop,
 test_chunked_carry_equals_one_kernel_call) = mh.torch_rnn_tests(_model, _random_state, D)


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
    bad_biases = (float("nan"), float("inf"), "1", True)
    mh.assert_bad_arguments(LSTM, [*(({"hidden_size": bad}, "hidden_size") for bad in (0, -1, 2.5, True)),
                                   *(({"forget_bias": bad}, "forget_bias") for bad in bad_biases),
                                   ({"d_model": 0}, "d_model")])
    m = LSTM(4, hidden_size=3)
    mh.assert_wrong_states_rejected(m, LSTMState(torch.zeros(2, 4), torch.zeros(2, 4)), m.init_state(3))


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
    mh.assert_cudnn_equals_step_loop(m, x, s0, cut=77)
