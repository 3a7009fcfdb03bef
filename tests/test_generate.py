"""Local dataset generation: one tiny real behaviour run (CrossQ) on Hopper-v5 -> five real Minari
datasets (D4RL's levels).

Everything is written under a temporary MINARI_DATASETS_PATH and MLflow store. The budget is tiny (a
few hundred env steps, 16-unit networks): the data is not good, but every property checked here --
the files are Minari datasets holding true environment transitions, the levels' composition, D4RL's
reference scores, the behaviour run in MLflow, resuming a killed generation, the settings check,
the atomic write -- does not depend on the policy's quality.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from offline_rl.dataset.minari_source import dataset_path, is_local, read_minari_dataset
from offline_rl.dataset.replay import ReplayBuffer
from offline_rl.errors import ConfigError, DatasetError
from offline_rl.generate import datasets as generation
from offline_rl.generate.__main__ import main
from offline_rl.generate.datasets import (LEVELS, REFERENCE_RETURNS, GeneratorConfig,
                                          checkpoint_folder, ensure_local_dataset,
                                          generate_local_datasets, local_dataset_id,
                                          replay_episodes)
from offline_rl.generate.local import load_local
from offline_rl.generate.rollouts import collect_episodes, evaluate_policy, random_policy, select_snapshot
from offline_rl.training.evaluation import normalized_score

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(env_steps=400, random_steps=150, snapshot_every=100, dataset_size=300, eval_episodes=2,
            ref_episodes=4, num_envs=4, actor_width=16, critic_width=16, batch_size=64, seed=4,
            num_threads=1, checkpoint_every=100, progress=False)
TINY_ARGS = ["--env", "Hopper-v5", "--no-progress"] + [
    arg for key, value in TINY.items() if key != "progress"
    for arg in (f"--{key.replace('_', '-')}", str(value))]
IDS = {level: f"local/hopper/{level}-v0" for level in LEVELS}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The five Hopper datasets of one tiny run, made through the command line."""
    root = tmp_path_factory.mktemp("minari_generated")
    store = tmp_path_factory.mktemp("generation_store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        assert main(TINY_ARGS) == 0
    return root, store


@pytest.fixture
def datasets(generated, monkeypatch):
    root, store = generated
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    return root


def metadata(dataset_id: str) -> dict:
    with open(dataset_path(dataset_id) / "data" / "metadata.json") as f:
        return json.load(f)


def episodes_of(dataset_id: str) -> list:
    import minari

    return list(minari.load_dataset(dataset_id).iterate_episodes())


# ----- pure functions ----------------------------------------------------------------------------
def test_local_dataset_ids():
    assert local_dataset_id("Hopper-v5", "medium") == "local/hopper/medium-v0"
    assert local_dataset_id("HalfCheetah-v5", "medium-replay") == "local/halfcheetah/medium-replay-v0"
    assert local_dataset_id("Walker2d-v5", "full-replay") == "local/walker2d/full-replay-v0"
    assert local_dataset_id("Walker2d-v5", "medium-expert") == "local/walker2d/medium-expert-v0"
    with pytest.raises(ConfigError, match="medium-expert"):
        local_dataset_id("Hopper-v5", "random")


def test_snapshot_selection_picks_the_return_closest_to_a_third_of_the_final_one():
    pairs = [(5000, 300.0), (10000, 900.0), (15000, 1150.0), (20000, 2500.0), (25000, 3000.0)]
    assert select_snapshot(pairs, 3000.0) == 1  # target 1000: 900 is 100 away, 1150 is 150
    assert select_snapshot(pairs, 3300.0) == 2  # target 1100: 1150 is 50 away
    assert select_snapshot(pairs, 9000.0) == 4  # target 3000: the final snapshot itself
    assert select_snapshot(pairs, 3000.0, fraction=0.8) == 3  # target 2400
    # equally close: the earlier snapshot; negative returns (HalfCheetah early on) work the same
    assert select_snapshot([(1, 90.0), (2, 110.0)], 300.0) == 0
    assert select_snapshot([(1, -400.0), (2, -120.0), (3, -20.0)], -150.0) == 2  # target -50
    with pytest.raises(ValueError):
        select_snapshot([], 100.0)


def test_config_defaults_per_environment_and_errors():
    assert GeneratorConfig.for_env("Hopper-v5").env_steps == generation.ENV_DEFAULTS["Hopper-v5"]["env_steps"]
    assert GeneratorConfig.for_env("Hopper-v5", env_steps=1e5).env_steps == 100_000  # YAML's 1e5
    assert GeneratorConfig.for_env("Hopper-v5").dataset_size == 1_000_000  # D4RL's size
    with pytest.raises(ConfigError, match="env_steps"):
        GeneratorConfig(env_steps=0)
    with pytest.raises(ConfigError, match="env_stepz"):
        GeneratorConfig.for_env("Hopper-v5", env_stepz=10)
    with pytest.raises(ConfigError, match="algorithm"):
        GeneratorConfig(algorithm="ppo")
    # runtime settings never change what is generated, nor where its checkpoints live
    base = GeneratorConfig.for_env("Hopper-v5", **TINY)
    fast = GeneratorConfig.for_env("Hopper-v5", **{**TINY, "compile": "compile", "num_threads": 2,
                                                   "checkpoint_every": 7, "track": False})
    assert base.data_settings() == fast.data_settings()
    assert checkpoint_folder(base) == checkpoint_folder(fast)
    assert checkpoint_folder(base) != checkpoint_folder(GeneratorConfig.for_env("Hopper-v5",
                                                                               **{**TINY, "seed": 5}))


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--env", "--env-steps", "--dataset-size", "--levels", "--seed", "--overwrite",
                 "--algorithm", "--compile"):
        assert flag in out


