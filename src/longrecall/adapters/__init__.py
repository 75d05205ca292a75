"""Adapters: run longrecall's KV-cache policies inside other libraries' models.

* ``longrecall.adapters.hf``: any registered policy on a Hugging Face ``transformers`` causal LM
  (install the ``hf`` extra).  Import it explicitly; this package imports nothing optional, so
  ``import longrecall`` keeps working without ``transformers``.
"""

__all__: list[str] = []
