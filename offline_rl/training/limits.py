"""Limits that depend on the data, checked once it is loaded and before anything is allocated for
training: the batch size against the dataset's size, and the memory the replay and its batches
will take against what the device has free. One message naming the values and what to change."""

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
    need = (rows + batches) * transition_bytes(data.obs_dim, data.act_dim)
    free = free_memory(device)
    if free is not None and need > MEMORY_SHARE * free:
        raise ConfigError(f"the replay ({what}) and batches of {batches:,} need about "
                          f"{_gb(need)} on {device}, but only "
                          f"{_gb(free)} is free; use a smaller batch_size or "
                          f"finetune.max_replay_size, or a device with more memory")
