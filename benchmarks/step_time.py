"""Time one optimizer step: Adam vs HGPSO (closure path, vectorized path) at several swarm sizes.

Everything is measured side by side in one run and interleaved round-robin (the machines we
run on are shared and noisy), on the Fashion-MNIST CNN of the training benchmark with a batch
of 128, and the script prints ratios rather than trusting absolute times:

* ``hgpso/(N*adam)``: an N-particle HGPSO step against N Adam steps. One HGPSO step needs N
  forward and backward passes, so 1.0 is the floor on a CPU; the target is <= 1.15 for the
  faster path.
* ``vec/closure``: vectorized path against the plain closure path (on CUDA the target is a
  >= 5x speed-up at N = 16, and the vectorized step <= 3x one Adam step).

Memory, measured after the timings (separate models and optimizers, nothing shared), in MiB
and as ratios to Adam:

* ``state``: bytes of the optimizer's state tensors (Adam: ``exp_avg``, ``exp_avg_sq``; HGPSO
  with the default ``forget=1``: positions, velocities and one global best, ``(2N+1) P``
  numbers; ``forget=0.5`` adds the personal bests, ``(3N+1) P``, the layout every ``forget``
  had before).
* ``peak``: the most memory one step holds: on CUDA ``torch.cuda.max_memory_allocated``
  during the step; on the CPU the live parameters, gradients and state at the start of the
  step plus the highest level the allocator reaches above that during the step (counted
  from the profiler's allocation events), since RSS does not go down between cases. The
  process's peak RSS, all cases together, is printed at the end.

Usage::

    python -m benchmarks.step_time                       # CPU (and CUDA when present)
    python -m benchmarks.step_time --device cuda --particles 1 4 16 64 --repeats 20
    python -m benchmarks.step_time --json step_time.json
    python -m benchmarks.step_time --memory-only --particles 4 16 64
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import hgpso
from benchmarks import cli_types as cli
from benchmarks.atomic import write_json
from benchmarks.models import FashionCNN

# The committed step-time and memory figures are the sgd term's (the library default when
# they were measured); the adam term keeps two more model copies per particle.
GRADIENT = "sgd"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _closure_step(model, opt, x, y):
    """One step of any optimizer with a standard closure (Adam, or HGPSO's closure path)."""

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)


