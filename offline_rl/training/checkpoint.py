"""Checkpoints written atomically (temp file in the same folder, fsync, rename): a crash mid-write
leaves the previous checkpoint intact. They load with ``torch.load(weights_only=True)``.

``CheckpointDir`` keeps the latest few checkpoints of one run (rotation), so a corrupt latest one
falls back to the one before it, reported."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import random
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from offline_rl.errors import CheckpointError, DiskFullError, RunInUseError
from offline_rl.locks import FileLock

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_atomically(path: Path, data: bytes | memoryview) -> Path:
    """``data`` to ``path`` through a temp file in the same folder, fsync and rename: a crash (or a
    full disk) mid-write leaves the previous file intact. A full disk raises DiskFullError."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise DiskFullError(f"no space left for checkpoints in {path.parent}") from None
        raise
    return path


def save_checkpoint(path: str | Path, state: dict) -> Path:
    # serialised in memory first, so that a full disk is a plain ENOSPC on write, not an error
    # from inside torch's zip writer
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_atomically(Path(path), buffer.getbuffer())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    if is_plain_pickle(Path(path)):  # pickle.dump's file, not torch's container: never unpickled
        raise CheckpointError(f"{path} is not a checkpoint this project wrote (a plain pickle; "
                              f"refused to unpickle)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower() or not is_intact(Path(path)):
            # not even torch's zip container: a half-written or foreign file (torch's own advice,
            # to load it with weights_only=False, is exactly what must not be done)
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt (not a whole "
                                  f"checkpoint file)") from None
        # it holds objects beyond tensors and plain containers: code would run on loading it
        raise CheckpointError(f"{path} is not a checkpoint this project wrote (refused to "
                              f"unpickle)") from None
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else ""


def is_plain_pickle(path: Path) -> bool:
    """A file written by ``pickle.dump`` (protocol 2 or later: it starts with the PROTO opcode)
    rather than torch's zip container."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def is_intact(path: Path) -> bool:
    """A checkpoint file whose zip directory reads back (torch's format): not truncated."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "identity", "run_id", "global_step", "algo", "replay", "trainer", "rng")


class CheckpointDir:
    """The checkpoints of one run identity: ``step-<global step>.pt`` files, the newest ``keep``
    kept, plus ``run.json`` naming the run's MLflow run id and store (written when the run starts,
    so a run killed before its first checkpoint is still continued, not duplicated).

    ``load_latest`` tries the newest file first; a truncated or corrupt one is reported (through
    ``report``) and the one before it is used. Several checkpoints, none readable, is an error.

    ``lock`` makes the folder, and so the run, this process's until ``unlock`` (or its end, however
    it ends): a second process running the same command is refused, naming the holder.
    """

    LOCK = "run.lock"

    def __init__(self, path: str | Path, identity: str, keep: int = 2):
        self.path = Path(path)
        self.identity = identity
        self.keep = max(1, int(keep))
        self._lock = FileLock(self.path / self.LOCK)

    def lock(self, what: str) -> None:
        """Hold this run, or raise RunInUseError naming the process that holds it (and a
        CheckpointError when its folder cannot be written: a read-only or full disk)."""
        try:
            acquired = self._lock.acquire(blocking=False)
        except OSError as exc:
            raise CheckpointError(f"cannot write in the checkpoint folder {self.path} "
                                  f"({type(exc).__name__}: {exc}); free space or make it writable, "
                                  f"or set checkpoint.dir to another folder") from None
        if not acquired:
            raise RunInUseError(f"{what} is already running: {self._lock.holder()} holds it "
                                f"({self._lock.path}). Wait for that process to end (the same "
                                f"command then continues or starts afresh), or change the config "
                                f"(e.g. seed=) for a separate run")

    def unlock(self) -> None:
        """Let the run go; a folder left with nothing but the lock file is removed."""
        if not self._lock.held:
            return
        if [p.name for p in self.path.iterdir()] == [self.LOCK]:
            shutil.rmtree(self.path, ignore_errors=True)
        self._lock.release()

    def files(self) -> list[Path]:
        """Checkpoint files, newest first."""
        if not self.path.is_dir():
            return []
        found = []
        for file in self.path.glob("step-*.pt"):
            try:
                found.append((int(file.stem.split("-", 1)[1]), file))
            except ValueError:
                continue
        return [file for _, file in sorted(found, reverse=True)]

    def save(self, state: dict, step: int) -> Path:
        state = {"format": CHECKPOINT_FORMAT, "identity": self.identity, **state}
        path = save_checkpoint(self.path / f"step-{int(step):012d}.pt", state)
        for old in self.files()[self.keep:]:
            old.unlink(missing_ok=True)
        return path

    def _check(self, path: Path, state: dict) -> None:
        missing = [k for k in REQUIRED_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"checkpoint {path} is incomplete (missing {', '.join(missing)})")
        if state["identity"] != self.identity:
            raise CheckpointError(f"checkpoint {path} belongs to another run configuration "
                                  f"({state['identity']} != {self.identity})")

    def load_latest(self, report: Callable[[str], None], map_location="cpu",
                    hint: str = ". Delete the folder or run with resume=never to start afresh",
                    ) -> tuple[dict, Path] | None:
        problems = []
        for path in self.files():
            try:
                state = load_checkpoint(path, map_location=map_location)
                self._check(path, state)
            except CheckpointError as exc:
                problems.append(str(exc))
                report(f"{exc}; trying the checkpoint before it")
                continue
            return state, path
        if problems:
            raise CheckpointError(f"no readable checkpoint in {self.path}: " + "; ".join(problems)
                                  + hint)
        return None

    # ----- run.json: which MLflow run these checkpoints continue ----------------------------------
    @property
    def info_path(self) -> Path:
        return self.path / "run.json"

    def read_info(self) -> dict | None:
        try:
            return json.loads(self.info_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None

    def write_info(self, info: dict) -> None:
        write_atomically(self.info_path, json.dumps(info, indent=1, sort_keys=True).encode())

    def clear(self) -> None:
        """Remove this run's checkpoints, run.json and spool (a finished run, or resume=never);
        the lock file stays while it is held (removing it would let a second process in)."""
        if not self.path.is_dir():
            return
        for entry in self.path.iterdir():
            if entry.name == self.LOCK and self._lock.held:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if not self._lock.held:
            shutil.rmtree(self.path, ignore_errors=True)


# ----- the global random number generators, for exact resumption ------------------------------


def rng_state() -> dict[str, Any]:
    """The global RNGs (torch's samples TD3+BC's target noise and EDAC's actions)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": [py_version, list(py_state), py_gauss],
             "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                       int(np_has_gauss), float(np_gauss)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():  # as many GPUs as this process sees
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
