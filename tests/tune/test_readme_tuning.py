"""README's "Tuning: three ways": its three code blocks run as written and do what it says.

The blocks are taken from README.md and executed in order in one namespace, as a reader
would paste them (the second and third use the first's ``space``, ``final_loss``, ``x``, ``y``).
"""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("lightning")

import hgpso  # noqa: E402
from hgpso.optim import gradient_defaults  # noqa: E402
from hgpso.tune import SearchSpace, make_strategy  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HEADING = "## Tuning: three ways\n"
#: HGPSO's library defaults, the reference point: the lr and inertia that
#: ``hgpso.HGPSO(params)`` takes, its default gradient term's (``GRADIENT_DEFAULTS``)
DEFAULTS = gradient_defaults(inspect.signature(hgpso.HGPSO).parameters["gradient"].default)


def _section() -> str:
    readme = (ROOT / "README.md").read_text()
    assert readme.count(HEADING) == 1
    return readme.split(HEADING, 1)[1].split("\n## ", 1)[0]


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", _section(), re.S)


def _run(code: str, ns: dict[str, Any]) -> dict[str, Any]:
    ns = dict(ns)
    exec(compile(code, "README.md", "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("readme"))  # whatever a block writes lands here
        return _run(_blocks()[0], {"__name__": "readme"})


def test_the_section_shows_three_ways_and_links_the_guide() -> None:
    blocks = _blocks()
    assert len(blocks) == 3
    assert "minimize(" in blocks[0]
    assert "StrategySampler(" in blocks[1] and "optuna.create_study(" in blocks[1]
    assert "LLMPSOCallback(" in blocks[2] and "trainer.fit(" in blocks[2]
    section = _section()
    assert "(docs/guides/tuning.md)" in section and (ROOT / "docs/guides/tuning.md").exists()
    assert 'storage="sqlite:///' in section and '"llm_pso"' in section
    # One search: the Optuna objective suggests the ranges of the first block's space.
    assert 'suggest_float("lr", 1e-3, 0.3, log=True)' in blocks[1]
    assert 'suggest_float("inertia", 0.0, 0.9)' in blocks[1]


def test_minimize_finds_settings_better_than_the_defaults(first: dict[str, Any]) -> None:
    res, final_loss, space = first["res"], first["final_loss"], first["space"]
    assert set(space) == set(DEFAULTS)
    assert res.strategy == "pso" and res.n_calls == 40 and res.iterations == 5
    assert res.stopped == "budget" and len(res.trace) == 40
    reference = final_loss(**DEFAULTS)
    assert math.isfinite(reference) and res.best_value < reference / 10
    # The reported best is what the objective gives at the reported point (it is seeded).
    assert final_loss(**res.best_point) == res.best_value
    assert 1e-3 <= res.best_point["lr"] <= 0.3 and 0.0 <= res.best_point["inertia"] <= 0.9


def test_optuna_runs_the_same_search(first: dict[str, Any]) -> None:
    ns = _run(_blocks()[1], first)
    study, res = ns["study"], first["res"]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(study.trials) == len(complete) == 41
    gens: dict[int, dict[int, Any]] = {}
    for t in complete:
        if "hgpso:gen" in t.system_attrs:
            gens.setdefault(t.system_attrs["hgpso:gen"], {})[t.system_attrs["hgpso:idx"]] = t
    assert sorted(gens) == [0, 1, 2, 3, 4]
    assert all(sorted(g) == list(range(8)) for g in gens.values())
    # Replaying the strategy in this process with the study's scores asks for exactly the
    # points the study's trials were given, generation by generation.
    replay = make_strategy("pso", SearchSpace(first["space"]), population=8, seed=0)
    for g in range(5):
        trials = [gens[g][i] for i in range(8)]
        assert replay.ask() == [t.params for t in trials], g
        replay.tell([t.params for t in trials], [t.value for t in trials])
    # ... and minimize's run, which saw the same points and values, found the same best.
    best = min((t for g in gens.values() for t in g.values()), key=lambda t: t.value)
    assert best.value == res.best_value and best.params == res.best_point
    assert study.best_value <= res.best_value < first["final_loss"](**DEFAULTS)


def test_callback_tunes_the_optimizer_during_fit(
    first: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ns = _run(_blocks()[2], first)
    tuner, trainer = ns["tuner"], ns["trainer"]
    opt = trainer.optimizers[0]
    assert isinstance(opt, hgpso.HGPSO)
    assert tuner.decisions == trainer.current_epoch == 2  # one decision after each epoch
    assert tuner.strategy.iteration == 2
    for r in tuner.rounds:  # each decision applied the candidate with the lowest probe score
        assert len(r["candidates"]) == 4 and len(r["scores"]) == 4
        i = min(range(4), key=r["scores"].__getitem__)
        assert r["chosen"] == r["candidates"][i] and r["score"] == r["scores"][i]
    # The first decision scored the optimizer's own setting as candidate 0.
    assert tuner.rounds[0]["candidates"][0] == pytest.approx(DEFAULTS)
    # The optimizer ends with the last decision's values in every param group (momentum is
    # HGPSO's other name for inertia), and they moved away from where training started.
    assert tuner.current == tuner.rounds[-1]["chosen"]
    for group in opt.param_groups:
        assert group["lr"] == tuner.current["lr"]
        assert group["inertia"] == group["momentum"] == tuner.current["inertia"]
    assert tuner.current != pytest.approx(DEFAULTS)
