"""Build script. Pure Python by default; the fused CUDA kernel only when asked for.

::

    pip install .                                           # nothing compiled, torch not needed
    HGPSO_BUILD_CUDA=1 pip install --no-build-isolation .  # also compile hgpso/_C*.so (AOT)
    HGPSO_BUILD_CUDA=auto pip install --no-build-isolation .  # compile if torch + nvcc are
                                                            # found, else install without it

The AOT build needs ``--no-build-isolation``: the extension must be compiled against the very
torch that will load it, so the build has to see the installed torch rather than a fresh copy
in an isolated build environment. ``TORCH_CUDA_ARCH_LIST`` (e.g. ``"8.0;9.0"``) picks the GPU
architectures (torch's default without a visible GPU is every architecture the CUDA version
supports, which is slow to build). Without an AOT build, ``python -m hgpso.kernels --build``
(or the first fused step on a GPU) compiles the same sources just in time into a cache.

Whatever the mode, the sources in ``csrc/`` are copied into the package
(``hgpso/kernels/csrc``) so that the JIT build also works from an installed wheel.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
SOURCES = ("hgpso_ops.cpp", "hgpso_update_kernel.cu")
SOURCE_SUFFIXES = {".cpp", ".cu", ".h", ".cuh"}


class BuildPyWithSources(build_py):
    """build_py that also ships csrc/ as hgpso/kernels/csrc (for the JIT build)."""

    def run(self) -> None:
        super().run()
        if not CSRC.is_dir():
            return
        target = Path(self.build_lib) / "hgpso" / "kernels" / "csrc"
        self.mkpath(str(target))
        for f in sorted(CSRC.iterdir()):
            if f.suffix in SOURCE_SUFFIXES:
                self.copy_file(str(f), str(target / f.name))


def _mode() -> str:
    mode = os.environ.get("HGPSO_BUILD_CUDA", "0").strip().lower()
    if mode in ("", "0", "false", "no", "off"):
        return "off"
    return "auto" if mode == "auto" else "on"


def _cuda_extension(mode: str):
    """([extension], {cmdclass}) for the AOT build, or ([], {}) when skipped."""
    try:  # torch only now, lazily: a plain install must not need it
        from torch.utils import cpp_extension
    except ImportError as exc:
        if mode == "auto":
            print(
                f"hgpso: HGPSO_BUILD_CUDA=auto, torch not importable ({exc}): skipping the "
                "CUDA kernel (use pip install --no-build-isolation)"
            )
            return [], {}
        raise RuntimeError(
            "HGPSO_BUILD_CUDA=1 needs torch importable at build time: install torch first and "
            "run `HGPSO_BUILD_CUDA=1 pip install --no-build-isolation .`"
        ) from exc

    def has_headers(root) -> bool:
        return bool(root) and Path(root, "include", "cuda_runtime.h").is_file()

    if not has_headers(cpp_extension.CUDA_HOME) and has_headers("/usr/local/cuda"):
        cpp_extension.CUDA_HOME = "/usr/local/cuda"  # torch guessed from a wrapper nvcc
        os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
    if not has_headers(cpp_extension.CUDA_HOME):
        msg = (
            f"no CUDA toolkit found (torch's CUDA_HOME is {cpp_extension.CUDA_HOME!r}); "
            "set CUDA_HOME"
        )
        if mode == "auto":
            print(f"hgpso: HGPSO_BUILD_CUDA=auto, {msg}: skipping the CUDA kernel")
            return [], {}
        raise RuntimeError(f"HGPSO_BUILD_CUDA=1 but {msg}")
    ext = cpp_extension.CUDAExtension(
        name="hgpso._C",
        sources=[f"csrc/{s}" for s in SOURCES],
        include_dirs=[str(CSRC)],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension}


def main() -> None:
    mode = _mode()
    ext_modules, cmdclass = ([], {}) if mode == "off" else _cuda_extension(mode)
    setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithSources, **cmdclass})


main()
