"""This project's own D4RL-style Minari datasets, so that everything works offline.

One online SAC run (``offline_rl.online.behaviour``) gives three datasets, as D4RL made them:

* ``medium``: ``dataset_size`` transitions of stochastic rollouts of the policy snapshot whose
  deterministic evaluation return is closest to a third (``medium_fraction``) of the final one's;
* ``medium-replay``: every transition the agent collected (its replay buffer, warm-up included) up to
  that snapshot's step, episode by episode; the episode still running then is cut, marked truncated;
* ``expert``: ``dataset_size`` transitions of stochastic rollouts of the final policy.

``ref_min_score`` is the mean return of a uniform-random policy and ``ref_max_score`` the final
policy's mean deterministic return (``ref_episodes`` episodes each). Each dataset's metadata holds
the generating config (``generator_config``, JSON), the snapshot it came from and every snapshot's
return. Ids are ``local/<env>/<level>-v0`` in Minari's datasets folder (``MINARI_DATASETS_PATH``).

Datasets are written under a hidden staging folder in that folder and renamed into place only once
complete, so an interrupted generation never leaves a dataset that looks valid.

    python -m offline_rl.dataset.generate --env Hopper-v5 [--env-steps N] [--dataset-size N]
        [--levels medium expert ...] [--seed S] [--overwrite]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from offline_rl.dataset.minari_source import dataset_path, datasets_root, is_local
from offline_rl.errors import ConfigError, DatasetError, OfflineRLError
from offline_rl.online.behaviour import (BehaviourConfig, BehaviourRun, actor_policy,
                                         collect_episodes, select_snapshot, train_behaviour)

logger = logging.getLogger(__name__)

LEVELS = ("medium", "medium-replay", "expert")
#: bumped whenever the generation procedure changes what it writes for the same settings
GENERATOR_VERSION = 1
#: settings that change how fast generation runs, not what it generates (never compared)
RUNTIME_SETTINGS = ("device", "num_threads", "progress")
NAMESPACE = "local"
STAGING_PREFIX = ".staging-"
ROLLOUT_SEED_OFFSET = {"medium": 40_000, "expert": 50_000}


@dataclass
class GeneratorConfig(BehaviourConfig):
    """The behaviour run's settings (see ``BehaviourConfig``) plus the datasets' own."""

    dataset_size: int = 200_000  # transitions in each rollout dataset (medium, expert)
    medium_fraction: float = 1.0 / 3.0  # medium = snapshot closest to this x the final return
    # torch threads during generation (restored after; 0 / None: leave torch's setting). One by
    # default: on a 2-core machine shared with other jobs, 2 threads collapse (measured 5-15 SAC
    # updates/s against 75 with 1 thread while another process used a core); idle, 2 threads are
    # about 1.4x faster than 1 (120 vs 85 updates/s).
    num_threads: int | None = 1
    progress: bool = True  # tqdm bars for training and rollouts

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # YAML / CLI may give 1e5 or "5": make ints ints
            value = getattr(self, f.name)
            if f.type in ("int", "int | None") and value is not None and not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    setattr(self, f.name, int(value))
                else:
                    raise ConfigError(f"generator setting {f.name} must be an integer, got {value!r}")
        super().__post_init__()
        if int(self.dataset_size) < 1:
            raise ConfigError(f"generator setting dataset_size must be at least 1, got "
                              f"{self.dataset_size!r}")
        if not 0.0 < float(self.medium_fraction) <= 1.0:
            raise ConfigError(f"generator setting medium_fraction must be in (0, 1], got "
                              f"{self.medium_fraction!r}")

    @classmethod
    def from_overrides(cls, env_id: str, **overrides: Any) -> "GeneratorConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"env_id"}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown dataset generator setting(s) {', '.join(unknown)}; the "
                              f"settings are: {', '.join(sorted(names))}")
        return cls(env_id=env_id, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def data_settings(self) -> dict[str, Any]:
        """The settings that decide the data: compared before reusing a dataset."""
        settings = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_SETTINGS}
        settings["generator_version"] = GENERATOR_VERSION
        return settings


def env_name(env_id: str) -> str:
    """'HalfCheetah-v5' -> 'halfcheetah'."""
    return re.sub(r"-v\d+$", "", env_id.split("/")[-1]).lower()


def local_dataset_id(env_id: str, level: str) -> str:
    """'Hopper-v5', 'medium-replay' -> 'local/hopper/medium-replay-v0'."""
    if level not in LEVELS:
        raise ConfigError(f"unknown dataset level {level!r}; the levels are {', '.join(LEVELS)}")
    return f"{NAMESPACE}/{env_name(env_id)}/{level}-v0"


# ----- generation --------------------------------------------------------------------------------
def generate_local_datasets(config: GeneratorConfig, levels: Sequence[str] = LEVELS,
                            overwrite: bool = False) -> dict[str, str]:
    """Train the behaviour agent once and write the requested levels. Returns level -> dataset id.

    An existing dataset of a requested level is an error unless ``overwrite`` (then it is replaced,
    only once the new one is complete).
    """
    levels = list(dict.fromkeys(levels))
    ids = {level: local_dataset_id(config.env_id, level) for level in levels}
    if not levels:
        return {}
    existing = [dataset_path(i) for i in ids.values() if dataset_path(i).exists()]
    if existing and not overwrite:
        raise DatasetError(f"dataset folder(s) {', '.join(map(str, existing))} already exist; "
                           f"delete them or pass --overwrite (overwrite=True) to replace them")
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    try:
        return _generate(config, levels, ids, overwrite)
    finally:
        torch.set_num_threads(threads)


def _generate(config: GeneratorConfig, levels: list[str], ids: dict[str, str],
              overwrite: bool) -> dict[str, str]:
    root = datasets_root()
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(root)

    logger.info("generating %s for %s: %d SAC env steps, %d transitions per rollout dataset",
                ", ".join(ids.values()), config.env_id, config.env_steps, config.dataset_size)
    run = train_behaviour(config, progress=config.progress)
    pairs = [(s.step, s.eval_return) for s in run.snapshots]
    medium = run.snapshots[select_snapshot(pairs, run.final_return, config.medium_fraction)]
    logger.info("SAC: %d env steps in %.0f s (%.1f steps/s); snapshot returns %s; final policy "
                "%.1f, random policy %.1f; medium snapshot: step %d (return %.1f)",
                config.env_steps, run.train_seconds, config.env_steps / run.train_seconds,
                ", ".join(f"{s}: {r:.0f}" for s, r in pairs), run.final_return, run.random_return,
                medium.step, medium.eval_return)

    staging = root / f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for level in levels:
            episodes, snapshot_step, snapshot_return, description = _level_data(level, config,
                                                                                run, medium)
            metadata = {
                "level": level,
                "generator_config": json.dumps(config.to_dict(), sort_keys=True),
                "generator_version": GENERATOR_VERSION,
                "snapshot_step": int(snapshot_step),
                "snapshot_return": float(snapshot_return),
                "snapshot_returns": json.dumps([[int(s), float(r)] for s, r in pairs]),
                "medium_snapshot_step": int(medium.step),
                "behaviour_env_steps": int(config.env_steps),
                "behaviour_train_seconds": float(run.train_seconds),
                "random_policy_return": run.random_return,
                "final_policy_return": run.final_return,
            }
            start = time.perf_counter()
            with _minari_root(staging):
                write_minari_dataset(ids[level], episodes, config.env_id, run.random_return,
                                     run.final_return, description, metadata,
                                     ref_episodes=config.ref_episodes)
            logger.info("%s: %d episodes, %d transitions, mean episode return %.1f (written in "
                        "%.1f s)", ids[level], len(episodes),
                        sum(len(ep["rewards"]) for ep in episodes),
                        float(np.mean([ep["rewards"].sum() for ep in episodes])),
                        time.perf_counter() - start)
        _publish(staging, root, list(ids.values()), overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ids


def _level_data(level: str, config: GeneratorConfig, run: BehaviourRun, medium):
    """(episodes, snapshot step, snapshot return, description) of one level."""
    env_steps, frac = config.env_steps, config.medium_fraction
    if level == "medium-replay":
        episodes = run.log.episodes(medium.step)
        if episodes:
            episodes[0]["seed"] = config.seed  # the training env's first reset
        return episodes, medium.step, medium.eval_return, (
            f"medium-replay for {config.env_id}: every transition online SAC collected (its replay "
            f"buffer, {min(config.random_steps, medium.step)} uniform-random warm-up steps "
            f"included) during its first {medium.step} env steps, up to the medium snapshot "
            f"(deterministic return {medium.eval_return:.1f}); the episode still running then is "
            f"cut and marked truncated. Generated by offline_rl.dataset.generate.")
    if level == "medium":
        actor, step, ret = run.actor_at(medium), medium.step, medium.eval_return
        what = (f"the SAC snapshot at env step {step} of {env_steps} (deterministic return "
                f"{ret:.1f}, closest to {frac:.3g} x the final policy's {run.final_return:.1f})")
    else:
        actor, step, ret = run.agent.actor, env_steps, run.final_return
        what = (f"the final SAC policy after {env_steps} env steps (deterministic return "
                f"{ret:.1f})")
    torch.manual_seed(config.seed + ROLLOUT_SEED_OFFSET[level])  # the actor's sampling noise
    episodes = collect_episodes(actor_policy(actor, config.device, deterministic=False),
                                config.env_id, config.dataset_size, config.num_envs,
                                seed=config.seed + ROLLOUT_SEED_OFFSET[level],
                                progress=config.progress, desc=f"{level} rollouts")
    return episodes, step, ret, (
        f"{level} for {config.env_id}: {config.dataset_size} transitions of stochastic rollouts of "
        f"{what}, {config.num_envs} environments side by side; episodes still running at the end "
        f"are cut and marked truncated. Generated by offline_rl.dataset.generate.")


def write_minari_dataset(dataset_id: str, episodes: Iterable[dict[str, np.ndarray]], env_id: str,
                         ref_min_score: float, ref_max_score: float, description: str,
                         metadata: dict[str, Any], ref_episodes: int = 100):
    """One Minari dataset from episode arrays, with Minari's own writer, in the current
    MINARI_DATASETS_PATH; ``metadata`` (str / int / float / bool values) is added to Minari's.
    ``ref_episodes``: how many episodes the reference scores average (Minari records it)."""
    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(id=i, seed=ep.get("seed"), observations=ep["observations"],
                             actions=ep["actions"], rewards=ep["rewards"],
                             terminations=ep["terminations"], truncations=ep["truncations"])
               for i, ep in enumerate(episodes)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*code_permalink.*")
        dataset = minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env_id, eval_env=env_id,
            algorithm_name="SAC (offline_rl EDAC, 2 critics, eta=0)",
            author="offline_rl dataset generator", author_email="offline-rl@localhost",
            description=description, ref_min_score=float(ref_min_score),
            ref_max_score=float(ref_max_score), num_episodes_average_score=int(ref_episodes))
    dataset.storage.update_metadata(metadata)
    return dataset


@contextlib.contextmanager
def _minari_root(path: Path) -> Iterator[None]:
    """Point Minari (which reads MINARI_DATASETS_PATH on every call) at ``path`` for a while."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _publish(staging: Path, root: Path, dataset_ids: list[str], overwrite: bool) -> None:
    """Move complete datasets from the staging folder into the datasets folder, one rename each
    (the staging folder lies inside the datasets folder: same file system, atomic renames)."""
    for meta in staging.rglob("namespace_metadata.json"):  # Minari's namespace records
        target = root / meta.relative_to(staging)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(meta, target)
    for dataset_id in dataset_ids:
        source, target = staging / dataset_id, root / dataset_id
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            if not overwrite:
                raise DatasetError(f"{target} appeared while the dataset was being generated "
                                   f"(another process?); delete it and generate again")
            shutil.rmtree(target)
        os.rename(source, target)


