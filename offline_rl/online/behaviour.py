"""The online SAC behaviour agent that generates this project's datasets, D4RL style.

SAC here is ``offline_rl.algo.edac.EDAC`` with two critics and no diversity term (SAC-N with N = 2
and eta = 0 is SAC with twin critics and automatic temperature), so online fine-tuning later trains
the very same agent class. The recipe is the standard one (Haarnoja et al., 2018; cleanrl's
sac_continuous_action.py): ``random_steps`` uniform-random warm-up actions, then one gradient step
per environment step on a batch sampled uniformly from everything collected so far, with
stochastic actions throughout.

What dataset generation needs from the run: every transition collected, in order, with both
episode-end flags (medium-replay is a prefix of it); actor snapshots every ``snapshot_every`` steps
with their deterministic evaluation return (medium is the snapshot closest to a third of the final
return); the final actor (expert); and the returns of a uniform-random policy and of the final
policy, the reference scores that normalise returns.

Evaluation and rollouts run ``num_envs`` environments side by side (``SyncVectorEnv``: on a couple
of CPU cores a single process beats subprocess workers) with one batched policy call per step.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from offline_rl.algo.edac import EDAC
from offline_rl.dataset.replay import ReplayBuffer, StateNormalizer
from offline_rl.errors import ConfigError, NonFiniteLossError
from offline_rl.network import EnsembleCritic, TanhGaussianActor

#: a batch of observations (n, obs_dim) -> a batch of actions (n, act_dim)
Policy = Callable[[np.ndarray], np.ndarray]

# evaluation and reference episodes start from seeds of their own, away from the training env's
EVAL_SEED_OFFSET = 10_000
RANDOM_REF_SEED_OFFSET = 20_000
FINAL_REF_SEED_OFFSET = 30_000


@dataclass
class BehaviourConfig:
    """Everything that decides what the behaviour run does (and so the data it produces)."""

    env_id: str = "Hopper-v5"
    env_steps: int = 100_000  # environment steps of online training, warm-up included
    random_steps: int = 5_000  # uniform-random warm-up steps before the first update
    batch_size: int = 256
    snapshot_every: int = 5_000  # keep the actor (and evaluate it) every this many env steps
    eval_episodes: int = 5  # deterministic episodes per snapshot evaluation
    ref_episodes: int = 50  # episodes for each reference score (random policy, final policy)
    num_envs: int = 8  # environments side by side for evaluation and rollouts
    hidden_width: int = 256
    hidden_depth: int = 2
    layer_norm: bool = False  # standard SAC has none
    gamma: float = 0.99
    tau: float = 5e-3
    learning_rate: float = 3e-4  # actor, critics and temperature alike
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        positive = ("env_steps", "batch_size", "snapshot_every", "eval_episodes", "ref_episodes",
                    "num_envs", "hidden_width", "hidden_depth")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"generator setting {name} must be at least 1, got "
                                  f"{getattr(self, name)!r}")
        if int(self.random_steps) < 0:
            raise ConfigError(f"generator setting random_steps must be >= 0, got {self.random_steps!r}")


@dataclass
class Snapshot:
    step: int  # environment steps taken when the actor was saved
    eval_return: float  # mean undiscounted return of the deterministic policy over eval_episodes
    actor_state: dict  # the actor's state_dict, on the CPU


class TransitionLog:
    """Every transition of an online run, in the order collected, with both episode-end flags.

    ``episodes(n)`` rebuilds the episode structure of the first n transitions: the replay buffer as
    it stood after n environment steps, an episode still running at that point cut and marked
    truncated (D4RL's medium-replay).
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, obs_dtype=np.float64):
        self.observations = np.zeros((capacity, obs_dim), dtype=obs_dtype)
        self.next_observations = np.zeros((capacity, obs_dim), dtype=obs_dtype)
        self.actions = np.zeros((capacity, act_dim), dtype=np.float32)
        self.rewards = np.zeros(capacity, dtype=np.float64)
        self.terminations = np.zeros(capacity, dtype=bool)
        self.truncations = np.zeros(capacity, dtype=bool)
        self.size = 0

    def add(self, obs, action, reward, next_obs, terminated: bool, truncated: bool) -> None:
        i = self.size
        self.observations[i] = obs
        self.actions[i] = action
        self.rewards[i] = reward
        self.next_observations[i] = next_obs
        self.terminations[i] = terminated
        self.truncations[i] = truncated
        self.size += 1

    def __len__(self) -> int:
        return self.size

    def episodes(self, num_steps: int | None = None) -> list[dict[str, np.ndarray]]:
        """Episodes (observations (T+1, d), actions, rewards, terminations, truncations) made of
        the first ``num_steps`` transitions (all by default)."""
        n = self.size if num_steps is None else int(num_steps)
        if not 0 <= n <= self.size:
            raise ValueError(f"asked for the first {n} transitions of a log holding {self.size}")
        ends = np.flatnonzero(self.terminations[:n] | self.truncations[:n])
        starts = np.r_[0, ends + 1]
        stops = np.r_[ends + 1, n]
        episodes = []
        for start, stop in zip(starts, stops):
            if stop <= start:
                continue
            terminations = self.terminations[start:stop].copy()
            truncations = self.truncations[start:stop].copy()
            if not (terminations[-1] or truncations[-1]):
                truncations[-1] = True  # still running when the log was cut
            episodes.append({
                "observations": np.concatenate([self.observations[start:stop],
                                                self.next_observations[stop - 1:stop]]),
                "actions": self.actions[start:stop].copy(),
                "rewards": self.rewards[start:stop].copy(),
                "terminations": terminations,
                "truncations": truncations,
            })
        return episodes


