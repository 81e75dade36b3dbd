"""Shared runner of the ``tune_*`` model benchmarks: resumable per-run files and a summary.

Each (strategy, seed) run is one :func:`hgpso.tune.minimize` call written to
``<out>/runs/<strategy>/seed<k>.json`` as soon as it finishes; existing files are skipped.
``<out>/summary.json`` holds, per strategy, evaluations to reach the target (median and
25/75 percentiles over seeds, unreached = +inf, so ``null`` when too few reached it), the
number of runs that reached it, the median best value and the LLM calls/seconds/tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.atomic import write_json
from hgpso.tune import (
    LLMClient,
    SearchSpace,
    make_strategy,
    minimize,
    strategy_class,
    strategy_names,
)

try:  # run as a script (python benchmarks/tune_lstm.py) or as a module
    import cli_types as cli
    from tune_peers import PEERS, run_peer
except ImportError:
    from benchmarks import cli_types as cli
    from benchmarks.tune_peers import PEERS, run_peer


def uses_llm(name: str) -> bool:
    """Whether a benchmark strategy name is an hgpso strategy that asks an LLM (peers never)."""
    return name not in PEERS and strategy_class(name).uses_llm


#: hgpso strategy names a benchmark runs: all of make_strategy's but the bare ``llm`` layer,
#: which needs ``base=`` (its registered forms are ``llm_tpe``, ``llm_cmaes``, ``llm_random``)
BENCHMARK_STRATEGIES = tuple(n for n in strategy_names() if n != "llm")
LLM_STRATEGIES = tuple(n for n in BENCHMARK_STRATEGIES if uses_llm(n))
#: the LLM strategies of the committed runs (the default --strategies lists)
DEFAULT_LLM = ("llm_pso", "llm_ga")


def check_strategies(p: argparse.ArgumentParser, names: list[str]) -> None:
    """One-line parser error for a strategy name neither hgpso nor a peer has."""
    unknown = [n for n in names if n not in BENCHMARK_STRATEGIES and n not in PEERS]
    if unknown:
        p.error(
            f"unknown strategies {unknown}; choose from {', '.join(BENCHMARK_STRATEGIES)} "
            f"or the peers {', '.join(PEERS)}"
        )


def llm_settings(strat: Any, **extra: Any) -> dict[str, Any]:
    """What a run file records of an LLM strategy: the client's settings, the base, ``extra``."""
    base = getattr(strat, "base_name", None)
    return dict(strat.llm.describe(), **({"base": base} if base else {}), **extra)


