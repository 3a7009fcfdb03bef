"""Soft actor-only pre-training (appendix C ablation for EDAC): soft behaviour cloning (Eq. 20)."""

from __future__ import annotations

from offline_rl.pretrain.common import Scheme
from offline_rl.training.loop import Phase


class SoftActorPretraining(Scheme):
    actor_kind = "stochastic"
    needs_critic = False
    suggestion = "pretrain=actor"

    def phases(self, algo, replay, batch_size: int) -> list[Phase]:
        return [self.supervised_phase("pretrain_actor", self.soft_actor_update(algo, replay, batch_size),
                           ["soft_bc_loss"])]
