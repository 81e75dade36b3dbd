"""The closure loop and the vectorized torch.func path score particles the same way."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hgpso
from hgpso import HGPSO, PSO
from tests.helpers import TinyNet, assert_same_state, make_closure


class SmallCNN(nn.Module):
    def __init__(self, dropout: float = 0.0, batchnorm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.BatchNorm2d(4) if batchnorm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.norm(self.conv(x))).flatten(1)))


def _closure_run(model, x, y, steps, cls=HGPSO, **kw):
    opt = cls(model.parameters(), **kw)
    for _ in range(steps):
        opt.step(make_closure(opt, model, x, y))
    return opt


def _vector_run(model, x, y, steps, strategy, cls=HGPSO, chunk_size=None, **kw):
    opt = cls(model.parameters(), **kw)
    for _ in range(steps):
        opt.step(
            hgpso.vectorized_closure(
                model, F.cross_entropy, x, y, strategy=strategy, chunk_size=chunk_size
            )
        )
    return opt


# what state["swarm"] must hold for the comparison below to mean anything
SWARM_KEYS = {
    "step", "pbest_losses", "gbest_index", "gbest_loss", "rng_state", "kernel_seed",
    "success_rate", "loss_ema", "best_loss_ema", "steps_since_improvement", "lr_scale",
    "nan_reseeds", "evaluations", "buffers", "gbest_buffers",
}  # fmt: skip


def _assert_same_swarm(a, b, model_a, model_b, atol=1e-5, rtol=1e-4):
    """All of both optimizers' state, the way torch's Adam parity tests compare all state:
    ``state_dict()`` entry by entry (each parameter's position, velocity, pbest and gbest;
    every entry of ``state["swarm"]``: losses, bests, per-particle, pbest and gbest buffers,
    the adaptation scalars, the counters, the random stream; the param groups), then the
    model (the global best's weights and buffers). Floating-point values within
    ``atol``/``rtol`` (the paths round differently), everything else equal."""
    sa, sb = a.state_dict(), b.state_dict()
    assert SWARM_KEYS <= sa["state"]["swarm"].keys(), SWARM_KEYS - sa["state"]["swarm"].keys()
    assert_same_state(sb, sa, "state_dict", rtol=rtol, atol=atol)
    assert_same_state(model_b.state_dict(), model_a.state_dict(), "model", rtol=rtol, atol=atol)
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        if not pa.requires_grad:
            assert pa not in a.state and pb not in b.state


@pytest.mark.parametrize("batchnorm", [False, True], ids=["plain", "batchnorm"])
@pytest.mark.parametrize("strategy,chunk_size", [("vmap", None), ("vmap", 2), ("loop", None)])
@pytest.mark.parametrize("cls", [HGPSO, PSO])
def test_paths_give_the_same_swarm(strategy, chunk_size, cls, batchnorm):
    torch.manual_seed(0)
    model = SmallCNN(batchnorm=batchnorm)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 5, (16,))
    model2 = copy.deepcopy(model)
    # forget < 1 keeps pbest buffers; lr_patience 1 makes the adaptation move lr_scale
    kw = {"num_particles": 5, "seed": 11, "forget": 0.5, "lr_patience": 1, "tol": 0.5}
    if cls is HGPSO:
        # the paths are compared on the "sgd" term: with the BatchNorm the conv's bias has a
        # gradient of rounding noise only, which "adam"'s normalized step turns into moves
        # of about lr (the "adam" paths: tests/optim/test_gradient_term.py)
        kw["gradient"] = "sgd"
    a = _closure_run(model, x, y, 5, cls=cls, **kw)
    b = _vector_run(model2, x, y, 5, strategy, cls=cls, chunk_size=chunk_size, **kw)
    swarm = a.state["swarm"]
    assert swarm["lr_scale"] < 1.0 and swarm["evaluations"] == 25  # the adaptation ran
    assert bool(swarm["buffers"]) == bool(swarm["pbest_buffers"]) == batchnorm
    _assert_same_swarm(a, b, model, model2)


def test_vectorized_with_frozen_parameter_and_groups():
    torch.manual_seed(0)
    model = TinyNet()
    model.fc1.bias.requires_grad_(False)
    model2 = copy.deepcopy(model)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))

    def groups(m):
        return [
            {"params": [m.fc1.weight, m.fc1.bias], "lr": 0.2},
            {"params": m.fc2.parameters()},
        ]

    a = HGPSO(groups(model), num_particles=3, seed=2)
    b = HGPSO(groups(model2), num_particles=3, seed=2)
    for _ in range(3):
        a.step(make_closure(a, model, x, y))
        b.step(hgpso.vectorized_closure(model2, F.cross_entropy, x, y, strategy="vmap"))
    _assert_same_swarm(a, b, model, model2)


def test_dropout_is_independent_per_particle_under_vmap():
    torch.manual_seed(0)
    model = SmallCNN(dropout=0.5)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    opt = HGPSO(model.parameters(), num_particles=4, init_spread=0.0, seed=0)
    # init_spread 0: all particles hold identical weights, so only dropout can tell them apart
    opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y, strategy="vmap"))
    # every particle started at the same place; distinct losses prove distinct dropout masks
    losses = opt.state["swarm"]["pbest_losses"]
    assert len(set(losses.tolist())) == 4


def test_batchnorm_without_running_stats_keeps_nothing_per_particle():
    """torch.func.replace_all_batch_norm_modules_ stays an option (batch statistics only):
    the swarm then has no buffer to keep per particle, and both paths agree."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    torch.func.replace_all_batch_norm_modules_(model)
    model2 = copy.deepcopy(model)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    # "sgd": the bias before the BatchNorm has a gradient of rounding noise only, which
    # "adam"'s normalized step turns into moves of about lr
    kw = {"num_particles": 3, "seed": 4, "gradient": "sgd"}
    a = _closure_run(model, x, y, 2, **kw)
    b = _vector_run(model2, x, y, 2, "vmap", **kw)
    _assert_same_swarm(a, b, model, model2)
    assert a.state["swarm"]["buffers"] == {} and b.state["swarm"]["buffers"] == {}


def test_parameter_not_in_model_is_a_clear_error():
    model = TinyNet()
    other = TinyNet()
    opt = HGPSO(other.parameters(), num_particles=2)
    with pytest.raises(ValueError, match="not a parameter of the model"):
        opt.step(
            hgpso.vectorized_closure(
                model, F.cross_entropy, torch.randn(4, 6), torch.randint(0, 3, (4,))
            )
        )


def test_non_scalar_loss_fn_is_rejected():
    model = TinyNet()
    opt = HGPSO(model.parameters(), num_particles=2)
    per_sample = lambda out, t: F.cross_entropy(out, t, reduction="none")  # noqa: E731
    with pytest.raises(Exception, match="scalar"):
        opt.step(
            hgpso.vectorized_closure(
                model, per_sample, torch.randn(4, 6), torch.randint(0, 3, (4,)), strategy="loop"
            )
        )


def test_direct_call_returns_current_loss():
    model = TinyNet()
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    loss = hgpso.vectorized_closure(model, F.cross_entropy, x, y)()
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y).detach())


