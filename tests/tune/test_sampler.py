"""hgpso.tune.StrategySampler in one process: search, seeding, failed/pruned trials, plots.

Multi-process SQLite workers and resume: test_sampler_storage.py; LLM: test_sampler_llm.py.
"""

from __future__ import annotations

import math
import time

import pytest

optuna = pytest.importorskip("optuna")

from hgpso.tune import StrategySampler  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.12, 5.12)
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    n = trial.suggest_int("n", 0, 8)
    act = trial.suggest_categorical("act", ["relu", "tanh", "gelu"])
    y = math.log10(lr) + 2.0  # optimum at lr = 1e-2
    rastrigin = 20 + x * x - 10 * math.cos(2 * math.pi * x) + y * y - 10 * math.cos(2 * math.pi * y)
    return rastrigin + (n - 3) ** 2 + (0.0 if act == "tanh" else 1.0)


def _sys(study: optuna.Study) -> dict:
    return study._storage.get_study_system_attrs(study._study_id)


def _gen_trials(study: optuna.Study) -> dict[int, list[optuna.trial.FrozenTrial]]:
    out: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        if "hgpso:gen" in t.system_attrs:
            out.setdefault(t.system_attrs["hgpso:gen"], []).append(t)
    return out


def _check_generations(study: optuna.Study, population: int, complete: int) -> None:
    """Every generation's trials are exactly that generation's one candidate list."""
    attrs = _sys(study)
    gens = _gen_trials(study)
    for g in range(complete):
        cands = attrs[f"hgpso:candidates:{g}"]
        trials = gens[g]
        idx = sorted(t.system_attrs["hgpso:idx"] for t in trials)
        assert idx == list(range(population)), (g, idx)  # no candidate issued twice
        for t in trials:
            assert t.state.is_finished()
            assert t.params == cands[t.system_attrs["hgpso:idx"]]


def test_single_process_beats_random() -> None:
    n = 61
    best = []
    for sampler in (
        StrategySampler("pso", population=10, seed=0),
        optuna.samplers.RandomSampler(seed=0),
    ):
        vals = []
        for seed in range(3):
            if isinstance(sampler, StrategySampler):
                sampler = StrategySampler("pso", population=10, seed=seed)
            else:
                sampler = optuna.samplers.RandomSampler(seed=seed)
            study = optuna.create_study(sampler=sampler)
            study.optimize(objective, n_trials=n)
            vals.append(study.best_value)
        best.append(sum(vals) / len(vals))
        if isinstance(sampler, StrategySampler):
            _check_generations(study, 10, 6)
            assert _sys(study)["hgpso:generation"] == 5
    assert best[0] < best[1], best


def test_seeded_reproducibility() -> None:
    runs = []
    for _ in range(2):
        study = optuna.create_study(sampler=StrategySampler("ga", population=6, seed=3))
        study.optimize(objective, n_trials=19)
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1]
    study = optuna.create_study(sampler=StrategySampler("ga", population=6, seed=4))
    study.optimize(objective, n_trials=19)
    assert [t.params for t in study.trials] != runs[0]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        StrategySampler("nope")
    with pytest.raises(ValueError, match="population"):
        StrategySampler("pso", population=1)


def test_failed_and_pruned_trials_score_inf_or_last_value() -> None:
    sampler = StrategySampler("pso", population=4, seed=0)
    study = optuna.create_study(sampler=sampler)

    def obj(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1.0, 1.0)
        idx = trial._cached_frozen_trial.system_attrs.get("hgpso:idx")
        if idx == 1:
            raise RuntimeError("boom")
        if idx == 2:
            trial.report(7.5, step=0)
            raise optuna.TrialPruned()
        return x * x

    study.optimize(obj, n_trials=1 + 4 + 4, catch=(RuntimeError,))
    _check_generations(study, 4, 2)
    state = __import__("json").loads(_sys(study)["hgpso:state"])
    told = [v for _, v in state["history"]]
    g0 = {t.system_attrs["hgpso:idx"]: t for t in _gen_trials(study)[0]}
    assert g0[1].state == optuna.trial.TrialState.FAIL
    assert g0[2].state == optuna.trial.TrialState.PRUNED
    assert told[1] == "inf" and told[2] == 7.5  # +inf is stored as "inf" (strict JSON)
    assert told[0] == g0[0].value and told[3] == g0[3].value


def test_visualization_builds_a_figure() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization.matplotlib import plot_optimization_history

    study = optuna.create_study(sampler=StrategySampler("random", population=4, seed=0))
    study.optimize(objective, n_trials=9)
    ax = plot_optimization_history(study)
    assert len(ax.get_lines()) + len(ax.collections) > 0


# -- never waiting: failures, dead trials, several workers --------------------------------------
def _xy(trial: optuna.Trial) -> tuple[float, int]:
    return trial.suggest_float("x", -2.0, 2.0), trial.suggest_int("k", 0, 5)


