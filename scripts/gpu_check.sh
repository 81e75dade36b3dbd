#!/usr/bin/env bash
# Every GPU check of the project, in order, each under its own timeout, into one summary.
#
#   bash scripts/gpu_check.sh [--dry-run] [--out DIR] [--only NAME[,NAME...]]
#
# On a CUDA machine (an H100: under 8 minutes in all; the timeouts below add up to 470 s):
#   1. environment        device, driver, torch, CUDA, nvcc (fails without a CUDA device)
#   2. kernel_build       python -m hgpso.kernels --build (JIT-compiles the optional fused op)
#   3. kernel_tests_cuda  pytest tests/kernels/test_kernels_cuda.py (a skipped test fails it)
#   4. kernel_tests       pytest test_kernels.py, test_kernels_build.py, test_kernels_emulated.py
#                         (detection and dispatch on a CUDA machine, the build, the emulation)
#   5. kernel_bandwidth   python -m benchmarks.kernel_bandwidth (sizes 1e6..1e9, N = 16)
#   6. step_time          python -m benchmarks.step_time --device cuda (closure, vectorized
#                         loop and vmap paths against Adam; N = 1, 4, 16, 64; memory table)
#   and pytest on any tests/distributed/test_*.py that names NCCL (none yet: all use gloo).
#
# --dry-run (or HGPSO_GPU_CHECK_DRY_RUN=1): the same checks with the same command lines on
# the CPU at tiny sizes (step_time --device cpu, kernel_bandwidth --smoke), in well under a
# minute: CUDA-only tests report "skipped: no CUDA", the kernel build is skipped when this
# machine cannot compile it, and a wrong command line (a renamed flag or file) fails.
#
# Output, into --out DIR (default: $OUT when set, else runs/gpu_check/, which git ignores): summary.md and
# summary.json (every check: name, command, status, exit status, seconds, key numbers, and
# the device, torch version and date), the benchmarks' own JSON (kernel_bandwidth.json,
# step_time.json) and gpu_check.log (every check's output). A failing check does not stop
# the others; the exit status is 0 when all passed, 1 when one failed, 2 on a usage error.
#
# Environment: PYTHON (interpreter; default .venv/bin/python, else python3),
# HGPSO_GPU_CHECK_ARGS_<name>="..." (extra arguments appended to that check's command),
# HGPSO_GPU_CHECK_TIMEOUT_<name>=SECONDS (that check's timeout).
set -uo pipefail
caller="$PWD"
cd "$(dirname "$0")/.." || exit 2
root="$PWD"

usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; }
die() {
    echo "gpu_check: error: $*" >&2
    exit 2
}

dry_run=0
case "${HGPSO_GPU_CHECK_DRY_RUN:-0}" in 0 | "") ;; *) dry_run=1 ;; esac
out="${OUT:-$root/runs/gpu_check}"
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --out)
            [ $# -ge 2 ] || die "--out needs a folder"
            out="$2"
            shift
            ;;
        --out=*) out="${1#--out=}" ;;
        --only)
            [ $# -ge 2 ] || die "--only needs check names"
            only="$2"
            shift
            ;;
        --only=*) only="${1#--only=}" ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
elif [ -x .venv/bin/python ]; then
    py="$root/.venv/bin/python"
else
    py="$(command -v python3)" || die "no Python found: set PYTHON"
fi
# The checkout itself, importable without an install (the GPU machine has torch, not hgpso).
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

all_checks=(environment kernel_build kernel_tests_cuda kernel_tests kernel_bandwidth step_time)

if [ -n "$only" ]; then
    IFS=, read -r -a wanted <<<"$only"
    for w in "${wanted[@]}"; do
        case " ${all_checks[*]} distributed_nccl " in
            *" $w "*) ;;
            *) die "--only: no check named '$w' (checks: ${all_checks[*]} distributed_nccl)" ;;
        esac
    done
fi

