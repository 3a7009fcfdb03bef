"""CrossQ (Bhatt et al., ICLR 2024): SAC with Batch Renormalization in actor and critic and no
target networks; the critic sees (s, a) and (s', a') in one joint forward pass, so its batch
statistics are those of both halves.

Defaults are the paper's (and SBX's reference implementation): Adam lr 1e-3 with beta1 = 0.5,
policy delay 3, BatchRenorm momentum 0.99 with r_max = 3, d_max = 5 after 100k warm-up updates of
plain batch normalisation, automatic entropy temperature (target -|A|), twin critics, gamma 0.99.
The paper's critic is 2 x 2048 wide; ``critic_width`` chooses (on 2 CPU cores a 2048-wide critic
costs ~30 GFLOP per update; see docs/datasets.md for what this project uses).

Actions for the TD target come from the actor in evaluation mode (running statistics), the actor
loss reads the critic in evaluation mode, as the reference does; acting in an environment uses
evaluation mode too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from offline_rl.algo.base import Algorithm, MissingCapability, TargetTransform
from offline_rl.algo.edac import Temperature
from offline_rl.algo.losses import td_loss
from offline_rl.dataset.replay import Batch
from offline_rl.network import gaussian_log_prob, tanh_log_det
from offline_rl.precision import float32_region, to_float32


class BatchRenorm(nn.Module):
    """Batch Renormalization (Ioffe, 2017) over the batch dimension (dim -2) of [B, H] or
    [N, B, H] inputs (one set of statistics per ensemble member). ``train``: normalise by the
    batch's statistics, corrected by r and d (clipped to ``r_max`` / ``d_max``, which are tensors:
    1 and 0 during warm-up, i.e. plain batch normalisation), and update the running statistics;
    otherwise normalise by the running statistics."""

    def __init__(self, dim: int, ensemble_size: int | None = None, momentum: float = 0.99,
                 eps: float = 1e-3):
        super().__init__()
        shape = (dim,) if ensemble_size is None else (ensemble_size, 1, dim)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_var", torch.ones(shape))
        self.register_buffer("r_max", torch.ones(()))
        self.register_buffer("d_max", torch.zeros(()))
        self.momentum, self.eps = momentum, eps

    def forward(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = to_float32(x)  # statistics in float32 in bf16 update steps (offline_rl/precision.py)
        if not train:
            x_hat = (x - self.running_mean) * torch.rsqrt(self.running_var + self.eps)
            return x_hat * self.weight + self.bias
        mean = x.mean(-2, keepdim=True)
        var = x.var(-2, unbiased=False, keepdim=True)
        std = torch.sqrt(var + self.eps)
        with torch.no_grad():
            running_std = torch.sqrt(self.running_var + self.eps)
            r = (std / running_std).clamp(1.0 / self.r_max, self.r_max)
            d = ((mean - self.running_mean) / running_std).clamp(-self.d_max, self.d_max)
            shape = self.running_mean.shape
            self.running_mean.lerp_(mean.reshape(shape), 1.0 - self.momentum)
            self.running_var.lerp_(var.reshape(shape), 1.0 - self.momentum)
        x_hat = (x - mean) / std * r + d
        return x_hat * self.weight + self.bias


def batch_renorm_layers(module: nn.Module) -> list[BatchRenorm]:
    return [m for m in module.modules() if isinstance(m, BatchRenorm)]


class _Linear(nn.Module):
    """A linear layer, one per ensemble member when ``ensemble_size`` is given (batched matmul);
    ``output``: a network's head, computed in float32 (as offline_rl.network.OutputLinear)."""

    def __init__(self, in_dim: int, out_dim: int, ensemble_size: int | None = None,
                 output: bool = False):
        super().__init__()
        self.output = output
        members = 1 if ensemble_size is None else ensemble_size
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default distribution
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim).uniform_(-bound, bound))
        self.ensemble = ensemble_size is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output:
            with float32_region(x):
                return self._product(to_float32(x))
        return self._product(x)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        if self.ensemble:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.addmm(self.bias[0], x, self.weight[0])


