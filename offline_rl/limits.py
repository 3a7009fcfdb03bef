"""Limits that depend on the data, checked once it is loaded and before anything is allocated for
training: the batch size against the dataset's size, and the memory the replay and the update
steps on its batches (the largest batch of any phase: offline or fine-tuning) will take against
what the device has free. One message naming the values and what to change."""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig, OmegaConf

from offline_rl.errors import ConfigError

MEMORY_SHARE = 0.8  # of the free memory, at most, for the replay and its batches


def transition_bytes(obs_dim: int, act_dim: int) -> int:
    """One replay row (offline_rl.dataset.replay.ReplayBuffer): observation, next observation,
    action, reward, done, return-to-go as float32, and a timeout flag."""
    return 4 * (2 * obs_dim + act_dim + 3) + 1


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` (CPU: the kernel's MemAvailable), None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


#: bytes per batch sample of one update step, per hidden unit (width x depth) of each network
#: (the critics' members and the actor): the activations kept for the backward pass, the
#: target pass and the gradients. Measured (peak RSS of an eager update at batch 16k-64k, Hopper
#: shapes): TD3+BC 2x256 with 2 critics 13-16 KB per sample (2.1-2.7 per unit), EDAC 3x256 with
#: 10 critics 225-235 KB (6.7-7.0 per unit, its diversity term's second-order pass); 8 covers both.
UPDATE_BYTES_PER_UNIT = 8 * 4


def update_bytes_per_sample(cfg: DictConfig) -> int:
    """What one more sample in a batch costs an update step (``UPDATE_BYTES_PER_UNIT``)."""
    width = max(int(OmegaConf.select(cfg, f"algo.{n}.width", default=256) or 256) for n in ("actor", "critic"))
    depth = max(int(OmegaConf.select(cfg, f"algo.{n}.depth", default=2) or 2) for n in ("actor", "critic"))
    networks = int(OmegaConf.select(cfg, "algo.num_critics", default=2) or 2) + 1
    return UPDATE_BYTES_PER_UNIT * width * depth * networks


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_data_limits(cfg: DictConfig, data, device: torch.device) -> None:
    n = len(data)
    batch = int(cfg.batch_size)
    if batch > n:
        raise ConfigError(f"batch_size={batch} is larger than the dataset {data.dataset_id!r} "
                          f"({n:,} transitions): every batch would repeat transitions many times "
                          f"over; use batch_size <= {n} (the papers use 256)")
    rows, batches, what = n, batch, f"{n:,} transitions of {data.dataset_id!r}"
    online = OmegaConf.select(cfg, "finetune.env_steps", default=None)
    if online is not None:  # the online replay of fine-tuning (offline_rl.finetune.online)
        capacity = min(int(online), int(OmegaConf.select(cfg, "finetune.max_replay_size",
                                                         default=online)))
        rows += capacity
        batches = max(batches, int(OmegaConf.select(cfg, "finetune.batch_size", default=batch)))
        what += f" and {capacity:,} for fine-tuning"
    replay = rows * transition_bytes(data.obs_dim, data.act_dim)
    step = batches * (transition_bytes(data.obs_dim, data.act_dim) + update_bytes_per_sample(cfg))
    need = replay + step
    free = free_memory(device)
    if free is not None and need > MEMORY_SHARE * free:
        raise ConfigError(f"the replay ({what}: {_gb(replay)}) and update steps on batches of "
                          f"{batches:,} ({_gb(step)}) need about {_gb(need)} on {device}, but "
                          f"only {_gb(free)} is free; use a smaller batch_size or "
                          f"finetune.batch_size / finetune.max_replay_size, or a device with more "
                          f"memory")
