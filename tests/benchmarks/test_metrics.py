"""Metric computations against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.metrics import (
    PeakMemory,
    accuracy,
    mean_std,
    steps_to_threshold,
    trailing_mean,
    value_at_budget,
)
from benchmarks.registry import passes_per_step
from benchmarks.report import equal_budget, summarize


def test_trailing_mean_by_hand():
    assert trailing_mean([4.0, 2.0, 6.0, 0.0], 2) == [4.0, 3.0, 4.0, 3.0]
    assert trailing_mean([1.0, 2.0, 3.0], 1) == [1.0, 2.0, 3.0]
    assert trailing_mean([3.0, 3.0, 6.0], 5) == [3.0, 3.0, 4.0]
    with pytest.raises(ValueError):
        trailing_mean([1.0], 0)


def test_steps_to_threshold_by_hand():
    losses = [2.0, 1.0, 0.4, 0.6, 0.2, 0.1]
    # window 1: first loss <= 0.5 is step 3
    assert steps_to_threshold(losses, 0.5, window=1) == 3
    # window 2: means of full windows: 1.5, 0.7, 0.5, 0.4, 0.15 -> first <= 0.5 at step 4
    assert steps_to_threshold(losses, 0.5, window=2) == 4
    # window 3: 1.133, 0.667, 0.4 -> step 5
    assert steps_to_threshold(losses, 0.5, window=3) == 5
    # one lucky batch inside the first (partial) window does not count
    assert steps_to_threshold([0.1, 3.0, 3.0], 0.5, window=2) is None
    assert steps_to_threshold(losses, 0.01, window=1) is None
    assert steps_to_threshold([], 1.0) is None


def test_mean_std_sample_std_and_missing_values():
    m, s, n = mean_std([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3)
    assert s == pytest.approx(1.0)  # sqrt(((1)^2 + 0 + 1) / 2)
    m, s, n = mean_std([0.9, None, 0.7, float("nan")])
    assert m == pytest.approx(0.8) and n == 2
    assert s == pytest.approx(math.sqrt(0.02))
    assert mean_std([5.0]) == (5.0, 0.0, 1)
    assert mean_std([None]) == (None, None, 0)


def test_value_at_budget_is_last_point_within_budget():
    curve = [(100, 0.5), (300, 0.7), (200, 0.6), (400, 0.9)]
    assert value_at_budget(curve, 250) == 0.6
    assert value_at_budget(curve, 300) == 0.7
    assert value_at_budget(curve, 99) is None
    assert value_at_budget(curve, 10_000) == 0.9


def test_passes_per_step():
    assert passes_per_step("sgd") == (1, 1)
    assert passes_per_step("adam", {"num_particles": 8}) == (1, 1)
    for one in ("adamw", "swa", "lookahead"):
        assert passes_per_step(one, {"lr": 0.1}) == (1, 1)
    for swarm in ("hgpso", "hgpso-default", "hgpso-adam"):
        assert passes_per_step(swarm, {"num_particles": 8}) == (8, 8)
    assert passes_per_step("pso", {"num_particles": 16}) == (16, 0)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        passes_per_step("lbfgs")


def test_accuracy_counts_argmax_hits():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.2, 0.1]])
    targets = torch.tensor([0, 1, 1, 1])
    assert accuracy(logits, targets) == (2, 4)


def test_peak_memory_sees_an_allocation():
    with PeakMemory("cpu", interval=0.005) as mem:
        block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
        block.add_(1.0)
        import time

        time.sleep(0.05)
        del block
    d = mem.as_dict()
    assert d["peak_rss_growth_mib"] >= 48
    assert d["peak_cuda_allocated_mib"] is None


def _run(opt, seed, acc, passes_per_step_, steps, curve, stt, loss):
    fb = passes_per_step_ * steps
    return {
        "optimizer": opt,
        "seed": seed,
        "test_accuracy": acc,
        "final_train_loss": loss,
        "steps_to_threshold": stt,
        "passes_to_threshold": None if stt is None else stt * passes_per_step_,
        "steps": steps,
        "forward_passes": fb // 2,
        "backward_passes": fb // 2,
        "forward_backward_passes": fb,
        "wall_seconds": 1.0 + seed,
        "memory": {"peak_rss_growth_mib": 10.0, "peak_cuda_allocated_mib": None},
        "hparams": {},
        "curve": [{"passes": p, "eval_accuracy": a} for p, a in curve],
        "losses": [1.0] * steps,
    }


def test_summary_and_equal_budget_by_hand():
    runs = [
        # Adam: 100 steps x 2 passes = 200 passes, final accuracies 0.80 / 0.84
        _run("adam", 0, 0.80, 2, 100, [(100, 0.70), (200, 0.80)], 50, 0.30),
        _run("adam", 1, 0.84, 2, 100, [(100, 0.72), (200, 0.84)], 70, 0.20),
        # HG-PSO with 4 particles: 8 passes per step, 800 passes
        _run("hgpso", 0, 0.86, 8, 100, [(160, 0.60), (400, 0.83), (800, 0.86)], 30, 0.10),
        _run("hgpso", 1, 0.88, 8, 100, [(240, 0.65), (400, 0.81), (800, 0.88)], None, 0.14),
    ]
    s = summarize(runs, {"dataset": "digits", "epochs": 1, "threshold": 0.5})
    assert list(s)[:4] == ["dataset", "epochs", "seeds", "optimizers"]
    assert s["seeds"] == [0, 1]
    a, h = s["optimizers"]["adam"], s["optimizers"]["hgpso"]
    assert a["test_accuracy_mean"] == pytest.approx(0.82)
    assert a["test_accuracy_std"] == pytest.approx(math.sqrt(2 * 0.02**2))
    assert a["steps_to_threshold_mean"] == 60 and a["steps_to_threshold_reached"] == "2/2"
    assert h["steps_to_threshold_mean"] == 30 and h["steps_to_threshold_reached"] == "1/2"
    assert h["final_loss_mean"] == pytest.approx(0.12)
    assert h["forward_backward_passes"] == 800 and a["forward_backward_passes"] == 200
    assert a["wall_seconds_mean"] == 1.5
    eb = equal_budget(runs)
    assert eb["reference"] == "adam" and eb["budget_passes"] == 200
    # at 200 passes HG-PSO seed 0 had reached 0.60 (160 passes), seed 1 nothing (first eval at 240)
    assert eb["accuracy_at_budget"]["hgpso"] is None
    assert eb["accuracy_at_budget"]["adam"] == pytest.approx(0.82)
    # Adam's final mean accuracy 0.82: HG-PSO seed 0 first >= 0.82 at 400, seed 1 at 800
    assert eb["passes_to_reference_accuracy"]["hgpso"] == {"mean": 600, "reached": "2/2"}
    assert eb["passes_to_reference_accuracy"]["adam"] == {"mean": 200, "reached": "1/2"}


def test_paired_difference_by_hand():
    from benchmarks.metrics import paired_difference

    # seeds 0..2 pair up (3 has no partner, 4 is not finite): differences 0.02, 0.04, 0.06
    a = {0: 0.92, 1: 0.94, 2: 0.96, 3: 0.5, 4: float("nan")}
    b = {0: 0.90, 1: 0.90, 2: 0.90, 4: 0.9}
    p = paired_difference(a, b)
    assert p["seeds"] == [0, 1, 2]
    assert p["differences"] == pytest.approx([0.02, 0.04, 0.06])
    assert p["mean_difference"] == pytest.approx(0.04)
    # sample std of (0.02, 0.04, 0.06) = 0.02, SE = 0.02 / sqrt(3) = 0.011547 < 0.04 / 2
    assert p["standard_error"] == pytest.approx(0.02 / math.sqrt(3))
    assert p["beyond_2se"] is True
    noisy = paired_difference({0: 0.95, 1: 0.85}, {0: 0.9, 1: 0.88})  # +0.05, -0.03
    assert noisy["mean_difference"] == pytest.approx(0.01)
    assert noisy["standard_error"] == pytest.approx(0.04) and noisy["beyond_2se"] is False
    one = paired_difference({0: 0.9}, {0: 0.8})
    assert one["standard_error"] is None and one["beyond_2se"] is False
    assert paired_difference({0: 0.9}, {1: 0.8}) is None
