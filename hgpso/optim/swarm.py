"""The swarm optimizer base: the step, orchestrated from the parts of :mod:`hgpso.optim`.

:class:`~hgpso.optim.HGPSO` and :class:`~hgpso.optim.PSO` differ only in whether the
gradient enters the velocity. One job per module: :mod:`~hgpso.optim.options` (the options
spec), :mod:`~hgpso.optim.layout` (the state tensors), :mod:`~hgpso.optim.contract` (what a
step refuses), :mod:`~hgpso.optim.bookkeeping` (bests, adaptation, re-seeding),
:mod:`~hgpso.optim.move` (the update), :mod:`~hgpso.optim.placement` (replicated or sharded
particles), :mod:`~hgpso.optim.particle_buffers` (BatchNorm statistics per particle),
:mod:`~hgpso.optim.checkpoint` and :mod:`~hgpso.optim.persistence` (loading and saving).

A step is atomic: everything is computed into new tensors and swapped into ``state`` only
when all has succeeded; a failure leaves the state as it was and the model on its readout
(:mod:`~hgpso.optim.readout`: the global best, or the particles' mean).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from hgpso import distributed as distributed_
from hgpso import functional as F
from hgpso.evaluate import EvaluationRequest, evaluate_particles
from hgpso.evaluate.request import active_request
from hgpso.optim import (
    bookkeeping,
    checkpoint,
    contract,
    layout,
    particle_lr,
    persistence,
    readout,
)
from hgpso.optim import move as move_
from hgpso.optim.options import (
    OPTIONS_KEY,
    Option,
    ParamGroup,
    check_group,
    check_options,
    describe,
    new_group,
)
from hgpso.optim.particle_buffers import ParticleBuffers
from hgpso.optim.placement import Placement, make_placement
from hgpso.optim.random import SwarmRandom

__all__ = ["SwarmOptimizer"]

_SWARM = layout.SWARM_KEY


def _keeps_buffers(opt: Optimizer) -> bool:
    """Whether the swarm's state holds per-particle buffers (matched on the next step)."""
    return _SWARM in opt.state and "buffers" in opt.state[_SWARM]


