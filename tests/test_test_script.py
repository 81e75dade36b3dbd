"""scripts/test.sh, run for real against stand-ins for Python and the LLM server script.

A copy of test.sh runs in a scratch tree whose scripts/llm_server.sh is a stub with a chosen
behaviour, and $PYTHON is a stub that logs every call; nothing is installed or started.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
echo "python $* | url=${HGPSO_LLM_BASE_URL:-} require=${HGPSO_REQUIRE_LLM:-}" >> "$LOG"
case "$*" in
  -c*) echo /fake/prefix ;;
  "-m pytest"*) echo "pytest sees PYTHON=${PYTHON:-}" >> "$LOG" ;;
esac
exit 0
"""

SERVER = {
    "fails": 'case "$1" in start) echo "no server" >&2; exit 1 ;; esac',
    "silent": 'case "$1" in start) exit 0 ;; esac',
    "ok": (
        'case "$1" in start) echo "export HGPSO_LLM_BASE_URL=http://127.0.0.1:9/v1; '
        'export HGPSO_LLM_MODEL=m" ;; esac'
    ),
}


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run_test_sh(
    tmp_path: Path, server: str, python: str | None = None
) -> tuple[subprocess.CompletedProcess, str]:
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "test.sh", tree / "scripts" / "test.sh")
    _executable(
        tree / "scripts" / "llm_server.sh",
        f'#!/usr/bin/env bash\necho "server $1" >> "$LOG"\n{SERVER[server]}\nexit 0\n',
    )
    _executable(tmp_path / "python", FAKE_PYTHON)
    log = tmp_path / "calls.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HGPSO_LLM")}
    env.update(PYTHON=python or str(tmp_path / "python"), LOG=str(log))
    proc = subprocess.run(
        ["bash", str(tree / "scripts" / "test.sh"), "-x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, log.read_text() if log.exists() else ""


def test_installs_dev_extras_into_the_given_environment_first(tmp_path: Path) -> None:
    proc, calls = run_test_sh(tmp_path, "ok")
    assert proc.returncode == 0, proc.stderr
    lines = calls.splitlines()
    install = next(i for i, c in enumerate(lines) if "-m pip install -q -e .[dev]" in c)
    assert install < lines.index("server install")
    assert "installing the project with its dev extras into /fake/prefix" in proc.stderr


def test_a_relative_python_reaches_the_tests_as_an_absolute_path(tmp_path: Path) -> None:
    # tests run scripts from other directories with $PYTHON: a relative path would not resolve
    proc, calls = run_test_sh(tmp_path, "ok", python="../python")
    assert proc.returncode == 0, proc.stderr
    seen = next(c for c in calls.splitlines() if c.startswith("pytest sees"))
    assert seen == f"pytest sees PYTHON={tmp_path / 'tree' / '..' / 'python'}"


@pytest.mark.parametrize(
    "server, message",
    [
        ("fails", "the local LLM server did not start"),
        ("silent", "did not report HGPSO_LLM_BASE_URL"),
    ],
)
def test_no_tests_run_without_the_llm_server(tmp_path: Path, server: str, message: str) -> None:
    proc, calls = run_test_sh(tmp_path, server)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "-m pytest" not in calls and "-m ruff" not in calls
    assert calls.splitlines()[-1] == "server stop"  # the EXIT trap still stops it


def test_tests_get_the_server_and_the_server_is_stopped(tmp_path: Path) -> None:
    proc, calls = run_test_sh(tmp_path, "ok")
    assert proc.returncode == 0, proc.stderr
    pytest_call = next(c for c in calls.splitlines() if "-m pytest" in c)
    assert pytest_call == ("python -m pytest -q -x | url=http://127.0.0.1:9/v1 require=1")
    assert calls.splitlines()[-1] == "server stop"
