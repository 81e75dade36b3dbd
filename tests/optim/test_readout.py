"""The readout (issue 21, part 2): what the model holds between steps. ``readout="gbest"``
(the default) is the global best; ``"mean"`` the mean of the particles' positions (all, or
the ``readout_k`` with the lowest stored best losses) and of their floating-point buffers.
The readout never changes the swarm's trajectory; a failed step puts the last readout back;
``particle_spread`` against a hand computation; options checked, carried by checkpoints and
pickles (old ones load as ``"gbest"``). The sharded version: tests/distributed/test_readout.py.
"""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hgpso
from hgpso import HGPSO, PSO
from hgpso.optim.options import OPTIONS_KEY
from tests.helpers import TinyNet, assert_same_state, make_closure, tiny_batches


def _bn_net():
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))


def _train(readout="gbest", *, steps=4, path="closure", model=None, **kw):
    torch.manual_seed(0)
    model = TinyNet() if model is None else model
    opt = HGPSO(model.parameters(), num_particles=5, seed=3, readout=readout, **kw)
    for x, y in tiny_batches(steps):
        if path == "closure":
            opt.step(make_closure(opt, model, x, y))
        else:
            opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))
    return model, opt


def _positions(opt, model):
    return [opt.state[p]["position"] for p in model.parameters()]


@pytest.mark.parametrize("path", ["closure", "vectorized"])
def test_mean_readout_is_the_mean_of_the_positions(path):
    model, opt = _train("mean", path=path)
    for p, x in zip(model.parameters(), _positions(opt, model), strict=True):
        torch.testing.assert_close(p.detach(), x.sum(0) / 5, rtol=0, atol=1e-7)
        assert not torch.equal(p, opt.state[p]["gbest"])  # a different model than gbest


def test_readout_k_averages_the_k_lowest_stored_best_losses():
    model, opt = _train("mean", readout_k=2)
    losses = opt.state["swarm"]["pbest_losses"]
    best = sorted(range(5), key=lambda i: (losses[i].item(), i))[:2]
    for p, x in zip(model.parameters(), _positions(opt, model), strict=True):
        torch.testing.assert_close(p.detach(), (x[best[0]] + x[best[1]]) / 2, rtol=0, atol=1e-7)
    # k = N is the plain mean
    full = opt.particle_mean(k=5)
    for m, x in zip(full, _positions(opt, model), strict=True):
        torch.testing.assert_close(m, x.mean(0), rtol=0, atol=1e-7)


def test_ties_and_non_finite_losses_in_the_selection():
    from hgpso.optim import readout

    losses = torch.tensor([1.0, math.inf, 0.5, 1.0, math.nan])
    assert readout.selected(losses, 2).tolist() == [True, False, True, False, False]
    assert readout.selected(losses, 3).tolist() == [True, False, True, True, False]
    assert readout.selected(losses, 4).tolist() == [True, True, True, True, False]
    assert readout.selected(losses, None).all()


def test_the_readout_does_not_change_the_swarm():
    """Same seed, same batches: the swarm's state is bit for bit the same whatever the
    model holds between steps (the step scores positions, never the model's weights)."""
    _, a = _train("gbest")
    _, b = _train("mean", readout_k=3)
    sa, sb = a.state_dict(), b.state_dict()
    sa.pop(OPTIONS_KEY)
    sb.pop(OPTIONS_KEY)
    assert_same_state(sb, sa)


def test_switching_the_readout_between_steps():
    model, opt = _train("gbest", steps=2)
    for p in model.parameters():
        assert torch.equal(p, opt.state[p]["gbest"])
    opt.readout = "mean"
    x, y = tiny_batches(1, seed=9)[0]
    opt.step(make_closure(opt, model, x, y))
    for p, pos in zip(model.parameters(), _positions(opt, model), strict=True):
        torch.testing.assert_close(p.detach(), pos.mean(0), rtol=0, atol=1e-7)
    assert opt.state_dict()[OPTIONS_KEY]["readout"] == "mean"


def test_batchnorm_statistics_are_averaged_and_the_count_is_the_global_best():
    model, opt = _train("mean", model=_bn_net(), path="vectorized")
    swarm = opt.state["swarm"]
    rows, best = swarm["buffers"], swarm["gbest_buffers"]
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, rows["1.running_mean"].mean(0))
    torch.testing.assert_close(bn.running_var, rows["1.running_var"].mean(0))
    assert torch.equal(bn.num_batches_tracked, best["1.num_batches_tracked"])
    assert not torch.equal(bn.running_mean, best["1.running_mean"])


def test_write_readout_writes_another_readout_now_and_changes_no_option():
    """One run evaluated under several readouts: the mean (of all, of the k best, BN buffers
    averaged) and back to the global best, without a step; the options and the swarm stay."""
    model, opt = _train("gbest", model=_bn_net(), path="vectorized")
    state = copy.deepcopy(opt.state_dict())
    swarm = opt.state["swarm"]
    losses = swarm["pbest_losses"]
    best = sorted(range(5), key=lambda i: (losses[i].item(), i))[:2]
    opt.write_readout("mean")
    for p, x in zip(model.parameters(), _positions(opt, model), strict=True):
        torch.testing.assert_close(p.detach(), x.mean(0), rtol=0, atol=1e-7)
    torch.testing.assert_close(model[1].running_var, swarm["buffers"]["1.running_var"].mean(0))
    opt.write_readout("mean", k=2)
    for p, x in zip(model.parameters(), _positions(opt, model), strict=True):
        torch.testing.assert_close(p.detach(), (x[best[0]] + x[best[1]]) / 2, rtol=0, atol=1e-7)
    opt.write_readout()  # the configured one: the global best
    for p in model.parameters():
        assert torch.equal(p, opt.state[p]["gbest"])
    assert torch.equal(model[1].running_mean, swarm["gbest_buffers"]["1.running_mean"])
    assert (opt.readout, opt.readout_k) == ("gbest", None)
    assert_same_state(opt.state_dict(), state)
    with pytest.raises(ValueError, match="readout='mean' only"):
        opt.write_readout("gbest", k=2)
    with pytest.raises(ValueError, match="readout_k=6 exceeds num_particles=5"):
        opt.write_readout("mean", k=6)
    with pytest.raises(ValueError, match="invalid readout"):
        opt.write_readout("best")


