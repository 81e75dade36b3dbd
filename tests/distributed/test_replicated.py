"""Data-parallel swarms on real gloo process groups: replicas identical, equal to one process
on the global batch, resume exact, failures named, bad configurations refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import hgpso
from tests.distributed import workers
from tests.distributed.launch import run_workers
from tests.helpers import TinyNet

pytestmark = pytest.mark.timeout(180)


def load_ranks(out: Path, world_size: int) -> list[Any]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def flat_state(snap: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every parameter and optimizer state entry, as (name, value) pairs in a fixed order."""
    items: list[tuple[str, Any]] = [(f"param{i}", p) for i, p in enumerate(snap["params"])]
    for key, st in snap["optim"]["state"].items():
        for name, value in st.items():
            items.append((f"state[{key}][{name}]", value))
    return items


def assert_identical(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Element-for-element equality of parameters and every state tensor/number."""
    fa, fb = flat_state(a), flat_state(b)
    assert [n for n, _ in fa] == [n for n, _ in fb]
    for (name, va), (_, vb) in zip(fa, fb, strict=True):
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), f"{name} differs between ranks"
        else:
            assert va == vb, f"{name} differs between ranks: {va!r} != {vb!r}"


def single_process(path: str, world_size: int, optim: str = "hgpso") -> dict[str, Any]:
    """The same training in this process on the concatenated global batches, starting from
    rank 0's weights and seed."""
    torch.manual_seed(100)
    model = TinyNet()
    opt = workers.make_optimizer(optim, model.parameters())
    for x, y in workers.global_batches(world_size):
        if path == "vectorized":
            opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))
            continue

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return workers.snapshot(model, opt)


@pytest.mark.parametrize(
    ("path", "world_size", "optim"),
    [
        ("ddp", 2, "hgpso"),
        ("vectorized", 2, "hgpso"),
        ("closure", 2, "hgpso"),
        ("vectorized", 3, "hgpso"),
        ("vectorized", 2, "pso"),
    ],
)
def test_replicas_identical_and_equal_to_global_batch(tmp_path, path, world_size, optim):
    """Each rank starts from different weights and a different torch RNG and trains on its own
    shard; afterwards every parameter and state entry is equal on all ranks, and equal (to
    float tolerance) to one process trained on the global batch from rank 0's start."""
    run_workers(workers.train, world_size, tmp_path, path=path, optim=optim)
    ranks = load_ranks(tmp_path, world_size)
    for other in ranks[1:]:
        assert_identical(ranks[0], other)
    ref = single_process("vectorized" if path == "vectorized" else "closure", world_size, optim)
    for (name, got), (_, want) in zip(flat_state(ranks[0]), flat_state(ref), strict=True):
        if isinstance(got, torch.Tensor):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
        elif isinstance(got, float):
            assert got == pytest.approx(want, rel=1e-4, abs=1e-6), name
        else:
            assert got == want, name
    swarm = ranks[0]["optim"]["state"]["swarm"]
    assert swarm["step"] == workers.STEPS
    # at construction: config check, seed, one bucket of weights; then per step one exchange
    # and, unless DDP already all-reduced them in backward() (or PSO has none), one all-reduce
    # of the gradients
    grad_reduces = 0 if path == "ddp" or optim == "pso" else workers.STEPS
    assert ranks[0]["collectives"] == 3 + workers.STEPS + grad_reduces


def test_independent_opt_out_keeps_separate_swarms(tmp_path):
    run_workers(workers.train, 2, tmp_path, path="vectorized", distributed="independent")
    a, b = load_ranks(tmp_path, 2)
    assert not all(torch.equal(p, q) for p, q in zip(a["params"], b["params"], strict=True))


