"""Helpers shared by the test packages: import them from here (conftest.py holds fixtures only)."""

import math

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


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit: dtype, shape and every bit (torch.equal calls -0.0 and 0.0 equal,
    and NaN unequal to itself)."""
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    if a.is_floating_point() and a.element_size() in (2, 4, 8):
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        a, b = a.view(view), b.view(view)
    return torch.equal(a, b)


def assert_same_state(got, want, where: str = "state", *, rtol: float = 0.0, atol: float = 0.0):
    """Two nested optimizer states (``opt.state_dict()``, ``opt.state["swarm"]``, a model's
    ``state_dict()``) hold the same keys, types and values, entry by entry, naming the first
    difference. ``rtol = atol = 0`` (the default) means bit for bit; otherwise floating-point
    tensors and Python floats may differ by that much, while integer tensors, ints, bools,
    strings and None must still be equal."""
    exact = rtol == 0.0 and atol == 0.0
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), f"{where}: {type(got).__name__}, not a tensor"
        if exact or not want.is_floating_point():
            assert same_bits(got, want), f"{where} differs: {got!r} != {want!r}"
        else:
            assert got.dtype == want.dtype, f"{where}: dtype {got.dtype} != {want.dtype}"
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=f"{where} differs")
    elif isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {type(got).__name__}, not a dict"
        only = sorted(map(repr, set(got) ^ set(want)))
        assert not only, f"{where}: keys {', '.join(only)} on one side only"
        for key, value in want.items():
            assert_same_state(got[key], value, f"{where}[{key!r}]", rtol=rtol, atol=atol)
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for k, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same_state(a, b, f"{where}[{k}]", rtol=rtol, atol=atol)
    elif isinstance(want, float):
        assert type(got) is float, f"{where}: {got!r} is not a float"
        if math.isnan(want):
            assert math.isnan(got), f"{where}: {got!r} != nan"
        elif exact:
            assert got == want, f"{where}: {got!r} != {want!r}"
        else:
            assert abs(got - want) <= atol + rtol * abs(want), f"{where}: {got!r} != {want!r}"
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


def param_state_bytes(opt) -> int:
    """Bytes of an optimizer's per-parameter state tensors (``opt.state[p]``, not the swarm's
    shared ``opt.state["swarm"]``)."""
    return sum(
        t.numel() * t.element_size()
        for key, st in opt.state.items()
        if key != "swarm"
        for t in st.values()
        if isinstance(t, torch.Tensor)
    )


def tiny_batches(steps: int, seed: int = 0, d_in: int = 6):
    """``steps`` seeded batches of 16 examples for :class:`TinyNet` (3 classes)."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, d_in, generator=g), torch.randint(0, 3, (16,), generator=g))
        for _ in range(steps)
    ]
