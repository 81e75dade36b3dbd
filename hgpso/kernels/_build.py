"""Finding, building and loading the compiled ``hgpso::fused_update_`` library.

Two ways to get it:

* ahead of time: ``HGPSO_BUILD_CUDA=1 pip install --no-build-isolation .`` compiles
  ``hgpso/_C*.so`` (see ``setup.py``);
* just in time: :func:`build` compiles ``csrc/`` with :func:`torch.utils.cpp_extension.load`
  into ``${HGPSO_CACHE:-~/.cache/hgpso}/kernels/<python-torch-cuda tag>/`` (a second build
  with unchanged sources is a no-op).

Environment:

``HGPSO_CACHE``           cache root (default ``~/.cache/hgpso``).
``TORCH_CUDA_ARCH_LIST``  GPU architectures to compile for; when unset, torch targets the
                          visible GPU, and without a GPU we compile for :data:`DEFAULT_ARCH`
                          only (a lean build, enough to catch compile breaks).
``CUDA_HOME``             the CUDA toolkit; when unset and torch's guess has no
                          ``include/cuda_runtime.h`` we try ``/usr/local/cuda``.
``MAX_JOBS``              parallel compile jobs (torch's knob).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

NAME = "hgpso_fused"
OP = "hgpso::fused_update_"
DEFAULT_ARCH = "9.0"
SOURCES = ("hgpso_ops.cpp", "hgpso_update_kernel.cu")
HEADERS = ("hgpso_update.h", "hgpso_update_kernel.cuh", "philox.h")

_LOCK = threading.RLock()
_LOADED: str | None = None  # path of the library loaded into this process


def source_dir() -> Path:
    """Where the CUDA/C++ sources are: a copy shipped in the package (``hgpso/kernels/csrc``,
    placed there by ``setup.py``) or the repository's ``csrc/`` (source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "csrc", here.parent.parent / "csrc"):
        if all((candidate / f).is_file() for f in SOURCES + HEADERS):
            return candidate
    raise FileNotFoundError(
        f"the sources of the fused kernel ({', '.join(SOURCES)}) were found neither in "
        f"{here / 'csrc'} nor in {here.parent.parent / 'csrc'}"
    )


def cache_root() -> Path:
    return Path(os.environ.get("HGPSO_CACHE", "~/.cache/hgpso")).expanduser() / "kernels"


def build_dir() -> Path:
    """Per-(python, torch, CUDA) build folder, so incompatible builds never mix."""
    import torch

    tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}"
    tag += f"-cu{torch.version.cuda or 'none'}"
    return cache_root() / tag.replace("+", "_").replace("/", "_")


def aot_library() -> str | None:
    """The ahead-of-time build ``hgpso/_C*.so`` shipped in the installed package, if any."""
    pkg = Path(__file__).resolve().parent.parent
    found = sorted(glob.glob(str(pkg / "_C*.so")) + glob.glob(str(pkg / "_C*.pyd")))
    return found[0] if found else None


def jit_library_path() -> Path:
    return build_dir() / f"{NAME}.so"


def cuda_home() -> str | None:
    """The CUDA toolkit root torch will compile with, fixing torch's guess when it points at a
    folder without CUDA headers (e.g. ``nvcc`` reached through a wrapper in /usr/local/bin)."""
    from torch.utils import cpp_extension

    def ok(root: str | None) -> bool:
        return root is not None and root != "" and Path(root, "include", "cuda_runtime.h").is_file()

    if ok(os.environ.get("CUDA_HOME")) or ok(os.environ.get("CUDA_PATH")):
        return cpp_extension.CUDA_HOME
    if ok(cpp_extension.CUDA_HOME):
        return cpp_extension.CUDA_HOME
    for candidate in ("/usr/local/cuda",):
        if ok(candidate):
            # torch reads this module global when it builds include and library paths
            cpp_extension.CUDA_HOME = candidate
            os.environ.setdefault("CUDA_HOME", candidate)
            return candidate
    return None


def nvcc_path() -> str | None:
    home = cuda_home()
    if home is not None and Path(home, "bin", "nvcc").is_file():
        return str(Path(home, "bin", "nvcc"))
    return shutil.which("nvcc")


