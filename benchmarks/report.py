"""Aggregation of finished runs into summary.json, runs.csv, report.md and PNG figures."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from benchmarks.metrics import OPTIMIZERS, mean_std, trailing_mean, value_at_budget

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
LABELS = {"sgd": "SGD", "adam": "Adam", "pso": "PSO", "hgpso": "HG-PSO"}
COLORS = {"sgd": "tab:blue", "adam": "tab:orange", "pso": "tab:green", "hgpso": "tab:red"}

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


def write_csv(runs: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in sorted(runs, key=lambda r: (OPTIMIZERS.index(r["optimizer"]), r["seed"])):
            row = {k: r.get(k) for k in CSV_FIELDS}
            row.update({k: r["memory"].get(k) for k in CSV_FIELDS if k in r["memory"]})
            w.writerow(row)


def _fmt(m: float | None, s: float | None = None, digits: int = 2, scale: float = 1.0) -> str:
    if m is None:
        return "n/a"
    if s is None:
        return f"{m * scale:.{digits}f}"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def _paper(dataset: str, table: str, o: str) -> str:
    v = PAPER_CLAIMS.get(dataset, {}).get(table, {}).get(o)
    if v is None:
        return "n/a"
    return f"{v:g}%" if table == "accuracy" else f"{v:g}"


def _command_lines(meta: dict[str, Any]) -> list[str]:
    commands = meta.get("run_commands") or [meta.get("command", "")]
    if len(commands) == 1:
        return [f"- Command: `{commands[0]}`"]
    return ["- Commands that produced the runs:", *(f"  - `{c}`" for c in commands)]


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
            f"| {LABELS[o]} | {_fmt(v['steps_to_threshold_mean'], v['steps_to_threshold_std'], 0)}"
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
            f"| {LABELS[o]} | {_fmt(v['test_accuracy_mean'], v['test_accuracy_std'], 2, 100)}"
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
            f"| {LABELS[o]} | {_fmt(v['final_loss_mean'], v['final_loss_std'], 4)}"
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
            f"| {LABELS[o]} | {hp} | {_fmt(v['forward_passes'], None, 0)} | "
            f"{_fmt(v['backward_passes'], None, 0)} | "
            f"{_fmt(v['wall_seconds_mean'], v['wall_seconds_std'], 1)} | {_fmt(mem, None, 1)} |"
        )
    eb = summary.get("equal_budget")
    if eb:
        ref = LABELS[eb["reference"]]
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
                f"| {LABELS[o]} | "
                f"{_fmt(eb['accuracy_at_budget'][o], eb['accuracy_at_budget_std'][o], 2, 100)}"
                f" | {_fmt(p['mean'], None, 0)} | {p['reached']} |"
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
        axes[0].plot(steps, smooth, label=LABELS[o], color=COLORS[o])
        axes[1].plot([s * per for s in steps], smooth, label=LABELS[o], color=COLORS[o])
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
        ax.bar(i - 0.18, m, 0.36, yerr=s, color=COLORS[o], capsize=4, label=None)
        ax.text(i - 0.18, m + s + 0.5, f"{m:.1f}", ha="center", fontsize=8)
        seeds = [r["test_accuracy"] * 100 for r in runs if r["optimizer"] == o]
        ax.scatter([i - 0.18] * len(seeds), seeds, color="black", s=10, zorder=3)
        claim = PAPER_CLAIMS.get(ds, {}).get("accuracy", {}).get(o)
        if claim is not None:
            ax.bar(i + 0.18, claim, 0.36, color=COLORS[o], alpha=0.35, hatch="//")
            ax.text(i + 0.18, claim + 0.5, f"{claim:.1f}", ha="center", fontsize=8)
    ax.set_xticks(list(xs), [LABELS[o] for o in opts])
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
    ax.set_xticks(range(1, len(opts) + 1), [LABELS[o] for o in opts])
    for patch, o in zip(bp["boxes"], opts, strict=True):
        patch.set_facecolor(COLORS[o])
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
                    color=COLORS[o],
                    alpha=0.8,
                    label=LABELS[o] if j == 0 else None,
                )
    eb = summary.get("equal_budget")
    if eb:
        ax.axvline(
            eb["budget_passes"],
            color="gray",
            ls="--",
            lw=1,
            label=f"{LABELS[eb['reference']]} budget",
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
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_csv(runs, out / "runs.csv")
    _atomic_write(out / "report.md", render_markdown(summary, meta))
    if figures:
        plot_figures(runs, summary, out / "figures")
    return summary


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # parallel shards never clash
    tmp.write_text(text)
    tmp.replace(path)
