"""STU: Hankel eigen-filters against a dense eigendecomposition, FFT form against the step loop and a direct
convolution (outputs, final state, gradients), the max_len limit, the initialisation."""

import numpy as np
import pytest
import torch

from longrecall.mixers.stu import STU, STUState, hankel_eigh, hankel_eigh_dense, hankel_matrix, hankel_matvec
from longrecall.ops.conv import causal_conv_naive
from longrecall.registry import get_mixer

from mixer_helpers import F64, random_inputs, seeded

D_MODEL = 5


def make(d_model=D_MODEL, *, max_len=48, num_filters=6, k_u=3, k_y=2, negative_features=True, seed=0):
    """Float64 STU with the output recurrence moved off its zero init (kept stable: spectral radius < 1)."""
    m = seeded(STU, d_model, seed=seed, max_len=max_len, num_filters=num_filters, k_u=k_u, k_y=k_y,
               negative_features=negative_features)
    if m.m_y is not None:
        with torch.no_grad():
            m.m_y.normal_(0, 0.3 / (k_y * d_model) ** 0.5)
    return m


def _random_state(m, B, t, seed=3):
    """A carried state: t random past inputs and random past outputs."""
    g = torch.Generator().manual_seed(seed)
    return STUState(torch.randn(B, t, m.d_model, generator=g, dtype=F64),
                    torch.randn(B, m.k_y, m.d_model, generator=g, dtype=F64))


def _reference(m, x, state):
    """Direct form: features by ``causal_conv_naive`` over history + x, output recurrence by companion powers."""
    z = torch.cat([state.inputs, x], 1)  # (B, N, D)
    B, N, D = z.shape
    T, t0 = x.shape[1], state.inputs.shape[1]
    u = z.transpose(1, 2)  # (B, D, N)
    m_phi = m._m_phi()
    delta = torch.zeros(B, N, D, dtype=F64)
    for k in range(m.filters.shape[1]):
        feat = causal_conv_naive(u, m.filters[:, k].expand(D, -1))  # (B, D, N)
        delta = delta + feat.transpose(1, 2) @ m_phi[k]
    for i in range(m.k_u):
        delta = delta + torch.nn.functional.pad(z, (0, 0, i, 0))[:, :N] @ m.m_u[i]
    delta = delta[:, t0:]  # (B, T, D)
    if m.k_y == 0:
        return delta, STUState(z, state.outputs)
    # s_t = [y_t, ..., y_{t-k_y+1}] (row vector), s_t = s_{t-1} A + delta_t E: y_t = sum_m delta_{t-m} A^m[:D, :D]
    ky = m.k_y
    A = torch.zeros(ky * D, ky * D, dtype=F64)
    A = A + torch.nn.functional.pad(torch.eye((ky - 1) * D, dtype=F64), (D, 0, 0, D))  # shift: slot i -> i + 1
    A = torch.cat([m.m_y.flatten(0, 1), A[:, D:]], dim=1)  # column block 0: y_t = sum_i y_{t-i} My_i
    s0 = state.outputs.flip(1).flatten(1)  # (B, k_y D): y_{-1} first
    powers = [torch.eye(ky * D, dtype=F64)]
    for _ in range(T):
        powers.append(powers[-1] @ A)
    ys = []
    for t in range(T):
        y = s0 @ powers[t + 1][:, :D]
        for mm in range(t + 1):
            y = y + delta[:, t - mm] @ powers[mm][:D, :D]
        ys.append(y)
    y = torch.stack(ys, 1)
    outputs = torch.cat([state.outputs, y], 1)[:, -ky:]
    return y, STUState(z, outputs)


# ----------------------------------------------------------------------------- the Hankel filters


def test_hankel_matrix_entries():
    L = 9
    Z = hankel_matrix(L)
    for i in range(1, L + 1):
        for j in range(1, L + 1):
            assert Z[i - 1, j - 1].item() == pytest.approx(2 / ((i + j) ** 3 - (i + j)), rel=1e-15)


