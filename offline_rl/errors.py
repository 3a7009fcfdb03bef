"""Errors a researcher can act on. launch.py prints their message alone, without a traceback."""

import sys


class OfflineRLError(Exception):
    """Base class: the message names the thing that is wrong and what to do about it."""


class ConfigError(OfflineRLError):
    """A config value is not allowed, or two choices do not make sense together."""


class DatasetError(OfflineRLError):
    """A dataset is missing, cannot be downloaded, or its files are unreadable."""


class NonFiniteLossError(OfflineRLError):
    """A training loss became NaN or infinite."""


class CheckpointError(OfflineRLError):
    """A checkpoint could not be read."""


class RunInUseError(OfflineRLError):
    """Another process is running the same run (it holds the run's lock)."""


class TrackerUnreachableError(OfflineRLError):
    """The MLflow tracking server does not answer."""


class DiskFullError(CheckpointError):
    """No space left on the device where checkpoints are written."""


def warn(message: str) -> None:
    """A warning for the researcher: one line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Stopped(KeyboardInterrupt):
    """Ctrl-C that stopped a run, with the one line saying what was kept (launch.py prints it);
    a plain KeyboardInterrupt came before the run started."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
