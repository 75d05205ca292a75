"""GRU: torch's fused kernel (forward) == the written-out equations (step), init, chunked carry, arguments."""

import math

import pytest
import torch
import torch.nn.functional as F

from longrecall.mixers.gru import GRU, GRUState
from longrecall.registry import get_mixer

import mixer_helpers as mh
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


# torch's kernel == the step loop (outputs and state), its gradients, a chunked carry: written once for GRU and LSTM
(test_torch_kernel_equals_step_equations, test_gradients_torch_kernel_equal_step_loop,
 test_chunked_carry_equals_one_kernel_call) = mh.torch_rnn_tests(_model, _random_state, D)


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
    mh.assert_bad_arguments(GRU, [*(({"hidden_size": bad}, "hidden_size") for bad in (0, -1, 2.5, True)),
                                  ({"d_model": 0}, "d_model")])
    m = GRU(4, hidden_size=3)
    mh.assert_wrong_states_rejected(m, GRUState(torch.zeros(2, 4)), m.init_state(3))


def test_empty_sequence():
    m = GRU(4)
    y, s = m(torch.zeros(2, 0, 4))
    assert y.shape == (2, 0, 4) and s.h.shape == (2, 4)


@pytest.mark.gpu
def test_cudnn_kernel_equals_step_equations():
    torch.manual_seed(0)
    m = GRU(32, hidden_size=48).cuda()
    x = torch.randn(2, 200, 32, device="cuda")
    mh.assert_cudnn_equals_step_loop(m, x, GRUState(torch.randn(2, 48, device="cuda")), cut=77)
