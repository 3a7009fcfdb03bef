"""The data layer: returns-to-go, flattening, normalisation, on-device replay, Minari reading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offline_rl.dataset.episodes import discounted_cumsum, flatten_episodes, returns_to_go
from offline_rl.dataset.replay import FIELDS, ReplayBuffer, StateNormalizer


def test_returns_to_go_hand_computed_terminal_and_timeout():
    # episode A: 3 steps ending in a terminal; episode B: 2 steps cut by a time limit
    rewards = np.array([1.0, 2.0, 3.0, 10.0, 20.0])
    terminals = np.array([0, 0, 1, 0, 0], bool)
    timeouts = np.array([0, 0, 0, 0, 1], bool)
    g = 0.5
    expected = [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3, 10 + 0.5 * 20, 20]
    assert returns_to_go(rewards, terminals, timeouts, g).tolist() == pytest.approx(expected)
    # the reference soft code completes a time-out with its last reward forever: r / (1 - gamma)
    boot = [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3, 10 + 0.5 * 40, 40]
    assert returns_to_go(rewards, terminals, timeouts, g, bootstrap_timeouts=True).tolist() == pytest.approx(boot)


def naive_discounted(values, ends, gamma):
    out, running = np.zeros(len(values)), 0.0
    for t in reversed(range(len(values))):
        running = values[t] + (0.0 if ends[t] else gamma * running)
        out[t] = running
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_discounted_cumsum_matches_the_recursion(seed):
    rng = np.random.default_rng(seed)
    n = 5000
    values = rng.normal(size=n)
    ends = rng.random(n) < 0.003  # long episodes, some longer than 1000 steps
    ends[-1] = rng.random() < 0.5  # data may end mid-episode
    got = discounted_cumsum(torch.tensor(values), torch.tensor(ends), 0.99).numpy()
    np.testing.assert_allclose(got, naive_discounted(values, ends | (np.arange(n) == n - 1), 0.99),
                               rtol=1e-10, atol=1e-10)


def test_flatten_marks_terminals_timeouts_and_next_observations():
    ep1 = {"observations": np.arange(4 * 2).reshape(4, 2), "actions": np.zeros((3, 1)),
           "rewards": np.ones(3), "terminations": np.array([0, 0, 1], bool),
           "truncations": np.zeros(3, bool)}
    ep2 = {"observations": 100 + np.arange(3 * 2).reshape(3, 2), "actions": np.zeros((2, 1)),
           "rewards": np.ones(2), "terminations": np.zeros(2, bool),
           "truncations": np.array([0, 1], bool)}
    data = flatten_episodes([ep1, ep2], dataset_id="x")
    assert len(data) == 5
    assert data.terminals.tolist() == [False, False, True, False, False]
    assert data.timeouts.tolist() == [False, False, False, False, True]
    np.testing.assert_array_equal(data.next_observations[0], ep1["observations"][1])
    np.testing.assert_array_equal(data.observations[3], ep2["observations"][0])
    np.testing.assert_array_equal(data.next_observations[4], ep2["observations"][2])
    assert data.episode_returns().tolist() == [3.0, 2.0]


def test_state_normalizer_is_td3_bc_s():
    obs = np.array([[0.0, 1.0], [2.0, 1.0]], dtype=np.float32)
    norm = StateNormalizer.fit(obs)
    # mean (1, 1), std (1, 0): (s - mean) / (std + 1e-3)
    np.testing.assert_allclose(norm(obs), [[-1 / 1.001, 0.0], [1 / 1.001, 0.0]], rtol=1e-6)


def test_replay_samples_on_device_reproducibly_and_normalises():
    obs = np.arange(20, dtype=np.float32).reshape(10, 2)
    data = flatten_episodes([{"observations": np.vstack([obs, obs[-1:] + 2]),
                              "actions": np.zeros((10, 1)), "rewards": np.arange(10.0),
                              "terminations": np.eye(10, dtype=bool)[-1],
                              "truncations": np.zeros(10, bool)}])
    a = ReplayBuffer.from_offline(data, "cpu", gamma=0.9, normalize_states=True, seed=3)
    b = ReplayBuffer.from_offline(data, "cpu", gamma=0.9, normalize_states=True, seed=3)
    batch_a, batch_b = a.sample(64), b.sample(64)
    assert batch_a.observations.device.type == "cpu"
    torch.testing.assert_close(batch_a.observations, batch_b.observations)
    assert abs(float(a.all().observations.mean())) < 1e-5  # normalised
    # sampled returns-to-go belong to the sampled transitions
    expected = returns_to_go(data.rewards, data.terminals, data.timeouts, 0.9).float()
    full = a.all()
    torch.testing.assert_close(full.returns_to_go, expected)
    state = a.state_dict()
    first = a.sample(8)
    a.load_state_dict(state)
    torch.testing.assert_close(a.sample(8).actions, first.actions)


def test_a_phase_sampler_draws_what_sample_draws_into_one_batch_it_reuses():
    """``sampler``: the batches ``sample`` would draw from the same generator state, written into
    the same tensors at every call; it reads the replay as it is then (rows added later)."""
    def replay():
        buffer = ReplayBuffer(50, obs_dim=2, act_dim=1, device="cpu", seed=5)
        buffer.add(np.arange(20.0).reshape(10, 2), np.ones((10, 1)), np.arange(10.0),
                   np.arange(20.0).reshape(10, 2) + 1, np.zeros(10))
        return buffer

    reference, phase = replay(), replay()
    draw = phase.sampler(16)
    first = draw()
    torch.testing.assert_close(first.actions, reference.sample(16).actions)
    for _ in range(3):
        expected, got = reference.sample(16), draw()
        assert got is first  # the same tensors, overwritten
        for key in FIELDS:
            torch.testing.assert_close(getattr(got, key), getattr(expected, key), rtol=0, atol=0)
    for buffer in (reference, phase):  # 10 more transitions, rewards 100..109
        buffer.add(np.zeros((10, 2)), np.zeros((10, 1)), np.arange(100.0, 110.0), np.zeros((10, 2)),
                   np.zeros(10))
    rewards = torch.cat([draw().rewards.clone() for _ in range(20)])
    torch.testing.assert_close(rewards, torch.cat([reference.sample(16).rewards for _ in range(20)]))
    assert (rewards >= 100).any() and (rewards < 100).any()


def test_read_minari_dataset_round_trip(minari_root):
    import minari

    from offline_rl.dataset.minari_source import read_minari_dataset

    data = read_minari_dataset("tests/hopper/random-v0")
    ds = minari.load_dataset("tests/hopper/random-v0")
    assert len(data) == ds.total_steps
    assert data.ref_min_score == -20.0 and data.ref_max_score == 300.0
    assert data.env_spec.id == "Hopper-v5"
    first = next(ds.iterate_episodes())
    np.testing.assert_allclose(data.observations[: len(first.rewards)], first.observations[:-1], rtol=1e-6)
    np.testing.assert_allclose(data.next_observations[: len(first.rewards)], first.observations[1:], rtol=1e-6)
    assert data.episode_ends.sum() == ds.total_episodes
