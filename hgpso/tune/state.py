"""Checked conversion of strategy state to and from plain JSON data.

A strategy's state (:meth:`hgpso.tune.Strategy.state_dict`) is data, not a pickle: numbers,
strings, lists and dicts only, with ``+inf`` scores written as the string ``"inf"`` (strict
JSON has no infinity). Loading goes through the readers here, which refuse anything that is
not exactly what the writer produces: a wrong type (a string ``iteration``), a NaN or a
value out of range, an array of the wrong shape. Every error names the offending key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .space import Categorical, Float, Int, SearchSpace

__all__ = [
    "StateError",
    "check_keys",
    "read_int",
    "read_matrix",
    "read_point",
    "read_score",
    "read_scores",
    "read_vector",
    "space_spec",
    "write_score",
    "write_scores",
]

INF = "inf"  # how a +inf score is written


class StateError(ValueError):
    """A strategy state that does not match what the strategy writes."""


def write_score(v: float) -> float | str:
    """A score as JSON data: finite floats as they are, ``+inf`` as ``"inf"``."""
    v = float(v)
    if math.isnan(v) or v == -math.inf:
        raise StateError(f"score {v!r} cannot be stored (scores are finite or +inf)")
    return INF if v == math.inf else v


def write_scores(values: Sequence[float] | np.ndarray) -> list[float | str]:
    return [write_score(v) for v in np.asarray(values, dtype=float).reshape(-1)]


def read_score(v: Any, where: str) -> float:
    """A finite number or ``"inf"`` (also a parsed ``Infinity``); NaN and -inf are refused."""
    if v == INF:
        return math.inf
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise StateError(f"{where} must be a number or {INF!r}, got {v!r}")
    f = float(v)
    if math.isnan(f) or f == -math.inf:
        raise StateError(f"{where} must be finite or +inf, got {v!r}")
    return f


def read_int(v: Any, where: str, low: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise StateError(f"{where} must be an int, got {type(v).__name__} {v!r}")
    if v < low:
        raise StateError(f"{where} must be >= {low}, got {v}")
    return v


def read_matrix(
    v: Any,
    where: str,
    cols: int,
    rows: int | None = None,
    unit: bool = True,
) -> np.ndarray:
    """A ``rows x cols`` list of lists of finite numbers (in ``[0, 1]`` when ``unit``)."""
    if not isinstance(v, list) or not all(isinstance(r, list) for r in v):
        raise StateError(f"{where} must be a list of rows, got {type(v).__name__}")
    if rows is not None and len(v) != rows:
        raise StateError(f"{where} must have {rows} rows, got {len(v)}")
    for i, r in enumerate(v):
        if len(r) != cols:
            raise StateError(f"{where}[{i}] must have {cols} values, got {len(r)}")
        for x in r:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise StateError(f"{where}[{i}] must hold finite numbers, got {x!r}")
            if unit and not 0.0 <= x <= 1.0:
                raise StateError(f"{where}[{i}] must lie in the unit cube [0, 1], got {x!r}")
    return np.array(v, dtype=float).reshape(len(v), cols)


def read_vector(v: Any, where: str, cols: int, unit: bool = True) -> np.ndarray:
    if not isinstance(v, list):
        raise StateError(f"{where} must be a list, got {type(v).__name__}")
    return read_matrix([v], where, cols, unit=unit)[0]


def read_scores(v: Any, where: str, n: int | None = None) -> np.ndarray:
    if not isinstance(v, list):
        raise StateError(f"{where} must be a list of scores, got {type(v).__name__}")
    if n is not None and len(v) != n:
        raise StateError(f"{where} must hold {n} scores, got {len(v)}")
    return np.array([read_score(x, f"{where}[{i}]") for i, x in enumerate(v)], dtype=float)


def read_point(v: Any, space: SearchSpace, where: str) -> dict[str, Any]:
    if not isinstance(v, Mapping) or set(v) != set(space.names):
        raise StateError(f"{where} must be a point with exactly the keys {space.names}, got {v!r}")
    try:
        point = space.coerce(v)
    except (TypeError, ValueError, KeyError) as e:
        raise StateError(f"{where} is not a point of the space: {e}") from e
    if point != dict(v):  # coerce clips: a stored point is always inside the space
        raise StateError(f"{where} lies outside the space: {v!r}")
    return point


def check_keys(state: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    if not isinstance(state, Mapping):
        raise StateError(f"{where} must be a dict, got {type(state).__name__}")
    unknown = sorted(set(state) - set(allowed))
    missing = sorted(set(allowed) - set(state))
    if unknown:
        raise StateError(
            f"{where}: unknown key(s) {unknown}; a state holds exactly {list(allowed)}"
        )
    if missing:
        raise StateError(f"{where}: missing key(s) {missing}")


def space_spec(space: SearchSpace) -> list[list[Any]]:
    """The space as data (names, types, bounds, choices): a saved state is for one space."""
    out: list[list[Any]] = []
    for name, p in space.items():
        if isinstance(p, (Float, Int)):
            out.append([name, p.kind, p.low, p.high, bool(p.log)])
        elif isinstance(p, Categorical):
            out.append([name, p.kind, list(p.choices)])
        else:  # pragma: no cover - SearchSpace holds only these
            out.append([name, p.kind, repr(p)])
    return out
