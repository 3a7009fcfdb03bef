"""TD3 (Fujimoto et al., 2018): twin critics, target policy smoothing, delayed actor and target
updates; the online algorithm that fine-tuning continues with ("Finetuning from offline RL",
section 3.2), and the base of TD3+BC (td3_bc.py), TD3-C (td3_c.py) and TD3+BC+CQL.

Table B1 / CORL's values: target noise 0.2 clipped at 0.5, policy delay 2, tau 5e-3, lr 3e-4,
gamma 0.99. The twin critics are one EnsembleCritic with two members. The actor maximises
Q_1(s, pi(s)).

``dqda_clipping`` (appendix B: "clipping the gradient of the critic with respect to the policy
action improves stability", as Acme's DDPG/D4PG do): dQ/da is clipped element-wise to
[-c, c] before it flows into the actor. The loss then is the surrogate
-mean(Q) + mean(sum_j (pi_j - stop_grad(pi_j)) * -clip(dQ/da_j)), whose value is -mean(Q) and whose
gradient is the clipped deterministic policy gradient (rlax's dpg_loss has the same gradient).
"""

from __future__ import annotations

from typing import Callable

import torch

from offline_rl.algo.adam import adam
from offline_rl.algo.base import Algorithm, TargetTransform, frozen_copy
from offline_rl.algo.losses import td_loss
from offline_rl.dataset.replay import Batch
from offline_rl.network import DeterministicActor, EnsembleCritic
from offline_rl.options import int_at_least, non_negative, optional, positive_number


class TD3(Algorithm):
    OPTIONS = {"policy_delay": int_at_least(1), "policy_noise": non_negative(),
               "noise_clip": non_negative(), "dqda_clipping": optional(positive_number(), "off")}
    # as the reference code pre-trains the twin critics: MC loss summed over both, CQL per critic
    mc_member_reduction = "sum"
    cql_on_min_q = False
    step_prefix = "td3"
    _state_attrs = ("actor", "actor_target", "critic", "critic_target", "actor_optimizer",
                    "critic_optimizer")

    def __init__(self, obs_dim: int, act_dim: int,
                 actor: Callable[..., DeterministicActor], critic: Callable[..., EnsembleCritic],
                 policy_delay: int = 2, policy_noise: float = 0.2,
                 noise_clip: float = 0.5, gamma: float = 0.99, tau: float = 5e-3,
                 actor_lr: float = 3e-4, critic_lr: float = 3e-4, max_action: float = 1.0,
                 normalize_states: bool = True, device: torch.device | str = "cpu",
                 target_transform: TargetTransform | None = None,
                 dqda_clipping: float | None = None):
        super().__init__(normalize_states, gamma, device, target_transform)
        self.actor = actor(obs_dim, act_dim, max_action=max_action).to(self.device)
        self.critic = critic(obs_dim, act_dim, num_critics=2).to(self.device)
        self.actor_target = frozen_copy(self.actor)
        self.critic_target = frozen_copy(self.critic)
        self.actor_optimizer = adam(self.actor, actor_lr)
        self.critic_optimizer = adam(self.critic, critic_lr)
        self.policy_delay = policy_delay
        self.policy_noise, self.noise_clip = policy_noise, noise_clip
        self.tau, self.max_action = tau, max_action
        self.dqda_clipping = None if dqda_clipping is None else float(dqda_clipping)

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

    def policy_loss(self, obs: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """-mean Q_1(s, pi(s)), with dQ/da clipped when ``dqda_clipping`` is set."""
        if self.dqda_clipping is None:
            return -self.critic.member(0, obs, pi).mean()
        action = pi.detach().requires_grad_(True)
        q = self.critic.member(0, obs, action)
        dqda, = torch.autograd.grad(q.sum(), action)
        dqda = dqda.clamp(-self.dqda_clipping, self.dqda_clipping)
        return -q.detach().mean() - ((pi - pi.detach()) * dqda).sum(-1).mean()

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-mean Q_1(s, pi(s)); the MSE of pi(s) to the batch's actions is logged only."""
        pi = self.actor(batch.observations)
        loss = self.policy_loss(batch.observations, pi)
        return loss, {"bc_loss": ((pi.detach() - batch.actions) ** 2).mean()}

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
            return self.run_step(f"{self.step_prefix}.critic_actor", self.critic_actor_step, batch)
        return self.run_step(f"{self.step_prefix}.critic", self.critic_step, batch)
