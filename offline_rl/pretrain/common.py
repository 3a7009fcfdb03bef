"""What the pre-training schemes share: the supervised losses of Algorithms 1 and 2, the soft
returns-to-go of Eq. 19, the stop-at-convergence rule, and the options every scheme understands.

Each scheme (one module each) only chooses which of these phases to run, in which order.
"""

from __future__ import annotations

import abc
from typing import Any, Callable

import torch

from offline_rl.algo.base import TargetTransform
from offline_rl.algo.losses import bc_loss, cql_penalty, mc_loss, normalised, soft_bc_loss, td_loss
from offline_rl.dataset.episodes import discounted_cumsum
from offline_rl.dataset.replay import Batch, ReplayBuffer
from offline_rl.errors import ConfigError
from offline_rl.options import Rule, boolean, int_at_least, non_negative, number_in
from offline_rl.training.loop import Phase

# ----- the critic's supervised loss ------------------------------------------------------------


def critic_pretrain_loss(algo, batch: Batch, returns: torch.Tensor, td_lambda: float,
                         cql_weight: float, cql_n_actions: int) -> tuple[torch.Tensor, dict]:
    """The critic's supervised loss: MC regression, optionally mixed with TD(0) (Eq. 17) and a
    CQL regulariser, plus the algorithm's own critic regulariser (EDAC's diversity term, kept on
    so the ensemble does not collapse, section 6.1).

    Eq. 17 mixes the targets, (1 - lambda) R + lambda (r + gamma Q'). Like the paper's reference
    code we mix the two *losses* instead, each divided by its own detached magnitude:
    (1 - lambda) L_MC / |L_MC| + lambda L_TD / |L_TD|, so lambda weighs the two terms' gradients
    independently of their scales. The CQL term is combined the same way (Eq. 21).
    """
    q, regulariser = algo.critic_values(batch)
    mc = mc_loss(algo, q, returns)
    metrics = {"mc_loss": mc.detach()}
    loss = mc
    if td_lambda > 0:
        td = td_loss(q, algo.td_target(batch))
        loss = (1 - td_lambda) * normalised(mc) + td_lambda * normalised(td)
        metrics["td_loss"] = td.detach()
    if cql_weight > 0:
        cql = cql_penalty(algo, batch, q, cql_n_actions)
        loss = normalised(loss) + cql_weight * normalised(cql)
        metrics["cql_penalty"] = cql.detach()
    if algo.critic_regulariser_weight > 0:
        loss = loss + algo.critic_regulariser_weight * regulariser
        metrics["diversity_loss"] = regulariser.detach()
    if algo.has_value_network:  # V(s) on the same returns (IQL's V; its own parameters)
        value_mc = ((algo.value(batch.observations) - returns) ** 2).mean()
        loss = loss + value_mc
        metrics["value_mc_loss"] = value_mc.detach()
    return loss, metrics


# ----- soft returns-to-go (Eq. 19) -------------------------------------------------------------


@torch.no_grad()
def soft_returns_to_go(algo, observations: torch.Tensor, rewards: torch.Tensor,
                       terminals: torch.Tensor, timeouts: torch.Tensor, gamma: float,
                       bootstrap_timeouts: bool, chunk: int = 65536) -> torch.Tensor:
    """R_t = sum_n gamma^n r_{t+n} + alpha sum_{n>=1} gamma^n H(pi(.|s_{t+n})), Eq. 19.

    H(pi(.|s)) is estimated by -log pi(a~|s) with one a~ ~ pi(s) per state (as the reference code
    does); the actor runs over the whole dataset in large chunks on the device, and both sums are
    log-depth scans (no loop over transitions). With ``bootstrap_timeouts`` the last reward and
    entropy bonus of a time-limited episode are completed as x / (1 - gamma).
    """
    entropy = torch.cat([-algo.actor(obs, need_log_prob=True)[1]
                         for obs in torch.split(observations, chunk)]).double()
    rewards = rewards.double()
    if bootstrap_timeouts:
        rewards = torch.where(timeouts, rewards / (1 - gamma), rewards)
        entropy = torch.where(timeouts, entropy / (1 - gamma), entropy)
    ends = terminals | timeouts
    reward_returns = discounted_cumsum(rewards, ends, gamma)
    entropy_returns = discounted_cumsum(entropy, ends, gamma) - entropy  # future steps only
    return (reward_returns + algo.entropy_temperature.double() * entropy_returns).float()


