"""Any longrecall KV-cache policy on a Hugging Face ``transformers`` causal LM (extra ``hf``).

Worked example (a tiny random Llama, no download)::

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from longrecall.adapters.hf import apply_policy, kv_policy
    from longrecall.policies.h2o import H2O
    from longrecall.policies.window import Window

    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (1, 100))

    new_cache = apply_policy(model, H2O(budget=32))  # attention -> "longrecall"; returns a cache factory
    cache = new_cache()                               # one cache per sequence (batch)
    out = model.generate(ids, cache=cache, max_new_tokens=8, do_sample=False)
    cache.kept_positions(layer=0)                     # per head: the absolute positions layer 0 holds
    cache.state_bytes()                               # allocated bytes of every layer's PolicyKVState

    with kv_policy(model, Window(budget=16, mode="prefill")) as new_cache:  # restores attention at exit
        logits = model(ids, cache=new_cache()).logits

(transformers 5.2x calls the cache argument ``cache=``; earlier releases ``past_key_values=``, which
5.2x still accepts, with a FutureWarning from ``generate``.)

How it hooks in
---------------
transformers' attention modules (``LlamaAttention.forward`` and the models built like it) rotate
q and k, call ``cache.update(k, v, layer_idx, ...)`` and then the function registered under
``config._attn_implementation`` in ``AttentionInterface``.  This module supplies both ends:

* ``LongrecallCache`` (a ``transformers.Cache``) holds one ``PolicyCacheLayer`` per decoder layer,
  each storing a longrecall ``PolicyKVState``: keys as transformers gives them (rotated at their
  absolute positions), ``pos`` = the token positions from ``position_ids``.  ``update`` appends the
  new tokens, remembers them as *pending* and returns the appended k, v.
* the attention function ``"longrecall"`` (registered at import; ``apply_policy`` switches the
  model to it) finds the pending layer and runs our attention mixer's policy cycle
  (``mixers/attention.py``) on it with the real queries: attend over the cache (``attend_view``,
  ``attend_mask``), ``observe``, ``compress``.  The stored tensors really shrink (``keep_mask``
  allocates exactly the kept size).  Called for a model whose cache is not a ``LongrecallCache``
  (``use_cache=False``, a ``DynamicCache``) it is transformers' SDPA attention.

The cycle, as in ``Attention`` (``forward`` = one model call of T tokens):

* step mode: a one-token call appends, attends, observes and evicts back to the budget; a call of
  T > 1 tokens is the exact step loop (each token attends to the cache as evicted after the previous
  token), or, for position-only rules (``closed_form``), the closed-form mask then one eviction.
* prefill mode: a prompt call (T > 1 tokens, or the first call) attends with full causal attention,
  observes all its queries, then compresses once; a one-token call on a non-empty cache is a
  decoding step: append, attend, observe, no eviction.

Surprisal policies (``needs_surprisal``: SirLLM, EM-LLM) score tokens by the model's own
``-log p(x_t | x_<t)``.  ``apply_policy`` installs two forward hooks on the base model (inert unless
its cache is a ``LongrecallCache`` of such a policy) that do what ``LanguageModel`` does: before a
call, token 0's surprisal from the last token's final hidden state (kept in the cache and counted
in ``state_bytes``; log V for a sequence's first token) and NaN for the others; after it, the
others from the call's final hidden states through the LM head (``fill_surprisal``), then one
``compress``.  In step mode a multi-token call (the prompt) therefore evicts once, at its end
(token t's surprisal needs the model's output at t - 1, after every layer has read token t);
feed tokens one at a time for the exact per-token eviction.  Without ``input_ids`` (``inputs_embeds``)
or an LM head no surprisal is handed and the policy reads 0.

Positions: ``get_seq_length()`` returns the number of tokens *seen*, not stored, so the model's
default ``position_ids`` (and ``generate``'s) keep counting real positions after eviction, matching
the rotation baked into the kept keys.

GQA (``num_key_value_heads`` = Hkv < ``num_attention_heads`` = Hq, G = Hq / Hkv): the cache, the
budgets and every selection are per KV head; query head ``h * G + g`` reads KV head ``h``
(transformers' ``repeat_kv``).  Attention runs per query head (``attend_mask`` is evaluated for each
group member ``g``, i.e. for the queries ``q[:, g::G]``).  The policy then sees the group as follows:

* ``score`` (the per-token importance the default ``compress``, and any ``compress`` calling
  ``self.score``, ranks by) is the mean over the G members of ``score(state, obs_g)``, obs_g being
  member g's queries and attention: kvpress's rule (its presses average scores within a KV group,
  SnapKV issue #22).  So TOVA's head average runs over all Hq query heads; query-free scores
  (knorm, random) and position rules (window, streaming) are unchanged.
* ``observe`` and ``compress`` receive one KV-headed observation, the group average: probabilities
  averaged over the group (so anything linear in the attention, e.g. H2O's accumulated attention,
  equals the mean of the members' statistics), queries averaged over the group.  The averaged
  query is an approximation for rules that are nonlinear in q and read ``obs.q`` inside their own
  ``compress`` (SnapKV / PyramidKV's window attention, ThinK's channel norms): kvpress averages
  their per-query-head scores instead.

With Hq = Hkv (MHA) every call is exactly the policy's own, as in our ``attention`` mixer.

Softmax scale: ``Observation.q`` is the query times ``scaling * sqrt(head_dim)`` (1 for Llama), so
``attention_probs`` (scale 1/sqrt(K)) reproduces the model's attention.

transformers internals relied on (check on a version bump): ``cache_utils.Cache(layers=...)`` and
``CacheLayerMixin`` (``update``, ``get_seq_length``, ``get_mask_sizes``, ``reorder_cache``,
``batch_repeat_interleave``, ``batch_select_indices``, ``crop``, ``reset``, ``offload``/``prefetch``);
attention modules calling ``cache.update`` with the post-RoPE keys and then the registered attention
function with the tensors ``update`` returned, ``position_ids`` reaching ``update`` (5.2x:
``update(k, v, layer_idx, kwargs={"position_ids": ...})``; 4.x: ``cache_kwargs["cache_position"]``);
``AttentionInterface.register``, ``masking_utils.AttentionMaskInterface.register`` and ``sdpa_mask``,
``integrations.sdpa_attention.sdpa_attention_forward``, ``PreTrainedModel.set_attn_implementation``;
``generate`` deriving input slicing and positions from ``get_seq_length()``, passing the cache as
``cache=`` (or ``past_key_values=``) to the base model; for surprisal policies ``model.base_model``,
``get_output_embeddings()`` (logits = LM head of the final hidden state: no final softcapping) and
the base model's output ``last_hidden_state``.

Limitations: no padding (a 2D ``attention_mask`` with zeros raises: run equal-length prompts or one
at a time); full-attention layers only (sliding-window / chunked / linear-attention layers raise);
no static cache or ``torch.compile``; ``crop`` (assisted decoding) is refused once tokens were
evicted; no attention softcapping or sinks; inference only (attention dropout > 0 raises);
``output_attentions`` returns None.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..mixers.attention import KVState
from ..policies.base import BoundPolicy, Observation, Policy, PolicyKVState, attention_probs, kept_positions
from ..protocol import state_map, state_nbytes

try:
    from transformers.cache_utils import Cache, CacheLayerMixin
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "longrecall.adapters.hf needs transformers >= 5 with the layered Cache API (tested with 5.24): "
        "pip install 'longrecall[hf]'"
    ) from err

ATTN_IMPLEMENTATION = "longrecall"

__all__ = ["ATTN_IMPLEMENTATION", "LongrecallCache", "PolicyCacheLayer", "apply_policy", "kv_policy",
           "longrecall_attention"]

_active = threading.local()  # the layer whose update() awaits its attention call (this thread)


# ----------------------------------------------------------------------------- GQA helpers


def _repeat_heads(t: Tensor, groups: int) -> Tensor:
    """(B, Hkv, ...) -> (B, Hkv * G, ...): query head h * G + g reads KV head h (``repeat_kv``)."""
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def _members(obs: Observation, groups: int) -> list[Observation]:
    """The observation of each group member g at KV-head resolution: query heads g, G + g, 2G + g, ..."""
    return [Observation(obs.q[:, g::groups], obs.q_pos, None if obs.probs is None else obs.probs[:, g::groups])
            for g in range(groups)]


def _group_average(obs: Observation, groups: int) -> Observation:
    """One KV-headed observation: queries and attention probabilities averaged over each group."""
    def average(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.unflatten(1, (-1, groups)).mean(dim=2)

    return Observation(average(obs.q), obs.q_pos, average(obs.probs))


def _observe(policy: Policy, state: PolicyKVState, obs: Observation, groups: int) -> PolicyKVState:
    if groups == 1 or type(policy).observe is Policy.observe:
        return policy.observe(state, obs)
    return policy.observe(state, _group_average(obs, groups))


def _compress(bound: BoundPolicy, state: PolicyKVState, obs: Observation | None, groups: int) -> PolicyKVState:
    if groups == 1 or obs is None:
        return bound.compress(state, obs)
    policy, members = bound.policy, _members(obs, groups)

    def grouped_score(s: PolicyKVState, _obs) -> Tensor:  # kvpress's rule: the mean of the members' scores
        return torch.stack([policy.score(s, member) for member in members]).mean(dim=0)

    proxy = copy.copy(policy)  # the same configuration; only `score` becomes the group mean
    object.__setattr__(proxy, "score", grouped_score)
    return dataclasses.replace(bound, policy=proxy).compress(state, _group_average(obs, groups))


def _attend_mask(policy: Policy, state: PolicyKVState, q: Tensor, q_pos: Tensor, groups: int) -> Tensor | None:
    """The policy's (B, Hq, Tq, S) restriction, evaluated per group member."""
    if type(policy).attend_mask is Policy.attend_mask:
        return None
    if groups == 1:
        return policy.attend_mask(state, q, q_pos)
    masks = [policy.attend_mask(state, q[:, g::groups], q_pos) for g in range(groups)]
    if all(m is None for m in masks):
        return None
    B, H, S = state.pos.shape
    shape = (B, H, q.shape[2], S)
    masks = [torch.ones(shape, dtype=torch.bool, device=q.device) if m is None else m.expand(shape) for m in masks]
    return torch.stack(masks, dim=2).flatten(1, 2)


