"""Online fine-tuning ("Finetuning from offline RL"): TD3-C's Lagrange multiplier and actor loss
against independent computations, the replay's offline/online mixing, and offline -> online runs
through launch.py (one MLflow run; from a previous run's checkpoint; resumed after SIGTERM)."""

from __future__ import annotations

import copy
import os
import signal
from functools import partial

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import ROOT, SMALL_RUN, run_launch, search_runs
from offline_rl.algo.td3 import TD3
from offline_rl.algo.td3_c import TD3C
from offline_rl.dataset.replay import Batch, MixedReplay, ReplayBuffer
from offline_rl.network import DeterministicActor, EnsembleCritic

OBS, ACT = 5, 2


def tiny(cls, **kwargs):
    torch.manual_seed(0)
    return cls(OBS, ACT, partial(DeterministicActor, width=16, depth=2),
               partial(EnsembleCritic, width=16, depth=2), normalize_states=False, **kwargs)


def random_batch(n: int = 64, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, OBS, generator=g), torch.rand(n, ACT, generator=g) * 2 - 1,
                 torch.randn(n, generator=g), torch.randn(n, OBS, generator=g), torch.zeros(n),
                 torch.zeros(n))


# ----- TD3-C: the multiplier and the actor loss ----------------------------------------------------


def multipliers(algo: TD3C, batch: Batch, updates: int) -> list[float]:
    values = []
    for _ in range(updates):
        algo.update(batch)
        values.append(float(algo.multiplier().detach()))
    return values


def test_td3c_multiplier_rises_while_the_constraint_is_violated():
    algo = tiny(TD3C, policy_delay=1, epsilon=1e-5, multiplier_lr=0.05)
    with torch.no_grad():  # the target policy far from the policy: c >> epsilon
        for p in algo.actor_target.parameters():
            p.add_(torch.randn_like(p))
    batch = random_batch()
    start = float(algo.multiplier().detach())
    values = multipliers(algo, batch, 30)
    with torch.no_grad():
        c = float(algo.constraint(batch.observations, algo.actor(batch.observations)))
    assert c > 1e3 * algo.epsilon  # still violated at the end
    assert start == pytest.approx(1.0)
    assert all(b > a for a, b in zip([start] + values, values))  # strictly increasing
    assert values[-1] > 2.0


def test_td3c_multiplier_decays_to_zero_while_the_constraint_is_slack():
    algo = tiny(TD3C, policy_delay=1, epsilon=10.0, multiplier_lr=0.05)  # c << epsilon
    batch = random_batch()
    values = multipliers(algo, batch, 60)
    assert all(b <= a for a, b in zip(values, values[1:]))  # never rises
    assert values[:5] == sorted(values[:5], reverse=True) and values[4] < values[0]
    assert values[-1] == 0.0  # projected onto lambda >= 0: exactly zero, and stays there
    assert values.index(0.0) < 40  # ~ 1 / lr Adam steps of size lr
    algo.epsilon = 1e-12  # now violated: it lifts off zero again
    assert multipliers(algo, batch, 40)[-1] > 0.0


