"""KV-cache policies for ``attention`` layers, one file each (the file name is the registry key); the imports
below register them.  ``base.py`` holds ``Policy``, the cache state and the shared eviction helpers."""

from . import base  # noqa: F401 - imported to register

# isort: split
# position-only rules (closed-form parallel masks)
from . import full, streaming, window  # noqa: F401 - imported to register

# isort: split
# score-based eviction
from . import citrus, em_llm, finch, h2o, infllm, kivi, knorm, pyramidkv, quest, random, sirllm, snapkv, think, tova  # noqa: F401 - imported to register
