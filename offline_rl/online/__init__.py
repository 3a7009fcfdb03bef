"""Online interaction: the SAC behaviour agent that generates this project's datasets, and the pieces
(environment loop, evaluation, rollouts) that online fine-tuning reuses."""

from offline_rl.online.behaviour import (BehaviourConfig, BehaviourRun, Snapshot, TransitionLog,
                                         actor_policy, collect_episodes, evaluate_policy,
                                         make_sac_agent, random_policy, select_snapshot,
                                         train_behaviour, train_online)

__all__ = ["BehaviourConfig", "BehaviourRun", "Snapshot", "TransitionLog", "actor_policy",
           "collect_episodes", "evaluate_policy", "make_sac_agent", "random_policy",
           "select_snapshot", "train_behaviour", "train_online"]