def test_replay_episodes_rebuild_the_stream_and_cut_the_running_one():
    # a stream of 7 transitions: an episode terminated at step 2, one truncated by the time limit at
    # step 5, then one still running; observations encode the step so that links are checkable
    replay = ReplayBuffer(7, obs_dim=1, act_dim=1, device="cpu")
    obs = 0.0
    for t in range(7):
        next_obs = float(10 * (t + 1))
        terminated, truncated = t == 2, t == 5
        replay.add([[obs]], [[t]], [float(t)], [[next_obs]], [terminated], timeouts=[truncated])
        obs = -next_obs if (terminated or truncated) else next_obs  # a reset state
    full = replay_episodes(replay, 7, seed=100)
    assert [len(ep["rewards"]) for ep in full] == [3, 3, 1]
    assert [ep["terminations"].tolist() for ep in full] == [[0, 0, 1], [0, 0, 0], [0]]
    assert [ep["truncations"].tolist() for ep in full] == [[0, 0, 0], [0, 0, 1], [1]]
    assert [ep["seed"] for ep in full] == [100, 103, 106]  # seed + env steps before the reset
    assert full[1]["observations"][:, 0].tolist() == [-30.0, 40.0, 50.0, 60.0]
    assert full[1]["rewards"].tolist() == [3.0, 4.0, 5.0]
    # the buffer as it stood after 4 steps: the second episode cut after its first step
    prefix = replay_episodes(replay, 4, seed=100)
    assert [len(ep["rewards"]) for ep in prefix] == [3, 1]
    assert prefix[1]["truncations"].tolist() == [1] and prefix[1]["terminations"].tolist() == [0]
    assert prefix[1]["observations"][:, 0].tolist() == [-30.0, 40.0]
    assert replay_episodes(replay, 0, seed=0) == []
    with pytest.raises(ValueError):
        replay_episodes(replay, 8, seed=0)


