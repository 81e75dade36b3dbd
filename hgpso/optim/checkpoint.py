"""Checkpoints: validation before anything loads, older layouts, and resharding.

:func:`prepare_load` runs as the optimizer's ``load_state_dict`` pre-hook: it checks
everything (the optimizer class and group keys, the options, every number and tensor, the
random state's kind) and returns the state_dict in this optimizer's layout, with its rows
taken for this process, so that torch's own loading cannot fail half-way; a refused
checkpoint leaves the optimizer exactly as it was.

Which checkpoint loads where (``docs/guides/distributed.md``):

* A checkpoint holding **all** ``N`` particles (a replicated or independent swarm's, a
  sharded swarm's on one process, or one made by ``consolidated_state_dict()``) loads into
  any optimizer of the same class and ``N``, whatever its ``distributed`` mode and number
  of ranks: each rank takes its own particles' rows. Between a sharded swarm's checkpoint
  and a sharded swarm, each particle's random stream moves with it, so the run continues
  exactly as it would have; across modes (replicated into sharded or back) the streams
  differ in kind, and the swarm continues with new streams derived from the checkpoint.
* A checkpoint holding one rank's share (``state_dict()`` of a sharded rank) loads only
  into that rank of a run with as many ranks.
* The gradient term is fixed when the optimizer is built: a checkpoint saved with another
  ``gradient`` is refused (a ``"sgd"`` one has no moments for ``"adam"`` to resume from, an
  ``"adam"`` one would lose them). A checkpoint from before ``gradient`` existed is a
  ``"sgd"`` one; its param groups take ``weight_decay=0`` (it trained without).
* So is ``lr_spread``: a checkpoint saved with another is refused; the particles'
  learning-rate factors are checked to lie in ``[1/lr_spread, lr_spread]``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, NoReturn

import torch
from torch import Tensor

from hgpso.optim import options as options_
from hgpso.optim.layout import MOMENT_KEYS, SWARM_KEY
from hgpso.optim.particle_buffers import check_buffer_state
from hgpso.optim.placement import Placement

__all__ = ["CLASS_KEY", "merge_shards", "prepare_load"]

#: the optimizer's class name, saved beside its state
CLASS_KEY = "swarm_optimizer"
_BUFFER_KEYS = ("buffers", "pbest_buffers")
_ROW_KEYS = ("position", "velocity", "pbest", *MOMENT_KEYS)
_INT_KEYS = (
    "step",
    "gbest_index",
    "steps_since_improvement",
    "nan_reseeds",
    "evaluations",
    "kernel_seed",
)


def _refuse(message: str) -> NoReturn:
    raise ValueError(message)


def _check_class(opt: Any, sd: dict[str, Any]) -> None:
    name = type(opt).__name__
    saved = sd.get(CLASS_KEY)
    if saved is not None and saved != name:
        _refuse(
            f"the state_dict was saved by {saved}, this optimizer is a {name}: load it "
            f"into a {saved}"
        )
    own = {key for key in opt.defaults if key in options_.GROUP_KEYS}
    for k, group in enumerate(sd["param_groups"]):
        if not isinstance(group, dict):
            _refuse(f"param group {k} of the state_dict must be a dict")
        missing = sorted(own - set(group) - set(options_.OLD_GROUP_DEFAULTS))
        extra = sorted(key for key in ("lr",) if key in group and key not in own)
        if missing or extra:
            what = f"lacks {missing}" if missing else f"has {extra}, which {name} does not use"
            _refuse(
                f"param group {k} of the state_dict {what}: it was saved by another "
                f"optimizer class than {name} (a PSO checkpoint holds no 'lr')"
            )


def _check_number(
    swarm: dict[str, Any],
    key: str,
    *,
    low: float,
    high: float,
    finite: bool = True,
    none_ok: bool = False,
) -> None:
    if key not in swarm:
        return
    value = swarm[key]
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _refuse(f"state['swarm'][{key!r}] must be a number, got {value!r}")
    if math.isnan(value) or (finite and math.isinf(value)) or not low <= value <= high:
        _refuse(
            f"state['swarm'][{key!r}]={value!r} is out of range: expected a "
            f"{'finite ' if finite else ''}value in [{low}, {high}]"
        )


def _check_gradient(opt: Any, saved_options: dict[str, Any]) -> None:
    saved = saved_options.get("gradient", "sgd")  # checkpoints before the option: "sgd"
    if saved != opt.gradient:
        _refuse(
            f"the state_dict was saved with gradient={saved!r}, this optimizer has "
            f"gradient={opt.gradient!r}: the gradient term is fixed when the optimizer is "
            f"built (a 'sgd' swarm has no Adam moments to resume from, an 'adam' one would "
            f"lose them); build it with gradient={saved!r} to resume"
        )


def _check_lr_spread(opt: Any, saved_options: dict[str, Any]) -> None:
    saved = saved_options.get("lr_spread", 1.0)  # checkpoints before the option: 1
    if saved != opt.lr_spread:
        _refuse(
            f"the state_dict was saved with lr_spread={saved!r}, this optimizer has "
            f"lr_spread={opt.lr_spread!r}: the particles' learning-rate grid is fixed when "
            f"the optimizer is built; build it with lr_spread={saved!r} to resume"
        )


def _per_particle(
    swarm: dict[str, Any],
    key: str,
    n: int,
    wanted: bool,
    *,
    dtype: torch.dtype,
    what: str,
    off: str,
) -> Tensor | None:
    """``state['swarm'][key]``: absent when not ``wanted`` (saved ``off``), else a ``(n,)``
    tensor of ``dtype`` not on the meta device."""
    t = swarm.get(key)
    if not wanted:
        if t is not None:
            _refuse(f"state['swarm'] holds {key!r} but was saved with {off}")
        return None
    if not isinstance(t, Tensor) or t.dtype != dtype or t.shape != (n,) or t.is_meta:
        got = (t.dtype, tuple(t.shape), t.device.type) if isinstance(t, Tensor) else t
        name = str(dtype).removeprefix("torch.")
        article = "an" if name[0] in "aeiou" else "a"
        _refuse(
            f"state['swarm'][{key!r}] must be {article} {name} tensor of shape ({n},) "
            f"({what}), got {got!r}"
        )
    return t


def _check_lr_factors(swarm: dict[str, Any], n: int, spread: float) -> None:
    factors = _per_particle(
        swarm,
        "lr_factors",
        n,
        spread != 1.0,
        dtype=torch.float64,
        what="each particle's learning-rate factor",
        off="lr_spread=1",
    )
    low, high = (1 / spread) * (1 - 1e-9), spread * (1 + 1e-9)
    if factors is not None and not bool(((factors >= low) & (factors <= high)).all()):
        _refuse(
            f"state['swarm']['lr_factors'] must lie in [1/lr_spread, lr_spread] = "
            f"[{1 / spread:g}, {spread:g}] (and be finite)"
        )


def _old_group_keys(opt: Any, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The saved groups with the values of the group keys an older checkpoint lacks."""
    new = {k: v for k, v in options_.OLD_GROUP_DEFAULTS.items() if k in opt.defaults}
    return [{**new, **group} for group in groups]