# ----------------------------------------------------------------------------- the cache


def _find_positions(args: tuple, kwargs: dict) -> Tensor | None:
    """``position_ids`` (5.2x: ``update(..., kwargs={...})``) or ``cache_position`` (4.x ``cache_kwargs``)."""
    candidates = [kwargs, kwargs.get("kwargs"), kwargs.get("cache_kwargs"), *args]
    for found in candidates:
        if isinstance(found, dict):
            for key in ("position_ids", "cache_position"):
                if isinstance(found.get(key), Tensor):
                    return found[key]
    return None


class _Pending(NamedTuple):
    """What ``update`` leaves for the attention call of the same layer."""

    prev: PolicyKVState  # the state before this call
    k: Tensor  # (B, Hkv, T, K) this call's keys and values
    v: Tensor
    positions: Tensor  # (B, T) int64
    surprisal: Tensor | None  # (B, T) handed by the model hooks (surprisal policies), else None
    keys: Tensor  # the keys update() returned: the attention call must receive these


def _append(policy: Policy, state: PolicyKVState, k: Tensor, v: Tensor, positions: Tensor) -> PolicyKVState:
    """``state`` with T tokens appended (positions (B, T)), statistics extended by the policy."""
    pos = positions.to(torch.int32)[:, None].expand(-1, state.pos.shape[1], -1)
    kv = KVState(
        k=torch.cat([state.k, k.to(state.k.dtype)], dim=2),
        v=torch.cat([state.v, v.to(state.v.dtype)], dim=2),
        pos=torch.cat([state.pos, pos], dim=2),
        length=state.length + positions.shape[1],
    )
    return policy.append(state, kv)


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
        self._pending: _Pending | None = None

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
        if self._pending is not None:
            raise RuntimeError(
                f"layer {self.layer_idx} of the LongrecallCache was updated but its attention never ran through the "
                f"{ATTN_IMPLEMENTATION!r} attention function: call apply_policy(model, policy) (or set "
                f"attn_implementation={ATTN_IMPLEMENTATION!r}) and start from a new cache"
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
        self.state = _append(policy, start, key_states, value_states, positions)
        k, v, _ = policy.attend_view(self.state)
        self._pending = _Pending(prev, key_states, value_states, positions, surprisal, k)
        _active.layer = self
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
        self.state, self._pending, self.surprisal, self.is_initialized = None, None, None, False

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
        prev, k_new, v_new, positions, surprisal, _ = self._pending
        self._pending = None
        bound, policy = self.bound, self.bound.policy
        full = self.state
        Hq, H = query.shape[1], full.pos.shape[1]
        if Hq % H:
            raise ValueError(f"layer {self.layer_idx}: {Hq} query heads are not a multiple of {H} KV heads")
        groups = Hq // H
        factor = scaling * math.sqrt(query.shape[-1])
        q = query if abs(factor - 1.0) < 1e-12 else query * factor  # attention_probs uses 1/sqrt(K)
        T = q.shape[2]
        first_call = int(prev.length.max()) == 0
        if policy.mode == "step":
            if T > 1 and policy.closed_form and bound.within_rule(prev):
                y, state = self._closed_form(q, positions, full, groups, fresh=first_call)
            else:
                y, state = self._step_loop(q, k_new, v_new, positions, surprisal, prev, full, groups)
        else:  # prefill: full causal attention over the call, observe, compress once per prompt call
            y, probs = self._attend(q, positions, full, groups, fresh=first_call)
            obs = Observation(q, positions, probs)
            state = _observe(policy, full, obs, groups)
            if T > 1 or first_call:
                state = _compress(bound, state, obs, groups)
        self.state = state
        return y.transpose(1, 2).contiguous()

    def _attend(self, q: Tensor, q_pos: Tensor, state: PolicyKVState, groups: int,
                fresh: bool = False) -> tuple[Tensor, Tensor | None]:
        """Attention of q (B, Hq, Tq, K) over the cache, probabilities when the policy needs them."""
        policy = self.bound.policy
        k, v, pos = policy.attend_view(state)
        mask = _attend_mask(policy, state, q, q_pos, groups)
        k, v, pos = _repeat_heads(k, groups), _repeat_heads(v, groups), _repeat_heads(pos, groups)
        if policy.needs_attention:
            probs = attention_probs(q, q_pos, k, pos, mask)
            return probs @ v.to(probs.dtype), probs
        if fresh and mask is None and k.shape[2] == q.shape[2]:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True), None
        visible = (pos >= 0)[:, :, None, :] & (pos[:, :, None, :] <= q_pos[:, None, :, None])
        if mask is not None:
            visible = visible & mask
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible), None

    def _step_loop(self, q, k_new, v_new, positions, surprisal, prev, full, groups) -> tuple[Tensor, PolicyKVState]:
        """Token by token: append, attend, observe, evict (exact step-mode semantics)."""
        bound, policy = self.bound, self.bound.policy
        T = q.shape[2]
        state, ys = prev, []
        for t in range(T):
            q_t, pos_t = q[:, :, t : t + 1], positions[:, t : t + 1]
            if T == 1:
                state = full
            else:
                start = state if surprisal is None else policy.with_surprisal(state, surprisal[:, t : t + 1])
                state = _append(policy, start, k_new[:, :, t : t + 1], v_new[:, :, t : t + 1], pos_t)
            y_t, probs = self._attend(q_t, pos_t, state, groups)
            obs = Observation(q_t, pos_t, probs)
            state = _compress(bound, _observe(policy, state, obs, groups), obs, groups)
            ys.append(y_t)
        return torch.cat(ys, dim=2), state

    def _closed_form(self, q, positions, full, groups, fresh) -> tuple[Tensor, PolicyKVState]:
        """Position-only rules: query t sees itself and what the rule keeps at length t (as the mixer)."""
        bound, policy = self.bound, self.bound.policy
        if bound.budgets is None:
            y, _ = self._attend(q, positions, full, groups, fresh=fresh)
            return y, full
        key_pos, query_pos = full.pos[:, :, None, :], positions[:, None, :, None]  # (B,H,1,S), (B,1,T,1)
        budget = bound.budget_tensor(q.device)[..., None]  # (1, H, 1, 1)
        kept = policy.keep_position(key_pos, query_pos, budget)
        visible = (key_pos >= 0) & ((key_pos == query_pos) | ((key_pos < query_pos) & kept))
        visible = _repeat_heads(visible, groups)
        mask = _attend_mask(policy, full, q, positions, groups)
        if mask is not None:
            visible = visible & mask
        y = F.scaled_dot_product_attention(q, _repeat_heads(full.k, groups), _repeat_heads(full.v, groups),
                                           attn_mask=visible)
        return y, bound.compress(full, None)


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


