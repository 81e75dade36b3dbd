"""``LLMPSOCallback``: tune optimizer hyperparameters while ``Trainer.fit`` runs.

Population-based, in the spirit of PBT: every ``interval`` training epochs the callback

1. snapshots the model and optimizer state (and the torch RNG),
2. asks its :mod:`hgpso.tune` strategy for ``population`` candidate settings of the tuned
   param-group keys (for HGPSO ``lr``/``inertia``/``cognitive``/``social``, for SGD
   ``lr``/``momentum``/``weight_decay`` as in paper 003 — any key of ``param_groups``),
3. for each candidate restores the snapshot, writes the candidate into every param group,
   trains ``probe_steps`` steps on training batches and scores the mean loss on
   ``eval_batches`` held-out batches (the validation loader when there is one),
4. tells the strategy the scores (lower is better), restores the snapshot and applies the
   best candidate of this round to ``param_groups``; the LLM strategies additionally let the
   LLM replace the worst candidates of the next round.

Training itself is untouched apart from the applied values: the probes run on copies of the
state which are thrown away, and the RNG state is restored afterwards.

A candidate the optimizer would refuse (say ``lr < 0`` for HGPSO, from a space that allows
it) is checked before it is tried, with the optimizer's own validation (HGPSO's group
check; a ``torch.optim`` optimizer's constructor): it scores ``+inf`` with a warning and
is never applied. A probe whose loss is not finite, or that raises ``FloatingPointError``,
scores ``+inf``; any other error of a probe (CUDA out of memory, a peer rank's failure)
surfaces, after the snapshot is restored. A checkpoint saved for another space (other
bounds, types or choices under the same names) or by an older version does not resume the
search: the callback warns and starts it afresh (the tuned values in it are not applied).

Lightning conventions: the callback only uses hooks; arguments are validated in
``__init__`` and against the optimizer in ``on_fit_start`` with clear messages; chosen values
and scores are logged with ``pl_module.log_dict`` (so every logger in ``trainer.loggers``
receives them, under ``tune/<key>``); candidates are drawn (and the LLM called) on rank 0
only and broadcast with ``trainer.strategy.broadcast``; probe scores are averaged over ranks
with ``trainer.strategy.reduce``; :meth:`state_dict` stores the complete search state as
JSON text, so ``Trainer.fit(ckpt_path=...)`` continues the same search and re-applies the
tuned values to the optimizer when training restarts.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from hgpso.tune import GA, LLMClient, SearchSpace, make_strategy, strategy_class
from hgpso.tune.space import Param
from hgpso.tune.state import StateError

__all__ = ["LLMPSOCallback"]

LossFn = Callable[[LightningModule, Any], torch.Tensor]


def _training_step_loss(pl_module: LightningModule, batch: Any) -> torch.Tensor:
    """Default probe loss: the module's own ``training_step`` output (``loss`` key if a dict)."""
    out = pl_module.training_step(batch, 0)
    if isinstance(out, Mapping):
        out = out["loss"]
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            "LLMPSOCallback: training_step must return a loss tensor or a dict with 'loss' "
            "(or pass loss_fn=...)"
        )
    return out


@contextmanager
def _no_logging(pl_module: LightningModule) -> Iterator[None]:
    """Silence ``self.log`` calls made by ``training_step`` while probing."""
    had = {k: k in vars(pl_module) for k in ("log", "log_dict")}
    pl_module.log = lambda *a, **k: None  # type: ignore[method-assign]
    pl_module.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        for k, was in had.items():
            if not was:
                delattr(pl_module, k)