class SwarmOptimizer(Optimizer):
    """Common machinery of the particle-swarm optimizers (not used directly)."""

    #: whether the velocity has a gradient term (and so the closure must call backward)
    uses_gradients: bool = True

    # the swarm-wide options, kept in ``defaults["swarm_options"]`` (hgpso.optim.options);
    # ``load_state_dict`` checks a checkpoint whole first (hgpso.optim.checkpoint)
    num_particles: Option[int] = Option()
    forget: Option[float] = Option()
    adaptive: Option[bool] = Option()
    ema_beta: Option[float] = Option()
    tol: Option[float] = Option()
    patience: Option[int] = Option()
    lr_patience: Option[int] = Option()
    lr_factor: Option[float] = Option()
    min_lr_scale: Option[float] = Option()
    seed: Option[int | None] = Option()
    fused: Option[bool | None] = Option()
    distributed: Option[str] = Option()
    gradient: Option[str] = Option()
    readout: Option[str] = Option()
    readout_k: Option[int | None] = Option()
    lr_spread: Option[float] = Option()
    lr_pull: Option[float] = Option()

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        process_group: Any = None,
        **options: Any,
    ) -> None:
        options = check_options({"gradient": "sgd", "lr_spread": 1.0, "lr_pull": 0.0, **options})
        check_group(defaults, "the defaults")
        defaults = {**defaults, "momentum": defaults["inertia"]}
        self._members: list[Tensor] | None = None
        super().__init__(params, defaults)
        # in ``defaults``, which torch pickles and deep-copies (not in ``state``, which stays
        # empty until the first step, as torch's optimizers keep it)
        self.defaults[OPTIONS_KEY] = options
        contract.check_parameters(self._trainable(), fused=options["fused"])
        comm = distributed_.SwarmComm.resolve(process_group, options["distributed"])
        if comm is not None:
            # the same model, options and hyperparameters everywhere; rank 0's weights and
            # seed on every rank
            params = self._trainable()
            comm.check_config(
                params=params,
                num_particles=options["num_particles"],
                description=describe(self),
            )
            seed = self.seed
            if seed is None:
                seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            options["seed"] = comm.agree_start(params, seed)
        self._attach(comm)

    def _attach(self, comm: distributed_.SwarmComm | None) -> None:
        """The runtime parts, which hold no state of their own (rebuilt after unpickling)."""
        self._placement: Placement = make_placement(self.distributed, comm, self.num_particles)
        self._reset_runtime()
        self.register_load_state_dict_pre_hook(checkpoint.prepare_load)
        self.register_load_state_dict_post_hook(SwarmOptimizer._after_load)

    def _reset_runtime(self) -> None:
        """Members, random stream and buffer tracking as the state says (after building,
        loading or unpickling); the per-particle buffers are matched on the next step."""
        self._random: SwarmRandom | None = None
        self._buffers = ParticleBuffers(from_checkpoint=_keeps_buffers(self))
        self._members = None
        # what the last successful step wrote into the model (with readout="mean"), so that
        # a failed step puts it back without a collective (a peer may be elsewhere)
        self._last_readout: tuple[list[Tensor], dict[str, Tensor] | None] | None = None
        if _SWARM in self.state:
            self._members = [p for p in self._candidates() if "position" in self.state.get(p, {})]
            rng = self.state[_SWARM].get("rng_state")
            if rng is not None:
                self.random.set_state(rng)

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_members", None) is not None or _SWARM in self.state:
            raise RuntimeError(
                "cannot add a param group after the swarm was created: every particle must "
                "cover the same parameters from the first step on"
            )
        super().add_param_group(new_group(param_group, self.param_groups))
        group = ParamGroup(self.param_groups[-1])
        group.pop(OPTIONS_KEY, None)  # swarm-wide, not a group value (torch copies defaults)
        self.param_groups[-1] = group

    def _candidates(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _trainable(self) -> list[Tensor]:
        """The swarm's parameters: fixed (and saved) when the swarm is created, so that
        freezing a layer later cannot reshape it; the ``requires_grad`` ones before that."""
        if self._members is not None:
            return self._members
        return [p for p in self._candidates() if p.requires_grad]

    def _group_trainable(self, group: dict[str, Any]) -> list[Tensor]:
        members = {id(p) for p in self._trainable()}
        return [p for p in group["params"] if id(p) in members]

    def _group_slices(self) -> list[tuple[int, dict[str, Any], list[int]]]:
        """``(group index, group, indices of its swarm parameters)`` of every group with any."""
        index = {id(p): k for k, p in enumerate(self._trainable())}
        out = []
        for gi, group in enumerate(self.param_groups):
            ks = [index[id(p)] for p in group["params"] if id(p) in index]
            if ks:
                out.append((gi, group, ks))
        return out

    def _device(self) -> torch.device:
        params = self._trainable()
        return params[0].device if params else torch.device("cpu")

    def _all(self, key: str) -> list[Tensor]:
        return [self.state[p][key] for p in self._trainable()]

    @property
    def _rows(self) -> range:
        """This process's particles (all ``N`` unless ``distributed="sharded"``)."""
        return self._placement.rows

    @property
    def _comm(self) -> distributed_.SwarmComm | None:
        return self._placement.comm

    def _keeps_pbest(self) -> bool:
        """Personal bests are stored only with memory across batches (``forget < 1``)."""
        return self.forget < 1.0

    def _has_pbest(self) -> bool:
        return all("pbest" in self.state[p] for p in self._trainable())

    # -------------------------------------------------------------- the swarm
    @property
    def random(self) -> SwarmRandom:
        """The swarm's own random stream (initial scatter, ``r1``, ``r2``, re-seeding): one
        for the whole swarm, or one per particle when ``distributed="sharded"``."""
        if self._random is None:
            seed = self.seed
            if seed is None:  # follow torch.manual_seed, like torch's own initialisers
                seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            self._random = self._placement.random(self._device(), seed)
        return self._random

    @property
    def swarm(self) -> dict[str, Any]:
        """Swarm-wide state (creates the swarm on first use)."""
        self._init_swarm()
        return self.state[_SWARM]

    def _init_swarm(self) -> None:
        if _SWARM in self.state:
            return
        rng = self.random
        members = self._trainable()
        groups = [(g, self._group_trainable(g)) for g in self.param_groups]
        try:
            tensors = self._allocate_swarm(groups, rng)
        except (RuntimeError, MemoryError) as error:
            if isinstance(error, RuntimeError) and "memory" not in str(error).lower():
                raise
            raise RuntimeError(self._out_of_memory("allocating")) from error
        self.state.update(tensors)
        self._members = members
        self.state[_SWARM] = layout.new_swarm_state(
            self.num_particles,
            self._device(),
            rng.integer(),
            moments=self._adam,
            lr_spread=self.lr_spread if self.uses_gradients else 1.0,
        )
        shard = self._placement.shard_info()
        if shard is not None:
            self.state[_SWARM]["shard"] = shard
        self._buffers = ParticleBuffers()

    def _allocate_swarm(
        self, groups: list[tuple[dict[str, Any], list[Tensor]]], rng: SwarmRandom
    ) -> dict[Tensor, dict[str, Tensor]]:
        return layout.allocate(
            groups, rng, self._rows, keep_pbest=self._keeps_pbest(), moments=self._adam
        )

    @property
    def _per_particle_lr(self) -> bool:
        """Whether each particle has its own learning-rate factor (``lr_spread > 1``)."""
        return self.uses_gradients and self.lr_spread > 1.0

    @property
    def _adam(self) -> bool:
        """Whether the particles keep Adam's moments (``gradient="adam"``)."""
        return self.gradient == "adam"

    def _out_of_memory(self, during: str) -> str:
        return layout.out_of_memory_message(
            self._trainable(),
            len(self._rows),
            keep_pbest=self._keeps_pbest(),
            device=self._device(),
            during=during,
            moments=self._adam,
        )

    # -------------------------------------------------------------- public views
    @property
    def stalled(self) -> bool:
        """True when the smoothed best loss has not improved by more than ``tol``
        (relative) for ``patience`` consecutive steps: a loop may stop early."""
        if _SWARM not in self.state:
            return False
        return self.state[_SWARM]["steps_since_improvement"] >= self.patience

    def gbest(self) -> list[Tensor]:
        """The global best position, one tensor per trainable parameter (the swarm's own
        copies: read them, do not modify them)."""
        self._init_swarm()
        return self._all("gbest")

    def effective_hyperparameters(self, group: dict[str, Any] | int = 0) -> dict[str, float]:
        """``lr``, ``inertia``, ``cognitive``, ``social`` as the next step will use them
        (the group's values after adaptation)."""
        if isinstance(group, int):
            group = self.param_groups[group]
        swarm = self.swarm
        w, c1, c2 = group["inertia"], group["cognitive"], group["social"]
        lr = group.get("lr", 0.0)
        if self.adaptive:
            w, c1, c2 = F.success_adaptive_coefficients(
                swarm["success_rate"], inertia=w, cognitive=c1, social=c2
            )
            lr = lr * swarm["lr_scale"]
        return {"lr": lr, "inertia": w, "cognitive": c1, "social": c2}

    def particle_lrs(self, group: dict[str, Any] | int = 0) -> Tensor:
        """The learning rate each of the ``N`` particles' next step uses in ``group``:
        ``effective_hyperparameters(group)["lr"]`` times the particle's factor
        (:mod:`hgpso.optim.particle_lr`; all equal unless ``lr_spread > 1``), ``(N,)``
        float64 on the CPU."""
        lr = self.effective_hyperparameters(group)["lr"]
        factors = self.swarm.get("lr_factors")
        if factors is None:
            return torch.full((self.num_particles,), lr, dtype=torch.float64)
        return lr * factors.detach().to("cpu", torch.float64)

    def particle_mean(self, k: int | None = None) -> list[Tensor]:
        """The mean of the particles' positions (of the ``k`` with the lowest stored best
        losses, or of all), one new tensor per trainable parameter: what
        ``readout="mean"`` writes into the model (see :mod:`hgpso.optim.readout`).

        A collective under ``distributed="sharded"``: every rank of the swarm calls it."""
        if k is not None:
            check_options({"readout_k": k, "num_particles": self.num_particles})
        return self._particle_mean(self._all("position"), k)

    @torch.no_grad()
    def write_readout(self, readout: str | None = None, k: int | None = None) -> None:
        """Write a readout into the model now, without a step: ``readout`` (``"gbest"`` or
        ``"mean"``; default: the optimizer's own) over the ``k`` particles with the lowest
        stored best losses (``"mean"`` only; default: ``readout_k``). The options do not
        change, so the next step writes the configured readout again; the swarm never reads
        the model, so one run can be evaluated under several readouts.

        A collective under ``distributed="sharded"``: every rank of the swarm calls it."""
        readout = self.readout if readout is None else readout
        if readout == "gbest" and k is not None:
            raise ValueError(f"k={k} applies to readout='mean' only")
        k = self.readout_k if k is None else k
        check_options({"readout": readout, "readout_k": k, "num_particles": self.num_particles})
        if readout == "mean":
            self._write_into_model(*self._mean_readout(k))
        else:
            self._write_into_model(self.gbest(), None)

    def particle_spread(self) -> dict[str, float]:
        """How far the particles are from their mean: ``rms_to_mean``,
        ``gbest_rms_to_mean`` and ``mean_rms`` (per element; see
        :mod:`hgpso.optim.readout`). A swarm whose ``rms_to_mean`` is tiny against the
        distance its weights travel per epoch has collapsed into one model.

        A collective under ``distributed="sharded"``: every rank of the swarm calls it."""
        positions = self._all("position")
        mean = self._particle_mean(positions, None)
        return readout.spread(
            positions, mean, self.gbest(), self.num_particles, self._placement.sum_over_ranks
        )

    def _particle_mean(self, stacks: list[Tensor], k: int | None) -> list[Tensor]:
        mask = readout.selected(self.swarm["pbest_losses"], k)
        local = self._placement.local(mask)
        count = int(mask.sum()) if k is not None else self.num_particles
        return readout.weighted_mean(stacks, local, count, self._placement.sum_over_ranks)

    def swarm_stats(self) -> dict[str, float]:
        """Numbers worth logging: best and smoothed losses, adaptation, NaN re-seeds."""
        s = self.swarm
        keys = ["step", "gbest_loss", "loss_ema", "success_rate", "lr_scale", "nan_reseeds"]
        keys += ["evaluations", "steps_since_improvement"]
        return {k: math.nan if s[k] is None else float(s[k]) for k in keys}

    # ------------------------------------------------------------------ the step
    def _write_readout(self) -> None:
        """The model takes the readout's weights and per-particle buffers: the global
        best's, or (``readout="mean"``) the particles' mean, kept for a failed step."""
        if self.readout == "gbest":
            weights, buffers = self.gbest(), None
            self._last_readout = None  # a later switch to "mean" must not restore an old mean
        else:
            weights, buffers = self._mean_readout(self.readout_k)
            self._last_readout = weights, buffers
        self._write_into_model(weights, buffers)

    def _write_into_model(self, weights: list[Tensor], buffers: dict[str, Tensor] | None) -> None:
        for p, w in zip(self._trainable(), weights, strict=True):
            p.copy_(w)
        self._buffers.write_into_model(self.state[_SWARM], buffers)

    def _mean_readout(self, k: int | None) -> tuple[list[Tensor], dict[str, Tensor] | None]:
        """The mean of the particles' positions and floating-point buffers (integer buffers:
        the global best's), over the ``k`` best or all."""
        swarm = self.swarm
        rows = swarm.get("buffers") or {}
        names = [name for name, t in rows.items() if t.is_floating_point()]
        stacks = self._all("position") + [rows[name] for name in names]
        means = self._particle_mean(stacks, k)
        n = len(self._trainable())
        if not rows:
            return means[:n], None
        buffers = dict(swarm["gbest_buffers"])
        buffers.update(zip(names, means[n:], strict=True))
        return means[:n], buffers

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """True outside a step, so that ``torch.amp.GradScaler.step`` hands its scale to
        :meth:`step` (which refuses it) instead of unscaling and stepping silently; False
        while particles are scored, so that Lightning's precision plugins keep clipping
        each particle's gradients."""
        return active_request() is None

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Tensor:  # type: ignore[override]
        """Score every particle with ``closure``, update bests and move the swarm.

        Args:
            closure: re-evaluates the model and returns the loss. For :class:`HGPSO` it must
                also call ``backward()`` (a standard closure: ``zero_grad``, forward,
                ``backward``, ``return loss``); it is called once per particle, with that
                particle's weights loaded into the model. Or a
                :func:`hgpso.vectorized_closure`, which scores all particles in one call.

        Returns:
            The lowest loss any particle reached on this step's batch.

        Raises:
            RuntimeError: a parameter of the swarm was frozen (``requires_grad=False``) after
                the swarm was created. The swarm's parameters are fixed at its first step, so
                a later freeze is refused (nothing changes) rather than keep moving the
                frozen parameter; unfreeze it, or create a new optimizer.

        Whatever the closure or the update raises, the step is all or nothing: the swarm's
        state is left as it was, the model back on its readout (the last one written)
        and ``p.grad`` on the global best's gradient of the last step that succeeded.

        After the step the model's parameters hold the swarm's readout (the global best,
        or with ``readout="mean"`` the particles' mean), and ``p.grad`` the global best's
        gradient on this batch (``None`` when the global best was not scored on it).
        """
        contract.before_step(self, closure)
        assert closure is not None
        self._init_swarm()
        params = self._trainable()
        contract.check_members(self.param_groups, {id(p) for p in params})
        scored = contract.scoring_closure(closure, params, refuse_ddp=self._placement.refuses_ddp)
        swarm = self.state[_SWARM]
        grads_before = [p.grad for p in params]
        losses, grads = self._score_particles(scored, params, grads_before)
        # the bookkeeping and the move are prepared out of place and committed by swapping
        # references (see _advance): the swarm-wide numbers and the random stream are
        # restored from these cheap copies if anything fails
        saved, saved_rng = dict(swarm), self.random.get_state()
        try:
            gbest_grad = self._advance(losses, grads)
        except BaseException as error:
            swarm.clear()
            swarm.update(saved)
            self.random.set_state(saved_rng)
            self._restore_model(params, grads_before)
            if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
                raise RuntimeError(self._out_of_memory("in a step of")) from error
            raise
        self._write_readout()
        swarm["evaluations"] += self.num_particles
        for k, p in enumerate(params):
            p.grad = None if gbest_grad is None else gbest_grad[k]
        contract.mark_grads(params)
        finite = losses[torch.isfinite(losses)]
        return finite.min() if finite.numel() else losses.min()

    def _restore_model(self, params: list[Tensor], grads: list[Tensor | None]) -> None:
        """After a failed step: the model on the last readout, ``p.grad`` as it was.

        With ``readout="mean"``, the mean the last successful step wrote (the global best
        when this optimizer object has not completed a step since it was built, loaded or
        unpickled: a mean is a collective under sharding, and the peers may be elsewhere)."""
        if self.readout == "mean" and self._last_readout is not None:
            self._write_into_model(*self._last_readout)
        else:
            self._write_into_model(self.gbest(), None)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        contract.mark_grads(params)

    def _score_particles(
        self, closure: Callable[[], Any], params: list[Tensor], grads_before: list[Tensor | None]
    ) -> tuple[Tensor, list[Tensor] | None]:
        """Every particle's loss (all ``N``, agreed over ranks) and this process's particles'
        gradients; on failure the model goes back to the global best, the peers are told."""
        placement = self._placement
        request = EvaluationRequest(params, self._all("position"), self.uses_gradients)
        request.want_fingerprint = placement.wants_fingerprint
        self._buffers.prepare(
            request, self.state[_SWARM], keep=self._keeps_pbest(), n=len(self._rows)
        )
        try:
            losses, grads = evaluate_particles(closure, request)
            if losses.shape != (len(self._rows),):
                raise ValueError(
                    f"expected {len(self._rows)} particle losses, got shape {tuple(losses.shape)}"
                )
            losses = placement.before_exchange(losses, grads)
        except BaseException as error:
            self._restore_model(params, grads_before)
            placement.report_failure(error)
            raise
        try:
            return placement.exchange(losses, grads, request.batch_fingerprint)
        except BaseException:
            self._restore_model(params, grads_before)
            raise

    def _advance(self, losses: Tensor, grads: list[Tensor] | None) -> list[Tensor] | None:
        """Bookkeeping, then the move: prepared into new tensors, then committed; returns
        the new global best's gradient on this batch (``None`` when it was not scored).

        Computed first, without writing to ``self.state``: validity, the new best losses,
        one host read, adaptation, personal and global bests, the move, re-seeded rows,
        the buffers. The commit only assigns references (and launches the fused kernel).
        """
        swarm, placement, keep = self.state[_SWARM], self._placement, self._keeps_pbest()
        t = self._tally(losses.to(self._device()), grads)
        bookkeeping.adapt(
            swarm, self.defaults[OPTIONS_KEY], t.n_improved / len(t.valid), t.best_now
        )
        fused = move_.wants_fused(
            self.fused,
            self._device(),
            allowed=placement.fused_allowed and not self._adam and not self._per_particle_lr,
        )
        olds = self._all("pbest") if keep and self._has_pbest() else None
        pbests = bookkeeping.accept_bests(
            self._all("position"),
            olds,
            placement.local(t.improved),
            t.local_improved,
            keep_pbest=keep,
            in_place_move=fused,
        )
        gbests, gbest_grad, change = self._global_best(t, pbests, grads)
        moved, launches = move_.move(
            self._group_moves(gbests, grads, pbests),
            fused=fused,
            rng=self.random,
            kernel_seed=swarm["kernel_seed"],
            step=swarm["step"],
            num_groups=len(self.param_groups),
        )
        n_bad = self.num_particles - t.n_valid
        rows = self._fresh_rows(~placement.local(t.valid), gbests) if n_bad else []
        if not launches:  # the moved tensors are new: re-seed them before the commit
            bookkeeping.write_rows(moved, rows)
        local_improved, local_valid = placement.local(t.improved), placement.local(t.valid)
        self._buffers.advance(swarm, placement, local_improved, local_valid, change, keep)
        factors = swarm.get("lr_factors")
        if factors is not None and change is not None:
            factors = particle_lr.pulled(factors, change[0], self.lr_pull, t.valid)
        # ---- commit: reference assignments, then the fused kernel's in-place launches
        self._commit(moved, pbests, gbests)
        b, loss = (
            (change[0], t.gbest_loss) if change else (swarm["gbest_index"], swarm["gbest_loss"])
        )
        swarm.update(pbest_losses=t.pbest_losses, gbest_index=b, gbest_loss=loss)
        if factors is not None:
            swarm["lr_factors"] = factors
        if self._adam:
            swarm["adam_steps"] = bookkeeping.next_adam_steps(swarm["adam_steps"], t.valid)
        for launch in launches:
            launch()
        if launches:
            bookkeeping.write_rows(moved, rows)
        swarm["nan_reseeds"] += n_bad
        swarm["step"] += 1
        return gbest_grad

    def _tally(self, losses: Tensor, grads: list[Tensor] | None) -> bookkeeping.Tally:
        """Validity, improvement and new best losses of all ``N`` particles, one host read."""
        valid = self._placement.valid(losses, grads)
        improved, pbest_losses = bookkeeping.score(
            self.state[_SWARM]["pbest_losses"],
            losses,
            valid,
            forget=self.forget,
            keep_pbest=self._keeps_pbest(),
            has_pbest=self._has_pbest(),
        )
        local = self._placement.local(improved)
        return bookkeeping.tally(losses, valid, improved, pbest_losses, local)

    def _global_best(
        self, t: bookkeeping.Tally, pbests: list[Tensor], grads: list[Tensor] | None
    ) -> tuple[list[Tensor], list[Tensor] | None, tuple[int, bool] | None]:
        """The new global best's weights, its gradient (``None``: not scored on this batch)
        and ``(b, changed)``; the last one stays when no particle has a finite best."""
        if not math.isfinite(t.gbest_loss):
            return self.gbest(), None, None
        changed = bookkeeping.gbest_changed(
            self.state[_SWARM], t.b, t.b_improved, stored=self._keeps_pbest() and self._has_pbest()
        )
        scored = grads if grads is not None and t.b_loss == t.gbest_loss else None
        gbests, grad = self._placement.global_best(t.b, changed, pbests, scored, self.gbest())
        return gbests, grad, (t.b, changed)

    def _commit(
        self, moved: list[dict[str, Tensor]], pbests: list[Tensor], gbests: list[Tensor]
    ) -> None:
        """Swap the new tensors into the state: reference assignments only."""
        keep = self._keeps_pbest()
        for p, new, pb, g in zip(self._trainable(), moved, pbests, gbests, strict=True):
            st = self.state[p]
            st.update(new)
            st["gbest"] = g
            if keep:
                st["pbest"] = pb
            else:
                st.pop("pbest", None)  # forget was raised to 1: the stored bests are unused

    def _group_moves(
        self, gbests: list[Tensor], grads: list[Tensor] | None, pbests: list[Tensor]
    ) -> list[move_.GroupMove]:
        slices = self._group_slices()  # once per step: it walks every group's parameters
        hyper: list[dict[str, Any]] = [self.effective_hyperparameters(g) for _, g, _ in slices]
        if not self.uses_gradients:
            hyper = [{**hp, "lr": 0.0} for hp in hyper]
        elif self._per_particle_lr:  # this process's particles' own rates
            factors = self._placement.local(self.state[_SWARM]["lr_factors"])
            hyper = [{**hp, "lr": hp["lr"] * factors} for hp in hyper]
        moments, steps = None, None
        if self._adam:  # each particle's moments and step count after this step
            moments = {key: self._all(key) for key in layout.MOMENT_KEYS}
            steps = self._placement.local(self.state[_SWARM]["adam_steps"]) + 1
        return move_.group_moves(
            slices,
            hyper,
            self._all("position"),
            self._all("velocity"),
            pbests,
            gbests,
            grads,
            moments=moments,
            steps=steps,
        )

    def _fresh_rows(self, bad: Tensor, gbests: list[Tensor]) -> list[tuple[int, Tensor, Tensor]]:
        ids = self._placement.particle_ids(bad.nonzero().flatten())
        groups = [(group, ks) for _, group, ks in self._group_slices()]
        return bookkeeping.fresh_rows(bad, groups, self._all("position"), gbests, self.random, ids)

    # --------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """The torch layout (``state``, ``param_groups``), the swarm-wide options beside it
        (``swarm_options``) and the class (``swarm_optimizer``); a sharded rank's own share."""
        if _SWARM in self.state:
            self.state[_SWARM]["rng_state"] = self.random.get_state()
        return persistence.snapshot(self, super().state_dict())

    def consolidated_state_dict(self, to: int = 0) -> dict[str, Any] | None:
        """A state_dict holding **all** particles, on rank ``to`` (``None`` on the others).

        A collective under ``distributed="sharded"``: every rank of the swarm's process
        group must call it (like ``ZeroRedundancyOptimizer.consolidate_state_dict``). The
        result loads on any number of ranks, and into a single process (see
        :mod:`hgpso.optim.checkpoint`). Without sharding it is :meth:`state_dict`.
        """
        return persistence.consolidate(self, self.state_dict(), to)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint, checked whole before anything changes (a refused one leaves
        the optimizer as it was); see :mod:`hgpso.optim.checkpoint` for what loads where."""
        super().load_state_dict(state_dict)

    @staticmethod
    def _after_load(opt: Optimizer) -> None:
        persistence.after_load(opt)
        assert isinstance(opt, SwarmOptimizer)
        opt._reset_runtime()

    def __getstate__(self) -> dict[str, Any]:
        if _SWARM in self.state:  # the live random stream travels with the state
            self.state[_SWARM]["rng_state"] = self.random.get_state()
        return super().__getstate__()

    def __setstate__(self, state: dict[str, Any]) -> None:
        loading = "_placement" in self.__dict__  # torch's load_state_dict calls this too
        super().__setstate__(state)
        self.param_groups = [ParamGroup(g) for g in self.param_groups]
        if not loading:  # unpickled or deep-copied
            persistence.fill_unpickled(self)
            # a process group does not pickle: the copy shares the default group, if any
            mode = distributed_.check_mode(self.distributed)
            self._attach(distributed_.SwarmComm.resolve(None, mode))
