"""IQL, Implicit Q-Learning (Kostrikov, Nair & Levine, 2022), as CORL's iql.py configures it for the
MuJoCo datasets -- the baseline the fine-tuning paper compares against (Table 1).

IQL never queries the critic at actions outside the dataset. Three networks learn from the batch:

    V:      expectile regression on the target critic, L_V = E[|tau - 1(u < 0)| u^2],
            u = min_i Q'_i(s, a) - V(s), expectile tau = 0.7 (an upper expectile of Q over the
            data's actions: V approaches the best action's value as tau -> 1)
    Q_1,2:  TD regression on V, L_Q = mean_i E[(Q_i(s, a) - (r + gamma (1 - d) V(s')))^2]
    actor:  advantage-weighted regression, L_pi = E[min(exp(beta A), 100) * bc(s, a)],
            A = min_i Q'_i(s, a) - V(s) (V before this update's V step), inverse temperature
            beta = 3.0; bc = ||pi(s) - a||^2 for the deterministic actor (CORL's choice for the
            MuJoCo datasets), -log pi(a|s) for the Gaussian one (``GaussianIQL``)

in that order in one update, then Q' Polyak-averaged (tau 5e-3). All learning rates 3e-4; the
actor's decays with a cosine schedule over the run's offline updates (CORL: over its 1M steps).
Rewards are normalised as CORL does on MuJoCo: multiplied by 1000 / (max - min episode return of
the dataset) (``normalize_rewards``), so that beta means the same on every dataset.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from offline_rl.algo.adam import adam, minimise
from offline_rl.algo.base import Algorithm, TargetTransform, copy_factory, frozen_copy
from offline_rl.dataset.replay import Batch
from offline_rl.network import NETWORK_OPTIONS, EnsembleCritic, hidden_dims, mlp
from offline_rl.options import boolean, int_at_least, non_negative, number_in, optional, positive_number


class StateValue(nn.Module):
    """V(s): an MLP shaped like the critics (conf/algo/iql.yaml takes the network group's)."""

    OPTIONS = NETWORK_OPTIONS

    def __init__(self, obs_dim: int, width: int = 256, depth: int = 2, layer_norm: bool = True,
                 layer_norm_affine: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, hidden_dims(width, depth), 1, layer_norm, layer_norm_affine)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class StepCounter(nn.Module):
    """A step count kept on the device (checkpointed with the algorithm): the actor's schedule
    reads and advances it inside the update step, without a host sync."""

    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float32))


def expectile_loss(u: torch.Tensor, expectile: float) -> torch.Tensor:
    """E[|tau - 1(u < 0)| u^2]: the asymmetric squared loss whose minimiser is the tau-expectile."""
    weight = torch.where(u < 0, 1.0 - expectile, expectile)
    return (weight * u ** 2).mean()


