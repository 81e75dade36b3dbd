"""``SwarmShardedStrategy``: Lightning's DDP processes for a particle-sharded swarm.

``HGPSO(..., distributed="sharded")`` and ``PSO(..., distributed="sharded")`` split the
*particles* over the ranks, not the data (see ``docs/guides/distributed.md``). That needs
three things Lightning's :class:`~lightning.pytorch.strategies.DDPStrategy` does the other
way round, and this strategy changes exactly those:

- **no DistributedDataParallel wrapper**: DDP would average the gradients of different
  particles (the swarm refuses a DDP model in sharded mode). The module is not wrapped;
  rank 0's parameters and buffers are broadcast once instead, as DDP's constructor does;
- **the same batches on every rank**: the swarm compares the losses of particles scored on
  different ranks, so they must be losses on the same data. Lightning's distributed sampler
  is injected with ``num_replicas=1``: every rank iterates the whole dataset, in the same
  seeded order (``shuffle=True`` loaders are shuffled by the sampler's seed and the epoch,
  not by each process's RNG), so an epoch has as many steps as on one process;
- **checkpoints hold every particle**: Lightning saves the optimizer state from rank 0
  only, and a sharded rank's ``state_dict()`` holds its own particles. ``optimizer_state``
  returns the optimizer's ``consolidated_state_dict(to=0)`` (a collective: every rank calls
  it) on rank 0 and ``{}`` on the others, as Lightning does for torch's
  ``ZeroRedundancyOptimizer``; on ``fit(ckpt_path=...)`` every rank loads that one dict and
  keeps its own particles' rows, so a checkpoint also resumes on another number of ranks.

Everything else (the launcher, the process group, ``reduce``/``broadcast``, the precision
plugin, validation and logging) is the DDP strategy's. Use it with every optimizer a sharded
swarm over the default process group; anything else is refused when fitting starts::

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=SwarmShardedStrategy())
    trainer.fit(model)  # configure_optimizers: HGPSO(..., distributed="sharded")
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim import Optimizer

__all__ = ["SwarmShardedStrategy"]


def _unwrap(optimizer: Optimizer) -> Optimizer:
    return optimizer._optimizer if isinstance(optimizer, LightningOptimizer) else optimizer


class SwarmShardedStrategy(DDPStrategy):
    """A :class:`~lightning.pytorch.strategies.DDPStrategy` for ``distributed="sharded"``
    swarms: no DDP wrapper, the same batches on every rank, consolidated checkpoints.

    Takes the arguments of ``DDPStrategy`` (``start_method="spawn"`` for
    ``ddp_spawn``-style launching, ``timeout``, ``process_group_backend``, ...); those that
    configure the DDP wrapper itself (``find_unused_parameters``, communication hooks) have
    no effect, since there is no wrapper.
    """

    strategy_name = "swarm_sharded"

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        """Lightning's injected sampler has one replica, so every rank gets every batch."""
        return {"num_replicas": 1, "rank": 0}

    def configure_ddp(self) -> None:
        """Do not wrap the model; give every rank rank 0's parameters and buffers."""
        assert self.model is not None
        _sync_module_states(self.model)

    def setup(self, trainer: pl.Trainer) -> None:
        super().setup(trainer)
        if trainer.state.fn == TrainerFn.FITTING:
            self._check_optimizers()

    def _check_optimizers(self) -> None:
        for i, optimizer in enumerate(self.optimizers):
            opt = _unwrap(optimizer)
            mode = getattr(opt, "distributed", None)
            if mode != "sharded" or not callable(getattr(opt, "consolidated_state_dict", None)):
                what = type(opt).__name__ + (f"(distributed={mode!r})" if mode else "")
                raise ValueError(
                    f"SwarmShardedStrategy trains swarms sharded over the ranks, but "
                    f"optimizer {i} is {what}: return HGPSO(..., distributed='sharded') or "
                    "PSO(..., distributed='sharded') from configure_optimizers, or use "
                    "strategy='ddp' (every rank its own data shard, a replicated swarm)"
                )

    def optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        """Every particle's state on rank 0 (``{}`` elsewhere). A collective: Lightning
        calls it on every rank when it saves a checkpoint."""
        state = _unwrap(optimizer).consolidated_state_dict(to=0)  # type: ignore[attr-defined]
        return state if self.is_global_zero and state is not None else {}
