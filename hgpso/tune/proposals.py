"""One LLM proposal round, shared by every LLM-guided strategy and by ``LLMSampler``.

The papers' rule is the same wherever it runs: show the model the best points so far, ask
for ``k`` new ones, keep those that parse, fit the space and were not tried yet, and fall
back to the base method's own points for the rest. This module is that rule, once:

* :class:`PromptOptions` says how a prompt is written: in the space's own units or in unit
  coordinates, the order of the points shown, whether each dimension's integer grid or
  categorical choices are spelled out, and an optional LLAMBO-style target score. The
  defaults write the prompts of papers 000/001/002 unchanged. How many points are shown
  (``history_size``), how many are asked for (``k``) and the sampling temperature (the
  client's ``temperature``) are the strategies' and the client's own arguments.
* :func:`best_points_prompt` builds the prompt of LLM-PSO and of the ``llm`` layer (the best
  points evaluated so far, lower is better); LLM-GA builds its own (parents and Evolution of
  Thought) from :func:`describe_space`, :func:`show_point`, :func:`order_shown`,
  :func:`ask_line` and :func:`fmt`.
* :func:`propose` sends one request and returns the valid new points: the answer is data,
  parsed by :func:`~hgpso.tune.llm.parse_points` (type-checked, clipped, snapped to the
  integer grid and the categorical choices, and only then de-duplicated against ``tried``
  and within itself), never executed. A failed or
  short answer is a counted fallback (``stats.fallbacks``) and a ``RuntimeWarning``, never
  an exception.
* :func:`read_llm_stats` checks LLM counters read back from a saved state.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from .llm import UNITS, LLMClient, LLMError, LLMStats, parse_points, points_schema
from .space import Categorical, Float, Int, Param, SearchSpace
from .state import StateError, check_keys

__all__ = [
    "ORDERS",
    "SYSTEM_PROMPT",
    "UNITS",
    "PromptOptions",
    "ask_line",
    "best_lines",
    "best_points_prompt",
    "describe_space",
    "fmt",
    "order_note",
    "order_shown",
    "point_json",
    "propose",
    "read_llm_stats",
    "read_prompt_options",
    "show_point",
    "target_value",
]

SYSTEM_PROMPT = (
    "You are an optimization assistant that proposes parameter settings. "
    "Lower scores are better. Answer with JSON only, no explanation."
)


#: orders of the points a prompt shows (which points are shown does not depend on it)
ORDERS = ("best_first", "worst_first", "chronological")
#: a Categorical or Int grid of at most this many values is listed value by value
_LIST_UP_TO = 12


@dataclass(frozen=True)
class PromptOptions:
    """How the LLM strategies and ``LLMSampler`` write their prompts (defaults: the papers').

    Args:
        units: ``"space"`` (default): points are shown and asked for in the space's own
            values (``lr = 0.01``, ``act = "relu"``); ``"unit"``: as unit coordinates in
            ``[0, 1]`` (the encoding every strategy searches in, see
            ``hgpso.tune.space``), the answer decoded by the space (so integers and
            choices are snapped by the decoding).
        order: of the points shown (the same points whatever the order):
            ``"best_first"`` (default), ``"worst_first"`` (the best one last, next to the
            question, as OPRO orders its trajectory) or ``"chronological"`` (in the order
            they were evaluated).
        state_grid: spell out each integer dimension's grid (step 1, its values when there
            are at most 12) and each categorical dimension's exact choices (in
            ``units="unit"``: which slice of ``[0, 1]`` each value owns). Default off: the
            space's own one-line description (``integer in [5, 40]``).
        target: ``None`` (default): ask for points "likely to score lower"; a number
            ``alpha > 0``: ask for points expected to score ``best - alpha * spread``, where
            ``spread`` is the range of the finite scores told so far (``abs(best)`` if they
            are all equal, 1 if that is 0 too): LLAMBO's conditioning of its candidate
            sampler on a target value below the best.

    Frozen and validated (:class:`ValueError` naming the field); :meth:`as_dict` is what a
    strategy's state records, so a resumed search asks the same prompts.
    """

    units: str = "space"
    order: str = "best_first"
    state_grid: bool = False
    target: float | None = None

    def __post_init__(self) -> None:
        if self.units not in UNITS:
            raise ValueError(f"PromptOptions units must be one of {UNITS}, got {self.units!r}")
        if self.order not in ORDERS:
            raise ValueError(f"PromptOptions order must be one of {ORDERS}, got {self.order!r}")
        if not isinstance(self.state_grid, bool):
            raise ValueError(
                f"PromptOptions state_grid must be True or False, got {self.state_grid!r}"
            )
        t = self.target
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise ValueError(f"PromptOptions target must be a number or None, got {t!r}")
            if not (math.isfinite(t) and t > 0):
                raise ValueError(f"PromptOptions target must be finite and > 0, got {t!r}")
            object.__setattr__(self, "target", float(t))

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON data (``PromptOptions(**d)`` builds them again)."""
        return asdict(self)

    @classmethod
    def make(cls, value: PromptOptions | Mapping[str, Any] | None) -> PromptOptions:
        """``value`` as options: ``None`` gives the defaults, a dict its fields (checked)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {f.name for f in fields(cls)})
            if unknown:
                raise ValueError(
                    f"PromptOptions: unknown field(s) {unknown}; the fields are "
                    f"{[f.name for f in fields(cls)]}"
                )
            return cls(**value)
        raise TypeError(f"prompt_options must be PromptOptions, a dict or None, got {value!r}")


DEFAULT_OPTIONS = PromptOptions()


def fmt(v: Any) -> Any:
    """A number as the prompt shows it (4 significant digits for floats)."""
    if isinstance(v, float):
        return float(f"{v:.4g}")
    return v


def point_json(point: Mapping[str, Any]) -> str:
    return json.dumps({k: fmt(v) for k, v in point.items()}, separators=(",", ":"))


def show_point(
    space: SearchSpace, point: Mapping[str, Any], options: PromptOptions = DEFAULT_OPTIONS
) -> str:
    """``point`` as the prompt shows it: its values, or its unit coordinates (``units``)."""
    if options.units == "unit":
        u = space.encode(point)
        return point_json({n: float(x) for n, x in zip(space.names, u, strict=True)})
    return point_json(point)


def _grid_line(p: Param) -> str:
    """One dimension in the space's units with its grid stated (``state_grid``)."""
    if isinstance(p, Int):
        n = p.high - p.low + 1
        scale = ", log scale" if p.log else ""
        if n <= _LIST_UP_TO:
            return f"integer, one of {list(range(p.low, p.high + 1))}{scale}"
        return (
            f"integer in [{p.low}, {p.high}]{scale}, step 1 ({n} values; "
            "other numbers are rounded to the nearest integer)"
        )
    if isinstance(p, Categorical):
        return f"exactly one of {list(p.choices)!r} (no other value is accepted)"
    return p.describe()


