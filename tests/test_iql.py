"""IQL (offline_rl/algo/iql.py) against an independent computation: a hand-computed expectile
loss, and whole updates against a reference written as CORL's iql.py writes it (plain MLPs with the
same weights, three torch.optim.Adam, CosineAnnealingLR); its reward normalisation; what the
pre-training schemes and fine-tuning make of it."""

from __future__ import annotations

import copy
from functools import partial

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from offline_rl.algo.iql import IQL, GaussianIQL, StateValue, expectile_loss
from offline_rl.dataset.episodes import OfflineData
from offline_rl.dataset.replay import ReplayBuffer
from offline_rl.network import DeterministicActor, EnsembleCritic, TanhGaussianActor
from test_losses import ACT, OBS, fixed_batch, member_q


def tiny(cls=IQL, **options) -> IQL:
    torch.manual_seed(0)
    actor = partial(TanhGaussianActor if cls is GaussianIQL else DeterministicActor, width=16, depth=2)
    return cls(OBS, ACT, actor, partial(EnsembleCritic, width=16, depth=2),
               partial(StateValue, width=16, depth=2), **options)


def test_expectile_loss_by_hand():
    # u = (-2, 1), tau = 0.7: weights (0.3, 0.7) -> (0.3 * 4 + 0.7 * 1) / 2 = 0.95
    assert expectile_loss(torch.tensor([-2.0, 1.0]), 0.7).item() == pytest.approx(0.95)
    # tau = 0.5 is half the mean squared error
    u = torch.randn(100)
    assert expectile_loss(u, 0.5).item() == pytest.approx(0.5 * (u ** 2).mean().item())


def plain_mlp(net: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A network of this package (Linear -> LayerNorm -> ReLU ..., Linear) as plain operations."""
    for layer in net:
        if isinstance(layer, torch.nn.Linear):
            x = F.linear(x, layer.weight, layer.bias)
        elif isinstance(layer, torch.nn.LayerNorm):
            x = F.layer_norm(x, layer.normalized_shape, eps=layer.eps)
        else:
            x = torch.relu(x)
    return x


class CorlStyleIQL:
    """CORL's ImplicitQLearning.train on copies of the same weights: separate optimisers for V,
    Q and the actor, the actor's CosineAnnealingLR, the twin critics averaged in the Q loss."""

    def __init__(self, algo: IQL, steps: int):
        self.algo = copy.deepcopy(algo)
        a = self.algo
        self.v_opt = torch.optim.Adam(a.value.parameters(), lr=3e-4)
        self.q_opt = torch.optim.Adam(a.critic.parameters(), lr=3e-4)
        self.pi_opt = torch.optim.Adam(a.actor.parameters(), lr=3e-4)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.pi_opt, steps)

    def q_both(self, critic, obs, act):
        return torch.stack([member_q(critic, i, obs, act) for i in range(2)])

    def train(self, batch, beta=3.0, expectile=0.7, gamma=0.99, tau=5e-3):
        a = self.algo
        obs, act, rew, nxt, done = batch.observations, batch.actions, batch.rewards, \
            batch.next_observations, batch.dones
        with torch.no_grad():
            target_q = self.q_both(a.critic_target, obs, act).min(0).values
        v = plain_mlp(a.value.net, obs).squeeze(-1)
        adv = target_q - v
        v_loss = torch.mean(torch.abs(expectile - (adv < 0).float()) * adv ** 2)
        self.v_opt.zero_grad()
        v_loss.backward()
        self.v_opt.step()
        next_v = plain_mlp(a.value.net, nxt).squeeze(-1).detach()
        targets = rew + (1.0 - done) * gamma * next_v
        q1, q2 = self.q_both(a.critic, obs, act)
        q_loss = (F.mse_loss(q1, targets) + F.mse_loss(q2, targets)) / 2
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        with torch.no_grad():
            for t, s in zip(a.critic_target.parameters(), a.critic.parameters()):
                t.copy_((1 - tau) * t + tau * s)
        exp_adv = torch.exp(beta * adv.detach()).clamp(max=100.0)
        pi = torch.tanh(plain_mlp(a.actor.net, obs))
        policy_loss = torch.mean(exp_adv * ((pi - act) ** 2).sum(1))
        self.pi_opt.zero_grad()
        policy_loss.backward()
        self.pi_opt.step()
        self.schedule.step()
        return v_loss, q_loss, policy_loss


