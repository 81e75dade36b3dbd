"""The benchmark CLI end to end on sklearn's digits (tiny, offline)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import train
from benchmarks.train import main

ARGS = [
    "--dataset", "digits",
    "--optimizers", "sgd", "adam", "pso", "hgpso",
    "--seeds", "0", "1",
    "--epochs", "1",
    "--batch-size", "128",
    "--evals-per-epoch", "2",
    "--pso-num-particles", "3",
    "--hgpso-num-particles", "2",
    "--threads", "1",
    "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    assert main([*ARGS, "--out", str(out)]) == 0
    return out


def test_outputs_exist_and_parse(first_run):
    out = first_run
    runs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert sorted(runs) == sorted(
        f"{o}-seed{s}" for o in ("sgd", "adam", "pso", "hgpso") for s in (0, 1)
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "digits" and summary["epochs"] == 1
    assert summary["seeds"] == [0, 1]
    assert list(summary["optimizers"]) == ["sgd", "adam", "pso", "hgpso"]
    for o, v in summary["optimizers"].items():
        for key in (
            "test_accuracy_mean",
            "test_accuracy_std",
            "steps_to_threshold_mean",
            "final_loss_mean",
            "forward_backward_passes",
            "wall_seconds_mean",
        ):
            assert key in v, (o, key)
        assert 0.0 <= v["test_accuracy_mean"] <= 1.0
        assert v["final_loss_mean"] > 0 and v["wall_seconds_mean"] > 0
    with open(out / "runs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and {r["optimizer"] for r in rows} == {"sgd", "adam", "pso", "hgpso"}
    report = (out / "report.md").read_text()
    for heading in ("Table 1", "Table 2", "Table 3", "Equal compute budget"):
        assert heading in report
    assert "hgpso-train --dataset digits" in report
    for fig in ("loss_vs_step", "accuracy", "final_loss_box", "accuracy_vs_passes"):
        assert (out / "figures" / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compute_accounting_and_equal_start(first_run):
    runs = {p.stem: json.loads(p.read_text()) for p in (first_run / "runs").glob("*.json")}
    steps = runs["sgd-seed0"]["steps"]
    assert steps == runs["sgd-seed0"]["steps_per_epoch"] == 1347 // 128
    for s in (0, 1):
        sgd, adam = runs[f"sgd-seed{s}"], runs[f"adam-seed{s}"]
        pso, hg = runs[f"pso-seed{s}"], runs[f"hgpso-seed{s}"]
        assert (sgd["forward_passes"], sgd["backward_passes"]) == (steps, steps)
        assert (pso["forward_passes"], pso["backward_passes"]) == (3 * steps, 0)
        assert (hg["forward_passes"], hg["backward_passes"]) == (2 * steps, 2 * steps)
        assert len(hg["losses"]) == steps
        # same initial weights and same first batch: identical first loss for SGD and Adam;
        # the swarm keeps the initial weights as particle 0, so its best is no worse
        assert sgd["losses"][0] == pytest.approx(adam["losses"][0], abs=1e-6)
        assert hg["losses"][0] <= sgd["losses"][0] + 1e-5
        assert pso["losses"][0] <= sgd["losses"][0] + 1e-5
        # the curve ends at the last step with the reported accuracy
        assert hg["curve"][-1]["step"] == steps
        assert hg["curve"][-1]["eval_accuracy"] == hg["test_accuracy"]
    # different seeds: different initial weights / batches
    assert runs["sgd-seed0"]["losses"][0] != runs["sgd-seed1"]["losses"][0]


def test_rerun_skips_finished_runs(first_run, capsys):
    out = first_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert main([*ARGS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skip ") == 8 and "done " not in printed
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == before
    # a changed hyperparameter reruns only the runs it affects
    assert (
        main(
            [
                *ARGS,
                "--out",
                str(out),
                "--seeds",
                "1",
                "--optimizers",
                "sgd",
                "adam",
                "--adam-lr",
                "0.003",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "skip sgd seed 1" in printed and "done adam seed 1" in printed
    assert json.loads((out / "runs" / "adam-seed1.json").read_text())["hparams"]["lr"] == 0.003


def test_missing_dataset_is_one_clear_message(tmp_path, capsys):
    code = main(
        [
            "--dataset",
            "svhn",
            "--data-root",
            str(tmp_path),
            "--no-download",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: SVHN not found") and str(tmp_path) in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_corrupt_run_files_are_named_and_rerun(tmp_path, capsys):
    small = [*ARGS[:3], "sgd", *ARGS[7:]]
    small[small.index("--seeds") + 1 : small.index("--seeds") + 3] = ["0", "1", "2", "3"]
    out = tmp_path / "out"
    assert main([*small, "--out", str(out)]) == 0
    capsys.readouterr()
    runs = out / "runs"
    good = (runs / "sgd-seed3.json").read_text()
    (runs / "sgd-seed0.json").write_text("[]")
    (runs / "sgd-seed1.json").write_text("null")
    (runs / "sgd-seed2.json").write_text('{"key": "sgd-seed2"}')
    (runs / "sgd-seed3.json").write_text(good[: len(good) // 2])  # truncated
    assert main([*small, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    reruns = [line for line in printed.splitlines() if line.startswith("rerun: ")]
    assert len(reruns) == 4 and printed.count("done sgd seed") == 4
    for seed, why in [(0, "JSON list"), (1, "JSON NoneType"), (2, "lacks"), (3, "truncated")]:
        assert any(f"sgd-seed{seed}.json" in r and why in r for r in reruns), (seed, reruns)
    for seed in range(4):
        assert json.loads((runs / f"sgd-seed{seed}.json").read_text())["seed"] == seed
    report = (out / "report.md").read_text()
    assert "last invocation started" in report and "report written" not in report
    assert "- Command: `hgpso-train --dataset digits --optimizers sgd" in report


def test_report_lists_the_command_that_produced_each_run(tmp_path, capsys):
    """A later invocation that reuses a run must not claim that run as its own."""
    small = [*ARGS[:3], "sgd", *ARGS[7:]]
    i = small.index("--seeds") + 1
    out = tmp_path / "out"
    first = [*small[:i], "0", *small[i + 2 :], "--out", str(out)]
    second = [*small[:i], "0", "1", *small[i + 2 :], "--out", str(out)]
    assert main(first) == 0
    assert main(second) == 0
    printed = capsys.readouterr().out
    assert printed.count("done sgd seed 0") == 1  # seed 0 reused, not re-run
    runs = out / "runs"
    cmd0 = json.loads((runs / "sgd-seed0.json").read_text())["command"]
    cmd1 = json.loads((runs / "sgd-seed1.json").read_text())["command"]
    assert "--seeds 0 --epochs" in cmd0 and "--seeds 0 1 --epochs" in cmd1
    report = (out / "report.md").read_text()
    assert f"  - `{cmd0}`" in report and f"  - `{cmd1}`" in report


def test_run_file_with_null_values_is_named_and_rerun(tmp_path, capsys):
    small = [*ARGS[:3], "sgd", *ARGS[7:]]
    i = small.index("--seeds") + 1
    args = [*small[:i], "0", *small[i + 2 :], "--out", str(tmp_path / "out")]
    assert main(args) == 0
    path = tmp_path / "out" / "runs" / "sgd-seed0.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "curve": None, "test_accuracy": None}))
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (
        "rerun: " in printed and "sgd-seed0.json has wrong types in test_accuracy, curve" in printed
    )
    assert json.loads(path.read_text())["curve"]


# Issue 24: every argument of every benchmark CLI is validated while parsing: one line on
# stderr, exit code 2, before any data loads, nothing written. In-process for the whole
# matrix (a subprocess pays ~4-10 s of torch/Lightning import each), then a few real
# subprocesses for the exit code of `python -m` and scripts/hgpso-train.
ROOT = Path(__file__).resolve().parents[2]


def _no_data(name, **kwargs):
    """Stands in for ``registry.data_module``: any data module asked for is a test failure."""
    raise AssertionError(f"the {name} data module was built before the arguments were checked")


@pytest.fixture
def refusal(tmp_path, monkeypatch, capsys):
    """Run a CLI's main() in an empty working directory and check that it refused: exit
    code 2, one line naming the program and the argument, no traceback, nothing created."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(train, "data_module", _no_data)

    def check(main, argv, prog, fragment):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2, err
        assert err.endswith("\n") and err.count("\n") == 1, err  # one line
        assert err.startswith(f"{prog}: error: ") and fragment in err, err
        assert list(work.iterdir()) == [], "a refused command left files behind"
        return err

    return check


