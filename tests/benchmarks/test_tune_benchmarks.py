"""The tuning benchmarks on tiny problems: tune_rastrigin, tune_peers and tune_common.

Every reference is computed here independently of the scripts (the Rastrigin formula with
``math``, calls-to-target and percentiles from the recorded traces, the first population's
best-so-far from the space's shared initial points), so a test fails when a script drifts
from what its docstring promises. No LLM is involved: LLM strategies only appear in the
"no model configured" error paths.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from benchmarks import tune_common, tune_rastrigin
from benchmarks.tune_peers import PEERS, _scalar_single_row_predict, run_peer
from benchmarks.tune_rastrigin import SHIFT_RANGE, make_space, optimum_shift, rastrigin
from hgpso.tune import Float, SearchSpace, TuneResult

# keys TuneResult.as_dict() produces; run_peer promises the same ones
RESULT_KEYS = set(TuneResult("x", None, 0.0, 0, None, "budget", 0).as_dict())


# -- independent references --------------------------------------------------------------------
def rastrigin_ref(x, o) -> float:
    """10 d + sum_i (z_i^2 - 10 cos(2 pi z_i)), z = x - o, with plain floats and math."""
    z = [float(a) - float(b) for a, b in zip(x, o, strict=True)]
    return 10 * len(z) + sum(zi * zi - 10 * math.cos(2 * math.pi * zi) for zi in z)


def first_reach(trace: list[float], target: float | None) -> int | None:
    """1-based index of the first best-so-far value <= target, None if never."""
    if target is None:
        return None
    for i, v in enumerate(trace):
        if v <= target:
            return i + 1
    return None


def two_seed_stats(ctt: list[int | None]) -> tuple[float | None, list[float | None]]:
    """Median and 25/75 percentiles of two calls-to-target, an unreached run counting +inf.

    With two values a <= b the linear-interpolated q-th percentile is a + q (b - a); if either
    run did not reach the target, b = inf and all three are inf, which the summaries write as
    null.
    """
    assert len(ctt) == 2
    if any(c is None for c in ctt):
        return None, [None, None]
    a, b = sorted(ctt)
    return a + 0.5 * (b - a), [a + 0.25 * (b - a), a + 0.75 * (b - a)]


def assert_stats(got_median, got_iqr, want: tuple[float | None, list[float | None]]) -> None:
    """Compare a summary's median and IQR with :func:`two_seed_stats` (null stays null)."""
    for got, ref in zip([got_median, *got_iqr], [want[0], *want[1]], strict=True):
        assert got is None if ref is None else got == pytest.approx(ref, abs=1e-9)


def best_so_far_prefix(space: SearchSpace, seed: int, n: int, f) -> list[float]:
    """Best-so-far values over the shared initial population every hgpso strategy asks first."""
    vals = [f(space.decode(u)) for u in space.initial_unit(seed, n)]
    return np.minimum.accumulate(vals).tolist()


def check_trace(run: dict, budget: int, target: float | None, objective) -> None:
    """What every run record (hgpso strategy or peer) must satisfy."""
    trace = run["trace"]
    assert len(trace) == run["n_calls"] <= budget
    assert all(b <= a for a, b in itertools.pairwise(trace)), "best-so-far must not increase"
    assert run["best_value"] == trace[-1]
    # the recorded best point really scores the recorded best value
    assert objective(run["best_point"]) == pytest.approx(run["best_value"], rel=1e-12, abs=1e-12)
    ctt = first_reach(trace, target)
    assert run["calls_to_target"] == ctt
    if ctt is None:
        assert run["n_calls"] == budget and run["stopped"] == "budget"
    else:  # a run stops at the call that reached the target
        assert run["n_calls"] == ctt and run["stopped"] == "target"


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("seed*.json")}


