"""Local dataset generation: one tiny real SAC run on Hopper-v5 -> three real Minari datasets.

Everything is written under a temporary MINARI_DATASETS_PATH. The budget is tiny (a few hundred env
steps, 16-unit networks): the data is not good, but every property checked here -- the files are
Minari datasets, they hold true environment transitions, medium-replay is the training stream up to
the medium snapshot, the settings check, the atomic write -- does not depend on the policy's quality.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from offline_rl.dataset import generate
from offline_rl.dataset.generate import (LEVELS, GeneratorConfig, ensure_local_dataset,
                                         generate_local_datasets, local_dataset_id, main)
from offline_rl.dataset.local import load_local
from offline_rl.dataset.minari_source import dataset_path, is_local, read_minari_dataset
from offline_rl.errors import ConfigError, DatasetError
from offline_rl.online.behaviour import TransitionLog, select_snapshot

TINY = dict(env_steps=400, random_steps=150, snapshot_every=100, dataset_size=300, eval_episodes=2,
            ref_episodes=4, num_envs=4, hidden_width=16, batch_size=64, seed=4, num_threads=1,
            progress=False)
TINY_ARGS = ["--env", "Hopper-v5", "--no-progress"] + [
    arg for key, value in TINY.items() if key != "progress"
    for arg in (f"--{key.replace('_', '-')}", str(value))]
IDS = {level: f"local/hopper/{level}-v0" for level in LEVELS}
# with seed 4 the tiny run's final policy beats the random one and its medium snapshot is
# mid-training (medium-replay is a strict prefix of the training stream)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The three Hopper datasets of one tiny run, made through the command line."""
    root = tmp_path_factory.mktemp("minari_generated")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        assert main(TINY_ARGS) == 0
    return root


@pytest.fixture
def datasets(generated, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(generated))
    return generated


def metadata(dataset_id: str) -> dict:
    with open(dataset_path(dataset_id) / "data" / "metadata.json") as f:
        return json.load(f)


# ----- pure functions ----------------------------------------------------------------------------
def test_local_dataset_ids():
    assert local_dataset_id("Hopper-v5", "medium") == "local/hopper/medium-v0"
    assert local_dataset_id("HalfCheetah-v5", "medium-replay") == "local/halfcheetah/medium-replay-v0"
    assert local_dataset_id("Walker2d-v5", "expert") == "local/walker2d/expert-v0"
    with pytest.raises(ConfigError, match="medium-expert"):
        local_dataset_id("Hopper-v5", "medium-expert")


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


def test_config_rejects_nonsense_and_unknown_settings():
    with pytest.raises(ConfigError, match="env_steps"):
        GeneratorConfig(env_steps=0)
    with pytest.raises(ConfigError, match="env_stepz"):
        GeneratorConfig.from_overrides("Hopper-v5", env_stepz=10)
    assert GeneratorConfig(env_steps=1e5).env_steps == 100_000  # YAML's 1e5 is a float


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--env", "--env-steps", "--dataset-size", "--levels", "--seed", "--overwrite"):
        assert flag in out