def _check_adam_steps(swarm: dict[str, Any], n: int, adam: bool) -> None:
    steps = _per_particle(
        swarm,
        "adam_steps",
        n,
        adam,
        dtype=torch.int64,
        what="each particle's Adam step count",
        off="gradient='sgd'",
    )
    if steps is not None and bool((steps < 0).any()):
        _refuse("state['swarm']['adam_steps'] must hold non-negative counts")


def _check_swarm(swarm: Any, n: int) -> None:
    if not isinstance(swarm, dict):
        _refuse(f"state['swarm'] must be a dict, got {type(swarm).__name__}")
    pl = swarm.get("pbest_losses")
    if not isinstance(pl, Tensor) or pl.dim() != 1:
        _refuse("state['swarm']['pbest_losses'] must be a 1-d tensor")
    if pl.device.type == "meta" or not pl.is_floating_point():
        _refuse(
            f"state['swarm']['pbest_losses'] must be a floating tensor with data, got a "
            f"{pl.dtype} tensor on {pl.device}"
        )
    if pl.numel() != n:
        _refuse(
            f"the state_dict holds a swarm of {pl.numel()} particles but this optimizer "
            f"was built with num_particles={n}"
        )
    if bool(torch.isnan(pl).any()) or bool((pl == -math.inf).any()):
        _refuse(
            "state['swarm']['pbest_losses'] holds NaN or -inf (a loss is a finite number, "
            "or +inf for a particle without a best)"
        )
    for key in _INT_KEYS:
        if key not in swarm and key not in ("step", "gbest_index"):
            continue  # older checkpoints: filled with defaults on load
        value = swarm.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            _refuse(f"state['swarm'][{key!r}] must be a non-negative int, got {value!r}")
    if swarm["gbest_index"] >= n:
        _refuse(
            f"state['swarm']['gbest_index']={swarm['gbest_index']} is out of range for "
            f"num_particles={n}"
        )
    _check_number(swarm, "gbest_loss", low=-math.inf, high=math.inf, finite=False)
    if swarm.get("gbest_loss") == -math.inf:
        _refuse("state['swarm']['gbest_loss'] must not be -inf")
    _check_number(swarm, "success_rate", low=0.0, high=1.0)
    _check_number(swarm, "lr_scale", low=1e-300, high=1.0)
    _check_number(swarm, "best_loss_ema", low=-math.inf, high=math.inf, finite=False)
    _check_number(swarm, "loss_ema", low=-math.inf, high=math.inf, none_ok=True)


