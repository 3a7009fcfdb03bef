"""EDAC+BC (the paper's appendix G): EDAC's uncertainty-regularised critic ensemble, plus a
behaviour-cloning term on the actor, for data-limited domains (Adroit's human demonstrations).

The actor minimises Eq. 21's normalised sum

    L = L_SAC / |L_SAC| + c * L_BC / |L_BC|,      |.| = the loss's detached magnitude,

    L_SAC = E_s[alpha log pi(a~|s) - min_i Q_i(s, a~)],   L_BC = E_{s,a}[(a~ - a)^2],   a~ ~ pi(s),

i.e. 'hard' BC (MSE) on the *sampled* policy action, which the paper found much better than soft BC
(appendix G.4). Soft BC (Eq. 20) is still what pre-training uses (pretrain=soft), to keep the
policy's entropy. As in the reference code (EfficientOfflineRL's edac.py, ``bc_regulariser``),
except that |.| is the *absolute* detached value: L_SAC is usually negative (Q > 0), and dividing
by its signed value would turn the actor's gradient step into an ascent. With c = 0 the actor loss
is exactly EDAC's.

Table 3: c (BC-regulariser) 1.0; N = 20 critics for pen with eta = 1000 (human) or 10 (cloned);
N = 50, eta = 200 for door/hammer/relocate (conf/tuning/edac_bc_*.yaml). Everything else --
temperature, critic loss with the diversity term, targets, update order -- is EDAC's, unchanged.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from offline_rl.algo.edac import EDAC
from offline_rl.dataset.replay import Batch
from offline_rl.algo.losses import normalised
from offline_rl.options import non_negative


class EDACBC(EDAC):
    OPTIONS = {"bc_weight": non_negative()}

    def __init__(self, obs_dim: int, act_dim: int, actor, critic, bc_weight: float = 1.0,
                 **edac_options):
        super().__init__(obs_dim, act_dim, actor, critic, **edac_options)
        self.bc_weight = float(bc_weight)

    # ----- losses -----------------------------------------------------------------------------
    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 21: L_SAC / |L_SAC| + c * MSE(a~, a) / |MSE| (L_SAC alone when c = 0)."""
        action, log_prob = self.actor(batch.observations, need_log_prob=True)  # a~ ~ pi(s)
        q = self.critic(batch.observations, action)  # [N, B]
        sac = (self.entropy_temperature * log_prob - q.min(0).values).mean()  # EDAC's actor loss
        metrics = {"entropy": -log_prob.detach().mean(), "q_policy_std": q.detach().std(0).mean(),
                   "sac_actor_loss": sac.detach()}
        if self.bc_weight <= 0:
            return sac, metrics
        bc = F.mse_loss(action, batch.actions)
        loss = normalised(sac) + self.bc_weight * normalised(bc)
        return loss, {**metrics, "bc_loss": bc.detach()}
