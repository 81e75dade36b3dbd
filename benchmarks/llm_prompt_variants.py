"""Prompt variants of the LLM strategies, one change at a time, against the real LLM server.

Issue 23 part 2: small prompt changes decide whether a 270M model helps. Each *variant* is
the default prompt with one change (``field=value``):

============== ============================================================================
field          values (default first)
============== ============================================================================
units          ``space``, ``unit`` (points shown and asked for as unit coordinates)
order          ``best_first``, ``worst_first``, ``chronological`` (of the points shown)
state_grid     ``false``, ``true`` (each integer grid / categorical choice spelled out)
target         ``off`` or ``alpha > 0`` (LLAMBO: ask for ``best - alpha * score range``)
history        points shown (the strategies' ``history_size``; default ``--history``)
temperature    the client's sampling temperature (default ``--temperature``)
k              points asked for per answer, members replaced (default ``--k``)
============== ============================================================================

(:class:`hgpso.tune.PromptOptions` holds the first four.) For each variant and seed one
:func:`hgpso.tune.minimize` run is made, on the shifted 2-D Rastrigin function of
``benchmarks/tune_rastrigin.py`` (``--suite rastrigin``, the default: the optimum drawn per
seed, target 1.0) or the LSTM forecaster of ``benchmarks/tune_lstm.py`` (``--suite lstm``,
one model trained per evaluation). Measured per run, from the strategy's LLM counters:

- ``answers``: LLM rounds (a failed request is an answer with no point);
- ``valid/answer``: points that parsed and fit the space (``accepted + duplicates``);
- ``new/answer``: valid points not evaluated before (nor kept in the batch) once snapped
  to the integer grid and the choices: the points that can help;
- ``calls to target``: objective calls until the target (median over seeds, unreached
  seeds counted as never; ``reached`` says how many did);
- LLM seconds and tokens per answer.

Each run is written to ``<out>/<suite>/runs/<variant>/seed<k>.json`` when it finishes, and
existing runs are skipped (a run file made with other settings is refused: use another
``--out``), so the command is resumable; ``summary.json`` and ``table.md`` beside ``runs``
are rebuilt from whatever runs exist. Needs an OpenAI-compatible server
(``eval "$(bash scripts/llm_server.sh start)"``, or ``--base-url``/``--model``)::

    python -m benchmarks.llm_prompt_variants --seeds 3
    python -m benchmarks.llm_prompt_variants --variants default state_grid=true --suite lstm
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import cli_types as cli
from benchmarks.atomic import write_json, write_text
from hgpso.tune import LLMClient, PromptOptions, SearchSpace, make_strategy, minimize

#: the variants run when ``--variants`` is not given: the default, then one change each
DEFAULT_VARIANTS = (
    "default",
    "units=unit",
    "state_grid=true",
    "order=worst_first",
    "order=chronological",
    "history=2",
    "history=10",
    "target=0.1",
    "temperature=0.2",
    "temperature=1.2",
    "k=1",
    "k=4",
)
_OPTION_FIELDS = tuple(f.name for f in fields(PromptOptions))
_RUN_FIELDS = ("history", "temperature", "k")


@dataclass(frozen=True)
class Suite:
    """One benchmark problem: its space, objective and the defaults of a run on it."""

    name: str
    space: SearchSpace
    objective: Callable[[int], Callable[[dict[str, Any]], float]]  # per seed
    target: float
    budget: int
    population: int
    task: str
    meta: dict[str, Any] = field(default_factory=dict)


def _rastrigin_suite(args: argparse.Namespace) -> Suite:
    from benchmarks.tune_rastrigin import make_space, optimum_shift, rastrigin

    def objective(seed: int) -> Callable[[dict[str, Any]], float]:
        shift = optimum_shift(2, seed, "seeded")
        return lambda p: rastrigin(p, shift)

    return Suite(
        "rastrigin",
        make_space(2),
        objective,
        target=1.0,
        budget=300,
        population=10,
        task="Minimize an unknown black-box function of 2 real variables.",
        meta={"function": "Rastrigin 2-D, optimum shifted per seed (tune_rastrigin)"},
    )


def _lstm_suite(args: argparse.Namespace) -> Suite:
    from benchmarks import tune_lstm

    f = tune_lstm.make_objective(args.epochs)
    return Suite(
        "lstm",
        tune_lstm.SPACE,
        lambda seed: f,
        target=0.12,
        budget=60,
        population=6,
        task=(
            "Tune an LSTM that forecasts the next day of a stock price series from a window "
            "of past days. Score = validation RMSE (lower is better)."
        ),
        meta={"function": f"LSTM forecaster, {args.epochs} epochs (tune_lstm)"},
    )


SUITES: dict[str, Callable[[argparse.Namespace], Suite]] = {
    "rastrigin": _rastrigin_suite,
    "lstm": _lstm_suite,
}


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``"default"`` or ``"field=value"`` as ``(name, {field: value})``, value checked."""
    if text == "default":
        return text, {}
    key, sep, raw = text.partition("=")
    if not sep or not raw:
        raise argparse.ArgumentTypeError(f"a variant is 'default' or field=value, got {text!r}")
    value: Any
    try:
        if key in ("units", "order"):
            value = raw
            PromptOptions(**{key: value})
        elif key == "state_grid":
            value = cli.boolean(raw)
        elif key == "target":
            value = None if raw in ("off", "none") else cli.positive_float(raw)
            PromptOptions(target=value)
        elif key in ("history", "k"):
            value = cli.positive_int(raw)
        elif key == "temperature":
            value = cli.float_in(0.0, 2.0)(raw)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown variant field {key!r}; fields: {', '.join(_OPTION_FIELDS)}, "
                f"{', '.join(_RUN_FIELDS)}"
            )
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise argparse.ArgumentTypeError(f"variant {text!r}: {e}") from None
    return text, {key: value}