def _check_tensor(t: Any, key: str, where: str, shape: tuple[int, ...], p: Tensor) -> None:
    if not isinstance(t, Tensor):
        _refuse(f"the state_dict lacks {key!r} for {where}")
    if t.device.type == "meta" or t.layout != torch.strided:
        _refuse(
            f"{key!r} of {where} holds no usable data (device {t.device.type}, layout "
            f"{t.layout}; a checkpoint saved from a model on the meta device?): swarm "
            "state must be dense tensors with values"
        )
    if tuple(t.shape) != shape:
        _refuse(f"{key!r} of {where} has shape {tuple(t.shape)}, expected {shape}")
    if not t.is_floating_point() and not t.is_complex():
        _refuse(f"{key!r} of {where} has dtype {t.dtype}, not floating")
    if t.dtype != p.dtype:
        _refuse(f"{key!r} of {where} has dtype {t.dtype}, the parameter {p.dtype}")


def _saved_rows(swarm: dict[str, Any], n: int, placement: Placement, mode: str) -> range:
    """The particles the checkpoint holds; a share loads only where it was saved."""
    shard = swarm.get("shard")
    if shard is None:
        return range(n)
    if not isinstance(shard, dict) or not all(
        isinstance(shard.get(k), int) for k in ("world_size", "start", "stop")
    ):
        _refuse("state['swarm']['shard'] must hold ints 'world_size', 'start' and 'stop'")
    rows = range(shard["start"], shard["stop"])
    if rows == range(n):
        return rows
    mine = placement.shard_info()
    if mine is None:
        _refuse(
            f"the state_dict holds rank {shard.get('rank')}'s share of a swarm sharded over "
            f"{shard['world_size']} ranks (particles {rows.start} to {rows.stop}), but this "
            f"optimizer is distributed={mode!r} and needs all {n}: save the sharded run "
            "with consolidated_state_dict(), which holds every particle"
        )
    assert mine is not None
    if shard["world_size"] != mine["world_size"] or rows != placement.rows:
        _refuse(
            f"the state_dict holds rank {shard.get('rank')}'s share (particles {rows.start} "
            f"to {rows.stop}) of a swarm sharded over {shard['world_size']} ranks, but this "
            f"is rank {mine['rank']} of {mine['world_size']} (particles {mine['start']} to "
            f"{mine['stop']}): every rank loads the state_dict its own rank saved, or all "
            "load one made by consolidated_state_dict(), which reshards to any world size"
        )
    return rows


def _expected_kind(device: torch.device) -> str:
    return "pcg64" if device.type == "cpu" else "torch"