def test_collected_episodes_are_exact_in_number_and_true_trajectories():
    env_id = "Hopper-v5"
    policy = random_policy(gym.make(env_id).action_space, seed=1)
    episodes = collect_episodes(policy, env_id, num_transitions=203, num_envs=4, seed=7,
                                progress=False)
    assert sum(len(ep["rewards"]) for ep in episodes) == 203
    assert sorted(ep["seed"] for ep in episodes if ep["seed"] is not None) == [7, 8, 9, 10]
    cut = [ep for ep in episodes if not ep["terminations"][-1] and not ep["truncations"][-1]]
    assert cut == []  # every episode ends with a flag, the cut ones with truncation
    env = gym.make(env_id)
    for ep in episodes:
        flags = ep["terminations"] | ep["truncations"]
        assert not flags[:-1].any() and flags[-1]
        if ep["seed"] is None:
            continue
        obs, _ = env.reset(seed=ep["seed"])
        np.testing.assert_array_equal(ep["observations"][0], obs)
        for t in range(len(ep["rewards"])):
            obs, reward, terminated, _, _ = env.step(ep["actions"][t])
            np.testing.assert_array_equal(ep["observations"][t + 1], obs)
            assert ep["rewards"][t] == reward and ep["terminations"][t] == terminated


# ----- the generated datasets --------------------------------------------------------------------
def test_minari_loads_every_level_with_d4rl_reference_scores_and_origin(datasets):
    import minari

    assert sorted(minari.list_local_datasets()) == sorted(IDS.values())
    expected_config = GeneratorConfig.for_env("Hopper-v5", **TINY).to_dict()
    ref_min, ref_max = REFERENCE_RETURNS["Hopper-v5"]
    generated_returns = set()
    for level, dataset_id in IDS.items():
        ds = minari.load_dataset(dataset_id)
        meta = ds.storage.metadata
        assert (meta["ref_min_score"], meta["ref_max_score"]) == (ref_min, ref_max)
        assert meta["ref_scores_source"] == "D4RL"
        assert math.isfinite(meta["random_policy_return"]) and math.isfinite(meta["final_policy_return"])
        generated_returns.add((meta["random_policy_return"], meta["final_policy_return"]))
        assert json.loads(meta["generator_config"]) == expected_config
        assert meta["level"] == level and meta["behaviour_algorithm"] == "crossq"
        if level == "expert":  # the description says which final policy the data came from
            chosen = {"average": "the mean of its snapshots' weights over the last 10% of training (",
                      "last_snapshot": "its last snapshot (it scored higher than the mean"}
            assert chosen[meta["final_policy_chosen"]] in meta["description"]
        # snapshots every 100 env steps, the last at the end of training
        snapshots = json.loads(meta["snapshot_returns"])
        assert [s for s, _ in snapshots] == [100, 200, 300, 400]
        # the medium: the snapshot whose stochastic episodes' return is closest to Hopper's
        # medium_fraction (0.40) x the final policy's (medium_by=rollouts, the defaults)
        by_rollouts = json.loads(meta["snapshot_rollout_returns"])
        target = 0.40 * meta["final_policy_rollout_return"]
        closest = min(by_rollouts, key=lambda p: (abs(p[1] - target), p[0]))
        assert meta["medium_snapshot_step"] == closest[0]
        sizes = {"medium": 300, "expert": 300, "medium-expert": 600, "full-replay": 400,
                 "medium-replay": closest[0]}
        assert ds.total_steps == sizes[level]
        assert ds.env_spec.id == "Hopper-v5"
    assert len(generated_returns) == 1  # one behaviour run behind every level
    # Minari's own normalisation works with D4RL's references
    score = minari.get_normalized_score(minari.load_dataset(IDS["expert"]), np.array([ref_max]))
    assert score == pytest.approx(1.0)


def test_normalised_scores_of_a_local_dataset_use_d4rl_references(datasets):
    data = read_minari_dataset(IDS["medium"])
    assert (data.ref_min_score, data.ref_max_score) == (-20.272305, 3234.3)
    # by hand: 100 * (1607.0138475 + 20.272305) / (3234.3 + 20.272305) = 50
    assert normalized_score(1607.0138475, data.ref_min_score, data.ref_max_score) == pytest.approx(50.0)
    mean_return = metadata(IDS["medium"])["episode_return_mean"]
    returns = [ep.rewards.sum() for ep in episodes_of(IDS["medium"])]
    assert mean_return == pytest.approx(np.mean(returns))


