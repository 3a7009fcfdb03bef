"""Behaviour cloning (the BC baseline of the paper's Table 2): a deterministic actor fit to the
dataset actions by MSE, states normalised as in TD3+BC. No critic."""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from offline_rl.algo.common import Algorithm, adam
from offline_rl.dataset.replay import Batch
from offline_rl.network import DeterministicActor


class BC(Algorithm):
    has_critic = False
    _state_attrs = ("actor", "actor_optimizer")

    def __init__(self, obs_dim: int, act_dim: int, actor: Callable[..., DeterministicActor],
                 critic=None, actor_lr: float = 3e-4, gamma: float = 0.99, max_action: float = 1.0,
                 normalize_states: bool = True, device: torch.device | str = "cpu"):
        super().__init__(normalize_states, gamma, device)
        self.actor = actor(obs_dim, act_dim, max_action=max_action).to(self.device)
        self.actor_optimizer = adam(self.actor, actor_lr)

    def actor_loss(self, batch: Batch) -> torch.Tensor:
        return F.mse_loss(self.actor(batch.observations), batch.actions)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.total_updates += 1
        loss = self.actor_loss(batch)
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optimizer.step()
        return {"bc_loss": loss.detach()}