# -- tune_rastrigin: the function and its seeded optimum -----------------------------------------
def test_rastrigin_matches_the_formula():
    # z = (0.75, -1): 0.5625 - 10 cos(1.5 pi) = 0.5625 and 1 - 10 cos(-2 pi) = -9; 20 + 0.5625 - 9
    got = rastrigin({"x0": 1.0, "x1": -0.5}, np.array([0.25, 0.5]))
    assert got == pytest.approx(11.5625, abs=1e-12)
    # no shift, z = 0.5 three times: 0.25 - 10 cos(pi) = 10.25 each; 30 + 30.75
    assert rastrigin({"a": 0.5, "b": 0.5, "c": 0.5}) == pytest.approx(60.75, abs=1e-12)
    rng = np.random.default_rng(0)
    for d in (1, 2, 5):
        x, o = rng.uniform(-5.12, 5.12, d), rng.uniform(-2.5, 2.5, d)
        point = {f"x{i}": float(v) for i, v in enumerate(x)}
        assert rastrigin(point, o) == pytest.approx(rastrigin_ref(x, o), rel=1e-12, abs=1e-9)
        assert rastrigin(point) == pytest.approx(rastrigin_ref(x, [0.0] * d), rel=1e-12, abs=1e-9)


def test_rastrigin_minimum_sits_at_the_shift():
    for seed in range(3):
        o = optimum_shift(2, seed, "seeded")
        assert rastrigin({"x0": float(o[0]), "x1": float(o[1])}, o) == 0.0  # z = 0 exactly
        centre = rastrigin({"x0": 0.0, "x1": 0.0}, o)
        assert centre > 0 and centre == pytest.approx(rastrigin_ref([0.0, 0.0], o), abs=1e-9)
    assert rastrigin({"x0": 0.0, "x1": 0.0}, None) == 0.0


def test_optimum_shift_is_seeded_inside_its_range():
    assert SHIFT_RANGE == 2.5  # the range the module docstring documents
    for d in (2, 10):
        shifts = [optimum_shift(d, seed, "seeded") for seed in range(5)]
        for seed, o in enumerate(shifts):
            assert o.shape == (d,) and np.all(np.abs(o) <= SHIFT_RANGE)
            assert np.array_equal(o, optimum_shift(d, seed, "seeded"))  # same seed, same draw
        for i in range(5):
            for j in range(i):
                assert not np.array_equal(shifts[i], shifts[j])
        assert optimum_shift(d, 0, "none") is None


# -- tune_rastrigin: end to end ----------------------------------------------------------------
STRATS = ("pso", "ga", "optuna_random")
SEEDS = (0, 1)
BUDGET = 60
# 2-D Rastrigin values reach ~80 in the box and these 60-call runs end between ~3.5 and ~9:
# at 9.0 PSO and Optuna reach it with both seeds, GA with one, so a finite median, a null one
# and reduction_vs_pso are all exercised
RAS_TARGET = 9.0
RAS_ARGS = [
    "--dims", "2",
    "--seeds", "2",
    "--budget", str(BUDGET),
    "--target", str(RAS_TARGET),
    "--strategies", *STRATS,
]  # fmt: skip
# what summarize() reads from every run file
SUMMARY_KEYS = {"calls_to_target", "llm", "target", "budget", "best_value", "n_calls", "trace"}
SUMMARY_KEYS |= {"wall_seconds"}


def ras_runs(out: Path) -> dict[tuple[str, int], dict]:
    return {
        (p.parent.name, int(p.stem.removeprefix("seed"))): json.loads(p.read_text())
        for p in (out / "runs" / "2d").glob("*/seed*.json")
    }


@pytest.fixture(scope="module")
def rastrigin_out(tmp_path_factory):
    pytest.importorskip("optuna")
    out = tmp_path_factory.mktemp("rastrigin")
    assert tune_rastrigin.main([*RAS_ARGS, "--out", str(out)]) == 0
    return out


