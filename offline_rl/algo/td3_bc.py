"""TD3+BC (Fujimoto & Gu, 2021), as in CORL's td3_bc.py: TD3 (td3.py) whose actor also clones the
dataset's actions.

Hyper-parameters follow the paper's Table / CORL defaults: alpha = 2.5, policy delay 2, target
policy noise 0.2 clipped at 0.5, tau = 5e-3, lr 3e-4, gamma = 0.99, states normalised.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from offline_rl.algo.td3 import TD3
from offline_rl.dataset.replay import Batch
from offline_rl.options import non_negative


class TD3BC(TD3):
    OPTIONS = {"alpha": non_negative()}
    step_prefix = "td3_bc"

    def __init__(self, *args, alpha: float = 2.5, **td3_options):
        if td3_options.get("dqda_clipping") is not None:
            raise TypeError("TD3BC: dqda_clipping applies to TD3's actor loss, not TD3+BC's")
        super().__init__(*args, **td3_options)
        # the paper's alpha (Fujimoto & Gu, Eq. 3): the Q term's weight against BC is
        # lambda = alpha / mean|Q|
        self.q_weight = alpha

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-lambda * Q_1(s, pi(s)) + (pi(s) - a)^2, lambda = alpha / mean|Q_1| (detached)."""
        pi = self.actor(batch.observations)
        q = self.critic.member(0, batch.observations, pi)
        lmbda = self.q_weight / q.abs().mean().detach()
        bc = F.mse_loss(pi, batch.actions)
        return -lmbda * q.mean() + bc, {"bc_loss": bc.detach()}
