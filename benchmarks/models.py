"""Models of the training benchmark, one per dataset (``benchmarks.registry`` says which; the
paper does not give sizes; ours are documented in docs/guides/benchmarks.md, "Models").

* :class:`FashionCNN` - two 3x3 conv layers (16 and 32 channels, ReLU, 2x2 max-pool each), a
  128-unit hidden layer and a 10-way output: 206,922 parameters on 1x28x28 inputs.
  ``--model cnn-bn``: the same with a BatchNorm2d after each conv (207,018 parameters).
* :class:`FashionMLP` - ``--model mlp`` on Fashion-MNIST: 784-128-128-10, ReLU.
* :class:`SVHNCNN` - three conv blocks (32, 64, 128 channels, ReLU, max-pool), 256-unit hidden
  layer, 10-way output, on 3x32x32 inputs.
* :func:`resnet18_64` - torchvision's ResNet-18 adapted to 64x64 inputs: a 3x3 stride-1 stem
  without the initial max-pool, 200 classes. ``norm="group"`` (default) swaps every BatchNorm for
  GroupNorm(32), so the model is a pure function of its parameters with no running statistics;
  ``norm="batch"`` keeps BatchNorm, which both HGPSO paths (the closure and the vectorized one,
  ``torch.func.vmap`` over particles) train with each particle's own running statistics (see
  :func:`hgpso.vectorized_closure`).
* :class:`DigitsCNN` - a tiny conv net for sklearn's 8x8 digits (smoke runs and tests).

None of the models uses dropout, nor BatchNorm by default, so a forward pass is deterministic
and every particle of a swarm is scored on exactly the same function of its parameters.
"""

from __future__ import annotations

import torch
from torch import nn


class FashionCNN(nn.Module):
    """``batch_norm=True`` puts a BatchNorm2d after each conv (``--model cnn-bn``)."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, width: int = 16, batch_norm: bool = False
    ) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            conv: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1)]
            if batch_norm:
                conv.append(nn.BatchNorm2d(c_out))
            return [*conv, nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(in_channels, width), *block(width, 2 * width))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FashionMLP(nn.Module):
    """Two hidden ReLU layers of 128 units on the flattened image (``--model mlp``): the size
    of the MLPs of Optuna's Lightning examples, without their dropout: 118,282 parameters on
    1x28x28 inputs."""

    def __init__(self, num_classes: int = 10, in_features: int = 784, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SVHNCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for width in (32, 64, 128):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * 4 * 4, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 32),
            nn.ReLU(),
            nn.Linear(32, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def resnet18_64(num_classes: int = 200, norm: str = "group") -> nn.Module:
    """ResNet-18 for 64x64 images (3x3 stride-1 stem, no stem max-pool)."""
    from torchvision.models import resnet18

    if norm == "group":

        def norm_layer(channels: int) -> nn.Module:
            return nn.GroupNorm(min(32, channels), channels)
    elif norm == "batch":
        norm_layer = nn.BatchNorm2d
    else:
        raise ValueError(f"norm must be 'group' or 'batch', not {norm!r}")
    model = resnet18(num_classes=num_classes, norm_layer=norm_layer)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
