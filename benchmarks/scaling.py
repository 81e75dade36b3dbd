"""Scaling of HGPSO over torch.distributed processes (gloo on CPU): data- and particle-parallel.

Runs HGPSO on the Fashion-MNIST CNN for each world size ``W`` (1 and 2 by default), swarm
size ``N`` and mode, one torch thread per process, with a fixed global batch of ``N``
particles' work per step shared by more processes (strong scaling): split evenly over the
ranks by data (``replicated``, ``independent``) or by particles (``sharded``: every rank
scores its ``N/W`` particles on the whole batch). The
configurations are run one after another and the whole sweep is repeated ``--rounds`` times
round-robin; the median is reported. Printed side by side:

* ``steps/s`` of the global batch, and ``efficiency`` = steps/s(W) / (W * steps/s(W=1))
  for the same N and mode (1.0 is perfect scaling);
* ``bytes/step``: payload this rank handed to collectives per step, counted in
  :mod:`hgpso.distributed` (replicated: losses + status + gradient checksum, and the
  flattened gradient all-reduce; sharded: its slice of the losses + status + batch
  fingerprint, and the broadcast of the global best's weights and gradient); a ring
  all-reduce moves about twice that over the wire;
* ``swarm MiB/rank``: the swarm state one rank holds (positions, velocities and the global
  best; personal bests too when ``forget < 1``): about ``N/W`` particles' worth when sharded.

Modes: ``replicated`` (one swarm on the global batch, the default of the optimizers),
``independent`` (no communication: each rank its own swarm on its shard; the difference to
``replicated`` is the cost of agreeing) and ``sharded`` (each rank holds and scores its
slice of the particles on the whole batch). ``efficiency`` is always relative to
``replicated`` at ``W = 1``; ``sharded`` at ``W = 1`` shows the cost of its per-particle
random streams alone. Step time does not depend on the pixel values, so the images are
synthetic tensors of Fashion-MNIST's shape (1x28x28, 10 classes).

Usage (on an otherwise idle machine; do not time on a loaded one)::

    python -m benchmarks.scaling                       # W = 1, 2; N = 8, 16
    python -m benchmarks.scaling --world-sizes 1 2 --particles 8 16 --steps 20 --rounds 3
    python -m benchmarks.scaling --json scaling.json
"""

from __future__ import annotations

import datetime
import json
import math
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import hgpso
from benchmarks import cli_types as cli
from benchmarks.atomic import write_json
from benchmarks.models import FashionCNN

MODES = ("replicated", "independent", "sharded")


