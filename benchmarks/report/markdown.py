"""report.md: the training benchmark's summary as markdown tables (what the numbers are is
:mod:`benchmarks.report.tables`)."""

from __future__ import annotations

from typing import Any

from benchmarks.registry import label
from benchmarks.report.tables import paper_claim


def _fmt(m: float | None, s: float | None = None, digits: int = 2, scale: float = 1.0) -> str:
    if m is None:
        return "n/a"
    if s is None:
        return f"{m * scale:.{digits}f}"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def _paper(dataset: str, table: str, o: str) -> str:
    v = paper_claim(dataset, table, o)
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


_PAIRED_VIEWS = {
    "epochs": "equal epochs (final)",
    "passes": "equal passes",
    "seconds": "equal seconds",
}


def _paired_cell(p: dict[str, Any] | None) -> str:
    if p is None:
        return "n/a"
    text = f"{100 * p['mean_difference']:+.2f}"
    if p["standard_error"] is not None:
        text += f" ± {100 * p['standard_error']:.2f}" + (" (> 2 SE)" if p["beyond_2se"] else "")
    return text + f" [{len(p['seeds'])}]"


def _paired_lines(paired: dict[str, Any] | None, split: str) -> list[str]:
    if not paired:
        return []
    ref, views = label(paired["reference"]), paired["views"]
    opts = list(next(iter(views.values())))
    lines = [
        "",
        f"## Paired per-seed comparison with {ref}",
        "",
        f"{split.capitalize()} accuracy minus {ref}'s on the same seed (same initial weights "
        "and batches), in points: mean difference ± its standard error (sample std of the "
        "differences / sqrt(pairs)), (> 2 SE) where the mean is more than two standard "
        "errors from zero, [pairs]. Equal passes and equal seconds read each run's curve at "
        "the budgets of the two sections above.",
        "",
        "| Optimizer | " + " | ".join(_PAIRED_VIEWS[v] for v in views) + " |",
        "|---" * (len(views) + 1) + "|",
    ]
    for o in opts:
        cells = [_paired_cell(views[v][o]) for v in views]
        lines.append(f"| {label(o)} | " + " | ".join(cells) + " |")
    return lines


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
    lines += _paired_lines(summary.get("paired"), split)
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
