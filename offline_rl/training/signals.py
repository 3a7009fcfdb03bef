"""Stopping a run cleanly on a signal: a checkpoint first, then the exit the signal asks for."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

from offline_rl.training.loop import Interrupted, Trainer


class SignalCheckpoint:
    """While the loop runs: SIGTERM (scancel, ``scontrol requeue``, a time limit), SIGINT (Ctrl-C)
    and SIGUSR2 (submitit's pre-timeout / preemption signal, when submitit handles it) ask the
    loop to write a checkpoint at the end of the current update; then the run stops as the signal
    wants (for SIGUSR2: submitit's own handler, which requeues the job). A second SIGINT / SIGTERM
    meets the handler that was there before (by default: stop at once)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.previous: dict[int, Any] = {}
        self.received: int | None = None

    def __enter__(self) -> "SignalCheckpoint":
        if threading.current_thread() is not threading.main_thread():
            return self
        wanted = [signal.SIGTERM, signal.SIGINT]
        usr2 = signal.getsignal(signal.SIGUSR2)
        if callable(usr2):  # submitit's checkpoint-and-requeue handler
            wanted.append(signal.SIGUSR2)
        for signum in wanted:
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        self.received = signum
        self.trainer.interrupt_requested = signal.Signals(signum).name
        if signum != signal.SIGUSR2:  # the next one acts at once
            signal.signal(signum, self._previous_or_default(signum))

    def _previous_or_default(self, signum: int):
        previous = self.previous.get(signum)
        return previous if previous is not None else signal.SIG_DFL

    def __exit__(self, *exc) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)

    def finish(self) -> None:
        """After the checkpoint: stop the way the signal asks."""
        signum = self.received
        previous = self.previous.get(signum)
        self.__exit__()
        if signum == signal.SIGUSR2 and callable(previous):
            previous(signum, None)  # submitit: checkpoint the submission, requeue, exit
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        sys.exit(128 + int(signum))


def report_interruption(exc: Interrupted, tracker, folder: Path, killed: bool) -> None:
    """After the loop stopped on a signal (its checkpoint written): every metric stored, the MLflow
    run tagged -- and marked KILLED when nothing will requeue it, so that a later run of the same
    command resumes it -- and one line on stderr."""
    tracker.flush()
    tracker.set_tags({"interrupted": str(exc)})
    if killed:
        tracker.finish("KILLED")
    print(f"{exc}; checkpoint written to {folder}", file=sys.stderr, flush=True)
