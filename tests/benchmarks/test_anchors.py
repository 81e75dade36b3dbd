"""The accuracy-at-1x-compute yardsticks: Lookahead against hand-computed steps, SWA's
average against the weights it averaged, and both (with AdamW and HG-PSO's Adam term) through
the benchmark CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.anchors import Lookahead, StochasticWeightAveraging
from benchmarks.train import main


def _half_square(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x**2).sum()  # gradient = x


def _steps(opt, x: torch.Tensor, n: int) -> list[float]:
    out = []
    for _ in range(n):
        opt.zero_grad()
        _half_square(x).backward()
        opt.step()
        out.append(x.detach().tolist())
    return out


def test_lookahead_two_steps_by_hand():
    # SGD lr 0.5 on x^2/2 halves x each step; k=2, alpha=0.5:
    # fast 1 -> 0.5 -> 0.25, then slow = 1 + 0.5 (0.25 - 1) = 0.625 and fast restarts there;
    # fast 0.625 -> 0.3125 -> 0.15625, slow = 0.625 + 0.5 (0.15625 - 0.625) = 0.390625
    x = torch.tensor([1.0], requires_grad=True)
    opt = Lookahead(torch.optim.SGD([x], lr=0.5), k=2, alpha=0.5)
    assert _steps(opt, x, 4) == [[0.5], [0.625], [0.3125], [0.390625]]
    assert float(opt.slow[0][0]) == 0.390625


def test_lookahead_defaults_sync_every_fifth_step_around_adam():
    # k=5, alpha=0.5: four Adam steps exactly as Adam alone, the fifth pulls half way back
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    la = Lookahead(torch.optim.Adam([x], lr=0.1))
    adam = torch.optim.Adam([y], lr=0.1)
    for _ in range(4):
        _steps(la, x, 1)
        _steps(adam, y, 1)
        assert torch.equal(x, y)
    _steps(la, x, 1)
    _steps(adam, y, 1)
    start = torch.tensor([1.0, -2.0])
    assert torch.allclose(x.detach(), start + 0.5 * (y.detach() - start))
    # Adam's moments are kept: the sixth step is Adam's step from the synchronised point
    state = {k: v.clone() for k, v in la.state[x].items()}
    _steps(la, x, 1)
    assert la.state[x]["step"] == state["step"] + 1


def test_lookahead_refuses_bad_settings_and_round_trips():
    x = torch.tensor([1.0], requires_grad=True)
    for k, alpha in ((0, 0.5), (5, 0.0), (5, 1.5)):
        with pytest.raises(ValueError):
            Lookahead(torch.optim.SGD([x], lr=0.1), k=k, alpha=alpha)
    opt = Lookahead(torch.optim.SGD([x], lr=0.5), k=3)
    _steps(opt, x, 2)
    state = opt.state_dict()
    x2 = torch.tensor([float(x.detach())], requires_grad=True)
    opt2 = Lookahead(torch.optim.SGD([x2], lr=0.5), k=3)
    opt2.load_state_dict(state)
    assert _steps(opt, x, 2) == _steps(opt2, x2, 2)


def test_swa_averages_the_weights_of_its_averaging_steps():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    # start at step 2, every 2 steps, 7 steps: averages after steps 4, 6 and 7 (the last)
    swa = StochasticWeightAveraging(
        base, model, swa_lr=0.1, start_step=2, every=2, total_steps=7, anneal_updates=1
    )
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    seen = {}
    for t in range(1, 8):
        if t == 1:
            assert swa.evaluated_model(lambda: []) == (model, 0)  # nothing averaged yet
        swa.zero_grad()
        F.mse_loss(model(x), y).backward()
        swa.step()
        seen[t] = model.weight.detach().clone()
    assert swa.num_averaged == 3
    averaged, passes = swa.evaluated_model(lambda: [])
    assert passes == 0 and averaged is not model  # no BatchNorm: nothing to recompute
    expected = (seen[4] + seen[6] + seen[7]) / 3
    assert torch.allclose(averaged.weight, expected, atol=1e-7)
    assert base.param_groups[0]["lr"] == pytest.approx(0.1)  # swa_lr equals the rate here


def test_swa_recomputes_batch_norm_statistics_once_per_average():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
    swa = StochasticWeightAveraging(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        swa_lr=0.05,
        start_step=0,
        every=1,
        total_steps=2,
    )
    batches = [(torch.randn(16, 2) * 3 + 5, torch.zeros(16)) for _ in range(3)]
    for x, _ in batches[:2]:
        swa.zero_grad()
        model(x).sum().backward()
        swa.step()
    averaged, passes = swa.evaluated_model(lambda: iter(batches))
    assert passes == 3
    inputs = torch.cat([x for x, _ in batches])
    feats = averaged[0](inputs).detach()
    bn = averaged[1]
    assert torch.allclose(bn.running_mean, feats.mean(0), atol=1e-5)
    assert swa.evaluated_model(lambda: iter(batches))[1] == 0  # unchanged average: cached


def test_the_training_loop_evaluates_the_swa_average():
    from benchmarks.lit import BenchModule
    from benchmarks.registry import DEFAULT_HPARAMS

    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    for name in ("swa", "adam"):
        model = nn.Linear(3, 2)
        module = BenchModule(model, name, DEFAULT_HPARAMS[name], steps_per_epoch=2, total_steps=4)
        opt = module.configure_optimizers()
        for _ in range(4):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        if name == "swa":
            assert opt.num_averaged == 1  # the last quarter of 4 steps: the last step
            assert module.evaluated_model() is opt.averaged.module
        else:
            assert module.evaluated_model() is model


def test_cli_runs_the_anchors_and_hgpso_adam(tmp_path):
    out = tmp_path / "out"
    args = ["--dataset", "digits", "--optimizers", "adamw", "swa", "lookahead", "hgpso-adam",
            "--seeds", "0", "--epochs", "1", "--evals-per-epoch", "2",
            "--hgpso-adam-num-particles", "2", "--threads", "1", "--no-progress",
            "--no-figures", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    runs = {o: json.loads((out / "runs" / f"{o}-seed0.json").read_text()) for o in args[3:7]}
    for o, r in runs.items():
        per = 2 if o == "hgpso-adam" else 1
        assert r["forward_passes"] == r["backward_passes"] == per * r["steps"], o
        assert 0.0 <= r["test_accuracy"] <= 1.0
    assert runs["swa"]["hparams"]["swa_start"] == 0.75
    assert runs["lookahead"]["hparams"] == {"lr": 1e-3, "k": 5, "alpha": 0.5}
    report = (out / "report.md").read_text()
    for label in ("| AdamW |", "| SWA (SGD) |", "| Lookahead (Adam) |", "| HG-PSO (adam) |"):
        assert label in report
