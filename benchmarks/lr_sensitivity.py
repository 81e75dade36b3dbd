"""Learning-rate sensitivity: final accuracy against the learning rate, per optimizer.

Usage (see docs/guides/benchmarks.md, "Learning-rate sensitivity")::

    python -m benchmarks.lr_sensitivity --dataset fashion-mnist \
        --optimizers sgd adam hgpso hgpso-adam --seeds 0 1 --epochs 2 --out runs/lr-fmnist

Each optimizer runs over a log grid of rates around its documented default (``--decades`` on
either side, ``--points-per-decade``; by default 5 values, default/10 to default*10, rounded to 3
significant digits) or over one shared ``--lrs`` list; every (optimizer, rate, seed) is one run
of ``hgpso-train``'s loop (:func:`benchmarks.train.train_one`, the same model, batches and
records), written at once to ``OUT/runs/<optimizer>-lr<rate>-seed<seed>.json``; a rerun skips
every run whose file holds the same configuration. Any other ``hgpso-train`` option (``--batch-
size``, ``--hgpso-num-particles``, ``--train-subset``, ``--device``...) passes through. One torch
thread unless ``--threads`` says otherwise; one progress line per run.

Outputs: ``OUT/lr_sensitivity.json`` (per optimizer and rate: each seed's final accuracy, mean,
min, max, final training loss), ``OUT/lr_sensitivity.md`` (the table) and
``OUT/lr_sensitivity.png`` (accuracy against the rate, log x-axis, one line per optimizer with
its min-max band over seeds).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from benchmarks import cli_types as cli
from benchmarks import train
from benchmarks.atomic import write_json, write_text
from benchmarks.datasets import DatasetError
from benchmarks.metrics import mean_std
from benchmarks.registry import DEFAULT_HPARAMS, color, label

PROG = "python -m benchmarks.lr_sensitivity"
# the optimizers with a learning rate (PSO has none)
SWEEPABLE = tuple(o for o, hp in DEFAULT_HPARAMS.items() if "lr" in hp)
DEFAULT_OPTIMIZERS = ("sgd", "adam", "hgpso", "hgpso-adam")


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog=PROG,
        description="Final accuracy against the learning rate over a log grid, per optimizer. "
        "Options not listed here are hgpso-train's and pass through to every run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,  # an abbreviation of a pass-through option must not match ours
    )
    p.add_argument("--optimizers", nargs="+", choices=SWEEPABLE, default=list(DEFAULT_OPTIMIZERS))
    p.add_argument("--seeds", nargs="+", type=cli.seed, default=[0, 1])
    p.add_argument("--epochs", type=cli.positive_float, default=2)
    p.add_argument(
        "--lrs",
        nargs="+",
        type=cli.positive_float,
        default=None,
        help="one grid for every optimizer (default: a grid around each one's default rate)",
    )
    p.add_argument(
        "--decades",
        type=cli.positive_float,
        default=1.0,
        help="the default grid spans default*10^-D to default*10^D",
    )
    p.add_argument("--points-per-decade", type=cli.positive_int, default=2)
    p.add_argument("--out", type=cli.writable_dir, default=Path("runs/lr-sensitivity"))
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figure")
    return p


def lr_grid(default: float, decades: float = 1.0, per_decade: int = 2) -> list[float]:
    """``default * 10**(j / per_decade)`` for ``|j| <= decades * per_decade``, ascending,
    rounded to 3 significant digits (so a rate and its file name agree)."""
    n = math.floor(decades * per_decade + 1e-9)
    return [float(f"{default * 10 ** (j / per_decade):.3g}") for j in range(-n, n + 1)]


def run_key(optimizer: str, lr: float, seed: int) -> str:
    return f"{optimizer}-lr{lr:g}-seed{seed}"


def _train_args(rest: list[str], args: argparse.Namespace) -> argparse.Namespace:
    """hgpso-train's namespace for the pass-through options (checked by its parser)."""
    parser = train.build_parser()
    parser.prog = PROG
    forced = ["--epochs", str(args.epochs), "--no-progress", "--no-figures"]
    if not any(a == "--threads" or a.startswith("--threads=") for a in rest):
        forced += ["--threads", "1"]
    if not any(a == "--evals-per-epoch" or a.startswith("--evals-per-epoch=") for a in rest):
        forced += ["--evals-per-epoch", "1"]  # only the final accuracy is read
    return parser.parse_args([*rest, *forced])


