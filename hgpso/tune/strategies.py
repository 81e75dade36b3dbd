"""Ask/tell search strategies: random, PSO, GA (paper 003), LLM-PSO, LLM-GA (with EoT).

Strategies never evaluate anything themselves (like Optuna samplers or ``cmaes``)::

    strategy = PSO(space, population=10, seed=0)
    while ...:
        points = strategy.ask()                 # a batch of dicts {name: value}
        strategy.tell(points, [f(p) for p in points])

All strategies search the unit cube of :class:`~hgpso.tune.space.SearchSpace` (lower score
is better). The first batch of every strategy is ``space.initial_unit(seed, population)``,
so for a given seed random search, PSO, GA and the LLM variants start from the *same*
points; all later randomness comes from ``numpy.random.default_rng(seed)``. Non-finite
scores are treated as ``+inf``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from .llm import LLMClient, LLMError, LLMStats, parse_points, points_schema
from .space import SearchSpace

__all__ = [
    "GA",
    "LLMGA",
    "LLMPSO",
    "PSO",
    "RandomSearch",
    "Strategy",
    "make_strategy",
]


class Strategy:
    """Base class: population bookkeeping shared by every strategy."""

    name = "strategy"

    def __init__(self, space: SearchSpace, population: int = 10, seed: int = 0) -> None:
        if not isinstance(space, SearchSpace):
            space = SearchSpace(space)
        if int(population) < 2:
            raise ValueError(f"population must be >= 2, got {population}")
        self.space = space
        self.population = int(population)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.iteration = 0  # number of completed ask/tell rounds
        self._exact: dict[int, dict[str, Any]] = {}
        self.best_point: dict[str, Any] | None = None
        self.best_value = math.inf
        self._pending: np.ndarray | None = None  # unit coords of the last ask
        self._tried: set[tuple] = set()
        self.history: list[tuple[dict[str, Any], float]] = []  # every told (point, value)

    # -- public API -------------------------------------------------------------------------
    def ask(self) -> list[dict[str, Any]]:
        """Return the next batch of points to evaluate."""
        if self._pending is not None:
            raise RuntimeError("ask() called twice without tell()")
        u = self.space.initial_unit(self.seed, self.population) if self.iteration == 0 else None
        self._exact = {}
        u = self._ask_unit(u)
        u = np.clip(np.asarray(u, dtype=float), 0.0, 1.0)
        self._pending = u
        # Rows set from a typed point (LLM proposals) are returned exactly, not re-decoded.
        return [
            dict(self._exact[i]) if i in self._exact else self.space.decode(row)
            for i, row in enumerate(u)
        ]

    def tell(self, points: Sequence[Mapping[str, Any]], values: Sequence[float]) -> None:
        """Report the scores of the batch returned by the last :meth:`ask` (same order)."""
        if self._pending is None:
            raise RuntimeError("tell() called without a pending ask()")
        if len(points) != len(self._pending) or len(values) != len(points):
            raise ValueError(
                f"tell() needs the {len(self._pending)} asked points and as many values"
            )
        vals = np.array([_finite(v) for v in values], dtype=float)
        u = self._pending
        self._pending = None
        for p, v in zip(points, vals, strict=True):
            self._tried.add(self.space.key(p))
            self.history.append((dict(p), float(v)))
            if v < self.best_value:
                self.best_value, self.best_point = float(v), dict(p)
        self._tell_unit(u, vals)
        self.iteration += 1

    @property
    def llm_stats(self) -> LLMStats | None:
        return None

    def replace_pending(self, index: int, point: Mapping[str, Any]) -> dict[str, Any]:
        """Swap one point of the pending batch for a caller-given one before :meth:`tell`.

        Used e.g. to score the optimizer's current setting among the first candidates. The
        point is type-checked and clipped; the returned point is the one to evaluate.
        """
        if self._pending is None:
            raise RuntimeError("replace_pending() needs a pending ask()")
        point = self.space.coerce(point)
        u = self.space.encode(point)
        self._pending[index] = u
        self._exact[int(index)] = point
        self._replace_unit(int(index), u)
        return dict(point)

    def _replace_unit(self, index: int, u: np.ndarray) -> None:
        pass

    # -- persistence ----------------------------------------------------------------------
    _NOT_STATE = frozenset({"space", "llm", "rng"})

    def state_dict(self) -> dict[str, Any]:
        """The whole search state as plain JSON-able data (no pickles, no LLM client).

        Arrays become ``{"__nd__": nested lists}``, sets/tuples lists; the random generator
        state and the LLM counters are included, so ``load_state_dict`` on a fresh strategy
        built with the same arguments continues the very same search.
        """
        state = {k: _to_plain(v) for k, v in vars(self).items() if k not in self._NOT_STATE}
        state["__rng__"] = _to_plain(self.rng.bit_generator.state)
        state["__name__"] = self.name
        state["_tried"] = [list(t) for t in self._tried]
        if self.llm_stats is not None:
            state["__llm_stats__"] = asdict(self.llm_stats)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("__name__") != self.name:
            raise ValueError(
                f"state of {state.get('__name__')!r} given to a {self.name!r} strategy"
            )
        for k, v in state.items():
            if k.startswith("__"):
                continue
            setattr(self, k, _from_plain(v))
        self._tried = {tuple(t) for t in state.get("_tried", [])}
        self.history = [(dict(p), float(v)) for p, v in self.history]
        if isinstance(self._exact, dict):
            self._exact = {int(k): v for k, v in self._exact.items()}
        self.rng.bit_generator.state = _from_plain(state["__rng__"])
        if "__llm_stats__" in state and self.llm_stats is not None:
            for k, v in state["__llm_stats__"].items():
                setattr(self.llm_stats, k, v)

    # -- hooks for subclasses -------------------------------------------------------------
    def _ask_unit(self, initial: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def _tell_unit(self, u: np.ndarray, values: np.ndarray) -> None:
        pass


def _to_plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        # The shape is kept so empty arrays (e.g. GA's parents before the first tell) round-trip.
        return {"__nd__": v.tolist(), "dtype": str(v.dtype), "shape": list(v.shape)}
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, dict):
        return {str(k): _to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_to_plain(x) for x in v]
    return v


def _from_plain(v: Any) -> Any:
    if isinstance(v, dict):
        if "__nd__" in v:
            arr = np.array(v["__nd__"], dtype=v.get("dtype", "float64"))
            return arr.reshape(v["shape"]) if "shape" in v else arr
        return {k: _from_plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_from_plain(x) for x in v]
    return v


def _finite(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.inf
    return f if math.isfinite(f) else math.inf


class RandomSearch(Strategy):
    """Uniform sampling of the unit cube (log-uniform on log parameters)."""

    name = "random"

    def _ask_unit(self, initial: np.ndarray | None) -> np.ndarray:
        return initial if initial is not None else self.space.sample_unit(self.rng, self.population)


class PSO(Strategy):
    r"""Global-best particle swarm in the unit cube.

    For particle :math:`i` with position :math:`x_i`, velocity :math:`v_i`, personal best
    :math:`p_i` and swarm best :math:`g`, with :math:`r_1, r_2 \sim U(0,1)^d`:

    .. math::
        v_i \leftarrow w v_i + c_1 r_1 (p_i - x_i) + c_2 r_2 (g - x_i), \quad
        v_i \leftarrow \mathrm{clip}(v_i, -v_{max}, v_{max}), \quad
        x_i \leftarrow \mathrm{clip}(x_i + v_i, 0, 1)

    and a velocity component is zeroed where the position hit a wall. Defaults are
    Clerc's constriction values ``w = 0.7298``, ``c1 = c2 = 1.49618``; initial velocities are
    ``U(-v0, v0)``.
    """

    name = "pso"

    def __init__(
        self,
        space: SearchSpace,
        population: int = 10,
        seed: int = 0,
        inertia: float = 0.7298,
        cognitive: float = 1.49618,
        social: float = 1.49618,
        max_velocity: float = 0.5,
        init_velocity: float = 0.1,
    ) -> None:
        super().__init__(space, population, seed)
        if not (inertia >= 0 and cognitive >= 0 and social >= 0 and max_velocity > 0):
            raise ValueError("PSO coefficients must be >= 0 and max_velocity > 0")
        self.inertia, self.cognitive, self.social = float(inertia), float(cognitive), float(social)
        self.max_velocity = float(max_velocity)
        self.init_velocity = float(init_velocity)
        d = self.space.dim
        self.x = np.zeros((self.population, d))
        self.v = np.zeros((self.population, d))
        self.pbest = np.zeros((self.population, d))
        self.pbest_val = np.full(self.population, math.inf)
        self.values = np.full(self.population, math.inf)  # score of the current positions
        self.gbest = np.zeros(d)
        self.gbest_val = math.inf

    def _move(self) -> None:
        d = self.space.dim
        r1 = self.rng.random((self.population, d))
        r2 = self.rng.random((self.population, d))
        self.v = (
            self.inertia * self.v
            + self.cognitive * r1 * (self.pbest - self.x)
            + self.social * r2 * (self.gbest - self.x)
        )
        self.v = np.clip(self.v, -self.max_velocity, self.max_velocity)
        new_x = self.x + self.v
        hit = (new_x < 0.0) | (new_x > 1.0)
        self.x = np.clip(new_x, 0.0, 1.0)
        self.v[hit] = 0.0

    def _ask_unit(self, initial: np.ndarray | None) -> np.ndarray:
        if initial is not None:
            self.x = initial.copy()
            v0 = self.init_velocity
            self.v = self.rng.uniform(-v0, v0, size=self.x.shape)
            return self.x
        self._move()
        return self.x

    def _replace_unit(self, index: int, u: np.ndarray) -> None:
        self.x[index] = u

    def _tell_unit(self, u: np.ndarray, values: np.ndarray) -> None:
        self.values = values.copy()
        better = values < self.pbest_val
        self.pbest[better] = u[better]
        self.pbest_val[better] = values[better]
        i = int(np.argmin(self.pbest_val))
        if self.pbest_val[i] < self.gbest_val:
            self.gbest_val = float(self.pbest_val[i])
            self.gbest = self.pbest[i].copy()


class GA(Strategy):
    """Genetic algorithm exactly as paper 003 describes it.

    * Initialisation: uniform samples of the ranges (the shared initial population).
    * Selection: sort by score and keep the top half as parents (``ceil(n/2)``).
    * Crossover: each child takes two distinct parents chosen uniformly at random; for each
      hyperparameter it copies the value of one of the two, chosen with probability 1/2.
    * Mutation: then each hyperparameter of the child is, with probability
      ``mutation_rate`` (0.2 in the paper), replaced by a fresh uniform sample of its range
      (in the space's encoding: log-uniform for log parameters).
    * Next generation: parents + children (size ``n``). Parents keep their score, so each
      generation costs ``n - ceil(n/2)`` evaluations unless ``reevaluate_parents=True``
      (useful when the objective is noisy or changes, as in the training callback).
    """

    name = "ga"

    def __init__(
        self,
        space: SearchSpace,
        population: int = 10,
        seed: int = 0,
        mutation_rate: float = 0.2,
        reevaluate_parents: bool = False,
    ) -> None:
        super().__init__(space, population, seed)
        if not 0.0 <= mutation_rate <= 1.0:
            raise ValueError(f"mutation_rate must be in [0, 1], got {mutation_rate}")
        self.mutation_rate = float(mutation_rate)
        self.reevaluate_parents = bool(reevaluate_parents)
        self.pop = np.zeros((0, self.space.dim))
        self.pop_val = np.zeros(0)
        self._n_parents_in_batch = 0

    def select(self) -> tuple[np.ndarray, np.ndarray]:
        """Top half of the current population, best first."""
        order = np.argsort(self.pop_val, kind="stable")[: math.ceil(self.population / 2)]
        return self.pop[order], self.pop_val[order]

    def crossover(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Uniform crossover: each gene from ``a`` or ``b`` with probability 1/2."""
        mask = self.rng.random(a.shape[0]) < 0.5
        return np.where(mask, a, b)

    def mutate(self, child: np.ndarray) -> np.ndarray:
        """Resample each gene uniformly from its range with probability ``mutation_rate``."""
        mask = self.rng.random(child.shape[0]) < self.mutation_rate
        return np.where(mask, self.rng.random(child.shape[0]), child)

    def make_children(self, parents: np.ndarray, n: int) -> np.ndarray:
        kids = []
        for _ in range(n):
            if len(parents) >= 2:
                i, j = self.rng.choice(len(parents), size=2, replace=False)
            else:
                i = j = 0
            kids.append(self.mutate(self.crossover(parents[i], parents[j])))
        return np.array(kids).reshape(n, self.space.dim)

    def _ask_unit(self, initial: np.ndarray | None) -> np.ndarray:
        if initial is not None:
            self._n_parents_in_batch = 0
            self._parents = np.zeros((0, self.space.dim))
            self._parents_val = np.zeros(0)
            return initial
        parents, parents_val = self.select()
        children = self._children(parents, parents_val, self.population - len(parents))
        self._parents, self._parents_val = parents, parents_val
        if self.reevaluate_parents:
            self._n_parents_in_batch = len(parents)
            return np.vstack([parents, children])
        self._n_parents_in_batch = 0
        return children

    def _children(self, parents: np.ndarray, parents_val: np.ndarray, n: int) -> np.ndarray:
        return self.make_children(parents, n)

    def _tell_unit(self, u: np.ndarray, values: np.ndarray) -> None:
        if self._n_parents_in_batch:
            self.pop, self.pop_val = u, values
        else:
            self.pop = np.vstack([self._parents, u])
            self.pop_val = np.concatenate([self._parents_val, values])


# --------------------------------------------------------------------------------------------
# LLM-guided strategies
# --------------------------------------------------------------------------------------------

_SYSTEM = (
    "You are an optimization assistant that proposes parameter settings. "
    "Lower scores are better. Answer with JSON only, no explanation."
)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return float(f"{v:.4g}")
    return v


def _point_json(point: Mapping[str, Any]) -> str:
    return json.dumps({k: _fmt(v) for k, v in point.items()}, separators=(",", ":"))


class _LLMMixin:
    """Shared LLM plumbing: configuration, the proposal call and the fallback counter."""

    llm: LLMClient
    # provided by the Strategy this is mixed into (annotations only, for the type checker)
    name: str
    space: SearchSpace
    population: int
    iteration: int
    history: list[tuple[dict[str, Any], float]]
    _tried: set[tuple]

    def _init_llm(
        self,
        llm: LLMClient | None,
        k: int,
        llm_every: int,
        max_llm_calls: int | None,
        task: str,
        history_size: int,
    ) -> None:
        if k < 1 or k > self.population:
            raise ValueError(f"k must be in [1, population={self.population}], got {k}")
        if llm_every < 1:
            raise ValueError("llm_every must be >= 1")
        self.llm = llm if llm is not None else LLMClient()
        self.k = int(k)
        self.llm_every = int(llm_every)
        self.max_llm_calls = max_llm_calls
        self.task = task
        self.history_size = int(history_size)
        self.llm_rounds = 0  # iterations where the LLM was asked

    @property
    def llm_stats(self) -> LLMStats:
        return self.llm.stats

    def _llm_turn(self) -> bool:
        if self.iteration == 0 or self.iteration % self.llm_every:
            return False
        return self.max_llm_calls is None or self.llm_rounds < self.max_llm_calls

    def _ask_llm(self, prompt: str, k: int) -> list[dict[str, Any]]:
        """One proposal round: returns up to ``k`` new valid points (may be fewer)."""
        self.llm_rounds += 1
        messages = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": prompt}]
        schema = points_schema(self.space, k)
        got: list[dict[str, Any]] = []
        try:
            answer = self.llm.complete_json(messages, schema)
            got = parse_points(answer, self.space, k, self._tried, self.llm.stats)
        except (LLMError, ValueError, TypeError, RecursionError, OverflowError) as e:
            # any malformed answer is a counted fallback, never an exception out of ask()
            reason = str(e)
        else:
            reason = f"only {len(got)} of {k} proposed points were valid and new"
        if len(got) < k:
            self.llm.stats.fallbacks += 1
            warnings.warn(
                f"{self.name}: LLM {reason}; using the plain move for {k - len(got)} point(s)",
                RuntimeWarning,
                stacklevel=3,
            )
        return got

    def _best_lines(self, n: int) -> str:
        ranked = sorted(self.history, key=lambda pv: pv[1])[:n]
        return "\n".join(f"{_point_json(p)} -> {_fmt(v)}" for p, v in ranked)


class LLMPSO(_LLMMixin, PSO):
    """PSO whose ``k`` worst particles are replaced by LLM proposals (papers 000/001).

    Each LLM iteration (every ``llm_every`` iterations, at most ``max_llm_calls`` times)
    the swarm first makes its ordinary move; then the ``k`` particles with the worst current
    score are moved to the points the LLM proposes from the best points seen so far, and
    their velocities are reset to zero (their personal bests are kept and updated as usual).
    If the LLM fails or gives fewer than ``k`` valid new points, the remaining particles keep
    their plain PSO move (a warning is emitted and ``llm_stats.fallbacks`` incremented).
    """

    name = "llm_pso"

    def __init__(
        self,
        space: SearchSpace,
        population: int = 10,
        seed: int = 0,
        llm: LLMClient | None = None,
        k: int = 2,
        llm_every: int = 1,
        max_llm_calls: int | None = None,
        task: str = "Minimize an unknown black-box function.",
        history_size: int = 8,
        **pso_kwargs: Any,
    ) -> None:
        PSO.__init__(self, space, population, seed, **pso_kwargs)
        self._init_llm(llm, k, llm_every, max_llm_calls, task, history_size)

    def prompt(self, k: int) -> str:
        return (
            f"{self.task}\nParameters:\n{self.space.describe()}\n"
            f"Best points evaluated so far (point -> score, lower is better):\n"
            f"{self._best_lines(self.history_size)}\n"
            f"Propose {k} new points, different from those above, likely to score lower. "
            f'Answer as JSON: {{"points": [{{...}}, ...]}} with exactly {k} points.'
        )

    def _ask_unit(self, initial: np.ndarray | None) -> np.ndarray:
        x = super()._ask_unit(initial)
        if not self._llm_turn():
            return x
        worst = np.argsort(-self.values, kind="stable")[: self.k]
        got = self._ask_llm(self.prompt(self.k), self.k)
        for idx, point in zip(worst, got, strict=False):
            self.x[idx] = self.space.encode(point)
            self.v[idx] = 0.0
            self._exact[int(idx)] = point
        return self.x


class LLMGA(_LLMMixin, GA):
    """GA whose children are partly written by the LLM, with Evolution of Thought (paper 002).

    Every LLM generation, ``k`` of the children are LLM proposals instead of
    crossover+mutation offspring. The prompt shows the current parents and an *Evolution of
    Thought* record: the LLM's earlier proposals, the best parent score when each was made,
    the score each obtained and the change (improved / worse), so the model can reflect on
    which of its moves helped. Failed or missing proposals fall back to ordinary children.
    """

    name = "llm_ga"

    def __init__(
        self,
        space: SearchSpace,
        population: int = 10,
        seed: int = 0,
        llm: LLMClient | None = None,
        k: int = 2,
        llm_every: int = 1,
        max_llm_calls: int | None = None,
        task: str = "Minimize an unknown black-box function.",
        history_size: int = 6,
        **ga_kwargs: Any,
    ) -> None:
        GA.__init__(self, space, population, seed, **ga_kwargs)
        self._init_llm(llm, k, llm_every, max_llm_calls, task, history_size)
        self.eot: list[dict[str, Any]] = []  # Evolution-of-Thought records
        self._llm_rows: list[tuple[int, dict[str, Any], float]] = []

    def prompt(self, parents: np.ndarray, parents_val: np.ndarray, k: int) -> str:
        lines = "\n".join(
            f"{_point_json(self.space.decode(p))} -> {_fmt(float(v))}"
            for p, v in zip(parents, parents_val, strict=True)
        )
        text = (
            f"{self.task}\nParameters:\n{self.space.describe()}\n"
            f"Current parents (point -> score, lower is better):\n{lines}\n"
        )
        if self.eot:
            recs = self.eot[-self.history_size :]
            text += "Your earlier proposals and what happened (learn from them):\n"
            text += "\n".join(
                f"gen {r['generation']}: {_point_json(r['point'])} scored {_fmt(r['value'])} "
                f"vs best parent {_fmt(r['reference'])} ({r['outcome']}, change "
                f"{_fmt(r['change'])})"
                for r in recs
            )
            text += "\n"
        text += (
            f"Propose {k} new child points that combine or improve the parents, keeping "
            f"what worked in your earlier proposals and avoiding what failed. "
            f'Answer as JSON: {{"points": [{{...}}, ...]}} with exactly {k} points.'
        )
        return text

    def _n_parents_offset(self) -> int:
        return math.ceil(self.population / 2) if self.reevaluate_parents else 0

    def _children(self, parents: np.ndarray, parents_val: np.ndarray, n: int) -> np.ndarray:
        kids = self.make_children(parents, n)
        self._llm_rows = []
        if not self._llm_turn() or n == 0:
            return kids
        k = min(self.k, n)
        got = self._ask_llm(self.prompt(parents, parents_val, k), k)
        ref = float(parents_val[0]) if len(parents_val) else math.inf
        for j, point in enumerate(got):
            row = n - 1 - j
            kids[row] = self.space.encode(point)
            self._exact[self._n_parents_offset() + row] = point
            self._llm_rows.append((row, point, ref))
        return kids

    def _tell_unit(self, u: np.ndarray, values: np.ndarray) -> None:
        offset = self._n_parents_in_batch
        for row, point, ref in self._llm_rows:
            v = float(values[offset + row])
            change = v - ref
            self.eot.append(
                {
                    "generation": self.iteration,
                    "point": point,
                    "reference": ref,
                    "value": v,
                    "change": change,
                    "outcome": "improved" if change < 0 else "worse",
                }
            )
        self._llm_rows = []
        super()._tell_unit(u, values)


_STRATEGIES = {
    "random": RandomSearch,
    "pso": PSO,
    "ga": GA,
    "llm_pso": LLMPSO,
    "llm_ga": LLMGA,
}


def make_strategy(
    name: str, space: SearchSpace, population: int = 10, seed: int = 0, **kwargs: Any
) -> Strategy:
    """Build a strategy by name: ``random``, ``pso``, ``ga``, ``llm_pso``, ``llm_ga``."""
    key = name.lower().replace("-", "_")
    if key not in _STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(_STRATEGIES)}")
    return _STRATEGIES[key](space, population=population, seed=seed, **kwargs)
