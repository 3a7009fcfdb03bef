"""Small pieces every algorithm uses: Polyak averaging, optimisers, (de)serialisation."""

from __future__ import annotations

import copy

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


class Algorithm:
    """Shared plumbing. Subclasses list what they checkpoint in ``_state_attrs``."""

    _state_attrs: tuple[str, ...] = ()
    #: whether the actor is a stochastic (tanh-Gaussian) policy -- decides which pre-training fits
    stochastic_actor: bool = False
    #: whether the algorithm's critic learns from a TD target (pre-training schemes need one)
    has_critic: bool = True

    def __init__(self, normalize_states: bool, gamma: float, device: torch.device | str):
        self.normalize_states = normalize_states
        self.gamma = gamma
        self.device = torch.device(device)
        self.total_updates = 0

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.actor.act(obs, deterministic=deterministic)

    def state_dict(self) -> dict:
        state = {name: getattr(self, name).state_dict() for name in self._state_attrs}
        state["total_updates"] = self.total_updates
        return state

    def load_state_dict(self, state: dict) -> None:
        for name in self._state_attrs:
            getattr(self, name).load_state_dict(state[name])
        self.total_updates = int(state["total_updates"])
