"""The life of a tracked training run, written once for every run this package trains: an offline
RL run (offline_rl/run.py) and the behaviour run whose data becomes a local dataset
(offline_rl/generate/behaviour.py, then generate/datasets.py writes the datasets).

- ``resume_point``: whether a checkpoint folder is continued, from which checkpoint and into which
  MLflow run (a folder written for another store, or whose run is gone from it, starts afresh --
  or, for a run whose result does not depend on the store, continues into a new MLflow run; a
  corrupt newest checkpoint is reported and the one before it used).
- ``start_tracking``: the MLflow run started (or continued) and recorded in the folder's
  ``run.json``, so that the next process finds it.
- ``train_tracked``: the loop under the signal handlers, then what the run records at its end. A
  signal stops it after a checkpoint (reported, the MLflow run tagged, and KILLED unless something
  requeues it); ``ended_on_failure`` gives the MLflow run its status when anything else ends it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from offline_rl.errors import CheckpointError, NonFiniteLossError, Stopped, warn
from offline_rl.training.checkpoint import CheckpointDir
from offline_rl.training.loop import Interrupted, Trainer
from offline_rl.training.signals import SignalCheckpoint, report_interruption


def resume_decision(checkpoints: CheckpointDir, tracker, store_bound: bool = True,
                    ) -> tuple[bool, str | None]:
    """Whether to resume this folder's checkpoints, and the MLflow run they continue (from
    run.json). Not when they were written for another tracking store or their run is not in this
    store (said on stderr; the folder is cleared and the run starts afresh) -- unless not
    ``store_bound`` (checkpoints whose result does not depend on the store: they continue, into a
    new MLflow run); a run that failed on non-finite values is not resumed at all
    (NonFiniteLossError saying how to start afresh)."""
    info = checkpoints.read_info() or {}
    run_id = info.get("run_id")
    store = str(getattr(tracker, "tracking_uri", None))
    recorded = info.get("tracking_uri")
    reason = None
    if recorded is not None and recorded.rstrip("/") != store.rstrip("/"):  # as store_key reads it
        reason = f"they were written for the MLflow store {recorded}, not {store}"
    elif run_id and getattr(tracker, "tracking_uri", None) is not None:
        status = tracker.run_status(run_id)
        if status is None:
            reason = f"their MLflow run {run_id} is not in the store {store}"
        elif status == "FINISHED" and store_bound:  # left by a process stopped after finishing
            reason = f"their MLflow run {run_id} has FINISHED (they were left behind)"
    if reason is not None and not store_bound:
        return True, None
    if reason is not None:
        warn(f"not resuming the checkpoints in {checkpoints.path}: {reason}; starting afresh")
        checkpoints.clear()
        return False, None
    if info.get("failed"):
        raise NonFiniteLossError(
            f"the last run of this command (MLflow run {run_id}) failed: {info['failed']} Its "
            f"checkpoints in {checkpoints.path} would resume into the same failure, so they are "
            f"not used: once the cause is fixed, start afresh with resume=never (a new MLflow run; "
            f"the failed one is kept)")
    return True, run_id


def resume_point(checkpoints: CheckpointDir, tracker, report_corrupt: Callable[[str], None] = warn,
                 restart_if_unreadable: bool = False, store_bound: bool = True,
                 what: str = "run") -> tuple[tuple[dict, Path] | None, str | None]:
    """The newest readable checkpoint of the folder (None: start afresh) and the MLflow run it
    continues (None: a new one). A folder with checkpoints but none readable raises
    CheckpointError (what to do is the user's call), or with ``restart_if_unreadable`` is cleared
    and said so (a run whose result does not depend on where it restarts). ``store_bound``:
    see ``resume_decision``; ``what``: the run, in messages."""
    resume, run_id = resume_decision(checkpoints, tracker, store_bound)
    if not resume:
        return None, None
    try:
        found = (checkpoints.load_latest(report_corrupt, hint="") if restart_if_unreadable
                 else checkpoints.load_latest(report_corrupt))
    except CheckpointError as exc:
        if not restart_if_unreadable:
            raise
        warn(f"{exc}; starting the {what} afresh")
        checkpoints.clear()
        return None, None
    if found and store_bound:
        run_id = found[0].get("run_id") or run_id
    return found, run_id


def start_tracking(tracker, checkpoints: CheckpointDir, run_name: str, params: dict, tags: dict,
                   run_id: str | None, parent_run_id: str | None = None, **info: Any) -> dict:
    """Start the MLflow run, or continue ``run_id``; its id, store and ``info`` go to the folder's
    run.json, where the next process of the same command finds them. Returns what was written
    (``run_id``: the MLflow run's id)."""
    run_id = tracker.start(run_name, params, tags, run_id=run_id, parent_run_id=parent_run_id)
    written = {"run_id": run_id, "identity": checkpoints.identity,
               "tracking_uri": str(getattr(tracker, "tracking_uri", None)), **info}
    checkpoints.write_info(written)
    return written


@contextlib.contextmanager
def ended_on_failure(tracker, stopped: Callable[[], str] = lambda: "interrupted (Ctrl-C)",
                     on_failure: Callable[[BaseException], None] = lambda exc: None) -> Iterator[None]:
    """The MLflow run's status when what runs inside fails: Ctrl-C that no checkpoint caught ends
    it KILLED and comes out as ``Stopped`` with the line ``stopped()`` writes; any other error
    FAILED (then ``on_failure``). A run stopped after its checkpoint is left to resume."""
    try:
        yield
    except (Interrupted, SystemExit, Stopped):
        raise  # stopped after a checkpoint (or by submitit's requeue): continued later
    except KeyboardInterrupt:
        line = stopped()
        tracker.finish("KILLED", error=line)
        raise Stopped(line) from None
    except BaseException as exc:
        tracker.finish("FAILED", error=f"{type(exc).__name__}: {exc}")
        on_failure(exc)
        raise


def train_tracked(trainer: Trainer, tracker, checkpoints: CheckpointDir, *,
                  record: Callable[[], Any] = lambda: None, on_signal: bool = True,
                  requeued: Callable[[Interrupted], bool] = lambda exc: False,
                  kept_step: Callable[[], int | None] = lambda: None,
                  unit: str = "update step",
                  on_failure: Callable[[BaseException], None] = lambda exc: None) -> Any:
    """Run the loop to its end, then ``record()`` (what the run keeps: artifacts, final metrics),
    whose value is returned. A signal stops the loop after the checkpoint it asks for: reported
    (``kept_step()``: the step of the newest checkpoint written, which the run continues from),
    the MLflow run KILLED unless ``requeued``, and the process ends as the signal says
    (SignalCheckpoint.finish). ``unit``: what the loop's steps are, in messages."""
    signals = SignalCheckpoint(trainer) if on_signal else contextlib.nullcontext()

    def stopped() -> str:
        step = trainer.state.global_step
        kept = kept_step()
        what = (f"the same command continues from its checkpoint of {unit} {kept}"
                if kept is not None else "the same command starts it again")
        return f"interrupted (Ctrl-C) at once at {unit} {step}, outside a checkpoint: {what}"

    with ended_on_failure(tracker, stopped, on_failure):
        with signals:
            try:
                trainer.run()
            except Interrupted as exc:
                report_interruption(exc, tracker, checkpoints.path, killed=not requeued(exc),
                                    kept=kept_step())
                signals.finish()
                raise
        return record()