def test_rastrigin_run_files(rastrigin_out):
    runs = ras_runs(rastrigin_out)
    assert sorted(runs) == sorted((s, k) for s in STRATS for k in SEEDS)
    for (s, k), r in runs.items():
        assert SUMMARY_KEYS <= r.keys(), (s, k)
        assert (r["dims"], r["seed"], r["target"], r["budget"]) == (2, k, RAS_TARGET, BUDGET)
        # the recorded shift is the seed's optimum, the same for every strategy and peer
        assert r["shift"] == optimum_shift(2, k, "seeded").tolist()
        shift = np.array(r["shift"])
        check_trace(r, BUDGET, RAS_TARGET, lambda p, o=shift: rastrigin_ref(p.values(), o))
    for k in SEEDS:
        assert len({json.dumps(runs[(s, k)]["shift"]) for s in STRATS}) == 1
    assert runs[("pso", 0)]["shift"] != runs[("pso", 1)]["shift"]


def test_rastrigin_hgpso_strategies_share_the_first_population(rastrigin_out):
    runs = ras_runs(rastrigin_out)
    space = make_space(2)
    for k in SEEDS:
        shift = optimum_shift(2, k, "seeded")
        pop = runs[("pso", k)]["population"]
        prefix = best_so_far_prefix(space, k, pop, lambda p, o=shift: rastrigin_ref(p.values(), o))
        for s in ("pso", "ga"):
            run = runs[(s, k)]
            trace = run["trace"]
            # the whole first population, or up to the call that reached the target: never a
            # shorter prefix (an empty trace would make the comparison vacuous)
            n = pop if run["calls_to_target"] is None else min(pop, run["calls_to_target"])
            assert n >= 1 and len(trace) >= n, (s, k, len(trace))
            assert trace[:n] == pytest.approx(prefix[:n], rel=1e-12, abs=1e-12), (s, k)


