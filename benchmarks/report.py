"""Aggregation of finished runs into summary.json, runs.csv, report.md and PNG figures."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from benchmarks.atomic import write_json, write_text
from benchmarks.metrics import format_cpus, mean_std, trailing_mean, value_at_budget
from benchmarks.registry import OPTIMIZERS, color, label, optimizer_spec

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


def _ordered(runs: list[dict[str, Any]]) -> list[str]:
    present = {r["optimizer"] for r in runs}
    return [o for o in OPTIMIZERS if o in present]


def summarize(runs: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The summary.json document (shape fixed by issue 3, extra keys added beside)."""
    opts = _ordered(runs)
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
    opts = _ordered(runs)
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
    opts = _ordered(runs)
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


def _epoch_points(run: dict[str, Any]) -> list[tuple[float | None, float]]:
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
    for o in _ordered(runs):
        rs = [r for r in runs if r["optimizer"] == o]
        per_run = [{e: a for e, a in _epoch_points(r) if e is not None} for r in rs]
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
    for o in _ordered(noisy):
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


def _fmt(m: float | None, s: float | None = None, digits: int = 2, scale: float = 1.0) -> str:
    if m is None:
        return "n/a"
    if s is None:
        return f"{m * scale:.{digits}f}"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def _claim(dataset: str, table: str, o: str) -> float | None:
    return PAPER_CLAIMS.get(dataset, {}).get(table, {}).get(optimizer_spec(o).paper_row or o)


def _paper(dataset: str, table: str, o: str) -> str:
    v = _claim(dataset, table, o)
    if v is None:
        return "n/a"
    return f"{v:g}%" if table == "accuracy" else f"{v:g}"


def _command_lines(meta: dict[str, Any]) -> list[str]:
    commands = meta.get("run_commands") or [meta.get("command", "")]
    if len(commands) == 1:
        return [f"- Command: `{commands[0]}`"]
    return ["- Commands that produced the runs:", *(f"  - `{c}`" for c in commands)]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:g}%"


