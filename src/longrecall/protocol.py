"""The memory contract every mechanism implements, and generic helpers for its state.

Dimension legend used in shapes throughout the package::

    B batch, T time, D model width, H heads, K key dim, V value dim,
    E inner (expanded) width, N state size per channel, M memory slots, W window

A ``Mixer`` maps ``x (B, T, D) -> y (B, T, D)`` and carries an explicit memory, its *state*:
a ``NamedTuple`` of tensors (a pytree).  Three rules make the state trustworthy:

1. ``step`` never mutates the state it is given; it returns a new one.
2. ``forward(x[:, :k])`` followed by ``forward(x[:, k:], state)`` equals ``forward(x)``.
3. ``state_bytes`` is counted from the real tensors, never estimated.

``tests/test_contract.py`` checks all three for every registered mixer.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Literal

import torch
from torch import Tensor, nn

from .validation import check_bool, check_choice, check_int, check_positive  # re-exported: mixers import them here

State = Any  # a NamedTuple of tensors; each mixer defines its own
StateGrowth = Literal["constant", "bounded", "linear"]
STATE_GROWTHS: tuple[str, ...] = ("constant", "bounded", "linear")

__all__ = [
    "Mixer",
    "State",
    "StateGrowth",
    "check_bool",
    "check_choice",
    "check_int",
    "check_positive",
    "state_leaves",
    "state_nbytes",
    "state_map",
    "state_detach",
    "state_to",
    "state_select",
    "state_clone",
]


# ----------------------------------------------------------------------------- state pytrees


def state_leaves(state: State) -> list[Tensor]:
    """All tensors in a (possibly nested) tuple / NamedTuple / list / dict state, in order."""
    if state is None:
        return []
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, dict):
        return [leaf for value in state.values() for leaf in state_leaves(value)]
    if isinstance(state, (tuple, list)):
        return [leaf for item in state for leaf in state_leaves(item)]
    return []  # python scalars (ints, floats) hold no tensor memory


def state_map(fn: Callable[[Tensor], Tensor], state: State) -> State:
    """Apply ``fn`` to every tensor leaf, rebuilding the same container types."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {key: state_map(fn, value) for key, value in state.items()}
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # NamedTuple
        return type(state)(*(state_map(fn, item) for item in state))
    if isinstance(state, (tuple, list)):
        return type(state)(state_map(fn, item) for item in state)
    return state


def state_nbytes(state: State) -> int:
    """Bytes held by the state's tensors: sum of ``numel * element_size`` over leaves."""
    return sum(leaf.numel() * leaf.element_size() for leaf in state_leaves(state))


def state_detach(state: State) -> State:
    """Cut the autograd graph (truncated backprop through time between segments)."""
    return state_map(lambda t: t.detach(), state)


def state_clone(state: State) -> State:
    return state_map(lambda t: t.clone(), state)


def state_to(state: State, device=None, dtype=None) -> State:
    """Move a state; ``dtype`` applies to floating tensors only (positions stay integer)."""

    def move(t: Tensor) -> Tensor:
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device=device)

    return state_map(move, state)


def state_select(state: State, index: Tensor | slice | int) -> State:
    """Select batch rows (dimension 0 of every leaf) of a state."""
    if isinstance(index, int):
        index = slice(index, index + 1)
    return state_map(lambda t: t[index], state)


# ----------------------------------------------------------------------------- the contract


class Mixer(nn.Module):
    """Sequence mixer with explicit memory: ``x (B, T, D) -> y (B, T, D)``.

    Subclasses set ``state_growth`` and implement ``init_state`` and ``step``.  ``forward`` validates
    ``x``, starts from ``init_state`` when no state is given, answers an empty sequence with zeros and
    hands the rest to ``_forward(x, state)``: the step loop by default (the slow reference), which
    mechanisms override with a parallel form that the contract suite holds to the step loop.
    ``bounded`` mixers also expose ``state_capacity``: the number of tokens after which the state
    stops growing.

    Args:
        d_model: width D of the input and output.
    """

    state_growth: ClassVar[StateGrowth]
    # Small constructor overrides the contract suite uses so every code path runs on a short
    # sequence (e.g. a window or chunk shorter than the test length).
    contract_kwargs: ClassVar[dict] = {}

    def __init__(self, d_model: int):
        super().__init__()
        check_positive(d_model=d_model)
        self.d_model = int(d_model)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        growth = cls.__dict__.get("state_growth")
        if growth is not None and growth not in STATE_GROWTHS:
            raise TypeError(f"{cls.__name__}.state_growth must be one of {STATE_GROWTHS}, got {growth!r}")

    # -- to implement ---------------------------------------------------------------------

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        """Memory before the first token."""
        raise NotImplementedError

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One token: ``x (B, D) -> y (B, D)``. Returns a new state; never mutates ``state``."""
        raise NotImplementedError

    def _forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """The parallel form over a checked, non-empty ``x (B, T, D)`` from ``state``; default: the step loop."""
        return self.step_loop(x, state)

    # -- provided -------------------------------------------------------------------------

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Whole sequence ``x (B, T, D) -> (y (B, T, D), new state)``; continues from ``state``."""
        self.check_input(x)
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        if x.shape[1] == 0:
            return torch.zeros_like(x), state
        return self._forward(x, state)

    def step_loop(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """The recurrent form over a whole sequence; the spec every parallel form must match."""
        ys = []
        for x_t in x.unbind(1):  # unbind, not x[:, t]: indexing makes backward O(T^2) in memory
            y_t, state = self.step(x_t, state)
            ys.append(y_t)
        if not ys:
            return x.new_zeros(x.shape), state
        return torch.stack(ys, dim=1), state

    def state_bytes(self, state: State) -> int:
        """Bytes of memory actually held, counted from the state's tensors."""
        return state_nbytes(state)

    def check_input(self, x: Tensor, *, step: bool = False) -> None:
        """Clear errors for the wrong rank or width, instead of a shape error deep inside."""
        want = 2 if step else 3
        shape = "(B, D)" if step else "(B, T, D)"
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape {shape}, got {type(x).__name__}")
        if x.dim() != want:
            raise ValueError(f"x must have shape {shape} ({want} dims), got {tuple(x.shape)}")
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x's last dimension must equal d_model={self.d_model}, got {x.shape[-1]}")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, state_growth={self.state_growth!r}"
