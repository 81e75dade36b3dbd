"""The CUDA kernel's own code, emulated on the CPU (no GPU, no nvcc needed).

``csrc/testing/emulate_kernel.cpp`` compiles the kernel body (``hgpso_update_kernel.cuh``)
and the launch planning (``plan_launches`` in ``hgpso_update.h``) with the host C++
compiler and runs every thread of every block in a loop; threads never communicate, so this
executes the kernel's index arithmetic, both layouts (column and linear), the vector and
scalar paths and the random numbering exactly. Only the GPU hardware is left out: the
GPU tests (``test_kernels_cuda.py``) still have to confirm it on a device.

Each tensor is a view into a NaN-poisoned buffer: a write outside it shows up in the guard
bands, and every element inside is compared with the reference.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from hgpso import functional as Fn
from hgpso.kernels import _build
from tests.kernels.test_kernels import predicted_randoms

pytestmark = pytest.mark.slow

CSRC = Path(__file__).resolve().parents[2] / "csrc"
KW = dict(lr=0.05, inertia=0.7, cognitive=1.3, social=0.9)
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler (c++, g++ or clang++) on PATH")
    home = _build.cuda_home()
    if home is None or not Path(home, "include", "cuda_fp16.h").is_file():
        pytest.skip("no CUDA headers (cuda_fp16.h) found: set CUDA_HOME")
    out = tmp_path_factory.mktemp("emu") / "emulate_kernel.so"
    cmd = [cxx, "-std=c++17", "-O2", "-shared", "-fPIC", f"-I{CSRC}",
           f"-I{Path(home) / 'include'}", str(CSRC / "testing" / "emulate_kernel.cpp"),
           "-o", str(out)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lib = ctypes.CDLL(str(out))
    f = lib.hgpso_emulate_update
    vpp = ctypes.POINTER(ctypes.c_void_p)
    i64p = ctypes.POINTER(ctypes.c_int64)
    f.restype = ctypes.c_int64
    dbl = ctypes.c_double
    f.argtypes = [ctypes.c_int, ctypes.c_int64, vpp, vpp, vpp, vpp, vpp, vpp, vpp, i64p, i64p,
                  ctypes.c_int64, ctypes.c_int64, dbl, dbl, dbl, dbl, ctypes.c_int, dbl,
                  i64p]  # fmt: skip
    return f


def _ptrs(ts):
    if ts is None:
        return None
    return (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])


def emulate(f, s, *, given=True, grads=True, seed=0, offset=0, max_velocity=None):
    xs = s["positions"]
    n = len(xs)
    numel = (ctypes.c_int64 * n)(*[x.numel() for x in xs])
    parts = (ctypes.c_int64 * n)(*[x.shape[0] for x in xs])
    layouts = (ctypes.c_int64 * n)(*([-1] * n))
    launches = f(
        DTYPES[xs[0].dtype], n, _ptrs(xs), _ptrs(s["velocities"]), _ptrs(s["pbests"]),
        _ptrs(s["gbests"]), _ptrs(s["grads"] if grads else None),
        _ptrs(s["r1"] if given else None), _ptrs(s["r2"] if given else None), numel, parts,
        seed, offset, KW["lr"], KW["inertia"], KW["cognitive"], KW["social"],
        int(max_velocity is not None), max_velocity or 0.0, layouts,
    )  # fmt: skip
    assert launches >= 0
    return launches, list(layouts)


def _view(shape, dtype, misalign, gen, guards, *, uniform=False):
    n = 1
    for d in shape:
        n *= d
    lead = 8 + misalign
    buf = torch.full((lead + n + 8,), float("nan"), dtype=dtype)
    view = buf[lead : lead + n].view(shape)
    data = torch.rand(shape, generator=gen) if uniform else torch.randn(shape, generator=gen)
    view.copy_(data.to(dtype))
    guards.append((buf, lead, n))
    return view


def _make(shapes, dtype=torch.float32, misalign=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s = {k: [] for k in ("positions", "velocities", "pbests", "gbests", "grads", "r1", "r2")}
    guards = []
    for shape in shapes:
        for key in ("positions", "velocities", "pbests", "grads"):
            s[key].append(_view(shape, dtype, misalign, gen, guards))
        s["gbests"].append(_view(shape[1:], dtype, misalign, gen, guards))
        for key in ("r1", "r2"):
            s[key].append(_view(shape, dtype, misalign, gen, guards, uniform=True))
    return s, guards


def _guards_intact(guards):
    return all(
        bool(buf[:lead].isnan().all()) and bool(buf[lead + n :].isnan().all())
        for buf, lead, n in guards
    )


def _reference(s, *, grads=True, max_velocity=None, upcast=False, r1=None, r2=None):
    ref = {k: [t.clone().float() if upcast else t.clone() for t in v] for k, v in s.items()}
    Fn.hgpso_update_(
        ref["positions"], ref["velocities"], ref["pbests"], ref["gbests"],
        ref["grads"] if grads else None, r1 or ref["r1"], r2 or ref["r2"],
        max_velocity=max_velocity, **KW,
    )  # fmt: skip
    return ref


AWKWARD = [
    [(1, 1)],
    [(3, 7)],
    [(5, 1031)],
    [(2, 5, 3), (4, 1), (1, 9), (3, 16)],
    [(7, 4099)],
    [(4, 64, 33)],
    [(2, 8), (3, 0, 2), (1, 12)],
    [(37, 2052)],
    [(19, 4104), (33, 1024)],
]


@pytest.mark.parametrize("shapes", AWKWARD, ids=str)
@pytest.mark.parametrize("misalign", [0, 1], ids=["aligned", "misaligned"])
@pytest.mark.parametrize(("grads", "max_velocity"), [(True, None), (True, 0.3), (False, None)])
def test_emulated_kernel_matches_reference_with_given_randoms(
    emu, shapes, misalign, grads, max_velocity
):
    s, guards = _make(shapes, misalign=misalign)
    ref = _reference(s, grads=grads, max_velocity=max_velocity)
    emulate(emu, s, grads=grads, max_velocity=max_velocity)
    for key in ("positions", "velocities"):
        for got, want in zip(s[key], ref[key], strict=True):
            assert not got.isnan().any(), key
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert _guards_intact(guards), "the kernel wrote outside a tensor"


def test_layouts_and_launches_are_as_planned(emu):
    s, _ = _make([(37, 2052), (5, 1031), (4, 64, 33), (3, 8)])
    launches, layouts = emulate(emu, s)
    assert launches == 1
    assert layouts == [1, 0, 1, 0]  # column needs aligned rows of >= 1024 fp32, % 4 == 0
    s, _ = _make([(37, 2052)], misalign=1)
    assert emulate(emu, s)[1] == [0]  # misaligned: linear, scalar loads
    s, _ = _make([(3, k + 1) for k in range(60)])
    assert emulate(emu, s)[0] == 3  # 24 tensors per launch


@pytest.mark.parametrize(
    "shapes", [[(3, 7), (1, 1), (2, 9)], [(17, 1028)], [(5, 1031), (18, 1024)]], ids=str
)
@pytest.mark.parametrize("misalign", [0, 1], ids=["aligned", "misaligned"])
def test_emulated_in_kernel_randoms_are_the_documented_stream(emu, shapes, misalign):
    seed, offset = 2**61 + 12345, 2**35 + 7
    s, guards = _make(shapes, misalign=misalign)
    pred = predicted_randoms(seed, offset, [x.numel() for x in s["positions"]])
    r1 = [r[:, 0].view(x.shape) for r, x in zip(pred, s["positions"], strict=True)]
    r2 = [r[:, 1].view(x.shape) for r, x in zip(pred, s["positions"], strict=True)]
    ref = _reference(s, r1=r1, r2=r2, max_velocity=0.5)
    emulate(emu, s, given=False, seed=seed, offset=offset, max_velocity=0.5)
    for key in ("positions", "velocities"):
        for got, want in zip(s[key], ref[key], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert _guards_intact(guards)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("misalign", [0, 1], ids=["aligned", "misaligned"])
def test_emulated_low_precision_is_float32_math_rounded_once(emu, dtype, misalign):
    s, guards = _make([(4, 1037), (3, 64), (19, 4104)], dtype=dtype, misalign=misalign)
    ref = _reference(s, upcast=True)
    layouts = emulate(emu, s)[1]
    assert layouts == ([0, 0, 1] if misalign == 0 else [0, 0, 0])
    eps = torch.finfo(dtype).eps
    for key in ("positions", "velocities"):
        for got, want in zip(s[key], ref[key], strict=True):
            assert got.dtype == dtype
            torch.testing.assert_close(got.float(), want, rtol=eps, atol=1e-3)
    assert _guards_intact(guards)


def test_emulated_kernel_matches_the_cpu_twin_when_built(emu):
    """Same inputs through the emulated CUDA kernel and through the op's CPU twin (only when
    the extension is already loaded in this session, e.g. by test_kernels_build.py)."""
    if _build.loaded_path() is None:
        pytest.skip("the extension is not loaded in this session")
    s, _ = _make([(37, 2052), (5, 1031), (2, 5, 3)])
    twin = {k: [t.clone() for t in v] for k, v in s.items()}
    emulate(emu, s, given=False, seed=99, offset=4)
    torch.ops.hgpso.fused_update_(
        twin["positions"], twin["velocities"], twin["pbests"], twin["gbests"], twin["grads"],
        [], [], 99, 4, KW["lr"], KW["inertia"], KW["cognitive"], KW["social"], None,
    )  # fmt: skip
    for key in ("positions", "velocities"):
        for a, b in zip(s[key], twin[key], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
