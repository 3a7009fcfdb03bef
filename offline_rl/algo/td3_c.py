"""TD3-C, conservative TD3 ("Finetuning from offline RL", section 4, Eq. 4-5).

The actor step of TD3 becomes a constrained policy improvement:

    max_theta  E_s[Q(s, pi_theta(s))]   s.t.  E_s[||pi_theta(s) - pi_theta'(s)||^2] <= epsilon,

with theta' the target policy (a moving anchor: the policy may not take large steps, whatever the
critic says). Solved with a Lagrange multiplier lambda >= 0 learned by gradient descent alongside
the actor (the Lagrangian L = Q - lambda * (c - epsilon), c the constraint value):

    actor:       minimise  -Q(s, pi(s)) + stop_grad(lambda) * (c - epsilon)
    multiplier:  minimise  lambda * (epsilon - stop_grad(c))

so lambda grows while the constraint is violated (c > epsilon) and decays to 0 while it is slack.
(Eq. 5 as printed has the sign of the bracket flipped; this is the Lagrangian of Eq. 4.) The
constraint is the squared L2 distance summed over action dimensions, averaged over the batch.

lambda itself is the learned parameter, stepped by Adam with the actor (same loss, same policy
delay; lr 1e-2, Acme's MPO dual learning rate) and projected back to lambda >= 0 after every step:
projected gradient descent, so a slack constraint brings it to exactly 0, and a violated one lifts
it from there at once. Table B2: epsilon = 1e-5, with dQ/da clipping on.
"""

from __future__ import annotations

import torch
from torch import nn

from offline_rl.algo.td3 import TD3
from offline_rl.dataset.replay import Batch
from offline_rl.options import positive_number


class LagrangeMultiplier(nn.Module):
    """lambda >= 0, a parameter kept non-negative by projection."""

    def __init__(self, initial: float = 1.0):
        super().__init__()
        if initial < 0:
            raise ValueError(f"the initial Lagrange multiplier must be >= 0, got {initial}")
        self.value = nn.Parameter(torch.tensor(float(initial)))

    def forward(self) -> torch.Tensor:
        return self.value

    @torch.no_grad()
    def project_(self) -> None:
        self.value.clamp_(min=0.0)


class TD3C(TD3):
    OPTIONS = {"epsilon": positive_number(), "initial_multiplier": positive_number(),
               "multiplier_lr": positive_number()}
    step_prefix = "td3_c"
    _state_attrs = TD3._state_attrs + ("multiplier",)

    def __init__(self, *args, epsilon: float = 1e-5, initial_multiplier: float = 1.0,
                 multiplier_lr: float = 1e-2, **kwargs):
        super().__init__(*args, **kwargs)
        self.epsilon = float(epsilon)
        self.multiplier = LagrangeMultiplier(initial_multiplier).to(self.device)
        # the multiplier is stepped with the actor (same loss, same delay), at its own rate
        self.actor_optimizer.add_param_group({"params": list(self.multiplier.parameters()),
                                              "lr": float(multiplier_lr)})

    def constraint(self, obs: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """c = E_s ||pi(s) - pi_target(s)||^2."""
        with torch.no_grad():
            anchor = self.actor_target(obs)
        return ((pi - anchor) ** 2).sum(-1).mean()

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The Lagrangian for the actor and the multiplier (see top); logged: the constraint c,
        lambda and the MSE of pi(s) to the batch's actions."""
        pi = self.actor(batch.observations)
        c = self.constraint(batch.observations, pi)
        lam = self.multiplier()
        loss = (self.policy_loss(batch.observations, pi) + lam.detach() * (c - self.epsilon)
                + lam * (self.epsilon - c.detach()))
        return loss, {"bc_loss": ((pi.detach() - batch.actions) ** 2).mean(),
                      "constraint": c.detach(), "multiplier": lam.detach()}

    def step_actor(self, loss: torch.Tensor) -> None:
        """The actor and multiplier step, then the projection back to lambda >= 0."""
        super().step_actor(loss)
        self.multiplier.project_()
