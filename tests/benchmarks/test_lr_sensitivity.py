"""The learning-rate sweep end to end on sklearn's digits (tiny, offline), its grid, its
resumption and its refusals."""

from __future__ import annotations

import json

import pytest

from benchmarks import lr_sensitivity as lrs

ARGS = ["--dataset", "digits", "--optimizers", "sgd", "hgpso-adam", "--seeds", "0", "1",
        "--epochs", "0.2", "--lrs", "0.001", "0.1", "--hgpso-adam-num-particles", "2",
        "--final-loss-examples", "64"]  # fmt: skip


def test_default_grid_is_five_log_spaced_rates_around_the_default():
    assert lrs.lr_grid(1e-3) == [1e-4, 0.000316, 0.001, 0.00316, 0.01]
    assert lrs.lr_grid(0.05, decades=2, per_decade=1) == [0.0005, 0.005, 0.05, 0.5, 5.0]
    assert len(lrs.lr_grid(0.05, decades=1.5, per_decade=2)) == 7


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("lr")
    assert lrs.main([*ARGS, "--out", str(out)]) == 0
    return out


def test_one_run_per_optimizer_rate_and_seed_and_the_summary(sweep, capsys):
    names = sorted(p.stem for p in (sweep / "runs").glob("*.json"))
    assert names == sorted(
        f"{o}-lr{lr}-seed{s}"
        for o in ("sgd", "hgpso-adam")
        for lr in ("0.001", "0.1")
        for s in (0, 1)
    )
    run = json.loads((sweep / "runs" / "sgd-lr0.1-seed1.json").read_text())
    assert run["hparams"] == {"lr": 0.1, "momentum": 0.9} and run["seed"] == 1
    assert run["machine"]["torch_threads"] == 1
    summary = json.loads((sweep / "lr_sensitivity.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["epochs"] == 0.2
    for o in ("sgd", "hgpso-adam"):
        points = summary["optimizers"][o]["points"]
        assert [p["lr"] for p in points] == [0.001, 0.1]
        for p in points:
            files = [json.loads((sweep / "runs" / f"{o}-lr{p['lr']:g}-seed{s}.json").read_text())
                     for s in (0, 1)]  # fmt: skip
            accs = [f["test_accuracy"] for f in files]
            assert p["accuracies"] == accs and p["seeds"] == [0, 1]
            assert p["accuracy_min"] == min(accs) and p["accuracy_max"] == max(accs)
            assert p["accuracy_mean"] == pytest.approx(sum(accs) / 2)
        best = max(points, key=lambda p: p["accuracy_mean"])
        assert summary["optimizers"][o]["best_lr"] == best["lr"]
    table = (sweep / "lr_sensitivity.md").read_text()
    sgd = summary["optimizers"]["sgd"]["points"][1]
    cell = f"{100 * sgd['accuracy_mean']:.2f} ({100 * sgd['accuracy_min']:.2f}-"
    assert "| lr | SGD | HG-PSO (adam) |" in table and f"| 0.1 | {cell}" in table
    assert (sweep / "lr_sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_swarm_runs_score_every_readout_and_log_the_spread(sweep):
    """One swarm run, three readouts: the configured one (gbest) is the run's accuracy; the
    mean readouts are other models; SGD runs have none. The particles' spread is in the curve
    at every evaluation, and the summary's readout means are the runs' means."""
    for s in (0, 1):
        run = json.loads((sweep / "runs" / f"hgpso-adam-lr0.1-seed{s}.json").read_text())
        assert set(run["readouts"]) == {"gbest", "mean", "mean_k1"}  # 2 particles: k = 1
        assert run["readouts"]["gbest"]["accuracy"] == run["test_accuracy"]
        assert run["readouts"]["gbest"]["loss"] == pytest.approx(run["test_loss"], rel=1e-6)
        spread = run["curve"][-1]["spread"]
        assert spread["rms_to_mean"] > 0 and set(spread) == {
            "rms_to_mean", "gbest_rms_to_mean", "mean_rms"}  # fmt: skip
    sgd = json.loads((sweep / "runs" / "sgd-lr0.1-seed0.json").read_text())
    assert sgd["readouts"] == {} and "spread" not in sgd["curve"][-1]
    summary = json.loads((sweep / "lr_sensitivity.json").read_text())
    point = summary["optimizers"]["hgpso-adam"]["points"][1]
    runs = [json.loads((sweep / "runs" / f"hgpso-adam-lr0.1-seed{s}.json").read_text())
            for s in (0, 1)]  # fmt: skip
    assert point["readouts"]["mean"] == pytest.approx(
        sum(r["readouts"]["mean"]["accuracy"] for r in runs) / 2
    )
    assert summary["optimizers"]["sgd"]["points"][0]["readouts"] == {}
    table = (sweep / "lr_sensitivity.md").read_text()
    assert "| Optimizer | lr | gbest | mean | mean_k1 |" in table
    assert f"| HG-PSO (adam) | 0.1 | {100 * point['readouts']['gbest']:.2f} |" in table


def test_rerun_reuses_every_finished_run(sweep, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in (sweep / "runs").glob("*.json")}
    assert lrs.main([*ARGS, "--out", str(sweep), "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished run reused") == 8
    assert "[8/8] hgpso-adam lr 0.1 seed 1: accuracy" in printed
    assert {p.name: p.stat().st_mtime_ns for p in (sweep / "runs").glob("*.json")} == before


def test_refuses_an_optimizer_without_a_rate_and_bad_pass_through_options(capsys):
    for argv, fragment in (
        (["--optimizers", "pso"], "argument --optimizers: invalid choice: 'pso'"),
        (["--hgpso-num-particles", "0"], "argument --hgpso-num-particles"),
        (["--lrs", "-1"], "argument --lrs"),
    ):
        with pytest.raises(SystemExit) as e:
            lrs.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and fragment in err, err
        assert err.startswith("python -m benchmarks.lr_sensitivity: error: "), err
