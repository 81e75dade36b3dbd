"""Step time of two versions of the library, alternated on one machine: is a change slower?

Runs ``benchmarks.step_time`` (CPU, no memory table) from two checkouts in turn, ABBA
order round after round so that a drift of the machine's speed falls on both, each run one
process pinned to one core with one torch thread, and prints, for every swarm size and path
(Adam, HGPSO closure, vectorized loop, vectorized vmap), the median step time of each side
and the median of the per-round ratios ``after/before`` (1.00: as fast; above: slower), also
with each path taken relative to the same run's Adam step ("per Adam"), which cancels a
drift of the machine within one run.

``--before`` is a git revision, checked out into a temporary worktree (removed afterwards);
``--after`` is a revision too, or ``.`` for the working tree as it is. The load average is
printed before and after: run it with nothing else on the machine.

Usage::

    python -m benchmarks.step_time_ab --before 5a9e76c --after . --rounds 3
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import cli_types as cli
from benchmarks.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("adam_ms", "closure_ms", "vec_loop_ms", "vec_vmap_ms")


def _checkout(rev: str, into: Path) -> Path:
    if rev == ".":
        return ROOT
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(into), rev],
        check=True,
        capture_output=True,
    )
    return into


def _run(tree: Path, args: Any, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.step_time", "--device", "cpu", "--no-memory"]
    cmd += ["--particles", *map(str, args.particles), "--repeats", str(args.repeats)]
    cmd += ["--threads", "1", "--json", str(out)]
    if args.pin is not None:
        cmd = ["taskset", "-c", str(args.pin), *cmd]
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="git revision of the baseline")
    ap.add_argument("--after", default=".", help="git revision, or . for the working tree")
    ap.add_argument("--rounds", type=cli.positive_int, default=3)
    ap.add_argument("--particles", type=cli.positive_int, nargs="+", default=[4, 16])
    ap.add_argument("--repeats", type=cli.positive_int, default=10)
    ap.add_argument("--pin", type=cli.nonneg_int, default=0, help="core to pin to")
    ap.add_argument("--json", type=cli.out_file, help="also write the results here")
    args = ap.parse_args(argv)
    print(f"load average before: {os.getloadavg()}", flush=True)
    times: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {
            "before": _checkout(args.before, Path(tmp) / "before"),
            "after": _checkout(args.after, Path(tmp) / "after"),
        }
        try:
            for r in range(args.rounds):
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for side in order:
                    out = Path(tmp) / f"{side}{r}.json"
                    times[side].append(_run(trees[side], args, out))
                    print(f"round {r + 1}/{args.rounds}: {side} done", flush=True)
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(
                        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                        capture_output=True,
                    )
    print(f"load average after: {os.getloadavg()}")
    rows = []
    print(
        f"{'N':>4} {'path':>12} {'before ms':>10} {'after ms':>9} {'after/before':>13} "
        f"{'per Adam':>9}"
    )
    for k, n in enumerate(args.particles):
        for path in PATHS:
            b = [run["rows"][k][path] for run in times["before"]]
            a = [run["rows"][k][path] for run in times["after"]]
            ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))
            # each path over the same run's Adam step: a drift within one run cancels
            a_adam = [run["rows"][k]["adam_ms"] for run in times["after"]]
            b_adam = [run["rows"][k]["adam_ms"] for run in times["before"]]
            rel = statistics.median(
                (x / xa) / (y / ya) for x, xa, y, ya in zip(a, a_adam, b, b_adam, strict=True)
            )
            row = {"particles": n, "path": path, "before_ms": statistics.median(b)}
            row.update(after_ms=statistics.median(a), after_over_before=ratio)
            row["after_over_before_per_adam"] = rel
            rows.append(row)
            print(
                f"{n:>4} {path[:-3]:>12} {row['before_ms']:>10.2f} {row['after_ms']:>9.2f} "
                f"{ratio:>13.3f}"
            )
    result = {"before": args.before, "after": args.after, "rounds": args.rounds, "rows": rows}
    if args.json:
        write_json(args.json, result, indent=2)
    return result


if __name__ == "__main__":
    main()
