"""``minimize``: the ask/tell loop with separate accounting of objective and LLM cost."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .space import SearchSpace
from .strategies import Strategy, make_strategy

__all__ = ["TuneResult", "minimize"]


@dataclass
class TuneResult:
    """Outcome of :func:`minimize`.

    ``calls_to_target`` is the number of objective calls made when the target was first
    reached (``None`` if never). ``trace`` holds the best-so-far value after every call.
    ``llm`` holds the LLM counters (calls, tokens, seconds, failures, fallbacks) and is empty
    for strategies without an LLM; ``objective_seconds`` excludes LLM time.
    """

    strategy: str
    best_point: dict[str, Any] | None
    best_value: float
    n_calls: int
    calls_to_target: int | None
    stopped: str  # "target" or "budget"
    iterations: int
    trace: list[float] = field(default_factory=list)
    objective_seconds: float = 0.0
    wall_seconds: float = 0.0
    llm: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "best_point": self.best_point,
            "best_value": self.best_value,
            "n_calls": self.n_calls,
            "calls_to_target": self.calls_to_target,
            "stopped": self.stopped,
            "iterations": self.iterations,
            "trace": self.trace,
            "objective_seconds": round(self.objective_seconds, 4),
            "wall_seconds": round(self.wall_seconds, 4),
            "llm": self.llm,
        }


def minimize(
    objective: Callable[[dict[str, Any]], float],
    space: SearchSpace | Mapping[str, Any],
    strategy: str | Strategy = "pso",
    budget: int = 100,
    target: float | None = None,
    *,
    population: int = 10,
    seed: int = 0,
    callback: Callable[[int, dict[str, Any], float], None] | None = None,
    **strategy_kwargs: Any,
) -> TuneResult:
    """Minimise ``objective(point) -> float`` with an ask/tell ``strategy``.

    Stops as soon as a value ``<= target`` is seen or after ``budget`` objective calls
    (a batch is cut short at the budget). ``strategy`` is a name for
    :func:`~hgpso.tune.make_strategy` (with ``population``, ``seed`` and
    ``strategy_kwargs``, e.g. ``llm=LLMClient(...)``, ``k=2``) or a ready instance.
    ``callback(call_index, point, value)`` runs after every objective call.

    ``objective`` must return a real number (NaN and infinities count as ``+inf``; ``None``
    or a non-number is a :class:`TypeError` naming the point). If it raises, the exception
    propagates and the strategy's pending batch is cancelled (:meth:`Strategy.cancel`), so
    the same strategy can be asked again.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if not isinstance(space, SearchSpace):
        space = SearchSpace(space)
    if isinstance(strategy, str):
        strategy = make_strategy(
            strategy, space, population=population, seed=seed, **strategy_kwargs
        )
    elif strategy_kwargs:
        raise TypeError("strategy_kwargs are only accepted with a strategy name")
    t_start = time.perf_counter()
    n_calls = 0
    calls_to_target: int | None = None
    best = math.inf
    trace: list[float] = []
    obj_seconds = 0.0
    stopped = "budget"
    while n_calls < budget and calls_to_target is None:
        points = strategy.ask()
        values: list[float] = []
        try:
            for p in points:
                if n_calls >= budget:
                    break
                t0 = time.perf_counter()
                v = _value(objective(dict(p)), p)
                obj_seconds += time.perf_counter() - t0
                n_calls += 1
                values.append(v)
                best = min(best, v)
                trace.append(best)
                if callback is not None:
                    callback(n_calls, p, v)
                if target is not None and v <= target:
                    calls_to_target = n_calls
                    stopped = "target"
                    break
        except BaseException:
            strategy.cancel()  # not stuck pending: the caller may ask again
            raise
        if len(values) == len(points):
            strategy.tell(points, values)
        else:  # stopped mid-batch: the best point is kept, the batch is not told
            strategy.cancel()
            for p, v in zip(points, values, strict=False):
                if v < strategy.best_value:
                    strategy.best_value, strategy.best_point = v, dict(p)
            break
    stats = strategy.llm_stats
    return TuneResult(
        strategy=strategy.name,
        best_point=strategy.best_point,
        best_value=strategy.best_value,
        n_calls=n_calls,
        calls_to_target=calls_to_target,
        stopped=stopped,
        iterations=strategy.iteration,
        trace=trace,
        objective_seconds=obj_seconds,
        wall_seconds=time.perf_counter() - t_start,
        llm=stats.as_dict() if stats is not None else {},
    )


def _value(v: Any, point: Mapping[str, Any]) -> float:
    """The objective's value as a score (NaN, inf: +inf); a non-number is a clear error."""
    if v is None or isinstance(v, (bool, str, bytes)):
        raise TypeError(
            f"objective returned {v!r} for {dict(point)}; it must return a real number "
            "(lower is better)"
        )
    try:
        f = float(v)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"objective returned {type(v).__name__} {v!r} for {dict(point)}; it must return "
            "a real number (lower is better)"
        ) from e
    return f if math.isfinite(f) else math.inf