def run_config(args: argparse.Namespace, suite: Suite, change: dict[str, Any]) -> dict[str, Any]:
    """Everything that decides a run but the seed: the recorded, compared configuration."""
    opts = {k: v for k, v in change.items() if k in _OPTION_FIELDS}
    return {
        "suite": suite.name,
        "strategy": args.strategy,
        "population": args.population or suite.population,
        "budget": args.budget or suite.budget,
        "target": suite.target if args.target is None else args.target,
        "llm_every": args.llm_every,
        "max_llm_calls": args.max_llm_calls,
        "max_tokens": args.max_tokens,
        "history": change.get("history", args.history),
        "temperature": change.get("temperature", args.temperature),
        "k": change.get("k", args.k),
        "prompt_options": PromptOptions(**opts).as_dict(),
        "epochs": args.epochs if suite.name == "lstm" else None,
    }


def run_one(args: argparse.Namespace, suite: Suite, config: dict[str, Any], seed: int) -> dict:
    """One minimize run of ``config`` at ``seed``: the record of its run file."""
    llm = LLMClient(
        base_url=args.base_url,
        model=args.model,
        temperature=config["temperature"],
        max_tokens=config["max_tokens"],
        timeout=args.timeout,
        max_retries=args.retries,
        seed=seed,
    )
    strat = make_strategy(
        config["strategy"],
        suite.space,
        population=config["population"],
        seed=seed,
        llm=llm,
        k=config["k"],
        llm_every=config["llm_every"],
        max_llm_calls=config["max_llm_calls"],
        history_size=config["history"],
        task=suite.task,
        prompt_options=config["prompt_options"],
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = minimize(
            suite.objective(seed),
            suite.space,
            strat,
            budget=config["budget"],
            target=config["target"],
            seed=seed,
        )
    stats = strat.llm_stats
    answers = int(getattr(strat, "llm_rounds", 0))
    assert stats is not None
    return {
        "config": config,
        "seed": seed,
        "server": {k: v for k, v in llm.describe().items() if k in ("base_url", "model")},
        "answers": answers,
        "proposed": stats.proposed,
        "valid": stats.accepted + stats.duplicates,
        "new": stats.accepted,
        "duplicates": stats.duplicates,
        "invalid": stats.rejected - stats.duplicates,
        "fallbacks": stats.fallbacks,
        "llm_calls": stats.calls,
        "llm_failures": stats.failures,
        "llm_seconds": round(stats.seconds, 3),
        "llm_tokens": stats.prompt_tokens + stats.completion_tokens,
        "calls_to_target": res.calls_to_target,
        "n_calls": res.n_calls,
        "best_value": res.best_value if math.isfinite(res.best_value) else None,
        "warnings": len(caught),
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }


def _per(total: float, answers: int) -> float | None:
    return round(total / answers, 3) if answers else None


def _median_calls(runs: list[dict]) -> float | None:
    ctt = sorted(r["calls_to_target"] or math.inf for r in runs)
    m = float(np.median(ctt))
    return m if math.isfinite(m) else None


def summarize(root: Path, order: list[str]) -> dict[str, Any]:
    """``summary.json`` and ``table.md`` of ``root`` from its run files (``order`` first)."""
    rows: dict[str, Any] = {}
    found = sorted(d.name for d in (root / "runs").glob("*") if d.is_dir())
    for name in [*order, *(n for n in found if n not in order)]:
        runs = [
            json.loads(f.read_text()) for f in sorted((root / "runs" / name).glob("seed*.json"))
        ]
        if not runs:
            continue
        answers = sum(r["answers"] for r in runs)
        rows[name] = {
            "seeds": [r["seed"] for r in runs],
            "answers": answers,
            "valid_per_answer": _per(sum(r["valid"] for r in runs), answers),
            "new_per_answer": _per(sum(r["new"] for r in runs), answers),
            "new_per_answer_by_seed": [_per(r["new"], r["answers"]) for r in runs],
            "duplicates": sum(r["duplicates"] for r in runs),
            "invalid": sum(r["invalid"] for r in runs),
            "fallbacks": sum(r["fallbacks"] for r in runs),
            "calls_to_target_median": _median_calls(runs),
            "calls_to_target": [r["calls_to_target"] for r in runs],
            "reached": sum(r["calls_to_target"] is not None for r in runs),
            "llm_seconds": round(sum(r["llm_seconds"] for r in runs), 2),
            "llm_seconds_per_answer": _per(sum(r["llm_seconds"] for r in runs), answers),
            "llm_tokens": sum(r["llm_tokens"] for r in runs),
            "llm_tokens_per_answer": _per(sum(r["llm_tokens"] for r in runs), answers),
            "config": runs[0]["config"],
            "server": runs[0]["server"],
        }
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "summary.json", rows, indent=2)
    write_text(root / "table.md", table(rows))
    return rows