def _noise_lines(summary: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    ln = summary.get("label_noise")
    if not ln:
        return []
    lines = []
    for st in ln["settings"]:
        text = f"- Training labels: {_pct(st['fraction'])} {st['kind']} noise, seed {st['seed']}"
        if ln.get("corrupted") is not None and len(ln["settings"]) == 1:
            text += (
                f" ({ln['corrupted']} of {ln['train_size']} training labels replaced by a label "
                "drawn uniformly from the other classes, the same for every optimizer and seed)"
            )
        lines.append(text + f"; the {summary.get('eval_split', 'test')} set is clean")
    if len(ln.get("noisy_labels_sha256", [])) > 1:
        lines.append("- WARNING: the runs were trained on different corrupted label sets")
    if ln.get("clean_runs_mixed_in"):
        lines.append(f"- WARNING: {ln['clean_runs_mixed_in']} run(s) here had clean labels")
    return lines


def _timing_line(summary: dict[str, Any]) -> str:
    t = summary.get("timing") or {}
    text = (
        "- Times: wall seconds = time in `Trainer.fit` minus evaluation, training seconds "
        "(equal-time view) = time inside optimizer steps; the runs of one invocation run one "
        "at a time in one process"
    )
    if not t.get("runs_recorded"):
        return text + "; thread count, CPU affinity and load were not recorded in these run files"
    text += f", torch threads {', '.join(str(x) for x in t['torch_threads']) or 'n/a'}"
    if t["cpu_affinity"]:
        text += f", CPU affinity {' / '.join(t['cpu_affinity'])}"
    if t["loadavg_1min_min"] is not None:
        text += (
            f", 1-minute load average {t['loadavg_1min_min']:.2f} to {t['loadavg_1min_max']:.2f} "
            "at the runs' starts and ends"
        )
    if t["runs_recorded"] < t["runs"]:
        text += f" (recorded for {t['runs_recorded']} of {t['runs']} runs)"
    return text


def render_markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    ds = summary["dataset"]
    opts = summary["optimizers"]
    split = summary.get("eval_split", "test")
    acc_name = "Test accuracy" if split == "test" else "Held-out accuracy"
    lines = [
        f"# Training benchmark: {ds}",
        "",
        *_command_lines(meta),
        f"- Date: {meta.get('date', '')}",
        f"- Hardware: {meta.get('hardware', '')}",
        f"- Software: {meta.get('software', '')}",
        f"- Model: {meta.get('model', '')} ({meta.get('num_parameters', '?')} parameters)",
        f"- Data: {meta.get('train_size', '?')} training / {meta.get('eval_size', '?')} "
        f"{split} examples, batch size {meta.get('batch_size')}, {summary['epochs']} epoch(s), "
        f"seeds {summary['seeds']}",
        f"- Loss threshold (Table 1): trailing {meta.get('window')}-step mean training loss "
        f"<= {meta.get('threshold')}",
        *_noise_lines(summary, meta),
        _timing_line(summary),
        "",
        "Measured values are mean ± sample std over seeds. The paper's values are its claims "
        "(its Tables 1-3); the paper gives neither its models, epochs nor threshold, so only "
        "the ordering and rough size are comparable.",
        "",
        "## Table 1: steps to the training-loss threshold",
        "",
        "| Optimizer | Steps (measured) | Reached | Forward+backward passes to threshold "
        "| Paper (iterations) |",
        "|---|---|---|---|---|",
    ]
    for o, v in opts.items():
        lines.append(
            f"| {label(o)} | {_fmt(v['steps_to_threshold_mean'], v['steps_to_threshold_std'], 0)}"
            f" | {v['steps_to_threshold_reached']} | {_fmt(v['passes_to_threshold_mean'], None, 0)}"
            f" | {_paper(ds, 'steps', o)} |"
        )
    lines += [
        "",
        f"## Table 2: {acc_name.lower()} (%)",
        "",
        f"| Optimizer | {acc_name} (measured) | Paper |",
        "|---|---|---|",
    ]
    for o, v in opts.items():
        lines.append(
            f"| {label(o)} | {_fmt(v['test_accuracy_mean'], v['test_accuracy_std'], 2, 100)}"
            f" | {_paper(ds, 'accuracy', o)} |"
        )
    lines += [
        "",
        "## Table 3: final training loss",
        "",
        "Mean cross-entropy of the final weights (eval mode) over "
        + (
            f"a fixed subset of {meta['final_loss_examples']} training examples."
            if meta.get("final_loss_examples")
            and meta["final_loss_examples"] < (meta.get("train_size") or 0)
            else "the whole training split."
        ),
        "",
        "| Optimizer | Final loss (measured) | Paper |",
        "|---|---|---|",
    ]
    for o, v in opts.items():
        lines.append(
            f"| {label(o)} | {_fmt(v['final_loss_mean'], v['final_loss_std'], 4)}"
            f" | {_paper(ds, 'loss', o)} |"
        )
    lines += [
        "",
        "## Compute",
        "",
        "Passes are mini-batch forward and backward passes of training (an N-particle swarm "
        "step costs N of each; PSO needs no backward). Wall seconds: training only "
        "(evaluation excluded). Memory: peak RSS growth during the run (CPU) or peak CUDA "
        "allocation.",
        "",
        "| Optimizer | Hyperparameters | Forward passes | Backward passes | Wall seconds "
        "| Peak memory (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for o, v in opts.items():
        hp = ", ".join(f"{k}={val}" for k, val in v["hparams"].items())
        mem = v["peak_cuda_allocated_mib_mean"] or v["peak_memory_growth_mib_mean"]
        lines.append(
            f"| {label(o)} | {hp} | {_fmt(v['forward_passes'], None, 0)} | "
            f"{_fmt(v['backward_passes'], None, 0)} | "
            f"{_fmt(v['wall_seconds_mean'], v['wall_seconds_std'], 1)} | {_fmt(mem, None, 1)} |"
        )
    eb = summary.get("equal_budget")
    if eb:
        ref = label(eb["reference"])
        lines += [
            "",
            "## Equal compute budget",
            "",
            f"Budget: {ref}'s full run, {eb['budget_passes']:.0f} forward+backward passes. "
            f"Each optimizer's {split} accuracy at its last evaluation within that budget "
            f"(from its logged curve), and the passes it needed to first reach {ref}'s final "
            f"accuracy ({_fmt(eb['reference_accuracy'], None, 2, 100)}%).",
            "",
            f"| Optimizer | Accuracy at {ref}'s budget (%) | Passes to {ref}'s accuracy "
            "| Reached |",
            "|---|---|---|---|",
        ]
        for o in opts:
            p = eb["passes_to_reference_accuracy"][o]
            lines.append(
                f"| {label(o)} | "
                f"{_fmt(eb['accuracy_at_budget'][o], eb['accuracy_at_budget_std'][o], 2, 100)}"
                f" | {_fmt(p['mean'], None, 0)} | {p['reached']} |"
            )
    et = summary.get("equal_time")
    if et:
        ref = label(et["reference"])
        lines += [
            "",
            "## Equal training time",
            "",
            f"Time budget: the longest of {ref}'s runs, {et['budget_seconds']:.1f} s inside "
            f"optimizer steps. Each optimizer's {split} accuracy at its last evaluation within "
            "that time (from its logged curve). Only comparable when every run was timed the "
            "same way (see Times above).",
            "",
            f"| Optimizer | Training seconds (full run, mean) | Accuracy at {ref}'s time (%) |",
            "|---|---|---|",
        ]
        for o in opts:
            lines.append(
                f"| {label(o)} | {_fmt(et['training_seconds_mean'][o], None, 1)} | "
                f"{_fmt(et['accuracy_at_budget'][o], et['accuracy_at_budget_std'][o], 2, 100)} |"
            )
    pe = summary.get("per_epoch_accuracy") or {}
    epochs = sorted({row["epoch"] for rows in pe.values() for row in rows})
    if pe and 1 < len(epochs) <= 40:
        lines += [
            "",
            f"## {acc_name} after each evaluation (%)",
            "",
            "| Epoch | " + " | ".join(label(o) for o in pe) + " |",
            "|---" * (len(pe) + 1) + "|",
        ]
        for e in epochs:
            cells = []
            for o in pe:
                row = next((r for r in pe[o] if r["epoch"] == e), None)
                cells.append(
                    "n/a"
                    if row is None
                    else _fmt(row["accuracy_mean"], row["accuracy_std"], 2, 100)
                )
            lines.append(f"| {e:g} | " + " | ".join(cells) + " |")
    ln = summary.get("label_noise")
    if ln:
        lines += [
            "",
            "## Label noise",
            "",
            f"Trained on corrupted labels, evaluated on the clean {split} set. Best: the highest "
            f"{split} accuracy at any evaluation; drop: best minus final (fitting the wrong labels "
            "shows as a drop). On the training subset of Table 3: accuracy against the noisy "
            "labels trained on and against the true labels; on its corrupted examples, the share "
            "predicted as the wrong label taught (memorized) and as the true label (corrected).",
            "",
            "| Optimizer | Final (%) | Best (%) | Drop (points) | Train acc., noisy labels (%) "
            "| Train acc., true labels (%) | Memorized (%) | Corrected (%) | Paper (clean, %) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for o, v in ln["optimizers"].items():
            cells = [
                _fmt(*v[k], 2, 100)
                for k in (
                    "final_accuracy",
                    "best_accuracy",
                    "drop_best_to_final",
                    "train_accuracy_noisy_labels",
                    "train_accuracy_clean_labels",
                    "memorized",
                    "corrected",
                )
            ]
            lines.append(
                f"| {label(o)} | " + " | ".join(cells) + f" | {_paper(ds, 'accuracy', o)} |"
            )
    lines += [
        "",
        "## Figures",
        "",
        "![Training loss vs step and vs passes](figures/loss_vs_step.png)",
        "",
        "![Accuracy comparison](figures/accuracy.png)",
        "",
        "![Final loss distribution](figures/final_loss_box.png)",
        "",
        "![Accuracy vs compute](figures/accuracy_vs_passes.png)",
        "",
        "![Accuracy per epoch](figures/accuracy_vs_epoch.png)",
        "",
        "![Accuracy vs training time](figures/accuracy_vs_seconds.png)",
        "",
    ]
    if meta.get("notes"):
        lines += ["## Notes", "", meta["notes"], ""]
    return "\n".join(lines)


def plot_figures(runs: list[dict[str, Any]], summary: dict[str, Any], fig_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    opts = _ordered(runs)
    ds = summary["dataset"]

    # Fig. 2: training loss vs step and vs forward+backward passes (mean over seeds, smoothed)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for o in opts:
        rs = [r for r in runs if r["optimizer"] == o]
        n = min(len(r["losses"]) for r in rs)
        if n == 0:
            continue
        mean = [sum(r["losses"][t] for r in rs) / len(rs) for t in range(n)]
        window = max(1, n // 50)
        smooth = trailing_mean(mean, window)
        steps = list(range(1, n + 1))
        per = rs[0]["forward_backward_passes"] / max(1, rs[0]["steps"])
        axes[0].plot(steps, smooth, label=label(o), color=color(o))
        axes[1].plot([s * per for s in steps], smooth, label=label(o), color=color(o))
    thr = summary.get("threshold")
    for ax, xl in zip(axes, ("optimizer step", "forward+backward passes"), strict=True):
        if thr is not None:
            ax.axhline(thr, color="gray", ls="--", lw=1, label=f"threshold {thr}")
        ax.set_xlabel(xl)
        ax.set_ylabel("training loss (trailing mean)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title(f"{ds}: training loss vs step")
    axes[1].set_title(f"{ds}: training loss vs compute")
    fig.tight_layout()
    fig.savefig(fig_dir / "loss_vs_step.png", dpi=110)
    plt.close(fig)

    # Fig. 3: accuracy comparison, measured (mean ± std, seeds as dots) vs paper claims
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = range(len(opts))
    for i, o in enumerate(opts):
        v = summary["optimizers"][o]
        m, s = (v["test_accuracy_mean"] or 0) * 100, (v["test_accuracy_std"] or 0) * 100
        ax.bar(i - 0.18, m, 0.36, yerr=s, color=color(o), capsize=4, label=None)
        ax.text(i - 0.18, m + s + 0.5, f"{m:.1f}", ha="center", fontsize=8)
        seeds = [r["test_accuracy"] * 100 for r in runs if r["optimizer"] == o]
        ax.scatter([i - 0.18] * len(seeds), seeds, color="black", s=10, zorder=3)
        claim = _claim(ds, "accuracy", o)
        if claim is not None:
            ax.bar(i + 0.18, claim, 0.36, color=color(o), alpha=0.35, hatch="//")
            ax.text(i + 0.18, claim + 0.5, f"{claim:.1f}", ha="center", fontsize=8)
    ax.set_xticks(list(xs), [label(o) for o in opts])
    ax.set_ylabel(f"{summary.get('eval_split', 'test')} accuracy (%)")
    ax.set_title(f"{ds}: measured (solid, dots = seeds) vs paper claim (hatched)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(fig_dir / "accuracy.png", dpi=110)
    plt.close(fig)

    # Fig. 4: final-loss distribution: per-step training losses of the last 10% of steps,
    # pooled over seeds (box), and each seed's final full-training-set loss (dots)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    data = []
    for o in opts:
        pooled = []
        for r in runs:
            if r["optimizer"] == o:
                k = max(1, len(r["losses"]) // 10)
                pooled += [v for v in r["losses"][-k:] if math.isfinite(v)]
        data.append(pooled or [float("nan")])
    bp = ax.boxplot(data, patch_artist=True, showfliers=False)
    ax.set_xticks(range(1, len(opts) + 1), [label(o) for o in opts])
    for patch, o in zip(bp["boxes"], opts, strict=True):
        patch.set_facecolor(color(o))
        patch.set_alpha(0.5)
    for i, o in enumerate(opts, start=1):
        finals = [r["final_train_loss"] for r in runs if r["optimizer"] == o]
        ax.scatter([i] * len(finals), finals, color="black", marker="D", s=18, zorder=3)
    ax.set_ylabel("training loss")
    ax.set_title(f"{ds}: last-10% mini-batch losses (box), final training loss per seed (◆)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(fig_dir / "final_loss_box.png", dpi=110)
    plt.close(fig)

    # accuracy vs compute (equal-budget view)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for o in opts:
        for j, r in enumerate(r for r in runs if r["optimizer"] == o):
            pts = [(c["passes"], c["eval_accuracy"] * 100) for c in r["curve"]]
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    marker="o",
                    ms=3,
                    color=color(o),
                    alpha=0.8,
                    label=label(o) if j == 0 else None,
                )
    eb = summary.get("equal_budget")
    if eb:
        ax.axvline(
            eb["budget_passes"],
            color="gray",
            ls="--",
            lw=1,
            label=f"{label(eb['reference'])} budget",
        )
    ax.set_xscale("log")
    ax.set_xlabel("training forward+backward passes")
    ax.set_ylabel(f"{summary.get('eval_split', 'test')} accuracy (%)")
    ax.set_title(f"{ds}: accuracy vs compute")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(fig_dir / "accuracy_vs_passes.png", dpi=110)
    plt.close(fig)

    split = summary.get("eval_split", "test")
    # accuracy per epoch: each seed thin, the mean over seeds thick
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finals: dict[str, float] = {}
    ys: dict[str, list[float]] = {}
    for o in opts:
        for r in (r for r in runs if r["optimizer"] == o):
            pts = [(e, a * 100) for e, a in _epoch_points(r) if e is not None]
            if not pts:
                continue
            ys.setdefault(o, []).extend(a for _, a in pts)
            ax.plot(*zip(*pts, strict=True), color=color(o), alpha=0.3, lw=1)
        rows = summary.get("per_epoch_accuracy", {}).get(o) or []
        if rows:
            finals[o] = rows[-1]["accuracy_mean"] * 100
            ax.plot(
                [row["epoch"] for row in rows],
                [row["accuracy_mean"] * 100 for row in rows],
                marker="o",
                ms=4,
                lw=2,
                color=color(o),
                label=f"{label(o)} (mean of {rows[-1]['runs']})",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_title(f"{ds}: {split} accuracy per epoch (thin: seeds)")
    _zoom_past_outliers(ax, finals, ys)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(fig_dir / "accuracy_vs_epoch.png", dpi=110)
    plt.close(fig)

    # accuracy vs training seconds (equal-time view)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ys = {}
    for o in opts:
        for j, r in enumerate(r for r in runs if r["optimizer"] == o):
            pts = [(t, a * 100) for t, a in curve_seconds(r)]
            ys.setdefault(o, []).extend(a for _, a in pts)
            ax.plot(
                *zip(*pts, strict=True),
                marker="o",
                ms=3,
                color=color(o),
                alpha=0.8,
                label=label(o) if j == 0 else None,
            )
    et = summary.get("equal_time")
    if et:
        ax.axvline(
            et["budget_seconds"],
            color="gray",
            ls="--",
            lw=1,
            label=f"{label(et['reference'])} time",
        )
    ax.set_xscale("log")
    ax.set_xlabel("training seconds (inside optimizer steps)")
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_title(f"{ds}: accuracy vs training time")
    _zoom_past_outliers(ax, finals, ys)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(fig_dir / "accuracy_vs_seconds.png", dpi=110)
    plt.close(fig)


def _zoom_past_outliers(ax: Any, finals: dict[str, float], ys: dict[str, list[float]]) -> None:
    """Let the y axis show the optimizers that train: one that ends more than 20 points
    below the best (PSO on a CNN) would squeeze the others into a flat line; it is named
    in a note instead."""
    if not finals:
        return
    best = max(finals.values())
    left_out = [o for o, a in finals.items() if a < best - 20]
    shown = [y for o, v in ys.items() if o not in left_out for y in v]
    if not left_out or not shown:
        return
    ax.set_ylim(min(shown) - 1, max(shown) + 0.5)
    note = "; ".join(f"{label(o)} ends at {finals[o]:.1f}%, below the axis" for o in left_out)
    ax.text(0.01, 0.01, note, transform=ax.transAxes, fontsize=8, color="gray", va="bottom")


def write_outputs(
    runs: list[dict[str, Any]], meta: dict[str, Any], out: Path, figures: bool = True
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    finished = sorted(r["finished_at"] for r in runs if r.get("finished_at"))
    if finished:
        meta = {
            **meta,
            "date": f"runs finished {finished[0]} to {finished[-1]}; "
            f"last invocation started {meta.get('date', '')}",
        }
    # each run keeps the command that produced it (a skipped run keeps its own)
    commands = sorted({str(r["command"]) for r in runs if r.get("command")})
    meta = {**meta, "run_commands": commands or [meta.get("command", "")]}
    summary = summarize(runs, meta)
    write_json(out / "summary.json", summary, indent=2)
    write_csv(runs, out / "runs.csv")
    write_text(out / "report.md", render_markdown(summary, meta))
    if figures:
        plot_figures(runs, summary, out / "figures")
    return summary
