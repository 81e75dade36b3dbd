"""The fused CUDA kernel against the reference, on a GPU (skipped without one).

* Given-randoms mode, element for element against :func:`hgpso.functional.hgpso_update_` on
  awkward sizes (1, odd, not a multiple of the vector width, many tensors per call, more
  tensors than one launch takes, misaligned and non-contiguous views). Each tensor is a view
  into a NaN-poisoned buffer, so a write outside it shows up as a changed guard element, and
  every element inside is compared (an element the kernel skipped keeps its input value,
  which the reference changes).
* In-kernel randoms: exactly the documented Philox stream (same as the CPU twin), mean and
  variance of U[0, 1), no correlation between r1 and r2, across particles or across steps,
  and the same stream for the same (seed, offset).
* Through the optimizer: ``fused=None`` takes the kernel on CUDA, ``fused=False`` never does,
  and a ``fused=True`` run resumed from a state_dict continues bit for bit.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from hgpso import HGPSO, kernels
from hgpso import functional as Fn
from tests.helpers import TinyNet, make_closure
from tests.kernels.test_kernels import predicted_randoms

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device (torch.cuda.is_available() is False)",
    ),
]

DEV = "cuda"
KW = dict(lr=0.05, inertia=0.7, cognitive=1.3, social=0.9)


@pytest.fixture(scope="module", autouse=True)
def kernel():
    if not kernels.is_available():
        pytest.fail(f"CUDA is present but the fused kernel is not: {kernels.load_error()!r}")


def _poisoned_views(shape, dtype, misalign, gen):
    """A random tensor of `shape` living inside a NaN-filled buffer (guard bands on both
    sides); `misalign` elements of lead-in break 16-byte alignment when odd."""
    n = 1
    for d in shape:
        n *= d
    lead = 8 + misalign
    buf = torch.full((lead + n + 8,), float("nan"), device=DEV, dtype=dtype)
    view = buf[lead : lead + n].view(shape)
    view.copy_(torch.randn(shape, generator=gen).to(dtype))
    return buf, view, lead, n


def _guards_intact(buf, lead, n):
    return bool(buf[:lead].isnan().all()) and bool(buf[lead + n :].isnan().all())


def _make(shapes, dtype=torch.float32, misalign=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s = {k: [] for k in ("positions", "velocities", "pbests", "gbests", "grads", "r1", "r2")}
    guards = []
    for shape in shapes:
        for key in ("positions", "velocities", "pbests", "grads"):
            buf, view, lead, n = _poisoned_views(shape, dtype, misalign, gen)
            s[key].append(view)
            guards.append((buf, lead, n))
        buf, view, lead, n = _poisoned_views(shape[1:], dtype, misalign, gen)
        s["gbests"].append(view)
        guards.append((buf, lead, n))
        for key in ("r1", "r2"):
            s[key].append(torch.rand(shape, generator=gen).to(device=DEV, dtype=dtype))
    return s, guards


def _reference(s, *, grads=True, max_velocity=None, upcast=False):
    ref = {
        k: [t.detach().clone().float() if upcast else t.detach().clone() for t in v]
        for k, v in s.items()
    }
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
    return ref


def _fused(s, *, grads=True, given=True, max_velocity=None, seed=0, offset=0, **kw):
    kernels.fused_hgpso_update_(
        s["positions"],
        s["velocities"],
        s["pbests"],
        s["gbests"],
        s["grads"] if grads else None,
        seed=seed,
        offset=offset,
        lr=kw.get("lr", KW["lr"]),
        inertia=KW["inertia"],
        cognitive=KW["cognitive"],
        social=KW["social"],
        max_velocity=max_velocity,
        r1=s["r1"] if given else None,
        r2=s["r2"] if given else None,
    )


AWKWARD = [
    [(1, 1)],
    [(3, 7)],
    [(5, 1031)],
    [(2, 5, 3), (4, 1), (1, 9), (3, 16)],
    [(7, 4099)],
    [(4, 64, 33)],
    [(2, 8), (3, 0, 2), (1, 12)],
    [(3, 2**16 + 5)],
    # column layout (aligned, particle length a multiple of the vector width, >= one block
    # wide): several particle groups of 16, a partial last column tile
    [(37, 2052)],
    [(19, 4104), (33, 1024)],
]


@pytest.mark.parametrize("shapes", AWKWARD, ids=str)
@pytest.mark.parametrize("misalign", [0, 1], ids=["aligned", "misaligned"])
@pytest.mark.parametrize(("grads", "max_velocity"), [(True, None), (True, 0.3), (False, None)])
def test_kernel_matches_reference_with_given_randoms(shapes, misalign, grads, max_velocity):
    s, guards = _make(shapes, misalign=misalign)
    ref = _reference(s, grads=grads, max_velocity=max_velocity)
    _fused(s, grads=grads, max_velocity=max_velocity)
    torch.cuda.synchronize()
    for key in ("positions", "velocities"):
        for got, want in zip(s[key], ref[key], strict=True):
            assert not got.isnan().any(), key
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert all(_guards_intact(*g) for g in guards), "the kernel wrote outside a tensor"


def test_more_tensors_than_one_launch_takes():
    shapes = [(3, k + 1) for k in range(60)]  # > kMaxTensorsPerLaunch, mixed sizes
    s, guards = _make(shapes)
    ref = _reference(s)
    _fused(s)
    for key in ("positions", "velocities"):
        for got, want in zip(s[key], ref[key], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert all(_guards_intact(*g) for g in guards)


def test_non_contiguous_inputs_are_written_back():
    gen = torch.Generator().manual_seed(1)
    n, p = 5, 37

    def strided():  # (n, p) view of a (p, n) buffer
        return torch.randn(p, n, generator=gen).to(DEV).t()

    s = {
        "positions": [strided()],
        "velocities": [strided()],
        "pbests": [strided()],
        "gbests": [torch.randn(2 * p, generator=gen).to(DEV)[::2]],
        "grads": [strided()],
        "r1": [torch.rand(p, n, generator=gen).to(DEV).t()],
        "r2": [torch.rand(p, n, generator=gen).to(DEV).t()],
    }
    assert not s["positions"][0].is_contiguous()
    x_storage = s["positions"][0]
    ref = _reference(s)
    _fused(s)
    assert s["positions"][0] is x_storage
    for key in ("positions", "velocities"):
        torch.testing.assert_close(s[key][0], ref[key][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("misalign", [0, 1], ids=["aligned", "misaligned"])
def test_low_precision_parameters_float32_math(dtype, misalign):
    s, guards = _make([(4, 1037), (3, 64), (19, 4104)], dtype=dtype, misalign=misalign)
    ref = _reference(s, upcast=True)  # float32 math on the same inputs
    _fused(s)
    eps = torch.finfo(dtype).eps
    for key in ("positions", "velocities"):
        for got, want in zip(s[key], ref[key], strict=True):
            assert got.dtype == dtype
            torch.testing.assert_close(got.float(), want, rtol=eps, atol=1e-3)
    assert all(_guards_intact(*g) for g in guards)


def test_mixed_dtypes_in_one_call():
    a, _ = _make([(3, 11)], dtype=torch.float32)
    b, _ = _make([(2, 9)], dtype=torch.bfloat16, seed=1)
    s = {k: a[k] + b[k] for k in a}
    ref = _reference(s, upcast=True)
    _fused(s)
    for key in ("positions", "velocities"):
        for got, want in zip(s[key], ref[key], strict=True):
            torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------- in-kernel randoms
def _randoms(numels, seed, offset, device=DEV, dtype=torch.float32):
    """(r1, r2) drawn by the kernel: with x = v = 0, w = 0, no gradient, p = 1, c1 = 1,
    c2 = 0 the new velocity is r1; with c1 = 0, g = 1, c2 = 1 it is r2."""
    cols = []
    for c1, c2 in ((1.0, 0.0), (0.0, 1.0)):
        xs = [torch.zeros(n, 1, device=device, dtype=dtype) for n in numels]
        vs = [torch.zeros_like(x) for x in xs]
        ps = [torch.ones_like(x) for x in xs]
        gs = [torch.full((1,), c2, device=device, dtype=dtype) for _ in numels]
        torch.ops.hgpso.fused_update_(
            xs, vs, ps, gs, [], [], [], seed, offset, 0.0, 0.0, c1, c2, None
        )
        cols.append([v.flatten().float() for v in vs])
    return [torch.stack(pair, dim=1) for pair in zip(*cols, strict=True)]


@pytest.mark.parametrize("seed", [0, 2**62 - 1])
@pytest.mark.parametrize("offset", [0, 2**33 + 1])
def test_kernel_randoms_are_the_documented_stream(seed, offset):
    numels = [5, 1, 16, 3, 2051]
    got = _randoms(numels, seed, offset)
    want = predicted_randoms(seed, offset, numels)
    cpu = _randoms(numels, seed, offset, device="cpu")  # the CPU twin
    for g, w, c in zip(got, want, cpu, strict=True):
        assert torch.equal(g.cpu(), w)
        assert torch.equal(g.cpu(), c)


def test_kernel_randoms_statistics_independence_and_determinism():
    n_particles, p = 64, 20_000
    n = n_particles * p
    a = _randoms([n], seed=11, offset=5)[0]
    assert torch.equal(a, _randoms([n], seed=11, offset=5)[0])
    nxt = _randoms([n], seed=11, offset=6)[0]
    assert not torch.equal(a, nxt)
    for r in (a, nxt):
        assert float(r.min()) >= 0.0 and float(r.max()) < 1.0
        assert abs(float(r.mean()) - 0.5) < 0.002
        assert abs(float(r.var()) - 1 / 12) < 0.001
    rows = a[:, 0].view(n_particles, p)
    corr = torch.corrcoef(rows)  # particle vs particle
    off_diag = corr[~torch.eye(n_particles, dtype=torch.bool, device=corr.device)]
    assert float(off_diag.abs().max()) < 0.05  # ~ 4.5 sigma for p = 20000
    for x, y in ((a[:, 0], a[:, 1]), (a[:, 0], nxt[:, 0]), (a[:-1, 0], a[1:, 0])):
        assert abs(float(torch.corrcoef(torch.stack([x, y]))[0, 1])) < 0.005


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_randoms_low_precision_vector_path(dtype):
    """8-wide vectors draw the same stream (values then rounded to the storage dtype)."""
    numels = [37, 8, 1]
    got = _randoms(numels, 3, 9, dtype=dtype)
    want = predicted_randoms(3, 9, numels)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g.cpu(), w.to(dtype).float())


# ---------------------------------------------------------------------- the optimizer
def _problem(seed=0):
    torch.manual_seed(seed)
    model = TinyNet().to(DEV)
    x = torch.randn(64, 6, device=DEV)
    y = torch.randint(0, 3, (64,), device=DEV)
    return model, x, y


def _train(opt, model, x, y, steps):
    closure = make_closure(opt, model, x, y)
    return [float(opt.step(closure)) for _ in range(steps)]


def test_fused_none_uses_the_kernel_on_cuda_and_false_never(monkeypatch):
    calls = []
    real = kernels.fused_hgpso_update_

    def spy(*args, **kwargs):
        calls.append(kwargs["offset"])
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "fused_hgpso_update_", spy)
    model, x, y = _problem()
    opt = HGPSO(
        [
            {"params": [model.fc1.weight, model.fc1.bias]},
            {"params": [model.fc2.weight, model.fc2.bias], "lr": 0.02},
        ],
        num_particles=4,
        seed=0,
        gradient="sgd",  # the term the kernel implements
    )
    _train(opt, model, x, y, 3)
    assert calls == [0, 1, 2, 3, 4, 5]  # step * groups + group
    calls.clear()
    model, x, y = _problem()
    opt = HGPSO(model.parameters(), num_particles=4, seed=0, gradient="sgd", fused=False)
    _train(opt, model, x, y, 2)
    assert calls == []


@pytest.mark.parametrize("num_particles", [1, 16])
def test_fused_training_reduces_the_loss(num_particles):
    model, x, y = _problem()
    opt = HGPSO(
        model.parameters(), lr=0.1, num_particles=num_particles, seed=0, gradient="sgd", fused=True
    )
    losses = _train(opt, model, x, y, 30)
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0]


def test_fused_state_dict_resume_is_bit_for_bit():
    model, x, y = _problem()
    kwargs = {"num_particles": 6, "seed": 3, "gradient": "sgd", "fused": True}
    opt = HGPSO(model.parameters(), **kwargs)
    _train(opt, model, x, y, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _train(opt, model, x, y, 4)
    expected_model = copy.deepcopy(model.state_dict())
    expected_state = copy.deepcopy(opt.state_dict())

    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model2 = TinyNet().to(DEV)
    model2.load_state_dict(saved["model"])
    opt2 = HGPSO(model2.parameters(), **{**kwargs, "seed": 999})  # the state wins
    opt2.load_state_dict(saved["opt"])
    _train(opt2, model2, x, y, 4)
    for k, v in expected_model.items():
        assert torch.equal(model2.state_dict()[k], v), k
    got = opt2.state_dict()["state"]
    for pid, st in expected_state["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                assert torch.equal(got[pid][key], val), (pid, key)


def test_fused_runs_repeat_exactly_for_a_fixed_seed():
    runs = []
    for _ in range(2):
        model, x, y = _problem()
        opt = HGPSO(model.parameters(), num_particles=5, seed=21, gradient="sgd", fused=True)
        _train(opt, model, x, y, 3)
        runs.append([t.clone() for t in opt._all("position")])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_bfloat16_parameters_train_with_the_kernel():
    model, x, y = _problem()
    model = model.to(torch.bfloat16)
    opt = HGPSO(model.parameters(), lr=0.1, num_particles=8, seed=0, gradient="sgd", fused=True)
    losses = _train(opt, model, x.to(torch.bfloat16), y, 20)
    assert opt.state[model.fc1.weight]["velocity"].dtype == torch.bfloat16
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("shapes", AWKWARD, ids=str)
@pytest.mark.parametrize("misalign", [0, 1], ids=["aligned", "misaligned"])
def test_in_kernel_randoms_update_matches_the_cpu_twin(shapes, misalign):
    """The full update with in-kernel randoms, CUDA vs the op's CPU twin on the same inputs
    (the twin is checked against the reference and the Philox stream without a GPU)."""
    s, guards = _make(shapes, misalign=misalign)
    cpu = {k: [t.cpu() for t in v] for k, v in s.items()}
    _fused(s, given=False, seed=77, offset=12, max_velocity=0.5)
    torch.ops.hgpso.fused_update_(
        cpu["positions"], cpu["velocities"], cpu["pbests"], cpu["gbests"], cpu["grads"],
        [], [], 77, 12, KW["lr"], KW["inertia"], KW["cognitive"], KW["social"], 0.5,
    )  # fmt: skip
    for key in ("positions", "velocities"):
        for got, want in zip(s[key], cpu[key], strict=True):
            torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6)
    assert all(_guards_intact(*g) for g in guards)


def test_torch_compile_traces_the_op_on_cuda():
    s, _ = _make([(4, 100), (3, 7)])
    eager = {k: [t.clone() for t in v] for k, v in s.items()}

    def step(xs, vs, ps, gs, grs):
        torch.ops.hgpso.fused_update_(xs, vs, ps, gs, grs, [], [], 5, 2, 0.1, 0.9, 0.5, 0.5,
                                      None)  # fmt: skip
        return xs[0].sum()

    step(eager["positions"], eager["velocities"], eager["pbests"], eager["gbests"],
         eager["grads"])  # fmt: skip
    torch.compile(step)(s["positions"], s["velocities"], s["pbests"], s["gbests"], s["grads"])
    for key in ("positions", "velocities"):
        for a, b in zip(s[key], eager[key], strict=True):
            assert torch.equal(a, b)
