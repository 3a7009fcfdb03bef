"""Small pieces every algorithm uses: Polyak averaging, optimisers and their steps,
(de)serialisation, and the hook through which update steps run compiled (training/compiled.py)."""

from __future__ import annotations

import abc
import copy
from typing import Any, Callable

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A target network: a copy whose parameters receive no gradients."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, all parameters in one foreach call."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def adam(module_or_params, lr: float) -> torch.optim.Adam:
    params = module_or_params.parameters() if isinstance(module_or_params, nn.Module) else module_or_params
    return torch.optim.Adam(params, lr=lr, foreach=True)


# ----- optimiser steps -------------------------------------------------------------------------


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every parameter the optimiser steps, all groups, in order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def minimise(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """One step of ``optimizer`` on ``loss``: zero_grad + backward + step, except that gradients
    are computed for the optimiser's own parameters only (an actor loss does not also fill the
    critic's ``.grad``, which the critic step would discard anyway). Works eagerly and inside a
    compiled update step (see ``adam_step``)."""
    params = optimizer_params(optimizer)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    adam_step(optimizer, params, list(grads))


def adam_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
              grads: list[torch.Tensor | None]) -> None:
    """``optimizer.step()`` with these gradients (``None``: the parameter is skipped, as Adam
    skips a parameter without ``.grad``).

    Eagerly this *is* ``optimizer.step()`` (any optimiser, bitwise what it always did). While
    torch.compile traces an update step it is an in-graph foreach Adam on the optimiser's own state
    tensors (exp_avg, exp_avg_sq, step), so checkpoints stay ``torch.optim.Adam`` state dicts and
    the eager and compiled paths can take over from each other. The bias corrections are computed
    in float64 from the step tensor, as eager Adam does in Python (float32 gives ~1e-5 relative
    errors in the first steps)."""
    if not torch.compiler.is_compiling():
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        return
    _traced_adam(optimizer, params, grads)


def check_adam(optimizer: torch.optim.Optimizer) -> None:
    """Raise NotImplementedError for what the in-graph Adam does not do (the compiled path then
    falls back to eager): other optimisers, amsgrad, weight decay, maximize, fused, tensor lr."""
    if not isinstance(optimizer, torch.optim.Adam) or type(optimizer).__name__ != "Adam":
        raise NotImplementedError(f"{type(optimizer).__name__}: only torch.optim.Adam is compiled")
    for group in optimizer.param_groups:
        for key, allowed in (("amsgrad", False), ("maximize", False), ("differentiable", False),
                             ("decoupled_weight_decay", False)):
            if bool(group.get(key, False)) != allowed:
                raise NotImplementedError(f"Adam with {key}={group.get(key)} is not compiled")
        if group.get("fused"):
            raise NotImplementedError("fused Adam is not compiled (use foreach)")
        if group["weight_decay"] != 0:
            raise NotImplementedError("Adam with weight decay is not compiled")
        if any(isinstance(group[k], torch.Tensor) for k in ("lr", "eps")) or any(
                isinstance(b, torch.Tensor) for b in group["betas"]):
            raise NotImplementedError("Adam with tensor hyper-parameters is not compiled")


def init_adam_state(optimizer: torch.optim.Optimizer) -> None:
    """Create Adam's per-parameter state now, exactly as its first ``step()`` would (a compiled
    step reads and writes these tensors in place; it cannot create them)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if len(state) == 0:
                if group["capturable"]:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                else:
                    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
                    state["step"] = torch.tensor(0.0, dtype=dtype, device="cpu")
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Adam's ``capturable`` flag, and where its step counters live, as this process steps the
    optimiser: on the parameters' device (compiled CUDA graphs) or on the CPU (eagerly, and the
    compiled CPU step). An optimiser state dict carries the flag of the process that wrote it --
    True after a compiled CUDA run -- and eager Adam refuses ``capturable`` on the CPU."""
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = capturable
    for p, state in optimizer.state.items():
        step = state.get("step")
        if isinstance(step, torch.Tensor):
            state["step"] = step.to(p.device, torch.float32) if capturable else step.cpu()


