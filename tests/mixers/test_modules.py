"""Shared building blocks (longrecall.modules) and the forward cycle every mixer inherits from Mixer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import longrecall.mixers  # noqa: F401 - registers the mixers
from longrecall.contract import assert_close, build
from longrecall.modules import RMSNorm, ShortConvolution
from longrecall.protocol import Mixer
from longrecall.registry import MIXERS

F64 = torch.float64


@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("bias", [True, False])
def test_short_convolution_is_a_zero_padded_causal_conv_that_carries(activation, bias):
    torch.manual_seed(0)
    conv = ShortConvolution(5, 4, bias=bias, activation=activation).double()
    x = torch.randn(2, 9, 5, dtype=F64)
    y, buffer = conv(x, conv.init_state(2, dtype=F64))
    ref = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=3, groups=5)[..., :9].transpose(1, 2)
    torch.testing.assert_close(y, F.silu(ref) if activation else ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(buffer, x[:, -3:].transpose(1, 2))
    y1, b1 = conv(x[:, :2], conv.init_state(2, dtype=F64))  # fewer tokens than the buffer holds
    y2, b2 = conv(x[:, 2:], b1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-12, atol=1e-12)
    assert torch.equal(b2, buffer)
    ys, b = [], conv.init_state(2, dtype=F64)
    for x_t in x.unbind(1):
        y_t, b = conv.step(x_t, b)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-12, atol=1e-12)
    assert torch.equal(b, buffer)


def test_rms_norm_gates_after_or_before_the_norm():
    x, gate = torch.randn(3, 8, dtype=F64), torch.randn(3, 8, dtype=F64)
    norm = RMSNorm(8, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.normal_()

    def rms(t):
        return t / (t.square().mean(-1, keepdim=True) + 1e-5).sqrt()

    torch.testing.assert_close(norm(x), rms(x) * norm.weight)
    torch.testing.assert_close(norm(x, gate), rms(x) * norm.weight * F.silu(gate))
    norm.gate_first = True
    torch.testing.assert_close(norm(x, gate), rms(x * F.silu(gate)) * norm.weight)


OWN_FORWARD = {"attention", "sliding_window", "s4d"}  # hand a state to a KV-cache policy; skip zero states


@pytest.mark.parametrize("name", MIXERS.names())
def test_forward_is_the_shared_cycle(name):
    mixer = build(name)
    assert (type(mixer).forward is Mixer.forward) == (name not in OWN_FORWARD)
    state = mixer.step_loop(torch.randn(2, 3, mixer.d_model, dtype=F64), mixer.init_state(2, dtype=F64))[1]
    empty = torch.randn(2, 0, mixer.d_model, dtype=F64)
    y, same = mixer(empty, state)
    assert y.shape == empty.shape
    assert_close(same, state, "state after an empty sequence", atol=0, rtol=0)
    y, fresh = mixer(empty)
    assert_close(fresh, mixer.init_state(2, dtype=F64), "state after an empty first sequence", atol=0, rtol=0)
