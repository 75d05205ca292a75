"""The ``"longrecall"`` attention function and mask, registered with transformers at import.

transformers passes the base model's extra keywords down to the attention function (the
``TransformersKwargs`` convention); the model hooks add ``CACHE_KWARG``, so the function finds the
``LongrecallCache`` layer that ``update`` just filled as ``cache.layers[module.layer_idx]``.
"""

from __future__ import annotations

from torch import Tensor
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from .cache import ATTN_IMPLEMENTATION, CACHE_KWARG, LongrecallCache, PolicyCacheLayer


def _pending_layer(cache, module) -> PolicyCacheLayer | None:
    """The cache layer whose ``update`` awaits this attention call, if any."""
    index = getattr(module, "layer_idx", None)
    if not isinstance(cache, LongrecallCache) or not isinstance(index, int) or not 0 <= index < len(cache.layers):
        return None
    layer = cache.layers[index]
    return layer if layer.pending is not None else None


def longrecall_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling=None,
                         dropout: float = 0.0, **kwargs):
    """transformers attention function: the policy cycle for a ``LongrecallCache`` layer, else SDPA."""
    layer = _pending_layer(kwargs.pop(CACHE_KWARG, None), module)
    if layer is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if layer.pending.keys is not key:
        layer.pending = None
        raise RuntimeError(f"layer {layer.layer_idx}: the keys given to attention are not those the "
                           "LongrecallCache returned; this model transforms keys after cache.update, which the "
                           "adapter does not support")
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
