"""Mixed precision: bfloat16 autocast trains the swarm (closure path, vectorized paths, a real
Lightning ``precision="bf16-mixed"`` run); fp16 gradient scaling (``torch.amp.GradScaler``,
Lightning ``16-mixed`` with a scaler) is refused with an error that names bfloat16, before
anything moves."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hgpso
from hgpso import HGPSO
from tests.helpers import TinyNet, make_closure

pytest.importorskip("lightning")
import lightning.pytorch as pl
from lightning.pytorch.plugins import MixedPrecision


def _problem():
    torch.manual_seed(0)
    return TinyNet(), torch.randn(32, 6), torch.randint(0, 3, (32,))


def _bf16_losses(model, opt, x, y):
    """Each particle's bf16-autocast loss at the swarm's current positions, by hand."""
    probe = copy.deepcopy(model)
    params = list(probe.parameters())
    out = []
    for i in range(opt.num_particles):
        with torch.no_grad():
            for q, p in zip(params, model.parameters(), strict=True):
                q.copy_(opt.state[p]["position"][i])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out.append(F.cross_entropy(probe(x), y).float())
    return torch.stack(out)


def _bf16_closure(opt, model, x, y, dtypes):
    def closure():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
            dtypes.append(logits.dtype)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        return loss

    return closure


def test_bf16_autocast_in_the_closure_scores_bf16_losses_and_keeps_fp32_state():
    model, x, y = _problem()
    opt = HGPSO(model.parameters(), num_particles=4, seed=0)
    opt.step(make_closure(opt, model, x, y))  # particles spread out
    dtypes = []
    for _ in range(3):
        expected = _bf16_losses(model, opt, x, y)
        best = opt.step(_bf16_closure(opt, model, x, y, dtypes))
        assert torch.isfinite(best)
        assert best == expected.min()  # the same bf16 computation, particle by particle
        b = opt.state["swarm"]["gbest_index"]
        assert opt.state["swarm"]["gbest_loss"] == expected[b].item()
    assert set(dtypes) == {torch.bfloat16}  # autocast really ran the layers in bf16
    for p, g in zip(model.parameters(), opt.gbest(), strict=True):
        assert p.dtype == torch.float32 and opt.state[p]["position"].dtype == torch.float32
        assert torch.equal(p.detach(), g)


def test_autocast_around_the_step_equals_autocast_inside_the_closure():
    """An autocast region around step() caches each weight's bf16 copy by parameter; the
    step turns that cache off while it scores particles, so every particle is scored with
    its own weights (the swarm equals the one autocast inside the closure gives)."""
    model, x, y = _problem()
    other = copy.deepcopy(model)
    a = HGPSO(model.parameters(), num_particles=4, seed=0)
    b = HGPSO(other.parameters(), num_particles=4, seed=0)
    for opt, m in ((a, model), (b, other)):
        opt.step(make_closure(opt, m, x, y))
    for _ in range(3):
        expected = _bf16_losses(model, a, x, y)
        best_a = a.step(_bf16_closure(a, model, x, y, []))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            best_b = b.step(make_closure(b, other, x, y))
        assert best_a == best_b == expected.min()
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q)
        assert torch.equal(a.state[p]["position"], b.state[q]["position"])


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_bf16_autocast_around_a_vectorized_step(strategy):
    model, x, y = _problem()
    opt = HGPSO(model.parameters(), num_particles=4, seed=0)
    opt.step(make_closure(opt, model, x, y))
    dtypes = []
    model.fc2.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    for _ in range(3):
        expected = _bf16_losses(model, opt, x, y)
        closure = hgpso.vectorized_closure(model, F.cross_entropy, x, y, strategy=strategy)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            best = opt.step(closure)
        if strategy == "loop":  # the eager forward pass, particle by particle: exact
            assert best == expected.min()
        else:  # batched bf16 matmuls round differently
            torch.testing.assert_close(best, expected.min(), rtol=5e-3, atol=5e-3)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    for p, g in zip(model.parameters(), opt.gbest(), strict=True):
        assert opt.state[p]["position"].dtype == torch.float32
        assert torch.equal(p.detach(), g)


# ------------------------------------------------------------------------ Lightning, real runs
class _Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        self.losses, self.dtypes = [], []

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.dtypes.append(logits.dtype)
        loss = F.cross_entropy(logits, y)
        self.losses.append(loss.detach().float())
        return loss

    def configure_optimizers(self):
        return HGPSO(self.parameters(), lr=0.05, num_particles=3, seed=0)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
        return DataLoader(TensorDataset(x, y), batch_size=16)


def _trainer(tmp_path, **kw):
    return pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kw,
    )


def _check_trained_in_bf16(module, trainer):
    opt = trainer.optimizers[0]
    assert isinstance(opt, HGPSO) and opt.state["swarm"]["step"] == 4
    assert set(module.dtypes) == {torch.bfloat16}  # the forward passes ran under autocast
    assert len(module.losses) == 4 * 3  # 3 particles scored per step
    assert all(torch.isfinite(torch.stack(module.losses)))
    for p, g in zip(module.parameters(), opt.gbest(), strict=True):
        assert p.dtype == torch.float32
        assert torch.equal(p.detach(), g)  # the module holds the global best


def test_lightning_bf16_mixed_trains_the_swarm(tmp_path):
    torch.manual_seed(0)
    module = _Module()
    trainer = _trainer(tmp_path, precision="bf16-mixed")
    trainer.fit(module)
    _check_trained_in_bf16(module, trainer)


def test_lightning_16_mixed_on_cpu_runs_as_bf16(tmp_path):
    """On CPU Lightning itself replaces precision="16-mixed" by "bf16-mixed" (no scaler)."""
    torch.manual_seed(0)
    module = _Module()
    with pytest.warns(UserWarning, match="bf16-mixed"):
        trainer = _trainer(tmp_path, precision="16-mixed")
    trainer.fit(module)
    _check_trained_in_bf16(module, trainer)


# --------------------------------------------------------------- fp16 GradScaler: refused
def test_lightning_16_mixed_with_a_grad_scaler_is_refused_naming_bf16(tmp_path):
    """Lightning's 16-mixed plugin with a GradScaler (what it builds on CUDA) runs the closure
    itself and then calls GradScaler.step(optimizer) without one."""
    torch.manual_seed(0)
    module = _Module()
    start = copy.deepcopy(module.state_dict())
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = _trainer(tmp_path, plugins=[plugin])
    with pytest.raises(RuntimeError, match="does not support fp16 gradient scaling") as info:
        trainer.fit(module)
    assert "precision='bf16-mixed'" in str(info.value)
    assert "torch.bfloat16" in str(info.value)
    opt = trainer.optimizers[0]
    assert "swarm" not in opt.state  # refused before the swarm was even created
    for k, v in module.state_dict().items():
        assert torch.equal(v, start[k])


def _fp16_scaled_closure(opt, model, x, y, scaler, path):
    """What a user would hand to ``GradScaler.step``: on the closure path a closure whose
    backward runs on the scaled fp16 loss; on the vectorized paths the library's closure."""
    if path != "closure":
        return hgpso.vectorized_closure(model, F.cross_entropy, x, y, strategy=path)

    def closure():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        return loss

    return closure


