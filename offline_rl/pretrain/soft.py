"""Algorithm 2 for entropy-regularised algorithms (EDAC, SAC-N): soft behaviour cloning of the
tanh-Gaussian actor (Eq. 20, alpha learned), then soft returns-to-go from that actor (Eq. 19),
then critic regression on them with EDAC's diversity term kept on (section 6.1)."""

from __future__ import annotations

from offline_rl.pretrain.common import Scheme
from offline_rl.training.loop import Phase


class SoftPretraining(Scheme):
    actor_kind = "stochastic"
    suggestion = "pretrain=ac"

    def phases(self, algo, replay, batch_size: int) -> list[Phase]:
        return [
            self.supervised_phase("pretrain_actor", self.soft_actor_update(algo, replay, batch_size), ["soft_bc_loss"]),
            self.supervised_phase("pretrain_critic", self.critic_update(algo, replay, batch_size), ["mc_loss"],
                       on_start=self.use_soft_returns(algo, replay)),
        ]
