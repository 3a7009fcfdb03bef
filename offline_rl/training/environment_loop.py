"""The one online loop: every phase that acts in an environment (online fine-tuning after offline
RL, the behaviour agent that generates this project's datasets) runs its steps through
``EnvironmentLoop``. One phase step = one environment step with the exploring policy, the
transition appended to the replay, then one gradient update once the replay is ready.

Acting: the first ``random_steps`` actions are uniform in the action box (a warm-up, as SAC /
CrossQ / TD3 start online training); after that a stochastic actor samples its policy and a
deterministic one adds N(0, (exploration_noise * max_action)^2), clipped to the box. Every episode
starts from ``env.reset(seed=seed + env steps so far)``, so the data does not depend on the
environment's internal random stream, and a transition that ended an episode by the time limit is
stored as a timeout (bootstrapped past), not a termination.

Resuming: ``state_dict`` holds the counters, the exploration generators and, for MuJoCo
environments, the simulator's full integration state, the time-limit counter and the current
observation, so a run resumed from a checkpoint continues the very episode it was in (the same
transitions as an uninterrupted run). Other environments cannot be restored mid-episode: the
episode in progress is abandoned and a new one starts.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from offline_rl.dataset.replay import Batch, ReplayBuffer, StateNormalizer
from offline_rl.training.loop import Phase

Sampler = Callable[[int], tuple[Batch, dict[str, torch.Tensor]]]


def _time_limit(env: gym.Env):
    """The TimeLimit wrapper of ``env`` (which counts the episode's steps), or None."""
    while env is not None:
        if hasattr(env, "_elapsed_steps"):
            return env
        env = getattr(env, "env", None)
    return None


def simulator_state(env: gym.Env) -> dict[str, Any] | None:
    """A MuJoCo environment's full integration state (positions, velocities, controls, solver
    warm start, time) and time-limit counter; None for other environments."""
    base = env.unwrapped
    model, data = getattr(base, "model", None), getattr(base, "data", None)
    if model is None or data is None:
        return None
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, state, spec)
    limit = _time_limit(env)
    return {"mujoco": torch.from_numpy(state),
            "elapsed_steps": None if limit is None else int(limit._elapsed_steps)}


def restore_simulator_state(env: gym.Env, state: dict[str, Any]) -> None:
    import mujoco

    base = env.unwrapped
    mujoco.mj_setState(base.model, base.data, state["mujoco"].numpy(),
                       mujoco.mjtState.mjSTATE_INTEGRATION)
    limit = _time_limit(env)
    if limit is not None and state["elapsed_steps"] is not None:
        limit._elapsed_steps = int(state["elapsed_steps"])


