"""What the benchmarks know about each optimizer and each data set, in one place.

:data:`OPTIMIZER_SPECS` - name -> :class:`OptimizerSpec`: the builder, the documented default
hyperparameters (each one a CLI flag ``--<name>-<key>`` of ``hgpso-train``), the report's label
and colour, how the training loop steps it, and its cost in mini-batch passes per step.
:data:`DATASET_SPECS` - name -> :class:`DatasetSpec`: the loader, the model, the model's name
in the report and the loss threshold of Table 1. Everything else (the CLI's choices, the
report's order, the paper's rows) is read from these two tables.

Compute accounting ("passes"): one *forward pass* is one forward evaluation of the model on one
mini-batch, one *backward pass* one gradient computation on one mini-batch. Per optimizer step:

=================================================  ==============  ===============
optimizer                                          forward passes  backward passes
=================================================  ==============  ===============
sgd, adam, adamw, swa, lookahead                   1               1
hgpso, hgpso-default, hgpso-adam                   N (particles)   N
pso                                                N (particles)   0
=================================================  ==============  ===============

``forward_backward_passes`` is their sum, the quantity the equal-budget comparison matches.
Evaluation passes (test accuracy, final training loss, SWA's BatchNorm update) are counted
separately and never included in the training budget.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks import cli_types as cli
from benchmarks import datasets as D
from benchmarks import models as M


# --------------------------------------------------------------------------- optimizers
@dataclass(frozen=True)
class BuildContext:
    """What a builder may need beyond the parameters and hyperparameters."""

    seed: int = 0
    model: nn.Module | None = None  # SWA averages it
    steps_per_epoch: int = 1
    total_steps: int = 1


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer of the benchmarks.

    ``build(params, hparams, ctx)`` makes it; ``defaults`` are the documented hyperparameters
    (a run records them in its config); ``fixed`` are options passed to the builder that are
    implied by the name (``hgpso-adam``'s ``gradient="adam"``) and never flags. ``swarm``: the
    loop steps it with ``hgpso.vectorized_closure`` (else zero_grad, forward, backward, step).
    ``passes(hparams)`` = ``(forward, backward)`` mini-batch passes per step. ``paper_row``:
    the paper's row it is compared with. ``legacy``: hyperparameters added after runs were
    committed, with the value those runs had; at that value they are left out of the recorded
    config, so the committed runs are still reused.
    """

    name: str
    label: str
    color: str
    defaults: Mapping[str, Any]
    build: Callable[..., Any]
    passes: Callable[[Mapping[str, Any]], tuple[int, int]]
    swarm: bool = False
    paper_row: str | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    legacy: Mapping[str, Any] = field(default_factory=dict)


def _one_pass(hp: Mapping[str, Any]) -> tuple[int, int]:
    return 1, 1


def _swarm_passes(hp: Mapping[str, Any]) -> tuple[int, int]:
    n = int(hp.get("num_particles", 1))
    return n, n


def _forward_only_passes(hp: Mapping[str, Any]) -> tuple[int, int]:
    return int(hp.get("num_particles", 1)), 0


def _sgd(params: Iterable[Any], hp: Mapping[str, Any], ctx: BuildContext) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=hp["lr"], momentum=hp.get("momentum", 0.0))


def _adam(params: Iterable[Any], hp: Mapping[str, Any], ctx: BuildContext) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=hp["lr"])


def _adamw(params: Iterable[Any], hp: Mapping[str, Any], ctx: BuildContext) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])


def _lookahead(params: Iterable[Any], hp: Mapping[str, Any], ctx: BuildContext) -> Any:
    from benchmarks.anchors import Lookahead

    return Lookahead(torch.optim.Adam(params, lr=hp["lr"]), k=hp["k"], alpha=hp["alpha"])


