"""Checkpoints written atomically (temp file in the same folder, fsync, rename): a crash mid-write
leaves the previous checkpoint intact. They load with ``torch.load(weights_only=True)``.

``CheckpointDir`` keeps the latest few checkpoints of one run (rotation), so a corrupt latest one
falls back to the one before it, reported."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from offline_rl.errors import CheckpointError


def save_checkpoint(path: str | Path, state: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt "
                              f"({type(exc).__name__}: {detail[:160]})") from None


CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "identity", "run_id", "global_step", "algo", "replay", "trainer", "rng")


class CheckpointDir:
    """The checkpoints of one run identity: ``step-<global step>.pt`` files, the newest ``keep``
    kept, plus ``run.json`` naming the run's MLflow run id (written when the run starts, so a run
    killed before its first checkpoint is still continued, not duplicated).

    ``load_latest`` tries the newest file first; a truncated or corrupt one is reported (through
    ``report``) and the one before it is used. Several checkpoints, none readable, is an error.
    """

    def __init__(self, path: str | Path, identity: str, keep: int = 2):
        self.path = Path(path)
        self.identity = identity
        self.keep = max(1, int(keep))

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

    def load_latest(self, report: Callable[[str], None], map_location="cpu") -> tuple[dict, Path] | None:
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
                                  + ". Delete the folder or run with resume=never to start afresh")
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
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".run.json.", suffix=".tmp", dir=self.path)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(info, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.info_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        """Remove this run's checkpoints and run.json (a finished run, or resume=never)."""
        if self.path.is_dir():
            shutil.rmtree(self.path, ignore_errors=True)
