"""The numbers of the training benchmark's report, computed from finished run records:
summary.json (per-optimizer means and spreads, the equal-budget and equal-time views, the
per-epoch accuracy, label noise, timing conditions) and runs.csv. No text, no figures."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from benchmarks.atomic import write_text
from benchmarks.metrics import format_cpus, mean_std, paired_difference, value_at_budget
from benchmarks.registry import OPTIMIZERS, optimizer_spec

# The paper's Tables 1-3 (iterations to a loss threshold, test accuracy %, final loss).
PAPER_CLAIMS: dict[str, dict[str, dict[str, float]]] = {
    "fashion-mnist": {
        "steps": {"sgd": 250, "adam": 180, "pso": 400, "hgpso": 150},
        "accuracy": {"sgd": 89.2, "adam": 91.4, "pso": 85.7, "hgpso": 93.5},
        "loss": {"sgd": 0.23, "adam": 0.18, "pso": 0.35, "hgpso": 0.14},
    },
    "svhn": {
        "steps": {"sgd": 300, "adam": 250, "pso": 550, "hgpso": 200},
        "accuracy": {"sgd": 91.0, "adam": 92.8, "pso": 88.4, "hgpso": 94.2},
        "loss": {"sgd": 0.19, "adam": 0.15, "pso": 0.28, "hgpso": 0.12},
    },
    "tiny-imagenet": {
        "steps": {"sgd": 500, "adam": 400, "pso": 800, "hgpso": 350},
        "accuracy": {"sgd": 62.5, "adam": 66.2, "pso": 58.1, "hgpso": 69.8},
        "loss": {"sgd": 1.02, "adam": 0.91, "pso": 1.30, "hgpso": 0.85},
    },
}


CSV_FIELDS = [
    "optimizer",
    "seed",
    "eval_split",
    "test_accuracy",
    "final_train_loss",
    "final_train_accuracy",
    "steps_to_threshold",
    "passes_to_threshold",
    "steps",
    "forward_passes",
    "backward_passes",
    "forward_backward_passes",
    "eval_forward_passes",
    "wall_seconds",
    "total_seconds",
    "peak_rss_mib",
    "peak_rss_growth_mib",
    "peak_cuda_allocated_mib",
    "stalled_at",
]


def ordered(runs: list[dict[str, Any]]) -> list[str]:
    present = {r["optimizer"] for r in runs}
    return [o for o in OPTIMIZERS if o in present]


def summarize(runs: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The summary.json document (shape fixed by issue 3, extra keys added beside)."""
    opts = ordered(runs)
    by_opt = {
        o: sorted((r for r in runs if r["optimizer"] == o), key=lambda r: r["seed"]) for o in opts
    }
    summary: dict[str, Any] = {
        "dataset": meta["dataset"],
        "epochs": meta["epochs"],
        "seeds": sorted({r["seed"] for r in runs}),
        "optimizers": {},
    }
    for o, rs in by_opt.items():
        acc_m, acc_s, _ = mean_std([r["test_accuracy"] for r in rs])
        stt_m, stt_s, reached = mean_std([r["steps_to_threshold"] for r in rs])
        ptt_m, _, _ = mean_std([r["passes_to_threshold"] for r in rs])
        loss_m, loss_s, _ = mean_std([r["final_train_loss"] for r in rs])
        wall_m, wall_s, _ = mean_std([r["wall_seconds"] for r in rs])
        fb_m, _, _ = mean_std([r["forward_backward_passes"] for r in rs])
        mem_m, _, _ = mean_std([r["memory"]["peak_rss_growth_mib"] for r in rs])
        cuda_m, _, _ = mean_std([r["memory"]["peak_cuda_allocated_mib"] for r in rs])
        summary["optimizers"][o] = {
            "test_accuracy_mean": acc_m,
            "test_accuracy_std": acc_s,
            "steps_to_threshold_mean": stt_m,
            "steps_to_threshold_std": stt_s,
            "steps_to_threshold_reached": f"{reached}/{len(rs)}",
            "passes_to_threshold_mean": ptt_m,
            "final_loss_mean": loss_m,
            "final_loss_std": loss_s,
            "forward_backward_passes": fb_m,
            "forward_passes": mean_std([r["forward_passes"] for r in rs])[0],
            "backward_passes": mean_std([r["backward_passes"] for r in rs])[0],
            "wall_seconds_mean": wall_m,
            "wall_seconds_std": wall_s,
            "peak_memory_growth_mib_mean": mem_m,
            "peak_cuda_allocated_mib_mean": cuda_m,
            "num_runs": len(rs),
            "hparams": rs[0]["hparams"],
        }
    summary["equal_budget"] = equal_budget(runs)
    summary["equal_time"] = equal_time(runs)
    summary["per_epoch_accuracy"] = per_epoch_accuracy(runs)
    noise = label_noise_table(runs)
    if noise is not None:
        summary["label_noise"] = noise
    paired = paired_comparison(runs, summary["equal_budget"], summary["equal_time"])
    if paired is not None:
        summary["paired"] = paired
    summary["timing"] = timing_conditions(runs)
    summary["threshold"] = meta.get("threshold")
    summary["eval_split"] = meta.get("eval_split", "test")
    return summary


