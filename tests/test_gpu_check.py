"""scripts/gpu_check.sh: its CPU dry run, and that a broken step fails it by name.

The dry run runs every GPU check with the command lines of a GPU run at tiny sizes on the
CPU, so a renamed flag or file in one of them fails here, in CI, before it wastes a GPU
machine's time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
CHECKS = [
    "environment",
    "kernel_build",
    "kernel_tests_cuda",
    "kernel_tests",
    "kernel_bandwidth",
    "step_time",
]

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HGPSO_GPU_CHECK", "OUT"))}
    env.update(PYTHON=sys.executable, **extra)
    return env


def _run(args: list[str], timeout: float, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    # the default output folder is $OUT (what comes back from the GPU machine)
    return _run(["--dry-run"], timeout=120, OUT=str(out)), out


def test_dry_run_passes_and_summarises_every_check(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = _summary(out)
    assert summary["ok"] is True and summary["dry_run"] is True
    assert [c["name"] for c in summary["checks"]] == CHECKS
    for c in summary["checks"]:
        assert c["ok"], c
        assert c["exit_status"] == 0 and c["seconds"] >= 0 and c["command"]
        assert c["status"] == "passed" or c["status"].startswith("skipped: "), c
    env = summary["environment"]
    assert env["torch"] == torch.__version__ and env["date"] and env["device"]
    md = (out / "summary.md").read_text()
    for name in CHECKS:
        assert f"| {name} |" in md
    assert "all checks passed" in md
    assert {"summary.md", "summary.json", "gpu_check.log"} <= {p.name for p in out.iterdir()}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: not a dry run")
def test_dry_run_reports_cuda_tests_as_skipped_and_keeps_the_benchmark_numbers(dry_run):
    _, out = dry_run
    checks = {c["name"]: c for c in _summary(out)["checks"]}
    assert checks["kernel_tests_cuda"]["status"].startswith("skipped: no CUDA")
    assert checks["kernel_tests_cuda"]["key_numbers"]["skipped"] > 0
    assert checks["kernel_tests"]["key_numbers"]["passed"] > 0  # the emulated kernel, on CPU
    assert checks["kernel_bandwidth"]["key_numbers"]["sizes"][0]["copy_GB/s"] > 0
    (row,) = checks["step_time"]["key_numbers"]["rows"]
    assert row["device"] == "cpu" and row["vec_vmap_ms"] > 0 and row["vmap_over_adam"] > 0
    assert json.loads((out / "step_time.json").read_text())["rows"]


def test_a_broken_step_fails_the_run_names_it_and_the_others_still_run(tmp_path):
    out = tmp_path / "out"
    proc = _run(
        ["--out", str(out), "--only", "kernel_tests_cuda,kernel_bandwidth,step_time"],
        timeout=90,
        HGPSO_GPU_CHECK_DRY_RUN="1",
        # a renamed test file, a renamed flag
        HGPSO_GPU_CHECK_ARGS_kernel_tests_cuda="tests/kernels/no_such_test_file.py",
        HGPSO_GPU_CHECK_ARGS_kernel_bandwidth="--no-such-flag",
        HGPSO_GPU_CHECK_TIMEOUT_step_time="1",
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = {c["name"]: c["status"] for c in _summary(out)["checks"]}
    assert status["environment"] == "passed"
    assert status["kernel_build"] == status["kernel_tests"] == "not run (--only)"
    assert status["kernel_tests_cuda"] == "failed: exit status 4"  # pytest: file not found
    assert status["kernel_bandwidth"] == "failed: exit status 2"  # argparse
    assert status["step_time"] == "failed: timed out after 1 s"
    assert "gpu_check: kernel_bandwidth: failed: exit status 2" in proc.stderr
    md = (out / "summary.md").read_text()
    assert "FAILED: kernel_tests_cuda, kernel_bandwidth, step_time" in md
    assert "--no-such-flag" in md  # the command, and the end of its log


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_a_gpu_run_without_cuda_fails_instead_of_passing_on_skips(tmp_path):
    proc = _run(["--out", str(tmp_path), "--only", "kernel_tests_cuda"], timeout=60)
    assert proc.returncode == 1
    status = {c["name"]: c["status"] for c in _summary(tmp_path)["checks"]}
    assert status["environment"] == "failed: exit status 1"
    assert (
        status["kernel_tests_cuda"].startswith("failed: ")
        and "skipped" in status["kernel_tests_cuda"]
    )


def test_usage_errors_exit_2():
    assert _run(["--only", "no_such_check"], timeout=10).returncode == 2
    assert _run(["--frobnicate"], timeout=10).returncode == 2
