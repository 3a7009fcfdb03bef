"""Pre-training schemes: losses on fixed batches against independent computations, soft returns on
a hand-made episode, the convergence rule, the motivational example, and every algo x pretrain
pair through launch.py (valid ones run, invalid ones give their message)."""

from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
import pytest
import torch
from torch.distributions import Normal
from torch.nn import functional as F

from conftest import SMALL_RUN, run_launch, search_runs
from offline_rl.algo.edac import EDAC
from offline_rl.algo.td3_bc import TD3BC
from offline_rl.dataset.replay import Batch
from offline_rl.errors import ConfigError
from offline_rl.network import DeterministicActor, EnsembleCritic, TanhGaussianActor
from offline_rl.algo import losses
from offline_rl.pretrain import common
from offline_rl.pretrain.ac import ActorCriticPretraining
from offline_rl.pretrain.qt_max import qt_max_target
from offline_rl.pretrain.soft import SoftPretraining
from test_losses import B, OBS, ACT, fixed_batch, member_q


def td3bc(**kw):
    torch.manual_seed(0)
    return TD3BC(OBS, ACT, partial(DeterministicActor, width=16), partial(EnsembleCritic, width=16), **kw)


def edac(n=3, **kw):
    torch.manual_seed(0)
    return EDAC(OBS, ACT, partial(TanhGaussianActor, width=16), partial(EnsembleCritic, width=16),
                num_critics=n, **kw)


def test_hard_bc_and_mc_losses():
    algo = td3bc()
    batch = fixed_batch()
    assert losses.bc_loss(algo, batch).item() == pytest.approx(
        ((algo.actor(batch.observations) - batch.actions) ** 2).mean().item(), rel=1e-6)
    loss, metrics = common.critic_pretrain_loss(algo, batch, batch.returns_to_go, 0.0, 0.0, 10)
    q1 = member_q(algo.critic, 0, batch.observations, batch.actions)
    q2 = member_q(algo.critic, 1, batch.observations, batch.actions)
    expected = F.mse_loss(q1, batch.returns_to_go) + F.mse_loss(q2, batch.returns_to_go)  # reference
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["mc_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_soft_mc_loss_averages_members_and_keeps_diversity():
    algo = edac(n=3, eta=2.0)
    batch = fixed_batch()
    loss, metrics = common.critic_pretrain_loss(algo, batch, batch.returns_to_go, 0.0, 0.0, 10)
    q = torch.stack([member_q(algo.critic, i, batch.observations, batch.actions) for i in range(3)])
    mc = ((q - batch.returns_to_go) ** 2).mean()  # the reference: mean over members and batch
    _, diversity = algo.critic_values(batch)
    assert metrics["mc_loss"].item() == pytest.approx(mc.item(), rel=1e-5)
    assert loss.item() == pytest.approx(mc.item() + 2.0 * diversity.item(), rel=1e-5)


def test_lambda_mix_normalises_each_term():
    algo = td3bc()
    batch = fixed_batch()
    lam = 0.25
    torch.manual_seed(3)
    loss, metrics = common.critic_pretrain_loss(algo, batch, batch.returns_to_go, lam, 0.0, 10)
    torch.manual_seed(3)
    target = algo.td_target(batch)
    q = torch.stack([member_q(algo.critic, i, batch.observations, batch.actions) for i in range(2)])
    mc = sum(F.mse_loss(q[i], batch.returns_to_go) for i in range(2))
    td = sum(F.mse_loss(q[i], target) for i in range(2))
    # value: (1 - lambda) * mc / |mc| + lambda * td / |td| = 1 at the current parameters
    assert loss.item() == pytest.approx(1.0, rel=1e-6)
    assert metrics["td_loss"].item() == pytest.approx(td.item(), rel=1e-5)
    # gradient: (1 - lambda) grad(mc) / mc + lambda grad(td) / td
    params = list(algo.critic.parameters())
    ours = torch.autograd.grad(loss, params)
    ref = torch.autograd.grad((1 - lam) * mc / mc.item() + lam * td / td.item(), params)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_cql_penalty_matches_reference():
    algo = td3bc()
    batch = fixed_batch()
    q, _ = algo.critic_values(batch)
    torch.manual_seed(5)
    ours = losses.cql_penalty(algo, batch, q, n_actions=4)
    torch.manual_seed(5)
    random_actions = torch.empty(4 * B, ACT).uniform_(-1, 1)
    obs = batch.observations.repeat(4, 1)
    ref = 0
    for i in range(2):
        q_rand = member_q(algo.critic, i, obs, random_actions).reshape(4, B)
        ref = ref + (torch.logsumexp(q_rand, 0) - member_q(algo.critic, i, batch.observations, batch.actions)).mean()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_soft_bc_loss_is_eq_20():
    algo = edac()
    batch = fixed_batch()
    torch.manual_seed(9)
    ours = losses.soft_bc_loss(algo, batch)
    torch.manual_seed(9)
    actor = algo.actor
    hidden = actor.trunk(batch.observations)
    mu, log_std = actor.mu(hidden), actor.log_std(hidden).clip(-5, 2)
    dist = Normal(mu, log_std.exp())
    u = dist.rsample()
    a = torch.tanh(u)
    log_pi_sampled = dist.log_prob(u).sum(-1) - torch.log(1 - a ** 2 + 1e-6).sum(-1)
    data_action = batch.actions.clamp(-1 + 1e-6, 1 - 1e-6)
    log_pi_data = dist.log_prob(torch.atanh(data_action)).sum(-1) - torch.log(1 - data_action ** 2 + 1e-6).sum(-1)
    ref = (algo.entropy_temperature * log_pi_sampled - log_pi_data).mean()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-4)


