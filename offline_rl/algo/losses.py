"""Loss terms more than one algorithm (or pre-training scheme) uses, each a pure function of an
algorithm's networks and a batch: behaviour cloning (Algorithm 1 and Eq. 20), Monte-Carlo and TD
regression of an ensemble critic, CQL's random-action regulariser and Eq. 21's normalisation.
They live with the algorithms so that algorithms never import pre-training (imports point
pre-training -> algorithms)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from offline_rl.dataset.replay import Batch
from offline_rl.options import int_at_least, non_negative, positive_number


def bc_loss(algo, batch: Batch) -> torch.Tensor:
    """Algorithm 1's behaviour cloning: E[(pi(s) - a)^2]."""
    return F.mse_loss(algo.actor(batch.observations), batch.actions)


def soft_bc_loss(algo, batch: Batch) -> torch.Tensor:
    """Eq. 20: E_{s,a ~ D, a~ ~ pi}[alpha log pi(a~|s) - log pi(a|s)], alpha the entropy
    temperature."""
    _, log_prob_sampled = algo.actor(batch.observations, need_log_prob=True)
    log_prob_data = algo.actor.log_prob(batch.observations, batch.actions)
    return (algo.entropy_temperature * log_prob_sampled - log_prob_data).mean()


def mc_loss(algo, q: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """E[(Q(s, a) - R)^2] for every critic of the ensemble, reduced over the members as the
    reference code does for this algorithm (TD3+BC: summed, EDAC: averaged)."""
    per_member = ((q - returns.unsqueeze(0)) ** 2).mean(1)
    return per_member.sum() if algo.mc_member_reduction == "sum" else per_member.mean()


def td_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The algorithms' own TD(0) critic loss: summed over members of the per-member MSE."""
    return ((q - target.unsqueeze(0)) ** 2).mean(1).sum()


#: the options of an algorithm with CQL's regulariser on its critic (TD3+BC+CQL, CQL)
CQL_OPTIONS = {"cql_weight": non_negative(), "cql_n_actions": int_at_least(1),
               "cql_temperature": positive_number()}


def cql_penalty(algo, batch: Batch, q: torch.Tensor, n_actions: int) -> torch.Tensor:
    """CQL's value regulariser with uniform random actions (section 5.2):
    logsumexp_k Q(s, a_k) - Q(s, a), per critic for the TD3 family (as the reference code's
    td3_bc.py) or on the ensemble minimum for EDAC (this project's choice: the reference EDAC has
    no CQL). ``algo`` needs ``critic(obs, act)`` and ``cql_on_min_q``."""
    obs, act = batch.observations, batch.actions
    random_actions = torch.empty(n_actions * act.shape[0], act.shape[1], device=act.device).uniform_(-1, 1)
    q_random = algo.critic(obs.repeat(n_actions, 1), random_actions)  # [N, n_actions * B]
    q_random = q_random.reshape(q.shape[0], n_actions, q.shape[1])
    if algo.cql_on_min_q:
        return (torch.logsumexp(q_random.min(0).values, dim=0) - q.min(0).values).mean()
    return (torch.logsumexp(q_random, dim=1) - q).mean(1).sum()


def normalised(loss: torch.Tensor) -> torch.Tensor:
    """loss / |loss| with the magnitude detached (Eq. 21, as TD3+BC balances its terms)."""
    return loss / loss.detach().abs().clamp_min(1e-8)
