#!/usr/bin/env bash
# New-user check (issue 14): in a fresh clone of the committed tree, run README's quickstart
# command exactly as README prints it, then the test command in collection-only mode
# (`bash scripts/test.sh --co`: it must install everything the tests import, start the LLM
# server and run ruff; collecting every test module proves the environment is complete
# without spending CI time running the suite twice).
#
#   bash scripts/check_fresh_clone.sh
#
# The quickstart command runs verbatim in a clone with no environment, so it installs pip's
# default torch (on this CI machine from local wheel files: about 1 min and 5.5 GB, measured
# 2026-11-24). To follow README's CPU-only step first, set HGPSO_CHECK_TORCH="<pip args>"
# (e.g. "torch torchvision --index-url https://download.pytorch.org/whl/cpu"); a pip
# constraint then keeps that torch through both commands. The LLM server runs from a private
# HGPSO_CACHE, so no other server on the machine is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
# shellcheck source=scripts/lib/ci.sh
source "$root/scripts/lib/ci.sh"

cmd="$(grep -m 1 -E '^python3 -m venv \.venv && .+ -m benchmarks\.quickstart$' README.md)" ||
    fail "README has no one-line quickstart command"
git clone -q "$root" "$work/hgpso"
cd "$work/hgpso"

if [ -n "${HGPSO_CHECK_TORCH:-}" ]; then
    cpu_torch_args
    python3 -m venv .venv
    .venv/bin/python -m pip install -q "${torch_args[@]}" >"$work/pip.log" 2>&1 || {
        tail -n 30 "$work/pip.log" >&2
        fail "installing torch (${torch_args[*]})"
    }
    .venv/bin/python -m pip freeze | grep -E '^torch(vision)?==' >"$work/constraints.txt"
    export PIP_CONSTRAINT="$work/constraints.txt"
    say "torch installed first: $(tr '\n' ' ' <"$work/constraints.txt")"
fi

say "README quickstart: $cmd"
start=$SECONDS
bash -c "$cmd" >"$work/quickstart.log" 2>&1 || {
    tail -n 40 "$work/quickstart.log" >&2
    fail "the README quickstart command"
}
grep -E '^(dataset=|hgpso |adam )' "$work/quickstart.log" >&2
say "quickstart command: $((SECONDS - start)) s"

say "test command after the quickstart: bash scripts/test.sh --co"
start=$SECONDS
HGPSO_CACHE="$work/cache" bash scripts/test.sh --co >"$work/tests.log" 2>&1 || {
    tail -n 40 "$work/tests.log" >&2
    fail "the test command after the quickstart"
}
grep -E "[0-9]+ tests? collected" "$work/tests.log" >&2 ||
    fail "pytest collected nothing: $(tail -n 5 "$work/tests.log")"
say "test command (collection only): $((SECONDS - start)) s"
say "ok"