def _a_file(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    return f


BAD_TRAIN_ARGS = [
    (["--epochs", "-1"], "argument --epochs: expected a number > 0, got '-1'"),
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "nan"], "--epochs"),
    (["--train-subset", "0"], "argument --train-subset: expected an integer >= 1"),
    (["--train-subset", "-3"], "--train-subset"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1"),
    (["--batch-size", "-5"], "--batch-size"),
    (["--threads", "-1"], "argument --threads"),
    (["--holdout", "1.5"], "argument --holdout: expected a fraction in [0, 1)"),
    (["--label-noise", "1.0"], "fraction in [0, 1)"),
    (["--device", "tpu9"], "argument --device: expected a torch device"),
    (["--hgpso-num-particles", "0"], "argument --hgpso-num-particles"),
    (["--pso-num-particles", "-2"], "argument --pso-num-particles"),
    (["--sgd-lr", "0"], "argument --sgd-lr"),
    (["--hgpso-forget", "1.5"], "argument --hgpso-forget"),
    (["--hgpso-max-velocity", "-1"], "argument --hgpso-max-velocity"),
    (["--hgpso-inertia", "inf"], "argument --hgpso-inertia"),
    (["--seeds", "0", "-1"], "argument --seeds"),
    (["--window", "0"], "argument --window"),
    (["--evals-per-epoch", "0"], "argument --evals-per-epoch"),
    (["--final-loss-examples", "-1"], "argument --final-loss-examples"),
    (["--chunk-size", "0"], "argument --chunk-size"),
    (["--label-noise-seed", "-1"], "argument --label-noise-seed"),
    (["--threshold", "inf"], "argument --threshold"),
]