def test_rastrigin_summary(rastrigin_out):
    summary = json.loads((rastrigin_out / "summary.json").read_text())
    runs = ras_runs(rastrigin_out)
    assert list(summary) == ["2d"] and sorted(summary["2d"]) == sorted(STRATS)
    for s, e in summary["2d"].items():
        rs = [runs[(s, k)] for k in SEEDS]
        ctt = [r["calls_to_target"] for r in rs]
        assert_stats(e["calls_to_target_median"], e["calls_to_target_iqr"], two_seed_stats(ctt))
        assert e["reached"] == sum(c is not None for c in ctt) and e["seeds"] == 2
        assert (e["target"], e["budget"]) == (RAS_TARGET, BUDGET)
        assert e["objective_calls_total"] == sum(r["n_calls"] for r in rs)
        assert e["best_value_median"] == pytest.approx(sum(r["best_value"] for r in rs) / 2)
        walls = [r["wall_seconds"] for r in rs]
        assert e["wall_seconds_median"] == pytest.approx(sum(walls) / 2, abs=1e-3)
        assert e["wall_seconds_total"] == pytest.approx(sum(walls), abs=1e-2)
        assert e["llm_calls"] == e["llm_tokens"] == 0
    pso = summary["2d"]["pso"]["calls_to_target_median"]
    for s, e in summary["2d"].items():
        m = e["calls_to_target_median"]
        want = None if (s == "pso" or pso is None or m is None) else round(1 - m / pso, 3)
        assert e["reduction_vs_pso"] == want, s
    # the target is loose enough that the statistics are not all null
    assert any(e["reached"] for e in summary["2d"].values())
    assert (rastrigin_out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rastrigin_rerun_skips_finished_runs(rastrigin_out, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(rastrigin_out, out)
    before = mtimes(out)
    summary = (out / "summary.json").read_text()
    capsys.readouterr()
    assert tune_rastrigin.main([*RAS_ARGS, "--out", str(out)]) == 0
    assert "calls_to_target=" not in capsys.readouterr().out  # no run was made
    assert mtimes(out) == before
    assert (out / "summary.json").read_text() == summary
    # a missing run is redone, and only that one: same seed, same points, same trace
    lost = out / "runs" / "2d" / "ga" / "seed1.json"
    old = json.loads(lost.read_text())
    lost.unlink()
    assert tune_rastrigin.main([*RAS_ARGS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("calls_to_target=") == 1 and "2d ga       seed 1:" in printed
    new = json.loads(lost.read_text())
    for key in ("trace", "best_point", "best_value", "calls_to_target", "shift", "n_calls"):
        assert new[key] == old[key], key
    rest = {k: v for k, v in mtimes(out).items() if k != "runs/2d/ga/seed1.json"}
    assert rest == {k: v for k, v in before.items() if k != "runs/2d/ga/seed1.json"}


def test_rastrigin_summary_only_rebuilds_from_files(rastrigin_out, tmp_path, monkeypatch):
    monkeypatch.delenv("HGPSO_LLM_MODEL", raising=False)
    out = tmp_path / "copy"
    shutil.copytree(rastrigin_out, out)
    before = mtimes(out)
    want = json.loads((out / "summary.json").read_text())
    (out / "summary.json").unlink()
    (out / "convergence.png").unlink()
    # strategies that have no runs (an LLM one without a model among them) are neither run
    # nor checked: only the files count
    args = [*RAS_ARGS, "--out", str(out), "--summary-only", "--strategies", "random", "llm_pso"]
    assert tune_rastrigin.main(args) == 0
    assert json.loads((out / "summary.json").read_text()) == want
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mtimes(out) == before
    assert sorted(p.name for p in (out / "runs" / "2d").iterdir()) == sorted(STRATS)


def test_rastrigin_summary_only_without_runs_says_so(tmp_path):
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    for out in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(SystemExit, match="no finished runs"):
            tune_rastrigin.main(["--summary-only", "--out", str(out)])
    assert not (tmp_path / "empty" / "summary.json").exists()


def test_rastrigin_llm_without_model_is_an_error_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HGPSO_LLM_MODEL", raising=False)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        tune_rastrigin.main(["--dims", "2", "--seeds", "1", "--strategies", "pso", "llm_pso",
                             "--budget", "5", "--out", str(out)])  # fmt: skip
    assert exc.value.code == 2
    assert "LLM strategies need --model" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):  # one target per dimension
        tune_rastrigin.main(["--dims", "2", "10", "--target", "1", "--out", str(out)])
    assert not out.exists()


# -- tune_peers ----------------------------------------------------------------------------------
SPACE2 = SearchSpace({"x0": Float(-1.0, 1.0), "x1": Float(-1.0, 1.0)})
CENTRE = (0.5, -0.4)  # off the box centre: the centre scores 0.25 + 0.16 = 0.41


def sphere(point: dict) -> float:
    return (point["x0"] - CENTRE[0]) ** 2 + (point["x1"] - CENTRE[1]) ** 2


def needs(name: str) -> None:
    if name.startswith("optuna_"):
        pytest.importorskip("optuna")
    if name == "optuna_cmaes":
        pytest.importorskip("cmaes")
    if name.startswith("ng_"):
        pytest.importorskip("nevergrad")
        pytest.importorskip("sklearn")


def recast_threads() -> list[threading.Thread]:
    """nevergrad's recast threads (a sub-optimizer run as a thread fed one point at a time)."""
    if "nevergrad" not in sys.modules:  # never imported: no such thread can exist
        return []
    from nevergrad.optimization import recaster

    return [t for t in threading.enumerate() if isinstance(t, recaster._MessagingThread)]


def settle_recast_threads(timeout: float = 10.0) -> list[threading.Thread]:
    """Give stopped recast threads time to finish; return those still alive."""
    for t in recast_threads():
        t.join(timeout)
    return [t for t in recast_threads() if t.is_alive()]


@pytest.fixture
def no_leaked_threads():
    """Stop any recast thread a failing test leaves behind, so pytest can still exit."""
    yield
    for t in recast_threads():
        if t.is_alive():
            t.stop()
            t.join(5)


def check_peer(out: dict, name: str, budget: int, target: float | None, objective) -> None:
    assert set(out) == RESULT_KEYS and out["strategy"] == name and out["llm"] is None
    check_trace(out, budget, target, objective)
    assert all(-1.0 <= v <= 1.0 for v in out["best_point"].values())
    assert 0.0 <= out["objective_seconds"] <= out["wall_seconds"]


@pytest.mark.parametrize("name", PEERS)
def test_peer_without_target_uses_the_whole_budget(name, no_leaked_threads):
    needs(name)
    out = run_peer(name, sphere, SPACE2, 40, None, seed=0)
    check_peer(out, name, 40, None, sphere)
    assert out["n_calls"] == 40 and out["calls_to_target"] is None
    # an unreachable target changes nothing about the stopping
    again = run_peer(name, sphere, SPACE2, 40, -1.0, seed=0)
    check_peer(again, name, 40, -1.0, sphere)
    assert again["trace"] == out["trace"]  # same seed, same run


@pytest.mark.parametrize("name", PEERS)
def test_peer_stops_at_the_target(name, no_leaked_threads):
    needs(name)
    target = 0.3
    out = run_peer(name, sphere, SPACE2, 40, target, seed=1)
    check_peer(out, name, 40, target, sphere)
    ctt = out["calls_to_target"]
    assert ctt is not None and out["n_calls"] == ctt == len(out["trace"])
    assert out["trace"][-1] <= target < min([math.inf, *out["trace"][:-1]])


def test_unknown_peer_is_a_value_error():
    def never(point):
        raise AssertionError("the objective must not be called")

    with pytest.raises(ValueError, match="must be one of"):
        run_peer("hyperopt", never, SPACE2, 10, None, seed=0)


def test_scalar_single_row_predict_is_scoped():
    pytest.importorskip("sklearn")
    from sklearn import linear_model

    originals = {
        (m, c): getattr(importlib.import_module(m), c)
        for m, c in (
            ("sklearn.linear_model", "LinearRegression"),
            ("sklearn.svm", "SVR"),
            ("sklearn.ensemble", "RandomForestRegressor"),
            ("sklearn.neural_network", "MLPRegressor"),
        )
    }
    X = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 3.0]])
    y = X @ np.array([2.0, -1.0]) + 0.5  # exactly linear: -0.5, 2.5, 1.5
    with _scalar_single_row_predict():
        for (m, c), base in originals.items():
            patched = getattr(importlib.import_module(m), c)
            assert patched is not base and issubclass(patched, base) and patched.__name__ == c
        model = linear_model.LinearRegression().fit(X, y)
        one = model.predict(X[:1])
        assert one.shape == () and float(one) == pytest.approx(-0.5)
        many = model.predict(X)
        assert many.shape == (3,) and many == pytest.approx([-0.5, 2.5, 1.5])
        two_outputs = linear_model.LinearRegression().fit(X, np.c_[y, -y]).predict(X[:1])
        assert two_outputs.shape == (1, 2)  # only a (1,) result becomes 0-d
    for (m, c), base in originals.items():
        assert getattr(importlib.import_module(m), c) is base
    assert linear_model.LinearRegression().fit(X, y).predict(X[:1]).shape == (1,)
    # restored when the block raises, too
    with pytest.raises(RuntimeError, match="inside"), _scalar_single_row_predict():
        raise RuntimeError("inside")
    for (m, c), base in originals.items():
        assert getattr(importlib.import_module(m), c) is base


