"""Optuna's TPE and CMA-ES samplers as ask/tell strategies of :mod:`hgpso.tune`.

``make_strategy("tpe", space, population=10, seed=0)`` (or ``"cmaes"``) drives an
``optuna.samplers.TPESampler`` (``CmaEsSampler``) through a private in-memory study: each
:meth:`~hgpso.tune.Strategy.ask` creates ``population`` trials and lets the sampler choose
their parameters in the space's own types (``Float`` -> ``FloatDistribution`` with its
``log``, ``Int`` -> ``IntDistribution``, ``Categorical`` -> ``CategoricalDistribution``);
:meth:`~hgpso.tune.Strategy.tell` completes them. So the samplers users already trust become
population strategies that :func:`~hgpso.tune.minimize`, ``StrategySampler`` and the ``llm``
layer (:class:`~hgpso.tune.layer.LLMLayer`) drive like any other.

* **First batch.** The shared initial population ``space.initial_unit(seed, population)``
  (decoded) is enqueued, so for a given seed TPE and CMA-ES start from the same points as
  random search, PSO and GA. TPE counts them among its ``n_startup_trials``; CMA-ES uses
  them only to learn the search space (its first generation starts at the centre of the
  box, as Optuna's CMA-ES does).
* **Foreign points** (:meth:`~hgpso.tune.Strategy.adopt_pending`, e.g. the LLM's
  proposals): the sampled trial of that row is discarded (FAIL, which both samplers ignore)
  and a trial with the foreign point's parameters takes its place. TPE learns from it like
  from its own trials. For CMA-ES the new trial is created while the generation is open, so
  the sampler counts it as one of that generation's ``popsize`` solutions, with the foreign
  point as its ``x``: an *injected solution* (Hansen 2011) that enters the mean and
  covariance update by its rank. ``popsize`` is the strategy's ``population``.
* **Observed points** (:meth:`~hgpso.tune.Strategy.observe`: extra trials of
  ``StrategySampler``) are added as completed trials: TPE learns from them; CMA-ES ignores
  them in its update (they belong to no generation), they count only for the best point.
* **Extra points** (:meth:`~hgpso.tune.Strategy.propose_extra`): a Gaussian step, 0.1 of
  each range in the unit cube, around the best point told so far (uniform before any).
* **Cancel** tells the pending trials FAIL: the samplers ignore them.
* **State** (:meth:`~hgpso.tune.Strategy.state_dict`) is data, not a pickle: the sampler's
  seed and the log of what was done to the study (each batch asked with its points, each
  adopted point, told values, cancels, observed points). Loading *replays* the log into a
  fresh study with a fresh sampler of the same settings and checks that every batch comes
  out as recorded; a state written with other sampler settings or another Optuna version
  that samples differently is refused (:class:`~hgpso.tune.state.StateError`). Replay costs
  one sampler call per trial so far (TPE's grows with the number of trials).

Values are told as they are (``+inf`` for failures, which Optuna accepts as a worst value).
Optuna is imported when such a strategy is built (``pip install -e ".[tune]"``; CMA-ES also
needs ``cmaes``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from .space import Categorical, Float, Int, SearchSpace
from .state import StateError, read_int, read_point, read_scores, write_scores
from .strategies import Strategy

__all__ = ["CMAES", "OPTUNA_STRATEGIES", "TPE", "OptunaStrategy"]


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the tpe and cmaes strategies need optuna: pip install optuna "
            '(from a clone of hgpso: pip install -e ".[tune]")'
        ) from e
    return optuna


@contextlib.contextmanager
def _quiet_study_creation() -> Iterator[None]:
    # InMemoryStorage logs "A new study created in memory" at INFO for every private study
    log = logging.getLogger("optuna.storages._in_memory")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _distribution(p: Any) -> Any:
    d = _optuna().distributions
    if isinstance(p, Float):
        return d.FloatDistribution(float(p.low), float(p.high), log=bool(p.log))
    if isinstance(p, Int):
        return d.IntDistribution(int(p.low), int(p.high), log=bool(p.log))
    if isinstance(p, Categorical):
        return d.CategoricalDistribution(list(p.choices))
    raise TypeError(f"no Optuna distribution for {p!r}")  # pragma: no cover


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


class OptunaStrategy(Strategy):
    """An Optuna sampler driven ask/tell in a private in-memory study (see the module doc).

    Args:
        space, population, seed: as for every strategy (``seed`` seeds the sampler).
        **sampler_kwargs: passed to the sampler (``TPESampler(n_startup_trials=...,
            multivariate=...)``, ``CmaEsSampler(sigma0=..., ...)``).
    """

    name = "optuna"
    _DATA_KEYS: ClassVar[tuple[str, ...]] = ("sampler_seed", "events")

    def __init__(
        self, space: SearchSpace, population: int = 10, seed: int = 0, **sampler_kwargs: Any
    ) -> None:
        super().__init__(space, population, seed)
        self.sampler_kwargs = dict(sampler_kwargs)
        self._distributions = {n: _distribution(p) for n, p in self.space.items()}
        self._sampler_seed = self.seed
        # bad sampler arguments fail here, not at the first ask
        self._study, self._trials, self._events = self._fresh(self.seed)

    # -- the sampler --------------------------------------------------------------------
    def _make_sampler(self, seed: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fresh(self, seed: int) -> tuple[Any, list[Any], list[list[Any]]]:
        optuna = _optuna()
        storage = optuna.storages.InMemoryStorage()
        with _quiet_study_creation():
            storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "hgpso")
        study = optuna.Study("hgpso", storage, sampler=self._make_sampler(seed))
        return study, [], []

    # -- operations on the study (each one logged for the replay) -------------------------
    def _new_trial(self, study: Any, fixed: Mapping[str, Any] | None) -> tuple[Any, dict]:
        if fixed is not None:
            study.enqueue_trial(dict(fixed))
        trial = study.ask()
        # Let the sampler see the trial even when its parameters are fixed: CMA-ES then
        # counts it as a solution of the open generation (an injected solution).
        trial.relative_params  # noqa: B018 - evaluated for its effect on the sampler
        point = {}
        for name, dist in self._distributions.items():
            if isinstance(dist, _optuna().distributions.CategoricalDistribution):
                point[name] = _plain(trial.suggest_categorical(name, dist.choices))
            elif isinstance(dist, _optuna().distributions.IntDistribution):
                point[name] = _plain(trial.suggest_int(name, dist.low, dist.high, log=dist.log))
            else:
                point[name] = _plain(trial.suggest_float(name, dist.low, dist.high, log=dist.log))
        return trial, point

    def _do(self, study: Any, trials: list[Any], event: Sequence[Any]) -> list[dict] | None:
        """Apply one logged event to ``study``; an ``ask`` returns the points it sampled."""
        kind = event[0]
        fail = _optuna().trial.TrialState.FAIL
        if kind == "ask":
            _, recorded, enqueued = event
            trials.clear()
            points = []
            for p in recorded if enqueued else [None] * len(recorded):
                t, point = self._new_trial(study, p)
                trials.append(t)
                points.append(point)
            return points
        if kind == "adopt":
            _, row, point = event
            study.tell(trials[row], state=fail)
            trials[row], _ = self._new_trial(study, point)
        elif kind == "tell":
            for t, v in zip(trials, event[1], strict=True):
                study.tell(t, float(v))
            trials.clear()
        elif kind == "cancel":
            for t in trials:
                study.tell(t, state=fail)
            trials.clear()
        elif kind == "observe":
            create = _optuna().trial.create_trial
            for p, v in zip(event[1], event[2], strict=True):
                study.add_trial(
                    create(params=dict(p), distributions=self._distributions, value=float(v))
                )
        return None

    def _log(self, event: list[Any]) -> list[dict] | None:
        out = self._do(self._study, self._trials, event)
        self._events.append(event)
        return out

    # -- Strategy hooks -------------------------------------------------------------------
    def _ask_unit(self, initial: np.ndarray | None) -> np.ndarray:
        if initial is not None:
            points = [self.space.decode(row) for row in initial]
            got = self._log(["ask", points, True])
        else:
            got = self._do(self._study, self._trials, ["ask", [None] * self.population, False])
            self._events.append(["ask", got, False])
        assert got is not None
        for i, p in enumerate(got):
            self._exact[i] = p
        return np.array([self.space.encode(p) for p in got])

    def _replace_unit(self, index: int, u: np.ndarray) -> None:
        self._log(["adopt", index, dict(self._exact[index])])

    def _tell_unit(self, u: np.ndarray, values: np.ndarray) -> None:
        self._log(["tell", [float(v) for v in values]])

    def _cancel(self) -> None:
        if self._trials:
            self._log(["cancel"])

    def observe(self, points: Sequence[Mapping[str, Any]], values: Sequence[float]) -> None:
        n = len(self.history)
        super().observe(points, values)
        told = self.history[n:]  # the coerced points and scores, as recorded
        if told:
            self._log(["observe", [p for p, _ in told], [v for _, v in told]])

    def _extra_unit(self, rng: np.random.Generator) -> np.ndarray:
        if self.best_point is None:
            return super()._extra_unit(rng)
        u = self.space.encode(self.best_point)
        return np.clip(u + rng.normal(0.0, 0.1, self.space.dim), 0.0, 1.0)

    # -- state ----------------------------------------------------------------------------
    def _state_data(self) -> dict[str, Any]:
        events: list[list[Any]] = []
        for e in self._events:
            if e[0] == "tell":
                events.append(["tell", write_scores(e[1])])
            elif e[0] == "observe":
                events.append(["observe", [dict(p) for p in e[1]], write_scores(e[2])])
            elif e[0] == "ask":
                events.append(["ask", [dict(p) for p in e[1]], e[2]])
            elif e[0] == "adopt":
                events.append(["adopt", e[1], dict(e[2])])
            else:
                events.append(list(e))
        return {"sampler_seed": self._sampler_seed, "events": events}

    def _read_events(self, raw: Any) -> list[list[Any]]:
        if not isinstance(raw, list):
            raise StateError(f"{self.name} events must be a list")
        events: list[list[Any]] = []
        for i, e in enumerate(raw):
            where = f"{self.name} events[{i}]"
            if not isinstance(e, list) or not e:
                raise StateError(f"{where} must be a non-empty list")
            kind, n = e[0], len(e)
            if kind == "ask" and n == 3 and isinstance(e[2], bool) and isinstance(e[1], list):
                pts = [read_point(p, self.space, f"{where} point {j}") for j, p in enumerate(e[1])]
                if len(pts) != self.population:
                    raise StateError(f"{where} must ask {self.population} points")
                events.append(["ask", pts, e[2]])
            elif kind == "adopt" and n == 3:
                row = read_int(e[1], f"{where} row")
                if row >= self.population:
                    raise StateError(f"{where} row {row} is not a row of a batch")
                events.append(["adopt", row, read_point(e[2], self.space, f"{where} point")])
            elif kind == "tell" and n == 2:
                events.append(["tell", list(read_scores(e[1], f"{where} values"))])
            elif kind == "cancel" and n == 1:
                events.append(["cancel"])
            elif kind == "observe" and n == 3 and isinstance(e[1], list):
                pts = [read_point(p, self.space, f"{where} point {j}") for j, p in enumerate(e[1])]
                vals = list(read_scores(e[2], f"{where} values", len(pts)))
                events.append(["observe", pts, vals])
            else:
                raise StateError(f"{where} is not an ask/adopt/tell/cancel/observe event: {e!r}")
        return events

    def _load_data(self, data: Mapping[str, Any]) -> None:
        seed = read_int(data["sampler_seed"], f"{self.name} sampler_seed", low=-(2**63))
        events = self._read_events(data["events"])
        study, trials, _ = self._fresh(seed)
        try:
            for i, e in enumerate(events):
                if e[0] == "ask" and not e[2]:
                    got = self._do(study, trials, ["ask", [None] * len(e[1]), False])
                    if [self.space.key(p) for p in got or []] != [self.space.key(p) for p in e[1]]:
                        raise StateError(
                            f"{self.name} state: replaying event {i} sampled other points than "
                            "the saved ones (another sampler setting or Optuna version?)"
                        )
                else:
                    self._do(study, trials, e)
        except StateError:
            raise
        except (ValueError, TypeError, IndexError, RuntimeError) as e:
            raise StateError(f"{self.name} state does not replay: {e}") from e
        self._study, self._trials, self._events = study, trials, events
        self._sampler_seed = seed


class TPE(OptunaStrategy):
    """``optuna.samplers.TPESampler(seed=seed, **sampler_kwargs)`` as a population strategy."""

    name = "tpe"

    def _make_sampler(self, seed: int) -> Any:
        return _optuna().samplers.TPESampler(seed=seed, **self.sampler_kwargs)


class CMAES(OptunaStrategy):
    """``optuna.samplers.CmaEsSampler(seed=seed, popsize=population, **sampler_kwargs)``.

    One generation of CMA-ES is one batch: ``popsize`` is the strategy's ``population``
    (another ``popsize`` is refused). Categorical parameters are sampled independently by
    Optuna (CMA-ES handles numbers only).
    """

    name = "cmaes"

    def __init__(
        self, space: SearchSpace, population: int = 10, seed: int = 0, **sampler_kwargs: Any
    ) -> None:
        popsize = sampler_kwargs.pop("popsize", population)
        if popsize != population:
            raise ValueError(
                f"cmaes: popsize={popsize} differs from population={population}; one batch "
                "is one CMA-ES generation, so they are the same number"
            )
        super().__init__(space, population, seed, **sampler_kwargs)

    def _make_sampler(self, seed: int) -> Any:
        return _optuna().samplers.CmaEsSampler(
            seed=seed, popsize=self.population, **self.sampler_kwargs
        )


OPTUNA_STRATEGIES: dict[str, type[Strategy]] = {"tpe": TPE, "cmaes": CMAES}