def test_levels_are_composed_as_d4rl_composes_them(datasets):
    full = episodes_of(IDS["full-replay"])
    replay = episodes_of(IDS["medium-replay"])
    medium, expert = episodes_of(IDS["medium"]), episodes_of(IDS["medium-expert"])
    # medium-replay is a prefix of full-replay: the same stream, cut at the medium snapshot
    stream = {k: np.concatenate([getattr(ep, k) for ep in full]) for k in ("actions", "rewards")}
    cut = sum(len(ep.rewards) for ep in replay)
    for k in ("actions", "rewards"):
        np.testing.assert_array_equal(np.concatenate([getattr(ep, k) for ep in replay]),
                                      stream[k][:cut])
    for a, b in zip(replay[:-1], full):
        np.testing.assert_array_equal(a.observations, b.observations)
    # medium-expert is medium followed by expert, episode by episode
    both = medium + episodes_of(IDS["expert"])
    assert len(expert) == len(both)
    for a, b in zip(expert, both):
        for k in ("observations", "actions", "rewards", "terminations", "truncations"):
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def test_read_minari_dataset_gives_consistent_transitions(datasets):
    for level, dataset_id in IDS.items():
        data = read_minari_dataset(dataset_id)
        assert len(data) == metadata(dataset_id)["total_steps"]
        assert data.observations.shape == (len(data), 11) and data.actions.shape == (len(data), 3)
        assert np.all(np.abs(data.actions) <= 1.0)
        ends = data.episode_ends
        assert ends[-1] and not (data.terminals & data.timeouts).any()
        within = ~ends[:-1]
        np.testing.assert_array_equal(data.next_observations[:-1][within],
                                      data.observations[1:][within])
        assert data.metadata["generator_config"]["env_steps"] == 400
        assert data.metadata["level"] == level


def test_every_episode_is_a_true_environment_trajectory_with_its_flags(datasets):
    import minari

    env = gym.make("Hopper-v5")
    for level in ("medium", "expert", "full-replay"):
        ds = minari.load_dataset(IDS[level])
        episodes = list(ds.iterate_episodes())
        seeds = [m.get("seed") for m in ds.storage.get_episode_metadata(range(len(episodes)))]
        for ep in episodes:
            flags = ep.terminations | ep.truncations
            assert not flags[:-1].any() and flags[-1]  # flags only at an episode's last step
        if level == "full-replay":
            # every episode of the training stream started from env.reset(seed + steps before it)
            starts = np.cumsum([0] + [len(ep.rewards) for ep in episodes[:-1]])
            assert seeds == [TINY["seed"] + int(s) for s in starts]
        else:
            assert len({s for s in seeds if s is not None}) == TINY["num_envs"]
        # the replay's observations and rewards went through float32 (the training buffer)
        exact = level != "full-replay"
        for ep, seed in zip(episodes, seeds):
            if seed is None:
                continue
            obs, _ = env.reset(seed=seed)
            for t in range(len(ep.rewards)):
                obs, reward, terminated, truncated, _ = env.step(ep.actions[t])
                if exact:
                    np.testing.assert_array_equal(ep.observations[t + 1], obs)
                    assert ep.rewards[t] == reward
                else:
                    np.testing.assert_allclose(ep.observations[t + 1], obs, rtol=1e-6, atol=1e-6)
                    assert ep.rewards[t] == pytest.approx(reward, rel=1e-6, abs=1e-6)
                assert ep.terminations[t] == terminated
    env.close()


def test_the_behaviour_run_is_an_mlflow_run_with_its_learning_curve(datasets):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("datasets")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "behaviour-crossq-hopper-s4"
    assert run.info.run_id == metadata(IDS["medium"])["behaviour_run_id"]
    curve = client.get_metric_history(run.info.run_id, "eval/normalized_score_mean")
    assert [m.step for m in curve] == [100, 200, 300, 400]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "behaviour/env_steps")]
    assert run.data.metrics["expert/transitions"] == 300
    assert run.data.params["algorithm"] == "crossq"
    # the behaviour run is done: its checkpoints are gone
    assert not list((Path(datasets) / ".generate").glob("*/step-*.pt"))


