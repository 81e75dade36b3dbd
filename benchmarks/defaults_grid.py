"""The table behind ``hgpso.HGPSO``'s defaults: every committed run of the defaults grid.

Usage::

    python -m benchmarks.defaults_grid [--root benchmarks/results/defaults-grid]

The grid's runs are ``python -m benchmarks.lr_sensitivity`` runs (2 epochs, Fashion-MNIST,
scored on a held-out 10% of the training set, never on the test set), one folder per model
and setting, ``ROOT/<model>/<setting>/runs/*.json``; the commands are in each folder's
``lr_sensitivity.md``. This script reads every run file, groups them by model, optimizer,
settings and rate, and writes ``ROOT/table.md`` (mean held-out accuracy over the seeds, the
seeds' values, and for swarms the mean-of-particles readout of the same runs), which
docs/guides/hyperparameters.md reproduces.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks import cli_types as cli
from benchmarks.atomic import write_text
from benchmarks.registry import optimizer_spec

ROOT = Path("benchmarks/results/defaults-grid")
MODELS = {"cnn": "CNN", "cnn-bn": "CNN + BatchNorm", "mlp": "MLP"}
# the settings a row names (the rest are the registry's for that entry)
SHOWN = ("gradient", "inertia", "forget", "adaptive")


def _settings(optimizer: str, hparams: dict[str, Any]) -> str:
    spec = optimizer_spec(optimizer)
    if not spec.swarm:
        return f"momentum {hparams['momentum']}" if "momentum" in hparams else ""
    # a gradient the run did not record is the entry's fixed one, or its legacy value
    gradient = spec.fixed.get("gradient", spec.legacy.get("gradient"))
    hp = {"gradient": gradient, **hparams}
    return ", ".join(f"{k}={hp[k]}" for k in SHOWN if hp.get(k) is not None)


def collect(root: Path) -> list[dict[str, Any]]:
    """One row per (model, optimizer, settings, lr): the seeds' held-out accuracies."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(root.glob("*/*/runs/*.json")):
        run = json.loads(path.read_text())
        cfg = run["config"]
        if cfg.get("holdout") is None:
            raise ValueError(f"{path}: not a held-out run (the grid never scores on the test set)")
        model = cfg.get("model") or "cnn"
        settings = _settings(run["optimizer"], cfg["hparams"])
        groups[(model, run["optimizer"], settings, cfg["hparams"]["lr"])].append(run)
    rows = []
    for (model, optimizer, settings, lr), runs in groups.items():
        by_seed = {r["seed"]: r for r in runs}  # a setting run from two folders counts once
        seeds = sorted(by_seed)
        acc = [by_seed[s]["test_accuracy"] for s in seeds]
        mean = [by_seed[s].get("readouts", {}).get("mean", {}).get("accuracy") for s in seeds]
        rows.append(
            {
                "model": model,
                "optimizer": optimizer,
                "settings": settings,
                "lr": lr,
                "seeds": seeds,
                "accuracies": acc,
                "accuracy_mean": sum(acc) / len(acc),
                "mean_readout": None if None in mean else sum(mean) / len(mean),
            }
        )
    order = list(MODELS)
    rows.sort(key=lambda r: (order.index(r["model"]), r["optimizer"], r["settings"], r["lr"]))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | optimizer | settings | lr | held-out accuracy (%) | seeds | mean readout (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    best = {}
    for r in rows:
        if r["model"] not in best or r["accuracy_mean"] > best[r["model"]]["accuracy_mean"]:
            best[r["model"]] = r
    for r in rows:
        acc = f"{100 * r['accuracy_mean']:.2f}"
        if best[r["model"]] is r:
            acc = f"**{acc}**"
        seeds = " / ".join(f"{100 * a:.2f}" for a in r["accuracies"])
        readout = "" if r["mean_readout"] is None else f"{100 * r['mean_readout']:.2f}"
        lines.append(
            f"| {MODELS[r['model']]} | {r['optimizer']} | {r['settings']} | {r['lr']:g} | {acc}"
            f" | {seeds} | {readout} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=ROOT)
    args = p.parse_args(argv)
    rows = collect(args.root)
    if not rows:
        p.error(f"no run files under {args.root}/*/*/runs/")
    table = markdown(rows)
    write_text(args.root / "table.md", table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
