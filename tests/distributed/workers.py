"""Worker functions run on every rank by :func:`tests.distributed.launch.run_workers`.

Each builds the same tiny problem, gives rank ``r`` its own shard of a global batch, trains a
few steps and saves the parameters and the whole optimizer state to ``out/rank{r}.pt`` for the
test to compare across ranks and against a one-process run on the global batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import hgpso
from hgpso.distributed import SwarmPeerError
from tests.helpers import TinyNet

STEPS = 12
SHARD = 8  # examples per rank and step


def global_batches(world_size: int, steps: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The global batches: ``world_size * SHARD`` examples each, rank r takes rows r*SHARD..."""
    g = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(steps):
        x = torch.randn(world_size * SHARD, 6, generator=g)
        y = torch.randint(0, 3, (world_size * SHARD,), generator=g)
        out.append((x, y))
    return out


def shard(batch: tuple[torch.Tensor, torch.Tensor], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    return x[rank * SHARD : (rank + 1) * SHARD], y[rank * SHARD : (rank + 1) * SHARD]


def make_optimizer(kind: str, params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    if kind == "pso":
        return hgpso.PSO(params, num_particles=4, **kwargs)
    return hgpso.HGPSO(params, lr=0.05, num_particles=4, **kwargs)


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    comm = getattr(opt, "_comm", None)
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "optim": opt.state_dict(),
        "collectives": None if comm is None else comm.collectives,
    }


def train(
    rank: int,
    world_size: int,
    out: Path,
    *,
    path: str,
    optim: str = "hgpso",
    seed: int | None = None,
    steps: int = STEPS,
    distributed: str = "replicated",
    nan_at: tuple[int, int, int] | None = None,
) -> None:
    """``path``: "ddp" (DDP model, plain closure), "closure" (plain model and closure) or
    "vectorized" (plain model, hgpso.vectorized_closure). The global torch RNG is seeded
    differently on each rank, so the model's initial weights and the swarm seed differ until
    the optimizer agrees on rank 0's. ``nan_at=(step, rank, particle)`` makes that rank's
    loss of that particle NaN at that step."""
    torch.manual_seed(100 + rank)
    model = TinyNet()
    net: nn.Module = DistributedDataParallel(model) if path == "ddp" else model
    opt = make_optimizer(optim, model.parameters(), seed=seed, distributed=distributed)
    for t, batch in enumerate(global_batches(world_size, steps)):
        x, y = shard(batch, rank)
        poison = nan_at is not None and nan_at[0] == t and nan_at[1] == rank
        if path == "vectorized" and not poison:
            opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))
            continue
        calls = [0]

        def closure(
            x: torch.Tensor = x,
            y: torch.Tensor = y,
            calls: list[int] = calls,
            poison: bool = poison,
        ) -> Any:
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            if poison and nan_at is not None and calls[0] == nan_at[2]:
                loss = loss * float("nan")
            calls[0] += 1
            return loss

        opt.step(closure)
    torch.save(snapshot(model, opt), out / f"rank{rank}.pt")


def train_resume(rank: int, world_size: int, out: Path, *, path: str) -> None:
    """Train 2*k steps straight, and k steps + save + rebuild + load + k steps."""
    k = STEPS // 2
    batches = global_batches(world_size)
    runs = {}
    for label in ("straight", "resumed"):
        torch.manual_seed(100 + rank)
        model = TinyNet()
        opt = make_optimizer("hgpso", model.parameters())
        for t, batch in enumerate(batches):
            if label == "resumed" and t == k:
                state = {"model": model.state_dict(), "optim": opt.state_dict()}
                torch.manual_seed(999 + rank)  # a fresh process would have another RNG state
                model = TinyNet()
                model.load_state_dict(state["model"])
                opt = make_optimizer("hgpso", model.parameters())
                opt.load_state_dict(state["optim"])
            x, y = shard(batch, rank)
            opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))
        runs[label] = snapshot(model, opt)
    torch.save(runs, out / f"rank{rank}.pt")


def closure_failing_on(
    opt: torch.optim.Optimizer, net: nn.Module, x: torch.Tensor, y: torch.Tensor, fail: bool
) -> Callable[[], torch.Tensor]:
    """A cross-entropy closure for one batch that raises ValueError instead when ``fail``."""

    def closure() -> torch.Tensor:
        opt.zero_grad()
        if fail:
            raise ValueError("bad batch on purpose")
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss

    return closure


def fail_on_rank(rank: int, world_size: int, out: Path, *, bad_rank: int, path: str) -> None:
    """Rank ``bad_rank``'s closure raises at step 2; every rank records what it raised."""
    torch.manual_seed(0)
    model = TinyNet()
    net: nn.Module = DistributedDataParallel(model) if path == "ddp" else model
    opt = make_optimizer("hgpso", model.parameters(), seed=3)
    result: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        for t, batch in enumerate(global_batches(world_size, 4)):
            x, y = shard(batch, rank)

            before = [p.detach().clone() for p in model.parameters()]
            opt.step(closure_failing_on(opt, net, x, y, t == 2 and rank == bad_rank))
    except SwarmPeerError as e:
        result = {"type": "SwarmPeerError", "message": str(e), "failed": e.failed_ranks}
    except Exception as e:
        result = {"type": type(e).__name__, "message": str(e)}
    result["seconds"] = time.monotonic() - t0
    result["params_restored"] = all(
        torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True)
    )
    torch.save(result, out / f"rank{rank}.pt")


def mismatched_config(rank: int, world_size: int, out: Path, *, what: str) -> None:
    torch.manual_seed(0)
    model = TinyNet(d_hidden=8 + rank if what == "model" else 8)
    n = 4 + rank if what == "num_particles" else 4
    try:
        hgpso.HGPSO(model.parameters(), num_particles=n)
        result = {"type": None, "message": ""}
    except ValueError as e:
        result = {"type": "ValueError", "message": str(e)}
    torch.save(result, out / f"rank{rank}.pt")


def barrier_only(rank: int, world_size: int, out: Path) -> None:
    dist.barrier()


def train_subgroup(rank: int, world_size: int, out: Path) -> None:
    """Ranks 1 and 2 share a swarm over their own group; rank 0 trains alone."""
    group = dist.new_group([1, 2])  # every rank takes part in creating it
    torch.manual_seed(100 + rank)
    model = TinyNet()
    if rank == 0:
        opt = make_optimizer("hgpso", model.parameters(), distributed="independent")
    else:
        opt = make_optimizer("hgpso", model.parameters(), process_group=group)
    start = [p.detach().clone() for p in model.parameters()]
    for batch in global_batches(world_size, 6):
        x, y = shard(batch, rank)
        opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))
    torch.save({**snapshot(model, opt), "start": start}, out / f"rank{rank}.pt")
