"""Workers for tests/distributed/test_agreement.py: ranks that build their swarm differently.

:func:`check_cases` calls :meth:`hgpso.distributed.SwarmComm.check_config` directly, one case
after the other in one process group (a rank that left the lock-step in one case would hang
or fail the next); :func:`build_optimizers` builds real optimizers that differ per rank.
Every outcome (type, message, seconds, collectives) is saved to ``out/rank{r}.pt``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import hgpso
from hgpso.distributed import SwarmComm

#: a plain description, as the optimizer builds one; cases change one key per rank
BASE: dict[str, object] = {
    "optimizer class": "HGPSO",
    "distributed": "replicated",
    "num_particles": 4,
    "forget": 1.0,
    "param group 0 lr": 0.01,
    "param group 0 inertia": 0.7,
    "parameter shapes": [[2, 6], [2]],
    "parameter dtypes": ["float32", "float32"],
}


def outcome(fn: Callable[[], Any]) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        fn()
        result: dict[str, Any] = {"type": None, "message": ""}
    except Exception as e:
        result = {"type": type(e).__name__, "message": str(e)}
    result["seconds"] = time.monotonic() - t0
    return result


def pick(value: Any, rank: int) -> Any:
    """``value`` is either the same for every rank or ``{"per_rank": [v0, v1, ...]}``."""
    if isinstance(value, dict) and "per_rank" in value:
        return value["per_rank"][rank]
    return value


def check_cases(rank: int, world_size: int, out: Path, *, cases: list[dict[str, Any]]) -> None:
    """Each case: ``mode``, ``n``, ``shapes`` (the parameters' shapes) and ``description``
    (``None`` or a dict), each the same everywhere or per rank."""
    results = []
    for case in cases:
        comm = SwarmComm.resolve(None, pick(case.get("mode", "replicated"), rank))
        assert comm is not None
        params = [torch.zeros(s) for s in pick(case.get("shapes", [[2, 6], [2]]), rank)]
        result = outcome(
            lambda comm=comm, params=params, case=case: comm.check_config(
                params=params,
                num_particles=pick(case.get("n", 4), rank),
                description=pick(case.get("description"), rank),
            )
        )
        result["collectives"] = comm.collectives
        results.append(result)
    dist.barrier()  # still in lock-step after every case
    torch.save(results, out / f"rank{rank}.pt")


def build_optimizers(rank: int, world_size: int, out: Path, *, cases: list[dict[str, Any]]) -> None:
    """Each case: ``optim`` ("hgpso"/"pso"), ``shapes``, and optimizer keyword arguments
    ``kwargs``, each the same everywhere or per rank. The optimizer takes one step on a
    quadratic when it builds, so a disagreement the check misses shows up as a hang or a
    crash in the step's collectives instead of passing unnoticed."""
    results = []
    for case in cases:
        torch.manual_seed(0)
        params = [torch.randn(s, requires_grad=True) for s in pick(case["shapes"], rank)]
        kwargs = pick(case.get("kwargs", {}), rank)
        kind = pick(case["optim"], rank)

        def build_and_step(
            params: list[torch.Tensor] = params, kwargs: Any = kwargs, kind: str = kind
        ) -> None:
            cls = hgpso.PSO if kind == "pso" else hgpso.HGPSO
            opt = cls(params, num_particles=4, **kwargs)

            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = sum((p**2).sum() for p in params)
                assert isinstance(loss, torch.Tensor)
                if kind != "pso":
                    loss.backward()
                return loss

            opt.step(closure)

        results.append(outcome(build_and_step))
    dist.barrier()
    torch.save(results, out / f"rank{rank}.pt")
