"""LSTM regression scenario of papers 000/001 at small scale: tune an LSTM forecaster.

Data: the daily adjusted close of GOOG, 2004-08-19 .. 2008-10-14 (1047 days), shipped with
matplotlib as ``mpl-data/sample_data/goog.npz`` (a real series available offline).
The log price is standardised on the first 70 % (train); a window of ``window`` days
predicts the next day; the next 15 % is the validation split.

Objective (lower is better): validation RMSE in standardised units after ``--epochs``
epochs of Adam with a fixed torch seed, so it is a deterministic function of
``lr, hidden, layers, window``. One evaluation = one model trained from scratch.

The committed runs (``benchmarks/results/tuning/lstm``), LLM strategies and peers alike::

    python -m benchmarks.tune_lstm --seeds 10 --target 0.12 --strategies random pso ga
        llm_pso llm_ga optuna_tpe optuna_cmaes optuna_random ng_pso ng_ngopt   # one line

``--strategies`` also takes ``tpe`` and ``cmaes`` (Optuna's samplers as hgpso strategies)
and the LLM layer over them: ``llm_tpe``, ``llm_cmaes``, ``llm_random`` (issue 23).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks import cli_types as cli
from benchmarks.tune_common import add_common_args, check_strategies, run_suite
from hgpso.tune import Float, Int, SearchSpace

SPACE = SearchSpace(
    {
        "lr": Float(1e-4, 1e-1, log=True),
        "hidden": Int(4, 64, log=True),
        "layers": Int(1, 2),
        "window": Int(5, 40),
    }
)


def load_series() -> np.ndarray:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "goog.npz"
    with np.load(path) as f:
        prices = f["price_data"]["adj_close"].astype(np.float64)
    logp = np.log(prices)
    n_train = int(0.7 * len(logp))
    mu, sd = logp[:n_train].mean(), logp[:n_train].std()
    return ((logp - mu) / sd).astype(np.float32)


def windows(series: np.ndarray, w: int, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``series[t-w:t]`` and targets ``series[t]`` for t in [max(lo, w), hi)."""
    idx = np.arange(max(lo, w), hi)
    x = np.stack([series[t - w : t] for t in idx])[..., None]
    return torch.from_numpy(x), torch.from_numpy(series[idx][:, None])


class Forecaster(nn.Module):
    def __init__(self, hidden: int, layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def make_objective(epochs: int, batch_size: int = 64):
    series = load_series()
    n = len(series)
    n_train, n_val = int(0.7 * n), int(0.85 * n)

    def objective(p: dict) -> float:
        torch.manual_seed(0)
        xtr, ytr = windows(series, p["window"], 0, n_train)
        xva, yva = windows(series, p["window"], n_train, n_val)
        model = Forecaster(p["hidden"], p["layers"])
        opt = torch.optim.Adam(model.parameters(), lr=p["lr"])
        g = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr), batch_size):
                b = perm[i : i + batch_size]
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(xtr[b]), ytr[b])
                loss.backward()
                opt.step()
        with torch.no_grad():
            rmse = float(torch.sqrt(nn.functional.mse_loss(model(xva), yva)))
        return rmse if np.isfinite(rmse) else float("inf")

    return objective


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p, "benchmarks/results/tuning/lstm", budget=24, target=0.15)
    p.add_argument("--epochs", type=cli.positive_int, default=5)
    p.add_argument("--threads", type=cli.positive_int, default=1)
    args = p.parse_args(argv)
    check_strategies(p, args.strategies)
    cli.require(p, args.k <= args.population, f"--k {args.k} exceeds --population")
    torch.set_num_threads(args.threads)
    series = load_series()
    n = len(series)
    persistence = float(
        np.sqrt(
            np.mean(
                (
                    series[int(0.7 * n) : int(0.85 * n)]
                    - series[int(0.7 * n) - 1 : int(0.85 * n) - 1]
                )
                ** 2
            )
        )
    )
    meta = {
        "scenario": "LSTM regression, GOOG adj. close 2004-2008 (matplotlib goog.npz)",
        "objective": "validation RMSE (standardised log price) after training from scratch",
        "epochs": args.epochs,
        "persistence_rmse": persistence,
        "space": {k: v.describe() for k, v in SPACE.items()},
    }
    task = (
        "Tune an LSTM that forecasts the next day of a stock price series from a window of "
        "past days. Score = validation RMSE (lower is better)."
    )
    summary = run_suite(args, make_objective(args.epochs), SPACE, task, meta)
    import json

    print(json.dumps(summary["strategies"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
