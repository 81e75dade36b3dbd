"""StrategySampler with an LLM strategy (scripted loopback server) and a maximize study."""

from __future__ import annotations

import json
import time

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("openai")  # imported here, not inside the first LLM call

from hgpso.tune import LLMClient, StrategySampler  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1.0, 1.0)
    y = trial.suggest_float("y", -1.0, 1.0)
    time.sleep(0.005)  # a thread's trial outlasts the other thread's sampler calls
    return x * x + y * y


def test_llm_pso_calls_the_llm_once_per_generation_with_two_threads(fake_llm) -> None:
    answers = [
        [{"x": 0.01, "y": -0.02}, {"x": -0.03, "y": 0.04}],
        [{"x": 0.05, "y": 0.06}, {"x": -0.07, "y": -0.08}],
    ]
    fake_llm.script = [("ok", json.dumps({"points": pts})) for pts in answers]
    llm = LLMClient(base_url=fake_llm.url, model="fake", api_key="k", max_retries=0, timeout=10)
    sampler = StrategySampler("llm_pso", population=4, seed=0, llm=llm, k=2)
    study = optuna.create_study(sampler=sampler)

    def stop_at_generation_2(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if study._storage.get_study_system_attrs(study._study_id).get("hgpso:generation") == 2:
            study.stop()

    # Two worker threads sharing the sampler; a thread whose generation is still being
    # evaluated gets an extra point (no waiting), so stop once generation 2 is computed.
    study.optimize(_objective, n_trials=400, n_jobs=2, callbacks=[stop_at_generation_2])
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert attrs["hgpso:generation"] == 2
    assert len(fake_llm.requests) == 2  # generations 1 and 2, not once per worker or trial
    for g, pts in zip((1, 2), answers, strict=True):
        # The LLM's proposals are candidates of the ONE shared generation.
        cands = attrs[f"hgpso:candidates:{g}"]
        for p in pts:
            assert any(c == pytest.approx(p, abs=1e-9) for c in cands), (g, p, cands)


def test_maximize_study_tells_negated_values() -> None:
    sampler = StrategySampler("pso", population=4, seed=1)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    study.optimize(lambda t: -_objective(t), n_trials=1 + 4 + 1)
    state = json.loads(study._storage.get_study_system_attrs(study._study_id)["hgpso:state"])
    g0 = sorted(
        (t for t in study.trials if t.system_attrs.get("hgpso:gen") == 0),
        key=lambda t: t.system_attrs["hgpso:idx"],
    )
    assert [v for _, v in state["history"]] == [-t.value for t in g0]