def _same_datasets(root_a: Path, root_b: Path, monkeypatch) -> None:
    for dataset_id in IDS.values():
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(root_a))
        a = read_minari_dataset(dataset_id)
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(root_b))
        b = read_minari_dataset(dataset_id)
        for field in ("observations", "actions", "rewards", "terminals", "timeouts"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=dataset_id)
        assert a.metadata["snapshot_returns"] == b.metadata["snapshot_returns"]


@pytest.mark.slow  # starts a process
def test_a_killed_generation_resumes_and_publishes_the_same_datasets(generated, tmp_path,
                                                                     monkeypatch):
    root, _ = generated
    fresh = tmp_path / "minari"
    env = {**os.environ, "MINARI_DATASETS_PATH": str(fresh),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    command = [sys.executable, "-m", "offline_rl.generate", *TINY_ARGS]
    first = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    folder = None
    while time.time() < deadline and first.poll() is None:
        found = sorted(fresh.glob(".generate/*/step-*.pt"))
        if any(int(p.stem.split("-")[1]) >= 200 for p in found):
            folder = found[0].parent
            break
        time.sleep(0.05)
    assert folder is not None, "no checkpoint at env step 200 appeared"
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not any(is_local(i) for i in IDS.values() if (fresh / i).exists())
    second = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming the Hopper-v5 behaviour run from" in second.stderr, (first.stdout.read(),
                                                                         second.stderr)
    step = int(second.stderr.split("(env step ")[1].split(" ")[0])
    assert 200 <= step < 400  # resumed, not restarted from step 0
    _same_datasets(root, fresh, monkeypatch)
    # one behaviour run in MLflow, continued, with every evaluation stored once
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("datasets").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "eval/return_mean")]
    assert steps == [100, 200, 300, 400]


def test_a_corrupt_generation_checkpoint_is_reported_and_generation_restarts(generated, tmp_path,
                                                                            monkeypatch, capfd):
    root, _ = generated
    fresh = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(fresh))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    folder, _ = checkpoint_folder(GeneratorConfig.for_env("Hopper-v5", **TINY))
    folder.mkdir(parents=True)
    (folder / f"step-{200:012d}.pt").write_bytes(b"not a checkpoint, half written")
    assert main(TINY_ARGS) == 0
    err = capfd.readouterr().err
    assert "is truncated or corrupt" in err and "starting the behaviour run afresh" in err
    _same_datasets(root, fresh, monkeypatch)


