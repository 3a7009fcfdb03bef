"""``python -m offline_rl.generate --env Hopper-v5``: train the behaviour agent once and write the
local D4RL-style datasets (see ``offline_rl.generate.datasets``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

from offline_rl.dataset.minari_source import dataset_path, datasets_root
from offline_rl.errors import OfflineRLError
from offline_rl.generate.datasets import (ENV_DEFAULTS, LEVELS, GeneratorConfig,
                                          generate_local_datasets)

HELP = {
    "algorithm": "behaviour agent: crossq, sac or td3 (default per environment)",
    "exploration_noise": "td3: Gaussian exploration noise (x max action)",
    "env_steps": "online training environment steps, warm-up included (default per environment: "
                 + ", ".join(f"{env} {d['env_steps']:,}" for env, d in ENV_DEFAULTS.items()) + ")",
    "random_steps": "uniform-random warm-up steps before the first update",
    "batch_size": "batch size (one update per env step)",
    "snapshot_every": "evaluate the policy and keep a snapshot every N env steps",
    "medium_by": "the medium snapshot is the one closest to medium_fraction x the final policy by "
                 "deterministic evaluation return ('deterministic') or by the mean return of "
                 "stochastic episodes, as the data are collected ('rollouts', the default)",
    "eval_episodes": "deterministic evaluation episodes per snapshot",
    "ref_episodes": "episodes for the random and final policies' returns",
    "num_envs": "environments side by side for evaluation and rollouts",
    "actor_width": "hidden layer width of the actor",
    "critic_width": "hidden layer width of the critics",
    "hidden_depth": "hidden layers of actor and critics",
    "learning_rate": "Adam learning rate (default: the algorithm's)",
    "gamma": "discount",
    "seed": "seed of everything",
    "device": "torch device of the behaviour agent",
    "compile": "update steps: auto, compile or eager",
    "precision": "update steps' arithmetic: fp32 (default), bf16 or auto (docs/precision.md)",
    "average_last": "the snapshots averaged into the final policy: those of the last this fraction of training",
    "final_policy": "'average' (of those snapshots) or 'better' (the average or the last snapshot, "
                    "whichever scores higher over ref_episodes; the default)",
    "checkpoint_every": "env steps between checkpoints (0: only on a signal)",
    "tracking_uri": "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow sqlite)",
    "track": "record the behaviour run in MLflow (experiment 'datasets')",
    "dataset_size": "transitions in each rollout dataset (medium, expert)",
    "medium_fraction": "medium = the snapshot whose return is closest to this x the final return "
                       "(default per environment: D4RL's medium / expert return ratio, "
                       + ", ".join(f"{env} {d['medium_fraction']}" for env, d in ENV_DEFAULTS.items()) + ")",
    "num_threads": "torch CPU threads during generation (default: torch's)",
}
SKIPPED = ("env_id", "progress")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m offline_rl.generate",
        description="Train a behaviour agent online once and write D4RL-style Minari datasets "
                    f"({', '.join(LEVELS)}) as local/<env>/<level>-v0 in MINARI_DATASETS_PATH "
                    f"(now {datasets_root()}).")
    parser.add_argument("--env", default="Hopper-v5", help="gymnasium environment id")
    parser.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS),
                        help="levels to write")
    for f in dataclasses.fields(GeneratorConfig):
        if f.name in SKIPPED:
            continue
        flag = "--" + f.name.replace("_", "-")
        if str(f.type) == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=HELP.get(f.name))
        else:
            kind = float if "float" in str(f.type) else int if "int" in str(f.type) else str
            parser.add_argument(flag, type=kind, default=None, help=HELP.get(f.name))
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing datasets of the requested levels")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(GeneratorConfig)
                 if f.name not in SKIPPED and getattr(args, f.name) is not None}
    start = time.perf_counter()
    try:
        config = GeneratorConfig.for_env(args.env, progress=not args.no_progress, **overrides)
        ids = generate_local_datasets(config, levels=args.levels, overwrite=args.overwrite)
    except OfflineRLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the behaviour run's checkpoint is kept (the same command resumes it); "
              "no incomplete dataset was written", file=sys.stderr)
        return 130
    print(f"done in {time.perf_counter() - start:.0f} s:")
    for level, dataset_id in ids.items():
        print(f"  {level:14s} {dataset_id}  ({dataset_path(dataset_id)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