def summarize(
    records: list[dict[str, Any]], grids: dict[str, list[float]], meta: dict[str, Any]
) -> dict[str, Any]:
    """The lr_sensitivity.json document."""
    out: dict[str, Any] = {**meta, "optimizers": {}}
    for o, grid in grids.items():
        points = []
        for lr in grid:
            rs = sorted(
                (r for r in records if r["optimizer"] == o and r["hparams"]["lr"] == lr),
                key=lambda r: r["seed"],
            )
            accs = [r["test_accuracy"] for r in rs]
            finite = [a for a in accs if math.isfinite(a)]
            points.append(
                {
                    "lr": lr,
                    "seeds": [r["seed"] for r in rs],
                    "accuracies": accs,
                    "accuracy_mean": mean_std(accs)[0],
                    "accuracy_min": min(finite) if finite else None,
                    "accuracy_max": max(finite) if finite else None,
                    "final_train_loss_mean": mean_std([r["final_train_loss"] for r in rs])[0],
                    "readouts": _readout_means(rs),
                }
            )
        scored = [p for p in points if p["accuracy_mean"] is not None]
        best = max(scored, key=lambda p: p["accuracy_mean"]) if scored else None
        out["optimizers"][o] = {
            "label": label(o),
            "default_lr": DEFAULT_HPARAMS[o]["lr"],
            "best_lr": best and best["lr"],
            "best_accuracy": best and best["accuracy_mean"],
            "points": points,
        }
    return out


