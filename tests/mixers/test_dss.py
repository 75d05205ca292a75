"""DSS: init as the paper, kernel == complex-exp reference, FFT == step loop == direct convolution, softmax's gaps."""

import copy
import math

import pytest
import torch

from longrecall.contract import CHECKS, KNOWN_GAPS, ContractError, build, run_contract
from longrecall.mixers.dss import DSS, DSSState
from longrecall.ops.conv import causal_conv_naive
from longrecall.ops.ssm import legs_nplr
from longrecall.registry import get_mixer

import mixer_helpers as mh
from mixer_helpers import F64, random_inputs, seeded

CONFIGS = {"exp": {}, "softmax": {"variant": "softmax"}, "softmax_L": {"variant": "softmax", "softmax_length": 12}}
RECURRENT = ["exp", "softmax_L"]  # the configurations with a length-free recurrent form
SOFTMAX_GAPS = {"parallel_equals_step", "chunked_carry", "gradients"}  # the per-call normaliser's, by construction
CASES = [("exp", False), ("softmax", False), ("softmax", True), ("softmax_L", False), ("softmax_L", True)]  # grow?


def _model(config="exp", d_model=5, d_state=8, seed=0, grow=False, **kw):
    m = seeded(DSS, d_model, seed=seed, d_state=d_state, **CONFIGS[config], **kw)
    with torch.no_grad():
        m.log_dt.uniform_(math.log(1e-3), math.log(0.5), generator=torch.Generator().manual_seed(seed))
        if grow:  # softmax allows Re Lambda > 0: the paper's reason for it
            m.Lambda_re[::2] = 0.3
    return m


def _legs_normal_eigenvalues(N):
    """Eigenvalues of HiPPO-LegS's normal part A + P P^T, P_n = sqrt(n + 1/2), by a nonsymmetric eigvals."""
    n = torch.arange(N, dtype=F64)
    r = torch.sqrt(2 * n + 1)
    A = -torch.where(n[:, None] > n[None, :], torch.outer(r, r), torch.diag(n + 1))  # HiPPO-LegS
    P = torch.sqrt(n + 0.5)
    return torch.linalg.eigvals(A + torch.outer(P, P))  # (N,) complex


def _x(B, T, D, seed=2, dtype=F64):
    return random_inputs(B, T, D, dtype=dtype, seed=seed)


