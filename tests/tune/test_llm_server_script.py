"""scripts/llm_server.sh: the cheap paths (usage, idempotent stop, clear errors)."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "llm_server.sh"


def sh(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=e, timeout=60
    )


def test_usage_and_idempotent_stop(tmp_path):
    assert sh().returncode == 2
    env = {"HGPSO_CACHE": str(tmp_path)}
    assert sh("stop", env=env).returncode == 0
    assert sh("stop", env=env).returncode == 0
    r = sh("health", env=env)
    assert r.returncode != 0 and "run start first" in r.stderr


def test_start_without_packages_fails_clearly(tmp_path):
    fake_py = tmp_path / "py"
    fake_py.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    fake_py.chmod(0o755)
    r = sh("start", env={"HGPSO_CACHE": str(tmp_path), "PYTHON": str(fake_py)})
    assert r.returncode != 0 and "install" in r.stderr and r.stdout == ""
