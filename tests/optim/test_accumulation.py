"""Gradient accumulation and ``p.grad`` around a swarm step.

A swarm scores every particle with its own closure call, so gradients a ``backward()``
accumulated before ``step()`` belong to no particle: the step refuses them (Lightning's
``accumulate_grad_batches > 1``, a hand-written accumulation loop) instead of silently
training on the last micro-batch. Accumulating inside the closure is the supported way, and
equals the full-batch step. After a step ``p.grad`` is the global best's gradient.
"""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hgpso
from hgpso import HGPSO, PSO
from tests.helpers import TinyNet, make_closure

pytest.importorskip("lightning")
import lightning.pytorch as pl

REFUSED = "accumulated. A swarm scores each particle with its own closure call"


def _problem(seed=0):
    torch.manual_seed(seed)
    return TinyNet(), torch.randn(32, 6), torch.randint(0, 3, (32,))


def _snapshot(model, opt):
    return copy.deepcopy((model.state_dict(), opt.state_dict()))


def _assert_unchanged(model, opt, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[0][k])
    now = opt.state_dict()["state"]
    assert now.keys() == snap[1]["state"].keys()
    for i, st in snap[1]["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(now[i][key], value), (i, key)
            else:
                assert now[i][key] == value, (i, key)


# ------------------------------------------------------------------------------ Lightning
class _Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return HGPSO(self.parameters(), lr=0.05, num_particles=3, seed=0)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
        return DataLoader(TensorDataset(x, y), batch_size=16)


def _fit(tmp_path, module, **kw):
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kw,
    )
    trainer.fit(module)
    return trainer


def test_lightning_accumulate_grad_batches_is_refused_with_the_way_out(tmp_path):
    torch.manual_seed(0)
    module = _Module()
    start = copy.deepcopy(module.state_dict())
    with pytest.raises(ValueError, match=re.escape(REFUSED)) as info:
        _fit(tmp_path, module, accumulate_grad_batches=2)
    message = str(info.value)
    assert "accumulate_grad_batches=1" in message and "inside the closure" in message
    for k, v in module.state_dict().items():
        assert torch.equal(v, start[k])  # the first optimizer step was refused: nothing moved


