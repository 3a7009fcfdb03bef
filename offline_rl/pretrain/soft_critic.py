"""Soft critic-only pre-training (appendix C ablation for EDAC): the critic regresses soft
returns-to-go computed from the untrained actor's entropy (Eq. 19), diversity term on."""

from __future__ import annotations

from offline_rl.pretrain.common import Scheme
from offline_rl.training.loop import Phase


class SoftCriticPretraining(Scheme):
    actor_kind = "stochastic"
    suggestion = "pretrain=critic"

    def __init__(self, bootstrap_timeouts: bool = True, **options):
        super().__init__(bootstrap_timeouts=bootstrap_timeouts, **options)

    def phases(self, algo, replay, batch_size: int) -> list[Phase]:
        return [self.supervised_phase("pretrain_critic", self.critic_update(algo, replay, batch_size), ["mc_loss"],
                           on_start=self.use_soft_returns(algo, replay))]
