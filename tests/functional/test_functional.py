"""The update math against numbers worked out by hand."""

import math

import pytest
import torch

from hgpso import functional as F


def _swarm():
    # N = 2 particles of a 1-element parameter
    x = torch.tensor([[1.0], [-2.0]])
    v = torch.tensor([[0.5], [0.1]])
    p = torch.tensor([[2.0], [0.0]])
    g = torch.tensor([3.0])
    grad = torch.tensor([[0.4], [-1.0]])
    r1 = torch.tensor([[0.25], [0.5]])
    r2 = torch.tensor([[0.5], [1.0]])
    return x, v, p, g, grad, r1, r2


def test_hgpso_update_matches_hand_computation():
    x, v, p, g, grad, r1, r2 = _swarm()
    F.hgpso_update_(
        [x], [v], [p], [g], [grad], [r1], [r2], lr=0.1, inertia=0.9, cognitive=2.0, social=1.0
    )
    # particle 0: 0.9*0.5 + 2*0.25*(2-1) + 1*0.5*(3-1) - 0.1*0.4 = 1.91
    # particle 1: 0.9*0.1 + 2*0.5*(0+2) + 1*1.0*(3+2) + 0.1*1.0 = 7.19
    torch.testing.assert_close(v, torch.tensor([[1.91], [7.19]]))
    torch.testing.assert_close(x, torch.tensor([[2.91], [5.19]]))


def test_velocity_clamp_applies_before_position_update():
    x, v, p, g, grad, r1, r2 = _swarm()
    F.hgpso_update_(
        [x],
        [v],
        [p],
        [g],
        [grad],
        [r1],
        [r2],
        lr=0.1,
        inertia=0.9,
        cognitive=2.0,
        social=1.0,
        max_velocity=2.0,
    )
    torch.testing.assert_close(v, torch.tensor([[1.91], [2.0]]))
    torch.testing.assert_close(x, torch.tensor([[2.91], [0.0]]))


def test_no_gradient_is_plain_pso():
    x, v, p, g, _, r1, r2 = _swarm()
    F.hgpso_update_(
        [x], [v], [p], [g], None, [r1], [r2], lr=0.1, inertia=0.9, cognitive=2.0, social=1.0
    )
    torch.testing.assert_close(v, torch.tensor([[1.95], [7.09]]))


def test_mismatched_lists_are_rejected():
    x, v, p, g, grad, r1, r2 = _swarm()
    with pytest.raises(ValueError, match="equal lengths"):
        F.hgpso_update_(
            [x],
            [v, v],
            [p],
            [g],
            [grad],
            [r1],
            [r2],
            lr=0.1,
            inertia=0.9,
            cognitive=2.0,
            social=1.0,
        )


def test_accept_personal_bests_classic_and_invalid():
    x = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    pbest = torch.zeros(3, 2)
    stored = torch.tensor([0.5, 0.5, math.inf])
    losses = torch.tensor([0.4, 0.6, math.nan])
    valid = torch.isfinite(losses)
    improved = F.accept_personal_bests_([x], [pbest], stored, losses, valid, forget=0.0)
    assert improved.tolist() == [True, False, False]
    torch.testing.assert_close(stored, torch.tensor([0.4, 0.5, math.inf]))
    torch.testing.assert_close(pbest, torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))


def test_forget_lifts_stale_best_toward_current_loss():
    x = torch.tensor([[7.0]])
    pbest = torch.tensor([[0.0]])
    stored = torch.tensor([1.0])
    # current loss 2.0 is worse; with forget 0.25 the stored best becomes 1.25, still better
    improved = F.accept_personal_bests_(
        [x], [pbest], stored, torch.tensor([2.0]), torch.tensor([True]), forget=0.25
    )
    assert not improved.item()
    torch.testing.assert_close(stored, torch.tensor([1.25]))
    # forget 1.0: the stored best equals the current loss, which is then accepted
    improved = F.accept_personal_bests_(
        [x], [pbest], stored, torch.tensor([2.0]), torch.tensor([True]), forget=1.0
    )
    assert improved.item()
    torch.testing.assert_close(pbest, torch.tensor([[7.0]]))


def test_success_adaptive_coefficients():
    assert F.success_adaptive_coefficients(1.0, inertia=0.8, cognitive=1.0, social=2.0) == (
        pytest.approx(0.8),
        pytest.approx(1.0),
        pytest.approx(2.0),
    )
    assert F.success_adaptive_coefficients(0.5, inertia=0.8, cognitive=1.0, social=2.0) == (
        pytest.approx(0.6),
        pytest.approx(0.75),
        pytest.approx(2.5),
    )
    assert F.success_adaptive_coefficients(0.0, inertia=0.8, cognitive=1.0, social=2.0) == (
        pytest.approx(0.4),
        pytest.approx(0.5),
        pytest.approx(3.0),
    )
    with pytest.raises(ValueError):
        F.success_adaptive_coefficients(math.nan, inertia=1, cognitive=1, social=1)


def test_perturb_adds_scaled_noise_to_the_center():
    t = torch.empty(2, 3)
    center = torch.tensor([1.0, -2.0, 0.5])
    noise = torch.tensor([[1.0, 0.0, -1.0], [2.0, 4.0, 0.0]])
    F.perturb_([t], [center], 0.5, [noise])
    torch.testing.assert_close(t, torch.tensor([[1.5, -2.0, 0.0], [2.0, 0.0, 0.5]]))
