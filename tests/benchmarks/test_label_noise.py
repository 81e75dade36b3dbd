"""Symmetric label noise (``--label-noise``): the corruption itself, the data module, the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from benchmarks import datasets as D
from benchmarks import registry
from benchmarks.train import main

K = 10


def _labels(n: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, K, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("n", "p"), [(1000, 0.4), (1347, 0.4), (999, 0.25), (50, 1.0)])
def test_exact_fraction_changed_and_never_to_itself(n, p):
    clean = _labels(n)
    noisy, mask = D.symmetric_label_noise(clean, K, p, seed=0)
    changed = noisy != clean
    assert int(changed.sum()) == round(p * n)  # exact count, not a binomial draw
    assert torch.equal(changed, mask)  # a corrupted label always differs from its original
    assert noisy.dtype == torch.int64 and int(noisy.min()) >= 0 and int(noisy.max()) < K
    assert torch.equal(clean, _labels(n))  # the input is not modified in place


def test_corruption_is_a_function_of_the_noise_seed_only():
    clean = _labels(2000)
    a, mask_a = D.symmetric_label_noise(clean, K, 0.4, seed=0)
    torch.manual_seed(123)  # the global RNG plays no part
    b, mask_b = D.symmetric_label_noise(clean, K, 0.4, seed=0)
    torch.manual_seed(456)
    c, _ = D.symmetric_label_noise(clean, K, 0.4, seed=1)
    assert torch.equal(a, b) and torch.equal(mask_a, mask_b)
    assert not torch.equal(a, c)


def test_new_labels_uniform_over_the_other_classes():
    n, p = 20000, 0.5
    clean = _labels(n)
    noisy, mask = D.symmetric_label_noise(clean, K, p, seed=7)
    offsets = ((noisy[mask] - clean[mask]) % K).numpy()
    counts = np.bincount(offsets, minlength=K)
    assert counts[0] == 0  # never the original class
    m = round(p * n)
    expected, sd = m / (K - 1), np.sqrt(m * (1 / (K - 1)) * (1 - 1 / (K - 1)))
    assert np.all(np.abs(counts[1:] - expected) < 5 * sd), counts
    # the corrupted positions are spread over the whole set, not a block
    where = mask.nonzero().squeeze(1).float()
    assert abs(float(where.mean()) - (n - 1) / 2) < 0.05 * n


def test_zero_noise_is_the_identity_and_bad_fractions_are_refused():
    clean = _labels(100)
    noisy, mask = D.symmetric_label_noise(clean, K, 0.0)
    assert torch.equal(noisy, clean) and not mask.any()
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            D.symmetric_label_noise(clean, K, bad)
    with pytest.raises(ValueError, match="label_noise"):
        registry.data_module("digits", label_noise=2.0)


@pytest.mark.parametrize("holdout", [0.0, 0.2])
def test_data_module_corrupts_training_labels_only(holdout):
    clean = registry.data_module("digits", holdout=holdout, seed=0)
    noisy = registry.data_module(
        "digits", holdout=holdout, seed=0, label_noise=0.4, label_noise_seed=0
    )
    clean.setup()
    noisy.setup()
    n = len(clean.train_set)
    assert torch.equal(noisy.train_set.x, clean.train_set.x)
    assert torch.equal(noisy.train_clean_y, clean.train_set.y)
    changed = noisy.train_set.y != clean.train_set.y
    assert int(changed.sum()) == round(0.4 * n) and torch.equal(changed, noisy.train_noise_mask)
    # the evaluation set (test split, or the held-out part of the training split) is clean
    assert torch.equal(noisy.eval_set.x, clean.eval_set.x)
    assert torch.equal(noisy.eval_set.y, clean.eval_set.y)
    # the training order depends on the run seed only; the labels do not
    noisy.seed = 5
    xb, _ = next(iter(noisy.train_dataloader()))
    noisy.seed = 0
    x0, _ = next(iter(noisy.train_dataloader()))
    assert not torch.equal(xb, x0)
    expected, _ = D.symmetric_label_noise(clean.train_set.y, 10, 0.4, seed=0)
    assert torch.equal(noisy.train_set.y, expected)


ARGS = [
    "--dataset", "digits",
    "--optimizers", "sgd", "hgpso", "hgpso-default",
    "--seeds", "0", "1",
    "--epochs", "1",
    "--evals-per-epoch", "2",
    "--hgpso-num-particles", "2",
    "--hgpso-default-num-particles", "2",
    "--threads", "1",
    "--no-progress",
]  # fmt: skip
NOISE = ["--label-noise", "0.4"]
OPTS = ("sgd", "hgpso", "hgpso-default")


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("noisy")
    assert main([*ARGS, *NOISE, "--out", str(out)]) == 0
    return out


def _runs(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}


def test_every_run_trains_on_the_same_corrupted_labels(noisy_run):
    runs = _runs(noisy_run)
    assert sorted(runs) == sorted(f"{o}-seed{s}-noise0.4-noiseseed0" for o in OPTS for s in (0, 1))
    splits = D.load_digits_splits()
    expected, _ = D.symmetric_label_noise(splits.train_y, 10, 0.4, seed=0)
    sha = hashlib.sha256(expected.numpy().astype(np.int64).tobytes()).hexdigest()
    n = len(splits.train_y)
    for key, r in runs.items():
        assert r["config"]["label_noise"] == {"kind": "symmetric", "fraction": 0.4, "seed": 0}
        ln = r["label_noise"]
        assert ln["noisy_labels_sha256"] == sha, key
        assert (ln["corrupted"], ln["train_size"]) == (round(0.4 * n), n)
        fit = ln["fit"]
        assert fit["examples"] == n and fit["corrupted_examples"] == round(0.4 * n)
        assert 0.0 <= fit["memorized"] + fit["corrected"] <= 1.0
        # the final-loss accuracy is measured against the labels trained on (the noisy ones)
        assert fit["accuracy_noisy_labels"] == pytest.approx(r["final_train_accuracy"], abs=1e-6)
        # evaluation on the clean test split
        assert r["eval_split"] == "test" and r["curve"][-1]["eval_accuracy"] == r["test_accuracy"]
        assert r["machine"]["torch_threads"] == 1


def test_noisy_report_has_the_noise_line_and_table(noisy_run):
    report = (noisy_run / "report.md").read_text()
    assert (
        f"- Training labels: 40% symmetric noise, seed 0 ({round(0.4 * 1348)} of 1348 "
        "training labels replaced by a label drawn uniformly from the other classes" in report
    )
    assert "--label-noise 0.4" in report and "WARNING" not in report
    table = report.split("## Label noise")[1].split("##")[0]
    rows = [
        line for line in table.splitlines() if line.startswith("| ") and "Optimizer" not in line
    ]
    assert [r.split("|")[1].strip() for r in rows] == [
        "SGD",
        "HG-PSO (tuned)",
        "HG-PSO (library defaults)",
    ]
    summary = json.loads((noisy_run / "summary.json").read_text())
    assert list(summary["label_noise"]["optimizers"]) == list(OPTS)
    runs = _runs(noisy_run)
    sgd = summary["label_noise"]["optimizers"]["sgd"]
    best = [
        max(c["eval_accuracy"] for c in runs[f"sgd-seed{s}-noise0.4-noiseseed0"]["curve"])
        for s in (0, 1)
    ]
    assert sgd["best_accuracy"][0] == pytest.approx(sum(best) / 2)
    assert sgd["drop_best_to_final"][0] == pytest.approx(
        sgd["best_accuracy"][0] - sgd["final_accuracy"][0]
    )


def test_clean_and_noisy_runs_never_reuse_each_other(noisy_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(noisy_run, out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    small = ["--dataset", "digits", "--optimizers", "sgd", "--seeds", "0", "--epochs", "1",
             "--evals-per-epoch", "2", "--threads", "1", "--no-progress", "--no-figures",
             "--out", str(out)]  # fmt: skip
    capsys.readouterr()
    assert main(small) == 0  # clean labels: the noisy sgd seed 0 run is not reused
    printed = capsys.readouterr().out
    assert "done sgd seed 0" in printed and "skip" not in printed
    clean = json.loads((out / "runs" / "sgd-seed0.json").read_text())
    assert "label_noise" not in clean["config"] and clean["label_noise"] is None
    assert "Training labels" not in (out / "report.md").read_text()
    # the noisy files are untouched, and a noisy rerun reuses them, not the clean one
    assert {k: v for k, v in before.items()} == {
        p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*-noise*.json")
    }
    assert main([*small, *NOISE]) == 0
    printed = capsys.readouterr().out
    assert "skip sgd seed 0: finished run found in" in printed
    assert "sgd-seed0-noise0.4-noiseseed0.json" in printed and "done" not in printed
    # another noise seed is another corruption: a new run with other labels
    assert main([*small, *NOISE, "--label-noise-seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "done sgd seed 0" in printed
    other = json.loads((out / "runs" / "sgd-seed0-noise0.4-noiseseed1.json").read_text())
    same = json.loads((out / "runs" / "sgd-seed0-noise0.4-noiseseed0.json").read_text())
    assert other["label_noise"]["noisy_labels_sha256"] != same["label_noise"]["noisy_labels_sha256"]
    assert other["config"]["label_noise"]["seed"] == 1


def test_bad_noise_fraction_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--dataset", "digits", "--label-noise", "1.0"])
    assert e.value.code == 2 and "fraction in [0, 1)" in capsys.readouterr().err