# ----- stopping at convergence -----------------------------------------------------------------


class Convergence:
    """Stop when every monitored supervised loss has plateaued: the mean over the last ``window``
    updates improved on the mean over the ``window`` before it by less than ``tolerance``
    (relative). Checked at each log point; the phase's ``steps`` stays the cap."""

    def __init__(self, metrics: list[str], window: int, tolerance: float):
        self.metrics, self.window, self.tolerance = metrics, int(window), float(tolerance)
        self.history: list[tuple[int, dict[str, float]]] = []

    def _mean(self, key: str, low: int, high: int) -> float | None:
        values = [m[key] for step, m in self.history if low < step <= high and key in m]
        return sum(values) / len(values) if values else None

    def plateaued(self, key: str, step: int) -> bool:
        current = self._mean(key, step - self.window, step)
        previous = self._mean(key, step - 2 * self.window, step - self.window)
        if current is None or previous is None:
            return False
        improvement = (previous - current) / max(abs(previous), 1e-12)
        return improvement < self.tolerance

    def __call__(self, step: int, means: dict[str, float]) -> bool:
        self.history.append((step, means))
        if step < 2 * self.window:
            return False
        return all(self.plateaued(key, step) for key in self.metrics)


# ----- the scheme base -------------------------------------------------------------------------


