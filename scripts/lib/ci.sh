# shellcheck shell=bash
# Sourced by the CI check scripts (scripts/check_*.sh): a scratch folder removed on exit,
# messages, and the pip arguments for PyTorch's CPU build.
export PIP_DISABLE_PIP_VERSION_CHECK=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
say() { echo "$(basename "$0" .sh): $*" >&2; }
fail() {
    say "FAILED: $*"
    exit 1
}

# cpu_torch_args sets the array `torch_args`: pip arguments that install
# PyTorch's CPU build (a few hundred MB instead of several GB of CUDA libraries).
# HGPSO_CHECK_TORCH="<pip args>" overrides; else a local CPU wheel in pip's find-links (this
# CI machine: /opt/wheels) is used when there is one; else PyTorch's CPU index.
cpu_torch_args() {
    local local_cpu
    if [ -n "${HGPSO_CHECK_TORCH:-}" ]; then
        read -r -a torch_args <<<"$HGPSO_CHECK_TORCH"
        return
    fi
    local_cpu="$(ls "${PIP_FIND_LINKS:-/nonexistent}"/torch-*+cpu-*.whl 2>/dev/null | head -n 1 || true)"
    if [ -n "$local_cpu" ]; then
        torch_args=("torch==$(basename "$local_cpu" | cut -d- -f2 | cut -d+ -f1)")
    else
        torch_args=(torch --index-url https://download.pytorch.org/whl/cpu)
    fi
}