# ----------------------------------------------------------------------------- attention + mask


def longrecall_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling=None,
                         dropout: float = 0.0, **kwargs):
    """transformers attention function: the policy cycle for a ``LongrecallCache`` layer, else SDPA."""
    layer = getattr(_active, "layer", None)
    if layer is None or layer._pending is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if layer._pending.keys is not key:
        if getattr(module, "layer_idx", None) != layer.layer_idx:  # a stale record (an earlier forward failed)
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
        layer._pending = _active.layer = None
        raise RuntimeError(f"layer {layer.layer_idx}: the keys given to attention are not those the "
                           "LongrecallCache returned; this model transforms keys after cache.update, which the "
                           "adapter does not support")
    _active.layer = None
    if dropout:
        raise NotImplementedError("the longrecall attention is inference-only (attention dropout > 0)")
    for name in ("softcap", "sliding_window", "s_aux"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"the longrecall attention does not support {name!r}")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    return layer.attend(query, float(scaling)), None


def _longrecall_mask(*args, attention_mask=None, **kwargs):
    """SDPA's mask (for the fallback path); padded batches are refused (the cache stores no padding)."""
    if attention_mask is not None and not bool(attention_mask.all()):
        raise NotImplementedError(
            "the longrecall attention does not support padding (an attention_mask with zeros): "
            "run prompts of equal length together, or one at a time"
        )
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(ATTN_IMPLEMENTATION, longrecall_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _longrecall_mask)