def test_ngopt_meta_model_step_completes(monkeypatch, no_leaked_threads):
    """10-D NGOpt with budget > 50 d picks MetaModel(CmaFmin2): its surrogate is minimised with
    ``float(model.predict(one_row))``, a TypeError on numpy >= 2.4 without the workaround."""
    needs("ng_ngopt")
    from sklearn import linear_model

    rows: list[int] = []
    predict = linear_model.LinearRegression.predict

    def spy(self, X):
        rows.append(np.shape(X)[0])
        return predict(self, X)

    monkeypatch.setattr(linear_model.LinearRegression, "predict", spy)
    space = SearchSpace({f"x{i}": Float(-1.0, 1.0) for i in range(10)})

    def f(point: dict) -> float:
        return sum((v - 0.3) ** 2 for v in point.values())

    budget = 520  # NGOpt's test is budget > 50 d: at exactly 500 it picks Cobyla, no meta-model
    out = run_peer("ng_ngopt", f, space, budget, None, seed=0)
    check_peer(out, "ng_ngopt", budget, None, f)
    assert 1 in rows  # the meta-model's one-row predict really ran
    assert settle_recast_threads() == []


@pytest.mark.parametrize("name", ["ng_ngopt", "ng_pso"])
def test_nevergrad_early_stop_leaves_no_recast_thread(name, no_leaked_threads):
    needs(name)
    seen: set[threading.Thread] = set()

    def f(point: dict) -> float:
        seen.update(recast_threads())
        return sphere(point)

    target = 0.05  # the first point scores more, so the stop comes mid-run
    out = run_peer(name, f, SPACE2, 40, target, seed=0)
    check_peer(out, name, 40, target, sphere)
    assert out["stopped"] == "target" and 1 < out["n_calls"] < 40
    if name == "ng_ngopt":
        # 2-D, budget < 200 d: NGOpt picks Cobyla, a recast optimizer (scipy in a thread that
        # waits for each value), stopped here while it still waited for the next one
        assert seen
    # a thread left waiting for its next evaluation would keep the interpreter from exiting
    assert settle_recast_threads() == []