def _materialised(x: torch.Tensor) -> torch.Tensor:
    """``x``, as a buffer Inductor computes once: the identity as a reduction over a dimension of
    two copies (Inductor inlines pointwise expressions into each consumer, not reductions)."""
    return torch.stack([x, x], -1).amax(-1)


@torch.no_grad()
def _traced_adam(optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                 grads: list[torch.Tensor | None]) -> None:
    check_adam(optimizer)
    grad_of = {id(p): g for p, g in zip(params, grads)}
    for group in optimizer.param_groups:
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        ps = [p for p in group["params"] if grad_of.get(id(p)) is not None]
        if not ps:
            continue
        gs = [grad_of[id(p)] for p in ps]
        states = [optimizer.state[p] for p in ps]
        if any(len(s) == 0 for s in states):
            raise RuntimeError("Adam state is not initialised: call init_adam_state first")
        steps = [s["step"] for s in states]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_add_(steps, 1.0)
        torch._foreach_lerp_(exp_avgs, gs, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, gs, gs, 1 - beta2)
        # the bias corrections of the group's parameters, one small float64 vector (eager Adam:
        # Python floats), materialised once per step: as plain scalar expressions Inductor would
        # inline them and compute pow() in float64 inside every parameter's loop, once per 16
        # elements (that alone cost ~0.3 ms per TD3+BC update on 2 cores)
        t = torch.stack([step.to(ps[0].device) for step in steps]).to(torch.float64)
        corrections = _materialised(torch.stack([lr / (1 - beta1 ** t), (1 - beta2 ** t).sqrt()]))
        step_sizes, bias_corrections2_sqrt = corrections.to(ps[0].dtype).unbind(0)
        for i, (p, m, v) in enumerate(zip(ps, exp_avgs, exp_avg_sqs)):
            denom = v.sqrt() / bias_corrections2_sqrt[i] + eps
            p.sub_(step_sizes[i] * m / denom)


# ----- the algorithm contract ------------------------------------------------------------------

TargetTransform = Callable[[Any, torch.Tensor], tuple[torch.Tensor, dict]]


def copy_factory(module: nn.Module) -> Callable[..., nn.Module]:
    """A network factory giving a copy of ``module`` (same architecture; weights set later)."""
    return lambda *args, **kwargs: copy.deepcopy(module)


