"""TD3+BC (Fujimoto & Gu, 2021), as in CORL's td3_bc.py.

Hyper-parameters follow the paper's Table / CORL defaults: alpha = 2.5, policy delay 2, target
policy noise 0.2 clipped at 0.5, tau = 5e-3, lr 3e-4, gamma = 0.99, states normalised.
The twin critics are one EnsembleCritic with two members.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from offline_rl.algo.common import Algorithm, TargetTransform, adam, frozen_copy
from offline_rl.algo.losses import td_loss
from offline_rl.dataset.replay import Batch
from offline_rl.network import DeterministicActor, EnsembleCritic


class TD3BC(Algorithm):
    # as the reference code pre-trains the twin critics: MC loss summed over both, CQL per critic
    mc_member_reduction = "sum"
    cql_on_min_q = False
    _state_attrs = ("actor", "actor_target", "critic", "critic_target", "actor_optimizer",
                    "critic_optimizer")

    def __init__(self, obs_dim: int, act_dim: int,
                 actor: Callable[..., DeterministicActor], critic: Callable[..., EnsembleCritic],
                 alpha: float = 2.5, policy_delay: int = 2, policy_noise: float = 0.2,
                 noise_clip: float = 0.5, gamma: float = 0.99, tau: float = 5e-3,
                 actor_lr: float = 3e-4, critic_lr: float = 3e-4, max_action: float = 1.0,
                 normalize_states: bool = True, device: torch.device | str = "cpu",
                 target_transform: TargetTransform | None = None):
        super().__init__(normalize_states, gamma, device, target_transform)
        self.actor = actor(obs_dim, act_dim, max_action=max_action).to(self.device)
        self.critic = critic(obs_dim, act_dim, num_critics=2).to(self.device)
        self.actor_target = frozen_copy(self.actor)
        self.critic_target = frozen_copy(self.critic)
        self.actor_optimizer = adam(self.actor, actor_lr)
        self.critic_optimizer = adam(self.critic, critic_lr)
        # the paper's alpha (Fujimoto & Gu, Eq. 3): the Q term's weight against BC is
        # lambda = alpha / mean|Q|
        self.q_weight = alpha
        self.policy_delay = policy_delay
        self.policy_noise, self.noise_clip = policy_noise, noise_clip
        self.tau, self.max_action = tau, max_action

    # ----- losses -----------------------------------------------------------------------------
    @torch.no_grad()
    def td_target(self, batch: Batch) -> torch.Tensor:
        """r + gamma * (1 - done) * min_i Q'_i(s', clip(pi'(s') + clip(noise)))."""
        noise = (torch.randn_like(batch.actions) * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
        next_action = (self.actor_target(batch.next_observations) + noise).clamp(-self.max_action, self.max_action)
        next_q = self.critic_target(batch.next_observations, next_action).min(0).values
        return batch.rewards + self.gamma * (1.0 - batch.dones) * next_q

    def critic_values(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Q_1, Q_2 at the batch's actions [2, B]; TD3 has no critic regulariser."""
        return self.critic(batch.observations, batch.actions), torch.zeros((), device=self.device)

    def critic_loss(self, batch: Batch, target: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum over the twin critics of the MSE to the shared (possibly transformed) target
        (subclasses that add critic regularisers, e.g. TD3+BC+CQL, override this)."""
        target, metrics = self.target(batch) if target is None else (target, {})
        q, _ = self.critic_values(batch)  # [2, B]
        return td_loss(q, target), {"q_target": target.mean(), **metrics}

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-lambda * Q_1(s, pi(s)) + (pi(s) - a)^2, lambda = alpha / mean|Q_1| (detached)."""
        pi = self.actor(batch.observations)
        q = self.critic.member(0, batch.observations, pi)
        lmbda = self.q_weight / q.abs().mean().detach()
        bc = F.mse_loss(pi, batch.actions)
        return -lmbda * q.mean() + bc, {"bc_loss": bc.detach()}

    # ----- one update -------------------------------------------------------------------------
    def critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One critic step on the (possibly transformed) TD target."""
        loss, metrics = self.critic_loss(batch)
        self.step_critic(loss)
        return {"critic_loss": loss.detach(), **metrics}

    def actor_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One actor step (gradients for the actor optimiser's parameters only), then both
        targets Polyak-averaged."""
        loss, metrics = self.actor_loss(batch)
        self.step_actor(loss)
        self.update_critic_target()
        self.update_actor_target()
        return {"actor_loss": loss.detach(), **metrics}

    def critic_actor_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {**self.critic_step(batch), **self.actor_step(batch)}

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The critic every call, the actor and the targets every ``policy_delay``-th call. The
        two cases are two step functions (two compiled graphs), chosen here in Python: the
        counter never enters a graph."""
        self.total_updates += 1
        if self.total_updates % self.policy_delay == 0:
            return self.run_step("td3_bc.critic_actor", self.critic_actor_step, batch)
        return self.run_step("td3_bc.critic", self.critic_step, batch)
