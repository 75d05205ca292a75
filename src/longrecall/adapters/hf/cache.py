"""``LongrecallCache``: a ``transformers.Cache`` whose every layer is a ``PolicyCacheLayer``.

A layer stores a longrecall ``PolicyKVState`` (keys as the model rotated them, ``pos`` from
``position_ids``).  ``update`` appends and leaves a ``Pending`` record; the ``"longrecall"``
attention function (``attention.py``) finds the layer through the ``CACHE_KWARG`` keyword the
model hooks (``hooks.py``) add, and runs the policy cycle (``cycle.py``) with the real queries.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

from ...kv_bytes import resolve_byte_budget
from ...mixers.attention import KVState
from ...policies.base import BoundPolicy, Policy, PolicyKVState, kept_positions
from ...protocol import state_map, state_nbytes
from . import cycle

ATTN_IMPLEMENTATION = "longrecall"  # the AttentionInterface key of the attention the cache needs
CACHE_KWARG = "longrecall_cache"  # the model keyword that carries the cache to the attention function


def _find_positions(args: tuple, kwargs: dict) -> Tensor | None:
    """``position_ids`` (5.2x: ``update(..., kwargs={...})``) or ``cache_position`` (4.x ``cache_kwargs``)."""
    candidates = [kwargs, kwargs.get("kwargs"), kwargs.get("cache_kwargs"), *args]
    for found in candidates:
        if isinstance(found, dict):
            for key in ("position_ids", "cache_position"):
                if isinstance(found.get(key), Tensor):
                    return found[key]
    return None


class PolicyCacheLayer(CacheLayerMixin):
    """One decoder layer's cache under a bound policy: a ``PolicyKVState`` (B, Hkv, S, K)."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, bound: BoundPolicy):
        # no CacheLayerMixin.__init__: `keys` / `values` are read-only views of the state here
        self.bound = bound
        self.layer_idx = bound.layer
        self.state: PolicyKVState | None = None
        self.is_initialized = False
        self.device = None
        self.surprisal: Tensor | None = None  # (B, T) for the next update (surprisal policies; model hooks)
        self.pending: cycle.Pending | None = None  # set by update, consumed by attend

    def __repr__(self) -> str:
        return f"PolicyCacheLayer(layer={self.layer_idx}, policy={self.bound.policy!r}, budgets={self.bound.budgets})"

    @property
    def keys(self) -> Tensor | None:
        return None if self.state is None else self.state.k

    @property
    def values(self) -> Tensor | None:
        return None if self.state is None else self.state.v

    # -- transformers' layer API ---------------------------------------------------------------

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        B, H, _, K = key_states.shape
        if H != self.bound.n_heads:
            raise ValueError(f"layer {self.layer_idx}: the policy was bound to {self.bound.n_heads} KV heads, "
                             f"the model gives {H}")
        device = key_states.device
        empty = KVState(
            k=key_states.new_zeros(B, H, 0, K),
            v=value_states.new_zeros(B, H, 0, value_states.shape[-1]),
            pos=torch.zeros(B, H, 0, dtype=torch.int32, device=device),
            length=torch.zeros(B, dtype=torch.int64, device=device),
        )
        self.state = self.bound.policy.adopt(empty)
        self.device = device
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Append this call's tokens and return the appended (k, v); the attention function does the rest."""
        attn_kwargs = kwargs.get("kwargs")  # 5.x: the keywords the attention function will receive
        if self.pending is not None or (isinstance(attn_kwargs, dict) and CACHE_KWARG not in attn_kwargs):
            raise RuntimeError(
                f"layer {self.layer_idx} of the LongrecallCache was updated but its attention does not run through "
                f"the {ATTN_IMPLEMENTATION!r} attention function: prepare the model with apply_policy(model, policy) "
                "or kv_policy(model, policy), and start from a new cache"
            )
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        prev = self.state
        B, _, T, _ = key_states.shape
        if prev.length.shape[0] != B:
            raise ValueError(f"layer {self.layer_idx}: the cache holds {prev.length.shape[0]} rows, this call {B}")
        positions = _find_positions(args, kwargs)
        if positions is None:
            positions = prev.length[:, None] + torch.arange(T, device=prev.length.device)
        else:
            positions = positions.to(device=prev.length.device, dtype=torch.int64)
            if positions.dim() == 1:
                positions = positions[None]
            if positions.dim() != 2 or positions.shape[-1] != T:
                raise ValueError(f"position_ids must be (B, {T}) or (1, {T}); got {tuple(positions.shape)}")
            positions = positions.expand(B, T)
        policy, surprisal, self.surprisal = self.bound.policy, self.surprisal, None
        start = prev if surprisal is None else policy.with_surprisal(prev, surprisal)
        self.state = cycle.append_tokens(policy, start, key_states, value_states, positions)
        k, v, _ = policy.attend_view(self.state)
        self.pending = cycle.Pending(prev, key_states, value_states, positions, surprisal, k)
        return k, v

    def get_seq_length(self) -> int:
        """Tokens seen (the next position), not tokens stored: positions keep counting after eviction."""
        return 0 if self.state is None else int(self.state.length.max())

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = 0 if self.state is None else self.state.pos.shape[2]
        return stored + query_length, max(self.get_seq_length() - stored, 0)

    def get_max_length(self) -> int:
        return -1  # the sequence may grow without end; storage is bounded by the budget

    def reset(self) -> None:
        self.state, self.pending, self.surprisal, self.is_initialized = None, None, None, False

    def _map(self, fn) -> None:
        if self.state is not None:
            self.state = state_map(fn, self.state)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._map(lambda t: t[indices])

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0 and self.state is not None:
            raise NotImplementedError("a LongrecallCache cannot be cropped: evicted tokens cannot be restored")

    def offload(self) -> None:
        self._map(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        if self.device is not None:
            self._map(lambda t: t.to(self.device, non_blocking=True))

    # -- the policy cycle (called by the attention function) -----------------------------------

    def attend(self, query: Tensor, scaling: float) -> Tensor:
        """Run this call's policy cycle with the queries (B, Hq, T, K); returns (B, T, Hq, K)."""
        pending, self.pending = self.pending, None
        y, self.state = cycle.run(self.bound, pending, self.state, query, scaling)
        return y.transpose(1, 2).contiguous()


class LongrecallCache(Cache):
    """A ``transformers`` cache whose every attention layer is managed by a longrecall policy.

    Args:
        model_or_config: the causal LM (or its config): gives the layer count and KV heads.
        policy: a longrecall ``Policy`` instance; bound per layer (per-layer / per-head budgets
            resolved here, so invalid budgets raise the policy's error at construction).
        context_len: the context length that ratio budgets (``budget=0.25``) are resolved with.

    Use a new cache per sequence batch; the model must run the ``"longrecall"`` attention
    (``apply_policy`` / ``kv_policy``).
    """

    def __init__(self, model_or_config, policy: Policy, *, context_len: int | None = None):
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a longrecall Policy instance, got {type(policy).__name__}")
        config = getattr(model_or_config, "config", model_or_config)
        if hasattr(config, "get_text_config"):
            config = config.get_text_config(decoder=True)
        n_layers = config.num_hidden_layers
        n_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        default = "sliding_attention" if getattr(config, "sliding_window", None) is not None else "full_attention"
        layer_types = list(getattr(config, "layer_types", None) or [default] * n_layers)
        others = sorted({t for t in layer_types if t != "full_attention"})
        if others:
            raise NotImplementedError(f"LongrecallCache supports full-attention layers only; this model has {others}")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dtype = getattr(model_or_config, "dtype", None)
        dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32  # a config alone: float32 caches
        policy = resolve_byte_budget(policy, [(n_kv, head_dim, dtype)] * n_layers)  # "32KiB": tokens it buys
        self.policy = policy
        self.context_len = context_len
        self.needs_surprisal = policy.needs_surprisal
        self.last_hidden: Tensor | None = None  # (B, D) last token's final hidden state (surprisal policies)
        self._call: tuple[Tensor, Tensor] | None = None  # (input_ids, first surprisal) of the running call
        layers = [PolicyCacheLayer(policy.bind(n_heads=n_kv, layer=i, n_layers=n_layers, context_len=context_len))
                  for i in range(n_layers)]
        super().__init__(layers=layers)

    def __repr__(self) -> str:
        return f"LongrecallCache(policy={self.policy!r}, layers={len(self.layers)})"

    @property
    def states(self) -> list[PolicyKVState | None]:
        """Each layer's ``PolicyKVState`` (None before its first update)."""
        return [layer.state for layer in self.layers]

    def state_bytes(self) -> int:
        """Bytes the cache's tensors hold (k, v, pos, length, statistics, aux; empty slots included),
        plus the last hidden state kept for surprisal policies (as ``LanguageModel`` counts it)."""
        return sum(state_nbytes(s) for s in self.states if s is not None) + state_nbytes(self.last_hidden)

    def resident_bytes(self) -> int:
        """Bytes an attention step needs on device (differs from ``state_bytes`` for offloading policies)."""
        held = sum(layer.bound.policy.resident_bytes(layer.state) for layer in self.layers if layer.state is not None)
        return held + state_nbytes(self.last_hidden)

    def kept_positions(self, layer: int, row: int = 0) -> list[list[int]]:
        """Per KV head, the absolute positions layer ``layer`` holds for batch row ``row``."""
        state = self.layers[layer].state
        if state is None:
            return []
        return [kept_positions(state, row, h) for h in range(state.pos.shape[1])]

    # -- the batch operations of generate (beam search) also move the last hidden state -------------

    def reset(self):
        super().reset()
        self.last_hidden, self._call = None, None

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        if self.last_hidden is not None:
            self.last_hidden = self.last_hidden.index_select(0, beam_idx.to(self.last_hidden.device))

    def batch_repeat_interleave(self, repeats: int):
        super().batch_repeat_interleave(repeats)
        if self.last_hidden is not None:
            self.last_hidden = self.last_hidden.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: Tensor):
        super().batch_select_indices(indices)
        if self.last_hidden is not None:
            self.last_hidden = self.last_hidden[indices]

    # -- surprisal policies (SirLLM, EM-LLM): the model's -log p(x_t | x_<t), as LanguageModel hands it

    def hand_surprisal(self, input_ids: Tensor, head) -> None:
        """Before a call reading ``input_ids`` (B, T): token 0's surprisal from the last prediction (else
        log V), the others NaN until the call's hidden states exist (``fill_surprisal``)."""
        B, T = input_ids.shape
        if self.last_hidden is not None:
            first = _surprisal(head, self.last_hidden[:, None], input_ids[:, :1])[:, 0]
        else:
            first = torch.full((B,), math.log(head.weight.shape[0]), device=input_ids.device, dtype=head.weight.dtype)
        handed = torch.cat([first[:, None], first.new_full((B, T - 1), math.nan)], dim=1)
        for layer in self.layers:
            layer.surprisal = handed
        self._call = (input_ids, first)

    def fill_surprisal(self, hidden: Tensor, head) -> None:
        """After the call: the prompt's surprisal from its final hidden states (B, T, D), then compress."""
        if self._call is None:
            return
        (input_ids, first), self._call = self._call, None
        for layer in self.layers:
            layer.surprisal = None
        if input_ids.shape[1] > 1:
            later = _surprisal(head, hidden[:, :-1], input_ids[:, 1:]).to(first.dtype)
            surprisal = torch.cat([first[:, None], later], dim=1)
            for layer in self.layers:
                if layer.state is not None:
                    layer.state = layer.bound.compress(layer.bound.policy.fill_surprisal(layer.state, surprisal), None)
        self.last_hidden = hidden[:, -1].detach()


@torch.no_grad()
def _surprisal(head, h: Tensor, tokens: Tensor) -> Tensor:
    """-log p(tokens | h): final hidden states h (B, T, D) through the LM head, predicting tokens (B, T)."""
    logits = head(h)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return -torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None])[..., 0]
