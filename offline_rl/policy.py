"""A trained run's policy, without training: loaded by MLflow run id from the run's final
``checkpoint.pt`` and ``config.yaml`` artifacts (every finished run keeps both), evaluated for N
episodes, or exported with its observation normalisation as one TorchScript file that needs only
torch to run::

    python -m offline_rl.policy evaluate RUN_ID [--episodes 10] [--seed 0] [--video DIR]
    python -m offline_rl.policy export RUN_ID --out policy.pt
    # anywhere with torch: torch.jit.load("policy.pt")(raw_observations) -> actions

The policy is the run's final one: the fine-tuned agent for a run with online fine-tuning,
else the offline policy (deterministic: TD3's actor, the mean action of a Gaussian one). The
store is the one runs use (``MLFLOW_TRACKING_URI`` / ``OFFLINE_RL_ROOT``, else this checkout's),
or ``--tracking-uri``. A user's mistake (an unknown run id, a run without the artifacts, a
dataset that is not here: it is never generated or downloaded for this) ends with one line, exit
status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from offline_rl.config import from_config
from offline_rl.dataset.replay import StateNormalizer
from offline_rl.errors import ConfigError, DatasetError, OfflineRLError
from offline_rl.tracker import MlflowTracker
from offline_rl.metric_names import RETURN, RETURN_STD, SCORE, SCORE_STD
from offline_rl.tracking_ui import default_store_uri
from offline_rl.training.checkpoint import load_checkpoint
from offline_rl.training.evaluation import Evaluator


@dataclass
class TrainedPolicy:
    """A run's final policy, its observation normalisation and the data it was trained on."""

    run_id: str
    agent: Any                 # the algorithm holding the networks (``act``, ``actor``)
    normalizer: StateNormalizer
    data: Any                  # offline_rl.dataset.episodes.OfflineData: env spec, reference scores
    which: str                 # "offline" or "fine-tuned"
    eval_seed: int             # the run's first evaluation reset seed (eval.seed + seed)

    def act(self, observations: np.ndarray) -> np.ndarray:
        """Deterministic actions for raw observations (``[obs_dim]`` or ``[batch, obs_dim]``)."""
        obs = torch.as_tensor(self.normalizer(np.asarray(observations, dtype=np.float32)))
        with torch.no_grad():
            return self.agent.act(obs.to(self.agent.device), deterministic=True).cpu().numpy()


def load_policy(run_id: str, tracking_uri: str | None = None) -> TrainedPolicy:
    """The run's final policy on the CPU, from its artifacts in the store."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # two small files
    tracker = MlflowTracker(tracking_uri=tracking_uri or default_store_uri())
    with tempfile.TemporaryDirectory(prefix="offline_rl-policy-") as tmp:
        try:
            config = tracker.download_artifact(run_id, "config.yaml", tmp)
            checkpoint = tracker.download_artifact(run_id, "checkpoint.pt", tmp)
        except FileNotFoundError as exc:
            raise ConfigError(f"{exc}; `python -m analysis runs` lists the runs of the store "
                              f"(--tracking-uri for another)") from None
        cfg = OmegaConf.load(config)
        state = load_checkpoint(checkpoint, map_location="cpu")
    data = _existing_dataset(cfg)  # the env spec, dimensions and reference scores
    pretrain = from_config(cfg.pretrain)
    algo = from_config(cfg.algo)(data.obs_dim, data.act_dim, device=torch.device("cpu"),
                                 target_transform=pretrain.target_transform)
    algo.load_state_dict(state["algo"])
    agent, which = algo, "offline"
    finetune = from_config(cfg.finetune)
    if state.get("finetune_agent") is not None and getattr(finetune, "algorithm", None) is not None:
        agent = finetune.algorithm(data.obs_dim, data.act_dim,
                                   **finetune.algorithm_class.continuation_options(algo))
        agent.load_state_dict(state["finetune_agent"])
        which = "fine-tuned"
    agent.actor.eval()
    return TrainedPolicy(run_id, agent, StateNormalizer.from_state_dict(state["normalizer"]), data,
                         which, int(cfg.eval.seed) + int(cfg.seed))


def _existing_dataset(cfg):
    """The run's dataset, read where it is already: loading a policy never generates a local
    dataset (hours) or downloads one."""
    from offline_rl.dataset.minari_source import is_local
    from offline_rl.generate.datasets import local_dataset_id

    node = cfg.dataset
    if str(node.get("_target_", "")).endswith("load_local"):
        dataset_id = local_dataset_id(str(node.env_id), str(node.level))
        if not is_local(dataset_id):
            raise DatasetError(f"the run's dataset {dataset_id} is not on this machine (its "
                               f"environment and reference scores come from it); generate it with "
                               f"`python -m offline_rl.generate --env {node.env_id}`, or load the "
                               f"policy where the run trained")
    if "download_if_missing" in node:
        node.download_if_missing = False
    return from_config(node)


class ExportedPolicy(nn.Module):
    """Raw observations in, deterministic actions out: the normalisation and the actor."""

    def __init__(self, policy: TrainedPolicy):
        super().__init__()
        self.actor = policy.agent.actor
        self.register_buffer("mean", torch.as_tensor(policy.normalizer.mean))
        self.register_buffer("std", torch.as_tensor(policy.normalizer.std))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.actor.act((observations - self.mean) / self.std, deterministic=True)


def export(policy: TrainedPolicy, out: str | Path) -> Path:
    """One TorchScript file (traced on the CPU, float32) that ``torch.jit.load`` runs without
    this package; its actions are ``policy.act``'s."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = ExportedPolicy(policy).eval()
    example = torch.as_tensor(policy.normalizer.mean).reshape(1, -1)
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.jit.save(traced, str(tmp))
    tmp.replace(out)  # a complete file or none
    return out


