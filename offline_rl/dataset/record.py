"""What a run records about its dataset (the MLflow dataset input of ``tracker.log_dataset``):
the Minari id, a digest of the data file, where it lies, its size, and the behaviour policy's
own normalised score (the mean return of the dataset's episodes on the dataset's reference scale,
the score a run should beat)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offline_rl.dataset.episodes import OfflineData
from offline_rl.dataset.minari_source import dataset_path

DIGEST_LENGTH = 10  # MLflow recommends at most 10 characters for a dataset digest
_CHUNK = 1 << 22


@dataclass(frozen=True)
class DatasetRecord:
    dataset_id: str             # the Minari id, e.g. local/hopper/medium-v0
    digest: str                 # sha256 of the data file(s), first DIGEST_LENGTH hex digits
    source: str                 # the data file (or folder) the run read
    transitions: int
    episodes: int
    behaviour_return: float     # mean undiscounted return of the dataset's episodes
    behaviour_score: float | None  # the same, normalised: 100 (R - ref_min) / (ref_max - ref_min)

    @property
    def profile(self) -> dict:
        profile = {"transitions": self.transitions, "episodes": self.episodes,
                   "behaviour_return": round(self.behaviour_return, 3)}
        if self.behaviour_score is not None:
            profile["behaviour_normalized_score"] = round(self.behaviour_score, 3)
        return profile


def data_files(dataset_id: str) -> list[Path]:
    """The files holding a local Minari dataset's data (``main_data.hdf5`` for HDF5 datasets)."""
    folder = dataset_path(dataset_id) / "data"
    main = folder / "main_data.hdf5"
    if main.exists():
        return [main]
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "metadata.json")


def file_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()[:DIGEST_LENGTH]


def current_digest(dataset_id: str) -> str | None:
    """The digest a run of ``dataset_id`` would record now (None: no data file for that id here),
    to tell whether an earlier run of the same name was trained on these data."""
    files = data_files(dataset_id) if dataset_id else []
    return file_digest(files) if files else None


def normalized_score(value: float, ref_min: float | None, ref_max: float | None) -> float | None:
    if ref_min is None or ref_max is None or ref_max == ref_min:
        return None
    return 100.0 * (value - ref_min) / (ref_max - ref_min)


def describe(data: OfflineData) -> DatasetRecord:
    """The record of a dataset read from the Minari folder (digest of its data file); a dataset
    built in memory (no file) gets the digest of its arrays."""
    files = data_files(data.dataset_id) if data.dataset_id else []
    if files:
        digest, source = file_digest(files), str(files[0] if len(files) == 1 else files[0].parent)
    else:
        h = hashlib.sha256()
        for array in (data.observations, data.actions, data.rewards, data.terminals, data.timeouts):
            h.update(np.ascontiguousarray(array).tobytes())
        digest, source = h.hexdigest()[:DIGEST_LENGTH], "in-memory"
    returns = data.episode_returns()
    mean_return = float(np.mean(returns)) if len(returns) else float("nan")
    return DatasetRecord(data.dataset_id or "dataset", digest, source, len(data), int(len(returns)),
                         mean_return,
                         normalized_score(mean_return, data.ref_min_score, data.ref_max_score))
