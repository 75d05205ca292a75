"""What every mixer test builds: a model from a fixed seed, cast to float64, and seeded random inputs; and the
checks several mechanisms share: parallel form == step loop (outputs, final state, gradients), chunked carry,
FFT == direct convolution, long kernels, caches, the state left alone by step and forward, bad arguments.

Imported by its bare name (see tests/conftest.py): ``from mixer_helpers import ...`` for the builders, and
``import mixer_helpers as mh`` where a file calls several checks (``mh.assert_...``). Each test file keeps its
own ``make()``, which holds the mechanism's small defaults and moves weights off their init, and binds
``rand_x`` to its width and length: ``rand_x = rand_x_for(D_MODEL, T=13)``.
"""

import copy
import itertools

import pytest
import torch

from longrecall.ops.conv import causal_conv_naive
from longrecall.ops.ssm import ParamCache
from longrecall.protocol import state_clone, state_leaves, state_map

F64 = torch.float64


def seeded(cls, d_model: int, *, dtype=F64, seed: int = 0, **kwargs):
    """``cls(d_model, **kwargs)`` built right after ``torch.manual_seed(seed)``, then cast to ``dtype``."""
    torch.manual_seed(seed)
    return cls(d_model, **kwargs).to(dtype)


def random_inputs(batch: int, T: int, d: int, *, dtype=F64, seed: int = 1, scale: float = 1.0) -> torch.Tensor:
    """``scale`` times a (batch, T, d) standard normal from its own generator: the global seed is untouched."""
    return scale * torch.randn(batch, T, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rand_x_for(d_model: int, T: int):
    """A test file's ``rand_x(batch=2, T=T, dtype=F64, seed=1, scale=1.0, d=d_model)``: :func:`random_inputs`."""

    def rand_x(batch=2, T=T, dtype=F64, seed=1, scale=1.0, d=d_model):
        return random_inputs(batch, T, d, dtype=dtype, seed=seed, scale=scale)

    return rand_x


def random_weights(*shapes, seed: int | None = None, dtype=F64) -> list[torch.Tensor]:
    """One standard normal per shape, in order, from a generator seeded ``seed`` (None: the global RNG)."""
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for shape in shapes]


def assert_states_close(got, want, *, rtol, atol):
    """Every tensor of the state ``got`` is close to the one in its place in ``want`` (``state_leaves`` order)."""
    leaves = state_leaves(got)
    assert leaves, "a state with no tensors compares nothing"
    for a, b in zip(leaves, state_leaves(want), strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def assert_parallel_equals_step_loop(m, x, s0, *, rtol, atol):
    """``m(x, s0)`` == ``m.step_loop`` from s0 (None: ``m.init_state(B)``) in outputs and state; returns m(x, s0)."""
    y_par, s_par = m(x, s0)
    y_rec, s_rec = m.step_loop(x, m.init_state(x.shape[0]) if s0 is None else s0)
    torch.testing.assert_close(y_par, y_rec, rtol=rtol, atol=atol)
    assert_states_close(s_par, s_rec, rtol=rtol, atol=atol)
    return y_par, s_par


def weighted_grads(m, run, x, s0, weights) -> dict[str, torch.Tensor]:
    """Grads of sum(y * weights[0]) + sum(state tensor * weights[i]) by name: parameters, "x", "s0" or "s0[i]"."""
    y, s = run(x, s0)
    loss = (y * weights[0]).sum() + sum((a * w).sum() for a, w in zip(state_leaves(s), weights[1:], strict=True))
    names, params = zip(*m.named_parameters(), strict=True)
    starts = state_leaves(s0)
    start_names = ["s0"] if len(starts) == 1 else [f"s0[{i}]" for i in range(len(starts))]
    grads = torch.autograd.grad(loss, [*params, x, *starts])
    return dict(zip([*names, "x", *start_names], grads, strict=True))


def assert_grads_close(got, want, *, rtol, atol, nonzero=False):
    """The same names, each gradient of ``got`` close to ``want``'s (``nonzero``: and none of ``got``'s all zero)."""
    assert set(got) == set(want)
    for name, g in got.items():
        if nonzero:
            assert g.abs().max() > 0, name
        torch.testing.assert_close(g, want[name], rtol=rtol, atol=atol, msg=lambda text, name=name: f"{name}: {text}")


def assert_grads_match(m, x, s0, *, refs=None, seed=None, rtol, atol, nonzero=False):
    """:func:`weighted_grads` (weights drawn for y, s0) via ``m.forward`` == via each ref (default: the step loop)."""
    x = x.detach().requires_grad_()
    s0 = state_map(lambda t: t.detach().requires_grad_(), s0)
    weights = random_weights(x.shape, *(t.shape for t in state_leaves(s0)), seed=seed)
    g_par = weighted_grads(m, m.forward, x, s0, weights)
    for ref in refs or [m.step_loop]:
        assert_grads_close(g_par, weighted_grads(m, ref, x, s0, weights), rtol=rtol, atol=atol, nonzero=nonzero)
    return g_par


def run_in_chunks(m, x, cuts, s0=None):
    """``m`` over ``x`` cut at ``cuts``, the state carried from ``s0``: the joined outputs and the final state."""
    ys, s = [], s0
    for a, b in itertools.pairwise((0, *cuts, x.shape[1])):
        y, s = m(x[:, a:b], s)
        ys.append(y)
    return torch.cat(ys, 1), s


def assert_chunked_equals_whole(m, x, cuts, *, rtol, atol):
    """:func:`run_in_chunks` from no state == one call ``m(x)``: the outputs and every final state tensor."""
    y, s = m(x)
    y_chunks, s_chunks = run_in_chunks(m, x, cuts)
    torch.testing.assert_close(y_chunks, y, rtol=rtol, atol=atol)
    assert_states_close(s_chunks, s, rtol=rtol, atol=atol)


def torch_rnn_tests(make, random_state, d_model):
    """The tests GRU and LSTM share, bound by name in each file: torch's kernel == step loop, gradients, chunks."""

    @pytest.mark.parametrize("hidden_size", [None, 4, 9])
    @pytest.mark.parametrize("T", [1, 7, 33])
    def test_torch_kernel_equals_step_equations(hidden_size, T):
        m = make(hidden_size)
        x, s0 = random_inputs(3, T, d_model, seed=2), random_state(m, 3)
        assert_parallel_equals_step_loop(m, x, s0, rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("hidden_size", [None, 4])
    def test_gradients_torch_kernel_equal_step_loop(hidden_size):
        m = make(hidden_size)
        x, s0 = random_inputs(2, 11, d_model, seed=4), random_state(m, 2)
        assert_grads_match(m, x, s0, seed=5, rtol=1e-10, atol=1e-12, nonzero=True)

    @pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (torch.float32, 1e-5)])
    def test_chunked_carry_equals_one_kernel_call(dtype, tol):
        m = make(hidden_size=5).to(dtype)
        x = random_inputs(2, 64, d_model, seed=6, dtype=dtype)
        with torch.no_grad():
            h, last = m.rnn(x)  # one long call through torch's kernel, zero initial state
            y_full = m.out_proj(h)
            y, s = run_in_chunks(m, x, (1, 11, 31))
        torch.testing.assert_close(y, y_full, rtol=tol, atol=tol)
        assert_states_close(s, [t[0] for t in state_leaves(last)], rtol=tol, atol=tol)

    return (test_torch_kernel_equals_step_equations, test_gradients_torch_kernel_equal_step_loop,
            test_chunked_carry_equals_one_kernel_call)