@pytest.mark.parametrize(
    ("argv", "fragment"), BAD_TRAIN_ARGS, ids=[" ".join(a) for a, _ in BAD_TRAIN_ARGS]
)
def test_train_refuses_nonsense_before_loading_data(refusal, tmp_path, argv, fragment):
    # with --out inside tmp_path and without (the default runs/digits in the empty cwd)
    refusal(train.main, ["--dataset", "digits", *argv], "hgpso-train", fragment)
    out = tmp_path / "out"
    refusal(train.main, ["--dataset", "digits", *argv, "--out", str(out)], "hgpso-train", fragment)
    assert not out.exists()


def test_train_refuses_an_out_that_is_not_a_writable_directory(refusal, tmp_path):
    f = _a_file(tmp_path)
    refusal(train.main, ["--out", str(f)], "hgpso-train", "exists and is not a directory")
    refusal(train.main, ["--out", str(f / "sub")], "hgpso-train", "is not a directory")
    if os.path.isdir("/proc"):  # a directory no one may create files in, root included
        refusal(train.main, ["--out", "/proc"], "hgpso-train", "'/proc' is not writable")
        refusal(train.main, ["--out", "/proc/x/y"], "hgpso-train", "cannot be created")
    assert f.read_text() == "x"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_train_refuses_a_read_only_out(refusal, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        refusal(train.main, ["--out", str(ro)], "hgpso-train", "is not writable")
        refusal(train.main, ["--out", str(ro / "new")], "hgpso-train", "is not writable")
    finally:
        ro.chmod(0o700)
    assert list(ro.iterdir()) == []


def test_train_refuses_a_default_out_it_cannot_create(refusal, monkeypatch):
    # no --out: the default runs/<dataset> is checked as well, in the working directory
    if not os.path.isdir("/proc"):
        pytest.skip("needs a directory no one can write to")
    monkeypatch.chdir("/proc")
    refusal(train.main, ["--dataset", "digits"], "hgpso-train", "argument --out: 'runs/digits'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_train_refuses_cuda_on_a_machine_without_it(refusal):
    refusal(train.main, ["--device", "cuda"], "hgpso-train", "CUDA is not available")


def test_every_benchmark_cli_refuses_nonsense(refusal, tmp_path):
    from benchmarks import (
        kernel_bandwidth,
        llm_schema_rate,
        quickstart,
        scaling,
        step_time,
        tune_fmnist,
        tune_lstm,
        tune_rastrigin,
        tune_report,
    )

    f = _a_file(tmp_path)
    d = tmp_path / "a-dir"
    d.mkdir()
    cases = [
        (step_time.main, ["--particles", "4", "0"], "argument --particles"),
        (step_time.main, ["--device", "tpu9"], "argument --device"),
        (step_time.main, ["--repeats", "0"], "argument --repeats"),
        (step_time.main, ["--json", str(d)], "is a directory"),
        (step_time.main, ["--json", str(tmp_path / "no" / "x.json")], "no directory"),
        (scaling.main, ["--batch", "0"], "argument --batch"),
        (scaling.main, ["--world-sizes", "1", "-2"], "argument --world-sizes"),
        (scaling.main, ["--timeout", "nan"], "argument --timeout"),
        (scaling.main, ["--warmup", "-1"], "argument --warmup"),
        (kernel_bandwidth.main, ["--sizes", "1e6,abc"], "argument --sizes"),
        (kernel_bandwidth.main, ["--e2e-particles", "16,0"], "argument --e2e-particles"),
        (kernel_bandwidth.main, ["--particles", "0"], "argument --particles"),
        (kernel_bandwidth.main, ["--out", str(f / "x.json")], "argument --out"),
        (llm_schema_rate.main, ["--n", "0"], "argument --n"),
        (llm_schema_rate.main, ["--out", str(d)], "is a directory"),
        (quickstart.main, ["--epochs", "0"], "argument --epochs"),
        (quickstart.main, ["--train-size", "-1"], "argument --train-size"),
        (quickstart.main, ["--device", "tpu9"], "argument --device"),
        (quickstart.main, ["--lr", "-0.1"], "argument --lr"),
        (tune_rastrigin.main, ["--population", "1"], "expected an integer >= 2"),
        (tune_rastrigin.main, ["--dims", "0"], "argument --dims"),
        (tune_rastrigin.main, ["--temperature", "3"], "expected a number in [0, 2]"),
        (tune_rastrigin.main, ["--k", "5", "--population", "4"], "exceed --population"),
        (tune_rastrigin.main, ["--out", str(f)], "argument --out"),
        (tune_rastrigin.main, ["--retries", "-1"], "argument --retries"),
        (tune_lstm.main, ["--epochs", "0"], "argument --epochs"),
        (tune_lstm.main, ["--k", "7"], "--k 7 exceeds --population"),  # population 6
        (tune_lstm.main, ["--budget", "0"], "argument --budget"),
        (tune_lstm.main, ["--timeout", "-5"], "argument --timeout"),
        (tune_fmnist.main, ["--threads", "0"], "argument --threads"),
        (tune_fmnist.main, ["--hgpso-lr", "0"], "argument --hgpso-lr"),
        (tune_fmnist.main, ["--out", str(f)], "argument --out"),
        (tune_report.main, ["--no-such-flag"], "unrecognized arguments"),
    ]
    prog = os.path.basename(sys.argv[0])  # these parsers take argparse's default prog
    for cli_main, argv, fragment in cases:
        refusal(cli_main, argv, prog, fragment)
    assert f.read_text() == "x" and list(d.iterdir()) == []


# should a refusal regress, the run must still not reach for the network
OFFLINE = ["--dataset", "digits", "--no-download"]


def _run(argv, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    # PYTHON pins the interpreter scripts/hgpso-train runs (a relative $PYTHON from the caller
    # would not resolve in the work directory)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable}
    return subprocess.run(
        argv, cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False
    ), work


def test_python_m_benchmarks_train_exits_2_with_one_line(tmp_path):
    out = tmp_path / "out"
    proc, work = _run(
        [sys.executable, "-m", "benchmarks.train", *OFFLINE, "--epochs", "-1", "--out", str(out)],
        tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "hgpso-train: error: argument --epochs: expected a number > 0, got '-1' (see --help)\n"
    )
    assert proc.stdout == "" and not out.exists() and list(work.iterdir()) == []


def test_scripts_hgpso_train_exits_2_with_one_line(tmp_path):
    proc, work = _run(
        ["bash", str(ROOT / "scripts" / "hgpso-train"), *OFFLINE, "--hgpso-num-particles", "0"],
        tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "argument --hgpso-num-particles" in proc.stderr
    assert list(work.iterdir()) == []  # no empty runs/ left behind


def test_train_parser_still_accepts_the_edges_of_each_range(tmp_path):
    args = train.build_parser().parse_args(
        [
            "--epochs", "0.5", "--holdout", "0", "--label-noise", "0", "--seeds", "0",
            "4294967295", "--final-loss-examples", "0", "--hgpso-max-velocity", "none",
            "--hgpso-forget", "1", "--hgpso-inertia", "0", "--hgpso-adaptive", "yes",
            "--device", "cpu", "--out", str(tmp_path / "new" / "dir"),
        ]
    )  # fmt: skip
    assert args.epochs == 0.5 and args.holdout == 0.0 and args.seeds == [0, 2**32 - 1]
    assert args.hgpso__max_velocity is None and args.hgpso__forget == 1.0
    assert args.hgpso__adaptive is True and args.out == tmp_path / "new" / "dir"
    assert not (tmp_path / "new").exists()  # checked, not created
