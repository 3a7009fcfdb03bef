"""``make bench``: how fast this package's update steps run, against the same updates written the
way CORL writes them, side by side in one process.

For TD3+BC and EDAC (N = 10), on Hopper (obs 11, act 3) and HalfCheetah (obs 17, act 6) shapes, batch
256, the paper's networks (TD3+BC 2x256, EDAC 3x256, LayerNorm without affine, as the default
config), it times three versions of the offline RL update and of the pre-training steps:

  corl      the reference: an eager update written as CORL's td3_bc.py / edac.py are (one module
            per TD3 critic, torch.distributions, the diversity term from a second critic forward
            and a masked [B, N, N] Gram matrix, EDAC's logging-only critic pass, ``.item()`` for
            every logged number, zero_grad / backward / step, a Python loop for Polyak averaging,
            ``torch.optim.Adam`` with its defaults), initialised with the same weights;
  eager     this package's step functions run eagerly (``compile=eager``);
  compiled  the same step functions, one torch.compile graph each (``compile=auto``, the default).

Repetitions are interleaved (corl, eager, compiled, corl, ...; the order rotates) and the
speed-up is the median over repetitions of (compiled updates/s) / (corl updates/s) from the same
repetition, so a machine whose speed drifts (a shared host) affects both sides alike. FLOPs per
update are counted with torch.utils.flop_counter.FlopCounterMode (matrix products; one update of
each), and GFLOP/s is set against a 2048x2048 float32 matmul timed in the same process. The table
is printed and written to docs/bench.md with the machine's description.

On CUDA (``--device cuda``, the default where there is a GPU) the compiled steps are CUDA graphs;
the peaks are 8192x8192 float32 and bf16 products timed with CUDA events (the updates run in
float32: TF32 stays off, PyTorch's default), the table goes to docs/bench_cuda.md, and
``--runs-per-gpu 1 4 16`` (the default there) measures how many independent TD3+BC runs one GPU
sustains side by side: N processes, each a full update loop, timed together
(``runs_per_gpu``).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.distributions import Normal
from torch.nn import functional as F

from offline_rl.algo.edac import EDAC
from offline_rl.algo.td3_bc import TD3BC
from offline_rl.dataset.replay import Batch
from offline_rl.network import (DeterministicActor, EnsembleCritic, EnsembleLayerNorm, EnsembleLinear,
                                TanhGaussianActor)
from offline_rl.pretrain.common import Scheme, soft_returns_to_go
from offline_rl.training.compiled import attach_compiler

SHAPES = {"hopper": (11, 3), "halfcheetah": (17, 6)}
ALGOS = ("td3_bc", "edac")
ROOT = Path(__file__).resolve().parents[1]


def random_batch(obs_dim: int, act_dim: int, batch_size: int, device: torch.device,
                 generator: torch.Generator | None = None) -> Batch:
    g = generator or torch.Generator(device="cpu").manual_seed(0)
    tensors = (torch.randn(batch_size, obs_dim, generator=g), torch.rand(batch_size, act_dim, generator=g) * 2 - 1,
               torch.randn(batch_size, generator=g), torch.randn(batch_size, obs_dim, generator=g),
               (torch.rand(batch_size, generator=g) < 0.01).float(), torch.randn(batch_size, generator=g) * 10)
    return Batch(*(t.to(device) for t in tensors))


def make_algorithms(obs_dim: int, act_dim: int, device: torch.device) -> dict:
    return {
        "td3_bc": lambda: TD3BC(obs_dim, act_dim, partial(DeterministicActor, depth=2),
                                partial(EnsembleCritic, depth=2), device=device),
        "edac": lambda: EDAC(obs_dim, act_dim, partial(TanhGaussianActor, depth=3),
                             partial(EnsembleCritic, depth=3), num_critics=10, device=device),
    }


# ----- the CORL-style references ---------------------------------------------------------------


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
        self.policy_freq, self.alpha = algo.policy_delay, algo.alpha
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


# ----- the cases -------------------------------------------------------------------------------


class PoolReplay:
    """Stands in for the replay in the pre-training closures: the next batch of a fixed pool."""

    def __init__(self, batches: list[Batch]):
        self.batches, self.i = batches, 0

    def sample(self, batch_size: int) -> Batch:
        self.i += 1
        return self.batches[self.i % len(self.batches)]


class BenchScheme(Scheme):
    def phases(self, algo, replay, batch_size):  # only the step closures are used
        return []


class Case:
    """One row: three versions of the same step, each a function of the batch index."""

    def __init__(self, algo_name: str, shape: str, step: str, corl: Callable[[int], object],
                 eager: Callable[[int], object], compiled: Callable[[int], object], report, pair: int = 1):
        self.algo_name, self.shape, self.step = algo_name, shape, step
        self.contenders = {"corl": corl, "eager": eager, "compiled": compiled}
        self.report, self.pair = report, pair  # pair: calls that make one full cycle (TD3: 2)
        self.flops: dict[str, float] = {}
        self.rates: dict[str, list[float]] = {k: [] for k in self.contenders}
        self.compile_seconds = 0.0
        self.agreement = float("nan")  # max relative difference of the losses, CORL vs ours
        self.bound = float("nan")  # updates/s of the matrix products alone


def agreement(corl: Callable[[int], dict], ours: Callable[[int], object], calls: int, seed: int) -> float:
    """Largest relative difference between the CORL-style and our (eager) logged values over
    ``calls`` calls from the same state and random seed: both compute the same update."""
    worst = 0.0
    for i in range(calls):
        torch.manual_seed(seed + i)
        a = corl(i)
        torch.manual_seed(seed + i)
        b = {k: float(v) for k, v in ours(i).items()}
        for key in set(a) & set(b):
            worst = max(worst, abs(a[key] - b[key]) / max(abs(a[key]), 1e-6))
    return worst


def build_cases(algo_name: str, shape: str, steps: list[str], device: torch.device,
                pool_size: int, seed: int) -> list[Case]:
    obs_dim, act_dim = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    pool = [random_batch(obs_dim, act_dim, 256, device, g) for _ in range(pool_size)]
    corl_pool = [corl_batch(b) for b in pool]
    torch.manual_seed(seed)
    base = make_algorithms(obs_dim, act_dim, device)[algo_name]()
    cases = []
    for step in steps:
        versions = []
        for _ in range(2):  # the timed versions, and a fresh pair that checks they agree
            ref_algo = CorlTD3BC(base) if algo_name == "td3_bc" else CorlEDAC(base)
            eager_algo, compiled_algo = copy.deepcopy(base), copy.deepcopy(base)
            report = attach_compiler(compiled_algo, "compile")
            attach_compiler(eager_algo, "eager")
            if step == "update":
                ref_fn = ref_algo.train if algo_name == "td3_bc" else ref_algo.update
                fns = (lambda i, f=ref_fn: f(corl_pool[i % pool_size]),
                       lambda i, a=eager_algo: a.update(pool[i % pool_size]),
                       lambda i, a=compiled_algo: a.update(pool[i % pool_size]))
            else:
                scheme = BenchScheme(steps=100_000, until=None)
                factory, ref_name = {
                    "pretrain BC": (scheme.actor_update, "bc_step"),
                    "pretrain MC critic": (scheme.critic_update, "mc_critic_step"),
                    "pretrain soft BC": (scheme.soft_actor_update, "soft_bc_step"),
                    "pretrain soft critic": (scheme.critic_update, "soft_critic_step"),
                }[step]
                eager_step = factory(eager_algo, PoolReplay(pool), 256)
                compiled_step = factory(compiled_algo, PoolReplay(pool), 256)
                ref_fn = getattr(ref_algo, ref_name)
                # PoolReplay starts at batch 1
                fns = (lambda i, f=ref_fn: f(corl_pool[(i + 1) % pool_size]),
                       lambda i, f=eager_step: f(), lambda i, f=compiled_step: f())
            versions.append((fns, report))
        (corl, eager, compiled), report = versions[0]
        case = Case(algo_name, shape, step, corl, eager, compiled, report,
                    pair=2 if (algo_name == "td3_bc" and step == "update") else 1)
        (check_corl, check_eager, _), _ = versions[1]
        case.agreement = agreement(check_corl, check_eager, 2 * case.pair, seed)
        cases.append(case)
    return cases


def count_flops(fn: Callable[[int], object], calls: int) -> float:
    """Matrix-product FLOPs per call, with FlopCounterMode's formulas (torch.utils.flop_counter);
    a plain dispatch mode, because FlopCounterMode's module tracking breaks
    ``autograd.grad`` with respect to a leaf (CORL's EDAC diversity term)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Counter.total += formula(*args, **kwargs, out_val=out)
            return out

    with Counter():
        for i in range(calls):
            fn(i)
    return Counter.total / calls


def matmul_bound(fn: Callable[[int], object], calls: int, device: torch.device,
                 seconds: float = 0.3) -> float:
    """Updates/s if an update were nothing but its matrix products: those of ``calls`` calls of
    ``fn`` (our eager step) are recorded with their operands and replayed back to back, best of 3
    windows -- without the matrix-vector products, which the compiled step computes as fused
    reductions (training/compiled.py, SkinnyMatmulPass)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    products = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}
    recorded: list = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func._overloadpacket in products:
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                a, b = tensors[-2], tensors[-1]
                if not (a.dim() == 3 and (b.shape[-1] == 1 or a.shape[-1] == 1 or a.shape[-2] == 1)):
                    recorded.append((func, [x.clone() if isinstance(x, torch.Tensor) else x for x in args],
                                     kwargs))
            return func(*args, **kwargs)

    with Recorder():
        for i in range(calls):
            fn(i)

    def replay() -> None:
        for func, args, kwargs in recorded:
            func(*args, **kwargs)

    replay()
    best = 0.0
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            replay()
            count += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, count * calls / (time.perf_counter() - t0))
    return best


def timed(fn: Callable[[int], object], calls: int, start: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for i in range(start, start + calls):
        fn(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return calls / (time.perf_counter() - t0)


def run_case(case: Case, device: torch.device, reps: int, window: float, eager: bool) -> None:
    names = [n for n in case.contenders if eager or n != "eager"]
    # FLOPs of one full cycle (the compiled step has the eager step's arithmetic)
    case.flops["corl"] = count_flops(case.contenders["corl"], case.pair)
    case.flops["eager"] = count_flops(case.contenders["eager"], case.pair)
    case.bound = matmul_bound(case.contenders["eager"], case.pair, device)
    # warm-up: compilation (timed by the report), caches, the allocator
    start = time.perf_counter()
    for i in range(2 * case.pair):
        case.contenders["compiled"](i)
    case.compile_seconds = case.report.compile_seconds
    calls = {}
    for name in names:
        rate = timed(case.contenders[name], 2 * case.pair, 0, device)
        # calls per window, a multiple of the cycle
        calls[name] = max(case.pair, int(round(rate * window / case.pair)) * case.pair)
    del start
    step = 0
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            case.rates[name].append(timed(case.contenders[name], calls[name], step, device))
            step += calls[name]


def median_ratio(case: Case, name: str) -> float:
    pairs = list(zip(case.rates[name], case.rates["corl"]))
    return statistics.median(a / b for a, b in pairs) if pairs else float("nan")


def matmul_peak(device: torch.device, n: int = 2048, reps: int = 10,
                dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of an n x n x n matrix product on random data. CPU: the best of ``reps``. CUDA:
    the mean of ``reps`` products timed with CUDA events after 3 warm-ups (as KINDS.md measured
    the H200), at the size given (8192 there: 2048 leaves a GPU partly idle)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(reps):
            a @ b
        end.record()
        torch.cuda.synchronize(device)
        return 2 * n ** 3 * reps / (start.elapsed_time(end) / 1e3) / 1e9
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9


# ----- independent runs side by side on one GPU ---------------------------------------------------


def loop_worker(go: Path, device: torch.device, seconds: float, seed: int, warmup: int | None = None) -> None:
    """One process of ``runs_per_gpu``: a TD3+BC run's update loop as training/loop.py runs it --
    a batch sampled from an on-device replay of 1M transitions, the compiled update (CUDA graphs
    on CUDA), the metrics summed on the device and read back every 1,000 updates. After
    ``warmup`` updates (compilation, graph capture) it says it is ready and waits for ``go``, then
    runs for ``seconds`` and prints one JSON line: updates, seconds, GPU memory."""
    import json

    from offline_rl.dataset.replay import ReplayBuffer
    from offline_rl.training.loop import MetricWindow

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    obs_dim, act_dim = SHAPES["hopper"]
    algo = make_algorithms(obs_dim, act_dim, device)["td3_bc"]()
    attach_compiler(algo, "compile")
    replay = ReplayBuffer(1_000_000, obs_dim, act_dim, device, seed=seed)
    for key, tensor in replay.storage.items():
        tensor.normal_() if key != "dones" else tensor.bernoulli_(0.001)
    replay.size = replay.capacity
    window = MetricWindow()
    step = 0

    def update() -> None:
        nonlocal step
        window.add(algo.update(replay.sample(256)), step)
        step += 1
        if step % 1000 == 0:
            window.read("offline_rl")

    for _ in range(warmup if warmup is not None else 3000 if device.type == "cuda" else 100):
        update()
    window.read("offline_rl")
    (go.parent / f"ready-{os.getpid()}").touch()
    while not go.exists():
        time.sleep(0.002)
    t0, count = time.perf_counter(), 0
    while count % 100 or time.perf_counter() - t0 < seconds:
        update()
        count += 1
    window.read("offline_rl")  # waits for the device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    memory = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    print(json.dumps({"updates": count, "seconds": elapsed, "memory_gib": memory}), flush=True)


def runs_per_gpu(counts: list[int], device: torch.device, seconds: float,
                 timeout: float = 300) -> list[dict]:
    """How many independent TD3+BC runs one GPU sustains: for each N in ``counts``, N processes
    (``loop_worker``, different seeds) compile and warm up, start together, run ``seconds``;
    the aggregate is the sum of their updates/s. Small networks leave a GPU mostly idle: the
    aggregate's growth with N is what a sweep gains per GPU-hour."""
    import json
    import subprocess
    import tempfile

    rows = []
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            go = Path(tmp) / "go"
            logs = [(Path(tmp) / f"out-{i}", Path(tmp) / f"err-{i}") for i in range(n)]  # not pipes:
            procs = []  # a worker that fills a pipe before it is read would stall
            for i, (out_path, err_path) in enumerate(logs):
                with open(out_path, "w") as out, open(err_path, "w") as err:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "offline_rl.bench", "--loop-worker", str(go), "--device",
                         str(device), "--runs-seconds", str(seconds), "--seed", str(i)],
                        stdout=out, stderr=err, cwd=ROOT))
            deadline = time.monotonic() + timeout
            failed = ""
            while len(list(Path(tmp).glob("ready-*"))) < n and not failed:
                if any(p.poll() is not None for p in procs):
                    failed = "a worker exited before it was ready"
                elif time.monotonic() > deadline:
                    failed = f"not all {n} workers ready within {timeout:.0f} s"
                time.sleep(0.05)
            go.touch()
            results = []
            for proc, (out_path, err_path) in zip(procs, logs):
                try:
                    proc.wait(timeout=seconds + 120 if not failed else 5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    failed = failed or "a worker did not finish"
                out, err = out_path.read_text(), err_path.read_text()
                lines = [line for line in out.splitlines() if line.startswith("{")]
                if proc.returncode == 0 and lines:
                    results.append(json.loads(lines[-1]))
                else:
                    failed = failed or f"a worker failed: {err.strip()[-600:]}"
        rates = [r["updates"] / r["seconds"] for r in results]
        row = {"runs": n, "failed": failed, "aggregate": sum(rates) if not failed else float("nan"),
               "per_run_median": statistics.median(rates) if rates else float("nan"),
               "per_run_min": min(rates) if rates else float("nan"),
               "memory_gib": max((r["memory_gib"] for r in results), default=float("nan"))}
        rows.append(row)
        print(runs_table(rows)[-1] + (f"  ({failed})" if failed else ""), flush=True)
    return rows


def runs_table(rows: list[dict]) -> list[str]:
    out = ["| runs side by side | aggregate upd/s | per run upd/s (median) | slowest run upd/s | "
           "x one run | 1M-update runs per hour | GPU memory per run (GiB) |", "|---|---|---|---|---|---|---|"]
    single = next((r["aggregate"] for r in rows if r["runs"] == 1), float("nan"))
    for r in rows:
        out.append(f"| {r['runs']} | {r['aggregate']:.0f} | {r['per_run_median']:.0f} | {r['per_run_min']:.0f} | "
                   f"{r['aggregate'] / single:.2f}x | {r['aggregate'] * 3600 / 1e6:.1f} | {r['memory_gib']:.2f} |")
    return out


def rtg_seconds(device: torch.device, transitions: int) -> float:
    """Soft returns-to-go (Eq. 19) for ``transitions`` transitions with an EDAC actor (Hopper
    shapes, episodes of 1000 steps, time-outs bootstrapped), as pre-training computes them."""
    torch.manual_seed(0)
    algo = make_algorithms(11, 3, device)["edac"]()
    obs = torch.randn(transitions, 11, device=device)
    rewards = torch.randn(transitions, device=device)
    terminals = torch.zeros(transitions, dtype=torch.bool, device=device)
    timeouts = torch.zeros(transitions, dtype=torch.bool, device=device)
    timeouts[999::1000] = True
    soft_returns_to_go(algo, obs[:1000], rewards[:1000], terminals[:1000], timeouts[:1000], 0.99, True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = soft_returns_to_go(algo, obs, rewards, terminals, timeouts, 0.99, True)
    float(out[0])
    return time.perf_counter() - t0


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu


def percent(value: float) -> str:
    """Whole percent, with decimals below 10% (a GPU's share of small networks)."""
    return f"{value:.0f}%" if value >= 10 else f"{value:.1f}%" if value >= 0.1 else f"{value:.2f}%"


def table(cases: list[Case], peak: float, eager: bool, bf16_peak: float | None = None) -> list[str]:
    head = ["algo", "shape", "step", "CORL-style upd/s"]
    if eager:
        head += ["eager upd/s"]
    head += ["compiled upd/s", "compiled / CORL"]
    if eager:
        head += ["eager / CORL"]
    head += ["GFLOP/upd CORL", "GFLOP/upd ours", "GFLOP/s ours", "% of matmul peak"]
    if bf16_peak:
        head += ["% of bf16 peak"]
    head += ["matmul-only upd/s", "compiled / matmul-only", "compile s", "losses agree"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cases:
        med = {k: statistics.median(v) if v else float("nan") for k, v in c.rates.items()}
        cells = [c.algo_name, c.shape, c.step, f"{med['corl']:.1f}"]
        if eager:
            cells += [f"{med['eager']:.1f}"]
        cells += [f"{med['compiled']:.1f}", f"**{median_ratio(c, 'compiled'):.2f}x**"]
        if eager:
            cells += [f"{median_ratio(c, 'eager'):.2f}x"]
        ours = c.flops["eager"] / 1e9
        gflops = ours * med["compiled"]
        cells += [f"{c.flops['corl'] / 1e9:.3f}", f"{ours:.3f}", f"{gflops:.0f}", percent(100 * gflops / peak)]
        if bf16_peak:
            cells += [percent(100 * gflops / bf16_peak)]
        cells += [f"{c.bound:.0f}", f"{100 * med['compiled'] / c.bound:.0f}%",
                  f"{c.compile_seconds:.1f}", f"{c.agreement:.0e}"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="Hopper only, offline RL updates only, 3 repetitions, no eager column")
    parser.add_argument("--algos", nargs="*", default=list(ALGOS), choices=ALGOS,
                        help="with none: no update-step rows (e.g. only --runs-per-gpu)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--no-pretrain", action="store_true", help="offline RL updates only")
    parser.add_argument("--no-eager", action="store_true", help="leave out the eager column")
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions per row")
    parser.add_argument("--window", type=float, default=0.7, help="seconds per timing window")
    parser.add_argument("--rtg", type=int, default=1_000_000,
                        help="transitions for the soft returns-to-go timing (0: skip)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda[:N] (default: cuda when there is one)")
    parser.add_argument("--out", default=None,
                        help="default docs/bench.md (CPU) or docs/bench_cuda.md (CUDA); '' to write nothing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-per-gpu", nargs="*", type=int, default=None, metavar="N",
                        help="independent TD3+BC runs side by side (default on CUDA: 1 4 16; on the "
                             "CPU: none); with no N: skip")
    parser.add_argument("--runs-seconds", type=float, default=10.0, help="timed seconds per runs-per-GPU row")
    parser.add_argument("--loop-worker", default=None, help=argparse.SUPPRESS)  # a runs_per_gpu process
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.loop_worker:
        loop_worker(Path(args.loop_worker), device, args.runs_seconds, args.seed)
        return
    if args.quick:
        args.shapes, args.no_pretrain, args.no_eager = ["hopper"], True, True
        args.reps = min(args.reps, 3)
    if args.runs_per_gpu is None:
        args.runs_per_gpu = [1, 4, 16] if device.type == "cuda" else []
    if args.out is None:
        args.out = str(ROOT / "docs" / ("bench_cuda.md" if device.type == "cuda" else "bench.md"))
    began = time.perf_counter()
    cpu = machine()
    header = (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch "
              f"{torch.__version__}, Python {platform.python_version()}, device {device}")
    bf16_peak = None
    if device.type == "cuda":
        header += (f" ({torch.cuda.get_device_name(device)}, TF32 "
                   f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'})")
    print(header, flush=True)
    if device.type == "cuda":  # sizes that fill the GPU; the update steps run in float32
        peak = matmul_peak(device, n=8192)
        bf16_peak = matmul_peak(device, n=8192, dtype=torch.bfloat16)
        peak_text = (f"8192x8192 matmul: float32 **{peak:.0f} GFLOP/s** (the peak below), bf16 "
                     f"**{bf16_peak:.0f} GFLOP/s**")
    else:
        peak = matmul_peak(device)
        peak_text = f"2048x2048 float32 matmul in the same process: **{peak:.0f} GFLOP/s** (the peak below)"
    print(peak_text.replace("*", ""), flush=True)
    steps_of = {"td3_bc": ["update", "pretrain BC", "pretrain MC critic"],
                "edac": ["update", "pretrain soft BC", "pretrain soft critic"]}
    cases: list[Case] = []
    for algo_name in args.algos:
        for shape in args.shapes:
            steps = steps_of[algo_name][:1] if args.no_pretrain else steps_of[algo_name]
            for case in build_cases(algo_name, shape, steps, device, pool_size=16, seed=args.seed):
                run_case(case, device, args.reps, args.window, not args.no_eager)
                cases.append(case)
                print(table([case], peak, not args.no_eager, bf16_peak)[-1], flush=True)
    rtg = rtg_seconds(device, args.rtg) if args.rtg else None
    runs = runs_per_gpu(args.runs_per_gpu, device, args.runs_seconds) if args.runs_per_gpu else []
    elapsed = time.perf_counter() - began
    rows = table(cases, peak, not args.no_eager, bf16_peak)
    lines = [
        "# Update-step speed (`make bench`)",
        "",
        f"Measured {datetime.date.today().isoformat()} on: {header}.",
        f"{peak_text}.",
        "",
    ]
    if cases:
        lines += [
            "Updates per second, medians over "
            f"{args.reps} interleaved repetitions of ~{args.window:g} s; the speed-ups are medians of "
            "per-repetition ratios. Batch 256; TD3+BC 2x256, EDAC 3x256 with N = 10 critics; "
            "LayerNorm in actor and critic (the default config). A TD3+BC update alternates critic "
            "steps and critic+actor steps (policy delay 2). GFLOP counts matrix products "
            "(FlopCounterMode), per update; the CORL-style update does more of them (see below).",
            "",
            *rows,
            "",
        ]
    if rtg is not None:
        lines += [f"Soft returns-to-go (Eq. 19) of {args.rtg:,} transitions with an EDAC actor "
                  f"(entropy of every state, two log-depth scans): **{rtg:.2f} s**.", ""]
    if runs:
        lines += [f"Independent TD3+BC runs side by side on one {device.type.upper()} device (Hopper "
                  f"shapes, batch 256, 2x256, compiled; each its own process with a 1M-transition replay "
                  f"on the device and the training loop's metric window, read every 1,000 updates), "
                  f"timed together for {args.runs_seconds:g} s after all had compiled and warmed up:",
                  "", *runs_table(runs), ""]
        lines += [f"Failed: {r['runs']} runs: {r['failed']}" for r in runs if r["failed"]]
    command = " ".join(["python -m offline_rl.bench", *(argv if argv is not None else sys.argv[1:])])
    lines += [
        f"Command: `{command}` ({elapsed / 60:.1f} min). Flags: `--quick` (Hopper, updates only, 3 "
        "repetitions), `--algos`, `--shapes`, `--no-pretrain`, `--no-eager`, `--reps`, `--window`, "
        "`--rtg`, `--device`, `--runs-per-gpu`, `--runs-seconds`, `--out`; from make: "
        "`make bench BENCH_FLAGS=--quick` (`BENCH_FLAGS='--device cuda'` on a GPU machine, the default there).",
        "",
    ]
    if cases:
        lines += [
            ("The host may be shared: absolute rates drift between runs (the CORL-style TD3+BC update "
             "has measured 145-197 updates/s on this 2-core machine), the interleaved ratios much less."
             if device.type == "cpu" else
             "On a GPU these small networks leave most of the device idle: an update is bound by kernel "
             "launches and the host (Python, one CUDA-graph replay per compiled step), not by arithmetic; "
             "the runs-side-by-side table shows how much of the GPU a sweep can still use."),
            "",
            "What the columns compare:",
            "",
            "- **CORL-style**: the update written as CORL's td3_bc.py / edac.py (one module per TD3 "
            "critic, torch.distributions, EDAC's diversity term from a second critic forward with a "
            "masked [B, N, N] Gram matrix and its logging-only critic pass on random actions, `.item()` "
            "for every logged value, zero_grad / backward / step with `torch.optim.Adam` defaults, a "
            "Python loop for Polyak averaging), initialised with the same weights, fed the same batches.",
            "- **eager**: this package's step functions (`compile=eager`): batched twin critics, "
            "gradients only for the stepped optimiser's parameters, no repeated forward, EDAC's "
            "dQ/da written out as first-order operations, losses left on the device.",
            "- **compiled**: the same step functions, each one `torch.compile` graph (forward, "
            "backward, foreach Adam, `_foreach_lerp_` Polyak), `compile=auto`, the default.",
            "- **compile s**: wall time of the first calls (tracing and Inductor; lower when Inductor's "
            "on-disk cache already holds the graphs).",
            "- **matmul-only**: the updates/s the step's matrix products alone allow -- recorded from "
            "one update (ours) and replayed back to back with the same BLAS calls, without the "
            "matrix-vector products the compiled step fuses. The hardware limit for this arithmetic; "
            "**compiled / matmul-only** is how close the compiled step comes to it.",
            "- **losses agree**: the largest relative difference between the values the CORL-style "
            "and our eager step log over their first two cycles from the same weights, batches and "
            "seed -- both compute the same update.",
            "",
            "See offline_rl/training/compiled.py for the compile rule (`compile=auto` compiles phases "
            "of at least 10,000 updates).",
        ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