@dataclass
class BehaviourRun:
    """What one behaviour training run leaves behind for dataset generation."""

    config: BehaviourConfig
    agent: EDAC
    snapshots: list[Snapshot]
    log: TransitionLog
    random_returns: np.ndarray  # uniform-random policy, ref_episodes episodes
    final_returns: np.ndarray  # final policy, deterministic, ref_episodes episodes
    train_seconds: float

    @property
    def random_return(self) -> float:
        return float(np.mean(self.random_returns))

    @property
    def final_return(self) -> float:
        return float(np.mean(self.final_returns))

    def actor_at(self, snapshot: Snapshot) -> TanhGaussianActor:
        """A copy of the actor with the snapshot's weights, on the agent's device."""
        actor = copy.deepcopy(self.agent.actor)
        actor.load_state_dict(snapshot.actor_state)
        return actor


# ----- building blocks ---------------------------------------------------------------------------
def make_sac_agent(obs_dim: int, act_dim: int, *, width: int = 256, depth: int = 2,
                   layer_norm: bool = False, gamma: float = 0.99, tau: float = 5e-3,
                   learning_rate: float = 3e-4, max_action: float = 1.0,
                   device: torch.device | str = "cpu") -> EDAC:
    """SAC with twin critics and automatic temperature: EDAC with N = 2 critics and eta = 0."""
    return EDAC(obs_dim, act_dim,
                actor=functools.partial(TanhGaussianActor, width=width, depth=depth,
                                        layer_norm=layer_norm),
                critic=functools.partial(EnsembleCritic, width=width, depth=depth,
                                         layer_norm=layer_norm),
                num_critics=2, eta=0.0, gamma=gamma, tau=tau, actor_lr=learning_rate,
                critic_lr=learning_rate, alpha_lr=learning_rate, max_action=max_action,
                device=device)


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


def actor_policy(actor: TanhGaussianActor, device: torch.device | str, deterministic: bool = True,
                 normalizer: StateNormalizer | None = None) -> Policy:
    """A batched numpy policy from an actor (mean action if deterministic, else a sample)."""
    device = torch.device(device)

    def policy(obs: np.ndarray) -> np.ndarray:
        x = normalizer(obs) if normalizer is not None else obs
        x = torch.as_tensor(x, dtype=torch.float32, device=device)
        return actor.act(x, deterministic=deterministic).cpu().numpy()

    return policy


def random_policy(action_space: gym.spaces.Box, seed: int) -> Policy:
    """Uniform-random actions in the box, from a generator of its own."""
    rng = np.random.default_rng(seed)
    low, high = action_space.low, action_space.high

    def policy(obs: np.ndarray) -> np.ndarray:
        return rng.uniform(low, high, size=(len(obs), *action_space.shape)).astype(action_space.dtype)

    return policy