def _unit_line(p: Param, grid: bool) -> str:
    """One dimension as a unit coordinate (``units="unit"``), its grid stated or not."""
    if isinstance(p, (Float, Int)):
        scale = ", log scale" if p.log else ""
        low, high = (f"{p.low:g}", f"{p.high:g}") if isinstance(p, Float) else (p.low, p.high)
        line = f"number in [0, 1] (0 means {low}, 1 means {high}{scale})"
        if grid and isinstance(p, Int):
            n = p.high - p.low + 1
            if p.log:
                line += (
                    f"; the {n} integers {p.low}..{p.high} own consecutive slices of [0, 1], "
                    "in order, equal on the log scale (narrower for larger integers)"
                )
            else:
                line += (
                    f"; the {n} integers {p.low}..{p.high} each own an equal slice of [0, 1], "
                    f"in order (the j-th integer from 0: [j/{n}, (j+1)/{n}))"
                )
        return line
    if isinstance(p, Categorical):
        n = len(p.choices)
        line = f"number in [0, 1] (selects one of {list(p.choices)!r})"
        if grid:
            line += (
                f"; the {n} choices each own an equal slice of [0, 1], in the order listed "
                f"(the j-th choice from 0: [j/{n}, (j+1)/{n}))"
            )
        return line
    return f"number in [0, 1] ({p.describe()})"  # pragma: no cover - only the three kinds


def describe_space(space: SearchSpace, options: PromptOptions = DEFAULT_OPTIONS) -> str:
    """The ``Parameters:`` lines of a prompt (default: :meth:`SearchSpace.describe`)."""
    if options.units == "space" and not options.state_grid:
        return space.describe()
    if options.units == "space":
        return "\n".join(f"- {n}: {_grid_line(p)}" for n, p in space.items())
    return "\n".join(f"- {n}: {_unit_line(p, options.state_grid)}" for n, p in space.items())


def order_shown(
    pairs: Sequence[tuple[Mapping[str, Any], float]],
    order: str,
    when: Sequence[int] | None = None,
) -> list[tuple[Mapping[str, Any], float]]:
    """``pairs`` (given best first) in ``order``; ``when[i]``: when pair ``i`` was evaluated
    (``"chronological"``; default: the given order)."""
    pairs = list(pairs)
    if order == "worst_first":
        return pairs[::-1]
    if order == "chronological":
        times = list(range(len(pairs))) if when is None else list(when)
        return [pv for _, pv in sorted(zip(times, pairs, strict=True), key=lambda tp: tp[0])]
    return pairs


_ORDER_NOTES = {
    "best_first": "",
    "worst_first": ", worst first, the best last",
    "chronological": ", in the order they were evaluated",
}


def order_note(order: str) -> str:
    """What the header of a list of points adds for ``order`` (nothing for the default)."""
    return _ORDER_NOTES[order]


def target_value(history: Sequence[tuple[Mapping[str, Any], float]], alpha: float) -> float | None:
    """The score to ask for, ``best - alpha * spread`` (see :class:`PromptOptions`), or
    ``None`` before any finite score."""
    finite = [v for _, v in history if math.isfinite(v)]
    if not finite:
        return None
    best, worst = min(finite), max(finite)
    spread = worst - best
    if not spread > 0:
        spread = abs(best) if best != 0 else 1.0
    return best - alpha * spread