def test_transition_log_rebuilds_episodes_and_cuts_the_running_one():
    # a stream of 7 transitions: an episode terminated at step 2, one truncated by the time limit at
    # step 5, then one still running; observations encode the step so that links are checkable
    log = TransitionLog(capacity=7, obs_dim=1, act_dim=1)
    terminated = {2}
    truncated = {5}
    obs = 0.0
    for t in range(7):
        next_obs = float(10 * (t + 1))
        log.add([obs], [t], float(t), [next_obs], t in terminated, t in truncated)
        obs = -next_obs if (t in terminated or t in truncated) else next_obs  # a reset state
    full = log.episodes()
    assert [len(ep["rewards"]) for ep in full] == [3, 3, 1]
    assert [ep["terminations"].tolist() for ep in full] == [[0, 0, 1], [0, 0, 0], [0]]
    assert [ep["truncations"].tolist() for ep in full] == [[0, 0, 0], [0, 0, 1], [1]]
    assert full[1]["observations"][:, 0].tolist() == [-30.0, 40.0, 50.0, 60.0]
    assert full[1]["rewards"].tolist() == [3.0, 4.0, 5.0]
    # the buffer as it stood after 4 steps: the second episode cut after its first step
    prefix = log.episodes(4)
    assert [len(ep["rewards"]) for ep in prefix] == [3, 1]
    assert prefix[1]["truncations"].tolist() == [1] and prefix[1]["terminations"].tolist() == [0]
    assert prefix[1]["observations"][:, 0].tolist() == [-30.0, 40.0]
    assert sum(len(ep["rewards"]) for ep in log.episodes(3)) == 3 and log.episodes(0) == []
    with pytest.raises(ValueError):
        log.episodes(8)


# ----- the generated datasets --------------------------------------------------------------------
def test_minari_loads_every_level_with_reference_scores_and_origin(datasets):
    import minari

    assert sorted(minari.list_local_datasets()) == sorted(IDS.values())
    expected_config = GeneratorConfig(env_id="Hopper-v5", **TINY).to_dict()
    ref_scores = set()
    for level, dataset_id in IDS.items():
        ds = minari.load_dataset(dataset_id)
        meta = ds.storage.metadata
        ref_min, ref_max = meta["ref_min_score"], meta["ref_max_score"]
        assert math.isfinite(ref_min) and math.isfinite(ref_max) and ref_min < ref_max
        assert ref_min == meta["random_policy_return"] and ref_max == meta["final_policy_return"]
        ref_scores.add((ref_min, ref_max))
        assert json.loads(meta["generator_config"]) == expected_config
        assert meta["level"] == level
        # snapshots every 100 env steps, the last at the end of training
        snapshots = json.loads(meta["snapshot_returns"])
        assert [s for s, _ in snapshots] == [100, 200, 300, 400]
        target = ref_max / 3
        closest = min(snapshots, key=lambda p: (abs(p[1] - target), p[0]))
        assert meta["medium_snapshot_step"] == closest[0] < TINY["env_steps"]
        if level == "expert":
            assert meta["snapshot_step"] == 400 and ds.total_steps == 300
        else:
            assert meta["snapshot_step"] == closest[0]
            assert meta["snapshot_return"] == closest[1]
        if level == "medium":
            assert ds.total_steps == 300
        if level == "medium-replay":
            # the replay buffer up to the snapshot: one transition per env step taken
            assert ds.total_steps == closest[0]
        assert ds.env_spec.id == "Hopper-v5"
        assert ds.recover_environment(eval_env=True).spec.id == "Hopper-v5"
    assert len(ref_scores) == 1  # one run: the same reference scores everywhere
    # Minari's own normalisation works with them
    score = minari.get_normalized_score(minari.load_dataset(IDS["expert"]), np.array([ref_max]))
    assert score == pytest.approx(1.0)


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
        assert data.ref_min_score == metadata(dataset_id)["ref_min_score"]
        assert data.ref_max_score == metadata(dataset_id)["ref_max_score"]
        assert data.metadata["generator_config"]["env_steps"] == 400
        assert data.metadata["level"] == level


