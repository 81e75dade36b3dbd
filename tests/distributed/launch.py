"""Start W gloo processes on this machine, wait for them with a deadline, stop them all.

(:func:`run_script` does the same for a script that starts its own ranks, as Lightning's
launcher does.)

Workers are module-level functions ``fn(rank, world_size, out_dir, **kwargs)`` run after
``init_process_group("gloo")`` over a file store in ``out_dir``; they save what the test
compares under ``out_dir``. A worker that raises fails the test with its traceback; one that
outlives the deadline fails it too, after every process started here is killed.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import ProcessException

from benchmarks.scaling import spawn_bounded

#: the process group's own timeout: a collective that never completes fails after this
PG_TIMEOUT_S = 60


def _wait_for_peers(
    out_dir: Path, launch: str, rank: int, world_size: int, timeout_s: float = 15.0
) -> None:
    """Tear the group down only once every rank is done with its collectives: a rank that
    exited first once made gloo abort another (SIGABRT, "terminate called without an active
    exception") after every rank had saved its results. Files, not a collective, because a
    test may leave the group broken on purpose; a peer that never arrives (it raised) costs
    at most ``timeout_s``."""
    (out_dir / f"done-{launch}-{rank}").touch()  # per launch: out_dir may be reused
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all((out_dir / f"done-{launch}-{r}").exists() for r in range(world_size)):
            return
        time.sleep(0.05)


def _entry(
    rank: int,
    fn: Callable[..., None],
    world_size: int,
    out_dir: str,
    kwargs: dict[str, Any],
    launch: str,
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
        _wait_for_peers(Path(out_dir), launch, rank, world_size)
    except BaseException:
        (Path(out_dir) / f"error{rank}.txt").write_text(traceback.format_exc())
        dist.destroy_process_group()
        raise
    # Done, results saved: leave without tearing gloo down. After a test that broke the group
    # on purpose (a rank failing mid-step), gloo's teardown still aborted a finished rank now
    # and then on a loaded machine (SIGABRT, "terminate called without an active exception",
    # every rank's results and done-marker already written), failing a test whose checks had
    # all been made. The results are what the test compares; the OS frees the sockets.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


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
        launch = uuid.uuid4().hex
        args = (fn, world_size, str(out_dir), kwargs, launch)
        spawn_bounded(_entry, args, world_size, timeout_s)
    except ProcessException as e:
        errors = sorted(out_dir.glob("error*.txt"))
        detail = "\n".join(p.read_text() for p in errors)
        raise AssertionError(f"a worker failed:\n{detail or e}") from None


ROOT = Path(__file__).resolve().parents[2]


def run_script(script: Path, out: Path, *args: str, timeout_s: float = 200.0) -> None:
    """Run ``python script *args`` in ``out``, in its own session; on timeout kill that
    session (it and the ranks it started, such as Lightning's). Fails with the end of its
    output if it exits non-zero."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=out,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, output.decode(errors="replace")[-4000:]
