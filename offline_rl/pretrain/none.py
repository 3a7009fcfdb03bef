"""No pre-training: offline RL from randomly initialised networks (the paper's baseline).
It accepts the common pre-training options (and ignores them), so sweeps can set them for all."""

from __future__ import annotations

from offline_rl.pretrain.common import Scheme
from offline_rl.training.loop import Phase


class NoPretraining(Scheme):
    actor_kind = "any"
    needs_critic = False

    def phases(self, algo, replay, batch_size: int) -> list[Phase]:
        return []
