"""Time one optimizer step: Adam vs HGPSO (closure path, vectorized path) at several swarm sizes.

Everything is measured side by side in one run and interleaved round-robin (the machines we
run on are shared and noisy), on the Fashion-MNIST CNN of the training benchmark with a batch
of 128, and the script prints ratios rather than trusting absolute times:

* ``hgpso/(N*adam)``: an N-particle HGPSO step against N Adam steps. One HGPSO step needs N
  forward and backward passes, so 1.0 is the floor on a CPU; the target is <= 1.15 for the
  faster path.
* ``vec/closure``: vectorized path against the plain closure path (on CUDA the target is a
  >= 5x speed-up at N = 16, and the vectorized step <= 3x one Adam step).

Usage::

    python -m benchmarks.step_time                       # CPU (and CUDA when present)
    python -m benchmarks.step_time --device cuda --particles 1 4 16 64 --repeats 20
    python -m benchmarks.step_time --json step_time.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import hgpso
from benchmarks.models import FashionCNN


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
    cl_opt = hgpso.HGPSO(cl_model.parameters(), num_particles=n, seed=0)
    cases["closure"] = lambda: _closure_step(cl_model, cl_opt, x, y)

    for strategy in strategies:
        vec_model = FashionCNN().to(device)
        vec_opt = hgpso.HGPSO(vec_model.parameters(), num_particles=n, seed=0)

        def vec_step(m=vec_model, o=vec_opt, s=strategy):
            o.step(hgpso.vectorized_closure(m, F.cross_entropy, x, y, strategy=s))

        cases[f"vec:{strategy}"] = vec_step
    return cases


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", action="append", help="cpu and/or cuda (default: both if present)")
    ap.add_argument("--particles", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", help="also write the results here")
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
    }
    header = (
        f"{'device':6} {'N':>4} {'adam ms':>9} {'closure ms':>11} {'vec:loop ms':>12} "
        f"{'vec:vmap ms':>12} {'closure/(N*adam)':>17} {'loop/(N*adam)':>14} "
        f"{'vmap/(N*adam)':>14} {'vmap/adam':>10} {'closure/vmap':>13} {'auto':>5}"
    )
    print(header)
    for dev in devices:
        device = torch.device(dev)
        if device.type == "cuda":
            results["gpu"] = torch.cuda.get_device_name(device)
        for n in args.particles:
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
