"""LLMPSOCallback in a real Lightning Trainer: tuning, isolation of probes, checkpoint/resume."""

import csv

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("lightning")
import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from hgpso.tune import Categorical, Float
from lightning_callbacks import LLMPSOCallback


def data(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = x @ torch.randn(6, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class Reg(pl.LightningModule):
    def __init__(self, opt="sgd", lr=0.05):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
        self.opt, self.lr = opt, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        if self.opt == "hgpso":
            import hgpso

            return hgpso.HGPSO(self.parameters(), lr=self.lr, num_particles=3)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.5)

    def train_dataloader(self):
        return DataLoader(data(), batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(data(64, seed=1), batch_size=32)


def trainer(tmp_path, callbacks, epochs, **kw):
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        **kw,
    )


SGD_SPACE = {"lr": Float(1e-3, 0.5, log=True), "momentum": Float(0.0, 0.9)}


class LRRecorder(Callback):
    def __init__(self):
        self.at_start, self.per_epoch = None, []

    def on_train_start(self, trainer, pl_module):
        g = trainer.optimizers[0].param_groups[0]
        self.at_start = (g["lr"], g["momentum"])

    def on_train_epoch_end(self, trainer, pl_module):
        g = trainer.optimizers[0].param_groups[0]
        self.per_epoch.append((g["lr"], g["momentum"]))


def test_argument_validation():
    with pytest.raises(ValueError, match="interval"):
        LLMPSOCallback(SGD_SPACE, strategy="pso", interval=0)
    with pytest.raises(ValueError, match="population"):
        LLMPSOCallback(SGD_SPACE, strategy="pso", population=1)
    with pytest.raises(ValueError, match="unknown strategy"):
        LLMPSOCallback(SGD_SPACE, strategy="bayes")
    with pytest.raises(TypeError, match="space"):
        LLMPSOCallback(["lr"], strategy="pso")
    with pytest.raises(ValueError, match="uses no LLM"):
        LLMPSOCallback(SGD_SPACE, strategy="pso", llm=object())


def test_unknown_param_group_key_is_a_clear_error(tmp_path):
    cb = LLMPSOCallback({"betas_x": Float(0.1, 0.9)}, strategy="pso")
    with pytest.raises(ValueError, match="no key 'betas_x'; tunable keys are"):
        trainer(tmp_path, [cb], 1).fit(Reg())


def test_tunes_sgd_and_logs_to_loggers(tmp_path):
    torch.manual_seed(0)
    cb = LLMPSOCallback(SGD_SPACE, strategy="ga", population=4, probe_steps=3, seed=1)
    rec = LRRecorder()
    logger = CSVLogger(tmp_path, name="t")
    t = trainer(tmp_path, [cb, rec], 2, logger=logger)
    t.fit(Reg())
    assert cb.decisions == 2 and len(cb.rounds) == 2
    opt = t.optimizers[0]
    assert opt.param_groups[0]["lr"] == cb.current["lr"]
    assert opt.param_groups[0]["momentum"] == cb.current["momentum"]
    # the chosen candidate is the best scored one of its round
    r = cb.rounds[-1]
    assert r["score"] == min(r["scores"]) and r["chosen"] in r["candidates"]
    # the first round scored the optimizer's own setting too
    assert cb.rounds[0]["candidates"][0] == {"lr": 0.05, "momentum": 0.5}
    assert "tune/lr" in t.callback_metrics and "tune/probe_score" in t.callback_metrics
    rows = list(csv.DictReader(open(logger.log_dir + "/metrics.csv")))
    assert any(row.get("tune/momentum") for row in rows)


def test_probes_leave_training_untouched(tmp_path):
    """With a one-point space every decision re-applies lr=0.05, momentum=0.5: the weights
    must equal those of a run without the callback (model, optimizer and RNG restored)."""

    def run(callbacks):
        torch.manual_seed(123)
        m = Reg()
        trainer(tmp_path, callbacks, 2).fit(m)
        return [p.detach().clone() for p in m.parameters()]

    fixed = {"lr": Categorical([0.05]), "momentum": Categorical([0.5])}
    cb = LLMPSOCallback(fixed, strategy="random", population=2, probe_steps=2)
    with_cb, without = run([cb]), run([])
    assert cb.decisions == 2
    for a, b in zip(with_cb, without, strict=True):
        torch.testing.assert_close(a, b)


def test_checkpoint_resume_continues_the_same_search(tmp_path):
    def make_cb():
        return LLMPSOCallback(SGD_SPACE, strategy="pso", population=3, probe_steps=2, seed=4)

    # uninterrupted reference: 4 epochs
    torch.manual_seed(0)
    ref = make_cb()
    trainer(tmp_path / "ref", [ref], 4).fit(Reg())

    # 2 epochs, checkpoint, then resume to 4 with fresh objects
    torch.manual_seed(0)
    first = make_cb()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    trainer(tmp_path / "a", [first, ckpt], 2, enable_checkpointing=True).fit(Reg())
    assert first.decisions == 2
    torch.manual_seed(999)  # a different process state must not matter
    resumed, rec = make_cb(), LRRecorder()
    model = Reg(lr=0.3)  # configure_optimizers default differs from the tuned value
    t = trainer(tmp_path / "b", [resumed, rec], 4, enable_checkpointing=False)
    t.fit(model, ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert resumed.decisions == 4 and resumed.strategy.iteration == 4
    assert resumed.rounds[:2] == first.rounds
    # tuned values restored when training restarted
    assert rec.at_start == (first.current["lr"], first.current["momentum"])
    # the resumed search asked the same candidates as the uninterrupted one
    assert [r["candidates"] for r in resumed.rounds] == [r["candidates"] for r in ref.rounds]


def test_tunes_hgpso_hyperparameters(tmp_path):
    hgpso = pytest.importorskip("hgpso")
    if not hasattr(hgpso, "HGPSO"):
        pytest.skip("hgpso.HGPSO not available")
    torch.manual_seed(0)
    space = {"lr": Float(1e-3, 0.3, log=True), "inertia": Float(0.1, 0.9)}
    cb = LLMPSOCallback(space, strategy="pso", population=3, probe_steps=2, seed=0)
    t = trainer(tmp_path, [cb], 2, limit_train_batches=4)
    t.fit(Reg(opt="hgpso"))
    assert cb.decisions == 2
    g = t.optimizers[0].param_groups[0]
    assert g["lr"] == cb.current["lr"] and g["inertia"] == cb.current["inertia"]
    assert all(torch.isfinite(torch.tensor(r["score"])) for r in cb.rounds)


def test_resume_from_a_checkpoint_saved_on_the_last_batch_makes_every_decision(tmp_path):
    """Saved on epoch 2's last batch (before on_train_epoch_end): the due decision still runs."""

    def make_cb():
        return LLMPSOCallback(SGD_SPACE, strategy="pso", population=3, probe_steps=2, seed=4)

    steps_per_epoch = len(Reg().train_dataloader())
    torch.manual_seed(0)
    ref = make_cb()
    trainer(tmp_path / "ref", [ref], 4).fit(Reg())

    torch.manual_seed(0)
    first = make_cb()
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ck",
        filename="last-batch",
        every_n_train_steps=2 * steps_per_epoch,  # saved in on_train_batch_end of epoch 2
        save_top_k=-1,
    )
    trainer(tmp_path / "a", [first, ckpt], 2, enable_checkpointing=True).fit(Reg())
    saved = torch.load(tmp_path / "ck" / "last-batch.ckpt", weights_only=True)
    assert saved["global_step"] == 2 * steps_per_epoch
    torch.manual_seed(999)
    resumed = make_cb()
    t = trainer(tmp_path / "b", [resumed], 4, enable_checkpointing=False)
    t.fit(Reg(lr=0.3), ckpt_path=str(tmp_path / "ck" / "last-batch.ckpt"))
    assert resumed.decisions == ref.decisions == 4
    assert [r["epoch"] for r in resumed.rounds] == [0, 1, 2, 3]
    assert [r["candidates"] for r in resumed.rounds] == [r["candidates"] for r in ref.rounds]


def test_candidates_the_optimizer_refuses_are_scored_inf_not_tried(tmp_path):
    hgpso = pytest.importorskip("hgpso")
    torch.manual_seed(0)
    # a space allowing lr < 0, which HGPSO refuses: fit must not die with its ValueError
    space = {"lr": Float(-0.2, 0.2), "inertia": Float(0.1, 0.9)}
    cb = LLMPSOCallback(space, strategy="random", population=6, probe_steps=2, seed=3)
    with pytest.warns(UserWarning, match="HGPSO refuses candidate"):
        t = trainer(tmp_path, [cb], 2, limit_train_batches=4)
        t.fit(Reg(opt="hgpso"))
    assert isinstance(t.optimizers[0], hgpso.HGPSO) and cb.decisions == 2
    negative = [
        (c, s) for r in cb.rounds for c, s in zip(r["candidates"], r["scores"], strict=True)
        if c["lr"] < 0
    ]  # fmt: skip
    assert negative and all(s == 1e30 for _, s in negative)
    assert cb.current["lr"] >= 0 and t.optimizers[0].param_groups[0]["lr"] == cb.current["lr"]


def _failing_probe_callback(error: BaseException) -> LLMPSOCallback:
    """A callback whose 3rd probe loss (inside the first decision) raises ``error``."""
    calls = {"n": 0}

    def loss_fn(module, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise error
        x, y = batch
        return nn.functional.mse_loss(module.net(x), y)

    return LLMPSOCallback(SGD_SPACE, strategy="pso", population=3, probe_steps=2, loss_fn=loss_fn)


def test_a_probe_error_surfaces_and_a_numerical_failure_scores_inf(tmp_path):
    cb = _failing_probe_callback(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(RuntimeError, match="CUDA out of memory"):  # not hidden as +inf
        trainer(tmp_path / "a", [cb], 1).fit(Reg())
    cb = _failing_probe_callback(FloatingPointError("overflow in the probe"))
    with pytest.warns(UserWarning, match="overflow in the probe"):
        trainer(tmp_path / "b", [cb], 1).fit(Reg())
    assert cb.decisions == 1 and 1e30 in cb.rounds[0]["scores"]


def test_resume_with_changed_bounds_starts_the_search_afresh(tmp_path):
    def make_cb(space):
        return LLMPSOCallback(space, strategy="pso", population=3, probe_steps=2, seed=4)

    torch.manual_seed(0)
    first = make_cb(SGD_SPACE)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    trainer(tmp_path / "a", [first, ckpt], 2, enable_checkpointing=True).fit(Reg())
    # same names, other bounds: the state key matches, the saved search does not fit. A
    # wider range keeps every saved point inside it, so only the space check can tell.
    wider = {"lr": Float(1e-4, 0.9, log=True), "momentum": Float(0.0, 0.95)}
    resumed = make_cb(wider)
    with pytest.warns(UserWarning, match="starting the search afresh"):
        t = trainer(tmp_path / "b", [resumed], 3, enable_checkpointing=False)
        t.fit(Reg(), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert resumed.decisions == 1 and resumed.strategy.iteration == 1  # one new decision
    assert resumed.rounds[0]["epoch"] == 2
    fresh = make_cb(wider).strategy.ask()  # the first population of a new search
    assert resumed.rounds[0]["candidates"][1:] == fresh[1:]  # candidate 0: current values
