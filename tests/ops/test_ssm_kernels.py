"""ops.ssm: HiPPO-LegS and its NPLR form, bilinear discretisation, Krylov and Cauchy kernels against the spec."""

import math

import pytest
import torch

from longrecall.ops.conv import causal_conv_naive
from longrecall.ops.ssm import (
    bilinear,
    cauchy,
    dense_ssm,
    dplr_kernel,
    dplr_to_real,
    hippo_legs,
    krylov,
    krylov_kernel,
    krylov_kernel_naive,
    legs_nplr,
    output_from_real,
    roots_of_unity,
    ssm_blocks,
    ssm_recurrence_naive,
)

F64, C128 = torch.float64, torch.complex128


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _dense_system(H=3, N=6, seed=0):
    """A random stable dense system: HiPPO-LegS plus noise, steps over [1e-3, 0.5]."""
    g = _gen(seed)
    A, B = hippo_legs(N)
    A = A + 0.3 * torch.randn(H, N, N, generator=g, dtype=F64)
    B = B + 0.3 * torch.randn(H, N, generator=g, dtype=F64)
    dt = torch.exp(torch.empty(H, dtype=F64).uniform_(math.log(1e-3), math.log(0.5), generator=g))
    Abar, Bbar = bilinear(A, B, dt)
    return Abar, Bbar, torch.randn(H, N, generator=g, dtype=F64)


def _dplr_system(H=3, N=8, seed=0):
    """LegS NPLR per channel, perturbed off its init (Re Lambda < 0 kept), with steps over [1e-3, 0.5]."""
    g = _gen(seed)
    nplr = legs_nplr(N)
    M = N // 2

    def noise(scale):
        return scale * torch.complex(torch.randn(H, M, generator=g, dtype=F64), torch.randn(H, M, generator=g,
                                                                                            dtype=F64))

    re = nplr.Lambda.real * torch.empty(H, M, dtype=F64).uniform_(0.2, 3.0, generator=g)
    Lambda = torch.complex(re, nplr.Lambda.imag + torch.randn(H, M, generator=g, dtype=F64))
    P, B, Ct = nplr.P + noise(0.3), nplr.B + noise(0.3), noise(math.sqrt(0.5))
    dt = torch.exp(torch.empty(H, dtype=F64).uniform_(math.log(1e-3), math.log(0.5), generator=g))
    return Lambda, P, B, Ct, dt


def _dplr_reference(Lambda, P, B, Ct, dt, L):
    """The dense spec: real representation, bilinear, C = C~ (I - Abar^L)^{-1}, one power per tap."""
    A_r, B_r, Ct_r = dplr_to_real(Lambda, P, B, Ct)
    Abar, Bbar = bilinear(A_r, B_r, dt)
    power = torch.eye(A_r.shape[-1], dtype=F64).expand_as(Abar)
    for _ in range(L):
        power = power @ Abar
    C_r = torch.linalg.solve((torch.eye(A_r.shape[-1], dtype=F64) - power).mT, Ct_r)
    return krylov_kernel_naive(Abar, Bbar, C_r, L)


# ----------------------------------------------------------------------------- HiPPO-LegS and NPLR


