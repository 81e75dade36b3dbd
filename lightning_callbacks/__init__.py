"""Lightning integration of hgpso: :class:`LLMPSOCallback` tunes optimizer hyperparameters."""

from .llm_pso import LLMPSOCallback

__all__ = ["LLMPSOCallback"]
