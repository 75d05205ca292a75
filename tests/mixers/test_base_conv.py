"""BaseConv: Zoology's init, the equations by direct sums, FFT == direct convolution == step loop, bounded state."""

import pytest
import torch

from longrecall.mixers.base_conv import BaseConv, BaseConvState
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import F64, rand_x_for, seeded

D = 5
rand_x = rand_x_for(D, T=13)


def make(**kw):
    return seeded(BaseConv, D, **{"l_max": 6, **kw})


def _reference(m, x):
    """The two gated stages by explicit sums over positions (no conv module, no FFT)."""
    B, T, _ = x.shape
    z = x
    if m.short_kernel_size:
        W = m.short_kernel_size
        w = m.short_conv.weight[:, 0]  # (D, W): cross-correlation, w[:, W - 1] meets the current input
        c = torch.stack([m.short_conv.bias + sum(w[:, W - 1 - j] * x[:, t - j] for j in range(min(W, t + 1)))
                         for t in range(T)], 1)
        z = x + m.short_proj(x) * c
    h = torch.stack([sum(m.filter[:, j] * z[:, t - j] for j in range(min(m.l_max, t + 1))) for t in range(T)], 1)
    return z + m.long_proj(z) * h


def test_registered_and_init():
    assert get_mixer("base_conv") is BaseConv
    assert BaseConv.state_growth == "bounded"
    torch.manual_seed(0)
    m = BaseConv(64, l_max=512)
    assert m.state_capacity == 511 and m.filter.shape == (64, 512)
    # Zoology's LongConvolution: torch.randn(d_model, l_max)
    assert abs(m.filter.mean().item()) < 0.02 and abs(m.filter.std().item() - 1) < 0.02
    assert m.short_conv.weight.shape == (64, 1, 3) and m.short_conv.bias is not None
    assert m.short_proj.bias is not None and m.long_proj.bias is not None
    assert not hasattr(BaseConv(4, short_kernel_size=0), "short_proj")


@pytest.mark.parametrize("kw", [{}, {"short_kernel_size": 0}, {"short_kernel_size": 1}, {"l_max": 20}])
def test_forward_equals_direct_sums(kw):
    m = make(**kw)
    x = rand_x(T=15)
    torch.testing.assert_close(m(x)[0], _reference(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T", [1, 5, 14])
def test_fft_equals_direct_and_step_loop_with_carried_state(T):
    fft, naive = make(), make(impl="naive")
    naive.load_state_dict(fft.state_dict())
    with torch.no_grad():
        _, s0 = fft.step_loop(rand_x(T=4, seed=9), fft.init_state(2, dtype=F64))  # a nonempty history
    x = rand_x(T=T).requires_grad_()
    w_y = rand_x(T=T, seed=3)
    runs = {"fft": fft(x, s0), "naive": naive(x, s0), "step": fft.step_loop(x, s0)}
    grads = {}
    for name, (y, s) in runs.items():
        mod = naive if name == "naive" else fft
        loss = (y * w_y).sum() + sum((t * t).sum() for t in s)
        grads[name] = torch.autograd.grad(loss, [x, *mod.parameters()])
    for name in ("fft", "step"):
        torch.testing.assert_close(runs[name][0], runs["naive"][0], rtol=1e-10, atol=1e-10)
        for a, b in zip(runs[name][1], runs["naive"][1], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        for a, b in zip(grads[name], grads["naive"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_state_bounded_and_history_past_the_filter_forgotten():
    m = make()  # l_max 6, short kernel 3: an output sees 5 + 2 inputs back
    x = rand_x(T=20)
    y, s = m(x)
    assert s.short.shape == (2, D, 2) and s.long.shape == (2, D, 5)
    assert m.state_bytes(s) == 2 * D * (2 + 5) * 8
    assert m.state_bytes(m(x[:, :3])[1]) == 2 * D * (2 + 3) * 8  # grows until the capacity
    x2 = x.clone()
    x2[:, :4] += 1.0
    y2, s2 = m(x2)
    assert not torch.allclose(y2[:, 4 + 6], y[:, 4 + 6])  # position 3 + 7 still sees the change
    torch.testing.assert_close(y2[:, 4 + 7 :], y[:, 4 + 7 :], rtol=0, atol=1e-12)
    torch.testing.assert_close(s2.long, s.long, rtol=0, atol=1e-12)


def test_step_does_not_mutate_state():
    m = make()
    mh.assert_step_and_forward_keep_state(m, m(rand_x(T=8))[1], rand_x(T=1)[:, 0], rand_x(T=3))


def test_bad_arguments():
    mh.assert_bad_arguments(BaseConv, [({"l_max": 1}, "l_max"), ({"short_kernel_size": -1}, "short_kernel_size"),
                                       ({"impl": "direct"}, "impl")])
    m = BaseConv(4, l_max=4)
    mh.assert_wrong_states_rejected(m, m.init_state(3))
    with pytest.raises(ValueError, match="state"):
        m(torch.zeros(1, 3, 4), BaseConvState(torch.zeros(1, 4, 2), torch.zeros(1, 4, 9)))
