"""Run Optuna worker scripts as separate processes for the shared-storage sampler tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def run_worker_processes(script: Path, arg_lists: Sequence[Sequence[str]], seconds: float) -> None:
    """Start one ``python script *args`` per entry, wait for all within one shared deadline.

    A worker that fails makes the test fail with its stderr; one still running at the
    deadline (or when another failed) is killed here, never left behind.
    """
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for args in arg_lists
    ]
    deadline = time.monotonic() + seconds
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            assert p.returncode == 0, err.decode()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