def test_process_group_selects_the_ranks_that_share_a_swarm(tmp_path):
    """process_group=new_group([1, 2]): ranks 1 and 2 agree (rank 1's start is broadcast, its
    global rank being the group's rank 0); rank 0, opted out, has its own swarm."""
    run_workers(workers.train_subgroup, 3, tmp_path)
    r0, r1, r2 = load_ranks(tmp_path, 3)
    assert_identical(r1, r2)
    assert not torch.equal(r0["params"][0], r1["params"][0])
    assert r0["collectives"] is None
    torch.manual_seed(101)  # rank 1's own initial weights: the group started from them
    own = [p.detach() for p in TinyNet().parameters()]
    for p, q, o in zip(r1["start"], r2["start"], own, strict=True):
        assert torch.equal(p, o) and torch.equal(q, o)
    torch.manual_seed(100)
    assert torch.equal(r0["start"][0], TinyNet().fc1.weight.detach())
    assert r1["optim"]["state"]["swarm"]["step"] == 6


def test_resume_from_state_dict_is_exact(tmp_path):
    run_workers(workers.train_resume, 2, tmp_path, path="vectorized")
    ranks = load_ranks(tmp_path, 2)
    for r in ranks:
        assert_identical(r["straight"], r["resumed"])
    assert_identical(ranks[0]["resumed"], ranks[1]["resumed"])


def test_nan_on_one_rank_is_handled_identically_everywhere(tmp_path):
    """Rank 1 alone sees a NaN loss for particle 2 at step 3: the averaged loss is NaN on every
    rank, so every rank re-seeds that particle the same way."""
    run_workers(workers.train, 2, tmp_path, path="closure", nan_at=(3, 1, 2))
    a, b = load_ranks(tmp_path, 2)
    assert_identical(a, b)
    assert a["optim"]["state"]["swarm"]["nan_reseeds"] == 1


@pytest.mark.parametrize("path", ["closure", "ddp"])
def test_closure_raising_on_one_rank_fails_the_others_fast(tmp_path, path):
    """Rank 1's closure raises: rank 1 re-raises its own error; rank 0 does not hang. With a
    plain model it raises at once an error naming rank 1; with DDP it fails within the
    process group's timeout. Both models are back at the last global best."""
    pg_timeout_s = 10
    run_workers(
        workers.fail_on_rank,
        2,
        tmp_path,
        bad_rank=1,
        path=path,
        timeout_s=120,
        pg_timeout_s=pg_timeout_s,
    )
    r0, r1 = load_ranks(tmp_path, 2)
    assert r1["type"] == "ValueError" and "bad batch on purpose" in r1["message"]
    assert r0["params_restored"] and r1["params_restored"]
    if path == "closure":
        # the status exchange: immediate, and the error names the failing rank and its error
        assert r0["seconds"] < pg_timeout_s, r0
        assert r0["type"] == "SwarmPeerError" and r0["failed"] == [1]
        assert "rank 1" in r0["message"] and "bad batch on purpose" in r0["message"]
    else:
        # rank 0 is inside DDP's all-reduce when rank 1 fails: it is released by the process
        # group's timeout (or earlier, when the failing process exits), never left hanging,
        # and names the rank that failed first
        assert r0["type"] == "SwarmPeerError" and r0["failed"] == [1], r0
        assert "bad batch on purpose" in r0["message"]
        assert r0["seconds"] < 3 * pg_timeout_s, r0


@pytest.mark.parametrize(
    ("what", "needle"), [("num_particles", "N (num_particles)"), ("model", "number of parameters")]
)
def test_ranks_that_disagree_are_refused_at_construction(tmp_path, what, needle):
    run_workers(workers.mismatched_config, 2, tmp_path, what=what)
    for r in load_ranks(tmp_path, 2):
        assert r["type"] == "ValueError"
        assert needle in r["message"] and "rank 0" in r["message"] and "rank 1" in r["message"]


def test_no_process_group_means_no_communicator():
    model = TinyNet()
    opt = hgpso.HGPSO(model.parameters())
    assert opt._comm is None
    with pytest.raises(ValueError, match="distributed must be one of"):
        hgpso.HGPSO(model.parameters(), distributed="sharded?")
    with pytest.raises(RuntimeError, match="not initialized"):
        hgpso.HGPSO(model.parameters(), process_group=object())