# ----------------------------------------------------------------------------- entry points


def _the_cache(kwargs: dict) -> LongrecallCache | None:
    for key in ("cache", "past_key_values"):
        if isinstance(kwargs.get(key), LongrecallCache):
            return kwargs[key]
    return None


def _before_model(model, module, args, kwargs) -> None:
    """Forward pre-hook of the base model: hand the surprisal of the tokens about to be read."""
    cache = _the_cache(kwargs)
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    if cache is not None and cache.needs_surprisal and isinstance(input_ids, Tensor) and input_ids.dim() == 2:
        cache.hand_surprisal(input_ids, model.get_output_embeddings())  # inputs_embeds: no ids, surprisal 0


def _after_model(model, module, args, kwargs, output) -> None:
    """Forward hook of the base model: fill the call's surprisal in from its final hidden states, compress."""
    cache = _the_cache(kwargs)
    if cache is not None and cache._call is not None:
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        cache.fill_surprisal(hidden, model.get_output_embeddings())


def _install_hooks(model) -> bool:
    """Surprisal hooks on the base model (once); False when they were there already or there is no LM head."""
    if getattr(model, "_longrecall_hooks", None) is not None or model.get_output_embeddings() is None:
        return False
    base = model.base_model
    model._longrecall_hooks = (
        base.register_forward_pre_hook(functools.partial(_before_model, model), with_kwargs=True),
        base.register_forward_hook(functools.partial(_after_model, model), with_kwargs=True),
    )
    return True


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
    The model keeps the ``"longrecall"`` attention (plain SDPA without a ``LongrecallCache``) and,
    for surprisal policies, two forward hooks on its base model (inert for other caches);
    ``kv_policy`` restores the previous implementation and removes the hooks on exit.
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
