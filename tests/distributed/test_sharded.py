"""Particle-parallel swarms (``distributed="sharded"``) on real gloo process groups: a 2- and a
3-rank run equal a one-process run particle for particle, resume is exact, a different world
size is refused naming both, failures and bad configurations fail fast and clearly."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import hgpso
from tests.distributed import sharded_workers as sw
from tests.distributed.launch import run_workers

pytestmark = pytest.mark.timeout(180)

#: per-particle state: rank r holds rows start..stop of these
ROW_KEYS = ("position", "velocity", "pbest")
ROW_BUFFERS = ("buffers", "pbest_buffers")
#: not compared with the one-process run (which slice, and the per-particle generators)
SKIP = ("shard", "rng_state")


def load_ranks(out: Path, world_size: int) -> list[Any]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def assemble(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """One swarm from the ranks' shards: per-particle rows concatenated in rank order,
    everything else taken from rank 0 (checked equal on every rank first)."""
    first = snaps[0]
    for other in snaps[1:]:
        assert_equal(first["model"], other["model"], "model")
        assert_equal(first["grads"], other["grads"], "p.grad")
        for key, st in first["optim"]["state"].items():
            for name, value in st.items():
                if name not in ROW_KEYS + ROW_BUFFERS + SKIP:
                    assert_equal(value, other["optim"]["state"][key][name], f"{key}.{name}")
    stops = [s["rows"] for s in snaps]
    assert stops[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(stops))
    state: dict[Any, dict[str, Any]] = {}
    for key, st in first["optim"]["state"].items():
        state[key] = {}
        for name, value in st.items():
            if name in SKIP:
                continue
            if name in ROW_KEYS:
                value = torch.cat([s["optim"]["state"][key][name] for s in snaps])
            elif name in ROW_BUFFERS:
                value = {
                    b: torch.cat([s["optim"]["state"][key][name][b] for s in snaps]) for b in value
                }
            state[key][name] = value
    return {"model": first["model"], "grads": first["grads"], "state": state}


def assert_equal(a: Any, b: Any, where: str) -> None:
    """Exact equality of nested tensors, numbers, dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_close(got: Any, want: Any, where: str) -> None:
    if isinstance(got, torch.Tensor):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=where)
    elif isinstance(got, dict):
        assert got.keys() == want.keys(), where
        for k in got:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(got, list):
        for i, (x, y) in enumerate(zip(got, want, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(got, float) and not isinstance(got, bool):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6, nan_ok=True), where
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def one_process(cfg: dict[str, Any]) -> dict[str, Any]:
    """The reference: the same configuration in this process, no process group (one
    process holding all N particles, with the same per-particle random streams)."""
    snap = sw.run_config(cfg)
    assert snap["rows"] == [0, cfg["n"]]
    return assemble([snap])


#: HGPSO with the "sgd" gradient term, whose per-particle rows are ROW_KEYS ("adam" adds its
#: moments: tests/distributed/test_gradient_term.py)
SGD = {"optim": "hgpso", "gradient": "sgd"}
CONFIGS = {
    2: [
        {**SGD, "n": 5, "path": "closure"},  # 3 + 2
        {**SGD, "n": 5, "path": "vectorized", "bn": True, "forget": 0.5},
        {"optim": "pso", "n": 4, "path": "vectorized"},  # 2 + 2, forget < 1
        {**SGD, "n": 5, "path": "closure", "nan_at": (2, 4)},  # NaN on rank 1
    ],
    3: [
        {**SGD, "n": 5, "path": "closure", "bn": True},  # 2 + 2 + 1
        {**SGD, "n": 4, "path": "vectorized", "bn": True},  # 2 + 1 + 1
        {"optim": "pso", "n": 4, "path": "closure"},
        {**SGD, "n": 5, "path": "closure", "forget": 0.5, "nan_at": (3, 2)},
    ],
}


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_ranks_equal_one_process_particle_for_particle(tmp_path, world_size):
    """Every rank holds only its slice of positions, velocities, personal bests and
    per-particle buffers; the replicated part (model, p.grad, global best, losses, counters)
    is identical on every rank; put together, the shards equal a one-process run of the same
    seed on the same batches, particle by particle (closure and vectorized paths, HGPSO and
    PSO, BatchNorm statistics, uneven splits, a NaN particle on one rank)."""
    configs = CONFIGS[world_size]
    run_workers(sw.train, world_size, tmp_path, configs=configs)
    ranks = load_ranks(tmp_path, world_size)
    for c, cfg in enumerate(configs):
        snaps = [r[c] for r in ranks]
        got, want = assemble(snaps), one_process(cfg)
        assert_close(got, want, f"config {cfg}")
        n = cfg["n"]
        base, extra = divmod(n, world_size)
        sizes = [b - a for a, b in (s["rows"] for s in snaps)]
        assert sizes == [base + (r < extra) for r in range(world_size)]
        for s, m in zip(snaps, sizes, strict=True):
            positions = [st["position"] for k, st in s["optim"]["state"].items() if k != "swarm"]
            assert all(x.shape[0] == m for x in positions)  # memory: only its own particles
        swarm = got["state"]["swarm"]
        assert swarm["step"] == sw.STEPS and swarm["evaluations"] == sw.STEPS * n
        assert swarm["nan_reseeds"] == (1 if "nan_at" in cfg else 0)
        if cfg["optim"] == "hgpso" and cfg.get("forget", 1.0) == 1.0:
            assert all(g is not None for g in got["grads"])  # the global best's gradient


def test_resume_is_exact(tmp_path):
    cfg = {"optim": "hgpso", "n": 5, "path": "vectorized", "bn": True, "forget": 0.5}
    run_workers(sw.train_resume, 2, tmp_path, cfg=cfg)
    for r in load_ranks(tmp_path, 2):
        for run in r.values():
            del run["bytes"]  # the resumed optimizer's communicator counts from its rebuild
        assert_equal(r["straight"], r["resumed"], "resumed run")
    # a rank's own share loads only there: tests/distributed/test_resharding.py


def test_failures_and_bad_configurations_fail_fast_and_clearly(tmp_path):
    """Three ranks, one process group, one case after the other."""
    run_workers(sw.failures, 3, tmp_path, bad_rank=1, timeout_s=120)
    ranks = load_ranks(tmp_path, 3)
    # a closure raising on rank 1: the others name it at once; every model on the global best
    for r, res in enumerate(ranks):
        case = res["raise"]
        assert case["params_restored"] and case["step"] == 2, case
        assert case["seconds"] < 30, case
        if r == 1:
            assert case["type"] == "ValueError" and "bad batch on purpose" in case["message"]
        else:
            assert case["type"] == "SwarmPeerError" and case["failed"] == [1], case
            assert "rank 1" in case["message"] and "bad batch on purpose" in case["message"]
    for res in ranks:
        # N < W, at construction
        case = res["too_few"]
        assert case["type"] == "ValueError", case
        assert "num_particles=2" in case["message"] and "3 ranks" in case["message"]
        # ranks scoring different batches: refused on every rank, nothing changed
        case = res["batches"]
        assert case["type"] == "ValueError" and "same batch" in case["message"], case
        assert all(f"rank {r}" in case["message"] for r in range(3))
        assert case["unchanged"] and case["step"] == 1, case
        # a DDP model: refused at its first forward pass, before DDP communicates
        case = res["ddp"]
        assert case["type"] in ("RuntimeError", "SwarmPeerError"), case
        assert "DistributedDataParallel" in case["message"], case


def test_sharded_without_a_process_group_holds_every_particle():
    """No process group: a sharded swarm is one process holding all N particles (the
    reference of the multi-process tests); fused=True is refused."""
    model = sw.make_model(False)
    opt = hgpso.HGPSO(model.parameters(), num_particles=3, distributed="sharded", seed=1)
    x, y = sw.batches(1)[0]
    opt.step(hgpso.vectorized_closure(model, torch.nn.functional.cross_entropy, x, y))
    assert opt._comm is None and opt._rows == range(3)
    assert opt.state[model[0].weight]["position"].shape == (3, 8, 6)
    assert opt.state_dict()["state"]["swarm"]["shard"] == {
        "world_size": 1,
        "rank": 0,
        "start": 0,
        "stop": 3,
    }
    with pytest.raises(ValueError, match="fused=True cannot be combined"):
        hgpso.HGPSO(model.parameters(), distributed="sharded", gradient="sgd", fused=True)