class FixedEntropyActor(torch.nn.Module):
    """An actor whose -log pi(a~|s) is the state's first coordinate: entropies known by hand."""

    def forward(self, obs, need_log_prob=True, deterministic=False):
        return torch.zeros(obs.shape[0], 1), -obs[:, 0]


def test_soft_returns_on_a_hand_made_episode():
    algo = type("A", (), {"actor": FixedEntropyActor(), "entropy_temperature": torch.tensor(0.5)})()
    gamma = 0.5
    # episode 1: 3 steps, terminal; episode 2: 2 steps, time-out
    obs = torch.tensor([[1.0], [2.0], [4.0], [8.0], [16.0]])
    rewards = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0])
    terminals = torch.tensor([0, 0, 1, 0, 0], dtype=torch.bool)
    timeouts = torch.tensor([0, 0, 0, 0, 1], dtype=torch.bool)
    got = common.soft_returns_to_go(algo, obs, rewards, terminals, timeouts, gamma, bootstrap_timeouts=False)
    # R_t = sum gamma^n r + alpha * sum_{n>=1} gamma^n H(s_{t+n})   (Eq. 19: not the first step's)
    expected = [1 + .5 + .25 + .5 * (.5 * 2 + .25 * 4),
                1 + .5 + .5 * (.5 * 4),
                1,
                2 + .5 * 2 + .5 * (.5 * 16),
                2]
    assert got.tolist() == pytest.approx(expected)
    boot = common.soft_returns_to_go(algo, obs, rewards, terminals, timeouts, gamma, bootstrap_timeouts=True)
    # the time-out's last reward and entropy bonus become x / (1 - gamma), as in the reference code
    assert boot.tolist() == pytest.approx(expected[:3] + [2 + .5 * 4 + .5 * (.5 * 32), 4])


