"""End to end: a real dataset reaches a stated accuracy, and real Lightning Trainer runs."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hgpso


def digits_split():
    """sklearn's 8x8 digits (ships inside the sklearn wheel): 1,500 train / 297 test."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    x, y = x[perm], y[perm]
    return (x[:1500], y[:1500]), (x[1500:], y[1500:])


def mlp():
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("path", ["closure", "vectorized"])
def test_digits_reaches_93_percent(path):
    torch.manual_seed(0)
    (xtr, ytr), (xte, yte) = digits_split()
    model = mlp()
    opt = hgpso.HGPSO(model.parameters(), lr=0.05, num_particles=4, seed=0)
    g = torch.Generator().manual_seed(0)
    for _epoch in range(6):
        for idx in torch.randperm(len(xtr), generator=g).split(64):
            x, y = xtr[idx], ytr[idx]
            if path == "vectorized":
                opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))
            else:

                def closure(x=x, y=y):
                    opt.zero_grad()
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    return loss

                opt.step(closure)
    assert accuracy(model, xte, yte) >= 0.93


class DigitsModule(L.LightningModule):
    def __init__(self, vectorized: bool = False) -> None:
        super().__init__()
        self.net = mlp()
        self.vectorized = vectorized
        self.automatic_optimization = not vectorized

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if not self.vectorized:
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss
        opt = self.optimizers()
        loss = opt.step(closure=hgpso.vectorized_closure(self, F.cross_entropy, x, y))
        self.log("train_loss", loss)
        return None

    def configure_optimizers(self):
        return hgpso.HGPSO(self.parameters(), lr=0.05, num_particles=3, seed=0)


def _loader(x, y, shuffle):
    return DataLoader(
        TensorDataset(x, y),
        batch_size=64,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(0),
    )


@pytest.mark.parametrize("vectorized", [False, True], ids=["automatic", "manual-vectorized"])
def test_lightning_trainer_with_hgpso(vectorized, tmp_path):
    torch.manual_seed(0)
    (xtr, ytr), (xte, yte) = digits_split()
    module = DigitsModule(vectorized=vectorized)
    before = accuracy(module, xte, yte)
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, _loader(xtr, ytr, True))
    opt = trainer.optimizers[0]
    assert isinstance(opt, hgpso.HGPSO)
    steps = opt.state["swarm"]["step"]
    assert steps == 3 * len(_loader(xtr, ytr, True))
    assert opt.state["swarm"]["evaluations"] == 3 * steps
    for p, g in zip(module.parameters(), opt.gbest(), strict=True):
        assert torch.equal(p.detach(), g)  # the module holds the global best
    after = accuracy(module, xte, yte)
    assert before < 0.3 and after >= 0.85
