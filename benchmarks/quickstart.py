"""Quickstart: train a small CNN with HGPSO and with Adam, offline, and print both results.

Uses Fashion-MNIST when its files are on the machine (Debian's ``dataset-fashion-mnist``
package, or ``--data-root``), else scikit-learn's bundled 8x8 digits, so it never needs the
network. A couple of minutes on a 2-core CPU::

    python -m benchmarks.quickstart
    python -m benchmarks.quickstart --train-size 60000 --epochs 3 --particles 8
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import hgpso
from benchmarks.datasets import ArraySplits, DatasetError, load_dataset
from benchmarks.models import DigitsCNN, FashionCNN


def _prepare(splits: ArraySplits, train_size: int, device: torch.device):
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() / 255.0 - mean) / std).to(device)

    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(splits.train_y), generator=g)[:train_size]
    return (
        norm(splits.train_x[idx]),
        splits.train_y[idx].to(device),
        norm(splits.test_x),
        splits.test_y.to(device),
    )


def _accuracy(model, x, y, batch: int = 1000) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(
            (model(xb).argmax(1) == yb).sum().item()
            for xb, yb in zip(x.split(batch), y.split(batch), strict=True)
        )
    model.train()
    return correct / len(y)


def train(name: str, model, make_opt, data, epochs: int, batch: int, seed: int) -> dict:
    xtr, ytr, xte, yte = data
    opt = make_opt(model)
    swarm = isinstance(opt, hgpso.HGPSO)
    passes = 0
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    steps = epochs * ((len(ytr) + batch - 1) // batch)
    with tqdm(total=steps, desc=f"{name:>6}", unit="step", leave=False) as bar:
        for _ in range(epochs):
            for idx in torch.randperm(len(ytr), generator=g).split(batch):
                x, y = xtr[idx.to(xtr.device)], ytr[idx.to(ytr.device)]
                if swarm:
                    loss = opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))
                    passes += opt.num_particles
                else:
                    opt.zero_grad()
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    opt.step()
                    passes += 1
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    return {
        "optimizer": name,
        "test_accuracy": _accuracy(model, xte, yte),
        "seconds": time.perf_counter() - t0,
        "forward_backward_passes": passes,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description="Train a small CNN with HGPSO and Adam; compare.")
    ap.add_argument("--dataset", choices=["auto", "fashion-mnist", "digits"], default="auto")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--train-size", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.02, help="HGPSO lr (Adam uses 1e-3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)

    dataset = args.dataset
    if dataset in ("auto", "fashion-mnist"):
        try:
            splits = load_dataset("fashion-mnist", args.data_root, download=False)
            dataset = "fashion-mnist"
        except DatasetError as err:
            if args.dataset == "fashion-mnist":
                raise SystemExit(str(err)) from None
            print("Fashion-MNIST not found locally; using scikit-learn's digits instead.")
            dataset = "digits"
    if dataset == "digits":
        splits = load_dataset("digits")
    data = _prepare(splits, args.train_size, device)
    net = FashionCNN if dataset == "fashion-mnist" else DigitsCNN
    print(
        f"dataset={dataset} train={len(data[1])} test={len(data[3])} device={device} "
        f"epochs={args.epochs} batch={args.batch_size}"
    )

    results = []
    for name, make_opt in [
        (
            "hgpso",
            lambda m: hgpso.HGPSO(
                m.parameters(), lr=args.lr, num_particles=args.particles, seed=args.seed
            ),
        ),
        ("adam", lambda m: torch.optim.Adam(m.parameters(), lr=1e-3)),
    ]:
        torch.manual_seed(args.seed)  # same initial weights for both
        model = net().to(device)
        results.append(train(name, model, make_opt, data, args.epochs, args.batch_size, args.seed))
    print(f"{'optimizer':<10} {'test acc':>9} {'seconds':>8} {'fwd+bwd passes':>15}")
    for r in results:
        print(
            f"{r['optimizer']:<10} {r['test_accuracy']:>9.4f} {r['seconds']:>8.1f} "
            f"{r['forward_backward_passes']:>15}"
        )
    return results


if __name__ == "__main__":
    main()
