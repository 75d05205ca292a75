"""A small language model over any stack of mixers: the harness every memory is trained in.

    tokens (B, T) -> embedding (B, T, D) -> [x + mixer(norm x); x + mlp(norm x)] x L -> norm -> head

Pre-norm blocks with RMSNorm (Zhang & Sennrich 2019) and a SwiGLU MLP (Shazeer 2020), as in
Llama and in the Zoology MQAR models.  ``layers`` names one mixer per block, so hybrids are a list:
``["mamba", "mamba", "attention"]``.

The model's memory is the tuple of its mixers' states (``ModelState``); ``step`` and ``generate``
run the recurrent path, and ``state_bytes`` counts the bytes actually held.  ``set_kv_policy``
puts every ``attention`` layer's cache under a KV-cache policy (``longrecall.policies``).
``loss`` applies the vocabulary head only where a target is scored: on MQAR this is 5x faster and
3x leaner than a head at every position (measured, ../shared/reference/cpu_performance_notes.md section 3).

Surprisal for KV-cache policies (SirLLM, EM-LLM): a policy with ``needs_surprisal = True`` scores
tokens by ``-log p(x_t | x_<t)``, which only the model knows.  Before each call the model hands
the layer's state the surprisal of the tokens it is about to read (``policy.with_surprisal(state,
s)``, s (B, T); the policy stores it with each token).  Token t's surprisal comes from the prediction
made at t - 1: the final hidden state of the last token read is kept in ``ModelState.last_hidden``
(counted in ``state_bytes``); a sequence's first token, with no prediction, gets ``log V``.  In a
parallel pass the prompt's surprisal exists only once its logits do: the model hands NaN for
tokens 1.., then fills them in (``policy.fill_surprisal``) and runs the layer's ``compress`` (a
prefill-mode policy waits for it).  Step-mode eviction needs token t's surprisal before token t
is processed, so ``forward`` then runs the exact token-by-token loop of ``step``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules import RMSNorm, ShortConvolution
from ..protocol import Mixer, check_int, check_positive, state_nbytes
from ..registry import MIXERS

IGNORE_INDEX = -100


def _wide(logits: Tensor) -> Tensor:
    """Logits for the loss in at least float32 (half precision is widened; float64 stays float64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class ModelState(NamedTuple):
    layers: tuple  # one mixer state per block
    convs: tuple = ()  # one ShortConv state per block when the model has short convolutions
    last_hidden: tuple = ()  # ((B, D),) last token's final hidden state, when a policy needs surprisal


class ShortConv(nn.Module):
    """Causal depthwise convolution over the last ``width`` tokens, before a block's mixer.

    The "shift" convolution of H3 (Fu et al. 2023) and Based (Arora et al. 2024): it hands each
    position its recent neighbours, which associative recall needs (a query must find the token
    *after* a key).  A mixer can learn this itself (two attention layers form an induction head),
    but slowly: on CPU-scale MQAR, 2-layer RoPE attention without it stayed near 6% accuracy after
    2,000 steps (docs/results.md).  Its state is the last ``width - 1`` inputs, (B, D, width - 1),
    and counts in the model's state bytes.
    """

    def __init__(self, d_model: int, width: int):
        super().__init__()
        check_positive(short_conv=width)
        self.width = width
        self.conv = ShortConvolution(d_model, width, bias=True, activation=None)  # `conv`: the state-dict name

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Tensor:
        return self.conv.init_state(batch_size, device=device, dtype=dtype)

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> (B, T, D); the carried inputs replace zero padding."""
        return self.conv(x, state)

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.conv.step(x, state)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); hidden width 8/3 D (rounded up to a multiple of 8) by default."""

    def __init__(self, d_model: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or 8 * ((8 * d_model // 3 + 7) // 8)
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """x + mixer(conv?(norm x)), then x + mlp(norm x)."""

    def __init__(self, mixer: Mixer, d_model: int, mlp: bool = True, short_conv: int = 0):
        super().__init__()
        self.mixer_norm = RMSNorm(d_model, eps=1e-6, upcast=torch.float32)  # float32: stability
        self.short_conv = ShortConv(d_model, short_conv) if short_conv else None
        self.mixer = mixer
        self.mlp_norm = RMSNorm(d_model, eps=1e-6, upcast=torch.float32) if mlp else None
        self.mlp = SwiGLU(d_model) if mlp else None

    def forward(self, x: Tensor, state, conv_state=None) -> tuple[Tensor, Any, Any]:
        h = self.mixer_norm(x)
        if self.short_conv is not None:
            h, conv_state = self.short_conv(h, conv_state)
        y, state = self.mixer(h, state)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, state, conv_state

    def step(self, x: Tensor, state, conv_state=None) -> tuple[Tensor, Any, Any]:
        h = self.mixer_norm(x)
        if self.short_conv is not None:
            h, conv_state = self.short_conv.step(h, conv_state)
        y, state = self.mixer.step(h, state)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, state, conv_state


class LanguageModel(nn.Module):
    """Embedding, a stack of (mixer, MLP) blocks, and a vocabulary head.

    Args:
        vocab_size: number of token ids V.
        d_model: width D.
        layers: mixer registry keys, one per block (e.g. ``["attention", "attention"]``).
        mixer_kwargs: keyword arguments for every mixer, or a dict keyed by mixer name
            (``{"attention": {"n_heads": 2}, "mamba": {"d_state": 16}}``) when ``per_mixer``.
        mlp: add a SwiGLU MLP after each mixer (as Zoology's MQAR models do).
        short_conv: width of a causal depthwise convolution before each mixer (0: none); see
            ``ShortConv``.
        tie_embeddings: share the embedding and head weights.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        layers: Sequence[str] = ("attention", "attention"),
        *,
        mixer_kwargs: dict | None = None,
        mlp: bool = True,
        short_conv: int = 0,
        tie_embeddings: bool = False,
    ):
        super().__init__()
        check_positive(vocab_size=vocab_size, d_model=d_model)
        if isinstance(layers, str) or not layers:
            raise ValueError(f"layers must be a non-empty list of mixer names, got {layers!r}")
        self.vocab_size, self.d_model, self.layer_names = vocab_size, d_model, list(layers)
        self.config = {
            "vocab_size": vocab_size,
            "d_model": d_model,
            "layers": list(layers),
            "mixer_kwargs": dict(mixer_kwargs or {}),
            "mlp": mlp,
            "short_conv": short_conv,
            "tie_embeddings": tie_embeddings,
        }
        check_int(minimum=0, short_conv=short_conv)  # 0 disables it
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            Block(self._build_mixer(name, d_model, mixer_kwargs or {}), d_model, mlp, short_conv) for name in layers
        )
        self.norm = RMSNorm(d_model, eps=1e-6, upcast=torch.float32)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)
        if tie_embeddings:
            self.head.weight = self.embedding.weight

    @staticmethod
    def _build_mixer(name: str, d_model: int, mixer_kwargs: dict) -> Mixer:
        cls = MIXERS.get(name)
        # kwargs keyed by mixer name apply to that mixer only; plain kwargs apply to all
        if any(key in MIXERS for key in mixer_kwargs):
            kwargs = dict(mixer_kwargs.get(name, {}))
        else:
            kwargs = dict(mixer_kwargs)
        try:
            return cls(d_model, **kwargs)
        except TypeError as error:
            raise TypeError(f"bad mixer_kwargs for mixer {name!r}: {error}") from None

    @classmethod
    def extra_arguments(cls) -> tuple[str, ...]:
        """The constructor arguments a config's ``model_kwargs`` may set (none for the plain stack)."""
        return ()

    @classmethod
    def from_config(cls, config: dict) -> "LanguageModel":
        config = dict(config)
        return cls(config.pop("vocab_size"), config.pop("d_model"), config.pop("layers"), **config)

    # -- state --------------------------------------------------------------------------------

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> ModelState:
        device = device or self.embedding.weight.device
        dtype = dtype or self.embedding.weight.dtype
        layers = tuple(b.mixer.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks)
        convs = tuple(
            b.short_conv.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks if b.short_conv
        )
        return ModelState(layers, convs)

    def state_bytes(self, state: ModelState) -> int:
        """Bytes held by every mixer's state (and short-conv buffers), counted from the tensors."""
        layers = sum(block.mixer.state_bytes(s) for block, s in zip(self.blocks, state.layers, strict=True))
        return layers + state_nbytes(state.convs) + state_nbytes(state.last_hidden)

    @torch.no_grad()
    def state_bytes_at(self, seq_len: int, batch_size: int = 1) -> int:
        """Measure the state after reading ``seq_len`` real tokens (random ids), per batch of ``batch_size``."""
        check_positive(seq_len=seq_len, batch_size=batch_size)
        device = self.embedding.weight.device
        tokens = torch.randint(self.vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(0))
        _, state = self.hidden(tokens.to(device))
        return self.state_bytes(state)

    # -- forward paths ------------------------------------------------------------------------

    def _check_tokens(self, input_ids: Tensor, rank: int) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != rank or input_ids.is_floating_point():
            want = "(B, T)" if rank == 2 else "(B,)"
            got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be an integer tensor of shape {want}, got {got}")

    def hidden(self, input_ids: Tensor, state: ModelState | None = None) -> tuple[Tensor, ModelState]:
        """Final normalised hidden states (B, T, D) and the new model state."""
        self._check_tokens(input_ids, 2)
        if state is None:
            state = self.init_state(input_ids.shape[0])
        signal = self._surprisal_layers()
        if any(bound.policy.mode == "step" and bound.budgets is not None for _, bound in signal):
            # eviction by surprisal at every token: token t's surprisal needs the output at t - 1
            hs = []
            for t in range(input_ids.shape[1]):
                h, state = self._step_hidden(input_ids[:, t], state, signal)
                hs.append(h)
            return torch.stack(hs, dim=1), state
        if signal:
            first = self._first_surprisal(state, input_ids[:, 0])  # (B,)
            later = first.new_full((input_ids.shape[0], input_ids.shape[1] - 1), math.nan)  # known after the pass
            state = self._hand_surprisal(state, signal, torch.cat([first[:, None], later], dim=1))
        x = self.embedding(input_ids)  # (B, T, D)
        x, state = self._run_blocks(x, state, "forward")
        h = self.norm(x)
        if signal:
            surprisal = torch.cat([first[:, None], self._surprisal(h[:, :-1], input_ids[:, 1:])], dim=1)
            layers = list(state.layers)
            for i, bound in signal:
                layers[i] = bound.compress(bound.policy.fill_surprisal(layers[i], surprisal), None)
            state = ModelState(tuple(layers), state.convs, (h[:, -1],))
        return h, state

    def _run_blocks(self, x: Tensor, state: ModelState, how: str) -> tuple[Tensor, ModelState]:
        convs = state.convs or (None,) * len(self.blocks)
        new_layers, new_convs = [], []
        for block, layer_state, conv_state in zip(self.blocks, state.layers, convs, strict=True):
            x, layer_state, conv_state = getattr(block, how)(x, layer_state, conv_state)
            new_layers.append(layer_state)
            if conv_state is not None:
                new_convs.append(conv_state)
        return x, ModelState(tuple(new_layers), tuple(new_convs), state.last_hidden)

    def forward(self, input_ids: Tensor, state: ModelState | None = None) -> tuple[Tensor, ModelState]:
        """Logits (B, T, V) at every position and the new state."""
        h, state = self.hidden(input_ids, state)
        return self.head(h), state

    def loss(self, input_ids: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean cross-entropy over scored positions; also logits (P, V) and targets (P,) there."""
        (loss, logits, labels), _ = self._scored_loss(input_ids, targets, None, "mean")
        if labels.numel() == 0:
            raise ValueError("targets score no position (all are -100)")
        return loss, logits, labels

    def loss_sum(self, input_ids: Tensor, targets: Tensor, state: ModelState | None = None
                 ) -> tuple[tuple[Tensor, Tensor, Tensor], ModelState]:
        """Summed cross-entropy over the scored positions of one segment read from ``state``, with its
        logits (P, V) and targets (P,), and the state after it (training across segments)."""
        return self._scored_loss(input_ids, targets, state, "sum")

    def _scored_loss(self, input_ids: Tensor, targets: Tensor, state: ModelState | None, reduction: str
                     ) -> tuple[tuple[Tensor, Tensor, Tensor], ModelState]:
        h, state = self.hidden(input_ids, state)
        scored = targets != IGNORE_INDEX  # (B, T)
        logits, labels = self.head(h[scored]), targets[scored]  # (P, V): the head only where something is scored
        return (F.cross_entropy(_wide(logits), labels, reduction=reduction), logits, labels), state

    def auxiliary_loss(self, input_ids: Tensor) -> Tensor | None:
        """The mean of the mixers' own training losses (a mixer's ``auxiliary_loss(x)``, e.g. the
        Compressive Transformer's attention reconstruction) on the inputs each sees while the model
        reads ``input_ids`` from the initial state; None when no mixer defines one.  The inputs are
        recorded in a pass without gradient, so only what the mixer's loss differentiates learns."""
        owners = [i for i, block in enumerate(self.blocks) if hasattr(block.mixer, "auxiliary_loss")]
        if not owners:
            return None
        seen: dict[int, Tensor] = {}
        hooks = [self.blocks[i].mixer.register_forward_pre_hook(
            lambda module, args, i=i: seen.__setitem__(i, args[0].detach())) for i in owners]
        try:
            with torch.no_grad():
                self.hidden(input_ids)
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack([self.blocks[i].mixer.auxiliary_loss(seen[i]) for i in owners]).mean()

    def step(self, token: Tensor, state: ModelState) -> tuple[Tensor, ModelState]:
        """One token per sequence: token (B,) -> logits (B, V), new state."""
        self._check_tokens(token, 1)
        h, state = self._step_hidden(token, state, self._surprisal_layers())
        return self.head(h), state

    def _step_hidden(self, token: Tensor, state: ModelState, signal: list) -> tuple[Tensor, ModelState]:
        """One token's final hidden state (B, D); hands its surprisal to the ``signal`` layers first."""
        if signal:
            state = self._hand_surprisal(state, signal, self._first_surprisal(state, token)[:, None])
        x, state = self._run_blocks(self.embedding(token), state, "step")  # (B, D)
        h = self.norm(x)
        return h, (state._replace(last_hidden=(h,)) if signal else state)

    # -- surprisal for KV-cache policies (module docstring) -------------------------------------

    def _surprisal_layers(self) -> list:
        """(block index, BoundPolicy) of the layers whose KV-cache policy reads the model's surprisal."""
        out = []
        for i, block in enumerate(self.blocks):
            bound = getattr(block.mixer, "kv_policy", None)
            if bound is not None and bound.policy.needs_surprisal:
                out.append((i, bound))
        return out

    @torch.no_grad()
    def _surprisal(self, h: Tensor, tokens: Tensor) -> Tensor:
        """-log p(tokens | h): final hidden states h (B, T, D) predicting tokens (B, T)."""
        logits = self.head(h)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return -torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None])[..., 0]

    def _first_surprisal(self, state: ModelState, token: Tensor) -> Tensor:
        """(B,) surprisal of the next token read: from the last prediction, else log V (no prediction)."""
        if state.last_hidden:
            return self._surprisal(state.last_hidden[0][:, None], token[:, None])[:, 0]
        return torch.full(token.shape, math.log(self.vocab_size), device=token.device, dtype=self.head.weight.dtype)

    def _hand_surprisal(self, state: ModelState, signal: list, surprisal: Tensor) -> ModelState:
        layers = list(state.layers)
        for i, bound in signal:
            layers[i] = bound.policy.with_surprisal(layers[i], surprisal)
        return state._replace(layers=tuple(layers))

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, ModelState]:
        """Prefill with the parallel form, then decode with ``step``; greedy when temperature == 0.

        Returns the new tokens (B, max_new_tokens) and the final state.
        """
        check_positive(max_new_tokens=max_new_tokens)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        logits, state = self.forward(input_ids)
        next_logits = logits[:, -1]
        out = []
        for _ in range(max_new_tokens):
            if temperature == 0:
                token = next_logits.argmax(-1)
            else:
                probs = torch.softmax(next_logits.float() / temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator)[:, 0]
            out.append(token)
            next_logits, state = self.step(token, state)
        return torch.stack(out, dim=1), state

    # -- KV-cache policies ----------------------------------------------------------------------

    def set_kv_policy(self, policy, *, context_len: int | None = None) -> list[int]:
        """Manage every ``attention`` layer's cache with a KV-cache policy (None: plain attention).

        A byte budget is first converted to tokens per layer and head (``resolve_byte_budget``).
        Each layer gets its index among the model's attention layers (``layer``, ``n_layers``: the
        hook for per-layer budgets) and ``context_len`` (ratio budgets).  Every layer's budget is
        resolved before any is set, so an invalid budget leaves the model unchanged.  Layers whose
        mixer is not plain attention (``sliding_window``, recurrent mixers) are left alone.
        Returns the indices of the blocks the policy applies to.
        """
        from ..mixers.attention import Attention

        blocks = [i for i, b in enumerate(self.blocks) if isinstance(b.mixer, Attention) and b.mixer.supports_policy]
        policy = self.resolve_byte_budget(policy)
        if policy is not None:
            if not blocks:
                raise ValueError(
                    f"the model has no `attention` layer to apply a KV-cache policy to (layers: {self.layer_names})"
                )
            for j, i in enumerate(blocks):  # validate every layer first
                mixer = self.blocks[i].mixer
                policy.bind(n_heads=mixer.n_heads, layer=j, n_layers=len(blocks), context_len=context_len)
        for j, i in enumerate(blocks):
            self.blocks[i].mixer.set_policy(policy, layer=j, n_layers=len(blocks), context_len=context_len)
        return blocks

    def resolve_byte_budget(self, policy):
        """``policy``, or a copy whose byte budget (``"32KiB"`` per sequence) is replaced by the tokens per
        layer and head it buys in this model's attention layers (``kv_bytes``)."""
        from ..kv_bytes import resolve_byte_budget
        from ..mixers.attention import Attention

        dtype = self.embedding.weight.dtype
        layers = [(b.mixer.n_heads, b.mixer.head_dim, dtype) for b in self.blocks
                  if isinstance(b.mixer, Attention) and b.mixer.supports_policy]
        return resolve_byte_budget(policy, layers)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
