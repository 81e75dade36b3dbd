"""Build the fused-kernel extension (JIT, into the cache) and exercise what needs no GPU.

Runs wherever ``nvcc`` is found (our CI machines have it, no GPU): the build catches compile
breaks; loading the library checks that the op and its schema register and that the fake
implementation traces; and the op's CPU twin (same Philox stream and element math as the
CUDA kernel, compiled from the same headers) is checked against the reference and against
a pure-Python Philox. What only a GPU can check (the kernel's vector paths, launch layout,
speed) is in ``test_kernels_cuda.py``.

The first build takes about a minute on two cores (one architecture, see ``TORCH_CUDA_ARCH_LIST``
in hgpso.kernels._build); later runs reuse ``${HGPSO_CACHE:-~/.cache/hgpso}/kernels``.
"""

from __future__ import annotations

import copy
import io
import time
from pathlib import Path

import pytest
import torch

from hgpso import HGPSO
from hgpso import functional as Fn
from hgpso.kernels import _build
from tests.helpers import TinyNet, make_closure
from tests.kernels.test_kernels import predicted_randoms

pytestmark = pytest.mark.slow

KW = dict(lr=0.05, inertia=0.7, cognitive=1.3, social=0.9)


@pytest.fixture(scope="module")
def library() -> str:
    reason = _build.why_cannot_build()
    if reason is not None and _build.aot_library() is None:
        pytest.skip(f"cannot build the CUDA extension here: {reason}")
    start = time.perf_counter()
    path = _build.load_library(build_if_missing=True)
    print(f"fused kernel library: {path} ({time.perf_counter() - start:.1f} s)")
    return path


def op():
    return torch.ops.hgpso.fused_update_


def test_extension_builds_and_registers_the_op(library):
    assert Path(library).is_file()
    assert _build.loaded_path() == library
    # a second build is a no-op that returns the same library
    assert str(_build.load_library()) == library
    schema = str(op().default._schema)
    assert schema.startswith("hgpso::fused_update_(Tensor(a!)[] positions, Tensor(b!)[] ")
    assert "float? max_velocity" in schema and schema.endswith("-> ()")


