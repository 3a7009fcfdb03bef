"""Online fine-tuning after offline training ("Finetuning from offline RL", Luo et al.).

The same run continues in the dataset's environment: a fine-tuning algorithm (TD3, TD3+BC, TD3-C
or SAC) starts from the offline networks' weights (actor, critic and their targets; SAC also the
temperature) with fresh optimisers, and each step of the ``finetune`` phase is one environment
step with the exploring policy followed by one gradient update (section 3.1: "one gradient step
after every transition"), once the replay holds ``min_replay_size`` transitions. The policy acts
from the first step (as Acme's TD3 actor does; no random warm-up). Exploration: the deterministic
actor plus N(0, (exploration_noise * max_action)^2), clipped to the action box (Table B1: 0.1);
SAC samples its stochastic policy.

Replay (section 3.3, appendix C.1): see ``offline_rl.dataset.replay.MixedReplay`` --
initialised with the offline dataset or empty, optionally a fixed offline fraction per batch.

Logged (phase ``finetune``): ``offline_score`` (the normalised score evaluated as fine-tuning
starts: the offline policy), evaluations every ``eval.every`` steps as in every phase, and at the
end ``online_score`` and ``delta`` = online - offline (Table 1 / C3); at every log point the
counters ``env_steps``, ``updates``, ``replay_size``, ``env_steps_per_s`` (environment steps per
second of wall time, updates included) and ``env_time_fraction`` (the share of that time spent
acting and stepping the environment: collection is not the bottleneck while it is small); per
window the losses, ``episode_return`` / ``episode_length`` of the training episodes and
``batch_offline_fraction``.

Fine-tuning can start from an earlier run instead of this run's offline phase: ``from_run`` = an
MLflow run id (its ``checkpoint.pt`` artifact) or a path to a checkpoint file; the run then has
only the ``finetune`` phase, and its x-axis continues from the source run's last update.

The environment loop is ``offline_rl.training.environment_loop.EnvironmentLoop``, the same one that trains
the behaviour agent generating this project's datasets. On resume mid-fine-tuning everything is
restored (networks, optimisers, the multiplier, the online replay's contents, counters, RNGs and,
for MuJoCo environments, the episode in progress: the simulator's state is checkpointed).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from offline_rl.dataset.replay import Batch, MixedReplay, ReplayBuffer
from offline_rl.errors import ConfigError
from offline_rl.metric_names import RETURN, SCORE
from offline_rl.options import boolean, int_at_least, non_negative, number_in, optional, text_or_null
from offline_rl.training.loop import Phase
from offline_rl.training.environment_loop import EnvironmentLoop

# the training environment's first reset seed: away from evaluation seeds (eval.seed + seed + i)
ENV_SEED_OFFSET = 40_000
class OnlineFinetuning:
    """The ``finetune`` group's options (conf/finetune_options.yaml); ``algorithm``'s are those
    of its class (offline_rl/algo/)."""

    OPTIONS = {"env_steps": int_at_least(1), "min_replay_size": int_at_least(1),
               "exploration_noise": non_negative(), "batch_size": int_at_least(1),
               "init_with_offline": boolean(),
               "offline_fraction": optional(number_in(0.0, 1.0), "uniform over the replay"),
               "max_replay_size": int_at_least(1),
               "from_run": text_or_null("an MLflow run id / checkpoint path")}

    def __init__(self, algorithm: Callable[..., Any], env_steps: int = 200_000,
                 min_replay_size: int = 1000, exploration_noise: float = 0.1,
                 batch_size: int = 256, init_with_offline: bool = True,
                 offline_fraction: float | None = None, max_replay_size: int = 1_000_000,
                 from_run: str | None = None):
        self.algorithm = algorithm  # a partial of the fine-tuning algorithm's class
        self.env_steps, self.min_replay_size = int(env_steps), int(min_replay_size)
        self.exploration_noise, self.batch_size = float(exploration_noise), int(batch_size)
        self.init_with_offline = bool(init_with_offline)
        self.offline_fraction = None if offline_fraction is None else float(offline_fraction)
        self.max_replay_size = int(max_replay_size)
        self.from_run = from_run or None
        # built by ``phases``: the agent, its replay, the environment loop; the offline score
        self.source = None
        self.agent = None
        self.replay: MixedReplay | None = None
        self.loop: EnvironmentLoop | None = None
        self.offline_score: float | None = None

    @classmethod
    def option_problems(cls, values: dict, path: str) -> list[str]:
        """Settings that need each other (collected by offline_rl.config.validate)."""
        fraction = values.get("offline_fraction")
        if fraction is not None and values.get("init_with_offline") is False:
            return [f"{path}.offline_fraction={fraction!r} needs the offline data in the replay: "
                    f"set {path}.init_with_offline=true or {path}.offline_fraction=null"]
        return []

    @property
    def algorithm_class(self) -> type:
        return getattr(self.algorithm, "func", self.algorithm)

    def check(self, algo_class: type) -> None:
        """The offline algorithm must have what the fine-tuning one continues: a critic, and an
        actor of the same kind (deterministic for the TD3 family, tanh-Gaussian for SAC)."""
        target = self.algorithm_class
        if not algo_class.has_critic:
            raise ConfigError(f"{algo_class.__name__} has no critic to fine-tune online; train "
                              f"offline with an actor-critic algorithm (e.g. algo=td3_bc) or use "
                              f"finetune=none")
        if algo_class.actor_kind != target.actor_kind:
            stochastic = algo_class.actor_kind == "stochastic"
            kind = "stochastic (tanh-Gaussian)" if stochastic else "deterministic"
            fit = "finetune=sac" if stochastic else "finetune=td3, td3_bc or td3_c"
            raise ConfigError(f"{target.__name__} cannot continue {algo_class.__name__}: its actor "
                              f"is {kind}; use {fit}")

    # ----- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.agent is None:
            return {}
        return {"agent": self.agent.state_dict(), "online_replay": self.replay.online.contents(),
                "loop": self.loop.state_dict(), "offline_score": self.offline_score}

    def load_state_dict(self, state: dict) -> None:
        if not state or self.agent is None:
            return
        self.agent.load_state_dict(state["agent"])
        self.replay.online.load_contents(state["online_replay"])
        self.loop.load_state_dict(state["loop"])
        self.offline_score = state["offline_score"]

    # ----- the phase -----------------------------------------------------------------------------
    def phases(self, algo, replay: ReplayBuffer, data, seed: int) -> list[Phase]:
        """One phase, ``finetune``: ``env_steps`` environment steps, each followed by an update of
        a new agent that continues ``algo`` (its networks, copied as the phase starts)."""
        self.source = algo
        self.agent = self.algorithm(data.obs_dim, data.act_dim,
                                    **self.algorithm_class.continuation_options(algo))
        online = ReplayBuffer(min(self.env_steps, self.max_replay_size), data.obs_dim, data.act_dim,
                              self.agent.device, seed=seed + 1, normalizer=replay.normalizer,
                              reward_scale=replay.reward_scale)  # online rewards as the offline ones
        self.replay = MixedReplay(replay, online, self.init_with_offline, self.offline_fraction,
                                  self.max_replay_size)
        self.loop = EnvironmentLoop(
            data.env_spec, self.agent, online, seed=seed + ENV_SEED_OFFSET,
            batch_size=self.batch_size, exploration_noise=self.exploration_noise,
            normalizer=replay.normalizer, sample=self.sample, ready=self.ready,
            replay_size=lambda: len(self.replay))
        return [self.loop.phase("finetune", self.env_steps, on_start=self.start, on_end=self.end)]

    def sample(self, batch_size: int) -> tuple[Batch, dict[str, torch.Tensor]]:
        batch, offline_share = self.replay.sample(batch_size)
        return batch, {"batch_offline_fraction": offline_share}

    def ready(self) -> bool:
        """Updates start once the replay holds ``min_replay_size`` transitions (online ones,
        unless the offline data is mixed in uniformly)."""
        if self.init_with_offline and self.offline_fraction is None:
            return len(self.replay) >= self.min_replay_size
        return self.replay.online.size >= self.min_replay_size

    def start(self, evaluate: Callable[[], dict] | None) -> dict[str, float]:
        """The agent takes over the offline networks; the offline policy's score is logged."""
        for name in self.agent.TRANSFERRED:
            ours, theirs = getattr(self.agent, name), getattr(self.source, name)
            if ours is not None and theirs is not None:
                ours.load_state_dict(theirs.state_dict())
        if evaluate is None:
            return {}
        self.offline_score = score_of(evaluate())
        return {"offline_score": self.offline_score}

    def end(self, evaluate: Callable[[], dict] | None) -> dict[str, float]:
        """The online score and its difference to the offline one (Table 1 / C3)."""
        self.loop.close()
        if evaluate is None:
            return {}
        online_score = score_of(evaluate())
        metrics = {"online_score": online_score}
        if self.offline_score is not None:
            metrics["delta"] = online_score - self.offline_score
        return metrics


def score_of(evaluation: dict[str, float]) -> float:
    """The normalised score where the dataset has references, else the return."""
    return evaluation.get(SCORE, evaluation.get(RETURN))
