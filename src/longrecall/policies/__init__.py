"""KV-cache policies for ``attention`` layers, one file each (the file name is the registry key); the imports
below register them.  ``base.py`` holds ``Policy``, the cache state and the shared eviction helpers."""

from . import base  # noqa: F401 - imported to register

# isort: split
# position-only rules (sinks, windows, LaCache's ladder over layers)
from . import full, lacache, streaming, window  # noqa: F401 - imported to register

# isort: split
# score-based eviction
from . import em_llm, h2o, infllm, kivi, knorm, pyramidkv, quest, random, sirllm, snapkv, think, tova  # noqa: F401 - imported to register

# isort: split
# recallable memories: every token kept, a query reads the clusters or chunks it scores highest
from . import clusterkv, shadowkv  # noqa: F401 - imported to register

# isort: split
# prompt-guided chunked selection and separate decoding budgets
from . import citrus, finch, scope  # noqa: F401 - imported to register
