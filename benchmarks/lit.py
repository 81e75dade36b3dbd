"""The LightningModule that trains one model with one optimizer and records the metrics.

All four optimizers run under manual optimization, so the loop is the same for each and only
the step differs:

* ``sgd``/``adam``: ``zero_grad``, forward, ``manual_backward``, ``step``.
* ``hgpso`` (tuned settings) and ``hgpso-default`` (the library's defaults):
  ``step(hgpso.vectorized_closure(model, cross_entropy, x, y))`` - every particle's
  loss and gradient in one call (``torch.func``; vmapped on CUDA, a loop of functional calls on
  CPU where vmapped convolutions are slower, see ``hgpso.evaluate.vectorized``).
* ``pso``: the same vectorized closure; PSO asks it for losses only (no backward pass).

After a swarm step the model holds the swarm's global best, so validation and the final
loss evaluate exactly the weights the optimizer returns.
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.metrics import Stopwatch, accuracy, passes_per_step

# documented, tuned defaults (docs/guides/benchmarks.md, "Tuning", says how they were chosen)
DEFAULT_HPARAMS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "adam": {"lr": 1e-3},
    "pso": {
        "num_particles": 8,
        "inertia": 0.7298,
        "cognitive": 1.49618,
        "social": 1.49618,
        "max_velocity": 0.1,
        "init_spread": 0.05,
    },
    "hgpso": {  # tuned on a held-out 10% of Fashion-MNIST's training set, see docs
        "lr": 0.05,
        "num_particles": 4,
        "inertia": 0.9,
        "cognitive": 0.1,
        "social": 0.1,
        "max_velocity": None,
        "init_spread": 1e-2,
        "forget": 0.5,
        "adaptive": False,
    },
}

# HG-PSO as a user gets it: ``hgpso.HGPSO``'s own defaults for the keys tuned above, read from
# its signature (so they follow the library), except the swarm size. ``num_particles`` is 4
# like the tuned entry, so both variants cost the same forward+backward passes per step and
# differ only in the settings tuning chose (the library's default is 8; --hgpso-default-num-
# particles overrides it).
HGPSO_DEFAULT_NUM_PARTICLES = 4


def library_default_hparams(keys=tuple(DEFAULT_HPARAMS["hgpso"])) -> dict[str, Any]:
    """``hgpso.HGPSO``'s signature defaults for ``keys``, ``num_particles`` set to
    :data:`HGPSO_DEFAULT_NUM_PARTICLES`."""
    import hgpso

    params = inspect.signature(hgpso.HGPSO).parameters
    missing = [k for k in keys if params.get(k) is None or params[k].default is params[k].empty]
    if missing:
        raise RuntimeError(f"hgpso.HGPSO has no default for {', '.join(missing)}")
    out = {k: params[k].default for k in keys}
    out["num_particles"] = HGPSO_DEFAULT_NUM_PARTICLES
    return out


DEFAULT_HPARAMS["hgpso-default"] = library_default_hparams()


def build_optimizer(name: str, params, hparams: dict[str, Any], seed: int):
    if name == "sgd":
        return torch.optim.SGD(params, lr=hparams["lr"], momentum=hparams.get("momentum", 0.0))
    if name == "adam":
        return torch.optim.Adam(params, lr=hparams["lr"])
    import hgpso

    if name in ("hgpso", "hgpso-default"):
        return hgpso.HGPSO(params, seed=seed, **hparams)
    if name == "pso":
        return hgpso.PSO(params, seed=seed, **hparams)
    raise ValueError(f"unknown optimizer {name!r}")


class BenchModule(pl.LightningModule):
    """Trains ``model`` with optimizer ``optimizer_name`` and records per-step metrics.

    Recorded (plain Python lists, read by the runner after ``Trainer.fit``):
    ``losses`` - the training loss the step reports (sgd/adam: the mini-batch loss before the
    update; pso/hgpso: the best particle's loss on the mini-batch), ``curve`` - one dict per
    evaluation (step, epoch, passes, ``train_seconds`` = seconds spent inside training steps so
    far, eval accuracy and loss), pass counters and training wall-clock (time inside training
    steps only, evaluation excluded).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer_name: str,
        hparams: dict[str, Any],
        seed: int = 0,
        chunk_size: int | None = None,
        steps_per_epoch: int = 1,
    ) -> None:
        super().__init__()
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.model = model
        self.optimizer_name = optimizer_name
        self.hparams_opt = dict(hparams)
        self.seed = seed
        self.chunk_size = chunk_size
        self.automatic_optimization = False
        n = int(hparams.get("num_particles", 1))
        self.fwd_per_step, self.bwd_per_step = passes_per_step(optimizer_name, n)
        self.losses: list[float] = []
        self.curve: list[dict[str, float]] = []
        self.steps = 0
        self.forward_passes = 0
        self.backward_passes = 0
        self.eval_forward_passes = 0
        self.train_clock = Stopwatch()
        self.stalled_at: int | None = None
        self._eval = [0, 0, 0.0]  # correct, total, loss sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def configure_optimizers(self):
        return build_optimizer(
            self.optimizer_name, self.model.parameters(), self.hparams_opt, self.seed
        )

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        opt = self.optimizers()
        self.train_clock.start()
        if self.optimizer_name in ("sgd", "adam"):
            opt.zero_grad()
            loss = F.cross_entropy(self.model(x), y)
            self.manual_backward(loss)
            opt.step()
        else:
            import hgpso

            closure = hgpso.vectorized_closure(
                self.model, F.cross_entropy, x, y, chunk_size=self.chunk_size
            )
            loss = opt.step(closure=closure)
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        self.train_clock.stop()
        self.steps += 1
        self.forward_passes += self.fwd_per_step
        self.backward_passes += self.bwd_per_step
        self.losses.append(value)
        raw = getattr(opt, "optimizer", opt)
        if self.stalled_at is None and getattr(raw, "stalled", False):
            self.stalled_at = self.steps
        self.log("train_loss", value, prog_bar=True, on_step=True, logger=False)

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:
        self._eval = [0, 0, 0.0]

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        correct, total = accuracy(logits, y)
        self._eval[0] += correct
        self._eval[1] += total
        self._eval[2] += float(F.cross_entropy(logits, y, reduction="sum"))
        self.eval_forward_passes += 1

    def on_validation_epoch_end(self) -> None:
        correct, total, loss_sum = self._eval
        if total == 0 or self.trainer.sanity_checking:
            return
        acc = correct / total
        self.curve.append(
            {
                "step": self.steps,
                "epoch": self.steps / self.steps_per_epoch,
                "passes": self.forward_passes + self.backward_passes,
                "train_seconds": self.train_clock.total,
                "eval_accuracy": acc,
                "eval_loss": loss_sum / total,
            }
        )
        self.log("eval_acc", acc, prog_bar=True, logger=False)

    @torch.no_grad()
    def dataset_loss(self, loader) -> tuple[float, float]:
        """Mean cross-entropy and accuracy of the current weights over ``loader``."""
        was_training = self.model.training
        self.model.eval()
        correct = total = 0
        loss_sum = 0.0
        for x, y in loader:
            x, y = x.to(self.device), y.to(self.device)
            logits = self.model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            c, t = accuracy(logits, y)
            correct += c
            total += t
            self.eval_forward_passes += 1
        self.model.train(was_training)
        return loss_sum / max(1, total), correct / max(1, total)
