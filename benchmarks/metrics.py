"""Metric computations of the training benchmark (pure functions, unit-tested by hand).

The compute accounting (passes per step of each optimizer) is in ``benchmarks.registry``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch


def trailing_mean(values: Sequence[float], window: int) -> list[float]:
    """``out[t]`` = mean of ``values[max(0, t - window + 1) : t + 1]`` (NaNs propagate)."""
    if window < 1:
        raise ValueError("window must be >= 1")
    out, acc = [], 0.0
    for t, v in enumerate(values):
        acc += v
        if t >= window:
            acc -= values[t - window]
        out.append(acc / min(t + 1, window))
    return out


def steps_to_threshold(losses: Sequence[float], threshold: float, window: int = 1) -> int | None:
    """First step (1-based) whose trailing ``window``-step mean training loss is <= threshold.

    Per-batch losses are noisy; the trailing mean keeps one lucky batch from counting as
    convergence. Only full windows count (the first candidate is step ``window``).
    Returns ``None`` when the threshold is never reached.
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    smoothed = trailing_mean(losses, window)
    for t in range(window - 1, len(smoothed)):
        if smoothed[t] <= threshold:
            return t + 1
    return None


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value) of the non-None,
    finite values, and how many there were."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None, 0
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return m, 0.0, 1
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var), len(xs)


def paired_difference(
    a: dict[int, float | None], b: dict[int, float | None]
) -> dict[str, Any] | None:
    """Paired comparison of ``a`` with ``b`` over the keys (seeds) both have a finite value
    for: the differences ``a[s] - b[s]``, their mean, its standard error (sample std / sqrt n;
    ``None`` for one pair) and whether ``|mean| > 2 SE``. ``None`` if no seed pairs up."""
    seeds = sorted(
        s
        for s in a.keys() & b.keys()
        if a[s] is not None and b[s] is not None and math.isfinite(a[s]) and math.isfinite(b[s])
    )
    if not seeds:
        return None
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    mean, sd, n = mean_std(diffs)
    se = sd / math.sqrt(n) if n > 1 and sd is not None else None
    return {
        "seeds": seeds,
        "differences": diffs,
        "mean_difference": mean,
        "standard_error": se,
        "beyond_2se": se is not None and abs(mean) > 2 * se,
    }


def value_at_budget(curve: Sequence[tuple[float, float]], budget: float) -> float | None:
    """The value of the last ``(passes, value)`` point with ``passes <= budget``.

    Conservative: no interpolation, an optimizer is only credited with what it had actually
    reached by that budget. ``None`` if its first point lies beyond the budget.
    """
    best = None
    for passes, value in sorted(curve, key=lambda pv: pv[0]):
        if passes <= budget:
            best = value
        else:
            break
    return best


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """``(correct, total)`` of arg-max predictions."""
    return int((logits.argmax(dim=1) == targets).sum()), int(targets.numel())


def machine_load() -> dict[str, Any]:
    """What shares the CPU with a timed run: the CPUs this process may run on
    (``os.sched_getaffinity``, ``None`` where unsupported) and the 1-minute load average
    (``os.getloadavg``, ``None`` where unsupported)."""
    try:
        affinity: list[int] | None = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = None
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return {"cpu_affinity": affinity, "loadavg_1min": load}


def format_cpus(cpus: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the notation of ``taskset -c``)."""
    parts: list[str] = []
    xs = sorted(set(cpus))
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(parts)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory of one run.

    On CUDA: ``torch.cuda.max_memory_allocated`` (reset at start). On CPU: the peak resident set
    size of the process sampled every ``interval`` seconds by a daemon thread, reported both as
    the absolute peak and as the growth over the RSS at start (the data set is loaded before
    the first run, so the growth is the run's own working set: model, swarm, activations).
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.05) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.start_rss = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, _rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start_rss = self.peak_rss = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_rss = max(self.peak_rss, _rss_bytes())

    def as_dict(self) -> dict[str, float | None]:
        mib = 1024.0**2
        cuda = None
        if self.device.type == "cuda":
            cuda = torch.cuda.max_memory_allocated(self.device) / mib
        return {
            "peak_rss_mib": self.peak_rss / mib,
            "peak_rss_growth_mib": (self.peak_rss - self.start_rss) / mib,
            "peak_cuda_allocated_mib": cuda,
        }


class Stopwatch:
    """Accumulates wall-clock seconds over repeated start/stop intervals."""

    def __init__(self) -> None:
        self.total = 0.0
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self._t0 is not None:
            self.total += time.perf_counter() - self._t0
            self._t0 = None