def test_qt_max_target_and_fraction():
    batch = fixed_batch()._replace(returns_to_go=torch.tensor([1.0, 5.0, -2.0, 0.0] * (B // 4)))
    td = torch.tensor([2.0, 3.0, -3.0, 0.0] * (B // 4))
    target, metrics = qt_max_target(batch, td)
    assert target[:4].tolist() == [2.0, 5.0, -2.0, 0.0]
    assert metrics["mc_target_fraction"].item() == pytest.approx(0.5)


def test_convergence_stops_on_plateau_and_not_before():
    rule = common.Convergence(["loss"], window=100, tolerance=0.01)
    step, stopped_at = 0, None
    while step < 2000:
        step += 10
        loss = max(1.0, 50.0 - step * 0.05)  # falls until step 980, flat afterwards
        if rule(step, {"loss": loss}):
            stopped_at = step
            break
    # windows (s-200, s-100] vs (s-100, s] first both flat after step 980 + 200
    assert stopped_at is not None and 1000 <= stopped_at <= 1200
    # a loss still improving by 2% per window never stops
    rule = common.Convergence(["loss"], window=100, tolerance=0.01)
    assert not any(rule(s, {"loss": 100 * 0.98 ** (s / 100)}) for s in range(10, 5000, 10))


def test_rejected_pairs_say_why_and_what_to_use():
    with pytest.raises(ConfigError, match="use pretrain=ac"):
        SoftPretraining().check(TD3BC)
    with pytest.raises(ConfigError, match="use pretrain=soft"):
        ActorCriticPretraining().check(EDAC)

def test_scheme_options_are_validated_with_the_config():
    from test_config import composed

    from offline_rl.config import validate

    with pytest.raises(ConfigError, match="pretrain.lambda=1.5"):
        validate(composed("pretrain=ac", "pretrain.lambda=1.5"))
    with pytest.raises(ConfigError, match="pretrain.until='forever'"):
        validate(composed("pretrain=ac", "pretrain.until=forever"))


def test_ac_phase_updates_actor_and_critic_and_targets():
    from offline_rl.dataset.replay import ReplayBuffer

    algo = td3bc()
    replay = ReplayBuffer(64, OBS, ACT, "cpu", seed=0)
    b = fixed_batch()
    replay.add(b.observations.numpy(), b.actions.numpy(), b.rewards.numpy(), b.next_observations.numpy(),
               b.dones.numpy(), b.returns_to_go.numpy())
    [phase] = ActorCriticPretraining(steps=5, until=None, **{"lambda": 0.1}).phases(algo, replay, 16)
    actor0, critic_t0 = copy.deepcopy(algo.actor), copy.deepcopy(algo.critic_target)
    metrics = phase.update()
    # the loss's parts; not the normalised mix, which is 1 at every step (a flat 1.0 curve was
    # logged as pretrain_actor_critic/critic_loss in HalfCheetah's runs)
    assert set(metrics) == {"bc_loss", "mc_loss", "td_loss"}
    assert phase.name == "pretrain_actor_critic" and phase.steps == 5 and phase.stop is None
    assert any(not torch.equal(a, b) for a, b in zip(actor0.parameters(), algo.actor.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(critic_t0.parameters(), algo.critic_target.parameters()))


def test_motivational_example_reproduces_table_1():
    from offline_rl import motivational_example as ex

    order = ex.COLUMNS
    zero = [[t[sa] for sa in order] for t in ex.run(ex.zero_init())]
    assert zero == [[0, 0, 0, 0], [0, -1, -2, 3], [-2, -2, 1, 3], [1, 0, 1, 3]]
    for every_visit, first in ((False, 0.0), (True, 0.5)):  # "0 or +0.5"
        mc = [[t[sa] for sa in order] for t in ex.run(ex.monte_carlo_init(every_visit))]
        assert mc == [[first, 0, 1, 3], [1, 0, 1, 3], [1, 0, 1, 3], [1, 0, 1, 3]]


PAIRS = {"td3_bc": ["none", "actor", "critic", "ac", "qt_max"],
         "edac": ["none", "soft", "soft_actor", "soft_critic", "qt_max"],
         "sac_n": ["soft"], "bc": ["none"]}


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(PAIRS))
def test_every_documented_pair_runs_through_launch(algo, tmp_path, minari_root):
    options = ",".join(PAIRS[algo])
    extra = ["algo.num_critics=3"] if algo in ("edac", "sac_n") else []
    result = run_launch(["-m", f"algo={algo}", f"pretrain={options}", *SMALL_RUN, "updates=100",
                         "pretrain.steps=100", "pretrain.window=25", "eval.every=0",
                         f"hydra.sweep.dir={tmp_path}/sweep", *extra], tmp_path, minari_root)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = search_runs(tmp_path)
    runs = runs[runs["tags.sweep.role"] != "parent"]  # the sweep's parent run
    assert sorted(runs["tags.pretrain"]) == sorted(PAIRS[algo])
    assert set(runs["status"]) == {"FINISHED"}
    for _, run in runs.iterrows():
        phases = {c.split("/", 1)[1] for c in runs.columns
                  if c.startswith("metrics.phase_start/") and not math.isnan(run[c])}
        expected = {"none": {"offline_rl"}, "actor": {"pretrain_actor", "offline_rl"},
                    "critic": {"pretrain_critic", "offline_rl"},
                    "ac": {"pretrain_actor_critic", "offline_rl"},
                    "soft": {"pretrain_actor", "pretrain_critic", "offline_rl"},
                    "soft_actor": {"pretrain_actor", "offline_rl"},
                    "soft_critic": {"pretrain_critic", "offline_rl"},
                    "qt_max": {"offline_rl"}}[run["tags.pretrain"]]
        assert phases == expected
        pre = sorted(expected - {"offline_rl"})
        if pre:  # the x-axis counts pre-training updates: offline RL starts after them
            assert run["metrics.phase_start/offline_rl"] == 100 * len(pre)
            assert not math.isnan(run[f"metrics.{pre[-1]}/final/normalized_score_mean"])
        if run["tags.pretrain"] == "qt_max":
            assert 0.0 <= run["metrics.offline_rl/mc_target_fraction"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("algo, pretrain, message", [
    ("td3_bc", "soft", "use pretrain=ac"), ("td3_bc", "soft_critic", "use pretrain=critic"),
    ("edac", "ac", "use pretrain=soft"), ("edac", "actor", "use pretrain=soft_actor"),
    ("bc", "critic", "BC has none"),
])
def test_rejected_pairs_through_launch(algo, pretrain, message, tmp_path, minari_root):
    result = run_launch([f"algo={algo}", f"pretrain={pretrain}", *SMALL_RUN], tmp_path, minari_root)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_convergence_stop_is_logged(tmp_path, minari_root):
    result = run_launch(["pretrain=ac", *SMALL_RUN, "updates=20", "pretrain.steps=3000",
                         "pretrain.window=100", "pretrain.tolerance=0.5", "log_every=25",
                         "eval.every=0"], tmp_path, minari_root)
    assert result.returncode == 0, result.stderr[-3000:]
    run = search_runs(tmp_path).iloc[0]
    stopped = run["metrics.pretrain_actor_critic/converged_at"]
    assert 200 <= stopped < 3000
    assert run["metrics.phase_start/offline_rl"] == stopped
    assert run["tags.pretrain_actor_critic.converged_at"] == str(int(stopped))
