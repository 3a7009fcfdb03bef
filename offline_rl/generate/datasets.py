"""This project's own D4RL-style Minari datasets, so that everything works offline.

One behaviour run per environment (``offline_rl.generate.behaviour``) gives D4RL's levels:

* ``medium``: ``dataset_size`` transitions of stochastic rollouts of the policy snapshot whose
  stochastic episodes' mean return is closest to ``medium_fraction`` (D4RL's own medium / expert
  ratio per environment, ``ENV_DEFAULTS``) of the final
  policy's (``medium_by=rollouts``, the default; ``deterministic``: by deterministic evaluation
  returns, as datasets made before the setting were);
* ``medium-replay``: every transition the agent collected (its replay buffer, warm-up included) up
  to that snapshot's step, episode by episode; the episode still running then is cut, marked
  truncated;
* ``full-replay``: the whole replay buffer, from the first step to the last (appendix E.2);
* ``expert``: ``dataset_size`` transitions of stochastic rollouts of the final policy (the mean of
  the actor snapshots over the last ``average_last`` of training, or the last snapshot where it
  scores higher: ``final_policy``);
* ``medium-expert``: the ``medium`` and ``expert`` episodes together.

Normalised scores read like the literature's: for Hopper, HalfCheetah and Walker2d the datasets'
``ref_min_score`` / ``ref_max_score`` are D4RL's reference returns (random and expert policies,
``REFERENCE_RETURNS``); other environments use the generated uniform-random and final-policy
returns. Both generated returns are kept in every dataset's metadata (``random_policy_return``,
``final_policy_return``), with the generating config, the snapshot the data came from, every
snapshot's return and the behaviour run's MLflow run id. Ids are ``local/<env>/<level>-v0`` in
Minari's datasets folder (``MINARI_DATASETS_PATH``).

Datasets are written under a hidden staging folder in that folder and renamed into place only once
complete, so an interrupted generation never leaves a dataset that looks valid; the behaviour run
itself resumes from its checkpoints (``<datasets folder>/.generate/<env>-<settings hash>/``) when
the same generation runs again, and one process per environment generates while the others wait.
"""

from __future__ import annotations

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
from offline_rl.dataset.replay import ReplayBuffer
from offline_rl.errors import ConfigError, DatasetError
from offline_rl.generate.behaviour import (BehaviourConfig, BehaviourRun, data_settings_hash,
                                           make_tracker, train_behaviour)
from offline_rl.dataset.levels import LEVELS
from offline_rl.generate.rollouts import actor_policy, collect_episodes, evaluate_policy, select_snapshot
from offline_rl.training.checkpoint import CheckpointDir
from offline_rl.training.lifecycle import ended_on_failure

logger = logging.getLogger(__name__)

#: bumped whenever the generation procedure changes what it writes for the same settings
GENERATOR_VERSION = 3
#: settings that change how fast or where generation runs, not what it generates (never compared)
RUNTIME_SETTINGS = ("device", "num_threads", "progress", "compile", "precision",
                    "checkpoint_every", "tracking_uri", "track")
NAMESPACE = "local"
STAGING_PREFIX = ".staging-"
ROLLOUT_SEED_OFFSET = {"medium": 40_000, "expert": 50_000, "snapshot_rollouts": 60_000}
#: settings added after datasets were made without them, with the value that reproduces those
#: datasets: at that value a setting is left out of ``data_settings`` (and of the behaviour run's
#: checkpoint identity), so the datasets and checkpoints made before it existed stay valid
ADDED_LATER = {"medium_by": "deterministic", "final_policy": "average"}
MEDIUM_BY = ("deterministic", "rollouts")
#: D4RL's reference returns (uniform-random policy, expert policy) that define its normalised
#: score, from d4rl/infos.py (REF_MIN_SCORE / REF_MAX_SCORE of the v2 MuJoCo datasets)
REFERENCE_RETURNS = {"Hopper-v5": (-20.272305, 3234.3),
                     "HalfCheetah-v5": (-280.178953, 12135.0),
                     "Walker2d-v5": (1.629008, 4592.3)}
