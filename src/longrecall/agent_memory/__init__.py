"""Text memory for agents (issue 16): a durable store of conversation turns and facts (``store``),
retrievers over it (``retrievers``: BM25, date-prefixed, time-filtered, reciprocal-rank fusion), the
LoCoMo and LongMemEval loaders and metrics (``loaders``, ``metrics``), an offline LoCoMo-style
generator (``generator``) and the evaluation of recall against bytes (``evaluate``,
``longrecall memory-eval``). The retrievers need the ``memory`` extra (rank-bm25, PyStemmer)."""

from .loaders import load_locomo, load_longmemeval
from .records import LOCOMO_CATEGORY_NAMES, Conversation, LoadedBenchmark, QAItem, Session, Turn
from .store import MemoryStore

__all__ = ["LOCOMO_CATEGORY_NAMES", "Conversation", "LoadedBenchmark", "MemoryStore", "QAItem", "Session", "Turn",
           "load_locomo", "load_longmemeval"]
