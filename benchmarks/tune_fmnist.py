"""Fashion-MNIST scenarios at small scale (CPU-sized).

``--mode search`` (papers 000/001/003): tune SGD's ``lr``, ``momentum`` and
``weight_decay`` in paper 003's ranges (lr 1e-4..1, momentum 0..0.9, weight decay 0..0.1)
for the 2-conv/2-FC ``FashionCNN`` trained from scratch for ``--epochs`` on ``--n-train``
training images; objective = error rate on ``--n-val`` held-out training images. Reports
evaluations to reach ``--target`` error per strategy (resumable, see tune_common).

``--mode callback``: the same CNN trained with ``hgpso.HGPSO`` in a Lightning ``Trainer``,
untuned vs tuned online by ``LLMPSOCallback`` (``--cb-strategy``, default ``pso``; use
``llm_pso`` with a server), same seed and data; reports validation accuracy per epoch and
the tuned values to ``<out>/callback_<strategy>.json``.

    python -m benchmarks.tune_fmnist --mode search --strategies random pso ga --seeds 3
    python -m benchmarks.tune_fmnist --mode callback --cb-strategy pso --epochs 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch import nn

from benchmarks import cli_types as cli
from benchmarks.atomic import write_json
from benchmarks.tune_common import add_common_args, run_suite
from hgpso.tune import Float, SearchSpace, strategy_class

SPACE = SearchSpace(
    {
        "lr": Float(1e-4, 1.0, log=True),
        "momentum": Float(0.0, 0.9),
        "weight_decay": Float(0.0, 0.1),
    }
)


def load_subset(n_train: int, n_val: int, data_root: str | None):
    from benchmarks.datasets import load_fashion_mnist

    s = load_fashion_mnist(data_root, download=False)
    g = torch.Generator().manual_seed(1234)
    perm = torch.randperm(len(s.train_x), generator=g)
    mean, std = s.mean[0], s.std[0]

    def prep(idx):
        x = (s.train_x[idx].float() / 255.0 - mean) / std
        return x, s.train_y[idx]

    return prep(perm[:n_train]), prep(perm[n_train : n_train + n_val])


def make_cnn() -> nn.Module:
    from benchmarks.models import FashionCNN

    return FashionCNN(width=8)


def make_objective(args):
    (xtr, ytr), (xva, yva) = load_subset(args.n_train, args.n_val, args.data_root)

    def objective(p: dict) -> float:
        torch.manual_seed(0)
        model = make_cnn()
        opt = torch.optim.SGD(
            model.parameters(), lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"]
        )
        g = torch.Generator().manual_seed(0)
        for _ in range(args.epochs):
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr), 64):
                b = perm[i : i + 64]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(xtr[b]), ytr[b])
                if not torch.isfinite(loss):
                    return 1.0
                loss.backward()
                opt.step()
        with torch.no_grad():
            err = float((model(xva).argmax(1) != yva).float().mean())
        return err

    return objective


def run_callback(args) -> dict:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    import hgpso
    from hgpso.tune import LLMClient
    from lightning_callbacks import LLMPSOCallback

    (xtr, ytr), (xva, yva) = load_subset(args.n_train, args.n_val, args.data_root)

    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = make_cnn()

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            logits = self.net(x)
            self.log("val_loss", nn.functional.cross_entropy(logits, y))
            self.log("val_acc", (logits.argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return hgpso.HGPSO(
                self.parameters(),
                lr=args.hgpso_lr,
                num_particles=args.particles,
                seed=0,
                gradient="sgd",  # --hgpso-lr is the SGD term's rate (the committed runs')
            )

    class Track(pl.Callback):
        def __init__(self):
            self.acc = []

        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self.acc.append(float(trainer.callback_metrics["val_acc"]))

    results = {}
    for label in ("untuned", "tuned"):
        torch.manual_seed(0)
        track = Track()
        cbs = [track]
        tuner = None
        if label == "tuned":
            space = SearchSpace(
                {
                    "lr": Float(1e-3, 0.3, log=True),
                    "inertia": Float(0.3, 0.95),
                    "cognitive": Float(0.0, 1.5),
                    "social": Float(0.0, 1.5),
                }
            )
            kw = {}
            if strategy_class(args.cb_strategy).uses_llm:
                kw = dict(
                    llm=LLMClient(
                        base_url=args.base_url,
                        model=args.model,
                        max_tokens=args.max_tokens,
                        max_retries=1,
                        seed=0,
                    ),
                    k=1,
                    strategy_kwargs={"max_llm_calls": args.max_llm_calls},
                )
            tuner = LLMPSOCallback(
                space,
                strategy=args.cb_strategy,
                population=4,
                probe_steps=args.probe_steps,
                eval_batches=2,
                seed=0,
                **kw,
            )
            cbs.append(tuner)
        trainer = pl.Trainer(
            max_epochs=args.epochs,
            accelerator="cpu",
            devices=1,
            callbacks=cbs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        train_dl = DataLoader(
            TensorDataset(xtr, ytr),
            batch_size=128,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        )
        val_dl = DataLoader(TensorDataset(xva, yva), batch_size=500)
        t0 = time.perf_counter()
        trainer.fit(Lit(), train_dl, val_dl)
        results[label] = {
            "val_acc_per_epoch": track.acc,
            "wall_seconds": round(time.perf_counter() - t0, 1),
        }
        if tuner is not None:
            results[label]["decisions"] = tuner.rounds
            stats = tuner.strategy.llm_stats
            results[label]["llm"] = stats.as_dict() if stats is not None else {}
        print(label, results[label]["val_acc_per_epoch"], flush=True)
    out = {
        "scenario": "FashionCNN(width=8) + HGPSO on a Fashion-MNIST subset, Lightning, CPU",
        "n_train": args.n_train,
        "n_val": args.n_val,
        "epochs": args.epochs,
        "particles": args.particles,
        "hgpso_lr": args.hgpso_lr,
        "callback_strategy": args.cb_strategy,
        "probe_steps": args.probe_steps,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"callback_{args.cb_strategy}.json", out, indent=1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p, "benchmarks/results/tuning/fmnist", budget=18, target=0.35)
    p.add_argument("--mode", choices=["search", "callback"], default="search")
    p.add_argument("--epochs", type=cli.positive_int, default=1)
    p.add_argument("--n-train", type=cli.positive_int, default=3000)
    p.add_argument("--n-val", type=cli.positive_int, default=1000)
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=cli.positive_int, default=1)
    p.add_argument("--cb-strategy", default="pso")
    p.add_argument("--particles", type=cli.positive_int, default=4)
    p.add_argument("--hgpso-lr", type=cli.positive_float, default=0.05)
    p.add_argument("--probe-steps", type=cli.positive_int, default=3)
    args = p.parse_args(argv)
    cli.require(p, args.k <= args.population, f"--k {args.k} exceeds --population")
    torch.set_num_threads(args.threads)
    if args.mode == "callback":
        run_callback(args)
        return 0
    meta = {
        "scenario": "FashionCNN(width=8), SGD, Fashion-MNIST subset (paper 003 search space)",
        "objective": "held-out error rate after training from scratch",
        "epochs": args.epochs,
        "n_train": args.n_train,
        "n_val": args.n_val,
        "space": {k: v.describe() for k, v in SPACE.items()},
    }
    task = (
        "Tune SGD (learning rate, momentum, weight decay) for a small CNN on Fashion-MNIST. "
        "Score = validation error rate (lower is better)."
    )
    summary = run_suite(args, make_objective(args), SPACE, task, meta)
    print(json.dumps(summary["strategies"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
