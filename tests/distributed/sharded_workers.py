"""Runs of ``distributed="sharded"`` swarms, used both on every rank of a gloo group (through
:func:`tests.distributed.launch.run_workers`) and, as the reference, in the test process
itself (no process group: one process holding every particle).

Every rank scores its particles on the same batches (the sharded mode's contract); the
model's initial weights and torch's global RNG differ per rank until the optimizer agrees on
rank 0's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import hgpso
from hgpso.distributed import SwarmPeerError
from tests.distributed.workers import closure_failing_on

STEPS = 6


def make_model(batchnorm: bool) -> nn.Module:
    if batchnorm:
        return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def batches(steps: int = STEPS, *, offset: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same batches on every rank (``offset`` gives other ones)."""
    g = torch.Generator().manual_seed(1234 + offset)
    return [
        (torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))
        for _ in range(steps)
    ]


def make_optimizer(cfg: dict[str, Any], params: Any) -> torch.optim.Optimizer:
    kwargs = {"num_particles": cfg["n"], "seed": 7, "distributed": "sharded"}
    if "forget" in cfg:
        kwargs["forget"] = cfg["forget"]
    for key in ("gradient", "weight_decay", "readout", "readout_k", "lr_spread", "lr_pull"):
        if key in cfg:
            kwargs[key] = cfg[key]
    if cfg["optim"] == "pso":
        return hgpso.PSO(params, **kwargs)
    return hgpso.HGPSO(params, lr=0.05, **kwargs)


def step_once(
    opt: torch.optim.Optimizer,
    model: nn.Module,
    cfg: dict[str, Any],
    t: int,
    x: torch.Tensor,
    y: torch.Tensor,
) -> None:
    """One step on (x, y); ``cfg["nan_at"] = (step, particle)`` poisons that particle's loss
    (a global index: the rank holding it sees the NaN)."""
    nan_at = cfg.get("nan_at")
    if cfg["path"] == "vectorized" and nan_at is None:
        opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))
        return
    first = opt._rows.start  # type: ignore[attr-defined]
    calls = [0]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if cfg["optim"] != "pso":
            loss.backward()
        if nan_at is not None and nan_at[0] == t and first + calls[0] == nan_at[1]:
            loss = loss * float("nan")
        calls[0] += 1
        return loss

    opt.step(closure)


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "optim": opt.state_dict(),
        "rows": [opt._rows.start, opt._rows.stop],  # type: ignore[attr-defined]
        "bytes": None if opt._comm is None else opt._comm.bytes_communicated,  # type: ignore[attr-defined]
    }


def run_config(cfg: dict[str, Any], rank: int = 0) -> dict[str, Any]:
    torch.manual_seed(100 + rank)
    model = make_model(cfg.get("bn", False))
    opt = make_optimizer(cfg, model.parameters())
    for t, (x, y) in enumerate(batches()):
        step_once(opt, model, cfg, t, x, y)
    return snapshot(model, opt)


def train(rank: int, world_size: int, out: Path, *, configs: list[dict[str, Any]]) -> None:
    torch.save([run_config(cfg, rank) for cfg in configs], out / f"rank{rank}.pt")


def readout_views(cfg: dict[str, Any], rank: int = 0) -> dict[str, Any]:
    """:func:`run_config`, then the collectives of the readout: the particles' mean (all,
    and the best 2) and their spread."""
    torch.manual_seed(100 + rank)
    model = make_model(cfg.get("bn", False))
    opt = make_optimizer(cfg, model.parameters())
    for t, (x, y) in enumerate(batches()):
        step_once(opt, model, cfg, t, x, y)
    return {
        **snapshot(model, opt),
        "mean": opt.particle_mean(),  # type: ignore[attr-defined]
        "mean_best_2": opt.particle_mean(k=2),  # type: ignore[attr-defined]
        "spread": opt.particle_spread(),  # type: ignore[attr-defined]
    }


def train_readout(rank: int, world_size: int, out: Path, *, cfg: dict[str, Any]) -> None:
    torch.save(readout_views(cfg, rank), out / f"rank{rank}.pt")