class EnvironmentLoop:
    """Steps one environment for an online phase (see the module doc).

    ``buffer`` receives every transition; ``sample(batch_size) -> (batch, extra metrics)`` draws the
    update's batch (default: uniformly from ``buffer``) and ``ready()`` says whether updates may
    start (default: ``min_replay_size`` transitions in ``buffer``); ``replay_size()`` what the
    counters report as the replay's size."""

    def __init__(self, env_spec: Any, agent, buffer: ReplayBuffer, *, seed: int, batch_size: int,
                 random_steps: int = 0, min_replay_size: int = 1, exploration_noise: float = 0.1,
                 normalizer: StateNormalizer | None = None, sample: Sampler | None = None,
                 ready: Callable[[], bool] | None = None,
                 replay_size: Callable[[], int] | None = None):
        self.env = gym.make(env_spec)
        self.agent, self.buffer = agent, buffer
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.random_steps = int(random_steps)
        self.normalizer = normalizer or buffer.normalizer
        self.sample = sample or (lambda n: (buffer.sample(n), {}))
        self.ready = ready or (lambda: buffer.size >= max(int(min_replay_size), 1))
        self.replay_size = replay_size or (lambda: len(buffer))
        space = self.env.action_space
        self.low, self.high = space.low.astype(np.float32), space.high.astype(np.float32)
        max_action = float(getattr(agent, "max_action", 1.0))
        self.noise_scale = float(exploration_noise) * max_action
        self.action_rng = np.random.default_rng(self.seed)  # the uniform warm-up actions
        self.noise_rng = np.random.default_rng(self.seed + 1)  # a deterministic actor's noise
        self.steps_done = 0
        self.updates_done = 0
        self.obs: np.ndarray | None = None  # None: the next step starts a new episode
        self.episode_return, self.episode_length = 0.0, 0
        self._timing = {"env": 0.0, "total": 0.0, "steps": 0}

    # ----- acting ------------------------------------------------------------------------------
    def action(self, obs: np.ndarray) -> np.ndarray:
        if self.steps_done < self.random_steps:
            return self.action_rng.uniform(self.low, self.high).astype(np.float32)
        agent = self.agent
        obs_t = torch.as_tensor(self.normalizer(obs[None]), device=agent.device)
        with torch.no_grad():
            if agent.actor_kind == "stochastic":
                return agent.act(obs_t, deterministic=False)[0].cpu().numpy()
            action = agent.act(obs_t)[0].cpu().numpy()
        action = action + self.noise_rng.normal(0.0, self.noise_scale, size=action.shape)
        return np.clip(action, self.low, self.high).astype(np.float32)

    def step(self) -> dict[str, torch.Tensor]:
        """One environment step, then one update if the replay is ready (a phase's update)."""
        began = time.perf_counter()
        if self.obs is None:
            self.obs, _ = self.env.reset(seed=self.seed + self.steps_done)
            self.episode_return, self.episode_length = 0.0, 0
        obs = self.obs
        action = self.action(obs)
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        self.buffer.add(obs[None], action[None], np.array([reward]), next_obs[None],
                        np.array([terminated]), timeouts=np.array([truncated and not terminated]))
        self.steps_done += 1
        self.episode_return += float(reward)
        self.episode_length += 1
        metrics: dict[str, torch.Tensor] = {}
        device = self.agent.device
        if terminated or truncated:
            metrics["episode_return"] = torch.tensor(self.episode_return, device=device)
            metrics["episode_length"] = torch.tensor(float(self.episode_length), device=device)
            self.obs = None
        else:
            self.obs = next_obs
        env_done = time.perf_counter()
        if self.steps_done > self.random_steps and self.ready():
            batch, extra = self.sample(self.batch_size)
            metrics.update(self.agent.update(batch))
            metrics.update(extra)
            self.updates_done += 1
        timing = self._timing
        timing["env"] += env_done - began
        timing["total"] += time.perf_counter() - began
        timing["steps"] += 1
        return metrics

    def counters(self) -> dict[str, float]:
        """Logged as they are at every log point: environment steps, updates, the replay's size,
        environment steps per second (updates included) and the share of that time spent acting
        and stepping the environment, over the window since the last log point."""
        timing = self._timing
        values = {"env_steps": self.steps_done, "updates": self.updates_done,
                  "replay_size": self.replay_size()}
        if timing["steps"] and timing["total"] > 0:
            values["env_steps_per_s"] = timing["steps"] / timing["total"]
            values["env_time_fraction"] = timing["env"] / timing["total"]
        self._timing = {"env": 0.0, "total": 0.0, "steps": 0}
        return values

    def phase(self, name: str, steps: int, **hooks: Any) -> Phase:
        """A phase of ``steps`` environment steps (hooks: Phase's on_start / on_end / stop)."""
        return Phase(name, self.step, int(steps), counters=self.counters, agent=self.agent, **hooks)

    def close(self) -> None:
        self.env.close()

    # ----- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        running = self.obs is not None
        return {"steps_done": self.steps_done, "updates_done": self.updates_done,
                "action_rng": self.action_rng.bit_generator.state,
                "noise_rng": self.noise_rng.bit_generator.state,
                "episode_return": self.episode_return, "episode_length": self.episode_length,
                "obs": torch.from_numpy(np.asarray(self.obs)) if running else None,
                "simulator": simulator_state(self.env) if running else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done, self.updates_done = int(state["steps_done"]), int(state["updates_done"])
        self.action_rng.bit_generator.state = state["action_rng"]
        self.noise_rng.bit_generator.state = state["noise_rng"]
        self.obs = None
        if state.get("obs") is not None and state.get("simulator") is not None:
            self.env.reset(seed=self.seed)  # initialises the wrappers; the state replaces it
            restore_simulator_state(self.env, state["simulator"])
            self.obs = state["obs"].numpy()
            self.episode_return = float(state["episode_return"])
            self.episode_length = int(state["episode_length"])
