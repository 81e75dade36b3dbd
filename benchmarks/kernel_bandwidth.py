r"""Bandwidth of the fused HG-PSO CUDA kernel against pure-PyTorch paths and a device copy.

Usage (on a machine with a CUDA GPU; the exact command behind the committed summary)::

    python -m hgpso.kernels --build                 # once: JIT-compile the kernel (minutes)
    python benchmarks/kernel_bandwidth.py           # sizes 1e6 .. 1e9, N = 16, float32,
                                                    # writes benchmarks/results/kernel/summary.json

Options: ``--sizes 1e6,1e7,1e8,1e9``, ``--particles 16``, ``--dtype float32|bfloat16|float16``,
``--repeats 20``, ``--warmup 3``, ``--no-compile`` (skip ``torch.compile``), ``--no-e2e``,
``--e2e-particles 16,64``, ``--out PATH``. Without CUDA it prints why and exits with status 2
(``--smoke`` runs the pure-PyTorch paths on the CPU at tiny sizes, to check the script only;
it writes nothing unless ``--out`` is given).

What is timed, for ``E = N x P`` elements of storage size ``s`` bytes (medians of CUDA-event
timings of ``--repeats`` calls after ``--warmup`` calls):

* ``kernel``: :func:`hgpso.kernels.fused_hgpso_update_`, randoms drawn in the kernel;
* ``kernel_given``: the same with given ``r1``, ``r2`` tensors (reads two more streams);
* ``eager_rand``: what the optimizer does without the kernel: two ``torch.rand`` then
  :func:`hgpso.functional.hgpso_update_` (``torch._foreach_*`` ops);
* ``eager_pregen``: :func:`hgpso.functional.hgpso_update_` alone, randoms made beforehand
  and not timed (a lower bound for eager, not a real alternative);
* ``compiled_rand`` / ``compiled_pregen``: ``torch.compile`` of those two (Inductor fuses
  the update and, for ``compiled_rand``, draws the randoms in its generated kernel);
* ``copy``: ``dst.copy_(src)`` of ``3 E s`` bytes, i.e. the same ``6 E s`` bytes moved.

Bytes moved by one update (the useful traffic): read ``x, v, p, grad`` and write ``x, v``:
``6 E s`` plus ``P s`` for the broadcast global best. Every path's "GB/s" is that figure
divided by its time, so GB/s compare speeds directly; ``copy_fraction`` is
``GB/s / copy GB/s`` (target: >= 0.8 at E >= 1e8); ``speedup_vs_best_pytorch`` is the best
of ``eager_rand`` and ``compiled_rand`` (paths that include drawing the randoms) over
``kernel`` (target: >= 1.5). Sizes whose buffers do not fit in free GPU memory are skipped
per path and reported as such.

End to end: the time of one ``HGPSO.step`` (vectorized closure) on the Fashion-MNIST CNN
(206,922 parameters, batch 128 of 1x28x28) at N = 16 and 64, ``fused=True`` vs
``fused=False``.
"""

from __future__ import annotations

import gc
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import cli_types as cli
from benchmarks.atomic import write_json
from hgpso import HGPSO, kernels, vectorized_closure
from hgpso import functional as Fn

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "kernel" / "summary.json"
COEF = dict(lr=1e-3, inertia=0.7, cognitive=0.5, social=0.5, max_velocity=1.0)


# ------------------------------------------------------------------------------- timing
def _time(fn: Callable[[], object], *, repeats: int, warmup: int, device: str) -> float:
    """Median seconds of one call."""
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _free_bytes(device: str) -> int:
    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        return torch.cuda.mem_get_info()[0]
    return 2**62


# ------------------------------------------------------------------------------- swarm
class Swarm:
    """One parameter tensor of N particles x P elements, as the optimizer stores it."""

    def __init__(self, n: int, p: int, dtype: torch.dtype, device: str, given: bool) -> None:
        g = torch.Generator(device=device).manual_seed(0)

        def randn(*shape):
            return torch.randn(shape, generator=g, device=device, dtype=dtype)

        self.x, self.v, self.p, self.grad = randn(n, p), randn(n, p), randn(n, p), randn(n, p)
        self.g = randn(p)
        self.r1 = self.r2 = None
        if given:
            self.r1 = torch.rand(n, p, generator=g, device=device, dtype=dtype)
            self.r2 = torch.rand(n, p, generator=g, device=device, dtype=dtype)
        self.step = 0

    def lists(self):
        return [self.x], [self.v], [self.p], [self.g], [self.grad]


def _eager_pregen(s: Swarm) -> None:
    Fn.hgpso_update_(*s.lists(), [s.r1], [s.r2], **COEF)


def _eager_rand(s: Swarm) -> None:
    r1 = torch.rand_like(s.x)
    r2 = torch.rand_like(s.x)
    Fn.hgpso_update_(*s.lists(), [r1], [r2], **COEF)