class Scheme(abc.ABC):
    """Options every pre-training scheme understands (YAML keys in conf/pretrain/*.yaml):

    steps               updates per pre-training phase (the cap when ``until: converged``)
    until               null (run ``steps``) or ``converged`` (stop at the loss plateau)
    window, tolerance   the plateau rule: mean loss over the last ``window`` updates improved by
                        less than ``tolerance`` (relative) on the window before
    lambda              the paper's lambda (Eq. 17): TD(0) share of the critic's targets
    cql_weight          CQL value regulariser during critic pre-training (section 5.2), 0 = off
    cql_n_actions       random actions per state for the CQL logsumexp
    bootstrap_timeouts  complete a time-limited episode's return with r / (1 - gamma), as the
                        paper's reference code does in its hard and soft pre-training alike
    """

    #: conf/pretrain_options.yaml's keys (offline_rl/options.py)
    OPTIONS = {"steps": int_at_least(1),
               "until": Rule(lambda v: v in (None, "converged"), "null or 'converged'"),
               "window": int_at_least(1), "tolerance": non_negative(), "lambda": number_in(0.0, 1.0),
               "cql_weight": non_negative(), "cql_n_actions": int_at_least(1),
               "bootstrap_timeouts": boolean()}
    #: which actors the scheme fits: "deterministic", "stochastic" or "any"
    actor_kind = "any"
    needs_critic = True
    suggestion = ""
    #: how the scheme reshapes the algorithm's TD targets throughout training (QT-max), given to
    #: the algorithm as it is built; None: the algorithm's own targets
    target_transform: TargetTransform | None = None

    def __init__(self, steps: int = 50000, until: str | None = "converged", window: int = 5000,
                 tolerance: float = 0.01, cql_weight: float = 0.0, cql_n_actions: int = 10,
                 bootstrap_timeouts: bool = True, **options: Any):
        # ``lambda`` is a Python keyword, so it arrives through **options; the values are
        # checked with the rest of the config (offline_rl.config)
        self.td_lambda = float(options.pop("lambda", 0.0))
        if options:
            raise TypeError(f"{type(self).__name__}: unexpected option(s) {sorted(options)}")
        self.steps, self.until, self.window, self.tolerance = steps, until, window, tolerance
        self.cql_weight, self.cql_n_actions = float(cql_weight), cql_n_actions
        self.bootstrap_timeouts = bool(bootstrap_timeouts)

    @property
    def name(self) -> str:
        return type(self).__module__.rsplit(".", 1)[-1]

    def check(self, algo) -> None:
        """Reject algorithm/scheme pairs that make no sense, saying why and what to use."""
        algo_name = algo.__name__ if isinstance(algo, type) else type(algo).__name__
        if self.needs_critic and not algo.has_critic:
            raise ConfigError(f"pretrain={self.name} pre-trains a critic, but {algo_name} has none; "
                              f"use pretrain=none (BC is itself supervised learning)")
        if self.actor_kind == "deterministic" and algo.actor_kind != "deterministic":
            fit = f"use {self.suggestion} (Algorithm 2)" if algo.entropy_regularised else "use pretrain=none"
            raise ConfigError(f"pretrain={self.name} is hard pre-training (Algorithm 1) of a "
                              f"deterministic actor, but {algo_name}'s actor is {algo.actor_kind}; {fit}")
        if self.actor_kind == "stochastic" and not algo.entropy_regularised:
            if algo.actor_kind == "deterministic":
                kind, fit = "deterministic", f"use {self.suggestion} (Algorithm 1)"
            else:
                kind, fit = "stochastic but has no entropy temperature", "use pretrain=none"
            raise ConfigError(f"pretrain={self.name} is soft pre-training (Algorithm 2) of a "
                              f"stochastic, entropy-regularised agent, but {algo_name}'s actor is "
                              f"{kind}; {fit}")

    def supervised_phase(self, name: str, update: Callable[[], dict], monitored: list[str], **hooks) -> Phase:
        stop = Convergence(monitored, self.window, self.tolerance) if self.until == "converged" else None
        return Phase(name, update, self.steps, stop=stop, snapshot=True, **hooks)

    # ----- phase updates ------------------------------------------------------------------------
    # Each phase's update samples a batch (eagerly: the replay's generator, into the buffers of
    # its ``replay.sampler``) and runs one step
    # function through ``algo.run_step``, which compiles it (training/compiled.py) when the run
    # asks for it and the phase is long enough (``planned``: its configured length).
    def actor_update(self, algo, replay: ReplayBuffer, batch_size: int) -> Callable[[], dict]:
        """Hard BC of the actor (Algorithm 1), actor target Polyak-averaged."""

        def step(batch: Batch) -> dict[str, torch.Tensor]:
            loss = bc_loss(algo, batch)
            algo.step_actor(loss)
            algo.update_actor_target()
            return {"bc_loss": loss.detach()}

        sample = replay.sampler(batch_size)

        def update() -> dict[str, torch.Tensor]:
            return algo.run_step("pretrain.actor", step, sample(), planned=self.steps)

        return update

    def soft_actor_update(self, algo, replay: ReplayBuffer, batch_size: int) -> Callable[[], dict]:
        """Soft BC of the tanh-Gaussian actor (Eq. 20), with alpha learned as in the algorithm."""

        def step(batch: Batch) -> dict[str, torch.Tensor]:
            alpha_loss, _ = algo.alpha_loss(batch)
            algo.step_temperature(alpha_loss)
            loss = soft_bc_loss(algo, batch)
            algo.step_actor(loss)
            return {"soft_bc_loss": loss.detach(), "alpha_loss": alpha_loss.detach(),
                    "alpha": algo.entropy_temperature}

        sample = replay.sampler(batch_size)

        def update() -> dict[str, torch.Tensor]:
            return algo.run_step("pretrain.soft_actor", step, sample(), planned=self.steps)

        return update

    def critic_update(self, algo, replay: ReplayBuffer, batch_size: int) -> Callable[[], dict]:
        """Critic regression on the replay's (soft) returns-to-go, critic target Polyak-averaged."""

        def step(batch: Batch) -> dict[str, torch.Tensor]:
            loss, metrics = critic_pretrain_loss(algo, batch, batch.returns_to_go, self.td_lambda,
                                                 self.cql_weight, self.cql_n_actions)
            algo.step_critic(loss)
            algo.update_critic_target()
            # the parts, not the sum: with lambda or CQL the terms are each divided by their own
            # value, so the sum is a constant (1, or 1 ± the CQL weight) that says nothing
            return metrics

        sample = replay.sampler(batch_size)

        def update() -> dict[str, torch.Tensor]:
            return algo.run_step("pretrain.critic", step, sample(), planned=self.steps)

        return update

    def use_soft_returns(self, algo, replay: ReplayBuffer) -> Callable[..., dict]:
        """A phase hook that replaces the replay's returns-to-go by soft ones from the current
        actor (it needs no evaluation)."""

        def compute(evaluate=None) -> dict[str, float]:
            data = replay.all()
            soft = soft_returns_to_go(algo, data.observations, data.rewards, data.dones.bool(),
                                      replay.timeouts[: replay.size], algo.gamma,
                                      self.bootstrap_timeouts)
            replay.storage["returns_to_go"][: replay.size] = soft
            return {"soft_returns_mean": float(soft.mean())}

        return compute

    @abc.abstractmethod
    def phases(self, algo, replay: ReplayBuffer, batch_size: int) -> list[Phase]:
        """The phases to run before offline RL, in order."""
