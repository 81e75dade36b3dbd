"""hgpso.tune.StrategySampler in one process: search, seeding, failed/pruned trials, plots.

Multi-process SQLite workers and resume: test_sampler_storage.py; LLM: test_sampler_llm.py.
"""

from __future__ import annotations

import math

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