def _swa(params: Iterable[Any], hp: Mapping[str, Any], ctx: BuildContext) -> Any:
    from benchmarks.anchors import StochasticWeightAveraging

    if ctx.model is None:
        raise ValueError("swa averages a model: build it with BuildContext(model=...)")
    per_epoch = hp["swa_per_epoch"]
    return StochasticWeightAveraging(
        _sgd(params, hp, ctx),
        ctx.model,
        swa_lr=hp["swa_lr"],
        start_step=int(hp["swa_start"] * ctx.total_steps),
        every=max(1, ctx.steps_per_epoch // per_epoch),
        total_steps=ctx.total_steps,
        anneal_updates=per_epoch,  # the rate reaches swa_lr after one epoch of averaging
    )


def _swarm(cls_name: str, params: Iterable[Any], hp: Mapping[str, Any], ctx: BuildContext) -> Any:
    import hgpso

    return getattr(hgpso, cls_name)(params, seed=ctx.seed, **hp)


# documented, tuned defaults (docs/guides/benchmarks.md, "Tuning", says how they were chosen)
_HGPSO_TUNED = {  # tuned on a held-out 10% of Fashion-MNIST's training set, see docs
    "lr": 0.05,
    "num_particles": 4,
    "inertia": 0.9,
    "cognitive": 0.1,
    "social": 0.1,
    "max_velocity": None,
    "init_spread": 1e-2,
    "forget": 0.5,
    "adaptive": False,
}

# HG-PSO as a user gets it: ``hgpso.HGPSO``'s own defaults for the keys tuned above (and the
# readout), read from its signature so they follow the library, except the swarm size:
# ``num_particles`` is 4 like the tuned entry, so the variants cost the same passes per step
# and differ only in their settings (the library's default is 8; --<name>-num-particles
# overrides it).
HGPSO_DEFAULT_NUM_PARTICLES = 4
_LIBRARY_KEYS = (*_HGPSO_TUNED, "readout")
# keys added after runs were committed, at the values those runs used (so their configs match)
_SWARM_LATER = {"weight_decay": 0.0, "lr_spread": 1.0, "lr_pull": 0.0}


def library_default_hparams(
    keys: Iterable[str] = tuple(_HGPSO_TUNED), *, gradient: str | None = None, **override: Any
) -> dict[str, Any]:
    """``hgpso.HGPSO``'s signature defaults for ``keys``, those left to the gradient term
    (``lr``, ``inertia``: ``None`` in the signature) resolved for ``gradient`` (the
    signature's own by default), ``num_particles`` set to :data:`HGPSO_DEFAULT_NUM_PARTICLES`,
    then ``override``."""
    import hgpso
    from hgpso.optim import GRADIENT_DEFAULTS

    keys = tuple(keys)
    params = inspect.signature(hgpso.HGPSO).parameters
    missing = [k for k in keys if params.get(k) is None or params[k].default is params[k].empty]
    if missing:
        raise RuntimeError(f"hgpso.HGPSO has no default for {', '.join(missing)}")
    gradient = params["gradient"].default if gradient is None else gradient
    by_gradient = GRADIENT_DEFAULTS[gradient]
    out = {k: params[k].default for k in keys}
    out.update({k: by_gradient[k] for k in keys if out[k] is None and k in by_gradient})
    if "gradient" in out:
        out["gradient"] = gradient
    out["num_particles"] = HGPSO_DEFAULT_NUM_PARTICLES
    out.update(override)
    return out


def _specs() -> dict[str, OptimizerSpec]:
    hgpso = partial(_swarm, "HGPSO")
    specs = [
        OptimizerSpec("sgd", "SGD", "tab:blue", {"lr": 0.05, "momentum": 0.9}, _sgd, _one_pass),
        OptimizerSpec("adam", "Adam", "tab:orange", {"lr": 1e-3}, _adam, _one_pass),
        OptimizerSpec(
            "adamw", "AdamW", "tab:brown", {"lr": 1e-3, "weight_decay": 1e-2}, _adamw, _one_pass
        ),
        OptimizerSpec(
            "swa",
            "SWA (SGD)",
            "tab:olive",
            {
                "lr": 0.05,
                "momentum": 0.9,
                "swa_lr": 0.05,
                "swa_start": 0.75,  # averages over the last quarter of the run's steps
                "swa_per_epoch": 4,
            },
            _swa,
            _one_pass,
        ),
        OptimizerSpec(
            "lookahead",
            "Lookahead (Adam)",
            "tab:cyan",
            {"lr": 1e-3, "k": 5, "alpha": 0.5},
            _lookahead,
            _one_pass,
        ),
        OptimizerSpec(
            "pso",
            "PSO",
            "tab:green",
            {
                "num_particles": 8,
                "inertia": 0.7298,
                "cognitive": 1.49618,
                "social": 1.49618,
                "max_velocity": 0.1,
                "init_spread": 0.05,
            },
            partial(_swarm, "PSO"),
            _forward_only_passes,
            swarm=True,
        ),
        OptimizerSpec(
            "hgpso",
            "HG-PSO (tuned)",
            "tab:red",
            {**_HGPSO_TUNED, **_SWARM_LATER},
            hgpso,
            _swarm_passes,
            swarm=True,
            fixed={"gradient": "sgd"},  # tuned for the SGD term (the library's default was then)
            legacy=_SWARM_LATER,
        ),
        OptimizerSpec(
            "hgpso-default",
            "HG-PSO (library defaults)",
            "tab:purple",
            # the gradient term recorded, so a run says which one the defaults were
            library_default_hparams((*_LIBRARY_KEYS, "gradient", *_SWARM_LATER)),
            hgpso,
            _swarm_passes,
            swarm=True,
            paper_row="hgpso",
            # runs made before the gradient option recorded neither it nor the readout
            legacy={"readout": "gbest", "gradient": "sgd", **_SWARM_LATER},
        ),
        OptimizerSpec(
            "hgpso-adam",
            "HG-PSO (adam)",
            "tab:pink",
            # the library's defaults for the adam term (GRADIENT_DEFAULTS["adam"])
            library_default_hparams((*_LIBRARY_KEYS, *_SWARM_LATER), gradient="adam"),
            hgpso,
            _swarm_passes,
            swarm=True,
            paper_row="hgpso",
            fixed={"gradient": "adam"},
            legacy=_SWARM_LATER,
        ),
    ]
    return {s.name: s for s in specs}


OPTIMIZER_SPECS: dict[str, OptimizerSpec] = _specs()
OPTIMIZERS = tuple(OPTIMIZER_SPECS)  # the CLI's choices and the report's order
SWARM_OPTIMIZERS = tuple(n for n, s in OPTIMIZER_SPECS.items() if s.swarm)
DEFAULT_HPARAMS: dict[str, dict[str, Any]] = {
    n: dict(s.defaults) for n, s in OPTIMIZER_SPECS.items()
}

# each hyperparameter's range, as the optimizers check it (so the parser refuses what the
# optimizer would only refuse after the data has loaded)
HPARAM_TYPES: dict[str, Callable[[str], Any]] = {
    "lr": cli.positive_float,
    "momentum": cli.nonneg_float,
    "weight_decay": cli.nonneg_float,
    "num_particles": cli.positive_int,
    "inertia": cli.nonneg_float,
    "cognitive": cli.nonneg_float,
    "social": cli.nonneg_float,
    "max_velocity": cli.none_or_positive_float,
    "init_spread": cli.nonneg_float,
    "forget": cli.unit_interval,
    "adaptive": cli.boolean,
    "readout": cli.one_of("gbest", "mean"),
    "gradient": cli.one_of("sgd", "adam"),
    "lr_spread": cli.float_in(1.0, 1e6),
    "lr_pull": cli.unit_interval,
    "swa_lr": cli.positive_float,
    "swa_start": cli.fraction,
    "swa_per_epoch": cli.positive_int,
    "k": cli.positive_int,
    "alpha": cli.float_in(1e-6, 1.0),
}


def optimizer_spec(name: str) -> OptimizerSpec:
    try:
        return OPTIMIZER_SPECS[name]
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}"
        ) from None


