"""The defaults grid's table (``python -m benchmarks.defaults_grid``): grouping, means, the
refusal of test-split runs, and the hyperparameters guide reproducing the committed table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import defaults_grid

ROOT = Path(__file__).resolve().parents[2]


def _run(folder: Path, optimizer: str, seed: int, lr: float, acc: float, mean=None, **hp):
    readouts = {} if mean is None else {"mean": {"accuracy": mean, "loss": 0.0}}
    config = {"holdout": 0.1, "hparams": {"lr": lr, **hp}, "seed": seed}
    if folder.parent.name != "cnn":
        config["model"] = folder.parent.name
    path = folder / "runs" / f"{optimizer}-lr{lr:g}-seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"optimizer": optimizer, "seed": seed, "config": config, "test_accuracy": acc}
    path.write_text(json.dumps({**record, "readouts": readouts}))


def test_rows_average_over_seeds_and_mark_each_models_best(tmp_path, capsys):
    swarm = {"inertia": 0.0, "forget": 1.0, "adaptive": True}
    _run(tmp_path / "mlp" / "a", "hgpso-adam", 0, 0.001, 0.80, mean=0.70, **swarm)
    _run(tmp_path / "mlp" / "a", "hgpso-adam", 1, 0.001, 0.90, mean=0.80, **swarm)
    # the same run copied into a second folder counts once
    _run(tmp_path / "mlp" / "b", "hgpso-adam", 1, 0.001, 0.90, mean=0.80, **swarm)
    _run(tmp_path / "mlp" / "b", "adam", 0, 0.001, 0.86)
    _run(tmp_path / "cnn" / "c", "hgpso-default", 0, 0.01, 0.5, mean=0.4, inertia=0.9)
    assert defaults_grid.main(["--root", str(tmp_path)]) == 0
    table = (tmp_path / "table.md").read_text()
    assert table == capsys.readouterr().out
    lines = table.splitlines()[2:]
    assert lines == [
        # CNN first; an old hgpso-default run (no gradient recorded) was the sgd term
        "| CNN | hgpso-default | gradient=sgd, inertia=0.9 | 0.01 | **50.00** | 50.00 | 40.00 |",
        "| MLP | adam |  | 0.001 | **86.00** | 86.00 |  |",
        "| MLP | hgpso-adam | gradient=adam, inertia=0.0, forget=1.0, adaptive=True | 0.001 | "
        "85.00 | 80.00 / 90.00 | 75.00 |",
    ]


def test_a_run_scored_on_the_test_set_is_refused(tmp_path):
    _run(tmp_path / "mlp" / "a", "adam", 0, 0.001, 0.86)
    path = next((tmp_path / "mlp" / "a" / "runs").glob("*.json"))
    run = json.loads(path.read_text())
    run["config"]["holdout"] = None
    path.write_text(json.dumps(run))
    with pytest.raises(ValueError, match="not a held-out run"):
        defaults_grid.main(["--root", str(tmp_path)])


def test_the_hyperparameters_guide_reproduces_the_committed_table():
    root = ROOT / defaults_grid.ROOT
    committed = (root / "table.md").read_text()
    assert defaults_grid.markdown(defaults_grid.collect(root)) == committed
    guide = (ROOT / "docs" / "guides" / "hyperparameters.md").read_text()
    assert committed in guide
