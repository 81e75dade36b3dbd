"""``StrategySampler``: the :mod:`hgpso.tune` strategies as an Optuna sampler.

``optuna.create_study(sampler=StrategySampler("pso", population=10, seed=0))`` runs any
strategy of :func:`~hgpso.tune.make_strategy` (keyword arguments such as ``llm=`` are passed
through) inside an Optuna study, on any storage, with any number of workers, and no worker
ever waits for another worker's trial.

How the population lives in the storage (several workers share ONE population; a study
resumed in a new process continues it):

* The first ``n_startup_trials`` trials are sampled by the independent sampler
  (``RandomSampler(seed)``), and so is every later trial until one trial has completed:
  the relative search space (float, log-float, int, categorical; stepped or single-valued
  distributions stay with the independent sampler) is inferred from completed trials,
  stored in the study's system attrs with generation 0 and mapped onto
  :class:`~hgpso.tune.space.SearchSpace`. Start-up trials are not told to the strategy: its
  first generation is its seeded initial population, as in :func:`~hgpso.tune.minimize`.
* **Roles, decided in trial-number order.** Trial numbers are gap-free and assigned under
  the storage's lock on the study row, so they are one total order all workers agree on.
  Each trial records its role (system attr ``hgpso:role``) right after it is created,
  from its predecessor's record and the storage: a *slot* ``(generation, index)`` of the
  current generation while it has candidates not yet handed out; once all are handed out,
  *the computer* of the next generation if every slot of the current one is finished; else
  an *extra* candidate. A trial reads only its predecessor's role record, which that
  trial's worker writes within milliseconds of creating it (before any objective or LLM
  call); this is the one thing a trial ever waits for, up to ``timeout`` seconds.
  So every candidate is handed out exactly once, whatever the interleaving of workers.
* **A generation is computed once**, by its computer: it loads the strategy state stored
  with the previous generation (JSON, no pickles), tells it the previous generation's
  values in candidate order, tells it (:meth:`~hgpso.tune.Strategy.observe`) the values of
  the extra trials finished since, asks for the next batch and stores candidates and state.
  An LLM strategy therefore calls its LLM once per generation, whatever the number of
  workers. If the computer's trial finishes without having stored the generation (its
  worker died), the next trial computes it instead.
* **Extras: nobody waits.** A trial that arrives while the current generation still has
  unfinished trials gets one extra point from the current strategy state
  (:meth:`~hgpso.tune.Strategy.propose_extra`: PSO a step around the swarm's best, GA one
  more child of the current parents, random search a uniform point; never an LLM call). Its
  value is told with the next generation computed after it finishes, exactly once (the
  told trial numbers are stored). With one worker there are no extras: the study proposes
  exactly what :func:`~hgpso.tune.minimize` proposes for the same seed.
* **Failed, pruned and dead trials.** A slot whose trial failed scores ``+inf`` (the worst
  value); a pruned slot scores its last reported intermediate value, ``+inf`` if it reported
  none. Candidates are never re-issued. Extras that failed are not told; pruned extras with
  an intermediate value are told that value. A worker that dies holds its RUNNING trials:
  with Optuna's heartbeat (``RDBStorage(url, heartbeat_interval=..., grace_period=...)``)
  they become FAIL once stale, the generation completes with them at ``+inf`` and the
  search goes on. Without a heartbeat a dead worker's RUNNING slot keeps its generation
  open forever: the other workers never wait, but get extra points only (the study goes on
  as a local search around the best point, and the strategy never moves again).
* ``direction="maximize"`` studies are handled by negating values (strategies minimize).
* The search space is fixed at generation 0. A later trial whose distributions differ (say
  a range widened) gets a :class:`RuntimeWarning` once per parameter; the population keeps
  proposing the stored ranges: start a new study to search new ones.
* A study should be driven by this sampler from its first trial (each trial must record
  a role; a trial of another sampler RUNNING without one makes the next trial wait for
  ``timeout``): for a study that already holds trials, pass
  ``n_startup_trials=len(study.trials) + 1``. Do not mix in ``study.enqueue_trial`` (an
  enqueued trial's fixed params override its candidate).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

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
    from collections.abc import Sequence

    from optuna.study import Study

__all__ = ["StrategySampler"]

_P = "hgpso:"  # prefix of every system attr this sampler writes
_ROLE = _P + "role"
_FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
_EXTRA_SALT = 0xE27A  # extra points draw from (seed, trial number, salt)


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
        seed: seeds the strategy, its extra points and the independent fallback sampler.
        n_startup_trials: trials sampled independently before the population starts (the
            relative search space is inferred from the completed ones).
        timeout: seconds a new trial may wait for its predecessor trial to record its role
            (milliseconds normally; the predecessor's worker died in between otherwise,
            which Optuna's heartbeat turns into a FAIL that ends the wait); then
            :class:`TimeoutError`. No trial waits for another trial's objective.
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
        timeout: float = 120.0,
        poll: float = 0.02,
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
        self._roles: dict[int, dict[str, Any]] = {}
        # write-once study attrs (the space, each generation's candidates), read once
        self._cache: dict[tuple[int, int, str], Any] = {}
        self._warned: set[str] = set()
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

    @staticmethod
    def generation(study: Study) -> int | None:
        """The last generation computed in ``study`` (``None`` before generation 0)."""
        got = study._storage.get_study_system_attrs(study._study_id).get(_P + "generation")
        return None if got is None else int(got)

    # -- Optuna sampler API ---------------------------------------------------------------
    def reseed_rng(self) -> None:
        self._independent.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self._role(study, trial)["kind"] == "startup":
            return {}  # sampled independently
        return self._stored_space(study) or {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        role = self._role(study, trial)
        if not search_space or role["kind"] == "startup":
            return {}
        if role["kind"] == "slot":
            cands = self._write_once(study, f"{_P}candidates:{role['gen']}")
            point = dict(cands[role["idx"]])
        else:
            point = self._extra(study, trial, search_space)
        return {k: v for k, v in point.items() if k in search_space}

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._independent.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        stored = self._stored_space(study) or {}
        for name, dist in trial.distributions.items():
            if name in stored and dist != stored[name] and name not in self._warned:
                self._warned.add(name)
                warnings.warn(
                    f"StrategySampler: {name!r} is now {dist}, but the population searches "
                    f"the space fixed at generation 0 ({stored[name]}); its candidates stay "
                    "in that range. Start a new study to search the new one.",
                    RuntimeWarning,
                    stacklevel=2,
                )

    # -- roles ----------------------------------------------------------------------------
    def _role(self, study: Study, trial: FrozenTrial) -> dict[str, Any]:
        """This trial's role, decided once (see the module docstring) and recorded."""
        tid = trial._trial_id
        if tid in self._roles:
            return self._roles[tid]
        recorded = trial.system_attrs.get(_ROLE)
        if recorded is not None:  # e.g. the same trial seen again by another sampler call
            self._roles[tid] = recorded
            return recorded
        if trial.number < self.n_startup_trials:
            role: dict[str, Any] = {"kind": "startup", "chain": None}
            self._publish(study, trial, role)
        else:
            chain, trials = self._chain_before(study, trial.number)
            role = self._decide(study, trial, chain, trials)
        self._roles[tid] = role
        return role

    def _publish(self, study: Study, trial: FrozenTrial, role: dict[str, Any]) -> None:
        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, _ROLE, role)  # the commit point
        trial.system_attrs[_ROLE] = role  # the running trial's cached view sees it too
        if role["kind"] == "slot":
            tags = {_P + "gen": role["gen"], _P + "idx": role["idx"]}
        elif role["kind"] == "extra":
            tags = {_P + "extra": role["gen"]}
        else:
            tags = {}
        for name, value in tags.items():
            storage.set_trial_system_attr(trial._trial_id, name, value)
            trial.system_attrs[name] = value

    def _chain_before(
        self, study: Study, number: int
    ) -> tuple[dict[str, Any] | None, list[FrozenTrial]]:
        """The chain summary recorded by the nearest earlier trial that has a role.

        Earlier trials that finished or wait without a role (another sampler's, a worker
        that died before recording one, an enqueued trial) are skipped; one RUNNING
        without a role is about to record it: poll for it, up to ``timeout``.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
            by_number = {t.number: t for t in trials}
            pending = None
            for n in range(number - 1, self.n_startup_trials - 1, -1):
                t = by_number.get(n)
                if t is None:
                    continue
                role = t.system_attrs.get(_ROLE)
                if role is not None:
                    return role["chain"], trials
                if t.state == TrialState.RUNNING:
                    pending = n
                    break
            if pending is None:
                return None, trials  # no population trial before this one
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"StrategySampler: trial {pending} is RUNNING without a recorded role "
                    f"after {self.timeout:g} s: a trial of another sampler, or its worker "
                    "died while starting it (enable Optuna's heartbeat to fail such trials)"
                )
            time.sleep(self.poll)

    def _decide(
        self,
        study: Study,
        trial: FrozenTrial,
        chain: dict[str, Any] | None,
        trials: list[FrozenTrial],
    ) -> dict[str, Any]:
        """This trial's role from its predecessor's chain record and ``trials`` (all, fresh)."""
        attrs = study._storage.get_study_system_attrs(study._study_id)
        if chain is None or chain["gen"] is None:  # no generation yet
            if self._stored_space(study, attrs) is None and self._infer_space(study) is None:
                startup: dict[str, Any] = {"kind": "startup", "chain": None}  # none completed
                self._publish(study, trial, startup)
                return startup
            return self._compute(study, trial, 0)
        gen = chain["gen"]
        size = chain["n"]
        if size is None:  # generation `gen` was being computed by trial chain["computer"]
            cands = attrs.get(f"{_P}candidates:{gen}")
            if cands is None:
                if self._finished(trials, chain["computer"]):
                    return self._compute(study, trial, gen)  # its worker died: take over
                return self._publish_extra(study, trial, chain)
            size = len(cands)
            chain = {**chain, "n": size}
        if chain["issued"] < size:
            idx = chain["issued"]
            role: dict[str, Any] = {
                "kind": "slot",
                "gen": gen,
                "idx": idx,
                "chain": {**chain, "issued": idx + 1},
            }
            self._publish(study, trial, role)
            return role
        if self._generation_done(trials, gen, size):
            return self._compute(study, trial, gen + 1)
        return self._publish_extra(study, trial, chain)

    def _publish_extra(
        self, study: Study, trial: FrozenTrial, chain: dict[str, Any]
    ) -> dict[str, Any]:
        gen = chain["gen"] if chain["n"] is not None else chain["gen"] - 1
        role = {"kind": "extra", "gen": gen, "chain": chain}
        self._publish(study, trial, role)
        return role

    @staticmethod
    def _finished(trials: list[FrozenTrial], number: int) -> bool:
        for t in trials:
            if t.number == number:
                return t.state in _FINISHED
        return True

    @staticmethod
    def _slots(trials: list[FrozenTrial], gen: int) -> list[FrozenTrial]:
        """The trials holding generation ``gen``'s candidates, one per index.

        Two trials hold index 0 only when a computer died before storing the generation
        and a later trial computed it: the later one holds it.
        """
        by_idx: dict[int, FrozenTrial] = {}
        for t in trials:
            r = t.system_attrs.get(_ROLE)
            if r and r["kind"] == "slot" and r["gen"] == gen:
                if r["idx"] not in by_idx or by_idx[r["idx"]].number < t.number:
                    by_idx[r["idx"]] = t
        return list(by_idx.values())

    def _generation_done(self, trials: list[FrozenTrial], gen: int, size: int) -> bool:
        slots = self._slots(trials, gen)
        return len(slots) == size and all(t.state in _FINISHED for t in slots)

    # -- the search space -----------------------------------------------------------------
    def _write_once(self, study: Study, key: str, attrs: Mapping[str, Any] | None = None) -> Any:
        """A study system attr that never changes once written (``None`` until then)."""
        ck = (id(study._storage), study._study_id, key)
        if ck not in self._cache:
            if attrs is None:
                attrs = study._storage.get_study_system_attrs(study._study_id)
            if attrs.get(key) is None:
                return None
            self._cache[ck] = attrs[key]
        return self._cache[ck]

    def _stored_space(
        self, study: Study, attrs: Mapping[str, Any] | None = None
    ) -> dict[str, BaseDistribution] | None:
        stored = self._write_once(study, _P + "space", attrs)
        if stored is None:
            return None
        return {k: json_to_distribution(v) for k, v in stored.items()}

    def _infer_space(self, study: Study) -> dict[str, BaseDistribution] | None:
        space = {
            k: d for k, d in self._intersection.calculate(study).items() if _to_param(d) is not None
        }
        return space or None

    def _make(self, search_space: Mapping[str, BaseDistribution]) -> Strategy:
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

    # -- generations ----------------------------------------------------------------------
    def _score(self, study: Study, t: FrozenTrial) -> float:
        if t.state == TrialState.COMPLETE and t.value is not None:
            v = float(t.value)
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            v = float(t.intermediate_values[max(t.intermediate_values)])
        else:
            return math.inf
        return -v if study.direction == StudyDirection.MAXIMIZE else v

    def _compute(self, study: Study, trial: FrozenTrial, gen: int) -> dict[str, Any]:
        """Compute generation ``gen`` (this trial takes its candidate 0), once."""
        role = {
            "kind": "slot",
            "gen": gen,
            "idx": 0,
            "computes": True,
            "chain": {"gen": gen, "n": None, "issued": 1, "computer": trial.number},
        }
        self._publish(study, trial, role)  # first: the next trial knows it is computed
        storage, sid = study._storage, study._study_id
        attrs = storage.get_study_system_attrs(sid)
        if gen == 0:
            space = self._stored_space(study, attrs) or self._infer_space(study)
            assert space is not None  # _decide checked it
            storage.set_study_system_attr(
                sid, _P + "space", {k: distribution_to_json(d) for k, d in space.items()}
            )
            strategy, told = self._make(space), []
        else:
            space = self._stored_space(study, attrs)
            assert space is not None
            strategy = self._make(space)
            strategy.load_state_dict(json.loads(attrs[f"{_P}state:{gen - 1}"]))
            told = list(attrs.get(f"{_P}told:{gen - 1}", []))
            prev = attrs[f"{_P}candidates:{gen - 1}"]
            trials = storage.get_all_trials(sid, deepcopy=False)
            by_idx = {t.system_attrs[_P + "idx"]: t for t in self._slots(trials, gen - 1)}
            values = [self._score(study, by_idx[i]) for i in range(len(prev))]
            strategy.tell([dict(p) for p in prev], values)
            told += self._observe_extras(study, trials, strategy, set(told))
        candidates = [_plain(c) for c in strategy.ask()]
        state = json.dumps(strategy.state_dict(), allow_nan=False)
        # The candidates are written last: their presence means the generation is stored.
        storage.set_study_system_attr(sid, f"{_P}state:{gen}", state)
        storage.set_study_system_attr(sid, f"{_P}told:{gen}", sorted(told))
        storage.set_study_system_attr(sid, f"{_P}candidates:{gen}", candidates)
        storage.set_study_system_attr(sid, _P + "state", state)
        storage.set_study_system_attr(sid, _P + "generation", gen)
        if gen >= 1:  # the previous state is needed only to recompute this generation
            storage.set_study_system_attr(sid, f"{_P}state:{gen - 1}", None)
        return role

    def _observe_extras(
        self, study: Study, trials: list[FrozenTrial], strategy: Strategy, told: set[int]
    ) -> list[int]:
        """Tell the strategy the extra trials finished since; returns their numbers."""
        points, values, numbers = [], [], []
        for t in sorted(trials, key=lambda t: t.number):
            role = t.system_attrs.get(_ROLE)
            if not role or role["kind"] != "extra" or t.number in told:
                continue
            if t.state == TrialState.FAIL or (
                t.state == TrialState.PRUNED and not t.intermediate_values
            ):
                numbers.append(t.number)  # nothing to tell, ever
                continue
            if t.state not in _FINISHED or not set(strategy.space.names) <= set(t.params):
                continue  # still running (told later), or it never suggested the space
            points.append({k: t.params[k] for k in strategy.space.names})
            values.append(self._score(study, t))
            numbers.append(t.number)
        if points:
            strategy.observe(points, values)
        return numbers

    def _extra(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        state = study._storage.get_study_system_attrs(study._study_id).get(_P + "state")
        strategy = self._make(search_space)
        if state is not None:
            strategy.load_state_dict(json.loads(state))
        rng = np.random.default_rng([self.seed, trial.number, _EXTRA_SALT])
        return _plain(strategy.propose_extra(rng))


def _plain(point: dict[str, Any]) -> dict[str, Any]:
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in point.items()}
