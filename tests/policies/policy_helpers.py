"""Shared pieces of the KV-cache policy tests: a small float64 attention layer and its step loop."""

import torch

from longrecall.mixers.attention import Attention

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