def _update_pregen(x, v, p, g, grad, r1, r2):
    Fn.hgpso_update_([x], [v], [p], [g], [grad], [r1], [r2], **COEF)


def _update_rand(x, v, p, g, grad):
    r1 = torch.rand_like(x)
    r2 = torch.rand_like(x)
    Fn.hgpso_update_([x], [v], [p], [g], [grad], [r1], [r2], **COEF)


def _kernel(s: Swarm) -> None:
    s.step += 1
    kernels.fused_hgpso_update_(*s.lists(), seed=1234, offset=s.step, r1=None, r2=None, **COEF)


def _kernel_given(s: Swarm) -> None:
    kernels.fused_hgpso_update_(*s.lists(), seed=1234, offset=0, r1=[s.r1], r2=[s.r2], **COEF)


def bench_size(elements: int, args, device: str, elem: int, dtype) -> dict:
    n = args.particles
    p = max(1, elements // n)
    e = n * p
    moved = 6 * e * elem + p * elem
    row: dict = {
        "elements": e,
        "particles": n,
        "per_particle": p,
        "bytes_moved": moved,
        "paths": {},
        "skipped": {},
    }
    # state tensors (x, v, p, grad) plus what each path allocates, in units of E*s bytes
    need = {
        "copy": 6,
        "kernel": 4,
        "kernel_given": 6,
        "eager_pregen": 8,
        "eager_rand": 8,
        "compiled_pregen": 7,
        "compiled_rand": 7,
    }
    paths: list[str] = ["copy"]
    if device == "cuda" and kernels.is_available():
        paths += ["kernel", "kernel_given"]
    paths += ["eager_rand", "eager_pregen"]
    if not args.no_compile:
        paths += ["compiled_rand", "compiled_pregen"]
    for path in paths:
        if need[path] * e * elem * 1.1 > _free_bytes(device):
            row["skipped"][path] = "does not fit in free device memory"
            continue
        try:
            if path == "copy":
                src = torch.empty(3 * e, device=device, dtype=dtype)
                dst = torch.empty_like(src)
                t = _time(
                    lambda dst=dst, src=src: dst.copy_(src),
                    repeats=args.repeats,
                    warmup=args.warmup,
                    device=device,
                )
                del src, dst
            else:
                s = Swarm(
                    n,
                    p,
                    dtype,
                    device,
                    given=path in ("kernel_given", "eager_pregen", "compiled_pregen"),
                )
                if path == "kernel":
                    fn = lambda s=s: _kernel(s)  # noqa: E731
                elif path == "kernel_given":
                    fn = lambda s=s: _kernel_given(s)  # noqa: E731
                elif path == "eager_pregen":
                    fn = lambda s=s: _eager_pregen(s)  # noqa: E731
                elif path == "eager_rand":
                    fn = lambda s=s: _eager_rand(s)  # noqa: E731
                elif path == "compiled_pregen":
                    c = torch.compile(_update_pregen, dynamic=False)
                    fn = lambda s=s, c=c: c(s.x, s.v, s.p, s.g, s.grad, s.r1, s.r2)  # noqa: E731
                else:
                    c = torch.compile(_update_rand, dynamic=False)
                    fn = lambda s=s, c=c: c(s.x, s.v, s.p, s.g, s.grad)  # noqa: E731
                t = _time(fn, repeats=args.repeats, warmup=args.warmup, device=device)
                del s, fn
        except torch.OutOfMemoryError:
            row["skipped"][path] = "out of memory"
            continue
        except Exception as exc:  # report and go on: one path failing must not hide the rest
            row["skipped"][path] = f"failed: {type(exc).__name__}: {exc}"
            continue
        row["paths"][path] = {"ms": t * 1e3, "GB/s": moved / t / 1e9}
    copy = row["paths"].get("copy")
    for stats in row["paths"].values():
        if copy:
            stats["copy_fraction"] = stats["GB/s"] / copy["GB/s"]
    kern = row["paths"].get("kernel")
    best = [row["paths"][k]["ms"] for k in ("eager_rand", "compiled_rand") if k in row["paths"]]
    if kern and best:
        row["best_pytorch_ms"] = min(best)
        row["speedup_vs_best_pytorch"] = min(best) / kern["ms"]
        if "eager_pregen" in row["paths"]:
            row["speedup_vs_eager_pregen"] = row["paths"]["eager_pregen"]["ms"] / kern["ms"]
    return row


# ---------------------------------------------------------------------------- end to end
def _fashion_cnn():
    try:
        from benchmarks.models import FashionCNN

        return FashionCNN()
    except ImportError:  # same architecture, if the benchmark models are not importable
        from torch import nn

        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )


