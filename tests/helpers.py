"""Helpers shared by the test packages: import them from here (conftest.py holds fixtures only)."""

import torch
import torch.nn.functional as F
from torch import nn


def make_closure(opt, model, x, y):
    """The standard closure: zero_grad, cross-entropy, backward, return the loss."""

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


class TinyNet(nn.Module):
    """A two-layer MLP small enough for exact, fast tests."""

    def __init__(self, d_in: int = 6, d_hidden: int = 8, d_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))