@pytest.mark.parametrize("L", [1, 7, 64, 257])
def test_hankel_matvec_equals_dense_product(L):
    v = torch.randn(L, 3, generator=torch.Generator().manual_seed(L), dtype=F64)
    torch.testing.assert_close(hankel_matvec(v), hankel_matrix(L) @ v, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("L", [24, 200])
def test_dense_eigh_is_an_eigendecomposition(L):
    K = 12
    sigma, phi = hankel_eigh_dense(L, K)
    Z = hankel_matrix(L)
    torch.testing.assert_close(phi.T @ phi, torch.eye(K, dtype=F64), rtol=0, atol=1e-13)
    torch.testing.assert_close(Z @ phi, phi * sigma, rtol=0, atol=1e-15)
    want = np.sort(np.linalg.eigvalsh(Z.numpy()))[::-1][:K].copy()  # numpy's LAPACK path, independently
    torch.testing.assert_close(sigma, torch.from_numpy(want), rtol=0, atol=1e-15)
    assert (sigma[:-1] > sigma[1:]).all() and sigma[0].item() == pytest.approx(0.3603933, abs=1e-6)


@pytest.mark.parametrize("L,K", [(10, 10), (40, 24), (300, 24), (700, 16)])
def test_fast_eigh_equals_dense(L, K):
    sigma, phi = hankel_eigh(L, K)
    sigma_d, phi_d = hankel_eigh_dense(L, K)
    # every pair: orthonormal and the eigenvalue equation to float64 precision (sigma_1 = 0.36)
    torch.testing.assert_close(phi.T @ phi, torch.eye(K, dtype=F64), rtol=0, atol=1e-13)
    torch.testing.assert_close(hankel_matvec(phi), phi * sigma, rtol=0, atol=1e-15)
    torch.testing.assert_close(sigma, sigma_d, rtol=0, atol=1e-15)
    # eigenvectors agree where they are well conditioned (error ~ eps sigma_1 / gap, the same for both)
    good = sigma_d > 1e-9
    assert good.sum() >= 6
    torch.testing.assert_close(phi[:, good], phi_d[:, good], rtol=0, atol=1e-6)


def test_fast_eigh_is_deterministic_and_returns_copies():
    s1, p1 = hankel_eigh(50, 8)
    p1.zero_()
    s2, p2 = hankel_eigh(50, 8)
    assert p2.abs().sum() > 0
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)