class LLMPSOCallback(Callback):
    """Tune optimizer ``param_groups`` keys during training with PSO / GA / LLM strategies.

    Args:
        space: the tuned keys, ``{"lr": Float(1e-4, 1.0, log=True), "momentum": ...}`` or a
            :class:`~hgpso.tune.SearchSpace`; every name must be a key of the optimizer's
            param groups. Values are written into *all* param groups.
        strategy: ``"llm_pso"`` (default), ``"llm_ga"``, ``"pso"``, ``"ga"`` or ``"random"``.
        interval: tune after every ``interval`` training epochs.
        population: candidates scored per decision.
        probe_steps: optimizer steps each candidate trains from the snapshot.
        eval_batches: held-out batches each probe is scored on.
        loss_fn: ``loss_fn(pl_module, batch) -> loss tensor`` for probes; default: the
            module's ``training_step`` (its ``self.log`` calls are muted while probing).
        llm: an :class:`~hgpso.tune.LLMClient` for the LLM strategies (default: built from
            the ``HGPSO_LLM_*`` environment variables).
        k: candidates the LLM replaces per decision (LLM strategies).
        seed: strategy seed (same initial candidates per seed).
        include_current: make the first candidate of the first decision the optimizer's
            current setting, so tuning never starts by discarding a good default.
        strategy_kwargs: extra arguments of the strategy (e.g. ``max_llm_calls``).
        verbose: print each decision on rank 0.
    """

    def __init__(
        self,
        space: SearchSpace | Mapping[str, Param],
        strategy: str = "llm_pso",
        interval: int = 1,
        population: int = 4,
        probe_steps: int = 5,
        eval_batches: int = 2,
        loss_fn: LossFn | None = None,
        llm: LLMClient | None = None,
        k: int = 1,
        seed: int = 0,
        include_current: bool = True,
        strategy_kwargs: Mapping[str, Any] | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(space, SearchSpace):
            if not isinstance(space, Mapping):
                raise TypeError("LLMPSOCallback: space must be a SearchSpace or a dict of params")
            space = SearchSpace(space)
        for name, value in (
            ("interval", interval),
            ("population", population),
            ("probe_steps", probe_steps),
            ("eval_batches", eval_batches),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LLMPSOCallback: {name} must be an int >= 1, got {value!r}")
        if population < 2:
            raise ValueError(f"LLMPSOCallback: population must be >= 2, got {population}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError("LLMPSOCallback: loss_fn must be callable")
        kwargs = dict(strategy_kwargs or {})
        cls = strategy_class(strategy)  # a clear error for an unknown name
        self.uses_llm = cls.uses_llm
        if self.uses_llm:
            kwargs.setdefault("k", k)
            kwargs.setdefault(
                "task",
                "Tune the optimizer hyperparameters of a neural network during training. "
                "Score = held-out loss after a short training probe.",
            )
            kwargs["llm"] = llm if llm is not None else LLMClient()
        elif llm is not None:
            raise ValueError(f"LLMPSOCallback: llm= given but strategy {strategy!r} uses no LLM")
        if issubclass(cls, GA):
            # scores go stale as training moves on: parents are re-scored every decision
            kwargs.setdefault("reevaluate_parents", True)
        # make_strategy validates the name and the strategy arguments with clear errors
        self.strategy = make_strategy(strategy, space, population=population, seed=seed, **kwargs)
        self.seed = int(seed)
        self.space = space
        self.strategy_name = strategy
        self.interval = interval
        self.population = population
        self.probe_steps = probe_steps
        self.eval_batches = eval_batches
        self.loss_fn = loss_fn or _training_step_loss
        self.include_current = include_current
        self.verbose = verbose
        self.current: dict[str, Any] | None = None  # values applied by the last decision
        self.decisions = 0
        self.rounds: list[dict[str, Any]] = []  # one record per decision
        self._restored = False  # load_state_dict ran (a resume)

    # ------------------------------------------------------------------ Lightning hooks --
    @property
    def state_key(self) -> str:
        return self._generate_state_key(space=tuple(self.space.names), strategy=self.strategy_name)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise RuntimeError("LLMPSOCallback needs automatic optimization")
        if len(trainer.optimizers) != 1:
            raise RuntimeError(
                f"LLMPSOCallback tunes exactly one optimizer, found {len(trainer.optimizers)}"
            )
        opt = trainer.optimizers[0]
        for name in self.space.names:
            for i, group in enumerate(opt.param_groups):
                if name not in group:
                    keys = sorted(k for k in group if k != "params")
                    raise ValueError(
                        f"LLMPSOCallback: {type(opt).__name__}.param_groups[{i}] has no key "
                        f"{name!r}; tunable keys are {keys}"
                    )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After a resume every state is restored; re-apply the tuned values last, so that
        # neither configure_optimizers defaults nor other callbacks override them.
        if self.current is not None:
            self._apply(trainer.optimizers[0], self.current)
            rank_zero_info(f"LLMPSOCallback: restored tuned values {self.current}")
        # A checkpoint saved on an epoch's last batch (before on_train_epoch_end) resumes at
        # the next epoch: the decision due at the end of the saved epoch never ran. Make it
        # now, so a resumed run decides exactly as an uninterrupted one.
        missed = trainer.current_epoch - 1
        if (
            self._restored
            and missed >= 0
            and (missed + 1) % self.interval == 0
            and not any(r.get("epoch") == missed for r in self.rounds)
        ):
            self._decide(trainer, pl_module, epoch=missed)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.interval:
            return
        if trainer.sanity_checking:
            return
        self._decide(trainer, pl_module)

    # ------------------------------------------------------------------ persistence -----
    def state_dict(self) -> dict[str, Any]:
        # JSON text: safe under torch.load(weights_only=True) and readable by people.
        return {
            "version": 1,
            "search": json.dumps(
                {
                    "strategy": self.strategy.state_dict(),
                    "current": self.current,
                    "decisions": self.decisions,
                    "rounds": self.rounds,
                }
            ),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        data = json.loads(state_dict.get("search", "{}"))
        if "strategy" in data:
            try:
                self.strategy.load_state_dict(data["strategy"])
            except StateError as e:
                # Same names, other bounds/types (or an older format): the saved values and
                # best point may lie outside this space. Start the search afresh, loudly.
                rank_zero_warn(
                    f"LLMPSOCallback: the checkpoint's search does not fit this callback ({e}); "
                    "starting the search afresh (its tuned values are not applied)"
                )
                return
        self.current = data.get("current")
        self.decisions = int(data.get("decisions", 0))
        self.rounds = list(data.get("rounds", []))
        self._restored = True

    # ------------------------------------------------------------------ internals -------
    @staticmethod
    def _apply(opt: torch.optim.Optimizer, values: Mapping[str, Any]) -> None:
        for group in opt.param_groups:
            for k, v in values.items():
                group[k] = v

    def _batches(self, loader: Any, n: int, skip: int = 0) -> list[Any]:
        out: list[Any] = []
        if loader is None:
            return out
        loaders = loader if isinstance(loader, (list, tuple)) else [loader]
        for dl in loaders:
            for i, b in enumerate(dl):
                if i < skip:
                    continue
                out.append(b)
                if len(out) >= n:
                    return out
        return out

    def _probe(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        opt: torch.optim.Optimizer,
        train_batches: list[Any],
        eval_batches: list[Any],
    ) -> float:
        pl_module.train()
        with torch.enable_grad():
            for step in range(self.probe_steps):
                batch = train_batches[step % len(train_batches)]

                def closure(batch: Any = batch) -> torch.Tensor:
                    opt.zero_grad()
                    loss = self.loss_fn(pl_module, batch)
                    loss.backward()
                    return loss

                opt.step(closure)  # type: ignore[arg-type]  # torch's stub: closures return float
        pl_module.eval()
        total = 0.0
        with torch.no_grad():
            for batch in eval_batches:
                total += float(self.loss_fn(pl_module, batch))
        pl_module.train()
        score = total / max(len(eval_batches), 1)
        return score if math.isfinite(score) else math.inf

    def _decide(
        self, trainer: Trainer, pl_module: LightningModule, epoch: int | None = None
    ) -> None:
        """One decision: batches and snapshot, candidates, probe scores, choice, record."""
        epoch = trainer.current_epoch if epoch is None else epoch
        opt = trainer.optimizers[0]
        current = {k: opt.param_groups[0][k] for k in self.space.names}
        snap = _Snapshot.take(pl_module, opt)
        batches = self._probe_batches(trainer, epoch)
        if batches is None:  # nothing is asked if there is nothing to probe
            rank_zero_warn("LLMPSOCallback: no batches to probe with; skipping this decision")
            snap.restore_rng()
            return
        candidates = self._draw_candidates(trainer, current)
        try:
            scores = self._score_candidates(trainer, pl_module, opt, snap, candidates, *batches)
        finally:
            snap.restore(pl_module, opt)
        choice = self._choose(trainer, candidates, scores)
        self.current = dict(choice["values"])
        self._apply(opt, self.current)
        self.decisions += 1
        self._record(pl_module, trainer, epoch, choice, scores, candidates)

    def _probe_batches(self, trainer: Trainer, epoch: int) -> tuple[list[Any], list[Any]] | None:
        """Training and scoring batches for this decision, or None if there are none.

        A shuffled loader draws from the global RNG: it is seeded from (seed, epoch), so a
        run resumed from a checkpoint probes the same batches as an uninterrupted one (the
        caller's RNG state is restored by the snapshot).
        """
        strategy = trainer.strategy
        torch.manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        train_b = [
            strategy.batch_to_device(b)
            for b in self._batches(trainer.train_dataloader, self.probe_steps)
        ]
        val_src = trainer.val_dataloaders
        if val_src:
            eval_b = self._batches(val_src, self.eval_batches)
        else:  # no validation loader: score on training batches not used for the probes
            eval_b = self._batches(
                trainer.train_dataloader, self.eval_batches, skip=self.probe_steps
            )
        eval_b = [strategy.batch_to_device(b) for b in eval_b]
        if not train_b or not eval_b:
            return None
        return train_b, eval_b

    def _draw_candidates(self, trainer: Trainer, current: dict[str, Any]) -> list[dict[str, Any]]:
        """Rank 0 asks the strategy (the only rank that may call the LLM); all get the list."""
        candidates: list[dict[str, Any]] | None = None
        if trainer.is_global_zero:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                candidates = self.strategy.ask()
            for w in caught:  # re-emitted without any key an echoing server put in them
                rank_zero_warn(self._scrub(str(w.message)))
            # The first decision may score the optimizer's own values as candidate 0.
            if self.include_current and self.decisions == 0 and self.strategy.iteration == 0:
                try:
                    candidates[0] = self.strategy.replace_pending(0, current)
                except (TypeError, ValueError, KeyError):
                    pass  # current value outside the space's types: keep the drawn one
        candidates = trainer.strategy.broadcast(candidates, src=0)
        assert candidates is not None
        return candidates

    def _scrub(self, text: str) -> str:
        llm = getattr(self.strategy, "llm", None)
        scrub = getattr(llm, "scrub", None)
        return scrub(text) if callable(scrub) else text

    def _score_candidates(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        opt: torch.optim.Optimizer,
        snap: _Snapshot,
        candidates: list[dict[str, Any]],
        train_b: list[Any],
        eval_b: list[Any],
    ) -> list[float]:
        """Each candidate's probe score from the snapshot, averaged over ranks (+inf: failed)."""
        scores: list[float] = []
        with _no_logging(pl_module):
            for cand in candidates:
                s = math.inf
                refused = _refusal(opt, cand)
                if refused is not None:  # the same on every rank: the check is deterministic
                    rank_zero_warn(
                        f"LLMPSOCallback: {type(opt).__name__} refuses candidate {cand} "
                        f"({refused}); scored +inf, not tried"
                    )
                else:
                    snap.load(pl_module, opt)
                    self._apply(opt, cand)
                    try:
                        s = self._probe(trainer, pl_module, opt, train_b, eval_b)
                    except FloatingPointError as e:  # the probe's own numerical failure
                        rank_zero_warn(f"LLMPSOCallback: probe of {cand} failed: {e}")
                t = torch.tensor(s if math.isfinite(s) else 1e30, dtype=torch.float64)
                t = trainer.strategy.reduce(t.to(pl_module.device), reduce_op="mean")
                scores.append(float(t))
        return scores

    def _choose(
        self, trainer: Trainer, candidates: list[dict[str, Any]], scores: list[float]
    ) -> dict[str, Any]:
        """Rank 0 tells the strategy and picks the best; every rank gets the same choice."""
        choice: dict[str, Any] | None = None
        if trainer.is_global_zero:
            self.strategy.tell(candidates, scores)
            i = min(range(len(scores)), key=scores.__getitem__)
            choice = {"values": candidates[i], "score": scores[i]}
        choice = trainer.strategy.broadcast(choice, src=0)
        assert choice is not None
        return choice

    def _record(
        self,
        pl_module: LightningModule,
        trainer: Trainer,
        epoch: int,
        choice: dict[str, Any],
        scores: list[float],
        candidates: list[dict[str, Any]],
    ) -> None:
        record = {
            "epoch": epoch,
            "step": trainer.global_step,
            "chosen": self.current,
            "score": choice["score"],
            "scores": scores,
            "candidates": candidates,
        }
        self.rounds.append(record)
        assert self.current is not None
        metrics = {
            f"tune/{k}": float(v) for k, v in self.current.items() if isinstance(v, (int, float))
        }
        metrics["tune/probe_score"] = float(min(choice["score"], 1e30))
        stats = self.strategy.llm_stats
        if stats is not None:
            metrics["tune/llm_calls"] = float(stats.calls)
            metrics["tune/llm_fallbacks"] = float(stats.fallbacks)
            metrics["tune/llm_seconds"] = float(stats.seconds)
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)
        if self.verbose:
            rank_zero_info(
                f"LLMPSOCallback epoch {epoch}: {record['chosen']} "
                f"(probe score {choice['score']:.4g})"
            )

    def describe_rounds(self) -> Iterable[str]:
        for r in self.rounds:
            yield f"epoch {r['epoch']}: {r['chosen']} score {r['score']:.4g}"


@dataclass
class _Snapshot:
    """What a decision restores: model and optimizer state, RNG states, train/eval mode."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    cpu_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None
    was_training: bool

    @classmethod
    def take(cls, pl_module: LightningModule, opt: torch.optim.Optimizer) -> _Snapshot:
        return cls(
            model=copy.deepcopy(pl_module.state_dict()),
            optimizer=copy.deepcopy(opt.state_dict()),
            cpu_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            was_training=pl_module.training,
        )

    def load(self, pl_module: LightningModule, opt: torch.optim.Optimizer) -> None:
        """Model and optimizer back to the snapshot (before each probe)."""
        pl_module.load_state_dict(self.model)
        opt.load_state_dict(copy.deepcopy(self.optimizer))

    def restore(self, pl_module: LightningModule, opt: torch.optim.Optimizer) -> None:
        """Everything back to the snapshot (after the probes)."""
        self.load(pl_module, opt)
        self.restore_rng()
        pl_module.train(self.was_training)

    def restore_rng(self) -> None:
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def _refusal(opt: torch.optim.Optimizer, values: Mapping[str, Any]) -> str | None:
    """Why ``opt``'s own validation refuses these group values, or None if it accepts them.

    In order: the optimizer's ``validate_group(group)`` if it has one; for hgpso's swarm
    optimizers the param-group check their constructor and ``add_param_group`` apply; a
    ``torch.optim`` optimizer's constructor (a throw-away one on a dummy tensor, with the
    candidate's keys it takes). Other optimizers are not checked here. Never a collective:
    a swarm optimizer is not constructed (its constructor talks to the other ranks).
    """
    group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    group.update(values)
    for a, b in (("inertia", "momentum"), ("momentum", "inertia")):
        if a in values and b in group:
            group[b] = values[a]  # the aliases agree, as _apply makes them
    try:
        check = _group_check(opt)
        if check is not None:
            check(group)
        elif type(opt).__module__.startswith("torch.optim"):
            params = inspect.signature(type(opt)).parameters
            kwargs = {k: v for k, v in values.items() if k in params}
            type(opt)([torch.zeros(1, requires_grad=True)], **kwargs)
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def _group_check(opt: torch.optim.Optimizer) -> Callable[[dict[str, Any]], None] | None:
    hook = getattr(opt, "validate_group", None)
    if callable(hook):
        return hook
    if not type(opt).__module__.startswith("hgpso."):
        return None
    try:  # the check every hgpso swarm optimizer applies to its param groups
        from hgpso.optim.options import check_group
    except ImportError:
        legacy = getattr(opt, "_validate_groups", None)
        return None if legacy is None else (lambda g: legacy([g], "candidate"))
    return lambda g: check_group(g, "candidate")
