"""What a run could not send to an unreachable MLflow server, kept on disk until it answers.

A spool is a JSON-lines file (one record per tracking call: metrics, tags, tag deletions, an
artifact, the final status) beside the run's checkpoints, appended and fsynced, so it survives a
crash; artifacts are copied next to it. ``MlflowTracker`` delivers it, in order, when the server
answers again, at the end of the run, or when the same command runs again.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


#: what a sqlite store says when it cannot take a write (its disk, its file system, its file)
STORE_WRITE_ERRORS = ("database or disk is full", "readonly database", "read-only file system",
                      "unable to open database file", "disk i/o error", "no space left on device")
STORE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES)


def _store_write_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in STORE_ERRNOS:
        return True
    text = str(exc).lower()
    return type(exc).__name__ in ("OperationalError", "MlflowException") and any(
        marker in text for marker in STORE_WRITE_ERRORS)


def is_unreachable(exc: BaseException, store_writes: bool = True) -> bool:
    """Did this tracking call fail because the store could not be reached or written -- the
    server did not answer (connection refused or reset, DNS, a timeout, retries used up on 5xx
    answers), or a sqlite store's disk is full, read-only, or its file cannot be opened -- rather
    than because the call itself was wrong? MLflow wraps the underlying exception, so the chain
    of causes / contexts is searched. ``store_writes=False``: a server that did not answer only
    (a reader's own full disk or unwritable folder is no store's fault)."""
    import requests

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, requests.exceptions.RequestException) or (
                store_writes and _store_write_error(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def reason(exc: BaseException) -> str:
    """A short, one-line reason: the innermost ``requests`` error when there is one."""
    import requests

    seen, found = exc, exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, requests.exceptions.RequestException) or _store_write_error(seen):
            found = seen
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(found).split())
    if "Connection refused" in text:
        text = "connection refused"
    elif isinstance(found, requests.exceptions.Timeout):
        text = "no answer (timeout)"
    return f"{type(found).__name__}: {text[:160]}"


class Spool:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def artifacts(self) -> Path:
        return self.path.parent / f"{self.path.stem}-artifacts"

    def __len__(self) -> int:
        return len(self.records())

    def append(self, record: dict[str, Any]) -> None:
        """Add one record (fsynced: it survives a crash of this process)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if record.get("kind") == "artifact":  # the file may be temporary: keep a copy
            source = Path(record["path"])
            self.artifacts.mkdir(exist_ok=True)
            folder = self.artifacts / f"{len(list(self.artifacts.iterdir())):04d}"
            folder.mkdir()
            copy = Path(shutil.copy2(source, folder / source.name))  # logged under its own name
            record = {**record, "path": str(copy)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        """The records still to deliver, oldest first (a torn last line, from a crash in the
        middle of a write, is dropped)."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def keep_only(self, records: list[dict[str, Any]]) -> None:
        """Replace the spool by ``records`` (those not delivered yet), atomically."""
        if not records:
            self.clear()
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.artifacts, ignore_errors=True)