def test_lightning_without_accumulation_leaves_the_gbest_gradient(tmp_path):
    torch.manual_seed(0)
    module = _Module()
    trainer = _fit(tmp_path, module)
    opt = trainer.optimizers[0]
    assert opt.state["swarm"]["step"] == 2
    # the second batch's gradient at the global best (the weights the module now holds)
    loader = iter(module.train_dataloader())
    next(loader)
    x, y = next(loader)
    probe = copy.deepcopy(module.net)
    F.cross_entropy(probe(x), y).backward()
    for p, q in zip(module.net.parameters(), probe.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


# ------------------------------------------------------------------- hand-written loops
@pytest.mark.parametrize("after_a_step", [False, True], ids=["fresh", "after-a-step"])
def test_hand_written_accumulation_loop_is_refused_and_nothing_changes(after_a_step):
    model, x, y = _problem()
    opt = HGPSO(model.parameters(), num_particles=3, seed=0)
    if after_a_step:  # p.grad then holds the tensors the step left (accumulated in place)
        opt.step(make_closure(opt, model, x, y))
    snap = _snapshot(model, opt)
    for xb, yb in zip(x.chunk(2), y.chunk(2), strict=True):
        (F.cross_entropy(model(xb), yb) / 2).backward()
    with pytest.raises(ValueError, match=re.escape(REFUSED)) as info:
        opt.step(make_closure(opt, model, x[16:], y[16:]))
    assert "optimizer.zero_grad() before step()" in str(info.value)
    _assert_unchanged(model, opt, snap)
    # the way out the message gives for stale gradients: zero_grad, then step
    opt.zero_grad()
    assert torch.isfinite(opt.step(make_closure(opt, model, x, y)))


def test_a_closure_called_before_the_step_leaves_stale_gradients_that_are_refused():
    model, x, y = _problem()
    opt = HGPSO(model.parameters(), num_particles=3, seed=0)
    closure = make_closure(opt, model, x, y)
    closure()  # e.g. to log the loss first
    with pytest.raises(ValueError, match=r"call optimizer\.zero_grad"):
        opt.step(closure)
    opt.zero_grad(set_to_none=False)  # zeros are nobody's gradient
    opt.step(closure)


def test_accumulating_inside_the_closure_equals_the_full_batch_step():
    """The supported way: each particle's gradient summed over the micro-batches its loss
    is averaged over, in one closure call."""
    model, x, y = _problem()
    other = copy.deepcopy(model)
    full = HGPSO(model.parameters(), num_particles=4, seed=0)
    micro = HGPSO(other.parameters(), num_particles=4, seed=0)

    def accumulating():
        micro.zero_grad()
        total = 0.0
        for xb, yb in zip(x.chunk(4), y.chunk(4), strict=True):
            loss = F.cross_entropy(other(xb), yb) / 4
            loss.backward()
            total = total + loss.detach()
        return total

    for _ in range(3):
        a = full.step(make_closure(full, model, x, y))
        b = micro.step(accumulating)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(full.state[p]["position"], micro.state[q]["position"])
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
    assert full.state["swarm"]["gbest_index"] == micro.state["swarm"]["gbest_index"]


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_then_step_loop_equals_a_closure_that_zeroes_itself(set_to_none):
    model, x, y = _problem()
    other = copy.deepcopy(model)
    a = HGPSO(model.parameters(), num_particles=3, seed=0)
    b = HGPSO(other.parameters(), num_particles=3, seed=0)

    def no_zero_grad():  # relies on the loop's zero_grad
        loss = F.cross_entropy(other(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        a.step(make_closure(a, model, x, y))
        b.zero_grad(set_to_none=set_to_none)
        b.step(no_zero_grad)
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q)
        assert torch.equal(a.state[p]["velocity"], b.state[q]["velocity"])
        assert torch.equal(p.grad, q.grad)


def test_closure_with_zero_grad_and_clip_grad_norm_leaves_the_clipped_gbest_gradient():
    model, x, y = _problem()
    opt = HGPSO(model.parameters(), num_particles=3, seed=0)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        return loss

    for _ in range(3):
        opt.step(closure)
    probe = copy.deepcopy(model)  # the global best's weights
    F.cross_entropy(probe(x), y).backward()
    nn.utils.clip_grad_norm_(probe.parameters(), 0.01)
    for p, q in zip(model.parameters(), probe.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_a_failed_step_does_not_make_the_next_one_refuse():
    model, x, y = _problem()
    opt = HGPSO(model.parameters(), num_particles=3, seed=0)
    calls = []

    def failing():
        calls.append(1)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if len(calls) == 2:
            raise RuntimeError("data loader died")
        return loss

    with pytest.raises(RuntimeError, match="data loader died"):
        opt.step(failing)
    opt.step(make_closure(opt, model, x, y))  # the gradients the closure left are the step's


# ------------------------------------------------------------------ p.grad after the step
def _grad_at(model, x, y):
    probe = copy.deepcopy(model)
    F.cross_entropy(probe(x), y).backward()
    return [q.grad for q in probe.parameters()]


def test_p_grad_is_the_global_best_gradient_closure_path():
    model, x, y = _problem()
    opt = HGPSO(model.parameters(), num_particles=5, seed=0, init_spread=0.2)
    bests = []
    for t in range(3):
        xb, yb = x[8 * t : 8 * t + 16], y[8 * t : 8 * t + 16]
        opt.step(make_closure(opt, model, xb, yb))
        bests.append(opt.state["swarm"]["gbest_index"])
        for p, g in zip(model.parameters(), _grad_at(model, xb, yb), strict=True):
            assert torch.equal(p.grad, g)
            assert p.grad._base is None  # its own tensor, not a view of all N gradients
    # the closure scores particles in order: the last one scored was not always the best
    assert any(b != opt.num_particles - 1 for b in bests)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_p_grad_is_the_global_best_gradient_vectorized_paths(strategy):
    model, x, y = _problem()
    opt = HGPSO(model.parameters(), num_particles=5, seed=0, init_spread=0.2)
    for _ in range(2):
        opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y, strategy=strategy))
        for p, g in zip(model.parameters(), _grad_at(model, x, y), strict=True):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
            assert p.grad.shape == p.shape


def test_p_grad_is_none_when_the_global_best_was_not_scored_on_this_batch():
    """With memory (forget < 1) the global best may be a position from an earlier batch:
    its gradient on this batch is unknown, so p.grad is None."""
    model, x, y = _problem()
    opt = HGPSO(model.parameters(), num_particles=3, seed=0, forget=0.0)
    opt.step(make_closure(opt, model, x, y))
    assert all(p.grad is not None for p in model.parameters())

    def worse():  # every particle is worse than its stored best: no best moves
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + 100.0
        loss.backward()
        return loss

    opt.step(worse)
    assert all(p.grad is None for p in model.parameters())
    opt.step(make_closure(opt, model, x, y))
    assert all(p.grad is not None for p in model.parameters())


def test_pso_leaves_no_gradient():
    model, x, y = _problem()
    opt = PSO(model.parameters(), num_particles=3, seed=0)
    opt.step(make_closure(opt, model, x, y))  # the closure's backward is wasted work
    assert all(p.grad is None for p in model.parameters())
