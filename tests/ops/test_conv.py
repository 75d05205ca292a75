"""FFT causal convolution against the direct spec: outputs and gradients."""

import pytest
import torch

from longrecall.ops.conv import causal_conv_fft, causal_conv_fft_freq, causal_conv_naive, kernel_rfft


def _inputs(B, H, T, L, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, H, T, generator=g, dtype=dtype, requires_grad=True)
    k = torch.randn(H, L, generator=g, dtype=dtype, requires_grad=True)
    return u, k


def test_naive_matches_definition():
    u, k = (t.detach() for t in _inputs(2, 3, 7, 7))
    want = torch.zeros(2, 3, 7, dtype=u.dtype)
    for t in range(7):
        for s in range(t + 1):
            want[..., t] += k[:, t - s] * u[..., s]
    torch.testing.assert_close(causal_conv_naive(u, k), want)


@pytest.mark.parametrize("T,L", [(1, 1), (2, 2), (5, 5), (17, 17), (33, 8), (64, 64), (101, 1)])
def test_fft_matches_naive_outputs_and_grads(T, L):
    u, k = _inputs(2, 3, T, L, seed=T)
    y_fft = causal_conv_fft(u, k)
    y_ref = causal_conv_naive(u, k)
    torch.testing.assert_close(y_fft, y_ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(y_ref)
    g_fft = torch.autograd.grad((y_fft * w).sum(), (u, k))
    g_ref = torch.autograd.grad((y_ref * w).sum(), (u, k))
    for a, b in zip(g_fft, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_fft_float32_and_causality():
    u, k = _inputs(1, 4, 257, 257, dtype=torch.float32)
    torch.testing.assert_close(causal_conv_fft(u, k), causal_conv_naive(u, k), rtol=1e-4, atol=1e-4)
    # the future never leaks: changing u at t=100 leaves y[:100] alone
    u2 = u.detach().clone()
    u2[..., 100] += 10.0
    y, y2 = causal_conv_fft(u, k), causal_conv_fft(u2, k)
    torch.testing.assert_close(y2[..., :100], y[..., :100], rtol=0, atol=1e-4)


def test_long_kernel_truncated_and_prepared_spectrum():
    u, k = _inputs(2, 3, 9, 20)
    torch.testing.assert_close(causal_conv_fft(u, k), causal_conv_naive(u, k[:, :9]))
    torch.testing.assert_close(causal_conv_fft_freq(u, kernel_rfft(k, 9)), causal_conv_naive(u, k))
    with pytest.raises(ValueError, match="k_f"):
        causal_conv_fft_freq(u, kernel_rfft(k, 8))


def test_empty_and_bad_shapes():
    u = torch.zeros(2, 3, 0)
    assert causal_conv_fft(u, torch.zeros(3, 4)).shape == (2, 3, 0)
    assert causal_conv_naive(u, torch.zeros(3, 4)).shape == (2, 3, 0)
    with pytest.raises(ValueError, match="channels"):
        causal_conv_fft(torch.zeros(2, 3, 5), torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"\(B, H, T\)"):
        causal_conv_naive(torch.zeros(3, 5), torch.zeros(3, 5))
