"""The CORL-style references ``make bench`` times against: TD3+BC and EDAC updates and their
pre-training steps written as CORL's td3_bc.py / edac.py write them (one module per TD3 critic,
torch.distributions, the diversity term from a second critic forward and a masked [B, N, N] Gram
matrix, EDAC's logging-only critic pass, ``.item()`` for every logged number, zero_grad / backward /
step, a Python loop for Polyak averaging, ``torch.optim.Adam`` with its defaults), built from this
package's networks and weights so that both sides start from the same state."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributions import Normal
from torch.nn import functional as F

from offline_rl.algo.edac import EDAC
from offline_rl.algo.td3_bc import TD3BC
from offline_rl.dataset.replay import Batch
from offline_rl.network import EnsembleCritic, EnsembleLayerNorm, EnsembleLinear, TanhGaussianActor


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """CORL's soft_update: a Python loop over the parameters."""
    for target_param, source_param in zip(target.parameters(), source.parameters()):
        target_param.data.copy_((1 - tau) * target_param.data + tau * source_param.data)


def corl_batch(batch: Batch) -> tuple:
    """CORL's replay returns rewards and dones as [B, 1]."""
    return (batch.observations, batch.actions, batch.rewards.unsqueeze(-1), batch.next_observations,
            batch.dones.unsqueeze(-1), batch.returns_to_go.unsqueeze(-1))


def member_mlp(critic: EnsembleCritic, index: int) -> nn.Sequential:
    """Ensemble member ``index`` as its own nn.Sequential (one module per critic, as CORL's TD3+BC)."""
    layers: list[nn.Module] = []
    for layer in critic.net:
        if isinstance(layer, EnsembleLinear):
            linear = nn.Linear(layer.weight.shape[1], layer.weight.shape[2])
            with torch.no_grad():
                linear.weight.copy_(layer.weight[index].T)
                linear.bias.copy_(layer.bias[index, 0])
            layers.append(linear)
        elif isinstance(layer, EnsembleLayerNorm):
            layers.append(nn.LayerNorm(_hidden(critic), elementwise_affine=False, eps=layer.eps))
        else:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(critic.net[0].weight.device)


def _hidden(critic: EnsembleCritic) -> int:
    return critic.net[0].weight.shape[-1]


class CorlCritic(nn.Module):
    def __init__(self, net: nn.Sequential):
        super().__init__()
        self.net = net

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, action], 1))


