"""Hyperparameter search for hgpso: typed spaces, ask/tell strategies and an LLM client.

``from hgpso.tune import SearchSpace, Float, Int, Categorical, minimize, LLMClient``

Strategies: ``random``, ``pso``, ``ga`` (paper 003), ``llm_pso`` (papers 000/001: the LLM
replaces the k worst particles) and ``llm_ga`` (paper 002: LLM-written children with
Evolution-of-Thought feedback), ``tpe`` and ``cmaes`` (Optuna's samplers driven ask/tell),
and ``llm`` (the LLM's proposals replacing the worst members of any of them; ``llm_tpe``,
``llm_cmaes``, ``llm_random``). ``openai`` is imported only when an LLM is actually called.
``StrategySampler`` (the strategies as an Optuna sampler) and ``LLMSampler`` (LLM proposals
injected into a study of any Optuna sampler) import ``optuna`` on first use.
"""

from typing import Any

from .driver import TuneResult, minimize
from .layer import LLMCMAES, LLMTPE, LLMLayer, LLMRandom
from .llm import LLMClient, LLMError, LLMStats, extract_json, parse_points, points_schema
from .optuna_strategies import CMAES, TPE, OptunaStrategy
from .proposals import PromptOptions
from .space import Categorical, Float, Int, Param, SearchSpace
from .strategies import (
    GA,
    LLMGA,
    LLMPSO,
    PSO,
    RandomSearch,
    Strategy,
    make_strategy,
    strategy_class,
    strategy_names,
)

__all__ = [
    "CMAES",
    "GA",
    "LLMCMAES",
    "LLMGA",
    "LLMPSO",
    "LLMTPE",
    "PSO",
    "TPE",
    "Categorical",
    "Float",
    "Int",
    "LLMClient",
    "LLMError",
    "LLMLayer",
    "LLMRandom",
    "LLMSampler",
    "LLMStats",
    "OptunaStrategy",
    "Param",
    "PromptOptions",
    "RandomSearch",
    "SearchSpace",
    "Strategy",
    "StrategySampler",
    "TuneResult",
    "extract_json",
    "make_strategy",
    "minimize",
    "parse_points",
    "points_schema",
    "strategy_class",
    "strategy_names",
]


def __getattr__(name: str) -> Any:
    # optuna is an optional dependency (the `tune` extra): import it only when asked for.
    if name == "StrategySampler":
        from .sampler import StrategySampler

        return StrategySampler
    if name == "LLMSampler":
        from .llm_sampler import LLMSampler

        return LLMSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
