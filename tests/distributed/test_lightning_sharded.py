"""A particle-sharded swarm under a real Lightning Trainer on 2 CPU processes (gloo), with
:class:`lightning_callbacks.SwarmShardedStrategy`: the model is not wrapped in DDP, every
rank is given every batch (in the same seeded order), the checkpoints ``ModelCheckpoint``
writes hold every particle, and ``fit(ckpt_path=...)`` resumes to the uninterrupted run,
on 2 ranks exactly and on 1 rank to float rounding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import hgpso
from tests.distributed import launch
from tests.distributed.test_sharded import assert_close, assert_equal

pytest.importorskip("lightning")
pytestmark = pytest.mark.timeout(300)

from lightning_callbacks import SwarmShardedStrategy  # noqa: E402  (after the importorskip)
from tests.distributed import lit_sharded_script as lss  # noqa: E402

SCRIPT = Path(lss.__file__)
STEPS_PER_EPOCH = 8  # 64 examples, batches of 8, on every rank: not split over the 2 ranks


def load(out: Path, run: str, devices: int) -> list[dict[str, Any]]:
    return [
        torch.load(out / f"{run}-w{devices}-rank{r}.pt", weights_only=False) for r in range(devices)
    ]


def per_particle(optim_state: dict[str, Any]) -> list[torch.Tensor]:
    """Every parameter's particle positions, ``(N_rank, *shape)``."""
    return [st["position"] for st in optim_state["state"].values() if "position" in st]


@pytest.mark.parametrize("mode", ["manual", "auto"])
def test_sharded_swarm_under_lightning_resumes_to_the_uninterrupted_run(tmp_path, mode):
    launch.run_script(SCRIPT, tmp_path, mode, str(tmp_path), "2", "straight", "resumed")
    straight, resumed = load(tmp_path, "straight", 2), load(tmp_path, "resumed", 2)
    for runs in (straight, resumed):
        assert [r["wrapped"] for r in runs] == ["Lit", "Lit"]  # no DDP wrapper
        assert runs[0]["seen"] == runs[1]["seen"]  # the same batches on both ranks
        assert_equal(runs[0]["params"], runs[1]["params"], "the global best on both ranks")
        rows = [r["optim"]["state"]["swarm"]["shard"] for r in runs]
        assert [(s["start"], s["stop"]) for s in rows] == [(0, 3), (3, lss.N)]
    assert len(straight[0]["seen"]) == lss.EPOCHS * STEPS_PER_EPOCH
    assert resumed[0]["seen"] == straight[0]["seen"][STEPS_PER_EPOCH:]  # epoch 1, same order
    # the checkpoint Lightning wrote from rank 0 holds all N particles, not rank 0's 3
    ckpt = torch.load(tmp_path / "ckpt" / "epoch=0.ckpt", weights_only=False)
    (optim,) = ckpt["optimizer_states"]
    assert optim["state"]["swarm"]["step"] == STEPS_PER_EPOCH
    assert all(pos.shape[0] == lss.N for pos in per_particle(optim))
    # 1 epoch + ModelCheckpoint + fit(ckpt_path) == 2 epochs straight, on every rank, bit
    # for bit: weights and every rank's own shard of the swarm (positions, velocities,
    # random streams, counters)
    for r in range(2):
        assert_equal(resumed[r]["params"], straight[r]["params"], f"rank {r}'s weights")
        assert_equal(resumed[r]["optim"], straight[r]["optim"], f"rank {r}'s swarm")


def test_a_two_rank_checkpoint_resumes_on_one_rank(tmp_path):
    """The consolidated checkpoint loads on another number of ranks: the one-process
    resume (all N particles, each on its own random stream) continues the 2-rank run."""
    launch.run_script(SCRIPT, tmp_path, "manual", str(tmp_path), "2", "straight")
    launch.run_script(SCRIPT, tmp_path, "manual", str(tmp_path), "1", "resumed")
    (one,) = load(tmp_path, "resumed", 1)
    straight = load(tmp_path, "straight", 2)
    assert one["seen"] == straight[0]["seen"][STEPS_PER_EPOCH:]
    assert one["optim"]["state"]["swarm"]["shard"]["stop"] == lss.N
    assert_close(one["params"], straight[0]["params"], "weights resumed on 1 rank")
    both = [
        torch.cat(rows) for rows in zip(*(per_particle(s["optim"]) for s in straight), strict=True)
    ]
    assert_close(per_particle(one["optim"]), both, "positions resumed on 1 rank")


def test_strategy_refuses_optimizers_that_are_not_sharded_swarms():
    model = torch.nn.Linear(3, 2)
    strategy = SwarmShardedStrategy()
    assert strategy.distributed_sampler_kwargs == {"num_replicas": 1, "rank": 0}
    for opt, needle in (
        (hgpso.HGPSO(model.parameters(), num_particles=2), "HGPSO(distributed='replicated')"),
        (torch.optim.SGD(model.parameters(), lr=0.1), "optimizer 0 is SGD:"),
    ):
        strategy.optimizers = [opt]
        with pytest.raises(ValueError, match="SwarmShardedStrategy") as err:
            strategy._check_optimizers()
        assert needle in str(err.value) and "distributed='sharded'" in str(err.value)
    sharded = hgpso.HGPSO(model.parameters(), num_particles=2, distributed="sharded")
    strategy.optimizers = [sharded]
    strategy._check_optimizers()  # accepted