def _remove_stale_staging(root: Path) -> None:
    """Staging folders left by processes of this host that no longer run (killed generations)."""
    host = socket.gethostname()
    for folder in root.glob(f"{STAGING_PREFIX}*"):
        try:
            folder_host, pid, _ = folder.name[len(STAGING_PREFIX):].rsplit("-", 2)
            pid = int(pid)
        except ValueError:
            continue
        if folder_host != host or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass


# ----- reuse with a check -------------------------------------------------------------------------
def read_generator_settings(dataset_id: str) -> dict[str, Any] | None:
    """The data settings a local dataset was generated with (None if it records none)."""
    with open(dataset_path(dataset_id) / "data" / "metadata.json") as f:
        metadata = json.load(f)
    if "generator_config" not in metadata:
        return None
    settings = json.loads(metadata["generator_config"])
    settings["generator_version"] = metadata.get("generator_version")
    return {k: v for k, v in settings.items() if k not in RUNTIME_SETTINGS}


def check_generator_settings(dataset_id: str, config: GeneratorConfig) -> None:
    """Raise DatasetError if the dataset was generated with other data settings than ``config``."""
    path = dataset_path(dataset_id)
    stored = read_generator_settings(dataset_id)
    if stored is None:
        raise DatasetError(f"dataset '{dataset_id}' at {path} records no generator settings (it was "
                           f"not made by offline_rl.dataset.generate); delete {path} to generate "
                           f"it here")
    requested = config.data_settings()
    missing = object()
    diffs = [(k, stored.get(k, missing), v) for k, v in requested.items()
             if stored.get(k, missing) != v]
    if not diffs:
        return
    listing = "; ".join(f"{k} = {'(not recorded)' if s is missing else repr(s)} in the dataset, "
                        f"{v!r} requested" for k, s, v in diffs)
    matching = " ".join(f"dataset.generator.{k}={s}" for k, s, _ in diffs
                        if s is not missing and k != "generator_version")
    raise DatasetError(
        f"local dataset '{dataset_id}' at {path} was generated with different settings than "
        f"requested: {listing}. Either delete {path} (and the other levels in {path.parent} that "
        f"share its behaviour run) to regenerate it with the requested settings, or request the "
        f"dataset's settings" + (f" (e.g. {matching})" if matching else "") + ".")