def ask_line(
    k: int,
    what: str,
    history: Sequence[tuple[Mapping[str, Any], float]],
    options: PromptOptions = DEFAULT_OPTIONS,
    goal: str = "likely to score lower",
    keep_goal: bool = False,
) -> str:
    """The request sentence: ``Propose {k} {what}, {goal}. Answer as JSON: ...``.

    With a ``target``, "expected to score about T (the best so far is B)" replaces
    ``goal`` (or comes before it, ``keep_goal``); with ``units="unit"``, the answer is
    asked for in unit coordinates.
    """
    if options.target is not None:
        t = target_value(history, options.target)
        if t is not None:
            best = min(v for _, v in history if math.isfinite(v))
            aim = f"expected to score about {fmt(t)} (the best so far is {fmt(best)})"
            goal = f"{aim}, {goal}" if keep_goal else aim
    units = " (unit coordinates in [0, 1])" if options.units == "unit" else ""
    return (
        f"Propose {k} {what}, {goal}. "
        f'Answer as JSON{units}: {{"points": [{{...}}, ...]}} with exactly {k} points.'
    )


def best_lines(
    history: Sequence[tuple[Mapping[str, Any], float]],
    n: int,
    space: SearchSpace | None = None,
    options: PromptOptions = DEFAULT_OPTIONS,
) -> str:
    """The ``n`` best ``(point, score)`` pairs, one ``point -> score`` a line, in
    ``options.order`` (default best first; ``space`` is needed for ``units="unit"``)."""
    ranked = sorted(range(len(history)), key=lambda i: history[i][1])[:n]
    shown = order_shown([history[i] for i in ranked], options.order, ranked)
    if options.units == "unit" and space is None:
        raise ValueError("best_lines: units='unit' needs the space")
    return "\n".join(
        f"{show_point(space, p, options) if space is not None else point_json(p)} -> {fmt(v)}"
        for p, v in shown
    )


def best_points_prompt(
    task: str,
    space: SearchSpace,
    history: Sequence[tuple[Mapping[str, Any], float]],
    history_size: int,
    k: int,
    options: PromptOptions = DEFAULT_OPTIONS,
) -> str:
    """The prompt of papers 000/001: the task, the space and the best points so far."""
    return (
        f"{task}\nParameters:\n{describe_space(space, options)}\n"
        f"Best points evaluated so far (point -> score, lower is better"
        f"{order_note(options.order)}):\n"
        f"{best_lines(history, history_size, space, options)}\n"
        + ask_line(k, "new points, different from those above", history, options)
    )


def propose(
    llm: LLMClient,
    space: SearchSpace,
    prompt: str,
    k: int,
    tried: Iterable[tuple],
    who: str,
    stacklevel: int = 3,
    units: str = "space",
) -> list[dict[str, Any]]:
    """One proposal round: up to ``k`` valid points of ``space`` not in ``tried`` (keys).

    ``units``: the answer's values are the space's own (default) or unit coordinates
    (:class:`PromptOptions`); either way each point is snapped onto the space's grid before
    it is compared with ``tried``. Fewer than ``k`` (a failed request, a malformed answer,
    invalid or repeated points) counts one ``llm.stats.fallbacks`` and warns; the caller
    fills the rest with its own points.
    """
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
    ]
    schema = points_schema(space, k, units)
    got: list[dict[str, Any]] = []
    try:
        answer = llm.complete_json(messages, schema)
        got = parse_points(answer, space, k, tried, llm.stats, units=units)
    except (LLMError, ValueError, TypeError, RecursionError, OverflowError) as e:
        # any malformed answer is a counted fallback, never an exception out of ask()
        reason = str(e)
    else:
        reason = f"only {len(got)} of {k} proposed points were valid and new"
    if len(got) < k:
        llm.stats.fallbacks += 1
        warnings.warn(
            f"{who}: LLM {reason}; using the plain move for {k - len(got)} point(s)",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    return got


def read_llm_stats(stats: Any, where: str = "llm_stats") -> dict[str, int | float]:
    """LLM counters as saved by ``dataclasses.asdict(LLMStats)``, checked (numbers >= 0).

    ``duplicates`` may be missing (states saved before it was counted): read as 0.
    """
    if isinstance(stats, Mapping) and "duplicates" not in stats:
        stats = {**stats, "duplicates": 0}
    check_keys(stats, [f.name for f in fields(LLMStats)], where)
    for k, v in stats.items():
        ok = isinstance(v, float if k == "seconds" else int) and not isinstance(v, bool)
        if not (ok or (k == "seconds" and isinstance(v, int))) or v < 0 or v != v:
            raise StateError(f"{where}[{k!r}] must be a number >= 0, got {v!r}")
    return dict(stats)


def read_prompt_options(data: Any, where: str = "prompt_options") -> PromptOptions:
    """Prompt options saved by :meth:`PromptOptions.as_dict`, checked (a ``StateError``)."""
    check_keys(data, [f.name for f in fields(PromptOptions)], where)
    try:
        return PromptOptions(**data)
    except (TypeError, ValueError) as e:
        raise StateError(f"{where}: {e}") from e
