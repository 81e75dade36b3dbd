"""Markdown tables of the tuning benchmarks, printed from their ``summary.json`` files.

    python -m benchmarks.tune_report                      # every table below
    python -m benchmarks.tune_report --rastrigin benchmarks/results/rastrigin-shifted

Tables: the Rastrigin suite (hgpso.tune strategies and peer libraries, per dimension, ranked
by median calls to target), the ``llm_every`` sweep (one summary per ``every<N>`` folder),
and a model suite such as the LSTM (``tune_common`` summaries). Numbers come from the files
as they are; nothing is re-run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from benchmarks import cli_types as cli

PEER_NAMES = {
    "optuna_tpe": "Optuna TPESampler",
    "optuna_cmaes": "Optuna CmaEsSampler",
    "optuna_random": "Optuna RandomSampler",
    "ng_pso": "nevergrad PSO",
    "ng_ngopt": "nevergrad NGOpt",
}


def _label(name: str) -> str:
    return PEER_NAMES.get(name, f"hgpso `{name}`")


def _num(x: float | None, fmt: str = "{:.0f}") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def _rank_key(entry: dict[str, Any], ctt: str) -> tuple[float, float, float]:
    """Median calls to target first (unreached last), then runs that reached, then best value."""
    m = entry[ctt] if entry[ctt] is not None else math.inf
    return (m, -entry["reached"], entry["best_value_median"])


def ranked_rows(
    per: dict[str, Any], key: str, unit: str, best_fmt: str, wall_fmt: str
) -> list[str]:
    """Header and one row per method, ranked; ``key`` is ``calls_to_target`` (Rastrigin
    summaries) or ``evals_to_target`` (``tune_common`` summaries)."""
    lines = [
        f"| rank | method | {unit} to target, median [IQR] | reached | best value, median "
        "| LLM calls | LLM s | LLM tokens | wall s (all seeds) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ranked = sorted(per.items(), key=lambda kv: _rank_key(kv[1], f"{key}_median"))
    for i, (name, e) in enumerate(ranked, 1):
        lo, hi = e[f"{key}_iqr"]
        lines.append(
            f"| {i} | {_label(name)} | {_num(e[f'{key}_median'])} "
            f"[{_num(lo)}, {_num(hi)}] | {e['reached']}/{e['seeds']} "
            f"| {best_fmt.format(e['best_value_median'])} | {e['llm_calls']} "
            f"| {e['llm_seconds']:.0f} | {e['llm_tokens']} "
            f"| {_num(e.get('wall_seconds_total'), wall_fmt)} |"
        )
    return lines


def rastrigin_table(summary: dict[str, Any]) -> str:
    lines = []
    for dims, per in summary.items():
        first = next(iter(per.values()))
        lines += [
            f"**{dims}** (target f ≤ {first['target']:g}, budget {first['budget']} calls, "
            f"{first['seeds']} seeds)",
            "",
            *ranked_rows(per, "calls_to_target", "calls", "{:.3g}", "{:.1f}"),
            "",
        ]
    return "\n".join(lines)


def sweep_table(root: Path) -> str:
    rows = []
    for d in sorted(root.glob("every*"), key=lambda p: int(p.name[5:])):
        s = json.loads((d / "summary.json").read_text())
        for dims, per in s.items():
            for name, e in per.items():
                runs = sorted((d / "runs" / dims / name).glob("seed*.json"))
                per_seed = [json.loads(f.read_text())["calls_to_target"] for f in runs]
                rows.append(
                    f"| {d.name[5:]} | {dims} | `{name}` | "
                    f"{', '.join(_num(c) for c in per_seed)} | {_num(e['calls_to_target_median'])} "
                    f"| {e['reached']}/{e['seeds']} | {e['llm_calls']} | {e['llm_seconds']:.0f} "
                    f"| {e['llm_seconds'] / max(e['llm_calls'], 1):.1f} |"
                )
    head = [
        "| llm_every | dims | strategy | calls to target per seed | median | reached "
        "| LLM calls | LLM s | s per call |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + rows) + "\n"


def suite_table(summary: dict[str, Any]) -> str:
    meta = summary["meta"]
    lines = [
        f"target {meta['target']:g}, budget {meta['budget']} evaluations, population "
        f"{meta['population']}",
        "",
        *ranked_rows(summary["strategies"], "evals_to_target", "evals", "{:.4f}", "{:.0f}"),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rastrigin", type=Path, default=Path("benchmarks/results/rastrigin-shifted"))
    p.add_argument(
        "--sweep", type=Path, default=Path("benchmarks/results/rastrigin-shifted/llm_every")
    )
    p.add_argument(
        "--suite", type=Path, nargs="*", default=[Path("benchmarks/results/tuning/lstm")]
    )
    args = p.parse_args(argv)
    if (args.rastrigin / "summary.json").exists():
        print(f"### Rastrigin ({args.rastrigin})\n")
        print(rastrigin_table(json.loads((args.rastrigin / "summary.json").read_text())))
    if args.sweep.is_dir():
        print(f"### llm_every sweep ({args.sweep})\n")
        print(sweep_table(args.sweep))
    for suite in args.suite:
        if (suite / "summary.json").exists():
            print(f"### {suite}\n")
            print(suite_table(json.loads((suite / "summary.json").read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