@contextlib.contextmanager
def _generation_lock(env_id: str) -> Iterator[None]:
    """One generating process per environment and datasets folder; the others wait, then find the
    datasets made."""
    root = datasets_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".generate-{env_name(env_id)}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another process is generating %s datasets in %s; waiting for it",
                        env_id, root)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_local_dataset(env_id: str, level: str, **generator_overrides: Any) -> str:
    """The id of the local ``level`` dataset of ``env_id``, generated if missing.

    Generating runs one behaviour training for every level that is missing (all three on first
    use). An existing dataset made with other settings than requested (``GeneratorConfig``
    defaults updated by ``generator_overrides``; runtime settings device / num_threads / progress
    aside) raises DatasetError naming the differences and the folder to delete.
    """
    config = GeneratorConfig.from_overrides(env_id, **generator_overrides)
    dataset_id = local_dataset_id(env_id, level)
    if not is_local(dataset_id):
        with _generation_lock(env_id):  # another process may be generating it right now
            if not is_local(dataset_id):
                if dataset_path(dataset_id).exists():
                    raise DatasetError(f"dataset folder {dataset_path(dataset_id)} exists but holds "
                                       f"no complete Minari dataset; delete it to generate "
                                       f"'{dataset_id}' again")
                missing = [lv for lv in LEVELS
                           if not dataset_path(local_dataset_id(env_id, lv)).exists()]
                logger.info("local dataset '%s' not found in %s: generating %s (one SAC run of %d "
                            "env steps)", dataset_id, datasets_root(), ", ".join(missing),
                            config.env_steps)
                generate_local_datasets(config, levels=missing)
                return dataset_id
    check_generator_settings(dataset_id, config)
    return dataset_id


