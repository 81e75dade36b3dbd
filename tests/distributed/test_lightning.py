"""HGPSO under real Lightning Trainers on 2 CPU processes (gloo): ``strategy="ddp"`` and
``"ddp_spawn"``, automatic optimization (Lightning's closure over the DDP-wrapped model) and
manual optimization (``hgpso.vectorized_closure``), checkpoint + ``ckpt_path`` resume, and
LLMPSOCallback's rank-0 decisions broadcast to every rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.distributed import launch
from tests.distributed.test_replicated import assert_identical

pytest.importorskip("lightning")
pytestmark = pytest.mark.timeout(240)

SCRIPT = Path(__file__).with_name("lit_script.py")


def run_script(out: Path, strategy: str, mode: str, *flags: str) -> None:
    launch.run_script(SCRIPT, out, strategy, mode, str(out), *flags)


def load(out: Path, run: str) -> list[dict[str, Any]]:
    return [torch.load(out / f"{run}-rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize(
    ("strategy", "mode"), [("ddp", "auto"), ("ddp", "manual"), ("ddp_spawn", "manual")]
)
def test_lightning_replicas_identical_and_resume_exact(tmp_path, strategy, mode):
    run_script(tmp_path, strategy, mode)
    straight, resumed = load(tmp_path, "straight"), load(tmp_path, "resumed")
    assert_identical(straight[0], straight[1])
    assert_identical(resumed[0], resumed[1])
    # 1 epoch + checkpoint + resume == 2 epochs straight, element for element
    assert_identical(straight[0], resumed[0])
    assert straight[0]["optim"]["state"]["swarm"]["step"] == 8  # 64 examples / 2 ranks / 8


def test_llmpso_callback_under_ddp_decides_once_for_all_ranks(tmp_path):
    """The callback (strategy "pso": no LLM) draws candidates on rank 0, probes on every rank,
    and every rank applies the same tuned values; resume continues the same search."""
    run_script(tmp_path, "ddp", "auto", "--callback")
    straight, resumed = load(tmp_path, "straight"), load(tmp_path, "resumed")
    for runs in (straight, resumed):
        assert runs[0]["tuned"] is not None
        assert runs[0]["tuned"] == runs[1]["tuned"]
        assert runs[0]["rounds"] == runs[1]["rounds"]
        assert runs[0]["lr"] == runs[1]["lr"] == runs[0]["tuned"]["lr"]
        assert_identical(runs[0], runs[1])
    assert len(straight[0]["rounds"]) == 2
    assert straight[0]["rounds"] == resumed[0]["rounds"]
    assert_identical(straight[0], resumed[0])