def test_a_failing_first_trial_does_not_stall_the_study() -> None:
    sampler = StrategySampler("pso", population=4, seed=0, timeout=30)
    study = optuna.create_study(sampler=sampler)

    def obj(trial: optuna.Trial) -> float:
        x, k = _xy(trial)
        if trial.number == 0:
            raise RuntimeError("the first trial fails")
        return x * x + k

    t0 = time.perf_counter()
    study.optimize(obj, n_trials=1 + 1 + 3 * 4, catch=(RuntimeError,))
    assert time.perf_counter() - t0 < 10  # no 30 s timeout: nothing waited
    roles = [t.system_attrs["hgpso:role"]["kind"] for t in study.trials]
    # trial 1 is sampled independently too (nothing completed yet), then the population
    assert roles[:2] == ["startup", "startup"] and set(roles[2:]) == {"slot"}
    _check_generations(study, 4, 3)


@pytest.mark.parametrize("name", ["pso", "ga"])
def test_one_worker_proposes_what_minimize_proposes(name: str) -> None:
    from hgpso.tune import Float, Int, SearchSpace, minimize

    def f(p: dict) -> float:
        # NaN at some points: minimize scores it +inf, Optuna fails the trial (+inf too)
        return math.nan if p["k"] >= 4 else (p["x"] - 0.5) ** 2 + (p["k"] - 2) ** 2

    asked: list[dict] = []
    # the study's space is in Optuna's order (sorted names): the same space for minimize
    space = SearchSpace({"k": Int(0, 5), "x": Float(-2.0, 2.0)})
    minimize(lambda p: asked.append(p) or f(p), space, name, budget=30, population=4, seed=2)
    study = optuna.create_study(sampler=StrategySampler(name, population=4, seed=2))
    study.optimize(lambda t: f(dict(zip(("x", "k"), _xy(t), strict=True))), n_trials=1 + 30)
    got = [t.params for t in study.trials[1:]]
    assert any(p["k"] >= 4 for p in asked)  # the failing case was exercised
    assert got == asked


def test_a_dead_trial_never_blocks_and_fails_as_worst() -> None:
    sampler = StrategySampler("pso", population=4, seed=0, timeout=30)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: sum(_xy(t)), n_trials=1 + 2)  # start-up, slots 0 and 1
    dead = study.ask()  # slot 2: its worker "dies" holding it (never told)
    _xy(dead)  # the sampler runs at the first suggest
    assert dead._cached_frozen_trial.system_attrs["hgpso:idx"] == 2
    t0 = time.perf_counter()
    study.optimize(lambda t: sum(_xy(t)), n_trials=6)
    assert time.perf_counter() - t0 < 10
    kinds = [t.system_attrs["hgpso:role"]["kind"] for t in study.trials[4:]]
    assert kinds == ["slot"] + ["extra"] * 5  # slot 3, then extra points: nobody waits
    assert _sys(study)["hgpso:generation"] == 0  # generation 0 is still open
    # The heartbeat (or a user) fails the dead trial: the next trial completes generation 0
    # with it at +inf and computes generation 1, telling the 5 extras' values too.
    study.tell(dead, state=optuna.trial.TrialState.FAIL)
    study.optimize(lambda t: sum(_xy(t)), n_trials=1)
    attrs = _sys(study)
    assert attrs["hgpso:generation"] == 1
    state = __import__("json").loads(attrs["hgpso:state"])
    told = [v for _, v in state["history"]]
    assert len(told) == 4 + 5 and told[2] == "inf"
    assert sorted(attrs["hgpso:told:1"]) == [t.number for t in study.trials[5:10]]


def test_a_computer_that_dies_is_replaced() -> None:
    class FlakyFirstCompute(StrategySampler):
        failed = False

        def _make(self, search_space):  # type: ignore[no-untyped-def]
            strategy = super()._make(search_space)
            if strategy.iteration == 0 and not FlakyFirstCompute.failed:
                FlakyFirstCompute.failed = True

                def dies() -> None:
                    raise SystemError("the worker died computing generation 0")

                strategy.ask = dies  # type: ignore[method-assign]
            return strategy

    study = optuna.create_study(sampler=FlakyFirstCompute("ga", population=4, seed=0))
    study.optimize(lambda t: sum(_xy(t)), n_trials=1)
    with pytest.raises(SystemError):
        _xy(study.ask())  # trial 1 recorded itself as generation 0's computer, then died
    computer = study.trials[1]
    assert computer.system_attrs["hgpso:role"]["computes"]
    study._storage.set_trial_state_values(computer._trial_id, optuna.trial.TrialState.FAIL)
    study.optimize(lambda t: sum(_xy(t)), n_trials=4 + 2)
    roles = [t.system_attrs["hgpso:role"] for t in study.trials[2:]]
    assert roles[0]["computes"] and roles[0]["idx"] == 0  # trial 2 took over
    assert [r["idx"] for r in roles[:4]] == [0, 1, 2, 3]
    assert _sys(study)["hgpso:generation"] == 1  # generation 0 completed without trial 1


def test_widened_bounds_warn_and_keep_the_stored_range() -> None:
    study = optuna.create_study(sampler=StrategySampler("pso", population=4, seed=0))
    study.optimize(lambda t: t.suggest_float("x", -1.0, 1.0) ** 2, n_trials=5)
    with pytest.warns(RuntimeWarning, match="fixed at generation 0"):
        study.optimize(lambda t: t.suggest_float("x", -10.0, 10.0) ** 2, n_trials=8)
    assert all(-1.0 <= t.params["x"] <= 1.0 for t in study.trials[1:])
