"""Sharded swarms checkpointed on W ranks and resumed on W' ranks (through
:func:`tests.distributed.launch.run_workers`, or in the test process itself: no process
group, one process holding every particle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.distributed import sharded_workers as sw

K = sw.STEPS // 2


def _steps(opt: Any, model: Any, cfg: dict[str, Any], ts: range) -> None:
    data = sw.batches()
    for t in ts:
        x, y = data[t]
        sw.step_once(opt, model, cfg, t, x, y)


def _result(model: Any, opt: Any) -> dict[str, Any] | None:
    full = opt.consolidated_state_dict(to=0)  # a collective: every rank calls it
    if full is None:
        return None
    return {"model": {k: v.clone() for k, v in model.state_dict().items()}, "optim": full}


def train_and_consolidate(rank: int, world_size: int, out: Path, *, cfg: dict[str, Any]) -> None:
    """K steps, a consolidated checkpoint (rank 0 writes it), K more steps, the final swarm."""
    torch.manual_seed(100 + rank)
    model = sw.make_model(cfg.get("bn", False))
    opt = sw.make_optimizer(cfg, model.parameters())
    _steps(opt, model, cfg, range(K))
    ckpt = _result(model, opt)
    if ckpt is not None:
        torch.save(ckpt, out / "ckpt.pt")
    _steps(opt, model, cfg, range(K, 2 * K))
    final = _result(model, opt)
    if final is not None:
        torch.save(final, out / "straight.pt")


def resume(rank: int, world_size: int, out: Path, *, cfg: dict[str, Any], ckpt_path: str) -> None:
    """Every rank loads the consolidated checkpoint, then the last K steps."""
    ckpt = torch.load(ckpt_path, weights_only=False)
    torch.manual_seed(999 + rank)  # another torch RNG state, as in a fresh process
    model = sw.make_model(cfg.get("bn", False))
    model.load_state_dict(ckpt["model"])
    opt = sw.make_optimizer(cfg, model.parameters())
    opt.load_state_dict(ckpt["optim"])
    assert opt.state["swarm"]["step"] == K
    _steps(opt, model, cfg, range(K, 2 * K))
    final = _result(model, opt)
    if final is not None:
        torch.save(final, out / f"resumed{world_size}.pt")
