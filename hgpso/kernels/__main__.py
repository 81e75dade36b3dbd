"""``python -m hgpso.kernels --build``: compile the fused kernel and print where it is.

Exit status 0 when the library was built (or found) and loaded, 1 otherwise, with the reason.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hgpso.kernels", description=__doc__)
    parser.add_argument(
        "--build",
        action="store_true",
        help="compile the JIT extension (or load the AOT one) and report",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show compiler output")
    args = parser.parse_args(argv)

    import torch

    from hgpso.kernels import _build

    if not args.build:
        aot = _build.aot_library()
        jit = _build.jit_library_path()
        print(f"AOT build:  {aot or 'none'}")
        print(f"JIT build:  {jit if jit.is_file() else 'none'} (cache {jit.parent})")
        print(f"CUDA device: {torch.cuda.is_available()}")
        print(f"can build:  {_build.why_cannot_build() or 'yes'}")
        return 0

    start = time.perf_counter()
    try:
        aot = _build.aot_library()
        if aot is not None:
            path = _build.load_library(build_if_missing=False)
            how = "ahead-of-time build (installed with HGPSO_BUILD_CUDA=1)"
        else:
            path = str(_build.build(verbose=args.verbose))
            how = "just-in-time build"
    except Exception as exc:
        print(f"hgpso.kernels: could not build or load the fused kernel: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(f"hgpso.kernels: {how} at {path} ({elapsed:.1f} s)")
    print(f"op: torch.ops.hgpso.fused_update_ ({torch.ops.hgpso.fused_update_.default._schema})")
    if not torch.cuda.is_available():
        print(
            "note: no CUDA device here, so the kernel is built but cannot run; "
            "HGPSO(..., fused=None) will use the pure-PyTorch path"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
