"""benchmarks/scaling.py runs end to end on tiny sizes and counts the bytes it reports."""

from __future__ import annotations

import pytest

from benchmarks.models import FashionCNN, count_parameters
from benchmarks.scaling import main

pytestmark = pytest.mark.timeout(180)


def test_scaling_smoke_counts_bytes_and_swarm_memory(tmp_path, capsys):
    n = 2
    result = main(
        [
            *("--world-sizes", "1", "2", "--particles", str(n)),
            *("--modes", "replicated", "sharded"),
            *("--batch", "4", "--steps", "2", "--warmup", "1", "--rounds", "1"),
            *("--json", str(tmp_path / "s.json")),
        ]
    )
    rows = {(r["world_size"], r["mode"]): r for r in result["rows"]}
    p = count_parameters(FashionCNN())
    assert rows[1, "replicated"]["bytes_per_step"] == 0
    assert rows[1, "sharded"]["bytes_per_step"] == 0
    # per step: the exchange (status, checksum, N losses as float64) + N*P float32 gradients
    assert rows[2, "replicated"]["bytes_per_step"] == (n + 2) * 8 + n * p * 4
    # sharded: the exchange (status, fingerprint, N/W losses) + the global best's weights and
    # gradient, broadcast from its owner
    assert rows[2, "sharded"]["bytes_per_step"] == (n // 2 + 2) * 8 + 2 * p * 4
    # replicated: every rank holds positions and velocities of all N and the global best
    # (forget=1 stores no personal bests); sharded: its N/W particles and the global best
    for (w, mode), r in rows.items():
        held = n // w if mode == "sharded" else n
        assert r["swarm_mib_per_rank"] * 2**20 == (2 * held + 1) * p * 4
        assert r["steps_per_s"] > 0
    assert rows[1, "replicated"]["efficiency"] == 1.0
    assert "efficiency" in capsys.readouterr().out
    assert (tmp_path / "s.json").exists()
