"""Start W gloo processes on this machine, wait for them with a deadline, stop them all.

Workers are module-level functions ``fn(rank, world_size, out_dir, **kwargs)`` run after
``init_process_group("gloo")`` over a file store in ``out_dir``; they save what the test
compares under ``out_dir``. A worker that raises fails the test with its traceback; one that
outlives the deadline fails it too, after every process started here is killed.
"""

from __future__ import annotations

import datetime
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.scaling import spawn_bounded

#: the process group's own timeout: a collective that never completes fails after this
PG_TIMEOUT_S = 60


def _entry(
    rank: int, fn: Callable[..., None], world_size: int, out_dir: str, kwargs: dict[str, Any]
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out_dir}/store",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=kwargs.pop("pg_timeout_s", PG_TIMEOUT_S)),
    )
    try:
        fn(rank, world_size, Path(out_dir), **kwargs)
    except BaseException:
        (Path(out_dir) / f"error{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_workers(
    fn: Callable[..., None],
    world_size: int,
    out_dir: Path,
    *,
    timeout_s: float = 90.0,
    **kwargs: Any,
) -> None:
    """Run ``fn`` on ``world_size`` spawned processes; raise if any fails or hangs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        spawn_bounded(_entry, (fn, world_size, str(out_dir), kwargs), world_size, timeout_s)
    except mp.ProcessException as e:
        errors = sorted(out_dir.glob("error*.txt"))
        detail = "\n".join(p.read_text() for p in errors)
        raise AssertionError(f"a worker failed:\n{detail or e}") from None
