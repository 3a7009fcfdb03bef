"""The algorithm contract: what every algorithm offers the training loop, pre-training and
fine-tuning, each member declared here (abstract, or with a default that says what is missing),
and the capability flags that every compatibility check reads (``Scheme.check`` for pre-training,
``OnlineFinetuning.check`` for fine-tuning). An algorithm is one file that subclasses
``Algorithm``, sets its flags, and defines the members its flags promise (tests/test_contract.py
checks that it does).
"""

from __future__ import annotations

import abc
import copy
from typing import Any, Callable

import torch
from torch import nn

from offline_rl.algo.adam import minimise, set_capturable
from offline_rl.options import boolean, number_in, positive_number

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


TargetTransform = Callable[[Any, torch.Tensor], tuple[torch.Tensor, dict]]


def copy_factory(module: nn.Module) -> Callable[..., nn.Module]:
    """A network factory giving a copy of ``module`` (same architecture; weights set later)."""
    return lambda *args, **kwargs: copy.deepcopy(module)


class Algorithm(abc.ABC):
    """What every algorithm offers the training loop, pre-training and fine-tuning.

    Losses follow one convention, as TorchRL's objectives: ``(batch) -> (loss, metrics)``, no
    optimiser inside; an update step minimises them through the ``step_*`` methods and runs
    through ``run_step`` (one compiled graph per step function, training/compiled.py).

    The loop uses ``update``, ``act``, ``state_dict``/``load_state_dict``, ``gamma``,
    ``normalize_states``, ``device``, ``max_action``. Pre-training (offline_rl/pretrain) uses the
    losses, the ``step_*`` and ``update_*_target`` methods, ``critic_values``, ``td_target``,
    ``entropy_temperature``, ``mc_member_reduction`` and ``cql_on_min_q``; fine-tuning
    (offline_rl/finetune) ``continuation_options`` and ``TRANSFERRED``. Which of them an algorithm
    has is what its capability flags say; the members a flag promises raise ``MissingCapability``
    in an algorithm without it, which the checks keep from ever being called.

    ``target_transform`` (a constructor option; QT-max's, pretrain/qt_max.py) reshapes every TD
    target the algorithm's critic learns from: ``(batch, target) -> (target, metrics)``.
    Subclasses list what they checkpoint in ``_state_attrs``, and the options their YAML node
    may hold in ``OPTIONS`` (offline_rl/options.py; inherited, so only their own)."""

    #: options every algorithm understands (where its YAML sets them); the config is checked
    #: against these before anything is built (offline_rl/config.py)
    OPTIONS = {
        "gamma": number_in(0.0, 1.0, low_open=True, high_open=True),
        "tau": number_in(0.0, 1.0, low_open=True),
        "actor_lr": positive_number(),
        "critic_lr": positive_number(),
        "max_action": positive_number(),
        "normalize_states": boolean(),
    }

    # ----- capabilities: what every compatibility check reads ---------------------------------
    #: "deterministic" (a = pi(s): the TD3 family, hard pre-training, Algorithm 1) or
    #: "stochastic" (a ~ pi(.|s), tanh-Gaussian: SAC, EDAC, CQL)
    actor_kind: str = "deterministic"
    #: a learned entropy temperature alpha: ``alpha_loss``, ``entropy_temperature``, and a
    #: critic target with the entropy bonus (soft pre-training, Algorithm 2, needs it)
    entropy_regularised: bool = False
    #: Q-functions: ``critic``, ``critic_target``, ``critic_loss``, ``critic_values``, ``td_target``
    has_critic: bool = True
    #: a state-value network V(s) besides the Q-functions: ``value``, stepped by
    #: ``critic_optimizer`` (critic pre-training regresses it on the Monte-Carlo returns too)
    has_value_network: bool = False

    #: how the reference code reduces the MC (and CQL) loss over the critic's members
    mc_member_reduction: str = "sum"
    cql_on_min_q: bool = False
    #: the compiled update steps' names begin with this (``td3_bc.critic``, ``edac.update``)
    step_prefix: str = "algo"
    #: the modules whose weights a fine-tuning algorithm takes over from this one
    TRANSFERRED = ("actor", "actor_target", "critic", "critic_target", "temperature")
    _state_attrs: tuple[str, ...] = ()

    actor: nn.Module
    critic: Any = None
    actor_target: Any = None
    critic_target: Any = None
    temperature: Any = None  # the entropy temperature's module (entropy-regularised algorithms)
    value: Any = None        # V(s), obs -> [B] (algorithms with has_value_network)
    max_action: float = 1.0
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

    # ----- what every algorithm defines --------------------------------------------------------
    @abc.abstractmethod
    def update(self, batch) -> dict[str, torch.Tensor]:
        """One update of every part of the algorithm; counts ``total_updates``."""

    @abc.abstractmethod
    def actor_loss(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The actor's loss on a batch, and its metrics."""

    def reward_scale(self, data) -> float:
        """The factor the replay multiplies every reward by (the offline data's and, when
        fine-tuning, the online ones): 1 unless the algorithm normalises rewards (IQL)."""
        return 1.0

    # ----- what ``has_critic`` promises -----------------------------------------------------
    def critic_loss(self, batch, target: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The critic's loss; the TD target from ``target(batch)`` unless given (tests do)."""
        raise MissingCapability(self, "has_critic", "critic_loss")

    def critic_values(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q of every critic member at the batch's actions [N, B], the critic's regulariser)."""
        raise MissingCapability(self, "has_critic", "critic_values")

    def td_target(self, batch) -> torch.Tensor:
        """The TD(0) target [B], before any ``target_transform``."""
        raise MissingCapability(self, "has_critic", "td_target")

    @property
    def critic_regulariser_weight(self) -> float:
        """The weight of ``critic_values``' regulariser in the critic loss (EDAC's eta)."""
        return 0.0

    # ----- what ``entropy_regularised`` promises -----------------------------------------------
    def alpha_loss(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The entropy temperature's loss (target entropy -|A|)."""
        raise MissingCapability(self, "entropy_regularised", "alpha_loss")

    @property
    def entropy_temperature(self) -> torch.Tensor:
        """alpha, a 0-d tensor (Eq. 19, 20)."""
        raise MissingCapability(self, "entropy_regularised", "entropy_temperature")

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


class MissingCapability(TypeError):
    """A member the algorithm does not have was used: a pairing the checks (``Scheme.check``,
    ``OnlineFinetuning.check``) should have refused."""

    def __init__(self, algo: Algorithm, flag: str, member: str, why: str | None = None):
        why = why or f"{type(algo).__name__} has {flag}=False"
        super().__init__(f"{why}: it has no {member} (a compatibility check should have refused "
                         f"this pairing)")