def test_filters_at_65536():
    """Cheap by subspace iteration (about a second); a dense eigh of 65k x 65k is not, so it is not compared."""
    L, K = 65536, 24
    sigma, phi = hankel_eigh(L, K)
    assert torch.isfinite(phi).all() and torch.isfinite(sigma).all()
    assert (sigma > 0).all() and (sigma[:-1] > sigma[1:]).all()
    torch.testing.assert_close(phi.T @ phi, torch.eye(K, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(hankel_matvec(phi), phi * sigma, rtol=0, atol=1e-14)
    # the leading pair does not depend on L once L >> its support: phi_1 lives in the first ~100 lags
    s_small, p_small = hankel_eigh_dense(256, 2)
    assert sigma[0].item() == pytest.approx(s_small[0].item(), rel=1e-9)
    assert phi[256:, 0].norm() < 1e-4
    torch.testing.assert_close(phi[:256, 0], p_small[:, 0], rtol=0, atol=1e-4)
    m = STU(2, max_len=L, num_filters=K)
    assert m.filters.shape == (L, 2 * K) and torch.isfinite(m.filters).all()
    y, s = m(torch.randn(1, 5, 2))
    assert torch.isfinite(y).all() and s.inputs.shape == (1, 5, 2)


def test_filters_buffer_is_scaled_eigenvectors():
    m = seeded(STU, 3, max_len=40, num_filters=5)
    sigma, phi = hankel_eigh(40, 5)
    plus = phi * sigma ** 0.25
    sign = torch.tensor([(-1.0) ** j for j in range(40)], dtype=F64)[:, None]
    # built in float32 (the default dtype), then cast: the filters keep float32 rounding
    torch.testing.assert_close(m.filters, torch.cat([plus, plus * sign], 1).float().double(), rtol=0, atol=0)
    assert "filters" not in m.state_dict()  # recomputed at construction, not saved


# ----------------------------------------------------------------------------- the mixer


def test_registered_and_init():
    assert get_mixer("stu") is STU and STU.state_growth == "linear"
    torch.manual_seed(0)
    D = 32
    m = STU(D, max_len=64, num_filters=8)
    assert m.m_phi_plus.shape == m.m_phi_minus.shape == (8, D, D)
    assert m.m_u.shape == (3, D, D) and m.m_y.shape == (2, D, D)
    assert m.m_y.abs().max() == 0  # output recurrence starts off
    assert m.m_phi_plus.std().item() == pytest.approx(D**-0.5, rel=0.05)
    assert m.m_u.std().item() == pytest.approx((3 * D) ** -0.5, rel=0.05)
    assert not any(n == "filters" for n, _ in m.named_parameters())  # the filters are fixed
    bare = STU(4, max_len=16, num_filters=4, k_u=0, k_y=0, negative_features=False)
    assert bare.m_u is None and bare.m_y is None and bare.m_phi_minus is None and bare.filters.shape == (16, 4)


CONFIGS = [dict(), dict(negative_features=False), dict(k_u=0, k_y=0), dict(k_u=1, k_y=1), dict(k_u=5, k_y=3)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("T,t0", [(1, 0), (13, 0), (9, 7), (1, 20)])
def test_fft_forward_equals_step_loop_and_direct_convolution(cfg, T, t0):
    m = make(**cfg)
    x = random_inputs(2, T, D_MODEL, seed=T)
    s0 = _random_state(m, 2, t0)
    y_par, s_par = m(x, s0)
    y_rec, s_rec = m.step_loop(x, s0)
    y_ref, s_ref = _reference(m, x, s0)
    for want_y, want_s in ((y_rec, s_rec), (y_ref, s_ref)):
        torch.testing.assert_close(y_par, want_y, rtol=1e-10, atol=1e-10)
        for a, b in zip(s_par, want_s, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert s_par.inputs.shape == (2, t0 + T, D_MODEL)


@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=str)
def test_gradients_fft_equal_step_loop_and_direct(cfg):
    m = make(**cfg)
    x = random_inputs(2, 11, D_MODEL, seed=5).requires_grad_()
    s0 = STUState(*(t.requires_grad_() for t in _random_state(m, 2, 4)))
    g = torch.Generator().manual_seed(9)
    w_y = torch.randn(2, 11, D_MODEL, generator=g, dtype=F64)
    w_s = [torch.randn(t.shape[0], t.shape[1] + (11 if i == 0 else 0), t.shape[2], generator=g, dtype=F64)
           for i, t in enumerate(s0)]

    def grads(run):
        m.zero_grad()
        y, s = run(x, s0)
        loss = (y * w_y).sum() + sum((a * w).sum() for a, w in zip(s, w_s, strict=True))
        loss.backward()
        out = {n: p.grad.clone() for n, p in m.named_parameters()}
        out["x"], out["s0.inputs"], out["s0.outputs"] = (t.grad.clone() for t in (x, *s0))
        for t in (x, *s0):
            t.grad = None
        return out

    g_par = grads(m.forward)
    assert set(g_par) == {n for n, _ in m.named_parameters()} | {"x", "s0.inputs", "s0.outputs"}
    for other in (grads(m.step_loop), grads(lambda x, s: _reference(m, x, s))):
        for name in g_par:
            torch.testing.assert_close(g_par[name], other[name], rtol=1e-9, atol=1e-10, msg=name)


def test_chunks_and_steps_interleaved_equal_whole():
    m = make()
    x = random_inputs(2, 30, D_MODEL, seed=4)
    y, s = m(x)
    ya, sa = m(x[:, :11])
    yb, sb = m.step(x[:, 11], sa)
    yc, sc = m(x[:, 12:], sb)
    torch.testing.assert_close(torch.cat([ya, yb[:, None], yc], 1), y, rtol=1e-10, atol=1e-10)
    for a, b in zip(sc, s, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_float32_parity_long_sequence():
    torch.manual_seed(0)
    m = STU(8, max_len=512, num_filters=24)
    x = random_inputs(1, 400, 8, dtype=torch.float32, seed=2)
    y_par, s_par = m(x)
    y_rec, s_rec = m.step_loop(x, m.init_state(1))
    torch.testing.assert_close(y_par, y_rec, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s_par.outputs, s_rec.outputs, rtol=1e-4, atol=1e-4)


def test_max_len_is_enforced():
    m = make(max_len=10)
    x = random_inputs(2, 10, D_MODEL)
    y, s = m(x)  # exactly max_len tokens is fine
    with pytest.raises(ValueError, match="max_len=10"):
        m(random_inputs(2, 11, D_MODEL))
    with pytest.raises(ValueError, match="max_len"):
        m.step(x[:, 0], s)
    with pytest.raises(ValueError, match="max_len"):
        m(x[:, :4], m(x[:, :7])[1])


def test_state_bytes_step_does_not_mutate():
    m = STU(6, max_len=32, num_filters=4)
    _, s = m(torch.randn(3, 7, 6))
    assert m.state_bytes(s) == 3 * (7 + 2) * 6 * 4
    before = [t.clone() for t in s]
    m.step(torch.randn(3, 6), s)
    m(torch.randn(3, 4, 6), s)
    for a, b in zip(s, before, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    y, s0 = m(torch.zeros(2, 0, 6))
    assert y.shape == (2, 0, 6) and s0.inputs.shape == (2, 0, 6) and s0.outputs.shape == (2, 2, 6)


def test_bad_arguments():
    for kwargs, name in [
        (dict(max_len=0), "max_len"),
        (dict(max_len=8, num_filters=9), "num_filters"),
        (dict(num_filters=0), "num_filters"),
        (dict(k_u=-1), "k_u"),
        (dict(k_y=1.5), "k_y"),
        (dict(negative_features=1), "negative_features"),
    ]:
        with pytest.raises(ValueError, match=name):
            STU(4, **{"max_len": 16, "num_filters": 4, **kwargs})
    m = STU(4, max_len=16, num_filters=4)
    with pytest.raises(ValueError, match="state"):
        m(torch.zeros(2, 3, 4), m.init_state(3))
    with pytest.raises(ValueError, match="state"):
        m.step(torch.zeros(2, 4), STUState(torch.zeros(2, 1, 4), torch.zeros(2, 1, 4)))
