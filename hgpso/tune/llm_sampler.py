"""``LLMSampler``: the LLM's proposals injected into a study run by any Optuna sampler.

For users who run their own study with ``TPESampler`` or ``CmaEsSampler`` (or any other
sampler)::

    sampler = LLMSampler(optuna.samplers.TPESampler(seed=0), llm=LLMClient(), k=2, every=10)
    study = optuna.create_study(sampler=sampler, storage=...)

Every ``every`` trials (a *generation*) the LLM is shown the best completed trials so far
and proposes ``k`` new points; they are enqueued (``study.enqueue_trial``) and become the
parameters of the next trials any worker starts. Everything else is the base sampler's.

* **Once per generation, whatever the number of workers.** Trial numbers are assigned by
  the storage, gap-free, one order all workers agree on. The trial numbered
  ``n_startup_trials + g * every`` asks the LLM for generation ``g`` (in ``before_trial``,
  in the worker that created it), and no other trial does: no lock, no claim, no waiting;
  only that worker spends the LLM's seconds. The round is recorded in the study's system
  attr ``hgpso:llm:<g>`` (asking trial, accepted points, the round's LLM counters);
  :meth:`LLMSampler.llm_stats` sums them for the whole study, across processes and resumes.
* **Delivery.** Each accepted point is enqueued as a trial *without fixed parameters*,
  carrying the point in its user attr ``hgpso:llm_point``; the storage hands each waiting
  trial to exactly one worker. When such a trial samples, this sampler first lets the base
  sampler sample it as usual, then answers with the LLM's values. So a ``CmaEsSampler``
  counts the trial as one of its generation's solutions with the LLM's point as ``x`` (an
  injected solution; a trial with *fixed* parameters would bypass the sampler and be
  ignored by CMA-ES's update), and TPE learns from it like from its own trials.
* **Validation, fallbacks, counters**: as in the strategies
  (:func:`hgpso.tune.proposals.propose`): the answer is parsed as data, each point
  type-checked and clipped/snapped to the search space (inferred from the completed trials:
  float, int and categorical distributions), points already tried (any trial, waiting ones
  included) or repeated are dropped, and a short answer is one counted fallback and a
  ``RuntimeWarning``: the base sampler simply samples the slots the LLM did not fill.
  Before any trial has completed, a generation's round is skipped (recorded as such).
* A worker that dies while its trial asks the LLM costs that generation's proposals only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .llm import LLMClient, LLMStats
from .proposals import PromptOptions, best_points_prompt, propose
from .sampler import _to_param
from .space import Param, SearchSpace

if TYPE_CHECKING:
    from collections.abc import Sequence

    from optuna.study import Study

__all__ = ["LLMSampler"]

_POINT = "hgpso:llm_point"  # user attr of a trial that carries an LLM proposal
_GEN = "hgpso:llm_generation"
_ROUND = "hgpso:llm:"  # study system attr prefix, one per generation


def _contains(dist: BaseDistribution, v: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return any(type(c) is type(v) and c == v for c in dist.choices)
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if isinstance(dist, IntDistribution) and int(v) != v:
            return False
        return dist.low <= v <= dist.high
    return False


class LLMSampler(BaseSampler):
    """A sampler that delegates to ``base_sampler`` and injects LLM proposals (module doc).

    Args:
        base_sampler: any Optuna sampler (``TPESampler``, ``CmaEsSampler``, ...).
        llm: the :class:`~hgpso.tune.LLMClient` (default: one from the environment).
        k: points the LLM proposes per generation.
        every: trials per generation (for CMA-ES, its ``popsize``).
        n_startup_trials: trials before the first LLM round (default ``every``).
        max_llm_calls: LLM rounds per study (default: no cap).
        task, history_size: the prompt's task line and how many best trials it shows.
        prompt_options: how the prompt is written
            (:class:`~hgpso.tune.PromptOptions`; default: as the strategies').
    """

    def __init__(
        self,
        base_sampler: BaseSampler,
        llm: LLMClient | None = None,
        k: int = 2,
        every: int = 10,
        *,
        n_startup_trials: int | None = None,
        max_llm_calls: int | None = None,
        task: str = "Minimize an unknown black-box function.",
        history_size: int = 8,
        prompt_options: PromptOptions | dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(base_sampler, BaseSampler):
            raise TypeError(f"base_sampler must be an Optuna sampler, got {base_sampler!r}")
        if int(every) < 1 or not 1 <= int(k) <= int(every):
            raise ValueError(f"need every >= 1 and 1 <= k <= every, got k={k}, every={every}")
        start = int(every) if n_startup_trials is None else int(n_startup_trials)
        if start < 1:
            raise ValueError(f"n_startup_trials must be >= 1, got {n_startup_trials}")
        if max_llm_calls is not None and int(max_llm_calls) < 0:
            raise ValueError(f"max_llm_calls must be >= 0, got {max_llm_calls}")
        self.base_sampler = base_sampler
        self.llm = llm if llm is not None else LLMClient()
        self.k, self.every, self.n_startup_trials = int(k), int(every), start
        self.max_llm_calls = None if max_llm_calls is None else int(max_llm_calls)
        if isinstance(history_size, bool) or int(history_size) < 1:
            raise ValueError(f"history_size must be >= 1, got {history_size!r}")
        self.task, self.history_size = task, int(history_size)
        self.prompt_options = PromptOptions.make(prompt_options)
        self._intersection = IntersectionSearchSpace()

    # -- reading a study ------------------------------------------------------------------
    def generation_of(self, number: int) -> int | None:
        """The generation whose LLM round trial ``number`` asks, or ``None``."""
        n = number - self.n_startup_trials
        if n < 0 or n % self.every:
            return None
        g = n // self.every
        return g if self.max_llm_calls is None or g < self.max_llm_calls else None

    @staticmethod
    def rounds(study: Study) -> dict[int, dict[str, Any]]:
        """The recorded LLM rounds of ``study``, by generation."""
        attrs = study._storage.get_study_system_attrs(study._study_id)
        return {int(k[len(_ROUND) :]): v for k, v in attrs.items() if k.startswith(_ROUND)}

    @classmethod
    def llm_stats(cls, study: Study) -> LLMStats:
        """The LLM counters of every round of ``study`` (all workers, all sessions)."""
        total = LLMStats()
        for r in cls.rounds(study).values():
            for f in fields(LLMStats):
                setattr(total, f.name, getattr(total, f.name) + r.get("stats", {}).get(f.name, 0))
        return total

    # -- Optuna sampler API ---------------------------------------------------------------
    def reseed_rng(self) -> None:
        self.base_sampler.reseed_rng()

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.base_sampler.before_trial(study, trial)
        g = self.generation_of(trial.number)
        if g is not None:
            self._round(study, trial, g)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.base_sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        # the base samples first (CMA-ES counts the trial as a solution of its generation)
        params = dict(self.base_sampler.sample_relative(study, trial, search_space))
        point = trial.user_attrs.get(_POINT)
        if point:
            for name, dist in search_space.items():
                if name in point and _contains(dist, point[name]):
                    params[name] = point[name]
        return params

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        point = trial.user_attrs.get(_POINT)
        if point and param_name in point and _contains(param_distribution, point[param_name]):
            return point[param_name]
        return self.base_sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.base_sampler.after_trial(study, trial, state, values)

    # -- the LLM round --------------------------------------------------------------------
    def _space(self, study: Study) -> SearchSpace | None:
        params: dict[str, Param] = {}
        for name, dist in self._intersection.calculate(study).items():
            p = _to_param(dist)
            if p is not None:
                params[name] = p
        return SearchSpace(params) if params else None

    def _round(self, study: Study, trial: FrozenTrial, g: int) -> None:
        key = f"{_ROUND}{g}"
        space = self._space(study)
        if space is None:
            study._storage.set_study_system_attr(
                study._study_id, key, {"trial": trial.number, "skipped": "no completed trial"}
            )
            return
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        history: list[tuple[dict[str, Any], float]] = []
        tried: set[tuple] = set()
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
            pending = t.user_attrs.get(_POINT)
            src = t.params if set(space.names) <= set(t.params) else pending
            if not src or not set(space.names) <= set(src):
                continue
            try:
                point = space.coerce({n: src[n] for n in space.names})
            except (TypeError, ValueError, KeyError):
                continue
            tried.add(space.key(point))
            if t.state == TrialState.COMPLETE and t.value is not None:
                v = sign * float(t.value)
                history.append((point, v if math.isfinite(v) else math.inf))
        before = asdict(self.llm.stats)
        opts = self.prompt_options
        prompt = best_points_prompt(self.task, space, history, self.history_size, self.k, opts)
        got = propose(
            self.llm, space, prompt, self.k, tried, "LLMSampler", stacklevel=4, units=opts.units
        )
        after = asdict(self.llm.stats)
        delta = {n: after[n] - before[n] for n in after}
        for point in got:
            study.enqueue_trial({}, user_attrs={_POINT: point, _GEN: g})
        study._storage.set_study_system_attr(
            study._study_id,
            key,
            {"trial": trial.number, "points": got, "stats": delta},
        )