class CorlTD3BC:
    """CORL's td3_bc.py TD3_BC.train, with this package's networks (LayerNorm) and weights."""

    def __init__(self, algo: TD3BC):
        self.actor = copy.deepcopy(algo.actor)
        self.actor_target = copy.deepcopy(algo.actor_target)
        self.critic_1, self.critic_2 = (CorlCritic(member_mlp(algo.critic, i)) for i in (0, 1))
        self.critic_1_target = copy.deepcopy(self.critic_1)
        self.critic_2_target = copy.deepcopy(self.critic_2)
        lr = algo.actor_optimizer.param_groups[0]["lr"]
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_1_optimizer = torch.optim.Adam(self.critic_1.parameters(), lr=lr)
        self.critic_2_optimizer = torch.optim.Adam(self.critic_2.parameters(), lr=lr)
        self.max_action, self.discount, self.tau = algo.max_action, algo.gamma, algo.tau
        self.policy_noise, self.noise_clip = algo.policy_noise, algo.noise_clip
        self.policy_freq, self.alpha = algo.policy_delay, algo.q_weight
        self.total_it = 0

    def train(self, batch: tuple) -> dict[str, float]:
        log_dict = {}
        self.total_it += 1
        state, action, reward, next_state, done, _ = batch
        not_done = 1 - done
        with torch.no_grad():
            noise = (torch.randn_like(action) * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            next_action = (self.actor_target(next_state) + noise).clamp(-self.max_action, self.max_action)
            target_q1 = self.critic_1_target(next_state, next_action)
            target_q2 = self.critic_2_target(next_state, next_action)
            target_q = torch.min(target_q1, target_q2)
            target_q = reward + not_done * self.discount * target_q
        current_q1 = self.critic_1(state, action)
        current_q2 = self.critic_2(state, action)
        critic_loss = F.mse_loss(current_q1, target_q) + F.mse_loss(current_q2, target_q)
        log_dict["critic_loss"] = critic_loss.item()
        self.critic_1_optimizer.zero_grad()
        self.critic_2_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_1_optimizer.step()
        self.critic_2_optimizer.step()
        if self.total_it % self.policy_freq == 0:
            pi = self.actor(state)
            q = self.critic_1(state, pi)
            lmbda = self.alpha / q.abs().mean().detach()
            actor_loss = -lmbda * q.mean() + F.mse_loss(pi, action)
            log_dict["actor_loss"] = actor_loss.item()
            self.actor_optimizer.zero_grad()
            actor_loss.backward()
            self.actor_optimizer.step()
            soft_update(self.critic_1_target, self.critic_1, self.tau)
            soft_update(self.critic_2_target, self.critic_2, self.tau)
            soft_update(self.actor_target, self.actor, self.tau)
        return log_dict

    # Algorithm 1's pre-training steps, written the same way
    def bc_step(self, batch: tuple) -> dict[str, float]:
        state, action = batch[0], batch[1]
        loss = F.mse_loss(self.actor(state), action)
        self.actor_optimizer.zero_grad()
        loss.backward()
        self.actor_optimizer.step()
        soft_update(self.actor_target, self.actor, self.tau)
        return {"bc_loss": loss.item()}

    def mc_critic_step(self, batch: tuple) -> dict[str, float]:
        state, action, returns = batch[0], batch[1], batch[5]
        loss = F.mse_loss(self.critic_1(state, action), returns) + F.mse_loss(self.critic_2(state, action), returns)
        self.critic_1_optimizer.zero_grad()
        self.critic_2_optimizer.zero_grad()
        loss.backward()
        self.critic_1_optimizer.step()
        self.critic_2_optimizer.step()
        soft_update(self.critic_1_target, self.critic_1, self.tau)
        soft_update(self.critic_2_target, self.critic_2, self.tau)
        return {"mc_loss": loss.item()}


class CorlVectorizedLinear(nn.Module):
    def __init__(self, layer: EnsembleLinear):
        super().__init__()
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class CorlVectorizedCritic(nn.Module):
    def __init__(self, critic: EnsembleCritic):
        super().__init__()
        layers: list[nn.Module] = []
        for layer in critic.net:
            if isinstance(layer, EnsembleLinear):
                layers.append(CorlVectorizedLinear(layer))
            elif isinstance(layer, EnsembleLayerNorm):
                layers.append(nn.LayerNorm(_hidden(critic), elementwise_affine=False, eps=layer.eps))
            else:
                layers.append(nn.ReLU())
        self.critic = nn.Sequential(*layers)
        self.num_critics = critic.num_critics

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        state_action = torch.cat([state, action], dim=-1)
        if state_action.dim() != 3:
            state_action = state_action.unsqueeze(0).repeat_interleave(self.num_critics, dim=0)
        return self.critic(state_action).squeeze(-1)


class CorlEDACActor(nn.Module):
    def __init__(self, actor: TanhGaussianActor):
        super().__init__()
        self.trunk = copy.deepcopy(actor.trunk)
        self.mu = copy.deepcopy(actor.mu)
        self.log_sigma = copy.deepcopy(actor.log_std)
        self.max_action = actor.max_action

    def forward(self, state, deterministic: bool = False, need_log_prob: bool = False):
        hidden = self.trunk(state)
        mu, log_sigma = self.mu(hidden), self.log_sigma(hidden)
        log_sigma = torch.clip(log_sigma, -5, 2)
        policy_dist = Normal(mu, torch.exp(log_sigma))
        action = mu if deterministic else policy_dist.rsample()
        tanh_action, log_prob = torch.tanh(action), None
        if need_log_prob:
            log_prob = policy_dist.log_prob(action).sum(axis=-1)
            log_prob = log_prob - torch.log(1 - tanh_action.pow(2) + 1e-6).sum(axis=-1)
        return tanh_action * self.max_action, log_prob

    def log_prob(self, state, action, eps: float = 1e-6):  # of dataset actions (soft BC)
        hidden = self.trunk(state)
        log_sigma = torch.clip(self.log_sigma(hidden), -5, 2)
        dist = Normal(self.mu(hidden), torch.exp(log_sigma))
        tanh_action = torch.clamp(action / self.max_action, -1 + eps, 1 - eps)
        return (dist.log_prob(torch.atanh(tanh_action)).sum(-1)
                - torch.log(1 - tanh_action.pow(2) + 1e-6).sum(-1))


class CorlEDAC:
    """CORL's edac.py EDAC.update, with this package's networks (LayerNorm) and weights."""

    def __init__(self, algo: EDAC):
        self.actor = CorlEDACActor(algo.actor)
        self.critic = CorlVectorizedCritic(algo.critic)
        self.target_critic = copy.deepcopy(self.critic)
        for p in self.target_critic.parameters():
            p.requires_grad_(False)
        lr = algo.actor_optimizer.param_groups[0]["lr"]
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=lr)
        self.log_alpha = torch.tensor([0.0], dtype=torch.float32, device=algo.device, requires_grad=True)
        with torch.no_grad():
            self.log_alpha.copy_(algo.temperature.log_alpha)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=lr)
        self.alpha = self.log_alpha.exp().detach()
        self.target_entropy, self.eta, self.gamma, self.tau = (algo.target_entropy, algo.eta,
                                                               algo.gamma, algo.tau)
        self.device = algo.device

    def _alpha_loss(self, state):
        with torch.no_grad():
            action, action_log_prob = self.actor(state, need_log_prob=True)
        return (-self.log_alpha * (action_log_prob + self.target_entropy)).mean()

    def _actor_loss(self, state):
        action, action_log_prob = self.actor(state, need_log_prob=True)
        q_value_dist = self.critic(state, action)
        q_value_min = q_value_dist.min(0).values
        q_value_std = q_value_dist.std(0).mean().item()
        batch_entropy = -action_log_prob.mean().item()
        loss = (self.alpha * action_log_prob - q_value_min).mean()
        return loss, batch_entropy, q_value_std

    def _critic_diversity_loss(self, state, action):
        num_critics = self.critic.num_critics
        state = state.unsqueeze(0).repeat_interleave(num_critics, dim=0)
        action = action.unsqueeze(0).repeat_interleave(num_critics, dim=0).requires_grad_(True)
        q_ensemble = self.critic(state, action)
        q_action_grad = torch.autograd.grad(q_ensemble.sum(), action, retain_graph=True, create_graph=True)[0]
        q_action_grad = q_action_grad / (torch.norm(q_action_grad, p=2, dim=2).unsqueeze(-1) + 1e-10)
        q_action_grad = q_action_grad.transpose(0, 1)
        masks = torch.eye(num_critics, device=self.device).unsqueeze(dim=0).repeat(q_action_grad.shape[0], 1, 1)
        q_action_grad = q_action_grad @ q_action_grad.permute(0, 2, 1)
        q_action_grad = (1 - masks) * q_action_grad
        grad_loss = q_action_grad.sum(dim=(1, 2)).mean()
        return grad_loss / (num_critics - 1)

    def _critic_loss(self, state, action, reward, next_state, done):
        with torch.no_grad():
            next_action, next_action_log_prob = self.actor(next_state, need_log_prob=True)
            q_next = self.target_critic(next_state, next_action).min(0).values
            q_next = q_next - self.alpha * next_action_log_prob
            q_target = reward + self.gamma * (1 - done) * q_next.unsqueeze(-1)
        q_values = self.critic(state, action)
        critic_loss = ((q_values - q_target.view(1, -1)) ** 2).mean(dim=1).sum(dim=0)
        diversity_loss = self._critic_diversity_loss(state, action)
        return critic_loss + self.eta * diversity_loss

    def update(self, batch: tuple) -> dict[str, float]:
        state, action, reward, next_state, done, _ = batch
        alpha_loss = self._alpha_loss(state)
        self.alpha_optimizer.zero_grad()
        alpha_loss.backward()
        self.alpha_optimizer.step()
        self.alpha = self.log_alpha.exp().detach()
        actor_loss, actor_batch_entropy, q_policy_std = self._actor_loss(state)
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()
        critic_loss = self._critic_loss(state, action, reward, next_state, done)
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_optimizer.step()
        with torch.no_grad():
            soft_update(self.target_critic, self.critic, tau=self.tau)
            max_action = self.actor.max_action
            random_actions = -max_action + 2 * max_action * torch.rand_like(action)
            q_random_std = self.critic(state, random_actions).std(0).mean().item()
        return {"alpha_loss": alpha_loss.item(), "critic_loss": critic_loss.item(),
                "actor_loss": actor_loss.item(), "batch_entropy": actor_batch_entropy,
                "alpha": self.alpha.item(), "q_policy_std": q_policy_std, "q_random_std": q_random_std}

    # Algorithm 2's pre-training steps, written the same way
    def soft_bc_step(self, batch: tuple) -> dict[str, float]:
        state, action = batch[0], batch[1]
        alpha_loss = self._alpha_loss(state)
        self.alpha_optimizer.zero_grad()
        alpha_loss.backward()
        self.alpha_optimizer.step()
        self.alpha = self.log_alpha.exp().detach()
        _, log_prob_sampled = self.actor(state, need_log_prob=True)
        loss = (self.alpha * log_prob_sampled - self.actor.log_prob(state, action)).mean()
        self.actor_optimizer.zero_grad()
        loss.backward()
        self.actor_optimizer.step()
        return {"soft_bc_loss": loss.item(), "alpha_loss": alpha_loss.item(), "alpha": self.alpha.item()}

    def soft_critic_step(self, batch: tuple) -> dict[str, float]:
        state, action, returns = batch[0], batch[1], batch[5]
        q_values = self.critic(state, action)
        mc_loss = ((q_values - returns.view(1, -1)) ** 2).mean(dim=1).mean(dim=0)
        diversity_loss = self._critic_diversity_loss(state, action)
        loss = mc_loss + self.eta * diversity_loss
        self.critic_optimizer.zero_grad()
        loss.backward()
        self.critic_optimizer.step()
        with torch.no_grad():
            soft_update(self.target_critic, self.critic, tau=self.tau)
        return {"critic_loss": loss.item(), "mc_loss": mc_loss.item(), "diversity_loss": diversity_loss.item()}


