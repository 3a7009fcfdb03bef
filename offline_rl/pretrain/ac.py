"""Algorithm 1: behaviour cloning of the actor and Monte-Carlo regression of the critic, together,
with Polyak-averaged targets; then the algorithm's own off-policy RL updates."""

from __future__ import annotations

from offline_rl.pretrain.common import Scheme
from offline_rl.training.loop import Phase


class ActorCriticPretraining(Scheme):
    actor_kind = "deterministic"
    suggestion = "pretrain=soft"

    def phases(self, algo, replay, batch_size: int) -> list[Phase]:
        actor_step = self.actor_update(algo, replay, batch_size)
        critic_step = self.critic_update(algo, replay, batch_size)

        def update() -> dict:
            return {**actor_step(), **critic_step()}

        return [self.supervised_phase("pretrain_actor_critic", update, ["bc_loss", "mc_loss"])]