# ----- command line --------------------------------------------------------------------------------
HELP = {
    "env_steps": "online SAC environment steps, warm-up included",
    "random_steps": "uniform-random warm-up steps before the first update",
    "batch_size": "SAC batch size (one update per env step)",
    "snapshot_every": "keep and evaluate the policy every N env steps",
    "eval_episodes": "deterministic evaluation episodes per snapshot",
    "ref_episodes": "episodes for ref_min_score (random policy) and ref_max_score (final policy)",
    "num_envs": "environments side by side for evaluation and rollouts",
    "hidden_width": "hidden layer width of actor and critics",
    "hidden_depth": "hidden layers of actor and critics",
    "layer_norm": "LayerNorm after every hidden linear layer",
    "gamma": "discount",
    "tau": "target network Polyak rate",
    "learning_rate": "Adam learning rate of actor, critics and temperature",
    "seed": "seed of everything",
    "device": "torch device of the SAC agent",
    "dataset_size": "transitions in each rollout dataset (medium, expert)",
    "medium_fraction": "medium = the snapshot whose return is closest to this x the final return",
    "num_threads": "torch CPU threads during generation (0: leave torch's setting); 1 resists "
                   "other jobs on a small machine, 2 is ~1.4x faster on an idle one",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m offline_rl.dataset.generate",
        description="Train SAC online once and write D4RL-style Minari datasets (medium, "
                    "medium-replay, expert) as local/<env>/<level>-v0 in MINARI_DATASETS_PATH "
                    f"(now {datasets_root()}).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--env", default="Hopper-v5", help="gymnasium environment id")
    parser.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS),
                        help="levels to write")
    defaults = GeneratorConfig()
    for f in dataclasses.fields(GeneratorConfig):
        if f.name in ("env_id", "progress"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=HELP.get(f.name))
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), int)
            parser.add_argument(flag, type=kind, default=default, help=HELP.get(f.name))
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing datasets of the requested levels")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(GeneratorConfig)
                if f.name not in ("env_id", "progress")}
    start = time.perf_counter()
    try:
        config = GeneratorConfig(env_id=args.env, progress=not args.no_progress, **settings)
        ids = generate_local_datasets(config, levels=args.levels, overwrite=args.overwrite)
    except OfflineRLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: datasets not complete were not written", file=sys.stderr)
        return 130
    print(f"done in {time.perf_counter() - start:.0f} s:")
    for level, dataset_id in ids.items():
        print(f"  {level:14s} {dataset_id}  ({dataset_path(dataset_id)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
