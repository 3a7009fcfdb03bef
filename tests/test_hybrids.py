"""The appendix-G algorithms -- TD3+BC+CQL, EDAC+BC and the CQL baseline -- one update on a fixed
batch against an independent computation (Eq. 21's scaling included, values and gradients), and a
short job of each through launch.py on a generated Adroit-shaped dataset.

The references are written the way the reference code writes them: one network per critic (from
each ensemble member's weights), torch.distributions for the tanh-Gaussian, CORL's [B, n, A]
layout for sampled actions, and Eq. 21 as loss / |loss.detach()| with plain Python numbers.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
import pytest
import torch
from torch.distributions import Normal
from torch.nn import functional as F

from conftest import run_launch, search_runs
from offline_rl.algo.cql import CQL
from offline_rl.algo.edac_bc import EDACBC
from offline_rl.algo.td3_bc_cql import TD3BCCQL
from offline_rl.network import DeterministicActor, EnsembleCritic, TanhGaussianActor
from test_adroit import adroit_root  # noqa: F401  (the generated Adroit datasets)
from test_losses import ACT, B, OBS, fixed_batch, member_q


def grads(loss: torch.Tensor, params) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True))


def assert_grads_close(ours, theirs, rtol=1e-4, atol=1e-6):
    for a, b in zip(ours, theirs):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def ref_tanh_gaussian(actor: TanhGaussianActor, obs: torch.Tensor, log_std_min=-5.0, log_std_max=2.0):
    """a ~ tanh(N(mu, sigma)) and log pi(a|s), with torch.distributions (obs may be [B, n, d])."""
    hidden = actor.trunk(obs)
    mu, log_sigma = actor.mu(hidden), torch.clip(actor.log_std(hidden), log_std_min, log_std_max)
    dist = Normal(mu, torch.exp(log_sigma))
    u = dist.rsample()
    a = torch.tanh(u)
    return a, dist.log_prob(u).sum(-1) - torch.log(1 - a.pow(2) + 1e-6).sum(-1)


def twin_q(critic, obs, act):
    return member_q(critic, 0, obs, act), member_q(critic, 1, obs, act)


# ----- TD3+BC+CQL -----------------------------------------------------------------------------


def td3_bc_cql(**kw) -> TD3BCCQL:
    torch.manual_seed(0)
    return TD3BCCQL(OBS, ACT, partial(DeterministicActor, width=16), partial(EnsembleCritic, width=16),
                    policy_delay=1, **kw)


def ref_td3_bc_cql_terms(algo, critic, actor_t, critic_t, batch, n, temperature):
    """TD3+BC's critic loss and CQL's random-action regulariser, the reference code's way (same
    random draws: target noise, then U(-1, 1) actions of shape (n * B, A))."""
    noise = (torch.randn_like(batch.actions) * 0.2).clamp(-0.5, 0.5)
    with torch.no_grad():
        next_a = (actor_t(batch.next_observations) + noise).clamp(-1, 1)
        target = batch.rewards + 0.99 * (1 - batch.dones) * torch.min(*twin_q(critic_t, batch.next_observations, next_a))
    q1, q2 = twin_q(critic, batch.observations, batch.actions)
    td = F.mse_loss(q1, target) + F.mse_loss(q2, target)
    random_actions = torch.empty(n * B, ACT).uniform_(-1, 1)
    repeated_state = batch.observations.repeat(n, 1)
    q1_rand, q2_rand = (q.reshape(n, -1) for q in twin_q(critic, repeated_state, random_actions))
    cql = ((torch.logsumexp(q1_rand / temperature, 0) * temperature - q1).mean()
           + (torch.logsumexp(q2_rand / temperature, 0) * temperature - q2).mean())
    return td, cql


@pytest.mark.parametrize("weight, temperature", [(10.0, 1.0), (1.0, 0.5)])
def test_td3_bc_cql_critic_loss_is_eq_21(weight, temperature):
    algo = td3_bc_cql(cql_weight=weight, cql_n_actions=4, cql_temperature=temperature)
    batch = fixed_batch()
    critic0, actor_t, critic_t = (copy.deepcopy(m) for m in (algo.critic, algo.actor_target, algo.critic_target))

    torch.manual_seed(7)
    target = algo.td_target(batch)
    loss, metrics = algo.critic_loss(batch, target)
    ours = grads(loss, algo.critic.parameters())

    torch.manual_seed(7)
    td, cql = ref_td3_bc_cql_terms(algo, critic0, actor_t, critic_t, batch, 4, temperature)
    torch.testing.assert_close(metrics["td_loss"], td.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics["cql_penalty"], cql.detach(), rtol=1e-5, atol=1e-6)
    # Eq. 21: td / |td| + c * cql / |cql| -- the value is 1 + c * sign(cql)
    assert loss.item() == pytest.approx(1 + weight * math.copysign(1, cql.item()), rel=1e-6)
    reference = td / abs(td.item()) + weight * cql / abs(cql.item())
    assert_grads_close(ours, grads(reference, critic0.parameters()))


def test_td3_bc_cql_update_and_zero_weight_is_td3_bc():
    algo = td3_bc_cql(cql_weight=1.0)
    metrics = algo.update(fixed_batch())
    assert {"critic_loss", "td_loss", "cql_penalty", "actor_loss", "bc_loss"} <= metrics.keys()
    assert all(isinstance(v, torch.Tensor) for v in metrics.values())  # no host sync
    # with c = 0 the critic loss is TD3+BC's exactly
    from offline_rl.algo.td3_bc import TD3BC

    plain = td3_bc_cql(cql_weight=0.0)
    torch.manual_seed(0)
    ref = TD3BC(OBS, ACT, partial(DeterministicActor, width=16), partial(EnsembleCritic, width=16), policy_delay=1)
    torch.manual_seed(3)
    a = plain.update(fixed_batch())
    torch.manual_seed(3)
    b = ref.update(fixed_batch())
    torch.testing.assert_close(a["critic_loss"], b["critic_loss"])
    torch.testing.assert_close(a["actor_loss"], b["actor_loss"])


# ----- EDAC+BC --------------------------------------------------------------------------------


def edac_bc(n=3, **kw) -> EDACBC:
    torch.manual_seed(0)
    return EDACBC(OBS, ACT, partial(TanhGaussianActor, width=16), partial(EnsembleCritic, width=16),
                  num_critics=n, **kw)


@pytest.mark.parametrize("bc_weight", [1.0, 2.5])
def test_edac_bc_actor_loss_is_eq_21(bc_weight):
    algo = edac_bc(bc_weight=bc_weight)
    batch = fixed_batch(1)
    actor0 = copy.deepcopy(algo.actor)

    torch.manual_seed(5)
    loss, metrics = algo.actor_loss(batch)
    ours = grads(loss, algo.actor.parameters())

    torch.manual_seed(5)
    pi, log_pi = ref_tanh_gaussian(actor0, batch.observations)
    q_min = torch.stack([member_q(algo.critic, i, batch.observations, pi) for i in range(3)]).min(0).values
    sac = (algo.entropy_temperature * log_pi - q_min).mean()
    bc = F.mse_loss(pi, batch.actions)  # hard BC on the *sampled* action
    torch.testing.assert_close(metrics["sac_actor_loss"], sac.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics["bc_loss"], bc.detach(), rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx(math.copysign(1, sac.item()) + bc_weight, rel=1e-6)
    # the magnitudes are absolute: a negative SAC loss keeps its descent direction
    reference = sac / abs(sac.item()) + bc_weight * bc / abs(bc.item())
    assert_grads_close(ours, grads(reference, actor0.parameters()))


def test_edac_bc_update_in_edacs_order_and_zero_weight_is_edac():
    from offline_rl.algo.edac import EDAC

    algo = edac_bc(bc_weight=1.0)
    metrics = algo.update(fixed_batch())
    assert {"actor_loss", "bc_loss", "sac_actor_loss", "critic_loss", "diversity_loss", "alpha",
            "entropy", "q_policy_std"} <= metrics.keys()
    assert all(isinstance(v, torch.Tensor) for v in metrics.values())
    plain = edac_bc(bc_weight=0.0)
    torch.manual_seed(0)
    ref = EDAC(OBS, ACT, partial(TanhGaussianActor, width=16), partial(EnsembleCritic, width=16), num_critics=3)
    torch.manual_seed(4)
    a = plain.update(fixed_batch())
    torch.manual_seed(4)
    b = ref.update(fixed_batch())
    for key in ("actor_loss", "critic_loss", "alpha_loss"):
        torch.testing.assert_close(a[key], b[key])


# ----- CQL ------------------------------------------------------------------------------------


def cql_algo(**kw) -> CQL:
    torch.manual_seed(0)
    nets = dict(width=16, depth=2)
    return CQL(OBS, ACT, partial(TanhGaussianActor, log_std_min=-20.0, **nets), partial(EnsembleCritic, **nets), **kw)


@pytest.mark.parametrize("importance_sample, temperature", [(True, 1.0), (False, 0.7)])
def test_cql_update_matches_corl(importance_sample, temperature):
    n = 3
    algo = cql_algo(cql_n_actions=n, importance_sample=importance_sample, cql_temperature=temperature)
    batch = fixed_batch(2)
    actor0, critic0, critic_t = (copy.deepcopy(m) for m in (algo.actor, algo.critic, algo.critic_target))

    torch.manual_seed(13)
    metrics = algo.update(batch)

    torch.manual_seed(13)  # CORL's draws: pi(s), pi(s'), U(-1, 1), pi(s) x n, pi(s') x n
    obs, next_obs = batch.observations, batch.next_observations
    ref = partial(ref_tanh_gaussian, log_std_min=-20.0)
    with torch.no_grad():
        new_actions, log_pi = ref(actor0, obs)
        alpha_loss = -(0.0 * (log_pi - ACT)).mean()  # log alpha starts at 0
        policy_loss = (1.0 * log_pi - torch.min(*twin_q(critic0, obs, new_actions))).mean()
        next_a, _ = ref(actor0, next_obs)
        target = batch.rewards + 0.99 * (1 - batch.dones) * torch.min(*twin_q(critic_t, next_obs, next_a))
        q_pred = twin_q(critic0, obs, batch.actions)
        random_actions = torch.empty(B, n, ACT).uniform_(-1, 1)
        obs_n = obs.unsqueeze(1).repeat_interleave(n, 1)  # CORL's extend_and_repeat
        cur_a, cur_lp = ref(actor0, obs_n)
        nxt_a, nxt_lp = ref(actor0, next_obs.unsqueeze(1).repeat_interleave(n, 1))

        def q_at(i, actions):  # Q_i(s, a_k) as [B, n]
            return member_q(critic0, i, obs_n.reshape(-1, OBS), actions.reshape(-1, ACT)).reshape(B, n)

        qf_loss, cql_total = 0.0, 0.0
        for i in range(2):
            if importance_sample:
                cat = torch.cat([q_at(i, random_actions) - np.log(0.5 ** ACT), q_at(i, nxt_a) - nxt_lp,
                                 q_at(i, cur_a) - cur_lp], 1)
            else:
                cat = torch.cat([q_at(i, random_actions), q_pred[i].unsqueeze(1), q_at(i, nxt_a),
                                 q_at(i, cur_a)], 1)
            diff = (torch.logsumexp(cat / temperature, 1) * temperature - q_pred[i]).mean()
            cql_total = cql_total + diff
            qf_loss = qf_loss + F.mse_loss(q_pred[i], target) + 10.0 * diff
    torch.testing.assert_close(metrics["alpha_loss"], alpha_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics["actor_loss"], policy_loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(metrics["cql_penalty"], cql_total, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(metrics["critic_loss"], qf_loss, rtol=1e-4, atol=1e-5)
    # targets Polyak-averaged every step, tau = 5e-3
    for p_t, p_old, p_new in zip(algo.critic_target.parameters(), critic_t.parameters(), algo.critic.parameters()):
        torch.testing.assert_close(p_t, 0.995 * p_old + 0.005 * p_new)


def test_cql_bc_warm_start_and_pretraining_hooks():
    from offline_rl.algo.losses import soft_bc_loss
    from offline_rl.pretrain.common import critic_pretrain_loss
    from offline_rl.pretrain.soft import SoftPretraining

    SoftPretraining().check(CQL)  # a soft (stochastic-actor) algorithm
    algo = cql_algo(bc_steps=1)
    actor0 = copy.deepcopy(algo.actor)
    batch = fixed_batch()
    torch.manual_seed(1)
    metrics = algo.update(batch)  # update 1 <= bc_steps: CORL's soft-BC warm-start of the actor
    torch.manual_seed(1)
    with torch.no_grad():
        _, log_pi = ref_tanh_gaussian(actor0, batch.observations, log_std_min=-20.0)
        expected = (1.0 * log_pi - actor0.log_prob(batch.observations, batch.actions)).mean()
    torch.testing.assert_close(metrics["actor_loss"], expected, rtol=1e-4, atol=1e-5)
    # critic pre-training with a CQL term (Eq. 21), by hand: the MC loss summed over the twin
    # critics (CQL's mc_member_reduction), CQL's random-action term per critic, summed
    n = 4
    torch.manual_seed(2)
    loss, m = critic_pretrain_loss(algo, batch, batch.returns_to_go, 0.0, 1.0, n)
    torch.manual_seed(2)
    with torch.no_grad():
        q1, q2 = twin_q(algo.critic, batch.observations, batch.actions)
        mc = F.mse_loss(q1, batch.returns_to_go) + F.mse_loss(q2, batch.returns_to_go)
        random_actions = torch.empty(n * B, ACT).uniform_(-1, 1)
        q_rand = twin_q(algo.critic, batch.observations.repeat(n, 1), random_actions)
        cql = sum((torch.logsumexp(q_r.reshape(n, -1), 0) - q).mean() for q_r, q in zip(q_rand, (q1, q2)))
    torch.testing.assert_close(m["mc_loss"], mc, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m["cql_penalty"], cql, rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx(1 + math.copysign(1, cql.item()), rel=1e-6)  # |.|-normalised
    # soft BC (Eq. 20) with CQL's temperature: alpha log pi(a~|s) - log pi(a|s)
    torch.manual_seed(3)
    ours = soft_bc_loss(algo, batch)
    torch.manual_seed(3)
    with torch.no_grad():
        _, log_pi = ref_tanh_gaussian(algo.actor, batch.observations, log_std_min=-20.0)
        data_log_pi = algo.actor.log_prob(batch.observations, batch.actions)
        expected = (algo.entropy_temperature * log_pi - data_log_pi).mean()
    torch.testing.assert_close(ours.detach(), expected, rtol=1e-4, atol=1e-5)


# ----- through launch.py on a generated Adroit-shaped dataset ---------------------------------

# short: this machine is shared (2 cores); one 100-step pen evaluation at the end of each phase
ADROIT_RUN = ["dataset=pen-human", "network=small", "eval.episodes=1", "eval.every=0", "log_every=10",
              "progress=false", "updates=40", "pretrain.steps=20", "pretrain.until=null",
              "batch_size=32", "threads=1"]


@pytest.mark.slow
def test_each_hybrid_runs_through_launch(tmp_path, adroit_root):  # noqa: F811
    jobs = [["-m", "algo=edac_bc,cql", "pretrain=soft"],  # EDAC+BC with Table 3's N = 20, eta = 1000
            ["algo=td3_bc_cql", "pretrain=ac", "pretrain.cql_weight=1.0"]]
    for i, job in enumerate(jobs):
        result = run_launch([*job, *ADROIT_RUN, f"hydra.sweep.dir={tmp_path}/sweep{i}"], tmp_path,
                            adroit_root, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
    runs = search_runs(tmp_path)
    runs = runs[runs["tags.algo"].notna()].set_index("tags.algo")  # not the sweep's parent run
    assert sorted(runs.index) == ["cql", "edac_bc", "td3_bc_cql"]
    assert set(runs["status"]) == {"FINISHED"}
    for algo, run in runs.iterrows():
        assert run["params.dataset.dataset_id"] == "D4RL/pen/human-v2"
        assert run["params.dataset.eval_max_episode_steps"] == "100"
        assert run["params.dataset.ref_min_score"] == "-162.09"
        assert not math.isnan(run["metrics.eval/normalized_score_mean"])
    assert runs.loc["edac_bc", "params.algo.num_critics"] == "20"  # Table 3, pen-human
    assert runs.loc["edac_bc", "params.algo.eta"] == "1000.0"
    assert not math.isnan(runs.loc["edac_bc", "metrics.offline_rl/bc_loss"])
    assert runs.loc["td3_bc_cql", "params.algo.cql_weight"] == "1.0"  # Table 3, pen
    assert runs.loc["td3_bc_cql", "params.algo.alpha"] == "1.0"
    assert not math.isnan(runs.loc["td3_bc_cql", "metrics.offline_rl/cql_penalty"])
    assert not math.isnan(runs.loc["td3_bc_cql", "metrics.pretrain_actor_critic/cql_penalty"])
    assert not math.isnan(runs.loc["cql", "metrics.offline_rl/cql_penalty"])