def _worker(rank: int, world_size: int, out_dir: str, cfg: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{out_dir}/store",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=120),
        )
    try:
        torch.manual_seed(0)
        model = FashionCNN()
        opt = hgpso.HGPSO(
            model.parameters(),
            num_particles=cfg["particles"],
            distributed=cfg["mode"],
            seed=0,
            gradient="sgd",  # the committed figures' term (the default was then)
        )
        sharded = cfg["mode"] == "sharded"
        # sharded: every rank scores its particles on the whole (same) batch
        local = cfg["batch"] if sharded else cfg["batch"] // world_size
        g = torch.Generator().manual_seed(0 if sharded else rank)
        x = torch.randn(local, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (local,), generator=g)

        def step() -> None:
            opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))

        for _ in range(cfg["warmup"]):
            step()
        comm = getattr(opt, "_comm", None)
        bytes0 = 0 if comm is None else comm.bytes_communicated
        if world_size > 1:
            dist.barrier()
        t0 = time.perf_counter()
        for _ in range(cfg["steps"]):
            step()
        if world_size > 1:
            dist.barrier()
        seconds = time.perf_counter() - t0
        sent = 0 if comm is None else comm.bytes_communicated - bytes0
        swarm_bytes = sum(
            t.numel() * t.element_size()
            for key, st in opt.state.items()
            if key != "swarm"
            for t in st.values()
            if isinstance(t, torch.Tensor)
        )
        result = {
            "seconds": seconds,
            "bytes_per_step": sent / cfg["steps"],
            "swarm_bytes": swarm_bytes,
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def spawn_bounded(fn: Any, args: tuple[Any, ...], nprocs: int, timeout_s: float) -> None:
    """``torch.multiprocessing`` spawn of ``fn(rank, *args)`` on ``nprocs`` processes, waited
    for at most ``timeout_s`` seconds; every process still alive afterwards is killed.
    Raises ``torch.multiprocessing.ProcessException`` if one fails, ``TimeoutError`` if late."""
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{nprocs} processes of {fn.__name__} ran past {timeout_s}s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join(5)


def run_config(world_size: int, cfg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one configuration on ``world_size`` fresh processes; rank 0's figures, with the
    slowest rank's time."""
    with tempfile.TemporaryDirectory(prefix="hgpso_scaling_") as tmp:
        spawn_bounded(_worker, (world_size, tmp, cfg), world_size, timeout_s)
        ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(world_size)]
    out = dict(ranks[0])
    out["seconds"] = max(r["seconds"] for r in ranks)
    out["steps_per_s"] = cfg["steps"] / out["seconds"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world-sizes", type=cli.positive_int, nargs="+", default=[1, 2])
    ap.add_argument("--particles", type=cli.positive_int, nargs="+", default=[8, 16])
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--batch", type=cli.positive_int, default=128, help="global batch per step")
    ap.add_argument(
        "--steps", type=cli.positive_int, default=20, help="timed steps per configuration"
    )
    ap.add_argument("--warmup", type=cli.nonneg_int, default=3)
    ap.add_argument("--rounds", type=cli.positive_int, default=3, help="repeats of the whole sweep")
    ap.add_argument(
        "--timeout", type=cli.positive_float, default=600.0, help="seconds per configuration"
    )
    ap.add_argument("--json", type=cli.out_file, help="also write the results here")
    args = ap.parse_args(argv)
    if 1 not in args.world_sizes:
        ap.error("--world-sizes must include 1 (the efficiency baseline)")
    for w in args.world_sizes:
        if args.batch % w:
            ap.error(f"--batch {args.batch} is not divisible by world size {w}")

    configs = [
        (w, n, mode)
        for n in args.particles
        for mode in args.modes
        for w in args.world_sizes
        if not (w == 1 and mode == "independent")  # the same run as replicated at W = 1
        and not (mode == "sharded" and n < w)  # sharding needs a particle per rank
    ]
    samples: dict[tuple[int, int, str], list[dict[str, Any]]] = {c: [] for c in configs}
    for _ in range(args.rounds):
        for w, n, mode in configs:
            cfg = {
                "particles": n,
                "mode": mode,
                "batch": args.batch,
                "steps": args.steps,
                "warmup": args.warmup,
            }
            samples[(w, n, mode)].append(run_config(w, cfg, args.timeout))

    rows = []
    for (w, n, mode), runs in samples.items():
        rate = statistics.median(r["steps_per_s"] for r in runs)
        # the baseline: replicated at W = 1 (this mode at W = 1 when replicated did not run)
        baseline = samples.get((1, n, "replicated")) or samples.get((1, n, mode))
        base = statistics.median(r["steps_per_s"] for r in baseline) if baseline else math.nan
        rows.append(
            {
                "world_size": w,
                "particles": n,
                "mode": mode,
                "steps_per_s": rate,
                "efficiency": rate / (w * base),
                "bytes_per_step": runs[0]["bytes_per_step"],
                "swarm_mib_per_rank": runs[0]["swarm_bytes"] / 2**20,
            }
        )
    load = os.getloadavg()
    print(
        f"HGPSO on the Fashion-MNIST CNN, gloo on CPU, 1 thread/process, global batch "
        f"(sharded: the whole batch on every rank) "
        f"{args.batch}, {args.steps} steps x {args.rounds} rounds (median); "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    header = f"{'W':>2} {'N':>3} {'mode':<12} {'steps/s':>8} {'efficiency':>10} "
    header += f"{'bytes/step':>11} {'swarm MiB/rank':>14}"
    print(header)
    for r in rows:
        print(
            f"{r['world_size']:>2} {r['particles']:>3} {r['mode']:<12} {r['steps_per_s']:>8.2f} "
            f"{r['efficiency']:>10.2f} {r['bytes_per_step']:>11.0f} "
            f"{r['swarm_mib_per_rank']:>14.2f}"
        )
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "loadavg": load,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
    }
    if args.json:
        write_json(args.json, result, indent=2)
    return result


if __name__ == "__main__":
    main()