def _swarm(shapes, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(s, generator=g).to(dtype)

    xs = [r(*s) for s in shapes]
    return dict(
        positions=xs,
        velocities=[r(*x.shape) for x in xs],
        pbests=[r(*x.shape) for x in xs],
        gbests=[r(*x.shape[1:]) for x in xs],
        grads=[r(*x.shape) for x in xs],
        r1=[torch.rand(x.shape, generator=g).to(dtype) for x in xs],
        r2=[torch.rand(x.shape, generator=g).to(dtype) for x in xs],
    )


def _call(s, *, seed=0, offset=0, given=True, grads=True, max_velocity=None, **kw):
    op()(
        s["positions"],
        s["velocities"],
        s["pbests"],
        s["gbests"],
        s["grads"] if grads else [],
        s["r1"] if given else [],
        s["r2"] if given else [],
        seed,
        offset,
        kw.get("lr", KW["lr"]),
        KW["inertia"],
        KW["cognitive"],
        KW["social"],
        max_velocity,
    )


def _clone(s):
    return {k: [t.clone() for t in v] for k, v in s.items()}


AWKWARD = [[(1, 1)], [(3, 7)], [(2, 5, 3), (4, 1), (1, 9)], [(5, 1031)], [(2, 8), (3, 0, 2)]]


@pytest.mark.parametrize("shapes", AWKWARD, ids=str)
@pytest.mark.parametrize("max_velocity", [None, 0.3])
@pytest.mark.parametrize("grads", [True, False])
def test_cpu_twin_matches_reference_with_given_randoms(library, shapes, max_velocity, grads):
    s = _swarm(shapes)
    ref = _clone(s)
    Fn.hgpso_update_(
        ref["positions"],
        ref["velocities"],
        ref["pbests"],
        ref["gbests"],
        ref["grads"] if grads else None,
        ref["r1"],
        ref["r2"],
        max_velocity=max_velocity,
        **KW,
    )
    _call(s, grads=grads, max_velocity=max_velocity)
    for key in ("positions", "velocities"):
        for got, want in zip(s[key], ref[key], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_twin_low_precision_is_float32_math_rounded_once(library, dtype):
    s = _swarm([(4, 33), (3, 8)], dtype=dtype)
    ref = {k: [t.float() for t in v] for k, v in _clone(s).items()}
    Fn.hgpso_update_(
        ref["positions"],
        ref["velocities"],
        ref["pbests"],
        ref["gbests"],
        ref["grads"],
        ref["r1"],
        ref["r2"],
        max_velocity=None,
        **KW,
    )
    _call(s)
    for key in ("positions", "velocities"):
        for got, want in zip(s[key], ref[key], strict=True):
            assert got.dtype == dtype
            # the float32 result rounded once: within one ulp of the rounded reference
            eps = torch.finfo(dtype).eps
            torch.testing.assert_close(got.float(), want, rtol=eps, atol=1e-4)


def _randoms_through_the_op(numels, seed, offset):
    """(r1, r2) the op draws: with x = 0, v = 0, w = 0, grad off, c1 = 1, p = 1, c2 = 0 the
    new velocity is r1; with c1 = 0, c2 = 1, g = 1 it is r2."""
    out = []
    for c1, c2 in ((1.0, 0.0), (0.0, 1.0)):
        xs = [torch.zeros(n, 1) for n in numels]
        vs = [torch.zeros(n, 1) for n in numels]
        ps = [torch.ones(n, 1) for n in numels]
        gs = [torch.full((1,), c2) for _ in numels]
        op()(xs, vs, ps, gs, [], [], [], seed, offset, 0.0, 0.0, c1, c2, None)
        out.append([v.flatten() for v in vs])
    return [torch.stack(pair, dim=1) for pair in zip(*out, strict=True)]


@pytest.mark.parametrize("seed", [0, 1, 2**62 - 1, 123456789012345])
@pytest.mark.parametrize("offset", [0, 7, 2**40 + 3])
def test_cpu_twin_randoms_are_the_documented_philox_stream(library, seed, offset):
    numels = [5, 1, 16, 3]
    got = _randoms_through_the_op(numels, seed, offset)
    want = predicted_randoms(seed, offset, numels)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_cpu_twin_randoms_statistics_and_determinism(library):
    n = 200_000
    a = _randoms_through_the_op([n], seed=42, offset=3)[0]
    assert torch.equal(a, _randoms_through_the_op([n], seed=42, offset=3)[0])
    b = _randoms_through_the_op([n], seed=42, offset=4)[0]  # next step
    c = _randoms_through_the_op([n], seed=43, offset=3)[0]  # other seed
    for r in (a, b, c):
        assert float(r.min()) >= 0.0 and float(r.max()) < 1.0
        assert abs(float(r.mean()) - 0.5) < 0.005
        assert abs(float(r.var()) - 1 / 12) < 0.002
    tol = 0.01  # |corr| of independent samples is ~ 1/sqrt(n) = 0.002
    for x, y in ((a[:, 0], a[:, 1]), (a[:-1, 0], a[1:, 0]), (a[:, 0], b[:, 0]), (a[:, 0], c[:, 0])):
        assert abs(float(torch.corrcoef(torch.stack([x, y]))[0, 1])) < tol


def test_fake_impl_traces(library):
    """Meta tensors run the registered fake; torch.compile traces the op (aot_eager: no
    code generation) and opcheck validates schema, fake and functionalization."""
    xs = [torch.empty(4, 3, device="meta")]
    op()(
        xs,
        [torch.empty(4, 3, device="meta")],
        [torch.empty(4, 3, device="meta")],
        [torch.empty(3, device="meta")],
        [],
        [],
        [],
        0,
        0,
        0.1,
        0.9,
        0.5,
        0.5,
        None,
    )

    s = _swarm([(3, 5), (2, 4)])
    args = (
        s["positions"],
        s["velocities"],
        s["pbests"],
        s["gbests"],
        s["grads"],
        [],
        [],
        7,
        1,
        0.1,
        0.9,
        0.5,
        0.5,
        0.2,
    )
    torch.library.opcheck(op().default, args, test_utils=("test_schema", "test_faketensor"))

    def step(xs, vs, ps, gs, grs):
        op()(xs, vs, ps, gs, grs, [], [], 7, 1, 0.1, 0.9, 0.5, 0.5, 0.2)
        return xs[0].sum()

    eager, compiled = _clone(s), _clone(s)
    step(eager["positions"], eager["velocities"], eager["pbests"], eager["gbests"], eager["grads"])
    torch.compile(step, backend="aot_eager", fullgraph=True)(
        compiled["positions"],
        compiled["velocities"],
        compiled["pbests"],
        compiled["gbests"],
        compiled["grads"],
    )
    for key in ("positions", "velocities"):
        for a, b in zip(eager[key], compiled[key], strict=True):
            assert torch.equal(a, b)


def test_op_argument_checks(library):
    s = _swarm([(3, 4)])
    with pytest.raises(RuntimeError, match="gbests"):
        op()(
            s["positions"],
            s["velocities"],
            s["pbests"],
            [torch.zeros(5)],
            [],
            [],
            [],
            0,
            0,
            0.1,
            0.9,
            0.5,
            0.5,
            None,
        )
    with pytest.raises(RuntimeError, match="contiguous"):
        op()(
            [torch.zeros(4, 3).t()],
            s["velocities"],
            s["pbests"],
            s["gbests"],
            [],
            [],
            [],
            0,
            0,
            0.1,
            0.9,
            0.5,
            0.5,
            None,
        )
    with pytest.raises(RuntimeError, match="r1 and r2"):
        op()(
            s["positions"],
            s["velocities"],
            s["pbests"],
            s["gbests"],
            [],
            s["r1"],
            [],
            0,
            0,
            0.1,
            0.9,
            0.5,
            0.5,
            None,
        )
    with pytest.raises(RuntimeError, match="dtype"):
        op()(
            [torch.zeros(3, 4, dtype=torch.float64)],
            s["velocities"],
            s["pbests"],
            s["gbests"],
            [],
            [],
            [],
            0,
            0,
            0.1,
            0.9,
            0.5,
            0.5,
            None,
        )


@pytest.fixture
def cpu_twin_as_kernel(library, monkeypatch):
    """Route the optimizer's fused path to the op's CPU twin (tests only)."""
    from hgpso import kernels

    monkeypatch.setattr(kernels, "_DETECTED", True)
    monkeypatch.setattr(kernels, "_LOAD_ERROR", None)
    monkeypatch.setattr(kernels, "_ALLOW_CPU_TWIN", True)
    return kernels


def test_optimizer_fused_path_resumes_bit_for_bit_on_the_cpu_twin(cpu_twin_as_kernel, tiny_problem):
    """HGPSO(fused=True) -> kernels.fused_hgpso_update_ -> the op, keyed by the saved
    kernel_seed and step: a run resumed from a state_dict continues exactly."""
    kernels = cpu_twin_as_kernel
    offsets = []
    real = kernels.fused_hgpso_update_

    def spy(*args, **kwargs):
        offsets.append(kwargs["offset"])
        return real(*args, **kwargs)

    model, x, y = tiny_problem

    def train(opt, m, steps):
        for _ in range(steps):
            opt.step(make_closure(opt, m, x, y))

    def groups(m):
        return [
            {"params": m.fc1.parameters()},
            {"params": m.fc2.parameters(), "lr": 0.02},
        ]

    kwargs = {"num_particles": 4, "seed": 3, "gradient": "sgd", "fused": True}
    opt = HGPSO(groups(model), **kwargs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "fused_hgpso_update_", spy)
        train(opt, model, 2)
    assert offsets == [0, 1, 2, 3]  # step * groups + group
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(opt, model, 3)
    expected = copy.deepcopy(opt.state_dict())
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model2 = TinyNet()
    model2.load_state_dict(saved["model"])
    opt2 = HGPSO(groups(model2), **{**kwargs, "seed": 99})
    opt2.load_state_dict(saved["opt"])
    train(opt2, model2, 3)
    got = opt2.state_dict()["state"]
    for pid, st in expected["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                assert torch.equal(got[pid][key], val), (pid, key)
