"""Rastrigin benchmark of the hgpso.tune strategies: objective calls to reach a target.

    f(x) = 10 d + sum_i (z_i^2 - 10 cos(2 pi z_i)),  z = x - o,  x in [-5.12, 5.12]^d,
    min f(o) = 0

``--shift seeded`` (the default) moves the optimum ``o`` off the centre of the box, drawn per
seed uniformly from [-2.5, 2.5]^d (the same ``o`` for every strategy and peer at that seed):
a centred optimum favours any method whose first guess is the middle of the box (CMA-ES's
initial mean, an LLM that answers 0) over the ones that search. ``--shift none`` is the
centred function of the committed ``benchmarks/results/rastrigin`` runs.

For each dimension, strategy and seed one ``minimize`` run is made with the same initial
population per seed; a run stops at the target or the budget. Each run is written to
``<out>/runs/<d>d/<strategy>/seed<k>.json`` as soon as it finishes and finished runs are
skipped, so the command is resumable. ``<out>/summary.json`` and ``<out>/convergence.png``
are rebuilt from whatever runs exist.

LLM strategies need an OpenAI-compatible server (``HGPSO_LLM_BASE_URL``/``HGPSO_LLM_MODEL``
or ``--base-url``/``--model``), e.g. ``eval "$(bash scripts/llm_server.sh start)"``.

Summary statistics: ``calls_to_target_median`` and ``calls_to_target_iqr`` (25th/75th
percentiles) are taken over *all* seeds with unreached runs counted as +inf, so they are
``null`` when too few runs reached the target; ``reached`` counts the runs that did.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.atomic import write_json
from hgpso.tune import Float, LLMClient, SearchSpace, make_strategy, minimize

try:  # run as a script (python benchmarks/tune_rastrigin.py) or as a module
    import cli_types as cli
    from tune_common import (
        BENCHMARK_STRATEGIES,
        DEFAULT_LLM,
        _q,
        _save,
        check_strategies,
        llm_settings,
        uses_llm,
    )
    from tune_peers import PEERS, run_peer
except ImportError:
    from benchmarks import cli_types as cli
    from benchmarks.tune_common import (
        BENCHMARK_STRATEGIES,
        DEFAULT_LLM,
        _q,
        _save,
        check_strategies,
        llm_settings,
        uses_llm,
    )
    from benchmarks.tune_peers import PEERS, run_peer

DEFAULT_TARGETS = {2: 1.0, 10: 40.0}
PLAIN = ("random", "pso", "ga")
LLM = DEFAULT_LLM  # the committed runs' LLM strategies; which names ask an LLM: uses_llm


SHIFT_RANGE = 2.5


def rastrigin(point: dict, shift: np.ndarray | None = None) -> float:
    x = np.fromiter(point.values(), dtype=float)
    z = x if shift is None else x - shift
    return float(10 * z.size + np.sum(z * z - 10 * np.cos(2 * np.pi * z)))


def optimum_shift(d: int, seed: int, mode: str) -> np.ndarray | None:
    """Where the optimum sits for this seed: ``None`` (centre) or a seeded draw in the box."""
    if mode == "none":
        return None
    return np.random.default_rng(10_000 + seed).uniform(-SHIFT_RANGE, SHIFT_RANGE, d)


def make_space(d: int) -> SearchSpace:
    return SearchSpace({f"x{i}": Float(-5.12, 5.12) for i in range(d)})


def run_one(args, d: int, strategy: str, seed: int) -> dict:
    space = make_space(d)
    shift = optimum_shift(d, seed, args.shift)

    def objective(point: dict) -> float:
        return rastrigin(point, shift)

    where = {"shift": None if shift is None else shift.tolist()}
    if strategy in PEERS:  # another library on the same problem, budget, target and seed
        out = run_peer(strategy, objective, space, args.budget[d], args.target[d], seed)
        out.update(dims=d, seed=seed, target=args.target[d], budget=args.budget[d], warnings=0)
        return dict(out, **where)
    k = args.k if d <= 2 else args.k_hd
    max_llm_calls = args.max_llm_calls if d <= 2 else args.max_llm_calls_hd
    kwargs = {}
    if uses_llm(strategy):
        kwargs = {
            "llm": LLMClient(
                base_url=args.base_url,
                model=args.model,
                temperature=args.temperature,
                max_tokens=args.max_tokens if d <= 2 else args.max_tokens_hd,
                timeout=args.timeout,
                max_retries=args.retries,
                seed=seed,
            ),
            "k": k,
            "llm_every": args.llm_every,
            "max_llm_calls": max_llm_calls,
            "history_size": args.history,
            "task": f"Minimize an unknown black-box function of {d} real variables.",
        }
    strat = make_strategy(strategy, space, population=args.population, seed=seed, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = minimize(
            objective, space, strat, budget=args.budget[d], target=args.target[d], seed=seed
        )
    out = res.as_dict()
    out.update(
        dims=d,
        seed=seed,
        target=args.target[d],
        budget=args.budget[d],
        population=args.population,
        warnings=len(caught),
        **where,
    )
    if uses_llm(strategy):
        out["llm_settings"] = llm_settings(
            strat, k=k, llm_every=args.llm_every, max_llm_calls=max_llm_calls
        )
    return out


def summarize(out: Path) -> dict:
    if not any((out / "runs").glob("*d/*/seed*.json")):
        raise SystemExit(f"no finished runs under {out / 'runs'}")
    summary: dict = {}
    curves: dict = {}
    for dd in sorted((out / "runs").glob("*d"), key=lambda p: int(p.name[:-1])):
        for sd in sorted(dd.iterdir()):
            runs = [json.loads(f.read_text()) for f in sorted(sd.glob("seed*.json"))]
            if not runs:
                continue
            ctt = [r["calls_to_target"] if r["calls_to_target"] else math.inf for r in runs]
            llm = [r.get("llm") or {} for r in runs]
            entry = {
                "calls_to_target_median": _q(ctt, 50),
                "calls_to_target_iqr": [_q(ctt, 25), _q(ctt, 75)],
                "reached": sum(math.isfinite(c) for c in ctt),
                "seeds": len(runs),
                "llm_calls": sum(x.get("calls", 0) for x in llm),
                "llm_seconds": round(sum(x.get("seconds", 0.0) for x in llm), 2),
                "llm_tokens": sum(x.get("tokens", 0) for x in llm),
                "llm_fallbacks": sum(x.get("fallbacks", 0) for x in llm),
                "llm_points_accepted": sum(x.get("accepted", 0) for x in llm),
                "llm_points_rejected": sum(x.get("rejected", 0) for x in llm),
                "target": runs[0]["target"],
                "budget": runs[0]["budget"],
                "best_value_median": float(np.median([r["best_value"] for r in runs])),
                "objective_calls_total": sum(r["n_calls"] for r in runs),
                # whole runs: objective + LLM + the strategy's (or peer library's) own work
                "wall_seconds_median": round(
                    float(np.median([r["wall_seconds"] for r in runs])), 3
                ),
                "wall_seconds_total": round(sum(r["wall_seconds"] for r in runs), 2),
            }
            summary.setdefault(dd.name, {})[sd.name] = entry
            # median best-so-far curve, runs that stopped early keep their last value
            n = max(len(r["trace"]) for r in runs)
            mat = np.array([r["trace"] + [r["trace"][-1]] * (n - len(r["trace"])) for r in runs])
            curves.setdefault(dd.name, {})[sd.name] = np.median(mat, axis=0)
    for _dims, per in summary.items():
        pso = per.get("pso", {}).get("calls_to_target_median")
        for name, entry in per.items():
            m = entry["calls_to_target_median"]
            entry["reduction_vs_pso"] = (
                round(1.0 - m / pso, 3) if (pso and m is not None and name != "pso") else None
            )
    write_json(out / "summary.json", summary, indent=2)
    plot(out, curves, summary)
    return summary


def plot(out: Path, curves: dict, summary: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.2), squeeze=False)
    for ax, (dims, per) in zip(axes[0], curves.items(), strict=True):
        for name, curve in per.items():
            x = np.arange(1, len(curve) + 1)
            ax.plot(x, np.maximum(curve, 1e-3), label=name)
        tgt = next(iter(summary[dims].values()))["target"]
        ax.axhline(tgt, color="k", ls="--", lw=0.8, label=f"target {tgt:g}")
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("objective calls")
        ax.set_ylabel("best value (median over seeds)")
        ax.set_title(f"Rastrigin {dims}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dims", type=cli.positive_int, nargs="+", default=[2, 10])
    p.add_argument("--seeds", type=cli.positive_int, default=10)
    p.add_argument(
        "--seed-list",
        type=cli.seed,
        nargs="*",
        default=None,
        help="run exactly these seeds (e.g. a second worker from the top: 9 8 7)",
    )
    p.add_argument(
        "--strategies",
        nargs="+",
        default=[*PLAIN, *LLM],
        help=f"hgpso strategies ({', '.join(BENCHMARK_STRATEGIES)}) and/or peers: "
        f"{', '.join(PEERS)}",
    )
    p.add_argument("--population", type=cli.int_at_least(2), default=10)
    p.add_argument("--budget", type=cli.positive_int, default=1500, help="objective calls per run")
    p.add_argument(
        "--target", type=cli.finite_float, nargs="*", default=None, help="one per --dims"
    )
    # Defaults = the committed runs (benchmarks/results/rastrigin-shifted): an LLM round every
    # 10th iteration with no cap per run. On an idle 2-core CPU Gemma 3 270M answers in ~4.5 s
    # (2-D, k=2) and ~11.5 s (10-D, k=1); the llm_every sweep (every 1/5/10, 2-D) is in
    # docs/guides/benchmarks.md with why 10 was chosen.
    p.add_argument(
        "--k", type=cli.positive_int, default=2, help="points the LLM proposes per call (d<=2)"
    )
    p.add_argument("--k-hd", type=cli.positive_int, default=1, help="points per call when d > 2")
    p.add_argument(
        "--llm-every", type=cli.positive_int, default=10, help="iterations between LLM rounds"
    )
    p.add_argument(
        "--max-llm-calls",
        type=cli.nonneg_int,
        default=None,
        help="LLM rounds per run, d<=2 (no cap)",
    )
    p.add_argument(
        "--max-llm-calls-hd",
        type=cli.nonneg_int,
        default=None,
        help="LLM rounds per run, d>2 (no cap)",
    )
    p.add_argument(
        "--history", type=cli.positive_int, default=5, help="best points shown in the prompt"
    )
    p.add_argument("--max-tokens", type=cli.positive_int, default=80)
    p.add_argument(
        "--max-tokens-hd", type=cli.positive_int, default=200, help="max_tokens when d > 2"
    )
    p.add_argument("--temperature", type=cli.float_in(0.0, 2.0), default=0.7)
    p.add_argument("--timeout", type=cli.positive_float, default=240.0)
    p.add_argument("--retries", type=cli.nonneg_int, default=0)
    p.add_argument("--base-url", default=None)
    p.add_argument("--model", default=None)
    p.add_argument(
        "--out", type=cli.writable_dir, default=Path("benchmarks/results/rastrigin-shifted")
    )
    p.add_argument(
        "--shift",
        choices=["seeded", "none"],
        default="seeded",
        help="optimum off the box centre, drawn per seed (default), or at the centre",
    )
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args(argv)
    check_strategies(p, args.strategies)
    k_max = max(args.k, args.k_hd)
    cli.require(p, k_max <= args.population, f"--k/--k-hd {k_max} exceed --population")
    targets = args.target or [DEFAULT_TARGETS.get(d, 10.0 * d) for d in args.dims]
    if len(targets) != len(args.dims):
        p.error("--target needs one value per --dims entry")
    args.target = dict(zip(args.dims, targets, strict=True))
    args.budget = dict.fromkeys(args.dims, args.budget)
    if not args.summary_only:
        plain = [s for s in args.strategies if not uses_llm(s)]
        llm = [s for s in args.strategies if uses_llm(s)]
        if llm and not (args.model or os.environ.get("HGPSO_LLM_MODEL")):
            p.error(
                "LLM strategies need --model/--base-url or HGPSO_LLM_* (see scripts/llm_server.sh)"
            )
        # plain strategies first (cheap), then LLM runs seed by seed so a partial run is balanced
        seeds = args.seed_list if args.seed_list is not None else list(range(args.seeds))
        jobs = [(d, s, k) for s in plain for d in args.dims for k in seeds]
        jobs += [(d, s, k) for k in seeds for d in args.dims for s in llm]
        for d, s, k in jobs:
            f = args.out / "runs" / f"{d}d" / s / f"seed{k}.json"
            if f.exists():
                continue
            t0 = time.perf_counter()
            res = run_one(args, d, s, k)
            _save(f, res)
            llm_s = res["llm"].get("seconds", 0.0) if res["llm"] else 0.0
            print(
                f"{d}d {s:8s} seed {k}: calls_to_target={res['calls_to_target']} "
                f"best={res['best_value']:.3g} llm_calls={(res['llm'] or {}).get('calls', 0)} "
                f"llm_s={llm_s:.1f} wall={time.perf_counter() - t0:.1f}s",
                flush=True,
            )
            if uses_llm(s):
                summarize(args.out)
    print(json.dumps(summarize(args.out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
