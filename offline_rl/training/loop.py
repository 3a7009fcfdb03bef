"""The one training loop: every algorithm and every phase (pre-training, offline RL, online
fine-tuning) is a sequence of ``Phase``s, each a function doing one gradient update.

The x-axis of every metric is the count of all gradient updates so far, pre-training included
(the paper's Fig. 2). Losses stay on the device (training/metrics.py: one vector per update, kept
as it came) and are read back once every ``log_every`` updates, which is also where non-finite
losses are caught, with the exact step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from offline_rl.metric_names import SCORE
from offline_rl.training.metrics import MetricWindow

UpdateFn = Callable[[], dict[str, torch.Tensor]]


Evaluate = Callable[[], dict[str, float]]  # the loop's evaluation of the acting agent, now
Hook = Callable[[Evaluate | None], dict[str, float] | None]


@dataclass
class Phase:
    """``steps`` calls of ``update``. ``stop`` (optional) is asked at every log point with the
    window's mean metrics and may end the phase early (convergence); ``on_start`` / ``on_end``
    run before / after it, given the loop's ``hook_evaluation`` (None without evaluation), and may
    return metrics to log. With ``snapshot``, the phase's last losses and an evaluation of the
    policy at its end are logged as ``<phase>/final/...``. ``counters`` (optional) gives values
    logged as they are at every log point (not averaged over the window: environment steps so
    far, replay size); ``agent`` (optional) is the algorithm evaluations use during and after this
    phase (online fine-tuning trains its own; default: the trainer's)."""

    name: str
    update: UpdateFn
    steps: int
    stop: Callable[[int, dict[str, float]], bool] | None = None
    snapshot: bool = False
    on_start: Hook | None = None
    on_end: Hook | None = None
    counters: Callable[[], dict[str, float]] | None = None
    agent: Any = None


@dataclass
class LoopState:
    """Where the loop is: enough to resume exactly."""

    global_step: int = 0
    phase_index: int = 0
    phase_step: int = 0
    last_eval: dict[str, float] = field(default_factory=dict)
    evaluated_at: tuple[int, int] | None = None  # (global step, phase) of ``last_eval``
    phase_lengths: dict[int, int] = field(default_factory=dict)  # phases that stopped early


class Interrupted(Exception):
    """Raised by the loop after it wrote a checkpoint because an interrupt (a signal) asked it to
    stop: the run is not over, it will be resumed from that checkpoint."""

    def __init__(self, reason: str, global_step: int):
        super().__init__(f"interrupted at update step {global_step}: {reason}")
        self.reason, self.global_step = reason, global_step


def _stop_state(stop: Any) -> dict[str, Any] | None:
    """What a phase's stop rule remembers (Convergence: the loss history), for checkpoints."""
    if stop is None:
        return None
    if hasattr(stop, "state_dict"):
        return stop.state_dict()
    if hasattr(stop, "__dict__"):
        return dict(vars(stop))
    return None


def _load_stop_state(stop: Any, state: dict[str, Any] | None) -> None:
    if stop is None or state is None:
        return
    if hasattr(stop, "load_state_dict"):
        stop.load_state_dict(state)
    else:
        vars(stop).update(state)


class Trainer:
    """Runs the phases in order, and owns the two things every phase shares:

    evaluation  ``evaluate_agent(agent)`` -- the acting phase's agent, else ``agent`` -- every
                ``eval_every`` updates, at the end of a ``snapshot`` phase, for phase hooks
                (``hook_evaluation``) and at the end; once per update step and phase whoever
                asks (``evaluate_now``), and never again for a step a checkpoint says was
                evaluated.
                ``after_evaluation(step, metrics)`` (optional) runs after each new evaluation.
    checkpoints ``checkpoint(trainer)`` every ``checkpoint_every`` updates (after that step's
                logging and evaluation) and when ``interrupt_requested`` is set (by a signal
                handler): then it raises ``Interrupted``.

    ``state_dict`` / ``load_state_dict`` hold everything the loop needs to continue exactly."""

    def __init__(self, phases: list[Phase], tracker,
                 evaluate_agent: Callable[[Any], dict[str, float]] | None, log_every: int,
                 eval_every: int, checkpoint: Callable[["Trainer"], None] | None = None,
                 checkpoint_every: int = 0, progress: bool = True, agent: Any = None,
                 after_evaluation: Callable[[int, dict[str, float]], None] | None = None):
        # evaluate_agent(agent) -> metrics: how an agent is evaluated (None: never)
        self.phases, self.tracker, self.agent = phases, tracker, agent
        self.evaluate_agent = evaluate_agent
        self.after_evaluation = after_evaluation
        self.log_every, self.eval_every = log_every, eval_every
        self.checkpoint, self.checkpoint_every = checkpoint, checkpoint_every
        self.progress = progress
        self.state = LoopState()
        self.window = MetricWindow()
        self.last: dict[str, float] = {}
        self.interrupt_requested: str | None = None  # a reason; set from a signal handler
        self._counters_step = -1  # the step whose counters were logged last (logged once a step)

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def hook_evaluation(self) -> Evaluate | None:
        """What phase hooks evaluate with: ``evaluate_now`` (None without an evaluator)."""
        return self.evaluate_now if self.evaluate_agent is not None else None

    def evaluate_now(self) -> dict[str, float]:
        """The acting agent's evaluation at this update step: computed once per step and phase."""
        index = min(self.state.phase_index, len(self.phases) - 1)
        key = (self.state.global_step, index)
        if self.state.evaluated_at != key:
            agent = self.phases[index].agent if self.phases and self.phases[index].agent is not None else self.agent
            metrics = self.evaluate_agent(agent)
            self.state.last_eval, self.state.evaluated_at = metrics, key
            if self.after_evaluation is not None:
                self.after_evaluation(self.state.global_step, metrics)
        return self.state.last_eval

    # ----- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "loop": {"global_step": self.state.global_step, "phase_index": self.state.phase_index,
                     "phase_step": self.state.phase_step, "last_eval": dict(self.state.last_eval),
                     "evaluated_at": (list(self.state.evaluated_at)
                                      if self.state.evaluated_at is not None else None),
                     "phase_lengths": {int(k): int(v) for k, v in self.state.phase_lengths.items()}},
            "window": self.window.state_dict(),
            "last": dict(self.last),
            "stops": {i: _stop_state(p.stop) for i, p in enumerate(self.phases) if p.stop is not None},
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        loop = state["loop"]
        self.state = LoopState(global_step=int(loop["global_step"]), phase_index=int(loop["phase_index"]),
                               phase_step=int(loop["phase_step"]), last_eval=dict(loop["last_eval"]),
                               evaluated_at=(tuple(int(v) for v in loop["evaluated_at"])
                                             if loop.get("evaluated_at") is not None else None),
                               phase_lengths={int(k): int(v) for k, v in loop["phase_lengths"].items()})
        self.window.load_state_dict(state["window"], device)
        self.last = dict(state["last"])
        for index, stop_state in state.get("stops", {}).items():
            _load_stop_state(self.phases[int(index)].stop, stop_state)

    # ----- logging -------------------------------------------------------------------------------
    def _log(self, window: MetricWindow, phase: Phase) -> dict[str, float]:
        means = window.read(phase.name)
        logged = dict(means)
        if phase.counters is not None and self._counters_step != self.state.global_step:
            logged.update(phase.counters())
            self._counters_step = self.state.global_step
        if logged:
            self.tracker.log_metrics({f"{phase.name}/{k}": v for k, v in logged.items()},
                                     self.state.global_step)
        return means

    def _evaluate_and_log(self, bar) -> None:
        if self.evaluate_agent is None:
            return
        metrics = self.evaluate_now()
        self.tracker.log_metrics(metrics, self.state.global_step)
        self.tracker.flush()
        if bar is not None and SCORE in metrics:
            bar.set_postfix(score=f"{metrics[SCORE]:.1f}", refresh=False)

    def _start_phase(self, phase: Phase) -> None:
        step = self.state.global_step
        self.tracker.set_tags({"phase": phase.name})
        metrics = {f"phase_start/{phase.name}": step}
        if phase.on_start is not None:
            metrics.update({f"{phase.name}/{k}": v
                            for k, v in (phase.on_start(self.hook_evaluation) or {}).items()})
        self.tracker.log_metrics(metrics, step)

    def _end_phase(self, phase: Phase, last: dict[str, float], stopped: bool) -> None:
        step = self.state.global_step
        summary = {f"phase_end/{phase.name}": step}
        if stopped:
            summary[f"{phase.name}/converged_at"] = self.state.phase_step
            self.tracker.set_tags({f"{phase.name}.converged_at": self.state.phase_step})
        if phase.on_end is not None:
            summary.update({f"{phase.name}/{k}": v
                            for k, v in (phase.on_end(self.hook_evaluation) or {}).items()})
        if phase.snapshot:
            summary.update({f"{phase.name}/final/{k}": v for k, v in last.items()})
            if self.evaluate_agent is not None:
                evaluation = self.evaluate_now()
                summary.update({f"{phase.name}/final/{k.split('/', 1)[-1]}": v
                                for k, v in evaluation.items()})
        self.tracker.log_metrics(summary, step)
        self.tracker.flush()

    def _maybe_checkpoint(self) -> None:
        if self.checkpoint is None:
            return
        interrupt = self.interrupt_requested
        if interrupt or (self.checkpoint_every and self.state.global_step % self.checkpoint_every == 0):
            self.checkpoint(self)
            if interrupt:
                raise Interrupted(interrupt, self.state.global_step)

    def run(self) -> LoopState:
        from tqdm.auto import tqdm

        state = self.state
        for index, length in state.phase_lengths.items():  # phases that stopped early, on resume
            self.phases[int(index)].steps = length
        bar = tqdm(total=self.total_steps, initial=state.global_step, unit="upd",
                   disable=not self.progress, dynamic_ncols=True, mininterval=1.0)
        window = self.window
        try:
            while state.phase_index < len(self.phases):
                phase = self.phases[state.phase_index]
                if state.phase_step == 0:
                    self._start_phase(phase)
                bar.set_description(phase.name, refresh=False)
                stopped = False
                while state.phase_step < phase.steps and not stopped:
                    window.add(phase.update(), state.global_step)
                    state.phase_step += 1
                    state.global_step += 1
                    if state.global_step % self.log_every == 0 or state.phase_step == phase.steps:
                        self.last = self._log(window, phase) or self.last
                        bar.update(state.global_step - bar.n)
                        if phase.stop is not None and phase.stop(state.phase_step, self.last):
                            stopped = True
                    if self.eval_every and state.global_step % self.eval_every == 0:
                        self._evaluate_and_log(bar)
                    if not stopped:  # a stop is replayed from the checkpoint before it
                        self._maybe_checkpoint()
                self.last = self._log(window, phase) or self.last
                if stopped:  # the phase's planned length shrinks to what it ran
                    bar.total -= phase.steps - state.phase_step
                    phase.steps = state.phase_step
                    state.phase_lengths[state.phase_index] = state.phase_step
                self._end_phase(phase, self.last, stopped)
                self.last = {}
                state.phase_index += 1
                state.phase_step = 0
            if self.evaluate_agent is not None and (not self.eval_every or state.global_step % self.eval_every):
                self._evaluate_and_log(bar)
        finally:
            bar.close()
            self.tracker.flush()
        return state
