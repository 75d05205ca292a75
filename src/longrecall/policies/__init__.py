"""KV-cache policies for ``attention`` layers. One file per policy; the file name is the registry key.

The import lines below are what registers them: add yours here.  ``base.py`` holds the policy
abstraction, the cache state (``PolicyKVState``) and the shared eviction helpers.
"""

from . import base  # noqa: F401

# position-only rules (closed-form parallel masks)
from . import full, streaming, window  # noqa: F401

# score-based eviction
from . import em_llm, h2o, infllm, kivi, knorm, pyramidkv, quest, random, sirllm, snapkv, think, tova  # noqa: F401
