r"""Optional fused CUDA kernel for the HG-PSO update (sources in ``csrc/``).

The op ``torch.ops.hgpso.fused_update_`` does the whole update of
:func:`hgpso.functional.hgpso_update_` in one pass over memory: per element it reads
:math:`x, v, p, g, \nabla L` and writes :math:`v, x`,

.. math::
    \begin{aligned}
        v &\leftarrow \operatorname{clamp}\big(w\,v + c_1 r_1 (p - x) + c_2 r_2 (g - x)
             - \eta\,\nabla L,\ -v_{max},\ v_{max}\big) \\
        x &\leftarrow x + v
    \end{aligned}

in float32 arithmetic whatever the storage dtype (float32, float16, bfloat16), in the
reference's order of operations. :math:`r_1, r_2 \sim U[0, 1)` are drawn in the kernel from a
stateless Philox4x32-10 generator keyed by ``seed`` with counter ``(e // 2, offset)``, where
:math:`e = \text{base}_k + i` numbers element :math:`i` of tensor :math:`k` of the call and
:math:`\text{base}_k = \sum_{j<k} 8\lceil n_j / 8\rceil`; the values are
:math:`\lfloor w / 2^8 \rfloor\, 2^{-24}` of the block's 32-bit words (words 0, 1 for even
:math:`e`, 2, 3 for odd). So a step is reproduced by ``(seed, offset)`` alone, and the
optimizer's ``kernel_seed`` and ``step`` in its ``state_dict`` make a resumed run continue
the same stream. Given ``r1``/``r2`` tensors replace the generator (used to test the kernel
element for element against the reference).

Detection happens once, lazily, on the first :func:`is_available` / :func:`load_error` call:
the CUDA runtime must be usable, then the ahead-of-time build ``hgpso/_C*.so`` is loaded, or
else the just-in-time build in ``${HGPSO_CACHE:-~/.cache/hgpso}/kernels`` (compiled on the
spot, once, when ``nvcc`` is found). Any failure is stored and raised only
where the fused path is explicitly requested (``HGPSO(..., fused=True)``).

Environment: ``HGPSO_DISABLE_KERNEL=1`` turns the kernel off; ``HGPSO_JIT=0`` forbids
compiling on first use (only an existing AOT or cached JIT build is loaded).

Interface used by :mod:`hgpso.optim`:

* :func:`is_available` -- whether the fused op can run (CUDA present and library loaded).
* :func:`load_error` -- the stored reason it cannot.
* :func:`fused_hgpso_update_` -- the in-place update.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import torch
from torch import Tensor

from hgpso.kernels._build import build, build_dir, load_library, loaded_path

__all__ = [
    "build",
    "build_dir",
    "fused_hgpso_update_",
    "is_available",
    "load_error",
    "load_library",
    "loaded_path",
    "supports_device",
]

#: Tests only: let CPU tensors through to the op's CPU twin (same stream and math, slow),
#: so the optimizer integration can be exercised on a machine without a GPU.
_ALLOW_CPU_TWIN = False

_DETECT_LOCK = threading.Lock()
_DETECTED = False
_LOAD_ERROR: BaseException | None = None


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip().lower() not in ("0", "false", "no", "off")


def _detect() -> None:
    global _DETECTED, _LOAD_ERROR
    if _DETECTED:
        return
    with _DETECT_LOCK:
        if _DETECTED:
            return
        error: BaseException | None = None
        try:
            if _env_flag("HGPSO_DISABLE_KERNEL"):
                raise RuntimeError("the fused HG-PSO kernel is disabled (HGPSO_DISABLE_KERNEL)")
            if not torch.cuda.is_available():
                raise RuntimeError(
                    "the fused HG-PSO kernel needs CUDA, and torch.cuda.is_available() is False"
                )
            jit = _env_flag("HGPSO_JIT")
            load_library(build_if_missing=jit is not False)
        except Exception as exc:  # stored, raised only when fused=True is asked for
            error = exc
        _LOAD_ERROR = error
        _DETECTED = True


def is_available() -> bool:
    """Whether the fused kernel can run here (detected once; may compile it the first time)."""
    _detect()
    return _LOAD_ERROR is None


def load_error() -> BaseException | None:
    """Why the fused kernel is unavailable (``None`` when it is available)."""
    _detect()
    return _LOAD_ERROR


def supports_device(device: torch.device) -> bool:
    """Whether the fused op accepts tensors on ``device`` (CUDA; tests may allow the CPU twin)."""
    return torch.device(device).type == "cuda" or _ALLOW_CPU_TWIN


def _require() -> None:
    if not is_available():
        raise RuntimeError(
            f"the fused HG-PSO kernel is unavailable: {_LOAD_ERROR}"
        ) from _LOAD_ERROR


def fused_hgpso_update_(
    positions: Sequence[Tensor],
    velocities: Sequence[Tensor],
    pbests: Sequence[Tensor],
    gbests: Sequence[Tensor],
    grads: Sequence[Tensor] | None,
    *,
    seed: int,
    offset: int,
    lr: float,
    inertia: float,
    cognitive: float,
    social: float,
    max_velocity: float | None,
    r1: Sequence[Tensor] | None = None,
    r2: Sequence[Tensor] | None = None,
) -> None:
    r"""The HG-PSO update of :func:`hgpso.functional.hgpso_update_`, fused into one CUDA pass.

    Same tensors and layout as the reference (``positions[k]`` of shape ``(N, *S)``,
    ``gbests[k]`` of shape ``S``), but ``r1``/``r2`` are drawn in the kernel from Philox
    keyed by ``(seed, offset)`` unless given. ``grads=None`` or ``lr == 0`` drops the
    gradient term. All tensors must be CUDA tensors on one device; float32, float16 and
    bfloat16 storage are supported (math in float32). Non-contiguous ``positions`` or
    ``velocities`` are updated through a contiguous copy that is written back; other
    non-contiguous inputs are copied.

    Raises:
        RuntimeError: the kernel is unavailable (the stored load error is the cause), or a
            tensor is not on a CUDA device.
    """
    _require()
    positions, velocities = list(positions), list(velocities)
    pbests, gbests = list(pbests), list(gbests)
    if (r1 is None) != (r2 is None):
        raise ValueError("give both r1 and r2, or neither")
    n = len(positions)
    lengths = {len(velocities), len(pbests), len(gbests), n}
    if grads is not None:
        lengths.add(len(grads))
    if r1 is not None and r2 is not None:
        lengths |= {len(r1), len(r2)}
    if len(lengths) > 1:
        raise ValueError("tensor lists must have equal lengths")
    if n == 0:
        return
    for t in positions:
        if not supports_device(t.device):
            raise RuntimeError(
                f"the fused HG-PSO kernel runs on CUDA tensors only, got a tensor on "
                f"{t.device}; use fused=None (automatic) or fused=False for parameters "
                f"on {t.device}"
            )

    def ready(t: Tensor, like: Tensor) -> Tensor:
        if t.dtype != like.dtype:
            t = t.to(like.dtype)
        return t.contiguous()

    xs = [x.contiguous() for x in positions]
    vs = [v.contiguous() for v in velocities]
    ps = [ready(p, x) for p, x in zip(pbests, xs, strict=True)]
    gs = [ready(g, x) for g, x in zip(gbests, xs, strict=True)]
    grs = [] if grads is None else [ready(g, x) for g, x in zip(grads, xs, strict=True)]
    r1s = [] if r1 is None else [ready(r, x) for r, x in zip(r1, xs, strict=True)]
    r2s = [] if r2 is None else [ready(r, x) for r, x in zip(r2, xs, strict=True)]
    torch.ops.hgpso.fused_update_(
        xs,
        vs,
        ps,
        gs,
        grs,
        r1s,
        r2s,
        int(seed),
        int(offset),
        float(lr),
        float(inertia),
        float(cognitive),
        float(social),
        None if max_velocity is None else float(max_velocity),
    )
    for dst, src in zip(positions + velocities, xs + vs, strict=True):
        if dst is not src:  # was non-contiguous: write the result back
            dst.copy_(src)
