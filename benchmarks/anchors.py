"""The two yardsticks that buy accuracy at about 1x compute, as optimizers the benchmark's
loop can step like any other: :class:`Lookahead` (Zhang et al. 2019, around Adam) and
:class:`StochasticWeightAveraging` (``torch.optim.swa_utils``: an averaged copy of the model
over the last part of the run, evaluated in place of the live weights).

Both wrap an inner ``torch.optim`` optimizer and expose what Lightning's manual optimization
reads (``param_groups``, ``defaults``, ``state``, ``step(closure)``, ``zero_grad``,
``state_dict``/``load_state_dict``); ``step`` returns what the inner step returned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn


class _Wrapper:
    """Delegates the optimizer interface to ``self.base``."""

    base: torch.optim.Optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base.param_groups

    @property
    def defaults(self) -> dict[str, Any]:
        return self.base.defaults

    @property
    def state(self) -> Any:
        return self.base.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)


class Lookahead(_Wrapper):
    r"""Lookahead around ``base``: ``k`` fast steps of the inner optimizer, then the slow
    weights move a fraction ``alpha`` toward the fast ones and the fast weights restart there.

    .. math::
        \theta_{t} = A(\theta_{t-1}) \quad (t = 1..k), \qquad
        \phi \leftarrow \phi + \alpha(\theta_k - \phi), \qquad \theta_0 \leftarrow \phi

    ``phi`` starts at the initial weights; the inner optimizer's state (Adam's moments) is
    kept across synchronisations, as in the paper's experiments. Costs one more copy of the
    weights; no extra forward or backward pass.
    """

    def __init__(self, base: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self.base, self.k, self.alpha = base, k, alpha
        self.fast_steps = 0
        self.slow = [[p.detach().clone() for p in group["params"]] for group in base.param_groups]

    @torch.no_grad()
    def _synchronise(self) -> None:
        for group, slows in zip(self.base.param_groups, self.slow, strict=True):
            for p, slow in zip(group["params"], slows, strict=True):
                slow.add_(p.detach() - slow, alpha=self.alpha)
                p.copy_(slow)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = self.base.step(closure)
        self.fast_steps += 1
        if self.fast_steps % self.k == 0:
            self._synchronise()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {
            "base": self.base.state_dict(),
            "slow": [[s.clone() for s in g] for g in self.slow],
            "fast_steps": self.fast_steps,
            "k": self.k,
            "alpha": self.alpha,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        self.slow = [[s.clone() for s in g] for g in state["slow"]]
        self.fast_steps, self.k, self.alpha = state["fast_steps"], state["k"], state["alpha"]


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class StochasticWeightAveraging(_Wrapper):
    """SWA as ``torch.optim.swa_utils`` documents it, over the last part of a run.

    ``base`` trains ``model`` as usual until step ``start_step``; from then on every
    ``every`` steps (and at the last step, ``total_steps``) the running average of the
    weights (:class:`~torch.optim.swa_utils.AveragedModel`) takes the current weights and
    :class:`~torch.optim.swa_utils.SWALR` steps (annealing the rate to ``swa_lr`` over
    ``anneal_updates`` averaging updates). :meth:`evaluated_model` is the model to evaluate: the
    live one before the first average, then the averaged one, its BatchNorm statistics
    recomputed by :func:`~torch.optim.swa_utils.update_bn` over the training loader when
    the model has BatchNorm (one forward pass per training batch, counted by the caller as
    evaluation; a model without BatchNorm costs nothing).
    """

    def __init__(
        self,
        base: torch.optim.Optimizer,
        model: nn.Module,
        *,
        swa_lr: float,
        start_step: int,
        every: int,
        total_steps: int,
        anneal_updates: int = 1,
    ) -> None:
        if every < 1 or total_steps < 1 or start_step < 0:
            raise ValueError("every and total_steps must be >= 1 and start_step >= 0")
        self.base, self.model = base, model
        self.averaged = AveragedModel(model)
        self.scheduler = SWALR(base, swa_lr=swa_lr, anneal_epochs=anneal_updates)
        self.start_step = min(start_step, total_steps - 1)
        self.every, self.total_steps = every, total_steps
        self.steps = 0
        self.has_batch_norm = _has_batch_norm(model)
        self._bn_updated_at = -1

    def _averages_now(self) -> bool:
        since = self.steps - self.start_step
        return since > 0 and (since % self.every == 0 or self.steps == self.total_steps)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = self.base.step(closure)
        self.steps += 1
        if self._averages_now():
            self.averaged.update_parameters(self.model)
            self.scheduler.step()
        return loss

    @property
    def num_averaged(self) -> int:
        return int(self.averaged.n_averaged)

    def evaluated_model(self, train_loader: Callable[[], Iterable[Any]]) -> tuple[nn.Module, int]:
        """``(model to evaluate, forward passes spent preparing it)``."""
        if self.num_averaged == 0:
            return self.model, 0
        passes = 0
        if self.has_batch_norm and self._bn_updated_at != self.num_averaged:

            def counted() -> Iterable[Any]:
                nonlocal passes
                for batch in train_loader():
                    passes += 1
                    yield batch

            device = next(self.model.parameters()).device
            update_bn(counted(), self.averaged, device=device)
            self._bn_updated_at = self.num_averaged
        return self.averaged.module, passes

    def state_dict(self) -> dict[str, Any]:
        return {
            "base": self.base.state_dict(),
            "averaged": self.averaged.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        self.averaged.load_state_dict(state["averaged"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = state["steps"]
