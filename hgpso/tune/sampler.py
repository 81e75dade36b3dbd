"""``StrategySampler``: the :mod:`hgpso.tune` strategies as an Optuna sampler.

``optuna.create_study(sampler=StrategySampler("pso", population=10, seed=0))`` runs any
strategy of :func:`~hgpso.tune.make_strategy` (keyword arguments such as ``llm=`` are passed
through) inside an Optuna study, on any storage.

How the population lives in the storage (so several workers share ONE population and a
study resumed in a new process continues it):

* The first ``n_startup_trials`` trials are sampled by the independent sampler
  (``RandomSampler(seed)``); from their completed trials the relative search space
  (float, log-float, int, categorical; stepped or single-valued distributions stay with the
  independent sampler) is inferred, stored in the study's system attrs at generation 0 and
  mapped onto :class:`~hgpso.tune.space.SearchSpace`, whose unit-cube encoding the
  strategies use. Parameters outside it (dynamic spaces) are sampled independently.
* Every later trial gets a *slot* ``k``: its rank by trial id among the study's trials,
  minus ``n_startup_trials``. Trial ids are the storage's primary key, so this assignment
  is atomic across workers; slots are handed out in order: the first ``len(batch_0)``
  to generation 0's candidates, the next ``len(batch_1)`` to generation 1's, and so on.
  No candidate is handed out twice, and a resumed study simply continues the count.
* The trial holding candidate 0 of generation ``g`` computes the generation ONCE: it waits
  until all trials of generation ``g - 1`` are finished, reloads the strategy state
  stored after generation ``g - 1`` (JSON, no pickles), tells it the finished
  ``(x, value)`` pairs in candidate order, asks for the next batch and stores the candidate
  list and the new state in the study's system attrs. The other trials of generation ``g``
  wait for that list. An LLM strategy therefore calls its LLM once per generation, not
  once per worker. Generations are synchronous: a worker may idle at a generation's end.
* Failed trials score ``+inf`` (a bad value); pruned trials score their last reported
  intermediate value, or ``+inf`` if they reported none. Candidates are never re-issued.
  A worker that dies holding a RUNNING trial blocks the generation: the others raise
  :class:`TimeoutError` after ``timeout`` seconds.
* ``direction="maximize"`` studies are handled by negating values (strategies minimize).
* Every trial of the study counts as a slot, so a study should be driven by this sampler
  from its first trial: for a study that already holds trials from another sampler pass
  ``n_startup_trials=len(study.trials) + 1``, and do not mix in ``study.enqueue_trial``
  (an enqueued trial's fixed params would override its candidate).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .space import Categorical, Float, Int, Param, SearchSpace
from .strategies import Strategy, make_strategy

if TYPE_CHECKING:
    from optuna.study import Study

__all__ = ["StrategySampler"]

_T = TypeVar("_T")

_P = "hgpso:"  # prefix of every system attr this sampler writes
_FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


def _to_param(dist: BaseDistribution) -> Param | None:
    """The hgpso parameter for an Optuna distribution, or None if it is left to fallback."""
    if isinstance(dist, FloatDistribution):
        if dist.step is not None or dist.low >= dist.high:
            return None
        return Float(dist.low, dist.high, log=dist.log)
    if isinstance(dist, IntDistribution):
        if dist.step != 1 or dist.low >= dist.high:
            return None
        return Int(dist.low, dist.high, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        if len(dist.choices) < 2:
            return None
        return Categorical(dist.choices)
    return None


class StrategySampler(BaseSampler):
    """Optuna sampler running an :mod:`hgpso.tune` strategy over a shared population.

    Args:
        strategy: a name accepted by :func:`~hgpso.tune.make_strategy` (``"random"``,
            ``"pso"``, ``"ga"``, ``"llm_pso"``, ``"llm_ga"``).
        population: candidates per generation.
        seed: seeds the strategy and the independent fallback sampler.
        n_startup_trials: trials sampled independently before the population starts (the
            relative search space is inferred from the completed ones).
        timeout: seconds a trial may wait for the previous generation to finish or for its
            generation's candidates; then :class:`TimeoutError`.
        poll: seconds between storage reads while waiting.
        independent_sampler: sampler for parameters outside the relative search space;
            default ``RandomSampler(seed)``.
        **strategy_kwargs: passed to :func:`~hgpso.tune.make_strategy` (e.g. ``llm=``).
    """

    def __init__(
        self,
        strategy: str = "pso",
        population: int = 10,
        seed: int = 0,
        *,
        n_startup_trials: int = 1,
        timeout: float = 3600.0,
        poll: float = 0.05,
        independent_sampler: BaseSampler | None = None,
        **strategy_kwargs: Any,
    ) -> None:
        if int(population) < 2:
            raise ValueError(f"population must be >= 2, got {population}")
        if int(n_startup_trials) < 1:
            raise ValueError(f"n_startup_trials must be >= 1, got {n_startup_trials}")
        if not timeout > 0 or not poll > 0:
            raise ValueError(f"timeout and poll must be > 0, got {timeout} and {poll}")
        self.strategy_name = strategy
        self.population = int(population)
        self.seed = int(seed)
        self.n_startup_trials = int(n_startup_trials)
        self.timeout = float(timeout)
        self.poll = float(poll)
        self._slots: dict[int, int] = {}
        self.strategy_kwargs = dict(strategy_kwargs)
        # Fail fast on a bad name or bad keyword arguments, before any trial runs.
        make_strategy(
            strategy,
            SearchSpace({"x": Float(0.0, 1.0)}),
            population=self.population,
            seed=self.seed,
            **self.strategy_kwargs,
        )
        self._independent = independent_sampler or RandomSampler(seed=seed)
        self._intersection = IntersectionSearchSpace()

    # -- Optuna sampler API ---------------------------------------------------------------
    def reseed_rng(self) -> None:
        self._independent.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self._slot(study, trial) < 0:
            return {}  # a start-up trial: sampled independently
        return self._wait(lambda: self._space(study), "a completed trial to fix the space")

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        k = self._slot(study, trial)
        if k < 0 or not search_space:
            return {}
        storage, sid = study._storage, study._study_id
        # Walk the generations (their sizes can differ: GA keeps its elites) to find the
        # one this slot falls in; its first slot's trial computes it.
        gen, offset = 0, 0
        while True:
            key = f"{_P}candidates:{gen}"
            if k == offset and key not in storage.get_study_system_attrs(sid):
                if gen > 0:
                    self._wait(
                        partial(self._generation_done, study, gen - 1),
                        f"generation {gen - 1} to finish",
                    )
                candidates = self._next_generation(study, gen, search_space)
            else:
                candidates = self._wait(
                    partial(self._candidates, study, gen),
                    f"generation {gen}'s candidates",
                )
            if k < offset + len(candidates):
                break
            gen, offset = gen + 1, offset + len(candidates)
        idx = k - offset
        for name, value in ((_P + "gen", gen), (_P + "idx", idx)):
            storage.set_trial_system_attr(trial._trial_id, name, value)
            trial.system_attrs[name] = value  # the running trial's cached view sees it too
        return dict(candidates[idx])

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._independent.sample_independent(study, trial, param_name, param_distribution)

    # -- generations ----------------------------------------------------------------------
    def _slot(self, study: Study, trial: FrozenTrial) -> int:
        """Position of ``trial`` in the population sequence (negative: a start-up trial).

        Trial ids are the storage's primary key, unique and increasing across all workers,
        so ranking a trial by id among the study's trials is the one atomic assignment the
        storage offers: slots map one to one onto the generations' candidates in order, and
        no candidate can be handed out twice.
        """
        tid = trial._trial_id
        if tid not in self._slots:
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
            rank = sum(1 for t in trials if t._trial_id < tid)
            self._slots[tid] = rank - self.n_startup_trials
        return self._slots[tid]

    def _space(self, study: Study) -> dict[str, BaseDistribution] | None:
        stored = study._storage.get_study_system_attrs(study._study_id).get(_P + "space")
        if stored is not None:
            return {k: json_to_distribution(v) for k, v in stored.items()}
        space = {
            k: d for k, d in self._intersection.calculate(study).items() if _to_param(d) is not None
        }
        return space or None

    def _wait(self, ready: Callable[[], _T | None], what: str) -> _T:
        deadline = time.monotonic() + self.timeout
        while True:
            got = ready()
            if got is not None and got is not False:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"StrategySampler waited {self.timeout:g} s for {what}; a worker holding "
                    "one of its trials may have died (raise `timeout` for slow objectives)"
                )
            time.sleep(self.poll)

    def _candidates(self, study: Study, gen: int) -> list[dict[str, Any]] | None:
        attrs = study._storage.get_study_system_attrs(study._study_id)
        got: list[dict[str, Any]] | None = attrs.get(f"{_P}candidates:{gen}")
        return got

    def _generation_trials(self, study: Study, gen: int) -> list[FrozenTrial]:
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        return [t for t in trials if t.system_attrs.get(_P + "gen") == gen]

    def _generation_done(self, study: Study, gen: int) -> bool:
        size = len(study._storage.get_study_system_attrs(study._study_id)[f"{_P}candidates:{gen}"])
        trials = self._generation_trials(study, gen)
        return len(trials) == size and all(t.state in _FINISHED for t in trials)

    def _score(self, study: Study, t: FrozenTrial) -> float:
        if t.state == TrialState.COMPLETE and t.value is not None:
            v = float(t.value)
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            v = float(t.intermediate_values[max(t.intermediate_values)])
        else:
            return float("inf")
        return -v if study.direction == StudyDirection.MAXIMIZE else v

    def _make(self, search_space: dict[str, BaseDistribution]) -> Strategy:
        params: dict[str, Param] = {}
        for name, dist in search_space.items():
            p = _to_param(dist)
            if p is not None:
                params[name] = p
        return make_strategy(
            self.strategy_name,
            SearchSpace(params),
            population=self.population,
            seed=self.seed,
            **self.strategy_kwargs,
        )

    def _next_generation(
        self, study: Study, gen: int, search_space: dict[str, BaseDistribution]
    ) -> list[dict[str, Any]]:
        storage, sid = study._storage, study._study_id
        strategy = self._make(search_space)
        if gen == 0:
            storage.set_study_system_attr(
                sid, _P + "space", {k: distribution_to_json(d) for k, d in search_space.items()}
            )
        else:
            attrs = storage.get_study_system_attrs(sid)
            strategy.load_state_dict(json.loads(attrs[_P + "state"]))
            prev: Sequence[dict[str, Any]] = attrs[f"{_P}candidates:{gen - 1}"]
            by_idx = {
                t.system_attrs[_P + "idx"]: t for t in self._generation_trials(study, gen - 1)
            }
            values = [self._score(study, by_idx[i]) for i in range(len(prev))]
            strategy.tell([dict(p) for p in prev], values)
        candidates = [_plain(c) for c in strategy.ask()]
        storage.set_study_system_attr(sid, f"{_P}candidates:{gen}", candidates)
        storage.set_study_system_attr(sid, _P + "state", json.dumps(strategy.state_dict()))
        storage.set_study_system_attr(sid, _P + "generation", gen)
        return candidates


def _plain(point: dict[str, Any]) -> dict[str, Any]:
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in point.items()}