def _rng_for(
    rng: Any, saved_rows: range, placement: Placement, device: torch.device, swarm: dict[str, Any]
) -> dict[str, Any] | None:
    """The random state this process resumes with, checked; new streams, derived from the
    checkpoint, when the saved streams are of another kind (a change of mode)."""
    if rng is None:
        return None
    if not isinstance(rng, dict):
        _refuse("state['swarm']['rng_state'] must be a dict")
    kind = _expected_kind(device)
    per_particle = rng.get("kind") == "per-particle"
    inner = [rng.get("swarm"), *(rng.get("particles") or [])] if per_particle else [rng]
    for st in inner:
        if not isinstance(st, dict) or st.get("kind") != kind:
            got = st.get("kind") if isinstance(st, dict) else st
            _refuse(
                f"the saved random state is of kind {got!r}, but a swarm on {device} uses "
                f"{kind!r}; resume on the same kind of device"
            )
    if per_particle and len(rng.get("particles") or []) != len(saved_rows):
        _refuse(
            "state['swarm']['rng_state'] holds a stream for "
            f"{len(rng.get('particles') or [])} particles, the checkpoint {len(saved_rows)}"
        )
    wants_particles = placement.shard_info() is not None
    if per_particle and wants_particles:
        first = placement.rows.start - saved_rows.start
        streams = rng["particles"][first : first + len(placement.rows)]
        return {**rng, "rows": [placement.rows.start, placement.rows.stop], "particles": streams}
    if not per_particle and not wants_particles:
        return rng
    # another kind of stream (replicated <-> sharded): new ones, the same on every rank
    seed = (int(swarm.get("kernel_seed", 0)) + int(swarm["step"])) % 2**62
    return placement.random(device, seed).get_state()


