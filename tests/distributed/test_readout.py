"""``readout="mean"`` on a real 2-rank gloo group (issue 21, part 2): with the particles
sharded, the mean the model holds, ``particle_mean`` (all and best-k) and ``particle_spread``
are sums over ranks; they equal one process holding every particle, element for element
within float rounding, and every rank holds the same model."""

from __future__ import annotations

import pytest
import torch

from tests.distributed import sharded_workers as sw
from tests.distributed import test_sharded as ts
from tests.distributed.launch import run_workers

pytestmark = pytest.mark.timeout(300)

CFG = {"optim": "hgpso", "n": 5, "path": "closure", "bn": True, "readout": "mean"}


def test_sharded_mean_readout_on_two_ranks_equals_one_process(tmp_path):
    run_workers(sw.train_readout, 2, tmp_path, cfg=CFG)
    ranks = ts.load_ranks(tmp_path, 2)
    want = sw.readout_views(CFG)
    assert want["rows"] == [0, 5]
    positions = [st["position"] for k, st in want["optim"]["state"].items() if k != "swarm"]
    # the reference itself: the model holds the mean of all 5 positions and BN statistics
    model, rows = want["model"], want["optim"]["state"]["swarm"]["buffers"]
    weights = [v for k, v in model.items() if k not in rows]
    for p, w in zip(weights, positions, strict=True):
        torch.testing.assert_close(p, w.mean(0))
    torch.testing.assert_close(model["1.running_var"], rows["1.running_var"].mean(0))
    for rank, got in enumerate(ranks):
        assert got["rows"] == ([0, 3], [3, 5])[rank]
        for key in ("model", "mean", "mean_best_2"):
            ts.assert_close(got[key], want[key], f"rank {rank} {key}")
        assert got["spread"] == pytest.approx(want["spread"], rel=1e-6)
    ts.assert_equal(ranks[0]["model"], ranks[1]["model"], "model on both ranks")
    assert want["spread"]["rms_to_mean"] > 0