def _plain_closure(opt, model, x, y, path):
    if path == "closure":
        return make_closure(opt, model, x, y)
    return hgpso.vectorized_closure(model, F.cross_entropy, x, y, strategy=path)


def _assert_same(after, before, where="state_dict"):
    """Two (nested) optimizer state dicts equal entry by entry, tensors bit for bit."""
    if isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor) and torch.equal(after, before), where
    elif isinstance(before, dict):
        assert isinstance(after, dict) and after.keys() == before.keys(), where
        for key, value in before.items():
            _assert_same(after[key], value, f"{where}[{key!r}]")
    elif isinstance(before, (list, tuple)):
        assert type(after) is type(before) and len(after) == len(before), where
        for k, (a, b) in enumerate(zip(after, before, strict=True)):
            _assert_same(a, b, f"{where}[{k}]")
    else:
        assert after == before, where


@pytest.mark.parametrize("path", ["closure", "loop", "vmap"])
def test_grad_scaler_step_is_refused_naming_bf16_and_nothing_changes(path):
    """``GradScaler.step(opt, closure)`` is refused before anything moves, whether the
    closure is a plain one (backward on the scaled loss) or an ``hgpso.vectorized_closure``
    (``"loop"`` or ``"vmap"``): the error names bf16; weights, gradients and every entry of
    the optimizer's state are as they were, and the optimizer keeps working."""
    model, x, y = _problem()
    opt = HGPSO(model.parameters(), num_particles=3, seed=0)
    opt.step(_plain_closure(opt, model, x, y, path))
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    grads = [p.grad.clone() for p in model.parameters()]  # the global best's, by the step
    scaler = torch.amp.GradScaler("cpu")
    closure = _fp16_scaled_closure(opt, model, x, y, scaler, path)

    # GradScaler.step needs a scale() before it (with a closure, torch itself refuses the
    # first call: "Attempted step but _scale is None"): a loop that scaled once already
    scaler.scale(torch.ones(()))
    with pytest.raises(RuntimeError, match="does not support fp16 gradient scaling") as info:
        scaler.step(opt, closure)
    assert "torch.autocast(device_type, dtype=torch.bfloat16)" in str(info.value)
    assert "precision='bf16-mixed'" in str(info.value)
    assert "Nothing was changed." in str(info.value)
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[0][k])
    for p, g in zip(model.parameters(), grads, strict=True):
        assert p.grad is not None and torch.equal(p.grad, g)
    _assert_same(opt.state_dict(), before[1])
    # the optimizer still steps without the scaler, and a disabled scaler passes through
    assert torch.isfinite(opt.step(_plain_closure(opt, model, x, y, path)))
    off = torch.amp.GradScaler("cpu", enabled=False)
    assert torch.isfinite(off.step(opt, _plain_closure(opt, model, x, y, path)))
    assert opt.state["swarm"]["step"] == before[1]["state"]["swarm"]["step"] + 2


def test_gradient_clipping_by_lightning_keeps_working_in_bf16(tmp_path):
    """The optimizer tells GradScaler it handles scaling (to refuse it) only outside a step,
    so Lightning's precision plugin still clips each particle's gradients inside one."""
    torch.manual_seed(0)
    module = _Module()
    trainer = _trainer(tmp_path, precision="bf16-mixed", gradient_clip_val=1e-3)
    trainer.fit(module)
    _check_trained_in_bf16(module, trainer)
    # p.grad is the global best's gradient as the closure left it: clipped to norm 1e-3
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in module.parameters()]))
    assert 0 < norm <= 1e-3 * (1 + 1e-3)
    assert trainer.optimizers[0]._step_supports_amp_scaling  # outside a step
