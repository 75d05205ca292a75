"""Long convolution with a carried history: FFT == direct == step loop (outputs, history, gradients)."""

import pytest
import torch

from longrecall.ops.conv import causal_conv_naive
from longrecall.ops.conv.carry import conv_step_with_history, conv_with_history

F64 = torch.float64


def _inputs(B, C, P, T, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, C, T, generator=g, dtype=F64, requires_grad=True)
    k = torch.randn(C, L, generator=g, dtype=F64, requires_grad=True)
    hist = torch.randn(B, C, P, generator=g, dtype=F64, requires_grad=True)
    return u, k, hist


def _step_loop(u, k, hist, keep):
    ys = []
    for x in u.unbind(-1):
        y, hist = conv_step_with_history(x, k, hist, keep=keep)
        ys.append(y)
    return torch.stack(ys, -1), hist


def test_matches_definition():
    u, k, hist = (t.detach() for t in _inputs(2, 3, 4, 5, 7))
    w = torch.cat([hist, u], -1)
    want = torch.zeros(2, 3, 5, dtype=F64)
    for t in range(5):
        for j in range(min(4 + t + 1, 7)):
            want[..., t] += k[:, j] * w[..., 4 + t - j]
    y, new = conv_with_history(u, k, hist)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new, w, rtol=0, atol=0)


@pytest.mark.parametrize("P,T,L,keep", [(0, 1, 1, None), (0, 9, 9, None), (3, 6, 20, None), (5, 11, 4, 3),
                                        (2, 7, 6, 5), (6, 1, 8, 7), (4, 5, 1, 0)])
def test_fft_equals_direct_and_step_loop(P, T, L, keep):  # keep >= L - 1: all the step loop needs
    u, k, hist = _inputs(2, 3, P, T, L, seed=P + T + L)
    runs = {"fft": conv_with_history(u, k, hist, keep=keep, impl="fft"),
            "naive": conv_with_history(u, k, hist, keep=keep, impl="naive"),
            "step": _step_loop(u, k, hist, keep)}
    g = torch.Generator().manual_seed(1)
    w_y = torch.randn(2, 3, T, generator=g, dtype=F64)
    n_keep = P + T if keep is None else min(keep, P + T)
    w_h = torch.randn(2, 3, n_keep, generator=g, dtype=F64)
    grads = {}
    for name, (y, h) in runs.items():
        assert h.shape == (2, 3, n_keep)
        grads[name] = torch.autograd.grad((y * w_y).sum() + (h * w_h).sum(), (u, k, hist), allow_unused=True)
    y_ref, h_ref = runs["naive"]
    for name in ("fft", "step"):
        torch.testing.assert_close(runs[name][0], y_ref, rtol=1e-10, atol=1e-10, msg=name)
        torch.testing.assert_close(runs[name][1], h_ref, rtol=0, atol=0, msg=name)
        for what, a, b in zip(("u", "k", "history"), grads[name], grads["naive"], strict=True):
            if b is None:  # an empty history, or taps no input meets
                assert a is None or a.abs().max() == 0
                continue
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"{name} d/d{what}")


@pytest.mark.parametrize("split", [1, 6, 12])
def test_split_equals_whole_sequence(split):
    u, k, _ = (t.detach() for t in _inputs(2, 3, 0, 13, 13, seed=3))
    whole = causal_conv_naive(u, k)
    empty = u.new_zeros(2, 3, 0)
    y1, h1 = conv_with_history(u[..., :split], k, empty)
    y2, h2 = conv_with_history(u[..., split:], k, h1)
    torch.testing.assert_close(torch.cat([y1, y2], -1), whole, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h2, u, rtol=0, atol=0)
    # a history cut to the kernel's L - 1 inputs changes nothing
    y1, h1 = conv_with_history(u[..., :split], k[:, :4], empty, keep=3)
    y2, _ = conv_with_history(u[..., split:], k[:, :4], h1, keep=3)
    torch.testing.assert_close(torch.cat([y1, y2], -1), causal_conv_naive(u, k[:, :4]), rtol=1e-10, atol=1e-10)


def test_history_owns_its_memory_and_inputs_untouched():
    u, k, hist = (t.detach() for t in _inputs(2, 3, 5, 4, 6))
    before = hist.clone()
    for new in (conv_with_history(u, k, hist, keep=2)[1], conv_step_with_history(u[..., 0], k, hist, keep=2)[1]):
        assert new.shape == (2, 3, 2)
        assert new.untyped_storage().nbytes() == new.numel() * new.element_size()
    torch.testing.assert_close(hist, before, rtol=0, atol=0)


def test_float32_long():
    u, k, hist = (t.detach().float() for t in _inputs(1, 2, 300, 500, 800))
    y, _ = conv_with_history(u, k, hist)
    torch.testing.assert_close(y, conv_with_history(u.double(), k.double(), hist.double(), impl="naive")[0].float(),
                               rtol=1e-4, atol=1e-3)


def test_bad_arguments():
    u, k, hist = (t.detach() for t in _inputs(2, 3, 2, 4, 5))
    with pytest.raises(ValueError, match="history"):
        conv_with_history(u, k, hist[:1])
    with pytest.raises(ValueError, match="history"):
        conv_step_with_history(u[..., 0], k, hist[..., 0])
    with pytest.raises(ValueError, match="impl"):
        conv_with_history(u, k, hist, impl="direct")
    with pytest.raises(ValueError, match="keep"):
        conv_with_history(u, k, hist, keep=-1)
    with pytest.raises(ValueError, match="channels"):
        conv_with_history(u, k[:2], hist)