def test_nevergrad_error_mid_run_leaves_no_recast_thread(no_leaked_threads):
    """The case that needs the thread workaround: the run ends in an error whose traceback
    (kept here by ``pytest.raises``; by ``sys.last_traceback`` when a script dies of it) holds
    the optimizer, so nevergrad's stop-on-deletion never runs and the thread waiting for its
    next value would block the interpreter's exit. Without ``_stop_recast_threads`` this test
    fails; after a stop at the target the optimizer is freed on return, which stops it too."""
    needs("ng_ngopt")
    seen: set[threading.Thread] = set()
    calls = []

    def f(point: dict) -> float:
        seen.update(recast_threads())
        calls.append(point)
        if len(calls) == 5:
            raise RuntimeError("objective failed")
        return sphere(point)

    with pytest.raises(RuntimeError, match="objective failed") as exc:
        run_peer("ng_ngopt", f, SPACE2, 40, None, seed=0)
    assert seen and len(calls) == 5  # Cobyla's thread was waiting when the error came
    assert settle_recast_threads() == []
    del exc


# -- tune_common ---------------------------------------------------------------------------------
QSPACE = SearchSpace({"a": Float(-1.0, 1.0), "b": Float(0.0, 2.0)})
Q_BUDGET = 12
Q_TARGET = 0.1
Q_STRATS = ("pso", "optuna_random")
META = {"problem": "quadratic"}


def quad(point: dict) -> float:
    return (point["a"] - 0.25) ** 2 + (point["b"] - 1.5) ** 2