def _random_state(m, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return DSSState(torch.randn(m.init_state(B).ssm.shape, generator=g, dtype=F64))


def _disc(m):
    lam = torch.complex(m.Lambda_re if m.variant == "softmax" else -torch.exp(m.Lambda_log_neg_re), m.Lambda_im)
    return lam, torch.exp(m.log_dt)[:, None] * lam, torch.view_as_complex(m.W)  # (M,), (H, M), (H, M)


def _reference_kernel(m, T, L=None):
    """Proposition 1 of the paper with complex exp, the obvious way; softmax over 0..L-1, shifted by its max."""
    lam, dtl, w = _disc(m)
    P = dtl[..., None] * torch.arange(T, dtype=F64)  # (H, M, T)
    if m.variant == "exp":
        return torch.einsum("hm,hmt->ht", w / lam * (torch.exp(dtl) - 1), torch.exp(P)).real
    L = L or m.softmax_length or T
    shift = (L - 1) * dtl.real.clamp(min=0)[..., None]  # (H, M, 1)
    Z = torch.exp(dtl[..., None] * torch.arange(L, dtype=F64) - shift).sum(-1, keepdim=True)
    return torch.einsum("hm,hmt->ht", w / lam, torch.exp(P - shift) / Z).real


def _readout(m, T):
    """v with y_k = Re(sum_n v_n s_k,n) + D u_k: w Lambda^-1 (e^{Lambda dt} - 1), or w Lambda^-1 / Z(L)."""
    lam, dtl, w = _disc(m)
    if m.variant == "exp":
        return w / lam * (torch.exp(dtl) - 1)
    L = m.softmax_length or T
    return w / lam / torch.exp(dtl[..., None] * torch.arange(L, dtype=F64)).sum(-1)


def _reference_forward(m, x, s0=None):
    """y = direct causal convolution with the reference kernel + D u + the carried state's term; state by sums."""
    B, T, _ = x.shape
    lam, dtl, w = _disc(m)
    v = _readout(m, T)
    u = x.transpose(1, 2)  # (B, H, T)
    y = causal_conv_naive(u, _reference_kernel(m, T)) + m.D[:, None] * u
    E = torch.exp(dtl[..., None] * torch.arange(T, dtype=F64))  # (H, M, T): e^{k Lambda dt}
    s = torch.einsum("hmt,bht->bhm", E.flip(-1), u.to(E.dtype))  # sum_j e^{(T-1-j) Lambda dt} u_j
    if s0 is not None:
        s0c = torch.view_as_complex(s0.ssm)
        y = y + torch.einsum("hm,bhm,hmt->bht", v * torch.exp(dtl), s0c, E).real
        s = s + torch.exp(T * dtl) * s0c
    return m._output(y.transpose(1, 2)), DSSState(torch.view_as_real(s))


def test_registered_and_attributes():
    assert get_mixer("dss") is DSS and DSS.state_growth == "constant"
    m = DSS(4, d_state=6)
    assert m.variant == "exp" and m.softmax_length is None
    assert {n for n, _ in m.named_parameters()} >= {"log_dt", "Lambda_log_neg_re", "Lambda_im", "W", "D"}
    assert {n for n, _ in DSS(4, variant="softmax").named_parameters()} >= {"Lambda_re", "Lambda_im", "W"}
    assert m.state_bytes(m.init_state(3)) == 3 * 4 * 6 * 4  # H * N * 4 bytes per sequence
    assert not [k for k in KNOWN_GAPS if k[0] == "dss"]  # the default passes the whole contract


@pytest.mark.parametrize("N", [8, 64])
def test_hippo_eigenvalues_are_the_normal_part_of_legs(N):
    ev = _legs_normal_eigenvalues(N)
    torch.testing.assert_close(ev.real, torch.full((N,), -0.5, dtype=F64), rtol=0, atol=1e-9)
    want = ev.imag[ev.imag > 0].sort().values
    got = -legs_nplr(N).Lambda.imag.flip(0)  # the init's source, in float64
    assert got.shape == (N // 2,) and (got > 0).all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(DSS(2, d_state=N).Lambda_im.double(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("variant", ["exp", "softmax"])
def test_init_follows_the_paper(variant):
    torch.manual_seed(0)
    m = DSS(512, d_state=16, variant=variant)
    lam = m.eigenvalues().detach().to(torch.complex128)
    assert lam.shape == (8,)  # N/2 modes, shared by the channels
    torch.testing.assert_close(lam.real, torch.full((8,), -0.5, dtype=F64), rtol=0, atol=1e-7)
    ev = _legs_normal_eigenvalues(16)
    torch.testing.assert_close(lam.imag, ev.imag[ev.imag > 0].sort().values, rtol=1e-6, atol=0)
    lo, hi = math.log(1e-3), math.log(1e-1)
    assert lo <= m.log_dt.min() < lo + 0.2 and hi - 0.2 < m.log_dt.max() <= hi
    w = m.W.detach()
    assert w.shape == (512, 8, 2) and abs(w.mean()) < 0.05 and abs(w.var() - 0.5) < 0.05  # complex normal
    assert all(getattr(p, "_no_weight_decay", False) for p in m._kernel_params()[:3])


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("T", [1, 10, 37])
def test_kernel_equals_complex_exp_reference(config, T):
    m = _model(config, d_state=16)
    with torch.no_grad():
        torch.testing.assert_close(m.kernel(T), _reference_kernel(m, T), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("config", ["softmax", "softmax_L"])
def test_softmax_kernel_with_growing_modes(config):
    m = _model(config, d_state=16, grow=True)
    for T in (1, 12, 30):
        with torch.no_grad():
            torch.testing.assert_close(m.kernel(T), _reference_kernel(m, T), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("config", RECURRENT)
@pytest.mark.parametrize("T", [1, 2, 7, 16, 50])
def test_fft_forward_equals_step_loop(config, T):
    m = _model(config)
    x, s0 = _x(3, T, 5), _random_state(m, 3)
    for start in (s0, None):
        mh.assert_parallel_equals_step_loop(m, x, start, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("config,grow", CASES)
@pytest.mark.parametrize("T", [1, 9, 40])
def test_fft_forward_equals_direct_convolution(config, grow, T):
    m = _model(config, grow=grow)
    x, s0 = _x(2, T, 5), _random_state(m, 2)
    with torch.no_grad():
        for start in (s0, None):
            y, s = m(x, start)
            y_ref, s_ref = _reference_forward(m, x, start)
            torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(s.ssm, s_ref.ssm, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("config,grow", CASES)
def test_gradients_fft_equal_direct_convolution_and_step_loop(config, grow):
    m = _model(config, grow=grow)
    refs = [lambda a, b: _reference_forward(m, a, b)] + ([m.step_loop] if config in RECURRENT else [])
    g_par = mh.assert_grads_match(m, _x(2, 13, 5), _random_state(m, 2), refs=refs, rtol=1e-9, atol=1e-10)
    assert set(g_par) == {n for n, _ in m.named_parameters()} | {"x", "s0"}


def test_softmax_per_call_normaliser_carries_the_state_but_not_the_outputs():
    m = _model("softmax")
    x, s0 = _x(2, 11, 5), _random_state(m, 2)
    (y, s), (y_rec, s_rec) = m(x, s0), m.step_loop(x, s0)
    torch.testing.assert_close(s.ssm, s_rec.ssm, rtol=1e-10, atol=1e-10)  # the unnormalised modes agree
    assert not torch.allclose(y, y_rec)  # step = a call of one token, normalised by Z(1) = 1
    y1, _ = m(x[:, :1], s0)
    torch.testing.assert_close(y1, y_rec[:, :1], rtol=1e-10, atol=1e-10)
    fixed = copy.deepcopy(m)
    fixed.softmax_length = 11  # the paper's kernel at T = L, now with a recurrent form
    torch.testing.assert_close(fixed(x, s0)[0], y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fixed.step_loop(x, s0)[0], y, rtol=1e-10, atol=1e-10)


def test_softmax_contract_gaps_are_exactly_the_known_ones():
    assert {check for key, check in KNOWN_GAPS if key == "dss(variant='softmax')"} == SOFTMAX_GAPS
    results = run_contract("dss", variant="softmax")
    assert {r.check for r in results if r.passed is None} == SOFTMAX_GAPS  # reported as known gaps, not run
    assert all(r.passed for r in results if r.check not in SOFTMAX_GAPS)  # and the rest pass
    assert all(r.mixer == "dss(variant='softmax')" for r in results)
    for check in SOFTMAX_GAPS:  # each gap is real: the check fails when run
        with pytest.raises(ContractError):
            CHECKS[check](lambda: build("dss", variant="softmax"))
    assert all(r.passed for r in run_contract("dss", variant="softmax", softmax_length=13))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_kernel_long_finite_and_decaying(config):
    T = 65_536
    m = _model(config, d_model=2, d_state=8)
    with torch.no_grad():
        m.log_dt.fill_(math.log(1e-3))  # the slowest decay the init allows: e^{-T dt / 2} = e^{-32.8} at the end
        K = m.kernel(T)
        K32 = copy.deepcopy(m).float().kernel(T)
        ref = _reference_kernel(m, T)
        _, dtl, _ = _disc(m)
        bound = torch.einsum("hm,hmt->ht", _readout(m, T).abs(), torch.exp(dtl.real[..., None] * torch.arange(T)))
    assert torch.isfinite(K).all() and torch.isfinite(K32).all()
    torch.testing.assert_close(K, ref, rtol=0, atol=1e-12 * ref.abs().max())
    torch.testing.assert_close(K32.double(), ref, rtol=0, atol=1e-4 * ref.abs().max())
    head, tail = K[:, :1024].abs().amax(-1), K[:, -1024:].abs().amax(-1)  # (H,)
    assert (tail < 1e-12 * head).all()
    assert (K.abs() <= bound * (1 + 1e-9)).all()  # |K_k| <= sum_n |v_n| e^{k Re(Lambda_n) dt}: every mode decays


def test_softmax_long_kernel_with_a_growing_mode_is_finite():
    T = 65_536
    m = _model("softmax", d_model=2, d_state=8, grow=True)
    with torch.no_grad():
        m.log_dt.fill_(math.log(1e-2))  # e^{T Re(Lambda) dt} = e^{197}: overflows float32 without the paper's shift
        ref = _reference_kernel(m, T)
        K32 = copy.deepcopy(m).float().kernel(T)
    assert torch.isfinite(K32).all() and torch.isfinite(ref).all()
    torch.testing.assert_close(K32.double(), ref, rtol=0, atol=1e-4 * ref.abs().max())
    assert (ref[:, -1024:].abs().amax(-1) > 1e6 * ref[:, T // 2 : T // 2 + 1024].abs().amax(-1)).all()


def test_float32_long_sequence_parity():
    torch.manual_seed(0)
    m = DSS(8, d_state=16)
    x = _x(1, 700, 8, dtype=torch.float32)
    mh.assert_parallel_equals_step_loop(m, x, DSSState(torch.randn(m.init_state(1).ssm.shape)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_kernel_cache_per_length(config):
    m = _model(config).eval()
    fresh = copy.deepcopy(m)
    fresh.kernel_cache = False
    x, s0 = _x(2, 17, 5), _random_state(m, 2)
    with torch.no_grad():
        for T in (17, 6, 17):  # the softmax's normaliser is per length: a kernel cached for 6 must not serve 17
            torch.testing.assert_close(m(x[:, :T], s0)[0], fresh(x[:, :T], s0)[0], rtol=0, atol=0)
        assert {key for key in m._cache_kernels if isinstance(key, int)} == {6, 17}  # one plan per length
        m.log_dt.data.add_(0.3)
        fresh.log_dt.data.add_(0.3)
        torch.testing.assert_close(m(x, s0)[0], fresh(x, s0)[0], rtol=0, atol=0)
        torch.testing.assert_close(m.step(x[:, 0], s0)[0], fresh.step(x[:, 0], s0)[0], rtol=0, atol=0)


def test_bad_arguments():
    mh.assert_bad_arguments(DSS, [({"variant": "legs"}, "variant.*'exp'.*'softmax'"),
                                  ({"softmax_length": 8}, "softmax_length"),  # exp has no normaliser
                                  ({"variant": "softmax", "softmax_length": 0}, "softmax_length"),
                                  ({"d_state": 7}, "d_state"), ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min"),
                                  ({"d_model": 0}, "d_model")])
    m = DSS(4, d_state=4)
    mh.assert_wrong_states_rejected(m, m.init_state(3))
