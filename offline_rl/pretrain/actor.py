"""Actor-only pre-training (appendix C ablation): behaviour cloning of a deterministic actor,
then offline RL with a randomly initialised critic."""

from __future__ import annotations

from offline_rl.pretrain.common import Scheme
from offline_rl.training.loop import Phase


class ActorPretraining(Scheme):
    actor_kind = "deterministic"
    needs_critic = False
    suggestion = "pretrain=soft_actor"

    def phases(self, algo, replay, batch_size: int) -> list[Phase]:
        return [self.supervised_phase("pretrain_actor", self.actor_update(algo, replay, batch_size), ["bc_loss"])]
