"""Typed search spaces and their one encoding to the unit hypercube.

Every strategy in :mod:`hgpso.tune` works on *unit coordinates*: a point of a space with
``d`` parameters is a vector ``u`` in ``[0, 1]^d``. The mapping is defined here once:

* ``Float(low, high)``: ``x = low + u * (high - low)``.
* ``Float(low, high, log=True)``: ``x = exp(log(low) + u * (log(high) - log(low)))``.
* ``Int(low, high)``: the float mapping on ``[low - 0.5, high + 0.5]`` rounded to the
  nearest integer and clipped to ``[low, high]``, so each integer owns an equal share of
  the unit interval (``log=True`` works the same in log space).
* ``Categorical(choices)``: ``index = min(floor(u * n), n - 1)``; the inverse maps a choice
  to the centre of its bucket, ``(index + 0.5) / n``.

Decoding is therefore total (every ``u`` gives a valid value) and ``encode(decode(u))`` is
a projection onto the representable points, which is what lets PSO and GA move freely in
the continuous cube while objectives only ever see typed, in-bound values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Categorical", "Float", "Int", "Param", "SearchSpace"]


class Param:
    """Base class of one typed hyperparameter."""

    kind: str = "param"

    def decode(self, u: float) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, value: Any) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def coerce(self, value: Any) -> Any:
        """Validate the *type* of ``value`` and clip it into bounds.

        Raises :class:`TypeError`/:class:`ValueError` for values of the wrong type (these are
        how LLM answers are checked); out-of-range numbers are clipped, not rejected.
        """
        raise NotImplementedError  # pragma: no cover

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


def _as_number(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("booleans are not numbers here")
    try:
        if isinstance(value, (int, float, np.integer, np.floating)):
            out = float(value)
        elif isinstance(value, str):
            out = float(value.strip())  # ValueError on garbage
        else:
            raise TypeError(f"expected a number, got {type(value).__name__}")
    except OverflowError as e:  # a 400-digit integer from an LLM answer
        raise ValueError("number too large") from e
    if not math.isfinite(out):
        raise ValueError("non-finite number")
    return out


def _check_bounds(cls: str, low: Any, high: Any) -> tuple[float, float]:
    """``low``/``high`` as finite floats, or an error naming the bad argument.

    Checked at construction, so a bad bound fails there and not as a raw conversion error
    (``int(nan)``) or a NaN decode later.
    """
    out = []
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{cls} {name} must be a number, got {value!r}")
        try:
            x = float(value)
        except OverflowError:  # an int past the float range
            raise ValueError(f"{cls} {name} must be finite, got {value!r}") from None
        if not math.isfinite(x):
            raise ValueError(f"{cls} {name} must be finite, got {value!r}")
        out.append(x)
    return out[0], out[1]


def _check_span(cls: str, lo: float, hi: float) -> None:
    # decode computes lo + u * (hi - lo): a span past the float range makes that NaN
    if not math.isfinite(hi - lo):
        raise ValueError(
            f"{cls} span high - low overflows a float (low={lo!r}, high={hi!r}); "
            "narrow the bounds or use log=True"
        )


@dataclass(frozen=True)
class Float(Param):
    """A real parameter in ``[low, high]``, on a linear or a log scale."""

    low: float
    high: float
    log: bool = False
    kind = "float"

    def __post_init__(self) -> None:
        low, high = _check_bounds("Float", self.low, self.high)
        if not low < high:
            raise ValueError(f"Float needs low < high, got [{self.low}, {self.high}]")
        if self.log and low <= 0:
            raise ValueError("Float(log=True) needs low > 0")
        if not self.log:
            _check_span("Float", low, high)

    def _lo_hi(self) -> tuple[float, float]:
        if self.log:
            return math.log(self.low), math.log(self.high)
        return float(self.low), float(self.high)

    def decode(self, u: float) -> float:
        lo, hi = self._lo_hi()
        x = lo + min(max(float(u), 0.0), 1.0) * (hi - lo)
        x = math.exp(x) if self.log else x
        return min(max(x, self.low), self.high)

    def encode(self, value: Any) -> float:
        lo, hi = self._lo_hi()
        v = self.coerce(value)
        v = math.log(v) if self.log else v
        return min(max((v - lo) / (hi - lo), 0.0), 1.0)

    def coerce(self, value: Any) -> float:
        return min(max(_as_number(value), self.low), self.high)

    def describe(self) -> str:
        scale = ", log scale" if self.log else ""
        return f"float in [{self.low:g}, {self.high:g}]{scale}"


@dataclass(frozen=True)
class Int(Param):
    """An integer parameter in ``[low, high]`` (inclusive), linear or log scale."""

    low: int
    high: int
    log: bool = False
    kind = "int"

    def __post_init__(self) -> None:
        low, high = _check_bounds("Int", self.low, self.high)
        for name, value in (("low", self.low), ("high", self.high)):
            if int(value) != value:
                raise ValueError(f"Int {name} must be an integer, got {value!r}")
        if not self.log:
            _check_span("Int", low - 0.5, high + 0.5)
        if not self.low <= self.high:
            raise ValueError(f"Int needs low <= high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError("Int(log=True) needs low > 0")

    def _lo_hi(self) -> tuple[float, float]:
        lo, hi = self.low - 0.5, self.high + 0.5
        if self.log:
            return math.log(max(lo, 0.5 * self.low)), math.log(hi)
        return lo, hi

    def decode(self, u: float) -> int:
        lo, hi = self._lo_hi()
        x = lo + min(max(float(u), 0.0), 1.0) * (hi - lo)
        x = math.exp(x) if self.log else x
        return int(min(max(round(x), self.low), self.high))

    def encode(self, value: Any) -> float:
        lo, hi = self._lo_hi()
        v = float(self.coerce(value))
        v = math.log(v) if self.log else v
        return min(max((v - lo) / (hi - lo), 0.0), 1.0)

    def coerce(self, value: Any) -> int:
        x = _as_number(value)
        return int(min(max(round(x), self.low), self.high))

    def describe(self) -> str:
        scale = ", log scale" if self.log else ""
        return f"integer in [{self.low}, {self.high}]{scale}"


@dataclass(frozen=True)
class Categorical(Param):
    """One of a fixed tuple of choices (str, int, float or bool)."""

    choices: tuple
    kind = "categorical"

    def __init__(self, choices: Iterable[Any]) -> None:
        object.__setattr__(self, "choices", tuple(choices))
        if not self.choices:
            raise ValueError("Categorical needs at least one choice")
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError("Categorical choices must be distinct")

    def decode(self, u: float) -> Any:
        n = len(self.choices)
        idx = min(math.floor(min(max(float(u), 0.0), 1.0) * n), n - 1)
        return self.choices[idx]

    def encode(self, value: Any) -> float:
        return (self._index(value) + 0.5) / len(self.choices)

    def _index(self, value: Any) -> int:
        for i, c in enumerate(self.choices):
            if type(c) is type(value) and c == value:
                return i
        # Tolerate the JSON spelling of a choice (e.g. "relu" vs relu, 1 vs 1.0).
        for i, c in enumerate(self.choices):
            if not isinstance(value, bool) and not isinstance(c, bool) and c == value:
                return i
            if isinstance(value, str) and str(c) == value:
                return i
        raise ValueError(f"{value!r} is not one of {list(self.choices)!r}")

    def coerce(self, value: Any) -> Any:
        return self.choices[self._index(value)]

    def describe(self) -> str:
        return f"one of {list(self.choices)!r}"


class SearchSpace(Mapping):
    """An ordered mapping ``name -> Param`` with the unit-cube encoding of whole points.

    >>> space = SearchSpace({"lr": Float(1e-4, 1.0, log=True), "layers": Int(1, 4)})
    >>> point = space.decode(np.array([0.5, 1.0]))  # lr: halfway on the log scale
    >>> round(point["lr"], 12), point["layers"]
    (0.01, 4)
    >>> space.encode({"lr": 0.01, "layers": 4})  # each integer owns a quarter of [0, 1]
    array([0.5  , 0.875])
    """

    def __init__(self, params: Mapping[str, Param]) -> None:
        if not params:
            raise ValueError("SearchSpace needs at least one parameter")
        for name, p in params.items():
            if not isinstance(name, str) or not name:
                raise TypeError("parameter names must be non-empty strings")
            if not isinstance(p, Param):
                raise TypeError(f"{name!r}: expected Float/Int/Categorical, got {p!r}")
        self._params = dict(params)

    # Mapping protocol
    def __getitem__(self, key: str) -> Param:
        return self._params[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        return f"SearchSpace({self._params!r})"

    @property
    def names(self) -> list[str]:
        return list(self._params)

    @property
    def dim(self) -> int:
        return len(self._params)

    def decode(self, u: Sequence[float] | np.ndarray) -> dict[str, Any]:
        u = np.asarray(u, dtype=float).reshape(-1)
        if u.shape[0] != self.dim:
            raise ValueError(f"expected {self.dim} unit coordinates, got {u.shape[0]}")
        return {n: p.decode(x) for (n, p), x in zip(self._params.items(), u, strict=True)}

    def encode(self, point: Mapping[str, Any]) -> np.ndarray:
        missing = [n for n in self._params if n not in point]
        if missing:
            raise KeyError(f"point is missing parameters {missing}")
        return np.array([p.encode(point[n]) for n, p in self._params.items()], dtype=float)

    def coerce(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """Type-check and clip a full point (used on untrusted input such as LLM answers)."""
        if not isinstance(point, Mapping):
            raise TypeError(f"expected an object, got {type(point).__name__}")
        missing = [n for n in self._params if n not in point]
        if missing:
            raise KeyError(f"missing parameters {missing}")
        return {n: p.coerce(point[n]) for n, p in self._params.items()}

    def project(self, u: np.ndarray) -> np.ndarray:
        """Snap unit coordinates onto representable points: ``encode(decode(u))``."""
        return self.encode(self.decode(u))

    def key(self, point: Mapping[str, Any]) -> tuple:
        """A hashable identity of a point, used to drop duplicates."""
        out = []
        for n, p in self._params.items():
            v = point[n]
            out.append(float(f"{v:.10g}") if isinstance(p, Float) else repr(v))
        return tuple(out)

    def sample_unit(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` uniform points in the unit cube (log parameters: log-uniform)."""
        return rng.random((n, self.dim))

    def initial_unit(self, seed: int, n: int) -> np.ndarray:
        """The initial population for ``seed``: identical for every strategy.

        Drawn from its own generator (``seed`` mixed with a fixed salt) so strategies that
        consume random numbers differently still start from the same points.
        """
        rng = np.random.default_rng([int(seed), 0x5EED])
        return self.sample_unit(rng, n)

    def describe(self) -> str:
        return "\n".join(f"- {n}: {p.describe()}" for n, p in self._params.items())
