"""What a swarm saves, and how copies come back: ``state_dict`` snapshots, the consolidated
checkpoint of a sharded swarm, the load post-hook and unpickled (or deep-copied) optimizers.

What a checkpoint may hold, and how it is checked before it loads: :mod:`.checkpoint`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from hgpso.optim import checkpoint, layout
from hgpso.optim.options import OLD_DEFAULTS, OPTIONS_KEY, ParamGroup
from hgpso.optim.placement import Sharded

__all__ = ["after_load", "consolidate", "fill_unpickled", "snapshot"]

_SWARM = layout.SWARM_KEY


def snapshot(opt: Any, sd: dict[str, Any]) -> dict[str, Any]:
    """``sd`` (torch's ``state_dict()``) as the swarm saves it: the swarm-wide state a copy,
    not the live dict the next step mutates; the options beside the state, as checkpoints
    have always kept them; the optimizer's class."""
    if _SWARM in sd["state"]:
        sd["state"][_SWARM] = copy.deepcopy(sd["state"][_SWARM])
    sd[OPTIONS_KEY] = dict(opt.defaults[OPTIONS_KEY])
    sd[checkpoint.CLASS_KEY] = type(opt).__name__
    return sd


def consolidate(opt: Any, own: dict[str, Any], to: int) -> dict[str, Any] | None:
    """Every rank's share ``own`` merged on rank ``to`` (a collective of a sharded swarm)."""
    placement = opt._placement
    if not isinstance(placement, Sharded) or placement.comm is None:
        return own
    shards = placement.gather(own, to)
    if shards is None:
        return None
    return checkpoint.merge_shards(shards, opt.num_particles)


def after_load(opt: Any) -> None:
    """The load post-hook: the checked options in, groups aliasing ``momentum``, entries an
    older checkpoint lacks filled in (the runtime parts are rebuilt by the optimizer)."""
    opt.defaults[OPTIONS_KEY] = opt.__dict__.pop("_loaded_options")
    opt.param_groups = [ParamGroup(g) for g in opt.param_groups]
    if _SWARM in opt.state:
        swarm = opt.state[_SWARM]
        swarm["pbest_losses"] = swarm["pbest_losses"].to(opt._device(), torch.float32)
        params = [p for p in opt._candidates() if p in opt.state]
        layout.fill_in(opt.state, params, keep_pbest=opt._keeps_pbest())


def fill_unpickled(opt: Any) -> None:
    """An optimizer pickled by an older version lacks the options (they were attributes,
    which torch does not pickle), or the newer ones: the defaults of that time, ``N`` from
    its state."""
    if OPTIONS_KEY not in opt.defaults:
        n = opt.state[_SWARM]["pbest_losses"].numel() if _SWARM in opt.state else 1
        opt.defaults[OPTIONS_KEY] = {"num_particles": n, **OLD_DEFAULTS}
    else:
        opt.defaults[OPTIONS_KEY] = {**OLD_DEFAULTS, **opt.defaults[OPTIONS_KEY]}
    if "inertia" in opt.defaults:
        opt.defaults.setdefault("momentum", opt.defaults["inertia"])
