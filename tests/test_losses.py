"""One TD3+BC and one EDAC update on a fixed batch against an independent computation.

The reference computations below are written the way CORL writes them: one network per critic
(built here from each ensemble member's weights), torch.distributions for the tanh-Gaussian, and
EDAC's diversity term with the explicit [B, N, N] Gram matrix and identity mask.
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch.distributions import Normal
from torch.nn import functional as F

from offline_rl.algo.bc import BC
from offline_rl.algo.edac import EDAC
from offline_rl.algo.td3_bc import TD3BC
from offline_rl.dataset.replay import Batch
from offline_rl.network import (DeterministicActor, EnsembleCritic, EnsembleLayerNorm,
                                EnsembleLinear, TanhGaussianActor)

OBS, ACT, B = 5, 2, 32


def fixed_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(B, OBS, generator=g), torch.rand(B, ACT, generator=g) * 2 - 1,
                 torch.randn(B, generator=g), torch.randn(B, OBS, generator=g),
                 (torch.rand(B, generator=g) < 0.2).float(), torch.randn(B, generator=g))


def member_q(critic: EnsembleCritic, i: int, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Q_i as a plain MLP with member i's weights: Linear -> LayerNorm -> ReLU ... -> Linear."""
    x = torch.cat([obs, act], -1)
    for layer in critic.net:
        if isinstance(layer, EnsembleLinear):
            x = x @ layer.weight[i] + layer.bias[i, 0]
        elif isinstance(layer, EnsembleLayerNorm):
            mean = x.mean(-1, keepdim=True)
            var = x.var(-1, unbiased=False, keepdim=True)
            x = (x - mean) / torch.sqrt(var + 1e-5)
            if layer.weight is not None:
                x = x * layer.weight[i, 0] + layer.bias[i, 0]
        else:
            x = torch.relu(x)
    return x.squeeze(-1)


@pytest.mark.parametrize("layer_norm, affine", [(True, False), (True, True), (False, False)])
def test_td3_bc_update_matches_reference(layer_norm, affine):
    torch.manual_seed(0)
    nets = dict(width=16, depth=2, layer_norm=layer_norm, layer_norm_affine=affine)
    algo = TD3BC(OBS, ACT, partial(DeterministicActor, **nets), partial(EnsembleCritic, **nets),
                 policy_delay=1)
    batch = fixed_batch()
    actor0, critic0 = copy.deepcopy(algo.actor), copy.deepcopy(algo.critic)
    actor_t, critic_t = copy.deepcopy(algo.actor_target), copy.deepcopy(algo.critic_target)

    torch.manual_seed(7)
    metrics = algo.update(batch)

    # reference critic loss (CORL): both critics regress on the same clipped double-Q target
    torch.manual_seed(7)
    with torch.no_grad():
        noise = (torch.randn_like(batch.actions) * 0.2).clamp(-0.5, 0.5)
        next_a = (actor_t(batch.next_observations) + noise).clamp(-1, 1)
        q1_t = member_q(critic_t, 0, batch.next_observations, next_a)
        q2_t = member_q(critic_t, 1, batch.next_observations, next_a)
        target = batch.rewards + 0.99 * (1 - batch.dones) * torch.min(q1_t, q2_t)
        ref_critic = (F.mse_loss(member_q(critic0, 0, batch.observations, batch.actions), target)
                      + F.mse_loss(member_q(critic0, 1, batch.observations, batch.actions), target))
    torch.testing.assert_close(metrics["critic_loss"], ref_critic, rtol=1e-5, atol=1e-6)

    # reference actor loss: uses the critic after its step, the actor before its step
    with torch.no_grad():
        pi = actor0(batch.observations)
        q = member_q(algo.critic, 0, batch.observations, pi)
        ref_actor = -(2.5 / q.abs().mean()) * q.mean() + F.mse_loss(pi, batch.actions)
    torch.testing.assert_close(metrics["actor_loss"], ref_actor, rtol=1e-5, atol=1e-6)
    # the targets moved by Polyak averaging with tau = 5e-3
    for p_t, p_old, p_new in zip(algo.critic_target.parameters(), critic_t.parameters(),
                                 algo.critic.parameters()):
        torch.testing.assert_close(p_t, 0.995 * p_old + 0.005 * p_new)


def test_td3_bc_policy_delay():
    algo = TD3BC(OBS, ACT, partial(DeterministicActor, width=8), partial(EnsembleCritic, width=8))
    batch = fixed_batch()
    assert "actor_loss" not in algo.update(batch)
    assert "actor_loss" in algo.update(batch)


def ref_tanh_gaussian(actor: TanhGaussianActor, obs: torch.Tensor):
    """CORL's EDAC actor written with torch.distributions."""
    hidden = actor.trunk(obs)
    mu, log_sigma = actor.mu(hidden), torch.clip(actor.log_std(hidden), -5, 2)
    dist = Normal(mu, torch.exp(log_sigma))
    u = dist.rsample()
    a = torch.tanh(u)
    log_prob = dist.log_prob(u).sum(-1) - torch.log(1 - a.pow(2) + 1e-6).sum(-1)
    return a, log_prob