def _make_cases(device: torch.device, n: int, batch: int, strategies: list[str]):
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    cases: dict[str, Callable[[], None]] = {}

    adam_model = FashionCNN().to(device)
    adam = torch.optim.Adam(adam_model.parameters(), lr=1e-3)
    cases["adam"] = lambda: _closure_step(adam_model, adam, x, y)

    cl_model = FashionCNN().to(device)
    cl_opt = hgpso.HGPSO(cl_model.parameters(), num_particles=n, seed=0, gradient=GRADIENT)
    cases["closure"] = lambda: _closure_step(cl_model, cl_opt, x, y)

    for strategy in strategies:
        vec_model = FashionCNN().to(device)
        vec_opt = hgpso.HGPSO(vec_model.parameters(), num_particles=n, seed=0, gradient=GRADIENT)

        def vec_step(m=vec_model, o=vec_opt, s=strategy):
            o.step(hgpso.vectorized_closure(m, F.cross_entropy, x, y, strategy=s))

        cases[f"vec:{strategy}"] = vec_step
    return cases


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a (nested) optimizer state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _cpu_step_peak(fn: Callable[[], None]) -> int:
    """Highest allocator level above the start of ``fn``, from the profiler's memory events
    (a warm-up call inside the profile first, so the blocks ``fn`` frees are known to it)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
        with record_function("measured_step"):
            fn()
    events = list(prof.profiler.kineto_results.events())
    mark = next(e for e in events if e.name() == "measured_step")
    level = base = peak = 0
    for e in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
        if e.start_ns() > mark.end_ns():
            break
        level += e.nbytes()
        if e.start_ns() < mark.start_ns():
            base = peak = level
        else:
            peak = max(peak, level)
    return peak - base


def _memory_cases(device: torch.device, n: int, batch: int):
    """name -> (step, optimizer, model), each with its own model and optimizer."""
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    cases: dict[str, tuple[Callable[[], None], Any, torch.nn.Module]] = {}
    model = FashionCNN().to(device)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    cases["adam"] = (lambda m=model, o=adam: _closure_step(m, o, x, y), adam, model)
    for name, forget in (("closure", 1.0), ("closure_forget_half", 0.5)):
        model = FashionCNN().to(device)
        opt = hgpso.HGPSO(
            model.parameters(), num_particles=n, seed=0, forget=forget, gradient=GRADIENT
        )
        cases[name] = (lambda m=model, o=opt: _closure_step(m, o, x, y), opt, model)
    model = FashionCNN().to(device)
    opt = hgpso.HGPSO(model.parameters(), num_particles=n, seed=0, gradient=GRADIENT)

    def vmap_step(m=model, o=opt):
        o.step(hgpso.vectorized_closure(m, F.cross_entropy, x, y, strategy="vmap"))

    cases["vmap"] = (vmap_step, opt, model)
    return cases


def measure_memory(device: torch.device, n: int, batch: int) -> dict[str, dict[str, float]]:
    """State bytes and peak bytes of one step, per case (one case alive at a time)."""
    out: dict[str, dict[str, float]] = {}
    for name, (fn, opt, model) in _memory_cases(device, n, batch).items():
        fn()
        fn()  # state allocated, allocator warm
        state = _tensor_bytes(opt.state)
        if device.type == "cuda":
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            _sync(device)
            peak = torch.cuda.max_memory_allocated(device)
        else:
            resident = state + sum(
                _tensor_bytes(p) + _tensor_bytes(p.grad) for p in model.parameters()
            )
            peak = resident + _cpu_step_peak(fn)
        params = sum(_tensor_bytes(p) for p in model.parameters())
        out[name] = {"state_bytes": state, "peak_bytes": peak, "param_bytes": params}
    return out


def measure(device: torch.device, n: int, batch: int, repeats: int, strategies: list[str]):
    cases = _make_cases(device, n, batch, strategies)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():  # warm-up (lazy state, allocator, kernels)
        fn()
        fn()
    _sync(device)
    for _ in range(repeats):
        for name, fn in cases.items():  # interleaved, so drift hits every case alike
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--device",
        action="append",
        type=cli.device,
        help="cpu and/or cuda (default: both if present)",
    )
    ap.add_argument("--particles", type=cli.positive_int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--batch-size", type=cli.positive_int, default=128)
    ap.add_argument("--repeats", type=cli.positive_int, default=7)
    ap.add_argument("--threads", type=cli.positive_int, default=None, help="torch CPU threads")
    ap.add_argument("--json", type=cli.out_file, help="also write the results here")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory figures")
    ap.add_argument("--memory-only", action="store_true", help="skip the timings")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])

    results = {
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "rows": [],
        "memory_rows": [],
    }
    header = (
        f"{'device':6} {'N':>4} {'adam ms':>9} {'closure ms':>11} {'vec:loop ms':>12} "
        f"{'vec:vmap ms':>12} {'closure/(N*adam)':>17} {'loop/(N*adam)':>14} "
        f"{'vmap/(N*adam)':>14} {'vmap/adam':>10} {'closure/vmap':>13} {'auto':>5}"
    )
    if not args.memory_only:
        print(header)
    for dev in devices:
        device = torch.device(dev)
        if device.type == "cuda":
            results["gpu"] = torch.cuda.get_device_name(device)
        for n in [] if args.memory_only else args.particles:
            t = measure(device, n, args.batch_size, args.repeats, ["loop", "vmap"])
            adam = t["adam"]
            probe = hgpso.vectorized_closure(
                torch.nn.Identity(), F.mse_loss, torch.zeros(1), torch.zeros(1)
            )
            auto = probe.resolved_strategy(device)
            row = {
                "device": dev,
                "particles": n,
                "adam_ms": adam * 1e3,
                "closure_ms": t["closure"] * 1e3,
                "vec_loop_ms": t["vec:loop"] * 1e3,
                "vec_vmap_ms": t["vec:vmap"] * 1e3,
                "closure_over_n_adam": t["closure"] / (n * adam),
                "loop_over_n_adam": t["vec:loop"] / (n * adam),
                "vmap_over_n_adam": t["vec:vmap"] / (n * adam),
                "vmap_over_adam": t["vec:vmap"] / adam,
                "closure_over_vmap": t["closure"] / t["vec:vmap"],
                "auto_strategy": auto,
            }
            best = min(t["closure"], t[f"vec:{auto}"])
            row["best_default_over_n_adam"] = best / (n * adam)
            results["rows"].append(row)
            print(
                f"{dev:6} {n:>4} {row['adam_ms']:>9.2f} {row['closure_ms']:>11.2f} "
                f"{row['vec_loop_ms']:>12.2f} {row['vec_vmap_ms']:>12.2f} "
                f"{row['closure_over_n_adam']:>17.3f} {row['loop_over_n_adam']:>14.3f} "
                f"{row['vmap_over_n_adam']:>14.3f} {row['vmap_over_adam']:>10.3f} "
                f"{row['closure_over_vmap']:>13.2f} {auto:>5}",
                flush=True,
            )
    if not args.no_memory:
        _memory_table(devices, args.particles, args.batch_size, results)
    if args.json:
        write_json(args.json, results, indent=2)
    return results


def _memory_table(devices: list[str], particles: list[int], batch: int, results: dict) -> None:
    mib = 2.0**20
    print(
        f"\n{'device':6} {'N':>4} {'model MiB':>10} {'adam state':>11} {'hgpso state':>12} "
        f"{'f=0.5 state':>12} {'state/adam':>11} {'f=1/f=0.5':>10} {'adam peak':>10} "
        f"{'closure pk':>11} {'f=0.5 pk':>9} {'vmap pk':>9} {'closure/adam':>13} "
        f"{'vmap/adam':>10}"
    )
    for dev in devices:
        for n in particles:
            m = measure_memory(torch.device(dev), n, batch)
            adam, cl, old, vm = m["adam"], m["closure"], m["closure_forget_half"], m["vmap"]
            row = {
                "device": dev,
                "particles": n,
                "param_bytes": adam["param_bytes"],
                **{
                    f"{k}_{key}": v[key]
                    for k, v in m.items()
                    for key in ("state_bytes", "peak_bytes")
                },
                "state_over_adam": cl["state_bytes"] / adam["state_bytes"],
                "state_over_forget_half": cl["state_bytes"] / old["state_bytes"],
                "closure_peak_over_adam": cl["peak_bytes"] / adam["peak_bytes"],
                "vmap_peak_over_adam": vm["peak_bytes"] / adam["peak_bytes"],
            }
            results["memory_rows"].append(row)
            print(
                f"{dev:6} {n:>4} {adam['param_bytes'] / mib:>10.2f} "
                f"{adam['state_bytes'] / mib:>11.2f} {cl['state_bytes'] / mib:>12.2f} "
                f"{old['state_bytes'] / mib:>12.2f} {row['state_over_adam']:>11.2f} "
                f"{row['state_over_forget_half']:>10.3f} {adam['peak_bytes'] / mib:>10.2f} "
                f"{cl['peak_bytes'] / mib:>11.2f} {old['peak_bytes'] / mib:>9.2f} "
                f"{vm['peak_bytes'] / mib:>9.2f} {row['closure_peak_over_adam']:>13.2f} "
                f"{row['vmap_peak_over_adam']:>10.2f}",
                flush=True,
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / mib if sys.platform == "darwin" else rss / 1024.0  # bytes on macOS, KiB else
    results["peak_rss_mib"] = rss_mib
    print(f"process peak RSS (all cases together): {rss_mib:.1f} MiB")


if __name__ == "__main__":
    main()
