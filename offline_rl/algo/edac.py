"""EDAC (An et al., 2021) and SAC-N (EDAC with eta = 0), as in CORL's edac.py.

Defaults: N = 10 critics, eta = 1.0, automatic entropy temperature with target entropy -|A|,
tau = 5e-3, lr 3e-4 for actor, critic and temperature, gamma = 0.99, 3x256 networks, tanh-Gaussian
actor with log-sigma clipped to [-5, 2]. Update order alpha -> actor -> critic, as CORL (and the
EDAC authors) do. ``corl_init``: CORL's (and the paper's reference code's) special values --
hidden biases 0.1, output layers U(-1e-3, 1e-3) for the actor heads and U(-3e-3, 3e-3) for the
critic's last layer. The critic's other weights are ours, not theirs: ``EnsembleLinear`` draws
U(+-1/sqrt(fan_in)) (nn.Linear's distribution) where CORL's and the reference's VectorizedLinear take
the fan-in from a transposed tensor and draw U(+-1/sqrt(256)) for every hidden layer (the first
layer's differs most: fan-in 14 on Hopper, bound 0.27 here against 0.0625 there).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from offline_rl.algo.adam import adam
from offline_rl.algo.base import Algorithm, TargetTransform, frozen_copy
from offline_rl.algo.losses import td_loss
from offline_rl.dataset.replay import Batch
from offline_rl.network import (EnsembleCritic, EnsembleLayerNorm, EnsembleLinear,
                                TanhGaussianActor, linear_layers)
from offline_rl.options import any_number, boolean, int_at_least, non_negative, optional, positive_number
from offline_rl.precision import to_float32


#: the options of an algorithm with a learned entropy temperature (EDAC, SAC-N, CQL)
TEMPERATURE_OPTIONS = {"initial_alpha": positive_number(), "alpha_lr": positive_number(),
                       "target_entropy": optional(any_number(), "-|A|")}


class Temperature(nn.Module):
    """SAC's entropy temperature alpha = exp(log_alpha), learned."""

    def __init__(self, initial_alpha: float = 1.0):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(float(initial_alpha)).log())

    def forward(self) -> torch.Tensor:
        return self.log_alpha.exp()


def corl_edac_init_(actor: TanhGaussianActor, critic: EnsembleCritic) -> None:
    with torch.no_grad():
        for layer in linear_layers(actor.trunk):
            layer.bias.fill_(0.1)
        for head in (actor.mu, actor.log_std):
            nn.init.uniform_(head.weight, -1e-3, 1e-3)
            nn.init.uniform_(head.bias, -1e-3, 1e-3)
        critic_layers = linear_layers(critic)
        for layer in critic_layers[:-1]:
            layer.bias.fill_(0.1)
        nn.init.uniform_(critic_layers[-1].weight, -3e-3, 3e-3)
        nn.init.uniform_(critic_layers[-1].bias, -3e-3, 3e-3)


def diversity_loss(q_action_grads: torch.Tensor) -> torch.Tensor:
    """EDAC's ensemble gradient diversity term (An et al., 2021, Eq. 5).

    q_action_grads: [N, B, A] = dQ_i/da. With g_i the unit-normalised gradients, the loss is the
    mean over the batch of sum_{i != j} <g_i, g_j> / (N - 1). The pairwise sum is computed as
    ||sum_i g_i||^2 - sum_i ||g_i||^2: the same number as CORL's masked [B, N, N] Gram matrix,
    without building the matrix or an identity mask per sample.
    """
    num_critics = q_action_grads.shape[0]
    g = q_action_grads / (torch.norm(q_action_grads, p=2, dim=-1, keepdim=True) + 1e-10)
    pairwise = g.sum(0).pow(2).sum(-1) - g.pow(2).sum((0, 2))  # [B]
    return pairwise.mean() / (num_critics - 1)