def ref_diversity(critic: EnsembleCritic, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """CORL's _critic_diversity_loss, mask and all."""
    n = critic.num_critics
    obs_rep = obs.unsqueeze(0).repeat_interleave(n, 0)
    act_rep = act.unsqueeze(0).repeat_interleave(n, 0).requires_grad_(True)
    q = torch.stack([member_q(critic, i, obs_rep[i], act_rep[i]) for i in range(n)])
    grad = torch.autograd.grad(q.sum(), act_rep, retain_graph=True, create_graph=True)[0]
    grad = grad / (torch.norm(grad, p=2, dim=2).unsqueeze(-1) + 1e-10)
    grad = grad.transpose(0, 1)
    masks = torch.eye(n, dtype=grad.dtype).unsqueeze(0).repeat(grad.shape[0], 1, 1)
    gram = (1 - masks) * (grad @ grad.permute(0, 2, 1))
    return gram.sum(dim=(1, 2)).mean() / (n - 1)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_edac_update_matches_reference(eta):
    torch.manual_seed(0)
    n = 4
    algo = EDAC(OBS, ACT, partial(TanhGaussianActor, width=16, depth=3),
                partial(EnsembleCritic, width=16, depth=3), num_critics=n, eta=eta)
    batch = fixed_batch(1)
    actor0, critic0 = copy.deepcopy(algo.actor), copy.deepcopy(algo.critic)
    critic_t = copy.deepcopy(algo.critic_target)
    log_alpha0 = algo.temperature.log_alpha.detach().clone()

    torch.manual_seed(11)
    metrics = algo.update(batch)

    torch.manual_seed(11)  # the same three draws, in CORL's order: alpha, actor, critic
    with torch.no_grad():
        _, lp = ref_tanh_gaussian(actor0, batch.observations)
        ref_alpha_loss = (-log_alpha0 * (lp - ACT)).mean()
    torch.testing.assert_close(metrics["alpha_loss"], ref_alpha_loss, rtol=1e-5, atol=1e-6)
    alpha = algo.temperature.log_alpha.detach().exp()  # after its Adam step
    torch.testing.assert_close(metrics["alpha"], alpha)
    # Adam's first step moves log_alpha by -lr * sign(grad)
    grad_sign = torch.sign(-(lp - ACT).mean())
    torch.testing.assert_close(algo.temperature.log_alpha.detach(), log_alpha0 - 3e-4 * grad_sign)

    with torch.no_grad():
        a, lp = ref_tanh_gaussian(actor0, batch.observations)
        q_min = torch.stack([member_q(critic0, i, batch.observations, a) for i in range(n)]).min(0).values
        ref_actor_loss = (alpha * lp - q_min).mean()
    torch.testing.assert_close(metrics["actor_loss"], ref_actor_loss, rtol=1e-5, atol=1e-6)

    with torch.no_grad():  # the target uses the actor after its step
        next_a, next_lp = ref_tanh_gaussian(algo.actor, batch.next_observations)
        q_next = torch.stack([member_q(critic_t, i, batch.next_observations, next_a)
                              for i in range(n)]).min(0).values - alpha * next_lp
        target = batch.rewards + 0.99 * (1 - batch.dones) * q_next
    q = torch.stack([member_q(critic0, i, batch.observations, batch.actions) for i in range(n)])
    ref_critic_loss = ((q - target.view(1, -1)) ** 2).mean(dim=1).sum(dim=0)
    if eta > 0:
        diversity = ref_diversity(critic0, batch.observations, batch.actions)
        torch.testing.assert_close(metrics["diversity_loss"], diversity.detach(), rtol=1e-4, atol=1e-6)
        ref_critic_loss = ref_critic_loss + eta * diversity
    torch.testing.assert_close(metrics["critic_loss"], ref_critic_loss.detach(), rtol=1e-5, atol=1e-5)


def test_edac_critic_gradient_matches_reference():
    """The diversity gradient (second order, through dQ/da) reaches the critic as in CORL.
    In float64, so that the different summation orders agree to ~1e-10."""
    torch.manual_seed(0)
    algo = EDAC(OBS, ACT, partial(TanhGaussianActor, width=16), partial(EnsembleCritic, width=16),
                num_critics=3, eta=1.0)
    algo.critic.double()
    batch = Batch(*(x.double() for x in fixed_batch(2)))
    target = torch.randn(B, dtype=torch.float64)
    loss, _ = algo.critic_loss(batch, target)
    ours = torch.autograd.grad(loss, list(algo.critic.parameters()))
    q = torch.stack([member_q(algo.critic, i, batch.observations, batch.actions) for i in range(3)])
    ref = ((q - target) ** 2).mean(1).sum() + ref_diversity(algo.critic, batch.observations, batch.actions)
    theirs = torch.autograd.grad(ref, list(algo.critic.parameters()))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_tanh_gaussian_log_prob_of_dataset_actions():
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, width=8)
    obs = torch.randn(6, OBS)
    action, log_prob = actor(obs)
    torch.testing.assert_close(actor.log_prob(obs, action), log_prob, rtol=1e-4, atol=1e-4)


def test_bc_update_is_mse():
    torch.manual_seed(0)
    algo = BC(OBS, ACT, partial(DeterministicActor, width=8))
    batch = fixed_batch()
    expected = F.mse_loss(algo.actor(batch.observations), batch.actions).detach()
    torch.testing.assert_close(algo.update(batch)["bc_loss"], expected)
