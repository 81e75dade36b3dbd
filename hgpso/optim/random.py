"""The swarm's own random stream, and its state for checkpoints.

Every step draws ``2 * N * P`` uniforms (``r1``, ``r2``), as many numbers as the swarm has
coordinates, so the generator's speed shows in the step time. On the CPU torch's generator
(mt19937) is measured 2.5-4x slower than numpy's PCG64 at filling millions of floats, so
CPU swarms draw from PCG64; CUDA swarms draw from torch's counter-based CUDA generator on the
device, with no host round trip.

A swarm sharded over ranks (``distributed="sharded"``) draws from :class:`ParticleRandom`
instead: one such stream per particle, so that particle ``i`` gets the same numbers whichever
rank holds it and however many ranks there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ParticleRandom", "SwarmRandom"]

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

    def uniform(
        self, shape: tuple[int, ...], dtype: torch.dtype, rows: Sequence[int] | None = None
    ) -> Tensor:
        """``U[0, 1)`` of the given shape and dtype on this stream's device (``rows``, the
        particles the draws are for, is ignored: one stream serves the whole swarm)."""
        if self._np is not None:
            np_dtype = _NP_DTYPES.get(dtype, np.float32)
            return self._from_numpy(self._np.random(shape, dtype=np_dtype), dtype)
        return torch.rand(shape, generator=self._torch, device=self.device, dtype=dtype)

    def normal(
        self, shape: tuple[int, ...], dtype: torch.dtype, rows: Sequence[int] | None = None
    ) -> Tensor:
        """Standard normal draws of the given shape and dtype on this stream's device
        (``rows`` is ignored, as in :meth:`uniform`)."""
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


def _particle_seed(seed: int, particle: int) -> int:
    """A well-mixed 63-bit seed for particle ``particle``'s stream of a swarm seeded ``seed``."""
    mixed = np.random.SeedSequence([seed % 2**64, particle]).generate_state(1, np.uint64)[0]
    return int(mixed) & (2**63 - 1)


class ParticleRandom(SwarmRandom):
    """One :class:`SwarmRandom` per particle of ``rows`` (a sharded swarm's own particles);
    swarm-wide draws (:meth:`integer`) come from this object's own stream, seeded ``seed``.

    A draw of shape ``(M, *S)`` for particles ``rows`` (``M`` of them; default: all of this
    stream's particles, in order) is row by row: row ``j`` comes from particle
    ``rows[j]``'s stream. Each particle's numbers therefore depend only on the seed, its
    index and the draws made for it before, not on which rank holds it.
    """

    def __init__(self, device: torch.device, seed: int, rows: range) -> None:
        super().__init__(device, seed % 2**63)
        self.rows = rows
        self._streams = {i: SwarmRandom(self.device, _particle_seed(seed, i)) for i in rows}

    def _draw(
        self, kind: str, shape: tuple[int, ...], dtype: torch.dtype, rows: Sequence[int] | None
    ) -> Tensor:
        rows = self.rows if rows is None else rows
        if len(rows) != shape[0]:
            raise ValueError(f"a draw of shape {shape} for {len(rows)} particles")
        out = torch.empty(shape, dtype=dtype, device=self.device)
        for j, i in enumerate(rows):
            out[j] = getattr(self._streams[i], kind)(tuple(shape[1:]), dtype)
        return out

    def uniform(
        self, shape: tuple[int, ...], dtype: torch.dtype, rows: Sequence[int] | None = None
    ) -> Tensor:
        """``U[0, 1)`` draws, row ``j`` from particle ``rows[j]``'s stream."""
        return self._draw("uniform", shape, dtype, rows)

    def normal(
        self, shape: tuple[int, ...], dtype: torch.dtype, rows: Sequence[int] | None = None
    ) -> Tensor:
        """Standard normal draws, row ``j`` from particle ``rows[j]``'s stream."""
        return self._draw("normal", shape, dtype, rows)

    def get_state(self) -> dict[str, Any]:
        return {
            "kind": "per-particle",
            "rows": [self.rows.start, self.rows.stop],
            "swarm": super().get_state(),
            "particles": [self._streams[i].get_state() for i in self.rows],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "per-particle":
            raise ValueError(
                f"the saved random state is of kind {state.get('kind')!r}, but a sharded swarm "
                "keeps one stream per particle ('per-particle'): load a state_dict saved by "
                "an optimizer with the same distributed= mode"
            )
        saved = list(state.get("rows", []))
        if saved != [self.rows.start, self.rows.stop]:
            raise ValueError(
                f"the saved random state is for particles {saved}, this swarm holds "
                f"[{self.rows.start}, {self.rows.stop}]"
            )
        super().set_state(state["swarm"])
        for i, st in zip(self.rows, state["particles"], strict=True):
            self._streams[i].set_state(st)
