"""The benchmark's models: output shapes, parameter counts, and one vectorized HG-PSO step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hgpso
from benchmarks.models import build_model, count_parameters


@pytest.mark.parametrize(
    ("dataset", "shape", "classes", "params"),
    [
        ("fashion-mnist", (1, 28, 28), 10, 206_922),
        ("svhn", (3, 32, 32), 10, 620_362),
        ("digits", (1, 8, 8), 10, 4_538),
        ("tiny-imagenet", (3, 64, 64), 200, 11_271_432),
    ],
)
def test_model_shapes_and_one_vectorized_swarm_step(dataset, shape, classes, params):
    torch.manual_seed(0)
    model = build_model(dataset, classes, shape[0])
    assert count_parameters(model) == params
    x, y = torch.randn(1, *shape), torch.randint(0, classes, (1,))
    assert model(x).shape == (1, classes)
    opt = hgpso.HGPSO(model.parameters(), lr=0.01, num_particles=2, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    loss = opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))
    assert torch.isfinite(loss)
    # after one step the model holds the global best, which is one of the scored particles
    # (particle 0 is the initial weights), so the loss on this batch cannot be worse
    with torch.no_grad():
        assert (
            F.cross_entropy(model(x), y)
            <= F.cross_entropy(
                torch.func.functional_call(
                    model,
                    dict(zip([n for n, _ in model.named_parameters()], before, strict=True)),
                    (x,),
                ),
                y,
            )
            + 1e-5
        )


def test_resnet_batchnorm_variant_is_refused_by_the_vectorized_path():
    model = build_model("tiny-imagenet", 5, 3, norm="batch")
    opt = hgpso.HGPSO(model.parameters(), num_particles=2, seed=0)
    x, y = torch.randn(1, 3, 64, 64), torch.randint(0, 5, (1,))
    with pytest.raises(ValueError, match="running statistics"):
        opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))
