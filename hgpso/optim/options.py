"""The swarm's options: one spec of the swarm-wide options, and the groups' hyperparameters.

Swarm-wide options (a particle spans every param group, so they are not per group) live in
the optimizer's ``defaults``, ``optimizer.defaults["swarm_options"]``, a plain dict, where
torch keeps its optimizers' flags: ``copy.deepcopy`` and ``pickle`` carry it with no special
case, and ``state_dict()`` saves it beside the state (``state_dict()["swarm_options"]``). The
same :func:`check_option` validates a value given to ``__init__``, assigned to an attribute
(``opt.forget = 0.5``) or read from a checkpoint, so the three cannot disagree.

Per-group hyperparameters (``lr``, ``inertia``/``momentum``, ``cognitive``, ``social``,
``max_velocity``, ``init_spread``, ``weight_decay`` and, with ``gradient="adam"``, ``betas``
and ``eps``) stay in ``param_groups``, where torch's schedulers find them; :class:`ParamGroup`
makes ``momentum`` another name for ``inertia``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, overload

from torch import Tensor

from hgpso.distributed import check_mode

__all__ = [
    "CONSTRUCTION_OPTIONS",
    "GRADIENT_TERMS",
    "GROUP_KEYS",
    "OLD_GROUP_DEFAULTS",
    "OPTIONS_KEY",
    "READOUTS",
    "ParamGroup",
    "check_group",
    "check_group_value",
    "check_number",
    "check_option",
    "check_options",
    "describe",
    "merge_aliases",
    "new_group",
]

#: where the swarm-wide options live in ``optimizer.defaults`` (and in ``state_dict()``)
OPTIONS_KEY = "swarm_options"
#: the options fixed when the optimizer is built (a checkpoint never changes them) (one saved
#: with another ``gradient`` is refused, :mod:`hgpso.optim.checkpoint`)
CONSTRUCTION_OPTIONS = ("num_particles", "fused", "distributed", "gradient", "lr_spread")
#: the velocity's gradient terms (:class:`~hgpso.HGPSO`'s ``gradient``)
GRADIENT_TERMS = ("sgd", "adam")
#: what the model holds between steps (:mod:`hgpso.optim.readout`)
READOUTS = ("gbest", "mean")


def check_number(
    name: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> None:
    """A finite real number in ``[low, high]`` (ends opened by ``low_open``/``high_open``).

    ``inf`` is refused even where ``high`` is infinite: a swarm moved by an infinite
    coefficient re-seeds its particles and goes NaN.
    """
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    if math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"invalid {name}: {value!r}, expected a value in {lo}{low}, {high}{hi}")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _fraction(name: str, *, low_open: bool = False, high_open: bool = False) -> Callable:
    def check(value: Any) -> float:
        check_number(name, value, high=1.0, low_open=low_open, high_open=high_open)
        return float(value)

    return check


def _nonnegative(name: str) -> Callable:
    def check(value: Any) -> float:
        check_number(name, value)
        return float(value)

    return check


def _bool(name: str) -> Callable:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool, got {value!r}")
        return value

    return check


def _seed(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"seed must be an int or None, got {value!r}")
    return value


def _fused(value: Any) -> bool | None:
    if value not in (None, True, False) or (isinstance(value, int) and not isinstance(value, bool)):
        raise ValueError(f"fused must be None, True or False, got {value!r}")
    return value


def _distributed(value: Any) -> str:
    return check_mode(value)


def _gradient(value: Any) -> str:
    if not isinstance(value, str) or value not in GRADIENT_TERMS:
        allowed = " or ".join(repr(g) for g in GRADIENT_TERMS)
        raise ValueError(f"invalid gradient: {value!r}, expected {allowed}")
    return value


def _readout(value: Any) -> str:
    if not isinstance(value, str) or value not in READOUTS:
        allowed = " or ".join(repr(r) for r in READOUTS)
        raise ValueError(f"invalid readout: {value!r}, expected {allowed}")
    return value


def _readout_k(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"readout_k must be None or a positive int, got {value!r}")
    return value


def _lr_spread(value: Any) -> float:
    check_number("lr_spread", value, low=1.0)
    return float(value)


#: every swarm-wide option: its checker, which returns the value to store
_SPEC: dict[str, Callable[[Any], Any]] = {
    "num_particles": lambda v: _positive_int("num_particles", v),
    "forget": _fraction("forget"),
    "adaptive": _bool("adaptive"),
    "ema_beta": _fraction("ema_beta", high_open=True),
    "tol": _nonnegative("tol"),
    "patience": lambda v: _positive_int("patience", v),
    "lr_patience": lambda v: _positive_int("lr_patience", v),
    "lr_factor": _fraction("lr_factor", low_open=True),
    "min_lr_scale": _fraction("min_lr_scale", low_open=True),
    "seed": _seed,
    "fused": _fused,
    "distributed": _distributed,
    "gradient": _gradient,
    "readout": _readout,
    "readout_k": _readout_k,
    "lr_spread": _lr_spread,
    "lr_pull": _fraction("lr_pull"),
}

#: the values of options that a checkpoint or pickle from an older version lacks
OLD_DEFAULTS: dict[str, Any] = {
    "forget": 1.0,
    "adaptive": True,
    "ema_beta": 0.9,
    "tol": 1e-3,
    "patience": 1000,
    "lr_patience": 200,
    "lr_factor": 0.5,
    "min_lr_scale": 0.01,
    "seed": None,
    "fused": None,
    "distributed": "replicated",
    "gradient": "sgd",
    "readout": "gbest",
    "readout_k": None,
    "lr_spread": 1.0,
    "lr_pull": 0.0,
}


def check_option(name: str, value: Any) -> Any:
    """The value to store for option ``name``, or a :class:`ValueError` naming it."""
    if name not in _SPEC:
        raise ValueError(f"unknown swarm option {name!r}; the options are {sorted(_SPEC)}")
    return _SPEC[name](value)


def check_options(options: Mapping[str, Any], *, where: str = "") -> dict[str, Any]:
    """Every option of ``options`` checked (all of them must be known): a new dict."""
    if not isinstance(options, Mapping):
        raise ValueError(f"{where or 'the swarm options'} must be a dict, got {options!r}")
    unknown = set(options) - set(_SPEC)
    if unknown:
        raise ValueError(
            f"{where or 'the swarm options'} name unknown options {sorted(unknown)}; "
            f"the options are {sorted(_SPEC)}"
        )
    out = {name: check_option(name, value) for name, value in options.items()}
    k, n = out.get("readout_k"), out.get("num_particles")
    if k is not None and n is not None and k > n:
        raise ValueError(
            f"readout_k={k} exceeds num_particles={n}: the readout averages at most all "
            "the particles (readout_k=None takes them all)"
        )
    if out.get("distributed") == "sharded" and out.get("fused"):
        raise ValueError(
            "fused=True cannot be combined with distributed='sharded': the fused kernel's "
            "counter-based randoms depend on a particle's row in its tensor, which "
            "sharding changes; use fused=None or fused=False"
        )
    if out.get("lr_spread", 1.0) > 1.0 and out.get("fused"):
        raise ValueError(
            "fused=True cannot be combined with lr_spread > 1: the fused HG-PSO kernel takes "
            "one learning rate per param group, not one per particle; use fused=None (the "
            "pure-PyTorch update runs) or fused=False"
        )
    if out.get("gradient") == "adam" and out.get("fused"):
        raise ValueError(
            "fused=True cannot be combined with gradient='adam': the fused HG-PSO kernel "
            "implements the 'sgd' gradient term only; pass gradient='sgd' for the kernel "
            "(gradient='adam' is the default), or use fused=None (the pure-PyTorch update "
            "runs) or fused=False"
        )
    return out


def describe(opt: Any) -> dict[str, Any]:
    """Everything the ranks of a distributed swarm must agree on, as a flat JSON-able dict
    (exchanged as one digest by :meth:`hgpso.distributed.SwarmComm.check_config`)."""
    out: dict[str, Any] = {"optimizer class": type(opt).__name__}
    out.update({k: v for k, v in opt.defaults[OPTIONS_KEY].items() if k != "seed"})
    for k, group in enumerate(opt.param_groups):
        for key in GROUP_KEYS:
            if key in opt.defaults:
                out[f"param group {k} {key}"] = group[key]
    params = opt._trainable()
    out["parameter shapes"] = [list(p.shape) for p in params]
    out["parameter dtypes"] = [str(p.dtype) for p in params]
    return out


T = TypeVar("T")


class Option(Generic[T]):
    """An attribute of the optimizer backed by ``defaults["swarm_options"]`` (checked when set)."""

    name: str

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Option[T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return obj.defaults[OPTIONS_KEY][self.name]  # type: ignore[attr-defined]

    def __set__(self, obj: object, value: T) -> None:
        if self.name in CONSTRUCTION_OPTIONS:
            raise AttributeError(
                f"{self.name} is fixed when the optimizer is built; create a new optimizer"
            )
        defaults = obj.defaults  # type: ignore[attr-defined]
        # the whole set checked again: some options constrain others (readout_k <= N)
        defaults[OPTIONS_KEY] = check_options({**defaults[OPTIONS_KEY], self.name: value})


# ------------------------------------------------------------ per-group hyperparameters
#: names of one group value: torch's schedulers cycle ``momentum``, the swarm calls it ``inertia``
ALIASES = ("inertia", "momentum")
_NONNEGATIVE = (
    "lr",
    "inertia",
    "momentum",
    "cognitive",
    "social",
    "init_spread",
    "weight_decay",
    "eps",
)
#: the hyperparameters a swarm's param group holds (``momentum``: another name, newer;
#: ``betas`` and ``eps`` only with ``gradient="adam"``, PSO has no ``lr`` nor ``weight_decay``)
GROUP_KEYS = (
    "lr",
    "inertia",
    "cognitive",
    "social",
    "max_velocity",
    "init_spread",
    "weight_decay",
    "betas",
    "eps",
)
#: the values of group keys that a checkpoint from an older version lacks (it trained
#: with them: no weight decay, the ``"sgd"`` gradient term)
OLD_GROUP_DEFAULTS: dict[str, Any] = {"weight_decay": 0.0, "betas": (0.9, 0.999), "eps": 1e-8}


def _check_betas(value: Any) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {value!r}")
    for i, beta in enumerate(value):
        check_number(f"betas[{i}]", beta, high=1.0, high_open=True)


def check_group_value(key: str, value: Any) -> None:
    """A known group hyperparameter's value (finite; ``max_velocity`` > 0 or ``None``;
    ``betas`` a pair in ``[0, 1)``; the others >= 0), or a :class:`ValueError` naming it."""
    if key == "max_velocity":
        check_number(key, value, low=0.0, low_open=True, allow_none=True)
    elif key == "betas":
        _check_betas(value)
    elif key in _NONNEGATIVE:
        check_number(key, value)


def check_group(group: Mapping[str, Any], where: str) -> None:
    """Every known hyperparameter of ``group`` valid, ``inertia``/``momentum`` agreeing."""
    merge_aliases(group, where)
    for key, value in group.items():
        if key != "params":
            check_group_value(key, value)


class ParamGroup(dict):
    """A param group in which ``momentum`` is another name for ``inertia``.

    :class:`~torch.optim.lr_scheduler.OneCycleLR` and
    :class:`~torch.optim.lr_scheduler.CyclicLR` (``cycle_momentum=True``) cycle
    ``group["momentum"]``; writing either name sets both, so the inertia the next step uses
    is the value last written under either name (a scheduler's, a user's or a callback's).
    """

    def __init__(self, items: Mapping[str, Any]) -> None:
        super().__init__()
        self.update(items)

    def __setitem__(self, key: str, value: Any) -> None:
        if key in ALIASES:
            for name in ALIASES:
                super().__setitem__(name, value)
        else:
            super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Set every given key, ``inertia`` and ``momentum`` as one value."""
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``self[key]``, set to ``default`` first when absent (both names of the inertia)."""
        if key not in self:
            self[key] = default
        return self[key]

    def __reduce__(self) -> tuple[Any, ...]:
        return (ParamGroup, (dict(self),))


def new_group(param_group: Mapping[str, Any], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """``param_group`` checked for a swarm whose groups are ``groups``: valid values, both
    names of the inertia set, its parameters a list none of which is already in a group."""
    where = f"param group {len(groups)}"
    check_group(param_group, where)
    group = merge_aliases(param_group, where)
    params = group["params"]
    params = [params] if isinstance(params, Tensor) else list(params)
    seen = {id(p) for g in groups for p in g["params"]}
    for i, p in enumerate(params):
        if id(p) in seen:
            raise ValueError(
                f"parameter {i} of {where} (shape {tuple(p.shape)}) appears more than once in "
                "the optimizer: each parameter must be given once, or it would move several "
                "times per step"
            )
        seen.add(id(p))
    return {**group, "params": params}


def merge_aliases(group: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``group`` with ``inertia`` and ``momentum`` both set when either is (a copy); giving
    both with different values is an error."""
    given = {name: group[name] for name in ALIASES if name in group}
    a, b = given.get("inertia"), given.get("momentum")
    if len(given) == 2 and a is not b and a != b:
        raise ValueError(
            f"{where} sets inertia={given['inertia']!r} and momentum={given['momentum']!r}: "
            "momentum is another name for the swarm's inertia (so that torch's schedulers "
            "can cycle it), give one of them"
        )
    if not given:
        return dict(group)
    value = next(iter(given.values()))
    return {**group, **{name: value for name in ALIASES}}
