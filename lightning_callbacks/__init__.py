"""Lightning integration of hgpso: :class:`LLMPSOCallback` tunes optimizer hyperparameters;
:class:`SwarmShardedStrategy` trains ``distributed="sharded"`` swarms on DDP processes."""

from .llm_pso import LLMPSOCallback
from .sharded_swarm import SwarmShardedStrategy

__all__ = ["LLMPSOCallback", "SwarmShardedStrategy"]