def test_updates_match_a_corl_style_reference():
    """Five updates with a 5-step cosine schedule (the actor's rate decays to 0 within them):
    losses and every parameter match the reference's."""
    algo = tiny(actor_schedule_steps=5)
    reference = CorlStyleIQL(algo, steps=5)
    for step in range(5):
        batch = fixed_batch(step)
        metrics = algo.update(batch)
        v_loss, q_loss, policy_loss = reference.train(batch)
        torch.testing.assert_close(metrics["value_loss"], v_loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(metrics["critic_loss"], q_loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(metrics["actor_loss"], policy_loss.detach(), rtol=1e-5, atol=1e-6)
    for name in ("actor", "critic", "critic_target", "value"):
        for ours, theirs in zip(getattr(algo, name).parameters(),
                                getattr(reference.algo, name).parameters()):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert algo.actor_schedule.count.item() == 5


def test_the_gaussian_actor_clones_by_log_likelihood():
    algo, batch = tiny(GaussianIQL), fixed_batch()
    with torch.no_grad():
        advantage = algo.advantage(batch)
    loss, _ = algo.weighted_actor_loss(batch, advantage)
    weight = torch.exp(3.0 * advantage).clamp(max=100.0)
    expected = (weight * -algo.actor.log_prob(batch.observations, batch.actions)).mean()
    torch.testing.assert_close(loss, expected)
    assert GaussianIQL.actor_kind == "stochastic" and not GaussianIQL.entropy_regularised


def test_rewards_are_normalised_by_the_spread_of_episode_returns():
    """Two episodes returning 1 and 5: scale 1000 / 4 = 250, applied to rewards and
    returns-to-go alike; the offline algorithms that do not normalise keep 1."""
    rewards = np.array([0.5, 0.5, 2.0, 3.0], dtype=np.float32)
    ends = np.array([False, True, False, True])
    data = OfflineData("test", np.zeros((4, OBS), np.float32), np.zeros((4, ACT), np.float32),
                       rewards, np.zeros((4, OBS), np.float32), ends, np.zeros(4, bool))
    algo = tiny()
    assert algo.reward_scale(data) == pytest.approx(250.0)
    assert tiny(normalize_rewards=False).reward_scale(data) == 1.0
    replay = ReplayBuffer.from_offline(data, "cpu", gamma=1.0, normalize_states=False,
                                       reward_scale=algo.reward_scale(data))
    np.testing.assert_allclose(replay.column("rewards").numpy(), rewards * 250)
    np.testing.assert_allclose(replay.column("returns_to_go").numpy(), [250, 125, 1250, 750])


def test_critic_pretraining_regresses_q_and_v_on_the_returns():
    from offline_rl.pretrain.common import critic_pretrain_loss

    algo, batch = tiny(), fixed_batch()
    loss, metrics = critic_pretrain_loss(algo, batch, batch.returns_to_go, 0.0, 0.0, 1)
    q = algo.critic(batch.observations, batch.actions)
    v = algo.value(batch.observations)
    q_mc = ((q - batch.returns_to_go) ** 2).mean(1).mean()  # averaged over the twins
    v_mc = ((v - batch.returns_to_go) ** 2).mean()
    torch.testing.assert_close(loss, q_mc + v_mc)
    torch.testing.assert_close(metrics["value_mc_loss"], v_mc.detach())
    before = [p.detach().clone() for p in algo.value.parameters()]
    algo.step_critic(loss)  # one optimiser, a group each: V moves with Q
    assert all(not torch.equal(b, p) for b, p in zip(before, algo.value.parameters()))


def test_fine_tuning_continues_every_network_including_v():
    source = tiny()
    agent = IQL(OBS, ACT, **IQL.continuation_options(source))
    for name in IQL.TRANSFERRED:
        getattr(agent, name).load_state_dict(getattr(source, name).state_dict())
    batch = fixed_batch()
    torch.testing.assert_close(agent.value(batch.observations), source.value(batch.observations))
    # from an algorithm without V (TD3+BC), a fresh V of the default shape
    from offline_rl.algo.td3_bc import TD3BC

    td3 = TD3BC(OBS, ACT, partial(DeterministicActor, width=16), partial(EnsembleCritic, width=16))
    assert isinstance(IQL(OBS, ACT, **IQL.continuation_options(td3)).value, StateValue)


@pytest.mark.slow
def test_iql_runs_through_launch_with_pretraining_and_fine_tuning(tmp_path, minari_root):
    """algo=iql pretrain=ac finetune=iql on the tiny dataset: every phase logs its losses (V's
    Monte-Carlo regression in pre-training too), and the run finishes with a score."""
    import math

    from conftest import SMALL_RUN, run_launch, search_runs

    result = run_launch(["algo=iql", "pretrain=ac", "finetune=iql", *SMALL_RUN, "updates=60",
                         "eval.every=30", "pretrain.steps=40", "pretrain.until=null",
                         "finetune.env_steps=60", "finetune.min_replay_size=20", "batch_size=32",
                         "threads=1"], tmp_path, minari_root, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (_, run), = search_runs(tmp_path).iterrows()
    assert run["status"] == "FINISHED" and run["params.algo"] == "iql"
    for metric in ("pretrain_actor_critic/value_mc_loss", "offline_rl/value_loss",
                   "offline_rl/critic_loss", "offline_rl/weight", "finetune/value_loss",
                   "eval/normalized_score_mean"):
        assert not math.isnan(run[f"metrics.{metric}"]), metric
