"""The chunked selective scan equals the sequential spec: outputs, final state, every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longrecall.ops.scan import SCAN_METHODS, selective_scan_chunked, selective_scan_naive

NAMES = ("u", "delta", "A", "B", "C", "D", "h0")


def make_inputs(batch, T, E, N, *, dtype=torch.float64, seed=0, h0=True, delta_shift=0.0, a_scale=3.0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    u = randn(batch, T, E)  # (B, T, E)
    delta = F.softplus(randn(batch, T, E)) + delta_shift  # (B, T, E), > 0
    A = -torch.rand(E, N, generator=g, dtype=dtype) * a_scale - 0.05  # (E, N), < 0
    B, C = randn(batch, T, N), randn(batch, T, N)  # (B, T, N)
    D = randn(E)
    state = randn(batch, E, N) if h0 else None
    return [u, delta, A, B, C, D, state]


def grads(fn, inputs, seed=1, **kwargs):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    y, h = fn(*leaves, **kwargs)
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    dh = torch.randn(h.shape, generator=g, dtype=h.dtype)
    wanted = [t for t in leaves if t is not None]
    got = torch.autograd.grad((y, h), wanted, (dy, dh))
    return y.detach(), h.detach(), got


SHAPES = [
    # batch, T, E, N, chunk_size
    (2, 37, 5, 3, 8),  # T not divisible by the chunk size
    (2, 10, 4, 3, 64),  # T < chunk_size: one short chunk
    (1, 1, 3, 2, 64),  # T == 1
    (2, 32, 4, 3, 16),  # T a multiple of the chunk size
    (3, 9, 2, 4, 1),  # one step per chunk
]


@pytest.mark.parametrize("method", SCAN_METHODS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-E{}-N{}-L{}".format(*s))
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zeros"])
def test_chunked_matches_naive(shape, method, with_h0):
    batch, T, E, N, L = shape
    inputs = make_inputs(batch, T, E, N, h0=with_h0)
    y_ref, h_ref, g_ref = grads(selective_scan_naive, inputs)
    y, h, g = grads(selective_scan_chunked, inputs, chunk_size=L, method=method)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    names = [n for n, t in zip(NAMES, inputs, strict=True) if t is not None]
    for name, a, b in zip(names, g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"gradient w.r.t. {name}")


@pytest.mark.parametrize("wanted", [("C",), ("h0",), ("A",), ("u", "B")])
def test_gradient_of_a_subset(wanted):
    """Only some inputs need grad (e.g. only C, which never reaches the final state)."""
    inputs = make_inputs(2, 11, 3, 2)

    def subset_grads(fn, **kwargs):
        leaves = [t.clone().requires_grad_(n in wanted) for n, t in zip(NAMES, inputs, strict=True)]
        y, h = fn(*leaves, **kwargs)
        loss = y.square().sum() + (h.sum() if h.requires_grad else 0)
        return torch.autograd.grad(loss, [t for t in leaves if t.requires_grad])

    for a, b in zip(subset_grads(selective_scan_chunked, chunk_size=4), subset_grads(selective_scan_naive),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_inference_path_and_dtypes():
    inputs = make_inputs(2, 20, 4, 3, dtype=torch.float32)
    with torch.inference_mode():
        y, h = selective_scan_chunked(*inputs, chunk_size=8)
    y_ref, h_ref = selective_scan_naive(*inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    # low-precision activations: y keeps the input dtype, the state is carried in float32
    low = [t.to(torch.bfloat16) for t in inputs[:6]] + [inputs[6]]
    y, h = selective_scan_chunked(*low, chunk_size=8)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32


def test_empty_sequence_returns_the_incoming_state():
    u, delta, A, B, C, D, h0 = make_inputs(2, 0, 3, 2)
    for fn in (selective_scan_naive, selective_scan_chunked):
        y, h = fn(u, delta, A, B, C, D, h0)
        assert y.shape == (2, 0, 3)
        torch.testing.assert_close(h, h0)


def test_strong_decay_is_finite_and_exact():
    """delta * A down to about -5000: decays underflow to 0, nothing overflows (float32)."""
    inputs = make_inputs(2, 50, 4, 3, dtype=torch.float32, delta_shift=40.0, a_scale=100.0)
    inputs[0] = inputs[0] * 10
    y_ref, h_ref, g_ref = grads(selective_scan_naive, inputs)
    for method in SCAN_METHODS:
        y, h, g = grads(selective_scan_chunked, inputs, chunk_size=16, method=method)
        for t in (y, h, *g):
            assert torch.isfinite(t).all()
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-3)
        for name, a, b in zip(NAMES, g, g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-2, msg=f"gradient w.r.t. {name}")


def saved_elements(fn, inputs, **kwargs) -> tuple[int, int]:
    """(largest, total) element count of the tensors autograd saves for backward."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    leaves = [t.clone().requires_grad_() for t in inputs]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*leaves, **kwargs)
    return max(sizes), sum(sizes)


def test_chunked_saves_no_full_state_sequence():
    batch, T, E, N, L = 2, 256, 8, 4, 32
    inputs = make_inputs(batch, T, E, N)
    full = batch * T * E * N  # what plain autograd through the scan keeps
    largest, total = saved_elements(selective_scan_chunked, inputs, chunk_size=L)
    boundary = (T // L) * batch * E * N  # one (B, E, N) state per chunk
    input_elems = sum(t.numel() for t in inputs)
    assert largest < full
    assert total <= 2 * input_elems + boundary, (total, input_elems, boundary)
    # sanity check of the probe: the sequential reference does keep O(B·T·E·N)
    _, naive_total = saved_elements(selective_scan_naive, inputs)
    assert naive_total >= full


def test_bad_arguments():
    inputs = make_inputs(1, 4, 2, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_chunked(*inputs, chunk_size=0)
    with pytest.raises(ValueError, match="method"):
        selective_scan_chunked(*inputs, method="blelloch")
