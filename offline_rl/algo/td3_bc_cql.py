"""TD3+BC+CQL (the paper's appendix G): TD3+BC's behaviour-cloning term on the actor, plus a CQL
value regulariser on the critic, for data-limited domains (Adroit's human demonstrations).

The critic minimises Eq. 21's normalised sum

    L = L_TD / |L_TD| + c * L_CQL / |L_CQL|,      |.| = the loss's detached magnitude,

with L_TD TD3+BC's critic loss (the twin critics' MSEs to the shared clipped double-Q target, summed)
and L_CQL CQL's regulariser with uniform random actions, per critic, summed over the two critics:

    L_CQL = sum_i E_s[ T * logsumexp_k(Q_i(s, a_k) / T) - Q_i(s, a) ],  a_k ~ U(-1, 1), k = 1..n.

As in the paper's reference code (EfficientOfflineRL's td3_bc.py) with two deliberate choices:
|.| is the *absolute* detached value (the reference divides by the signed value; CQL's term can be
negative, which would flip its gradient), and a temperature T (CQL's, Table 3: 1.0) is applied as
CQL does. With c = 0 the critic loss is exactly TD3+BC's.

Table 3: c (CQL-regulariser) 1.0 for pen, 10.0 for door/hammer/relocate; n = 10 actions; T = 1.0;
TD3+BC's alpha 1.0 for pen, 0.1 otherwise (conf/tuning/td3_bc_cql_*.yaml). The actor, the target
policy smoothing, the policy delay and the targets are TD3+BC's, unchanged. The pre-training schemes
of the TD3+BC family (ac, actor, critic, qt_max) apply as they are; CQL during critic pre-training
is the scheme's own option (``pretrain.cql_weight``), as in the reference code.
"""

from __future__ import annotations

import torch

from offline_rl.algo.td3_bc import TD3BC
from offline_rl.dataset.replay import Batch
from offline_rl.algo.losses import CQL_OPTIONS, cql_penalty, normalised, td_loss


class TD3BCCQL(TD3BC):
    OPTIONS = CQL_OPTIONS
    step_prefix = "td3_bc_cql"

    def __init__(self, obs_dim: int, act_dim: int, actor, critic, cql_weight: float = 10.0,
                 cql_n_actions: int = 10, cql_temperature: float = 1.0, **td3_bc_options):
        super().__init__(obs_dim, act_dim, actor, critic, **td3_bc_options)
        self.cql_weight = float(cql_weight)
        self.cql_n_actions = int(cql_n_actions)
        self.cql_temperature = float(cql_temperature)

    # ----- losses -----------------------------------------------------------------------------
    def cql_regulariser(self, batch: Batch, q: torch.Tensor) -> torch.Tensor:
        """sum_i mean_s [T logsumexp_k(Q_i(s, a_k) / T) - Q_i(s, a)], a_k ~ U(-1, 1).

        pre-training's ``cql_penalty`` (T = 1) applied to Q / T, times T: the same random actions,
        the same per-critic reduction (``cql_on_min_q`` is False for the TD3 family)."""
        temperature = self.cql_temperature
        tempered = _Tempered(self.critic, temperature, self.cql_on_min_q)
        return temperature * cql_penalty(tempered, batch, q / temperature, self.cql_n_actions)

    def critic_loss(self, batch: Batch, target: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 21: L_TD / |L_TD| + c * L_CQL / |L_CQL| (L_TD alone when c = 0)."""
        target, metrics = self.target(batch) if target is None else (target, {})
        q, _ = self.critic_values(batch)  # [2, B]
        td = td_loss(q, target)  # TD3+BC's critic loss
        metrics = {"q_target": target.mean(), **metrics, "td_loss": td.detach()}
        if self.cql_weight <= 0:
            return td, metrics
        cql = self.cql_regulariser(batch, q)
        loss = normalised(td) + self.cql_weight * normalised(cql)
        return loss, {**metrics, "cql_penalty": cql.detach()}


class _Tempered:
    """What ``cql_penalty`` reads from an algorithm -- ``critic(obs, act)`` and ``cql_on_min_q`` --
    with the critic's values divided by the CQL temperature (a plain class, which torch.compile
    traces)."""

    def __init__(self, critic, temperature: float, cql_on_min_q: bool):
        self._critic, self.temperature, self.cql_on_min_q = critic, temperature, cql_on_min_q

    def critic(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self._critic(obs, act) / self.temperature