class BRNMLP(nn.Module):
    """BatchRenorm on the input, then (Linear -> ReLU -> BatchRenorm) per hidden layer, then a
    Linear head: the reference's layout for actor and critic."""

    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int,
                 ensemble_size: int | None = None, momentum: float = 0.99):
        super().__init__()
        self.input_norm = BatchRenorm(in_dim, ensemble_size, momentum)
        dims = [in_dim] + [width] * depth
        self.hidden = nn.ModuleList(_Linear(a, b, ensemble_size) for a, b in zip(dims, dims[1:]))
        self.norms = nn.ModuleList(BatchRenorm(b, ensemble_size, momentum) for b in dims[1:])
        self.head = _Linear(dims[-1], out_dim, ensemble_size, output=True)

    def forward(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = self.input_norm(x, train)
        for linear, norm in zip(self.hidden, self.norms):
            x = norm(torch.relu(linear(x)), train)
        return self.head(x)


class BRNCritic(nn.Module):
    """Twin (or N) critics Q_i(s, a) -> [N, B], batch-renormalised, one batched network."""

    def __init__(self, obs_dim: int, act_dim: int, num_critics: int = 2, width: int = 2048,
                 depth: int = 2, momentum: float = 0.99):
        super().__init__()
        self.net = BRNMLP(obs_dim + act_dim, width, depth, 1, num_critics, momentum)
        self.num_critics = num_critics

    def forward(self, obs: torch.Tensor, act: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = torch.cat([obs, act], dim=-1).unsqueeze(0).expand(self.num_critics, -1, -1)
        return self.net(x, train).squeeze(-1)


class BRNTanhGaussianActor(nn.Module):
    """SAC's tanh-Gaussian actor on a batch-renormalised trunk (log sigma clipped to [-5, 2])."""

    def __init__(self, obs_dim: int, act_dim: int, width: int = 256, depth: int = 2,
                 max_action: float = 1.0, momentum: float = 0.99,
                 log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        self.net = BRNMLP(obs_dim, width, depth, 2 * act_dim, None, momentum)
        self.max_action = max_action
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: torch.Tensor, deterministic: bool = False, need_log_prob: bool = True,
                train: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        mu, log_std = self.net(obs, train).chunk(2, dim=-1)
        log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        pre_tanh = mu if deterministic else mu + torch.randn_like(mu) * log_std.exp()
        action = torch.tanh(pre_tanh)
        log_prob = None
        if need_log_prob:
            log_prob = gaussian_log_prob(pre_tanh, mu, log_std) - tanh_log_det(action)
        return action * self.max_action, log_prob

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self(obs, deterministic=deterministic, need_log_prob=False)[0]


class CrossQ(Algorithm):
    actor_kind = "stochastic"
    entropy_regularised = True
    step_prefix = "crossq"
    _state_attrs = ("actor", "critic", "temperature", "actor_optimizer", "critic_optimizer",
                    "alpha_optimizer")

    def __init__(self, obs_dim: int, act_dim: int, actor_width: int = 256, critic_width: int = 2048,
                 depth: int = 2, num_critics: int = 2, gamma: float = 0.99,
                 learning_rate: float = 1e-3, adam_beta1: float = 0.5, policy_delay: int = 3,
                 momentum: float = 0.99, renorm_warmup: int = 100_000, r_max: float = 3.0,
                 d_max: float = 5.0, initial_alpha: float = 1.0,
                 target_entropy: float | None = None, max_action: float = 1.0,
                 normalize_states: bool = False, device: torch.device | str = "cpu",
                 target_transform: TargetTransform | None = None):
        super().__init__(normalize_states, gamma, device, target_transform)
        self.actor = BRNTanhGaussianActor(obs_dim, act_dim, actor_width, depth, max_action,
                                          momentum).to(self.device)
        self.critic = BRNCritic(obs_dim, act_dim, num_critics, critic_width, depth,
                                momentum).to(self.device)
        self.temperature = Temperature(initial_alpha).to(self.device)
        betas = (adam_beta1, 0.999)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), learning_rate, betas,
                                                foreach=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), learning_rate, betas,
                                                 foreach=True)
        self.alpha_optimizer = torch.optim.Adam(self.temperature.parameters(), learning_rate,
                                                betas, foreach=True)
        self.policy_delay, self.max_action = int(policy_delay), max_action
        self.renorm_warmup, self.r_max, self.d_max = int(renorm_warmup), r_max, d_max
        self.target_entropy = -float(act_dim) if target_entropy is None else float(target_entropy)

    @property
    def entropy_temperature(self) -> torch.Tensor:
        """SAC's alpha = exp(log_alpha), detached."""
        return self.temperature().detach()

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.actor.act(obs, deterministic=deterministic)

    # ----- losses -----------------------------------------------------------------------------
    def td_target(self, batch: Batch) -> torch.Tensor:
        raise MissingCapability(self, "has_critic", "separate td_target", why=(
            "CrossQ computes its TD target inside critic_loss, from one joint forward of (s, a) and "
            "(s', a') through its batch-renormalised critic (the data-generating agent; no "
            "pre-training scheme uses it)"))

    def critic_loss(self, batch: Batch, target: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum over critics of the MSE to r + gamma (1 - done) (min_i Q_i(s', a') - alpha log pi),
        Q(s, a) and Q(s', a') from one joint forward in training mode, the target half detached
        (no target network: the target comes from this forward, so ``target`` is not taken)."""
        with torch.no_grad():
            next_action, next_log_prob = self.actor(batch.next_observations, train=False)
        obs = torch.cat([batch.observations, batch.next_observations])
        actions = torch.cat([batch.actions, next_action])
        q_all = self.critic(obs, actions, train=True)  # [N, 2B]
        q, q_next = q_all.chunk(2, dim=-1)
        next_v = q_next.detach().min(0).values - self.entropy_temperature * next_log_prob
        target = batch.rewards + self.gamma * (1.0 - batch.dones) * next_v
        metrics = {}
        if self.target_transform is not None:
            target, metrics = self.target_transform(batch, target)
        return td_loss(q, target), {"q_target": target.mean().detach(), **metrics}

    def actor_and_alpha_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(alpha log pi(a~|s) - min_i Q_i(s, a~), the temperature's loss, metrics) from one
        policy sample: the actor in training mode, the critic in evaluation mode."""
        action, log_prob = self.actor(batch.observations, train=True)
        q = self.critic(batch.observations, action, train=False).min(0).values
        actor_loss = (self.entropy_temperature * log_prob - q).mean()
        alpha_loss = (-self.temperature.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        return actor_loss, alpha_loss, {"entropy": -log_prob.detach().mean()}

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, _, metrics = self.actor_and_alpha_loss(batch)
        return loss, metrics

    def alpha_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.actor_and_alpha_loss(batch)[1], {}

    # ----- one update -------------------------------------------------------------------------
    def critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        loss, metrics = self.critic_loss(batch)
        self.step_critic(loss)
        return {"critic_loss": loss.detach(), **metrics}

    def critic_actor_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        metrics = self.critic_step(batch)
        actor_loss, alpha_loss, actor_metrics = self.actor_and_alpha_loss(batch)
        self.step_actor(actor_loss)
        self.step_temperature(alpha_loss)
        return {**metrics, "actor_loss": actor_loss.detach(), "alpha_loss": alpha_loss.detach(),
                "alpha": self.entropy_temperature, **actor_metrics}

    def _set_renorm(self) -> None:
        """After ``renorm_warmup`` updates, batch renormalisation's corrections are allowed."""
        on = self.total_updates > self.renorm_warmup
        for module in (self.actor, self.critic):
            for layer in batch_renorm_layers(module):
                layer.r_max.fill_(self.r_max if on else 1.0)
                layer.d_max.fill_(self.d_max if on else 0.0)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.total_updates += 1
        if self.total_updates in (1, self.renorm_warmup + 1):
            self._set_renorm()
        if self.total_updates % self.policy_delay == 0:
            return self.run_step(f"{self.step_prefix}.critic_actor", self.critic_actor_step, batch)
        return self.run_step(f"{self.step_prefix}.critic", self.critic_step, batch)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._set_renorm()
