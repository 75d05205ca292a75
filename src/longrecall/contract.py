"""The contract checks every registered mixer must pass (DESIGN section 10).

Used by ``tests/test_contract.py`` (over the whole registry) and by ``longrecall check MIXER``.
Each check takes a factory that builds a fresh mixer and raises ``ContractError`` with a message
saying what differed and by how much.  Checks run in float64 so a real mismatch between a parallel
form and its recurrence is never hidden by float32 rounding.

Known gaps (a check a mechanism cannot pass by construction) are listed in ``KNOWN_GAPS`` with the
reason; nothing is skipped silently.  A gap keyed by a registry key holds for the mixer as the contract
builds it; a gap of one configured variant only is keyed by ``config_key(key, **kwargs)``, e.g.
``"dss(variant='softmax')"``, and holds when ``run_contract(key, **kwargs)`` runs it (arguments left at
the constructor's defaults or at ``contract_kwargs`` do not count).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .protocol import Mixer, state_leaves, state_map, state_nbytes
from .registry import MIXERS

DTYPE = torch.float64
ATOL, RTOL = 1e-8, 1e-6

# (mixer key or configured variant, check name) -> why the mechanism cannot pass that check by construction.
_DSS_PER_CALL = "DSS-softmax normalises the kernel over the positions 0..T-1 of each call (softmax_length=None)"
KNOWN_GAPS: dict[tuple[str, str], str] = {
    ("dss(variant='softmax')", "parallel_equals_step"):
        f"{_DSS_PER_CALL}, a step over its one token (Z(1) = 1): outputs differ, states agree",
    ("dss(variant='softmax')", "chunked_carry"):
        f"{_DSS_PER_CALL}: each chunk uses its own length's normaliser; outputs differ, states agree",
    ("dss(variant='softmax')", "gradients"):
        f"{_DSS_PER_CALL}, so the step loop computes other outputs and hence other gradients",
    ("compressive(compression='conv')", "gradients"):
        "the compressed memory is stop-gradient (as in the paper): the conv f_c learns only from "
        "reconstruction_loss, never from the outputs; tests/mixers/test_compressive.py checks the gradients",
}


class ContractError(AssertionError):
    pass


@dataclass
class CheckResult:
    mixer: str
    check: str
    passed: bool | None  # None: a known gap, not run
    message: str
    seconds: float


# ----------------------------------------------------------------------------- helpers


def config_key(name: str, **kwargs) -> str:
    """How ``KNOWN_GAPS`` and the results name a mixer built with ``kwargs``: ``"dss"``, ``"dss(variant='softmax')"``
    (keyword arguments sorted, values as ``repr``)."""
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in sorted(kwargs.items()))})" if kwargs else name


def _configured(name: str, overrides: dict) -> str:
    """``config_key`` of the overrides that change the instance ``build(name)`` makes."""
    cls = MIXERS.get(name)
    params = inspect.signature(cls).parameters
    base = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    base.update(getattr(cls, "contract_kwargs", {}))
    return config_key(name, **{k: v for k, v in overrides.items()
                               if k not in base or type(v) is not type(base[k]) or v != base[k]})


def build(name: str, d_model: int = 16, **overrides) -> Mixer:
    """A small float64 instance of a registered mixer with its ``contract_kwargs`` applied."""
    cls = MIXERS.get(name)
    kwargs = {**getattr(cls, "contract_kwargs", {}), **overrides}
    return cls(d_model, **kwargs).to(DTYPE)


def _inputs(mixer: Mixer, batch: int, T: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, T, mixer.d_model, generator=g, dtype=DTYPE)


def assert_close(actual, expected, what: str, atol: float = ATOL, rtol: float = RTOL) -> None:
    """Tensors or states equal within tolerance (integer leaves exactly)."""
    a, e = state_leaves(actual), state_leaves(expected)
    if len(a) != len(e):
        raise ContractError(f"{what}: {len(a)} tensors vs {len(e)} expected")
    for i, (x, y) in enumerate(zip(a, e, strict=True)):
        label = f"{what}[{i}]" if len(a) > 1 else what
        if x.shape != y.shape:
            raise ContractError(f"{label}: shape {tuple(x.shape)} vs expected {tuple(y.shape)}")
        if x.is_floating_point() or x.is_complex():
            if not torch.allclose(x, y, atol=atol, rtol=rtol):
                diff = (x - y).abs().max().item()
                raise ContractError(f"{label}: max abs difference {diff:.3g} (atol {atol}, rtol {rtol})")
        elif not torch.equal(x, y):
            raise ContractError(f"{label}: integer tensors differ in {(x != y).sum().item()} places")


def _random_state(mixer: Mixer, batch: int, seed: int):
    """A nonzero state reached by reading a few random tokens (tests carried state, not just zeros)."""
    with torch.no_grad():
        _, state = mixer.step_loop(_inputs(mixer, batch, 5, seed + 99), mixer.init_state(batch, dtype=DTYPE))
    return state


# ----------------------------------------------------------------------------- the checks


def check_parallel_equals_step(make: Callable[[], Mixer], T: int = 13) -> None:
    """forward(x) == step loop, outputs and final state, from the initial and from a carried state."""
    mixer = make()
    x = _inputs(mixer, 2, T, 0)
    with torch.no_grad():
        for label, state in (("initial", None), ("carried", _random_state(mixer, 2, 0))):
            start = state if state is not None else mixer.init_state(2, dtype=DTYPE)
            y_par, s_par = mixer(x, state)
            y_seq, s_seq = mixer.step_loop(x, start)
            assert_close(y_par, y_seq, f"outputs from the {label} state")
            assert_close(s_par, s_seq, f"final state from the {label} state")


def check_chunked_carry(make: Callable[[], Mixer], T: int = 13) -> None:
    """forward(x[:, :k]) then forward(x[:, k:], state) == forward(x), for k in {1, T//2, T-1}."""
    mixer = make()
    x = _inputs(mixer, 2, T, 1)
    with torch.no_grad():
        y_full, s_full = mixer(x)
        for k in sorted({1, T // 2, T - 1}):
            y1, s1 = mixer(x[:, :k])
            y2, s2 = mixer(x[:, k:], s1)
            assert_close(torch.cat([y1, y2], 1), y_full, f"outputs split at {k}")
            assert_close(s2, s_full, f"final state split at {k}")


def check_causality(make: Callable[[], Mixer], T: int = 13) -> None:
    """Changing token t changes no output before t."""
    mixer = make()
    x = _inputs(mixer, 2, T, 2)
    with torch.no_grad():
        y, _ = mixer(x)
        for t in (0, T // 2, T - 1):
            x2 = x.clone()
            x2[:, t:] += torch.randn(x2[:, t:].shape, generator=torch.Generator().manual_seed(t), dtype=DTYPE)
            y2, _ = mixer(x2)
            assert_close(y2[:, :t], y[:, :t], f"outputs before position {t} after changing position {t}")
            if t < T and torch.allclose(y2[:, t:], y[:, t:]):
                raise ContractError(f"outputs from position {t} on ignore a change at position {t}")


def check_batch_independence(make: Callable[[], Mixer], T: int = 11) -> None:
    """Each sequence's outputs and state are the same alone as in a batch."""
    mixer = make()
    x = _inputs(mixer, 3, T, 3)
    with torch.no_grad():
        y, s = mixer(x)
        for i in range(3):
            yi, si = mixer(x[i : i + 1])
            assert_close(yi, y[i : i + 1], f"outputs of sequence {i} alone vs in a batch")
            assert_close(si, state_map(lambda t, i=i: t[i : i + 1], s), f"state of sequence {i} alone vs in a batch")


def check_no_state_mutation(make: Callable[[], Mixer], T: int = 7) -> None:
    """step and forward leave the state they are given untouched."""
    mixer = make()
    x = _inputs(mixer, 2, T, 4)
    with torch.no_grad():
        state = _random_state(mixer, 2, 4)
        before = state_map(lambda t: t.clone(), state)
        mixer.step(x[:, 0], state)
        assert_close(state, before, "state after step()", atol=0, rtol=0)
        mixer(x, state)
        assert_close(state, before, "state after forward(x, state)", atol=0, rtol=0)


def check_state_bytes(make: Callable[[], Mixer]) -> None:
    """state_bytes counts the tensors exactly, holds no hidden storage, and grows as declared."""
    mixer = make()
    growth = mixer.state_growth

    def measure(T: int) -> int:
        with torch.no_grad():
            _, state = mixer(_inputs(mixer, 2, T, 5))
        counted = mixer.state_bytes(state)
        if counted != state_nbytes(state):
            raise ContractError(f"state_bytes={counted} but the state's tensors hold {state_nbytes(state)} bytes")
        for leaf in state_leaves(state):
            storage = leaf.untyped_storage().nbytes()
            if storage > leaf.numel() * leaf.element_size():
                raise ContractError(
                    f"a state tensor of shape {tuple(leaf.shape)} is a view into a larger buffer "
                    f"({storage} bytes held, {leaf.numel() * leaf.element_size()} counted); clone it"
                )
        return counted

    if growth == "constant":
        sizes = {T: measure(T) for T in (1, 8, 20)}
        if len(set(sizes.values())) != 1:
            raise ContractError(f"state_growth='constant' but bytes vary with length: {sizes}")
    elif growth == "linear":
        b1, b2, b3 = measure(4), measure(8), measure(16)
        if not (b1 < b2 < b3) or (b3 - b2) != 2 * (b2 - b1):
            raise ContractError(f"state_growth='linear' but bytes at T=4, 8, 16 are {b1}, {b2}, {b3}")
    elif growth == "bounded":
        capacity = getattr(mixer, "state_capacity", None)
        if not isinstance(capacity, int) or capacity <= 0:
            raise ContractError("state_growth='bounded' mixers must expose a positive int `state_capacity` (tokens)")
        at_cap, beyond, far = measure(capacity), measure(capacity + 3), measure(2 * capacity + 5)
        if not (at_cap == beyond == far):
            raise ContractError(
                f"state_growth='bounded' (capacity {capacity} tokens) but bytes keep growing: "
                f"{at_cap}, {beyond}, {far} at T={capacity}, {capacity + 3}, {2 * capacity + 5}"
            )
        if capacity > 1 and measure(1) > at_cap:
            raise ContractError("bounded state is larger after 1 token than at capacity")
    else:
        raise ContractError(f"unknown state_growth {growth!r}")


def check_gradients(make: Callable[[], Mixer], T: int = 9) -> None:
    """Gradients reach every parameter, and the parallel form's gradients equal the step loop's."""
    mixer = make()
    x = _inputs(mixer, 2, T, 6).requires_grad_(True)
    weight = torch.randn(2, T, mixer.d_model, generator=torch.Generator().manual_seed(7), dtype=DTYPE)
    params = [p for p in mixer.parameters() if p.requires_grad]
    names = [n for n, p in mixer.named_parameters() if p.requires_grad]

    y_par, _ = mixer(x)
    g_par = torch.autograd.grad((y_par * weight).sum(), [x, *params], allow_unused=True)
    y_seq, _ = mixer.step_loop(x, mixer.init_state(2, dtype=DTYPE))
    g_seq = torch.autograd.grad((y_seq * weight).sum(), [x, *params], allow_unused=True)
    for name, gp, gs in zip(["input"] + names, g_par, g_seq, strict=True):
        if gp is None or not torch.isfinite(gp).all() or gp.abs().max() == 0:
            raise ContractError(f"no (finite, nonzero) gradient reaches {name!r} through forward()")
        if gs is None:
            raise ContractError(f"no gradient reaches {name!r} through step()")
        assert_close(gp, gs, f"gradient of {name!r}, forward() vs step loop", atol=1e-7, rtol=1e-5)


def check_bad_input(make: Callable[[], Mixer]) -> None:
    """Wrong rank or width fails with a ValueError naming the expected shape."""
    mixer = make()
    D = mixer.d_model
    bad = {
        "forward, 2-D input": lambda: mixer(torch.randn(2, D, dtype=DTYPE)),
        "forward, wrong width": lambda: mixer(torch.randn(2, 3, D + 1, dtype=DTYPE)),
        "step, 3-D input": lambda: mixer.step(torch.randn(2, 1, D, dtype=DTYPE), mixer.init_state(2, dtype=DTYPE)),
        "step, wrong width": lambda: mixer.step(torch.randn(2, D + 1, dtype=DTYPE), mixer.init_state(2, dtype=DTYPE)),
    }
    for label, call in bad.items():
        try:
            call()
        except ValueError as error:
            if "x" not in str(error):
                raise ContractError(f"{label}: the error does not name the argument: {error}") from error
        else:
            raise ContractError(f"{label}: no ValueError raised")


CHECKS: dict[str, Callable] = {
    "parallel_equals_step": check_parallel_equals_step,
    "chunked_carry": check_chunked_carry,
    "causality": check_causality,
    "batch_independence": check_batch_independence,
    "no_state_mutation": check_no_state_mutation,
    "state_bytes": check_state_bytes,
    "gradients": check_gradients,
    "bad_input": check_bad_input,
}


def run_contract(name: str, d_model: int = 16, checks: list[str] | None = None, **overrides) -> list[CheckResult]:
    """Run the contract checks on one registered mixer, built with ``overrides``; never raises for a failing check.

    The results name the mixer ``config_key(name, **overrides)`` (defaults dropped), whose ``KNOWN_GAPS`` are
    reported as known gaps (``passed=None``), not run.
    """
    label = _configured(name, overrides)  # unknown names fail here with the "did you mean" message
    results = []
    for check in checks or list(CHECKS):
        if check not in CHECKS:
            raise KeyError(f"unknown check {check!r}; available: {', '.join(CHECKS)}")
        if (label, check) in KNOWN_GAPS:
            results.append(CheckResult(label, check, None, f"known gap: {KNOWN_GAPS[(label, check)]}", 0.0))
            continue
        torch.manual_seed(0)
        start = time.perf_counter()
        try:
            CHECKS[check](lambda: build(name, d_model, **overrides))
            results.append(CheckResult(label, check, True, "ok", time.perf_counter() - start))
        except Exception as error:  # report every failure, including crashes, as a failed check
            message = f"{type(error).__name__}: {error}" if not isinstance(error, ContractError) else str(error)
            results.append(CheckResult(label, check, False, message, time.perf_counter() - start))
    return results
