"""The Q-Transformer baseline of appendix F: no separate phase; throughout training the TD target
is max(MC return-to-go, r + gamma Q'). The fraction of targets where MC wins is logged.

It lives among the pre-training schemes because it is the paper's alternative to them (one
``pretrain=`` choice), but it is not pre-training: it changes the critic's TD target for the whole
run. ``Run`` hands ``target_transform`` to the algorithm as it is built, and every critic loss of
the offline phase (and of the critic pre-training phases, which have none here) goes through
``Algorithm.target``. Online fine-tuning builds its own agent without the transform: its targets
are plain TD targets (the online data has no returns-to-go until an episode ends)."""

from __future__ import annotations

import torch

from offline_rl.dataset.replay import Batch
from offline_rl.pretrain.common import Scheme
from offline_rl.training.loop import Phase


def qt_max_target(batch: Batch, td_target: torch.Tensor) -> tuple[torch.Tensor, dict]:
    target = torch.maximum(batch.returns_to_go, td_target)
    return target, {"mc_target_fraction": (batch.returns_to_go > td_target).float().mean()}


class QTMax(Scheme):
    actor_kind = "any"
    target_transform = staticmethod(qt_max_target)

    def phases(self, algo, replay, batch_size: int) -> list[Phase]:
        return []
