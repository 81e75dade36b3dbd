"""The Python half of ``scripts/gpu_check.sh``: the environment probe and the one summary.

``python scripts/lib/gpu_check.py env --json FILE [--dry-run]``
    Writes what the summary's header needs (device, driver, torch, CUDA, nvcc, whether the
    fused kernel can be built here) and prints it. Exit status 1 on a GPU run without a CUDA
    device (every other check would only fail after it), else 0.

``python scripts/lib/gpu_check.py summary --checks TSV --env JSON --out DIR [--dry-run]``
    Reads the checks the shell script ran (one tab-separated line each: name, kind, exit
    status, seconds, timeout, JSON output, JUnit XML, preset skip reason, command), decides
    every check's status, pulls the key numbers out of the JSON the benchmarks wrote and the
    JUnit XML pytest wrote, and writes ``DIR/summary.json`` and ``DIR/summary.md``. Exit
    status 0 when every check that ran passed (or, on a dry run, was skipped for want of
    CUDA), else 1.

Kinds: ``env``, ``build`` (``python -m hgpso.kernels --build``), ``pytest``, ``pytest-cuda``
(tests that only run on a GPU: a dry run reports them "skipped: no CUDA"; on a GPU run a
skipped test fails the check), ``kernel_bandwidth`` and ``step_time`` (their ``--out`` /
``--json`` files).

Stdlib only, and no torch import for ``summary``: it must report even when torch is broken.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

LOG_TAIL_LINES = 25


# ------------------------------------------------------------------------------ env probe
def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def probe(dry_run: bool) -> dict[str, Any]:
    env: dict[str, Any] = {
        "mode": "dry-run" if dry_run else "gpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "git_commit": _run(["git", "rev-parse", "--short=12", "HEAD"]),
        "nvidia_smi": None,
        "nvcc": None,
    }
    if shutil.which("nvidia-smi"):
        env["nvidia_smi"] = _run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total",
                "--format=csv,noheader",
            ]
        )
    if shutil.which("nvcc"):
        version = _run(["nvcc", "--version"]) or ""
        found = re.search(r"release ([\d.]+)", version)
        env["nvcc"] = found.group(1) if found else "present"
    try:
        import torch
    except Exception as exc:  # the summary must still say why nothing ran
        env["torch"] = None
        env["torch_error"] = f"{type(exc).__name__}: {exc}"
        env["cuda_available"] = False
        env["device"] = None
        return env
    env["torch"] = torch.__version__
    env["torch_cuda"] = torch.version.cuda
    env["cuda_available"] = torch.cuda.is_available()
    env["cpu_threads"] = torch.get_num_threads()
    if env["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        env["device"] = torch.cuda.get_device_name(0)
        env["device_count"] = torch.cuda.device_count()
        env["capability"] = f"{props.major}.{props.minor}"
        env["memory_gib"] = round(props.total_memory / 2**30, 1)
    else:
        env["device"] = f"cpu ({platform.machine()})"
    try:
        from hgpso.kernels import _build

        blocker = _build.why_cannot_build()
        env["kernel_build_blocker"] = None if _build.aot_library() else blocker
    except Exception as exc:
        env["kernel_build_blocker"] = f"hgpso.kernels did not import: {type(exc).__name__}: {exc}"
    return env


# ------------------------------------------------------------------------------ key numbers
def _r(x: Any, nd: int = 3) -> Any:
    return round(x, nd) if isinstance(x, float) else x


def _junit(path: str) -> dict[str, int] | None:
    if not path or not Path(path).is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for s in suites:
        for k in counts:
            counts[k] += int(s.get(k, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def _kernel_bandwidth_numbers(data: dict[str, Any]) -> dict[str, Any]:
    sizes = []
    for row in data.get("sizes", []):
        paths = row.get("paths", {})
        sizes.append(
            {
                "elements": row.get("elements"),
                **{f"{p}_GB/s": _r(paths[p]["GB/s"], 1) for p in paths},
                "kernel_copy_fraction": _r(paths.get("kernel", {}).get("copy_fraction")),
                "speedup_vs_best_pytorch": _r(row.get("speedup_vs_best_pytorch")),
                "skipped": row.get("skipped") or None,
            }
        )
    e2e = [{k: _r(v) for k, v in r.items()} for r in data.get("end_to_end", [])]
    return {
        "device": data.get("device"),
        "kernel_available": data.get("kernel_available"),
        "kernel_load_error": data.get("kernel_load_error"),
        "sizes": sizes,
        "end_to_end": e2e,
    }


STEP_TIME_KEYS = (
    "adam_ms",
    "closure_ms",
    "vec_loop_ms",
    "vec_vmap_ms",
    "vmap_over_adam",
    "vmap_over_n_adam",
    "closure_over_vmap",
    "best_default_over_n_adam",
    "auto_strategy",
)
STEP_TIME_MEMORY_KEYS = ("state_over_adam", "closure_peak_over_adam", "vmap_peak_over_adam")


def _step_time_numbers(data: dict[str, Any]) -> dict[str, Any]:
    memory = {(m["device"], m["particles"]): m for m in data.get("memory_rows", [])}
    rows = []
    for row in data.get("rows", []):
        m = memory.get((row["device"], row["particles"]), {})
        rows.append(
            {
                "device": row["device"],
                "particles": row["particles"],
                **{k: _r(row.get(k)) for k in STEP_TIME_KEYS},
                **{k: _r(m.get(k)) for k in STEP_TIME_MEMORY_KEYS},
            }
        )
    return {"gpu": data.get("gpu"), "batch_size": data.get("batch_size"), "rows": rows}


def _build_numbers(log: str) -> dict[str, Any]:
    found = re.search(r"hgpso\.kernels: (.+?) at (\S+) \(([\d.]+) s\)", log)
    if not found:
        return {}
    return {"how": found.group(1), "library": found.group(2), "seconds": float(found.group(3))}


def targets(check: dict[str, Any]) -> list[str]:
    """The documented targets, met or not (informational: a benchmark does not fail on them)."""
    nums = check.get("key_numbers") or {}
    out = []
    if check["kind"] == "kernel_bandwidth":
        for s in nums.get("sizes", []):
            if (s.get("elements") or 0) >= 1e8 and s.get("kernel_copy_fraction") is not None:
                f, sp = s["kernel_copy_fraction"], s.get("speedup_vs_best_pytorch")
                out.append(
                    f"E={s['elements']:.3g}: kernel at {f:.0%} of copy bandwidth (target >= 80%: "
                    f"{'met' if f >= 0.8 else 'NOT met'}), {sp or 'n/a'}x the best PyTorch path "
                    f"(target >= 1.5x: {'met' if sp is not None and sp >= 1.5 else 'NOT met'})"
                )
    if check["kind"] == "step_time":
        for r in nums.get("rows", []):
            if r["device"].startswith("cuda") and r["particles"] == 16:
                cv, va = r["closure_over_vmap"], r["vmap_over_adam"]
                out.append(
                    f"N=16: vmap step {cv}x faster than the closure path (target >= 5x: "
                    f"{'met' if cv >= 5 else 'NOT met'}), {va}x one Adam step (target <= 3x: "
                    f"{'met' if va <= 3 else 'NOT met'})"
                )
    return out


# ------------------------------------------------------------------------------ status
def _status(c: dict[str, Any], dry_run: bool) -> tuple[str, bool]:
    rc, kind, tests = c["exit_status"], c["kind"], c.get("tests")
    if rc is None:
        return "not run (--only)", True
    if rc in (124, 137) and c["seconds"] >= c["timeout_s"] - 1:
        return f"failed: timed out after {c['timeout_s']} s", False
    if rc != 0:
        return f"failed: exit status {rc}", False
    if c["skip_reason"]:
        return f"skipped: {c['skip_reason']}", True
    if kind == "pytest-cuda" and tests is not None:
        if dry_run and tests["passed"] == 0 and tests["skipped"] > 0:
            return f"skipped: no CUDA ({tests['skipped']} tests collected, all skip)", True
        if not dry_run and tests["skipped"]:
            return f"failed: {tests['skipped']} CUDA tests skipped on a GPU run", False
    if kind.startswith("pytest") and tests is None:
        return "failed: pytest wrote no JUnit report", False
    if kind in ("kernel_bandwidth", "step_time") and not c.get("key_numbers"):
        return "failed: no JSON results written", False
    if kind == "kernel_bandwidth" and not dry_run and not c["key_numbers"]["kernel_available"]:
        return "failed: the fused kernel was not available (PyTorch paths only)", False
    return "passed", True


def _read_checks(path: Path) -> list[dict[str, Any]]:
    checks = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        name, kind, rc, seconds, timeout, json_out, junit, skip, log, command = line.split("\t", 9)
        checks.append(
            {
                "name": name,
                "kind": kind,
                "command": command,
                "exit_status": None if rc == "-" else int(rc),
                "seconds": round(float(seconds), 1) if seconds != "-" else None,
                "timeout_s": int(timeout),
                "json_out": json_out or None,
                "junit": junit or None,
                "skip_reason": skip or None,
                "log": log or None,
            }
        )
    return checks


def _fill(c: dict[str, Any], dry_run: bool) -> None:
    log = ""
    if c["log"] and Path(c["log"]).is_file():
        log = Path(c["log"]).read_text(errors="replace")
    c["tests"] = _junit(c["junit"]) if c["kind"].startswith("pytest") else None
    numbers: dict[str, Any] | None = None
    if c["json_out"] and Path(c["json_out"]).is_file():
        try:
            data = json.loads(Path(c["json_out"]).read_text())
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and c["kind"] == "kernel_bandwidth":
            numbers = _kernel_bandwidth_numbers(data)
        elif isinstance(data, dict) and c["kind"] == "step_time":
            numbers = _step_time_numbers(data)
        elif isinstance(data, dict):
            numbers = data
    elif c["kind"] == "build":
        numbers = _build_numbers(log) or None
    elif c["tests"] is not None:
        numbers = c["tests"]
    c["key_numbers"] = numbers
    c["status"], c["ok"] = _status(c, dry_run)
    c["targets"] = [] if dry_run else targets(c)
    c["log_tail"] = log.splitlines()[-LOG_TAIL_LINES:] if not c["ok"] else []
    if c["json_out"]:
        c["json_out"] = Path(c["json_out"]).name  # lies beside the summary
    for k in ("junit", "log", "tests"):
        c.pop(k)


# ------------------------------------------------------------------------------ markdown
def _short(c: dict[str, Any]) -> str:
    n, kind = c.get("key_numbers") or {}, c["kind"]
    if kind.startswith("pytest") and n:
        t = n
        return f"{t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped"
    if kind == "build" and n:
        return f"{n['how']} ({n['seconds']} s)"
    if kind == "env" and n:
        return f"{n.get('device')}, torch {n.get('torch')}"
    if kind == "kernel_bandwidth" and n.get("sizes"):
        big = n["sizes"][-1]
        gbs = big.get("kernel_GB/s") or big.get("eager_rand_GB/s")
        which = "kernel" if big.get("kernel_GB/s") else "eager_rand"
        return f"E={big['elements']:.3g}: {which} {gbs} GB/s, copy {big.get('copy_GB/s')} GB/s"
    if kind == "step_time" and n.get("rows"):
        return "; ".join(
            f"N={r['particles']}: vmap/adam {r['vmap_over_adam']}, "
            f"closure/vmap {r['closure_over_vmap']}"
            for r in n["rows"]
        )
    return ""


def _table(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, dict):
            return "; ".join(f"{k}: {x}" for k, x in v.items())
        return str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return lines


def markdown(summary: dict[str, Any]) -> str:
    env, checks = summary["environment"], summary["checks"]
    mode = "dry run (CPU, tiny sizes)" if summary["dry_run"] else "GPU"
    failed = [c["name"] for c in checks if not c["ok"]]
    lines = [
        "# hgpso GPU check",
        "",
        f"- result: **{'all checks passed' if summary['ok'] else 'FAILED: ' + ', '.join(failed)}**",
        f"- mode: {mode}; date {env.get('date')}; host {env.get('host')}",
        f"- device: {env.get('device')}; nvidia-smi: {env.get('nvidia_smi') or 'none'}",
        f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}); nvcc {env.get('nvcc')}; "
        f"Python {env.get('python')}; commit {env.get('git_commit')}",
        f"- total {summary['seconds']} s",
        "",
        "| # | check | status | seconds | key numbers |",
        "|---|---|---|---|---|",
    ]
    for i, c in enumerate(checks, 1):
        secs = "-" if c["seconds"] is None else f"{c['seconds']} / {c['timeout_s']}"
        lines.append(f"| {i} | {c['name']} | {c['status']} | {secs} | {_short(c)} |")
    lines += ["", "## Commands", ""]
    for c in checks:
        lines.append(f"- `{c['name']}` (timeout {c['timeout_s']} s): `{c['command']}`")
    for c in checks:
        n = c.get("key_numbers") or {}
        if c["kind"] == "kernel_bandwidth" and n.get("sizes"):
            lines += ["", f"## {c['name']}: {n.get('device')}", ""]
            keys = sorted({k for s in n["sizes"] for k in s}, key=list(n["sizes"][0]).index)
            lines += _table(n["sizes"], keys)
            if n.get("end_to_end"):
                lines += ["", "End to end (one HGPSO step, Fashion-MNIST CNN):", ""]
                lines += _table(n["end_to_end"], list(n["end_to_end"][0]))
        if c["kind"] == "step_time" and n.get("rows"):
            lines += ["", f"## {c['name']}: {n.get('gpu') or 'cpu'}, batch {n['batch_size']}", ""]
            lines += _table(n["rows"], list(n["rows"][0]))
        if c["targets"]:
            lines += ["", f"Targets ({c['name']}, informational):", ""]
            lines += [f"- {t}" for t in c["targets"]]
    if summary["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    for c in checks:
        if c["log_tail"]:
            lines += ["", f"## {c['name']}: {c['status']} (end of its log)", "", "```text"]
            lines += c["log_tail"] + ["```"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env")
    e.add_argument("--json", required=True)
    e.add_argument("--dry-run", action="store_true")
    s = sub.add_parser("summary")
    s.add_argument("--checks", required=True)
    s.add_argument("--env", required=True)
    s.add_argument("--notes", default=None)
    s.add_argument("--out", required=True)
    s.add_argument("--seconds", type=float, default=0.0)
    s.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)

    if args.cmd == "env":
        env = probe(args.dry_run)
        Path(args.json).write_text(json.dumps(env, indent=2) + "\n")
        print(json.dumps(env, indent=2))
        if not args.dry_run and not env["cuda_available"]:
            print(
                "gpu_check: no CUDA device (torch.cuda.is_available() is False); "
                "on a machine without one, run with --dry-run",
                file=sys.stderr,
            )
            return 1
        return 0

    try:
        env = json.loads(Path(args.env).read_text())
    except (OSError, json.JSONDecodeError):
        env = {}
    checks = _read_checks(Path(args.checks))
    for c in checks:
        _fill(c, args.dry_run)
        if c["kind"] == "env":
            c["key_numbers"] = {k: env.get(k) for k in ("device", "torch", "cuda_available")}
    notes = []
    if args.notes and Path(args.notes).is_file():
        notes = [n for n in Path(args.notes).read_text().splitlines() if n.strip()]
    summary = {
        "ok": all(c["ok"] for c in checks),
        "dry_run": args.dry_run,
        "seconds": round(args.seconds, 1),
        "environment": env,
        "checks": checks,
        "notes": notes,
    }
    out = Path(args.out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    for c in checks:
        print(f"gpu_check: {c['name']}: {c['status']}", file=sys.stderr)
    print(f"gpu_check: wrote {out / 'summary.md'} and {out / 'summary.json'}", file=sys.stderr)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
