#!/usr/bin/env bash
# Release check: build the sdist and the wheel, install the wheel into a fresh virtual
# environment away from the source tree, and check what a user of the wheel gets.
#
#   bash scripts/check_package.sh
#
# Uses $PYTHON (default .venv/bin/python, needs `build`: the dev extra) to build, and
# python3 for the fresh environment, with PyTorch's CPU build (scripts/lib/ci.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
PYTHON="${PYTHON:-.venv/bin/python}"
# shellcheck source=scripts/lib/ci.sh
source "$root/scripts/lib/ci.sh"

say "building sdist and wheel"
"$PYTHON" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || {
    tail -n 30 "$work/build.log" >&2
    fail "python -m build"
}
wheel="$(ls "$work"/dist/hgpso-*.whl)"
sdist="$(ls "$work"/dist/hgpso-*.tar.gz)"

# What the archives hold: the kernel sources for the JIT build, the typing marker, the
# license; no top-level `benchmarks` package and no console script that would need it.
"$PYTHON" - "$wheel" "$sdist" <<'EOF' || fail "archive contents"
import sys, tarfile, zipfile

wheel, sdist = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
tops = sorted({n.split("/")[0] for n in names if not n.startswith("hgpso-")})
assert tops == ["hgpso", "lightning_callbacks"], f"wheel top-level names: {tops}"
need = [f"hgpso/kernels/csrc/{f}" for f in (
    "hgpso_ops.cpp", "hgpso_update_kernel.cu", "hgpso_update.h", "hgpso_update_kernel.cuh",
    "philox.h")] + ["hgpso/py.typed"]
missing = [n for n in need if n not in names]
assert not missing, f"wheel lacks {missing}"
assert not any(n.endswith("entry_points.txt") for n in names), "wheel declares entry points"
assert any(n.endswith("licenses/LICENSE") for n in names), "wheel lacks LICENSE"
meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
assert "License-Expression: MIT" in meta, "no SPDX License-Expression"
assert "example.invalid" not in meta, "placeholder URL in metadata"
members = tarfile.open(sdist).getnames()
assert any(m.endswith("/csrc/hgpso_update_kernel.cu") for m in members), "sdist lacks csrc/"
assert not any("/benchmarks/" in m for m in members), "sdist ships benchmarks/"
print(f"check_package: wheel holds {len(names)} files, sdist {len(members)}; contents ok")
EOF

say "fresh virtual environment (CPU torch)"
python3 -m venv "$work/venv"
pip_install() {  # quiet unless it fails (pip's configuration warnings are noise here)
    "$work/venv/bin/python" -m pip install -q "$@" >>"$work/pip.log" 2>&1 || {
        tail -n 30 "$work/pip.log" >&2
        return 1
    }
}
cpu_torch_args
pip_install "${torch_args[@]}" || fail "installing torch (${torch_args[*]})"
pip_install "$wheel" || fail "installing the wheel"
"$work/venv/bin/python" -m pip check >/dev/null || fail "pip check"

cd "$work"  # away from the source tree: nothing may come from $root
"$work/venv/bin/python" - "$root" <<'EOF' || fail "the installed wheel"
import importlib.util, subprocess, sys
from pathlib import Path

root = Path(sys.argv[1]).resolve()
import hgpso
from hgpso.kernels import _build

where = Path(hgpso.__file__).resolve()
assert root not in where.parents, f"hgpso imported from the source tree: {where}"
assert Path(sys.prefix) in where.parents, where
src = _build.source_dir()
assert src == where.parent / "kernels" / "csrc", f"kernel sources found at {src}"
assert (where.parent / "py.typed").is_file()
assert importlib.util.find_spec("benchmarks") is None, "a `benchmarks` package is importable"
assert importlib.util.find_spec("lightning_callbacks") is not None
out = subprocess.run(
    [sys.executable, "-m", "hgpso.kernels"], capture_output=True, text=True, check=True
).stdout
assert "can build:" in out, out
print(f"check_package: import hgpso {hgpso.__version__} from {where.parent}; kernel sources "
      f"at {src}")
EOF
[ ! -e "$work/venv/bin/hgpso-train" ] || fail "the wheel installed an hgpso-train script"
say "ok"