def equal_budget(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Accuracy at an equal training budget of forward+backward passes.

    The reference budget is Adam's full run (else the cheapest optimizer's): every optimizer
    is credited with the accuracy of its last evaluation at or below that many passes, read
    from its logged curve (conservative, no interpolation). Also: the passes each optimizer
    needed to first reach the reference optimizer's final mean accuracy.
    """
    opts = ordered(runs)
    if not opts:
        return None
    totals = {
        o: mean_std([r["forward_backward_passes"] for r in runs if r["optimizer"] == o])[0]
        for o in opts
    }
    ref = "adam" if "adam" in opts else min(opts, key=lambda o: totals[o])
    budget = totals[ref]
    ref_acc = mean_std([r["test_accuracy"] for r in runs if r["optimizer"] == ref])[0]
    out: dict[str, Any] = {
        "reference": ref,
        "budget_passes": budget,
        "reference_accuracy": ref_acc,
        "accuracy_at_budget": {},
        "accuracy_at_budget_std": {},
        "passes_to_reference_accuracy": {},
    }
    for o in opts:
        rs = [r for r in runs if r["optimizer"] == o]
        accs = [
            value_at_budget([(c["passes"], c["eval_accuracy"]) for c in r["curve"]], budget)
            for r in rs
        ]
        m, s, n = mean_std(accs)
        out["accuracy_at_budget"][o] = m if n == len(rs) else None
        out["accuracy_at_budget_std"][o] = s if n == len(rs) else None
        first = []
        for r in rs:
            hit = next(
                (c["passes"] for c in r["curve"] if c["eval_accuracy"] >= (ref_acc or math.inf)),
                None,
            )
            first.append(hit)
        fm, _, fn = mean_std(first)
        out["passes_to_reference_accuracy"][o] = {"mean": fm, "reached": f"{fn}/{len(rs)}"}
    return out


def curve_seconds(run: dict[str, Any]) -> list[tuple[float, float]]:
    """``(training seconds, eval accuracy)`` at each evaluation of ``run``.

    Training seconds are the time spent inside optimizer steps up to that evaluation (the
    curve's ``train_seconds``). Run files written before that field existed only hold the
    total (``step_seconds``); their evaluations are placed at ``step_seconds * step / steps``,
    which assumes steps of equal cost (exact at the last evaluation).
    """
    out = []
    steps = max(1, int(run.get("steps") or 1))
    total = float(run.get("step_seconds") or run.get("wall_seconds") or 0.0)
    for c in run["curve"]:
        t = c.get("train_seconds")
        if t is None:
            t = total * float(c.get("step", steps)) / steps
        out.append((float(t), float(c["eval_accuracy"])))
    return out


def equal_time(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Accuracy at an equal training time: the longest training time of the reference's runs
    (Adam, else the optimizer with the shortest mean time), so that the reference is credited
    with its final accuracy on every seed; each optimizer is credited with its last evaluation
    at or before that time (conservative, as :func:`equal_budget`)."""
    opts = ordered(runs)
    if not opts:
        return None
    totals = {
        o: mean_std([curve_seconds(r)[-1][0] for r in runs if r["optimizer"] == o])[0] for o in opts
    }
    ref = "adam" if "adam" in opts else min(opts, key=lambda o: totals[o] or math.inf)
    budget = max(curve_seconds(r)[-1][0] for r in runs if r["optimizer"] == ref)
    out: dict[str, Any] = {
        "reference": ref,
        "budget_seconds": budget,
        "training_seconds_mean": totals,
        "accuracy_at_budget": {},
        "accuracy_at_budget_std": {},
    }
    for o in opts:
        rs = [r for r in runs if r["optimizer"] == o]
        accs = [value_at_budget(curve_seconds(r), budget) for r in rs]
        m, sd, n = mean_std(accs)
        out["accuracy_at_budget"][o] = m if n == len(rs) else None
        out["accuracy_at_budget_std"][o] = sd if n == len(rs) else None
    return out


def paired_comparison(
    runs: list[dict[str, Any]],
    budget: dict[str, Any] | None,
    timed: dict[str, Any] | None,
    reference: str = "adam",
) -> dict[str, Any] | None:
    """Every other optimizer against ``reference``, seed by seed (the same seed: the same
    initial weights and batches), in three views: final accuracy at equal epochs, accuracy at
    the equal-budget passes and at the equal-time seconds (the budgets of
    :func:`equal_budget` and :func:`equal_time`). Each view holds, per optimizer, the
    :func:`~benchmarks.metrics.paired_difference` of its accuracies minus the reference's,
    ``None`` where one of its paired seeds has no evaluation within the budget (it is credited with
    none in :func:`equal_budget` and :func:`equal_time` either). ``None`` without the reference
    or another optimizer."""
    opts = [o for o in ordered(runs) if o != reference]
    if reference not in ordered(runs) or not opts:
        return None

    def per_seed(o: str, value: Any) -> dict[int, float | None]:
        return {r["seed"]: value(r) for r in runs if r["optimizer"] == o}

    views: dict[str, Any] = {"epochs": lambda r: r["test_accuracy"]}
    if budget and budget["reference"] == reference:
        views["passes"] = lambda r: value_at_budget(
            [(c["passes"], c["eval_accuracy"]) for c in r["curve"]], budget["budget_passes"]
        )
    if timed and timed["reference"] == reference:
        views["seconds"] = lambda r: value_at_budget(curve_seconds(r), timed["budget_seconds"])
    out: dict[str, Any] = {"reference": reference, "views": {}}
    for view, value in views.items():
        ref = per_seed(reference, value)
        out["views"][view] = {}
        for o in opts:
            mine = per_seed(o, value)
            # a seed with no evaluation within the budget: no credit, as in the views above
            complete = all(v is not None for s, v in mine.items() if s in ref)
            out["views"][view][o] = paired_difference(mine, ref) if complete else None
    return out


def epoch_points(run: dict[str, Any]) -> list[tuple[float | None, float]]:
    """``(epoch, eval accuracy)`` of each evaluation (epoch ``None`` if not recorded)."""
    spe = max(1, int(run.get("steps_per_epoch") or 1))
    out: list[tuple[float | None, float]] = []
    for c in run["curve"]:
        e = c.get("epoch")
        if e is None and c.get("step") is not None:
            e = c["step"] / spe
        out.append((None if e is None else round(float(e), 4), c["eval_accuracy"]))
    return out


def per_epoch_accuracy(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Mean ± std over seeds of the eval accuracy at each evaluation point (by epoch) that
    every seed of the optimizer has."""
    out: dict[str, list[dict[str, Any]]] = {}
    for o in ordered(runs):
        rs = [r for r in runs if r["optimizer"] == o]
        per_run = [{e: a for e, a in epoch_points(r) if e is not None} for r in rs]
        common = sorted(set.intersection(*(set(d) for d in per_run)))
        rows = []
        for e in common:
            m, sd, n = mean_std([d[e] for d in per_run])
            rows.append({"epoch": e, "accuracy_mean": m, "accuracy_std": sd, "runs": n})
        out[o] = rows
    return out


def label_noise_table(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For label-noise runs: the noise, and per optimizer the final and best eval accuracy
    (eval labels are clean), the drop from best to final (fitting the noise shows as a drop)
    and how the final weights fit the corrupted training labels. ``None`` for clean runs."""
    noisy = [r for r in runs if r.get("label_noise")]
    if not noisy:
        return None
    settings = sorted(
        {
            (r["label_noise"]["kind"], r["label_noise"]["fraction"], r["label_noise"]["seed"])
            for r in noisy
        }
    )
    first = noisy[0]["label_noise"]
    out: dict[str, Any] = {
        "settings": [{"kind": k, "fraction": f, "seed": sd} for k, f, sd in settings],
        "corrupted": first.get("corrupted"),
        "train_size": first.get("train_size"),
        "noisy_labels_sha256": sorted({r["label_noise"].get("noisy_labels_sha256") for r in noisy}),
        "clean_runs_mixed_in": len(runs) - len(noisy),
        "optimizers": {},
    }
    for o in ordered(noisy):
        rs = [r for r in noisy if r["optimizer"] == o]
        best = [max(c["eval_accuracy"] for c in r["curve"]) for r in rs]
        final = [r["test_accuracy"] for r in rs]
        fits = [r["label_noise"].get("fit") or {} for r in rs]

        def fit(key: str, fits: list[dict[str, Any]] = fits) -> tuple[float | None, float | None]:
            return mean_std([f.get(key) for f in fits])[:2]

        row: dict[str, Any] = {
            "final_accuracy": mean_std(final)[:2],
            "best_accuracy": mean_std(best)[:2],
            "drop_best_to_final": mean_std([b - f for b, f in zip(best, final, strict=True)])[:2],
            "train_accuracy_noisy_labels": fit("accuracy_noisy_labels"),
            "train_accuracy_clean_labels": fit("accuracy_clean_labels"),
            "memorized": fit("memorized"),
            "corrected": fit("corrected"),
            "num_runs": len(rs),
        }
        out["optimizers"][o] = row
    return out


def timing_conditions(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """How the runs' times were taken, from their ``machine`` records (absent in older files)."""
    recorded = [r["machine"] for r in runs if isinstance(r.get("machine"), dict)]
    threads = sorted({m.get("torch_threads") for m in recorded if m.get("torch_threads")})
    affinities = sorted(
        {
            format_cpus(m[k])
            for m in recorded
            for k in ("cpu_affinity_start", "cpu_affinity_end")
            if m.get(k)
        }
    )
    loads = [
        m[k]
        for m in recorded
        for k in ("loadavg_1min_start", "loadavg_1min_end")
        if isinstance(m.get(k), (int, float))
    ]
    return {
        "runs_recorded": len(recorded),
        "runs": len(runs),
        "torch_threads": threads,
        "cpu_affinity": affinities,
        "loadavg_1min_min": min(loads) if loads else None,
        "loadavg_1min_max": max(loads) if loads else None,
    }


def write_csv(runs: list[dict[str, Any]], path: Path) -> None:
    fh = io.StringIO(newline="")
    w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in sorted(runs, key=lambda r: (OPTIMIZERS.index(r["optimizer"]), r["seed"])):
        row = {k: r.get(k) for k in CSV_FIELDS}
        row.update({k: r["memory"].get(k) for k in CSV_FIELDS if k in r["memory"]})
        w.writerow(row)
    write_text(path, fh.getvalue())


def paper_claim(dataset: str, table: str, o: str) -> float | None:
    return PAPER_CLAIMS.get(dataset, {}).get(table, {}).get(optimizer_spec(o).paper_row or o)