#: per-environment defaults, chosen by measurement on a 2-core CPU (docs/datasets.md):
#: CrossQ reaches an expert Hopper / Walker2d in the fewest CPU-seconds; on HalfCheetah CrossQ with
#: 2 x 256 networks learned slowly (2,069 after 60k steps) and TD3 got furthest per second.
#: medium_fraction: D4RL's own medium level as a fraction of its expert level, in returns (its v2
#: datasets' normalised scores, medium / expert: Hopper 44 / 108, Walker2d 62 / 107, HalfCheetah
#: 40 / 88, through REFERENCE_RETURNS). At a third, Hopper's medium fell on its standing-still
#: plateau (~1,000: the alive bonus over 1,000 steps; docs/datasets.md)
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "Hopper-v5": {"algorithm": "crossq", "env_steps": 100_000, "medium_fraction": 0.40},
    "Walker2d-v5": {"algorithm": "crossq", "env_steps": 200_000, "snapshot_every": 5_000,
                    "medium_fraction": 0.58},
    "HalfCheetah-v5": {"algorithm": "td3", "env_steps": 500_000, "random_steps": 10_000,
                       "snapshot_every": 10_000, "medium_fraction": 0.44},
}
#: measured speeds on an idle 2-core CPU (compiled update steps; docs/datasets.md) for the estimate printed
#: before a generation starts: env steps per second of behaviour training (one update each,
#: evaluations included: CrossQ on Hopper 130/s, TD3 on HalfCheetah 205/s), and rollout
#: transitions per second
TRAINING_STEPS_PER_S = {"crossq": 120.0, "sac": 190.0, "td3": 205.0}
ROLLOUT_STEPS_PER_S = 6000.0