def _cell(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def table(rows: dict[str, Any]) -> str:
    """The markdown table of :func:`summarize`'s rows, one line per variant."""
    head = (
        "| variant | seeds | answers | valid/answer | new/answer | calls to target (median) "
        "| reached | LLM s/answer | tokens/answer |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {name} | {len(r['seeds'])} | {r['answers']} | {_cell(r['valid_per_answer'])} "
        f"| {_cell(r['new_per_answer'])} | {_cell(r['calls_to_target_median'])} "
        f"| {r['reached']}/{len(r['seeds'])} | {_cell(r['llm_seconds_per_answer'])} "
        f"| {_cell(r['llm_tokens_per_answer'])} |"
        for name, r in rows.items()
    ]
    first = next(iter(rows.values()), None)
    note = ""
    if first is not None:
        c = first["config"]
        note = (
            f"\n{c['suite']}, {c['strategy']}, population {c['population']}, budget "
            f"{c['budget']}, target {c['target']:g}, an LLM round every {c['llm_every']} "
            f"iteration(s) (at most {c['max_llm_calls']}); model {first['server']['model']}.\n"
        )
    return head + "\n".join(lines) + "\n" + note


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="rastrigin")
    p.add_argument(
        "--variants",
        type=parse_variant,
        nargs="+",
        default=None,
        help=f"default, or field=value (default: {' '.join(DEFAULT_VARIANTS)})",
    )
    p.add_argument("--seeds", type=cli.positive_int, default=3, help="seeds 0..N-1")
    p.add_argument("--strategy", default="llm_pso", help="an LLM strategy (llm_pso, llm_ga, ...)")
    p.add_argument("--population", type=cli.int_at_least(2), default=None, help="suite's")
    p.add_argument("--budget", type=cli.positive_int, default=None, help="suite's")
    p.add_argument("--target", type=cli.finite_float, default=None, help="suite's")
    p.add_argument("--llm-every", type=cli.positive_int, default=2)
    p.add_argument("--max-llm-calls", type=cli.nonneg_int, default=12)
    p.add_argument("--k", type=cli.positive_int, default=2)
    p.add_argument("--history", type=cli.positive_int, default=5)
    p.add_argument("--temperature", type=cli.float_in(0.0, 2.0), default=0.7)
    p.add_argument("--max-tokens", type=cli.positive_int, default=120)
    p.add_argument("--timeout", type=cli.positive_float, default=240.0)
    p.add_argument("--retries", type=cli.nonneg_int, default=0)
    p.add_argument("--epochs", type=cli.positive_int, default=5, help="lstm suite")
    p.add_argument("--base-url", default=None)
    p.add_argument("--model", default=None)
    p.add_argument(
        "--out", type=cli.writable_dir, default=Path("benchmarks/results/llm-prompt-variants")
    )
    p.add_argument("--summary-only", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    from hgpso.tune import strategy_class

    try:
        cls = strategy_class(args.strategy)
    except ValueError as e:
        p.error(str(e))
    cli.require(p, cls.uses_llm, f"--strategy {args.strategy} asks no LLM")
    variants = dict(args.variants or [parse_variant(v) for v in DEFAULT_VARIANTS])
    root = args.out / args.suite
    if args.summary_only:
        print(table(summarize(root, list(variants))), end="")
        return 0
    if not (args.model or os.environ.get("HGPSO_LLM_MODEL")):
        p.error(
            'needs --model/--base-url or HGPSO_LLM_* (eval "$(bash scripts/llm_server.sh start)")'
        )
    suite = SUITES[args.suite](args)
    configs = {name: run_config(args, suite, change) for name, change in variants.items()}
    for name, config in configs.items():
        cli.require(
            p,
            config["k"] <= config["population"],
            f"variant {name}: k={config['k']} exceeds the population {config['population']}",
        )
    # seed by seed, so that a partial run compares the variants on the same seeds
    for seed in range(args.seeds):
        for name, config in configs.items():
            f = root / "runs" / name / f"seed{seed}.json"
            if f.exists():
                saved = json.loads(f.read_text()).get("config")
                if saved != config:
                    raise SystemExit(
                        f"{f} was made with other settings ({saved} vs {config}); "
                        "use another --out or remove it"
                    )
                continue
            rec = run_one(args, suite, config, seed)
            f.parent.mkdir(parents=True, exist_ok=True)
            write_json(f, rec, indent=1)
            print(
                f"{name:22s} seed {seed}: answers={rec['answers']} "
                f"valid/answer={_cell(_per(rec['valid'], rec['answers']))} "
                f"new/answer={_cell(_per(rec['new'], rec['answers']))} "
                f"calls_to_target={rec['calls_to_target']} llm_s={rec['llm_seconds']:.1f} "
                f"wall={rec['wall_seconds']:.1f}s",
                flush=True,
            )
            summarize(root, list(configs))
    print(table(summarize(root, list(configs))), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
