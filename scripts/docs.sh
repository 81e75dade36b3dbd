#!/usr/bin/env bash
# Build the documentation site offline into docs/_build/html, warnings as errors, and run
# the examples the guides mark as tests.
#
#   bash scripts/docs.sh
#
# Uses $PYTHON (default .venv/bin/python) with the `docs` extra installed
# (pip install -e ".[docs]"; `dev` includes it). Besides Sphinx, the build imports lightning
# (autodoc of lightning_callbacks, the tuning guide), optuna (hgpso.tune.StrategySampler) and
# openai (the tuning guide's scripted-LLM examples); the `docs` extra pulls all three.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
missing=$("$PYTHON" - <<'PY' 2>/dev/null
import importlib
names = ["sphinx", "myst_parser", "furo", "sphinx-mathjax-offline", "lightning", "optuna", "openai"]
missing = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception:
        missing.append(name)
print(" ".join(missing))
PY
) || missing="(could not run $PYTHON)"
if [[ -n "$missing" ]]; then
    echo "scripts/docs.sh: missing for the docs build: $missing: $PYTHON -m pip install -e '.[docs]'" >&2
    exit 1
fi
export HGPSO_JIT=0  # never compile the CUDA kernel while documenting
# -n: nitpicky (every reference must resolve); -W --keep-going: report every warning, then fail.
"$PYTHON" -m sphinx -E -n -W --keep-going -q -b html docs docs/_build/html
"$PYTHON" -m sphinx -E -n -W --keep-going -q -b doctest docs docs/_build/doctest
echo "docs: $(pwd)/docs/_build/html/index.html"