def test_wrapped_vectorized_closure_still_vectorizes():
    """Frameworks wrap closures (Lightning hands step a functools.partial)."""
    import functools

    torch.manual_seed(0)
    model = TinyNet()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    opt = HGPSO(model.parameters(), num_particles=4, seed=0)
    vc = hgpso.vectorized_closure(model, F.cross_entropy, x, y)
    calls = []

    def wrapper(closure):
        calls.append(1)
        return closure()

    opt.step(functools.partial(wrapper, vc))
    assert len(calls) == 1  # one call scored all four particles


@pytest.mark.parametrize(
    "kwargs,match", [({"chunk_size": 0}, "chunk_size"), ({"strategy": "fast"}, "strategy")]
)
def test_vectorized_closure_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hgpso.vectorized_closure(
            TinyNet(),
            F.cross_entropy,
            torch.randn(2, 6),
            torch.zeros(2, dtype=torch.long),
            **kwargs,
        )


def test_auto_strategy_follows_the_measured_rule():
    vc = hgpso.vectorized_closure(
        TinyNet(), F.cross_entropy, torch.randn(2, 6), torch.zeros(2, dtype=torch.long)
    )
    assert vc.resolved_strategy(torch.device("cpu")) == "loop"
    assert vc.resolved_strategy(torch.device("cuda")) == "vmap"
    forced = hgpso.vectorized_closure(
        TinyNet(),
        F.cross_entropy,
        torch.randn(2, 6),
        torch.zeros(2, dtype=torch.long),
        strategy="vmap",
    )
    assert forced.resolved_strategy(torch.device("cpu")) == "vmap"
