"""LLMSampler: LLM proposals injected into studies run by Optuna's own samplers."""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import pytest

from tests.tune.scripted_llm import points_answer, scripted_client
from tests.tune.worker_processes import run_worker_processes

optuna = pytest.importorskip("optuna")
pytest.importorskip("cmaes")

from hgpso.tune import LLMSampler  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial):
    x = trial.suggest_float("x", -3.0, 3.0)
    n = trial.suggest_int("n", 0, 5)
    return (x - 1.0) ** 2 + (n - 2) ** 2


def distinct_answers(count=20):
    return [
        points_answer({"x": 0.5 + 0.01 * i, "n": 2}, {"x": -0.5 - 0.01 * i, "n": 3})
        for i in range(count)
    ]


def llm_trials(study):
    return [t for t in study.trials if "hgpso:llm_point" in t.user_attrs]


@pytest.mark.parametrize(
    "base",
    [
        lambda: optuna.samplers.TPESampler(seed=0),
        lambda: optuna.samplers.CmaEsSampler(seed=0, popsize=5),
    ],
)
def test_one_round_per_generation_and_its_points_become_trials(base):
    llm, fake = scripted_client(distinct_answers())
    sampler = LLMSampler(base(), llm=llm, k=2, every=5)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=21)
    rounds = LLMSampler.rounds(study)
    assert sorted(rounds) == [0, 1, 2, 3]  # asked by trials 5, 10, 15, 20
    assert [rounds[g]["trial"] for g in range(4)] == [5, 10, 15, 20]
    assert len(fake.requests) == 4
    delivered = {
        json.dumps(t.user_attrs["hgpso:llm_point"], sort_keys=True) for t in llm_trials(study)
    }
    for g in range(3):  # the last round's points wait for trials beyond n_trials
        assert len(rounds[g]["points"]) == 2
        for p in rounds[g]["points"]:
            assert json.dumps(p, sort_keys=True) in delivered
    for t in llm_trials(study):
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.params == t.user_attrs["hgpso:llm_point"]  # the LLM's values, evaluated
    stats = LLMSampler.llm_stats(study)
    assert stats.accepted == 8 and stats.fallbacks == 0 and stats.calls == 4


def test_cmaes_counts_the_llm_trials_as_solutions_of_its_generation():
    llm, _ = scripted_client(distinct_answers())
    sampler = LLMSampler(optuna.samplers.CmaEsSampler(seed=0, popsize=5), llm=llm, k=2, every=5)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=20)
    done = [t for t in llm_trials(study) if t.state == optuna.trial.TrialState.COMPLETE]
    assert done
    for t in done:  # sampled through CMA-ES (tagged), not bypassing it as fixed params do
        assert t.system_attrs.get("cma:generation") is not None


def test_bad_answers_are_counted_fallbacks_and_the_base_samples_instead():
    llm, fake = scripted_client(["no json", points_answer({"x": "far", "n": 1})])
    sampler = LLMSampler(optuna.samplers.TPESampler(seed=0), llm=llm, k=2, every=4)
    study = optuna.create_study(sampler=sampler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(objective, n_trials=13)
    assert len(fake.requests) == 3 and not llm_trials(study)
    assert all(r["points"] == [] for r in LLMSampler.rounds(study).values())
    assert LLMSampler.llm_stats(study).fallbacks == 3
    assert sum("using the plain move" in str(w.message) for w in caught) == 3
    assert len(study.trials) == 13


def test_a_maximize_study_shows_the_llm_its_best_trials_first():
    llm, fake = scripted_client(distinct_answers())
    sampler = LLMSampler(optuna.samplers.RandomSampler(seed=0), llm=llm, k=1, every=6)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    study.optimize(lambda t: -objective(t), n_trials=7)
    prompt = fake.requests[0]["messages"][1]["content"]
    best = max(study.trials[:6], key=lambda t: t.value)
    first_line = prompt.split("lower is better):\n")[1].splitlines()[0]
    assert first_line.endswith(f"-> {float(f'{-best.value:.4g}')}")


WORKER = textwrap.dedent(
    """
    import os, sys, time, warnings
    import optuna
    from hgpso.tune import LLMClient, LLMSampler
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", RuntimeWarning)
    url, llm_url = sys.argv[1:3]
    llm = LLMClient(base_url=llm_url, model="fake", api_key="k", max_retries=0, timeout=30)
    sampler = LLMSampler(optuna.samplers.TPESampler(seed=os.getpid()), llm=llm, k=2, every=4)
    study = optuna.load_study(study_name="s", storage=url, sampler=sampler)
    def obj(trial):
        x = trial.suggest_float("x", -3.0, 3.0)
        n = trial.suggest_int("n", 0, 5)
        trial.set_user_attr("pid", os.getpid())
        time.sleep(0.05)  # lets the two workers interleave
        return (x - 1.0) ** 2 + (n - 2) ** 2
    study.optimize(obj, n_trials=14)
    """
)


@pytest.mark.timeout(300)
def test_two_worker_processes_on_sqlite_ask_the_llm_once_per_generation(
    tmp_path: Path, fake_llm
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="s", storage=url)
    fake_llm.script = [("ok", a) for a in distinct_answers(30)]
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run_worker_processes(script, [[url, fake_llm.url]] * 2, seconds=240)
    study = optuna.load_study(study_name="s", storage=url)
    trials = study.get_trials(deepcopy=False)
    assert len({t.user_attrs.get("pid") for t in trials} - {None}) == 2  # both worked
    rounds = LLMSampler.rounds(study)
    askers = [n for n in range(len(trials)) if n >= 4 and (n - 4) % 4 == 0]
    # every asking trial number that was started asked once; nobody else asked
    started = {t.number for t in trials if t.state != optuna.trial.TrialState.WAITING}
    assert sorted(rounds[g]["trial"] for g in rounds) == [n for n in askers if n in started]
    assert len(fake_llm.requests) == len(rounds) >= 4
    # each accepted point went to exactly one trial
    points = [json.dumps(p, sort_keys=True) for r in rounds.values() for p in r["points"]]
    carried = [
        json.dumps(t.user_attrs["hgpso:llm_point"], sort_keys=True) for t in llm_trials(study)
    ]
    assert sorted(points) == sorted(carried) and len(set(points)) == len(points)
    for t in llm_trials(study):
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.params == t.user_attrs["hgpso:llm_point"]
