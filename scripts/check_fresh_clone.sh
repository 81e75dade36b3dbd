#!/usr/bin/env bash
# New-user check (issue 14): in a fresh clone of the committed tree, run README's quickstart
# command exactly as README prints it, then the test command in collection-only mode
# (`bash scripts/test.sh --co -q`: it must install everything the tests import, start the LLM
# server and run ruff; collecting every test module proves the environment is complete
# without spending CI time running the suite twice).
#
#   bash scripts/check_fresh_clone.sh
#
# Like a user on a CPU-only machine who followed README's CPU step, the clone's .venv gets
# PyTorch's CPU build first (scripts/lib/ci.sh), and a pip constraint keeps it (and a
# matching torchvision) through both commands instead of pulling the multi-GB CUDA build.
# The LLM server runs from a private HGPSO_CACHE, so no other server on the machine is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
# shellcheck source=scripts/lib/ci.sh
source "$root/scripts/lib/ci.sh"

cmd="$(grep -m 1 -E '^python3 -m venv \.venv && .+ -m benchmarks\.quickstart$' README.md)" ||
    fail "README has no one-line quickstart command"
git clone -q "$root" "$work/hgpso"
cd "$work/hgpso"

cpu_torch_args
python3 -m venv .venv
.venv/bin/python -m pip install -q "${torch_args[@]}" >"$work/pip.log" 2>&1 || {
    tail -n 30 "$work/pip.log" >&2
    fail "installing CPU torch"
}
.venv/bin/python -m pip freeze | grep -E '^torch==' >"$work/constraints.txt"
export PIP_CONSTRAINT="$work/constraints.txt"
say "CPU torch: $(cat "$work/constraints.txt")"

say "README quickstart: $cmd"
start=$SECONDS
bash -c "$cmd" >"$work/quickstart.log" 2>&1 || {
    tail -n 40 "$work/quickstart.log" >&2
    fail "the README quickstart command"
}
grep -E '^(dataset=|hgpso |adam )' "$work/quickstart.log" >&2
say "quickstart command: $((SECONDS - start)) s (venv already holding CPU torch)"

say "test command after the quickstart: bash scripts/test.sh --co -q"
start=$SECONDS
HGPSO_CACHE="$work/cache" bash scripts/test.sh --co -q >"$work/tests.log" 2>&1 || {
    tail -n 40 "$work/tests.log" >&2
    fail "the test command after the quickstart"
}
grep -E '^[0-9]+ tests? collected' "$work/tests.log" >&2 ||
    fail "pytest collected nothing: $(tail -n 5 "$work/tests.log")"
say "test command (collection only): $((SECONDS - start)) s"
say "ok"
