"""The LightningModule that trains one model with one optimizer and records the metrics.

Every optimizer of ``benchmarks.registry`` runs under manual optimization, so the loop is the
same for each and only the step differs:

* gradient optimizers (``sgd``, ``adam``, ``adamw``, ``swa``, ``lookahead``): ``zero_grad``,
  forward, ``manual_backward``, ``step``.
* swarms (``hgpso``, ``hgpso-default``, ``hgpso-adam``):
  ``step(hgpso.vectorized_closure(model, cross_entropy, x, y))`` - every particle's
  loss and gradient in one call (``torch.func``; vmapped on CUDA, a loop of functional calls on
  CPU where vmapped convolutions are slower, see ``hgpso.evaluate.vectorized``); ``pso``: the
  same vectorized closure, asked for losses only (no backward pass).

After a swarm step the model holds the swarm's readout (the global best by default), so
validation and the final loss evaluate exactly the weights the optimizer returns. An optimizer
with its own readout (SWA's averaged model) is evaluated through its ``evaluated_model``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import registry
from benchmarks.metrics import Stopwatch, accuracy
from benchmarks.registry import DEFAULT_HPARAMS, library_default_hparams

__all__ = ["DEFAULT_HPARAMS", "BenchModule", "library_default_hparams"]


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
        total_steps: int = 1,
    ) -> None:
        super().__init__()
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = max(1, total_steps)
        self.spec = registry.optimizer_spec(optimizer_name)
        self.model = model
        self.optimizer_name = optimizer_name
        self.hparams_opt = dict(hparams)
        self.seed = seed
        self.chunk_size = chunk_size
        self.automatic_optimization = False
        self.fwd_per_step, self.bwd_per_step = self.spec.passes(hparams)
        self.bench_optimizer: Any = None  # what configure_optimizers built
        self.losses: list[float] = []
        self.curve: list[dict[str, float]] = []
        self.steps = 0
        self.forward_passes = 0
        self.backward_passes = 0
        self.eval_forward_passes = 0
        self.train_clock = Stopwatch()
        self.stalled_at: int | None = None
        self._eval = [0, 0, 0.0]  # correct, total, loss sum
        self._eval_target: tuple[nn.Module] = (model,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def configure_optimizers(self):
        ctx = registry.BuildContext(self.seed, self.model, self.steps_per_epoch, self.total_steps)
        self.bench_optimizer = registry.build_optimizer(
            self.optimizer_name, self.model.parameters(), self.hparams_opt, ctx
        )
        return self.bench_optimizer

    def evaluated_model(self) -> nn.Module:
        """The weights an evaluation scores: the model, or the optimizer's own readout (SWA's
        averaged model; its BatchNorm update counts as evaluation forward passes)."""
        readout = getattr(self.bench_optimizer, "evaluated_model", None)
        if readout is None:
            return self.model
        model, passes = readout(lambda: self.trainer.datamodule.train_dataloader())
        self.eval_forward_passes += passes
        return model

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        opt = self.optimizers()
        self.train_clock.start()
        if not self.spec.swarm:
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
        # a tuple: a module attribute would register the model as a submodule
        self._eval_target = (self.evaluated_model().eval(),)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self._eval_target[0](x)
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
        spread = self.particle_spread()
        if spread is not None:  # how far apart the particles are (a collapsed swarm: ~0)
            self.curve[-1]["spread"] = spread
        self.log("eval_acc", acc, prog_bar=True, logger=False)

    def readout_scores(self, loader) -> dict[str, dict[str, float]]:
        """A swarm's final weights scored on ``loader`` under each readout: ``gbest``, ``mean``
        (all particles) and ``mean_k<N/2>`` (the best half), each ``{"accuracy", "loss"}``;
        ``{}`` for other optimizers. The swarm's trajectory does not depend on the readout
        (:meth:`hgpso.HGPSO.write_readout`), so one run gives all three; the model is left on
        the configured readout."""
        opt = self.bench_optimizer
        if not hasattr(opt, "write_readout"):
            return {}
        half = max(1, opt.num_particles // 2)
        scores: dict[str, dict[str, float]] = {}
        readouts: list[tuple[str, str, int | None]] = [
            ("gbest", "gbest", None),
            ("mean", "mean", None),
        ]
        readouts.append((f"mean_k{half}", "mean", half))
        for name, readout, k in readouts:
            opt.write_readout(readout, k)
            loss, acc = self.dataset_loss(loader)
            scores[name] = {"accuracy": acc, "loss": loss}
        opt.write_readout()
        return scores

    def particle_spread(self) -> dict[str, float] | None:
        """The swarm's :meth:`hgpso.HGPSO.particle_spread` (None for other optimizers)."""
        opt = self.bench_optimizer
        if not hasattr(opt, "particle_spread") or self.steps == 0:
            return None
        return opt.particle_spread()

    @torch.no_grad()
    def dataset_loss(self, loader) -> tuple[float, float]:
        """Mean cross-entropy and accuracy of the current weights over ``loader``."""
        was_training = self.model.training
        model = self.evaluated_model()
        model.eval()
        correct = total = 0
        loss_sum = 0.0
        for x, y in loader:
            x, y = x.to(self.device), y.to(self.device)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            c, t = accuracy(logits, y)
            correct += c
            total += t
            self.eval_forward_passes += 1
        self.model.train(was_training)
        return loss_sum / max(1, total), correct / max(1, total)
