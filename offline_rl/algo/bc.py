"""Behaviour cloning (the BC baseline of the paper's Table 2): a deterministic actor fit to the
dataset actions by MSE, states normalised as in TD3+BC. No critic."""

from __future__ import annotations

from typing import Callable

import torch
from offline_rl.algo.adam import adam
from offline_rl.algo.base import Algorithm, TargetTransform
from offline_rl.algo.losses import bc_loss
from offline_rl.dataset.replay import Batch
from offline_rl.network import DeterministicActor


class BC(Algorithm):
    has_critic = False
    step_prefix = "bc"
    _state_attrs = ("actor", "actor_optimizer")

    def __init__(self, obs_dim: int, act_dim: int, actor: Callable[..., DeterministicActor],
                 critic=None, actor_lr: float = 3e-4, gamma: float = 0.99, max_action: float = 1.0,
                 normalize_states: bool = True, device: torch.device | str = "cpu",
                 target_transform: TargetTransform | None = None):
        super().__init__(normalize_states, gamma, device, target_transform)
        self.actor = actor(obs_dim, act_dim, max_action=max_action).to(self.device)
        self.actor_optimizer = adam(self.actor, actor_lr)
        self.max_action = max_action

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return bc_loss(self, batch), {}

    def update_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        loss, _ = self.actor_loss(batch)
        self.step_actor(loss)
        return {"bc_loss": loss.detach()}

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.total_updates += 1
        return self.run_step(f"{self.step_prefix}.update", self.update_step, batch)
