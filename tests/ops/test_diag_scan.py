"""The chunked diagonal scan equals the sequential spec: every state, the final state, every gradient."""

from __future__ import annotations

import pytest
import torch

from longrecall.ops.diag_scan import diag_scan, diag_scan_naive

C128 = torch.complex128


def make_inputs(batch, T, N, *, dtype=C128, seed=0, h0=True, decay_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype in (C128, torch.float64) else torch.float32
    log_re = -decay_scale * torch.rand(N, generator=g, dtype=real)  # (N,) <= 0
    if dtype.is_complex:
        log_decay = torch.complex(log_re, 6.3 * torch.rand(N, generator=g, dtype=real))  # phases in [0, 2 pi]
    else:
        log_decay = log_re
    b = torch.randn(batch, T, N, generator=g, dtype=dtype)  # (B, T, N)
    state = torch.randn(batch, N, generator=g, dtype=dtype) if h0 else None
    return [log_decay, b, state]


def grads(fn, inputs, seed=1, **kwargs):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    xs, h = fn(*leaves, **kwargs)
    g = torch.Generator().manual_seed(seed)
    w_x = torch.randn(xs.shape, generator=g, dtype=xs.dtype)
    w_h = torch.randn(h.shape, generator=g, dtype=h.dtype)
    loss = (xs * w_x).real.sum() + (h * w_h).real.sum()  # real loss: complex grads are well defined
    got = torch.autograd.grad(loss, [t for t in leaves if t is not None])
    return xs.detach(), h.detach(), got


@pytest.mark.parametrize("dtype", [C128, torch.float64], ids=["complex128", "float64"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zeros"])
@pytest.mark.parametrize("T, chunk_size", [(1, None), (2, None), (13, None), (13, 4), (16, 4), (37, 5), (9, 1),
                                           (10, 64)])
def test_chunked_matches_naive(T, chunk_size, with_h0, dtype):
    inputs = make_inputs(2, T, 3, dtype=dtype, h0=with_h0)
    x_ref, h_ref, g_ref = grads(diag_scan_naive, inputs)
    x, h, g = grads(diag_scan, inputs, chunk_size=chunk_size)
    torch.testing.assert_close(x, x_ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(h, h_ref, rtol=1e-11, atol=1e-11)
    names = ["log_decay", "b", "h0"][: len(g)]
    for name, a, b in zip(names, g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"gradient w.r.t. {name}")


def test_closed_form():
    """x_t = sum_j a^(t-j) b_j + a^(t+1) h0, from complex powers: independent of both scans."""
    log_decay, b, h0 = make_inputs(2, 11, 4)
    t = torch.arange(11, dtype=torch.float64)
    powers = torch.exp((t[:, None, None] - t[None, :, None]).clamp(min=0) * log_decay)  # (T, T, N)
    powers = powers * (t[:, None, None] >= t[None, :, None])
    want = torch.einsum("tjn,bjn->btn", powers, b) + torch.exp((t[:, None] + 1) * log_decay) * h0[:, None]
    x, h = diag_scan(log_decay, b, h0, chunk_size=3)
    torch.testing.assert_close(x, want, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(h, want[:, -1], rtol=1e-11, atol=1e-11)


def test_float32_long_sequence():
    """complex64, T = 3000, decays close to 1 (|a| >= 0.99): rounding stays small against complex128."""
    log_decay, b, h0 = make_inputs(1, 3000, 8, decay_scale=0.01)
    x64, h64 = diag_scan_naive(log_decay, b, h0)
    x32, h32 = diag_scan(*(t.to(torch.complex64) for t in (log_decay, b, h0)))
    scale = x64.abs().max()
    assert (x32.to(C128) - x64).abs().max() / scale < 1e-4
    assert (h32.to(C128) - h64).abs().max() / scale < 1e-4


def test_strong_decay_is_finite():
    """Re log_decay down to -200: powers a^L underflow to 0, nothing overflows or turns NaN."""
    inputs = make_inputs(2, 40, 3, decay_scale=200.0)
    x_ref, h_ref, g_ref = grads(diag_scan_naive, inputs)
    x, h, g = grads(diag_scan, inputs, chunk_size=8)
    for t in (x, h, *g):
        assert torch.isfinite(torch.view_as_real(t)).all()
    torch.testing.assert_close(x, x_ref, rtol=1e-11, atol=1e-11)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_final_state_owns_its_memory_and_inputs_untouched():
    log_decay, b, h0 = make_inputs(2, 9, 3)
    before = [t.clone() for t in (log_decay, b, h0)]
    _, h = diag_scan(log_decay, b, h0, chunk_size=4)
    assert h.untyped_storage().nbytes() == h.numel() * h.element_size()
    for t, t0 in zip((log_decay, b, h0), before, strict=True):
        torch.testing.assert_close(t, t0, rtol=0, atol=0)


def test_empty_sequence_returns_the_incoming_state():
    log_decay, b, h0 = make_inputs(2, 0, 3)
    for fn in (diag_scan_naive, diag_scan):
        x, h = fn(log_decay, b, h0)
        assert x.shape == (2, 0, 3)
        torch.testing.assert_close(h, h0)


def test_bad_arguments():
    log_decay, b, h0 = make_inputs(2, 5, 3)
    for fn in (diag_scan_naive, diag_scan):
        with pytest.raises(ValueError, match="log_decay"):
            fn(log_decay[:2], b, h0)
        with pytest.raises(ValueError, match="log_decay"):
            fn(log_decay.to(torch.complex64), b, h0)
        with pytest.raises(ValueError, match="^b "):
            fn(log_decay, b[0], h0)
        with pytest.raises(ValueError, match="h0"):
            fn(log_decay, b, h0[:1])
    with pytest.raises(ValueError, match="chunk_size"):
        diag_scan(log_decay, b, h0, chunk_size=0)
