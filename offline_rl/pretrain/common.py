"""What the pre-training schemes share: the supervised losses of Algorithms 1 and 2, the soft
returns-to-go of Eq. 19, the stop-at-convergence rule, and the options every scheme understands.

Each scheme (one module each) only chooses which of these phases to run, in which order.
"""

from __future__ import annotations

import abc
from typing import Any, Callable

import torch
from torch.nn import functional as F

from offline_rl.algo.common import minimise, polyak_update
from offline_rl.dataset.episodes import discounted_cumsum
from offline_rl.dataset.replay import Batch, ReplayBuffer
from offline_rl.errors import ConfigError
from offline_rl.training.loop import Phase

# ----- losses ----------------------------------------------------------------------------------


def bc_loss(algo, batch: Batch) -> torch.Tensor:
    """Algorithm 1's behaviour cloning: E[(pi(s) - a)^2]."""
    return F.mse_loss(algo.actor(batch.observations), batch.actions)


def soft_bc_loss(algo, batch: Batch) -> torch.Tensor:
    """Eq. 20: E_{s,a ~ D, a~ ~ pi}[alpha log pi(a~|s) - log pi(a|s)]."""
    _, log_prob_sampled = algo.actor(batch.observations, need_log_prob=True)
    log_prob_data = algo.actor.log_prob(batch.observations, batch.actions)
    return (algo.alpha * log_prob_sampled - log_prob_data).mean()


