"""HG-PSO: particle swarm optimization with a gradient term in the velocity."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from torch import Tensor

from hgpso.optim.options import check_group_value, check_option
from hgpso.optim.swarm import SwarmOptimizer

__all__ = ["GRADIENT_DEFAULTS", "HGPSO", "gradient_defaults"]

#: ``lr`` and ``inertia`` when they are left out (``None``), per gradient term: the two terms'
#: steps differ in scale (``"sgd"``'s is :math:`\eta g/(1-w)`, ``"adam"``'s about
#: :math:`\eta/(1-w)` per element), so each term has its own. Chosen on a held-out split of
#: Fashion-MNIST over a grid on three models (docs/guides/hyperparameters.md, "How the
#: defaults were chosen").
GRADIENT_DEFAULTS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "sgd": MappingProxyType({"lr": 1e-2, "inertia": 0.9}),
        "adam": MappingProxyType({"lr": 3.16e-3, "inertia": 0.0}),
    }
)


def gradient_defaults(gradient: str) -> dict[str, float]:
    """The ``lr`` and ``inertia`` that :class:`~hgpso.HGPSO` takes for ``gradient`` when they are
    ``None`` (:data:`~hgpso.optim.GRADIENT_DEFAULTS`)."""
    return dict(GRADIENT_DEFAULTS[check_option("gradient", gradient)])


class HGPSO(SwarmOptimizer):
    r"""Hybrid Gradient-Based Particle Swarm Optimization.

    A swarm of :math:`N` particles, each a full copy of the trainable parameters, moves under
    particle-swarm attraction plus a gradient-descent term. After every step the model's
    parameters hold the swarm's global best.

    .. math::
        \begin{aligned}
            &\rule{110mm}{0.4pt} \\
            &\textbf{input}: \theta_0 \text{ (params)}, N \text{ (num\_particles)},
                \eta \text{ (lr)}, w \text{ (inertia)}, c_1 \text{ (cognitive)},
                c_2 \text{ (social)}, \\
            &\hspace{13mm} \sigma \text{ (init\_spread)}, v_{max} \text{ (max\_velocity)},
                \phi \text{ (forget)}, \beta \text{ (ema\_beta)},
                \lambda \text{ (weight\_decay)}, \\
            &\hspace{13mm} \text{gradient}, \beta_1, \beta_2 \text{ (betas)},
                \epsilon \text{ (eps)} \\
            &\textbf{initialize}: x_1 \leftarrow \theta_0,\
                x_i \leftarrow \theta_0 + \sigma\,\varepsilon_i\ (i>1),\
                v_i \leftarrow 0,\ p_i \leftarrow x_i,\ \hat f_i \leftarrow +\infty,\
                \bar s \leftarrow 1,\ \kappa \leftarrow 1, \\
            &\hspace{13mm} m_i \leftarrow 0 \text{ (first moment)},\
                q_i \leftarrow 0 \text{ (second moment)},\ t_i \leftarrow 0
                \quad \text{(gradient = "adam")} \\
            &\rule{110mm}{0.4pt} \\
            &\textbf{for}\ t=1 \textbf{ to } \ldots \textbf{ do} \\
            &\hspace{5mm} f_i \leftarrow L_t(x_i),\ g_i \leftarrow \nabla L_t(x_i)
                \quad \text{(same mini-batch for all } i\text{)} \\
            &\hspace{5mm} \text{ok}_i \leftarrow f_i \text{ and } g_i \text{ finite} \\
            &\hspace{5mm} \hat f_i \leftarrow \hat f_i + \phi \max(0, f_i - \hat f_i) \\
            &\hspace{5mm} \textbf{if}\ \text{ok}_i \textbf{ and } f_i \le \hat f_i:
                \ p_i \leftarrow x_i,\ \hat f_i \leftarrow f_i \\
            &\hspace{5mm} b \leftarrow \arg\min_i \hat f_i,\ g^\star \leftarrow p_b \\
            &\hspace{5mm} \textbf{if}\ \text{adaptive}: \\
            &\hspace{10mm} \bar s \leftarrow \beta \bar s
                + (1-\beta)\,|\{i: p_i \text{ improved}\}| / N \\
            &\hspace{10mm} w_t, c_{1,t}, c_{2,t} \leftarrow
                w(0.5+0.5\bar s),\ c_1(0.5+0.5\bar s),\ c_2(1.5-0.5\bar s) \\
            &\hspace{10mm} \eta_t \leftarrow \kappa\,\eta
                \quad (\kappa \leftarrow \max(\kappa \cdot \text{lr\_factor},
                \text{min\_lr\_scale}) \text{ after every lr\_patience} \\
            &\hspace{25mm} \text{steps without progress of the smoothed best loss}) \\
            &\hspace{5mm} \textbf{if}\ \text{gradient} = \text{"adam"}: \\
            &\hspace{10mm} t_i \leftarrow t_i + 1,\
                m_i \leftarrow \beta_1 m_i + (1 - \beta_1)\, g_i,\
                q_i \leftarrow \beta_2 q_i + (1 - \beta_2)\, g_i^2 \\
            &\hspace{10mm} \widehat{m_i} \leftarrow m_i / \big(1 - \beta_1^{t_i}\big),\
                \widehat{q_i} \leftarrow q_i / \big(1 - \beta_2^{t_i}\big) \\
            &\hspace{10mm} d_i \leftarrow \eta_t\, \widehat{m_i}
                / \big(\sqrt{\widehat{q_i}} + \epsilon\big),\
                \delta \leftarrow \eta_t \lambda \quad \text{(decoupled, as AdamW)} \\
            &\hspace{5mm} \textbf{else}: d_i \leftarrow \eta_t\, (g_i + \lambda x_i),\
                \delta \leftarrow 0 \quad \text{(L2, as SGD)} \\
            &\hspace{5mm} r_1, r_2 \sim U[0,1)^{N \times P} \\
            &\hspace{5mm} v_i \leftarrow w_t v_i + c_{1,t} r_1 \odot (p_i - x_i)
                + c_{2,t} r_2 \odot (g^\star - x_i) - d_i \\
            &\hspace{5mm} v_i \leftarrow \operatorname{clamp}(v_i, -v_{max}, v_{max}) \\
            &\hspace{5mm} x_i \leftarrow (1 - \delta)\, x_i + v_i \\
            &\hspace{5mm} \textbf{if not}\ \text{ok}_i: x_i \leftarrow g^\star
                + \sigma\varepsilon,\ v_i \leftarrow 0,\ m_i, q_i \leftarrow 0,\
                t_i \leftarrow 0 \quad \text{(re-seed, counted)} \\
            &\hspace{5mm} \theta_t \leftarrow g^\star \\
            &\rule{110mm}{0.4pt} \\
            &\bf{return} \: \theta_t \\
            &\rule{110mm}{0.4pt}
        \end{aligned}

    **Noisy mini-batch losses.** All particles are scored on the same batch, so the
    comparisons within a step are fair, but losses on different batches are not comparable,
    and a best recorded on a lucky batch would win forever. ``forget`` (:math:`\phi`) lifts
    each stored best loss toward the particle's current loss before comparing, so an
    unconfirmed best fades within about :math:`1/\phi` steps. The default ``forget=1``
    keeps no memory across batches: every particle's personal best is its latest position,
    the global best is the particle that did best on the current batch, and the swarm pulls
    toward it. With memory, stale bests drag particles (and the model, which holds the
    global best) back to old positions; see the hyperparameters guide for the measured
    comparison. Use ``forget < 1``
    (``0`` is the classic rule) for deterministic objectives such as full-batch losses.
    With ``forget=1`` no personal-best positions are stored (each would equal the position
    just scored): the swarm keeps positions, velocities and one global best,
    :math:`(2N+1)P` numbers for :math:`P` parameters, against :math:`(3N+1)P` with
    ``forget < 1``; a particle that is not finite then has no personal best on that batch.

    **Adaptation** (``adaptive=True``, the default; ``False`` keeps every coefficient at
    its group value). The coefficients follow the smoothed success rate :math:`\bar s`
    (fraction of particles improving their best, starting at 1): while particles improve,
    every coefficient keeps its base value; as success fades, momentum and self-trust shrink
    toward half and the pull toward the global best grows by up to half. The learning
    rate follows the trend of the smoothed best loss :math:`\text{EMA}_\beta(\min_i f_i)`:
    each ``lr_patience`` steps without a relative improvement above ``tol`` multiply it by
    ``lr_factor``, down to ``min_lr_scale`` times the group's ``lr``.

    **Convergence signal.** :attr:`stalled` turns true after ``patience`` steps without
    such an improvement.

    **BatchNorm and other buffers.** A buffer the forward pass updates in place
    (BatchNorm's ``running_mean``, ``running_var`` and ``num_batches_tracked`` in training
    mode) belongs to the weights that produced it, so the swarm keeps it per particle, with
    a leading particle dimension like the positions. On the swarm's first step (and the
    first after :meth:`load_state_dict`) the first forward pass is watched, and every buffer
    whose value it changed is tracked from then on, named as in ``model.named_buffers()``.
    Each particle's forward pass starts from its own buffers and updates them: the plain
    closure path loads them into the model with the particle's weights and reads them back
    after the call; :func:`hgpso.vectorized_closure` passes them stacked through
    ``torch.func.functional_call`` under ``vmap`` (or loads them, ``strategy="loop"``).
    After every step the model holds the global best's weights **and** buffers; a personal
    best keeps the buffers of its own position (``forget < 1``: it can be older than the
    particle's latest); a re-seeded particle takes the global best's. They travel in
    :meth:`state_dict` (``state["swarm"]``: ``buffers``, ``gbest_buffers`` and, when
    ``forget < 1``, ``pbest_buffers``), are checked on load (names, shapes, dtypes, against
    the model on the next step) and resume bit for bit. Memory: for :math:`B` bytes of such
    buffers in the model, :math:`(N+1)B` with ``forget = 1`` and :math:`(2N+1)B` with
    ``forget < 1``, plus :math:`NB` while a step runs (torchvision's ResNet-18: 9,600
    floats and 20 counters, :math:`B` = 38,560 bytes, 0.09% of its parameters). A model
    without such buffers (none, constant ones, BatchNorm in ``eval()`` mode on the first
    step) keeps nothing and pays nothing after the first step; a norm layer switched to
    training mode later is picked up at the next step, every particle starting from the
    model's statistics. In ``eval()`` mode each particle is scored with its own statistics
    and none change. Under ``distributed="replicated"`` each rank's statistics (from its
    shard of the batch) are averaged over ranks every step, so the replicas stay identical.
    ``torch.func.replace_all_batch_norm_modules_(model)`` (batch statistics only) remains an
    option; nothing is then kept per particle.

    The velocity term :math:`w v - \eta g` alone is heavy-ball momentum SGD (effective step
    :math:`\eta/(1-w)`), so ``lr`` and ``inertia`` behave like SGD's ``lr`` and
    ``momentum``; the swarm adds attraction toward personal and global bests.

    **The gradient term** (``gradient``). ``"sgd"`` is the term above, and
    ``weight_decay`` :math:`\lambda` adds :math:`\lambda x` to the gradient (L2, as
    :class:`torch.optim.SGD`): with ``inertia = cognitive = social = 0`` and one particle
    the swarm is SGD, with ``inertia`` = ``momentum`` SGD's heavy ball (:math:`v = -\eta\,
    \text{buf}`). ``"adam"`` (the default) gives every particle Adam's first and second
    moments of its own gradient (``betas``, ``eps``, bias-corrected with the particle's own
    step count, which restarts with the particle when it is re-seeded) and the velocity takes
    Adam's step :math:`\eta\,\hat m / (\sqrt{\hat q} + \epsilon)` instead of :math:`\eta g`;
    ``weight_decay`` is then decoupled, the position shrinking by :math:`1 - \eta\lambda`
    before the velocity is added, as :class:`torch.optim.AdamW` does: with ``inertia =
    cognitive = social = 0``, ``adaptive=False`` and one particle the swarm is ``Adam``
    (``AdamW``) step for step. The moments cost two more copies of the model per particle:
    :math:`(4N+1)P` numbers at ``forget=1`` (:math:`(5N+1)P` below), ``state[p]["exp_avg"]``
    and ``["exp_avg_sq"]`` of shape :math:`(N, *S)`, and ``state["swarm"]["adam_steps"]``.
    The fused kernel implements ``"sgd"`` only (``fused=True`` with ``"adam"`` is refused;
    the default ``fused=None`` then uses the pure-PyTorch update). The gradient term is
    fixed when the optimizer is built: a checkpoint saved with the other one is refused.
    With ``"adam"`` the groups hold ``betas`` and ``eps``, so torch's
    :class:`~torch.optim.lr_scheduler.OneCycleLR` and
    :class:`~torch.optim.lr_scheduler.CyclicLR` cycle ``betas[0]`` (as they do for Adam)
    rather than ``inertia``. ``lr`` and ``inertia`` left out take the term's own defaults
    (:data:`~hgpso.optim.GRADIENT_DEFAULTS`): the default ``"adam"`` with ``inertia=0`` is
    per-particle Adam plus the pulls; an ``inertia`` :math:`w > 0` there multiplies Adam's
    step by about :math:`1/(1-w)` (10x at 0.9), which diverged on the benchmark CNN at
    Adam's rates.

    **Learning-rate schedulers.** Every :mod:`torch.optim.lr_scheduler` class drives the
    groups' ``lr``. In a param group ``momentum`` is another name for ``inertia``: writing
    either sets both (the last write wins), and a group that gives both with different
    values is refused. So :class:`~torch.optim.lr_scheduler.OneCycleLR` and
    :class:`~torch.optim.lr_scheduler.CyclicLR` with their default
    ``cycle_momentum=True`` cycle :math:`w` (``adaptive=True`` then scales the scheduled
    value as above, like the scheduled ``lr``).

    **Mixed precision.** bfloat16 autocast is supported:
    ``torch.autocast(device_type, dtype=torch.bfloat16)`` inside the closure, or around
    ``step`` (the step turns autocast's weight cache off while it scores particles, since
    the weights change between them), and Lightning's ``precision="bf16-mixed"``. The
    swarm state stays in the parameters' dtype. fp16 gradient scaling is refused with a
    :class:`RuntimeError` that names bfloat16, before anything moves:
    ``torch.amp.GradScaler.step`` can neither drive one closure call per particle nor
    learn that a particle overflowed, and Lightning's ``precision="16-mixed"`` with a
    scaler (as on CUDA) calls ``step`` without a closure. On CPU Lightning itself runs
    ``"16-mixed"`` as ``"bf16-mixed"``. A ``GradScaler.step(optimizer, closure)`` with no
    ``scaler.scale`` call before it fails inside torch (``_scale is None``) before the step
    runs.

    **Gradient accumulation** happens inside the closure: each particle's gradient is
    summed over the micro-batches its loss is averaged over (``zero_grad()``, then
    ``(loss_fn(model(xb), yb) / n).backward()`` for each of the ``n`` micro-batches, and
    return the summed loss), which gives the full-batch step. Gradients that a
    ``backward()`` outside the step left in ``p.grad`` (a hand-written accumulation loop,
    Lightning's ``accumulate_grad_batches > 1``) belong to no particle: ``step`` refuses
    them with a :class:`ValueError` instead of silently training on the last micro-batch.
    Zeros (``zero_grad(set_to_none=False)``) and the gradients the previous step left are
    fine.

    **After a step** ``p.grad`` is the global best's gradient on this step's batch, as
    the closure left it (clipped, if the closure clips); it is ``None`` when the global
    best was not scored on this batch (no finite particle, or with ``forget < 1`` a best
    kept from an earlier batch).

    **The readout** (``readout``). After a step the model holds the global best
    :math:`g` (``"gbest"``), or the mean :math:`\bar{x}` of the particles' positions, of
    all or of the ``readout_k`` best (``"mean"``; one more copy of the model is kept,
    :math:`(2N+2)P` numbers at ``forget=1``). ``p.grad`` stays the global best's gradient
    either way. :meth:`particle_spread` measures how far apart the particles are, and
    :meth:`particle_mean` gives the mean without changing the readout.

    Args:
        params: iterable of parameters or dicts defining parameter groups. Every group may
            set ``lr``, ``inertia`` (or its other name ``momentum``), ``cognitive``,
            ``social``, ``max_velocity``, ``init_spread``, ``weight_decay`` and (with
            ``gradient="adam"``) ``betas`` and ``eps``; the others are swarm-wide.
        lr: gradient scale :math:`\eta`; ``None`` takes the gradient term's own default,
            :data:`~hgpso.optim.GRADIENT_DEFAULTS` (default: None: 3.16e-3 for ``"adam"``,
            1e-2 for ``"sgd"``).
        num_particles: swarm size :math:`N`; a step costs :math:`N` forward and backward
            passes (default: 8).
        inertia: :math:`w`; ``None`` takes the gradient term's own default (default: None:
            0 for ``"adam"``, whose step needs no second momentum, 0.9 for ``"sgd"``).
        cognitive: :math:`c_1`, pull toward the particle's own best (default: 0.1).
        social: :math:`c_2`, pull toward the global best (default: 0.1). Held-out tuning on
            Fashion-MNIST favoured 0.1 over 0.5: a strong pull toward other positions slows
            the gradient-momentum term (see the benchmarks guide).
        max_velocity: clamp of each velocity element, or ``None`` (default: None).
        init_spread: standard deviation :math:`\sigma` of the Gaussian noise that scatters
            particles :math:`2..N` around the initial weights, and re-seeded particles around
            the global best (default: 1e-2).
        gradient: the velocity's gradient term, ``"sgd"`` (:math:`\eta g`) or ``"adam"``
            (Adam's preconditioned step, per-particle moments); swarm-wide, fixed when the
            optimizer is built (default: ``"adam"``, chosen on a held-out split; see the
            hyperparameters guide).
        betas: Adam's :math:`(\beta_1, \beta_2)`, each in :math:`[0, 1)`; only with
            ``gradient="adam"`` (default: (0.9, 0.999)).
        eps: Adam's :math:`\epsilon \ge 0`; only with ``gradient="adam"`` (default: 1e-8).
        weight_decay: :math:`\lambda \ge 0`: L2 into the gradient for ``"sgd"``, decoupled
            (AdamW) for ``"adam"`` (default: 0).
        forget: :math:`\phi \in [0, 1]` (default: 1.0, right for mini-batch training).
        adaptive: adapt :math:`w, c_1, c_2, \eta` to swarm progress (default: True).
        ema_beta: smoothing :math:`\beta` of the success rate and best loss (default: 0.9).
        tol: relative improvement of the smoothed best loss that counts as progress
            (default: 1e-3).
        patience: steps without progress before :attr:`stalled` (default: 1000).
        lr_patience: steps without progress between learning-rate cuts (default: 200).
        lr_factor: learning-rate cut factor (default: 0.5).
        min_lr_scale: floor of the learning-rate scale (default: 0.01).
        seed: seed of the swarm's own random generator; ``None`` draws it from torch's
            global generator, so ``torch.manual_seed`` makes runs repeatable (default: None).
        fused: ``None`` uses the fused CUDA kernel when the parameters are on CUDA and it
            is available; ``True`` requires it (raising the stored build error otherwise);
            ``False`` always uses the pure-PyTorch update (default: None).
        distributed: what the ranks of an initialized ``torch.distributed`` process group
            share. ``"replicated"``: one swarm trained on the global batch; every rank holds
            all particles, losses (and gradients not already all-reduced by DDP) are
            averaged over ranks each step, and rank 0's weights and seed are broadcast when
            the optimizer is built, so replicas stay identical. ``"independent"``: no
            communication, one swarm per rank. ``"sharded"``: the particles are split over
            the ranks, for models whose :math:`N` copies do not fit one device; rank
            :math:`r` stores and scores only its contiguous share (about :math:`N/W`
            particles, so about :math:`1/W` of the swarm's memory), **every rank must score
            on the same batch**, the ranks exchange their losses and the owner of the new
            global best sends its weights; it needs ``num_particles`` at least the number of
            ranks, a plain (not DDP-wrapped) model, and draws its randoms from one stream
            per particle, so that any number of ranks gives the same swarm as one process
            with ``"sharded"`` (but not the same as ``"replicated"``). One argument names
            what the ranks share, rather than a separate ``shard_particles`` flag whose
            combination with ``"independent"`` would mean nothing. Without a process group
            (or with one process) ``"replicated"`` and ``"independent"`` mean the same and
            cost nothing, and ``"sharded"`` holds all particles. See
            :mod:`hgpso.distributed` (default: ``"replicated"``).
        readout: what the model holds after a step: ``"gbest"``, the global best, or
            ``"mean"``, the mean of the particles (and of their floating-point buffers);
            see :mod:`hgpso.optim.readout`. Can be changed between steps
            (``opt.readout = "mean"``) (default: ``"gbest"``).
        readout_k: with ``readout="mean"``, average only the ``k`` particles with the
            lowest stored best losses; ``None`` takes all :math:`N` (default: None).
        lr_spread: :math:`F \ge 1`: the particles' learning rates spread over a log grid
            from ``lr / F`` to ``lr * F`` (:mod:`hgpso.optim.particle_lr`), a swarm of
            :math:`N` as :math:`N` runs at :math:`N` learning rates; ``1`` gives every
            particle ``lr``. Fixed when the optimizer is built (default: 1.0).
        lr_pull: :math:`\rho \in [0, 1]`, with ``lr_spread > 1``: after each step every
            particle's learning-rate factor moves toward the global best's by this fraction
            in log space (a re-seeded particle takes it); 0 keeps the grid (default: 0.0).
        process_group: the group to share the swarm over (default: ``None``, the default
            group when ``torch.distributed`` is initialized).

    Example:
        >>> opt = HGPSO(model.parameters(), num_particles=8)  # gradient="adam", lr=3.16e-3
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = loss_fn(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> best_loss = opt.step(closure)  # or: hgpso.vectorized_closure(model, loss_fn, x, y)
    """

    uses_gradients = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | None = None,
        num_particles: int = 8,
        inertia: float | None = None,
        cognitive: float = 0.1,
        social: float = 0.1,
        max_velocity: float | None = None,
        init_spread: float = 1e-2,
        *,
        gradient: str = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        forget: float = 1.0,
        adaptive: bool = True,
        ema_beta: float = 0.9,
        tol: float = 1e-3,
        patience: int = 1000,
        lr_patience: int = 200,
        lr_factor: float = 0.5,
        min_lr_scale: float = 0.01,
        seed: int | None = None,
        fused: bool | None = None,
        distributed: str = "replicated",
        readout: str = "gbest",
        readout_k: int | None = None,
        lr_spread: float = 1.0,
        lr_pull: float = 0.0,
        process_group: Any = None,
    ) -> None:
        resolved = gradient_defaults(gradient)  # checks the name before anything is built
        defaults = {
            "lr": resolved["lr"] if lr is None else lr,
            "inertia": resolved["inertia"] if inertia is None else inertia,
            "cognitive": cognitive,
            "social": social,
            "max_velocity": max_velocity,
            "init_spread": init_spread,
            "weight_decay": weight_decay,
            **_adam_defaults(check_option("gradient", gradient), betas, eps),
        }
        super().__init__(
            params,
            defaults,
            gradient=gradient,
            num_particles=num_particles,
            forget=forget,
            adaptive=adaptive,
            ema_beta=ema_beta,
            tol=tol,
            patience=patience,
            lr_patience=lr_patience,
            lr_factor=lr_factor,
            min_lr_scale=min_lr_scale,
            seed=seed,
            fused=fused,
            distributed=distributed,
            readout=readout,
            readout_k=readout_k,
            lr_spread=lr_spread,
            lr_pull=lr_pull,
            process_group=process_group,
        )


def _adam_defaults(gradient: str, betas: Any, eps: Any) -> dict[str, Any]:
    """``betas`` and ``eps`` checked; group keys only with ``gradient="adam"`` (torch's
    ``OneCycleLR``/``CyclicLR`` cycle ``betas[0]`` instead of ``momentum`` when the defaults
    hold ``betas``, as for Adam; a ``"sgd"`` swarm keeps its inertia cycled)."""
    check_group_value("betas", betas)
    check_group_value("eps", eps)
    if gradient == "adam":
        return {"betas": (float(betas[0]), float(betas[1])), "eps": float(eps)}
    if (tuple(betas), eps) != ((0.9, 0.999), 1e-8):
        raise ValueError(
            f"betas={betas!r} and eps={eps!r} are the 'adam' gradient term's: they have no "
            "effect with gradient='sgd'; pass gradient='adam', or leave them out"
        )
    return {}
