"""CQL (Kumar et al., 2020), the continuous SAC-based CQL(H) of CORL's cql.py: the baseline of the
paper's Table 2 on Adroit.

Hyper-parameters are CORL's (the paper: "the same hyperparameters as specified in the original
papers"; its reference configs for pen/door/hammer/relocate use exactly these): twin critics,
tanh-Gaussian actor with automatic entropy tuning (target entropy -|A|, alpha = exp(log_alpha), log
alpha starts at 0), policy lr 3e-5 (also the temperature's lr), critic lr 3e-4, tau 5e-3 with the
targets updated every step, gamma 0.99, no entropy in the TD backup (``backup_entropy: false``),
CQL weight (``min_q_weight``) 10, 10 sampled actions per state, temperature 1, importance-sampled
logsumexp, no Lagrange tuning of the weight, no max-target backup, no BC warm-start (``bc_steps``
0), orthogonal initialisation (gain sqrt 2, zero biases), 3x256 networks with LayerNorm.

The critic loss, per critic i (summed over the two), is

    MSE(Q_i(s, a), y) + w * E_s[ T logsumexp_j(x_ij / T) - Q_i(s, a) ],
    y = r + gamma (1 - d) min_i Q'_i(s', a'),  a' ~ pi(s'),

where the x_ij gather, for n actions each, importance-weighted Q-values (CQL(H) with
``importance_sample``): Q_i(s, a_unif) - log(0.5^|A|), Q_i(s, a~') - log pi(a~'|s') with
a~' ~ pi(s'), and Q_i(s, a~) - log pi(a~|s) with a~ ~ pi(s) (sampled actions detached). Without
importance sampling the x_ij are the plain Q-values of those 3n actions and Q_i(s, a) itself.

As in CORL, the three losses (temperature, actor, critic) are computed from the same parameters,
then stepped in that order. Differences from CORL, all small: the actor is this project's
tanh-Gaussian (separate mean / log-sigma heads, log sigma clipped to [log_std_min, log_std_max];
CORL splits one head and scales log sigma by learned multiplier/offset scalars), and its log pi
uses log(1 - tanh^2 + 1e-6) for the tanh correction as EDAC does.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch import nn

from offline_rl.algo.adam import adam
from offline_rl.algo.base import Algorithm, TargetTransform, frozen_copy
from offline_rl.algo.losses import CQL_OPTIONS, td_loss
from offline_rl.algo.edac import TEMPERATURE_OPTIONS, Temperature
from offline_rl.dataset.replay import Batch
from offline_rl.network import EnsembleCritic, EnsembleLinear, TanhGaussianActor, linear_layers
from offline_rl.options import boolean, int_at_least


def orthogonal_init_(*modules: nn.Module, gain: float = math.sqrt(2.0)) -> None:
    """CORL's ``orthogonal_init``: every linear layer (ensemble members separately) orthogonal
    with gain sqrt(2), biases 0."""
    with torch.no_grad():
        for module in modules:
            for layer in linear_layers(module):
                if isinstance(layer, EnsembleLinear):
                    for member in layer.weight:
                        nn.init.orthogonal_(member, gain=gain)
                else:
                    nn.init.orthogonal_(layer.weight, gain=gain)
                layer.bias.zero_()


class CQL(Algorithm):
    OPTIONS = {**CQL_OPTIONS, **TEMPERATURE_OPTIONS, "bc_steps": int_at_least(0),
               "target_update_period": int_at_least(1), "importance_sample": boolean(),
               "backup_entropy": boolean(), "orthogonal_init": boolean()}
    actor_kind = "stochastic"
    entropy_regularised = True
    step_prefix = "cql"
    # CORL's pre-training of CQL's twin critics sums their losses; CQL per critic
    mc_member_reduction = "sum"
    cql_on_min_q = False
    _state_attrs = ("actor", "critic", "critic_target", "temperature", "actor_optimizer",
                    "critic_optimizer", "alpha_optimizer")

    def __init__(self, obs_dim: int, act_dim: int,
                 actor: Callable[..., TanhGaussianActor], critic: Callable[..., EnsembleCritic],
                 cql_weight: float = 10.0, cql_n_actions: int = 10, cql_temperature: float = 1.0,
                 importance_sample: bool = True, backup_entropy: bool = False, bc_steps: int = 0,
                 gamma: float = 0.99, tau: float = 5e-3, target_update_period: int = 1,
                 actor_lr: float = 3e-5, critic_lr: float = 3e-4, alpha_lr: float = 3e-5,
                 initial_alpha: float = 1.0, target_entropy: float | None = None,
                 max_action: float = 1.0, normalize_states: bool = True,
                 orthogonal_init: bool = True, device: torch.device | str = "cpu",
                 target_transform: TargetTransform | None = None):
        super().__init__(normalize_states, gamma, device, target_transform)
        self.actor = actor(obs_dim, act_dim, max_action=max_action).to(self.device)
        self.critic = critic(obs_dim, act_dim, num_critics=2).to(self.device)
        if orthogonal_init:
            orthogonal_init_(self.actor, self.critic)
        self.critic_target = frozen_copy(self.critic)
        self.temperature = Temperature(initial_alpha).to(self.device)
        self.actor_optimizer = adam(self.actor, actor_lr)
        self.critic_optimizer = adam(self.critic, critic_lr)
        self.alpha_optimizer = adam(self.temperature, alpha_lr)
        self.cql_weight, self.cql_n_actions = float(cql_weight), int(cql_n_actions)
        self.cql_temperature, self.importance_sample = float(cql_temperature), bool(importance_sample)
        self.backup_entropy, self.bc_steps = bool(backup_entropy), int(bc_steps)
        self.tau, self.target_update_period = tau, int(target_update_period)
        self.target_entropy = -float(act_dim) if target_entropy is None else float(target_entropy)
        self.max_action = max_action
        self._steps: dict[str, Callable] = {}  # update_step per case (see update)

    @property
    def entropy_temperature(self) -> torch.Tensor:
        """SAC's alpha = exp(log_alpha), detached."""
        return self.temperature().detach()

    # ----- losses -----------------------------------------------------------------------------
    # CORL computes all three losses from the same parameters and one policy sample a~ ~ pi(s):
    # ``update_step`` passes that sample to the temperature's and the actor's loss
    def alpha_loss(self, batch: Batch, sampled: tuple | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-log_alpha * (log pi(a~|s) + target_entropy), a~ ~ pi (sampled here unless given)."""
        if sampled is None:
            with torch.no_grad():
                sampled = self.actor(batch.observations, need_log_prob=True)
        log_prob = sampled[1].detach()
        return (-self.temperature.log_alpha * (log_prob + self.target_entropy)).mean(), {}

    def actor_loss(self, batch: Batch, sampled: tuple | None = None, warm_start: bool = False
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """alpha * log pi(a~|s) - min_i Q_i(s, a~); with ``warm_start`` (the first ``bc_steps``
        updates) soft BC, alpha * log pi(a~|s) - log pi(a|s), instead (CORL's warm-start)."""
        action, log_prob = sampled if sampled is not None else self.actor(batch.observations,
                                                                          need_log_prob=True)
        metrics = {"entropy": -log_prob.detach().mean()}
        if warm_start:
            data_log_prob = self.actor.log_prob(batch.observations, batch.actions)
            return (self.entropy_temperature * log_prob - data_log_prob).mean(), metrics
        q = self.critic(batch.observations, action).min(0).values
        return (self.entropy_temperature * log_prob - q).mean(), metrics

    @torch.no_grad()
    def td_target(self, batch: Batch) -> torch.Tensor:
        """r + gamma * (1 - done) * min_i Q'_i(s', a') [- alpha log pi(a'|s') with backup_entropy]."""
        next_action, next_log_prob = self.actor(batch.next_observations, need_log_prob=True)
        next_q = self.critic_target(batch.next_observations, next_action).min(0).values
        if self.backup_entropy:
            next_q = next_q - self.entropy_temperature * next_log_prob
        return batch.rewards + self.gamma * (1.0 - batch.dones) * next_q

    def critic_values(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Q_1, Q_2 at the batch's actions [2, B]; CQL's own regulariser needs the actor (below)."""
        return self.critic(batch.observations, batch.actions), torch.zeros((), device=self.device)

    def cql_regulariser(self, batch: Batch, q: torch.Tensor) -> torch.Tensor:
        """sum_i mean_s [T logsumexp_j(x_ij / T) - Q_i(s, a)] over 3n sampled actions (see top)."""
        obs, n = batch.observations, self.cql_n_actions
        batch_size, act_dim = batch.actions.shape
        obs_rep = obs.repeat_interleave(n, 0)  # [B * n, obs]: each state n times in a row
        random_actions = torch.empty(batch_size * n, act_dim, device=obs.device).uniform_(-1, 1)
        with torch.no_grad():
            current_actions, current_log_prob = self.actor(obs_rep, need_log_prob=True)
            next_actions, next_log_prob = self.actor(batch.next_observations.repeat_interleave(n, 0),
                                                     need_log_prob=True)

        def q_of(actions: torch.Tensor) -> torch.Tensor:  # Q_i(s, a_k) -> [2, B, n]
            return self.critic(obs_rep, actions).reshape(2, batch_size, n)

        q_random, q_current, q_next = q_of(random_actions), q_of(current_actions), q_of(next_actions)
        if self.importance_sample:
            random_density = math.log(0.5 ** act_dim)
            candidates = [q_random - random_density,
                          q_next - next_log_prob.reshape(1, batch_size, n),
                          q_current - current_log_prob.reshape(1, batch_size, n)]
        else:
            candidates = [q_random, q.unsqueeze(-1), q_next, q_current]
        stacked = torch.cat(candidates, dim=-1)  # [2, B, 3n (+1)]
        temperature = self.cql_temperature
        ood = torch.logsumexp(stacked / temperature, dim=-1) * temperature  # [2, B]
        return (ood - q).mean(1).sum()

    def critic_loss(self, batch: Batch, target: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum over the twin critics of MSE(Q_i, y) + w * CQL_i."""
        target, metrics = self.target(batch) if target is None else (target, {})
        q, _ = self.critic_values(batch)
        cql = self.cql_regulariser(batch, q)
        loss = td_loss(q, target) + self.cql_weight * cql
        return loss, {"cql_penalty": cql.detach(), "q_target": target.mean(), **metrics}

    # ----- one update -------------------------------------------------------------------------
    def update_step(self, batch: Batch, warm_start: bool, update_target: bool) -> dict[str, torch.Tensor]:
        """The three losses from the same parameters (alpha's before its step, as CORL), then
        temperature -> actor -> critic steps, each with gradients for its own parameters only."""
        sampled = self.actor(batch.observations, need_log_prob=True)  # a~ ~ pi(s)
        alpha_loss, _ = self.alpha_loss(batch, sampled)
        actor_loss, actor_metrics = self.actor_loss(batch, sampled, warm_start)
        critic_loss, critic_metrics = self.critic_loss(batch)
        self.step_temperature(alpha_loss)
        self.step_actor(actor_loss)
        self.step_critic(critic_loss)
        if update_target:
            self.update_critic_target()
        return {"alpha_loss": alpha_loss.detach(), "actor_loss": actor_loss.detach(),
                "critic_loss": critic_loss.detach(), "alpha": self.entropy_temperature,
                **actor_metrics, **critic_metrics}

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The warm-start and the target period are chosen here in Python: one step function
        (one compiled graph) per case, no counter inside a graph."""
        self.total_updates += 1
        warm_start = self.total_updates <= self.bc_steps
        update_target = self.total_updates % self.target_update_period == 0
        name = f"{self.step_prefix}.update{'.bc_warm_start' if warm_start else ''}{'' if update_target else '.no_target'}"
        if name not in self._steps:
            self._steps[name] = partial(self.update_step, warm_start=warm_start,
                                        update_target=update_target)
        return self.run_step(name, self._steps[name], batch)
