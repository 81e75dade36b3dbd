"""The benchmarks' one optimizer registry and one dataset registry: every consumer (CLI flags,
the training loop, the report) reads them, and every entry builds and steps."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from benchmarks import registry
from benchmarks.train import build_parser, hparams_from_args


def test_every_optimizer_has_distinct_label_and_colour_and_typed_flags():
    specs = registry.OPTIMIZER_SPECS
    assert len({s.label for s in specs.values()}) == len(specs)
    assert len({s.color for s in specs.values()}) == len(specs)
    parser = build_parser()
    for name, spec in specs.items():
        assert set(spec.defaults) <= set(registry.HPARAM_TYPES), name
        # every default is a flag of hgpso-train, and parses back to itself
        args = parser.parse_args(["--optimizers", name])
        assert hparams_from_args(args, name) == dict(spec.defaults), name
    for swarm in ("pso", "hgpso", "hgpso-default", "hgpso-adam"):
        assert specs[swarm].swarm
    assert not any(specs[o].swarm for o in ("sgd", "adam", "adamw", "swa", "lookahead"))


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'; choose from sgd, adam"):
        registry.optimizer_spec("lbfgs")
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; choose from fashion-mnist"):
        registry.data_module("mnist")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--hgpso-adam-readout", "median"])


@pytest.mark.parametrize("name", registry.OPTIMIZERS)
def test_every_optimizer_builds_and_steps(name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    hp = {**registry.DEFAULT_HPARAMS[name]}
    if "num_particles" in hp:
        hp["num_particles"] = 2
    ctx = registry.BuildContext(seed=0, model=model, steps_per_epoch=2, total_steps=4)
    opt = registry.build_optimizer(name, model.parameters(), hp, ctx)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(4):
        if registry.optimizer_spec(name).swarm:
            import hgpso

            opt.step(hgpso.vectorized_closure(model, F.cross_entropy, x, y))
        else:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert moved, name
    assert registry.passes_per_step(name, hp) == (
        (2, 0) if name == "pso" else (2, 2) if "num_particles" in hp else (1, 1)
    )


def test_hgpso_adam_is_the_library_with_the_adam_gradient_term():
    import hgpso

    model = torch.nn.Linear(3, 2)
    hp = registry.DEFAULT_HPARAMS["hgpso-adam"]
    opt = registry.build_optimizer("hgpso-adam", model.parameters(), hp, registry.BuildContext())
    assert isinstance(opt, hgpso.HGPSO) and opt.gradient == "adam"
    # lr and inertia: the library's own for the adam term (not the signature's None)
    want = hgpso.optim.gradient_defaults("adam")
    assert (hp["lr"], hp["inertia"]) == (want["lr"], want["inertia"])
    assert hp["num_particles"] == 4
    assert (opt.defaults["lr"], opt.defaults["inertia"]) == (want["lr"], want["inertia"])
    # the rest are the library's own defaults, read from its signature
    signature = inspect.signature(hgpso.HGPSO).parameters
    for k, v in hp.items():
        if k not in ("lr", "inertia", "num_particles"):
            assert signature[k].default == v, k
    # the tuned entry keeps the SGD term it was tuned with, whatever the library's default
    tuned = registry.build_optimizer(
        "hgpso", model.parameters(), registry.DEFAULT_HPARAMS["hgpso"], registry.BuildContext()
    )
    assert tuned.gradient == "sgd"


def test_keys_added_later_keep_the_configs_of_committed_runs():
    """weight_decay, lr_spread and lr_pull at the values older runs used are left out of a
    run's recorded hyperparameters, so committed runs stay reusable; other values are kept."""
    for name in ("hgpso", "hgpso-default", "hgpso-adam"):
        hp = registry.DEFAULT_HPARAMS[name]
        assert {"weight_decay", "lr_spread", "lr_pull"} <= set(hp)
        recorded = registry.recorded_hparams(name, hp)
        assert not {"weight_decay", "lr_spread", "lr_pull"} & set(recorded)
        spread = registry.recorded_hparams(name, {**hp, "lr_spread": 4.0, "lr_pull": 0.1})
        assert (spread["lr_spread"], spread["lr_pull"]) == (4.0, 0.1)


def test_dataset_registry_gives_model_threshold_and_loader():
    assert registry.DATASETS == ("fashion-mnist", "svhn", "tiny-imagenet", "digits")
    spec = registry.dataset_spec("digits")
    assert spec.threshold == 0.3 and spec.model_name.startswith("DigitsCNN")
    dm = registry.data_module("digits", batch_size=64)
    dm.setup()
    assert dm.num_classes == 10 and dm.image_shape == (1, 8, 8)
    model = registry.build_model("digits", dm.num_classes, dm.image_shape[0])
    assert model(next(iter(dm.train_dataloader()))[0]).shape == (64, 10)
