"""The fused-kernel package without a compiled library: detection, the stored error, the
dispatch guards, and the pure-Python Philox4x32-10 the other kernel tests predict with.

Tests of the compiled op live in ``test_kernels_build.py`` (builds it; runs its CPU twin)
and ``test_kernels_cuda.py`` (the CUDA kernel; needs a GPU).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hgpso import HGPSO, kernels
from tests.helpers import TinyNet, make_closure

_M0, _M1, _W0, _W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF


def philox4x32_10(ctr: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, ...]:
    """Reference Philox4x32-10 (Salmon et al. 2011), for predicting the kernel's randoms."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
        p0, p1 = _M0 * c0, _M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & _MASK, (p0 >> 32) ^ c3 ^ k1, p0 & _MASK
    return c0, c1, c2, c3


def predicted_randoms(seed: int, offset: int, numels: list[int]) -> list[torch.Tensor]:
    """(r1, r2) per element of each tensor of one call, as documented in hgpso.kernels:
    element e = base_k + i uses block e // 2 at counter (e // 2, offset), key seed."""
    out, base = [], 0
    s, o = seed & (2**64 - 1), offset & (2**64 - 1)
    key = (s & _MASK, s >> 32)
    for n in numels:
        r = torch.empty(n, 2, dtype=torch.float64)
        for i in range(n):
            e = base + i
            q = e // 2
            w = philox4x32_10((q & _MASK, q >> 32, o & _MASK, o >> 32), key)
            lane = 2 * (e % 2)
            r[i, 0] = (w[lane] >> 8) * 2.0**-24
            r[i, 1] = (w[lane + 1] >> 8) * 2.0**-24
        out.append(r.float())
        base += -(-n // 8) * 8
    return out


# Random123's published known-answer vectors (tests/kat_vectors)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((_MASK,) * 4, (_MASK,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize(("ctr", "key", "expected"), KAT)
def test_reference_philox_known_answers(ctr, key, expected):
    assert philox4x32_10(ctr, key) == expected


# ----------------------------------------------------------------------------- detection
def test_detection_is_cached_and_consistent():
    first = kernels.is_available()
    err = kernels.load_error()
    assert kernels.is_available() is first
    assert kernels.load_error() is err
    assert (err is None) == first
    if not torch.cuda.is_available():
        assert not first
        assert "CUDA" in str(err)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(kernels, "_DETECTED", False)
    monkeypatch.setattr(kernels, "_LOAD_ERROR", None)
    monkeypatch.setenv("HGPSO_DISABLE_KERNEL", "1")
    assert not kernels.is_available()
    assert "HGPSO_DISABLE_KERNEL" in str(kernels.load_error())


def test_unavailable_kernel_raises_the_stored_error(monkeypatch):
    stored = RuntimeError("stored build error")
    monkeypatch.setattr(kernels, "_DETECTED", True)
    monkeypatch.setattr(kernels, "_LOAD_ERROR", stored)
    x = torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match="stored build error") as info:
        kernels.fused_hgpso_update_(
            [x],
            [x.clone()],
            [x.clone()],
            [x[0].clone()],
            None,
            seed=0,
            offset=0,
            lr=0.1,
            inertia=0.9,
            cognitive=0.5,
            social=0.5,
            max_velocity=None,
        )
    assert info.value.__cause__ is stored
    with pytest.raises(RuntimeError, match="fused=True") as info:
        HGPSO(nn.Linear(2, 2).parameters(), gradient="sgd", fused=True)
    assert info.value.__cause__ is stored


def test_fused_true_on_cpu_parameters_raises_clearly(tiny_problem):
    """Without the kernel the constructor refuses (the cause is the stored error); with it
    (a CUDA machine) the constructor refuses CPU parameters, naming the device."""
    model, _, _ = tiny_problem
    if not kernels.is_available():
        with pytest.raises(RuntimeError, match="fused=True") as info:
            HGPSO(model.parameters(), gradient="sgd", fused=True)
        assert info.value.__cause__ is kernels.load_error()
        return
    with pytest.raises(ValueError, match="fused=True needs CUDA parameters"):
        HGPSO(model.parameters(), num_particles=2, gradient="sgd", fused=True)


@pytest.mark.parametrize("fused", [None, False])
def test_cpu_parameters_never_reach_the_kernel(monkeypatch, tiny_problem, fused):
    def boom(*args, **kwargs):
        raise AssertionError("the fused kernel must not be called for CPU parameters")

    monkeypatch.setattr(kernels, "fused_hgpso_update_", boom)
    model, x, y = tiny_problem
    # "sgd", the term the kernel implements ("adam" never calls it)
    opt = HGPSO(model.parameters(), num_particles=3, seed=0, gradient="sgd", fused=fused)
    for _ in range(2):
        opt.step(make_closure(opt, model, x, y))


def test_wrapper_rejects_cpu_tensors_and_bad_lists(monkeypatch):
    monkeypatch.setattr(kernels, "_DETECTED", True)
    monkeypatch.setattr(kernels, "_LOAD_ERROR", None)  # pretend it is available
    x = torch.zeros(2, 3)
    kw = dict(seed=0, offset=0, lr=0.1, inertia=0.9, cognitive=0.5, social=0.5, max_velocity=None)
    with pytest.raises(RuntimeError, match="CUDA tensors only"):
        kernels.fused_hgpso_update_([x], [x.clone()], [x.clone()], [x[0]], None, **kw)
    with pytest.raises(ValueError, match="both r1 and r2"):
        kernels.fused_hgpso_update_([x], [x], [x], [x[0]], None, r1=[x], **kw)
    with pytest.raises(ValueError, match="equal lengths"):
        kernels.fused_hgpso_update_([x], [x, x], [x], [x[0]], None, **kw)


def test_kernel_seed_and_offset_are_in_the_optimizer_state(tiny_problem):
    """The in-kernel stream is keyed by swarm['kernel_seed'] and the step counter, both
    saved in the state_dict, so a resumed fused run draws the same randoms."""
    model, x, y = tiny_problem
    opt = HGPSO(model.parameters(), num_particles=2, seed=5, gradient="sgd")
    opt.step(make_closure(opt, model, x, y))
    swarm = opt.state_dict()["state"]["swarm"]
    assert isinstance(swarm["kernel_seed"], int) and 0 <= swarm["kernel_seed"] < 2**62
    assert swarm["step"] == 1
    model2 = TinyNet()
    opt2 = HGPSO(model2.parameters(), num_particles=2, seed=5, gradient="sgd")
    opt2.step(make_closure(opt2, model2, x, y))
    assert opt2.state["swarm"]["kernel_seed"] == swarm["kernel_seed"]


# ------------------------------------------------------------------ python -m hgpso.kernels
def test_cli_status_without_build(capsys):
    from hgpso.kernels.__main__ import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "AOT build" in out and "JIT build" in out and "can build" in out


def test_cli_build_reports_why_it_cannot(monkeypatch, capsys):
    from hgpso.kernels import _build
    from hgpso.kernels.__main__ import main

    monkeypatch.setattr(_build, "aot_library", lambda: None)
    monkeypatch.setattr(_build, "why_cannot_build", lambda: "no CUDA toolkit found (test)")
    assert main(["--build"]) == 1
    assert "no CUDA toolkit found (test)" in capsys.readouterr().err
