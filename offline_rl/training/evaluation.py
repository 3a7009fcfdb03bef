"""Policy evaluation: K episodes in the dataset's environment, vectorised, deterministic, seeded."""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from offline_rl.dataset.replay import StateNormalizer
from offline_rl.metric_names import RETURN, RETURN_STD, SCORE, SCORE_STD


def normalized_score(returns: np.ndarray | float, ref_min: float | None,
                     ref_max: float | None) -> np.ndarray | float | None:
    """D4RL's normalised score 100 * (R - min) / (max - min); None without reference scores."""
    if ref_min is None or ref_max is None or ref_max == ref_min:
        return None
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)


class Evaluator:
    """Runs ``episodes`` episodes at once in a SyncVectorEnv (on 2 cores Sync beats Async).

    Every evaluation uses the same reset seeds (seed, seed+1, ...), so scores over training are
    comparable; observations go through the training state normalisation.
    """

    def __init__(self, env_spec: Any, episodes: int, seed: int, normalizer: StateNormalizer,
                 device: torch.device | str, ref_min_score: float | None = None,
                 ref_max_score: float | None = None):
        self.envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_spec) for _ in range(episodes)])
        self.episodes, self.seed = episodes, seed
        self.normalizer, self.device = normalizer, torch.device(device)
        self.ref_min_score, self.ref_max_score = ref_min_score, ref_max_score

    def returns(self, policy: Callable[[torch.Tensor], torch.Tensor],
                on_episode_end: Callable[[int], Any] | None = None) -> np.ndarray:
        """Each episode's return; ``on_episode_end(n)``: n more episodes ended (a progress bar)."""
        obs, _ = self.envs.reset(seed=[self.seed + i for i in range(self.episodes)])
        totals = np.zeros(self.episodes)
        running = np.ones(self.episodes, dtype=bool)
        while running.any():
            with torch.no_grad():
                obs_t = torch.as_tensor(self.normalizer(obs), device=self.device)
                action = policy(obs_t).cpu().numpy()
            obs, reward, terminated, truncated, _ = self.envs.step(action)
            totals += reward * running
            ended = running & (terminated | truncated)
            running &= ~ended
            if on_episode_end is not None and ended.any():
                on_episode_end(int(ended.sum()))
        return totals

    def __call__(self, policy: Callable[[torch.Tensor], torch.Tensor],
                 on_episode_end: Callable[[int], Any] | None = None) -> dict[str, float]:
        totals = self.returns(policy, on_episode_end)
        metrics = {RETURN: float(totals.mean()), RETURN_STD: float(totals.std())}
        score = normalized_score(totals, self.ref_min_score, self.ref_max_score)
        if score is not None:
            metrics[SCORE] = float(score.mean())
            metrics[SCORE_STD] = float(score.std())
        return metrics

    def evaluate_agent(self, agent) -> dict[str, float]:
        """An algorithm's deterministic policy (``agent.act``), as ``__call__`` scores it."""
        return self(lambda obs: agent.act(obs, deterministic=True))

    def close(self) -> None:
        self.envs.close()
