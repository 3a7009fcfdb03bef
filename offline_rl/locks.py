"""Locks between processes: ``fcntl.flock`` on a lock file, held through an open file.

The kernel drops such a lock when its process ends in any way (normal exit, exception, SIGKILL, a
node reboot clears them all), so a lock left behind by a dead process never blocks anyone: there is
no stale-lock cleanup to get wrong. The lock file records who holds it (PID, host, start time) so
a process that is refused can say which one to wait for.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path


class FileLock:
    """An exclusive lock on ``path`` (created, with its folder, as needed)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; without ``blocking``, False at once if another process holds it.

        The holder may delete the lock file (a finished run removes its folder) between our
        ``open`` and our ``flock``; we would then hold a lock on a file nobody else can find, so
        the lock counts only if the path still names the file we locked (else: try again)."""
        while True:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                handle.close()
                return False
            try:
                same = os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._handle = handle
                self._record_holder()
                return True
            handle.close()

    def _record_holder(self) -> None:
        handle = self._handle
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()

    def holder(self) -> str:
        """Who holds the lock, as its holder recorded it (or 'another process')."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            text = ""
        return text or "another process"

    def release(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def __enter__(self) -> "FileLock":
        self.acquire(blocking=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()