def evaluate_policy(policy: Policy, env_id: str, episodes: int, seed: int,
                    num_envs: int = 8) -> np.ndarray:
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
    episodes in the order they finished. Episodes still running when the budget is reached are
    kept, cut and marked truncated (as D4RL's fixed-size datasets end). The first episode of env i
    starts from seed + i (recorded as the episode's ``seed``), later ones from its reset stream."""
    envs = make_vector_env(env_id, num_envs)

    def new_episode(first_obs: np.ndarray, episode_seed: int | None) -> dict:
        return {"seed": episode_seed, "observations": [first_obs], "actions": [], "rewards": [],
                "terminations": [], "truncations": []}

    def finish(ep: dict) -> dict:
        return {"seed": ep["seed"], "observations": np.asarray(ep["observations"]),
                "actions": np.asarray(ep["actions"], dtype=np.float32),
                "rewards": np.asarray(ep["rewards"], dtype=np.float64),
                "terminations": np.asarray(ep["terminations"], dtype=bool),
                "truncations": np.asarray(ep["truncations"], dtype=bool)}

    episodes: list[dict] = []
    recent_returns: list[float] = []
    bar = tqdm(total=num_transitions, unit="step", desc=desc, disable=not progress,
               dynamic_ncols=True)
    try:
        obs, _ = envs.reset(seed=[seed + i for i in range(num_envs)])
        current = [new_episode(obs[i], seed + i) for i in range(num_envs)]
        count = 0
        while count < num_transitions:
            actions = policy(obs)
            next_obs, rewards, terminated, truncated, infos = envs.step(actions)
            take = min(num_envs, num_transitions - count)
            for i in range(take):
                ep = current[i]
                ep["actions"].append(actions[i])
                ep["rewards"].append(rewards[i])
                ep["terminations"].append(bool(terminated[i]))
                ep["truncations"].append(bool(truncated[i]))
                if terminated[i] or truncated[i]:
                    ep["observations"].append(infos["final_obs"][i])
                    episodes.append(finish(ep))
                    recent_returns = (recent_returns + [float(np.sum(ep["rewards"]))])[-20:]
                    current[i] = new_episode(next_obs[i], None)
                else:
                    ep["observations"].append(next_obs[i])
            count += take
            obs = next_obs
            bar.update(take)
            if recent_returns and bar.n % 5000 < take:
                bar.set_postfix(episode_return=f"{np.mean(recent_returns):.1f}", refresh=False)
        for ep in current:
            if ep["rewards"]:
                if not (ep["terminations"][-1] or ep["truncations"][-1]):
                    ep["truncations"][-1] = True
                episodes.append(finish(ep))
    finally:
        bar.close()
        envs.close()
    return episodes


def select_snapshot(snapshots: Sequence[tuple[int, float]], final_return: float,
                    fraction: float = 1.0 / 3.0) -> int:
    """Index of the (step, eval_return) pair whose return is closest to ``fraction`` of
    ``final_return`` (D4RL's medium: a policy at about a third of the final one); ties go to the
    earliest snapshot."""
    if len(snapshots) == 0:
        raise ValueError("no snapshots to choose from")
    target = fraction * float(final_return)
    return min(range(len(snapshots)), key=lambda i: (abs(float(snapshots[i][1]) - target), i))


# ----- the online loop ---------------------------------------------------------------------------
def train_online(agent: EDAC, env: gym.Env, replay: ReplayBuffer, total_steps: int, *,
                 random_steps: int = 0, batch_size: int = 256, seed: int = 0,
                 eval_every: int = 0, on_eval: Callable[[int], float] | None = None,
                 log: TransitionLog | None = None, progress: bool = True,
                 desc: str = "online SAC") -> dict[str, torch.Tensor]:
    """Interact with ``env`` for ``total_steps`` steps, adding every transition to ``replay`` (done
    = termination only: a time limit is not a terminal state) and to ``log``, with one update of
    ``agent`` per step once the ``random_steps`` uniform-random warm-up steps are over.

    ``on_eval(step)`` runs every ``eval_every`` steps and after the last one; it returns the
    evaluation return shown in the progress bar. Returns the metrics of the last update.
    """
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    metrics: dict[str, torch.Tensor] = {}
    postfix: dict[str, str] = {}
    episode_return = 0.0
    bar = tqdm(total=total_steps, unit="step", desc=desc, disable=not progress, dynamic_ncols=True)
    try:
        for step in range(1, total_steps + 1):
            if step <= random_steps:
                action = env.action_space.sample()
            else:
                obs_t = torch.as_tensor(replay.normalizer(obs[None]), device=agent.device)
                action = agent.act(obs_t, deterministic=False)[0].cpu().numpy()
            next_obs, reward, terminated, truncated, _ = env.step(action)
            replay.add(obs[None], action[None], np.array([reward]), next_obs[None],
                       np.array([terminated]))
            if log is not None:
                log.add(obs, action, reward, next_obs, terminated, truncated)
            episode_return += float(reward)
            if terminated or truncated:
                postfix["episode_return"] = f"{episode_return:.1f}"
                episode_return = 0.0
                obs, _ = env.reset()
            else:
                obs = next_obs

            if step > random_steps:
                metrics = agent.update(replay.sample(batch_size))

            if on_eval is not None and eval_every > 0 and (step % eval_every == 0
                                                           or step == total_steps):
                _check_finite(metrics, step)
                postfix["eval_return"] = f"{on_eval(step):.1f}"
                bar.set_postfix(postfix, refresh=False)
            elif terminated or truncated:
                bar.set_postfix(postfix, refresh=False)
            bar.update(1)
    finally:
        bar.close()
    _check_finite(metrics, total_steps)
    return metrics


def _check_finite(metrics: dict[str, torch.Tensor], step: int) -> None:
    for name in ("critic_loss", "actor_loss"):
        if name in metrics and not bool(torch.isfinite(metrics[name])):
            raise NonFiniteLossError(f"online SAC: {name} became {float(metrics[name])} by env step "
                                     f"{step}; lower the learning rate or change the seed")


# ----- the behaviour run -------------------------------------------------------------------------
def train_behaviour(config: BehaviourConfig, progress: bool = True) -> BehaviourRun:
    """Train SAC online on ``config.env_id`` and collect what dataset generation needs."""
    torch.manual_seed(config.seed)
    env = gym.make(config.env_id)
    obs_dim, act_dim, max_action = box_spaces(env)
    device = torch.device(config.device)
    agent = make_sac_agent(obs_dim, act_dim, width=config.hidden_width, depth=config.hidden_depth,
                           layer_norm=config.layer_norm, gamma=config.gamma, tau=config.tau,
                           learning_rate=config.learning_rate, max_action=max_action,
                           device=device)
    replay = ReplayBuffer(config.env_steps, obs_dim, act_dim, device, seed=config.seed)
    log = TransitionLog(config.env_steps, obs_dim, act_dim, env.observation_space.dtype)
    snapshots: list[Snapshot] = []

    def on_eval(step: int) -> float:
        returns = evaluate_policy(actor_policy(agent.actor, device), config.env_id,
                                  config.eval_episodes, config.seed + EVAL_SEED_OFFSET,
                                  config.num_envs)
        state = {k: v.detach().to("cpu", copy=True) for k, v in agent.actor.state_dict().items()}
        snapshots.append(Snapshot(step=step, eval_return=float(returns.mean()), actor_state=state))
        return float(returns.mean())

    start = time.perf_counter()
    try:
        train_online(agent, env, replay, config.env_steps, random_steps=config.random_steps,
                     batch_size=config.batch_size, seed=config.seed,
                     eval_every=config.snapshot_every, on_eval=on_eval, log=log,
                     progress=progress, desc=f"SAC {config.env_id}")
    finally:
        env.close()
    train_seconds = time.perf_counter() - start

    random_returns = evaluate_policy(
        random_policy(env.action_space, config.seed + RANDOM_REF_SEED_OFFSET), config.env_id,
        config.ref_episodes, config.seed + RANDOM_REF_SEED_OFFSET, config.num_envs)
    final_returns = evaluate_policy(actor_policy(agent.actor, device), config.env_id,
                                    config.ref_episodes, config.seed + FINAL_REF_SEED_OFFSET,
                                    config.num_envs)
    return BehaviourRun(config=config, agent=agent, snapshots=snapshots, log=log,
                        random_returns=random_returns, final_returns=final_returns,
                        train_seconds=train_seconds)
