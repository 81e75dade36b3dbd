"""The swarm's own random stream, and its state for checkpoints.

Every step draws ``2 * N * P`` uniforms (``r1``, ``r2``), as many numbers as the swarm has
coordinates, so the generator's speed shows in the step time. On the CPU torch's generator
(mt19937) is measured 2.5-4x slower than numpy's PCG64 at filling millions of floats, so
CPU swarms draw from PCG64; CUDA swarms draw from torch's counter-based CUDA generator on the
device, with no host round trip.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["SwarmRandom"]

_NP_DTYPES = {torch.float64: np.float64}


class SwarmRandom:
    """Uniform and normal draws on one device, seeded, with a saveable state."""

    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = torch.device(device)
        self._np: np.random.Generator | None = None
        self._torch: torch.Generator | None = None
        if self.device.type == "cpu":
            self._np = np.random.Generator(np.random.PCG64(seed))
        else:
            self._torch = torch.Generator(device=self.device)
            self._torch.manual_seed(seed)

    def _from_numpy(self, array: np.ndarray, dtype: torch.dtype) -> Tensor:
        t = torch.from_numpy(array)
        return t if t.dtype == dtype else t.to(dtype)

    def uniform(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """``U[0, 1)`` of the given shape and dtype on this stream's device."""
        if self._np is not None:
            np_dtype = _NP_DTYPES.get(dtype, np.float32)
            return self._from_numpy(self._np.random(shape, dtype=np_dtype), dtype)
        return torch.rand(shape, generator=self._torch, device=self.device, dtype=dtype)

    def normal(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """Standard normal draws of the given shape and dtype on this stream's device."""
        if self._np is not None:
            np_dtype = _NP_DTYPES.get(dtype, np.float32)
            return self._from_numpy(self._np.standard_normal(shape, dtype=np_dtype), dtype)
        return torch.randn(shape, generator=self._torch, device=self.device, dtype=dtype)

    def integer(self) -> int:
        """A uniform integer in ``[0, 2**62)``."""
        if self._np is not None:
            return int(self._np.integers(0, 2**62))
        return int(torch.randint(0, 2**62, (), generator=self._torch, device=self.device))

    def get_state(self) -> dict[str, Any]:
        if self._np is not None:
            return {"kind": "pcg64", "state": self._np.bit_generator.state}
        assert self._torch is not None
        return {"kind": "torch", "state": self._torch.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        kind = "pcg64" if self._np is not None else "torch"
        if state.get("kind") != kind:
            raise ValueError(
                f"the saved random state is of kind {state.get('kind')!r}, but a swarm on "
                f"{self.device} uses {kind!r}; resume on the same kind of device"
            )
        if self._np is not None:
            self._np.bit_generator.state = state["state"]
        else:
            assert self._torch is not None
            self._torch.set_state(state["state"].cpu())
