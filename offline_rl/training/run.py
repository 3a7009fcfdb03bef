"""Compose one run from a Hydra config: data -> algorithm -> phases -> the loop, tracked in MLflow."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from offline_rl.config import validate
from offline_rl.dataset.replay import ReplayBuffer
from offline_rl.errors import ConfigError, OfflineRLError
from offline_rl.training.checkpoint import save_checkpoint
from offline_rl.training.evaluation import Evaluator
from offline_rl.training.loop import Phase, Trainer

GROUPS = ("algo", "pretrain", "dataset", "network", "finetune")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is not available on this machine (no CUDA); "
                          f"use device=auto or device=cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def group_choices(cfg: DictConfig) -> dict[str, str]:
    """Which option of each config group this run uses (from Hydra, else from the config)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        return {g: str(choices.get(g)) for g in GROUPS}
    except ValueError:  # composed outside @hydra.main (tests, notebooks)
        return {g: str(cfg.get("choices", {}).get(g, "?")) for g in GROUPS}


def run_name(choices: dict[str, str], seed: int, dataset_id: str) -> str:
    """e.g. td3_bc-none-hopper-medium-local-s0; a dataset given by id shows its id."""
    dataset = choices["dataset"] if choices["dataset"] != "minari" else dataset_id.replace("/", "-")
    return f"{choices['algo']}-{choices['pretrain']}-{dataset}-s{seed}"


def flatten(cfg: DictConfig) -> dict[str, Any]:
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


def make(node: DictConfig) -> Any:
    """hydra.utils.instantiate, but our own errors come out as themselves, not wrapped in
    Hydra's InstantiationException (their message is what the researcher needs to read)."""
    try:
        return instantiate(node)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, OfflineRLError):
            raise cause from None
        raise


def check_combination(cfg: DictConfig) -> None:
    """Reject algorithm x pre-training / fine-tuning pairs that make no sense, before any data is
    loaded or generated (and, for sweeps, before any job is submitted)."""
    algo_class = get_class(cfg.algo._target_)
    make(cfg.pretrain).check(algo_class)
    make(cfg.finetune).check(algo_class)


def build(cfg: DictConfig, device: torch.device):
    """Everything a run needs, built from the config's ``_target_``s."""
    data = make(cfg.dataset)
    algo = make(cfg.algo)(data.obs_dim, data.act_dim, device=device)
    pretrain = make(cfg.pretrain)
    finetune = make(cfg.finetune)
    replay = ReplayBuffer.from_offline(
        data, device, gamma=algo.gamma, normalize_states=algo.normalize_states,
        bootstrap_timeouts=bool(getattr(pretrain, "bootstrap_timeouts", False)), seed=cfg.seed)
    return data, algo, pretrain, finetune, replay


def train(cfg: DictConfig) -> dict[str, float]:
    validate(cfg)
    check_combination(cfg)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    choices = group_choices(cfg)
    tracker = make(cfg.tracker)
    tracker.ensure_store()

    data, algo, pretrain, finetune, replay = build(cfg, device)

    def offline_update() -> dict[str, torch.Tensor]:
        return algo.update(replay.sample(cfg.batch_size))

    phases: list[Phase] = []
    phases += pretrain.phases(algo, replay, cfg.batch_size)
    phases.append(Phase("offline_rl", offline_update, int(cfg.updates)))
    phases += finetune.phases(algo, replay, data, cfg)

    evaluator = None
    if cfg.eval.episodes > 0:
        evaluator = Evaluator(data.env_spec, cfg.eval.episodes, cfg.eval.seed + cfg.seed,
                              replay.normalizer, device, data.ref_min_score, data.ref_max_score)

    def evaluate() -> dict[str, float]:
        return evaluator(lambda obs: algo.act(obs, deterministic=True))

    tags = {**choices, "seed": cfg.seed, "dataset_id": data.dataset_id, "device": str(device)}
    tracker.start(run_name(choices, cfg.seed, data.dataset_id), flatten(cfg), tags)
    try:
        trainer = Trainer(phases, tracker, evaluate if evaluator is not None else None,
                          log_every=cfg.log_every, eval_every=cfg.eval.every,
                          progress=cfg.progress)
        trainer.run()
        with tempfile.TemporaryDirectory() as tmp:
            config_path = Path(tmp) / "config.yaml"
            config_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
            tracker.log_artifact(config_path)
            ckpt = Path(tmp) / "checkpoint.pt"
            save_checkpoint(ckpt, {"algo": algo.state_dict(), "replay": replay.state_dict(),
                                   "normalizer": replay.normalizer.state_dict(),
                                   "global_step": trainer.state.global_step})
            tracker.log_artifact(ckpt)
    except BaseException as exc:
        tracker.finish("FAILED", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if evaluator is not None:
            evaluator.close()
    tracker.finish("FINISHED")
    return trainer.state.last_eval