def mc_loss(algo, q: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """E[(Q(s, a) - R)^2] for every critic of the ensemble, reduced over the members as the
    reference code does for this algorithm (TD3+BC: summed, EDAC: averaged)."""
    per_member = ((q - returns.unsqueeze(0)) ** 2).mean(1)
    return per_member.sum() if algo.mc_member_reduction == "sum" else per_member.mean()


def td_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The algorithms' own TD(0) critic loss: summed over members of the per-member MSE."""
    return ((q - target.unsqueeze(0)) ** 2).mean(1).sum()


def cql_penalty(algo, batch: Batch, q: torch.Tensor, n_actions: int) -> torch.Tensor:
    """CQL's value regulariser with uniform random actions (section 5.2):
    logsumexp_k Q(s, a_k) - Q(s, a), per critic for the TD3 family (as the reference code's
    td3_bc.py) or on the ensemble minimum for EDAC (this project's choice: the reference EDAC has
    no CQL)."""
    obs, act = batch.observations, batch.actions
    random_actions = torch.empty(n_actions * act.shape[0], act.shape[1], device=act.device).uniform_(-1, 1)
    q_random = algo.critic(obs.repeat(n_actions, 1), random_actions)  # [N, n_actions * B]
    q_random = q_random.reshape(q.shape[0], n_actions, q.shape[1])
    if algo.cql_on_min_q:
        return (torch.logsumexp(q_random.min(0).values, dim=0) - q.min(0).values).mean()
    return (torch.logsumexp(q_random, dim=1) - q).mean(1).sum()


def normalised(loss: torch.Tensor) -> torch.Tensor:
    """loss / |loss| with the magnitude detached (Eq. 21, as TD3+BC balances its terms)."""
    return loss / loss.detach().abs().clamp_min(1e-8)


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
    if getattr(algo, "eta", 0) > 0:
        loss = loss + algo.eta * regulariser
        metrics["diversity_loss"] = regulariser.detach()
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
    return (reward_returns + algo.alpha.double() * entropy_returns).float()


# ----- stopping at convergence -----------------------------------------------------------------


class Convergence:
    """Stop when every monitored supervised loss has plateaued: the mean over the last ``window``
    updates improved on the mean over the ``window`` before it by less than ``tolerance``
    (relative). Checked at each log point; the phase's ``steps`` stays the cap."""

    def __init__(self, metrics: list[str], window: int, tolerance: float):
        self.metrics, self.window, self.tolerance = metrics, int(window), float(tolerance)
        self.history: list[tuple[int, dict[str, float]]] = []
        self.stopped_at: int | None = None

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
        if all(self.plateaued(key, step) for key in self.metrics):
            self.stopped_at = step
            return True
        return False


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

    #: which actors the scheme fits: "deterministic", "stochastic" or "any"
    actor_kind = "any"
    needs_critic = True
    suggestion = ""

    def __init__(self, steps: int = 50000, until: str | None = "converged", window: int = 5000,
                 tolerance: float = 0.01, cql_weight: float = 0.0, cql_n_actions: int = 10,
                 bootstrap_timeouts: bool = True, **options: Any):
        # ``lambda`` is a Python keyword, so it arrives through **options
        self.td_lambda = float(options.pop("lambda", 0.0))
        if options:
            raise ConfigError(f"pretrain: unknown option(s) {sorted(options)}; allowed: steps, until, "
                              f"window, tolerance, lambda, cql_weight, cql_n_actions, bootstrap_timeouts")
        if until not in (None, "converged"):
            raise ConfigError(f"pretrain.until={until!r} is not allowed: expected null or 'converged'")
        checks = [("steps", steps, isinstance(steps, int) and steps >= 1, "an integer >= 1"),
                  ("window", window, isinstance(window, int) and window >= 1, "an integer >= 1"),
                  ("tolerance", tolerance, tolerance >= 0, "a number >= 0"),
                  ("lambda", self.td_lambda, 0.0 <= self.td_lambda <= 1.0, "a number in [0, 1]"),
                  ("cql_weight", cql_weight, cql_weight >= 0, "a number >= 0"),
                  ("cql_n_actions", cql_n_actions, isinstance(cql_n_actions, int) and cql_n_actions >= 1,
                   "an integer >= 1")]
        for key, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"pretrain.{key}={value!r} is not allowed: expected {allowed}")
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
        if self.actor_kind == "deterministic" and algo.stochastic_actor:
            raise ConfigError(f"pretrain={self.name} is hard pre-training (Algorithm 1) of a "
                              f"deterministic actor, but {algo_name} has a tanh-Gaussian actor with "
                              f"an entropy-regularised critic; use {self.suggestion} (Algorithm 2)")
        if self.actor_kind == "stochastic" and not algo.stochastic_actor:
            raise ConfigError(f"pretrain={self.name} is soft pre-training (Algorithm 2) of a "
                              f"stochastic, entropy-regularised agent, but {algo_name}'s actor is "
                              f"deterministic; use {self.suggestion} (Algorithm 1)")

    def phase(self, name: str, update: Callable[[], dict], monitored: list[str], **hooks) -> Phase:
        stop = Convergence(monitored, self.window, self.tolerance) if self.until == "converged" else None
        return Phase(name, update, self.steps, stop=stop, snapshot=True, **hooks)

    # ----- phase updates ------------------------------------------------------------------------
    # Each phase's update samples a batch (eagerly: the replay's generator) and runs one step
    # function through ``algo.run_step``, which compiles it (training/compiled.py) when the run
    # asks for it and the phase is long enough (``planned``: its configured length).
    def actor_update(self, algo, replay: ReplayBuffer, batch_size: int) -> Callable[[], dict]:
        """Hard BC of the actor (Algorithm 1), actor target Polyak-averaged."""

        def step(batch: Batch) -> dict[str, torch.Tensor]:
            loss = bc_loss(algo, batch)
            minimise(loss, algo.actor_optimizer)
            if hasattr(algo, "actor_target"):
                polyak_update(algo.actor_target, algo.actor, algo.tau)
            return {"bc_loss": loss.detach()}

        def update() -> dict[str, torch.Tensor]:
            return algo.run_step("pretrain.actor", step, replay.sample(batch_size), planned=self.steps)

        return update

    def soft_actor_update(self, algo, replay: ReplayBuffer, batch_size: int) -> Callable[[], dict]:
        """Soft BC of the tanh-Gaussian actor (Eq. 20), with alpha learned as in the algorithm."""

        def step(batch: Batch) -> dict[str, torch.Tensor]:
            alpha_loss = algo.alpha_loss(batch.observations)
            minimise(alpha_loss, algo.alpha_optimizer)
            loss = soft_bc_loss(algo, batch)
            minimise(loss, algo.actor_optimizer)
            return {"soft_bc_loss": loss.detach(), "alpha_loss": alpha_loss.detach(),
                    "alpha": algo.alpha}

        def update() -> dict[str, torch.Tensor]:
            return algo.run_step("pretrain.soft_actor", step, replay.sample(batch_size), planned=self.steps)

        return update

    def critic_update(self, algo, replay: ReplayBuffer, batch_size: int) -> Callable[[], dict]:
        """Critic regression on the replay's (soft) returns-to-go, critic target Polyak-averaged."""

        def step(batch: Batch) -> dict[str, torch.Tensor]:
            loss, metrics = critic_pretrain_loss(algo, batch, batch.returns_to_go, self.td_lambda,
                                                 self.cql_weight, self.cql_n_actions)
            minimise(loss, algo.critic_optimizer)
            polyak_update(algo.critic_target, algo.critic, algo.tau)
            return {"critic_loss": loss.detach(), **metrics}

        def update() -> dict[str, torch.Tensor]:
            return algo.run_step("pretrain.critic", step, replay.sample(batch_size), planned=self.steps)

        return update

    def use_soft_returns(self, algo, replay: ReplayBuffer) -> Callable[[], dict]:
        """A hook that replaces the replay's returns-to-go by soft ones from the current actor."""

        def compute() -> dict[str, float]:
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
