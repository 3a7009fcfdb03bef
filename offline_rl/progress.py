"""Where a sweep stands, read from its MLflow store: each job's status, update step of its
planned total and current rate, and for the sweep runs finished / running / waiting / failed,
updates done of the total, the best score so far and an ETA from the measured rates.

``python -m analysis progress --sweep efficiency`` prints it; the sweeper prints the one-line form
in the launching terminal while its jobs run.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from typing import Sequence

from offline_rl.metric_names import SCORE

#: metric whose history gives a job's step and rate (every phase logs losses at log points)
RATE_WINDOW = 10  # log points the current rate is measured over
#: a RUNNING job that logged nothing for this long, and for SILENT_INTERVALS of its own intervals
#: between log points, is reported silent: a killed process leaves its run RUNNING in the store
SILENT_AFTER_S = 600
SILENT_INTERVALS = 10
#: an interval between log points longer than this many median ones counts as that many: a
#: pause, not work (a job's rate here, a run's compute time on the results page)
PAUSE_INTERVALS = 3


@dataclass
class JobProgress:
    name: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED
    step: int  # update steps done (pre-training included)
    total: int  # planned update steps (pre-training at its cap until it stopped)
    rate: float | None  # updates/s over its last log points (running jobs)
    score: float | None  # its last evaluation
    error: str | None = None
    silent_s: float | None = None  # RUNNING but nothing logged for this long: its process is gone?

    @property
    def live(self) -> bool:
        return self.status == "RUNNING" and self.silent_s is None


@dataclass
class SweepProgress:
    name: str
    parent_run_id: str
    jobs: int  # the grid's jobs
    children: list[JobProgress]

    def count(self, *statuses: str) -> int:
        return sum(1 for c in self.children if c.status in statuses)

    @property
    def waiting(self) -> int:
        return max(self.jobs - len(self.children), 0)

    @property
    def done_updates(self) -> int:
        return sum(c.step for c in self.children)

    def total_updates(self) -> int:
        """Planned updates of the jobs started; a job not started counts as the mean of those."""
        planned = [c.total for c in self.children]
        mean = sum(planned) / len(planned) if planned else 0
        return int(sum(planned) + self.waiting * mean)

    @property
    def silent(self) -> list[JobProgress]:
        return [c for c in self.children if c.status == "RUNNING" and c.silent_s is not None]

    @property
    def rate(self) -> float:
        return sum(c.rate or 0.0 for c in self.children if c.live)

    def eta_seconds(self) -> float | None:
        """The updates left over the sweep's rate, and no sooner than its slowest running job can
        finish at its own rate (at the end of a sweep one job may run alone)."""
        left = self.total_updates() - sum(c.total if c.status == "FINISHED" else c.step
                                          for c in self.children)
        if self.rate <= 0:
            return None
        slowest = max(((c.total - c.step) / c.rate for c in self.children if c.live and c.rate),
                      default=0.0)
        return max(left / self.rate, slowest)

    def best(self) -> JobProgress | None:
        scored = [c for c in self.children if c.score is not None]
        return max(scored, key=lambda c: c.score) if scored else None

    def line(self) -> str:
        total = self.total_updates()
        eta = self.eta_seconds()
        best = self.best()
        silent = self.silent
        parts = [f"{self.count('FINISHED')}/{self.jobs} finished, {self.count('RUNNING') - len(silent)} running, "
                 f"{self.waiting} waiting, {self.count('FAILED', 'KILLED')} failed"]
        if silent:
            parts.append(f"{len(silent)} silent (RUNNING in the store, nothing logged for "
                         f"{format_seconds(min(c.silent_s for c in silent))} or more: their processes are "
                         "gone? the sweep's command started again continues them)")
        parts.append(f"{self.done_updates / 1e6:.2f}M of {total / 1e6:.2f}M updates "
                     f"({100 * self.done_updates / max(total, 1):.0f}%)")
        if self.rate:
            parts.append(f"{self.rate:.0f} updates/s")
        if eta is not None:
            parts.append(f"ETA {format_seconds(eta)}")
        if best is not None:
            parts.append(f"best score so far {best.score:.1f} ({best.name})")
        return f"sweep '{self.name}': " + "; ".join(parts)

    def table(self) -> list[str]:
        rows = ["| job | status | updates | of | rate (upd/s) | last score | note |",
                "|---|---|---|---|---|---|---|"]
        for c in sorted(self.children, key=lambda c: c.name):
            status = c.status if c.silent_s is None else f"{c.status}, silent {format_seconds(c.silent_s)}"
            rows.append(f"| {c.name} | {status} | {c.step:,} | {c.total:,} | "
                        f"{'' if c.rate is None or not c.live else f'{c.rate:.0f}'} | "
                        f"{'' if c.score is None else f'{c.score:.1f}'} | {(c.error or '')[:120]} |")
        return rows


def format_seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _planned(params: dict[str, str], metrics: dict[str, float], plan: str | None = None,
             current: str | None = None) -> int:
    """Planned update steps: every phase at its planned length (the run's ``phase_plan`` tag;
    pre-training at its cap) until it ended (then what it ran) -- a phase ended only if it comes
    before ``current``, the phase the run is in (none: finished): a run continued to a larger
    budget still has the end its offline phase had before. Runs from before that tag: the offline
    updates plus one pre-training cap per phase started (one if none has)."""
    started, ended = _phase_marks(metrics, "phase_start/"), _phase_marks(metrics, "phase_end/")
    if plan:
        phases = json.loads(plan)
        order = list(phases)
        done = order[:order.index(current)] if current in order else order
        return sum(int(ended[p] - started[p]) if p in done and p in ended and p in started else int(steps)
                   for p, steps in phases.items())
    updates = int(float(params.get("updates", 0)))
    steps = int(float(params.get("pretrain.steps", 0)))
    started = {p: v for p, v in started.items() if p.startswith("pretrain")}
    pretrain = sum(int(ended[p] - start) if p in ended else steps for p, start in started.items())
    scheme = params.get("pretrain._target_", "").rsplit(".", 1)[-1]
    if not started and scheme not in ("", "NoPretraining", "QTMax"):  # not begun: one phase's cap
        pretrain = steps
    return updates + pretrain


def _phase_marks(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """``phase_start/<phase>`` (or ``phase_end/``) metrics: the global step by phase."""
    return {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(prefix)}


def silent_seconds(history, now: float) -> float | None:
    """How long a RUNNING job has logged nothing, if longer than SILENT_AFTER_S and than
    SILENT_INTERVALS of its recent intervals between log points; None while it is alive."""
    if not history:
        return None
    quiet = now - history[-1].timestamp / 1e3
    stamps = [m.timestamp / 1e3 for m in history[-RATE_WINDOW:]]
    if len(stamps) < 3:  # no pace to measure yet (a slow job's first log points): an hour
        return quiet if quiet > max(SILENT_AFTER_S, 3600) else None
    interval = statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    return quiet if quiet > max(SILENT_AFTER_S, SILENT_INTERVALS * interval) else None


def without_pauses(seconds: Sequence[float]) -> list[float]:
    """Durations between log points, each capped at PAUSE_INTERVALS median ones: a process dead
    for hours (a killed sweep, continued later) or stopped (SIGSTOP while tests ran) counts as a
    few intervals, not as work."""
    seconds = [max(s, 0.0) for s in seconds]
    cap = PAUSE_INTERVALS * statistics.median(seconds) if seconds else 0.0
    return [min(s, cap) for s in seconds]


def recent_rate(points) -> float | None:
    """Updates/s over these log points, evaluations and checkpoints included, every interval
    capped at PAUSE_INTERVALS of the median one: a gap while the job's process was dead (a killed
    sweep, continued hours later) or stopped (SIGSTOP while tests ran) is not slow work."""
    intervals = [(b.step - a.step, (b.timestamp - a.timestamp) / 1e3)
                 for a, b in zip(points, points[1:]) if b.timestamp > a.timestamp and b.step > a.step]
    if not intervals:
        return None
    return sum(steps for steps, _ in intervals) / sum(without_pauses([s for _, s in intervals]))


def job_progress(client, run, now: float | None = None) -> JobProgress:
    """One child run's progress, from its params, latest metrics and one loss history."""
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    name = tags.get("mlflow.runName", run.info.run_id)
    phase = tags.get("phase", "")  # the phase it is in (or ended in): its losses are the newest
    keys = sorted(k for k in metrics if k.endswith("loss") and k.startswith(f"{phase}/"))
    step, rate, silent = 0, None, None
    if keys:
        history = sorted(client.get_metric_history(run.info.run_id, keys[0]), key=lambda m: m.step)
        if history:
            step = history[-1].step
            if run.info.status == "RUNNING":
                rate = recent_rate(history[-RATE_WINDOW:])
                silent = silent_seconds(history, time.time() if now is None else now)
    total = _planned({**params, **({"updates": tags["updates"]} if "updates" in tags else {})}, metrics,
                     tags.get("phase_plan"), phase if run.info.status == "RUNNING" else None)
    if run.info.status == "FINISHED":
        step = total = max(step, total)
    return JobProgress(name, run.info.status, int(step), int(total), rate, metrics.get(SCORE),
                       tags.get("error") or tags.get("killed"), silent)


def sweep_progress(client, experiment_id: str, parent_run_id: str, now: float | None = None) -> SweepProgress:
    """The sweep of ``parent_run_id``: its children's progress (the latest attempt of each job)."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=10000, order_by=["attributes.start_time DESC"])
    latest: dict[str, object] = {}
    for run in runs:  # newest first: a job's latest attempt, a FINISHED one if any
        key = run.data.tags.get("run_identity", run.info.run_id)
        if key not in latest or (run.info.status == "FINISHED" and latest[key].info.status != "FINISHED"):
            latest[key] = run
    jobs = int(float(parent.data.params.get("sweep.jobs", len(latest))))
    return SweepProgress(parent.data.tags.get("mlflow.runName", parent_run_id), parent_run_id, jobs,
                         [job_progress(client, run, now) for run in latest.values()])


def find_parent(client, experiment_id: str, sweep: str) -> str | None:
    """The newest parent run of the sweep named ``sweep``."""
    runs = client.search_runs([experiment_id], f"tags.sweep = '{sweep}' and tags.`sweep.role` = 'parent'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None

