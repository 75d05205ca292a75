from .lm import LanguageModel, ModelState, RMSNorm, SwiGLU
from .memformer import Memformer
from .rmt import RecurrentMemoryTransformer
from .segment_memory import SegmentMemoryModel, SegmentMemoryState

# the model a run builds around its layer list (TrainConfig.model): the plain stack, or a wrapper
# whose memory crosses all layers
MODELS = {"lm": LanguageModel, "rmt": RecurrentMemoryTransformer, "memformer": Memformer}

__all__ = ["MODELS", "LanguageModel", "Memformer", "ModelState", "RMSNorm", "RecurrentMemoryTransformer",
           "SegmentMemoryModel", "SegmentMemoryState", "SwiGLU"]