def test_hippo_legs_matches_definition():
    A, B = hippo_legs(4)
    want = torch.tensor([[-1, 0, 0, 0], [-math.sqrt(3), -2, 0, 0], [-math.sqrt(5), -math.sqrt(15), -3, 0],
                         [-math.sqrt(7), -math.sqrt(21), -math.sqrt(35), -4]], dtype=F64)
    torch.testing.assert_close(A, want, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(B, torch.sqrt(torch.tensor([1.0, 3.0, 5.0, 7.0], dtype=F64)))


@pytest.mark.parametrize("N", [2, 8, 64])
def test_nplr_reconstructs_legs(N):
    A, B = hippo_legs(N)
    nplr = legs_nplr(N)
    V = torch.cat([nplr.V, nplr.V.conj()], 1)  # the full unitary basis
    torch.testing.assert_close(V.conj().T @ V, torch.eye(N, dtype=C128), rtol=0, atol=1e-12)
    Lam, P = torch.cat([nplr.Lambda, nplr.Lambda.conj()]), torch.cat([nplr.P, nplr.P.conj()])
    A_rec = V @ (torch.diag(Lam) - P[:, None] * P.conj()[None, :]) @ V.conj().T
    torch.testing.assert_close(A_rec, A.to(C128), rtol=0, atol=1e-11 * N)
    torch.testing.assert_close(V @ torch.cat([nplr.B, nplr.B.conj()]), B.to(C128), rtol=0, atol=1e-11 * N)
    assert torch.all(nplr.Lambda.real == -0.5) and torch.all(nplr.Lambda.imag < -1e-3)  # no zero mode


def test_dplr_to_real_is_the_legs_system():
    """The real representation of the NPLR half has LegS's eigenvalues -1..-N, and the same kernel as LegS
    itself with the output vector carried back through V."""
    N = 8
    A, B = hippo_legs(N)
    nplr = legs_nplr(N)
    C = torch.randn(N // 2, dtype=C128, generator=_gen(0))
    A_r, B_r, C_r = dplr_to_real(nplr.Lambda, nplr.P, nplr.B, C)
    eig = torch.linalg.eigvals(A_r).real.sort().values
    torch.testing.assert_close(eig, -torch.arange(N, 0, -1, dtype=F64), rtol=0, atol=1e-9)
    C_orig = (torch.cat([C, C.conj()]) @ torch.cat([nplr.V, nplr.V.conj()], 1).conj().T).real  # y = C_full V^* x
    dt = torch.tensor([0.01, 0.3], dtype=F64)
    K_legs = krylov_kernel_naive(*bilinear(A, B, dt), C_orig.expand(2, N), 40)
    K_real = krylov_kernel_naive(*bilinear(A_r, B_r, dt), C_r.expand(2, N), 40)
    torch.testing.assert_close(K_real, K_legs, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(output_from_real(C_r), C)


def test_dplr_to_real_step_equals_complex_full_system():
    Lambda, P, B, C, _ = _dplr_system(H=2, N=6)
    A_r, B_r, C_r = dplr_to_real(Lambda, P, B, C)
    s = torch.randn(2, 3, dtype=C128, generator=_gen(1))  # the kept half
    x = torch.cat([s, s.conj()], -1)
    A_full = torch.diag_embed(torch.cat([Lambda, Lambda.conj()], -1))
    Pf = torch.cat([P, P.conj()], -1)
    A_full = A_full - Pf[..., :, None] * Pf.conj()[..., None, :]
    Ax = (A_full @ x[..., None])[..., 0]
    r = torch.view_as_real(s).flatten(-2)
    torch.testing.assert_close((A_r @ r[..., None])[..., 0], torch.view_as_real(Ax[..., :3]).flatten(-2))
    torch.testing.assert_close((C_r * r).sum(-1), (torch.cat([C, C.conj()], -1) * x).sum(-1).real)
    torch.testing.assert_close(B_r, torch.view_as_real(B).flatten(-2))


def test_bilinear_diagonal_and_definition():
    a = torch.tensor([-0.5, -2.0, -7.0], dtype=F64)
    dt = torch.tensor([0.1, 0.01], dtype=F64)
    Abar, Bbar = bilinear(torch.diag(a), torch.ones(3, dtype=F64), dt)
    want = (1 + dt[:, None] * a / 2) / (1 - dt[:, None] * a / 2)
    torch.testing.assert_close(torch.diagonal(Abar, dim1=-2, dim2=-1), want)
    torch.testing.assert_close(Bbar, dt[:, None] / (1 - dt[:, None] * a / 2))
    A = torch.randn(2, 4, 4, dtype=F64, generator=_gen(0))
    B = torch.randn(2, 4, dtype=F64, generator=_gen(1))
    Abar, Bbar = bilinear(A, B, dt)
    inv = torch.linalg.inv(torch.eye(4, dtype=F64) - dt[:, None, None] / 2 * A)
    torch.testing.assert_close(Abar, inv @ (torch.eye(4, dtype=F64) + dt[:, None, None] / 2 * A))
    torch.testing.assert_close(Bbar, (inv @ (dt[:, None] * B)[..., None])[..., 0])


# ----------------------------------------------------------------------------- dense (Krylov) kernels


def test_krylov_columns_are_powers():
    Abar, Bbar, _ = _dense_system()
    X, An = krylov(Abar, Bbar, 8)
    for j in range(8):
        torch.testing.assert_close(X[..., j], (torch.linalg.matrix_power(Abar, j) @ Bbar[..., None])[..., 0])
    torch.testing.assert_close(An, torch.linalg.matrix_power(Abar, 8))
    with pytest.raises(ValueError, match="power of two"):
        krylov(Abar, Bbar, 6)


@pytest.mark.parametrize("T", [1, 2, 3, 5, 16, 17, 100])
def test_krylov_kernel_matches_naive_outputs_and_grads(T):
    Abar, Bbar, C = (t.requires_grad_() for t in _dense_system(seed=T))
    K, K_ref = krylov_kernel(Abar, Bbar, C, T), krylov_kernel_naive(Abar, Bbar, C, T)
    torch.testing.assert_close(K, K_ref, rtol=1e-10, atol=1e-12)
    w = torch.randn(K.shape, dtype=F64, generator=_gen(T))
    g, g_ref = (torch.autograd.grad((k * w).sum(), (Abar, Bbar, C), materialize_grads=True) for k in (K, K_ref))
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("T", [1, 2, 7, 16, 33])
@pytest.mark.parametrize("carried", [False, True])
def test_dense_ssm_matches_recurrence_outputs_state_and_grads(T, carried):
    Abar, Bbar, C = (t.requires_grad_() for t in _dense_system(seed=T))
    u = torch.randn(2, 3, T, dtype=F64, generator=_gen(1), requires_grad=True)
    s0 = torch.randn(2, 3, 6, dtype=F64, generator=_gen(2), requires_grad=True) if carried else None
    blocks = ssm_blocks(Abar, Bbar, C, T, carry=carried)
    y, x = dense_ssm(blocks, u, blocks.K, s0)
    y_ref, x_ref = ssm_recurrence_naive(Abar, Bbar, C, u, s0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(x, x_ref, rtol=1e-10, atol=1e-11)
    # the convolutional view: y = K * u (+ the carried state's response)
    y_conv = causal_conv_naive(u, krylov_kernel_naive(Abar, Bbar, C, T))
    if not carried:
        torch.testing.assert_close(y, y_conv, rtol=1e-10, atol=1e-11)
    inputs = (Abar, Bbar, C, u) + ((s0,) if carried else ())
    wy, wx = torch.randn(y.shape, dtype=F64, generator=_gen(3)), torch.randn(x.shape, dtype=F64, generator=_gen(4))
    g, g_ref = (torch.autograd.grad((a * wy).sum() + (b * wx).sum(), inputs, materialize_grads=True)
                for a, b in ((y, x), (y_ref, x_ref)))
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_dense_ssm_uses_a_given_kernel():
    Abar, Bbar, C = _dense_system()
    u = torch.randn(2, 3, 9, dtype=F64, generator=_gen(1))
    K = torch.randn(3, 12, dtype=F64, generator=_gen(2))  # any kernel, longer than T: truncated
    blocks = ssm_blocks(Abar, Bbar, None, 9)
    assert blocks.K is None and blocks.A_T is None
    y, x = dense_ssm(blocks, u, K)
    torch.testing.assert_close(y, causal_conv_naive(u, K[:, :9]))
    torch.testing.assert_close(x, ssm_recurrence_naive(Abar, Bbar, C, u)[1])
    with pytest.raises(ValueError, match="carry=True"):
        dense_ssm(blocks, u, K, torch.zeros(2, 3, 6, dtype=F64))
    with pytest.raises(ValueError, match="T=9"):
        dense_ssm(blocks, u[..., :8], K)


def test_blocks_built_in_float64_then_cast_keep_float32_accuracy():
    """The mixers' recipe: dense powers in float64, cast to float32 (float32 squarings lose ~1e-4 by T = 4096)."""
    A, B = hippo_legs(16)
    dt = torch.tensor([1e-3, 1e-1], dtype=F64)
    C = torch.randn(2, 16, dtype=F64, generator=_gen(0))
    Abar, Bbar = bilinear(A, B, dt)
    u = torch.randn(1, 2, 4096, dtype=F64, generator=_gen(1))
    s0 = torch.randn(1, 2, 16, dtype=F64, generator=_gen(2))
    blocks = ssm_blocks(Abar, Bbar, C, 4096, carry=True)
    y, x = dense_ssm(blocks, u, blocks.K, s0)
    cast = blocks.to(torch.float32)
    assert cast.right.dtype == cast.folds[0].dtype == cast.A_T.dtype == torch.float32 and cast.T == 4096
    y32, x32 = dense_ssm(cast, u.float(), cast.K, s0.float())
    torch.testing.assert_close(y32.double(), y, rtol=0, atol=1e-6 * y.abs().max().item())  # float32 powers: 4e-6
    torch.testing.assert_close(x32.double(), x, rtol=0, atol=1e-6 * x.abs().max().item())


# ----------------------------------------------------------------------------- S4's Cauchy kernel


def test_cauchy_matches_explicit_sum():
    g = _gen(0)
    v = torch.randn(2, 3, 4, dtype=C128, generator=g)
    Lam = torch.randn(2, 4, dtype=C128, generator=g)
    a, b = torch.randn(2, 5, dtype=C128, generator=g), torch.randn(5, dtype=C128, generator=g)
    want = torch.zeros(2, 3, 5, dtype=C128)
    for n in range(4):
        want += v[..., n, None] / (a[:, None] - Lam[:, n, None, None] * b)
        want += v[..., n, None].conj() / (a[:, None] - Lam[:, n, None, None].conj() * b)
    torch.testing.assert_close(cauchy(v, a, b, Lam), want)


def test_roots_of_unity_include_nyquist_without_poles():
    z = roots_of_unity(8)
    torch.testing.assert_close(z, torch.exp(-2j * math.pi * torch.arange(5, dtype=F64) / 8))
    Lambda, P, B, Ct, dt = _dplr_system()
    assert torch.isfinite(dplr_kernel(Lambda, P, B, Ct, dt, 8)).all()  # z = -1 is a node


@pytest.mark.parametrize("L", [1, 2, 3, 8, 33, 64])
def test_dplr_kernel_matches_dense_powers(L):
    """S4's Cauchy + Woodbury kernel == C Abar^j Bbar of the same (Lambda, P, B, C~, dt), dense and naive."""
    params = _dplr_system(seed=L)
    torch.testing.assert_close(dplr_kernel(*params, L), _dplr_reference(*params, L), rtol=1e-9, atol=1e-11)


def test_dplr_kernel_gradients_match_dense_powers():
    Lambda, P, B, Ct, dt = _dplr_system(H=2, N=6)
    leaves = [torch.view_as_real(t).clone().requires_grad_() for t in (Lambda, P, B, Ct)]
    log_dt = dt.log().requires_grad_()
    w = torch.randn(2, 16, dtype=F64, generator=_gen(5))

    def grads(fn):
        K = fn(*(torch.view_as_complex(t) for t in leaves), log_dt.exp(), 16)
        return torch.autograd.grad((K * w).sum(), [*leaves, log_dt])

    for a, b in zip(grads(dplr_kernel), grads(_dplr_reference), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_dplr_kernel_float32_close_to_float64():
    """The Woodbury term in complex64 at the LegS init, N = 64, a long kernel: no cancellation blow-up."""
    nplr = legs_nplr(64)
    H = 4
    Lambda, P, B = (t.repeat(H, 1) for t in (nplr.Lambda, nplr.P, nplr.B))
    Ct = torch.randn(H, 32, dtype=C128, generator=_gen(0)) * math.sqrt(0.5)
    dt = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), H, dtype=F64))
    K = dplr_kernel(Lambda, P, B, Ct, dt, 4096)
    K32 = dplr_kernel(*(t.to(torch.complex64) for t in (Lambda, P, B, Ct)), dt.float(), 4096)
    assert K32.dtype == torch.float32
    torch.testing.assert_close(K32.double(), K, rtol=0, atol=1e-5 * K.abs().max().item())