class CorlIQL:
    """CORL's iql.py ImplicitQLearning.train, with this package's networks (LayerNorm) and weights:
    TwinQ as two modules, a V module, three torch.optim.Adam, the actor's CosineAnnealingLR,
    ``.item()`` for every logged number, a Python loop for Polyak averaging."""

    def __init__(self, algo):
        self.actor = copy.deepcopy(algo.actor)
        self.q1, self.q2 = (CorlCritic(member_mlp(algo.critic, i)) for i in (0, 1))
        self.q1_target, self.q2_target = (CorlCritic(member_mlp(algo.critic_target, i)) for i in (0, 1))
        self.vf = copy.deepcopy(algo.value)
        groups = algo.critic_optimizer.param_groups
        self.v_optimizer = torch.optim.Adam(self.vf.parameters(), lr=groups[1]["lr"])
        self.q_optimizer = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()],
                                            lr=groups[0]["lr"])
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(),
                                                lr=algo.actor_optimizer.param_groups[0]["lr"])
        self.actor_lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.actor_optimizer, algo.actor_schedule_steps or 1_000_000)
        self.iql_tau, self.beta, self.discount, self.tau = algo.expectile, algo.beta, algo.gamma, algo.tau

    def q_target(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.min(self.q1_target(state, action), self.q2_target(state, action))

    def train(self, batch: tuple) -> dict[str, float]:
        log_dict = {}
        observations, actions, rewards, next_observations, dones, _ = batch
        with torch.no_grad():
            target_q = self.q_target(observations, actions)
        v = self.vf(observations).unsqueeze(-1)
        adv = target_q - v
        v_loss = torch.mean(torch.abs(self.iql_tau - (adv < 0).float()) * adv ** 2)
        log_dict["value_loss"] = v_loss.item()
        self.v_optimizer.zero_grad()
        v_loss.backward()
        self.v_optimizer.step()
        next_v = self.vf(next_observations).unsqueeze(-1)
        targets = rewards + (1.0 - dones.float()) * self.discount * next_v.detach()
        qs = (self.q1(observations, actions), self.q2(observations, actions))
        q_loss = sum(F.mse_loss(q, targets) for q in qs) / len(qs)
        log_dict["critic_loss"] = q_loss.item()  # CORL: "q_loss"; our name, to compare them
        self.q_optimizer.zero_grad()
        q_loss.backward()
        self.q_optimizer.step()
        soft_update(self.q1_target, self.q1, self.tau)
        soft_update(self.q2_target, self.q2, self.tau)
        exp_adv = torch.exp(self.beta * adv.detach()).clamp(max=100.0)
        bc_losses = torch.sum((self.actor(observations) - actions) ** 2, dim=1, keepdim=True)
        policy_loss = torch.mean(exp_adv * bc_losses)
        log_dict["actor_loss"] = policy_loss.item()
        self.actor_optimizer.zero_grad()
        policy_loss.backward()
        self.actor_optimizer.step()
        self.actor_lr_schedule.step()
        return log_dict
