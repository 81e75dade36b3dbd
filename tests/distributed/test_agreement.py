"""Ranks that build their swarm differently are refused when the optimizer is built, on every
rank, naming the first difference and each rank's value: real gloo process groups, one
``SwarmComm.check_config`` case after the other in one group (so every case must leave the
ranks in lock-step), then real optimizers that differ per rank. Nothing may hang (a short
process-group timeout) or crash the backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from hgpso.distributed import describe_digest
from tests.distributed import agreement_workers as aw
from tests.distributed.launch import run_workers

pytestmark = pytest.mark.timeout(120)

#: a collective that a mismatch left unmatched fails after this many seconds, not 60
PG_TIMEOUT_S = 20


def load_ranks(out: Path, world_size: int) -> list[Any]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def per_rank(*values: Any) -> dict[str, list[Any]]:
    return {"per_rank": list(values)}


def changed(**changes: Any) -> dict[str, Any]:
    return {**aw.BASE, **changes}


CASES: dict[str, dict[str, Any]] = {
    "same description": {"description": aw.BASE},
    "no description": {},
    "lr": {"description": per_rank(aw.BASE, changed(**{"param group 0 lr": 0.02}))},
    "class": {"description": per_rank(aw.BASE, changed(**{"optimizer class": "PSO"}))},
    "shapes": {
        "shapes": per_rank([[2, 6], [2]], [[6, 2], [2]]),
        "description": per_rank(aw.BASE, changed(**{"parameter shapes": [[6, 2], [2]]})),
    },
    "missing key": {
        "description": per_rank(aw.BASE, {k: v for k, v in aw.BASE.items() if k != "forget"})
    },
    "one without": {"description": per_rank(aw.BASE, None)},
    "unencodable": {"description": per_rank(aw.BASE, changed(forget=object()))},
    "mode": {"mode": per_rank("replicated", "sharded")},
    "N": {"n": per_rank(4, 5), "description": aw.BASE},
    "numel": {"shapes": per_rank([[2, 6]], [[2, 5]])},
    "after all": {"description": aw.BASE},
}


def test_check_config_names_the_first_difference_on_every_rank(tmp_path):
    run_workers(
        aw.check_cases,
        2,
        tmp_path,
        timeout_s=60,
        pg_timeout_s=PG_TIMEOUT_S,
        cases=list(CASES.values()),
    )
    ranks = [dict(zip(CASES, r, strict=True)) for r in load_ranks(tmp_path, 2)]
    for res in ranks:
        for name, case in res.items():
            assert case["seconds"] < 10, (name, case)
        # agreement: one all-gather of the fixed columns, nothing else
        for name in ("same description", "no description", "after all"):
            assert res[name]["type"] is None, (name, res[name])
            assert res[name]["collectives"] == 1, (name, res[name])
        msg = {name: case["message"] for name, case in res.items()}
        for name in ("lr", "class", "shapes", "missing key", "one without", "unencodable"):
            assert res[name]["type"] == "ValueError", (name, res[name])
            assert res[name]["collectives"] == 2, (name, res[name])  # + the descriptions
        assert msg["lr"].startswith(
            "the ranks of the swarm's process group disagree on 'param group 0 lr': "
            "rank 0: 0.01, rank 1: 0.02"
        ), msg["lr"]
        assert "'optimizer class': rank 0: 'HGPSO', rank 1: 'PSO'" in msg["class"]
        # the shapes differ, the count and total size do not: the description names them
        assert "'parameter shapes': rank 0: [[2, 6], [2]], rank 1: [[6, 2], [2]]" in msg["shapes"]
        assert "'forget': rank 0: 1.0, rank 1: (not set)" in msg["missing key"]
        assert "rank 0: given, rank 1: none" in msg["one without"]
        assert "on rank 1 " in msg["unencodable"] and "JSON" in msg["unencodable"]
        # the mode travels in the fixed columns: an error, not gloo's SIGABRT at the first step
        assert res["mode"]["type"] == "ValueError" and res["mode"]["collectives"] == 1
        assert (
            "disagree on the mode (distributed=): rank 0: 'replicated', rank 1: 'sharded'"
            in (msg["mode"])
        )
        # the old columns keep their messages (and come first)
        assert "disagree on the N (num_particles): rank 0: 4, rank 1: 5" in msg["N"]
        assert (
            "number of parameters (every rank must build the same model): rank 0: 12, "
            in (msg["numel"])
        )
    for name in CASES:  # every rank raised the same error
        assert ranks[0][name]["type"] == ranks[1][name]["type"], name
        assert ranks[0][name]["message"] == ranks[1][name]["message"], name


def test_three_ranks_name_every_rank_and_the_one_that_differs(tmp_path):
    desc = per_rank(aw.BASE, aw.BASE, changed(**{"param group 0 inertia": 0.5}))
    run_workers(
        aw.check_cases,
        3,
        tmp_path,
        timeout_s=60,
        pg_timeout_s=PG_TIMEOUT_S,
        cases=[{"description": desc}, {"description": aw.BASE}],
    )
    for first, second in load_ranks(tmp_path, 3):
        assert first["type"] == "ValueError"
        assert "'param group 0 inertia': rank 0: 0.7, rank 1: 0.7, rank 2: 0.5" in first["message"]
        assert second["type"] is None


def test_digest_is_canonical_and_stable():
    """Key order does not matter, values do; the number is the same in every process (a
    fixed value: hashlib, not Python's salted hash()) and fits an int64."""
    a = {"x": 1.0, "y": [[2, 3]], "z": "HGPSO"}
    b = {"z": "HGPSO", "y": [[2, 3]], "x": 1.0}
    assert describe_digest(a) == describe_digest(b)
    assert describe_digest(a) != describe_digest({**a, "x": 1.0000000000000002})
    assert describe_digest(a) != describe_digest({**a, "y": [[3, 2]]})
    assert 0 <= describe_digest(a) < 2**63
    assert describe_digest(None) != describe_digest({})
    assert describe_digest({"lr": float("nan")}) == describe_digest({"lr": float("nan")})
    assert describe_digest({"lr": object()}) == -1
    assert describe_digest({1: "int key"}) == -1  # type: ignore[dict-item]
    assert describe_digest({"a": 1}) == 48799348328414486  # pinned: the same on every rank
