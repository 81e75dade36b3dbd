"""Peer tuners on the same problems, budgets and seeds as the hgpso.tune strategies.

``run_peer(name, objective, space, budget, target, seed)`` returns the same keys as
:meth:`hgpso.tune.TuneResult.as_dict` (``calls_to_target``, ``best_value``, ``trace``,
``wall_seconds``...), so the benchmark summaries treat peers and hgpso strategies alike.
Peers: Optuna's ``TPESampler``, ``CmaEsSampler`` (needs ``cmaes``) and ``RandomSampler``;
nevergrad's ``PSO`` and ``NGOpt``. Only float parameters are supported (Rastrigin, LSTM's
log-float learning rate handled through the space's unit-cube encoding).

Two workarounds for nevergrad 1.0.12, both scoped to one ``run_peer`` call:

- NGOpt's meta-model step converts a one-row ``predict`` result to ``float``; numpy >= 2.4
  refuses that (a ``TypeError``; upstream facebookresearch/nevergrad#1612 reported it as a
  deprecation warning). While NGOpt runs, the sklearn regressors it builds return a 0-d
  array for a single row, which is the value nevergrad meant.
- Recast sub-optimizers (Powell, CMA inside NGOpt) wait on a non-daemon thread; when a run
  ends in an error, whose traceback keeps the optimizer alive, those threads are told to
  stop, else the interpreter waits for them forever at exit.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from hgpso.tune import SearchSpace

PEERS = ("optuna_tpe", "optuna_cmaes", "optuna_random", "ng_pso", "ng_ngopt")


class _Budget(Exception):
    """Raised inside the objective wrapper once the target is reached (stops the peer)."""


# the sklearn regressors nevergrad's meta-model may build (module, class name)
_METAMODEL_REGRESSORS = (
    ("sklearn.linear_model", "LinearRegression"),
    ("sklearn.svm", "SVR"),
    ("sklearn.ensemble", "RandomForestRegressor"),
    ("sklearn.neural_network", "MLPRegressor"),
)


@contextlib.contextmanager
def _scalar_single_row_predict() -> Iterator[None]:
    """Make one-row ``predict`` calls return a 0-d array (see the module docstring)."""
    saved = []
    try:
        for mod_name, cls_name in _METAMODEL_REGRESSORS:
            mod = importlib.import_module(mod_name)
            base = getattr(mod, cls_name)

            def predict(self: Any, X: Any, _base: Any = base) -> Any:
                out = _base.predict(self, X)
                return out.reshape(()) if np.shape(out) == (1,) else out

            patched = type(cls_name, (base,), {"predict": predict, "__module__": mod_name})
            saved.append((mod, cls_name, base))
            setattr(mod, cls_name, patched)
        yield
    finally:
        for mod, cls_name, base in saved:
            setattr(mod, cls_name, base)


def _stop_recast_threads() -> None:
    from nevergrad.optimization import recaster

    for t in threading.enumerate():
        if isinstance(t, recaster._MessagingThread) and t.is_alive():
            t.stop()


def run_peer(
    name: str,
    objective: Callable[[dict[str, Any]], float],
    space: SearchSpace,
    budget: int,
    target: float | None,
    seed: int,
) -> dict[str, Any]:
    if name not in PEERS:
        raise ValueError(f"name must be one of {PEERS}, got {name!r}")
    names = list(space.names)
    trace: list[float] = []
    best: dict[str, Any] = {"value": math.inf, "point": None, "ctt": None, "obj_s": 0.0}

    def f(u: np.ndarray) -> float:
        # peers search the same unit cube the hgpso strategies search
        point = space.decode(np.clip(np.asarray(u, dtype=float), 0.0, 1.0))
        t0 = time.perf_counter()
        v = float(objective(point))
        best["obj_s"] += time.perf_counter() - t0
        if v < best["value"]:
            best["value"], best["point"] = v, point
        trace.append(best["value"])
        if target is not None and best["ctt"] is None and best["value"] <= target:
            best["ctt"] = len(trace)
            raise _Budget
        return v

    d = len(names)
    # import before the clock starts: a process's first run must not pay for the import
    if name.startswith("optuna_"):
        import optuna
    else:
        import nevergrad as ng
    t0 = time.perf_counter()
    try:
        if name.startswith("optuna_"):
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sampler = {
                "optuna_tpe": lambda: optuna.samplers.TPESampler(seed=seed),
                "optuna_cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
                "optuna_random": lambda: optuna.samplers.RandomSampler(seed=seed),
            }[name]()
            study = optuna.create_study(sampler=sampler)

            def obj(trial: Any) -> float:
                u = np.array([trial.suggest_float(f"u{i}", 0.0, 1.0) for i in range(d)])
                try:
                    return f(u)
                except _Budget:  # target reached: record this trial, stop the study
                    trial.study.stop()
                    return float(best["value"])

            study.optimize(obj, n_trials=budget, catch=())
        else:
            param = ng.p.Array(shape=(d,), lower=0.0, upper=1.0)
            param.random_state = np.random.RandomState(seed)
            opt_cls = ng.optimizers.registry["PSO" if name == "ng_pso" else "NGOpt"]
            opt = opt_cls(parametrization=param, budget=budget)
            try:
                with _scalar_single_row_predict():
                    for _ in range(budget):
                        cand = opt.ask()
                        opt.tell(cand, f(cand.value))
            finally:
                _stop_recast_threads()
    except _Budget:
        pass
    return {
        "strategy": name,
        "best_point": best["point"],
        "best_value": best["value"],
        "n_calls": len(trace),
        "calls_to_target": best["ctt"],
        "stopped": "target" if best["ctt"] else "budget",
        "iterations": len(trace),
        "trace": trace,
        "objective_seconds": round(best["obj_s"], 4),
        "wall_seconds": round(time.perf_counter() - t0, 4),
        "llm": None,
    }
