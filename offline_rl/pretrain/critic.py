"""Critic-only pre-training (appendix C ablation): the critic regresses Monte-Carlo returns-to-go
of the dataset (Algorithm 1's critic loss), the actor starts from random."""

from __future__ import annotations

from offline_rl.pretrain.common import Scheme
from offline_rl.training.loop import Phase


class CriticPretraining(Scheme):
    actor_kind = "deterministic"
    suggestion = "pretrain=soft_critic"

    def phases(self, algo, replay, batch_size: int) -> list[Phase]:
        return [self.supervised_phase("pretrain_critic", self.critic_update(algo, replay, batch_size), ["mc_loss"])]