def test_ensure_local_dataset_reuses_a_match_and_names_what_differs(datasets, monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("must not generate: the datasets exist")

    monkeypatch.setattr(generation, "generate_local_datasets", no_generation)
    same = {**TINY, "num_threads": 2, "progress": True, "compile": "compile"}  # runtime settings
    assert ensure_local_dataset("Hopper-v5", "medium", **same) == IDS["medium"]
    data = load_local("Hopper-v5", "medium-replay", generator=TINY)
    assert data.dataset_id == IDS["medium-replay"] and len(data) > 0

    with pytest.raises(DatasetError) as error:
        ensure_local_dataset("Hopper-v5", "expert", **{**TINY, "env_steps": 500, "seed": 3})
    message = str(error.value)
    assert IDS["expert"] in message and str(dataset_path(IDS["expert"])) in message
    assert "env_steps = 400 in the dataset, 500 requested" in message
    assert "seed = 4 in the dataset, 3 requested" in message
    assert "delete" in message and "dataset.generator.env_steps=400" in message
    assert "dataset_size" not in message  # only what differs
    with pytest.raises(DatasetError, match="env_steps"):
        load_local("Hopper-v5", "medium", generator={**TINY, "env_steps": 500})
    with pytest.raises(ConfigError, match="critic_widht"):
        load_local("Hopper-v5", "medium", generator={**TINY, "critic_widht": 8})


def test_settings_added_later_are_checked_and_datasets_made_before_them_stay_valid(datasets):
    """medium_by and final_policy came after the first datasets: at their old values (deterministic,
    average) they are left out of the data settings, so those datasets and checkpoints stay valid
    for the old rule and are refused for the new defaults (rollouts, better), and the other way."""
    with pytest.raises(ConfigError, match="medium_by must be one of deterministic, rollouts"):
        GeneratorConfig.for_env("Hopper-v5", medium_by="stochastic")
    with pytest.raises(ConfigError, match="final_policy must be one of average, better"):
        GeneratorConfig.for_env("Hopper-v5", final_policy="best")
    defaults = GeneratorConfig.for_env("Hopper-v5").data_settings()
    assert defaults["medium_by"] == "rollouts" and defaults["final_policy"] == "better"
    # the medium level at D4RL's own medium / expert return ratio per environment (its v2
    # datasets' normalised scores, medium and expert), through D4RL's reference returns
    d4rl = {"Hopper-v5": (44, 108), "Walker2d-v5": (62, 107), "HalfCheetah-v5": (40, 88)}
    for env, (medium, expert) in d4rl.items():
        low, high = REFERENCE_RETURNS[env]
        ratio = (low + medium / 100 * (high - low)) / (low + expert / 100 * (high - low))
        assert GeneratorConfig.for_env(env).medium_fraction == pytest.approx(ratio, abs=0.005)
    old_rules = GeneratorConfig.for_env("Hopper-v5", **{**TINY, "medium_by": "deterministic",
                                                         "final_policy": "average"})
    assert not {"medium_by", "final_policy"} & set(old_rules.data_settings())
    new_rules = GeneratorConfig.for_env("Hopper-v5", **TINY)  # the module's datasets' settings
    assert checkpoint_folder(old_rules) != checkpoint_folder(new_rules)
    # a dataset whose metadata predates both settings: valid for the old rules, not the new ones
    path = dataset_path(IDS["medium"]) / "data" / "metadata.json"
    saved = path.read_text()
    try:
        stored = json.loads(saved)
        config = json.loads(stored["generator_config"])
        assert (config.pop("medium_by"), config.pop("final_policy")) == ("rollouts", "better")
        stored["generator_config"] = json.dumps(config)
        path.write_text(json.dumps(stored))
        generation.check_generator_settings(IDS["medium"], old_rules)
        with pytest.raises(DatasetError, match="medium_by = \\(not recorded\\) in the dataset, 'rollouts'") as error:
            generation.check_generator_settings(IDS["medium"], new_rules)
        assert "final_policy = (not recorded) in the dataset, 'better'" in str(error.value)
        assert "+dataset.generator.medium_by=deterministic" in str(error.value)  # how to keep it
    finally:
        path.write_text(saved)
    # and the other way round: a dataset made by the new rules is not reused for the old ones
    # (data_settings leaves them out at their old values; the check must not)
    generation.check_generator_settings(IDS["medium"], new_rules)
    with pytest.raises(DatasetError, match="medium_by = 'rollouts' in the dataset, 'deterministic'"):
        generation.check_generator_settings(IDS["medium"], old_rules)


def test_the_final_policy_is_the_average_unless_the_last_snapshot_scores_higher():
    """final_policy=better: the averaged weights, or the last snapshot's where its reference
    returns are higher (ties keep the average); average: the average, the last never evaluated."""
    from offline_rl.generate.behaviour import Snapshot, final_policy

    actor = torch.nn.Linear(1, 1, bias=False)
    before = actor.weight.detach().clone()
    snapshots = [Snapshot(step=step, eval_return=0.0, actor_state={"weight": torch.full((1, 1), w)})
                 for step, w in ((100, 9.0), (200, 1.0), (300, 3.0))]
    evaluated: list[float] = []

    def returns_by(score):  # the reference episodes' returns of a policy: score(its weight)
        def reference_returns(policy):
            weight = float(policy.weight.detach())
            evaluated.append(weight)
            return np.array([score(weight), score(weight)])
        return reference_returns

    # from step 200 on: the average weight 2.0, the last 3.0
    chosen, returns, metrics = final_policy(actor, snapshots, 200, "better", returns_by(lambda w: -abs(w - 3)))
    assert float(chosen.weight.detach()) == 3.0 and list(returns) == [0.0, 0.0] and evaluated == [2.0, 3.0]
    assert metrics == {"final/average_return_mean": -1.0, "final/averaged_snapshots": 2,
                       "final/last_snapshot_reference_return_mean": 0.0, "final/is_average": 0.0}
    chosen, _, metrics = final_policy(actor, snapshots, 200, "better", returns_by(lambda w: -abs(w - 2)))
    assert float(chosen.weight.detach()) == 2.0 and metrics["final/is_average"] == 1.0
    chosen, _, _ = final_policy(actor, snapshots, 200, "better", returns_by(lambda w: 5.0))  # a tie
    assert float(chosen.weight.detach()) == 2.0
    evaluated.clear()
    chosen, _, metrics = final_policy(actor, snapshots, 200, "average", returns_by(lambda w: -abs(w - 3)))
    assert float(chosen.weight.detach()) == 2.0 and evaluated == [2.0] and metrics["final/is_average"] == 1.0
    evaluated.clear()  # one snapshot that late: it is the average, evaluated once
    chosen, _, metrics = final_policy(actor, snapshots, 300, "better", returns_by(lambda w: 1.0))
    assert float(chosen.weight.detach()) == 3.0 and evaluated == [3.0] and metrics["final/averaged_snapshots"] == 1
    assert torch.equal(actor.weight, before)  # copies: the agent's own actor is never changed


def test_a_generation_by_rollouts_records_what_it_compared_and_picks_from_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = GeneratorConfig.for_env("Hopper-v5", **{**TINY, "medium_by": "rollouts"})
    assert generation.generate_local_datasets(config, ["medium"]) == {"medium": IDS["medium"]}
    stored = metadata(IDS["medium"])
    pairs = json.loads(stored["snapshot_rollout_returns"])
    assert [s for s, _ in pairs] == [s for s, _ in json.loads(stored["snapshot_returns"])]
    chosen = pairs[select_snapshot(pairs, stored["final_policy_rollout_return"], config.medium_fraction)][0]
    assert stored["medium_snapshot_step"] == stored["snapshot_step"] == chosen
    assert json.loads(stored["generator_config"])["medium_by"] == "rollouts"
    import minari

    assert "stochastic episodes' mean return" in minari.load_dataset(IDS["medium"]).storage.metadata["description"]


class _ConstantActor:
    """An actor whose mean action is 0 and whose sampled action is ``value`` in every dimension."""

    def __init__(self, value: float):
        self.value = value

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return torch.full((obs.shape[0], 3), 0.0 if deterministic else self.value)


def test_medium_by_rollouts_compares_the_returns_of_stochastic_episodes():
    """Each snapshot's and the final policy's sampled actions, on the same seeded episodes; the
    expected returns come from plain numpy policies through evaluate_policy."""
    config = GeneratorConfig.for_env("Hopper-v5", **{**TINY, "medium_by": "rollouts"})
    actors = {100: _ConstantActor(-1.0), 200: _ConstantActor(0.5), 300: _ConstantActor(1.0)}
    logged: dict = {}
    run = SimpleNamespace(snapshots=[SimpleNamespace(step=step) for step in actors],
                          actor_at=lambda snapshot: actors[snapshot.step], final_actor=_ConstantActor(0.25),
                          tracker=SimpleNamespace(log_metrics=lambda metrics, step: logged.update(metrics)))
    pairs, final = generation.snapshot_rollout_returns(config, run)
    seed = config.seed + generation.ROLLOUT_SEED_OFFSET["snapshot_rollouts"]

    def expected(value: float) -> float:
        return float(np.mean(evaluate_policy(lambda obs: np.full((len(obs), 3), value, np.float32),
                                             "Hopper-v5", config.eval_episodes, seed, config.num_envs)))

    assert [step for step, _ in pairs] == [100, 200, 300]
    assert [r for _, r in pairs] == pytest.approx([expected(a.value) for a in actors.values()])
    assert final == pytest.approx(expected(0.25)) and logged == {"final/rollout_return": final}
    assert len({round(r, 6) for _, r in pairs}) == 3  # the sampled actions: the mean ones are all 0


@pytest.mark.slow  # starts a process
def test_interrupted_writing_leaves_nothing_valid_and_a_rerun_recovers(datasets, tmp_path,
                                                                      monkeypatch):
    import minari

    reference = read_minari_dataset(IDS["medium-replay"])  # from the module's run
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    real_create = minari.create_dataset_from_buffers
    calls = []

    def create_then_interrupt(*args, **kwargs):
        calls.append(args[0])
        dataset = real_create(*args, **kwargs)  # a complete dataset, in the staging folder
        if len(calls) == 2:
            raise KeyboardInterrupt
        return dataset

    monkeypatch.setattr(minari, "create_dataset_from_buffers", create_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        generate_local_datasets(GeneratorConfig.for_env("Hopper-v5", **TINY))
    assert len(calls) == 2
    assert minari.list_local_datasets() == {}
    for dataset_id in IDS.values():
        assert not is_local(dataset_id) and not dataset_path(dataset_id).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".staging")] == []
    # the trained behaviour run was kept: the rerun goes straight to the datasets
    assert list(tmp_path.glob(".generate/*/step-*.pt"))

    # a generation killed outright leaves its staging folder: the next one removes it
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".staging-{socket.gethostname()}-{dead.pid}-0123abcd" / IDS["medium"]
    (stale / "data").mkdir(parents=True)
    (stale / "data" / "metadata.json").write_text("{}")
    monkeypatch.setattr(minari, "create_dataset_from_buffers", real_create)
    assert ensure_local_dataset("Hopper-v5", "medium-replay", **TINY) == IDS["medium-replay"]
    assert not stale.parents[2].exists()
    assert all(is_local(dataset_id) for dataset_id in IDS.values())
    # seeded: the same settings give the same data as the module's run
    again = read_minari_dataset(IDS["medium-replay"])
    np.testing.assert_array_equal(again.observations, reference.observations)
    np.testing.assert_array_equal(again.actions, reference.actions)


