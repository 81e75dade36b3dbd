"""Aggregation of finished runs into summary.json, runs.csv, report.md and PNG figures.

Split by what it makes: :mod:`benchmarks.report.tables` computes the numbers (summary.json,
runs.csv), :mod:`benchmarks.report.markdown` writes report.md, :mod:`benchmarks.report.figures`
draws the PNGs; :func:`write_outputs` makes all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.atomic import write_json, write_text
from benchmarks.report.figures import plot_figures
from benchmarks.report.markdown import render_markdown
from benchmarks.report.tables import (
    curve_seconds,
    equal_budget,
    equal_time,
    label_noise_table,
    per_epoch_accuracy,
    summarize,
    timing_conditions,
    write_csv,
)

__all__ = [
    "curve_seconds",
    "equal_budget",
    "equal_time",
    "label_noise_table",
    "per_epoch_accuracy",
    "plot_figures",
    "render_markdown",
    "summarize",
    "timing_conditions",
    "write_csv",
    "write_outputs",
]


def write_outputs(
    runs: list[dict[str, Any]], meta: dict[str, Any], out: Path, figures: bool = True
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    finished = sorted(r["finished_at"] for r in runs if r.get("finished_at"))
    if finished:
        meta = {
            **meta,
            "date": f"runs finished {finished[0]} to {finished[-1]}; "
            f"last invocation started {meta.get('date', '')}",
        }
    # each run keeps the command that produced it (a skipped run keeps its own)
    commands = sorted({str(r["command"]) for r in runs if r.get("command")})
    meta = {**meta, "run_commands": commands or [meta.get("command", "")]}
    summary = summarize(runs, meta)
    write_json(out / "summary.json", summary, indent=2)
    write_csv(runs, out / "runs.csv")
    write_text(out / "report.md", render_markdown(summary, meta))
    if figures:
        plot_figures(runs, summary, out / "figures")
    return summary