def add_common_args(p: argparse.ArgumentParser, out: str, budget: int, target: float) -> None:
    p.add_argument(
        "--strategies",
        nargs="+",
        default=["random", "pso", "ga", *DEFAULT_LLM],
        help=f"hgpso strategies ({', '.join(BENCHMARK_STRATEGIES)}) and/or peers: "
        f"{', '.join(PEERS)}",
    )
    p.add_argument("--seeds", type=cli.positive_int, default=3)
    p.add_argument("--population", type=cli.int_at_least(2), default=6)
    p.add_argument(
        "--budget", type=cli.positive_int, default=budget, help="objective evaluations per run"
    )
    p.add_argument("--target", type=cli.finite_float, default=target)
    p.add_argument("--k", type=cli.positive_int, default=2)
    p.add_argument("--llm-every", type=cli.positive_int, default=1)
    p.add_argument(
        "--max-llm-calls",
        type=cli.nonneg_int,
        default=None,
        help="LLM rounds per run (default: no cap)",
    )
    p.add_argument("--max-tokens", type=cli.positive_int, default=200)
    p.add_argument("--temperature", type=cli.float_in(0.0, 2.0), default=0.7)
    p.add_argument("--timeout", type=cli.positive_float, default=120.0)
    p.add_argument("--base-url", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--out", type=cli.writable_dir, default=Path(out))
    p.add_argument("--summary-only", action="store_true")


def _q(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile where +inf (not reached) is a legal value; None if inf."""
    v = sorted(float(x) for x in values)
    pos = q / 100 * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    out = v[lo] if lo == hi else v[lo] + (v[hi] - v[lo]) * (pos - lo)
    return out if math.isfinite(out) else None


def _calls_to(trace: list[float], target: float) -> float:
    return next((i + 1 for i, v in enumerate(trace) if v <= target), math.inf)


def summarize(out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Runs use their whole budget, so any ``target`` can be evaluated from the traces."""
    target = meta["target"]
    summary: dict[str, Any] = {"meta": meta, "strategies": {}}
    for sd in sorted((out / "runs").glob("*")):
        runs = [json.loads(f.read_text()) for f in sorted(sd.glob("seed*.json"))]
        if not runs:
            continue
        ctt = [_calls_to(r["trace"], target) for r in runs]
        llm = [r.get("llm") or {} for r in runs]
        summary["strategies"][sd.name] = {
            "evals_to_target_median": _q(ctt, 50),
            "evals_to_target_iqr": [_q(ctt, 25), _q(ctt, 75)],
            "reached": sum(math.isfinite(c) for c in ctt),
            "seeds": len(runs),
            "best_value_median": float(np.median([r["best_value"] for r in runs])),
            "best_points": [r["best_point"] for r in runs],
            "objective_seconds_total": round(sum(r["objective_seconds"] for r in runs), 1),
            "llm_calls": sum(x.get("calls", 0) for x in llm),
            "llm_seconds": round(sum(x.get("seconds", 0.0) for x in llm), 1),
            "llm_tokens": sum(x.get("tokens", 0) for x in llm),
            "llm_fallbacks": sum(x.get("fallbacks", 0) for x in llm),
            # whole runs: objective + LLM + the strategy's (or peer library's) own work
            "wall_seconds_median": round(float(np.median([r["wall_seconds"] for r in runs])), 2),
            "wall_seconds_total": round(sum(r["wall_seconds"] for r in runs), 1),
        }
    write_json(out / "summary.json", summary, indent=2)
    return summary


def _save(f: Path, out: dict[str, Any]) -> None:
    f.parent.mkdir(parents=True, exist_ok=True)
    write_json(f, out)


def run_suite(
    args: argparse.Namespace,
    objective: Callable[[dict[str, Any]], float],
    space: SearchSpace,
    task: str,
    meta: dict[str, Any],
) -> dict[str, Any]:
    meta = dict(meta, target=args.target, budget=args.budget, population=args.population)
    unknown = [n for n in args.strategies if n not in BENCHMARK_STRATEGIES and n not in PEERS]
    if unknown:
        raise SystemExit(f"unknown strategies {unknown}; see --help")
    if args.summary_only:
        return summarize(args.out, meta)
    llm_needed = any(uses_llm(s) for s in args.strategies)
    if llm_needed and not (args.model or os.environ.get("HGPSO_LLM_MODEL")):
        raise SystemExit("LLM strategies need --model/--base-url or HGPSO_LLM_* env vars")
    for seed in range(args.seeds):
        for name in args.strategies:
            f = args.out / "runs" / name / f"seed{seed}.json"
            if f.exists():
                continue
            if name in PEERS:  # another library, same objective, space, budget and seed
                out = run_peer(name, objective, space, args.budget, None, seed)
                _save(f, dict(out, seed=seed, warnings=0))
                print(
                    f"{name:8s} seed {seed}: evals_to_target="
                    f"{_calls_to(out['trace'], args.target)} best={out['best_value']:.4g} "
                    f"wall={out['wall_seconds']:.0f}s",
                    flush=True,
                )
                summarize(args.out, meta)
                continue
            kwargs: dict[str, Any] = {}
            if uses_llm(name):
                kwargs = dict(
                    llm=LLMClient(
                        base_url=args.base_url,
                        model=args.model,
                        temperature=args.temperature,
                        max_tokens=args.max_tokens,
                        timeout=args.timeout,
                        max_retries=1,
                        seed=seed,
                    ),
                    k=args.k,
                    llm_every=args.llm_every,
                    max_llm_calls=args.max_llm_calls,
                    task=task,
                )
            strat = make_strategy(name, space, population=args.population, seed=seed, **kwargs)
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # no early stop: the full trace lets --summary-only re-evaluate other targets
                res = minimize(objective, space, strat, budget=args.budget)
            out = res.as_dict()
            out.update(seed=seed, warnings=len(caught))
            if uses_llm(name):
                out["llm_settings"] = llm_settings(
                    strat, k=args.k, llm_every=args.llm_every, max_llm_calls=args.max_llm_calls
                )
            _save(f, out)
            print(
                f"{name:8s} seed {seed}: evals_to_target={_calls_to(res.trace, args.target)} "
                f"best={res.best_value:.4g} llm_calls={res.llm.get('calls', 0)} "
                f"wall={time.perf_counter() - t0:.0f}s",
                flush=True,
            )
            summarize(args.out, meta)
    return summarize(args.out, meta)
