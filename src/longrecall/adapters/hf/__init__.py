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

How it hooks in, the cycle, surprisal, positions, GQA, the transformers internals relied on and
the limitations: ``docs/hf_adapter.md``.  Modules: ``cache`` (the ``transformers.Cache``),
``cycle`` (one attention call's policy cycle), ``gqa`` (query groups), ``attention`` (the
registered attention function), ``hooks`` (``apply_policy`` / ``kv_policy``).
"""

try:  # the layered Cache API of transformers >= 5
    from transformers.cache_utils import CacheLayerMixin  # noqa: F401 - a probe for that API
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "longrecall.adapters.hf needs transformers >= 5 with the layered Cache API (tested with 5.24): "
        "pip install 'longrecall[hf]'"
    ) from err

from .attention import longrecall_attention
from .cache import ATTN_IMPLEMENTATION, LongrecallCache, PolicyCacheLayer
from .hooks import apply_policy, kv_policy

__all__ = ["ATTN_IMPLEMENTATION", "LongrecallCache", "PolicyCacheLayer", "apply_policy", "kv_policy",
           "longrecall_attention"]
