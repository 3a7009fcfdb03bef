"""TD3 (Fujimoto et al., 2018): TD3+BC without the behaviour-cloning term, the online algorithm
that fine-tuning continues with ("Finetuning from offline RL", section 3.2).

The critic step, target policy smoothing, policy delay and Polyak updates are TD3+BC's (Table B1:
target noise 0.2 clipped at 0.5, delay 2, tau 5e-3, lr 3e-4). The actor maximises Q_1(s, pi(s)).

``dqda_clipping`` (appendix B: "clipping the gradient of the critic with respect to the policy
action improves stability", as Acme's DDPG/D4PG do): dQ/da is clipped element-wise to
[-c, c] before it flows into the actor. The loss then is the surrogate
-mean(Q) + mean(sum_j (pi_j - stop_grad(pi_j)) * -clip(dQ/da_j)), whose value is -mean(Q) and whose
gradient is the clipped deterministic policy gradient (rlax's dpg_loss has the same gradient).
"""

from __future__ import annotations

import torch

from offline_rl.algo.td3_bc import TD3BC
from offline_rl.dataset.replay import Batch


class TD3(TD3BC):
    def __init__(self, *args, dqda_clipping: float | None = None, **kwargs):
        kwargs.pop("alpha", None)  # no behaviour cloning
        super().__init__(*args, **kwargs)
        self.dqda_clipping = None if dqda_clipping is None else float(dqda_clipping)

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
