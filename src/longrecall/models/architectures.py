"""Named hybrid architectures: layer lists of registered mixers, each followed by the block's MLP.

    from longrecall.models.architectures import architecture
    TrainConfig(layers=architecture("samba", 4), ...)   # ["mamba", "sliding_window", "mamba", "sliding_window"]

A hybrid is a ``LanguageModel`` whose ``layers`` name different mixers; the model's state is the tuple of
their states, so a hybrid is held to the same carried-state rules as every model (tests/test_architectures.py).
"""

from __future__ import annotations

from typing import Callable

from ..validation import ArgumentError, check_int

__all__ = ["ARCHITECTURES", "architecture", "samba", "jamba"]

ARCHITECTURES: dict[str, Callable[..., list[str]]] = {}


def _register(fn: Callable[..., list[str]]) -> Callable[..., list[str]]:
    ARCHITECTURES[fn.__name__] = fn
    return fn


@_register
def samba(n_layers: int) -> list[str]:
    """Samba (Ren et al. 2024, arXiv 2406.07522): Mamba and sliding-window attention alternate, each
    followed by an MLP (the paper's Mamba - MLP - SWA - MLP unit); ``n_layers`` even."""
    check_int(n_layers=n_layers, minimum=2)
    if n_layers % 2:
        raise ArgumentError("n_layers", "an even int (Mamba and SWA alternate)", repr(n_layers))
    return ["mamba", "sliding_window"] * (n_layers // 2)


@_register
def jamba(n_layers: int, attention_every: int = 8, recurrent: str = "mamba") -> list[str]:
    """A Jamba-style stack (Lieber et al. 2024, arXiv 2403.19887: one attention layer in every 8, the
    rest Mamba; Zoology's hybrids likewise keep a few attention layers among recurrent ones): layer i
    is attention when ``i % attention_every == attention_every // 2`` (Jamba puts it mid-block), else
    ``recurrent``. Jamba's mixture-of-experts MLPs are not reproduced (the block's MLP is dense)."""
    check_int(n_layers=n_layers, attention_every=attention_every)
    if attention_every > n_layers:
        raise ArgumentError("attention_every", f"an int <= n_layers ({n_layers}), so one layer is attention",
                            repr(attention_every))
    mid = attention_every // 2
    return ["attention" if i % attention_every == mid else recurrent for i in range(n_layers)]


def architecture(name: str, n_layers: int, **kwargs) -> list[str]:
    """The layer list of the named architecture (``ARCHITECTURES``) at depth ``n_layers``."""
    if name not in ARCHITECTURES:
        raise ArgumentError("name", f"one of {', '.join(sorted(ARCHITECTURES))}", repr(name))
    return ARCHITECTURES[name](n_layers, **kwargs)
