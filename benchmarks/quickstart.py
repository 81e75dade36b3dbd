"""Quickstart: train a small CNN with HGPSO and with Adam, offline, and print both results.

Uses Fashion-MNIST when its files are on the machine (Debian's ``dataset-fashion-mnist``
package, or ``--data-root``), else scikit-learn's bundled 8x8 digits, so it never needs the
network. ``--data-root DIR`` is the only place searched when given (no fallback). HGPSO runs
with the library's defaults except ``num_particles=4``. Under a minute of
training on a 2-core CPU::

    python -m benchmarks.quickstart
    python -m benchmarks.quickstart --train-size 60000 --epochs 3 --particles 8
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import hgpso
from benchmarks import cli_types as cli
from benchmarks.datasets import FASHION_HOWTO, ArraySplits, DatasetError
from benchmarks.models import DigitsCNN, FashionCNN
from benchmarks.registry import load_dataset

EPOCHS = {"fashion-mnist": 2, "digits": 20}  # digits: 1,348 images, 11 steps per epoch
# What the default command printed here (test accuracy, CPU, torch 2.14.1, seed 0), so a
# user can tell a working install from a broken one. Measured on a 2-core CPU: Adam on
# 2026-11-24, HGPSO with the library's defaults of 2026-12-08 (the Adam gradient term).
REFERENCE = {
    "fashion-mnist": {"hgpso": 0.8329, "adam": 0.7964},
    "digits": {"hgpso": 0.9666, "adam": 0.9399},
}


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
    ap = cli.ArgumentParser(description="Train a small CNN with HGPSO and Adam; compare.")
    ap.add_argument("--dataset", choices=["auto", "fashion-mnist", "digits"], default="auto")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--train-size", type=cli.positive_int, default=6000)
    ap.add_argument(
        "--epochs",
        type=cli.positive_int,
        default=None,
        help="default: 2 (Fashion-MNIST), 20 (digits)",
    )
    ap.add_argument("--batch-size", type=cli.positive_int, default=128)
    ap.add_argument("--particles", type=cli.positive_int, default=4)
    ap.add_argument(
        "--lr",
        type=cli.positive_float,
        default=None,
        help="HGPSO lr (default: the library's, 3.16e-3 for its default adam term; Adam uses 1e-3)",
    )
    ap.add_argument("--seed", type=cli.seed, default=0)
    ap.add_argument(
        "--device", type=cli.device, default="cuda" if torch.cuda.is_available() else "cpu"
    )
    args = ap.parse_args(argv)
    device = torch.device(args.device)

    dataset = args.dataset
    if dataset in ("auto", "fashion-mnist"):
        try:
            splits = load_dataset("fashion-mnist", args.data_root, download=False)
            dataset = "fashion-mnist"
        except DatasetError as err:
            if args.dataset == "fashion-mnist" or args.data_root:
                raise SystemExit(str(err)) from None
            print(
                "Fashion-MNIST not found on this machine: using scikit-learn's 8x8 digits "
                "instead (a much smaller task). For the Fashion-MNIST run: " + FASHION_HOWTO
            )
            dataset = "digits"
    if dataset == "digits":
        splits = load_dataset("digits")
    epochs = args.epochs if args.epochs is not None else EPOCHS[dataset]
    data = _prepare(splits, args.train_size, device)
    net = FashionCNN if dataset == "fashion-mnist" else DigitsCNN
    print(
        f"dataset={dataset} train={len(data[1])} test={len(data[3])} device={device} "
        f"epochs={epochs} batch={args.batch_size}\n"
        f"HGPSO: library defaults except "
        f"{'' if args.lr is None else f'lr={args.lr}, '}num_particles={args.particles}; "
        "Adam: lr=1e-3"
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
        results.append(train(name, model, make_opt, data, epochs, args.batch_size, args.seed))
    default_run = epochs == EPOCHS[dataset] and all(
        getattr(args, k) == ap.get_default(k)
        for k in ("train_size", "batch_size", "particles", "lr", "seed")
    )
    ref = REFERENCE[dataset] if default_run else {}
    print(
        f"{'optimizer':<10} {'test acc':>9} {'seconds':>8} {'fwd+bwd passes':>15}"
        + (f" {'reference acc':>14}" if ref else "")
    )
    for r in results:
        print(
            f"{r['optimizer']:<10} {r['test_accuracy']:>9.4f} {r['seconds']:>8.1f} "
            f"{r['forward_backward_passes']:>15}"
            + (f" {ref[r['optimizer']]:>14.4f}" if ref else "")
        )
    if ref:
        print(
            "reference acc: what this command printed on a 2-core CPU (torch 2.14.1; HGPSO "
            "2026-12-08, Adam 2026-11-24); other hardware or versions differ by a few points."
        )
    return results


if __name__ == "__main__":
    main()
