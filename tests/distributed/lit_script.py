"""Lightning runs for tests/distributed/test_lightning.py (run as a script: Lightning's
``strategy="ddp"`` starts the other ranks by running this file again).

``python lit_script.py STRATEGY MODE OUT [--callback]`` trains three times on 2 CPU
processes: 2 epochs straight; 1 epoch and a checkpoint; the checkpoint resumed with
``ckpt_path`` up to 2 epochs. Every rank saves its parameters, its optimizer state and (with
``--callback``) the LLMPSOCallback's tuned values after each fit to ``OUT/{run}-rank{r}.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

import hgpso
from hgpso.tune import Float
from lightning_callbacks import LLMPSOCallback
from tests.helpers import TinyNet


class Lit(pl.LightningModule):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.net = TinyNet()
        self.automatic_optimization = mode == "auto"

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        if self.automatic_optimization:  # Lightning's closure; the model is DDP-wrapped
            return F.cross_entropy(self.net(x), y)
        opt = self.optimizers()
        opt.step(hgpso.vectorized_closure(self.net, F.cross_entropy, x, y))
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return hgpso.HGPSO(self.parameters(), lr=0.05, num_particles=4)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(7)
        x = torch.randn(64, 6, generator=g)
        y = torch.randint(0, 3, (64,), generator=g)
        return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)


class SaveState(Callback):
    def __init__(self, out: Path, run: str) -> None:
        self.out, self.run = out, run

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tuner = [c for c in trainer.callbacks if isinstance(c, LLMPSOCallback)]
        torch.save(
            {
                "params": [p.detach().clone() for p in pl_module.parameters()],
                "optim": trainer.optimizers[0].state_dict(),
                "tuned": tuner[0].current if tuner else None,
                "rounds": tuner[0].rounds if tuner else None,
                "lr": trainer.optimizers[0].param_groups[0]["lr"],
            },
            self.out / f"{self.run}-rank{trainer.global_rank}.pt",
        )
        if self.run == "first":  # inside the ranks: under ddp_spawn the launcher holds no state
            trainer.save_checkpoint(self.out / "first.ckpt")


def fit(strategy: str, mode: str, out: Path, run: str, epochs: int, callback: bool) -> None:
    # every rank starts from other weights and another global RNG state: the optimizer agrees
    torch.manual_seed(100 + int(os.environ.get("LOCAL_RANK", "0")))
    callbacks: list[Callback] = [SaveState(out, run)]
    if callback:
        space = {"lr": Float(1e-3, 0.2, log=True), "inertia": Float(0.5, 0.95)}
        callbacks.append(
            LLMPSOCallback(space, strategy="pso", population=3, probe_steps=2, eval_batches=1)
        )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        callbacks=callbacks,
    )
    trainer.fit(Lit(mode), ckpt_path=str(out / "first.ckpt") if run == "resumed" else None)


def main() -> None:
    strategy, mode, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    callback = "--callback" in sys.argv
    torch.set_num_threads(1)
    fit(strategy, mode, out, "straight", 2, callback)
    fit(strategy, mode, out, "first", 1, callback)
    fit(strategy, mode, out, "resumed", 2, callback)


if __name__ == "__main__":
    main()
