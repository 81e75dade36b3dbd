"""StrategySampler on a shared SQLite file: two worker processes, then a resumed study."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.tune.worker_processes import run_worker_processes

optuna = pytest.importorskip("optuna")

WORKER = textwrap.dedent(
    """
    import os, sys, time
    import optuna
    from hgpso.tune import StrategySampler
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, last = sys.argv[1], int(sys.argv[2])
    study = optuna.load_study(study_name="s", storage=url,
                              sampler=StrategySampler("pso", population=6, seed=0, timeout=120))
    def obj(trial):
        x = trial.suggest_float("x", -3.0, 3.0)
        k = trial.suggest_int("k", 0, 5)
        trial.set_user_attr("pid", os.getpid())
        time.sleep(0.05)  # lets the two workers interleave
        return x * x + (k - 2) ** 2
    def stop(study, trial):  # once generation `last` is computed and all its slots are done
        attrs = study._storage.get_study_system_attrs(study._study_id)
        if attrs.get("hgpso:generation", -1) > last:
            study.stop()
    study.optimize(obj, n_trials=400, callbacks=[stop])
    """
)


def _run_workers(tmp_path: Path, url: str, last: int, workers: int) -> None:
    """Run until generation ``last + 1`` is computed: generations 0..last are then done."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run_worker_processes(script, [[url, str(last)]] * workers, seconds=300)


def _generations(study: optuna.Study) -> dict[int, list[optuna.trial.FrozenTrial]]:
    out: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        if "hgpso:gen" in t.system_attrs:
            out.setdefault(t.system_attrs["hgpso:gen"], []).append(t)
    return out


def _assert_one_population(study: optuna.Study, complete: int) -> None:
    attrs = study._storage.get_study_system_attrs(study._study_id)
    gens = _generations(study)
    for g in range(complete):
        cands = attrs[f"hgpso:candidates:{g}"]
        assert len(cands) == 6
        idx = sorted(t.system_attrs["hgpso:idx"] for t in gens[g])
        assert idx == list(range(6)), (g, idx)  # complete, and no candidate issued twice
        for t in gens[g]:
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert t.params == cands[t.system_attrs["hgpso:idx"]]  # from the ONE list


@pytest.mark.timeout(900)
def test_two_workers_share_one_population_then_resume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="s", storage=url)
    _run_workers(tmp_path, url, last=1, workers=2)
    study = optuna.load_study(study_name="s", storage=url)
    _assert_one_population(study, complete=2)
    pids = {t.user_attrs["pid"] for g in (0, 1) for t in _generations(study)[g]}
    assert len(pids) == 2  # both workers evaluated candidates of the shared generations
    first = {t.number for t in study.trials}

    # Resume in a new process: generations continue, nothing is re-issued.
    _run_workers(tmp_path, url, last=3, workers=1)
    study = optuna.load_study(study_name="s", storage=url)
    _assert_one_population(study, complete=4)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert attrs["hgpso:generation"] >= 4
    gens = _generations(study)
    assert all(t.number not in first for t in gens[3])  # generation 3 came from the resume
    keys = [(g, t.system_attrs["hgpso:idx"]) for g, ts in gens.items() for t in ts]
    assert len(keys) == len(set(keys))
    # PSO moved: generation 3's candidates differ from generation 0's.
    assert attrs["hgpso:candidates:3"] != attrs["hgpso:candidates:0"]