def build_optimizer(
    name: str, params: Iterable[Any], hparams: Mapping[str, Any], ctx: BuildContext
) -> Any:
    """``name``'s optimizer over ``params`` with ``hparams`` (and its fixed options)."""
    spec = optimizer_spec(name)
    return spec.build(params, {**hparams, **spec.fixed}, ctx)


def passes_per_step(name: str, hparams: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """``(forward, backward)`` mini-batch passes one step of ``name`` costs."""
    return optimizer_spec(name).passes(hparams or {})


def label(name: str) -> str:
    return optimizer_spec(name).label


def color(name: str) -> str:
    return optimizer_spec(name).color


def recorded_hparams(name: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` as a run's config records them (legacy keys at their old value left out)."""
    legacy = optimizer_spec(name).legacy
    return {k: v for k, v in hparams.items() if not (k in legacy and legacy[k] == v)}


# --------------------------------------------------------------------------- data sets
@dataclass(frozen=True)
class DatasetSpec:
    """One data set: ``load(data_root, download)`` -> :class:`~benchmarks.datasets.ArraySplits`,
    ``model(num_classes, in_channels, norm)`` -> the benchmark's model for it, the model's
    name in the report and Table 1's loss threshold (trailing-mean training loss)."""

    name: str
    load: Callable[[str | Path | None, bool], D.ArraySplits]
    model: Callable[[int, int, str], nn.Module]
    model_name: str
    threshold: float
    # other models for the same data (``--model NAME``): name -> (builder, report name)
    variants: Mapping[str, tuple[Callable[[int, int, str], nn.Module], str]] = field(
        default_factory=dict
    )

    def model_for(self, variant: str | None) -> tuple[Callable[[int, int, str], nn.Module], str]:
        """The builder and report name of ``variant`` (None: the data set's own model)."""
        if variant is None:
            return self.model, self.model_name
        if variant not in self.variants:
            known = ", ".join(self.variants) or "none"
            raise ValueError(f"{self.name} has no model {variant!r}; its other models: {known}")
        return self.variants[variant]


DATASET_SPECS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            "fashion-mnist",
            D.load_fashion_mnist,
            lambda k, c, norm: M.FashionCNN(k, c),
            "FashionCNN (2 conv + 2 FC)",
            0.4,
            {
                "cnn-bn": (
                    lambda k, c, norm: M.FashionCNN(k, c, batch_norm=True),
                    "FashionCNN with BatchNorm (2 conv+BN + 2 FC)",
                ),
                "mlp": (
                    lambda k, c, norm: M.FashionMLP(k, c * 28 * 28),
                    "FashionMLP (784-128-128)",
                ),
            },
        ),
        DatasetSpec(
            "svhn",
            D.load_svhn,
            lambda k, c, norm: M.SVHNCNN(k, c),
            "SVHNCNN (3 conv + 2 FC)",
            0.5,
        ),
        DatasetSpec(
            "tiny-imagenet",
            lambda root, download: D.load_tiny_imagenet(root),
            lambda k, c, norm: M.resnet18_64(k, norm=norm),
            "ResNet-18 for 64x64",
            3.0,
        ),
        DatasetSpec(
            "digits",
            lambda root, download: D.load_digits_splits(),
            lambda k, c, norm: M.DigitsCNN(k, c),
            "DigitsCNN (1 conv + 2 FC)",
            0.3,
        ),
    )
}
DATASETS = tuple(DATASET_SPECS)


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASET_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}") from None


def load_dataset(
    name: str, data_root: str | Path | None = None, download: bool = True
) -> D.ArraySplits:
    """Load a data set by name and say on stderr where it was read from."""
    splits = dataset_spec(name).load(data_root, download)
    print(
        f"[data] {name}: {len(splits.train_y)} train / {len(splits.test_y)} test images "
        f"from {splits.source}",
        file=sys.stderr,
    )
    return splits


def data_module(name: str, **kwargs: Any) -> D.ArrayDataModule:
    """The Lightning data module serving ``name`` (``kwargs``: :class:`ArrayDataModule`'s)."""
    dataset_spec(name)  # unknown names fail here, not when the data first loads
    return D.ArrayDataModule(loader=partial(load_dataset, name), **kwargs)


def build_model(
    dataset: str,
    num_classes: int,
    in_channels: int,
    norm: str = "group",
    variant: str | None = None,
) -> nn.Module:
    """The benchmark's model for ``dataset``, or its other model ``variant`` (construct under
    a fixed seed for equal inits)."""
    return dataset_spec(dataset).model_for(variant)[0](num_classes, in_channels, norm)


MODEL_VARIANTS = tuple(sorted({v for s in DATASET_SPECS.values() for v in s.variants}))
