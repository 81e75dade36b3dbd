"""Lightning runs of a sharded swarm for tests/distributed/test_lightning_sharded.py (run as a
script: the strategy's launcher starts the other ranks by running this file again).

``python lit_sharded_script.py MODE OUT DEVICES RUN...``, each RUN one ``Trainer.fit`` with
:class:`lightning_callbacks.SwarmShardedStrategy` and ``HGPSO(distributed="sharded")`` on
``DEVICES`` CPU processes:

- ``straight``: 2 epochs, a ``ModelCheckpoint`` after each (``OUT/ckpt/epoch=0.ckpt``, ...);
- ``resumed``: ``fit(ckpt_path=OUT/ckpt/epoch=0.ckpt)`` up to 2 epochs.

``MODE``, as in ``lit_script.py``: "manual" (``hgpso.vectorized_closure``, whose batch
fingerprints the swarm compares across ranks) or "auto" (Lightning's closure over the plain
module: ``training_step`` runs once per particle). Every rank saves its parameters, its own
shard of the optimizer state and the sum of each batch it was given to
``OUT/{run}-w{DEVICES}-rank{r}.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

import hgpso
from lightning_callbacks import SwarmShardedStrategy
from tests.distributed import lit_script

N = 5  # 3 + 2 particles on 2 ranks
EPOCHS = 2


class Lit(lit_script.Lit):
    """lit_script's module (TinyNet, 64 examples in shuffled batches of 8: each process's
    own RNG would shuffle them differently without the strategy's seeded sampler) with a
    sharded swarm, recording the batches it is given."""

    def __init__(self, mode: str) -> None:
        super().__init__(mode)
        self.seen: list[float] = []  # one number per batch given to this rank

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.seen.append(float(x.double().sum() + y.double().sum()))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return hgpso.HGPSO(self.parameters(), lr=0.05, num_particles=N, distributed="sharded")


class SaveState(Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(pl_module, Lit)
        torch.save(
            {
                "params": [p.detach().clone() for p in pl_module.parameters()],
                "optim": trainer.optimizers[0].state_dict(),
                "seen": pl_module.seen,
                "wrapped": type(trainer.strategy.model).__name__,
            },
            self.path,
        )


def fit(mode: str, out: Path, devices: int, run: str) -> None:
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.manual_seed(100 + rank)  # other weights and RNG per rank: the strategy/swarm agree
    callbacks: list[Callback] = [SaveState(out / f"{run}-w{devices}-rank{rank}.pt")]
    if run == "straight":
        callbacks.append(ModelCheckpoint(dirpath=out / "ckpt", filename="{epoch}", save_top_k=-1))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=SwarmShardedStrategy(),
        max_epochs=EPOCHS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        callbacks=callbacks,
    )
    ckpt = str(out / "ckpt" / "epoch=0.ckpt") if run == "resumed" else None
    trainer.fit(Lit(mode), ckpt_path=ckpt)


def main() -> None:
    mode, out, devices, runs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    torch.set_num_threads(1)
    for run in runs:
        fit(mode, out, devices, run)


if __name__ == "__main__":
    main()
