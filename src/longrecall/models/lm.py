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
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..protocol import Mixer, check_positive, state_nbytes
from ..registry import MIXERS

IGNORE_INDEX = -100


class ModelState(NamedTuple):
    layers: tuple  # one mixer state per block
    convs: tuple = ()  # one ShortConv state per block when the model has short convolutions


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
        self.conv = nn.Conv1d(d_model, d_model, width, groups=d_model, bias=True)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch_size, self.conv.in_channels, self.width - 1, device=device, dtype=dtype)

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> (B, T, D); the carried inputs replace zero padding."""
        padded = torch.cat([state, x.transpose(1, 2)], dim=2)  # (B, D, width - 1 + T)
        y = self.conv(padded).transpose(1, 2)
        return y, padded[:, :, padded.shape[2] - (self.width - 1) :].clone()

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        window = torch.cat([state, x[:, :, None]], dim=2)  # (B, D, width)
        y = (window * self.conv.weight[:, 0]).sum(-1) + self.conv.bias
        return y, window[:, :, 1:].clone()


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 for stability."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


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
        self.mixer_norm = RMSNorm(d_model)
        self.short_conv = ShortConv(d_model, short_conv) if short_conv else None
        self.mixer = mixer
        self.mlp_norm = RMSNorm(d_model) if mlp else None
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
        if isinstance(short_conv, bool) or not isinstance(short_conv, int) or short_conv < 0:
            raise ValueError(f"short_conv must be a non-negative int (0 disables it), got {short_conv!r}")
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            Block(self._build_mixer(name, d_model, mixer_kwargs or {}), d_model, mlp, short_conv) for name in layers
        )
        self.norm = RMSNorm(d_model)
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
        return sum(block.mixer.state_bytes(s) for block, s in zip(self.blocks, state.layers)) + state_nbytes(state.convs)

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
        x = self.embedding(input_ids)  # (B, T, D)
        x, state = self._run_blocks(x, state, "forward")
        return self.norm(x), state

    def _run_blocks(self, x: Tensor, state: ModelState, how: str) -> tuple[Tensor, ModelState]:
        convs = state.convs or (None,) * len(self.blocks)
        new_layers, new_convs = [], []
        for block, layer_state, conv_state in zip(self.blocks, state.layers, convs):
            x, layer_state, conv_state = getattr(block, how)(x, layer_state, conv_state)
            new_layers.append(layer_state)
            if conv_state is not None:
                new_convs.append(conv_state)
        return x, ModelState(tuple(new_layers), tuple(new_convs))

    def forward(self, input_ids: Tensor, state: ModelState | None = None) -> tuple[Tensor, ModelState]:
        """Logits (B, T, V) at every position and the new state."""
        h, state = self.hidden(input_ids, state)
        return self.head(h), state

    def loss(self, input_ids: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean cross-entropy over scored positions; also logits (P, V) and targets (P,) there."""
        h, _ = self.hidden(input_ids)
        scored = targets != IGNORE_INDEX  # (B, T)
        logits = self.head(h[scored])  # (P, V): the head only where something is scored
        labels = targets[scored]
        if labels.numel() == 0:
            raise ValueError("targets score no position (all are -100)")
        return F.cross_entropy(logits.float(), labels), logits, labels

    def step(self, token: Tensor, state: ModelState) -> tuple[Tensor, ModelState]:
        """One token per sequence: token (B,) -> logits (B, V), new state."""
        self._check_tokens(token, 1)
        x = self.embedding(token)  # (B, D)
        x, state = self._run_blocks(x, state, "step")
        return self.head(self.norm(x)), state

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

        Each layer gets its index among the model's attention layers (``layer``, ``n_layers``: the
        hook for per-layer budgets) and ``context_len`` (ratio budgets).  Every layer's budget is
        resolved before any is set, so an invalid budget leaves the model unchanged.  Layers whose
        mixer is not plain attention (``sliding_window``, recurrent mixers) are left alone.
        Returns the indices of the blocks the policy applies to.
        """
        from ..mixers.attention import Attention

        blocks = [i for i, b in enumerate(self.blocks) if isinstance(b.mixer, Attention) and b.mixer.supports_policy]
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

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