def test_mean_of_bfloat16_particles_is_summed_in_float32():
    torch.manual_seed(0)
    model = TinyNet().to(torch.bfloat16)
    opt = HGPSO(model.parameters(), num_particles=7, seed=1, readout="mean", init_spread=0.3)
    x, y = tiny_batches(1)[0]
    opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x.bfloat16(), y))
    for p, pos in zip(model.parameters(), _positions(opt, model), strict=True):
        assert p.dtype == torch.bfloat16
        assert torch.equal(p, (pos.float().sum(0) / 7).bfloat16())


def test_a_failed_step_puts_the_last_mean_back():
    model, opt = _train("mean", steps=3)
    before = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())

    def raising():
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 6)), torch.zeros(4, dtype=torch.long)).backward()
        raise RuntimeError("data loader died")

    with pytest.raises(RuntimeError, match="data loader died"):
        opt.step(raising)
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
    assert_same_state(opt.state_dict(), state)


def test_particle_spread_against_a_hand_computation():
    model, opt = _train("gbest")
    xs = _positions(opt, model)
    mean = [x.double().mean(0) for x in xs]
    elements = sum(m.numel() for m in mean)
    to_mean = sum(float((x.double() - m).square().sum()) for x, m in zip(xs, mean, strict=True))
    g_to_mean = sum(
        float((p.detach().double() - m).square().sum())
        for p, m in zip(model.parameters(), mean, strict=True)
    )
    norm = sum(float(m.square().sum()) for m in mean)
    got = opt.particle_spread()
    assert got["rms_to_mean"] == pytest.approx(math.sqrt(to_mean / (5 * elements)), rel=1e-5)
    assert got["gbest_rms_to_mean"] == pytest.approx(math.sqrt(g_to_mean / elements), rel=1e-5)
    assert got["mean_rms"] == pytest.approx(math.sqrt(norm / elements), rel=1e-5)
    assert got["rms_to_mean"] > 0


def test_a_collapsed_swarm_has_no_spread():
    torch.manual_seed(0)
    model = TinyNet()
    opt = PSO(model.parameters(), num_particles=3, init_spread=0.0, max_velocity=None)
    opt.step(lambda: F.cross_entropy(model(torch.randn(4, 6)), torch.zeros(4, dtype=torch.long)))
    # all particles start on the initial model and PSO's pulls are zero there (up to the
    # rounding of a sum of three equal numbers divided by three)
    assert opt.particle_spread()["rms_to_mean"] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"readout": "median"}, "invalid readout: 'median', expected 'gbest' or 'mean'"),
        ({"readout": None}, "invalid readout"),
        ({"readout_k": 0}, "readout_k must be None or a positive int"),
        ({"readout_k": True}, "readout_k must be None or a positive int"),
        ({"readout_k": 2.0}, "readout_k must be None or a positive int"),
        ({"readout": "mean", "readout_k": 6}, "readout_k=6 exceeds num_particles=5"),
    ],
)
def test_bad_readout_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HGPSO(TinyNet().parameters(), num_particles=5, **kwargs)


def test_a_refused_assignment_changes_nothing():
    _, opt = _train("mean", readout_k=2, steps=1)
    with pytest.raises(ValueError, match="readout_k=6 exceeds num_particles=5"):
        opt.readout_k = 6
    with pytest.raises(ValueError, match="invalid readout"):
        opt.readout = "best"
    with pytest.raises(ValueError, match="readout_k=9 exceeds"):
        opt.particle_mean(k=9)
    assert (opt.readout, opt.readout_k) == ("mean", 2)


def test_checkpoints_and_pickles_carry_the_readout():
    model, opt = _train("mean", readout_k=3, steps=2)
    fresh = HGPSO(model.parameters(), num_particles=5, seed=3)
    fresh.load_state_dict(opt.state_dict())
    assert (fresh.readout, fresh.readout_k) == ("mean", 3)
    for copy_ in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert (copy_.readout, copy_.readout_k) == ("mean", 3)


def test_old_checkpoints_and_pickles_without_the_readout_are_gbest():
    # "sgd": the versions before had no gradient option, so their swarms are "sgd" ones
    model, opt = _train("gbest", steps=2, gradient="sgd")
    sd = opt.state_dict()
    for key in ("readout", "readout_k"):
        del sd[OPTIONS_KEY][key]
    fresh = HGPSO(model.parameters(), num_particles=5, seed=3, gradient="sgd")
    fresh.load_state_dict(sd)
    assert (fresh.readout, fresh.readout_k) == ("gbest", None)
    # a pickle of the version before: swarm options without the readout (nor the gradient)
    for key in ("readout", "readout_k", "gradient"):
        del opt.defaults[OPTIONS_KEY][key]
    model2, copy_ = pickle.loads(pickle.dumps((model, opt)))
    assert (copy_.readout, copy_.readout_k, copy_.gradient) == ("gbest", None, "sgd")
    x, y = tiny_batches(1, seed=5)[0]
    copy_.step(make_closure(copy_, model2, x, y))  # and it steps
    assert copy_.state["swarm"]["step"] == 3
