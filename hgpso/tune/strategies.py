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

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np

from .llm import LLMClient, LLMStats
from .proposals import (
    PromptOptions,
    ask_line,
    best_points_prompt,
    describe_space,
    fmt,
    order_note,
    order_shown,
    propose,
    read_llm_stats,
    read_prompt_options,
    show_point,
)
from .space import SearchSpace
from .state import (
    StateError,
    check_keys,
    read_int,
    read_matrix,
    read_point,
    read_score,
    read_scores,
    read_vector,
    space_spec,
    write_score,
    write_scores,
)

__all__ = [
    "GA",
    "LLMGA",
    "LLMPSO",
    "PSO",
    "RandomSearch",
    "Strategy",
    "make_strategy",
    "strategy_class",
    "strategy_names",
]


class Strategy:
    """Base class: the ask/tell protocol and the population bookkeeping of every strategy.

    The search state is explicit data (:meth:`state_dict`, format ``STATE_VERSION``):
    what a strategy needs to continue a search, read back with validation. ``uses_llm``
    says whether the strategy calls an LLM (capability, not a name check).
    """

    name = "strategy"
    #: whether the strategy asks an LLM for proposals (and so needs an ``llm=`` client)
    uses_llm: ClassVar[bool] = False
    #: keys of :meth:`state_dict`'s ``"data"`` section that this class writes and reads
    _DATA_KEYS: ClassVar[tuple[str, ...]] = ()
    #: values of ``_DATA_KEYS`` added after states were first saved, read when one is absent
    _DATA_DEFAULTS: ClassVar[Mapping[str, Any]] = {}

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
    @property
    def pending(self) -> list[dict[str, Any]] | None:
        """The points of the last :meth:`ask` not yet told (``None`` when nothing is pending)."""
        if self._pending is None:
            return None
        return [
            dict(self._exact[i]) if i in self._exact else self.space.decode(row)
            for i, row in enumerate(self._pending)
        ]

    def ask(self) -> list[dict[str, Any]]:
        """Return the next batch of points to evaluate."""
        if self._pending is not None:
            raise RuntimeError(
                "ask() called twice without tell(); tell() the pending batch or cancel() it"
            )
        u = self.space.initial_unit(self.seed, self.population) if self.iteration == 0 else None
        self._exact = {}
        u = self._ask_unit(u)
        self._pending = np.clip(np.asarray(u, dtype=float), 0.0, 1.0)
        # Rows set from a typed point (LLM proposals) are returned exactly, not re-decoded.
        return self.pending or []

    def tell(self, points: Sequence[Mapping[str, Any]], values: Sequence[float]) -> None:
        """Report the scores of the batch returned by the last :meth:`ask`.

        ``points`` must be the asked points, each once, in any order (each is matched to the
        asked point it equals; a point that was not asked is refused). ``values`` are real
        numbers, lower is better; NaN and infinities count as ``+inf``.
        """
        if self._pending is None:
            raise RuntimeError("tell() called without a pending ask()")
        asked = self.pending or []
        if len(points) != len(asked) or len(values) != len(points):
            raise ValueError(
                f"tell() needs the {len(asked)} asked points and as many values, got "
                f"{len(points)} points and {len(values)} values"
            )
        vals = [_score(v, f"value {i}") for i, v in enumerate(values)]
        order = self._match(points, asked)
        told = np.full(len(asked), math.inf)
        for j, i in enumerate(order):
            told[i] = vals[j]
        u = self._pending
        self._pending, self._exact = None, {}
        self._record(asked, told)
        self._tell_unit(u, told)
        self.iteration += 1

    def cancel(self) -> None:
        """Drop the pending batch without telling it (its evaluation failed or was abandoned).

        The strategy's own moves stay made (a PSO swarm keeps its moved positions); the next
        :meth:`ask` proposes a new batch from there. Nothing pending: nothing happens.
        """
        self._pending = None
        self._exact = {}
        self._cancel()

    def observe(self, points: Sequence[Mapping[str, Any]], values: Sequence[float]) -> None:
        """Report scores of points outside the pending batch (extra candidates, late results).

        They enter the history and the best point; PSO also lets a better one become the
        swarm's best, GA lets it compete for parenthood at the next selection.
        """
        if len(points) != len(values):
            raise ValueError(f"observe() got {len(points)} points and {len(values)} values")
        pts = [self.space.coerce(p) for p in points]
        vals = np.array([_score(v, f"value {i}") for i, v in enumerate(values)], dtype=float)
        self._record(pts, vals)
        if pts:
            self._observe_unit(np.array([self.space.encode(p) for p in pts]), vals)

    def propose_extra(self, rng: np.random.Generator) -> dict[str, Any]:
        """One point beyond the population, drawn from ``rng`` (the strategy is unchanged).

        Used by ``StrategySampler`` when every candidate of the current
        generation is taken and the generation is not finished yet: a worker gets an extra
        point instead of waiting. Random search: a uniform point. Never calls an LLM.
        """
        return self.space.decode(self._extra_unit(rng))

    @property
    def llm_stats(self) -> LLMStats | None:
        return None

    def replace_pending(self, index: int, point: Mapping[str, Any]) -> dict[str, Any]:
        """Swap one point of the pending batch for a caller-given one before
        :meth:`~hgpso.tune.Strategy.tell`.

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

    def adopt_pending(self, index: int, point: Mapping[str, Any]) -> dict[str, Any]:
        """Make a point written elsewhere (an LLM's proposal) pending candidate ``index``.

        Like :meth:`replace_pending`, and the strategy takes the point as its own member:
        PSO moves that particle there with zero velocity (papers 000/001), GA makes it that
        child, random search just evaluates it, the Optuna bases evaluate it in place of
        their sample (see :class:`~hgpso.tune.optuna_strategies.OptunaStrategy`). Only rows
        of :meth:`foreign_rows` may be adopted.
        """
        if self._pending is None:
            raise RuntimeError("adopt_pending() needs a pending ask()")
        index = int(index)
        if index not in self.foreign_rows():
            raise ValueError(
                f"{self.name}: row {index} of the pending batch cannot take a foreign point "
                f"(rows that can: {self.foreign_rows()})"
            )
        point = self.space.coerce(point)
        u = self.space.encode(point)
        self._pending[index] = u
        self._exact[index] = point
        self._adopt_unit(index, u)
        return dict(point)

    def foreign_rows(self) -> list[int]:
        """Rows of the pending batch that ``adopt_pending`` may fill (default: all)."""
        return [] if self._pending is None else list(range(len(self._pending)))

    def predicted_worst(self, rows: Sequence[int]) -> list[int] | None:
        """``rows`` of the pending batch ordered worst-predicted first, by the strategy's own
        model, or ``None`` when it has none (the ``llm`` layer then uses its own). PSO: the
        particles whose last score was worst (the rule of LLM-PSO)."""
        return None

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole search state as JSON data (no pickles, no LLM client), version 2.

        ``{"format", "version", "strategy", "space", "population", "seed", "iteration",
        "rng", "best_point", "best_value", "history", "pending", "exact", "data"}``: unit
        coordinates as lists, ``+inf`` scores as ``"inf"``, the random generator's state,
        and in ``data`` the strategy's own arrays (``_DATA_KEYS``). ``load_state_dict``
        on a fresh strategy built with the same arguments continues the very same search.
        """
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "strategy": self.name,
            "space": space_spec(self.space),
            "population": self.population,
            "seed": self.seed,
            "iteration": self.iteration,
            "rng": _plain_rng(self.rng),
            "best_point": None if self.best_point is None else dict(self.best_point),
            "best_value": write_score(self.best_value),
            "history": [[dict(p), write_score(v)] for p, v in self.history],
            "pending": None if self._pending is None else self._pending.tolist(),
            "exact": {str(i): dict(p) for i, p in sorted(self._exact.items())},
            "data": self._state_data(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the search saved by :meth:`state_dict`, after checking every key.

        Refused with ``hgpso.tune.state.StateError`` (a ``ValueError``) and nothing
        changed: another strategy's or another version's state, one saved for another space
        (names, types, bounds or choices) or population, unknown or missing keys, values of
        the wrong type, NaN scores or coordinates outside the unit cube.
        """
        check_keys(state, _STATE_KEYS, "strategy state")
        if state["format"] != STATE_FORMAT or state["version"] != STATE_VERSION:
            raise StateError(
                f"strategy state format {state['format']!r} version {state['version']!r} is "
                f"not {STATE_FORMAT!r} version {STATE_VERSION}"
            )
        if state["strategy"] != self.name:
            raise StateError(
                f"state of a {state['strategy']!r} strategy given to a {self.name!r} strategy"
            )
        if state["space"] != space_spec(self.space):
            raise StateError(
                f"state saved for the search space {state['space']!r}, not this one "
                f"{space_spec(self.space)!r}"
            )
        if state["population"] != self.population:
            raise StateError(
                f"state saved for population {state['population']!r}, not {self.population}"
            )
        seed = read_int(state["seed"], "seed", low=-(2**63))
        iteration = read_int(state["iteration"], "iteration")
        rng = np.random.default_rng(0)
        try:
            rng.bit_generator.state = state["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise StateError(f"rng is not a numpy PCG64 state: {e}") from e
        best_point = (
            None
            if state["best_point"] is None
            else read_point(state["best_point"], self.space, "best_point")
        )
        best_value = read_score(state["best_value"], "best_value")
        hist = state["history"]
        if not isinstance(hist, list):
            raise StateError("history must be a list of [point, value] pairs")
        history = []
        for i, pv in enumerate(hist):
            if not isinstance(pv, list) or len(pv) != 2:
                raise StateError(f"history[{i}] must be a [point, value] pair")
            history.append(
                (read_point(pv[0], self.space, f"history[{i}]"), read_score(pv[1], f"history[{i}]"))
            )
        pending = None
        if state["pending"] is not None:
            pending = read_matrix(state["pending"], "pending", self.space.dim)
        exact_raw = state["exact"]
        if not isinstance(exact_raw, Mapping):
            raise StateError("exact must be a dict {row: point}")
        exact: dict[int, dict[str, Any]] = {}
        for k, p in exact_raw.items():
            if (
                not (isinstance(k, str) and k.isdigit())
                or pending is None
                or int(k) >= len(pending)
            ):
                raise StateError(f"exact: {k!r} is not a row of the pending batch")
            exact[int(k)] = read_point(p, self.space, f"exact[{k}]")
        data = state["data"]
        if isinstance(data, Mapping):  # an older state without a key added since
            data = {**self._DATA_DEFAULTS, **data}
        check_keys(data, self._DATA_KEYS, f"{self.name} state data")
        self._load_data(data)  # validates and sets; raises before anything above is applied
        self.seed, self.iteration, self.rng = seed, iteration, rng
        self.best_point, self.best_value = best_point, best_value
        self.history = history
        self._tried = {self.space.key(p) for p, _ in history}
        self._pending, self._exact = pending, exact

    # -- hooks for subclasses -------------------------------------------------------------
    def _ask_unit(self, initial: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def _tell_unit(self, u: np.ndarray, values: np.ndarray) -> None:
        pass

    def _observe_unit(self, u: np.ndarray, values: np.ndarray) -> None:
        pass

    def _extra_unit(self, rng: np.random.Generator) -> np.ndarray:
        return self.space.sample_unit(rng, 1)[0]

    def _replace_unit(self, index: int, u: np.ndarray) -> None:
        pass

    def _adopt_unit(self, index: int, u: np.ndarray) -> None:
        self._replace_unit(index, u)

    def _cancel(self) -> None:
        pass

    def _state_data(self) -> dict[str, Any]:
        return {}

    def _load_data(self, data: Mapping[str, Any]) -> None:
        pass

    # -- internals ------------------------------------------------------------------------
    def _match(
        self, points: Sequence[Mapping[str, Any]], asked: Sequence[Mapping[str, Any]]
    ) -> list[int]:
        """Index in ``asked`` of each told point (equal points are matched in order)."""
        free: dict[tuple, list[int]] = {}
        for i, p in enumerate(asked):
            free.setdefault(self.space.key(p), []).append(i)
        order = []
        for j, p in enumerate(points):
            try:
                key = self.space.key(p)
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"tell(): point {j} {p!r} is not a point of the space") from e
            if not free.get(key):
                raise ValueError(
                    f"tell(): point {j} {dict(p)!r} is not one of the asked points (or is "
                    "given twice); tell() the points ask() returned, in any order"
                )
            order.append(free[key].pop(0))
        return order

    def _record(self, points: Sequence[Mapping[str, Any]], values: np.ndarray) -> None:
        for p, v in zip(points, values, strict=True):
            self._tried.add(self.space.key(p))
            self.history.append((dict(p), float(v)))
            if v < self.best_value:
                self.best_value, self.best_point = float(v), dict(p)


STATE_FORMAT = "hgpso.tune.strategy"
#: version of :meth:`Strategy.state_dict` (1: ``vars(self)`` minus a blacklist, refused now)
STATE_VERSION = 2
_STATE_KEYS = (
    "format",
    "version",
    "strategy",
    "space",
    "population",
    "seed",
    "iteration",
    "rng",
    "best_point",
    "best_value",
    "history",
    "pending",
    "exact",
    "data",
)


def _plain_rng(rng: np.random.Generator) -> dict[str, Any]:
    st = rng.bit_generator.state
    return {
        k: (dict(v) if isinstance(v, dict) else int(v) if k != "bit_generator" else v)
        for k, v in st.items()
    }


def _score(v: Any, where: str) -> float:
    """A told value as a score: a real number (NaN/inf: +inf); anything else is refused."""
    if isinstance(v, bool) or v is None:
        raise TypeError(f"{where} is {v!r}; scores must be real numbers (lower is better)")
    try:
        f = float(v)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{where} is {v!r}; scores must be real numbers (lower is better)") from e
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
    _DATA_KEYS: ClassVar[tuple[str, ...]] = (
        "x",
        "v",
        "pbest",
        "pbest_val",
        "values",
        "gbest",
        "gbest_val",
    )

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

    def _adopt_unit(self, index: int, u: np.ndarray) -> None:
        self.x[index] = u
        self.v[index] = 0.0  # a particle moved by the LLM starts at rest (papers 000/001)

    def predicted_worst(self, rows: Sequence[int]) -> list[int] | None:
        rows = list(rows)
        order = np.argsort(-self.values[rows], kind="stable")  # LLM-PSO's ranking
        return [rows[i] for i in order]

    def _tell_unit(self, u: np.ndarray, values: np.ndarray) -> None:
        self.values = values.copy()
        better = values < self.pbest_val
        self.pbest[better] = u[better]
        self.pbest_val[better] = values[better]
        i = int(np.argmin(self.pbest_val))
        if self.pbest_val[i] < self.gbest_val:
            self.gbest_val = float(self.pbest_val[i])
            self.gbest = self.pbest[i].copy()

    def _observe_unit(self, u: np.ndarray, values: np.ndarray) -> None:
        # An extra point is no particle: it can only become the swarm's best.
        i = int(np.argmin(values))
        if values[i] < self.gbest_val:
            self.gbest_val, self.gbest = float(values[i]), u[i].copy()

    def _extra_unit(self, rng: np.random.Generator) -> np.ndarray:
        if not math.isfinite(self.gbest_val):
            return super()._extra_unit(rng)
        # a Gaussian step (0.1 of each range) around the swarm's best
        return np.clip(self.gbest + rng.normal(0.0, 0.1, self.space.dim), 0.0, 1.0)

    def _state_data(self) -> dict[str, Any]:
        return {
            "x": self.x.tolist(),
            "v": self.v.tolist(),
            "pbest": self.pbest.tolist(),
            "pbest_val": write_scores(self.pbest_val),
            "values": write_scores(self.values),
            "gbest": self.gbest.tolist(),
            "gbest_val": write_score(self.gbest_val),
            **self._more_data(),
        }

    def _load_data(self, data: Mapping[str, Any]) -> None:
        n, d = self.population, self.space.dim
        x = read_matrix(data["x"], "pso x", d, n)
        v = read_matrix(data["v"], "pso v", d, n, unit=False)
        pbest = read_matrix(data["pbest"], "pso pbest", d, n)
        pbest_val = read_scores(data["pbest_val"], "pso pbest_val", n)
        values = read_scores(data["values"], "pso values", n)
        gbest = read_vector(data["gbest"], "pso gbest", d)
        gbest_val = read_score(data["gbest_val"], "pso gbest_val")
        self._load_more(data)
        self.x, self.v, self.pbest, self.pbest_val = x, v, pbest, pbest_val
        self.values, self.gbest, self.gbest_val = values, gbest, gbest_val

    def _more_data(self) -> dict[str, Any]:
        return {}  # the LLM variant's own keys

    def _load_more(self, data: Mapping[str, Any]) -> None:
        pass  # the LLM variant's own keys, validated before anything is set


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
    _DATA_KEYS: ClassVar[tuple[str, ...]] = (
        "pop",
        "pop_val",
        "parents",
        "parents_val",
        "n_parents_in_batch",
    )

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
        self._parents = np.zeros((0, self.space.dim))  # of the pending batch
        self._parents_val = np.zeros(0)
        self._n_parents_in_batch = 0

    def select(self) -> tuple[np.ndarray, np.ndarray]:
        """Top half of the current population, best first."""
        order = np.argsort(self.pop_val, kind="stable")[: math.ceil(self.population / 2)]
        return self.pop[order], self.pop_val[order]

    def crossover(
        self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Uniform crossover: each gene from ``a`` or ``b`` with probability 1/2."""
        rng = self.rng if rng is None else rng
        mask = rng.random(a.shape[0]) < 0.5
        return np.where(mask, a, b)

    def mutate(self, child: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Resample each gene uniformly from its range with probability ``mutation_rate``."""
        rng = self.rng if rng is None else rng
        mask = rng.random(child.shape[0]) < self.mutation_rate
        return np.where(mask, rng.random(child.shape[0]), child)

    def make_children(
        self, parents: np.ndarray, n: int, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        rng = self.rng if rng is None else rng
        kids = []
        for _ in range(n):
            if len(parents) >= 2:
                i, j = rng.choice(len(parents), size=2, replace=False)
            else:
                i = j = 0
            kids.append(self.mutate(self.crossover(parents[i], parents[j], rng), rng))
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

    def foreign_rows(self) -> list[int]:
        # children only: re-scored parents (reevaluate_parents=True) stay themselves
        rows = super().foreign_rows()
        return rows[self._n_parents_in_batch :] if self._pending is not None else rows

    def _tell_unit(self, u: np.ndarray, values: np.ndarray) -> None:
        if self._n_parents_in_batch:
            self.pop, self.pop_val = u, values
        else:
            self.pop = np.vstack([self._parents, u])
            self.pop_val = np.concatenate([self._parents_val, values])

    def _observe_unit(self, u: np.ndarray, values: np.ndarray) -> None:
        # extra points compete with the population at the next selection
        self.pop = np.vstack([self.pop, u])
        self.pop_val = np.concatenate([self.pop_val, values])

    def _extra_unit(self, rng: np.random.Generator) -> np.ndarray:
        if len(self.pop) == 0:
            return super()._extra_unit(rng)
        parents, _ = self.select()
        return self.make_children(parents, 1, rng)[0]  # one more child of the same parents

    def _state_data(self) -> dict[str, Any]:
        return {
            "pop": self.pop.tolist(),
            "pop_val": write_scores(self.pop_val),
            "parents": self._parents.tolist(),
            "parents_val": write_scores(self._parents_val),
            "n_parents_in_batch": self._n_parents_in_batch,
            **self._more_data(),
        }

    def _load_data(self, data: Mapping[str, Any]) -> None:
        d = self.space.dim
        pop = read_matrix(data["pop"], "ga pop", d)
        pop_val = read_scores(data["pop_val"], "ga pop_val", len(pop))
        parents = read_matrix(data["parents"], "ga parents", d)
        parents_val = read_scores(data["parents_val"], "ga parents_val", len(parents))
        n_par = read_int(data["n_parents_in_batch"], "ga n_parents_in_batch")
        self._load_more(data)
        self.pop, self.pop_val = pop, pop_val
        self._parents, self._parents_val = parents, parents_val
        self._n_parents_in_batch = n_par

    def _more_data(self) -> dict[str, Any]:
        return {}  # the LLM variant's own keys

    def _load_more(self, data: Mapping[str, Any]) -> None:
        pass  # the LLM variant's own keys, validated before anything is set


# --------------------------------------------------------------------------------------------
# LLM-guided strategies
# --------------------------------------------------------------------------------------------


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
        prompt_options: PromptOptions | Mapping[str, Any] | None = None,
    ) -> None:
        if k < 1 or k > self.population:
            raise ValueError(f"k must be in [1, population={self.population}], got {k}")
        if llm_every < 1:
            raise ValueError("llm_every must be >= 1")
        if isinstance(history_size, bool) or int(history_size) < 1:
            raise ValueError(f"history_size must be >= 1, got {history_size!r}")
        self.prompt_options = PromptOptions.make(prompt_options)
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

    def _llm_data(self) -> dict[str, Any]:
        return {
            "llm_rounds": self.llm_rounds,
            "llm_stats": asdict(self.llm.stats),
            "prompt_options": self.prompt_options.as_dict(),
        }

    def _llm_load(self, data: Mapping[str, Any]) -> None:
        rounds = read_int(data["llm_rounds"], "llm_rounds")
        stats = read_llm_stats(data["llm_stats"])
        saved = read_prompt_options(data["prompt_options"])
        if saved != self.prompt_options:
            raise StateError(
                f"{self.name} state saved with prompt options {saved.as_dict()}, not this "
                f"strategy's {self.prompt_options.as_dict()}: build it with the same "
                "prompt_options to resume the same search"
            )
        self.llm_rounds = rounds
        for k, v in stats.items():  # the client keeps counting from the saved totals
            setattr(self.llm.stats, k, v)

    def _llm_turn(self) -> bool:
        if self.iteration == 0 or self.iteration % self.llm_every:
            return False
        return self.max_llm_calls is None or self.llm_rounds < self.max_llm_calls

    def _ask_llm(
        self, prompt: str, k: int, kept: Sequence[Mapping[str, Any]] = ()
    ) -> list[dict[str, Any]]:
        """One proposal round: returns up to ``k`` new valid points (may be fewer).

        New: once snapped to the space's grid, neither told before nor one of ``kept`` (the
        members of the pending batch that the LLM's points do not replace).
        """
        self.llm_rounds += 1
        tried = self._tried | {self.space.key(p) for p in kept}
        return propose(
            self.llm,
            self.space,
            prompt,
            k,
            tried,
            self.name,
            stacklevel=4,
            units=self.prompt_options.units,
        )

    def _best_prompt(self, k: int) -> str:
        """The best points so far (papers 000/001): LLM-PSO's and the ``llm`` layer's prompt."""
        return best_points_prompt(
            self.task, self.space, self.history, self.history_size, k, self.prompt_options
        )


#: the LLM strategies' state keys added since version 2 was first written: an older state
#: was written with the default prompt options
_LLM_DATA_DEFAULTS: Mapping[str, Any] = {"prompt_options": PromptOptions().as_dict()}


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
    uses_llm = True
    _DATA_KEYS = (*PSO._DATA_KEYS, "llm_rounds", "llm_stats", "prompt_options")
    _DATA_DEFAULTS = _LLM_DATA_DEFAULTS

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
        prompt_options: PromptOptions | Mapping[str, Any] | None = None,
        **pso_kwargs: Any,
    ) -> None:
        PSO.__init__(self, space, population, seed, **pso_kwargs)
        self._init_llm(llm, k, llm_every, max_llm_calls, task, history_size, prompt_options)

    def prompt(self, k: int) -> str:
        return self._best_prompt(k)

    def _ask_unit(self, initial: np.ndarray | None) -> np.ndarray:
        x = super()._ask_unit(initial)
        if not self._llm_turn():
            return x
        worst = np.argsort(-self.values, kind="stable")[: self.k]
        replaced = {int(i) for i in worst}
        kept = [self.space.decode(u) for i, u in enumerate(self.x) if i not in replaced]
        got = self._ask_llm(self.prompt(self.k), self.k, kept)
        for idx, point in zip(worst, got, strict=False):
            self.x[idx] = self.space.encode(point)
            self.v[idx] = 0.0
            self._exact[int(idx)] = point
        return self.x

    def _more_data(self) -> dict[str, Any]:
        return self._llm_data()

    def _load_more(self, data: Mapping[str, Any]) -> None:
        self._llm_load(data)


class LLMGA(_LLMMixin, GA):
    """GA whose children are partly written by the LLM, with Evolution of Thought (paper 002).

    Every LLM generation, ``k`` of the children are LLM proposals instead of
    crossover+mutation offspring. The prompt shows the current parents and an *Evolution of
    Thought* record: the LLM's earlier proposals, the best parent score when each was made,
    the score each obtained and the change (improved / worse), so the model can reflect on
    which of its moves helped. Failed or missing proposals fall back to ordinary children.
    """

    name = "llm_ga"
    uses_llm = True
    _DATA_KEYS = (*GA._DATA_KEYS, "llm_rounds", "llm_stats", "prompt_options", "eot", "llm_rows")
    _DATA_DEFAULTS = _LLM_DATA_DEFAULTS

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
        prompt_options: PromptOptions | Mapping[str, Any] | None = None,
        **ga_kwargs: Any,
    ) -> None:
        GA.__init__(self, space, population, seed, **ga_kwargs)
        self._init_llm(llm, k, llm_every, max_llm_calls, task, history_size, prompt_options)
        self.eot: list[dict[str, Any]] = []  # Evolution-of-Thought records
        self._llm_rows: list[tuple[int, dict[str, Any], float]] = []

    def prompt(self, parents: np.ndarray, parents_val: np.ndarray, k: int) -> str:
        opts = self.prompt_options
        pairs = [
            (self.space.decode(p), float(v)) for p, v in zip(parents, parents_val, strict=True)
        ]
        when = None
        if opts.order == "chronological":  # a parent's time: its first evaluation
            first: dict[tuple, int] = {}
            for i, (p, _) in enumerate(self.history):
                first.setdefault(self.space.key(p), i)
            when = [first.get(self.space.key(p), len(self.history)) for p, _ in pairs]
        lines = "\n".join(
            f"{show_point(self.space, p, opts)} -> {fmt(v)}"
            for p, v in order_shown(pairs, opts.order, when)
        )
        text = (
            f"{self.task}\nParameters:\n{describe_space(self.space, opts)}\n"
            f"Current parents (point -> score, lower is better{order_note(opts.order)}):\n{lines}\n"
        )
        if self.eot:
            recs = self.eot[-self.history_size :]
            text += "Your earlier proposals and what happened (learn from them):\n"
            text += "\n".join(
                f"gen {r['generation']}: {show_point(self.space, r['point'], opts)} scored "
                f"{fmt(r['value'])} vs best parent {fmt(r['reference'])} ({r['outcome']}, "
                f"change {fmt(r['change'])})"
                for r in recs
            )
            text += "\n"
        return text + ask_line(
            k,
            "new child points that combine or improve the parents",
            self.history,
            opts,
            goal="keeping what worked in your earlier proposals and avoiding what failed",
            keep_goal=True,
        )

    def _n_parents_offset(self) -> int:
        return math.ceil(self.population / 2) if self.reevaluate_parents else 0

    def _children(self, parents: np.ndarray, parents_val: np.ndarray, n: int) -> np.ndarray:
        kids = self.make_children(parents, n)
        self._llm_rows = []
        if not self._llm_turn() or n == 0:
            return kids
        k = min(self.k, n)
        # the children the LLM's points do not replace (rows n-1, n-2, ... are replaced)
        kept = [self.space.decode(u) for u in kids[: n - k]]
        got = self._ask_llm(self.prompt(parents, parents_val, k), k, kept)
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
            self.eot.append(_eot_record(self.iteration, point, ref, float(values[offset + row])))
        self._llm_rows = []
        super()._tell_unit(u, values)

    def _cancel(self) -> None:
        self._llm_rows = []

    def _more_data(self) -> dict[str, Any]:
        return {
            **self._llm_data(),
            # change and outcome follow from value and reference: not stored twice
            "eot": [
                [r["generation"], r["point"], write_score(r["reference"]), write_score(r["value"])]
                for r in self.eot
            ],
            "llm_rows": [[row, p, write_score(ref)] for row, p, ref in self._llm_rows],
        }

    def _load_more(self, data: Mapping[str, Any]) -> None:
        eot, rows = data["eot"], data["llm_rows"]
        if not isinstance(eot, list) or not isinstance(rows, list):
            raise StateError("llm_ga eot and llm_rows must be lists")
        records = []
        for i, r in enumerate(eot):
            if not isinstance(r, list) or len(r) != 4:
                raise StateError(f"eot[{i}] must be [generation, point, reference, value]")
            records.append(
                _eot_record(
                    read_int(r[0], f"eot[{i}] generation"),
                    read_point(r[1], self.space, f"eot[{i}] point"),
                    read_score(r[2], f"eot[{i}] reference"),
                    read_score(r[3], f"eot[{i}] value"),
                )
            )
        llm_rows = []
        for i, r in enumerate(rows):
            if not isinstance(r, list) or len(r) != 3:
                raise StateError(f"llm_rows[{i}] must be [row, point, reference]")
            llm_rows.append(
                (
                    read_int(r[0], f"llm_rows[{i}] row"),
                    read_point(r[1], self.space, f"llm_rows[{i}] point"),
                    read_score(r[2], f"llm_rows[{i}] reference"),
                )
            )
        self._llm_load(data)
        self.eot, self._llm_rows = records, llm_rows


def _eot_record(generation: int, point: dict[str, Any], ref: float, v: float) -> dict[str, Any]:
    change = v - ref
    return {
        "generation": generation,
        "point": point,
        "reference": ref,
        "value": v,
        "change": change,
        "outcome": "improved" if change < 0 else "worse",
    }


_STRATEGIES: dict[str, type[Strategy]] = {
    "random": RandomSearch,
    "pso": PSO,
    "ga": GA,
    "llm_pso": LLMPSO,
    "llm_ga": LLMGA,
}


def _registry() -> dict[str, type[Strategy]]:
    """Every strategy by name; the Optuna bases and the ``llm`` layer build on this module,
    so they are imported here, on first use (neither imports optuna before it is needed)."""
    from .layer import LAYER_STRATEGIES
    from .optuna_strategies import OPTUNA_STRATEGIES

    return {**_STRATEGIES, **OPTUNA_STRATEGIES, **LAYER_STRATEGIES}


def strategy_names() -> tuple[str, ...]:
    """The names :func:`make_strategy` accepts."""
    return tuple(_registry())


def strategy_class(name: str) -> type[Strategy]:
    """The class behind a strategy name (e.g. to ask ``strategy_class(name).uses_llm``)."""
    key = str(name).lower().replace("-", "_")
    registry = _registry()
    if key not in registry:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(registry)}")
    return registry[key]


def make_strategy(
    name: str, space: SearchSpace, population: int = 10, seed: int = 0, **kwargs: Any
) -> Strategy:
    """Build a strategy by name: ``random``, ``pso``, ``ga``, ``tpe``, ``cmaes`` (Optuna's
    samplers driven ask/tell), ``llm_pso``, ``llm_ga``, and the LLM layer over any base:
    ``llm`` (``base=`` one of the others), ``llm_tpe``, ``llm_cmaes``, ``llm_random``."""
    return strategy_class(name)(space, population=population, seed=seed, **kwargs)
