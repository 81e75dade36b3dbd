"""``hgpso-default`` (HG-PSO with the library's defaults), compatibility with committed run
files, and the report's equal-time view, per-epoch table and timing line."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

import hgpso
from benchmarks import lit, registry
from benchmarks.report import (
    curve_seconds,
    equal_budget,
    equal_time,
    per_epoch_accuracy,
    render_markdown,
    summarize,
    timing_conditions,
)
from benchmarks.train import build_parser, hparams_from_args, main, run_config

ROOT = Path(__file__).resolve().parents[2]


def test_library_defaults_come_from_the_signature_with_four_particles():
    hp = lit.DEFAULT_HPARAMS["hgpso-default"]
    assert set(hp) == {*lit.DEFAULT_HPARAMS["hgpso"], "readout", "gradient"}
    signature = inspect.signature(hgpso.HGPSO).parameters
    assert hp["gradient"] == signature["gradient"].default
    # lr and inertia are None in the signature: the entry holds what they resolve to
    assert {k: hp[k] for k in ("lr", "inertia")} == hgpso.optim.gradient_defaults(hp["gradient"])
    assert (
        hp["num_particles"]
        == 4
        != inspect.signature(hgpso.HGPSO).parameters["num_particles"].default
    )
    # the optimizer built from the entry is HGPSO() as a user gets it, bar the swarm size
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    built = registry.build_optimizer(
        "hgpso-default", a.parameters(), hp, registry.BuildContext(seed=0)
    )
    plain = hgpso.HGPSO(b.parameters(), num_particles=4, seed=0)
    strip = [{k: v for k, v in g.items() if k != "params"} for g in built.param_groups]
    assert strip == [{k: v for k, v in g.items() if k != "params"} for g in plain.param_groups]
    for attr in ("num_particles", "forget", "adaptive", "ema_beta", "patience", "seed"):
        assert getattr(built, attr) == getattr(plain, attr), attr
    # and it differs from the tuned entry where tuning changed something
    assert hp["lr"] != lit.DEFAULT_HPARAMS["hgpso"]["lr"]


def test_library_defaults_follow_the_library(monkeypatch):
    class Changed(hgpso.HGPSO):
        def __init__(
            self,
            params,
            lr=0.123,
            num_particles=8,
            inertia=0.5,
            cognitive=0.2,
            social=0.3,
            max_velocity=1.0,
            init_spread=0.02,
            *,
            forget=0.75,
            adaptive=False,
            gradient="sgd",
            **kw,
        ):
            super().__init__(
                params,
                lr,
                num_particles,
                inertia,
                cognitive,
                social,
                max_velocity,
                init_spread,
                forget=forget,
                adaptive=adaptive,
                gradient=gradient,
                **kw,
            )

    monkeypatch.setattr(hgpso, "HGPSO", Changed)
    assert lit.library_default_hparams() == {
        "lr": 0.123,
        "num_particles": 4,
        "inertia": 0.5,
        "cognitive": 0.2,
        "social": 0.3,
        "max_velocity": 1.0,
        "init_spread": 0.02,
        "forget": 0.75,
        "adaptive": False,
    }


def test_library_defaults_left_to_the_gradient_term_are_resolved(monkeypatch):
    class Unset(hgpso.HGPSO):
        def __init__(self, params, lr=None, num_particles=8, inertia=None, *, gradient="sgd"):
            super().__init__(params, lr, num_particles, inertia, gradient=gradient)

    monkeypatch.setattr(hgpso, "HGPSO", Unset)
    sgd, adam = (hgpso.optim.gradient_defaults(g) for g in ("sgd", "adam"))
    keys = ("lr", "inertia", "gradient")
    assert lit.library_default_hparams(keys) == {**sgd, "gradient": "sgd", "num_particles": 4}
    assert lit.library_default_hparams(keys, gradient="adam") == {
        **adam,
        "gradient": "adam",
        "num_particles": 4,
    }
    assert sgd != adam


def test_cli_flags_for_the_variant():
    args = build_parser().parse_args(
        [
            "--optimizers",
            "hgpso-default",
            "--hgpso-default-num-particles",
            "2",
            "--hgpso-default-lr",
            "0.03",
        ]
    )
    hp = hparams_from_args(args, "hgpso-default")
    assert hp == {**lit.DEFAULT_HPARAMS["hgpso-default"], "num_particles": 2, "lr": 0.03}
    assert hparams_from_args(args, "hgpso") == lit.DEFAULT_HPARAMS["hgpso"]  # untouched
    # the readout: recorded only where it differs from the committed runs' gbest
    args.threshold, args.window = 0.3, 1
    assert "readout" not in run_config(args, "hgpso-default", 0)["hparams"]
    mean = build_parser().parse_args(["--hgpso-default-readout", "mean"])
    mean.threshold, mean.window = 0.3, 1
    assert run_config(mean, "hgpso-default", 0)["hparams"]["readout"] == "mean"
    assert run_config(mean, "hgpso-adam", 0)["hparams"]["readout"] == "gbest"  # always recorded


def test_digits_run_with_both_variants(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--dataset", "digits", "--optimizers", "hgpso", "hgpso-default", "--seeds", "0",
            "--epochs", "1", "--evals-per-epoch", "2", "--hgpso-num-particles", "2",
            "--hgpso-default-num-particles", "2", "--threads", "1", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    tuned = json.loads((out / "runs" / "hgpso-seed0.json").read_text())
    default = json.loads((out / "runs" / "hgpso-default-seed0.json").read_text())
    steps = default["steps"]
    assert (default["forward_passes"], default["backward_passes"]) == (2 * steps, 2 * steps)
    assert default["forward_backward_passes"] == tuned["forward_backward_passes"]
    # the readout at its value of the committed runs is left out of the record (they are reused)
    later = ("readout", "weight_decay", "lr_spread", "lr_pull")  # at their legacy values
    library = {k: v for k, v in lit.DEFAULT_HPARAMS["hgpso-default"].items() if k not in later}
    assert default["hparams"] == {**library, "num_particles": 2}
    assert default["config"]["optimizer"] == "hgpso-default"
    # same seed, same swarm size and spread: the same first particles on the same first batch
    assert default["losses"][0] == pytest.approx(tuned["losses"][0], abs=1e-6)
    assert default["losses"] != tuned["losses"]  # then the settings differ
    # curve points carry the training seconds so far, ending at the run's step time
    secs = [c["train_seconds"] for c in default["curve"]]
    assert secs == sorted(secs) and secs[-1] == pytest.approx(default["step_seconds"])
    m = default["machine"]
    assert m["torch_threads"] == 1 and m["cpu_affinity_start"]
    assert m["loadavg_1min_start"] >= 0 and m["loadavg_1min_end"] >= 0
    report = (out / "report.md").read_text()
    assert "| HG-PSO (tuned) |" in report and "| HG-PSO (library defaults) |" in report
    assert "torch threads 1, CPU affinity " in report and "1-minute load average" in report
    for fig in ("accuracy_vs_epoch", "accuracy_vs_seconds"):
        assert (out / "figures" / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(args) == 0  # both reused
    assert capsys.readouterr().out.count("skip ") == 2


@pytest.mark.parametrize("folder", ["fashion-mnist", "fashion-mnist/adam-at-hgpso-budget"])
def test_committed_runs_keep_their_configuration(folder):
    """The committed run files are reused by the current code (never re-run for a new option)."""
    files = sorted((ROOT / "benchmarks" / "results" / folder / "runs").glob("*.json"))
    assert files
    for path in files:
        record = json.loads(path.read_text())
        c = record["config"]
        args = build_parser().parse_args(
            [
                "--dataset",
                c["dataset"],
                "--optimizers",
                c["optimizer"],
                "--seeds",
                str(c["seed"]),
                "--epochs",
                str(c["epochs"]),
                "--evals-per-epoch",
                str(c["evals_per_epoch"]),
            ]
        )
        args.threshold, args.window = 0.4, c["window"]  # main() fills these from the data
        assert run_config(args, c["optimizer"], c["seed"]) == c, path.name
        assert path.stem == f"{c['optimizer']}-seed{c['seed']}"


def _run(opt, seed, curve, steps=4, step_seconds=None, machine=None):
    r = {
        "optimizer": opt,
        "seed": seed,
        "steps": steps,
        "steps_per_epoch": 2,
        "test_accuracy": curve[-1][1],
        "final_train_loss": 0.5,
        "steps_to_threshold": None,
        "passes_to_threshold": None,
        "forward_passes": steps,
        "backward_passes": steps,
        "forward_backward_passes": 2 * steps,
        "wall_seconds": 1.0,
        "memory": {"peak_rss_growth_mib": 1.0, "peak_cuda_allocated_mib": None},
        "hparams": {},
        "losses": [1.0] * steps,
        "curve": [
            {
                "step": st,
                "passes": 2 * st,
                "eval_accuracy": a,
                **({"train_seconds": t} if t else {}),
            }
            for st, a, t in curve
        ],
    }
    if step_seconds is not None:
        r["step_seconds"] = step_seconds
    if machine is not None:
        r["machine"] = machine
    return r


def test_old_run_files_place_evaluations_at_proportional_time():
    old = _run("sgd", 0, [(1, 0.5, None), (4, 0.8, None)], step_seconds=10.0)
    assert curve_seconds(old) == [(2.5, 0.5), (10.0, 0.8)]


def test_equal_time_by_hand():
    runs = [
        # Adam: 10 s and 12 s; the budget is the longest, 12 s
        _run("adam", 0, [(2, 0.70, 5.0), (4, 0.80, 10.0)]),
        _run("adam", 1, [(2, 0.72, 6.0), (4, 0.84, 12.0)]),
        # HG-PSO: 4x slower; by 12 s seed 0 had 0.60 (at 11 s), seed 1 0.65 (at 12 s)
        _run("hgpso", 0, [(1, 0.60, 11.0), (2, 0.70, 22.0), (4, 0.86, 44.0)]),
        _run("hgpso", 1, [(1, 0.65, 12.0), (2, 0.75, 24.0), (4, 0.88, 48.0)]),
        # PSO's first evaluation comes after the budget: no credit
        _run("pso", 0, [(1, 0.10, 13.0), (4, 0.20, 50.0)]),
    ]
    et = equal_time(runs)
    assert et["reference"] == "adam" and et["budget_seconds"] == 12.0
    assert et["accuracy_at_budget"]["adam"] == pytest.approx(0.82)
    assert et["accuracy_at_budget"]["hgpso"] == pytest.approx(0.625)
    assert et["accuracy_at_budget_std"]["hgpso"] == pytest.approx(0.05 / 2**0.5)
    assert et["accuracy_at_budget"]["pso"] is None
    assert et["training_seconds_mean"] == {"adam": 11.0, "hgpso": 46.0, "pso": 50.0}
    pe = per_epoch_accuracy(runs)  # steps_per_epoch 2: steps 2 and 4 are epochs 1 and 2
    assert [(r["epoch"], r["runs"]) for r in pe["hgpso"]] == [(0.5, 2), (1.0, 2), (2.0, 2)]
    assert pe["adam"][1]["accuracy_mean"] == pytest.approx(0.82)


def test_paired_per_seed_comparison_with_adam_by_hand():
    runs = [
        # Adam: 4 steps = 8 passes (the equal budget), 10 s and 12 s (the equal time: 12 s)
        _run("adam", 0, [(2, 0.70, 5.0), (4, 0.80, 10.0)]),
        _run("adam", 1, [(2, 0.72, 6.0), (4, 0.84, 12.0)]),
        # HG-PSO: 8 steps (16 passes); at 8 passes (step 4) 0.78 / 0.83, at 12 s 0.60 / 0.65
        _run("hgpso", 0, [(1, 0.60, 11.0), (4, 0.78, 40.0), (8, 0.90, 80.0)], steps=8),
        _run("hgpso", 1, [(1, 0.65, 12.0), (4, 0.83, 44.0), (8, 0.89, 88.0)], steps=8),
        _run("hgpso", 2, [(8, 0.99, 80.0)], steps=8),  # no Adam seed 2: not paired
        # SGD's seed 1 has no evaluation within 12 s: no credit at equal time
        _run("sgd", 0, [(4, 0.75, 9.0)]),
        _run("sgd", 1, [(4, 0.85, 13.0)]),
    ]
    paired = summarize(runs, {"dataset": "digits", "epochs": 2})["paired"]
    assert paired["reference"] == "adam" and list(paired["views"]) == [
        "epochs",
        "passes",
        "seconds",
    ]
    epochs = paired["views"]["epochs"]["hgpso"]
    assert epochs["seeds"] == [0, 1]
    assert epochs["differences"] == pytest.approx([0.10, 0.05])  # 0.90-0.80, 0.89-0.84
    assert epochs["mean_difference"] == pytest.approx(0.075)
    assert epochs["standard_error"] == pytest.approx(0.025)  # sd 0.05/sqrt2, / sqrt 2
    assert epochs["beyond_2se"] is True  # 0.075 > 0.05
    passes = paired["views"]["passes"]["hgpso"]
    assert passes["differences"] == pytest.approx([-0.02, -0.01])  # 0.78-0.80, 0.83-0.84
    assert passes["standard_error"] == pytest.approx(0.005) and passes["beyond_2se"] is True
    seconds = paired["views"]["seconds"]["hgpso"]
    assert seconds["differences"] == pytest.approx([-0.20, -0.19])
    assert paired["views"]["seconds"]["sgd"] is None
    assert paired["views"]["epochs"]["sgd"]["differences"] == pytest.approx([-0.05, 0.01])
    meta = {"dataset": "digits", "epochs": 2, "threshold": 0.3}
    text = render_markdown(summarize(runs, meta), meta)
    assert "## Paired per-seed comparison with Adam" in text
    assert (
        "| HG-PSO (tuned) | +7.50 ± 2.50 (> 2 SE) [2] | -1.50 ± 0.50 (> 2 SE) [2] "
        "| -19.50 ± 0.50 (> 2 SE) [2] |" in text
    )
    assert "| SGD | -2.00 ± 3.00 [2] | -2.00 ± 3.00 [2] | n/a |" in text
    assert "Paired" not in render_markdown(summarize(runs[2:], meta), meta)  # no Adam


@pytest.mark.parametrize(
    "folder",
    [
        "fashion-mnist",
        "fashion-mnist-10ep",
        "fashion-mnist-noise40",
        "fashion-mnist/adam-at-hgpso-budget",
    ],
)
def test_committed_results_rebuild_from_their_run_files(folder):
    """Every key of a committed summary.json comes out the same from its run files (newer
    keys beside it are allowed): the report reads the committed runs unchanged."""
    d = ROOT / "benchmarks" / "results" / folder
    runs = [json.loads(p.read_text()) for p in sorted((d / "runs").glob("*.json"))]
    committed = json.loads((d / "summary.json").read_text())
    meta = {k: committed.get(k) for k in ("dataset", "epochs", "threshold", "eval_split")}
    rebuilt = json.loads(json.dumps(summarize(runs, meta)))
    assert {k: rebuilt[k] for k in committed} == committed
    if len({r["optimizer"] for r in runs}) > 1:
        assert rebuilt["paired"]["reference"] == "adam"
    assert equal_budget(runs)["reference"] == "adam"


def test_timing_line_from_the_run_records():
    machine = {
        "torch_threads": 1,
        "cpu_affinity_start": [0],
        "cpu_affinity_end": [0],
        "loadavg_1min_start": 1.25,
        "loadavg_1min_end": 0.5,
    }
    runs = [
        _run("sgd", 0, [(4, 0.8, 1.0)], machine=machine),
        _run("sgd", 1, [(4, 0.8, 1.0)], machine={**machine, "loadavg_1min_start": 2.0}),
        _run("adam", 0, [(4, 0.8, 1.0)]),  # an older file: nothing recorded
    ]
    t = timing_conditions(runs)
    assert t == {
        "runs_recorded": 2,
        "runs": 3,
        "torch_threads": [1],
        "cpu_affinity": ["0"],
        "loadavg_1min_min": 0.5,
        "loadavg_1min_max": 2.0,
    }
    meta = {"dataset": "digits", "epochs": 2, "threshold": 0.3}
    text = render_markdown(summarize(runs, meta), meta)
    assert (
        "torch threads 1, CPU affinity 0, 1-minute load average 0.50 to 2.00 at the runs' "
        "starts and ends (recorded for 2 of 3 runs)" in text
    )
    assert "## Label noise" not in text and "Training labels" not in text
    old = render_markdown(summarize(runs[2:], meta), meta)
    assert "thread count, CPU affinity and load were not recorded" in old


def test_include_finished_adds_runs_made_with_the_same_settings(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--dataset", "digits", "--epochs", "1", "--evals-per-epoch", "1", "--threads", "1",
            "--pso-num-particles", "2", "--no-progress", "--no-figures"]  # fmt: skip
    base += ["--out", str(out)]
    assert main([*base, "--optimizers", "sgd", "--seeds", "0", "1"]) == 0
    assert main([*base, "--optimizers", "pso", "--seeds", "0"]) == 0
    assert main([*base, "--optimizers", "adam", "--seeds", "0", "--adam-lr", "0.003"]) == 0
    assert main([*base, "--optimizers", "adam", "--seeds", "1", "--label-noise", "0.2"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    capsys.readouterr()
    assert main([*base, "--optimizers", "sgd", "--seeds", "0", "1", "--include-finished"]) == 0
    printed = capsys.readouterr().out
    assert "done" not in printed and printed.count("skip sgd") == 2
    assert "include pso seed 0: finished run found in" in printed
    assert f"not included: {out / 'runs' / 'adam-seed0.json'} was made with other settings" in (
        printed
    )
    assert "adam-seed1-noise0.2-noiseseed0.json (another optimizer, seed or label noise)" in printed
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == before
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["optimizers"]) == ["sgd", "pso"]
    assert summary["optimizers"]["pso"]["num_runs"] == 1
    assert summary["optimizers"]["sgd"]["num_runs"] == 2
    # without the flag the report holds this invocation's runs only
    assert main([*base, "--optimizers", "sgd", "--seeds", "0", "1"]) == 0
    assert list(json.loads((out / "summary.json").read_text())["optimizers"]) == ["sgd"]


def test_accuracy_figures_zoom_past_an_optimizer_that_does_not_train():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.report.figures import _zoom_past_outliers

    fig, ax = plt.subplots()
    ax.plot([1, 2], [20.9, 20.9])
    ax.plot([1, 2], [87.0, 91.3])
    _zoom_past_outliers(ax, {"pso": 20.9, "adam": 91.3}, {"pso": [20.9], "adam": [87.0, 91.3]})
    assert ax.get_ylim() == pytest.approx((86.0, 91.8))
    assert [t.get_text() for t in ax.texts] == ["PSO ends at 20.9%, below the axis"]

    fig2, ax2 = plt.subplots()
    ax2.plot([1, 2], [85.0, 91.0])
    before = ax2.get_ylim()
    _zoom_past_outliers(ax2, {"sgd": 85.0, "adam": 91.0}, {"sgd": [85.0], "adam": [91.0]})
    assert ax2.get_ylim() == before and not ax2.texts  # nobody left out: axis untouched
    plt.close(fig)
    plt.close(fig2)
