"""LLMPSOCallback with an LLM strategy: a failing fake server and the real local server."""

import json
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("lightning")
import lightning.pytorch as pl

from hgpso.tune import Float, LLMClient
from lightning_callbacks import LLMPSOCallback

SPACE = {"lr": Float(1e-3, 0.5, log=True), "momentum": Float(0.0, 0.9)}


class Reg(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.5)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)


def fit(cb, epochs):
    t = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(Reg())
    return t


def test_training_survives_a_broken_llm(fake_llm):
    fake_llm.script = [("status", 500), ("ok", "I think lr=0.1 is good")]
    fake_llm.default = ("raw", b"{not json")
    llm = LLMClient(base_url=fake_llm.url, model="fake", max_retries=1, timeout=5, backoff=0.01)
    cb = LLMPSOCallback(SPACE, strategy="llm_pso", population=3, probe_steps=2, llm=llm, k=1)
    t = fit(cb, 3)
    assert cb.decisions == 3
    stats = cb.strategy.llm_stats
    assert stats.fallbacks == 2 and stats.failures == stats.calls == 4  # 2 rounds x 2 tries
    assert t.optimizers[0].param_groups[0]["lr"] == cb.current["lr"]
    assert float(t.callback_metrics["tune/llm_fallbacks"]) == 2.0


def test_llm_proposals_are_used_by_the_callback(fake_llm):
    fake_llm.default = ("ok", json.dumps({"points": [{"lr": 0.2, "momentum": 0.3}]}))
    llm = LLMClient(base_url=fake_llm.url, model="fake", max_retries=0)
    cb = LLMPSOCallback(SPACE, strategy="llm_pso", population=3, probe_steps=2, llm=llm, k=1)
    fit(cb, 2)
    assert {"lr": 0.2, "momentum": 0.3} in cb.rounds[1]["candidates"]
    # the LLM saw the search space and the best scores so far
    prompt = fake_llm.requests[0]["messages"][-1]["content"]
    assert "lr: float in [0.001, 0.5], log scale" in prompt


@pytest.mark.llm
def test_callback_with_real_llm(real_llm):
    llm = LLMClient(
        base_url=real_llm["base_url"],
        model=real_llm["model"],
        max_tokens=64,
        max_retries=0,
        timeout=120,
        seed=0,
    )
    cb = LLMPSOCallback(
        SPACE,
        strategy="llm_pso",
        population=3,
        probe_steps=2,
        llm=llm,
        k=1,
        strategy_kwargs={"max_llm_calls": 1},
    )
    t = fit(cb, 2)
    stats = cb.strategy.llm_stats
    # one LLM round; a first request in this process may be a response_format negotiation
    assert cb.decisions == 2 and stats.calls - stats.negotiations == 1
    assert cb.strategy.llm_stats.completion_tokens > 0
    lr = t.optimizers[0].param_groups[0]["lr"]
    assert 1e-3 <= lr <= 0.5