def _readout_means(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """A swarm's mean accuracy over seeds under each readout its runs scored (train.py's
    ``readouts``; empty for other optimizers and for run files older than that field)."""
    names = [n for n in (records[0].get("readouts") or {})] if records else []
    return {
        n: mean_std([(r.get("readouts") or {}).get(n, {}).get("accuracy") for r in records])[0]
        for n in names
        if all(n in (r.get("readouts") or {}) for r in records)
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def render_markdown(summary: dict[str, Any]) -> str:
    opts = summary["optimizers"]
    lrs = sorted({p["lr"] for v in opts.values() for p in v["points"]})
    lines = [
        f"# Learning-rate sensitivity: {summary['dataset']}",
        "",
        f"- Command: `{summary['command']}`",
        f"- {summary['epochs']:g} epoch(s), seeds {summary['seeds']}, final {summary['split']} "
        "accuracy (%) as mean (min-max) over seeds; * marks each optimizer's default rate",
        "",
        "| lr | " + " | ".join(v["label"] for v in opts.values()) + " |",
        "|---" * (len(opts) + 1) + "|",
    ]
    for lr in lrs:
        cells = []
        for v in opts.values():
            p = next((p for p in v["points"] if p["lr"] == lr), None)
            if p is None:
                cells.append("")
                continue
            star = "*" if lr == v["default_lr"] else ""
            cells.append(
                f"{_pct(p['accuracy_mean'])}{star} "
                f"({_pct(p['accuracy_min'])}-{_pct(p['accuracy_max'])})"
            )
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    lines += ["", "| Optimizer | Best lr | Best accuracy (%) | Worst on the grid (%) |"]
    lines.append("|---|---|---|---|")
    for v in opts.values():
        means = [p["accuracy_mean"] for p in v["points"] if p["accuracy_mean"] is not None]
        best = "n/a" if v["best_lr"] is None else f"{v['best_lr']:g}"
        worst = _pct(min(means)) if means else "n/a"
        lines.append(f"| {v['label']} | {best} | {_pct(v['best_accuracy'])} | {worst} |")
    lines += _readout_table(opts)
    lines += ["", "![Accuracy against the learning rate](lr_sensitivity.png)", ""]
    return "\n".join(lines)


def _readout_table(opts: dict[str, Any]) -> list[str]:
    """The swarms' final accuracy at each rate under each readout, from the same runs."""
    names: list[str] = []
    for v in opts.values():
        for p in v["points"]:
            names += [n for n in p.get("readouts") or {} if n not in names]
    if not names:
        return []
    rows = [
        f"| {v['label']} | {p['lr']:g} | "
        + " | ".join(_pct(p["readouts"].get(n)) for n in names)
        + " |"
        for v in opts.values()
        for p in v["points"]
        if p.get("readouts")
    ]
    return [
        "",
        "Swarms under each readout (the same runs: the readout does not change the "
        "trajectory; mean_kK: the K particles with the lowest best losses), mean over seeds (%):",
        "",
        "| Optimizer | lr | " + " | ".join(names) + " |",
        "|---" * (len(names) + 2) + "|",
        *rows,
    ]


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for o, v in summary["optimizers"].items():
        pts = [p for p in v["points"] if p["accuracy_mean"] is not None]
        if not pts:
            continue
        xs = [p["lr"] for p in pts]
        ax.plot(xs, [100 * p["accuracy_mean"] for p in pts], "o-", color=color(o), label=v["label"])
        ax.fill_between(
            xs,
            [100 * p["accuracy_min"] for p in pts],
            [100 * p["accuracy_max"] for p in pts],
            color=color(o),
            alpha=0.2,
        )
        ax.axvline(v["default_lr"], color=color(o), ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (dotted: the optimizer's default)")
    ax.set_ylabel(f"final {summary['split']} accuracy (%)")
    ax.set_title(
        f"{summary['dataset']}: accuracy vs learning rate, {summary['epochs']:g} epoch(s), "
        f"band = min-max over {len(summary['seeds'])} seed(s)"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    targs = _train_args(rest, args)
    cli.require_writable_dir(parser, args.out, "--out")
    grids = {
        o: args.lrs
        if args.lrs
        else lr_grid(DEFAULT_HPARAMS[o]["lr"], args.decades, args.points_per_decade)
        for o in args.optimizers
    }
    try:
        dm = train.prepare(targs)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs_dir = args.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
    jobs = [(o, lr, s) for o, grid in grids.items() for lr in grid for s in args.seeds]
    records = []
    for i, (o, lr, s) in enumerate(jobs, start=1):
        train.set_hparam(targs, o, "lr", lr)
        config = train.run_config(targs, o, s)
        path = runs_dir / f"{run_key(o, lr, s)}.json"
        record = train.load_finished(path, config)
        if record is None:
            record = train.train_one(targs, dm, o, s, config)
            record["key"] = path.stem
            record["command"] = command
            write_json(path, record)
            what = f"{record['wall_seconds']:.1f} s"
        else:
            what = "finished run reused"
        records.append(record)
        print(
            f"[{i}/{len(jobs)}] {o} lr {lr:g} seed {s}: accuracy "
            f"{record['test_accuracy']:.4f}, final loss {record['final_train_loss']:.4f} ({what})",
            flush=True,
        )
    meta = {
        "dataset": targs.dataset,
        "epochs": targs.epochs,
        "seeds": sorted(args.seeds),
        "split": "holdout" if targs.holdout else "test",
        "command": command,
    }
    summary = summarize(records, grids, meta)
    write_json(args.out / "lr_sensitivity.json", summary, indent=2)
    write_text(args.out / "lr_sensitivity.md", render_markdown(summary))
    if not args.no_figures:
        plot(summary, args.out / "lr_sensitivity.png")
    print(f"results in {args.out}/ (lr_sensitivity.json, .md, .png; runs/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
