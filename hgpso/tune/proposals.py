"""One LLM proposal round, shared by every LLM-guided strategy and by ``LLMSampler``.

The papers' rule is the same wherever it runs: show the model the best points so far, ask
for ``k`` new ones, keep those that parse, fit the space and were not tried yet, and fall
back to the base method's own points for the rest. This module is that rule, once:

* :func:`best_points_prompt` builds the prompt of LLM-PSO and of the ``llm`` layer (the best
  points evaluated so far, lower is better); LLM-GA builds its own (parents and Evolution of
  Thought) from :func:`point_json` and :func:`fmt`.
* :func:`propose` sends one request and returns the valid new points: the answer is data,
  parsed by :func:`~hgpso.tune.llm.parse_points` (type-checked, clipped/snapped by the
  space, de-duplicated against ``tried`` and within itself), never executed. A failed or
  short answer is a counted fallback (``stats.fallbacks``) and a ``RuntimeWarning``, never
  an exception.
* :func:`read_llm_stats` checks LLM counters read back from a saved state.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from .llm import LLMClient, LLMError, LLMStats, parse_points, points_schema
from .space import SearchSpace
from .state import StateError, check_keys

__all__ = [
    "SYSTEM_PROMPT",
    "best_lines",
    "best_points_prompt",
    "fmt",
    "point_json",
    "propose",
    "read_llm_stats",
]

SYSTEM_PROMPT = (
    "You are an optimization assistant that proposes parameter settings. "
    "Lower scores are better. Answer with JSON only, no explanation."
)


def fmt(v: Any) -> Any:
    """A number as the prompt shows it (4 significant digits for floats)."""
    if isinstance(v, float):
        return float(f"{v:.4g}")
    return v


def point_json(point: Mapping[str, Any]) -> str:
    return json.dumps({k: fmt(v) for k, v in point.items()}, separators=(",", ":"))


def best_lines(history: Sequence[tuple[Mapping[str, Any], float]], n: int) -> str:
    """The ``n`` best ``(point, score)`` pairs, best first, one ``point -> score`` a line."""
    ranked = sorted(history, key=lambda pv: pv[1])[:n]
    return "\n".join(f"{point_json(p)} -> {fmt(v)}" for p, v in ranked)


def best_points_prompt(
    task: str,
    space: SearchSpace,
    history: Sequence[tuple[Mapping[str, Any], float]],
    history_size: int,
    k: int,
) -> str:
    """The prompt of papers 000/001: the task, the space and the best points so far."""
    return (
        f"{task}\nParameters:\n{space.describe()}\n"
        f"Best points evaluated so far (point -> score, lower is better):\n"
        f"{best_lines(history, history_size)}\n"
        f"Propose {k} new points, different from those above, likely to score lower. "
        f'Answer as JSON: {{"points": [{{...}}, ...]}} with exactly {k} points.'
    )


def propose(
    llm: LLMClient,
    space: SearchSpace,
    prompt: str,
    k: int,
    tried: Iterable[tuple],
    who: str,
    stacklevel: int = 3,
) -> list[dict[str, Any]]:
    """One proposal round: up to ``k`` valid points of ``space`` not in ``tried`` (keys).

    Fewer than ``k`` (a failed request, a malformed answer, invalid or repeated points)
    counts one ``llm.stats.fallbacks`` and warns; the caller fills the rest with its own
    points.
    """
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
    ]
    schema = points_schema(space, k)
    got: list[dict[str, Any]] = []
    try:
        answer = llm.complete_json(messages, schema)
        got = parse_points(answer, space, k, tried, llm.stats)
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
    """LLM counters as saved by ``dataclasses.asdict(LLMStats)``, checked (numbers >= 0)."""
    check_keys(stats, [f.name for f in fields(LLMStats)], where)
    for k, v in stats.items():
        ok = isinstance(v, float if k == "seconds" else int) and not isinstance(v, bool)
        if not (ok or (k == "seconds" and isinstance(v, int))) or v < 0 or v != v:
            raise StateError(f"{where}[{k!r}] must be a number >= 0, got {v!r}")
    return dict(stats)