def q_and_action_grad(critic: EnsembleCritic, obs: torch.Tensor,
                      actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Q_i(s, a) [N, B] and dQ_i/da [N, B, A] of an EnsembleCritic (obs [B, S], actions [B, A],
    shared by the members), the gradient written out as a differentiable backward pass through
    its layers (Linear, LayerNorm with or without affine, ReLU).

    The same numbers as ``torch.autograd.grad(Q.sum(), a, create_graph=True)``, but as plain
    first-order operations: the second-order gradient the diversity term sends to the critic is
    then ordinary backpropagation (no double backward through LayerNorm), and the forward pass is
    the critic's own (same operations as ``EnsembleCritic.forward``). None for a critic built of
    other layers (the caller then uses autograd)."""
    layers = list(critic.net)
    if not layers or not isinstance(layers[-1], EnsembleLinear) or not all(
            isinstance(layer, (EnsembleLinear, EnsembleLayerNorm, nn.ReLU)) for layer in layers):
        return None
    x = torch.cat([obs, actions], dim=-1)
    x = x.unsqueeze(0).expand(critic.num_critics, -1, -1)
    saved: list[tuple] = []
    for layer in layers:
        if isinstance(layer, EnsembleLinear):
            x = layer(x)
            saved.append(("linear", layer))
        elif isinstance(layer, EnsembleLayerNorm):
            x = to_float32(x)  # as EnsembleLayerNorm.forward (bf16 update steps)
            rstd = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + layer.eps)
            normed = F.layer_norm(x, x.shape[-1:], eps=layer.eps)
            x = normed if layer.weight is None else normed * layer.weight + layer.bias
            saved.append(("norm", layer, normed, rstd))
        else:
            x = torch.relu(x)
            saved.append(("relu", x))
    q = x.squeeze(-1)
    # backward for the input only: dQ/dx through the layers in reverse
    grad = layers[-1].weight.transpose(1, 2)  # [N, 1, H]: dQ / d(last hidden), any sample
    for index in range(len(saved) - 2, -1, -1):
        entry = saved[index]
        if entry[0] == "relu":
            grad = grad * (entry[1] > 0)
        elif entry[0] == "norm":
            layer, normed, rstd = entry[1:]
            if layer.weight is not None:
                grad = grad * layer.weight
            grad = rstd * (grad - grad.mean(-1, keepdim=True)
                           - normed * (grad * normed).mean(-1, keepdim=True))
        else:
            weight = entry[1].weight
            if index == 0:  # the first layer: only the action's rows
                weight = weight[:, obs.shape[-1]:, :]
            grad = torch.bmm(grad, weight.transpose(1, 2))
    return q, to_float32(grad)


class EDAC(Algorithm):
    OPTIONS = {**TEMPERATURE_OPTIONS, "num_critics": int_at_least(2), "eta": non_negative(),
               "corl_init": boolean()}
    actor_kind = "stochastic"
    entropy_regularised = True
    step_prefix = "edac"
    # critic pre-training: the MC loss averaged over the members, as the paper's reference code
    # does; a CQL term (pretrain.cql_weight) on the ensemble minimum is this project's choice (the
    # reference EDAC has no CQL)
    mc_member_reduction = "mean"
    cql_on_min_q = True
    _state_attrs = ("actor", "critic", "critic_target", "temperature", "actor_optimizer",
                    "critic_optimizer", "alpha_optimizer")

    def __init__(self, obs_dim: int, act_dim: int,
                 actor: Callable[..., TanhGaussianActor], critic: Callable[..., EnsembleCritic],
                 num_critics: int = 10, eta: float = 1.0, gamma: float = 0.99, tau: float = 5e-3,
                 actor_lr: float = 3e-4, critic_lr: float = 3e-4, alpha_lr: float = 3e-4,
                 initial_alpha: float = 1.0, target_entropy: float | None = None,
                 max_action: float = 1.0, normalize_states: bool = True,
                 corl_init: bool = True, device: torch.device | str = "cpu",
                 target_transform: TargetTransform | None = None):
        super().__init__(normalize_states, gamma, device, target_transform)
        self.actor = actor(obs_dim, act_dim, max_action=max_action).to(self.device)
        self.critic = critic(obs_dim, act_dim, num_critics=num_critics).to(self.device)
        if corl_init:
            corl_edac_init_(self.actor, self.critic)
        self.critic_target = frozen_copy(self.critic)
        self.temperature = Temperature(initial_alpha).to(self.device)
        self.actor_optimizer = adam(self.actor, actor_lr)
        self.critic_optimizer = adam(self.critic, critic_lr)
        self.alpha_optimizer = adam(self.temperature, alpha_lr)
        self.num_critics, self.eta, self.tau = num_critics, eta, tau
        self.target_entropy = -float(act_dim) if target_entropy is None else float(target_entropy)
        self.max_action = max_action

    @property
    def entropy_temperature(self) -> torch.Tensor:
        """SAC's alpha = exp(log_alpha), detached."""
        return self.temperature().detach()

    @property
    def critic_regulariser_weight(self) -> float:
        return self.eta

    @classmethod
    def continuation_options(cls, source: Algorithm) -> dict:
        """SAC keeps the offline ensemble (SAC-N); its weights come from the offline networks."""
        return {**super().continuation_options(source), "num_critics": source.critic.num_critics,
                "corl_init": False}

    # ----- losses -----------------------------------------------------------------------------
    def alpha_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-log_alpha * (log pi(a~|s) + target_entropy), a~ ~ pi (no gradient to the actor)."""
        with torch.no_grad():
            _, log_prob = self.actor(batch.observations, need_log_prob=True)
        return (-self.temperature.log_alpha * (log_prob + self.target_entropy)).mean(), {}

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """alpha * log pi(a~|s) - min_i Q_i(s, a~) (subclasses that add actor regularisers on the
        batch's actions, e.g. EDAC+BC, override this)."""
        action, log_prob = self.actor(batch.observations, need_log_prob=True)
        q = self.critic(batch.observations, action)  # [N, B]
        loss = (self.entropy_temperature * log_prob - q.min(0).values).mean()
        return loss, {"entropy": -log_prob.detach().mean(), "q_policy_std": q.detach().std(0).mean()}

    @torch.no_grad()
    def td_target(self, batch: Batch) -> torch.Tensor:
        """r + gamma * (1 - done) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')), a' ~ pi(s')."""
        next_action, next_log_prob = self.actor(batch.next_observations, need_log_prob=True)
        next_q = self.critic_target(batch.next_observations, next_action).min(0).values
        next_v = next_q - self.entropy_temperature * next_log_prob
        return batch.rewards + self.gamma * (1.0 - batch.dones) * next_v

    def critic_values(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Q_i(s, a) [N, B] and the diversity term computed from the same forward: dQ_i/da written
        out as differentiable operations (``q_and_action_grad``), so the second-order gradient to
        the critic is ordinary backpropagation; autograd.grad(create_graph=True) for other critics."""
        if self.eta <= 0:
            return self.critic(batch.observations, batch.actions), torch.zeros((), device=self.device)
        explicit = q_and_action_grad(self.critic, batch.observations, batch.actions)
        if explicit is not None:
            q, grads = explicit
            return q, diversity_loss(grads)
        actions = batch.actions.unsqueeze(0).repeat(self.num_critics, 1, 1)
        actions.requires_grad_(True)
        q = self.critic(batch.observations, actions)
        grads, = torch.autograd.grad(q.sum(), actions, create_graph=True)
        return q, diversity_loss(grads)

    def critic_loss(self, batch: Batch, target: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum over critics of the MSE to the (possibly transformed) target, + eta * diversity."""
        target, metrics = self.target(batch) if target is None else (target, {})
        q, diversity = self.critic_values(batch)
        loss = td_loss(q, target) + self.eta * diversity
        return loss, {"diversity_loss": diversity.detach(), "q_target": target.mean(), **metrics}

    # ----- one update -------------------------------------------------------------------------
    def update_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """alpha -> actor -> critic -> target, each step's gradients for its own optimiser's
        parameters only; one step function (one compiled graph)."""
        alpha_loss, _ = self.alpha_loss(batch)
        self.step_temperature(alpha_loss)

        actor_loss, actor_metrics = self.actor_loss(batch)
        self.step_actor(actor_loss)

        critic_loss, critic_metrics = self.critic_loss(batch)
        self.step_critic(critic_loss)
        self.update_critic_target()
        return {"alpha_loss": alpha_loss.detach(), "actor_loss": actor_loss.detach(),
                "critic_loss": critic_loss.detach(), "alpha": self.entropy_temperature,
                **actor_metrics, **critic_metrics}

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.total_updates += 1
        return self.run_step(f"{self.step_prefix}.update", self.update_step, batch)
