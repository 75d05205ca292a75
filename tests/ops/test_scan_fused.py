"""The fused C++ selective scan equals the sequential spec, and its absence falls back cleanly.

The kernel is compiled on first use (``longrecall.ops.cpp``); where it cannot be built (no C++
compiler or ninja) the equality tests skip with the reason, and the fallback tests still run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from test_scan import NAMES, SHAPES, grads, make_inputs

from longrecall.ops.cpp import kernel_status
from longrecall.ops.scan import fused_scan_available, selective_scan_fused, selective_scan_naive

needs_kernel = pytest.mark.skipif(not fused_scan_available(), reason=f"C++ kernel not built here: {kernel_status()}")


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-E{}-N{}".format(*s[:4]))
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "zeros"])
def test_fused_matches_naive_float64(shape, with_h0):
    batch, T, E, N, _ = shape
    inputs = make_inputs(batch, T, E, N, h0=with_h0)
    y_ref, h_ref, g_ref = grads(selective_scan_naive, inputs)
    y, h, g = grads(selective_scan_fused, inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    names = [n for n, t in zip(NAMES, inputs, strict=True) if t is not None]
    for name, a, b in zip(names, g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"gradient w.r.t. {name}")


@needs_kernel
def test_fused_float32_and_low_precision():
    inputs = make_inputs(3, 50, 16, 8, dtype=torch.float32)
    y_ref, h_ref, g_ref = grads(selective_scan_naive, inputs)
    y, h, g = grads(selective_scan_fused, inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-4)
    for name, a, b in zip(NAMES, g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3, msg=f"gradient w.r.t. {name}")
    low = [t.to(torch.bfloat16) for t in inputs[:6]] + [inputs[6]]
    y, h = selective_scan_fused(*low)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32


@needs_kernel
@pytest.mark.parametrize("wanted", [("C",), ("h0",), ("A",), ("u", "B")])
def test_fused_gradient_of_a_subset(wanted):
    inputs = make_inputs(2, 11, 3, 2)

    def subset_grads(fn):
        leaves = [t.clone().requires_grad_(n in wanted) for n, t in zip(NAMES, inputs, strict=True)]
        y, h = fn(*leaves)
        loss = y.square().sum() + (h.sum() if h.requires_grad else 0)
        return torch.autograd.grad(loss, [t for t in leaves if t.requires_grad])

    for a, b in zip(subset_grads(selective_scan_fused), subset_grads(selective_scan_naive), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@needs_kernel
def test_fused_empty_sequence_and_strong_decay():
    u, delta, A, B, C, D, h0 = make_inputs(2, 0, 3, 2)
    y, h = selective_scan_fused(u, delta, A, B, C, D, h0)
    assert y.shape == (2, 0, 3)
    torch.testing.assert_close(h, h0)
    inputs = make_inputs(2, 50, 4, 3, dtype=torch.float32, delta_shift=40.0, a_scale=100.0)
    inputs[0] = inputs[0] * 10
    y_ref, h_ref, g_ref = grads(selective_scan_naive, inputs)
    y, h, g = grads(selective_scan_fused, inputs)
    for t in (y, h, *g):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-3)


@needs_kernel
def test_loading_the_kernel_keeps_denormals():
    """-ffast-math is a compile flag only: the process must not switch to flush-to-zero."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    assert (tiny * 0.5).item() != 0.0


@needs_kernel
def test_fused_saves_only_its_inputs():
    inputs = make_inputs(2, 64, 8, 4)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    leaves = [t.clone().requires_grad_() for t in inputs]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan_fused(*leaves)
    assert max(sizes) < 2 * 64 * 8 * 4  # never a (B, T, E, N) tensor


def test_disabled_kernel_falls_back_to_the_same_function():
    """With LONGRECALL_CPP_KERNELS=0 the kernel is never built, and Mamba's default scan ("auto")
    computes with the chunked form: the same outputs as the sequential reference."""
    code = (
        "import torch, warnings\n"
        "warnings.simplefilter('error')\n"  # disabling is deliberate: no warning
        "from longrecall.ops.scan import fused_scan_available\n"
        "from longrecall.ops.cpp import kernel_status\n"
        "from longrecall.mixers.mamba import Mamba\n"
        "assert not fused_scan_available()\n"
        "print(kernel_status()['selective_scan_cpu'])\n"
        "torch.manual_seed(0)\n"
        "m = Mamba(16, d_state=4).double(); x = torch.randn(2, 9, 16, dtype=torch.float64)\n"
        "y, _ = m(x)\n"
        "m.scan = 'naive'; y_ref, _ = m(x)\n"
        "torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)\n"
        "try:\n"
        "    m.scan = 'fused'; m(x)\n"
        "except RuntimeError as error:\n"
        "    assert 'unavailable' in str(error)\n"
        "else:\n"
        "    raise AssertionError('scan=fused ran without its kernel')\n"
    )
    env = {**__import__("os").environ, "LONGRECALL_CPP_KERNELS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "disabled" in out.stdout


@needs_kernel
def test_a_second_derivative_through_the_kernel_raises():
    """The hand-written backward has no graph of its own: a double backward (a gradient penalty, a
    Hessian-vector product) must raise, not return a silently wrong value."""
    u, delta, A, B, C, D, h0 = make_inputs(2, 5, 4, 3, h0=True)
    u = u.detach().requires_grad_()
    y, _ = selective_scan_fused(u, delta, A, B, C, D, h0)
    (g,) = torch.autograd.grad(y.square().sum(), u, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        g.sum().backward()