@dataclass
class GeneratorConfig(BehaviourConfig):
    """The behaviour run's settings (see ``BehaviourConfig``) plus the datasets' own."""

    dataset_size: int = 1_000_000  # transitions in each rollout dataset (medium, expert): D4RL's
    medium_fraction: float = 1.0 / 3.0  # medium = snapshot closest to this x the final return
    # which returns that "closest" compares: each snapshot's deterministic evaluation
    # ("deterministic"), or the mean return of its stochastic episodes against the final policy's
    # ("rollouts": as the datasets are collected; eval_episodes each, after training). By
    # deterministic returns Walker2d's medium data scored 80.0 (D4RL's 62): its stochastic episodes
    # scored 3.2x its deterministic ones; Hopper's (ff8850f829) were 2,926 near-identical episodes
    # (1,128 +- 58) no algorithm tried improved on (docs/datasets.md)
    medium_by: str = "rollouts"
    num_threads: int | None = None  # torch CPU threads while generating (None / 0: torch's)
    progress: bool = True  # progress bars for training and rollouts

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
        if self.medium_by not in MEDIUM_BY:
            raise ConfigError(f"generator setting medium_by must be one of {', '.join(MEDIUM_BY)}, "
                              f"got {self.medium_by!r}")

    @classmethod
    def for_env(cls, env_id: str, **overrides: Any) -> "GeneratorConfig":
        """The defaults for ``env_id`` (``ENV_DEFAULTS``) updated by ``overrides``."""
        names = {f.name for f in dataclasses.fields(cls)} - {"env_id"}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown dataset generator setting(s) {', '.join(unknown)}; the "
                              f"settings are: {', '.join(sorted(names))}")
        return cls(env_id=env_id, **{**ENV_DEFAULTS.get(env_id, {}), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def data_settings(self) -> dict[str, Any]:
        """The settings that decide the data: compared before reusing a dataset."""
        settings = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_SETTINGS
                    and not (k in ADDED_LATER and v == ADDED_LATER[k])}
        settings["generator_version"] = GENERATOR_VERSION
        return settings

    def estimated_minutes(self, levels: Sequence[str]) -> float:
        rollouts = (("medium" in levels or "medium-expert" in levels)
                    + ("expert" in levels or "medium-expert" in levels)) * self.dataset_size
        return (self.env_steps / TRAINING_STEPS_PER_S[self.algorithm]
                + rollouts / ROLLOUT_STEPS_PER_S) / 60.0


def env_name(env_id: str) -> str:
    """'HalfCheetah-v5' -> 'halfcheetah'."""
    return re.sub(r"-v\d+$", "", env_id.split("/")[-1]).lower()


def local_dataset_id(env_id: str, level: str) -> str:
    """'Hopper-v5', 'medium-replay' -> 'local/hopper/medium-replay-v0'."""
    if level not in LEVELS:
        raise ConfigError(f"unknown dataset level {level!r}; the levels are {', '.join(LEVELS)}")
    return f"{NAMESPACE}/{env_name(env_id)}/{level}-v0"


def checkpoint_folder(config: GeneratorConfig) -> tuple[Path, str]:
    """Where the behaviour run of these data settings keeps its checkpoints, and its identity."""
    identity = data_settings_hash(config.data_settings())
    return datasets_root() / ".generate" / f"{env_name(config.env_id)}-{identity}", identity


# ----- generation --------------------------------------------------------------------------------
def generate_local_datasets(config: GeneratorConfig, levels: Sequence[str] = LEVELS,
                            overwrite: bool = False) -> dict[str, str]:
    """Train the behaviour agent once and write the requested levels. Returns level -> dataset id.

    An existing dataset of a requested level is an error unless ``overwrite`` (then it is replaced,
    only once the new one is complete). One process per environment generates at a time (the
    others wait for it); an interrupted generation resumes from its checkpoints.
    """
    levels = list(dict.fromkeys(levels))
    ids = {level: local_dataset_id(config.env_id, level) for level in levels}
    if not levels:
        return {}
    with _generation_lock(config.env_id):
        existing = [dataset_path(i) for i in ids.values() if dataset_path(i).exists()]
        if existing and not overwrite and _finish_bookkeeping(config, ids):
            return ids
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


def _finish_bookkeeping(config: GeneratorConfig, ids: dict[str, str]) -> bool:
    """A generation killed after it published every requested dataset but before its
    bookkeeping: the datasets are whole (published by rename), its behaviour run is still
    RUNNING and its checkpoints are still there. Finish that -- the run FINISHED, the checkpoints
    removed -- and say so; True when that was the case (the same command then succeeds)."""
    folder, identity = checkpoint_folder(config)
    if not all(dataset_path(i).exists() for i in ids.values()) or not folder.exists():
        return False
    try:
        for dataset_id in ids.values():
            check_generator_settings(dataset_id, config)
        run_ids = {json.loads((dataset_path(i) / "data" / "metadata.json").read_text()).get(
            "behaviour_run_id") for i in ids.values()}
    except (DatasetError, OSError, ValueError):
        return False
    if len(run_ids) != 1:
        return False
    run_id = run_ids.pop()
    checkpoints = CheckpointDir(folder, identity)
    if (checkpoints.read_info() or {}).get("run_id") != run_id:
        return False  # these checkpoints are another behaviour run's (an interrupted --overwrite)
    tracker = make_tracker(config)
    if run_id and run_id != "None" and tracker.run_status(run_id) == "RUNNING":
        tracker.run_id = run_id
        tracker.set_tags({"datasets": ", ".join(ids.values())})
        tracker.finish("FINISHED")
    checkpoints.clear()
    print(f"the {config.env_id} datasets ({', '.join(ids.values())}) were published by a generation "
          f"that stopped before its bookkeeping: marked its behaviour run {run_id} FINISHED and "
          f"removed its checkpoints ({folder}); the datasets are ready", file=sys.stderr, flush=True)
    return True


def announce(config: GeneratorConfig, levels: Sequence[str]) -> None:
    print(f"generating the local {config.env_id} datasets ({', '.join(levels)}): "
          f"{config.algorithm} behaviour agent trained online for {config.env_steps:,} env steps, "
          f"then {config.dataset_size:,}-transition rollouts; about "
          f"{config.estimated_minutes(levels):.0f} min on an idle 2-core CPU (less with a GPU). "
          f"Its learning curve is the MLflow run in experiment 'datasets'; Ctrl-C stops it and "
          f"the same command resumes it.", file=sys.stderr, flush=True)


def _generate(config: GeneratorConfig, levels: list[str], ids: dict[str, str],
              overwrite: bool) -> dict[str, str]:
    root = datasets_root()
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(root)
    folder, identity = checkpoint_folder(config)
    announce(config, levels)
    run = train_behaviour(config, folder, identity, REFERENCE_RETURNS.get(config.env_id),
                          progress=config.progress)
    tracker = run.tracker
    pairs = [(s.step, s.eval_return) for s in run.snapshots]
    by_rollouts = snapshot_rollout_returns(config, run) if config.medium_by == "rollouts" else None
    if by_rollouts:
        medium = run.snapshots[select_snapshot(by_rollouts[0], by_rollouts[1], config.medium_fraction)]
    else:
        medium = run.snapshots[select_snapshot(pairs, run.final_return, config.medium_fraction)]
    ref_min, ref_max = REFERENCE_RETURNS.get(config.env_id,
                                             (run.random_return, run.final_return))
    logger.info("%s: %d env steps in %.0f s; final policy %.1f, random policy %.1f; medium "
                "snapshot: step %d (return %.1f)", config.algorithm, config.env_steps,
                run.train_seconds, run.final_return, run.random_return, medium.step,
                medium.eval_return)

    staging = root / f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    rollouts: dict[str, list[dict]] = {}
    try:
        # the behaviour run's MLflow run ends FAILED (KILLED on Ctrl-C) if writing fails
        with ended_on_failure(tracker, lambda: (
                "interrupted (Ctrl-C) while writing the datasets: nothing was published; the same "
                "command writes them again from the behaviour run's checkpoint")):
            for level in levels:
                episodes, snapshot_step, snapshot_return, description = _level_data(
                    level, config, run, medium, rollouts)
                returns = np.array([ep["rewards"].sum() for ep in episodes])
                metadata = {
                    "level": level,
                    "generator_config": json.dumps(config.to_dict(), sort_keys=True),
                    "generator_version": GENERATOR_VERSION,
                    "snapshot_step": int(snapshot_step),
                    "snapshot_return": float(snapshot_return),
                    "snapshot_returns": json.dumps([[int(s), float(r)] for s, r in pairs]),
                    "medium_snapshot_step": int(medium.step),
                    "behaviour_algorithm": config.algorithm,
                    "behaviour_env_steps": int(config.env_steps),
                    "behaviour_train_seconds": float(run.train_seconds),
                    "behaviour_run_id": str(tracker.run_id),
                    "random_policy_return": run.random_return,
                    "final_policy_return": run.final_return,
                    "ref_scores_source": "D4RL" if config.env_id in REFERENCE_RETURNS else "generated",
                    "episode_return_mean": float(returns.mean()),
                    "final_policy_chosen": "average" if run.final_is_average else "last_snapshot",
                }
                if by_rollouts:
                    metadata["snapshot_rollout_returns"] = json.dumps(
                        [[int(s), float(r)] for s, r in by_rollouts[0]])
                    metadata["final_policy_rollout_return"] = float(by_rollouts[1])
                start = time.perf_counter()
                with _minari_root(staging):
                    write_minari_dataset(ids[level], episodes, config.env_id, ref_min, ref_max,
                                         description, metadata, config.algorithm,
                                         ref_episodes=config.ref_episodes)
                transitions = sum(len(ep["rewards"]) for ep in episodes)
                score = 100.0 * (returns.mean() - ref_min) / (ref_max - ref_min)
                logger.info("%s: %d episodes, %d transitions, mean episode return %.1f (normalised "
                            "%.1f; written in %.1f s)", ids[level], len(episodes), transitions,
                            returns.mean(), score, time.perf_counter() - start)
                tracker.log_metrics({f"{level}/transitions": transitions,
                                     f"{level}/episodes": len(episodes),
                                     f"{level}/return_mean": float(returns.mean()),
                                     f"{level}/normalized_score": float(score)}, config.env_steps)
            _publish(staging, root, list(ids.values()), overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tracker.set_tags({"datasets": ", ".join(ids.values())})
    tracker.finish("FINISHED")
    CheckpointDir(folder, identity).clear()  # done: the datasets are the result
    return ids


def replay_episodes(replay: ReplayBuffer, num_steps: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Episodes (observations (T+1, d), actions, rewards, terminations, truncations) made of the
    first ``num_steps`` transitions of an online run's replay, in order; the episode still running
    at that point is cut and marked truncated (D4RL's medium-replay). Each episode's ``seed`` is
    the reset seed the environment loop used: ``seed`` + the env steps before it."""
    n = int(num_steps)
    if not 0 <= n <= replay.size:
        raise ValueError(f"asked for the first {n} transitions of a replay holding {replay.size}")
    data = {k: v[:n].cpu().numpy() for k, v in replay.storage.items()}
    terminations = data["dones"] > 0.5
    truncations = replay.timeouts[:n].cpu().numpy()
    ends = np.flatnonzero(terminations | truncations)
    starts, stops = np.r_[0, ends + 1], np.r_[ends + 1, n]
    episodes = []
    for start, stop in zip(starts, stops):
        if stop <= start:
            continue
        term, trunc = terminations[start:stop].copy(), truncations[start:stop].copy()
        if not (term[-1] or trunc[-1]):
            trunc[-1] = True  # still running when the replay was cut
        episodes.append({
            "seed": int(seed + start),
            "observations": np.concatenate([data["observations"][start:stop],
                                            data["next_observations"][stop - 1:stop]]
                                           ).astype(np.float64),
            "actions": data["actions"][start:stop].copy(),
            "rewards": data["rewards"][start:stop].astype(np.float64),
            "terminations": term, "truncations": trunc})
    return episodes


def snapshot_rollout_returns(config: GeneratorConfig, run: BehaviourRun):
    """((step, mean return of stochastic episodes) of every snapshot, the final policy's): what
    ``medium_by=rollouts`` compares. ``eval_episodes`` episodes each, the same seeds for every
    policy, the actor's sampling noise seeded too: the same run gives the same choice."""
    seed = config.seed + ROLLOUT_SEED_OFFSET["snapshot_rollouts"]

    def mean_return(actor) -> float:
        torch.manual_seed(seed)
        return float(np.mean(evaluate_policy(actor_policy(actor, config.device, deterministic=False),
                                             config.env_id, config.eval_episodes, seed,
                                             config.num_envs)))

    start = time.perf_counter()
    pairs = [(s.step, mean_return(run.actor_at(s))) for s in run.snapshots]
    final = mean_return(run.final_actor)
    logger.info("medium_by=rollouts: %d snapshots and the final policy, %d stochastic episodes each, "
                "in %.0f s; final policy %.1f", len(pairs), config.eval_episodes,
                time.perf_counter() - start, final)
    run.tracker.log_metrics({"final/rollout_return": final}, config.env_steps)
    return pairs, final


def _level_data(level: str, config: GeneratorConfig, run: BehaviourRun, medium,
                rollouts: dict[str, list[dict]]):
    """(episodes, snapshot step, snapshot return, description) of one level; the rollouts of
    medium and expert are made once and shared with medium-expert."""
    env_steps, frac = config.env_steps, config.medium_fraction
    if level in ("medium-replay", "full-replay"):
        steps = medium.step if level == "medium-replay" else env_steps
        what = (f"up to the medium snapshot (deterministic return {medium.eval_return:.1f})"
                if level == "medium-replay" else "from the first step to the last")
        return replay_episodes(run.replay, steps, config.seed), steps, (
            medium.eval_return if level == "medium-replay" else run.final_return), (
            f"{level} for {config.env_id}: every transition the online {config.algorithm} agent "
            f"collected (its replay buffer, {min(config.random_steps, steps)} uniform-random warm-up "
            f"steps included) during its first {steps} env steps, {what}; a running episode at "
            f"the cut is marked truncated. Generated by offline_rl.generate.")
    if level == "medium-expert":
        for part in ("medium", "expert"):
            if part not in rollouts:
                _level_data(part, config, run, medium, rollouts)
        return rollouts["medium"] + rollouts["expert"], env_steps, run.final_return, (
            f"medium-expert for {config.env_id}: the medium and expert datasets' episodes "
            f"together ({2 * config.dataset_size} transitions). Generated by offline_rl.generate.")
    if level == "medium":
        actor, step, ret = run.actor_at(medium), medium.step, medium.eval_return
        closest = ("" if config.medium_by == "rollouts" else
                   f", closest to {frac:.3g} x the final policy's {run.final_return:.1f}")
        what = (f"the {config.algorithm} snapshot at env step {step} of {env_steps} (deterministic "
                f"return {ret:.1f}{closest})")
        if config.medium_by == "rollouts":
            what += (f", whose stochastic episodes' mean return was the closest to {frac:.3g} x "
                     f"the final policy's (see the metadata's snapshot_rollout_returns)")
    else:
        actor, step, ret = run.final_actor, env_steps, run.final_return
        average = f"the mean of its snapshots' weights over the last {config.average_last:.0%} of training"
        what = (f"the final {config.algorithm} policy after {env_steps} env steps: " + (
                average if run.final_is_average else f"its last snapshot (it scored higher than "
                f"{average})") + f" (deterministic return {ret:.1f})")
    if level not in rollouts:
        torch.manual_seed(config.seed + ROLLOUT_SEED_OFFSET[level])  # the actor's sampling noise
        rollouts[level] = collect_episodes(
            actor_policy(actor, config.device, deterministic=False), config.env_id,
            config.dataset_size, config.num_envs, seed=config.seed + ROLLOUT_SEED_OFFSET[level],
            progress=config.progress, desc=f"{level} rollouts")
    return rollouts[level], step, ret, (
        f"{level} for {config.env_id}: {config.dataset_size} transitions of stochastic rollouts of "
        f"{what}, {config.num_envs} environments side by side; episodes still running at the end "
        f"are cut and marked truncated. Generated by offline_rl.generate.")


def write_minari_dataset(dataset_id: str, episodes: Iterable[dict[str, np.ndarray]], env_id: str,
                         ref_min_score: float, ref_max_score: float, description: str,
                         metadata: dict[str, Any], algorithm: str = "crossq",
                         ref_episodes: int = 100):
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
            algorithm_name=f"{algorithm} (offline_rl behaviour agent)",
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
                           f"not made by offline_rl.generate); delete {path} to generate it here")
    # settings added later count on both sides (data_settings leaves them out at their old value):
    # a dataset that predates one was made at that old value
    requested = {**config.data_settings(), **{k: getattr(config, k) for k in ADDED_LATER}}
    missing = object()

    def made_with(key: str) -> Any:
        return stored.get(key, ADDED_LATER.get(key, missing))

    diffs = [(k, made_with(k), v) for k, v in requested.items() if made_with(k) != v]
    if not diffs:
        return
    listing = "; ".join(
        f"{k} = {'(not recorded)' if k not in stored else repr(s)} in the dataset, {v!r} requested"
        + (f" (the dataset predates the setting: {s!r})" if k not in stored and s is not missing else "")
        for k, s, v in diffs)
    matching = " ".join(f"+dataset.generator.{k}={s}" for k, s, _ in diffs
                        if s is not missing and k != "generator_version")
    raise DatasetError(
        f"local dataset '{dataset_id}' at {path} was generated with different settings than "
        f"requested: {listing}. Either delete {path} (and the other levels in {path.parent} that "
        f"share its behaviour run) to regenerate it with the requested settings, or request the "
        f"dataset's settings" + (f" (e.g. {matching})" if matching else "") + ".")


_HELD_LOCKS: set[Path] = set()  # generation locks this process holds (the lock is re-entrant)


@contextlib.contextmanager
def _generation_lock(env_id: str) -> Iterator[None]:
    """One generating process per environment and datasets folder; the others wait, then find the
    datasets made. flock: released by the kernel when the holder exits, however it exits."""
    root = datasets_root()
    root.mkdir(parents=True, exist_ok=True)
    path = (root / f".generate-{env_name(env_id)}.lock").resolve()
    if path in _HELD_LOCKS:
        yield
        return
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another process is generating the {env_id} datasets in {root}; waiting for it",
                  file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        _HELD_LOCKS.add(path)
        try:
            yield
        finally:
            _HELD_LOCKS.discard(path)
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_local_dataset(env_id: str, level: str, **generator_overrides: Any) -> str:
    """The id of the local ``level`` dataset of ``env_id``, generated if missing.

    Generating runs one behaviour training for every level that is missing (all of them on first
    use). An existing dataset made with other settings than requested (``GeneratorConfig``
    defaults for the environment updated by ``generator_overrides``; runtime settings aside)
    raises DatasetError naming the differences and the folder to delete.
    """
    config = GeneratorConfig.for_env(env_id, **generator_overrides)
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
                print(f"local dataset '{dataset_id}' not found in {datasets_root()}",
                      file=sys.stderr, flush=True)
                generate_local_datasets(config, levels=missing)
                return dataset_id
    check_generator_settings(dataset_id, config)
    return dataset_id
