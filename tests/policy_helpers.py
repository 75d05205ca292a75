"""Shared pieces of the KV-cache policy tests (tests/policies, tests/adapters): a small float64 attention layer
and its step loop. Imported by its bare name, ``from policy_helpers import ...`` (see tests/conftest.py)."""

import torch

from longrecall.contract import assert_close
from longrecall.mixers.attention import Attention
from longrecall.policies.base import cat_states, kept_positions
from longrecall.protocol import state_clone, state_nbytes, state_select

D_MODEL, N_HEADS, T = 16, 2, 13


def make_attention(policy=None, *, d_model=D_MODEL, n_heads=N_HEADS, seed=0, **bind) -> Attention:
    torch.manual_seed(seed)
    mixer = Attention(d_model, n_heads=n_heads).double()
    mixer.set_policy(policy, **bind)
    return mixer


def inputs(batch=2, T=T, d_model=D_MODEL, seed=1) -> torch.Tensor:
    return torch.randn(batch, T, d_model, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_steps(mixer, x, state=None):
    """The step loop, returning outputs (B, T, D), the final state and the state after every step."""
    state = mixer.init_state(x.shape[0], dtype=x.dtype) if state is None else state
    ys, states = [], []
    for t in range(x.shape[1]):
        y, state = mixer.step(x[:, t], state)
        ys.append(y)
        states.append(state)
    return torch.stack(ys, 1), state, states


def check_state_properties(make):
    """The registry suite's state checks, for a policy configured (small windows) to really compress
    or quantise at T = 13 (the suite's defaults leave ThinK and KIVI exact there)."""
    x = inputs(2, 13, seed=1)
    for mode in ("step", "prefill"):
        mixer = make(mode)
        start = run_steps(mixer, inputs(2, 8, seed=5))[1]
        if mode == "step":
            for state in (None, start):
                y, s = mixer(x, state)
                y_steps, s_steps, _ = run_steps(mixer, x, state)
                assert_close((y, s), (y_steps, s_steps), f"{mode}: forward vs step loop")
        y, s = mixer(x)
        for i in range(2):
            yi, si = mixer(x[i : i + 1])
            assert_close((yi, si), (y[i : i + 1], state_select(s, i)), f"{mode}: row {i} alone vs in a batch")
        # rows of different lengths share a batch (aux padded by cat_states)
        prefixes, rest = [inputs(1, 3, seed=10), inputs(1, 11, seed=11)], inputs(2, 7, seed=12)
        alone = [run_steps(mixer, rest[i : i + 1], mixer(p)[1]) for i, p in enumerate(prefixes)]
        y, s, _ = run_steps(mixer, rest, cat_states([mixer(p)[1] for p in prefixes]))
        for i, (yi, si, _) in enumerate(alone):
            assert_close(y[i : i + 1], yi, f"{mode}: row {i} outputs in a padded batch")
            assert [kept_positions(state_select(s, i), 0, h) for h in range(2)] == [
                kept_positions(si, 0, h) for h in range(2)]
        before = state_clone(start)
        mixer.step(x[:, 0], start)
        mixer(x, start)
        assert_close(start, before, f"{mode}: state not mutated", atol=0, rtol=0)
        assert mixer.state_bytes(start) == state_nbytes(start)
