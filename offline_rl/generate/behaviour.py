"""The behaviour agent whose run becomes this project's D4RL-style datasets: one online training run
per environment, through the same machinery as every other phase -- ``EnvironmentLoop`` (the one
online loop), the ``Trainer`` with its evaluator, compiled update steps, MLflow tracking (its own
experiment, ``datasets``; the learning curve is an ordinary run) and preemption-safe checkpoints.

The algorithm is CrossQ (``offline_rl.algo.crossq``) with 2 x 256 networks: measured here it is by
far the most sample-efficient choice per second of a 2-core CPU (docs/datasets.md); SAC
(``algorithm="sac"``: this project's EDAC with two critics and eta = 0) is available too.

What dataset generation needs from the run: every transition collected, in order, with its
episode-end flags (the replay: ``full-replay`` is all of it, ``medium-replay`` a prefix); actor
snapshots every ``snapshot_every`` environment steps with their deterministic evaluation return
(``medium`` is the one whose return is closest to ``medium_fraction`` of the final policy's); the
final actor (``expert``); the returns of a uniform-random policy and of the final policy -- the
average of the actor snapshots over the last ``average_last`` (10%) of training, which smooths out
the dips a single last iterate can be caught in, or the last snapshot where that scores higher
(``final_policy="better"``: an average can fail too).

Interrupted (Ctrl-C, SIGTERM, kill -9), the same generation resumes from its newest checkpoint
(every ``checkpoint_every`` env steps and on a signal; the agent, optimisers, replay, snapshots,
RNGs and the simulator's state) and produces the same transitions as an uninterrupted run (exactly
so with ``compile="eager"``; compiled steps round differently from eager ones at ~1e-7).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from offline_rl.algo.crossq import CrossQ
from offline_rl.algo.edac import EDAC
from offline_rl.algo.td3 import TD3
from offline_rl.dataset.replay import ReplayBuffer, StateNormalizer
from offline_rl.errors import ConfigError
from offline_rl.generate.rollouts import actor_policy, box_spaces, evaluate_policy, random_policy
from offline_rl.network import DeterministicActor, EnsembleCritic, TanhGaussianActor
from offline_rl.precision import PRECISIONS, resolve as resolve_precision
from offline_rl.training.checkpoint import CheckpointDir, rng_state, set_rng_state
from offline_rl.training.compiled import attach_compiler, compile_metrics
from offline_rl.training.evaluation import Evaluator
from offline_rl.metric_names import RETURN
from offline_rl.training.environment_loop import EnvironmentLoop
from offline_rl.training.lifecycle import resume_point, start_tracking, train_tracked
from offline_rl.training.loop import Trainer

# evaluation and reference episodes start from seeds of their own, away from the training env's
EVAL_SEED_OFFSET = 10_000
RANDOM_REF_SEED_OFFSET = 20_000
FINAL_REF_SEED_OFFSET = 30_000
ALGORITHMS = ("crossq", "sac", "td3")
FINAL_POLICIES = ("average", "better")
PHASE = "behaviour"


@dataclass
class BehaviourConfig:
    """Everything that decides what the behaviour run does (and so the data it produces)."""

    env_id: str = "Hopper-v5"
    algorithm: str = "crossq"  # crossq, sac or td3 (the default per environment: ENV_DEFAULTS)
    env_steps: int = 100_000  # environment steps of online training, warm-up included
    random_steps: int = 5_000  # uniform-random warm-up steps before the first update (CrossQ, SAC)
    batch_size: int = 256
    snapshot_every: int = 2_500  # evaluate the policy and keep a snapshot every this many env steps
    eval_episodes: int = 10  # deterministic episodes per snapshot evaluation
    ref_episodes: int = 50  # episodes for the random and final policies' returns
    num_envs: int = 10  # environments side by side for evaluation and rollouts
    actor_width: int = 256
    critic_width: int = 256  # CrossQ's paper: 2048 (~30 GFLOP per update: too slow on 2 cores)
    hidden_depth: int = 2
    learning_rate: float | None = None  # None: the algorithm's (CrossQ 1e-3, SAC / TD3 3e-4)
    exploration_noise: float = 0.1  # TD3: Gaussian action noise (x max_action)
    # the final (expert) policy: the average of the actor snapshots taken over the last this
    # fraction of training (iterate averaging, as SWA / Polyak averaging). A single last iterate of
    # CrossQ's Walker2d policy dipped to 2,221 (50 episodes) between snapshots at 4,943-5,136; the
    # mean of the last five snapshots' weights scored 5,135 (docs/datasets.md). 0: the
    # last snapshot alone.
    average_last: float = 0.1
    # the final policy is that average ("average"), or whichever of the average and the last
    # snapshot scores higher over the same ref_episodes episodes ("better"). Averaging can fail
    # too: a Hopper run's last five snapshots (deterministic 1,451-3,252) averaged to a policy of
    # 1,413 (2026-12-04, docs/datasets.md), the last alone 3,252
    final_policy: str = "better"
    gamma: float = 0.99
    seed: int = 0
    # runtime settings: how fast or where it runs, not what it generates (never compared)
    device: str = "cpu"
    compile: str = "auto"  # the update steps as one compiled graph each (training/compiled.py)
    # fp32, bf16 or auto (offline_rl/precision.py); fp32 by default: the behaviour agent's return
    # in bf16 was measured once only (docs/precision.md)
    precision: str = "fp32"
    checkpoint_every: int = 10_000  # env steps between checkpoints (0: only on a signal)
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else the checkout's sqlite store
    track: bool = True  # record the behaviour run in MLflow (experiment "datasets")

    def __post_init__(self) -> None:
        positive = ("env_steps", "batch_size", "snapshot_every", "eval_episodes", "ref_episodes",
                    "num_envs", "actor_width", "critic_width", "hidden_depth")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"generator setting {name} must be at least 1, got "
                                  f"{getattr(self, name)!r}")
        for name in ("random_steps", "checkpoint_every"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"generator setting {name} must be >= 0, got "
                                  f"{getattr(self, name)!r}")
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"generator setting algorithm={self.algorithm!r} is not allowed: "
                              f"expected one of {', '.join(ALGORITHMS)}")
        if not 0.0 <= float(self.average_last) < 1.0:
            raise ConfigError(f"generator setting average_last must be in [0, 1), got "
                              f"{self.average_last!r}")
        if self.final_policy not in FINAL_POLICIES:
            raise ConfigError(f"generator setting final_policy must be one of "
                              f"{', '.join(FINAL_POLICIES)}, got {self.final_policy!r}")
        if self.compile not in ("auto", "compile", "eager"):
            raise ConfigError(f"generator setting compile={self.compile!r} is not allowed: "
                              f"expected auto, compile or eager")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"generator setting precision={self.precision!r} is not allowed: "
                              f"expected {', '.join(PRECISIONS)}")


@dataclass
class Snapshot:
    step: int  # environment steps taken when the actor was saved
    eval_return: float  # mean undiscounted return of the deterministic policy over eval_episodes
    actor_state: dict  # the actor's state_dict, on the CPU

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class BehaviourRun:
    """What one behaviour training run leaves behind for dataset generation."""

    config: BehaviourConfig
    agent: Any
    snapshots: list[Snapshot]
    replay: ReplayBuffer  # every transition, in the order collected (nothing is evicted)
    random_returns: np.ndarray  # uniform-random policy, ref_episodes episodes
    final_returns: np.ndarray  # final policy, deterministic, ref_episodes episodes
    train_seconds: float
    final_actor: Any = None  # the final policy: the average of the last snapshots (average_last)
    final_is_average: bool = True  # False: the last snapshot scored higher (final_policy="better")
    tracker: Any = None  # the behaviour run's tracker, still open: generation finishes it

    @property
    def random_return(self) -> float:
        return float(np.mean(self.random_returns))

    @property
    def final_return(self) -> float:
        return float(np.mean(self.final_returns))

    def actor_at(self, snapshot: Snapshot):
        """A copy of the actor with the snapshot's weights, on the agent's device."""
        actor = copy.deepcopy(self.agent.actor)
        actor.load_state_dict(snapshot.actor_state)
        return actor


# ----- building blocks -----------------------------------------------------------------------------
def make_agent(config: BehaviourConfig, obs_dim: int, act_dim: int, max_action: float,
               device: torch.device):
    """The behaviour agent of ``config.algorithm`` (observations are not normalised online)."""
    if config.algorithm == "crossq":
        lr = {} if config.learning_rate is None else {"learning_rate": config.learning_rate}
        return CrossQ(obs_dim, act_dim, actor_width=config.actor_width,
                      critic_width=config.critic_width, depth=config.hidden_depth,
                      gamma=config.gamma, max_action=max_action, device=device, **lr)
    lr = 3e-4 if config.learning_rate is None else config.learning_rate
    if config.algorithm == "td3":  # Fujimoto et al. (2018): 2 x 256 ReLU networks, no LayerNorm
        return TD3(obs_dim, act_dim,
                   actor=functools.partial(DeterministicActor, width=config.actor_width,
                                           depth=config.hidden_depth, layer_norm=False),
                   critic=functools.partial(EnsembleCritic, width=config.critic_width,
                                            depth=config.hidden_depth, layer_norm=False),
                   gamma=config.gamma, actor_lr=lr, critic_lr=lr, max_action=max_action,
                   normalize_states=False, device=device)
    return EDAC(obs_dim, act_dim,  # SAC: two critics, no diversity term, standard networks
                actor=functools.partial(TanhGaussianActor, width=config.actor_width,
                                        depth=config.hidden_depth, layer_norm=False),
                critic=functools.partial(EnsembleCritic, width=config.critic_width,
                                         depth=config.hidden_depth, layer_norm=False),
                num_critics=2, eta=0.0, gamma=config.gamma, actor_lr=lr, critic_lr=lr,
                alpha_lr=lr, max_action=max_action, normalize_states=False, device=device)


def averaged_actor(actor, snapshots: list[Snapshot], since: int):
    """A copy of ``actor`` holding the mean of the snapshots' weights (and floating buffers:
    batch-renorm statistics) at env step ``since`` or later; the last snapshot alone when none
    is that late."""
    states = [s.actor_state for s in averaged_snapshots(snapshots, since)]
    mean = {name: (sum(state[name].double() for state in states) / len(states)).to(value.dtype)
            if value.is_floating_point() else states[-1][name]
            for name, value in states[-1].items()}
    average = copy.deepcopy(actor)
    average.load_state_dict(mean)
    return average


def averaged_snapshots(snapshots: list[Snapshot], since: int) -> list[Snapshot]:
    """The snapshots the final average is made of: those at env step ``since`` or later (the last
    one alone when none is that late)."""
    return [s for s in snapshots if s.step >= since] or snapshots[-1:]


def final_policy(actor, snapshots: list[Snapshot], since: int, rule: str,
                 reference_returns: Callable[[Any], np.ndarray]) -> tuple[Any, np.ndarray, dict]:
    """The final (expert) policy by ``rule`` (``BehaviourConfig.final_policy``): the average of the
    snapshots from env step ``since`` on, or ("better") that or the last snapshot, whichever has the
    higher mean of ``reference_returns`` (ties keep the average). Returns the policy, its
    returns and the metrics that say what was compared."""
    average = averaged_actor(actor, snapshots, since)
    chosen_actor, chosen_returns = average, reference_returns(average)
    averaged = len(averaged_snapshots(snapshots, since))
    metrics = {"final/average_return_mean": float(chosen_returns.mean()),
               "final/averaged_snapshots": averaged}
    if rule == "better" and averaged > 1:
        last = averaged_actor(actor, snapshots[-1:], snapshots[-1].step)
        last_returns = reference_returns(last)
        metrics["final/last_snapshot_reference_return_mean"] = float(last_returns.mean())
        if last_returns.mean() > chosen_returns.mean():
            chosen_actor, chosen_returns = last, last_returns
    metrics["final/is_average"] = float(chosen_actor is average)
    return chosen_actor, chosen_returns, metrics


def data_settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def make_tracker(config: BehaviourConfig):
    from offline_rl.tracker import MlflowTracker, NullTracker, default_store_dir

    if not config.track:
        return NullTracker()
    uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    return MlflowTracker(experiment="datasets", tracking_uri=uri,
                         store_dir=None if uri else default_store_dir())


# ----- the run -------------------------------------------------------------------------------------
def train_behaviour(config: BehaviourConfig, checkpoint_dir: Path, identity: str,
                    reference: tuple[float, float] | None = None,
                    progress: bool = True) -> BehaviourRun:
    """Train the behaviour agent online on ``config.env_id`` (resuming from ``checkpoint_dir``
    when it holds a checkpoint of this ``identity``: the hash of the data settings) and collect
    what dataset generation needs. ``reference``: (random, expert) returns that normalise the
    evaluation scores (D4RL's, for the MuJoCo tasks)."""
    device = torch.device(config.device)
    precision = resolve_precision(config.precision, device)
    env = gym.make(config.env_id)
    obs_dim, act_dim, max_action = box_spaces(env)
    action_space = env.action_space
    env.close()
    torch.manual_seed(config.seed)
    agent = make_agent(config, obs_dim, act_dim, max_action, device)
    compile_report = attach_compiler(agent, config.compile,
                                     updates=max(config.env_steps - config.random_steps, 0),
                                     precision=precision)
    replay = ReplayBuffer(config.env_steps, obs_dim, act_dim, device, seed=config.seed)
    loop = EnvironmentLoop(config.env_id, agent, replay, seed=config.seed,
                           batch_size=config.batch_size, random_steps=config.random_steps,
                           min_replay_size=config.batch_size,
                           exploration_noise=config.exploration_noise)
    low, high = reference if reference is not None else (None, None)
    evaluator = Evaluator(config.env_id, config.eval_episodes, config.seed + EVAL_SEED_OFFSET,
                          StateNormalizer.identity(obs_dim), device, low, high)
    snapshots: list[Snapshot] = []

    def take_snapshot(step: int, metrics: dict[str, float]) -> None:
        """After each evaluation: the actor's weights, for the medium level and the average."""
        state = {k: v.detach().to("cpu", copy=True) for k, v in agent.actor.state_dict().items()}
        snapshots.append(Snapshot(step, metrics[RETURN], state))

    checkpoints = CheckpointDir(checkpoint_dir, identity, keep=2)
    tracker = make_tracker(config)
    seconds_before = 0.0
    kept: list[int] = []  # the step of the newest checkpoint written

    def save(trainer: Trainer) -> None:
        tracker.flush()
        step = trainer.state.global_step
        checkpoints.save({"run_id": tracker.run_id, "global_step": step, "algo": agent.state_dict(),
                          "replay": replay.contents(), "loop": loop.state_dict(),
                          "snapshots": [s.to_dict() for s in snapshots],
                          "train_seconds": seconds_before + time.perf_counter() - started,
                          "trainer": trainer.state_dict(), "rng": rng_state(), "precision": precision},
                         step)
        kept[:] = [step]

    phase = loop.phase(PHASE, config.env_steps)
    trainer = Trainer([phase], tracker, evaluator.evaluate_agent, log_every=1000,
                      eval_every=config.snapshot_every, checkpoint=save,
                      checkpoint_every=config.checkpoint_every, progress=progress, agent=agent,
                      after_evaluation=take_snapshot)

    # the data does not depend on the store: a folder written for another one continues, into a
    # new MLflow run; nothing readable in it: the run starts afresh (the same data, later)
    found, run_id = resume_point(checkpoints, tracker, restart_if_unreadable=True,
                                  store_bound=False, what="behaviour run")
    if found is not None:
        state, path = found
        saved = state.get("precision", "fp32")
        if saved != precision:  # one behaviour run never mixes precisions
            raise ConfigError(f"the {config.env_id} behaviour run in {path} was trained in {saved} "
                              f"so far, and this command resolves precision={config.precision} to "
                              f"{precision}; run it with --precision {saved} to continue it, or "
                              f"delete {checkpoints.path} to start afresh")
        agent.load_state_dict(state["algo"])
        replay.load_contents(state["replay"])
        loop.load_state_dict(state["loop"])
        trainer.load_state_dict(state["trainer"], device)
        snapshots[:] = [Snapshot(**s) for s in state["snapshots"]]
        set_rng_state(state["rng"])
        seconds_before = float(state["train_seconds"])
        kept[:] = [int(state["global_step"])]
        print(f"resuming the {config.env_id} behaviour run from {path} (env step "
              f"{state['global_step']} of {config.env_steps})", file=sys.stderr, flush=True)
    name = f"behaviour-{config.algorithm}-{config.env_id.split('-')[0].lower()}-s{config.seed}"
    settings = {k: v for k, v in dataclasses.asdict(config).items()}
    start_tracking(tracker, checkpoints, name, settings,
                   {"phase": PHASE, "env_id": config.env_id, "algorithm": config.algorithm,
                    "generator_identity": identity, "checkpoint_dir": str(checkpoints.path)},
                   run_id)
    started = time.perf_counter()

    def record() -> tuple:
        """The final policy (``final_policy``: the average of the last snapshots, or the better of
        it and the last snapshot) and the reference returns."""
        if not found or trainer.state.global_step != found[0]["global_step"]:
            save(trainer)  # training done: a rerun goes straight to the datasets
        train_seconds = seconds_before + time.perf_counter() - started
        random_returns = evaluate_policy(
            random_policy(action_space, config.seed + RANDOM_REF_SEED_OFFSET),
            config.env_id, config.ref_episodes, config.seed + RANDOM_REF_SEED_OFFSET, config.num_envs)
        since = int(round(config.env_steps * (1.0 - config.average_last)))

        def reference_returns(actor) -> np.ndarray:  # the same episodes for every candidate
            return evaluate_policy(actor_policy(actor, device), config.env_id, config.ref_episodes,
                                   config.seed + FINAL_REF_SEED_OFFSET, config.num_envs)

        final_actor, final_returns, chosen = final_policy(agent.actor, snapshots, since,
                                                          config.final_policy, reference_returns)
        averaged = int(chosen["final/averaged_snapshots"])
        print(f"final policy: {'the average' if chosen['final/is_average'] else 'the last snapshot'}"
              f" ({final_returns.mean():.1f} over {config.ref_episodes} episodes; the average of "
              f"{averaged} snapshots: {chosen['final/average_return_mean']:.1f})",
              file=sys.stderr, flush=True)
        tracker.log_metrics({"final/return_mean": float(final_returns.mean()),
                             "final/return_std": float(final_returns.std()), **chosen,
                             "final/last_snapshot_return": snapshots[-1].eval_return,
                             "random/return_mean": float(random_returns.mean()),
                             "train_seconds": train_seconds, **compile_metrics([compile_report])},
                            trainer.state.global_step)
        tracker.flush()
        return random_returns, final_returns, train_seconds, (final_actor, bool(chosen["final/is_average"]))

    try:
        # a signal: checkpointed, reported, the MLflow run KILLED (no requeue), the process ends
        random_returns, final_returns, train_seconds, (final_actor, final_is_average) = train_tracked(
            trainer, tracker, checkpoints, record=record,
            kept_step=lambda: kept[0] if kept else None, unit="env step")
    finally:
        evaluator.close()
        loop.close()
    return BehaviourRun(config=config, agent=agent, snapshots=snapshots, replay=replay,
                        random_returns=random_returns, final_returns=final_returns,
                        train_seconds=train_seconds, tracker=tracker, final_actor=final_actor,
                        final_is_average=final_is_average)
