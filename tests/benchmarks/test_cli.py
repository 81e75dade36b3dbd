"""The benchmark CLI end to end on sklearn's digits (tiny, offline)."""

from __future__ import annotations

import csv
import json

import pytest

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
