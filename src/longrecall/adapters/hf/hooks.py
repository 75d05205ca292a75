"""``apply_policy`` / ``kv_policy``: switch a model to the ``"longrecall"`` attention and hook its base model.

Two forward hooks on ``model.base_model``, inert unless the call's cache is a ``LongrecallCache``:
before the call, pass the cache on to the attention function (``CACHE_KWARG``) and, for surprisal
policies, hand token 0's surprisal; after it, fill in the others' and compress once.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Callable, Iterator

from torch import Tensor

from ...policies.base import Policy
from .cache import ATTN_IMPLEMENTATION, CACHE_KWARG, LongrecallCache


def _the_cache(kwargs: dict) -> LongrecallCache | None:
    for key in ("cache", "past_key_values"):
        if isinstance(kwargs.get(key), LongrecallCache):
            return kwargs[key]
    return None


def _before_model(model, module, args, kwargs):
    """Forward pre-hook of the base model: the cache for the attention function; the surprisal to hand."""
    cache = _the_cache(kwargs)
    if cache is None:
        return None
    head = model.get_output_embeddings()
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    if cache.needs_surprisal and head is not None and isinstance(input_ids, Tensor) and input_ids.dim() == 2:
        cache.hand_surprisal(input_ids, head)  # inputs_embeds or no LM head: no ids, surprisal 0
    return args, {**kwargs, CACHE_KWARG: cache}


def _after_model(model, module, args, kwargs, output) -> None:
    """Forward hook of the base model: fill the call's surprisal in from its final hidden states, compress."""
    cache = _the_cache(kwargs)
    if cache is not None and cache._call is not None:
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        cache.fill_surprisal(hidden, model.get_output_embeddings())


def _install_hooks(model) -> None:
    """The two hooks on the base model, once."""
    if getattr(model, "_longrecall_hooks", None) is not None:
        return
    base = model.base_model
    model._longrecall_hooks = (
        base.register_forward_pre_hook(functools.partial(_before_model, model), with_kwargs=True),
        base.register_forward_hook(functools.partial(_after_model, model), with_kwargs=True),
    )


def _remove_hooks(model) -> None:
    for handle in getattr(model, "_longrecall_hooks", None) or ():
        handle.remove()
    model._longrecall_hooks = None


def _set_attention(model, implementation: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    else:
        model.config._attn_implementation = implementation
    if model.config._attn_implementation != implementation:
        raise ValueError(f"{type(model).__name__} does not let its attention implementation be set to "
                         f"{implementation!r}")


def apply_policy(model, policy: Policy, *, context_len: int | None = None) -> Callable[[], LongrecallCache]:
    """Switch ``model`` to the ``"longrecall"`` attention and return a factory of fresh caches.

    The budget is checked now (the policy's error for an invalid one).  Pass each sequence batch a
    new cache: ``model.generate(ids, cache=factory())`` or ``model(ids, cache=factory())``.
    The model keeps the ``"longrecall"`` attention (plain SDPA without a ``LongrecallCache``) and
    two forward hooks on its base model (inert for other caches); ``kv_policy`` restores the
    previous implementation and removes the hooks on exit.
    """
    LongrecallCache(model, policy, context_len=context_len)  # validate before touching the model
    _set_attention(model, ATTN_IMPLEMENTATION)
    _install_hooks(model)
    return functools.partial(LongrecallCache, model, policy, context_len=context_len)


@contextmanager
def kv_policy(model, policy: Policy, *, context_len: int | None = None) -> Iterator[Callable[[], LongrecallCache]]:
    """``apply_policy`` for the duration of a ``with`` block; the attention implementation is restored after."""
    previous = model.config._attn_implementation
    had_hooks = getattr(model, "_longrecall_hooks", None) is not None
    factory = apply_policy(model, policy, context_len=context_len)
    try:
        yield factory
    finally:
        _set_attention(model, previous)
        if not had_hooks:
            _remove_hooks(model)
