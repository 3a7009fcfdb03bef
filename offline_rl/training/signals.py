"""Stopping a run cleanly on a signal: a checkpoint first, then the exit the signal asks for."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from offline_rl.errors import Stopped
from offline_rl.training.loop import Interrupted, Trainer


class SignalCheckpoint:
    """While the loop runs: SIGTERM (scancel, ``scontrol requeue``, a time limit), SIGINT (Ctrl-C)
    and SIGUSR2 (submitit's pre-timeout / preemption signal, when submitit handles it) ask the
    loop to write a checkpoint at the end of the current update; then the run stops as the signal
    wants (for SIGUSR2: submitit's own handler, which requeues the job). A second SIGINT / SIGTERM
    meets the handler that was there before (by default: stop at once)."""

    #: a second signal this soon after the first is the same request (a key held down, a
    #: double press, scancel's SIGTERM repeated): ignored, so the checkpoint is still written
    GRACE_S = 1.0

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.previous: dict[int, Any] = {}
        self.received: int | None = None
        self.received_at = 0.0

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
        now = time.monotonic()
        if self.received is not None and signum != signal.SIGUSR2:
            if now - self.received_at < self.GRACE_S:
                return  # the same request again
            # asked again after the grace: stop at once, as before this handler
            signal.signal(signum, self._previous_or_default(signum))
            signal.raise_signal(signum)
            return
        self.received, self.received_at = signum, now
        self.trainer.interrupt_requested = signal.Signals(signum).name

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
            raise Stopped("interrupted (Ctrl-C): the run kept its checkpoint; the same command "
                          "continues it")
        sys.exit(128 + int(signum))


def report_interruption(exc: Interrupted, tracker, folder: Path, killed: bool,
                        kept: int | None = None) -> None:
    """After the loop stopped on a signal: every metric stored, the MLflow run tagged -- and
    marked KILLED when nothing will requeue it, so that a later run of the same command resumes
    it -- and one line on stderr saying which checkpoint the run continues from: the one written
    for the signal, or (``kept``: a full disk refused it) an earlier one, or none."""
    tracker.flush()
    tracker.set_tags({"interrupted": str(exc)})
    if killed:
        tracker.finish("KILLED")
    if kept == exc.global_step:
        print(f"{exc}; checkpoint written to {folder}", file=sys.stderr, flush=True)
    else:
        earlier = (f"continues from its checkpoint of update step {kept}" if kept is not None
                   else "starts it again")
        print(f"{exc}; no checkpoint could be written for it (see the warning above): the same "
              f"command {earlier}", file=sys.stderr, flush=True)