case "$out" in /*) ;; *) out="$caller/$out" ;; esac
mkdir -p "$out" || die "cannot create the output folder $out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rm -f "$out/gpu_check.log" "$out/summary.md" "$out/summary.json"
: >"$work/checks.tsv"
: >"$work/notes.txt"

now() { if [ -n "${EPOCHREALTIME:-}" ]; then echo "$EPOCHREALTIME"; else date +%s.%N; fi; }
started="$(now)"
selected() {
    [ -z "$only" ] || [ "$1" = environment ] && return 0
    case ",$only," in *",$1,"*) return 0 ;; esac
    return 1
}

# run_check NAME KIND TIMEOUT JSON_OUT SKIP_REASON -- COMMAND...
# Runs COMMAND (plus $HGPSO_GPU_CHECK_ARGS_<NAME>) under `timeout`, its output into the log,
# and appends one line to checks.tsv; the summary decides the status.
run_check() {
    local name="$1" kind="$2" limit="$3" json_out="$4" skip="$5"
    shift 6
    local -a cmd=("$@") extra=()
    local extra_var="HGPSO_GPU_CHECK_ARGS_$name" limit_var="HGPSO_GPU_CHECK_TIMEOUT_$name"
    [ -n "${!extra_var:-}" ] && read -r -a extra <<<"${!extra_var}"
    cmd+=("${extra[@]}")
    limit="${!limit_var:-$limit}"
    local junit="" log="$work/$name.log" shown="${cmd[*]}"
    shown="${shown//"$out/"/<out>/}"
    shown="${shown//"$work/"/<tmp>/}"
    shown="${shown//"$root/"/}"
    if ! selected "$name"; then
        printf '%s\t%s\t-\t-\t%s\t\t\t\t\t%s\n' "$name" "$kind" "$limit" "$shown" >>"$work/checks.tsv"
        return
    fi
    case "$kind" in pytest*)
        junit="$work/$name.xml"
        cmd+=("--junitxml=$junit")
        ;;
    esac
    [ -n "$json_out" ] && rm -f "$json_out"
    echo "gpu_check: [$name] $shown (timeout ${limit}s)" >&2
    local t0 rc
    t0="$(now)"
    timeout --kill-after=15 "$limit" "${cmd[@]}" >"$log" 2>&1 </dev/null
    rc=$?
    local secs
    secs="$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')"
    {
        echo "===== $name (exit status $rc, $secs s): $shown"
        cat "$log"
        echo
    } >>"$out/gpu_check.log"
    echo "gpu_check: [$name] exit status $rc after $secs s" >&2
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$kind" "$rc" "$secs" "$limit" \
        "$json_out" "$junit" "$skip" "$log" "$shown" >>"$work/checks.tsv"
}

dry=()
[ "$dry_run" = 1 ] && dry=(--dry-run)
pytest=("$py" -m pytest -q -p no:cacheprovider)

# 1. the machine
run_check environment env 20 "" "" -- "$py" scripts/lib/gpu_check.py env --json "$work/env.json" "${dry[@]}"

# 2. the optional fused kernel, built once here so that the tests only load it
blocker=""
if [ -f "$work/env.json" ]; then
    blocker="$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("kernel_build_blocker") or "")' "$work/env.json" 2>/dev/null)"
fi
if [ "$dry_run" = 1 ] && [ -n "$blocker" ]; then
    # cannot compile here: check the entry point only (prints what is built and why not)
    run_check kernel_build build 90 "" "cannot build the kernel here: $blocker" -- "$py" -m hgpso.kernels
else
    run_check kernel_build build 90 "" "" -- "$py" -m hgpso.kernels --build
fi

# 3., 4. the kernel tests: the CUDA-only file, then the rest with their CUDA-dependent branches
run_check kernel_tests_cuda pytest-cuda 75 "" "" -- "${pytest[@]}" tests/kernels/test_kernels_cuda.py
run_check kernel_tests pytest 45 "" "" -- "${pytest[@]}" tests/kernels/test_kernels.py \
    tests/kernels/test_kernels_build.py tests/kernels/test_kernels_emulated.py

# 5., 6. the benchmarks, full size on the GPU, tiny on a dry run: one command line each, in
# which a dry run changes values and adds flags (it drops none, so it checks every flag)
if [ "$dry_run" = 1 ]; then
    kb_sizes=1e4 kb_e2e=2 st_device=cpu st_particles=(2) st_repeats=1
    kb_dry=(--smoke --repeats 1 --warmup 0 --no-compile) st_dry=(--batch-size 8 --threads 1)
else
    kb_sizes=1e6,1e7,1e8,1e9 kb_e2e=16,64 st_device=cuda st_particles=(1 4 16 64) st_repeats=20
    kb_dry=() st_dry=()
fi
run_check kernel_bandwidth kernel_bandwidth 150 "$out/kernel_bandwidth.json" "" -- \
    "$py" -m benchmarks.kernel_bandwidth --sizes "$kb_sizes" --particles 16 \
    --e2e-particles "$kb_e2e" "${kb_dry[@]}" --out "$out/kernel_bandwidth.json"
run_check step_time step_time 90 "$out/step_time.json" "" -- \
    "$py" -m benchmarks.step_time --device "$st_device" --particles "${st_particles[@]}" \
    --repeats "$st_repeats" "${st_dry[@]}" --json "$out/step_time.json"

# NCCL: any distributed test that uses it (one GPU runs world size 1 only)
mapfile -t nccl_tests < <(grep -l -i nccl tests/distributed/test_*.py 2>/dev/null)
if [ "${#nccl_tests[@]}" -gt 0 ]; then
    run_check distributed_nccl pytest-cuda 60 "" "" -- "${pytest[@]}" "${nccl_tests[@]}"
else
    echo "no NCCL tests: every test in tests/distributed uses gloo on the CPU" >>"$work/notes.txt"
fi
if ! grep -q -i -e cuda -e nccl benchmarks/scaling.py; then
    echo "benchmarks/scaling.py has no CUDA mode (gloo on the CPU only): not run" >>"$work/notes.txt"
fi

total="$(awk -v a="$started" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')"
"$py" scripts/lib/gpu_check.py summary --checks "$work/checks.tsv" --env "$work/env.json" \
    --notes "$work/notes.txt" --out "$out" --seconds "$total" "${dry[@]}"
rc=$?
cat "$out/summary.md" 2>/dev/null
exit "$rc"
