"""The ``llm`` layer: LLM proposals over any population strategy (papers 000/001's rule).

``make_strategy("llm", space, base="tpe", llm=LLMClient(), k=2)`` wraps a base strategy
(``random``, ``pso``, ``ga``, ``tpe``, ``cmaes``). Each generation:

1. the base is asked for its batch, as it would be without the layer;
2. on an LLM generation (every ``llm_every`` generations after the first, at most
   ``max_llm_calls`` times) the LLM is shown the best points evaluated so far (the prompt of
   LLM-PSO) and asked for ``k`` new points; the ``j``-th valid new one replaces the ``j``-th
   member of the ranking ``replace`` picks among the rows the base lets go
   (:meth:`~hgpso.tune.Strategy.foreign_rows`: all of them, GA's children only):

   * ``"worst"`` (default): the members predicted worst. PSO predicts with its particles'
     last scores (exactly LLM-PSO's rule); the other bases have no model of their own, so a
     member's prediction is the score of the nearest point told so far (1-nearest-neighbour
     in the unit cube), ties broken towards later rows.
   * ``"last"``: the last members of the batch, last first (LLM-GA's placement).

   The proposals go through the same validation as LLM-PSO's and LLM-GA's
   (:func:`~hgpso.tune.proposals.propose`): parsed, type-checked, clipped/snapped to the
   space, new (never told before, not repeated); whatever is missing stays the base's own
   member, with one counted fallback and a ``RuntimeWarning``;
3. the adopted points reach the base through :meth:`~hgpso.tune.Strategy.adopt_pending`,
   so the base is told every evaluated point, the LLM's included, as its own: a PSO
   particle moves there with zero velocity, a GA child is replaced, TPE learns from it,
   CMA-ES takes it as an injected solution of the generation (see
   :mod:`hgpso.tune.optuna_strategies`), random search just evaluates it.

``llm`` over ``pso`` with ``replace="worst"`` proposes exactly what ``llm_pso`` proposes
(same prompt, same particles, same seed). ``llm_ga`` keeps its own prompt (parents and
Evolution of Thought), so ``llm`` over ``ga`` is a different strategy. ``llm_tpe``,
``llm_cmaes`` and ``llm_random`` are ``llm`` with that base.

The state (:meth:`~hgpso.tune.Strategy.state_dict`) nests the base's state under
``data["base"]``, beside the LLM counters, all JSON data; ``uses_llm`` is ``True``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from .llm import LLMClient
from .proposals import PromptOptions
from .space import SearchSpace
from .state import StateError
from .strategies import _LLM_DATA_DEFAULTS, Strategy, _LLMMixin, make_strategy, strategy_class

__all__ = ["LAYER_STRATEGIES", "LLMCMAES", "LLMTPE", "LLMLayer", "LLMRandom"]

_REPLACE = ("worst", "last")


class LLMLayer(_LLMMixin, Strategy):
    """LLM proposals replacing the ``k`` worst (or last) members of a base's generations.

    Args:
        space, population, seed: as for every strategy; the base gets the same.
        base: the base strategy's name (not an LLM strategy).
        llm, k, llm_every, max_llm_calls, task, history_size, prompt_options: as for
            ``llm_pso`` (:class:`~hgpso.tune.PromptOptions`).
        replace: ``"worst"`` or ``"last"`` (see the module docstring).
        base_kwargs: keyword arguments of the base (``{"inertia": 0.6}``,
            ``{"n_startup_trials": 5}``).
    """

    name = "llm"
    uses_llm = True
    default_base: ClassVar[str | None] = None
    _DATA_KEYS: ClassVar[tuple[str, ...]] = (
        "base",
        "llm_rounds",
        "llm_stats",
        "prompt_options",
        "adopted",
    )
    _DATA_DEFAULTS = _LLM_DATA_DEFAULTS

    def __init__(
        self,
        space: SearchSpace,
        population: int = 10,
        seed: int = 0,
        base: str | None = None,
        llm: LLMClient | None = None,
        k: int = 2,
        llm_every: int = 1,
        max_llm_calls: int | None = None,
        task: str = "Minimize an unknown black-box function.",
        history_size: int = 8,
        replace: str = "worst",
        base_kwargs: Mapping[str, Any] | None = None,
        prompt_options: PromptOptions | Mapping[str, Any] | None = None,
    ) -> None:
        Strategy.__init__(self, space, population, seed)
        base = base if base is not None else self.default_base
        if base is None:
            raise ValueError('llm: name the base strategy, e.g. base="tpe"')
        if self.default_base is not None and base != self.default_base:
            raise ValueError(
                f"{self.name} is the llm layer over {self.default_base!r}, not {base!r}"
            )
        cls = strategy_class(base)
        if cls.uses_llm:
            raise ValueError(f"llm: the base must be a strategy without an LLM, got {base!r}")
        if replace not in _REPLACE:
            raise ValueError(f"llm: replace must be one of {_REPLACE}, got {replace!r}")
        self.base_name = cls.name
        self.base_kwargs = dict(base_kwargs or {})
        self.replace = replace
        self.base = self._make_base()
        self._init_llm(llm, k, llm_every, max_llm_calls, task, history_size, prompt_options)
        self._adopted: list[int] = []  # rows of the pending batch written by the LLM

    def _make_base(self) -> Strategy:
        return make_strategy(
            self.base_name,
            self.space,
            population=self.population,
            seed=self.seed,
            **self.base_kwargs,
        )

    # -- the generation -------------------------------------------------------------------
    def _ask_unit(self, initial: np.ndarray | None) -> np.ndarray:
        points = self.base.ask()  # the base draws its own first batch (the shared one)
        self._adopted = []
        if self._llm_turn():
            rows = self._ranking(self.base.foreign_rows())
            k = min(self.k, len(rows))
            if k:
                taken = set(rows[:k])  # the rows the LLM's points replace
                kept = [p for r, p in enumerate(points) if r not in taken]
                got = self._ask_llm(self._best_prompt(k), k, kept)
                for row, point in zip(rows, got, strict=False):
                    points[row] = self.base.adopt_pending(row, point)
                    self._adopted.append(row)
        for i, p in enumerate(points):
            self._exact[i] = p
        return np.array([self.space.encode(p) for p in points])

    def _ranking(self, rows: Sequence[int]) -> list[int]:
        """``rows`` in the order the LLM's points take them (see the module docstring)."""
        rows = list(rows)
        if self.replace == "last":
            return rows[::-1]
        own = self.base.predicted_worst(rows)
        if own is not None:
            return list(own)
        told = [(self.space.encode(p), v) for p, v in self.history]
        if not told:
            return rows[::-1]
        xs = np.array([u for u, _ in told])
        vs = np.array([v for _, v in told])
        pending = self.base.pending or []
        pred = []
        for r in rows:
            dist = np.sum((xs - self.space.encode(pending[r])) ** 2, axis=1)
            pred.append(vs[int(np.argmin(dist))])
        # worst first; among equal predictions, later rows first
        order = sorted(range(len(rows)), key=lambda i: (-pred[i], -i))
        return [rows[i] for i in order]

    def _tell_unit(self, u: np.ndarray, values: np.ndarray) -> None:
        self.base.tell(self.base.pending or [], [float(v) for v in values])
        self._adopted = []

    def _cancel(self) -> None:
        self.base.cancel()
        self._adopted = []

    def observe(self, points: Sequence[Mapping[str, Any]], values: Sequence[float]) -> None:
        super().observe(points, values)  # the layer's history and best point
        self.base.observe(points, values)

    def propose_extra(self, rng: np.random.Generator) -> dict[str, Any]:
        return self.base.propose_extra(rng)  # never an LLM call

    def replace_pending(self, index: int, point: Mapping[str, Any]) -> dict[str, Any]:
        point = self.base.replace_pending(index, point)
        return super().replace_pending(index, point)

    @property
    def adopted(self) -> list[int]:
        """Rows of the pending batch that hold the LLM's points (empty after ``tell``)."""
        return list(self._adopted)

    # -- state ----------------------------------------------------------------------------
    def _state_data(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), **self._llm_data(), "adopted": self.adopted}

    def _load_data(self, data: Mapping[str, Any]) -> None:
        adopted = data["adopted"]
        if not isinstance(adopted, list) or not all(
            isinstance(r, int) and not isinstance(r, bool) and 0 <= r < self.population
            for r in adopted
        ):
            raise StateError(f"{self.name} adopted must be a list of rows, got {adopted!r}")
        base = self._make_base()
        base.load_state_dict(data["base"])  # checked in full before anything changes
        self._llm_load(data)
        self.base, self._adopted = base, list(adopted)


class LLMTPE(LLMLayer):
    """``llm`` over Optuna's TPE (``make_strategy("llm_tpe", ...)``)."""

    name = "llm_tpe"
    default_base = "tpe"


class LLMCMAES(LLMLayer):
    """``llm`` over Optuna's CMA-ES (``make_strategy("llm_cmaes", ...)``)."""

    name = "llm_cmaes"
    default_base = "cmaes"


class LLMRandom(LLMLayer):
    """``llm`` over random search (``make_strategy("llm_random", ...)``)."""

    name = "llm_random"
    default_base = "random"


LAYER_STRATEGIES: dict[str, type[Strategy]] = {
    "llm": LLMLayer,
    "llm_tpe": LLMTPE,
    "llm_cmaes": LLMCMAES,
    "llm_random": LLMRandom,
}