def common_args(out: Path, *extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    tune_common.add_common_args(p, out=str(out), budget=Q_BUDGET, target=Q_TARGET)
    return p.parse_args(["--strategies", *Q_STRATS, "--seeds", "2", *extra])


def common_runs(out: Path) -> dict[tuple[str, int], dict]:
    return {
        (p.parent.name, int(p.stem.removeprefix("seed"))): json.loads(p.read_text())
        for p in (out / "runs").glob("*/seed*.json")
    }


@pytest.fixture(scope="module")
def common_out(tmp_path_factory):
    pytest.importorskip("optuna")
    out = tmp_path_factory.mktemp("common")
    summary = tune_common.run_suite(common_args(out), quad, QSPACE, "Minimise a bowl.", META)
    return out, summary


def test_run_suite_writes_full_runs(common_out):
    out, _ = common_out
    runs = common_runs(out)
    assert sorted(runs) == sorted((s, k) for s in Q_STRATS for k in SEEDS)
    for (s, k), r in runs.items():
        assert r["seed"] == k and r["strategy"] == s and r["warnings"] == 0
        # no early stop: every run keeps its whole trace so other targets can be evaluated
        check_trace(r, Q_BUDGET, None, quad)
        assert r["n_calls"] == Q_BUDGET
    for k in SEEDS:
        prefix = best_so_far_prefix(QSPACE, k, 6, quad)  # --population defaults to 6
        assert runs[("pso", k)]["trace"][:6] == pytest.approx(prefix, rel=1e-12, abs=1e-12)


def check_common_summary(summary: dict, runs: dict, target: float) -> None:
    assert summary["meta"] == dict(META, target=target, budget=Q_BUDGET, population=6)
    assert sorted(summary["strategies"]) == sorted(Q_STRATS)
    for s, e in summary["strategies"].items():
        rs = [runs[(s, k)] for k in SEEDS]
        ctt = [first_reach(r["trace"], target) for r in rs]
        assert_stats(e["evals_to_target_median"], e["evals_to_target_iqr"], two_seed_stats(ctt))
        assert e["reached"] == sum(c is not None for c in ctt) and e["seeds"] == 2
        assert e["best_value_median"] == pytest.approx(sum(r["best_value"] for r in rs) / 2)
        assert e["best_points"] == [r["best_point"] for r in rs]
        walls = [r["wall_seconds"] for r in rs]
        assert e["wall_seconds_median"] == pytest.approx(sum(walls) / 2, abs=1e-2)
        assert e["wall_seconds_total"] == pytest.approx(sum(walls), abs=0.1)
        assert e["llm_calls"] == e["llm_tokens"] == 0


def test_run_suite_summary(common_out):
    out, returned = common_out
    summary = json.loads((out / "summary.json").read_text())
    assert summary == returned
    check_common_summary(summary, common_runs(out), Q_TARGET)
    assert any(e["reached"] for e in summary["strategies"].values())


def test_run_suite_is_resumable(common_out, tmp_path, capsys):
    src, _ = common_out
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    before = mtimes(out)
    summary = (out / "summary.json").read_text()
    capsys.readouterr()
    tune_common.run_suite(common_args(out), quad, QSPACE, "Minimise a bowl.", META)
    assert "evals_to_target=" not in capsys.readouterr().out
    assert mtimes(out) == before and (out / "summary.json").read_text() == summary
    # a lost run is redone alone, identically (seeded strategy and peer)
    for lost in (
        out / "runs" / "pso" / "seed1.json",
        out / "runs" / "optuna_random" / "seed0.json",
    ):
        old = json.loads(lost.read_text())
        lost.unlink()
        tune_common.run_suite(common_args(out), quad, QSPACE, "Minimise a bowl.", META)
        assert capsys.readouterr().out.count("evals_to_target=") == 1
        new = json.loads(lost.read_text())
        assert (new["trace"], new["best_point"]) == (old["trace"], old["best_point"])


def test_run_suite_summary_only_evaluates_another_target(common_out, tmp_path):
    src, _ = common_out
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    before = mtimes(out)
    args = common_args(out, "--summary-only", "--target", "0.5", "--strategies", "llm_ga")
    summary = tune_common.run_suite(args, quad, QSPACE, "Minimise a bowl.", META)
    assert mtimes(out) == before  # nothing run, nothing rewritten
    assert json.loads((out / "summary.json").read_text()) == summary
    check_common_summary(summary, common_runs(out), 0.5)


def test_run_suite_llm_without_model_exits_before_any_run(tmp_path, monkeypatch):
    monkeypatch.delenv("HGPSO_LLM_MODEL", raising=False)
    out = tmp_path / "out"
    args = common_args(out, "--strategies", "pso", "llm_pso")
    with pytest.raises(SystemExit, match="LLM strategies need"):
        tune_common.run_suite(args, quad, QSPACE, "Minimise a bowl.", META)
    assert not out.exists()