def test_every_episode_is_a_true_environment_trajectory_with_its_flags(datasets):
    import minari

    env = gym.make("Hopper-v5")
    for level, dataset_id in IDS.items():
        ds = minari.load_dataset(dataset_id)
        episodes = list(ds.iterate_episodes())
        seeds = [m.get("seed") for m in ds.storage.get_episode_metadata(range(len(episodes)))]
        cut = []
        for i, ep in enumerate(episodes):
            flags = ep.terminations | ep.truncations
            assert not flags[:-1].any() and flags[-1]  # flags only at an episode's last step
            if not ep.terminations[-1] and len(ep.rewards) < 1000:
                cut.append(i)  # cut when the data ended, not by the env
        if level == "medium-replay":
            assert seeds[0] == TINY["seed"] and all(s is None for s in seeds[1:])
            assert cut in ([], [len(episodes) - 1])  # only the episode running at the snapshot
        else:
            # one environment per seed, each first reset from a seed of its own; at most one
            # episode per environment still running when the budget was reached
            assert len({s for s in seeds if s is not None}) == TINY["num_envs"]
            assert len(cut) <= TINY["num_envs"]
        # an episode with a recorded seed replays exactly from env.reset(seed)
        for ep, seed in zip(episodes, seeds):
            if seed is None:
                continue
            obs, _ = env.reset(seed=seed)
            np.testing.assert_array_equal(ep.observations[0], obs)
            for t in range(len(ep.rewards)):
                obs, reward, terminated, truncated, _ = env.step(ep.actions[t])
                np.testing.assert_array_equal(ep.observations[t + 1], obs)
                assert ep.rewards[t] == reward and ep.terminations[t] == terminated
    env.close()


def test_medium_replay_is_the_training_stream_from_its_seeded_start(datasets):
    import minari

    episodes = list(minari.load_dataset(IDS["medium-replay"]).iterate_episodes())
    step = metadata(IDS["medium-replay"])["snapshot_step"]
    assert sum(len(ep.rewards) for ep in episodes) == step
    # training began with env.reset(seed) and uniform-random actions from action_space.seed(seed)
    env = gym.make("Hopper-v5")
    env.reset(seed=TINY["seed"])
    env.action_space.seed(TINY["seed"])
    warmup = min(step, TINY["random_steps"])
    expected_actions = np.array([env.action_space.sample() for _ in range(warmup)])
    np.testing.assert_array_equal(np.concatenate([ep.actions for ep in episodes])[:warmup],
                                  expected_actions)
    # the whole stream is what one env gave, episode after episode (reset without a new seed)
    obs, _ = env.reset(seed=TINY["seed"])
    for i, ep in enumerate(episodes):
        if i > 0:
            obs, _ = env.reset()
        np.testing.assert_array_equal(ep.observations[0], obs)
        for t in range(len(ep.rewards)):
            obs, reward, terminated, truncated, _ = env.step(ep.actions[t])
            np.testing.assert_array_equal(ep.observations[t + 1], obs)
            assert ep.rewards[t] == reward and ep.terminations[t] == terminated
    env.close()


def test_ensure_local_dataset_reuses_a_match_and_names_what_differs(datasets, monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("must not generate: the datasets exist")

    monkeypatch.setattr(generate, "generate_local_datasets", no_generation)
    same = {**TINY, "num_threads": 2, "progress": True}  # runtime settings are not compared
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
    with pytest.raises(ConfigError, match="hidden_widht"):
        load_local("Hopper-v5", "medium", generator={**TINY, "hidden_widht": 8})


def test_interrupted_generation_leaves_nothing_valid_and_a_rerun_recovers(datasets, tmp_path,
                                                                         monkeypatch):
    import minari

    reference = read_minari_dataset(IDS["medium-replay"])  # from the module's run
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
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
        generate_local_datasets(GeneratorConfig(env_id="Hopper-v5", **TINY))
    assert len(calls) == 2
    assert minari.list_local_datasets() == {}
    for dataset_id in IDS.values():
        assert not is_local(dataset_id) and not dataset_path(dataset_id).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".staging")] == []

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
    assert again.ref_max_score == reference.ref_max_score


def test_existing_datasets_are_not_overwritten_unless_asked(datasets):
    with pytest.raises(DatasetError, match="--overwrite"):
        generate_local_datasets(GeneratorConfig(env_id="Hopper-v5", **TINY), levels=["expert"])
    assert os.path.isdir(dataset_path(IDS["expert"]))
