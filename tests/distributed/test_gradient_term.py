"""``gradient="adam"`` on a real 2-rank gloo group (issue 21, part 1): a sharded swarm's
moments are per-particle rows like its positions (each rank holds its share), its step
counts are all ``N`` on every rank; put together the shards equal one process holding every
particle, a re-seeded particle included; a consolidated checkpoint resumes on 1 and 3 ranks.
Per-particle learning rates (``lr_spread``, ``lr_pull``) agree on every rank the same way."""

from __future__ import annotations

import pytest
import torch

from tests.distributed import resharding_workers as rw
from tests.distributed import sharded_workers as sw
from tests.distributed import test_sharded as ts
from tests.distributed.launch import run_workers
from tests.distributed.test_resharding import _without_placement

pytestmark = pytest.mark.timeout(300)

ADAM = {"optim": "hgpso", "gradient": "adam", "weight_decay": 0.01}
CONFIGS = [
    {**ADAM, "n": 5, "path": "closure"},  # 3 + 2
    {**ADAM, "n": 5, "path": "closure", "forget": 0.5, "nan_at": (2, 4)},  # NaN on rank 1
]


def test_sharded_adam_on_two_ranks_equals_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(ts, "ROW_KEYS", (*ts.ROW_KEYS, "exp_avg", "exp_avg_sq"))
    run_workers(sw.train, 2, tmp_path, configs=CONFIGS)
    ranks = ts.load_ranks(tmp_path, 2)
    for c, cfg in enumerate(CONFIGS):
        snaps = [r[c] for r in ranks]
        for s, rows in zip(snaps, ([0, 3], [3, 5]), strict=True):
            assert s["rows"] == rows
            for key, st in s["optim"]["state"].items():
                if key != "swarm":
                    assert st["exp_avg"].shape[0] == st["exp_avg_sq"].shape[0] == rows[1] - rows[0]
        got = ts.assemble(snaps)
        ts.assert_close(got, ts.one_process(cfg), f"config {cfg}")
        steps = got["state"]["swarm"]["adam_steps"].tolist()
        assert steps == ([sw.STEPS] * 4 + [sw.STEPS - 3] if "nan_at" in cfg else [sw.STEPS] * 5)


def test_a_consolidated_adam_checkpoint_resumes_on_one_and_three_ranks(tmp_path):
    cfg = {**ADAM, "n": 5, "path": "closure", "forget": 0.5}
    run_workers(rw.train_and_consolidate, 2, tmp_path / "w2", cfg=cfg)
    straight = _without_placement(torch.load(tmp_path / "w2/straight.pt", weights_only=False))
    path = str(tmp_path / "w2/ckpt.pt")
    (tmp_path / "r1").mkdir()
    rw.resume(0, 1, tmp_path / "r1", cfg=cfg, ckpt_path=path)
    run_workers(rw.resume, 3, tmp_path / "r3", cfg=cfg, ckpt_path=path)
    for world_size in (1, 3):
        got = torch.load(tmp_path / f"r{world_size}/resumed{world_size}.pt", weights_only=False)
        assert "exp_avg" in got["optim"]["state"][0]
        ts.assert_close(_without_placement(got), straight, f"resumed on {world_size} rank(s)")


def test_sharded_particle_learning_rates_on_two_ranks_equal_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(ts, "ROW_KEYS", (*ts.ROW_KEYS, "exp_avg", "exp_avg_sq"))
    cfg = {"optim": "hgpso", "n": 5, "path": "closure", "lr_spread": 4.0, "lr_pull": 0.2}
    configs = [cfg, {**cfg, "gradient": "adam", "nan_at": (2, 4)}]  # NaN on rank 1
    run_workers(sw.train, 2, tmp_path, configs=configs)
    ranks = ts.load_ranks(tmp_path, 2)
    grid = torch.tensor([4.0 ** (2 * i / 4 - 1) for i in range(5)], dtype=torch.float64)
    for c, config in enumerate(configs):
        got = ts.assemble([r[c] for r in ranks])  # lr_factors checked equal on both ranks
        ts.assert_close(got, ts.one_process(config), f"config {config}")
        factors = got["state"]["swarm"]["lr_factors"]
        assert not torch.allclose(factors, grid)  # pulled toward the winners
        assert bool(((factors >= 0.25) & (factors <= 4.0)).all())