def assert_cudnn_equals_step_loop(m, x, s0, cut):
    """CUDA, TF32 off: ``m(x, s0)`` == step loop (1e-4) == 2 chunks cut at ``cut`` (1e-5); states own memory."""
    torch.backends.cudnn.allow_tf32 = False  # compare float32 arithmetic, not TF32
    try:
        with torch.no_grad():
            y_par, s_par = m(x, s0)
            y_rec, s_rec = m.step_loop(x, s0)
            y_chunks, s_chunks = run_in_chunks(m, x, (cut,), s0)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    torch.testing.assert_close(y_par, y_rec, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y_chunks, y_par, rtol=1e-5, atol=1e-5)
    for a, b, c in zip(state_leaves(s_par), state_leaves(s_rec), state_leaves(s_chunks), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)
        assert a.untyped_storage().nbytes() == a.numel() * a.element_size()  # owns its memory


def assert_fft_equals_direct_convolution(m, x, kernel, *, rtol, atol):
    """``m(x)`` == ``m._output`` of x's direct causal convolution with ``kernel(m, T)`` (H, T), plus D u."""
    u = x.transpose(1, 2)
    y_ssm = causal_conv_naive(u, kernel(m, x.shape[1])) + m.D[:, None] * u
    torch.testing.assert_close(m(x)[0], m._output(y_ssm.transpose(1, 2)), rtol=rtol, atol=atol)


def assert_long_kernel_decays(m, T=65536):
    """``m.kernel(T)``: finite, over 1e-3 early, < 1e-2 of that at 8192-16384 and < 1e-6 at the end, as float64."""
    with torch.no_grad():
        K = m.kernel(T)
    assert K.shape == (m.d_model, T) and torch.isfinite(K).all()
    head = K[:, :1024].abs().max()
    assert head > 1e-3
    assert K[:, 8192:16384].abs().max() < 1e-2 * head
    assert K[:, -4096:].abs().max() < 1e-6 * head
    with torch.no_grad():
        K64 = copy.deepcopy(m).double().kernel(T)
    torch.testing.assert_close(K.double(), K64, rtol=0, atol=1e-5 * head.item())


def fresh_cache_copy(m):
    """A deep copy of ``m`` with an empty ``ParamCache``: the ground truth for the cached discretisation."""
    fresh = copy.deepcopy(m)
    fresh._cache = ParamCache()
    return fresh


def assert_step_and_forward_keep_state(m, s, x_step, x_seq):
    """``m.step(x_step, s)`` and ``m(x_seq, s)`` leave every tensor of the state ``s`` exactly as it was."""
    before = state_clone(s)
    m.step(x_step, s)
    m(x_seq, s)
    assert_states_close(s, before, rtol=0, atol=0)


def assert_bad_arguments(cls, table, d_model=4):
    """Each ``(kwargs, pattern)``: ``cls(d_model=d_model, **kwargs)`` raises a ValueError matching ``pattern``."""
    for kwargs, pattern in table:
        with pytest.raises(ValueError, match=pattern):
            cls(**{"d_model": d_model, **kwargs})


def assert_wrong_states_rejected(m, forward_state, step_state=None):
    """``m`` on 2 x 3 tokens with ``forward_state``, ``m.step`` with ``step_state`` (if given): ValueError "state"."""
    with pytest.raises(ValueError, match="state"):
        m(torch.zeros(2, 3, m.d_model), forward_state)
    if step_state is not None:
        with pytest.raises(ValueError, match="state"):
            m.step(torch.zeros(2, m.d_model), step_state)
