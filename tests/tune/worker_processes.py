"""Run Optuna worker scripts as separate processes for the shared-storage sampler tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]


def run_worker_processes(
    script: Path,
    arg_lists: Sequence[Sequence[str]],
    seconds: float,
    returncodes: Sequence[int] | None = None,
) -> list[float]:
    """Start one ``python script *args`` per entry, wait for all within one shared deadline.

    Returns each worker's wall seconds from the common start to its exit. A worker that
    exits with another code than expected (``returncodes``, default all 0) or is still
    running at the deadline makes the test fail with its stderr; every worker still running
    then is killed here, never left behind.
    """
    expected = list(returncodes) if returncodes is not None else [0] * len(arg_lists)
    # The workers import the checkout under test, as this process does, not whatever an
    # editable install of another clone points the environment at.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        logs = [Path(tmp) / f"worker{i}.err" for i in range(len(arg_lists))]
        start = time.monotonic()
        procs = []
        try:
            for args, log in zip(arg_lists, logs, strict=True):
                with open(log, "wb") as err:  # a file: a chatty worker never blocks on a pipe
                    procs.append(
                        subprocess.Popen(
                            [sys.executable, str(script), *args],
                            stdout=subprocess.DEVNULL,
                            stderr=err,
                            env=env,
                        )
                    )
            ended: dict[int, float] = {}
            while len(ended) < len(procs) and time.monotonic() < start + seconds:
                for i, p in enumerate(procs):
                    if i not in ended and p.poll() is not None:
                        ended[i] = time.monotonic() - start
                time.sleep(0.05)
            for i, p in enumerate(procs):
                err = logs[i].read_text(errors="replace")[-4000:]
                assert i in ended, f"worker {i} still running after {seconds:g} s:\n{err}"
                assert p.returncode == expected[i], (i, p.returncode, err)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    return [ended[i] for i in range(len(procs))]