def flat_grads(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def test_td3c_actor_loss_matches_an_independent_computation():
    algo = tiny(TD3C, epsilon=1e-3, dqda_clipping=None, initial_multiplier=0.7)
    with torch.no_grad():
        for p in algo.actor_target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = random_batch()
    s = batch.observations

    loss, metrics = algo.actor_loss(batch)
    distance = metrics["bc_loss"]
    algo.actor.zero_grad(), algo.multiplier.zero_grad()
    loss.backward()
    ours_actor = flat_grads(algo.actor.parameters())
    ours_lambda = algo.multiplier.value.grad.clone()

    # by hand: the Lagrangian of Eq. 4, lambda = 0.7
    algo.actor.zero_grad()
    pi = algo.actor(s)
    q1 = algo.critic.member(0, s, pi)
    c = ((pi - algo.actor_target(s).detach()) ** 2).sum(1).mean()
    lam = torch.tensor(0.7)
    (-q1.mean() + lam * c).backward()
    want_actor = flat_grads(algo.actor.parameters())
    want_lambda = algo.epsilon - c.detach()  # dL/dlambda of lambda * (epsilon - c)

    assert float(loss.detach()) == pytest.approx(float(-q1.mean().detach()), rel=1e-6)  # the lambda terms cancel
    assert float(distance) == pytest.approx(float(((pi.detach() - batch.actions) ** 2).mean()), rel=1e-6)
    torch.testing.assert_close(ours_actor, want_actor, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours_lambda, want_lambda, rtol=1e-5, atol=1e-9)


def test_clipped_dqda_gives_the_clipped_deterministic_policy_gradient():
    clip = 0.02
    algo = tiny(TD3, dqda_clipping=clip)
    batch = random_batch(32)
    s = batch.observations
    loss, _ = algo.actor_loss(batch)
    algo.actor.zero_grad()
    loss.backward()
    ours = flat_grads(algo.actor.parameters())

    # dQ/da by central differences on a float64 copy of the critic, clipped; then the gradient
    # of -mean(pi . clip(dQ/da)) with respect to the actor's parameters
    critic = copy.deepcopy(algo.critic).double()
    s64, a = s.double(), algo.actor(s).detach().double()
    h = 1e-6
    dqda = torch.zeros_like(a)
    for j in range(ACT):
        step = torch.zeros_like(a)
        step[:, j] = h
        dqda[:, j] = (critic.member(0, s64, a + step) - critic.member(0, s64, a - step)) / (2 * h)
    assert (dqda.abs() > clip).any()  # the clipping binds
    algo.actor.zero_grad()
    pi = algo.actor(s)
    (-(pi * dqda.clamp(-clip, clip).float()).sum(1).mean()).backward()
    torch.testing.assert_close(ours, flat_grads(algo.actor.parameters()), rtol=1e-4, atol=1e-7)
    # with a bound that never binds, the same gradient as -mean Q_1(s, pi(s))
    algo.dqda_clipping = 1e9
    loss, _ = algo.actor_loss(batch)
    algo.actor.zero_grad()
    loss.backward()
    clipped_off = flat_grads(algo.actor.parameters())
    algo.actor.zero_grad()
    (-algo.critic.member(0, s, algo.actor(s)).mean()).backward()
    torch.testing.assert_close(clipped_off, flat_grads(algo.actor.parameters()), rtol=1e-5, atol=1e-7)


# ----- replay mixing ---------------------------------------------------------------------------------


def filled(n: int, reward: float, capacity: int | None = None, seed: int = 0) -> ReplayBuffer:
    """n transitions, observation[0] = their index, reward = the buffer's tag."""
    buffer = ReplayBuffer(capacity or n, 3, 1, "cpu", seed=seed)
    obs = np.zeros((n, 3))
    obs[:, 0] = np.arange(n)
    buffer.add(obs, np.zeros((n, 1)), np.full(n, reward), obs, np.zeros(n))
    return buffer


def test_uniform_replay_draws_offline_transitions_in_proportion():
    offline, online = filled(1000, 0.0), filled(3000, 1.0, capacity=5000, seed=1)
    replay = MixedReplay(offline, online, init_with_offline=True, offline_fraction=None,
                         max_size=10_000)
    shares = []
    for _ in range(200):
        batch, share = replay.sample(256)
        from_offline = (batch.rewards == 0).float().mean()
        assert float(share) == pytest.approx(float(from_offline))
        shares.append(float(share))
    # E = 1000 / 4000; std of the mean of 200 batches = sqrt(.25 * .75 / 256 / 200) = 0.0019
    assert np.mean(shares) == pytest.approx(0.25, abs=0.01)
    assert 0.01 < np.std(shares) < 0.05  # random per batch, not fixed


def test_full_replay_evicts_the_oldest_offline_transitions_first():
    offline, online = filled(1000, 0.0), filled(1500, 1.0, capacity=2000, seed=1)
    replay = MixedReplay(offline, online, True, None, max_size=2000)
    assert len(replay) == 2000 and replay.offline_pool() == (500, 1000)
    batches = [replay.sample(256)[0] for _ in range(100)]
    offline_rows = torch.cat([b.observations[b.rewards == 0, 0] for b in batches])
    assert offline_rows.min() >= 500  # the first 500 dataset transitions are gone
    share = float(torch.cat([b.rewards for b in batches]).eq(0).float().mean())
    assert share == pytest.approx(500 / 2000, abs=0.015)


def test_fixed_offline_fraction_and_online_only():
    offline, online = filled(1000, 0.0), filled(50, 1.0, capacity=100, seed=1)
    fixed = MixedReplay(offline, online, True, offline_fraction=0.3, max_size=100)
    for _ in range(20):
        batch, share = fixed.sample(256)
        assert int((batch.rewards == 0).sum()) == round(0.3 * 256)  # exactly, every batch
        assert float(share) == pytest.approx(77 / 256)
    only_online = MixedReplay(offline, online, False, None, max_size=10_000)
    batch, share = only_online.sample(256)
    assert bool((batch.rewards == 1).all()) and float(share) == 0.0
    with pytest.raises(ValueError, match="init_with_offline"):
        MixedReplay(offline, online, False, 0.5, max_size=10)


# ----- through launch.py -----------------------------------------------------------------------------

FINETUNE_RUN = [*SMALL_RUN, "algo=td3_bc", "threads=1", "batch_size=64", "eval.every=100",
                "log_every=50", "finetune.env_steps=200", "finetune.min_replay_size=50"]


def metric(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_run_name_carries_its_finetuning_option_only_when_one_is_chosen():
    from offline_rl.run import run_name

    choices = {"algo": "td3_bc", "pretrain": "ac", "dataset": "hopper-medium-local"}
    assert run_name({**choices, "finetune": "td3_c"}, 0, "x") == "td3_bc-ac-hopper-medium-local-td3_c-s0"
    for off in ({}, {"finetune": "none"}, {"finetune": "None"}, {"finetune": "?"}):
        assert run_name({**choices, **off}, 3, "x") == "td3_bc-ac-hopper-medium-local-s3"
    assert run_name({**choices, "dataset": "minari"}, 1, "tests/hopper/random-v0") == (
        "td3_bc-ac-tests-hopper-random-v0-s1")


@pytest.mark.slow  # starts a process
def test_debug_smoke_runs_every_chosen_phase_shortened(tmp_path, minari_root):
    """``debug=smoke`` as the README shows it, with nothing else but the choices: 100 pre-training
    updates (the plateau window is longer), 300 offline updates, 200 online steps, one run."""
    result = run_launch([*SMALL_RUN, "algo=td3_bc", "pretrain=ac", "finetune=td3", "threads=1"],
                        tmp_path, minari_root)
    assert result.returncode == 0, result.stderr[-3000:]
    run = search_runs(tmp_path).iloc[0]
    assert run["status"] == "FINISHED" and run["tags.network"] == "small"
    assert run["tags.debug"] == run["params.debug"] == "smoke"  # told apart from real runs
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    rid = run["run_id"]
    assert metric(client, rid, "phase_start/offline_rl") == [(100, 100)]
    assert metric(client, rid, "phase_start/finetune") == [(400, 400)]
    assert metric(client, rid, "phase_end/finetune") == [(600, 600)]
    assert metric(client, rid, "finetune/env_steps")[-1] == (600, 200)
    assert metric(client, rid, "finetune/offline_score")[0][0] == 400
    assert [step for step, _ in metric(client, rid, "eval/normalized_score_mean")] == [600]


@pytest.mark.slow  # starts a process
def test_pretrain_offline_and_online_finetuning_in_one_run(tmp_path, minari_root, new_store):
    store = new_store(tmp_path / "store")
    result = run_launch([*FINETUNE_RUN, "pretrain=ac", "pretrain.steps=50", "pretrain.until=null",
                         "updates=100", "finetune=td3_c"], store, minari_root)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = search_runs(store)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.finetune"] == "td3_c"
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    rid = run["run_id"]
    assert metric(client, rid, "phase_start/offline_rl") == [(50, 50)]
    assert metric(client, rid, "phase_start/finetune") == [(150, 150)]
    assert metric(client, rid, "phase_end/finetune") == [(350, 350)]
    env_steps = metric(client, rid, "finetune/env_steps")
    assert env_steps[0] == (200, 50) and env_steps[-1] == (350, 200)  # counted per env step
    offline = metric(client, rid, "finetune/offline_score")
    online = metric(client, rid, "finetune/online_score")
    delta = metric(client, rid, "finetune/delta")
    assert offline[0][0] == 150 and online[0][0] == 350
    assert delta[0][1] == pytest.approx(online[0][1] - offline[0][1])
    evals = metric(client, rid, "eval/normalized_score_mean")
    assert [s for s, _ in evals if s > 150] == [200, 300, 350]  # evaluations during fine-tuning
    assert online[0][1] == pytest.approx(evals[-1][1])  # the same (cached) final evaluation
    # updates start at min_replay_size: the offline data is in the replay, so at once
    assert metric(client, rid, "finetune/updates")[-1][1] == 200
    # uniform over offline + online transitions: the offline share falls as online data comes in
    shares = [v for _, v in metric(client, rid, "finetune/batch_offline_fraction")]
    offline_size = metric(client, rid, "finetune/replay_size")[0][1] - 50
    assert all(0 < v < 1 for v in shares) and shares[-1] < shares[0]
    assert shares[-1] == pytest.approx(offline_size / (offline_size + 175), abs=0.1)
    assert metric(client, rid, "finetune/multiplier") and metric(client, rid, "finetune/env_steps_per_s")
    ckpt = client.download_artifacts(rid, "checkpoint.pt", str(tmp_path / "dl"))
    state = torch.load(ckpt, weights_only=True)
    assert "multiplier" in state["finetune_agent"] and state["global_step"] == 350

    # fine-tuning again from that run's checkpoint (by MLflow run id): one phase, same x-axis
    result = run_launch([*FINETUNE_RUN, "finetune=td3", f"finetune.from_run={rid}",
                         "finetune.init_with_offline=false"], store, minari_root)
    assert result.returncode == 0, result.stderr[-3000:]
    second = search_runs(store).iloc[-1]
    assert second["status"] == "FINISHED" and second["tags.finetune.from_run"] == rid
    sid = second["run_id"]
    assert metric(client, sid, "phase_start/finetune") == [(350, 350)]
    assert not metric(client, sid, "phase_start/offline_rl")
    # the offline score of the source's offline policy, as that run measured it
    assert metric(client, sid, "finetune/offline_score")[0][1] == pytest.approx(offline[0][1])
    # online replay only: no update before min_replay_size online transitions
    assert metric(client, sid, "finetune/updates")[-1][1] == 200 - 50 + 1
    assert all(v == 0 for _, v in metric(client, sid, "finetune/batch_offline_fraction"))

    # a source trained on another data file (its checkpoint's digest, here rewritten) is refused:
    # the state statistics alone tell no two files apart without state normalisation
    assert state["dataset_digest"] == client.get_run(rid).data.tags["dataset_digest"]
    other = tmp_path / "other" / "checkpoint.pt"
    other.parent.mkdir()
    torch.save({**state, "dataset_digest": "0123456789"}, other)
    result = run_launch([*FINETUNE_RUN, "finetune=td3", f"finetune.from_run={other}"], store, minari_root)
    assert result.returncode == 2, result.stderr[-3000:]
    assert (f"that run was trained on data with digest 0123456789; this run's "
            f"{second['tags.dataset_id']} has digest {state['dataset_digest']}") in result.stderr
    assert "Traceback" not in result.stderr and len(search_runs(store)) == 2  # no run started
    # a source given by run id whose checkpoint is older than the digest in it: its run's tag
    older = tmp_path / "older" / "checkpoint.pt"
    older.parent.mkdir()
    torch.save({k: v for k, v in state.items() if k != "dataset_digest"}, older)
    source = client.create_run(client.get_run(rid).info.experiment_id, tags={
        "dataset_digest": "0123456789", "dataset_id": "local/other/medium-v0"})
    client.log_artifact(source.info.run_id, str(older))
    client.set_terminated(source.info.run_id)
    result = run_launch([*FINETUNE_RUN, "finetune=td3", f"finetune.from_run={source.info.run_id}"],
                        store, minari_root)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "that run was trained on local/other/medium-v0 with digest 0123456789" in result.stderr


@pytest.mark.slow  # starts a process
def test_finetuning_configuration_errors_are_reported_before_training(tmp_path, minari_root, new_store):
    store = new_store(tmp_path / "store")
    cases = [
        (["algo=edac", "finetune=td3_c"], "use finetune=sac"),
        (["algo=td3_bc", "finetune=sac"], "use finetune=td3, td3_bc or td3_c"),
        (["algo=bc", "finetune=td3"], "has no critic"),
        (["finetune=td3", "finetune.init_with_offline=false", "finetune.offline_fraction=0.5"],
         "finetune.init_with_offline=true"),
        (["finetune=td3_c", "finetune.algorithm.epsilon=0"], "finetune.algorithm.epsilon=0"),
        (["finetune=td3", "finetune.from_run=0123456789abcdef"], "no MLflow run '0123456789abcdef'"),
        (["finetune=td3", f"finetune.from_run={tmp_path}/missing.pt"], "no checkpoint file"),
    ]
    for overrides, message in cases:
        result = run_launch([*SMALL_RUN, *overrides], store, minari_root)
        assert result.returncode == 2, (overrides, result.stderr[-2000:])
        assert message in result.stderr, (overrides, result.stderr[-2000:])
        assert "Traceback" not in result.stderr


@pytest.mark.slow  # starts a process
def test_sac_finetunes_an_edac_agent(tmp_path, minari_root, new_store):
    store = new_store(tmp_path / "store")
    result = run_launch([*FINETUNE_RUN, "algo=edac", "algo.num_critics=3", "updates=50",
                         "finetune=sac", "finetune.offline_fraction=0.5"], store, minari_root)
    assert result.returncode == 0, result.stderr[-3000:]
    run = search_runs(store).iloc[0]
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    rid = run["run_id"]
    assert run["status"] == "FINISHED"
    # a fixed fraction waits for min_replay_size online transitions, then half of every batch
    assert metric(client, rid, "finetune/updates")[-1][1] == 200 - 50 + 1
    assert {v for _, v in metric(client, rid, "finetune/batch_offline_fraction")} == {0.5}
    assert metric(client, rid, "finetune/alpha")
    state = torch.load(client.download_artifacts(rid, "checkpoint.pt", str(tmp_path / "dl")),
                       weights_only=True)
    assert state["finetune_agent"]["critic"]["net.0.weight"].shape[0] == 3  # the N=3 ensemble


def test_finetuning_resumes_after_sigterm_into_the_same_run(tmp_path, minari_root, monkeypatch,
                                                            new_store):
    from hydra import compose, initialize_config_dir

    from offline_rl.run import train

    store = new_store(tmp_path / "store")
    overrides = [*FINETUNE_RUN, "updates=40", "finetune=td3", "checkpoint.every=30",
                 f"tracker.store_dir={store}"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    calls = {"n": 0}
    original = MixedReplay.sample

    def sample(self, batch_size):
        calls["n"] += 1
        if calls["n"] == 77:  # mid-fine-tuning, between two checkpoints
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch_size)

    monkeypatch.setattr(MixedReplay, "sample", sample)
    with pytest.raises(SystemExit):
        train(cfg)
    monkeypatch.setattr(MixedReplay, "sample", original)
    killed = search_runs(store).iloc[0]
    assert killed["status"] == "KILLED"
    train(cfg)
    runs = search_runs(store)
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    run = runs.iloc[0]
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    resumed_at = int(run["tags.resumed_from_step"])
    assert 40 < resumed_at < 240
    env_steps = metric(client, run["run_id"], "finetune/env_steps")
    assert [s for s, _ in env_steps] == sorted({s for s, _ in env_steps})  # each step once
    assert env_steps[-1] == (240, 200)
    # the online replay came back with the checkpoint: it holds every online transition
    sizes = metric(client, run["run_id"], "finetune/replay_size")
    assert sizes[-1][1] - sizes[0][1] == env_steps[-1][1] - env_steps[0][1]
    assert len(metric(client, run["run_id"], "finetune/offline_score")) == 1