def train_resume(rank: int, world_size: int, out: Path, *, cfg: dict[str, Any]) -> None:
    """2k steps straight, and k steps + state_dict + a rebuilt model and optimizer (another
    torch RNG state, as in a fresh process) + load + k steps; rank r's state at k saved."""
    k = STEPS // 2
    runs: dict[str, Any] = {}
    for label in ("straight", "resumed"):
        torch.manual_seed(100 + rank)
        model = make_model(cfg.get("bn", False))
        opt = make_optimizer(cfg, model.parameters())
        for t, (x, y) in enumerate(batches()):
            if label == "resumed" and t == k:
                state = {"model": model.state_dict(), "optim": opt.state_dict()}
                torch.save(state, out / f"ckpt{rank}.pt")
                torch.manual_seed(999 + rank)
                model = make_model(cfg.get("bn", False))
                model.load_state_dict(state["model"])
                opt = make_optimizer(cfg, model.parameters())
                opt.load_state_dict(state["optim"])
            step_once(opt, model, cfg, t, x, y)
        runs[label] = snapshot(model, opt)
    torch.save(runs, out / f"rank{rank}.pt")


def _outcome(fn: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        fn()
        result: dict[str, Any] = {"type": None, "message": ""}
    except SwarmPeerError as e:
        result = {"type": "SwarmPeerError", "message": str(e), "failed": e.failed_ranks}
    except Exception as e:
        result = {"type": type(e).__name__, "message": str(e)}
    result["seconds"] = time.monotonic() - t0
    return result


def failures(rank: int, world_size: int, out: Path, *, bad_rank: int) -> None:
    """In one process group, one after the other: a closure raising on ``bad_rank``; a
    swarm smaller than the group; ranks scoring different batches; a DDP model. Each case
    records what every rank raised and whether the model stayed on the global best."""
    results: dict[str, Any] = {}
    cfg = {"optim": "hgpso", "n": 5, "path": "closure"}

    # 1. a closure raising on one rank, at step 2
    torch.manual_seed(0)
    model = make_model(False)
    opt = make_optimizer(cfg, model.parameters())
    data = batches(3)
    before: list[torch.Tensor] = []

    def raising() -> None:
        nonlocal before
        for t, (x, y) in enumerate(data):
            before = [p.detach().clone() for p in model.parameters()]
            opt.step(closure_failing_on(opt, model, x, y, t == 2 and rank == bad_rank))

    results["raise"] = _outcome(raising)
    results["raise"]["params_restored"] = all(
        torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True)
    )
    results["raise"]["step"] = opt.state_dict()["state"]["swarm"]["step"]

    # 2. fewer particles than ranks
    results["too_few"] = _outcome(
        lambda: hgpso.HGPSO(make_model(False).parameters(), num_particles=2, distributed="sharded")
    )

    # 3. ranks scoring different batches (vectorized closure: the batch is seen)
    torch.manual_seed(0)
    model = make_model(False)
    opt = make_optimizer({**cfg, "path": "vectorized"}, model.parameters())
    x, y = batches(1)[0]
    opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))
    saved = opt.state_dict()
    start = [p.detach().clone() for p in model.parameters()]
    xr, yr = batches(1, offset=rank)[0]  # rank 0's equals the others' only on rank 0
    results["batches"] = _outcome(
        lambda: opt.step(hgpso.vectorized_closure(model, F.cross_entropy, xr, yr))
    )
    after = opt.state_dict()
    results["batches"]["unchanged"] = all(
        torch.equal(p, q) for p, q in zip(model.parameters(), start, strict=True)
    ) and all(
        torch.equal(saved["state"][k]["position"], after["state"][k]["position"])
        for k in saved["state"]
        if k != "swarm"
    )
    results["batches"]["step"] = after["state"]["swarm"]["step"]

    # 4. a DDP-wrapped model
    torch.manual_seed(0)
    model = make_model(False)
    ddp = DistributedDataParallel(model)
    opt = make_optimizer(cfg, model.parameters())

    def ddp_step() -> None:
        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(ddp(x), y)
            loss.backward()
            return loss

        opt.step(closure)

    results["ddp"] = _outcome(ddp_step)
    dist.barrier()
    torch.save(results, out / f"rank{rank}.pt")