def test_existing_datasets_are_not_overwritten_unless_asked(datasets):
    with pytest.raises(DatasetError, match="--overwrite"):
        generate_local_datasets(GeneratorConfig.for_env("Hopper-v5", **TINY), levels=["expert"])
    assert os.path.isdir(dataset_path(IDS["expert"]))


def test_the_final_policy_averages_the_snapshots_of_the_last_stretch_of_training():
    from offline_rl.generate.behaviour import Snapshot, averaged_actor

    actor = torch.nn.Linear(2, 1)
    actor.register_buffer("count", torch.tensor(0))  # a non-float buffer: taken from the last
    states = [{"weight": torch.full((1, 2), float(v)), "bias": torch.full((1,), -float(v)),
               "count": torch.tensor(v)} for v in (1, 2, 4)]
    snapshots = [Snapshot(step, float(step), state) for step, state in zip((80, 90, 100), states)]
    mean = averaged_actor(actor, snapshots, since=90)
    assert mean.weight.tolist() == [[3.0, 3.0]] and mean.bias.tolist() == [-3.0]
    assert int(mean.count) == 4 and actor.weight.tolist() != [[3.0, 3.0]]  # a copy
    assert averaged_actor(actor, snapshots, since=80).weight[0].tolist() == pytest.approx([7 / 3, 7 / 3])
    assert averaged_actor(actor, snapshots, since=101).weight.tolist() == [[4.0, 4.0]]  # the last