def evaluate(policy: TrainedPolicy, episodes: int, seed: int, video: str | None = None
             ) -> dict[str, float]:
    """The platform's evaluation (offline_rl.training.evaluation: the same reset seeds for the
    same ``seed``) with a progress bar; ``video``: a folder for an MP4 of the first episode."""
    from tqdm import tqdm

    data = policy.data
    evaluator = Evaluator(data.env_spec, episodes, seed, policy.normalizer, "cpu",
                          data.ref_min_score, data.ref_max_score)
    try:
        with tqdm(total=episodes, unit="episode", desc=f"evaluating {policy.run_id[:8]}",
                  file=sys.stderr) as bar:
            def act(obs: torch.Tensor) -> torch.Tensor:
                return policy.agent.act(obs, deterministic=True)

            metrics = evaluator(act, on_episode_end=bar.update)
    finally:
        evaluator.close()
    if video:
        metrics["video"] = record_video(policy, seed, Path(video))
    return metrics


def record_video(policy: TrainedPolicy, seed: int, folder: Path) -> str:
    """One episode (reset seed ``seed``, as the first evaluation episode) to an MP4 in ``folder``:
    gymnasium's RecordVideo over MuJoCo's offscreen renderer. Needs ``moviepy`` and a headless
    OpenGL: EGL (a GPU driver, or Mesa's software EGL: it renders on this CPU-only machine) or
    OSMesa (``apt install libosmesa6``), chosen by ``MUJOCO_GL`` (default here: egl)."""
    os.environ.setdefault("MUJOCO_GL", "egl")  # before MuJoCo makes its first GL context
    import gymnasium as gym

    try:
        env = gym.wrappers.RecordVideo(gym.make(policy.data.env_spec, render_mode="rgb_array"),
                                       str(folder), name_prefix=f"policy-{policy.run_id[:8]}",
                                       episode_trigger=lambda episode: episode == 0)
    except gym.error.DependencyNotInstalled as exc:
        raise ConfigError(f"--video: {exc}") from None
    try:
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            obs, _, terminated, truncated, _ = env.step(policy.act(obs))
            done = terminated or truncated
    except Exception as exc:  # no OpenGL context: say what the machine needs
        raise ConfigError(f"--video: MuJoCo could not render ({type(exc).__name__}: {exc}); a "
                          f"headless machine needs MUJOCO_GL=egl (with a GPU driver) or "
                          f"MUJOCO_GL=osmesa (apt install libosmesa6)") from None
    finally:
        env.close()
    files = sorted(folder.glob(f"policy-{policy.run_id[:8]}*.mp4"))
    return str(files[-1]) if files else str(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline_rl.policy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("evaluate", "export"):
        p = sub.add_parser(name)
        p.add_argument("run_id", help="the MLflow run id of a finished run")
        p.add_argument("--tracking-uri", default=None,
                       help="the store (default: the one launch.py uses)")
        if name == "evaluate":
            p.add_argument("--episodes", type=int, default=10)
            p.add_argument("--seed", type=int, default=None,
                           help="reset seeds seed, seed+1, ... (default: the run's own, "
                                "eval.seed + seed: its evaluations' episodes)")
            p.add_argument("--video", default=None, metavar="DIR",
                           help="also record the first episode to an MP4 in DIR")
        else:
            p.add_argument("--out", required=True, help="the TorchScript file to write")
    args = parser.parse_args(argv)
    try:
        policy = load_policy(args.run_id, args.tracking_uri)
        if args.command == "export":
            print(f"wrote {export(policy, args.out)}: the {policy.which} policy of run "
                  f"{args.run_id} with its observation normalisation; torch.jit.load it and call "
                  f"it on raw observations ([batch, {policy.data.obs_dim}] float32)")
            return 0
        if args.episodes < 1:
            raise ConfigError(f"--episodes={args.episodes}: give at least 1")
        if args.seed is None:
            args.seed = policy.eval_seed
        metrics = evaluate(policy, args.episodes, args.seed, args.video)
    except OfflineRLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    score = metrics.get(SCORE)
    print(f"run {args.run_id} ({policy.which} policy), {args.episodes} episodes from reset seed "
          f"{args.seed}: return {metrics[RETURN]:.1f} ± {metrics[RETURN_STD]:.1f}"
          + (f", normalised score {score:.1f} ± {metrics[SCORE_STD]:.1f}"
             if score is not None else "")
          + (f"; video {metrics['video']}" if "video" in metrics else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
