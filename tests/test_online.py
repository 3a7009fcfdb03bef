"""The one online loop (offline_rl/training/environment_loop.py): acting, the replay it fills, and resuming
mid-episode from its state (MuJoCo's simulator state included)."""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
import torch

from offline_rl.algo.td3 import TD3
from offline_rl.dataset.replay import ReplayBuffer
from offline_rl.network import DeterministicActor, EnsembleCritic
from offline_rl.training.environment_loop import EnvironmentLoop


def tiny_td3() -> TD3:
    torch.manual_seed(0)
    return TD3(11, 3, functools.partial(DeterministicActor, width=8),
               functools.partial(EnsembleCritic, width=8), normalize_states=False)


def make_loop(agent, capacity=400, **kwargs) -> EnvironmentLoop:
    buffer = ReplayBuffer(capacity, 11, 3, "cpu", seed=0)
    return EnvironmentLoop("Hopper-v5", agent, buffer, seed=3, batch_size=16, **kwargs)


def stored(loop: EnvironmentLoop) -> dict[str, np.ndarray]:
    n = loop.buffer.size
    out = {k: v[:n].numpy().copy() for k, v in loop.buffer.storage.items()}
    out["timeouts"] = loop.buffer.timeouts[:n].numpy().copy()
    return out


def test_warm_up_is_uniform_then_the_actor_explores_and_episodes_start_from_seeded_resets():
    loop = make_loop(tiny_td3(), random_steps=30, ready=lambda: False)
    for _ in range(60):
        loop.step()
    data = stored(loop)
    rng = np.random.default_rng(3)  # the loop's warm-up generator: seed
    low, high = loop.env.action_space.low, loop.env.action_space.high
    expected = np.array([rng.uniform(low, high) for _ in range(30)], dtype=np.float32)
    np.testing.assert_array_equal(data["actions"][:30], expected)
    assert loop.updates_done == 0 and loop.steps_done == 60
    # the first episode started from env.reset(seed): its first observation is the seeded one
    first, _ = gym.make("Hopper-v5").reset(seed=3)
    np.testing.assert_allclose(data["observations"][0], first.astype(np.float32))
    # every later episode from reset(seed + env steps before it)
    ends = np.flatnonzero((data["dones"] > 0) | data["timeouts"])
    for end in ends[:-1]:
        start = end + 1
        obs, _ = gym.make("Hopper-v5").reset(seed=3 + int(start))
        np.testing.assert_allclose(data["observations"][start], obs.astype(np.float32))


def test_a_loop_restored_from_its_state_continues_the_same_episode_exactly():
    agent = tiny_td3()
    reference = make_loop(agent, random_steps=5, ready=lambda: False)
    for _ in range(37):  # mid-episode (Hopper's random episodes are longer than this)
        reference.step()
    assert reference.obs is not None
    state, contents = reference.state_dict(), reference.buffer.contents()
    for _ in range(50):
        reference.step()

    other = make_loop(agent, random_steps=5, ready=lambda: False)
    other.buffer.load_contents(contents)
    other.load_state_dict(state)
    for _ in range(50):
        other.step()
    a, b = stored(reference), stored(other)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert (other.steps_done, other.episode_length) == (reference.steps_done,
                                                       reference.episode_length)


def test_updates_start_when_ready_and_counters_report_them():
    agent = tiny_td3()
    loop = make_loop(agent, random_steps=10, min_replay_size=20)
    metrics = [loop.step() for _ in range(30)]
    assert loop.updates_done == 30 - 20 + 1  # from the step that brought the replay to 20
    assert "critic_loss" in metrics[-1] and "critic_loss" not in metrics[18]
    counters = loop.counters()
    assert counters["env_steps"] == 30 and counters["updates"] == 11 and counters["replay_size"] == 30
    assert 0 < counters["env_time_fraction"] < 1