class Algorithm(abc.ABC):
    """What every algorithm offers the training loop, pre-training and fine-tuning.

    Losses follow one convention, as TorchRL's objectives: ``(batch) -> (loss, metrics)``, no
    optimiser inside; an update step minimises them through the ``step_*`` methods below and runs
    through ``run_step`` (one compiled graph per step function, training/compiled.py).

    The loop uses
        update(batch) -> metrics       one update of every part; counts ``total_updates``
        act(obs, deterministic)        actions for evaluation and data collection
        state_dict(), load_state_dict()
        gamma, normalize_states, device, max_action
    Losses (actor-critic algorithms)
        actor_loss(batch), critic_loss(batch, target=None) -> (loss, metrics); entropy-regularised
        ones also alpha_loss(batch) (the temperature's). ``critic_loss`` computes the TD target
        with ``target(batch)`` unless given one (tests give their own).
    Pre-training (offline_rl/pretrain) uses, besides the losses
        actor, critic, critic_target, actor_target (None when the algorithm has no actor target)
        critic_values(batch) -> (Q [N, B], the critic's regulariser); critic_regulariser_weight
        td_target(batch): the TD(0) target before any ``target_transform``
        entropy_temperature: alpha of entropy-regularised algorithms (Eq. 19, 20)
        step_actor(loss), step_critic(loss), step_temperature(loss): one optimiser step each
        update_actor_target(), update_critic_target(): Polyak averaging with the algorithm's tau
        mc_member_reduction, cql_on_min_q: how the reference code reduces MC / CQL over members
        stochastic_actor, has_critic: which schemes fit (Scheme.check)
    Fine-tuning (offline_rl/finetune) uses
        continuation_options(source): the constructor options continuing ``source``'s networks
        TRANSFERRED: the modules whose weights the fine-tuning algorithm takes over

    ``target_transform`` (a constructor option; QT-max's, pretrain/qt_max.py) reshapes every TD
    target the algorithm's critic learns from: ``(batch, target) -> (target, metrics)``.
    Subclasses list what they checkpoint in ``_state_attrs``."""

    _state_attrs: tuple[str, ...] = ()
    stochastic_actor: bool = False
    has_critic: bool = True
    mc_member_reduction: str = "sum"
    cql_on_min_q: bool = False
    TRANSFERRED = ("actor", "actor_target", "critic", "critic_target", "temperature")
    actor_target: Any = None
    critic_target: Any = None
    temperature: Any = None  # SAC's alpha, a module (entropy-regularised algorithms)
    tau: float = 5e-3
    #: set by offline_rl.training.compiled.attach_compiler; None: every step runs eagerly
    compiler: Any = None

    def __init__(self, normalize_states: bool, gamma: float, device: torch.device | str,
                 target_transform: TargetTransform | None = None):
        self.normalize_states = normalize_states
        self.gamma = gamma
        self.device = torch.device(device)
        self.target_transform = target_transform
        self.total_updates = 0

    # ----- what subclasses define (and ``td_target`` for algorithms with a critic) ------------
    @abc.abstractmethod
    def update(self, batch) -> dict[str, torch.Tensor]:
        """One update of every part of the algorithm."""

    @property
    def critic_regulariser_weight(self) -> float:
        """The weight of ``critic_values``' regulariser in the critic loss (EDAC's eta)."""
        return 0.0

    # ----- shared by all ----------------------------------------------------------------------
    def target(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The TD target the critic learns from, after ``target_transform``, and its metrics."""
        target = self.td_target(batch)
        if self.target_transform is None:
            return target, {}
        return self.target_transform(batch, target)

    def step_actor(self, loss: torch.Tensor) -> None:
        minimise(loss, self.actor_optimizer)

    def step_critic(self, loss: torch.Tensor) -> None:
        minimise(loss, self.critic_optimizer)

    def step_temperature(self, loss: torch.Tensor) -> None:
        minimise(loss, self.alpha_optimizer)

    def update_actor_target(self) -> None:
        if self.actor_target is not None:
            polyak_update(self.actor_target, self.actor, self.tau)

    def update_critic_target(self) -> None:
        if self.critic_target is not None:
            polyak_update(self.critic_target, self.critic, self.tau)

    @classmethod
    def continuation_options(cls, source: "Algorithm") -> dict[str, Any]:
        """Constructor options for this class continuing ``source`` (online fine-tuning): the same
        network architectures (weights copied later, TRANSFERRED) and data conventions."""
        return {"actor": copy_factory(source.actor), "critic": copy_factory(source.critic),
                "gamma": source.gamma, "max_action": source.max_action,
                "normalize_states": source.normalize_states, "device": source.device}

    def run_step(self, name: str, fn: Callable[..., dict], *args: Any,
                 planned: int | None = None) -> dict[str, torch.Tensor]:
        """``fn(*args)``, compiled when the compiler says so. ``name`` identifies the step
        function (one compiled graph each); ``planned``: how many times the phase calling it
        will run it (None: the run's offline updates), for the compile-or-not rule."""
        compiler = self.compiler
        if compiler is None:
            return fn(*args)
        return compiler.call(name, fn, args, planned)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [v for v in vars(self).values() if isinstance(v, torch.optim.Optimizer)]

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.actor.act(obs, deterministic=deterministic)

    def state_dict(self) -> dict:
        state = {name: getattr(self, name).state_dict() for name in self._state_attrs}
        state["total_updates"] = self.total_updates
        return state

    def load_state_dict(self, state: dict) -> None:
        """Loads a state written on any device (map it to the CPU or this device): optimiser
        states move to the parameters' devices, Adam's ``capturable`` flag is this process's."""
        for name in self._state_attrs:
            getattr(self, name).load_state_dict(state[name])
        self.total_updates = int(state["total_updates"])
        if self.compiler is not None:
            self.compiler.state_loaded()
        else:
            for optimizer in self.optimizers():
                set_capturable(optimizer, False)
