"""The training benchmark's PNG figures (loss curves, accuracy against the paper, final-loss
distribution, accuracy against passes, epochs and seconds)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.metrics import trailing_mean
from benchmarks.registry import color, label
from benchmarks.report.tables import curve_seconds, epoch_points, ordered, paper_claim


def plot_figures(runs: list[dict[str, Any]], summary: dict[str, Any], fig_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    opts = ordered(runs)
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
        claim = paper_claim(ds, "accuracy", o)
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
    _seed_curves(ax, runs, opts, lambda r: [(c["passes"], c["eval_accuracy"]) for c in r["curve"]])
    eb = summary.get("equal_budget")
    if eb:
        _budget_line(ax, eb["budget_passes"], f"{label(eb['reference'])} budget")
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
            pts = [(e, a * 100) for e, a in epoch_points(r) if e is not None]
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
    ys = _seed_curves(ax, runs, opts, curve_seconds)
    et = summary.get("equal_time")
    if et:
        _budget_line(ax, et["budget_seconds"], f"{label(et['reference'])} time")
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


def _seed_curves(
    ax: Any,
    runs: list[dict[str, Any]],
    opts: list[str],
    points: Callable[[dict[str, Any]], list[tuple[float, float]]],
) -> dict[str, list[float]]:
    """Each run's ``points(run)`` = ``(x, accuracy)`` as a line in percent, one legend entry
    per optimizer; returns each optimizer's plotted accuracies."""
    ys: dict[str, list[float]] = {}
    for o in opts:
        for r in (r for r in runs if r["optimizer"] == o):
            pts = [(x, 100 * a) for x, a in points(r)]
            if not pts:
                continue
            first = o not in ys
            ys.setdefault(o, []).extend(a for _, a in pts)
            ax.plot(
                *zip(*pts, strict=True),
                marker="o",
                ms=3,
                color=color(o),
                alpha=0.8,
                label=label(o) if first else None,
            )
    return ys


def _budget_line(ax: Any, x: float, text: str) -> None:
    ax.axvline(x, color="gray", ls="--", lw=1, label=text)


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
