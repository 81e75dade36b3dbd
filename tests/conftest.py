"""Fixtures shared by every test package; helpers (TinyNet, make_closure, ...) are in helpers.py."""

import pytest
import torch

from tests.helpers import TinyNet


@pytest.fixture
def tiny_problem():
    torch.manual_seed(0)
    model = TinyNet()
    x = torch.randn(32, 6)
    y = torch.randint(0, 3, (32,))
    return model, x, y
