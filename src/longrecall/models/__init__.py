from .lm import LanguageModel, ModelState, RMSNorm, SwiGLU

__all__ = ["LanguageModel", "ModelState", "RMSNorm", "SwiGLU"]
