"""Running a fixed policy in many environments at once: the rollouts that become the ``medium`` and
``expert`` datasets, the reference returns, and the choice of the ``medium`` snapshot.

Environments run side by side in one ``SyncVectorEnv`` (on a couple of CPU cores one process beats
subprocess workers) with one batched policy call per step. Transitions are recorded into
preallocated arrays, one row per vector step, and cut into episodes once at the end: no Python
work per transition.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from offline_rl.errors import ConfigError

#: a batch of observations (n, obs_dim) -> a batch of actions (n, act_dim)
Policy = Callable[[np.ndarray], np.ndarray]


def box_spaces(env: gym.Env) -> tuple[int, int, float]:
    """(obs_dim, act_dim, max_action) of an env with flat Box spaces and a symmetric action box."""
    obs_space, act_space = env.observation_space, env.action_space
    if not (isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)
            and len(obs_space.shape) == 1 and len(act_space.shape) == 1):
        raise ConfigError(f"{env.spec.id if env.spec else env}: dataset generation needs flat Box "
                          f"observation and action spaces, got {obs_space} and {act_space}")
    high = np.asarray(act_space.high, dtype=np.float64)
    if not (np.allclose(act_space.low, -high) and np.allclose(high, high[0])):
        raise ConfigError(f"{env.spec.id if env.spec else env}: the tanh actor needs an action "
                          f"box [-m, m] with one bound m for every dimension, got {act_space}")
    return int(obs_space.shape[0]), int(act_space.shape[0]), float(high[0])


def make_vector_env(env_id: str, num_envs: int) -> gym.vector.SyncVectorEnv:
    """``num_envs`` copies of ``env_id`` stepped in this process; a finished episode is reset in
    the same step, its last observation in ``info["final_obs"]``."""
    return gym.vector.SyncVectorEnv([functools.partial(gym.make, env_id) for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def actor_policy(actor, device: torch.device | str, deterministic: bool = True) -> Policy:
    """A batched numpy policy from an actor with ``act(obs, deterministic)`` (mean action if
    deterministic, else a sample from the actor's distribution, drawn from torch's generator)."""
    device = torch.device(device)

    def policy(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
        return actor.act(obs_t, deterministic=deterministic).cpu().numpy()

    return policy


def random_policy(action_space: gym.spaces.Box, seed: int) -> Policy:
    """Uniform-random actions in the box, from a generator of its own."""
    rng = np.random.default_rng(seed)
    low, high = action_space.low, action_space.high

    def policy(obs: np.ndarray) -> np.ndarray:
        return rng.uniform(low, high, size=(len(obs), *action_space.shape)).astype(action_space.dtype)

    return policy


def evaluate_policy(policy: Policy, env_id: str, episodes: int, seed: int,
                    num_envs: int = 10) -> np.ndarray:
    """Undiscounted returns of ``episodes`` full episodes, run ``num_envs`` at a time.

    Each environment runs a fixed share of the episodes (env i: seed + i, then its own reset
    stream), so the result does not favour the episodes that happen to end first.
    """
    n = min(int(episodes), int(num_envs))
    quota = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    envs = make_vector_env(env_id, n)
    try:
        obs, _ = envs.reset(seed=[seed + i for i in range(n)])
        returns: list[list[float]] = [[] for _ in range(n)]
        done_count = np.zeros(n, dtype=int)
        running = np.zeros(n)
        while (done_count < quota).any():
            obs, reward, terminated, truncated, _ = envs.step(policy(obs))
            running += reward
            for i in np.flatnonzero(terminated | truncated):
                if done_count[i] < quota[i]:
                    returns[i].append(float(running[i]))
                    done_count[i] += 1
                running[i] = 0.0
    finally:
        envs.close()
    return np.array([r for per_env in returns for r in per_env])


def collect_episodes(policy: Policy, env_id: str, num_transitions: int, num_envs: int = 8,
                     seed: int = 0, progress: bool = True,
                     desc: str = "rollouts") -> list[dict[str, np.ndarray]]:
    """Exactly ``num_transitions`` transitions of ``policy`` in ``num_envs`` environments, as
    episodes in the order they finished (ties: by environment). Episodes still running when the
    budget is reached are kept, cut and marked truncated (as D4RL's fixed-size datasets end). The
    first episode of env i starts from seed + i (recorded as the episode's ``seed``), later ones
    from its reset stream (``seed`` None)."""
    num_envs = int(num_envs)
    rows = -(-int(num_transitions) // num_envs)  # vector steps
    # the last vector step may count only its first few environments
    counted = np.full((rows, num_envs), True)
    counted[-1, num_transitions - (rows - 1) * num_envs:] = False
    envs = make_vector_env(env_id, num_envs)
    obs_dim = envs.single_observation_space.shape[0]
    act_dim = envs.single_action_space.shape[0]
    observations = np.empty((rows + 1, num_envs, obs_dim))
    actions = np.empty((rows, num_envs, act_dim), dtype=np.float32)
    rewards = np.empty((rows, num_envs))
    terminations = np.empty((rows, num_envs), dtype=bool)
    truncations = np.empty((rows, num_envs), dtype=bool)
    final_obs: dict[tuple[int, int], np.ndarray] = {}  # (row, env) -> an episode's last obs
    bar = tqdm(total=num_transitions, unit="step", desc=desc, disable=not progress,
               dynamic_ncols=True, mininterval=1.0)
    try:
        obs, _ = envs.reset(seed=[seed + i for i in range(num_envs)])
        observations[0] = obs
        for row in range(rows):
            actions[row] = policy(obs)
            obs, rewards[row], terminations[row], truncations[row], infos = envs.step(actions[row])
            observations[row + 1] = obs
            for i in np.flatnonzero(terminations[row] | truncations[row]):
                final_obs[(row, int(i))] = infos["final_obs"][i]
            bar.update(int(counted[row].sum()))
    finally:
        bar.close()
        envs.close()

    finished: list[tuple[int, int, dict]] = []  # (end row, env, episode)
    for i in range(num_envs):
        last = int(np.flatnonzero(counted[:, i])[-1])
        ends = np.flatnonzero((terminations[: last + 1, i] | truncations[: last + 1, i]))
        starts = np.r_[0, ends + 1]
        stops = np.r_[ends + 1, last + 1]
        for number, (start, stop) in enumerate(zip(starts, stops)):
            if stop <= start:
                continue
            end_row = stop - 1
            closing = final_obs.get((end_row, i), observations[stop, i])
            term = terminations[start:stop, i].copy()
            trunc = truncations[start:stop, i].copy()
            if not (term[-1] or trunc[-1]):
                trunc[-1] = True  # still running when the budget was reached
            finished.append((end_row, i, {
                "seed": seed + i if number == 0 else None,
                "observations": np.concatenate([observations[start:stop, i], closing[None]]),
                "actions": actions[start:stop, i].copy(), "rewards": rewards[start:stop, i].copy(),
                "terminations": term, "truncations": trunc}))
    finished.sort(key=lambda item: (item[0], item[1]))
    return [episode for _, _, episode in finished]


def select_snapshot(snapshots: Sequence[tuple[int, float]], final_return: float,
                    fraction: float = 1.0 / 3.0) -> int:
    """Index of the (step, eval_return) pair whose return is closest to ``fraction`` of
    ``final_return`` (the medium level: ``medium_fraction``, D4RL's own medium / expert ratio per
    environment); ties go to the earliest snapshot."""
    if len(snapshots) == 0:
        raise ValueError("no snapshots to choose from")
    target = fraction * float(final_return)
    return min(range(len(snapshots)), key=lambda i: (abs(float(snapshots[i][1]) - target), i))
