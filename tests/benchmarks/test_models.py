"""The benchmark's models: output shapes, parameter counts, and one vectorized HG-PSO step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hgpso
from benchmarks.models import count_parameters
from benchmarks.registry import build_model


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


def test_resnet_batchnorm_variant_trains_with_per_particle_statistics():
    """The ``--norm batch`` ResNet-18 through the vectorized swarm path: the library keeps each
    particle's running statistics, and after the step the model holds the best particle's."""
    torch.manual_seed(0)
    model = build_model("tiny-imagenet", 5, 3, norm="batch")
    bn = (
        model.bn1
        if hasattr(model, "bn1")
        else next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    )
    assert isinstance(bn, torch.nn.BatchNorm2d)
    before = bn.running_mean.clone()
    opt = hgpso.HGPSO(model.parameters(), num_particles=2, seed=0)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2,))
    loss = opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))
    assert torch.isfinite(torch.as_tensor(loss))
    assert int(bn.num_batches_tracked) == 1
    assert not torch.equal(bn.running_mean, before)  # the best particle's statistics


def test_fashion_model_variants_and_their_refusal():
    from benchmarks.registry import dataset_spec

    torch.manual_seed(0)
    bn = build_model("fashion-mnist", 10, 1, variant="cnn-bn")
    mlp = build_model("fashion-mnist", 10, 1, variant="mlp")
    assert count_parameters(bn) == 207_018 and count_parameters(mlp) == 118_282
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 2
    x = torch.randn(3, 1, 28, 28)
    assert bn(x).shape == mlp(x).shape == (3, 10)
    assert dataset_spec("fashion-mnist").model_for("mlp")[1] == "FashionMLP (784-128-128)"
    with pytest.raises(ValueError, match="digits has no model 'mlp'; its other models: none"):
        build_model("digits", 10, 1, variant="mlp")
