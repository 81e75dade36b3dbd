#!/usr/bin/env bash
# Build the documentation site offline into docs/_build/html, warnings as errors, and run
# the examples the guides mark as tests.
#
#   bash scripts/docs.sh
#
# Uses $PYTHON (default .venv/bin/python) with the `docs` extra installed
# (pip install -e ".[docs]"; `dev` includes it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -c "import importlib, sphinx, myst_parser, furo; importlib.import_module('sphinx-mathjax-offline')" 2>/dev/null ||
    { echo "scripts/docs.sh: Sphinx/MyST/Furo missing: $PYTHON -m pip install -e '.[docs]'" >&2; exit 1; }
export HGPSO_JIT=0  # never compile the CUDA kernel while documenting
# -n: nitpicky (every reference must resolve); -W --keep-going: report every warning, then fail.
"$PYTHON" -m sphinx -E -n -W --keep-going -q -b html docs docs/_build/html
"$PYTHON" -m sphinx -E -n -W --keep-going -q -b doctest docs docs/_build/doctest
echo "docs: $(pwd)/docs/_build/html/index.html"
