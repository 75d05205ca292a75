"""The contract suite over every registered mixer (DESIGN section 10), and proof it can fail."""

from __future__ import annotations

import ast
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn

from longrecall.contract import CHECKS, KNOWN_GAPS, ContractError, build, config_key, run_contract
from longrecall.protocol import Mixer
from longrecall.registry import MIXERS

CASES = [(name, check) for name in MIXERS.names() for check in CHECKS]


@pytest.mark.parametrize("name,check", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_contract(name, check):
    if (name, check) in KNOWN_GAPS:
        pytest.xfail(KNOWN_GAPS[(name, check)])
    (result,) = run_contract(name, checks=[check])
    assert result.passed, result.message


def _parse_key(key: str) -> tuple[str, dict]:
    """``"dss(variant='softmax')"`` -> ``("dss", {"variant": "softmax"})``; a plain registry key -> ``(key, {})``."""
    node = ast.parse(key, mode="eval").body
    if isinstance(node, ast.Name):
        return node.id, {}
    return node.func.id, {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}


def test_known_gaps_name_real_mixers_and_checks():
    for (key, check), reason in KNOWN_GAPS.items():
        name, kwargs = _parse_key(key)
        assert name in MIXERS and check in CHECKS and reason
        assert config_key(name, **kwargs) == key  # the form run_contract looks up


@pytest.mark.parametrize("key,check", [k for k in KNOWN_GAPS if "(" in k[0]])
def test_variant_gaps_are_reported_and_real(key, check):
    name, kwargs = _parse_key(key)
    (result,) = run_contract(name, checks=[check], **kwargs)
    assert result.passed is None and result.mixer == key and KNOWN_GAPS[(key, check)] in result.message
    with pytest.raises(ContractError):  # not a stale entry: the check does fail on that variant
        CHECKS[check](lambda: build(name, **kwargs))


def test_every_mixer_module_registers_a_mixer():
    import pkgutil

    import longrecall.mixers as package

    modules = {m.name for m in pkgutil.iter_modules(package.__path__)}
    assert modules == set(MIXERS.names()), "a mixer file is not imported in mixers/__init__.py (or is misnamed)"


# --------------------------------------------------------------------------- the checks can fail


class CounterState(NamedTuple):
    total: Tensor  # (B, D)


class RunningSum(Mixer):
    """y_t = W (sum_{s<=t} x_s): a correct constant-state mixer; subclasses break it on purpose."""

    state_growth = "constant"

    def __init__(self, d_model):
        super().__init__(d_model)
        self.proj = nn.Linear(d_model, d_model)

    def init_state(self, batch_size, *, device=None, dtype=None):
        return CounterState(torch.zeros(batch_size, self.d_model, device=device, dtype=dtype))

    def step(self, x, state):
        self.check_input(x, step=True)
        total = state.total + x
        return self.proj(total), CounterState(total)

    def forward(self, x, state=None):
        self.check_input(x)
        state = state or self.init_state(x.shape[0], dtype=x.dtype)
        totals = state.total[:, None] + x.cumsum(1)
        return self.proj(totals), CounterState(totals[:, -1].clone())


class Peeks(RunningSum):
    def forward(self, x, state=None):  # sees the whole sequence: not causal
        y, s = super().forward(x, state)
        return y + 0 * y + x.sum(1, keepdim=True) * 1e-3, s


class Mutates(RunningSum):
    def step(self, x, state):
        state.total.add_(x)  # writes into the caller's state
        return self.proj(state.total), CounterState(state.total.clone())


class ForgetsCarry(RunningSum):
    def forward(self, x, state=None):
        return super().forward(x, None)  # ignores the carried state


class ViewState(RunningSum):
    def forward(self, x, state=None):
        self.check_input(x)
        state = state or self.init_state(x.shape[0], dtype=x.dtype)
        totals = state.total[:, None] + x.cumsum(1)
        return self.proj(totals), CounterState(totals[:, -1])  # a view of a (B, T, D) buffer


class DeadParameter(RunningSum):
    def __init__(self, d_model):
        super().__init__(d_model)
        self.unused = nn.Parameter(torch.ones(3))


class MixesBatch(RunningSum):
    def forward(self, x, state=None):
        y, s = super().forward(x, state)
        return y + y.mean(0, keepdim=True) * 1e-3, s


@pytest.mark.parametrize(
    "cls,check",
    [
        (Peeks, "causality"),
        (Peeks, "parallel_equals_step"),
        (Mutates, "no_state_mutation"),
        (ForgetsCarry, "chunked_carry"),
        (ViewState, "state_bytes"),
        (DeadParameter, "gradients"),
        (MixesBatch, "batch_independence"),
    ],
)
def test_each_check_catches_its_defect(cls, check):
    def make():
        return cls(8).to(torch.float64)

    CHECKS[check](lambda: RunningSum(8).to(torch.float64))  # the correct mixer passes
    with pytest.raises(ContractError):
        CHECKS[check](make)


def test_default_forward_loops_over_step():
    mixer = RunningSum(4)
    x = torch.randn(2, 5, 4)
    y, s = Mixer.forward(mixer, x)
    y2, s2 = mixer(x)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(s.total, s2.total)