class IQL(Algorithm):
    OPTIONS = {"expectile": number_in(0.0, 1.0, low_open=True, high_open=True),
               "beta": non_negative(), "max_weight": positive_number(), "value_lr": positive_number(),
               "actor_schedule_steps": optional(int_at_least(1), "a constant learning rate"),
               "normalize_rewards": boolean()}
    actor_kind = "deterministic"
    has_value_network = True
    step_prefix = "iql"
    # Monte-Carlo pre-training of the twin critics: averaged over the two, as IQL's own Q loss
    mc_member_reduction = "mean"
    TRANSFERRED = ("actor", "critic", "critic_target", "value")
    _state_attrs = ("actor", "critic", "critic_target", "value", "actor_schedule",
                    "actor_optimizer", "critic_optimizer")

    def __init__(self, obs_dim: int, act_dim: int, actor: Callable[..., nn.Module],
                 critic: Callable[..., EnsembleCritic], value: Callable[..., StateValue],
                 expectile: float = 0.7, beta: float = 3.0, max_weight: float = 100.0,
                 gamma: float = 0.99, tau: float = 5e-3, actor_lr: float = 3e-4,
                 critic_lr: float = 3e-4, value_lr: float = 3e-4,
                 actor_schedule_steps: int | None = 1_000_000, normalize_rewards: bool = True,
                 max_action: float = 1.0, normalize_states: bool = True,
                 device: torch.device | str = "cpu", target_transform: TargetTransform | None = None):
        super().__init__(normalize_states, gamma, device, target_transform)
        self.actor = actor(obs_dim, act_dim, max_action=max_action).to(self.device)
        self.critic = critic(obs_dim, act_dim, num_critics=2).to(self.device)
        self.critic_target = frozen_copy(self.critic)
        self.value = value(obs_dim).to(self.device)
        self.actor_optimizer = adam(self.actor, actor_lr)
        # one Adam for Q and V, a parameter group each (their own learning rates): a loss that
        # reaches only one of them steps only that one, so this is CORL's two optimisers
        self.critic_optimizer = adam([{"params": list(self.critic.parameters()), "lr": critic_lr},
                                      {"params": list(self.value.parameters()), "lr": value_lr}],
                                     critic_lr)
        self.actor_schedule = StepCounter().to(self.device)
        self.actor_schedule_steps = actor_schedule_steps
        self.expectile, self.beta, self.max_weight = float(expectile), float(beta), float(max_weight)
        self.tau, self.max_action = tau, max_action
        self.normalize_rewards = bool(normalize_rewards)

    def reward_scale(self, data) -> float:
        """1000 / (max - min episode return of the dataset), CORL's MuJoCo normalisation."""
        if not self.normalize_rewards:
            return 1.0
        returns = data.episode_returns()
        spread = float(returns.max() - returns.min()) if len(returns) else 0.0
        return 1000.0 / spread if spread > 0 else 1.0

    @classmethod
    def continuation_options(cls, source: Algorithm) -> dict:
        """IQL continuing ``source``: its actor and critic architectures, and its V network (a
        fresh one, shaped like its critic's layers, when ``source`` has none)."""
        options = super().continuation_options(source)
        value = getattr(source, "value", None)
        options["value"] = copy_factory(value) if value is not None else StateValue
        return options

    # ----- losses -----------------------------------------------------------------------------
    @torch.no_grad()
    def td_target(self, batch: Batch) -> torch.Tensor:
        """r + gamma (1 - d) V(s'): IQL's Q target never evaluates an action outside the data."""
        return batch.rewards + self.gamma * (1.0 - batch.dones) * self.value(batch.next_observations)

    def critic_values(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Q_1, Q_2 at the batch's actions [2, B]; no critic regulariser."""
        return self.critic(batch.observations, batch.actions), torch.zeros((), device=self.device)

    def critic_loss(self, batch: Batch, target: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over the twin critics of the MSE to the (possibly transformed) TD target."""
        target, metrics = self.target(batch) if target is None else (target, {})
        q, _ = self.critic_values(batch)
        return ((q - target.unsqueeze(0)) ** 2).mean(), {"q_target": target.mean(), **metrics}

    def advantage(self, batch: Batch) -> torch.Tensor:
        """min_i Q'_i(s, a) - V(s), V with gradients (the value loss differentiates it)."""
        with torch.no_grad():
            q = self.critic_target(batch.observations, batch.actions).min(0).values
        return q - self.value(batch.observations)

    def value_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(the expectile loss of V, the advantages it was computed from, detached)."""
        advantage = self.advantage(batch)
        return expectile_loss(advantage, self.expectile), advantage.detach()

    def behaviour_loss(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Per sample: ||pi(s) - a||^2 summed over action dimensions."""
        return ((self.actor(obs) - actions) ** 2).sum(-1)

    def weighted_actor_loss(self, batch: Batch, advantage: torch.Tensor
                            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weight = torch.exp(self.beta * advantage.detach()).clamp(max=self.max_weight)
        behaviour = self.behaviour_loss(batch.observations, batch.actions)
        return (weight * behaviour).mean(), {"bc_loss": behaviour.detach().mean(),
                                             "weight": weight.mean()}

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Advantage-weighted regression with the current V."""
        with torch.no_grad():
            advantage = self.advantage(batch)
        return self.weighted_actor_loss(batch, advantage)

    # ----- one update -------------------------------------------------------------------------
    def actor_lr_scale(self) -> torch.Tensor | None:
        """The cosine schedule's factor for the next actor step, from the device-side counter
        (CORL's CosineAnnealingLR over ``actor_schedule_steps``); None: no schedule."""
        if not self.actor_schedule_steps:
            return None
        done = self.actor_schedule.count.clamp(max=float(self.actor_schedule_steps))
        return 0.5 * (1.0 + torch.cos(done * (math.pi / self.actor_schedule_steps)))

    def update_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """V, then Q on r + gamma V(s') with the new V, then the actor on the advantages under V
        before its step (CORL's order), then Q' Polyak-averaged."""
        value_loss, advantage = self.value_loss(batch)
        minimise(value_loss, self.critic_optimizer)
        critic_loss, critic_metrics = self.critic_loss(batch)
        minimise(critic_loss, self.critic_optimizer)
        actor_loss, actor_metrics = self.weighted_actor_loss(batch, advantage)
        minimise(actor_loss, self.actor_optimizer, self.actor_lr_scale())
        self.actor_schedule.count.add_(1.0)
        self.update_critic_target()
        return {"value_loss": value_loss.detach(), "critic_loss": critic_loss.detach(),
                "actor_loss": actor_loss.detach(), "advantage": advantage.mean(),
                **critic_metrics, **actor_metrics}

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.total_updates += 1
        return self.run_step(f"{self.step_prefix}.update", self.update_step, batch)


class GaussianIQL(IQL):
    """IQL with a Gaussian actor (the IQL paper's): the behaviour term is -log pi(a|s), the
    tanh-Gaussian actor's log-density of the dataset's action."""

    actor_kind = "stochastic"
    step_prefix = "iql_gaussian"

    def behaviour_loss(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return -self.actor.log_prob(obs, actions)