def bench_end_to_end(particles: list[int], args, device: str) -> list[dict]:
    import torch.nn.functional as F

    rows = []
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (128,), generator=g).to(device)
    fused_options = [True, False] if (device == "cuda" and kernels.is_available()) else [False]
    for n in particles:
        row: dict = {"particles": n, "batch": 128}
        for fused in fused_options:
            torch.manual_seed(0)
            model = _fashion_cnn().to(device)
            opt = HGPSO(  # the kernel implements the sgd term
                model.parameters(), lr=0.05, num_particles=n, seed=0, fused=fused, gradient="sgd"
            )
            closure = vectorized_closure(model, F.cross_entropy, x, y)
            try:
                t = _time(
                    lambda opt=opt, closure=closure: opt.step(closure),
                    repeats=max(5, args.repeats // 2),
                    warmup=args.warmup,
                    device=device,
                )
            except torch.OutOfMemoryError:
                row[f"fused={fused}"] = "out of memory"
                continue
            row[f"fused={fused}_ms"] = t * 1e3
            del opt, model, closure
        if "fused=True_ms" in row and "fused=False_ms" in row:
            row["speedup"] = row["fused=False_ms"] / row["fused=True_ms"]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------- report
def _print_table(rows: list[dict], header: bool = True) -> None:
    names = [
        "copy",
        "kernel",
        "kernel_given",
        "eager_rand",
        "eager_pregen",
        "compiled_rand",
        "compiled_pregen",
    ]
    if header:
        print(f"{'elements':>12} {'MB moved':>10}  " + "  ".join(f"{n:>18}" for n in names))
    for r in rows:
        cells = []
        for n in names:
            st = r["paths"].get(n)
            if st is None:
                cells.append(f"{'-':>18}")
            else:
                frac = st.get("copy_fraction", math.nan)
                cells.append(f"{st['GB/s']:8.0f} GB/s {frac:4.0%}".rjust(18))
        print(f"{r['elements']:>12.3g} {r['bytes_moved'] / 1e6:>10.0f}  " + "  ".join(cells))
        extra = []
        if "speedup_vs_best_pytorch" in r:
            extra.append(f"kernel speedup vs best PyTorch: {r['speedup_vs_best_pytorch']:.2f}x")
        if "speedup_vs_eager_pregen" in r:
            extra.append(f"vs eager (randoms not timed): {r['speedup_vs_eager_pregen']:.2f}x")
        if r["skipped"]:
            extra.append("skipped: " + ", ".join(f"{k} ({v})" for k, v in r["skipped"].items()))
        if extra:
            print(" " * 14 + "; ".join(extra))


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=cli.count_list,
        default="1e6,1e7,1e8,1e9",
        help="total elements N x P, comma separated",
    )
    parser.add_argument("--particles", type=cli.positive_int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=cli.positive_int, default=20)
    parser.add_argument("--warmup", type=cli.nonneg_int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-e2e", action="store_true")
    parser.add_argument("--e2e-particles", type=cli.count_list, default="16,64")
    parser.add_argument(
        "--out",
        type=cli.out_file_mkdir,
        default=None,
        help=f"summary JSON (default on CUDA: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="no GPU: run the PyTorch paths on the CPU at tiny sizes",
    )
    args = parser.parse_args(argv)

    if torch.cuda.is_available():
        device = "cuda"
        out = args.out or DEFAULT_OUT
    elif args.smoke:
        device = "cpu"
        out = args.out
        args.sizes = "1e4,1e5" if args.sizes == parser.get_default("sizes") else args.sizes
        args.repeats, args.e2e_particles = min(args.repeats, 3), "2"
    else:
        print(
            "CUDA not available: this benchmark times CUDA kernels with CUDA events, so "
            "there is nothing to measure here (run it on a GPU machine; --smoke checks the "
            "script on the CPU).",
            file=sys.stderr,
        )
        return 2

    dtype = getattr(torch, args.dtype)
    elem = torch.empty((), dtype=dtype).element_size()
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    info = {
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu ({platform.machine()}, smoke run)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "dtype": args.dtype,
        "kernel_available": kernels.is_available(),
        "kernel_load_error": None if kernels.is_available() else str(kernels.load_error()),
        "repeats": args.repeats,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    print(
        f"device: {info['device']}  torch {info['torch']}  dtype {args.dtype}  N = {args.particles}"
    )
    if device == "cuda" and not kernels.is_available():
        print(f"fused kernel unavailable, timing PyTorch paths only: {kernels.load_error()}")
    rows = []
    for size in sizes:
        rows.append(bench_size(size, args, device, elem, dtype))
        _print_table(rows[-1:], header=len(rows) == 1)
    e2e = []
    if not args.no_e2e:
        e2e = bench_end_to_end([int(n) for n in args.e2e_particles.split(",")], args, device)
        for r in e2e:
            print(
                "HGPSO step, Fashion-MNIST CNN: "
                + ", ".join(
                    f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                )
            )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, {**info, "sizes": rows, "end_to_end": e2e}, indent=2)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
