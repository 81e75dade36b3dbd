"""Real optimizers that differ per rank, on real gloo process groups: before the agreement
check, ranks with other hyperparameters or shapes trained silently apart, replicated vs
sharded crashed gloo (SIGABRT) and HGPSO vs PSO hung in the first step until the process
group's timeout. Now each is a ValueError on every rank when the optimizer is built."""

from __future__ import annotations

import pytest

from tests.distributed import agreement_workers as aw
from tests.distributed.launch import run_workers
from tests.distributed.test_agreement import PG_TIMEOUT_S, load_ranks, per_rank

pytestmark = pytest.mark.timeout(120)


#: real optimizers that differ per rank, and what the error must name
BUILDS: dict[str, tuple[dict[str, object], str]] = {
    "lr": (
        {"optim": "hgpso", "shapes": [[2, 6]], "kwargs": per_rank({"lr": 0.01}, {"lr": 0.02})},
        "'param group 0 lr': rank 0: 0.01, rank 1: 0.02",
    ),
    "shapes, same total size": (
        {"optim": "hgpso", "shapes": per_rank([[2, 6], [4]], [[4, 3], [4]])},
        "rank 0: [[2, 6], [4]], rank 1: [[4, 3], [4]]",
    ),
    "replicated vs sharded": (
        {
            "optim": "hgpso",
            "shapes": [[2, 6]],
            "kwargs": per_rank({"distributed": "replicated"}, {"distributed": "sharded"}),
        },
        "rank 0: 'replicated', rank 1: 'sharded'",
    ),
    "HGPSO vs PSO": (
        {"optim": per_rank("hgpso", "pso"), "shapes": [[2, 6]]},
        "rank 0: 'HGPSO', rank 1: 'PSO'",
    ),
}


@pytest.mark.parametrize("name", list(BUILDS))
def test_optimizers_that_differ_per_rank_are_refused_on_every_rank(tmp_path, name):
    """Before the check, ranks with other hyperparameters or shapes trained silently apart,
    replicated vs sharded crashed gloo (SIGABRT) and HGPSO vs PSO hung in the first step.
    Now: a ValueError on every rank when the optimizer is built, well within the process
    group's timeout; the next case in the same group still works (lock-step)."""
    case, needle = BUILDS[name]
    same = {"optim": "hgpso", "shapes": [[2, 6]]}
    run_workers(
        aw.build_optimizers,
        2,
        tmp_path,
        timeout_s=60,
        pg_timeout_s=PG_TIMEOUT_S,
        cases=[case, same],
    )
    for refused, fine in load_ranks(tmp_path, 2):
        assert refused["type"] == "ValueError", refused
        assert "the ranks of the swarm's process group disagree on" in refused["message"]
        assert needle in refused["message"], refused["message"]
        assert refused["seconds"] < PG_TIMEOUT_S / 2, refused
        assert fine["type"] is None, fine
