"""Hydra entry point: ``python launch.py algo=edac pretrain=none dataset=hopper-medium-local``.

``python launch.py --help`` lists the config groups and their options; ``--cfg job`` prints the
composed config. A bad config value, a missing dataset or a NaN loss ends the run with one message
(exit status 2), not a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

# the checkout's root: where the default MLflow store lives, whatever the working directory
os.environ.setdefault("OFFLINE_RL_ROOT", str(Path(__file__).resolve().parent))

import offline_rl.config  # noqa: E402,F401  (registers the config resolvers)
from offline_rl.errors import OfflineRLError  # noqa: E402


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from offline_rl.training.run import train

    try:
        result = train(cfg)
    except OfflineRLError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    return result.get("eval/normalized_score_mean")


if __name__ == "__main__":
    main()