def prepare_load(opt: Any, sd: dict[str, Any]) -> dict[str, Any]:
    """``sd`` checked against ``opt`` and returned in ``opt``'s layout (see the module)."""
    if not isinstance(sd, dict) or not {"state", "param_groups"} <= sd.keys():
        _refuse("a state_dict must hold 'state' and 'param_groups'")
    groups = sd["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(opt.param_groups):
        count = len(groups) if isinstance(groups, list) else groups
        _refuse(f"the state_dict has {count} param groups, this optimizer {len(opt.param_groups)}")
    _check_class(opt, sd)
    for k, group in enumerate(groups):
        options_.check_group(group, f"param group {k}")
    state = dict(sd["state"])
    saved_options = state.pop(options_.OPTIONS_KEY, sd.get(options_.OPTIONS_KEY)) or {}
    saved_options = options_.check_options(saved_options, where="the state_dict's swarm options")
    _check_gradient(opt, saved_options)
    _check_lr_spread(opt, saved_options)
    n = opt.num_particles
    if saved_options.get("num_particles", n) != n:
        _refuse(
            f"the state_dict holds a swarm of {saved_options['num_particles']} particles "
            f"but this optimizer was built with num_particles={n}"
        )
    live = opt.defaults[options_.OPTIONS_KEY]
    merged = {**live, **saved_options, **{k: live[k] for k in options_.CONSTRUCTION_OPTIONS}}
    placement: Placement = opt._placement
    swarm = state.get(SWARM_KEY)
    members = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
    if swarm is not None:
        _check_swarm(swarm, n)
        _check_adam_steps(swarm, n, opt.gradient == "adam")
        _check_lr_factors(swarm, n, opt.lr_spread if opt.uses_gradients else 1.0)
        saved = _saved_rows(swarm, n, placement, opt.distributed)
        m = len(saved)
        check_buffer_state(swarm, m, f"{m} in the state_dict")
        swarm = copy.deepcopy(swarm)
        swarm["rng_state"] = _rng_for(
            swarm.get("rng_state"), saved, placement, opt._device(), swarm
        )
        take = slice(placement.rows.start - saved.start, placement.rows.stop - saved.start)
        for key in _BUFFER_KEYS:
            if key in swarm:
                swarm[key] = {name: t[take].clone() for name, t in swarm[key].items()}
        for key in ("adam_steps", "lr_factors"):
            if key in swarm:
                swarm[key] = swarm[key].to(opt._device())
        swarm.pop("shard", None)
        if placement.shard_info() is not None:
            swarm["shard"] = placement.shard_info()
        opt._buffers.check_live(swarm, len(placement.rows))
        state[SWARM_KEY] = swarm
        _check_params(opt, sd, state, members, m, take)
    # applied by the post-hook, once torch has loaded everything
    opt._loaded_options = merged
    out = {k: v for k, v in sd.items() if k not in (options_.OPTIONS_KEY, CLASS_KEY)}
    out["state"] = state
    out["param_groups"] = _old_group_keys(opt, groups)
    return out


def _check_params(
    opt: Any,
    sd: dict[str, Any],
    state: dict[Any, Any],
    members: Sequence[Tensor],
    m: int,
    take: slice,
) -> None:
    """Every swarm parameter's saved tensors checked, and their rows taken for this process."""
    member_ids = {id(p) for p in members}
    for k, (group, saved) in enumerate(zip(opt.param_groups, sd["param_groups"], strict=True)):
        ids = saved.get("params", [])
        if len(ids) != len(group["params"]):
            _refuse(
                f"param group {k} of the state_dict has {len(ids)} parameters, this "
                f"optimizer's {len(group['params'])}"
            )
        for j, (pid, p) in enumerate(zip(ids, group["params"], strict=True)):
            if id(p) not in member_ids:
                continue
            entry = state.get(pid)
            where = f"parameter {j} of param group {k} (shape {tuple(p.shape)})"
            if not isinstance(entry, dict):
                _refuse(f"the state_dict has no swarm state for {where}")
            if "gbest" not in entry and "pbest" not in entry:
                _refuse(
                    f"the state_dict lacks 'gbest' for {where} (and has no 'pbest' to take it from)"
                )
            # pbest: only saved with forget < 1; gbest: absent in older checkpoints;
            # the moments: exactly with gradient="adam"
            rows = (m, *p.shape)
            moments = MOMENT_KEYS if opt.gradient == "adam" else ()
            stray = [key for key in MOMENT_KEYS if key in entry and key not in moments]
            if stray:
                _refuse(f"{where} holds {stray} but the state_dict was saved with gradient='sgd'")
            for key, shape in (
                ("position", rows),
                ("velocity", rows),
                ("pbest", rows),
                ("gbest", tuple(p.shape)),
                *((key, rows) for key in moments),
            ):
                if key not in entry and key in ("pbest", "gbest"):
                    continue
                _check_tensor(entry.get(key), key, where, shape, p)
            state[pid] = {
                key: (t[take].clone() if key in _ROW_KEYS else t) for key, t in entry.items()
            }


def merge_shards(shards: Sequence[dict[str, Any]], num_particles: int) -> dict[str, Any]:
    """One state_dict holding all particles from every rank's ``state_dict()`` (in rank
    order): rows concatenated, the swarm-wide entries (the same on every rank) from the
    first, the per-particle random streams joined."""
    first = copy.deepcopy(shards[0])
    swarm: dict[str, Any] | None = first["state"].get(SWARM_KEY)
    if swarm is None:
        return first
    for pid, entry in first["state"].items():
        if pid in (SWARM_KEY, options_.OPTIONS_KEY):
            continue
        for key in _ROW_KEYS:
            if key in entry:
                entry[key] = torch.cat([s["state"][pid][key] for s in shards])
    for key in _BUFFER_KEYS:
        if key in swarm:
            swarm[key] = {
                name: torch.cat([s["state"][SWARM_KEY][key][name] for s in shards])
                for name in swarm[key]
            }
    rngs = [s["state"][SWARM_KEY].get("rng_state") for s in shards]
    if all(isinstance(r, dict) and r.get("kind") == "per-particle" for r in rngs):
        swarm["rng_state"] = {
            **rngs[0],
            "rows": [0, num_particles],
            "particles": [st for r in rngs for st in r["particles"]],
        }
    swarm["shard"] = {**swarm.get("shard", {}), "rank": None, "start": 0, "stop": num_particles}
    return first