def why_cannot_build() -> str | None:
    """None when a JIT build can be attempted, else the reason it cannot."""
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension
    except Exception as exc:  # pragma: no cover - torch is a hard dependency
        return f"torch.utils.cpp_extension cannot be imported: {exc!r}"
    if cuda_home() is None or nvcc_path() is None:
        return (
            "no CUDA toolkit found (nvcc and include/cuda_runtime.h); set CUDA_HOME "
            f"(torch guessed {cpp_extension.CUDA_HOME!r})"
        )
    if shutil.which("ninja") is None:
        try:
            cpp_extension.verify_ninja_availability()
        except Exception:
            return "ninja is not installed (pip install ninja), needed for the JIT build"
    return None


@contextlib.contextmanager
def _arch_env() -> Iterator[str]:
    import torch

    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        yield os.environ["TORCH_CUDA_ARCH_LIST"]
        return
    if torch.cuda.is_available():
        yield "the visible GPU(s)"
        return
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH
    try:
        yield DEFAULT_ARCH
    finally:
        os.environ.pop("TORCH_CUDA_ARCH_LIST", None)


def build(*, verbose: bool = False) -> Path:
    """Compile the extension (JIT) into :func:`build_dir`, load it, and return the ``.so`` path.

    Compiling needs ``nvcc`` and ``ninja`` but no GPU; an up-to-date build is reused (ninja
    only recompiles changed sources). Raises on failure. When the AOT library is already
    loaded into this process, that one is returned (two copies of one op cannot coexist).
    """
    global _LOADED
    reason = why_cannot_build()
    if reason is not None:
        raise RuntimeError(f"cannot build the fused HG-PSO kernel: {reason}")
    src = source_dir()
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    with _LOCK:
        if _LOADED is not None and Path(_LOADED) != out / f"{NAME}.so":
            return Path(_LOADED)
        if not (out / f"{NAME}.so").is_file():
            logging.getLogger("hgpso.kernels").warning(
                "hgpso: compiling the fused CUDA kernel into %s (once). "
                "HGPSO_JIT=0 disables this, `python -m hgpso.kernels --build` does it ahead.",
                out,
            )
        with _arch_env():
            path = _load_jit(src, out, verbose)
        _after_load(path)
        return Path(path)


def _cflags() -> list[str]:
    return ["-O3"]


def _cuda_cflags() -> list[str]:
    return ["-O3"]


def _load_jit(src: Path, out: Path, verbose: bool) -> str:
    from torch.utils import cpp_extension

    path = cpp_extension.load(
        name=NAME,
        sources=[str(src / f) for f in SOURCES],
        extra_cflags=_cflags(),
        extra_cuda_cflags=_cuda_cflags(),
        extra_include_paths=[str(src)],
        build_directory=str(out),
        verbose=verbose,
        with_cuda=True,
        is_python_module=False,
    )
    return str(path)


def load_library(*, build_if_missing: bool = True, verbose: bool = False) -> str:
    """Load the op library into this process (once) and return its path.

    Order: an already loaded library; the AOT build ``hgpso/_C*.so``; the JIT build in the
    cache (compiled now if missing or stale and ``build_if_missing``). Raises on failure.
    Loading does not need a GPU; running the CUDA kernel does.
    """
    global _LOADED
    import torch

    with _LOCK:
        if _LOADED is not None:
            return _LOADED
        aot = aot_library()
        if aot is not None:
            torch.ops.load_library(aot)
            _after_load(aot)
        elif build_if_missing:
            build(verbose=verbose)
        else:
            jit = jit_library_path()
            if not jit.is_file():
                raise RuntimeError(
                    "the fused HG-PSO kernel is not built: no AOT build "
                    "(HGPSO_BUILD_CUDA=1 pip install --no-build-isolation .) and no JIT build "
                    f"in {jit.parent} (python -m hgpso.kernels --build)"
                )
            torch.ops.load_library(str(jit))
            _after_load(str(jit))
        assert _LOADED is not None
        return _LOADED


def _after_load(path: str) -> None:
    global _LOADED
    from hgpso.kernels import _fake

    _fake.register()
    _LOADED = path


def loaded_path() -> str | None:
    return _LOADED
