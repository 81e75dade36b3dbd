"""A sharded swarm saved on W ranks resumes on W' ranks (issue 20, part 3): each particle's
rows and random stream move with it, whatever rank holds it, so the run continues as the
uninterrupted one: bit for bit on as many ranks, and to float rounding on others (as a
sharded swarm on W ranks matches one process, tests/distributed/test_sharded.py)."""

from __future__ import annotations

import copy

import pytest
import torch

import hgpso
from tests.distributed import resharding_workers as rw
from tests.distributed import sharded_workers as sw
from tests.distributed.launch import run_workers
from tests.distributed.test_sharded import assert_close, assert_equal

pytestmark = pytest.mark.timeout(300)

CFG = {"optim": "hgpso", "n": 5, "path": "vectorized", "bn": True, "forget": 0.5}


def _without_placement(result):
    """The swarm as a result to compare: the placement record (world size, rank) aside."""
    result = copy.deepcopy(result)
    result["optim"]["state"]["swarm"].pop("shard", None)
    return result


def test_a_checkpoint_saved_on_two_ranks_resumes_on_one_two_and_three(tmp_path):
    cfg = CFG  # personal bests and BatchNorm buffers: every kind of per-particle row
    run_workers(rw.train_and_consolidate, 2, tmp_path / "w2", cfg=cfg)
    straight = _without_placement(torch.load(tmp_path / "w2/straight.pt", weights_only=False))
    path = str(tmp_path / "w2/ckpt.pt")
    ckpt = torch.load(path, weights_only=False)
    shard = ckpt["optim"]["state"]["swarm"]["shard"]
    assert (shard["world_size"], shard["start"], shard["stop"]) == (2, 0, 5)
    assert ckpt["optim"]["state"]["swarm"]["rng_state"]["rows"] == [0, 5]
    (tmp_path / "r1").mkdir()
    rw.resume(0, 1, tmp_path / "r1", cfg=cfg, ckpt_path=path)  # this process: every particle
    for world_size in (2, 3):
        run_workers(rw.resume, world_size, tmp_path / f"r{world_size}", cfg=cfg, ckpt_path=path)
    for world_size in (1, 2, 3):
        got = torch.load(tmp_path / f"r{world_size}/resumed{world_size}.pt", weights_only=False)
        where = f"resumed on {world_size} rank(s)"
        if world_size == 2:  # the same rows per rank: bit for bit
            assert_equal(_without_placement(got), straight, where)
        else:  # other row counts batch the arithmetic differently (as across world sizes)
            assert_close(_without_placement(got), straight, where)


def test_a_share_loads_only_where_it_was_saved_and_modes_cross_with_new_streams(tmp_path):
    run_workers(sw.train_resume, 2, tmp_path, cfg=CFG)
    share = torch.load(tmp_path / "ckpt0.pt", weights_only=False)["optim"]
    model = sw.make_model(True)
    one = sw.make_optimizer(CFG, model.parameters())  # sharded, a world of 1
    before = copy.deepcopy(one.state_dict())
    with pytest.raises(ValueError, match=r"share .* sharded over 2 ranks.*rank 0 of 1"):
        one.load_state_dict(share)
    assert_equal(one.state_dict(), before, "after a refused load")
    replicated = hgpso.HGPSO(model.parameters(), num_particles=5, forget=0.5)
    with pytest.raises(ValueError, match="consolidated_state_dict"):
        replicated.load_state_dict(share)
    # a replicated swarm's checkpoint loads into a sharded one (and back): the same
    # positions, velocities and bests; the random streams are new ones, derived from it
    x, y = sw.batches()[0]
    replicated.step(hgpso.vectorized_closure(model, torch.nn.functional.cross_entropy, x, y))
    saved = replicated.state_dict()
    one.load_state_dict(saved)
    for p in one._trainable():
        for key in ("position", "velocity", "pbest", "gbest"):
            assert torch.equal(one.state[p][key], replicated.state[p][key])
    assert one.random.get_state()["kind"] == "per-particle"
    one.step(hgpso.vectorized_closure(model, torch.nn.functional.cross_entropy, x, y))
    back = hgpso.HGPSO(model.parameters(), num_particles=5, forget=0.5)
    back.load_state_dict(one.state_dict())
    assert back.random.get_state()["kind"] == "pcg64"
    assert back.state["swarm"]["step"] == 2
