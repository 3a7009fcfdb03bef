"""What a run *is*, as a hash of its resolved config: the same command gives the same identity
(its checkpoint folder, the finished run it finds again), whatever Hydra's output folder or the
settings that do not change what it computes. The sweeper hashes its jobs' identities, so the
same sweep started again with such a setting changed (threads=2, progress=false) is still the
same sweep. No torch here: the launching process composes and hashes every job."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# config keys that do not change what a run computes: left out of its identity
IDENTITY_EXCLUDED = ("tracker", "progress", "summary", "checkpoint", "resume", "threads", "precision_change",
                     "rerun", "continue_from")


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as flat ``a.b.c`` keys (its params, its identity). Hydra's own settings,
    in a config composed with ``return_hydra_config=True`` (or a sweep's job config), are not the
    run's: left out."""
    if "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    container = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node

    walk("", container)
    return flat


def run_identity(cfg: DictConfig) -> str:
    """A hash of the resolved config minus tracking/progress/checkpoint keys: the same command
    gives the same identity (and checkpoint folder), whatever Hydra's output folder."""
    flat = {k: v for k, v in flatten(cfg).items() if k.split(".", 1)[0] not in IDENTITY_EXCLUDED}
    blob = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def checkpoint_root(cfg: DictConfig) -> str:
    """Where runs keep their checkpoint folders (and sweeps their locks)."""
    return cfg.checkpoint.dir or str(Path(os.environ.get("OFFLINE_RL_ROOT", ".")) / "checkpoints")


def store_key(tracking_uri: str | None) -> str:
    """A short hash of the tracking store's URI: part of the checkpoint folder's name, so that
    checkpoints resume only into the store (and run) they were written for."""
    return hashlib.sha256(str(tracking_uri).rstrip("/").encode()).hexdigest()[:8]
